//! An isolated plugin's call (over the unix socket to `epi plugin-host`) beside the same call
//! in-process, in the same run: the test plugin's `math.value` (`i64 -> i64`), one provider.
//!
//! `cargo bench -p epi-daemon --bench isolation`

use std::time::{Duration, Instant};

use epi::isolation::PluginHostCommand;
use epi::{Function, Registry, RegistryConfig};
use serde_json::json;

const ROUNDS: usize = 5;
const WINDOW: Duration = Duration::from_millis(1500);

/// A registry with the test plugin loaded, isolated or not.
fn registry(dir: &std::path::Path, isolate: bool) -> (Registry, Function<i64, i64>) {
    let file = epi_testkit::install(dir, "epi-plugin-testplug", "libepi_plugin_testplug.so");
    let registry = Registry::new(RegistryConfig {
        isolate: if isolate {
            vec!["testplug".into()]
        } else {
            Vec::new()
        },
        plugin_host: Some(PluginHostCommand::epi(env!("CARGO_BIN_EXE_epi"))),
        ..RegistryConfig::default()
    })
    .unwrap();
    registry
        .load_with_config(
            &file,
            &json!({"app": "testplug", "providers": [{"label": "inc", "service": "math", "add": 1}]}),
        )
        .unwrap();
    let function = registry.function::<i64, i64>("math", "value");
    (registry, function)
}

/// ns per call over one window.
fn measure(function: &Function<i64, i64>) -> f64 {
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < WINDOW {
        for _ in 0..64 {
            let out = function.apply(&std::hint::black_box(41)).unwrap();
            std::hint::black_box(out);
        }
        calls += 64;
    }
    started.elapsed().as_nanos() as f64 / calls as f64
}

fn main() {
    let in_dir = epi_testkit::plugin_dir();
    let out_dir = epi_testkit::plugin_dir();
    let (_in_registry, in_process) = registry(in_dir.path(), false);
    let (_out_registry, isolated) = registry(out_dir.path(), true);
    println!("| round | in-process (ns/call) | isolated (ns/call) | isolated / in-process |");
    println!("|---|---|---|---|");
    for round in 1..=ROUNDS {
        let local = measure(&in_process);
        let remote = measure(&isolated);
        println!(
            "| {round} | {local:.1} | {remote:.1} | {:.0}× |",
            remote / local
        );
    }
}
