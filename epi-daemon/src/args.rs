//! The command line's arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Command-line interface.
#[derive(Parser)]
#[command(name = "epi", version, about = "Serve, inspect and drive epi plugins")]
pub struct Cli {
    /// Configuration file (TOML); every key has a default.
    #[arg(long, short, global = true, env = "EPI_CONFIG")]
    pub config: Option<PathBuf>,
    /// A running daemon to talk to (e.g. http://127.0.0.1:8080); without it, commands load
    /// the plugins in-process.
    #[arg(long, global = true, env = "EPI_DAEMON")]
    pub daemon: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: load and watch plugins, run their processes, serve HTTP.
    Serve,
    /// List loaded plugins.
    List,
    /// Describe a plugin file: version, services, providers, data, compatibility.
    Inspect {
        /// The plugin library.
        file: PathBuf,
    },
    /// Call a function of every provider (couch_epi's apply).
    Apply {
        /// Service name.
        service: String,
        /// Function name.
        function: String,
        /// Arguments as JSON.
        #[arg(long, default_value = "null")]
        args: String,
        /// Call every provider; failures stay in the results.
        #[arg(long)]
        ignore_errors: bool,
        /// Run providers in parallel.
        #[arg(long, conflicts_with = "pipe")]
        concurrent: bool,
        /// Feed each provider's output to the next.
        #[arg(long)]
        pipe: bool,
    },
    /// Ask providers in order until one decides.
    Decide {
        /// Service name.
        service: String,
        /// Function name.
        function: String,
        /// Arguments as JSON.
        #[arg(long, default_value = "null")]
        args: String,
        /// A failing provider counts as no decision.
        #[arg(long)]
        ignore_errors: bool,
    },
    /// Query data providers.
    Data {
        /// The query.
        #[command(subcommand)]
        query: DataQuery,
    },
    /// The state of every plugin process.
    Report,
    /// Re-check plugin files (upgrade what changed) and re-read data.
    Reload {
        /// Only this plugin (app name).
        plugin: Option<String>,
    },
    /// Run one isolated plugin for a daemon (started by `epi serve` for the plugins of
    /// `[plugins] isolate`): loads FILE and answers calls on the unix socket SOCKET until its
    /// stdin closes.
    #[command(hide = true)]
    PluginHost {
        /// The plugin library (the daemon's private copy).
        file: PathBuf,
        /// Where to listen.
        socket: PathBuf,
    },
    /// Create a plugin crate: a cdylib with one provider and a test that loads it.
    New {
        /// Crate and app name (lowercase letters, digits, `-`, `_`).
        name: String,
        /// Where to create the crate's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// An epi checkout to depend on (default: the sources this binary was built from,
        /// else the registry).
        #[arg(long)]
        epi_path: Option<PathBuf>,
    },
}

/// Data queries.
#[derive(Subcommand)]
pub enum DataQuery {
    /// Keys of a service.
    Keys {
        /// Service name.
        service: String,
    },
    /// Every source's value for a key.
    Get {
        /// Service name.
        service: String,
        /// The key.
        key: String,
    },
    /// `(source, value)` per key, or for one key.
    ByKey {
        /// Service name.
        service: String,
        /// Only this key.
        key: Option<String>,
    },
    /// `(key, value)` per source, or for one source.
    BySource {
        /// Service name.
        service: String,
        /// Only this source (app name).
        source: Option<String>,
    },
    /// Every data source with its last error.
    Status,
}
