//! Calling services through the host, from plugin code: provider methods, `notify`, process
//! bodies and threads the plugin starts.
//!
//! ```ignore
//! // Resolve once (e.g. when the plugin is created), call many times:
//! let greet = epi::host::function::<String, String>("greeting", "greet");
//! let all: Vec<String> = greet.apply(&"Ada".to_string())?;
//! let first = epi::host::function::<String, Decision<String>>("greeting", "language")
//!     .decide(&"fr".to_string(), DecideOpts::new())?;
//! ```
//!
//! The calls have the semantics, errors and ordering of the host's own (`epi::Function`): the
//! host pins its current dispatch table for the duration of the call and this plugin runs the
//! same dispatch code over it ([`crate::call`]). Providers of plugins built by the same
//! toolchain get the arguments by pointer; others get them encoded. A call may reach this
//! plugin again (re-entrancy needs no lock); calls nested deeper than the host allows fail
//! with [`Error::TooDeep`] naming the chain.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::abi::{
    CallIds, CallView, HostVTable, RVec, StrRef, STATUS_BAD_OPTIONS, STATUS_OK, STATUS_TOO_DEEP,
    STATUS_UNKNOWN_SERVICE,
};
use crate::call::{self as core, Argument, Checked, Output, Pool, Providers};
use crate::error::{Error, ProviderError};
use crate::opts::{ApplyOpts, DecideOpts, Opts, PipeOpts};
use crate::Decision;

const NO_HOST: &str = "this plugin was not loaded by an epi host";

fn host() -> Result<(&'static HostVTable, *const c_void), Error> {
    crate::runtime::host().ok_or(Error::NoHost(NO_HOST))
}

fn text(buffer: RVec<u8>) -> String {
    let bytes = core::take_bytes(buffer);
    String::from_utf8(bytes).unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into())
}

/// A function of a service, resolved once: the plugin side of `epi::Function`.
pub struct Function<A, O> {
    ids: Option<CallIds>,
    service: Arc<str>,
    name: Arc<str>,
    /// Generation of the table whose providers all matched `A` and `O`; `u64::MAX` for none.
    checked: AtomicU64,
    _types: PhantomData<fn(&A) -> O>,
}

impl<A, O> Clone for Function<A, O> {
    fn clone(&self) -> Self {
        Function {
            ids: self.ids,
            service: self.service.clone(),
            name: self.name.clone(),
            checked: AtomicU64::new(self.checked.load(Ordering::Relaxed)),
            _types: PhantomData,
        }
    }
}

/// A typed handle to `service.function`. Resolve it once and reuse it: it stays valid across
/// the host's loads, unloads and upgrades.
pub fn function<A, O>(service: &str, function: &str) -> Function<A, O> {
    let ids = crate::runtime::host().map(|(table, context)| {
        let mut ids = CallIds::default();
        // SAFETY: the host's table and this plugin's context, as `init` received them; the
        // strings live for the call.
        unsafe {
            (table.resolve)(
                context,
                StrRef::new(service),
                StrRef::new(function),
                &mut ids,
            )
        };
        ids
    });
    Function {
        ids,
        service: service.into(),
        name: function.into(),
        checked: AtomicU64::new(u64::MAX),
        _types: PhantomData,
    }
}

/// A call in progress: the host keeps its dispatch table pinned until this is dropped.
struct Entered {
    table: &'static HostVTable,
    context: *const c_void,
    view: CallView,
}

impl Entered {
    fn providers(&self) -> Providers<'_> {
        let entries = if self.view.len == 0 {
            &[][..]
        } else {
            // SAFETY: the host wrote a pointer to `len` entries of the table it pinned until
            // `leave`, which runs when `self` is dropped.
            unsafe { std::slice::from_raw_parts(self.view.entries, self.view.len) }
        };
        // SAFETY: the entries are the host's dispatch table, pinned while `self` lives.
        unsafe { Providers::new(entries) }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: one `leave` for the `enter` that made `self`, on the same thread.
        unsafe { (self.table.leave)(self.context) }
    }
}

/// The host's pool, for `concurrent` calls.
struct HostPool {
    table: &'static HostVTable,
    context: *const c_void,
}

// SAFETY: the context is the host's registry, which is shared between threads.
unsafe impl Sync for HostPool {}

unsafe extern "C" fn run_task(task: *const c_void, index: usize) {
    // SAFETY: `task` is the `&dyn Fn(usize)` `HostPool::run` passed, live until it returns.
    let task = unsafe { &*(task as *const &(dyn Fn(usize) + Sync)) };
    // The tasks call shims that catch their own panics; nothing else may unwind out of here.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(index)));
}

impl Pool for HostPool {
    fn run(&self, count: usize, task: &(dyn Fn(usize) + Sync)) {
        let task: *const &(dyn Fn(usize) + Sync) = &task;
        // SAFETY: the host runs `run_task` for each index and returns when all returned, so
        // `task` outlives every use.
        unsafe { (self.table.run_concurrent)(self.context, count, task as *const c_void, run_task) }
    }
}

impl<A, O> Function<A, O> {
    /// The service's name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn enter(&self) -> Result<Entered, Error> {
        let (table, context) = host()?;
        let ids = self.ids.ok_or(Error::NoHost(NO_HOST))?;
        let mut view = CallView {
            entries: std::ptr::null(),
            len: 0,
            generation: 0,
        };
        let mut error = RVec::new();
        // SAFETY: the host's table and this plugin's context; `view` and `error` are live.
        let status = unsafe { (table.enter)(context, ids, &mut view, &mut error) };
        match status {
            STATUS_OK => Ok(Entered {
                table,
                context,
                view,
            }),
            STATUS_UNKNOWN_SERVICE => Err(Error::UnknownService(self.service.clone())),
            STATUS_TOO_DEEP => {
                let message = text(error);
                let (max, chain) = message.split_once(':').unwrap_or(("0", &message));
                Err(Error::TooDeep {
                    max: max.parse().unwrap_or(0),
                    chain: chain.trim().to_owned(),
                })
            }
            _ => Err(Error::NoHost(NO_HOST)),
        }
    }

    /// Whether any provider implements this function now.
    pub fn is_configured(&self) -> bool {
        self.enter().is_ok_and(|call| call.view.len > 0)
    }
}

impl<A: Argument, O: Output> Function<A, O> {
    /// The providers with the proof that all match `A` and `O` when they do (checked once per
    /// table generation).
    fn checked<'s>(
        &self,
        call: &'s Entered,
        ignore_errors: bool,
    ) -> Result<Option<Checked<'s, A, O>>, Error> {
        let list = call.providers();
        if self.checked.load(Ordering::Relaxed) == call.view.generation {
            // SAFETY: this handle checked every provider of this generation's list against
            // `A` and `O`; a generation's lists never change.
            return Ok(Some(unsafe { Checked::assume_checked(list) }));
        }
        let checked = core::precheck::<A, O>(list, ignore_errors)?;
        if checked.is_some() {
            self.checked.store(call.view.generation, Ordering::Relaxed);
        }
        Ok(checked)
    }

    /// Calls every provider in order; results in provider order; the first error stops the
    /// call and is returned.
    pub fn apply(&self, args: &A) -> Result<Vec<O>, Error> {
        let call = self.enter()?;
        let checked = self.checked(&call, false)?;
        core::apply(checked.expect("checked without ignore_errors"), args)
    }

    /// `apply` with options: with `ignore_errors` failures stay in the list as per-provider
    /// errors; with `concurrent` providers run in parallel on the host's pool.
    pub fn apply_with(
        &self,
        args: &A,
        opts: ApplyOpts,
    ) -> Result<Vec<Result<O, ProviderError>>, Error> {
        let call = self.enter()?;
        let checked = self.checked(&call, opts.ignore_errors)?;
        let pool = HostPool {
            table: call.table,
            context: call.context,
        };
        core::apply_with(&pool, call.providers(), checked, args, opts)
    }
}

impl<A: Argument> Function<A, bool> {
    /// True when some provider returned `true` (couch_epi's `any`).
    pub fn any(&self, args: &A, opts: ApplyOpts) -> Result<bool, Error> {
        self.truth(args, opts, core::Truth::Any)
    }

    /// True unless some provider returned `false` (couch_epi's `all`: `true` with no providers).
    pub fn all(&self, args: &A, opts: ApplyOpts) -> Result<bool, Error> {
        self.truth(args, opts, core::Truth::All)
    }

    fn truth(&self, args: &A, opts: ApplyOpts, fold: core::Truth) -> Result<bool, Error> {
        let call = self.enter()?;
        let checked = self.checked(&call, opts.ignore_errors)?;
        let pool = HostPool {
            table: call.table,
            context: call.context,
        };
        core::truth(&pool, call.providers(), checked, args, opts, fold)
    }
}

impl<A: Argument, T: DeserializeOwned + Send + 'static> Function<A, Decision<T>> {
    /// Asks providers in order until one returns `Decided`; none → `NoDecision`.
    pub fn decide(&self, args: &A, opts: DecideOpts) -> Result<Decision<T>, Error> {
        let call = self.enter()?;
        let checked = self.checked(&call, opts.ignore_errors)?;
        core::decide(call.providers(), checked, args, opts)
    }
}

impl<T: Argument + Send> Function<T, T> {
    /// Passes `input` through every provider in order, each one's output the next one's
    /// input. No providers → `input` comes back unchanged.
    pub fn pipe(&self, input: T, opts: PipeOpts) -> Result<T, Error> {
        let call = self.enter()?;
        let checked = self.checked(&call, opts.ignore_errors)?;
        core::pipe(call.providers(), checked, input, opts)
    }
}

/// Whether any provider implements `service.function` now (couch_epi's `is_configured`).
pub fn is_configured(service: &str, function: &str) -> bool {
    self::function::<(), ()>(service, function).is_configured()
}

fn call_json(
    verb: u32,
    service: &str,
    function: &str,
    args: &Value,
    opts: Opts,
) -> Result<Value, Error> {
    let (table, context) = host()?;
    let args = serde_json::to_vec(args).map_err(|err| Error::BadArguments {
        service: service.into(),
        function: function.into(),
        reason: err.to_string(),
    })?;
    let mut output = RVec::new();
    let mut error = RVec::new();
    // SAFETY: the host's table and this plugin's context; every buffer is live.
    let status = unsafe {
        (table.call_json)(
            context,
            verb,
            StrRef::new(service),
            StrRef::new(function),
            StrRef::bytes(&args),
            opts.bits(),
            &mut output,
            &mut error,
        )
    };
    match status {
        STATUS_OK => {
            serde_json::from_slice(&core::take_bytes(output)).map_err(|err| Error::BadOutput {
                service: service.into(),
                function: function.into(),
                reason: format!("unreadable result: {err}"),
            })
        }
        STATUS_UNKNOWN_SERVICE => Err(Error::UnknownService(service.into())),
        STATUS_BAD_OPTIONS => Err(Error::IncompatibleOptions(
            "these options cannot be combined for this call",
        )),
        _ => Err(Error::Remote(text(error))),
    }
}

/// `apply` by name with JSON arguments: an array of the values, or with `ignore_errors` of
/// `{"plugin", "provider", "ok" | "error"}` objects; with `pipe`, the piped value.
pub fn apply_json(service: &str, function: &str, args: &Value, opts: Opts) -> Result<Value, Error> {
    call_json(0, service, function, args, opts)
}

/// `decide` by name with JSON arguments.
pub fn decide_json(
    service: &str,
    function: &str,
    args: &Value,
    opts: Opts,
) -> Result<Decision<Value>, Error> {
    let answer = call_json(1, service, function, args, opts)?;
    serde_json::from_value(answer).map_err(|err| Error::BadOutput {
        service: service.into(),
        function: function.into(),
        reason: format!("unreadable decision: {err}"),
    })
}

/// The data contributed under a service: the plugin side of `epi::DataHandle`'s queries.
pub struct Data {
    service: String,
}

/// Data contributed under `service`.
pub fn data(service: &str) -> Data {
    Data {
        service: service.to_owned(),
    }
}

impl Data {
    fn query(&self, query: u32, key: &str, source: &str) -> Result<Value, Error> {
        let (table, context) = host()?;
        let mut output = RVec::new();
        // SAFETY: the host's table and this plugin's context; every buffer is live.
        let status = unsafe {
            (table.data)(
                context,
                query,
                StrRef::new(&self.service),
                StrRef::new(key),
                StrRef::new(source),
                &mut output,
            )
        };
        if status != STATUS_OK {
            return Err(Error::Remote(text(output)));
        }
        serde_json::from_slice(&core::take_bytes(output))
            .map_err(|err| Error::Remote(format!("unreadable data: {err}")))
    }

    /// Every source's value for `key`, in plugin order (per source: exact key beats wildcard,
    /// longest prefix wins).
    pub fn get(&self, key: &str) -> Result<Vec<Value>, Error> {
        let value = self.query(0, key, "")?;
        serde_json::from_value(value).map_err(|err| Error::Remote(err.to_string()))
    }

    /// The keys contributed under the service.
    pub fn keys(&self) -> Result<Vec<String>, Error> {
        let value = self.query(1, "", "")?;
        serde_json::from_value(value).map_err(|err| Error::Remote(err.to_string()))
    }

    /// One source's value for `key`.
    pub fn get_value(&self, source: &str, key: &str) -> Result<Option<Value>, Error> {
        let value = self.query(2, key, source)?;
        Ok((!value.is_null()).then_some(value))
    }
}

/// A provider this plugin added at run time ([`add_provider`]). Dropping it, or
/// [`Registration::remove`], withdraws the provider; [`Registration::keep`] leaves it in place
/// until [`remove_provider`] or until this plugin version is upgraded or unloaded.
#[must_use = "dropping a registration withdraws its provider"]
pub struct Registration {
    id: u64,
}

impl Registration {
    /// The registration's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Withdraws the provider now.
    pub fn remove(self) {
        drop(self)
    }

    /// Keeps the provider registered without this handle; returns its id.
    pub fn keep(self) -> u64 {
        let id = self.id;
        std::mem::forget(self);
        id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        remove_provider(self.id);
    }
}

/// Adds a provider of this plugin at run time: from the next call on, it takes part in the
/// service's calls, ordered as a declared provider (priority, plugin order; after the plugin's
/// declared providers of equal priority, by label). Its label must be unique in the plugin. A version that is
/// upgraded or unloaded takes its added providers with it; hand what the next version needs
/// to re-add them over with `export_state`.
pub fn add_provider(provider: crate::Provider) -> Result<Registration, Error> {
    let (table, context) = host()?;
    let (manifest, mut provider_table) = provider.into_parts();
    let manifest = serde_json::to_vec(&manifest).map_err(|err| Error::Remote(err.to_string()))?;
    let mut error = RVec::new();
    // SAFETY: the host's table and this plugin's context; the host takes the table's object and
    // arrays (read out of `provider_table`, which is not used again).
    let id = unsafe {
        (table.add_provider)(
            context,
            StrRef::bytes(&manifest),
            &mut provider_table,
            &mut error,
        )
    };
    // The host read the table out of `provider_table`; what is left is plain data.
    let _ = provider_table;
    if id == 0 {
        return Err(Error::Remote(text(error)));
    }
    Ok(Registration { id })
}

/// Withdraws the provider registered as `id` (see [`Registration::keep`]); no-op for an
/// unknown id.
pub fn remove_provider(id: u64) {
    if let Some((table, context)) = crate::runtime::host() {
        // SAFETY: the host's table and this plugin's context.
        unsafe { (table.remove_provider)(context, id) }
    }
}

/// The directory a plugin keeps state in (a database, say): `$EPI_DATA_DIR` (the `epi` daemon
/// sets it from its `[data] dir`), else `$XDG_STATE_HOME/epi`, else `~/.local/state/epi`, else
/// `epi` under the system's temporary directory. It may not exist yet.
pub fn data_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    var("EPI_DATA_DIR")
        .or_else(|| var("XDG_STATE_HOME").map(|dir| dir.join("epi")))
        .or_else(|| var("HOME").map(|dir| dir.join(".local/state/epi")))
        .unwrap_or_else(|| std::env::temp_dir().join("epi"))
}
