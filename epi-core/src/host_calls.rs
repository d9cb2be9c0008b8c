//! The host's side of calls from plugins: the table every plugin receives
//! ([`HOST_VTABLE`]) and the context naming the registry a plugin was loaded into.
//!
//! A typed call from a plugin (`epi::host::Function`) resolves its ids once, then per call
//! `enter`s: the current dispatch table is held in a per-thread frame (a counted reference,
//! no lock, no allocation) and the plugin runs the shared dispatch core over the function's
//! entries, then `leave`s. The frames also bound nesting: past the registry's maximum depth a
//! call fails with the chain of calls in progress on the thread.

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::Arc;

use crate::abi::manifest::ProviderManifest;
use crate::abi::ProviderTable;
use crate::abi::{
    CallIds, CallView, HostVTable, RVec, StrRef, STATUS_BAD_OPTIONS, STATUS_FAILED, STATUS_OK,
    STATUS_TOO_DEEP, STATUS_UNKNOWN_SERVICE,
};
use crate::data::{DataHandle, DataHub};
use crate::dispatch::{Dispatcher, Pinned};
use crate::error::Error;
use crate::loader::{host, provider_from, DynamicProviders, HostContext};
use crate::snapshot::Snapshot;

/// The table every plugin of this process receives.
static HOST_VTABLE: HostVTable = HostVTable {
    alloc: host::host_alloc,
    alloc_zeroed: host::host_alloc_zeroed,
    dealloc: host::host_dealloc,
    realloc: host::host_realloc,
    log: host::host_log,
    resolve,
    enter,
    leave,
    run_concurrent,
    call_json,
    data,
    add_provider,
    remove_provider,
};

/// Publishes a new dispatch table after a plugin added or removed a provider.
pub(crate) type Republish = Box<dyn Fn(&str) + Send + Sync>;

/// What a plugin's calls through the host reach: its registry's dispatcher and data, its own
/// added providers, and how to publish a change of them.
struct CallContext {
    dispatcher: Arc<Dispatcher>,
    data: Arc<DataHub>,
    dynamic: Arc<DynamicProviders>,
    republish: Republish,
}

/// The context a plugin loaded into this registry receives.
pub(crate) fn context(
    dispatcher: &Arc<Dispatcher>,
    data: &Arc<DataHub>,
    dynamic: &Arc<DynamicProviders>,
    republish: Republish,
) -> HostContext {
    let owner = Box::new(CallContext {
        dispatcher: dispatcher.clone(),
        data: data.clone(),
        dynamic: dynamic.clone(),
        republish,
    });
    let pointer = &*owner as *const CallContext as *const c_void;
    HostContext {
        table: &HOST_VTABLE,
        _owner: owner,
        pointer,
    }
}

/// A call from a plugin in progress on this thread.
struct Frame {
    /// Marks the table for calls further in; restores the previous mark when popped (before
    /// `_table` is released: fields drop in order).
    _pinned: Pinned,
    /// Keeps the dispatch table the plugin reads mapped until the call ends, unless a call
    /// further out on this thread holds it already.
    _table: Option<Arc<Snapshot>>,
    ids: CallIds,
    dispatcher: *const Dispatcher,
}

thread_local! {
    /// Calls from plugins in progress on this thread, outermost first.
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// `service.function ← ...` of the calls in progress, outermost first, then `next`.
#[cold]
fn chain(frames: &[Frame], dispatcher: &Dispatcher, next: CallIds) -> String {
    let interner = dispatcher.interner.lock();
    let name = |ids: CallIds| {
        format!(
            "{}.{}",
            interner.service_name(ids.service),
            interner.function_name(ids.function)
        )
    };
    frames
        .iter()
        .filter(|frame| std::ptr::eq(frame.dispatcher, dispatcher))
        .map(|frame| name(frame.ids))
        .chain(std::iter::once(name(next)))
        .collect::<Vec<_>>()
        .join(" → ")
}

/// Pushes a frame for `ids`, unless that nests too deep: then the error text.
fn push(context: &CallContext, ids: CallIds) -> Result<*const Snapshot, String> {
    FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        let dispatcher = &*context.dispatcher;
        if frames.len() >= dispatcher.max_depth {
            return Err(format!(
                "{}: {}",
                dispatcher.max_depth,
                chain(&frames, dispatcher, ids)
            ));
        }
        // Inside a call that holds a table (the host's call that reached this plugin, or an
        // outer call of this thread), read that one: it stays alive until that call returns,
        // after this one.
        let (table, snapshot) = match Pinned::current(dispatcher) {
            Some(snapshot) => (None, snapshot),
            None => {
                let table = dispatcher.current.load_full();
                let snapshot = Arc::as_ptr(&table);
                (Some(table), snapshot)
            }
        };
        // SAFETY: `snapshot` is alive: pinned by `table` or by an outer call of this thread.
        let pinned = Pinned::new(dispatcher, unsafe { &*snapshot });
        frames.push(Frame {
            _pinned: pinned,
            _table: table,
            ids,
            dispatcher,
        });
        Ok(snapshot)
    })
}

/// Tables whose last reference a plugin's thread might have dropped: released by the
/// registry's next publish instead, on a host thread (releasing a table can release a plugin
/// version, whose code the plugin's thread is still running).
static DEFERRED: std::sync::Mutex<Vec<Arc<Snapshot>>> = std::sync::Mutex::new(Vec::new());

/// Releases the tables `pop` deferred.
pub(crate) fn reap() {
    let tables = std::mem::take(&mut *DEFERRED.lock().unwrap_or_else(|e| e.into_inner()));
    drop(tables);
}

fn pop() {
    // Out of the borrow first: releasing anything may run plugin code that calls back.
    let Some(frame) = FRAMES.with(|frames| frames.borrow_mut().pop()) else {
        return;
    };
    let Frame {
        _pinned: pinned,
        _table: table,
        dispatcher,
        ..
    } = frame;
    drop(pinned);
    if let Some(table) = table {
        // SAFETY: a frame's dispatcher outlives the frame (the plugin's context holds it).
        if !unsafe { &*dispatcher }
            .current
            .is_current(Arc::as_ptr(&table))
        {
            DEFERRED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(table);
        }
    }
}

/// Runs a host-table function's body; a panic (a bug of the host's) is logged and turned into
/// `fallback` instead of unwinding into the plugin.
fn shielded<R>(fallback: R, body: impl FnOnce() -> R) -> R {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or_else(|_| {
        tracing::error!("a call from a plugin panicked in the host");
        fallback
    })
}

/// Replaces `buffer` with `bytes`.
///
/// # Safety
/// `buffer` points at a live buffer of the plugin's (the shared heap).
pub(crate) unsafe fn put(buffer: *mut RVec<u8>, bytes: Vec<u8>) {
    // SAFETY: the caller's contract; the old buffer is released through the shared allocator.
    unsafe { drop(std::ptr::replace(buffer, RVec::from_vec(bytes)).into_vec()) }
}

/// # Safety
/// `context` is the context the plugin received; `out` is live; the strings live for the call.
unsafe extern "C" fn resolve(
    context: *const c_void,
    service: StrRef,
    function: StrRef,
    out: *mut CallIds,
) {
    shielded((), move || {
        // SAFETY: the caller's contract.
        let (context, service, function) = unsafe {
            (
                &*(context as *const CallContext),
                service.to_string_lossy(),
                function.to_string_lossy(),
            )
        };
        let mut interner = context.dispatcher.interner.lock();
        let (service, _) = interner.service(&service);
        let (function, _) = interner.function(service, &function);
        // SAFETY: the caller's contract.
        unsafe { out.write(CallIds { service, function }) };
    })
}

/// # Safety
/// `context` is the context the plugin received; `out` and `error` are live.
unsafe extern "C" fn enter(
    context: *const c_void,
    ids: CallIds,
    out: *mut CallView,
    error: *mut RVec<u8>,
) -> u32 {
    shielded(STATUS_FAILED, move || {
        // SAFETY: the caller's contract: the context lives as long as the plugin.
        let context = unsafe { &*(context as *const CallContext) };
        let snapshot = match push(context, ids) {
            Ok(snapshot) => snapshot,
            Err(chain) => {
                // SAFETY: the caller's contract.
                unsafe { put(error, chain.into_bytes()) };
                return STATUS_TOO_DEEP;
            }
        };
        // SAFETY: the frame just pushed keeps the snapshot alive until `leave`.
        let snapshot = unsafe { &*snapshot };
        match snapshot.providers(ids.service, ids.function) {
            Some(list) => {
                // SAFETY: the caller's contract; the entries stay pinned until `leave`.
                unsafe {
                    out.write(CallView {
                        entries: list.as_ptr(),
                        len: list.len(),
                        generation: snapshot.generation,
                    })
                };
                STATUS_OK
            }
            None => {
                pop();
                STATUS_UNKNOWN_SERVICE
            }
        }
    })
}

unsafe extern "C" fn leave(_context: *const c_void) {
    shielded((), move || {
        pop();
    })
}

/// A task pointer sent to the pool's threads.
struct Task(*const c_void);
// SAFETY: the plugin's task is `Sync` (`&(dyn Fn(usize) + Sync)`) and outlives the scope.
unsafe impl Send for Task {}
// SAFETY: as `Send`.
unsafe impl Sync for Task {}

/// # Safety
/// `context` is the context the plugin received; `run(task, i)` may be called from any thread
/// until this returns and does not unwind.
unsafe extern "C" fn run_concurrent(
    context: *const c_void,
    count: usize,
    task: *const c_void,
    run: unsafe extern "C" fn(task: *const c_void, index: usize),
) {
    shielded((), move || {
        // SAFETY: the caller's contract.
        let context = unsafe { &*(context as *const CallContext) };
        let task = Task(task);
        let task = &task;
        // SAFETY: the caller's contract: `run` takes the task from any thread until
        // `CallPool::run` returns, which is before this function returns.
        let each = move |index| unsafe { run(task.0, index) };
        context.dispatcher.pool.run(count, &each);
    })
}

/// # Safety
/// `context` is the context the plugin received; the strings live for the call; `output` and
/// `error` are live.
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn call_json(
    context: *const c_void,
    verb: u32,
    service: StrRef,
    function: StrRef,
    args: StrRef,
    opts: u32,
    output: *mut RVec<u8>,
    error: *mut RVec<u8>,
) -> u32 {
    shielded(STATUS_FAILED, move || {
        // SAFETY: the caller's contract.
        let (context, service, function, args) = unsafe {
            (
                &*(context as *const CallContext),
                service.to_string_lossy(),
                function.to_string_lossy(),
                args.as_bytes(),
            )
        };
        let args: serde_json::Value = match serde_json::from_slice(args) {
            Ok(args) => args,
            Err(err) => {
                // SAFETY: the caller's contract.
                unsafe { put(error, format!("bad arguments: {err}").into_bytes()) };
                return STATUS_FAILED;
            }
        };
        let ids = {
            let mut interner = context.dispatcher.interner.lock();
            let (service, _) = interner.service(&service);
            let (function, _) = interner.function(service, &function);
            CallIds { service, function }
        };
        if let Err(chain) = push(context, ids) {
            // SAFETY: the caller's contract.
            unsafe { put(error, chain.into_bytes()) };
            return STATUS_TOO_DEEP;
        }
        let opts = crate::Opts::from_bits(opts);
        let dispatcher = &context.dispatcher;
        let result = match verb {
            0 => dispatcher
                .apply_json(&service, &function, &args, opts)
                .map(|applied| applied.to_json(opts.ignore_errors)),
            _ => dispatcher
                .decide_json(&service, &function, &args, opts)
                .and_then(|decision| {
                    serde_json::to_value(decision).map_err(|err| Error::BadOutput {
                        service: service.as_str().into(),
                        function: function.as_str().into(),
                        reason: err.to_string(),
                    })
                }),
        };
        pop();
        match result {
            Ok(value) => {
                // SAFETY: the caller's contract.
                unsafe { put(output, serde_json::to_vec(&value).unwrap_or_default()) };
                STATUS_OK
            }
            Err(err) => {
                let status = match err {
                    Error::UnknownService(_) => STATUS_UNKNOWN_SERVICE,
                    Error::IncompatibleOptions(_) => STATUS_BAD_OPTIONS,
                    Error::TooDeep { .. } => STATUS_TOO_DEEP,
                    _ => STATUS_FAILED,
                };
                // SAFETY: the caller's contract.
                unsafe { put(error, err.to_string().into_bytes()) };
                status
            }
        }
    })
}

/// # Safety
/// `context` is the context the plugin received; the strings live for the call; `output` is
/// live.
unsafe extern "C" fn data(
    context: *const c_void,
    query: u32,
    service: StrRef,
    key: StrRef,
    source: StrRef,
    output: *mut RVec<u8>,
) -> u32 {
    shielded(STATUS_FAILED, move || {
        // SAFETY: the caller's contract.
        let (context, service, key, source) = unsafe {
            (
                &*(context as *const CallContext),
                service.to_string_lossy(),
                key.to_string_lossy(),
                source.to_string_lossy(),
            )
        };
        let (id, name) = context.dispatcher.interner.lock().service(&service);
        let handle = DataHandle::new(context.data.clone(), id, name);
        let value = match query {
            0 => serde_json::to_value(handle.get(&key)),
            1 => serde_json::to_value(handle.keys()),
            _ => serde_json::to_value(handle.get_value(&source, &key)),
        };
        let (status, bytes) = match value.and_then(|value| serde_json::to_vec(&value)) {
            Ok(bytes) => (STATUS_OK, bytes),
            Err(err) => (STATUS_FAILED, err.to_string().into_bytes()),
        };
        // SAFETY: the caller's contract.
        unsafe { put(output, bytes) };
        status
    })
}

/// Publishes a change of the plugin's added providers of `service`, or, while its version
/// does not serve yet, marks it for the registry to publish when it does.
fn changed(context: &CallContext, service: &str) {
    use std::sync::atomic::Ordering::SeqCst;
    context.dynamic.dirty.store(true, SeqCst);
    if context.dynamic.published.load(SeqCst) {
        context.dynamic.dirty.store(false, SeqCst);
        (context.republish)(service);
    }
}

/// # Safety
/// `context` is the context the plugin received; `manifest` lives for the call; `table` points
/// at a table the plugin hands over (read once, here).
unsafe extern "C" fn add_provider(
    context: *const c_void,
    manifest: StrRef,
    table: *mut ProviderTable,
    error: *mut RVec<u8>,
) -> u64 {
    shielded(0, move || {
        // SAFETY: the caller's contract.
        let (context, manifest, table) = unsafe {
            (
                &*(context as *const CallContext),
                manifest.as_bytes(),
                table.read(),
            )
        };
        let native = context
            .dynamic
            .native
            .load(std::sync::atomic::Ordering::Acquire);
        let described = serde_json::from_slice::<ProviderManifest>(manifest);
        let added = match described {
            Ok(described) => provider_from(described, table, native),
            Err(err) => {
                // An empty description releases the handed-over object through `provider_from`.
                let nothing = ProviderManifest {
                    service: String::new(),
                    label: String::new(),
                    priority: None,
                    functions: Vec::new(),
                };
                let released = provider_from(nothing, table, native);
                drop(released);
                Err(format!("unreadable provider description: {err}"))
            }
        }
        .and_then(|provider| {
            let service = provider.service.clone();
            context.dynamic.add(provider).map(|id| (id, service))
        });
        match added {
            Ok((id, service)) => {
                changed(context, &service);
                id
            }
            Err(reason) => {
                // SAFETY: the caller's contract.
                unsafe { put(error, reason.into_bytes()) };
                0
            }
        }
    })
}

/// # Safety
/// `context` is the context the plugin received.
unsafe extern "C" fn remove_provider(context: *const c_void, id: u64) {
    shielded((), move || {
        // SAFETY: the caller's contract.
        let context = unsafe { &*(context as *const CallContext) };
        if let Some(service) = context.dynamic.remove(id) {
            changed(context, &service);
        }
    })
}
