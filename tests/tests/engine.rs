//! The dependency engine's semantics, with an injected clock: no test sleeps for a delay.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use epi::engine::{
    Engine, EngineConfig, EngineError, EngineReport, Manifold, ManualClock, Started, WorkerError,
    WorkerState,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// Commands a test sends a running worker: the error it should stop with.
#[derive(Clone, Default)]
struct Control {
    exit: Arc<Mutex<Option<WorkerError>>>,
    log: Arc<Mutex<Vec<String>>>,
    /// What `start` returns instead of starting (once per value).
    refuse: Arc<Mutex<Vec<WorkerError>>>,
}

impl Control {
    fn exit_with(&self, err: WorkerError) {
        *self.exit.lock() = Some(err);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().clone()
    }
}

/// A worker whose output is `{name, inputs}` and which runs until stopped or told to exit.
fn manifold(name: &str, inputs: &[&str], control: &Control) -> Manifold {
    let control = control.clone();
    let name = name.to_owned();
    Manifold {
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        start: Arc::new(move |inputs: &BTreeMap<String, Value>| {
            if let Some(err) = control.refuse.lock().pop() {
                return Err(err);
            }
            control.log.lock().push(format!("start {name}"));
            let control = control.clone();
            let name = name.clone();
            Ok(Started {
                output: json!({"name": name, "inputs": inputs}),
                body: Box::new(move |context| loop {
                    if context.wait_stop(Duration::from_millis(2)) {
                        control.log.lock().push(format!("stop {name}"));
                        return Ok(());
                    }
                    if let Some(err) = control.exit.lock().take() {
                        return Err(err);
                    }
                    context.set_report(json!({"alive": true}));
                }),
            })
        }),
    }
}

fn engine(clock: &ManualClock) -> Engine {
    Engine::new(
        EngineConfig {
            initial_delay: Duration::from_secs(1),
            factor: 2,
            max_delay: Duration::from_secs(4),
            reset_after: Duration::from_secs(60),
        },
        Arc::new(clock.clone()),
    )
}

fn worker<'r>(report: &'r EngineReport, name: &str) -> &'r epi::engine::WorkerReport {
    &report.workers[name]
}

fn wait_started(engine: &Engine, name: &str, count: u64) {
    assert!(
        engine.wait_for(WAIT, |r| r.workers.get(name).is_some_and(|w| {
            w.state == WorkerState::Started && w.start_count == count
        })),
        "{name} never reached start {count}: {:?}",
        engine.report()
    );
}

#[test]
fn a_worker_starts_and_reports() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let control = Control::default();
    engine.install("a", manifold("a", &[], &control)).unwrap();
    wait_started(&engine, "a", 1);
    assert!(engine.wait_for(WAIT, |r| r.workers["a"].report == json!({"alive": true})));
    let report = engine.report();
    assert_eq!(report.state, "running");
    assert_eq!(worker(&report, "a").inputs, Vec::<String>::new());
    assert_eq!(worker(&report, "a").last_error, None);
}

#[test]
fn a_worker_waits_for_a_missing_input_and_gets_its_output() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let control = Control::default();
    engine
        .install("b", manifold("b", &["a"], &control))
        .unwrap();
    assert!(
        !engine.wait_for(Duration::from_millis(100), |r| r.workers["b"].start_count
            > 0)
    );
    engine.install("a", manifold("a", &[], &control)).unwrap();
    wait_started(&engine, "b", 1);
    assert_eq!(control.log(), vec!["start a", "start b"]);
}

#[test]
fn dependents_restart_when_an_input_restarts() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let a = Control::default();
    let b = Control::default();
    engine.install("a", manifold("a", &[], &a)).unwrap();
    engine.install("b", manifold("b", &["a"], &b)).unwrap();
    wait_started(&engine, "b", 1);
    a.exit_with(WorkerError::Bounce);
    wait_started(&engine, "a", 2);
    wait_started(&engine, "b", 2);
    assert_eq!(b.log(), vec!["start b", "stop b", "start b"]);
}

#[test]
fn a_failing_worker_restarts_after_a_growing_capped_delay() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let control = Control::default();
    engine.install("a", manifold("a", &[], &control)).unwrap();
    wait_started(&engine, "a", 1);
    // Delays: 1 s, 2 s, 4 s, then capped at 4 s.
    for (attempt, delay) in [(1u64, 1u64), (2, 2), (3, 4), (4, 4)] {
        control.exit_with(WorkerError::Failed("boom".into()));
        assert!(engine.wait_for(WAIT, |r| r.workers["a"].state == WorkerState::Stopped));
        assert_eq!(
            worker(&engine.report(), "a").last_error,
            Some(WorkerError::Failed("boom".into()))
        );
        clock.advance(Duration::from_millis(delay * 1000 - 1));
        assert!(
            !engine.wait_for(Duration::from_millis(50), |r| r.workers["a"].start_count
                > attempt),
            "restarted before its {delay} s delay"
        );
        clock.advance(Duration::from_millis(1));
        wait_started(&engine, "a", attempt + 1);
    }
}

#[test]
fn the_delay_resets_after_running_long_enough() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let control = Control::default();
    engine.install("a", manifold("a", &[], &control)).unwrap();
    wait_started(&engine, "a", 1);
    for attempt in 1..=3u64 {
        control.exit_with(WorkerError::Failed("boom".into()));
        assert!(engine.wait_for(WAIT, |r| r.workers["a"].state == WorkerState::Stopped));
        clock.advance(Duration::from_secs(4));
        wait_started(&engine, "a", attempt + 1);
    }
    // It now runs for a minute before failing: the next delay is the initial one again.
    clock.advance(Duration::from_secs(60));
    control.exit_with(WorkerError::Failed("boom".into()));
    assert!(engine.wait_for(WAIT, |r| r.workers["a"].state == WorkerState::Stopped));
    clock.advance(Duration::from_secs(1));
    wait_started(&engine, "a", 5);
}

#[test]
fn missing_waits_for_an_input_change() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let a = Control::default();
    let b = Control::default();
    engine.install("a", manifold("a", &[], &a)).unwrap();
    wait_started(&engine, "a", 1);
    b.refuse.lock().push(WorkerError::Missing);
    engine.install("b", manifold("b", &["a"], &b)).unwrap();
    assert!(engine.wait_for(WAIT, |r| r.workers["b"].last_error
        == Some(WorkerError::Missing)));
    clock.advance(Duration::from_secs(3600));
    assert!(!engine.wait_for(Duration::from_millis(100), |r| {
        r.workers["b"].state == WorkerState::Started
    }));
    a.exit_with(WorkerError::Bounce);
    wait_started(&engine, "b", 2);
}

#[test]
fn bounce_restarts_at_once() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let control = Control::default();
    engine.install("a", manifold("a", &[], &control)).unwrap();
    wait_started(&engine, "a", 1);
    control.exit_with(WorkerError::Bounce);
    wait_started(&engine, "a", 2);
}

#[test]
fn uninstall_error_removes_the_worker() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let control = Control::default();
    engine.install("a", manifold("a", &[], &control)).unwrap();
    wait_started(&engine, "a", 1);
    control.exit_with(WorkerError::Uninstall);
    assert!(engine.wait_for(WAIT, |r| !r.workers.contains_key("a")));
    // The name is free again.
    engine.install("a", manifold("a", &[], &control)).unwrap();
}

#[test]
fn a_fatal_error_stops_the_engine_with_that_error() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let a = Control::default();
    let b = Control::default();
    engine.install("a", manifold("a", &[], &a)).unwrap();
    engine.install("b", manifold("b", &[], &b)).unwrap();
    wait_started(&engine, "b", 1);
    wait_started(&engine, "a", 1);
    a.exit_with(WorkerError::Fatal("disk on fire".into()));
    assert!(engine.wait_for(WAIT, |r| r.state == "stopped"));
    let report = engine.report();
    assert_eq!(
        report.error,
        Some(WorkerError::Fatal("disk on fire".into()))
    );
    assert_eq!(worker(&report, "b").state, WorkerState::Stopped);
    assert_eq!(
        engine.stop(),
        Some(WorkerError::Fatal("disk on fire".into()))
    );
    assert_eq!(
        engine.install("c", manifold("c", &[], &a)).unwrap_err(),
        EngineError::Stopped
    );
}

#[test]
fn duplicates_and_cycles_are_refused() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let control = Control::default();
    engine
        .install("a", manifold("a", &["c"], &control))
        .unwrap();
    engine
        .install("b", manifold("b", &["a"], &control))
        .unwrap();
    assert_eq!(
        engine
            .install("a", manifold("a", &[], &control))
            .unwrap_err(),
        EngineError::Duplicate("a".into())
    );
    let err = engine
        .install("c", manifold("c", &["b"], &control))
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::Cycle {
            name: "c".into(),
            cycle: "c -> b -> a -> c".into()
        }
    );
    assert!(err.to_string().contains("c -> b -> a -> c"));
    let err = engine
        .install("self", manifold("self", &["self"], &control))
        .unwrap_err();
    assert!(matches!(err, EngineError::Cycle { .. }));
}

#[test]
fn stop_goes_dependents_first() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let control = Control::default();
    engine
        .install("c", manifold("c", &["b"], &control))
        .unwrap();
    engine
        .install("b", manifold("b", &["a"], &control))
        .unwrap();
    engine.install("a", manifold("a", &[], &control)).unwrap();
    wait_started(&engine, "c", 1);
    assert_eq!(engine.stop(), None);
    let stops: Vec<String> = control
        .log()
        .into_iter()
        .filter(|line| line.starts_with("stop"))
        .collect();
    assert_eq!(stops, vec!["stop c", "stop b", "stop a"]);
    assert_eq!(engine.report().state, "stopped");
}

#[test]
fn uninstall_stops_the_worker_and_its_dependents_wait() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let control = Control::default();
    engine.install("a", manifold("a", &[], &control)).unwrap();
    engine
        .install("b", manifold("b", &["a"], &control))
        .unwrap();
    wait_started(&engine, "b", 1);
    engine.uninstall(&["a".to_string()]);
    let report = engine.report();
    assert!(!report.workers.contains_key("a"));
    assert_eq!(worker(&report, "b").state, WorkerState::Stopped);
    // The input comes back: the dependent starts again.
    engine.install("a", manifold("a", &[], &control)).unwrap();
    wait_started(&engine, "b", 2);
}

#[test]
fn a_panicking_worker_is_a_failure_not_a_crash() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    engine
        .install(
            "p",
            Manifold {
                inputs: vec![],
                start: Arc::new(|_: &BTreeMap<String, Value>| panic!("start exploded")),
            },
        )
        .unwrap();
    assert!(engine.wait_for(WAIT, |r| {
        r.workers["p"].last_error == Some(WorkerError::Failed("start panicked".into()))
    }));
    assert_eq!(engine.report().state, "running");
}
