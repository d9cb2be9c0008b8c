//! What a plugin author implements: the [`Plugin`] trait and the values it returns.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::abi::manifest::{FunctionManifest, ProviderManifest};
use crate::abi::{FunctionTable, ObjectTable};
use crate::shim::{BoxedCallback, FunctionEntry, Provides};

/// The answer of a provider called through `decide`: the first `Decided` wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision<T> {
    /// This provider takes no decision; the next one is asked.
    NoDecision,
    /// This provider decided; no further provider is asked.
    Decided(T),
}

impl<T> Decision<T> {
    /// The decided value, if any.
    pub fn into_option(self) -> Option<T> {
        match self {
            Decision::NoDecision => None,
            Decision::Decided(value) => Some(value),
        }
    }

    /// True for `Decided`.
    pub fn is_decided(&self) -> bool {
        matches!(self, Decision::Decided(_))
    }
}

/// What the host tells a plugin when it creates it.
#[derive(Debug, Default)]
pub struct PluginContext {
    /// The plugin's configuration from the host (`null` when none was given).
    pub config: serde_json::Value,
}

/// A plugin: one per shared library, exported with [`crate::export_plugin!`].
///
/// Modelled on couch_epi's plugin behaviour: the runtime asks it once, when it is loaded, what
/// it defines and provides. Every method but [`Plugin::app`] has a default.
pub trait Plugin: Send + Sync + 'static {
    /// Application name, unique among the plugins a host loads.
    fn app(&self) -> String;

    /// Version; `None` uses the plugin crate's version.
    fn version(&self) -> Option<String> {
        None
    }

    /// Default priority of this plugin's providers: higher runs first. The host's configuration
    /// may override it.
    fn priority(&self) -> i32 {
        0
    }

    /// Services this plugin defines. Calls to a service no loaded plugin defines fail.
    fn services(&self) -> Vec<String> {
        Vec::new()
    }

    /// Providers: objects whose public methods implement a service's functions. Called once.
    fn providers(&self) -> Vec<Provider> {
        Vec::new()
    }

    /// Data this plugin contributes under `(service, key)`. Called once.
    fn data_providers(&self) -> Vec<DataProvider> {
        Vec::new()
    }

    /// `(service, key)` pairs this plugin wants [`Plugin::notify`] calls for (a key ending in
    /// `*` matches by prefix). Called once.
    fn data_subscriptions(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Long-running workers the host's engine runs and supervises (restarts, dependencies).
    /// They are stopped before this version is retired and started on the next one.
    fn processes(&self) -> Vec<crate::process::Process> {
        Vec::new()
    }

    /// Called on the running version just before an upgrade replaces it: the state to hand
    /// to the new version (counters, caches, bookkeeping). `None` (the default) hands nothing.
    fn export_state(&self) -> Option<PluginState> {
        None
    }

    /// Called on a new version, before it serves any call, with what the version it replaces
    /// exported. Check `state.format` and ignore formats you do not know.
    fn import_state(&self, state: PluginState) {
        let _ = state;
    }

    /// Called after the host published a change this plugin subscribes to, provides, or (for
    /// provider changes) whose service it defines. A panic here is caught and logged.
    fn notify(&self, notification: &Notification) {
        let _ = notification;
    }
}

/// State handed from a plugin version to the one replacing it (as OTP's `code_change`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginState {
    /// Version of the blob's format, chosen by the plugin, so a new version can tell what it
    /// receives.
    pub format: u32,
    /// The state.
    pub data: serde_json::Value,
}

/// One source's value for a key, as notifications carry it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourcedValue {
    /// The app name of the plugin that provides it.
    pub source: String,
    /// The data.
    pub value: serde_json::Value,
}

/// A provider as provider-change notifications describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderVersion {
    /// The plugin's app name.
    pub plugin: String,
    /// The provider's label.
    pub provider: String,
    /// The plugin's version.
    pub version: String,
}

/// What changed, delivered to [`Plugin::notify`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notification {
    /// The data under `(service, key)` changed. `old` is empty on first load, `new` empty when
    /// the last source went away. Values in plugin order.
    Data {
        /// The service.
        service: String,
        /// The key, as the providers declare it (wildcards keep their `*`).
        key: String,
        /// Every source's value before the change.
        old: Vec<SourcedValue>,
        /// Every source's value after the change.
        new: Vec<SourcedValue>,
    },
    /// The providers of a service this plugin defines changed (added, removed or upgraded).
    Providers {
        /// The service.
        service: String,
        /// Providers before, in call order.
        old: Vec<ProviderVersion>,
        /// Providers after, in call order.
        new: Vec<ProviderVersion>,
    },
}

/// Where a [`DataProvider`]'s data comes from, as the plugin keeps it.
pub(crate) enum Source {
    File(String),
    Static(Result<String, String>),
    Callback(BoxedCallback),
}

/// Data a plugin contributes, returned from [`Plugin::data_providers`].
pub struct DataProvider {
    pub(crate) service: String,
    pub(crate) key: String,
    pub(crate) source: Source,
    pub(crate) interval_ms: Option<u64>,
}

impl DataProvider {
    fn with_source(service: impl Into<String>, key: impl Into<String>, source: Source) -> Self {
        DataProvider {
            service: service.into(),
            key: key.into(),
            source,
            interval_ms: None,
        }
    }

    /// Data read from a JSON (`.json`) or TOML (`.toml`) file. A relative path is relative to
    /// the directory of the plugin's library file. The file is watched and also re-read at
    /// the interval (default 5 s).
    pub fn file(
        service: impl Into<String>,
        key: impl Into<String>,
        path: impl Into<String>,
    ) -> Self {
        Self::with_source(service, key, Source::File(path.into()))
    }

    /// Data compiled into the plugin: it changes when the plugin is upgraded.
    pub fn value<T: Serialize>(
        service: impl Into<String>,
        key: impl Into<String>,
        data: &T,
    ) -> Self {
        let json = serde_json::to_string(data).map_err(|err| err.to_string());
        Self::with_source(service, key, Source::Static(json))
    }

    /// Data returned by `callback`, called again at every interval (default 5 s); a change is
    /// detected by content hash. An `Err` or a panic keeps the previous data.
    pub fn callback<F, V, E>(
        service: impl Into<String>,
        key: impl Into<String>,
        callback: F,
    ) -> Self
    where
        F: Fn() -> Result<V, E> + Send + Sync + 'static,
        V: Serialize,
        E: std::fmt::Display,
    {
        let boxed: BoxedCallback = Box::new(move || match callback() {
            Ok(value) => serde_json::to_vec(&value).map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        });
        Self::with_source(service, key, Source::Callback(boxed))
    }

    /// How often the source is re-checked. A key is re-checked at the shortest interval of
    /// its providers.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval_ms = Some(interval.as_millis() as u64);
        self
    }
}

/// A provider a plugin returns from [`Plugin::providers`].
pub struct Provider {
    pub(crate) service: String,
    pub(crate) label: String,
    pub(crate) priority: Option<i32>,
    pub(crate) functions: Vec<(FunctionManifest, FunctionTable)>,
    /// The provider object; `None` once handed to the host.
    pub(crate) object: Option<ObjectTable>,
}

impl Provider {
    /// Registers `object`'s public methods as implementations of `service`'s functions.
    pub fn new<P: Provides>(service: impl Into<String>, object: P) -> Self {
        let label = std::any::type_name::<P>()
            .rsplit("::")
            .next()
            .unwrap_or_default()
            .to_owned();
        Provider {
            service: service.into(),
            label,
            priority: None,
            functions: P::functions()
                .into_iter()
                .map(FunctionEntry::into_parts)
                .collect(),
            object: Some(crate::shim::object(object)),
        }
    }

    /// Names the provider (default: its type name). Labels are unique inside a plugin.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Sets an explicit priority, overriding the plugin's: higher runs first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// A provider whose functions are only known at run time (a bridge to another process,
    /// say): `handler(function, args)` answers each of `functions` with JSON values.
    ///
    /// Calls by name reach it with JSON; typed calls reach it when their argument and output
    /// types are both `serde_json::Value`, and fail with a type error naming both signatures
    /// otherwise. The handler's error is a message (`String`) or a
    /// [`crate::HandlerError`], whose `Absent` makes calls skip this provider.
    pub fn json<F, E>(
        service: impl Into<String>,
        label: impl Into<String>,
        functions: impl IntoIterator<Item = impl Into<String>>,
        handler: F,
    ) -> Self
    where
        F: Fn(&str, serde_json::Value) -> Result<serde_json::Value, E> + Send + Sync + 'static,
        E: Into<crate::HandlerError>,
    {
        let handler: crate::json_provider::Handler =
            std::sync::Arc::new(move |function, args| handler(function, args).map_err(Into::into));
        let object = crate::json_provider::JsonProvider::new(functions, handler);
        let functions = object.functions();
        Provider {
            service: service.into(),
            label: label.into(),
            priority: None,
            functions,
            object: Some(crate::shim::object(object)),
        }
    }

    /// Splits the provider into what the manifest says and what the host calls; the host owns
    /// the object from here.
    pub(crate) fn into_parts(mut self) -> (ProviderManifest, crate::abi::ProviderTable) {
        let object = self
            .object
            .take()
            .expect("a provider's object is handed over once");
        let (functions, mut tables): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.functions).into_iter().unzip();
        for table in &mut tables {
            if table.instance.is_null() {
                table.instance = object.instance;
            }
        }
        (
            ProviderManifest {
                service: std::mem::take(&mut self.service),
                label: std::mem::take(&mut self.label),
                priority: self.priority,
                functions,
            },
            crate::abi::ProviderTable {
                object,
                functions: crate::abi::RVec::from_vec(tables),
            },
        )
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            // SAFETY: the object was boxed by `Provider::new` with this drop function and has
            // not been handed to anyone.
            unsafe { (object.drop)(object.instance) };
        }
    }
}
