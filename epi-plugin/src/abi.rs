//! The binary contract between a host and a plugin library.
//!
//! Everything that crosses the boundary is in this module, and nothing in it depends on
//! Rust's unstable layout: tables are `#[repr(C)]`, owned buffers are [`RVec`]s in the host's
//! heap, and everything descriptive (names, types, data sources) travels as JSON text of the
//! [`manifest`] types. A host built by one rustc can therefore read any plugin built against the
//! same ABI major version by another rustc.
//!
//! A plugin exports one data symbol, [`ENTRY_SYMBOL`], holding a [`PluginEntry`]. Its leading
//! fields ([`PluginEntry::magic`], [`PluginEntry::abi_major`]) keep their offsets in every ABI
//! version, so any host can say what it found. The loader reads the entry as plain data and
//! checks magic, ABI, target, panic strategy and epi version before any plugin code runs; only
//! then does it call [`PluginEntry::init`].
//!
//! Two call paths exist, chosen per plugin at load time:
//! - **native**: the plugin's [`PluginEntry::build_info`] equals the host's (same rustc
//!   release and commit, same target, same epi version). Arguments and outputs cross by pointer
//!   in Rust layout through [`TypedCallFn`], checked per function by name, size and alignment.
//! - **stable**: any other compatible plugin. Arguments and outputs cross as JSON through
//!   [`StableCallFn`], checked per function by their [`manifest::TypeDesc::shape`]. Calls by
//!   name use the same entry point.
//!
//! Every function pointer in this module points at a shim that catches panics before they reach
//! the boundary and reports them as [`STATUS_PANICKED`].

use std::ffi::c_void;
use std::marker::PhantomData;

/// Major version of this contract: a host loads only plugins with the same major version.
pub const ABI_MAJOR: u32 = 4;

/// Minor version: additions a newer host or plugin can detect. Plugins of any minor version of
/// the same major load.
pub const ABI_MINOR: u32 = 0;

/// Name of the exported data symbol holding the plugin's [`PluginEntry`].
pub const ENTRY_SYMBOL: &str = "EPI_PLUGIN_ENTRY";

/// First eight bytes of every [`PluginEntry`].
pub const MAGIC: [u8; 8] = *b"EPIPLUG\0";

/// Compiler, target, panic strategy and epi version that built this copy of `epi`: equal
/// strings on both sides select the native call path.
pub const BUILD_INFO: &str = env!("EPI_BUILD_INFO");

/// The target triple this copy of `epi` was built for.
pub const TARGET: &str = env!("EPI_TARGET");

/// The version of the `epi-plugin` crate that built this side.
pub const EPI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A call returned a value.
pub const STATUS_OK: u32 = 0;
/// A call returned an error; its message was written to the error buffer.
pub const STATUS_FAILED: u32 = 1;
/// A call panicked; the panic message was written to the error buffer.
pub const STATUS_PANICKED: u32 = 2;
/// A call could not decode its input; the reason was written to the error buffer.
pub const STATUS_BAD_INPUT: u32 = 3;

/// A call from a plugin named a service no loaded plugin defines.
pub const STATUS_UNKNOWN_SERVICE: u32 = 4;
/// A call from a plugin was nested deeper than the host allows; the chain is in the error.
pub const STATUS_TOO_DEEP: u32 = 5;
/// The options of a call from a plugin cannot be combined; the reason is in the error.
pub const STATUS_BAD_OPTIONS: u32 = 6;
/// The provider is gone (a bridge whose peer process went away): the call goes on as if it
/// were not listed, and the reason (in the error buffer) is only logged. Since ABI 2.1.
pub const STATUS_ABSENT: u32 = 7;
/// A stable call asked for [`OUTPUT_STRING`] returned a value: the output buffer holds the
/// `String` itself (its UTF-8 bytes, in the buffer it was allocated in), not an encoding.
/// Since ABI 3.
pub const STATUS_OK_STRING: u32 = 8;

/// Values as JSON text: every stable call (typed and by name), and everything descriptive.
/// (ABI 3 encoded typed calls as MessagePack, encoding 1; since ABI 4 a plugin carries one
/// codec, JSON, which it needs for its manifest, data and configuration anyway: MessagePack's
/// per-type code was a sixth of a small plugin library.)
pub const ENCODING_JSON: u32 = 0;
/// The bits of a stable call's `encoding` that name the encoding; the others are flags.
pub const ENCODING_MASK: u32 = 0xff;
/// Flag of a stable call's `encoding`: the caller's output type is
/// `String`. A function whose output type is `String` too hands its string over instead of
/// encoding it and returns [`STATUS_OK_STRING`]; any other answers as without the flag. It
/// saves the caller decoding (and allocating) a copy. Since ABI 3.
pub const OUTPUT_STRING: u32 = 0x100;

/// Borrowed bytes (UTF-8 where the field says text) in `#[repr(C)]` form.
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
        Self::bytes(text.as_bytes())
    }

    /// Borrows `bytes` (which must outlive every use of the returned value).
    pub const fn bytes(bytes: &[u8]) -> Self {
        StrRef {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The bytes.
    ///
    /// # Safety
    /// `ptr`/`len` describe live memory for `'a` (or `ptr` is null).
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees `ptr`/`len` describe live memory for `'a`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Reads the text back.
    ///
    /// # Safety
    /// As [`StrRef::as_bytes`]; invalid UTF-8 is replaced rather than trusted.
    pub unsafe fn to_string_lossy(&self) -> String {
        // SAFETY: forwarded to the caller.
        String::from_utf8_lossy(unsafe { self.as_bytes() }).into_owned()
    }
}

/// An owned array in the host's heap, in `#[repr(C)]` form: what a `Vec<T>` of a `#[repr(C)]`
/// `T` (or of bytes) becomes to cross the boundary.
///
/// Both sides allocate through the host's global allocator (a plugin's allocator forwards to
/// it), so either side may turn it back into a `Vec` and free it.
#[repr(C)]
pub struct RVec<T> {
    ptr: *mut T,
    len: usize,
    cap: usize,
    _owns: PhantomData<T>,
}

impl<T> RVec<T> {
    /// An empty array (allocates nothing).
    pub fn new() -> Self {
        Self::from_vec(Vec::new())
    }

    /// Takes ownership of `vec`'s buffer.
    pub fn from_vec(vec: Vec<T>) -> Self {
        let mut vec = std::mem::ManuallyDrop::new(vec);
        RVec {
            ptr: vec.as_mut_ptr(),
            len: vec.len(),
            cap: vec.capacity(),
            _owns: PhantomData,
        }
    }

    /// Gives the buffer back as a `Vec`.
    ///
    /// # Safety
    /// `self` was made by [`RVec::from_vec`] on either side of a boundary whose allocations all
    /// go through one global allocator (the host's), and `T` has the same layout on both sides
    /// (bytes, or a `#[repr(C)]` type of this module).
    pub unsafe fn into_vec(self) -> Vec<T> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `ptr`, `len` and `cap` came from a `Vec<T>` allocated by the shared global
        // allocator with `T`'s layout (the caller's contract).
        unsafe { Vec::from_raw_parts(this.ptr, this.len, this.cap) }
    }

    /// The elements, borrowed.
    pub fn as_slice(&self) -> &[T] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr`/`len` describe the initialised part of a live buffer.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T> Default for RVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl RVec<u8> {
    /// The bytes as text; invalid UTF-8 is replaced.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(self.as_slice()).into_owned()
    }
}

/// Calls, errors and panics of one provider function, counted by whoever calls it.
///
/// `latency` follows the three counters and exists only when the entry's `count_calls` has
/// [`COUNT_LATENCY`] set: a host built before it allocated the three counters alone, so a
/// caller touches `latency` only when the host says it is there.
#[repr(C)]
#[derive(Debug, Default)]
pub struct CallCounters {
    /// Calls (counted only when the entry says so).
    pub calls: std::sync::atomic::AtomicU64,
    /// Calls that returned an error.
    pub errors: std::sync::atomic::AtomicU64,
    /// Calls that panicked.
    pub panics: std::sync::atomic::AtomicU64,
    /// Durations of a sample of the calls (one in [`LATENCY_SAMPLE_EVERY`]).
    pub latency: LatencyHistogram,
}

/// `ProviderEntry::count_calls` bit: count every call in `CallCounters::calls`.
pub const COUNT_CALLS: u32 = 1;
/// `ProviderEntry::count_calls` bit: `CallCounters::latency` exists; time sampled calls.
pub const COUNT_LATENCY: u32 = 2;
/// One call in this many is timed (the one whose `calls` count before it is a multiple):
/// reading the clock twice costs several times a native call, so timing every call would
/// cost more than counting it.
pub const LATENCY_SAMPLE_EVERY: u64 = 32;

/// Upper bounds of [`LatencyHistogram`]'s buckets in nanoseconds; a last bucket takes the rest.
pub const LATENCY_BOUNDS_NS: [u64; 25] = [
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Call durations in fixed buckets (not cumulative): `buckets[i]` counts durations up to
/// `LATENCY_BOUNDS_NS[i]` and above the bound before it; the last bucket counts the rest.
#[repr(C)]
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Count per bucket.
    pub buckets: [std::sync::atomic::AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    /// Sum of the recorded durations, in nanoseconds.
    pub sum_ns: std::sync::atomic::AtomicU64,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn record(&self, nanos: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(nanos, Relaxed);
    }
}

/// A type as a dispatch table entry describes it (see [`manifest::TypeDesc`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TypeRef {
    /// `std::any::type_name`.
    pub name: StrRef,
    /// The serde shape.
    pub shape: StrRef,
    /// `size_of`.
    pub size: usize,
    /// `align_of`.
    pub align: usize,
}

/// One provider function in a host's dispatch table, as both the host and plugins calling
/// through it read it. Every pointer stays valid while the table that holds the entry lives.
#[repr(C)]
pub struct ProviderEntry {
    /// The provider object.
    pub instance: *const c_void,
    /// The native entry point; `None` when the provider's plugin is on the stable path.
    pub typed: Option<TypedCallFn>,
    /// [`COUNT_CALLS`] when every call is counted (errors and panics always are), with
    /// [`COUNT_LATENCY`] when sampled calls are timed too; 0 for neither. With the two
    /// fields above, all a native call reads: they share its first cache line.
    pub count_calls: u32,
    /// Its counters.
    pub counters: *const CallCounters,
    /// The stable entry point.
    pub stable: StableCallFn,
    /// The argument type.
    pub args: TypeRef,
    /// The output type.
    pub output: TypeRef,
    /// The plugin's app name.
    pub plugin: StrRef,
    /// The provider's label.
    pub provider: StrRef,
    /// The service.
    pub service: StrRef,
    /// The function.
    pub function: StrRef,
}

// SAFETY: an entry is immutable; the objects it points at are `Send + Sync` (required of
// providers) and the strings and counters it points at are immutable or atomic.
unsafe impl Send for ProviderEntry {}
// SAFETY: as `Send`.
unsafe impl Sync for ProviderEntry {}

/// Initialises a plugin: builds its object and describes it.
///
/// `host` lives as long as the process; `context` identifies the registry the plugin is
/// loaded into and is passed back with every call the plugin makes through `host`. `config` is the plugin's configuration as JSON text (may
/// be empty). On [`STATUS_OK`] the plugin wrote its [`PluginTables`] into `out`; otherwise it
/// wrote a message into `error`.
pub type InitFn = unsafe extern "C" fn(
    host: *const HostVTable,
    context: *const c_void,
    config: StrRef,
    out: *mut PluginTables,
    error: *mut RVec<u8>,
) -> u32;

/// The exported entry of a plugin library. Read as plain data before any plugin code runs.
#[repr(C)]
pub struct PluginEntry {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// The [`ABI_MAJOR`] the plugin was built against (same offset as ABI 1's version field).
    pub abi_major: u32,
    /// The [`ABI_MINOR`] the plugin was built against.
    pub abi_minor: u32,
    /// 1 when the plugin was built with `panic = "unwind"`, 0 for `panic = "abort"`.
    pub panic_unwind: u32,
    /// Always 0.
    pub reserved: u32,
    /// The plugin's [`TARGET`].
    pub target: StrRef,
    /// The plugin's [`EPI_VERSION`].
    pub epi_version: StrRef,
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
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            panic_unwind: cfg!(panic = "unwind") as u32,
            reserved: 0,
            target: StrRef::new(TARGET),
            epi_version: StrRef::new(EPI_VERSION),
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
    /// Gives the ids of a service and one of its functions (valid for the registry's life).
    pub resolve: unsafe extern "C" fn(
        context: *const c_void,
        service: StrRef,
        function: StrRef,
        out: *mut CallIds,
    ),
    /// Starts a call from the plugin: pins the current dispatch table on this thread, and
    /// writes the function's providers into `out`. On another status ([`STATUS_UNKNOWN_SERVICE`],
    /// [`STATUS_TOO_DEEP`]) `error` holds the message and nothing is pinned. Every OK is
    /// followed by one `leave` on the same thread.
    pub enter: unsafe extern "C" fn(
        context: *const c_void,
        ids: CallIds,
        out: *mut CallView,
        error: *mut RVec<u8>,
    ) -> u32,
    /// Ends the innermost call `enter` started on this thread.
    pub leave: unsafe extern "C" fn(context: *const c_void),
    /// Runs `run(task, 0)` .. `run(task, count - 1)` on the host's pool and returns when all
    /// returned (`concurrent` calls). `run` must not unwind.
    pub run_concurrent: unsafe extern "C" fn(
        context: *const c_void,
        count: usize,
        task: *const c_void,
        run: unsafe extern "C" fn(task: *const c_void, index: usize),
    ),
    /// A call by name with JSON: `verb` 0 apply (result: the JSON the host's `apply_json`
    /// gives, detailed with `ignore_errors`), 1 decide (result: `"no_decision"` or
    /// `{"decided": value}`). `opts` as [`crate::Opts::bits`].
    pub call_json: unsafe extern "C" fn(
        context: *const c_void,
        verb: u32,
        service: StrRef,
        function: StrRef,
        args: StrRef,
        opts: u32,
        output: *mut RVec<u8>,
        error: *mut RVec<u8>,
    ) -> u32,
    /// Adds a provider of this plugin at run time. `manifest` is the JSON of a
    /// [`manifest::ProviderManifest`]; the host takes ownership of `table` (read, then left
    /// to the host). Returns the registration's id (never 0), or 0 with the reason in `error`
    /// (the host released the object then).
    pub add_provider: unsafe extern "C" fn(
        context: *const c_void,
        manifest: StrRef,
        table: *mut ProviderTable,
        error: *mut RVec<u8>,
    ) -> u64,
    /// Withdraws a provider `add_provider` registered (no-op for an unknown id).
    pub remove_provider: unsafe extern "C" fn(context: *const c_void, id: u64),
    /// A data query on `service`: `query` 0 `get(key)` (JSON array of every source's value),
    /// 1 `keys` (JSON array of keys), 2 `get_value(source, key)` (the value or `null`).
    pub data: unsafe extern "C" fn(
        context: *const c_void,
        query: u32,
        service: StrRef,
        key: StrRef,
        source: StrRef,
        output: *mut RVec<u8>,
    ) -> u32,
}

/// The ids of a service and one of its functions in a registry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallIds {
    /// The service.
    pub service: u32,
    /// The function.
    pub function: u32,
}

/// What `enter` pinned: the function's providers in call order.
#[repr(C)]
pub struct CallView {
    /// The first entry.
    pub entries: *const ProviderEntry,
    /// How many.
    pub len: usize,
    /// The dispatch table's generation (a type check stays valid while it is unchanged).
    pub generation: u64,
}

/// Native call of one provider function (native path only): arguments and output by pointer
/// in Rust layout.
///
/// * `instance`: the provider object the function belongs to;
/// * `input`: `*const Args`;
/// * `output`: `*mut Output`, uninitialised, written on [`STATUS_OK`];
/// * `error`: an empty buffer replaced by the message (UTF-8) on any other status.
pub type TypedCallFn = unsafe extern "C" fn(
    instance: *const c_void,
    input: *const c_void,
    output: *mut c_void,
    error: *mut RVec<u8>,
) -> u32;

/// Stable call of one provider function: encoded arguments in, encoded result out.
///
/// * `instance`: the provider object;
/// * `encoding`: [`ENCODING_JSON`], for both input and output, possibly with the flag
///   [`OUTPUT_STRING`];
/// * `input`: the encoded arguments;
/// * `output`: a buffer (possibly with spare capacity) the shim clears and fills with the
///   encoded result on [`STATUS_OK`], or replaces with the result string's own buffer on
///   [`STATUS_OK_STRING`];
/// * `error`: an empty buffer replaced by the message (UTF-8) on any other status;
/// * `scratch`: null, or the caller's [`ArgsScratch`] for this call (since ABI 3).
pub type StableCallFn = unsafe extern "C" fn(
    instance: *const c_void,
    encoding: u32,
    input: StrRef,
    output: *mut RVec<u8>,
    error: *mut RVec<u8>,
    scratch: *mut ArgsScratch,
) -> u32;

/// The arguments of a stable call as a shim decoded them, which the caller keeps for the next
/// provider of the same call, so that a plugin with several providers of one function decodes
/// them once. Since ABI 3.
///
/// The caller lends it only with the same `input` bytes (alive and unchanged while `value`
/// is set), to one entry point at a time: the one that filled it (an entry point decodes what
/// it reads; the caller compares entry points, not types). A shim finding `value` null may
/// fill both fields; the caller calls `drop(value)` when the call ends, before the plugin can
/// be unloaded, or before lending the scratch to another entry point.
#[repr(C)]
pub struct ArgsScratch {
    /// The decoded arguments, or null.
    pub value: *mut c_void,
    /// Releases `value`.
    pub drop: Option<DropFn>,
}

/// Call of one function of a plugin object with JSON: JSON text in, JSON text out.
///
/// * `instance`: the object (a process);
/// * `input`: the arguments as JSON text;
/// * `output`: an empty buffer replaced by the result's JSON text on [`STATUS_OK`];
/// * `error`: an empty buffer replaced by the message (UTF-8) on any other status.
pub type JsonCallFn = unsafe extern "C" fn(
    instance: *const c_void,
    input: StrRef,
    output: *mut RVec<u8>,
    error: *mut RVec<u8>,
) -> u32;

/// Hands a JSON value (a notification, an imported state) to a plugin object.
pub type JsonInFn =
    unsafe extern "C" fn(instance: *const c_void, input: StrRef, error: *mut RVec<u8>) -> u32;

/// Asks a plugin object for a JSON value (a callback's data, an exported state).
pub type JsonOutFn = unsafe extern "C" fn(
    instance: *const c_void,
    output: *mut RVec<u8>,
    error: *mut RVec<u8>,
) -> u32;

/// Releases an object the plugin created. Catches panics.
pub type DropFn = unsafe extern "C" fn(instance: *mut c_void);

/// An object the plugin owns until the host calls `drop` once.
#[repr(C)]
pub struct ObjectTable {
    /// The object.
    pub instance: *mut c_void,
    /// Releases it.
    pub drop: DropFn,
}

/// The entry points of one provider function; its names and types are in the manifest.
#[repr(C)]
pub struct FunctionTable {
    /// The object its entry points receive: the provider object, or (for providers made of
    /// closures) the function's own record inside it.
    pub instance: *const c_void,
    /// Native call (same build only).
    pub typed: TypedCallFn,
    /// Stable call (JSON): typed calls from another build, and calls by name.
    pub stable: StableCallFn,
}

/// A provider object and its functions, in the order of the manifest's entry.
#[repr(C)]
pub struct ProviderTable {
    /// The provider object.
    pub object: ObjectTable,
    /// One entry per function of the manifest's provider, in the same order.
    pub functions: RVec<FunctionTable>,
}

/// A callback data source: returns its current data as JSON text.
#[repr(C)]
pub struct CallbackTable {
    /// The callback object.
    pub object: ObjectTable,
    /// Calls it.
    pub call: JsonOutFn,
}

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

/// Runs a process until the host asks it to stop or it fails. On failure `error` holds the
/// JSON of a [`crate::ProcessError`] (or, after a panic, the panic message).
pub type ProcessRunFn = unsafe extern "C" fn(
    instance: *const c_void,
    host: *const ProcessHost,
    error: *mut RVec<u8>,
) -> u32;

/// A long-running worker; its name and inputs are in the manifest.
#[repr(C)]
pub struct ProcessTable {
    /// The process object.
    pub object: ObjectTable,
    /// Computes its output from its inputs' outputs (JSON object text in, JSON text out); an
    /// error is the JSON of a [`crate::ProcessError`].
    pub start: JsonCallFn,
    /// Runs it.
    pub run: ProcessRunFn,
}

/// A plugin as its `init` describes it. Ownership of everything moves to the host.
#[repr(C)]
pub struct PluginTables {
    /// JSON text of a [`manifest::Manifest`].
    pub manifest: RVec<u8>,
    /// The plugin object.
    pub plugin: ObjectTable,
    /// Delivers a notification (JSON of [`crate::Notification`]).
    pub notify: JsonInFn,
    /// Exports the plugin's state (JSON of `Option<PluginState>`).
    pub export_state: JsonOutFn,
    /// Imports the state of the version it replaces (JSON of [`crate::PluginState`]).
    pub import_state: JsonInFn,
    /// Providers, in the manifest's order.
    pub providers: RVec<ProviderTable>,
    /// Callback data sources, indexed by [`manifest::DataSource::Callback`].
    pub callbacks: RVec<CallbackTable>,
    /// Processes, in the manifest's order.
    pub processes: RVec<ProcessTable>,
}

/// The descriptive half of a plugin, as JSON text: names, types, data sources, processes.
pub mod manifest {
    use serde::{Deserialize, Serialize};

    /// Everything a plugin declares, in declaration order.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Manifest {
        /// Application name, unique among loaded plugins.
        pub app: String,
        /// Version string (the crate version unless the plugin says otherwise).
        pub version: String,
        /// Default priority of the plugin's providers.
        pub priority: i32,
        /// Services the plugin defines.
        pub services: Vec<String>,
        /// Providers, parallel to [`super::PluginTables::providers`].
        pub providers: Vec<ProviderManifest>,
        /// Data the plugin contributes.
        pub data_providers: Vec<DataManifest>,
        /// `(service, key)` pairs the plugin wants to be notified about.
        pub data_subscriptions: Vec<(String, String)>,
        /// Processes, parallel to [`super::PluginTables::processes`].
        pub processes: Vec<ProcessManifest>,
    }

    /// A provider: an object implementing functions of one service.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct ProviderManifest {
        /// The service these functions implement.
        pub service: String,
        /// A name unique inside the plugin.
        pub label: String,
        /// Explicit priority; `None` takes the plugin's.
        pub priority: Option<i32>,
        /// Functions, parallel to [`super::ProviderTable::functions`].
        pub functions: Vec<FunctionManifest>,
    }

    /// One dispatchable function.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct FunctionManifest {
        /// The name hosts call it by.
        pub name: String,
        /// The argument type (`()` for none, a tuple for several).
        pub args: TypeDesc,
        /// The output type (the `T` of a `Result<T, E>`).
        pub output: TypeDesc,
    }

    /// A type as both sides compare it.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TypeDesc {
        /// `std::any::type_name`.
        pub name: String,
        /// `size_of` as this side compiled it (checked on the native path).
        pub size: usize,
        /// `align_of` as this side compiled it (checked on the native path).
        pub align: usize,
        /// Its serde shape (checked on the stable path): see [`crate::describe`].
        pub shape: String,
    }

    /// Where a data provider's data comes from.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum DataSource {
        /// A JSON or TOML file; a relative path is relative to the plugin file's directory.
        File(String),
        /// Data compiled into the plugin, as JSON text.
        Static(String),
        /// Data the plugin could not encode: the reason.
        Invalid(String),
        /// A callback: the index into [`super::PluginTables::callbacks`].
        Callback(usize),
    }

    /// One `(service, key) → source` a plugin contributes.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct DataManifest {
        /// The service the data belongs to.
        pub service: String,
        /// The key; a trailing `*` makes it a prefix wildcard.
        pub key: String,
        /// Where the data comes from.
        pub source: DataSource,
        /// How often to re-check it, in milliseconds (`None`: the default).
        pub interval_ms: Option<u64>,
    }

    /// A long-running worker.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct ProcessManifest {
        /// Name, unique inside the plugin (the engine knows it as `app/name`).
        pub name: String,
        /// Workers it needs: `name` in this plugin, `app/name` in another.
        pub inputs: Vec<String>,
    }
}
