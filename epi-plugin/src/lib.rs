#![warn(missing_docs)]
//! # epi-plugin: what a plugin library needs
//!
//! The plugin side of epi, without any of the host's machinery (loader, registry, watcher,
//! thread pools): the binary contract ([`abi`]), the [`Plugin`] trait and the values it
//! returns, providers and the [`provider`] macro, processes, HTTP types and logging.
//!
//! A plugin crate depends on this crate under the name `epi`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! epi = { package = "epi-plugin", version = "0.2" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! and writes no `unsafe` code:
//!
//! ```ignore
//! use epi::{Plugin, Provider};
//!
//! #[derive(Default)]
//! pub struct Hello;
//!
//! impl Plugin for Hello {
//!     fn app(&self) -> String { "hello".into() }
//!     fn services(&self) -> Vec<String> { vec!["greeting".into()] }
//!     fn providers(&self) -> Vec<Provider> { vec![Provider::new("greeting", English)] }
//! }
//!
//! pub struct English;
//!
//! #[epi::provider]
//! impl English {
//!     pub fn greet(&self, name: &str) -> String { format!("Hello, {name}!") }
//! }
//!
//! epi::export_plugin!(Hello);
//! ```
//!
//! Hosts use the `epi-core` crate, which re-exports everything here.

pub mod abi;
pub mod call;
pub mod describe;
pub mod error;
pub mod export;
pub mod host;
pub mod http;
mod json_provider;
pub mod opts;
mod plugin;
mod process;
pub mod running;
mod runtime;
mod shim;

pub use epi_macros::provider;
pub use error::{Error, Failure, ProviderError, ProviderFailure};
pub use json_provider::HandlerError;
pub use opts::{ApplyOpts, DecideOpts, Opts, PipeOpts};
pub use plugin::{
    DataProvider, Decision, Notification, Plugin, PluginContext, PluginState, Provider,
    ProviderVersion, SourcedValue,
};
pub use process::{Process, ProcessContext, ProcessError};
pub use shim::Provides;

/// Logging from plugin code: records go to the host's `tracing` subscriber.
pub mod log {
    use crate::runtime::log;

    /// Logs an error.
    pub fn error(message: &str) {
        log(1, message)
    }
    /// Logs a warning.
    pub fn warn(message: &str) {
        log(2, message)
    }
    /// Logs an informational message.
    pub fn info(message: &str) {
        log(3, message)
    }
    /// Logs a debug message.
    pub fn debug(message: &str) {
        log(4, message)
    }
}
