//! The plugin side of the boundary: what [`crate::export_plugin!`] and `#[epi::provider]`
//! expand to call. Every `extern "C"` function here catches panics before returning.

use std::alloc::{GlobalAlloc, Layout, System};
use std::any::Any;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::abi::{
    FunctionEntry, HostVTable, PluginDescriptor, StrRef, TypeKey, STATUS_BAD_INPUT, STATUS_FAILED,
    STATUS_OK, STATUS_PANICKED,
};
use crate::plugin::{Plugin, PluginContext};

/// The host's table, set by `init` before the plugin allocates anything.
static HOST: AtomicPtr<HostVTable> = AtomicPtr::new(std::ptr::null_mut());

/// The app name, for the log lines this plugin emits.
static APP: OnceLock<String> = OnceLock::new();

/// Global allocator of every plugin library: forwards to the host's allocator once the host
/// introduced itself, so the host and all plugins share one heap and a value allocated on one
/// side may be freed on the other. Falls back to the system allocator before that (for
/// example when a plugin crate is linked into its own unit tests).
pub struct PluginAllocator;

fn host() -> Option<&'static HostVTable> {
    let table = HOST.load(Ordering::Acquire);
    // SAFETY: the host's table is a `static` that outlives every plugin.
    unsafe { table.as_ref() }
}

// SAFETY: forwards each request unchanged to an allocator honouring the `GlobalAlloc` contract.
unsafe impl GlobalAlloc for PluginAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match host() {
            Some(table) => unsafe { (table.alloc)(layout.size(), layout.align()) },
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match host() {
            Some(table) => unsafe { (table.alloc_zeroed)(layout.size(), layout.align()) },
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match host() {
            Some(table) => unsafe { (table.dealloc)(ptr, layout.size(), layout.align()) },
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match host() {
            Some(table) => unsafe { (table.realloc)(ptr, layout.size(), layout.align(), new_size) },
            None => unsafe { System.realloc(ptr, layout, new_size) },
        }
    }
}

/// Sends a log line to the host's `tracing` subscriber (a plugin has its own copy of every
/// crate, so its own `tracing` macros would reach no subscriber). Levels: 1 error .. 5 trace.
pub fn host_log(level: u32, message: &str) {
    if let Some(table) = host() {
        let app = APP.get().map(String::as_str).unwrap_or("?");
        // SAFETY: both strings outlive the call; the host copies what it keeps.
        unsafe { (table.log)(level, StrRef::new(app), StrRef::new(message)) };
    }
}

/// What `export_plugin!` knows about the plugin crate.
pub trait Export {
    /// The plugin type.
    type Plugin: Plugin;
    /// `CARGO_PKG_VERSION` of the plugin crate.
    const PACKAGE_VERSION: &'static str;
    /// Builds the plugin object.
    fn create(context: &PluginContext) -> Self::Plugin;
}

/// One public method of a provider, described by `#[epi::provider]`.
pub trait Method: 'static {
    /// The provider type the method belongs to.
    type Provider: Send + Sync + 'static;
    /// The argument type (`()` when the method takes none, a tuple when several).
    type Args: Serialize + DeserializeOwned + 'static;
    /// The value it returns (the `T` of a `Result<T, E>`).
    type Output: Serialize + DeserializeOwned + 'static;
    /// The method's name.
    const NAME: &'static str;
    /// Calls the method; an `Err` carries the error's `Display` text.
    fn call(provider: &Self::Provider, args: &Self::Args) -> Result<Self::Output, String>;
}

/// The function table entry of `M`.
pub fn function_entry<M: Method>() -> FunctionEntry {
    FunctionEntry {
        name: M::NAME.to_owned(),
        args: TypeKey::of::<M::Args>(),
        output: TypeKey::of::<M::Output>(),
        call: typed_shim::<M>,
        call_json: json_shim::<M>,
    }
}

/// Text of a caught panic payload.
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Decodes the JSON text a `*const &[u8]` input points at; a failure is [`STATUS_BAD_INPUT`]
/// with `what` and the reason.
///
/// # Safety
/// `input` points at a live `&[u8]`.
unsafe fn read_json<T: DeserializeOwned>(
    input: *const c_void,
    what: &str,
) -> Result<T, (u32, String)> {
    let text: &[u8] = unsafe { *(input as *const &[u8]) };
    serde_json::from_slice(text).map_err(|err| (STATUS_BAD_INPUT, format!("{what}: {err}")))
}

/// Appends `value` as JSON text to `output`; a failure is [`STATUS_FAILED`] naming `what`.
fn write_json<T: Serialize>(
    output: &mut Vec<u8>,
    value: &T,
    what: &str,
) -> Result<(), (u32, String)> {
    serde_json::to_writer(output, value)
        .map_err(|err| (STATUS_FAILED, format!("cannot encode the {what}: {err}")))
}

/// Runs `body`, turning a panic into [`STATUS_PANICKED`] with its message in `error`.
///
/// # Safety
/// `error` must point at a live `String`.
unsafe fn guarded(error: *mut String, body: impl FnOnce() -> Result<(), (u32, String)>) -> u32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => STATUS_OK,
        Ok(Err((status, message))) => {
            unsafe { *error = message };
            status
        }
        Err(payload) => {
            let message = panic_message(payload);
            unsafe { *error = message };
            STATUS_PANICKED
        }
    }
}

/// Typed call shim of `M`: arguments and output by pointer.
///
/// # Safety
/// `instance` is an `M::Provider`, `input` an `M::Args`, `output` uninitialised room for an
/// `M::Output`, `error` a live `String`; the host checked the types' keys before calling.
pub unsafe extern "C" fn typed_shim<M: Method>(
    instance: *const c_void,
    input: *const c_void,
    output: *mut c_void,
    error: *mut String,
) -> u32 {
    unsafe {
        guarded(error, || {
            let provider = &*(instance as *const M::Provider);
            let args = &*(input as *const M::Args);
            let value = M::call(provider, args).map_err(|message| (STATUS_FAILED, message))?;
            (output as *mut M::Output).write(value);
            Ok(())
        })
    }
}

/// Dynamic call shim of `M`: arguments and output as JSON text.
///
/// # Safety
/// `instance` is an `M::Provider`, `input` a `&[u8]`, `output` a `Vec<u8>`, `error` a live
/// `String`.
pub unsafe extern "C" fn json_shim<M: Method>(
    instance: *const c_void,
    input: *const c_void,
    output: *mut c_void,
    error: *mut String,
) -> u32 {
    unsafe {
        guarded(error, || {
            let provider = &*(instance as *const M::Provider);
            let expected = format!("expected {}", std::any::type_name::<M::Args>());
            let args: M::Args = read_json(input, &expected)?;
            let value = M::call(provider, &args).map_err(|message| (STATUS_FAILED, message))?;
            write_json(&mut *(output as *mut Vec<u8>), &value, "result")
        })
    }
}

/// A callback data source as the plugin stores it: returns JSON text or an error message.
pub type BoxedCallback = Box<dyn Fn() -> Result<Vec<u8>, String> + Send + Sync>;

/// Calls a callback data source.
///
/// # Safety
/// `instance` is a `BoxedCallback` created by this plugin, `output` a `Vec<u8>`, `error` a
/// live `String`.
pub unsafe extern "C" fn data_shim(
    instance: *const c_void,
    output: *mut Vec<u8>,
    error: *mut String,
) -> u32 {
    unsafe {
        guarded(error, || {
            let callback = &*(instance as *const BoxedCallback);
            let json = callback().map_err(|message| (STATUS_FAILED, message))?;
            (*output).extend_from_slice(&json);
            Ok(())
        })
    }
}

/// Decodes the JSON value in `input` and hands it to the plugin object `P`.
///
/// # Safety
/// `plugin` is the `P` this plugin's `init` created, `input` a `&[u8]`, `error` a live `String`.
unsafe fn receive_json<P: Plugin, T: DeserializeOwned>(
    plugin: *const c_void,
    input: *const c_void,
    error: *mut String,
    what: &str,
    deliver: impl FnOnce(&P, T),
) -> u32 {
    unsafe {
        guarded(error, || {
            deliver(&*(plugin as *const P), read_json(input, what)?);
            Ok(())
        })
    }
}

/// Delivers a notification (JSON text) to the plugin object `P`.
///
/// # Safety
/// As [`receive_json`].
pub unsafe extern "C" fn notify_shim<P: Plugin>(
    plugin: *const c_void,
    input: *const c_void,
    error: *mut String,
) -> u32 {
    unsafe {
        receive_json(
            plugin,
            input,
            error,
            "unreadable notification",
            |p: &P, n| p.notify(&n),
        )
    }
}

/// Exports the state of plugin object `P` as JSON of `Option<PluginState>`.
///
/// # Safety
/// `plugin` is the `P` this plugin's `init` created, `output` a `Vec<u8>`, `error` a live
/// `String`.
pub unsafe extern "C" fn export_state_shim<P: Plugin>(
    plugin: *const c_void,
    output: *mut Vec<u8>,
    error: *mut String,
) -> u32 {
    unsafe {
        guarded(error, || {
            let plugin = &*(plugin as *const P);
            write_json(&mut *output, &plugin.export_state(), "state")
        })
    }
}

/// Imports a state (JSON of `PluginState`) into plugin object `P`.
///
/// # Safety
/// As [`receive_json`].
pub unsafe extern "C" fn import_state_shim<P: Plugin>(
    plugin: *const c_void,
    input: *const c_void,
    error: *mut String,
) -> u32 {
    unsafe {
        receive_json(plugin, input, error, "unreadable state", |p: &P, state| {
            p.import_state(state)
        })
    }
}

/// Computes a process's output from its inputs (JSON object text).
///
/// # Safety
/// `instance` is a `ProcessObject` of this plugin, `input` a `&[u8]`, `output` a `Vec<u8>`,
/// `error` a live `String`.
pub unsafe extern "C" fn process_start_shim(
    instance: *const c_void,
    input: *const c_void,
    output: *mut Vec<u8>,
    error: *mut String,
) -> u32 {
    unsafe {
        guarded(error, || {
            let process = &*(instance as *const crate::process::ProcessObject);
            let inputs = read_json(input, "unreadable inputs")?;
            let value = process
                .output(&inputs)
                .map_err(|err| crate::process::encode_error(&err))?;
            write_json(&mut *output, &value, "output")
        })
    }
}

/// Runs a process until it stops.
///
/// # Safety
/// `instance` is a `ProcessObject` of this plugin, `host` valid for the call, `error` a live
/// `String`.
pub unsafe extern "C" fn process_run_shim(
    instance: *const c_void,
    host: *const crate::abi::ProcessHost,
    error: *mut String,
) -> u32 {
    unsafe {
        guarded(error, || {
            let process = &*(instance as *const crate::process::ProcessObject);
            process
                .run(&*host)
                .map_err(|err| crate::process::encode_error(&err))
        })
    }
}

/// Releases a boxed `T` created by this plugin, catching a panicking `Drop`.
///
/// # Safety
/// `instance` came from `Box::<T>::into_raw` in this plugin and is released once.
pub unsafe extern "C" fn drop_shim<T>(instance: *mut c_void) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        drop(unsafe { Box::from_raw(instance as *mut T) })
    }));
    if let Err(payload) = result {
        host_log(
            1,
            &format!("panic while dropping: {}", panic_message(payload)),
        );
    }
}

/// The plugin's `init`: installs the host's allocator and log, builds the plugin object and
/// describes it.
///
/// # Safety
/// Called by the loader exactly once, with a host table that lives for the process, `out`
/// pointing at uninitialised room for a descriptor and `error` at a live `String`.
pub unsafe extern "C" fn init<E: Export>(
    host_table: *const HostVTable,
    config: StrRef,
    out: *mut PluginDescriptor,
    error: *mut String,
) -> u32 {
    // Must come first: from here on every allocation is the host's.
    HOST.store(host_table as *mut HostVTable, Ordering::Release);
    unsafe {
        guarded(error, || {
            std::panic::set_hook(Box::new(|info| {
                host_log(1, &format!("plugin panicked: {info}"));
            }));
            let config_text = config.to_string_lossy();
            let config = if config_text.trim().is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&config_text)
                    .map_err(|err| (STATUS_BAD_INPUT, format!("plugin configuration: {err}")))?
            };
            let plugin = E::create(&PluginContext { config });
            let app = plugin.app();
            let _ = APP.set(app.clone());
            let descriptor = PluginDescriptor {
                version: plugin
                    .version()
                    .unwrap_or_else(|| E::PACKAGE_VERSION.to_owned()),
                priority: plugin.priority(),
                services: plugin.services(),
                providers: plugin
                    .providers()
                    .into_iter()
                    .map(crate::plugin::Provider::into_descriptor)
                    .collect(),
                data_providers: plugin
                    .data_providers()
                    .into_iter()
                    .map(crate::plugin::DataProvider::into_descriptor)
                    .collect(),
                data_subscriptions: plugin.data_subscriptions(),
                processes: plugin
                    .processes()
                    .into_iter()
                    .map(crate::process::Process::into_descriptor)
                    .collect(),
                notify: notify_shim::<E::Plugin>,
                export_state: export_state_shim::<E::Plugin>,
                import_state: import_state_shim::<E::Plugin>,
                app,
                instance: Box::into_raw(Box::new(plugin)) as *mut c_void,
                drop_instance: drop_shim::<E::Plugin>,
            };
            out.write(descriptor);
            Ok(())
        })
    }
}

/// Exports a plugin from a `cdylib` crate. Use it once per crate.
///
/// `export_plugin!(Type)` builds the plugin with `Type::default()`;
/// `export_plugin!(Type, constructor)` with `constructor(&epi::PluginContext) -> Type`.
///
/// ```ignore
/// epi::export_plugin!(Hello);
/// epi::export_plugin!(Configured, Configured::from_context);
/// ```
///
/// It also installs [`PluginAllocator`] as the crate's global allocator.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        $crate::export_plugin!($plugin, |_: &$crate::PluginContext| {
            <$plugin as ::std::default::Default>::default()
        });
    };
    ($plugin:ty, $constructor:expr) => {
        #[global_allocator]
        static EPI_PLUGIN_ALLOCATOR: $crate::export::PluginAllocator =
            $crate::export::PluginAllocator;

        #[doc(hidden)]
        pub struct EpiPluginExport;

        impl $crate::export::Export for EpiPluginExport {
            type Plugin = $plugin;
            const PACKAGE_VERSION: &'static str = env!("CARGO_PKG_VERSION");
            fn create(context: &$crate::PluginContext) -> $plugin {
                let constructor: fn(&$crate::PluginContext) -> $plugin = $constructor;
                constructor(context)
            }
        }

        #[no_mangle]
        pub static EPI_PLUGIN_ENTRY: $crate::abi::PluginEntry =
            $crate::abi::PluginEntry::new($crate::export::init::<EpiPluginExport>);
    };
}
