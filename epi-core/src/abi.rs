//! The binary contract between a host and a plugin library.
//!
//! A plugin exports one data symbol, [`ENTRY_SYMBOL`], holding a `#[repr(C)]` [`PluginEntry`].
//! Its leading fields ([`PluginEntry::magic`], [`PluginEntry::abi_version`]) never change
//! between ABI versions, so any host can read them and say what it found. The loader reads the
//! entry as plain data and checks magic, ABI version, panic strategy and build string *before*
//! any plugin code runs; only then does it call [`PluginEntry::init`].
//!
//! Once the build string matched, both sides were compiled by the same rustc for the same
//! target with the same `epi`, so Rust-layout values (`String`, `Vec`, user types) can cross by
//! pointer. Each function additionally carries [`TypeKey`]s for its argument and output, checked
//! against the types a host asks for. All plugin allocations go through the host's allocator
//! (see [`crate::export::PluginAllocator`]), so ownership of heap values can move across.
//!
//! Every function pointer in this module points at a shim generated in the plugin that catches
//! panics before they reach the boundary and reports them as [`STATUS_PANICKED`].

use std::ffi::c_void;

/// Version of this contract. Bump it whenever any type in this module changes.
pub const ABI_VERSION: u32 = 1;

/// Name of the exported data symbol holding the plugin's [`PluginEntry`].
pub const ENTRY_SYMBOL: &str = "EPI_PLUGIN_ENTRY";

/// First eight bytes of every [`PluginEntry`].
pub const MAGIC: [u8; 8] = *b"EPIPLUG\0";

/// Compiler, target and panic strategy that built this copy of `epi`.
pub const BUILD_INFO: &str = env!("EPI_BUILD_INFO");

/// A call returned a value.
pub const STATUS_OK: u32 = 0;
/// A call returned an error; its message was written to the error slot.
pub const STATUS_FAILED: u32 = 1;
/// A call panicked; the panic message was written to the error slot.
pub const STATUS_PANICKED: u32 = 2;
/// A dynamic call could not decode its JSON input; the reason was written to the error slot.
pub const STATUS_BAD_INPUT: u32 = 3;

/// A borrowed UTF-8 string in `#[repr(C)]` form.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StrRef {
    /// First byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl StrRef {
    /// Borrows `text` (which must outlive every use of the returned value).
    pub const fn new(text: &str) -> Self {
        StrRef {
            ptr: text.as_ptr(),
            len: text.len(),
        }
    }

    /// Reads the string back.
    ///
    /// # Safety
    /// `ptr`/`len` must describe live memory; invalid UTF-8 is replaced rather than trusted.
    pub unsafe fn to_string_lossy(&self) -> String {
        if self.ptr.is_null() {
            return String::new();
        }
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Initialises a plugin: builds its object and describes it.
///
/// `host` lives as long as the process. `config` is the plugin's configuration as JSON text (may
/// be empty). On [`STATUS_OK`] the plugin wrote a [`PluginDescriptor`] into `out`; otherwise it
/// wrote a message into `error`.
pub type InitFn = unsafe extern "C" fn(
    host: *const HostVTable,
    config: StrRef,
    out: *mut PluginDescriptor,
    error: *mut String,
) -> u32;

/// The exported entry of a plugin library. Read as plain data before any plugin code runs.
#[repr(C)]
pub struct PluginEntry {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// The [`ABI_VERSION`] the plugin was built against.
    pub abi_version: u32,
    /// 1 when the plugin was built with `panic = "unwind"`, 0 for `panic = "abort"`.
    pub panic_unwind: u32,
    /// The plugin's [`BUILD_INFO`].
    pub build_info: StrRef,
    /// Called once, after every check passed.
    pub init: InitFn,
}

// SAFETY: the entry is immutable static data; its pointers point at static strings and code.
unsafe impl Sync for PluginEntry {}

impl PluginEntry {
    /// The entry a plugin built with this `epi` exports.
    pub const fn new(init: InitFn) -> Self {
        PluginEntry {
            magic: MAGIC,
            abi_version: ABI_VERSION,
            panic_unwind: cfg!(panic = "unwind") as u32,
            build_info: StrRef::new(BUILD_INFO),
            init,
        }
    }
}

/// What the host lends a plugin: its allocator and its log.
#[repr(C)]
pub struct HostVTable {
    /// Allocates `size` bytes aligned to `align` from the host's global allocator.
    pub alloc: unsafe extern "C" fn(size: usize, align: usize) -> *mut u8,
    /// As `alloc`, zero-filled.
    pub alloc_zeroed: unsafe extern "C" fn(size: usize, align: usize) -> *mut u8,
    /// Frees memory obtained from `alloc`, `alloc_zeroed` or `realloc`.
    pub dealloc: unsafe extern "C" fn(ptr: *mut u8, size: usize, align: usize),
    /// Resizes memory obtained from this table.
    pub realloc:
        unsafe extern "C" fn(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8,
    /// Emits a log record in the host (levels: 1 error, 2 warn, 3 info, 4 debug, 5 trace).
    pub log: unsafe extern "C" fn(level: u32, plugin: StrRef, message: StrRef),
}

/// Calls one provider function.
///
/// * `instance`: the provider object the function belongs to;
/// * `input`: for a typed call `*const Args`; for a JSON call `*const &[u8]`;
/// * `output`: for a typed call `*mut Output` (uninitialised; written on [`STATUS_OK`]); for a
///   JSON call `*mut Vec<u8>` the JSON text is appended to;
/// * `error`: a `String` replaced by the message on any other status.
pub type CallFn = unsafe extern "C" fn(
    instance: *const c_void,
    input: *const c_void,
    output: *mut c_void,
    error: *mut String,
) -> u32;

/// Releases an object the plugin created (a provider or the plugin itself). Catches panics.
pub type DropFn = unsafe extern "C" fn(instance: *mut c_void);

/// Identifies a Rust type across the boundary: full path, size and alignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeKey {
    /// `std::any::type_name` of the type.
    pub name: String,
    /// `size_of` the type.
    pub size: usize,
    /// `align_of` the type.
    pub align: usize,
}

impl TypeKey {
    /// The key of `T` as this side compiled it.
    pub fn of<T>() -> Self {
        TypeKey {
            name: std::any::type_name::<T>().to_owned(),
            size: std::mem::size_of::<T>(),
            align: std::mem::align_of::<T>(),
        }
    }

    /// True when this key describes `T` as this side compiled it. Allocates nothing.
    pub fn is<T>(&self) -> bool {
        self.size == std::mem::size_of::<T>()
            && self.align == std::mem::align_of::<T>()
            && self.name == std::any::type_name::<T>()
    }
}

impl std::fmt::Display for TypeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (size {}, align {})",
            self.name, self.size, self.align
        )
    }
}

/// One dispatchable function of a provider.
pub struct FunctionEntry {
    /// The method's name, the name hosts call it by.
    pub name: String,
    /// The argument type (`()` for none, a tuple for several).
    pub args: TypeKey,
    /// The output type (the `T` of a `Result<T, E>`).
    pub output: TypeKey,
    /// Typed call: arguments and output by pointer.
    pub call: CallFn,
    /// Dynamic call: arguments and output as JSON text.
    pub call_json: CallFn,
}

/// A provider as the plugin describes it: an object implementing functions of one service.
pub struct ProviderDescriptor {
    /// The service these functions implement.
    pub service: String,
    /// A name for the provider, unique inside its plugin (defaults to the Rust type name).
    pub label: String,
    /// Explicit priority (higher runs first); `None` takes the plugin's.
    pub priority: Option<i32>,
    /// The provider object, owned by the plugin until `drop_instance` is called.
    pub instance: *mut c_void,
    /// Releases `instance`.
    pub drop_instance: DropFn,
    /// The functions, in declaration order.
    pub functions: Vec<FunctionEntry>,
}

/// Produces a callback data source's current data as JSON text appended to `output`.
pub type DataFn =
    unsafe extern "C" fn(instance: *const c_void, output: *mut Vec<u8>, error: *mut String) -> u32;

/// Delivers a [`crate::Notification`] (JSON text in `input`, a `*const &[u8]`) to the plugin.
pub type NotifyFn =
    unsafe extern "C" fn(plugin: *const c_void, input: *const c_void, error: *mut String) -> u32;

/// Writes the plugin's exported state (JSON of `Option<PluginState>`) into `output`.
pub type ExportStateFn =
    unsafe extern "C" fn(plugin: *const c_void, output: *mut Vec<u8>, error: *mut String) -> u32;

/// Hands the plugin the state its previous version exported (JSON text in `input`, a
/// `*const &[u8]`).
pub type ImportStateFn =
    unsafe extern "C" fn(plugin: *const c_void, input: *const c_void, error: *mut String) -> u32;

/// What the host lends a running process: its stop signal and its report. Valid for the
/// duration of the `run` call only.
#[repr(C)]
pub struct ProcessHost {
    /// The host's context object.
    pub context: *const c_void,
    /// True once the host asked the process to stop.
    pub is_stopping: unsafe extern "C" fn(context: *const c_void) -> bool,
    /// Waits up to `timeout_ms` for the stop request; true when asked to stop.
    pub wait_stop: unsafe extern "C" fn(context: *const c_void, timeout_ms: u64) -> bool,
    /// Replaces the process's report (JSON text).
    pub set_report: unsafe extern "C" fn(context: *const c_void, json: StrRef),
}

/// Computes a process's output from its inputs' outputs (JSON object text in `input`, a
/// `*const &[u8]`), appending JSON text to `output`. On failure the error is the JSON of a
/// [`crate::engine::WorkerError`].
pub type ProcessStartFn = unsafe extern "C" fn(
    instance: *const c_void,
    input: *const c_void,
    output: *mut Vec<u8>,
    error: *mut String,
) -> u32;

/// Runs a process until the host asks it to stop or it fails (error as for
/// [`ProcessStartFn`]).
pub type ProcessRunFn = unsafe extern "C" fn(
    instance: *const c_void,
    host: *const ProcessHost,
    error: *mut String,
) -> u32;

/// A long-running worker a plugin declares.
pub struct ProcessDescriptor {
    /// Name, unique inside the plugin (the engine knows it as `app/name`).
    pub name: String,
    /// Names of the workers it needs: `name` for one of the same plugin, `app/name` for
    /// another plugin's.
    pub inputs: Vec<String>,
    /// The process object.
    pub instance: *mut c_void,
    /// Computes its output.
    pub start: ProcessStartFn,
    /// Runs it.
    pub run: ProcessRunFn,
    /// Releases the process object.
    pub drop_instance: DropFn,
}

/// Where a data provider's data comes from.
pub enum DataSourceDescriptor {
    /// A JSON or TOML file; a relative path is relative to the plugin file's directory.
    File(String),
    /// Data compiled into the plugin, as JSON text (or why it could not be encoded).
    Static(Result<String, String>),
    /// A plugin function re-read at every interval.
    Callback {
        /// The callback object.
        instance: *mut c_void,
        /// Calls it.
        call: DataFn,
        /// Releases it.
        drop_instance: DropFn,
    },
}

/// One `(service, key) → source` a plugin contributes.
pub struct DataProviderDescriptor {
    /// The service the data belongs to.
    pub service: String,
    /// The key; a trailing `*` makes it a prefix wildcard.
    pub key: String,
    /// Where the data comes from.
    pub source: DataSourceDescriptor,
    /// How often to re-check it, in milliseconds (`None`: the default for the source kind).
    pub interval_ms: Option<u64>,
}

/// A plugin as its `init` describes it. Ownership moves to the host.
pub struct PluginDescriptor {
    /// Application name, unique among loaded plugins.
    pub app: String,
    /// Version string (the crate version unless the plugin says otherwise).
    pub version: String,
    /// Default priority of the plugin's providers.
    pub priority: i32,
    /// Services the plugin defines.
    pub services: Vec<String>,
    /// Providers in declaration order.
    pub providers: Vec<ProviderDescriptor>,
    /// Data the plugin contributes, in declaration order.
    pub data_providers: Vec<DataProviderDescriptor>,
    /// Long-running workers, supervised by the host's engine.
    pub processes: Vec<ProcessDescriptor>,
    /// `(service, key)` pairs the plugin wants to be notified about.
    pub data_subscriptions: Vec<(String, String)>,
    /// Delivers notifications to the plugin object.
    pub notify: NotifyFn,
    /// Exports the plugin's state before an upgrade retires it.
    pub export_state: ExportStateFn,
    /// Imports the state of the version it replaces.
    pub import_state: ImportStateFn,
    /// The plugin object.
    pub instance: *mut c_void,
    /// Releases the plugin object.
    pub drop_instance: DropFn,
}
