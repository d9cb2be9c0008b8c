#![warn(missing_docs)]
//! # epi: an extensible plugin interface runtime
//!
//! A host loads plugins, native shared libraries built from ordinary Rust crates, into a
//! [`Registry`], and calls the functions their providers implement through handles:
//!
//! ```no_run
//! use epi::{Opts, Registry, RegistryConfig};
//!
//! let registry = Registry::new(RegistryConfig::default())?;
//! registry.load("target/debug/libepi_plugin_hello.so")?;
//! let greet = registry.function::<String, String>("greeting", "greet");
//! let greetings: Vec<String> = greet.apply(&"Ada".to_string())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A plugin implements [`Plugin`], marks provider impl blocks with [`provider`], and exports
//! itself with [`export_plugin!`]. See `ARCHITECTURE.md` for how the pieces fit.

pub mod abi;
mod data;
mod dispatch;
mod dynamic;
pub mod engine;
mod error;
pub mod export;
pub mod http;
mod loader;
mod plugin;
mod process;
mod registry;
mod snapshot;

pub use data::{DataEntry, DataHandle, DataStatus, Group, Named, SourceKind};
pub use dispatch::{Function, Opts, ServiceHandle};
pub use dynamic::{Applied, Reply};
pub use engine::{EngineReport, WorkerReport, WorkerState};
pub use epi_macros::provider;
pub use error::{Error, Failure, LoadError, ProviderError};
pub use loader::PluginInfo;
pub use plugin::{
    DataProvider, Decision, Notification, Plugin, PluginContext, PluginState, Provider,
    ProviderVersion, Provides, SourcedValue,
};
pub use process::{Process, ProcessContext, ProcessError};
pub use registry::{
    is_plugin_file, FileStatus, ProviderCounters, Registry, RegistryConfig, RegistryStatus,
    RetirePolicy, ServiceInfo, Upgrade,
};

/// Logging from plugin code: records go to the host's `tracing` subscriber.
pub mod log {
    use crate::export::host_log;

    /// Logs an error.
    pub fn error(message: &str) {
        host_log(1, message)
    }
    /// Logs a warning.
    pub fn warn(message: &str) {
        host_log(2, message)
    }
    /// Logs an informational message.
    pub fn info(message: &str) {
        host_log(3, message)
    }
    /// Logs a debug message.
    pub fn debug(message: &str) {
        host_log(4, message)
    }
}
