//! Typed calls: [`ServiceHandle`] and [`Function`] with `apply`, `decide`, `pipe`, `any`, `all`.
//!
//! A call loads the current snapshot (no lock), finds the function's providers already in
//! order, and calls each one. A provider of a plugin on the native path gets the arguments by
//! pointer through its typed shim; one on the stable path gets them as JSON (encoded once per
//! call) and answers JSON. On the native path the only allocation is the result vector of
//! `apply`; `decide`, `pipe`, `any` and `all` allocate nothing themselves.
//!
//! Argument and output types are checked against each provider's declaration (`witness`): a
//! provider can only be called through a [`witness::Typed`] that a check produced. A
//! [`Function`] remembers the snapshot it checked, so it checks once per reload.

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::abi::{STATUS_BAD_INPUT, STATUS_FAILED, STATUS_PANICKED};
use crate::error::{Error, Failure, ProviderError};
use crate::ids::{FunctionId, Interner, ServiceId};
use crate::snapshot::{ProviderCall, Snapshot};
use epi_plugin::Decision;

use witness::{Args, Checked};

/// What a host-side argument type must be: shared by every provider, and encodable for
/// plugins on the stable path (whose type check traces its shape).
pub trait Argument: Serialize + DeserializeOwned + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Sync + 'static> Argument for T {}

/// What a host-side output type must be: decodable from plugins on the stable path.
pub trait Output: DeserializeOwned + Send + 'static {}
impl<T: DeserializeOwned + Send + 'static> Output for T {}

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

/// What handles call through: the current dispatch table, the ids of names, and the pool for
/// concurrent calls. The registry publishes tables; handles only read them.
pub(crate) struct Dispatcher {
    /// The current dispatch table.
    pub(crate) current: ArcSwap<Snapshot>,
    /// Names to ids (shared with the data hub).
    pub(crate) interner: Arc<Mutex<Interner>>,
    /// Runs `concurrent` calls.
    pub(crate) pool: rayon::ThreadPool,
}

impl Dispatcher {
    /// A handle to a service.
    pub(crate) fn service(self: &Arc<Self>, name: &str) -> ServiceHandle {
        let (id, name) = self.interner.lock().service(name);
        ServiceHandle::new(self.clone(), id, name)
    }
}

/// A resolved service: call its functions by name. Valid across reloads; cheap to clone.
#[derive(Clone)]
pub struct ServiceHandle {
    shared: Arc<Dispatcher>,
    id: ServiceId,
    name: Arc<str>,
}

/// A resolved function with its argument and output types: the fastest way to call.
///
/// `A` is what every provider receives by reference; `O` what each returns (for `decide`,
/// `O` is [`Decision<T>`]; for `pipe`, `O` is `A`).
pub struct Function<A, O> {
    shared: Arc<Dispatcher>,
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
    pub(crate) fn new(shared: Arc<Dispatcher>, id: ServiceId, name: Arc<str>) -> Self {
        ServiceHandle { shared, id, name }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A typed handle to one of the service's functions.
    pub fn function<A, O>(&self, name: &str) -> Function<A, O> {
        let (id, name) = self.shared.interner.lock().function(self.id, name);
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
    pub fn apply<A: Argument, O: Output>(&self, function: &str, args: &A) -> Result<Vec<O>, Error> {
        let _span = tracing::trace_span!("epi.apply", service = %self.name, function).entered();
        let snapshot = self.shared.current.load();
        let list = self.list(&snapshot, function)?;
        let checked =
            witness::precheck::<A, O>(list, false)?.expect("checked without ignore_errors");
        apply_values(checked, args)
    }

    /// `apply` with options: with `ignore_errors` failures stay in the list as per-provider
    /// errors; with `concurrent` providers run in parallel. `pipe` is refused: use
    /// [`ServiceHandle::pipe`].
    pub fn apply_with<A: Argument, O: Output>(
        &self,
        function: &str,
        args: &A,
        opts: Opts,
    ) -> Result<Vec<Result<O, ProviderError>>, Error> {
        let _span = tracing::trace_span!("epi.apply", service = %self.name, function).entered();
        let snapshot = self.shared.current.load();
        let list = self.list(&snapshot, function)?;
        let checked = witness::precheck::<A, O>(list, opts.ignore_errors)?;
        apply_results(&self.shared, list, checked, args, opts)
    }

    /// Asks providers in order until one returns `Decided`; none → `NoDecision`.
    pub fn decide<A: Argument, T: DeserializeOwned + 'static>(
        &self,
        function: &str,
        args: &A,
        opts: Opts,
    ) -> Result<Decision<T>, Error> {
        let _span = tracing::trace_span!("epi.decide", service = %self.name, function).entered();
        let snapshot = self.shared.current.load();
        let list = self.list(&snapshot, function)?;
        let checked = witness::precheck::<A, Decision<T>>(list, opts.ignore_errors)?;
        decide_list(list, checked, args, opts)
    }

    /// Passes `input` through every provider in order, each one's output the next one's input.
    /// No providers → `input` comes back unchanged.
    pub fn pipe<T: Argument + Send>(
        &self,
        function: &str,
        input: T,
        opts: Opts,
    ) -> Result<T, Error> {
        let _span = tracing::trace_span!("epi.pipe", service = %self.name, function).entered();
        let snapshot = self.shared.current.load();
        let list = self.list(&snapshot, function)?;
        let checked = witness::precheck::<T, T>(list, opts.ignore_errors)?;
        pipe_list(list, checked, input, opts)
    }

    /// True when some provider returned `true` (couch_epi's `any`).
    pub fn any<A: Argument>(&self, function: &str, args: &A, opts: Opts) -> Result<bool, Error> {
        Ok(any_true(&self.apply_with::<A, bool>(function, args, opts)?))
    }

    /// True when there are providers and every one returned `true` (couch_epi's `all`).
    pub fn all<A: Argument>(&self, function: &str, args: &A, opts: Opts) -> Result<bool, Error> {
        Ok(all_true(&self.apply_with::<A, bool>(function, args, opts)?))
    }
}

impl<A, O> Function<A, O> {
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
}

/// A function's providers, with the proof that all match the handle's types when they do.
type Resolved<'s, A, O> = (&'s [ProviderCall], Option<Checked<'s, A, O>>);

impl<A: Argument, O: Output> Function<A, O> {
    /// Providers of the current snapshot, with the proof that all of them match `A` and `O`
    /// when they do (checked once per snapshot generation).
    #[inline]
    fn resolve<'s>(
        &self,
        snapshot: &'s Snapshot,
        ignore_errors: bool,
    ) -> Result<Resolved<'s, A, O>, Error> {
        let list = snapshot
            .providers(self.service, self.id)
            .ok_or_else(|| Error::UnknownService(self.service_name.clone()))?;
        if self.checked.load(Ordering::Relaxed) == snapshot.generation {
            // SAFETY: this handle checked every provider of this generation's list against
            // `A` and `O`; a generation's lists never change.
            return Ok((list, Some(unsafe { Checked::assume_checked(list) })));
        }
        let checked = witness::precheck::<A, O>(list, ignore_errors)?;
        if checked.is_some() {
            self.checked.store(snapshot.generation, Ordering::Relaxed);
        }
        Ok((list, checked))
    }

    /// Calls every provider in order; results in provider order; the first error stops the
    /// call and is returned.
    pub fn apply(&self, args: &A) -> Result<Vec<O>, Error> {
        let _span =
            tracing::trace_span!("epi.apply", service = %self.service_name, function = %self.name)
                .entered();
        let snapshot = self.shared.current.load();
        let (_, checked) = self.resolve(&snapshot, false)?;
        apply_values(checked.expect("checked without ignore_errors"), args)
    }

    /// `apply` with options (see [`ServiceHandle::apply_with`]).
    pub fn apply_with(&self, args: &A, opts: Opts) -> Result<Vec<Result<O, ProviderError>>, Error> {
        let _span =
            tracing::trace_span!("epi.apply", service = %self.service_name, function = %self.name)
                .entered();
        let snapshot = self.shared.current.load();
        let (list, checked) = self.resolve(&snapshot, opts.ignore_errors)?;
        apply_results(&self.shared, list, checked, args, opts)
    }
}

impl<A: Argument> Function<A, bool> {
    /// True when some provider returned `true`.
    pub fn any(&self, args: &A, opts: Opts) -> Result<bool, Error> {
        Ok(any_true(&self.apply_with(args, opts)?))
    }

    /// True when there are providers and every one returned `true`.
    pub fn all(&self, args: &A, opts: Opts) -> Result<bool, Error> {
        Ok(all_true(&self.apply_with(args, opts)?))
    }
}

impl<A: Argument, T: DeserializeOwned + Send + 'static> Function<A, Decision<T>> {
    /// Asks providers in order until one returns `Decided`; none → `NoDecision`.
    pub fn decide(&self, args: &A, opts: Opts) -> Result<Decision<T>, Error> {
        let _span =
            tracing::trace_span!("epi.decide", service = %self.service_name, function = %self.name)
                .entered();
        let snapshot = self.shared.current.load();
        let (list, checked) = self.resolve(&snapshot, opts.ignore_errors)?;
        decide_list(list, checked, args, opts)
    }
}

impl<T: Argument + Send> Function<T, T> {
    /// Passes `input` through every provider in order (see [`ServiceHandle::pipe`]).
    pub fn pipe(&self, input: T, opts: Opts) -> Result<T, Error> {
        let _span =
            tracing::trace_span!("epi.pipe", service = %self.service_name, function = %self.name)
                .entered();
        let snapshot = self.shared.current.load();
        let (list, checked) = self.resolve(&snapshot, opts.ignore_errors)?;
        pipe_list(list, checked, input, opts)
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

/// Type checks and the proofs calls require.
///
/// A provider's shims trust the types they are given: the native shim reads its arguments and
/// writes its output by pointer. The only way to call one is through a [`Typed`], and the only
/// ways to get one are a passed check ([`check`], [`precheck`]) or a [`Checked`] list, itself
/// made by [`precheck`] or asserted by a caller that checked the same immutable list before.
pub(crate) mod witness {
    use std::collections::HashMap;
    use std::marker::PhantomData;
    use std::mem::MaybeUninit;
    use std::sync::{Arc, OnceLock};

    use parking_lot::RwLock;
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use crate::abi::manifest::TypeDesc;
    use crate::abi::{RVec, StrRef, ENCODING_MSGPACK, STATUS_OK};
    use crate::error::{Error, Failure, ProviderError};
    use crate::snapshot::ProviderCall;

    use super::{failure, provider_error};

    /// Whether `desc` is `T` as this build compiled it (native path).
    fn is_native<T>(desc: &TypeDesc) -> bool {
        desc.size == std::mem::size_of::<T>()
            && desc.align == std::mem::align_of::<T>()
            && desc.name == std::any::type_name::<T>()
    }

    /// The serde shape of `T`, traced once per type for the life of the process.
    fn shape<T: DeserializeOwned + 'static>() -> Arc<str> {
        static SHAPES: OnceLock<RwLock<HashMap<std::any::TypeId, Arc<str>>>> = OnceLock::new();
        let shapes = SHAPES.get_or_init(Default::default);
        let id = std::any::TypeId::of::<T>();
        if let Some(shape) = shapes.read().get(&id) {
            return shape.clone();
        }
        let shape: Arc<str> = crate::describe::shape_of::<T>().into();
        shapes.write().entry(id).or_insert(shape).clone()
    }

    /// Whether `desc` describes `T` on the provider's call path.
    fn matches<T: DeserializeOwned + 'static>(provider: &ProviderCall, desc: &TypeDesc) -> bool {
        if provider.typed.is_some() {
            is_native::<T>(desc)
        } else {
            *desc.shape == *shape::<T>()
        }
    }

    /// A provider proven to take `&A` and return `O`.
    pub(crate) struct Typed<'s, A, O> {
        provider: &'s ProviderCall,
        _types: PhantomData<fn(&A) -> O>,
    }

    impl<A, O> Clone for Typed<'_, A, O> {
        fn clone(&self) -> Self {
            *self
        }
    }
    impl<A, O> Copy for Typed<'_, A, O> {}

    /// A provider list proven to take `&A` and return `O`, every one of them.
    pub(crate) struct Checked<'s, A, O> {
        list: &'s [ProviderCall],
        _types: PhantomData<fn(&A) -> O>,
    }

    impl<A, O> Clone for Checked<'_, A, O> {
        fn clone(&self) -> Self {
            *self
        }
    }
    impl<A, O> Copy for Checked<'_, A, O> {}

    impl<'s, A, O> Checked<'s, A, O> {
        /// A list checked before.
        ///
        /// # Safety
        /// Every provider of `list` passed [`check::<A, O>`](check).
        pub(crate) unsafe fn assume_checked(list: &'s [ProviderCall]) -> Self {
            Checked {
                list,
                _types: PhantomData,
            }
        }

        pub(crate) fn len(&self) -> usize {
            self.list.len()
        }

        pub(crate) fn get(&self, index: usize) -> Typed<'s, A, O> {
            Typed {
                provider: &self.list[index],
                _types: PhantomData,
            }
        }

        pub(crate) fn iter(&self) -> impl Iterator<Item = Typed<'s, A, O>> + 's {
            self.list.iter().map(|provider| Typed {
                provider,
                _types: PhantomData,
            })
        }
    }

    /// Checks that `provider` declares exactly `A -> O` on its call path.
    pub(crate) fn check<'s, A, O>(
        provider: &'s ProviderCall,
    ) -> Result<Typed<'s, A, O>, ProviderError>
    where
        A: DeserializeOwned + 'static,
        O: DeserializeOwned + 'static,
    {
        if matches::<A>(provider, &provider.args) && matches::<O>(provider, &provider.output) {
            return Ok(Typed {
                provider,
                _types: PhantomData,
            });
        }
        let (expected, found) = if provider.typed.is_some() {
            (
                format!(
                    "fn(&{}) -> {}",
                    std::any::type_name::<A>(),
                    std::any::type_name::<O>()
                ),
                format!("fn(&{}) -> {}", provider.args.name, provider.output.name),
            )
        } else {
            (
                format!(
                    "fn(&{}) -> {} with shapes {} -> {}",
                    std::any::type_name::<A>(),
                    std::any::type_name::<O>(),
                    shape::<A>(),
                    shape::<O>()
                ),
                format!(
                    "fn(&{}) -> {} with shapes {} -> {}",
                    provider.args.name,
                    provider.output.name,
                    provider.args.shape,
                    provider.output.shape
                ),
            )
        };
        Err(provider_error(
            provider,
            Failure::TypeMismatch { expected, found },
        ))
    }

    /// Checks every provider. `Some`: all match. With `ignore_errors`, a mismatch gives `None`
    /// (each provider is then checked as it is called); without, the first mismatch is returned
    /// before any provider runs.
    pub(crate) fn precheck<A, O>(
        list: &[ProviderCall],
        ignore_errors: bool,
    ) -> Result<Option<Checked<'_, A, O>>, Error>
    where
        A: DeserializeOwned + 'static,
        O: DeserializeOwned + 'static,
    {
        for provider in list {
            if let Err(err) = check::<A, O>(provider) {
                if ignore_errors {
                    return Ok(None);
                }
                return Err(err.into());
            }
        }
        // SAFETY: every provider passed `check` just above.
        Ok(Some(unsafe { Checked::assume_checked(list) }))
    }

    /// A call's arguments, encoded on first need (stable-path providers), once per call.
    pub(crate) struct Args<'a, A> {
        value: &'a A,
        encoded: OnceLock<Result<Vec<u8>, String>>,
    }

    impl<'a, A: Serialize> Args<'a, A> {
        pub(crate) fn new(value: &'a A) -> Self {
            Args {
                value,
                encoded: OnceLock::new(),
            }
        }

        fn encoded(&self) -> Result<&[u8], &str> {
            match self
                .encoded
                .get_or_init(|| rmp_serde::to_vec_named(self.value).map_err(|err| err.to_string()))
            {
                Ok(bytes) => Ok(bytes),
                Err(reason) => Err(reason),
            }
        }
    }

    /// The largest output buffer a thread keeps for its next stable call.
    const MAX_KEPT_OUTPUT: usize = 64 * 1024;

    thread_local! {
        /// Each thread's output buffer for stable calls: its capacity is reused.
        static OUTPUT: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    }

    impl<'s, A: Serialize, O: DeserializeOwned> Typed<'s, A, O> {
        /// Calls the provider, leaving its output in `output` (initialised on `Ok`), so a
        /// caller can inspect it in place instead of moving it.
        #[inline]
        pub(crate) fn call_into(
            self,
            args: &Args<'_, A>,
            output: &mut MaybeUninit<O>,
        ) -> Result<(), ProviderError> {
            let provider = self.provider;
            if provider.count_calls {
                provider
                    .counters
                    .calls
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let mut error = RVec::new();
            let status = match provider.typed {
                // SAFETY: `self` proves the provider declares exactly `A -> O` as this build
                // compiled them (native path); its plugin is mapped while the snapshot lives;
                // the shim writes `output` only on OK and catches panics.
                Some(typed) => unsafe {
                    typed(
                        provider.instance,
                        args.value as *const A as *const std::ffi::c_void,
                        output.as_mut_ptr() as *mut std::ffi::c_void,
                        &mut error,
                    )
                },
                None => return self.call_stable(args, output),
            };
            if status == STATUS_OK {
                Ok(())
            } else {
                Err(failure(provider, status, crate::loader::bytes(error)))
            }
        }

        /// The stable path: arguments and output as MessagePack.
        #[inline(never)]
        fn call_stable(
            self,
            args: &Args<'_, A>,
            output: &mut MaybeUninit<O>,
        ) -> Result<(), ProviderError> {
            let provider = self.provider;
            let input = args.encoded().map_err(|reason| {
                provider_error(
                    provider,
                    Failure::BadInput(format!("cannot encode the arguments: {reason}")),
                )
            })?;
            let mut result = RVec::from_vec(OUTPUT.take());
            let mut error = RVec::new();
            // SAFETY: the stable shim takes any bytes and fills the buffers through the shared
            // allocator; the plugin is mapped while the snapshot lives; it catches panics.
            let status = unsafe {
                (provider.stable)(
                    provider.instance,
                    ENCODING_MSGPACK,
                    StrRef::bytes(input),
                    &mut result,
                    &mut error,
                )
            };
            let result = crate::loader::bytes(result);
            let decoded = if status == STATUS_OK {
                rmp_serde::from_slice(&result)
                    .map_err(|err| provider_error(provider, Failure::BadOutput(err.to_string())))
            } else {
                Err(failure(provider, status, crate::loader::bytes(error)))
            };
            // Keep the buffer for the next call unless a large result made it large.
            if result.capacity() <= MAX_KEPT_OUTPUT {
                OUTPUT.set(result);
            }
            output.write(decoded?);
            Ok(())
        }

        /// Calls the provider and returns its output.
        #[inline]
        pub(crate) fn call(self, args: &Args<'_, A>) -> Result<O, ProviderError> {
            let mut output = MaybeUninit::<O>::uninit();
            self.call_into(args, &mut output)?;
            // SAFETY: `call_into` returned OK, so the output is initialised.
            Ok(unsafe { output.assume_init() })
        }
    }
}

/// Builds the error for a status other than OK.
#[cold]
pub(crate) fn failure(provider: &ProviderCall, status: u32, message: Vec<u8>) -> ProviderError {
    let message = String::from_utf8(message)
        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned());
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

/// Calls one provider, checking its types first unless the whole list was checked.
#[inline]
fn checked_call<A: Argument, O: Output>(
    list: &[ProviderCall],
    checked: Option<Checked<'_, A, O>>,
    index: usize,
    args: &Args<'_, A>,
) -> Result<O, ProviderError> {
    let typed = match checked {
        Some(checked) => checked.get(index),
        None => witness::check::<A, O>(&list[index])?,
    };
    typed.call(args)
}

/// Default apply over providers whose types all match.
fn apply_values<A: Argument, O: Output>(
    checked: Checked<'_, A, O>,
    args: &A,
) -> Result<Vec<O>, Error> {
    let args = Args::new(args);
    let mut values = Vec::with_capacity(checked.len());
    for typed in checked.iter() {
        values.push(typed.call(&args)?);
    }
    Ok(values)
}

fn apply_results<A: Argument, O: Output>(
    shared: &Dispatcher,
    list: &[ProviderCall],
    checked: Option<Checked<'_, A, O>>,
    args: &A,
    opts: Opts,
) -> Result<Vec<Result<O, ProviderError>>, Error> {
    let opts = opts.check()?;
    if opts.pipe {
        return Err(Error::IncompatibleOptions(
            "`pipe` changes the result type: call `pipe` instead of `apply`",
        ));
    }
    let args = Args::new(args);
    let results = if opts.concurrent && list.len() > 1 {
        let indexes: Vec<usize> = (0..list.len()).collect();
        run_concurrent(shared, &indexes, |&index| {
            checked_call(list, checked, index, &args)
        })
    } else {
        let mut results = Vec::with_capacity(list.len());
        for index in 0..list.len() {
            let result = checked_call(list, checked, index, &args);
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

/// Runs `call` for every item on the registry's pool; results in item order.
pub(crate) fn run_concurrent<T: Sync, R: Send>(
    shared: &Dispatcher,
    items: &[T],
    call: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let call = &call;
    shared.pool.scope(|scope| {
        for (item, slot) in items.iter().zip(slots.iter_mut()) {
            scope.spawn(move |_| *slot = Some(call(item)));
        }
    });
    slots
        .into_iter()
        .map(|slot| slot.expect("every provider ran"))
        .collect()
}

fn decide_list<A: Argument, T: DeserializeOwned + 'static>(
    list: &[ProviderCall],
    checked: Option<Checked<'_, A, Decision<T>>>,
    args: &A,
    opts: Opts,
) -> Result<Decision<T>, Error> {
    refuse_for_decide(opts)?;
    let args = Args::new(args);
    let mut output = MaybeUninit::<Decision<T>>::uninit();
    for (index, provider) in list.iter().enumerate() {
        let answered = match checked {
            Some(checked) => checked.get(index).call_into(&args, &mut output),
            None => witness::check::<A, Decision<T>>(provider)
                .and_then(|typed| typed.call_into(&args, &mut output)),
        };
        match answered {
            // Look at the tag in place: moving the whole value out right after the plugin wrote
            // it stalls on store forwarding, and most providers do not decide.
            // SAFETY: `call_into` returned OK, so the output is initialised.
            Ok(()) => match unsafe { output.assume_init_ref() } {
                // SAFETY: initialised (above); read once, then the loop ends.
                Decision::Decided(_) => return Ok(unsafe { output.assume_init_read() }),
                // SAFETY: initialised (above); dropped once before the next provider writes.
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

fn pipe_list<T: Argument + Send>(
    list: &[ProviderCall],
    checked: Option<Checked<'_, T, T>>,
    input: T,
    opts: Opts,
) -> Result<T, Error> {
    opts.pipe().check()?;
    let mut value = input;
    for index in 0..list.len() {
        match checked_call::<T, T>(list, checked, index, &Args::new(&value)) {
            Ok(next) => value = next,
            Err(err) if opts.ignore_errors => {
                tracing::debug!("{err}; value passed on unchanged");
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(value)
}
