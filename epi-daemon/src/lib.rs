#![warn(missing_docs)]
//! The `epi` program as a library: configuration, registry set-up, the HTTP server and the
//! command line. `src/main.rs` is the thin binary around it.

pub mod admin;
pub mod args;
pub mod cli;
pub mod config;
pub mod console;
pub mod metrics;
pub mod registry;
pub mod scaffold;
pub mod serve;
#[cfg(feature = "otlp")]
pub mod telemetry;
pub mod views;
