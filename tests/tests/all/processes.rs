//! Plugin processes under the registry's engine: started with their inputs, restarted on the
//! new version by an upgrade, stopped on unload.

use std::time::Duration;

use crate::common::*;
use epi::{EngineReport, Registry, WorkerState};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn wait_for(registry: &Registry, what: &str, done: impl Fn(&EngineReport) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done(&registry.process_report()) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            registry.process_report()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn started(report: &EngineReport, name: &str) -> bool {
    report
        .workers
        .get(name)
        .is_some_and(|w| w.state == WorkerState::Started && w.report["ticks"].as_u64() > Some(0))
}

fn config(app: &str) -> Value {
    json!({"app": app, "processes": [
        {"name": "queue", "output": {"queue": "ready"}},
        {"name": "delivery", "inputs": ["queue"], "output": "delivering"}]})
}

#[test]
fn processes_start_with_their_inputs_outputs() {
    let registry = registry(&[]);
    registry
        .load_with_config(testplug(), &config("flare"))
        .unwrap();
    wait_for(&registry, "both processes", |r| {
        started(r, "flare/queue") && started(r, "flare/delivery")
    });
    let report = registry.process_report();
    let delivery = &report.workers["flare/delivery"];
    assert_eq!(delivery.inputs, vec!["flare/queue"]);
    assert_eq!(
        delivery.report["inputs"],
        json!({"queue": {"queue": "ready"}})
    );
    assert_eq!(delivery.start_count, 1);
}

#[test]
fn a_process_can_depend_on_another_plugins_process() {
    let registry = registry(&[]);
    // `sibling` is installed after `reader` and needs nothing: the engine pass that starts it
    // also looked at `reader` and left it alone.
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "consumer", "processes": [
                {"name": "reader", "inputs": ["producer/feed"]}, {"name": "sibling"}]}),
        )
        .unwrap();
    wait_for(&registry, "the sibling", |r| started(r, "consumer/sibling"));
    let reader = &registry.process_report().workers["consumer/reader"];
    assert_eq!(
        (reader.state, reader.attempts),
        (WorkerState::Stopped, 0),
        "{reader:?}"
    );
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "producer", "processes": [{"name": "feed", "output": 42}]}),
        )
        .unwrap();
    wait_for(&registry, "the reader", |r| started(r, "consumer/reader"));
    assert_eq!(
        registry.process_report().workers["consumer/reader"].report["inputs"],
        json!({"producer/feed": 42})
    );
    // The producer goes away: the reader stops and waits for it.
    registry.unload("producer");
    wait_for(&registry, "the reader to stop", |r| {
        r.workers["consumer/reader"].state == WorkerState::Stopped
    });
}

#[test]
fn an_upgrade_restarts_processes_on_the_new_version_and_unload_stops_them() {
    let dir = plugin_dir();
    let path = install(dir.path(), "epi-plugin-testplug", "flare.so");
    let registry = registry(&[]);
    registry.load_with_config(&path, &config("flare")).unwrap();
    wait_for(&registry, "the processes", |r| started(r, "flare/delivery"));
    let mut bytes = library_bytes("epi-plugin-testplug");
    assert_eq!(
        patch(&mut bytes, b"EPIMARK:00000000", b"EPIMARK:00000002"),
        1
    );
    let temp = write_file(dir.path(), ".flare.so.tmp", &bytes);
    std::fs::rename(temp, &path).unwrap();
    registry.upgrade(&path).unwrap();
    wait_for(&registry, "the processes on the new build", |r| {
        started(r, "flare/delivery") && r.workers["flare/delivery"].report["mark"] == "00000002"
    });
    registry.unload("flare");
    wait_for(&registry, "the processes to go", |r| r.workers.is_empty());
}

#[test]
fn a_failing_process_is_restarted_with_its_error_in_the_report() {
    let registry = registry_with(epi::RegistryConfig {
        engine: epi::engine::EngineConfig {
            initial_delay: Duration::from_millis(1),
            ..Default::default()
        },
        ..Default::default()
    });
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "flaky", "processes": [
                {"name": "worker", "fail_with": {"kind": "failed", "message": "lost the socket"}}]}),
        )
        .unwrap();
    wait_for(&registry, "restarts", |r| {
        r.workers["flaky/worker"].start_count >= 3
    });
    let report = registry.process_report();
    assert_eq!(
        report.workers["flaky/worker"].last_error,
        Some(epi::engine::WorkerError::Failed("lost the socket".into()))
    );
    assert_eq!(report.state, "running");
}
