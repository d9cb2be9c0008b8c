//! `epi`: the daemon (`epi serve`) and the command line that inspects and drives plugins.

use std::process::ExitCode;

use clap::Parser;
use epi_daemon::args::{Cli, Command};
use epi_daemon::{cli, config, serve};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => match config::Config::load(path) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("epi: {err}");
                return ExitCode::from(cli::EXIT_CONFIG);
            }
        },
        None => config::Config::default(),
    };
    if let Some(dir) = &config.data.dir {
        // Plugins keep their state under the daemon's data directory (the agent's database,
        // say). Set before any thread starts, so no thread reads the environment meanwhile.
        std::env::set_var("EPI_DATA_DIR", dir);
    }
    init_logging(&config, matches!(cli.command, Command::Serve));
    match cli.command {
        Command::Serve => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(serve::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("epi: {err}");
                    ExitCode::from(cli::EXIT_CONFIG)
                }
            }
        }
        command => cli::run(command, &config, cli.daemon.as_deref(), cli.json),
    }
}

/// Human logs by default, JSON by option; `RUST_LOG` overrides the level. Commands other than
/// `serve` log warnings only, to keep their output clean.
fn init_logging(config: &config::Config, serving: bool) {
    use tracing_subscriber::EnvFilter;
    let level = if serving {
        config.log.level.as_str()
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Human => builder.init(),
    }
}
