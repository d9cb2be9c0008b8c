//! Typed calls: [`ServiceHandle`] and [`Function`] with `apply`, `decide`, `pipe`, `any`, `all`.
//!
//! A call loads the current snapshot (no lock), finds the function's providers already in
//! order, and calls each through its plugin's typed shim with the arguments by pointer. The only
//! allocation is the result vector of `apply`; `decide`, `pipe`, `any` and `all` allocate
//! nothing themselves. Argument and output types are checked against each provider's
//! declaration; a [`Function`] remembers the snapshot it checked so it checks once per reload.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::abi::{STATUS_BAD_INPUT, STATUS_FAILED, STATUS_OK, STATUS_PANICKED};
use crate::error::{Error, Failure, ProviderError};
use crate::plugin::Decision;
use crate::registry::{Registry, Shared};
use crate::snapshot::{FunctionId, ProviderCall, ServiceId, Snapshot};

/// How `apply` and `decide` treat providers (couch_epi's options).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Opts {
    /// Call every provider; a failure becomes that provider's result (apply), counts as no
    /// decision (decide) or is skipped, passing the value on unchanged (pipe).
    pub ignore_errors: bool,
    /// Run providers in parallel on the registry's bounded pool; results stay in provider order.
    pub concurrent: bool,
    /// Feed each provider's output to the next as input (dynamic calls; typed calls use `pipe`).
    pub pipe: bool,
}

impl Opts {
    /// No option set: providers in order, the first error stops the call.
    pub const fn new() -> Self {
        Opts {
            ignore_errors: false,
            concurrent: false,
            pipe: false,
        }
    }

    /// Sets `ignore_errors`.
    pub const fn ignore_errors(mut self) -> Self {
        self.ignore_errors = true;
        self
    }

    /// Sets `concurrent`.
    pub const fn concurrent(mut self) -> Self {
        self.concurrent = true;
        self
    }

    /// Sets `pipe`.
    pub const fn pipe(mut self) -> Self {
        self.pipe = true;
        self
    }

    pub(crate) fn check(self) -> Result<Self, Error> {
        if self.concurrent && self.pipe {
            return Err(Error::IncompatibleOptions(
                "`concurrent` and `pipe` cannot be combined: a pipe runs providers one after another",
            ));
        }
        Ok(self)
    }
}

/// A resolved service: call its functions by name. Valid across reloads; cheap to clone.
#[derive(Clone)]
pub struct ServiceHandle {
    shared: Arc<Shared>,
    id: ServiceId,
    name: Arc<str>,
}

/// A resolved function with its argument and output types: the fastest way to call.
///
/// `A` is what every provider receives by reference; `O` what each returns (for `decide`,
/// `O` is [`Decision<T>`]; for `pipe`, `O` is `A`).
pub struct Function<A, O> {
    shared: Arc<Shared>,
    service: ServiceId,
    id: FunctionId,
    service_name: Arc<str>,
    name: Arc<str>,
    /// Generation of the snapshot whose providers all matched `A` and `O`; `u64::MAX` for none.
    checked: AtomicU64,
    _types: PhantomData<fn(&A) -> O>,
}

impl<A, O> Clone for Function<A, O> {
    fn clone(&self) -> Self {
        Function {
            shared: self.shared.clone(),
            service: self.service,
            id: self.id,
            service_name: self.service_name.clone(),
            name: self.name.clone(),
            checked: AtomicU64::new(self.checked.load(Ordering::Relaxed)),
            _types: PhantomData,
        }
    }
}

impl ServiceHandle {
    pub(crate) fn new(shared: Arc<Shared>, id: ServiceId, name: Arc<str>) -> Self {
        ServiceHandle { shared, id, name }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A typed handle to one of the service's functions.
    pub fn function<A, O>(&self, name: &str) -> Function<A, O> {
        let (id, name) = Registry::intern_function(&self.shared, self.id, name);
        Function {
            shared: self.shared.clone(),
            service: self.id,
            id,
            service_name: self.name.clone(),
            name,
            checked: AtomicU64::new(u64::MAX),
            _types: PhantomData,
        }
    }

    /// Whether a loaded plugin defines this service.
    pub fn is_declared(&self) -> bool {
        self.shared.current.load().is_declared(self.id)
    }

    /// Whether any provider implements `function` (couch_epi's `is_configured`).
    pub fn is_configured(&self, function: &str) -> bool {
        let snapshot = self.shared.current.load();
        snapshot
            .providers_by_name(self.id, function)
            .is_some_and(|list| !list.is_empty())
    }

    fn list<'s>(
        &self,
        snapshot: &'s Snapshot,
        function: &str,
    ) -> Result<&'s [ProviderCall], Error> {
        snapshot
            .providers_by_name(self.id, function)
            .ok_or_else(|| Error::UnknownService(self.name.clone()))
    }

    /// Calls `function` of every provider in order and returns their results in that order.
    /// The first error stops the call and is returned.
    pub fn apply<A: Sync + 'static, O: Send + 'static>(
        &self,
        function: &str,
        args: &A,
    ) -> Result<Vec<O>, Error> {
        let _span = tracing::trace_span!("epi.apply", service = %self.name, function).entered();
        let snapshot = self.shared.current.load();
        let list = self.list(&snapshot, function)?;
        precheck::<A, O>(list, false)?;
        apply_values(list, args)
    }

    /// `apply` with options: with `ignore_errors` failures stay in the list as per-provider
    /// errors; with `concurrent` providers run in parallel. `pipe` is refused: use
    /// [`ServiceHandle::pipe`].
    pub fn apply_with<A: Sync + 'static, O: Send + 'static>(
        &self,
        function: &str,
        args: &A,
        opts: Opts,
    ) -> Result<Vec<Result<O, ProviderError>>, Error> {
        let _span = tracing::trace_span!("epi.apply", service = %self.name, function).entered();
        let snapshot = self.shared.current.load();
        let list = self.list(&snapshot, function)?;
        let all_match = precheck::<A, O>(list, opts.ignore_errors)?;
        apply_results(&self.shared, list, args, opts, all_match)
    }

    /// Asks providers in order until one returns `Decided`; none → `NoDecision`.
    pub fn decide<A: 'static, T: 'static>(
        &self,
        function: &str,
        args: &A,
        opts: Opts,
    ) -> Result<Decision<T>, Error> {
        let _span = tracing::trace_span!("epi.decide", service = %self.name, function).entered();
        let snapshot = self.shared.current.load();
        let list = self.list(&snapshot, function)?;
        let all_match = precheck::<A, Decision<T>>(list, opts.ignore_errors)?;
        decide_list(list, args, opts, all_match)
    }

    /// Passes `input` through every provider in order, each one's output the next one's input.
    /// No providers → `input` comes back unchanged.
    pub fn pipe<T: 'static>(&self, function: &str, input: T, opts: Opts) -> Result<T, Error> {
        let _span = tracing::trace_span!("epi.pipe", service = %self.name, function).entered();
        let snapshot = self.shared.current.load();
        let list = self.list(&snapshot, function)?;
        let all_match = precheck::<T, T>(list, opts.ignore_errors)?;
        pipe_list(list, input, opts, all_match)
    }

    /// True when some provider returned `true` (couch_epi's `any`).
    pub fn any<A: Sync + 'static>(
        &self,
        function: &str,
        args: &A,
        opts: Opts,
    ) -> Result<bool, Error> {
        Ok(any_true(&self.apply_with::<A, bool>(function, args, opts)?))
    }

    /// True when there are providers and every one returned `true` (couch_epi's `all`).
    pub fn all<A: Sync + 'static>(
        &self,
        function: &str,
        args: &A,
        opts: Opts,
    ) -> Result<bool, Error> {
        Ok(all_true(&self.apply_with::<A, bool>(function, args, opts)?))
    }
}

impl<A: 'static, O: 'static> Function<A, O> {
    /// The service's name.
    pub fn service(&self) -> &str {
        &self.service_name
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether any provider implements this function now.
    pub fn is_configured(&self) -> bool {
        let snapshot = self.shared.current.load();
        snapshot
            .providers(self.service, self.id)
            .is_some_and(|list| !list.is_empty())
    }

    /// Providers of the current snapshot, with whether all of them match `A` and `O` (checked
    /// once per snapshot generation).
    #[inline]
    fn resolve<'s>(
        &self,
        snapshot: &'s Snapshot,
        ignore_errors: bool,
    ) -> Result<(&'s [ProviderCall], bool), Error> {
        let list = snapshot
            .providers(self.service, self.id)
            .ok_or_else(|| Error::UnknownService(self.service_name.clone()))?;
        if self.checked.load(Ordering::Relaxed) == snapshot.generation {
            return Ok((list, true));
        }
        let all_match = precheck::<A, O>(list, ignore_errors)?;
        if all_match {
            self.checked.store(snapshot.generation, Ordering::Relaxed);
        }
        Ok((list, all_match))
    }
}

impl<A: Sync + 'static, O: Send + 'static> Function<A, O> {
    /// Calls every provider in order; results in provider order; the first error stops the
    /// call and is returned.
    pub fn apply(&self, args: &A) -> Result<Vec<O>, Error> {
        let _span =
            tracing::trace_span!("epi.apply", service = %self.service_name, function = %self.name)
                .entered();
        let snapshot = self.shared.current.load();
        let (list, _) = self.resolve(&snapshot, false)?;
        apply_values(list, args)
    }

    /// `apply` with options (see [`ServiceHandle::apply_with`]).
    pub fn apply_with(&self, args: &A, opts: Opts) -> Result<Vec<Result<O, ProviderError>>, Error> {
        let _span =
            tracing::trace_span!("epi.apply", service = %self.service_name, function = %self.name)
                .entered();
        let snapshot = self.shared.current.load();
        let (list, all_match) = self.resolve(&snapshot, opts.ignore_errors)?;
        apply_results(&self.shared, list, args, opts, all_match)
    }
}

impl<A: Sync + 'static> Function<A, bool> {
    /// True when some provider returned `true`.
    pub fn any(&self, args: &A, opts: Opts) -> Result<bool, Error> {
        Ok(any_true(&self.apply_with(args, opts)?))
    }

    /// True when there are providers and every one returned `true`.
    pub fn all(&self, args: &A, opts: Opts) -> Result<bool, Error> {
        Ok(all_true(&self.apply_with(args, opts)?))
    }
}

impl<A: 'static, T: 'static> Function<A, Decision<T>> {
    /// Asks providers in order until one returns `Decided`; none → `NoDecision`.
    pub fn decide(&self, args: &A, opts: Opts) -> Result<Decision<T>, Error> {
        let _span =
            tracing::trace_span!("epi.decide", service = %self.service_name, function = %self.name)
                .entered();
        let snapshot = self.shared.current.load();
        let (list, all_match) = self.resolve(&snapshot, opts.ignore_errors)?;
        decide_list(list, args, opts, all_match)
    }
}

impl<T: 'static> Function<T, T> {
    /// Passes `input` through every provider in order (see [`ServiceHandle::pipe`]).
    pub fn pipe(&self, input: T, opts: Opts) -> Result<T, Error> {
        let _span =
            tracing::trace_span!("epi.pipe", service = %self.service_name, function = %self.name)
                .entered();
        let snapshot = self.shared.current.load();
        let (list, all_match) = self.resolve(&snapshot, opts.ignore_errors)?;
        pipe_list(list, input, opts, all_match)
    }
}

/// couch_epi's `any`: some provider returned `true`.
fn any_true(results: &[Result<bool, ProviderError>]) -> bool {
    results.iter().any(|result| matches!(result, Ok(true)))
}

/// couch_epi's `all`: there are providers and every one returned `true`.
fn all_true(results: &[Result<bool, ProviderError>]) -> bool {
    !results.is_empty() && results.iter().all(|result| matches!(result, Ok(true)))
}

/// Calls one provider's typed shim.
#[inline]
fn call<A, O>(provider: &ProviderCall, args: &A) -> Result<O, ProviderError> {
    let mut output = MaybeUninit::<O>::uninit();
    call_into(provider, args, &mut output)?;
    // SAFETY: `call_into` returned OK, so the shim wrote the output.
    Ok(unsafe { output.assume_init() })
}

/// Calls one provider's typed shim, leaving the output in `output` (initialised on `Ok`), so a
/// caller can inspect it in place instead of moving it.
#[inline]
fn call_into<A, O>(
    provider: &ProviderCall,
    args: &A,
    output: &mut MaybeUninit<O>,
) -> Result<(), ProviderError> {
    let mut error = String::new();
    if provider.count_calls {
        provider.counters.calls.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: the provider's declared types match `A` and `O` (checked by the caller), its
    // plugin is mapped while the snapshot lives, and the shim writes `output` only on OK.
    let status = unsafe {
        (provider.call)(
            provider.instance,
            args as *const A as *const c_void,
            output.as_mut_ptr() as *mut c_void,
            &mut error,
        )
    };
    if status == STATUS_OK {
        Ok(())
    } else {
        Err(failure(provider, status, error))
    }
}

/// Builds the error for a status other than OK.
#[cold]
pub(crate) fn failure(provider: &ProviderCall, status: u32, message: String) -> ProviderError {
    let counter = match status {
        STATUS_PANICKED => &provider.counters.panics,
        _ => &provider.counters.errors,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let failure = match status {
        STATUS_FAILED => Failure::Failed(message),
        STATUS_PANICKED => Failure::Panicked(message),
        STATUS_BAD_INPUT => Failure::BadInput(message),
        other => Failure::Failed(format!("unknown status {other}: {message}")),
    };
    provider_error(provider, failure)
}

pub(crate) fn provider_error(provider: &ProviderCall, failure: Failure) -> ProviderError {
    ProviderError {
        plugin: provider.plugin.clone(),
        provider: provider.provider.clone(),
        service: provider.service.clone(),
        function: provider.function.clone(),
        failure,
    }
}

/// Whether `provider` declares exactly `A -> O`.
fn type_check<A, O>(provider: &ProviderCall) -> Result<(), ProviderError> {
    if provider.args.is::<A>() && provider.output.is::<O>() {
        return Ok(());
    }
    Err(provider_error(
        provider,
        Failure::TypeMismatch {
            expected: format!(
                "fn(&{}) -> {}",
                std::any::type_name::<A>(),
                std::any::type_name::<O>()
            ),
            found: format!("fn(&{}) -> {}", provider.args.name, provider.output.name),
        },
    ))
}

/// Checks every provider's types. `Ok(true)`: all match. With `ignore_errors`, a mismatch gives
/// `Ok(false)` (each provider is then checked as it is called); without, the first mismatch is
/// returned before any provider runs.
fn precheck<A, O>(list: &[ProviderCall], ignore_errors: bool) -> Result<bool, Error> {
    for provider in list {
        if let Err(err) = type_check::<A, O>(provider) {
            if ignore_errors {
                return Ok(false);
            }
            return Err(err.into());
        }
    }
    Ok(true)
}

/// Calls one provider, checking its types first unless all were checked.
#[inline]
fn checked_call<A, O>(
    provider: &ProviderCall,
    args: &A,
    all_match: bool,
) -> Result<O, ProviderError> {
    if !all_match {
        type_check::<A, O>(provider)?;
    }
    call(provider, args)
}

/// Default apply over providers whose types all match.
fn apply_values<A, O>(list: &[ProviderCall], args: &A) -> Result<Vec<O>, Error> {
    let mut values = Vec::with_capacity(list.len());
    for provider in list {
        values.push(call(provider, args)?);
    }
    Ok(values)
}

fn apply_results<A: Sync, O: Send>(
    shared: &Shared,
    list: &[ProviderCall],
    args: &A,
    opts: Opts,
    all_match: bool,
) -> Result<Vec<Result<O, ProviderError>>, Error> {
    let opts = opts.check()?;
    if opts.pipe {
        return Err(Error::IncompatibleOptions(
            "`pipe` changes the result type: call `pipe` instead of `apply`",
        ));
    }
    let results = if opts.concurrent && list.len() > 1 {
        run_concurrent(shared, list, |provider| {
            checked_call(provider, args, all_match)
        })
    } else {
        let mut results = Vec::with_capacity(list.len());
        for provider in list {
            let result = checked_call(provider, args, all_match);
            let failed = result.is_err();
            results.push(result);
            if failed && !opts.ignore_errors {
                break;
            }
        }
        results
    };
    if !opts.ignore_errors {
        if let Some(position) = results.iter().position(Result::is_err) {
            let mut results = results;
            return Err(results
                .swap_remove(position)
                .err()
                .expect("an error")
                .into());
        }
    }
    Ok(results)
}

/// Runs `call` for every provider on the registry's pool; results in provider order.
pub(crate) fn run_concurrent<R: Send>(
    shared: &Shared,
    list: &[ProviderCall],
    call: impl Fn(&ProviderCall) -> R + Sync,
) -> Vec<R> {
    let mut slots: Vec<Option<R>> = (0..list.len()).map(|_| None).collect();
    let call = &call;
    shared.pool.scope(|scope| {
        for (provider, slot) in list.iter().zip(slots.iter_mut()) {
            scope.spawn(move |_| *slot = Some(call(provider)));
        }
    });
    slots
        .into_iter()
        .map(|slot| slot.expect("every provider ran"))
        .collect()
}

fn decide_list<A, T>(
    list: &[ProviderCall],
    args: &A,
    opts: Opts,
    all_match: bool,
) -> Result<Decision<T>, Error> {
    refuse_for_decide(opts)?;
    let mut output = MaybeUninit::<Decision<T>>::uninit();
    for provider in list {
        let answered = if all_match {
            call_into(provider, args, &mut output)
        } else {
            type_check::<A, Decision<T>>(provider)
                .and_then(|()| call_into(provider, args, &mut output))
        };
        match answered {
            // Look at the tag in place: moving the whole value out right after the plugin wrote
            // it stalls on store forwarding, and most providers do not decide.
            // SAFETY: `call_into` returned OK, so the output is initialised.
            Ok(()) => match unsafe { output.assume_init_ref() } {
                Decision::Decided(_) => return Ok(unsafe { output.assume_init_read() }),
                Decision::NoDecision => unsafe { output.assume_init_drop() },
            },
            Err(err) if opts.ignore_errors => {
                tracing::debug!("{err}; counted as no decision");
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(Decision::NoDecision)
}

/// `decide` asks providers one at a time and stops at the first decision.
pub(crate) fn refuse_for_decide(opts: Opts) -> Result<(), Error> {
    if opts.concurrent || opts.pipe {
        return Err(Error::IncompatibleOptions(
            "`decide` asks providers one at a time: `concurrent` and `pipe` do not apply",
        ));
    }
    Ok(())
}

fn pipe_list<T>(list: &[ProviderCall], input: T, opts: Opts, all_match: bool) -> Result<T, Error> {
    opts.pipe().check()?;
    let mut value = input;
    for provider in list {
        match checked_call::<T, T>(provider, &value, all_match) {
            Ok(next) => value = next,
            Err(err) if opts.ignore_errors => {
                tracing::debug!("{err}; value passed on unchanged");
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(value)
}
