//! What a plugin author implements: the [`Plugin`] trait and the values it returns.

use std::ffi::c_void;

use serde::{Deserialize, Serialize};

use crate::abi::{FunctionEntry, ProviderDescriptor};

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
}

/// A provider object's function table. Implemented by `#[epi::provider]`; not by hand.
pub trait Provides: Send + Sync + Sized + 'static {
    /// One entry per public method, in declaration order.
    fn functions() -> Vec<FunctionEntry>;
}

/// A provider a plugin returns from [`Plugin::providers`].
pub struct Provider {
    descriptor: Option<ProviderDescriptor>,
}

impl Provider {
    /// Registers `object`'s public methods as implementations of `service`'s functions.
    pub fn new<P: Provides>(service: impl Into<String>, object: P) -> Self {
        let label = std::any::type_name::<P>()
            .rsplit("::")
            .next()
            .unwrap_or_default()
            .to_owned();
        let instance = Box::into_raw(Box::new(object)) as *mut c_void;
        Provider {
            descriptor: Some(ProviderDescriptor {
                service: service.into(),
                label,
                priority: None,
                instance,
                drop_instance: crate::export::drop_shim::<P>,
                functions: P::functions(),
            }),
        }
    }

    /// Names the provider (default: its type name). Labels are unique inside a plugin.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        if let Some(descriptor) = &mut self.descriptor {
            descriptor.label = label.into();
        }
        self
    }

    /// Sets an explicit priority, overriding the plugin's: higher runs first.
    pub fn priority(mut self, priority: i32) -> Self {
        if let Some(descriptor) = &mut self.descriptor {
            descriptor.priority = Some(priority);
        }
        self
    }

    pub(crate) fn into_descriptor(mut self) -> ProviderDescriptor {
        self.descriptor.take().expect("provider taken twice")
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(descriptor) = self.descriptor.take() {
            // SAFETY: the instance was created by `Provider::new` with this drop function and
            // has not been handed to anyone.
            unsafe { (descriptor.drop_instance)(descriptor.instance) };
        }
    }
}
