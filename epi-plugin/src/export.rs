//! What [`crate::export_plugin!`] expands to call: the plugin's `init`, which installs the
//! host's allocator and log, builds the plugin object and describes it, and the shims of the
//! plugin object itself.

use std::ffi::c_void;

use crate::abi::manifest::{DataManifest, DataSource, Manifest};
use crate::abi::{
    CallbackTable, HostVTable, PluginTables, RVec, StrRef, STATUS_BAD_INPUT, STATUS_FAILED,
};
use crate::plugin::{Plugin, PluginContext, Source};
use crate::shim::{guarded, put, read_json, write_json};

pub use crate::runtime::PluginAllocator;
pub use crate::shim::{function_entry, FunctionEntry, Method, WireStr};

/// What `export_plugin!` knows about the plugin crate.
pub trait Export {
    /// The plugin type.
    type Plugin: Plugin;
    /// `CARGO_PKG_VERSION` of the plugin crate.
    const PACKAGE_VERSION: &'static str;
    /// Builds the plugin object, or says why it cannot (the load is refused with that
    /// message).
    fn create(context: &PluginContext) -> Result<Self::Plugin, String>;
}

/// Decodes the JSON value in `input` and hands it to the plugin object `P`.
///
/// # Safety
/// `plugin` is the `P` this plugin's `init` created, `input` live bytes, `error` a live buffer.
unsafe fn receive_json<P: Plugin, T: serde::de::DeserializeOwned>(
    plugin: *const c_void,
    input: StrRef,
    error: *mut RVec<u8>,
    what: &str,
    deliver: impl FnOnce(&P, T),
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        guarded(error, || {
            let value = read_json(input.as_bytes(), || what.to_owned())?;
            deliver(&*(plugin as *const P), value);
            Ok(())
        })
    }
}

/// Delivers a notification (JSON text) to the plugin object `P`.
///
/// # Safety
/// As [`receive_json`].
unsafe extern "C" fn notify_shim<P: Plugin>(
    plugin: *const c_void,
    input: StrRef,
    error: *mut RVec<u8>,
) -> u32 {
    // SAFETY: the caller's contract.
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
/// `plugin` is the `P` this plugin's `init` created, `output` and `error` live buffers.
unsafe extern "C" fn export_state_shim<P: Plugin>(
    plugin: *const c_void,
    output: *mut RVec<u8>,
    error: *mut RVec<u8>,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        guarded(error, || {
            let state = (*(plugin as *const P)).export_state();
            put(output, write_json(&state, "state")?);
            Ok(())
        })
    }
}

/// Imports a state (JSON of `PluginState`) into plugin object `P`.
///
/// # Safety
/// As [`receive_json`].
unsafe extern "C" fn import_state_shim<P: Plugin>(
    plugin: *const c_void,
    input: StrRef,
    error: *mut RVec<u8>,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        receive_json(plugin, input, error, "unreadable state", |p: &P, state| {
            p.import_state(state)
        })
    }
}

/// The manifest and tables describing `plugin`.
fn describe<P: Plugin>(plugin: P, package_version: &str) -> PluginTables {
    let app = plugin.app();
    crate::runtime::set_app(&app);
    let mut providers = Vec::new();
    let mut provider_tables = Vec::new();
    for provider in plugin.providers() {
        let (manifest, table) = provider.into_parts();
        providers.push(manifest);
        provider_tables.push(table);
    }
    let mut callbacks = Vec::new();
    let data_providers = plugin
        .data_providers()
        .into_iter()
        .map(|data| DataManifest {
            service: data.service,
            key: data.key,
            interval_ms: data.interval_ms,
            source: match data.source {
                Source::File(path) => DataSource::File(path),
                Source::Static(Ok(json)) => DataSource::Static(json),
                Source::Static(Err(reason)) => DataSource::Invalid(reason),
                Source::Callback(callback) => {
                    callbacks.push(CallbackTable {
                        object: crate::shim::object(callback),
                        call: crate::shim::data_shim,
                    });
                    DataSource::Callback(callbacks.len() - 1)
                }
            },
        })
        .collect();
    let (processes, process_tables): (Vec<_>, Vec<_>) = plugin
        .processes()
        .into_iter()
        .map(crate::process::Process::into_parts)
        .unzip();
    let manifest = Manifest {
        version: plugin
            .version()
            .unwrap_or_else(|| package_version.to_owned()),
        priority: plugin.priority(),
        services: plugin.services(),
        providers,
        data_providers,
        data_subscriptions: plugin.data_subscriptions(),
        processes,
        app,
    };
    PluginTables {
        manifest: RVec::from_vec(serde_json::to_vec(&manifest).expect("a manifest encodes")),
        plugin: crate::shim::object(plugin),
        notify: notify_shim::<P>,
        export_state: export_state_shim::<P>,
        import_state: import_state_shim::<P>,
        providers: RVec::from_vec(provider_tables),
        callbacks: RVec::from_vec(callbacks),
        processes: RVec::from_vec(process_tables),
    }
}

/// The plugin's `init`: installs the host's allocator and log, builds the plugin object and
/// describes it.
///
/// # Safety
/// Called by the loader exactly once, with a host table that lives for the process, `config`
/// live bytes, `out` pointing at uninitialised room for the tables and `error` at a live
/// buffer.
pub unsafe extern "C" fn init<E: Export>(
    host_table: *const HostVTable,
    context: *const c_void,
    config: StrRef,
    out: *mut PluginTables,
    error: *mut RVec<u8>,
) -> u32 {
    // Must come first: from here on every allocation is the host's.
    crate::runtime::install(host_table, context);
    // SAFETY: the caller's contract.
    unsafe {
        guarded(error, || {
            std::panic::set_hook(Box::new(|info| {
                crate::runtime::log(1, &format!("plugin panicked: {info}"));
            }));
            let config_text = config.as_bytes();
            let config = if config_text.trim_ascii().is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(config_text)
                    .map_err(|err| (STATUS_BAD_INPUT, format!("plugin configuration: {err}")))?
            };
            let plugin =
                E::create(&PluginContext { config }).map_err(|message| (STATUS_FAILED, message))?;
            out.write(describe(plugin, E::PACKAGE_VERSION));
            Ok(())
        })
    }
}

/// Exports a plugin from a `cdylib` crate. Use it once per crate.
///
/// `export_plugin!(Type)` builds the plugin with `Type::default()`;
/// `export_plugin!(Type, constructor)` with `constructor(&epi::PluginContext) -> Type`;
/// `export_plugin!(Type, try constructor)` with a constructor returning
/// `Result<Type, E: Display>`, whose error refuses the load with its message (a bad
/// configuration, say).
///
/// ```ignore
/// epi::export_plugin!(Hello);
/// epi::export_plugin!(Configured, Configured::from_context);
/// epi::export_plugin!(Bridge, try Bridge::from_context);
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
    ($plugin:ty, try $constructor:expr) => {
        $crate::export_plugin!(@export $plugin, |context: &$crate::PluginContext| {
            let constructor: fn(&$crate::PluginContext) -> ::std::result::Result<$plugin, _> =
                $constructor;
            constructor(context).map_err(|err| ::std::string::ToString::to_string(&err))
        });
    };
    ($plugin:ty, $constructor:expr) => {
        $crate::export_plugin!(@export $plugin, |context: &$crate::PluginContext| {
            let constructor: fn(&$crate::PluginContext) -> $plugin = $constructor;
            ::std::result::Result::Ok(constructor(context))
        });
    };
    (@export $plugin:ty, $create:expr) => {
        #[global_allocator]
        static EPI_PLUGIN_ALLOCATOR: $crate::export::PluginAllocator =
            $crate::export::PluginAllocator;

        #[doc(hidden)]
        pub struct EpiPluginExport;

        impl $crate::export::Export for EpiPluginExport {
            type Plugin = $plugin;
            const PACKAGE_VERSION: &'static str = env!("CARGO_PKG_VERSION");
            fn create(
                context: &$crate::PluginContext,
            ) -> ::std::result::Result<$plugin, ::std::string::String> {
                let create: fn(
                    &$crate::PluginContext,
                ) -> ::std::result::Result<$plugin, ::std::string::String> = $create;
                create(context)
            }
        }

        #[no_mangle]
        pub static EPI_PLUGIN_ENTRY: $crate::abi::PluginEntry =
            $crate::abi::PluginEntry::new($crate::export::init::<EpiPluginExport>);
    };
}
