//! Turns a plugin file into a [`LoadedPlugin`]: trust check, ELF check, private copy, `dlopen`,
//! entry check, `init`.
//!
//! Each load goes through its own private copy of the file, so several builds of one plugin can
//! be mapped at once (glibc returns the already-loaded handle for the same path or inode) and an
//! operator overwriting the original never rewrites a mapped library.

mod elf;
pub(crate) mod host;
mod trust;

use std::ffi::c_void;
use std::io::Read;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use crate::abi::{
    DataProviderDescriptor, DataSourceDescriptor, DropFn, ExportStateFn, FunctionEntry, NotifyFn,
    PluginDescriptor, PluginEntry, ProcessDescriptor, ProcessHost, StrRef, ABI_VERSION, BUILD_INFO,
    ENTRY_SYMBOL, MAGIC, STATUS_OK,
};
use crate::engine::{WorkerContext, WorkerError};
use crate::error::LoadError;
use crate::plugin::{Notification, PluginState};

/// What a host knows about a loaded plugin.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
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
}

/// A provider of a loaded plugin, with names copied into host memory.
pub(crate) struct LoadedProvider {
    pub(crate) label: Arc<str>,
    pub(crate) service: Arc<str>,
    pub(crate) priority: Option<i32>,
    pub(crate) instance: *mut c_void,
    drop_instance: DropFn,
    pub(crate) functions: Vec<FunctionEntry>,
    /// One per function, in the same order.
    pub(crate) counters: Vec<Arc<crate::snapshot::Counters>>,
}

/// A plugin library mapped into the process, with the objects its `init` created.
///
/// Dropping it releases the provider objects and the plugin object (in the plugin's own code)
/// and then closes the library.
pub struct LoadedPlugin {
    pub(crate) info: PluginInfo,
    pub(crate) app: Arc<str>,
    pub(crate) providers: Vec<LoadedProvider>,
    pub(crate) data_providers: Vec<DataProviderDescriptor>,
    pub(crate) data_subscriptions: Vec<(String, String)>,
    pub(crate) processes: Vec<ProcessDescriptor>,
    notify: NotifyFn,
    export_state: ExportStateFn,
    /// Same signature as `notify`: a JSON value for the plugin object.
    import_state: NotifyFn,
    /// The private copy this instance was mapped from (its name is unlinked at once, so
    /// `/proc/self/maps` shows it as deleted).
    pub(crate) copy: PathBuf,
    instance: *mut c_void,
    drop_instance: DropFn,
    library: Option<Library>,
}

// SAFETY: provider and plugin objects are `Send + Sync` (required by `Provides` and `Plugin`);
// the raw pointers are only dereferenced by the plugin's own shims.
unsafe impl Send for LoadedPlugin {}
unsafe impl Sync for LoadedPlugin {}

impl LoadedPlugin {
    /// Reads the callback data source `index` of `data_providers`: its JSON text or an error.
    pub(crate) fn read_callback(&self, index: usize) -> Result<Vec<u8>, String> {
        let Some(DataProviderDescriptor {
            source: DataSourceDescriptor::Callback { instance, call, .. },
            ..
        }) = self.data_providers.get(index)
        else {
            return Err(format!("data provider {index} is not a callback"));
        };
        let mut output = Vec::new();
        let mut error = String::new();
        // SAFETY: the callback object belongs to this plugin, which is mapped while `self`
        // lives; the shim catches panics and writes the output only on OK.
        let status = unsafe { call(*instance, &mut output, &mut error) };
        match status {
            STATUS_OK => Ok(output),
            crate::abi::STATUS_PANICKED => Err(format!("the callback panicked: {error}")),
            _ => Err(error),
        }
    }

    /// Hands the plugin object a value as JSON through `shim` (notify, import_state); a
    /// failure or panic in the plugin is logged, never propagated.
    fn send_json<T: serde::Serialize>(&self, shim: NotifyFn, value: &T, what: &str) {
        let text = match serde_json::to_vec(value) {
            Ok(text) => text,
            Err(err) => {
                tracing::error!(app = %self.info.app, "cannot encode the {what}: {err}");
                return;
            }
        };
        let input: &[u8] = &text;
        let mut error = String::new();
        // SAFETY: the plugin object lives as long as `self`; the shim catches panics.
        let status = unsafe {
            shim(
                self.instance,
                &input as *const &[u8] as *const c_void,
                &mut error,
            )
        };
        if status != STATUS_OK {
            tracing::warn!(app = %self.info.app, "{what} failed: {error}");
        }
    }

    /// Delivers a notification.
    pub(crate) fn notify(&self, notification: &Notification) {
        self.send_json(self.notify, notification, "notification");
    }

    /// The state the plugin hands to its successor; errors and panics are logged and give
    /// `None`.
    pub(crate) fn export_state(&self) -> Option<PluginState> {
        let mut output = Vec::new();
        let mut error = String::new();
        // SAFETY: the plugin object lives as long as `self`; the shim catches panics.
        let status = unsafe { (self.export_state)(self.instance, &mut output, &mut error) };
        if status != STATUS_OK {
            tracing::warn!(app = %self.info.app, "export_state failed: {error}");
            return None;
        }
        serde_json::from_slice(&output).unwrap_or_else(|err| {
            tracing::warn!(app = %self.info.app, "export_state returned unreadable state: {err}");
            None
        })
    }

    /// Hands the plugin its predecessor's state.
    pub(crate) fn import_state(&self, state: &PluginState) {
        self.send_json(self.import_state, state, "state import");
    }

    /// Computes process `index`'s output from its inputs' outputs.
    pub(crate) fn process_output(
        &self,
        index: usize,
        inputs: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Result<serde_json::Value, WorkerError> {
        let process = &self.processes[index];
        let text =
            serde_json::to_vec(inputs).map_err(|err| WorkerError::Failed(err.to_string()))?;
        let input: &[u8] = &text;
        let mut output = Vec::new();
        let mut error = String::new();
        // SAFETY: the process object lives as long as `self`; the shim catches panics.
        let status = unsafe {
            (process.start)(
                process.instance,
                &input as *const &[u8] as *const c_void,
                &mut output,
                &mut error,
            )
        };
        if status != STATUS_OK {
            return Err(worker_error(status, error));
        }
        serde_json::from_slice(&output).map_err(|err| WorkerError::Failed(err.to_string()))
    }

    /// Runs process `index` on this thread until it stops.
    pub(crate) fn process_run(
        &self,
        index: usize,
        context: &WorkerContext,
    ) -> Result<(), WorkerError> {
        let process = &self.processes[index];
        let host = ProcessHost {
            context: context as *const WorkerContext as *const c_void,
            is_stopping: process_is_stopping,
            wait_stop: process_wait_stop,
            set_report: process_set_report,
        };
        let mut error = String::new();
        // SAFETY: `host` and `context` outlive the call; the shim catches panics.
        let status = unsafe { (process.run)(process.instance, &host, &mut error) };
        if status == STATUS_OK {
            Ok(())
        } else {
            Err(worker_error(status, error))
        }
    }

    /// The directory of the file the plugin was loaded from.
    pub(crate) fn directory(&self) -> &Path {
        self.info.file.parent().unwrap_or(Path::new("."))
    }
}

/// A process's failure: the worker error it encoded, or a failure with its message.
fn worker_error(status: u32, message: String) -> WorkerError {
    if status == crate::abi::STATUS_PANICKED {
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
    // SAFETY: as `process_is_stopping`; the text lives for the call.
    let text = unsafe { json.to_string_lossy() };
    let report = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    unsafe { (*(context as *const WorkerContext)).set_report(report) }
}

impl Drop for LoadedPlugin {
    fn drop(&mut self) {
        for provider in &self.providers {
            // SAFETY: created by this plugin's `Provider::new`; released once, here.
            unsafe { (provider.drop_instance)(provider.instance) };
        }
        for process in &self.processes {
            // SAFETY: created by this plugin's `Process::into_descriptor`; released once.
            unsafe { (process.drop_instance)(process.instance) };
        }
        for data in &self.data_providers {
            if let DataSourceDescriptor::Callback {
                instance,
                drop_instance,
                ..
            } = data.source
            {
                // SAFETY: created by this plugin's `DataProvider::callback`; released once.
                unsafe { drop_instance(instance) };
            }
        }
        // SAFETY: created by this plugin's `init`; released once, here.
        unsafe { (self.drop_instance)(self.instance) };
        if let Some(library) = self.library.take() {
            if let Err(err) = library.close() {
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

/// Loads a checked file from a private copy and initialises it.
pub(crate) fn load(
    checked: CheckedFile,
    copies: &CopyDir,
    sequence: u64,
    config: &str,
) -> Result<LoadedPlugin, LoadError> {
    let path = &checked.path;
    let content_hash = checked.hash;
    // Load what was checked: the private copy holds exactly these bytes.
    let copy = copies.copy_path(path, sequence);
    write_private_copy(&copy, &checked.bytes).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    drop(checked.bytes);
    // SAFETY: the bytes are a complete ELF shared object (checked above); running its
    // initialisers is the point of loading a plugin the operator installed.
    let opened = unsafe { Library::open(Some(&copy), RTLD_NOW | RTLD_LOCAL) };
    // The mapping keeps the inode alive; the name is no longer needed.
    let _ = std::fs::remove_file(&copy);
    let library = opened.map_err(|err| LoadError::Dlopen {
        path: path.to_owned(),
        reason: dl_reason(&err),
    })?;

    let entry = read_entry(path, &library)?;
    let descriptor = initialise(path, entry, config)?;
    let plugin = LoadedPlugin {
        app: Arc::from(descriptor.app.as_str()),
        info: PluginInfo {
            app: descriptor.app,
            version: descriptor.version,
            file: path.clone(),
            content_hash,
            priority: descriptor.priority,
            services: descriptor.services,
        },
        providers: descriptor
            .providers
            .into_iter()
            .map(|provider| LoadedProvider {
                label: Arc::from(provider.label.as_str()),
                service: Arc::from(provider.service.as_str()),
                priority: provider.priority,
                instance: provider.instance,
                drop_instance: provider.drop_instance,
                counters: provider.functions.iter().map(|_| Arc::default()).collect(),
                functions: provider.functions,
            })
            .collect(),
        data_providers: descriptor.data_providers,
        data_subscriptions: descriptor.data_subscriptions,
        processes: descriptor.processes,
        notify: descriptor.notify,
        export_state: descriptor.export_state,
        import_state: descriptor.import_state,
        copy,
        instance: descriptor.instance,
        drop_instance: descriptor.drop_instance,
        library: Some(library),
    };
    validate_descriptor(path, &plugin)?;
    tracing::info!(
        app = %plugin.info.app,
        version = %plugin.info.version,
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
fn dl_reason(err: &libloading::Error) -> String {
    let mut reason = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        reason = format!("{reason}: {inner}");
        source = inner.source();
    }
    reason
}

/// Reads the entry as plain data and checks it. Runs no plugin code.
fn read_entry(path: &Path, library: &Library) -> Result<&'static PluginEntry, LoadError> {
    let symbol_name = format!("{ENTRY_SYMBOL}\0");
    // SAFETY: the symbol's address is the address of the exported static; we only read it as a
    // pointer here and check the fields below before trusting anything else.
    let address: *const c_void = unsafe {
        match library.get::<*const c_void>(symbol_name.as_bytes()) {
            Ok(symbol) => symbol.into_raw(),
            Err(_) => {
                return Err(LoadError::NoEntry {
                    path: path.to_owned(),
                    symbol: ENTRY_SYMBOL,
                })
            }
        }
    };
    // SAFETY: the leading fields (magic, ABI version) have the same layout in every ABI version;
    // we read only those before the version check.
    let magic = unsafe { (address as *const [u8; 8]).read_unaligned() };
    if magic != MAGIC {
        return Err(LoadError::BadMagic {
            path: path.to_owned(),
            symbol: ENTRY_SYMBOL,
            found: magic,
        });
    }
    let abi_version = unsafe { (address as *const u8).add(8).cast::<u32>().read_unaligned() };
    if abi_version != ABI_VERSION {
        return Err(LoadError::AbiMismatch {
            path: path.to_owned(),
            expected: ABI_VERSION,
            found: abi_version,
        });
    }
    // SAFETY: same ABI version, so the whole entry has this layout. The library stays mapped as
    // long as the `LoadedPlugin` that owns it, which outlives every use of the entry.
    let entry: &'static PluginEntry = unsafe { &*(address as *const PluginEntry) };
    if entry.panic_unwind != 1 {
        return Err(LoadError::PanicAbort {
            path: path.to_owned(),
        });
    }
    // SAFETY: a static string in the plugin (ABI checked); invalid UTF-8 is replaced.
    let found = unsafe { entry.build_info.to_string_lossy() };
    if found != BUILD_INFO {
        return Err(LoadError::BuildMismatch {
            path: path.to_owned(),
            expected: BUILD_INFO.to_owned(),
            found,
        });
    }
    Ok(entry)
}

/// Calls the plugin's `init` (the first plugin code that runs).
fn initialise(
    path: &Path,
    entry: &PluginEntry,
    config: &str,
) -> Result<PluginDescriptor, LoadError> {
    let mut descriptor = MaybeUninit::<PluginDescriptor>::uninit();
    let mut error = String::new();
    // SAFETY: every check passed: same ABI, compiler, target and panic strategy. `init` catches
    // its own panics and writes the descriptor only on success.
    let status = unsafe {
        (entry.init)(
            &host::HOST_VTABLE,
            StrRef::new(config),
            descriptor.as_mut_ptr(),
            &mut error,
        )
    };
    if status != STATUS_OK {
        return Err(LoadError::Init {
            path: path.to_owned(),
            message: error,
        });
    }
    // SAFETY: `init` returned OK, so it wrote the descriptor.
    Ok(unsafe { descriptor.assume_init() })
}

fn validate_descriptor(path: &Path, plugin: &LoadedPlugin) -> Result<(), LoadError> {
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
    }
    Ok(())
}
