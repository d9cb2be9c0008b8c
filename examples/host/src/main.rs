//! Example host: loads the example plugins and calls the `greeting` service they share.
//!
//! `epi-example-host [PLUGIN_FILE...]`; with no argument it loads `hello` and `greeter-fr`
//! from the directory holding this executable (where `cargo build --workspace` puts them).

use std::path::PathBuf;
use std::process::ExitCode;

use epi::{DecideOpts, Decision, Opts, Registry, RegistryConfig};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn default_plugins() -> Vec<PathBuf> {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
        .unwrap_or_default();
    ["libepi_plugin_hello.so", "libepi_plugin_greeter_fr.so"]
        .iter()
        .map(|name| dir.join(name))
        .collect()
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut files: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if files.is_empty() {
        files = default_plugins();
    }
    let registry = Registry::new(RegistryConfig {
        order: vec!["hello".into(), "greeter-fr".into()],
        ..RegistryConfig::default()
    })?;
    for file in &files {
        let info = registry.load(file)?;
        println!(
            "loaded {} {} from {}",
            info.app,
            info.version,
            info.file.display()
        );
    }

    // Resolve handles once; they stay valid across reloads.
    let greet = registry.function::<String, String>("greeting", "greet");
    let language = registry.function::<String, Decision<String>>("greeting", "language");

    println!("\napply greeting.greet(\"Ada\"):");
    for line in greet.apply(&"Ada".to_string())? {
        println!("  {line}");
    }

    println!("\ndecide greeting.language:");
    for locale in ["fr-CA", "en-GB", "de-DE"] {
        match language.decide(&locale.to_string(), DecideOpts::new())? {
            Decision::Decided(language) => println!("  {locale}: {language}"),
            Decision::NoDecision => println!("  {locale}: no plugin decided"),
        }
    }

    let json = registry.apply_json("greeting", "greet", &"Grace".into(), Opts::new())?;
    println!("\ndynamic apply (JSON): {}", json.to_json(false));

    let greeted = registry
        .function::<(), u64>("greeting", "greeted")
        .apply(&())?;
    println!("greetings given by hello's provider: {greeted:?}");
    Ok(())
}
