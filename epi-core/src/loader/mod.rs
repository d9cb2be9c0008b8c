//! Turns a plugin file into a [`LoadedPlugin`]: trust check, ELF check, private copy, `dlopen`,
//! entry check, `init`.
//!
//! Each load goes through its own private copy of the file, so several builds of one plugin can
//! be mapped at once (glibc returns the already-loaded handle for the same path or inode) and an
//! operator overwriting the original never rewrites a mapped library.

mod elf;
pub(crate) mod host;
mod image;
pub(crate) mod probe;
mod probe_server;
mod trust;

use std::ffi::c_void;
use std::io::Read;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use crate::abi::manifest::{
    DataManifest, DataSource, Manifest, ProcessManifest, ProviderManifest, TypeDesc,
};
use crate::abi::{
    CallbackTable, JsonInFn, JsonOutFn, ObjectTable, PluginEntry, PluginTables, ProcessHost,
    ProcessTable, ProviderTable, RVec, StableCallFn, StrRef, TypedCallFn, ABI_MAJOR, BUILD_INFO,
    ENTRY_SYMBOL, EPI_VERSION, MAGIC, STATUS_OK, STATUS_PANICKED, TARGET,
};
use crate::engine::{WorkerContext, WorkerError};
use crate::error::LoadError;
use epi_plugin::{Notification, PluginState};

/// How calls reach a plugin's providers, chosen when it is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPath {
    /// Same rustc, target and epi version as the host: values cross by pointer in Rust layout.
    Native,
    /// Another compatible build: values cross as JSON, checked by serde shape.
    Stable,
    /// In a child process of its own (see [`crate::isolation`]): values cross as on the
    /// stable path, over a unix socket.
    Isolated,
}

/// What a host knows about a loaded plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// Application name.
    pub app: String,
    /// Version string.
    pub version: String,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// xxh3 hash of the file's bytes.
    pub content_hash: u64,
    /// Default priority of its providers (after the host's configuration).
    pub priority: i32,
    /// Services it defines.
    pub services: Vec<String>,
    /// How calls reach it.
    pub call_path: CallPath,
    /// The compiler, target and epi version that built it.
    pub build: String,
    /// Its processes, as the plugin names them (whether or not the registry runs them).
    pub processes: Vec<String>,
}

/// Calls, errors and panics of one provider function. Shared by every snapshot the
/// provider's version appears in; a new version starts from zero.
pub(crate) type Counters = crate::abi::CallCounters;

/// One function of a loaded provider.
pub(crate) struct LoadedFunction {
    pub(crate) name: String,
    /// The object its entry points receive.
    pub(crate) instance: *const c_void,
    pub(crate) args: TypeDesc,
    pub(crate) output: TypeDesc,
    /// The native entry point; `None` on the stable path.
    pub(crate) typed: Option<TypedCallFn>,
    pub(crate) stable: StableCallFn,
    pub(crate) counters: Arc<Counters>,
}

/// A provider of a loaded plugin, with names copied into host memory.
///
/// It owns its object: dropping it releases the object in the plugin's code, so it must be
/// dropped while the plugin's library is mapped (a `LoadedPlugin` drops its providers first,
/// and a snapshot drops added providers before its plugins).
pub(crate) struct LoadedProvider {
    pub(crate) label: Arc<str>,
    pub(crate) service: Arc<str>,
    pub(crate) priority: Option<i32>,
    object: ObjectTable,
    pub(crate) functions: Vec<LoadedFunction>,
}

// SAFETY: provider objects are `Send + Sync` (required by `Provides`); the raw pointers are
// only dereferenced by the plugin's own shims.
unsafe impl Send for LoadedProvider {}
// SAFETY: as `Send`.
unsafe impl Sync for LoadedProvider {}

impl Drop for LoadedProvider {
    fn drop(&mut self) {
        // SAFETY: the object was handed over by the plugin and is released once, here, while
        // its library is mapped (see the type's docs).
        unsafe { release(&self.object) };
    }
}

/// Builds a provider from its description and entry points; on a mismatch between them the
/// object is released and the reason returned.
pub(crate) fn provider_from(
    described: ProviderManifest,
    table: ProviderTable,
    native: bool,
) -> Result<LoadedProvider, String> {
    // SAFETY: an array of `#[repr(C)]` tables the plugin built through the shared allocator.
    let functions = unsafe { table.functions.into_vec() };
    let mut provider = LoadedProvider {
        label: Arc::from(described.label.as_str()),
        service: Arc::from(described.service.as_str()),
        priority: described.priority,
        object: table.object,
        functions: Vec::new(),
    };
    if described.functions.len() != functions.len() {
        return Err(format!(
            "provider `{}` describes {} functions but exports {}",
            described.label,
            described.functions.len(),
            functions.len()
        ));
    }
    let object = provider.object.instance as *const c_void;
    provider.functions = described
        .functions
        .into_iter()
        .zip(functions)
        .map(|(function, entry)| LoadedFunction {
            name: function.name,
            instance: if entry.instance.is_null() {
                object
            } else {
                entry.instance
            },
            args: function.args,
            output: function.output,
            typed: native.then_some(entry.typed),
            stable: entry.stable,
            counters: Arc::default(),
        })
        .collect();
    let mut names = std::collections::HashSet::new();
    for function in &provider.functions {
        if !names.insert(function.name.as_str()) {
            return Err(format!(
                "provider `{}` has two functions named `{}`",
                provider.label, function.name
            ));
        }
    }
    Ok(provider)
}

/// Providers a plugin version adds and removes at run time, shared by the version and the
/// context its calls through the host carry.
pub(crate) struct DynamicProviders {
    /// Whether the version is the serving one and no registry change is calling into it:
    /// only then does an addition or removal publish a new table at once.
    pub(crate) published: std::sync::atomic::AtomicBool,
    /// Set by a change made while not published: the registry republishes once it publishes
    /// the version.
    pub(crate) dirty: std::sync::atomic::AtomicBool,
    /// Whether the version is on the native call path (set before `init`).
    pub(crate) native: std::sync::atomic::AtomicBool,
    /// Labels of the providers the version declared (set when it is loaded).
    declared: parking_lot::Mutex<Vec<Arc<str>>>,
    list: parking_lot::Mutex<Vec<(u64, Arc<LoadedProvider>)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl DynamicProviders {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(DynamicProviders {
            published: Default::default(),
            dirty: Default::default(),
            native: Default::default(),
            declared: Default::default(),
            list: Default::default(),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Registers a provider; its id, or why not (a label already in use).
    pub(crate) fn add(&self, provider: LoadedProvider) -> Result<u64, String> {
        let mut list = self.list.lock();
        let taken = self.declared.lock().contains(&provider.label)
            || list.iter().any(|(_, p)| p.label == provider.label);
        if taken {
            return Err(format!(
                "a provider labelled `{}` is already registered by this plugin",
                provider.label
            ));
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        list.push((id, Arc::new(provider)));
        Ok(id)
    }

    /// Withdraws a provider; its service, if it was registered. The provider itself is
    /// released by whoever drops the last reference (the caller, or a snapshot).
    pub(crate) fn remove(&self, id: u64) -> Option<Arc<str>> {
        let mut list = self.list.lock();
        let position = list.iter().position(|(registered, _)| *registered == id)?;
        let (_, provider) = list.remove(position);
        // Released outside the lock: the release runs the plugin's code.
        drop(list);
        Some(provider.service.clone())
    }

    /// The registered providers, in registration order.
    pub(crate) fn current(&self) -> Vec<Arc<LoadedProvider>> {
        self.list.lock().iter().map(|(_, p)| p.clone()).collect()
    }

    pub(crate) fn clear(&self) -> Vec<(u64, Arc<LoadedProvider>)> {
        std::mem::take(&mut *self.list.lock())
    }
}

/// A plugin library mapped into the process, with the objects its `init` created.
///
/// Dropping it releases the provider objects and the plugin object (in the plugin's own code)
/// and then closes the library.
pub struct LoadedPlugin {
    pub(crate) info: PluginInfo,
    pub(crate) app: Arc<str>,
    pub(crate) providers: Vec<LoadedProvider>,
    pub(crate) data_providers: Vec<DataManifest>,
    callbacks: Vec<CallbackTable>,
    pub(crate) data_subscriptions: Vec<(String, String)>,
    pub(crate) processes: Vec<ProcessManifest>,
    process_tables: Vec<ProcessTable>,
    notify: JsonInFn,
    export_state: JsonOutFn,
    import_state: JsonInFn,
    /// The private copy this instance was mapped from (its name is unlinked at once, so
    /// `/proc/self/maps` shows it as deleted).
    pub(crate) copy: PathBuf,
    object: ObjectTable,
    library: Option<Library>,
    /// Whether dropping this version closes its library (see `RetirePolicy`).
    close_library: bool,
    /// Providers added at run time.
    pub(crate) dynamic: Arc<DynamicProviders>,
    /// The context its calls through the host carry; released after the library.
    host: Option<HostContext>,
    /// The child process an isolated plugin runs in (then `library` is `None` and the plugin's
    /// tables are the host's stand-ins).
    isolated: Option<Arc<crate::isolation::supervisor::Isolated>>,
}

// SAFETY: provider and plugin objects are `Send + Sync` (required by `Provides` and `Plugin`);
// the raw pointers are only dereferenced by the plugin's own shims.
unsafe impl Send for LoadedPlugin {}
// SAFETY: as `Send`: every shared access goes through the plugin's shims.
unsafe impl Sync for LoadedPlugin {}

/// Marks plugin code other than a provider call as running on this thread while it lives, so
/// that `epi::fatal` can name it if it crashes the process.
struct Activity(epi_plugin::running::Activity);

impl Activity {
    /// `what` of `plugin` runs; both strings outlive the guard.
    fn enter(plugin: &str, what: &str) -> Self {
        Activity(epi_plugin::running::enter_activity(plugin, what))
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        epi_plugin::running::leave_activity(self.0);
    }
}

/// A buffer's text, taken from the host's heap.
fn text(buffer: RVec<u8>) -> String {
    // SAFETY: the buffer was filled by a shim through the shared allocator.
    let bytes = unsafe { buffer.into_vec() };
    String::from_utf8(bytes).unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into())
}

/// A buffer's bytes, taken from the host's heap.
pub(crate) fn bytes(buffer: RVec<u8>) -> Vec<u8> {
    // SAFETY: the buffer was filled by a shim through the shared allocator.
    unsafe { buffer.into_vec() }
}

impl LoadedPlugin {
    /// Reads the callback data source `index` of `data_providers`: its JSON text or an error.
    pub(crate) fn read_callback(&self, index: usize) -> Result<Vec<u8>, String> {
        if let Some(isolated) = &self.isolated {
            return isolated.request_json(crate::isolation::wire::CALLBACK, &[index as u32], &[]);
        }
        let Some(DataSource::Callback(callback)) =
            self.data_providers.get(index).map(|d| &d.source)
        else {
            return Err(format!("data provider {index} is not a callback"));
        };
        let Some(table) = self.callbacks.get(*callback) else {
            return Err(format!("data provider {index} names no callback"));
        };
        let data = &self.data_providers[index];
        let what = format!("the data callback of {}/{}", data.service, data.key);
        let _running = Activity::enter(&self.info.app, &what);
        let mut output = RVec::new();
        let mut error = RVec::new();
        // SAFETY: the callback object belongs to this plugin, which is mapped while `self`
        // lives; the shim catches panics and fills the buffers through the shared allocator.
        let status = unsafe { (table.call)(table.object.instance, &mut output, &mut error) };
        match status {
            STATUS_OK => Ok(bytes(output)),
            STATUS_PANICKED => Err(format!("the callback panicked: {}", text(error))),
            _ => Err(text(error)),
        }
    }

    /// Hands the plugin object a value as JSON through `shim` (notify, import_state); a
    /// failure or panic in the plugin is logged, never propagated.
    /// `kind` is the request an isolated plugin's child gets instead.
    fn send_json<T: serde::Serialize>(&self, shim: JsonInFn, kind: u8, value: &T, what: &str) {
        let json = match serde_json::to_vec(value) {
            Ok(json) => json,
            Err(err) => {
                tracing::error!(app = %self.info.app, "cannot encode the {what}: {err}");
                return;
            }
        };
        if let Some(isolated) = &self.isolated {
            if let Err(message) = isolated.request_json(kind, &[], &json) {
                tracing::warn!(app = %self.info.app, "{what} failed: {message}");
            }
            return;
        }
        let mut error = RVec::new();
        let _running = Activity::enter(&self.info.app, what);
        // SAFETY: the plugin object lives as long as `self`; the shim catches panics.
        let status = unsafe { shim(self.object.instance, StrRef::bytes(&json), &mut error) };
        if status != STATUS_OK {
            tracing::warn!(app = %self.info.app, "{what} failed: {}", text(error));
        }
    }

    /// Delivers a notification.
    pub(crate) fn notify(&self, notification: &Notification) {
        self.send_json(
            self.notify,
            crate::isolation::wire::NOTIFY,
            notification,
            "notify",
        );
    }

    /// The state the plugin hands to its successor; errors and panics are logged and give
    /// `None`.
    pub(crate) fn export_state(&self) -> Option<PluginState> {
        let json = if let Some(isolated) = &self.isolated {
            match isolated.request_json(crate::isolation::wire::EXPORT, &[], &[]) {
                Ok(json) => json,
                Err(message) => {
                    tracing::warn!(app = %self.info.app, "export_state failed: {message}");
                    return None;
                }
            }
        } else {
            let mut output = RVec::new();
            let mut error = RVec::new();
            let _running = Activity::enter(&self.info.app, "export_state");
            // SAFETY: the plugin object lives as long as `self`; the shim catches panics.
            let status =
                unsafe { (self.export_state)(self.object.instance, &mut output, &mut error) };
            if status != STATUS_OK {
                tracing::warn!(app = %self.info.app, "export_state failed: {}", text(error));
                return None;
            }
            bytes(output)
        };
        serde_json::from_slice(&json).unwrap_or_else(|err| {
            tracing::warn!(app = %self.info.app, "export_state returned unreadable state: {err}");
            None
        })
    }

    /// Hands the plugin its predecessor's state.
    pub(crate) fn import_state(&self, state: &PluginState) {
        self.send_json(
            self.import_state,
            crate::isolation::wire::IMPORT,
            state,
            "import_state",
        );
    }

    /// Computes process `index`'s output from its inputs' outputs.
    pub(crate) fn process_output(
        &self,
        index: usize,
        inputs: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Result<serde_json::Value, WorkerError> {
        if let Some(isolated) = &self.isolated {
            return isolated.ensure_running().map(|()| serde_json::Value::Null);
        }
        let process = &self.process_tables[index];
        let what = format!("the start of process `{}`", self.processes[index].name);
        let _running = Activity::enter(&self.info.app, &what);
        let json =
            serde_json::to_vec(inputs).map_err(|err| WorkerError::Failed(err.to_string()))?;
        let mut output = RVec::new();
        let mut error = RVec::new();
        // SAFETY: the process object lives as long as `self`; the shim catches panics.
        let status = unsafe {
            (process.start)(
                process.object.instance,
                StrRef::bytes(&json),
                &mut output,
                &mut error,
            )
        };
        if status != STATUS_OK {
            return Err(worker_error(status, text(error)));
        }
        serde_json::from_slice(&bytes(output)).map_err(|err| WorkerError::Failed(err.to_string()))
    }

    /// Runs process `index` on this thread until it stops.
    pub(crate) fn process_run(
        &self,
        index: usize,
        context: &WorkerContext,
    ) -> Result<(), WorkerError> {
        if let Some(isolated) = &self.isolated {
            return isolated.watch(context);
        }
        let process = &self.process_tables[index];
        let what = format!("process `{}`", self.processes[index].name);
        let _running = Activity::enter(&self.info.app, &what);
        let host = ProcessHost {
            context: context as *const WorkerContext as *const c_void,
            is_stopping: process_is_stopping,
            wait_stop: process_wait_stop,
            set_report: process_set_report,
        };
        let mut error = RVec::new();
        // SAFETY: `host` and `context` outlive the call; the shim catches panics.
        let status = unsafe { (process.run)(process.object.instance, &host, &mut error) };
        if status == STATUS_OK {
            Ok(())
        } else {
            Err(worker_error(status, text(error)))
        }
    }

    /// The directory of the file the plugin was loaded from.
    pub(crate) fn directory(&self) -> &Path {
        self.info.file.parent().unwrap_or(Path::new("."))
    }
}

/// A process's failure: the worker error it encoded (JSON of `ProcessError`, which has the
/// engine's `WorkerError` shape), or a failure with its message.
fn worker_error(status: u32, message: String) -> WorkerError {
    if status == STATUS_PANICKED {
        return WorkerError::Failed(format!("panicked: {message}"));
    }
    serde_json::from_str(&message).unwrap_or(WorkerError::Failed(message))
}

unsafe extern "C" fn process_is_stopping(context: *const c_void) -> bool {
    // SAFETY: `context` is the `WorkerContext` of the running `process_run` call.
    unsafe { (*(context as *const WorkerContext)).is_stopping() }
}

unsafe extern "C" fn process_wait_stop(context: *const c_void, timeout_ms: u64) -> bool {
    // SAFETY: as `process_is_stopping`.
    unsafe {
        (*(context as *const WorkerContext)).wait_stop(std::time::Duration::from_millis(timeout_ms))
    }
}

unsafe extern "C" fn process_set_report(context: *const c_void, json: StrRef) {
    // SAFETY: the text lives for the call.
    let text = unsafe { json.to_string_lossy() };
    let report = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    // SAFETY: as `process_is_stopping`.
    unsafe { (*(context as *const WorkerContext)).set_report(report) }
}

/// Releases an object in the plugin's own code.
///
/// # Safety
/// `object` was handed over by this plugin's `init` and is released once.
unsafe fn release(object: &ObjectTable) {
    // SAFETY: the caller's contract.
    unsafe { (object.drop)(object.instance) }
}

impl Drop for LoadedPlugin {
    fn drop(&mut self) {
        // Added providers still referenced elsewhere would outlive the library: none are, as
        // every snapshot holding one holds this version too.
        drop(self.dynamic.clear());
        // Each provider releases its object when dropped.
        self.providers.clear();
        for process in &self.process_tables {
            // SAFETY: as above.
            unsafe { release(&process.object) };
        }
        for callback in &self.callbacks {
            // SAFETY: as above.
            unsafe { release(&callback.object) };
        }
        // SAFETY: as above; the plugin object goes last, after everything it may share.
        unsafe { release(&self.object) };
        if let Some(library) = self.library.take() {
            if !self.close_library {
                // Values this native-path version returned may borrow its memory: it stays
                // mapped for the life of the process.
                std::mem::forget(library);
            } else if let Err(err) = library.close() {
                tracing::warn!(app = %self.info.app, "dlclose failed: {err:?}");
            }
        }
        tracing::debug!(app = %self.info.app, version = %self.info.version, "plugin unloaded");
    }
}

/// Where private copies go and how they are named.
pub(crate) struct CopyDir {
    pub(crate) dir: PathBuf,
}

impl CopyDir {
    fn copy_path(&self, original: &Path, sequence: u64) -> PathBuf {
        let stem = original
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        self.dir
            .join(format!("{stem}.{}.{sequence}.so", std::process::id()))
    }
}

/// What identifies a file's content cheaply: an unchanged identity means an unchanged file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            modified_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }

    /// The identity of the file at `path` now.
    pub(crate) fn stat(path: &Path) -> std::io::Result<Self> {
        std::fs::metadata(path).map(|meta| Self::of(&meta))
    }

    /// True when the file was modified within the last 2 seconds: a same-size rewrite within
    /// the file system's timestamp granularity could leave this identity unchanged, so it
    /// cannot prove the content is (git's "racily clean" rule).
    pub(crate) fn racy(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        now - self.modified_ns < 2_000_000_000
    }
}

/// A plugin file that passed the trust and ELF checks, held in memory.
pub(crate) struct CheckedFile {
    pub(crate) path: PathBuf,
    bytes: Vec<u8>,
    /// xxh3 of the bytes.
    pub(crate) hash: u64,
    pub(crate) identity: FileIdentity,
}

/// Reads a plugin file and checks ownership, permissions and ELF structure. Runs nothing.
pub(crate) fn check(path: &Path) -> Result<CheckedFile, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    trust::check(path, &meta).map_err(|reason| LoadError::Untrusted {
        path: path.to_owned(),
        reason,
    })?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes).map_err(io)?;
    elf::validate(&bytes).map_err(|reason| LoadError::NotALibrary {
        path: path.to_owned(),
        reason,
    })?;
    Ok(CheckedFile {
        path: path.to_owned(),
        hash: xxhash_rust::xxh3::xxh3_64(&bytes),
        identity: FileIdentity::of(&meta),
        bytes,
    })
}

/// What a plugin is handed for its calls through the host: the host's table and an opaque
/// context naming its registry, owned by the loaded plugin.
pub(crate) struct HostContext {
    pub(crate) table: &'static crate::abi::HostVTable,
    pub(crate) _owner: Box<dyn std::any::Any + Send + Sync>,
    /// Points into `owner`.
    pub(crate) pointer: *const c_void,
}

/// Loads a checked file from a private copy and initialises it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn load(
    checked: CheckedFile,
    copies: &CopyDir,
    sequence: u64,
    config: &str,
    close_native: bool,
    host: HostContext,
    dynamic: Arc<DynamicProviders>,
    probe: Option<&probe::ProbeSettings>,
) -> Result<LoadedPlugin, LoadError> {
    let path = &checked.path;
    let content_hash = checked.hash;
    tracing::debug!(file = %path.display(), "loading a plugin file");
    let file_entry = read_file_entry(path, &checked.bytes)?;
    // Load what was checked: the private copy holds exactly these bytes.
    let copy = copies.copy_path(path, sequence);
    write_private_copy(&copy, &checked.bytes).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    drop(checked.bytes);
    if let Some(settings) = probe {
        tracing::debug!(file = %path.display(), "probing the plugin file in a child process");
        if let Err(err) = probe::probe(path, &copy, &file_entry, settings) {
            let _ = std::fs::remove_file(&copy);
            return Err(err);
        }
    }
    // SAFETY: the bytes are a complete ELF shared object (checked above); running its
    // initialisers is the point of loading a plugin the operator installed.
    let opened = unsafe { Library::open(Some(&copy), RTLD_NOW | RTLD_LOCAL) };
    // The mapping keeps the inode alive; the name is no longer needed.
    let _ = std::fs::remove_file(&copy);
    let library = opened.map_err(|err| LoadError::Dlopen {
        path: path.to_owned(),
        reason: dl_reason(&err),
    })?;

    let (entry, library) = read_entry(path, library, &file_entry)?;
    dynamic.native.store(
        entry.call_path == CallPath::Native,
        std::sync::atomic::Ordering::Release,
    );
    let tables = match initialise(path, &entry, config, &host) {
        Ok(tables) => tables,
        Err(err) => {
            // Providers the constructor added are released while the library is mapped.
            drop(dynamic.clear());
            return Err(err);
        }
    };
    let close_library = close_native || entry.call_path == CallPath::Stable;
    let mut plugin = assemble(
        path,
        content_hash,
        &entry,
        tables,
        copy,
        library,
        close_library,
        dynamic,
    )?;
    *plugin.dynamic.declared.lock() = plugin.providers.iter().map(|p| p.label.clone()).collect();
    plugin.host = Some(host);
    Ok(plugin)
}

#[allow(clippy::too_many_arguments)]
/// Turns the tables `init` handed over into a [`LoadedPlugin`] (which owns them from here on,
/// so a failure releases every object in the plugin's code before the library closes).
fn assemble(
    path: &Path,
    content_hash: u64,
    entry: &EntryInfo,
    tables: PluginTables,
    copy: PathBuf,
    library: Library,
    close_library: bool,
    dynamic: Arc<DynamicProviders>,
) -> Result<LoadedPlugin, LoadError> {
    // SAFETY: `init` built these arrays of `#[repr(C)]` tables through the shared allocator.
    let (mut provider_tables, callbacks, process_tables) = unsafe {
        (
            tables.providers.into_vec(),
            tables.callbacks.into_vec(),
            tables.processes.into_vec(),
        )
    };
    let manifest_text = bytes(tables.manifest);
    let parsed: Result<Manifest, _> = serde_json::from_slice(&manifest_text);
    let native = entry.call_path == CallPath::Native;
    let mut plugin = LoadedPlugin {
        info: PluginInfo {
            app: String::new(),
            version: String::new(),
            file: path.to_owned(),
            content_hash,
            priority: 0,
            services: Vec::new(),
            call_path: entry.call_path,
            build: entry.build.clone(),
            processes: Vec::new(),
        },
        app: Arc::from(""),
        providers: Vec::new(),
        data_providers: Vec::new(),
        callbacks,
        data_subscriptions: Vec::new(),
        processes: Vec::new(),
        process_tables,
        notify: tables.notify,
        export_state: tables.export_state,
        import_state: tables.import_state,
        copy,
        object: tables.plugin,
        library: Some(library),
        close_library,
        dynamic,
        host: None,
        isolated: None,
    };
    // From here on `plugin` owns every object: dropping it on an error releases them.
    let invalid = |app: &str, reason: String| LoadError::Invalid {
        path: path.to_owned(),
        app: app.to_owned(),
        reason,
    };
    let manifest = match parsed {
        Ok(manifest) => manifest,
        Err(err) => {
            for provider in provider_tables.drain(..) {
                // SAFETY: handed over by `init`, released once, library mapped.
                unsafe { release(&provider.object) };
            }
            return Err(invalid("?", format!("unreadable manifest: {err}")));
        }
    };
    plugin.app = Arc::from(manifest.app.as_str());
    plugin.info.app = manifest.app;
    plugin.info.version = manifest.version;
    plugin.info.priority = manifest.priority;
    plugin.info.services = manifest.services;
    plugin.data_providers = manifest.data_providers;
    plugin.data_subscriptions = manifest.data_subscriptions;
    plugin.processes = manifest.processes;
    plugin.info.processes = plugin.processes.iter().map(|p| p.name.clone()).collect();
    let app = plugin.info.app.clone();
    let provider_count = provider_tables.len();
    let mut manifests = manifest.providers.into_iter();
    for table in provider_tables {
        // Owned by the plugin from here (its object is released with it), whatever is wrong
        // with its description.
        let Some(described) = manifests.next() else {
            let orphan = ProviderManifest {
                service: String::new(),
                label: String::new(),
                priority: None,
                functions: Vec::new(),
            };
            let _ = provider_from(orphan, table, native);
            return Err(invalid(
                &app,
                "the manifest and the provider tables disagree".into(),
            ));
        };
        let provider =
            provider_from(described, table, native).map_err(|reason| invalid(&app, reason))?;
        plugin.providers.push(provider);
    }
    if manifests.next().is_some() || plugin.providers.len() != provider_count {
        return Err(invalid(
            &app,
            "the manifest and the provider tables disagree".into(),
        ));
    }
    if plugin.processes.len() != plugin.process_tables.len() {
        return Err(invalid(
            &app,
            "the manifest and the process tables disagree".into(),
        ));
    }
    for data in &plugin.data_providers {
        if let DataSource::Callback(index) = data.source {
            if index >= plugin.callbacks.len() {
                return Err(invalid(
                    &app,
                    format!(
                        "data `{}/{}` names a missing callback",
                        data.service, data.key
                    ),
                ));
            }
        }
    }
    validate(path, &plugin)?;
    tracing::info!(
        app = %plugin.info.app,
        version = %plugin.info.version,
        call_path = ?plugin.info.call_path,
        file = %path.display(),
        "plugin loaded"
    );
    Ok(plugin)
}

fn write_private_copy(copy: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o500)
        .open(copy)?;
    // No fsync: the copy only has to outlive the `dlopen` that follows, not a crash.
    file.write_all(bytes)
}

/// libloading's `Display` is only "dlopen failed"; the loader's text is in the source chain.
pub(crate) fn dl_reason(err: &libloading::Error) -> String {
    let mut reason = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        reason = format!("{reason}: {inner}");
        source = inner.source();
    }
    reason
}

/// What the loader copied out of a plugin's entry after checking it.
pub(crate) struct EntryInfo {
    init: crate::abi::InitFn,
    call_path: CallPath,
    build: String,
}

/// The part of a version that must match for plugin and host to share a contract: the major
/// version, or the minor one while the major is 0 (semver).
fn compatibility(version: &str) -> &str {
    let mut parts = version.splitn(3, '.');
    let major = parts.next().unwrap_or_default();
    let minor = parts.next().unwrap_or_default();
    if major == "0" {
        &version[..(major.len() + 1 + minor.len()).min(version.len())]
    } else {
        major
    }
}

/// Reads the entry descriptor from the file's bytes and checks it: runs nothing, opens
/// nothing, dereferences no pointer of the plugin's.
pub(crate) fn read_file_entry(path: &Path, bytes: &[u8]) -> Result<image::FileEntry, LoadError> {
    let not_a_library = |reason: String| LoadError::NotALibrary {
        path: path.to_owned(),
        reason,
    };
    let image = image::Image::parse(bytes).map_err(not_a_library)?;
    let vaddr = image
        .symbol(ENTRY_SYMBOL)
        .ok_or_else(|| LoadError::NoEntry {
            path: path.to_owned(),
            symbol: ENTRY_SYMBOL,
        })?;
    // Every ABI version starts with the magic and the major version.
    let head = image.entry(vaddr, false).map_err(not_a_library)?;
    if head.magic != MAGIC {
        return Err(LoadError::BadMagic {
            path: path.to_owned(),
            symbol: ENTRY_SYMBOL,
            found: head.magic,
        });
    }
    if head.abi_major != ABI_MAJOR {
        return Err(LoadError::AbiMismatch {
            path: path.to_owned(),
            expected: ABI_MAJOR,
            found: head.abi_major,
        });
    }
    let entry = image.entry(vaddr, true).map_err(not_a_library)?;
    if entry.panic_unwind != 1 {
        return Err(LoadError::PanicAbort {
            path: path.to_owned(),
        });
    }
    if entry.target != TARGET {
        return Err(LoadError::TargetMismatch {
            path: path.to_owned(),
            expected: TARGET.to_owned(),
            found: entry.target,
        });
    }
    if compatibility(&entry.epi_version) != compatibility(EPI_VERSION) {
        return Err(LoadError::VersionMismatch {
            path: path.to_owned(),
            expected: format!("{}.x", compatibility(EPI_VERSION)),
            found: entry.epi_version,
        });
    }
    Ok(entry)
}

/// Finds the checked entry in the mapped library (its load address plus the entry's
/// address in the file, no symbol lookup) and copies out what loading needs. Runs no
/// plugin code.
pub(crate) fn read_entry(
    path: &Path,
    library: Library,
    file: &image::FileEntry,
) -> Result<(EntryInfo, Library), LoadError> {
    let handle = library.into_raw();
    let mut map: *const usize = std::ptr::null();
    // SAFETY: `handle` is a live handle from `dlopen`; RTLD_DI_LINKMAP writes a pointer to its
    // `link_map`, whose first field is the load address.
    let found = unsafe {
        libc::dlinfo(
            handle,
            libc::RTLD_DI_LINKMAP,
            &mut map as *mut _ as *mut c_void,
        )
    };
    // SAFETY: `handle` came from `into_raw` just above.
    let library = unsafe { Library::from_raw(handle) };
    if found != 0 || map.is_null() {
        return Err(LoadError::Dlopen {
            path: path.to_owned(),
            reason: "the dynamic loader does not say where it mapped the library".into(),
        });
    }
    // SAFETY: `map` points at the library's `link_map`, alive while the library is open.
    let base = unsafe { *map };
    let address = base.wrapping_add(file.vaddr as usize) as *const PluginEntry;
    // SAFETY: the image check placed the whole entry inside a loaded segment, which is mapped
    // at `base`; `init` is an address-sized field of it.
    let init = unsafe {
        std::ptr::addr_of!((*address).init)
            .cast::<usize>()
            .read_unaligned()
    };
    if init != base.wrapping_add(file.init as usize) {
        return Err(LoadError::NotALibrary {
            path: path.to_owned(),
            reason: "the mapped entry descriptor differs from the file's".into(),
        });
    }
    // SAFETY: `init` points at code inside the library (checked against the file's segments
    // and relocation) with the `InitFn` signature of this ABI major version.
    let init: crate::abi::InitFn =
        unsafe { std::mem::transmute::<usize, crate::abi::InitFn>(init) };
    let call_path = if file.build_info == BUILD_INFO {
        CallPath::Native
    } else {
        CallPath::Stable
    };
    Ok((
        EntryInfo {
            init,
            call_path,
            build: file.build_info.clone(),
        },
        library,
    ))
}

/// Calls the plugin's `init` (the first plugin code that runs).
fn initialise(
    path: &Path,
    entry: &EntryInfo,
    config: &str,
    host: &HostContext,
) -> Result<PluginTables, LoadError> {
    let mut tables = MaybeUninit::<PluginTables>::uninit();
    let mut error = RVec::new();
    let file = path.display().to_string();
    let _running = Activity::enter(&file, "init");
    // SAFETY: every check passed: same ABI major, target and panic strategy, compatible epi.
    // `init` catches its own panics and writes the tables only on success.
    let status = unsafe {
        (entry.init)(
            host.table,
            host.pointer,
            StrRef::new(config),
            tables.as_mut_ptr(),
            &mut error,
        )
    };
    if status != STATUS_OK {
        return Err(LoadError::Init {
            path: path.to_owned(),
            message: text(error),
        });
    }
    // SAFETY: `init` returned OK, so it wrote the tables.
    Ok(unsafe { tables.assume_init() })
}

fn validate(path: &Path, plugin: &LoadedPlugin) -> Result<(), LoadError> {
    let invalid = |reason: String| LoadError::Invalid {
        path: path.to_owned(),
        app: plugin.info.app.clone(),
        reason,
    };
    if plugin.info.app.trim().is_empty() {
        return Err(invalid("the app name is empty".into()));
    }
    let mut labels = std::collections::HashSet::new();
    for provider in &plugin.providers {
        if !labels.insert(&*provider.label) {
            return Err(invalid(format!(
                "two providers are labelled `{}`",
                provider.label
            )));
        }
        // Two functions of one name were refused by `provider_from`.
    }
    Ok(())
}

/// How a registry runs isolated plugins.
pub(crate) struct IsolationSettings<'a> {
    pub(crate) command: &'a crate::isolation::PluginHostCommand,
    pub(crate) start_timeout: std::time::Duration,
    pub(crate) call_timeout: std::time::Duration,
}

/// Loads a checked file in a plugin-host child process (see [`crate::isolation`]): the file's
/// entry is checked here as for any load, the child loads a private copy, and its providers
/// become entries that call over the child's socket. No plugin code runs in this process.
pub(crate) fn load_isolated(
    checked: CheckedFile,
    copies: &CopyDir,
    sequence: u64,
    config: &str,
    settings: &IsolationSettings<'_>,
) -> Result<LoadedPlugin, LoadError> {
    use crate::isolation::supervisor::{bridge_call, drop_bridge, BridgeProvider, Isolated};
    let path = &checked.path;
    tracing::debug!(file = %path.display(), "loading a plugin file in its own process");
    let file_entry = read_file_entry(path, &checked.bytes)?;
    let copy = copies.copy_path(path, sequence);
    write_private_copy(&copy, &checked.bytes).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let socket = copy.with_extension("sock");
    let started = Isolated::start(
        path,
        copy.clone(),
        socket,
        config.to_owned(),
        settings.command.clone(),
        settings.start_timeout,
        settings.call_timeout,
    )
    .map_err(|reason| {
        let _ = std::fs::remove_file(&copy);
        LoadError::Isolation {
            path: path.to_owned(),
            reason,
        }
    })?;
    let isolated = started.isolated;
    let manifest = started.hello.manifest;
    let mut plugin = LoadedPlugin {
        info: PluginInfo {
            app: manifest.app.clone(),
            version: manifest.version,
            file: path.to_owned(),
            content_hash: checked.hash,
            priority: manifest.priority,
            services: manifest.services,
            call_path: CallPath::Isolated,
            build: file_entry.build_info.clone(),
            processes: manifest.processes.iter().map(|p| p.name.clone()).collect(),
        },
        app: Arc::from(manifest.app.as_str()),
        providers: Vec::new(),
        data_providers: manifest.data_providers,
        callbacks: Vec::new(),
        data_subscriptions: manifest.data_subscriptions,
        processes: vec![ProcessManifest {
            name: crate::isolation::SUPERVISOR_PROCESS.to_owned(),
            inputs: Vec::new(),
        }],
        process_tables: Vec::new(),
        notify: stand_in_json_in,
        export_state: stand_in_json_out,
        import_state: stand_in_json_in,
        copy,
        object: ObjectTable {
            instance: std::ptr::null_mut(),
            drop: stand_in_drop,
        },
        library: None,
        close_library: true,
        dynamic: DynamicProviders::new(),
        host: None,
        isolated: Some(isolated.clone()),
    };
    for (index, described) in manifest.providers.into_iter().enumerate() {
        let bridge = BridgeProvider::new(&isolated, index, described.functions.len());
        let functions = described
            .functions
            .into_iter()
            .enumerate()
            .map(|(function, manifest)| LoadedFunction {
                name: manifest.name,
                instance: bridge.function_instance(function),
                args: manifest.args,
                output: manifest.output,
                typed: None,
                stable: bridge_call,
                counters: Arc::default(),
            })
            .collect();
        plugin.providers.push(LoadedProvider {
            label: Arc::from(described.label.as_str()),
            service: Arc::from(described.service.as_str()),
            priority: described.priority,
            object: ObjectTable {
                instance: Box::into_raw(bridge) as *mut c_void,
                drop: drop_bridge,
            },
            functions,
        });
    }
    validate(path, &plugin)?;
    *plugin.dynamic.declared.lock() = plugin.providers.iter().map(|p| p.label.clone()).collect();
    tracing::info!(
        app = %plugin.info.app,
        version = %plugin.info.version,
        file = %path.display(),
        "plugin loaded in its own process"
    );
    Ok(plugin)
}

/// The plugin-object entry points of an isolated plugin, which has no object in this process:
/// never called (the loaded plugin forwards to its child instead).
unsafe extern "C" fn stand_in_json_in(
    _instance: *const c_void,
    _input: StrRef,
    _error: *mut RVec<u8>,
) -> u32 {
    crate::abi::STATUS_FAILED
}

/// As [`stand_in_json_in`].
unsafe extern "C" fn stand_in_json_out(
    _instance: *const c_void,
    _output: *mut RVec<u8>,
    _error: *mut RVec<u8>,
) -> u32 {
    crate::abi::STATUS_FAILED
}

/// As [`stand_in_json_in`]: there is nothing to release.
unsafe extern "C" fn stand_in_drop(_instance: *mut c_void) {}
