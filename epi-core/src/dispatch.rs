//! Typed calls from the host: [`ServiceHandle`] and [`Function`] with `apply`, `decide`,
//! `pipe`, `any`, `all`.
//!
//! A call loads the current snapshot (no lock), finds the function's providers already in
//! order, and runs the dispatch core ([`epi_plugin::call`]) over them: the same code plugins
//! run when they call services through the host. A [`Function`] remembers the snapshot it
//! type-checked, so it checks once per reload. On the native path the only allocation is the
//! result vector of `apply`; `decide`, `pipe`, `any` and `all` allocate nothing themselves.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;

use crate::error::{Error, ProviderError};
use crate::ids::{FunctionId, Interner, ServiceId};
use crate::snapshot::Snapshot;
use epi_plugin::call::{self as core, Checked, Providers};
pub use epi_plugin::call::{Answer, Argument, Output};
pub use epi_plugin::opts::{ApplyOpts, DecideOpts, Opts, PipeOpts};
use epi_plugin::Decision;

/// Runs `$body` inside the call's span when the `TRACE` level is on, and without one after a
/// single check of the level otherwise: the typed calls' hot path, which pays neither for a
/// disabled span nor for dropping an `Option` of one.
macro_rules! traced {
    (($($span:tt)*), $body:block) => {
        if tracing::level_enabled!(tracing::Level::TRACE) {
            let _span = tracing::trace_span!($($span)*).entered();
            $body
        } else {
            $body
        }
    };
}

/// What handles call through: the current dispatch table, the ids of names, and the pool for
/// concurrent calls. The registry publishes tables; handles only read them.
pub(crate) struct Dispatcher {
    /// The current dispatch table.
    pub(crate) current: crate::published::Published<Snapshot>,
    /// Names to ids (shared with the data hub).
    pub(crate) interner: Arc<Mutex<Interner>>,
    /// Runs `concurrent` calls.
    pub(crate) pool: crate::pool::CallPool,
    /// How deeply calls from plugins may nest on one thread.
    pub(crate) max_depth: usize,
}

thread_local! {
    /// The dispatch table a call in progress on this thread holds (and of which dispatcher):
    /// calls that plugins make from inside it read the same table without pinning it again.
    static PINNED: std::cell::Cell<(*const Dispatcher, *const Snapshot)> =
        const { std::cell::Cell::new((std::ptr::null(), std::ptr::null())) };
}

/// Marks `snapshot` as the table this thread's calls read until dropped; restores the
/// previous mark then. The caller keeps `snapshot` alive for as long as the mark exists.
pub(crate) struct Pinned {
    previous: (*const Dispatcher, *const Snapshot),
}

impl Pinned {
    #[inline]
    pub(crate) fn new(dispatcher: &Dispatcher, snapshot: &Snapshot) -> Self {
        Pinned {
            previous: PINNED.replace((dispatcher, snapshot)),
        }
    }

    /// The table a call in progress on this thread holds for `dispatcher`, if any.
    #[inline]
    pub(crate) fn current(dispatcher: &Dispatcher) -> Option<*const Snapshot> {
        let (pinned, snapshot) = PINNED.get();
        std::ptr::eq(pinned, dispatcher).then_some(snapshot)
    }
}

impl Drop for Pinned {
    #[inline]
    fn drop(&mut self) {
        PINNED.set(self.previous);
    }
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
        self.shared.current.pin().is_declared(self.id)
    }

    /// Whether any provider implements `function` (couch_epi's `is_configured`).
    pub fn is_configured(&self, function: &str) -> bool {
        let snapshot = self.shared.current.pin();
        snapshot
            .providers_by_name(self.id, function)
            .is_some_and(|list| !list.is_empty())
    }

    fn list<'s>(&self, snapshot: &'s Snapshot, function: &str) -> Result<Providers<'s>, Error> {
        let list = snapshot
            .providers_by_name(self.id, function)
            .ok_or_else(|| Error::UnknownService(self.name.clone()))?;
        // SAFETY: the snapshot's entries describe its loaded plugins' providers and live as
        // long as the snapshot.
        Ok(unsafe { Providers::new(list) })
    }

    /// Calls `function` of every provider in order and returns their results in that order.
    /// The first error stops the call and is returned.
    pub fn apply<A: Argument, O: Output>(&self, function: &str, args: &A) -> Result<Vec<O>, Error> {
        traced!(("epi.apply", service = %self.name, function), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let list = self.list(&snapshot, function)?;
            let checked = core::precheck::<A, O>(list, false)?.expect("checked without ignore_errors");
            core::apply(checked, args)
        })
    }

    /// `apply` with options: with `ignore_errors` failures stay in the list as per-provider
    /// errors; with `concurrent` providers run in parallel. `pipe` is refused: use
    /// [`ServiceHandle::pipe`].
    pub fn apply_with<A: Argument, O: Output>(
        &self,
        function: &str,
        args: &A,
        opts: ApplyOpts,
    ) -> Result<Vec<Result<O, ProviderError>>, Error> {
        traced!(("epi.apply", service = %self.name, function), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let list = self.list(&snapshot, function)?;
            let checked = core::precheck::<A, O>(list, opts.ignore_errors)?;
            core::apply_with(&*self.shared, list, checked, args, opts)
        })
    }

    /// Asks providers in order until one returns `Decided`; none → `NoDecision`.
    pub fn decide<A: Argument, T: DeserializeOwned + 'static>(
        &self,
        function: &str,
        args: &A,
        opts: DecideOpts,
    ) -> Result<Decision<T>, Error> {
        traced!(("epi.decide", service = %self.name, function), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let list = self.list(&snapshot, function)?;
            let checked = core::precheck::<A, Decision<T>>(list, opts.ignore_errors)?;
            core::decide(list, checked, args, opts)
        })
    }

    /// Passes `input` through every provider in order, each one's output the next one's input.
    /// No providers → `input` comes back unchanged.
    pub fn pipe<T: Argument + Send>(
        &self,
        function: &str,
        input: T,
        opts: PipeOpts,
    ) -> Result<T, Error> {
        traced!(("epi.pipe", service = %self.name, function), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let list = self.list(&snapshot, function)?;
            let checked = core::precheck::<T, T>(list, opts.ignore_errors)?;
            core::pipe(list, checked, input, opts)
        })
    }

    /// True when some provider returned `true` (couch_epi's `any`).
    pub fn any<A: Argument>(
        &self,
        function: &str,
        args: &A,
        opts: ApplyOpts,
    ) -> Result<bool, Error> {
        self.truth(function, args, opts, core::Truth::Any)
    }

    /// True unless some provider returned `false` (couch_epi's `all`: `true` with no providers).
    pub fn all<A: Argument>(
        &self,
        function: &str,
        args: &A,
        opts: ApplyOpts,
    ) -> Result<bool, Error> {
        self.truth(function, args, opts, core::Truth::All)
    }

    fn truth<A: Argument>(
        &self,
        function: &str,
        args: &A,
        opts: ApplyOpts,
        fold: core::Truth,
    ) -> Result<bool, Error> {
        traced!(("epi.apply", service = %self.name, function), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let list = self.list(&snapshot, function)?;
            let checked = core::precheck::<A, bool>(list, opts.ignore_errors)?;
            core::truth(&*self.shared, list, checked, args, opts, fold)
        })
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
        let snapshot = self.shared.current.pin();
        snapshot
            .providers(self.service, self.id)
            .is_some_and(|list| !list.is_empty())
    }
}

/// A dispatch table held as it was when taken: calls made through it (`apply_at`,
/// `decide_at`) reach the providers it lists, whatever loads, upgrades and unloads happen
/// meanwhile, and the plugin versions it lists stay loaded while it lives. For work that must
/// finish on the version that started it (a streamed body pulled chunk by chunk); hold it no
/// longer than that work, since it keeps retired versions mapped.
#[derive(Clone)]
pub struct Table {
    dispatcher: Arc<Dispatcher>,
    snapshot: Arc<Snapshot>,
}

impl<A, O> Function<A, O> {
    /// The current dispatch table of this function's registry, held (see [`Table`]).
    pub fn table(&self) -> Table {
        Table {
            dispatcher: self.shared.clone(),
            snapshot: self.shared.current.load_full(),
        }
    }

    /// The snapshot of `table`, if it belongs to this function's registry.
    fn held<'t>(&self, table: &'t Table) -> Result<&'t Arc<Snapshot>, Error> {
        if Arc::ptr_eq(&table.dispatcher, &self.shared) {
            Ok(&table.snapshot)
        } else {
            Err(Error::IncompatibleOptions(
                "the table belongs to another registry",
            ))
        }
    }
}

impl<A: Argument, O: Output> Function<A, O> {
    /// [`Function::apply`] through a held table.
    pub fn apply_at(&self, table: &Table, args: &A) -> Result<Vec<O>, Error> {
        let snapshot = self.held(table)?;
        let _pinned = Pinned::new(&self.shared, snapshot);
        let (_, checked) = self.resolve(snapshot, false)?;
        core::apply(checked.expect("checked without ignore_errors"), args)
    }
}

impl<A: Argument, T: DeserializeOwned + Send + 'static> Function<A, Decision<T>> {
    /// [`Function::decide`] through a held table.
    pub fn decide_at(
        &self,
        table: &Table,
        args: &A,
        opts: DecideOpts,
    ) -> Result<Decision<T>, Error> {
        let snapshot = self.held(table)?;
        let _pinned = Pinned::new(&self.shared, snapshot);
        let (list, checked) = self.resolve(snapshot, opts.ignore_errors)?;
        core::decide(list, checked, args, opts)
    }
}

/// A function's providers, with the proof that all match the handle's types when they do.
type Resolved<'s, A, O> = (Providers<'s>, Option<Checked<'s, A, O>>);

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
        // SAFETY: the snapshot's entries describe its loaded plugins' providers and live as
        // long as the snapshot.
        let list = unsafe { Providers::new(list) };
        if self.checked.load(Ordering::Relaxed) == snapshot.generation {
            // SAFETY: this handle checked every provider of this generation's list against
            // `A` and `O`; a generation's lists never change.
            return Ok((list, Some(unsafe { Checked::assume_checked(list) })));
        }
        let checked = core::precheck::<A, O>(list, ignore_errors)?;
        if checked.is_some() {
            self.checked.store(snapshot.generation, Ordering::Relaxed);
        }
        Ok((list, checked))
    }

    /// Calls every provider in order; results in provider order; the first error stops the
    /// call and is returned.
    pub fn apply(&self, args: &A) -> Result<Vec<O>, Error> {
        traced!(("epi.apply", service = %self.service_name, function = %self.name), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let (_, checked) = self.resolve(&snapshot, false)?;
            core::apply(checked.expect("checked without ignore_errors"), args)
        })
    }

    /// `apply` with options (see [`ServiceHandle::apply_with`]).
    pub fn apply_with(
        &self,
        args: &A,
        opts: ApplyOpts,
    ) -> Result<Vec<Result<O, ProviderError>>, Error> {
        traced!(("epi.apply", service = %self.service_name, function = %self.name), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let (list, checked) = self.resolve(&snapshot, opts.ignore_errors)?;
            core::apply_with(&*self.shared, list, checked, args, opts)
        })
    }

    /// `apply` with options, saying which provider gave each result: `(plugin, provider,
    /// result)` in provider order. Plain `apply` does not pay for the names.
    pub fn apply_answers(&self, args: &A, opts: ApplyOpts) -> Result<Vec<Answer<O>>, Error> {
        traced!(("epi.apply", service = %self.service_name, function = %self.name), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let (list, checked) = self.resolve(&snapshot, opts.ignore_errors)?;
            core::apply_answers(&*self.shared, list, checked, args, opts)
        })
    }
}

impl<A: Argument> Function<A, bool> {
    /// True when some provider returned `true`.
    pub fn any(&self, args: &A, opts: ApplyOpts) -> Result<bool, Error> {
        self.truth(args, opts, core::Truth::Any)
    }

    /// True unless some provider returned `false` (`true` with no providers, as couch_epi).
    pub fn all(&self, args: &A, opts: ApplyOpts) -> Result<bool, Error> {
        self.truth(args, opts, core::Truth::All)
    }

    fn truth(&self, args: &A, opts: ApplyOpts, fold: core::Truth) -> Result<bool, Error> {
        traced!(("epi.apply", service = %self.service_name, function = %self.name), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let (list, checked) = self.resolve(&snapshot, opts.ignore_errors)?;
            core::truth(&*self.shared, list, checked, args, opts, fold)
        })
    }
}

impl<A: Argument, T: DeserializeOwned + Send + 'static> Function<A, Decision<T>> {
    /// Asks providers in order until one returns `Decided`; none → `NoDecision`.
    pub fn decide(&self, args: &A, opts: DecideOpts) -> Result<Decision<T>, Error> {
        traced!(("epi.decide", service = %self.service_name, function = %self.name), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let (list, checked) = self.resolve(&snapshot, opts.ignore_errors)?;
            core::decide(list, checked, args, opts)
        })
    }

    /// `decide`, saying who decided: the deciding provider's plugin and label with the value
    /// (`result` is always `Ok`), or `None` when no provider decided.
    pub fn decide_answer(&self, args: &A, opts: DecideOpts) -> Result<Option<Answer<T>>, Error> {
        traced!(("epi.decide", service = %self.service_name, function = %self.name), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let (list, checked) = self.resolve(&snapshot, opts.ignore_errors)?;
            core::decide_answer(list, checked, args, opts)
        })
    }
}

impl<T: Argument + Send> Function<T, T> {
    /// Passes `input` through every provider in order (see [`ServiceHandle::pipe`]).
    pub fn pipe(&self, input: T, opts: PipeOpts) -> Result<T, Error> {
        traced!(("epi.pipe", service = %self.service_name, function = %self.name), {
            let snapshot = self.shared.current.pin();
            // Calls plugins make from inside this one read the same table.
            let _pinned = Pinned::new(&self.shared, &snapshot);
            let (list, checked) = self.resolve(&snapshot, opts.ignore_errors)?;
            core::pipe(list, checked, input, opts)
        })
    }
}

/// Calls by service and function name on the current table, for the free functions of
/// [`crate::global`]: the names are looked up in the table (no lock), the types checked per
/// call.
impl Dispatcher {
    fn named<'s>(
        snapshot: &'s Snapshot,
        service: &str,
        function: &str,
    ) -> Result<Providers<'s>, Error> {
        let list = snapshot
            .service_ids
            .get(service)
            .and_then(|&id| snapshot.providers_by_name(id, function))
            .ok_or_else(|| Error::UnknownService(service.into()))?;
        // SAFETY: the snapshot's entries describe its loaded plugins' providers and live as
        // long as the snapshot.
        Ok(unsafe { Providers::new(list) })
    }

    /// Runs `body` over the providers of `service.function` in the current table, which it
    /// pins for the calls plugins make meanwhile.
    fn with_named<R>(
        &self,
        service: &str,
        function: &str,
        body: impl FnOnce(Providers<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let snapshot = self.current.pin();
        let _pinned = Pinned::new(self, &snapshot);
        body(Self::named(&snapshot, service, function)?)
    }

    pub(crate) fn apply_named<A: Argument, O: Output>(
        &self,
        service: &str,
        function: &str,
        args: &A,
    ) -> Result<Vec<O>, Error> {
        traced!(("epi.apply", service, function), {
            self.with_named(service, function, |list| {
                let checked =
                    core::precheck::<A, O>(list, false)?.expect("checked without ignore_errors");
                core::apply(checked, args)
            })
        })
    }

    pub(crate) fn apply_with_named<A: Argument, O: Output>(
        &self,
        service: &str,
        function: &str,
        args: &A,
        opts: ApplyOpts,
    ) -> Result<Vec<Result<O, ProviderError>>, Error> {
        traced!(("epi.apply", service, function), {
            self.with_named(service, function, |list| {
                let checked = core::precheck::<A, O>(list, opts.ignore_errors)?;
                core::apply_with(self, list, checked, args, opts)
            })
        })
    }

    pub(crate) fn decide_named<A: Argument, T: DeserializeOwned + 'static>(
        &self,
        service: &str,
        function: &str,
        args: &A,
        opts: DecideOpts,
    ) -> Result<Decision<T>, Error> {
        traced!(("epi.decide", service, function), {
            self.with_named(service, function, |list| {
                let checked = core::precheck::<A, Decision<T>>(list, opts.ignore_errors)?;
                core::decide(list, checked, args, opts)
            })
        })
    }

    pub(crate) fn pipe_named<T: Argument + Send>(
        &self,
        service: &str,
        function: &str,
        input: T,
        opts: PipeOpts,
    ) -> Result<T, Error> {
        traced!(("epi.pipe", service, function), {
            self.with_named(service, function, |list| {
                let checked = core::precheck::<T, T>(list, opts.ignore_errors)?;
                core::pipe(list, checked, input, opts)
            })
        })
    }

    pub(crate) fn truth_named<A: Argument>(
        &self,
        service: &str,
        function: &str,
        args: &A,
        opts: ApplyOpts,
        fold: core::Truth,
    ) -> Result<bool, Error> {
        traced!(("epi.apply", service, function), {
            self.with_named(service, function, |list| {
                let checked = core::precheck::<A, bool>(list, opts.ignore_errors)?;
                core::truth(self, list, checked, args, opts, fold)
            })
        })
    }
}

impl core::Pool for Dispatcher {
    fn run(&self, count: usize, task: &(dyn Fn(usize) + Sync)) {
        self.pool.run(count, task);
    }
}

/// Calls by name share the dispatch core's error builders.
pub(crate) use core::{failure, provider_error, run_concurrent};
