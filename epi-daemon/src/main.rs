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
    // Flushes the exported spans when `main` returns (feature `otlp`).
    let serving = matches!(cli.command, Command::Serve | Command::PluginHost { .. });
    let _telemetry = init_logging(&config, serving);
    match cli.command {
        Command::PluginHost { file, socket } => {
            match epi::isolation::run_plugin_host(&file, &socket) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("epi plugin-host: {}: {err}", file.display());
                    ExitCode::FAILURE
                }
            }
        }
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
/// `serve` log warnings only, to keep their output clean. With the `otlp` feature and
/// OpenTelemetry's endpoint variable set, spans are exported over OTLP too.
fn init_logging(config: &config::Config, serving: bool) -> Option<Telemetry> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let level = if serving {
        config.log.level.as_str()
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match config.log.format {
        config::LogFormat::Json => fmt.json().boxed(),
        config::LogFormat::Human => fmt.boxed(),
    };
    let (otlp, telemetry) = otlp_layer();
    tracing_subscriber::registry()
        .with(otlp)
        .with(fmt.with_filter(filter))
        .init();
    telemetry
}

#[cfg(feature = "otlp")]
type Telemetry = epi_daemon::telemetry::Telemetry;
#[cfg(not(feature = "otlp"))]
type Telemetry = ();

/// The OTLP layer when the feature is on and an endpoint is configured.
#[cfg(feature = "otlp")]
fn otlp_layer() -> (
    Option<epi_daemon::telemetry::BoxedLayer<tracing_subscriber::Registry>>,
    Option<Telemetry>,
) {
    match epi_daemon::telemetry::from_env() {
        Ok(Some((layer, telemetry))) => (Some(layer), Some(telemetry)),
        Ok(None) => (None, None),
        Err(err) => {
            eprintln!("epi: {err}; spans are not exported");
            (None, None)
        }
    }
}

#[cfg(not(feature = "otlp"))]
fn otlp_layer() -> (
    Option<tracing_subscriber::layer::Identity>,
    Option<Telemetry>,
) {
    (None, None)
}
