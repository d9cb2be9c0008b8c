#![warn(missing_docs)]
//! # epi: an extensible plugin interface runtime
//!
//! A host loads plugins, native shared libraries built from ordinary Rust crates, into a
//! [`Registry`], and calls the functions their providers implement through handles:
//!
//! ```no_run
//! use epi::{Registry, RegistryConfig};
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
//!
//! Each public method of a provider answers the function of its name, or of the name given
//! with `#[epi(name = "...")]`:
//!
//! ```
//! pub struct Greeter;
//!
//! #[epi::provider]
//! impl Greeter {
//!     pub fn greet(&self, name: &String) -> String {
//!         format!("Hello, {name}!")
//!     }
//!
//!     #[epi(name = "greet_loudly")]
//!     pub fn shout(&self, name: &String) -> String {
//!         format!("HELLO, {name}!")
//!     }
//! }
//! ```
//!
//! Two methods answering the same function are refused when the plugin compiles:
//!
//! ```compile_fail
//! pub struct Greeter;
//!
//! #[epi::provider]
//! impl Greeter {
//!     pub fn greet(&self, name: &String) -> String {
//!         format!("Hello, {name}!")
//!     }
//!
//!     #[epi(name = "greet")]
//!     pub fn shout(&self, name: &String) -> String {
//!         format!("HELLO, {name}!")
//!     }
//! }
//! ```

mod data;
mod dispatch;
mod dynamic;
mod error;
mod fatal;
mod global;
mod host_calls;
mod ids;
pub mod isolation;
mod loader;
mod pool;
mod published;
mod registry;
mod snapshot;

/// The plugin side, re-exported: hosts and plugins share these types.
pub use epi_plugin::{abi, describe, export, export_plugin, http, log, provider};
pub use epi_plugin::{
    DataProvider, Decision, Notification, Plugin, PluginContext, PluginState, Process,
    ProcessContext, ProcessError, ProviderVersion, Provides, SourcedValue,
};

/// The dependency engine that runs plugin processes.
pub use epi_engine as engine;

pub use data::{
    DataEntry, DataHandle, DataReload, DataStatus, Group, Named, Names, SourceKind, Subscription,
    Values, DEFAULT_DATA_READ_TIMEOUT, DEFAULT_MAX_DATA_FILE_BYTES,
};
pub use dispatch::{
    Answer, ApplyOpts, Argument, DecideOpts, Function, Opts, Output, PipeOpts, ServiceHandle, Table,
};
pub use dynamic::{Applied, Reply};
pub use engine::{EngineReport, WorkerReport, WorkerState};
pub use epi_plugin::Provider;
pub use error::{Error, Failure, LoadError, ProviderError, ProviderFailure};
pub use global::{all, any, apply, apply_with, data, decide, function, install, installed, pipe};
pub use loader::probe::{LoadProbe, DEFAULT_PROBE_TIMEOUT};
pub use loader::{CallPath, PluginInfo};
pub use registry::{
    is_plugin_file, Change, ChangeKind, FileStatus, FileTotals, History, LatencyCounts,
    ProviderCounters, Registry, RegistryConfig, RegistryStatus, RetirePolicy, ServiceInfo, Upgrade,
};
