//! The dependency engine's semantics, with an injected clock: no test sleeps for a delay.

use std::sync::Arc;
use std::time::Duration;

use epi::engine::{
    Engine, EngineConfig, EngineError, EngineReport, Manifold, ManualClock, StartContext, Started,
    WorkerError, WorkerState,
};
use parking_lot::Mutex;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// Commands a test sends a running worker: the error it should stop with.
#[derive(Clone, Default)]
struct Control {
    exit: Arc<Mutex<Option<WorkerError>>>,
    log: Arc<Mutex<Vec<String>>>,
    /// What `start` returns instead of starting (once per value).
    refuse: Arc<Mutex<Vec<WorkerError>>>,
    /// The body returns `Ok(())` (it finished) once set.
    finish: Arc<Mutex<bool>>,
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
        start: Arc::new(move |context: &StartContext<'_>| {
            let inputs = context.inputs();
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
                    if std::mem::take(&mut *control.finish.lock()) {
                        control.log.lock().push(format!("finish {name}"));
                        return Ok(());
                    }
                    context.set_report(json!({"alive": true}));
                }),
            })
        }),
        filter: None,
    }
}

/// Exact delays (no spread): 1 s, doubling, capped at 4 s, reset after a minute; bounces at
/// once.
fn config() -> EngineConfig {
    EngineConfig {
        initial_delay: Duration::from_secs(1),
        factor: 2.0,
        max_delay: Duration::from_secs(4),
        reset_after: Duration::from_secs(60),
        bounce_delay: Duration::ZERO,
        spread: 0.0,
    }
}

fn engine(clock: &ManualClock) -> Engine {
    Engine::new(config(), Arc::new(clock.clone()))
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
    // Its refused start was an attempt, not a start.
    wait_started(&engine, "b", 1);
    assert_eq!(worker(&engine.report(), "b").attempts, 2);
}

#[test]
fn bounce_restarts_at_once_with_no_bounce_delay() {
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
                start: Arc::new(|_: &StartContext<'_>| panic!("start exploded")),
                filter: None,
            },
        )
        .unwrap();
    assert!(engine.wait_for(WAIT, |r| {
        r.workers["p"].last_error == Some(WorkerError::Failed("start panicked".into()))
    }));
    assert_eq!(engine.report().state, "running");
}

/// Asserts that `name` made exactly `attempts` start attempts and stays there for a moment.
fn assert_attempts(engine: &Engine, name: &str, attempts: u64) {
    assert!(
        engine.wait_for(WAIT, |r| r.workers[name].attempts == attempts),
        "{name} never reached {attempts} attempts: {:?}",
        engine.report().workers[name]
    );
    assert!(
        !engine.wait_for(Duration::from_millis(50), |r| r.workers[name].attempts
            > attempts),
        "{name} went on past {attempts} attempts: {:?}",
        engine.report().workers[name]
    );
}

#[test]
fn a_worker_that_finishes_stays_stopped_until_an_input_changes() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let (a, b) = (Control::default(), Control::default());
    engine.install("a", manifold("a", &[], &a)).unwrap();
    engine.install("b", manifold("b", &["a"], &b)).unwrap();
    wait_started(&engine, "b", 1);
    *b.finish.lock() = true;
    assert!(engine.wait_for(WAIT, |r| r.workers["b"].state == WorkerState::Stopped));
    clock.advance(Duration::from_secs(3600));
    assert_attempts(&engine, "b", 1);
    assert_eq!(worker(&engine.report(), "b").last_error, None);
    // Its input restarts: it runs again.
    a.exit_with(WorkerError::Bounce);
    wait_started(&engine, "b", 2);
    // A worker with no inputs that finishes is done for good.
    *a.finish.lock() = true;
    assert!(engine.wait_for(WAIT, |r| r.workers["a"].state == WorkerState::Stopped));
    clock.advance(Duration::from_secs(3600));
    assert_attempts(&engine, "a", 2);
}

#[test]
fn a_start_that_keeps_failing_backs_off_further_even_late_in_the_engine_life() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    // The engine has run far longer than `reset_after` before the worker comes.
    clock.advance(Duration::from_secs(600));
    let control = Control::default();
    control
        .refuse
        .lock()
        .extend(std::iter::repeat_n(WorkerError::Failed("no".into()), 5));
    engine.install("a", manifold("a", &[], &control)).unwrap();
    assert_attempts(&engine, "a", 1);
    // Delays 1, 2, 4, 4 s: each attempt comes exactly when its delay is over, not before.
    for (attempts, delay) in [(2u64, 1u64), (3, 2), (4, 4), (5, 4)] {
        clock.advance(Duration::from_millis(delay * 1000 - 1));
        assert_attempts(&engine, "a", attempts - 1);
        clock.advance(Duration::from_millis(1));
        assert_attempts(&engine, "a", attempts);
    }
    assert_eq!(worker(&engine.report(), "a").start_count, 0);
}

#[test]
fn a_dependent_waiting_after_missing_restarts_when_its_input_is_replaced_under_its_name() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let (a, b) = (Control::default(), Control::default());
    engine.install("a", manifold("a", &[], &a)).unwrap();
    wait_started(&engine, "a", 1);
    b.refuse.lock().push(WorkerError::Missing);
    engine.install("b", manifold("b", &["a"], &b)).unwrap();
    assert!(engine.wait_for(WAIT, |r| r.workers["b"].last_error
        == Some(WorkerError::Missing)));
    // An upgrade reinstalls the input under the same name: a new worker, a new run.
    engine.uninstall(&["a".to_string()]);
    engine.install("a", manifold("a", &[], &a)).unwrap();
    wait_started(&engine, "b", 1);
}

#[test]
fn an_input_named_twice_is_refused_naming_it() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let control = Control::default();
    let err = engine
        .install("b", manifold("b", &["queue", "queue"], &control))
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::DuplicateInput {
            name: "b".into(),
            input: "queue".into()
        }
    );
    assert!(err.to_string().contains("`queue` twice"), "{err}");
}

#[test]
fn the_report_counts_starts_and_attempts_and_says_when_a_run_started() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    clock.advance(Duration::from_secs(5));
    let control = Control::default();
    control
        .refuse
        .lock()
        .push(WorkerError::Failed("not yet".into()));
    engine.install("a", manifold("a", &[], &control)).unwrap();
    assert_attempts(&engine, "a", 1);
    let report = engine.report();
    assert_eq!(
        (
            worker(&report, "a").start_count,
            worker(&report, "a").started_at
        ),
        (0, None)
    );
    clock.advance(Duration::from_secs(1));
    wait_started(&engine, "a", 1);
    assert_eq!(
        worker(&engine.report(), "a").started_at,
        Some(Duration::from_secs(6))
    );
    assert!(engine.wait_for(WAIT, |r| r.workers["a"].report == json!({"alive": true})));
    // Stopped, it keeps its last run's report (its state says it is not running), and a new
    // run starts with a clean one.
    control.exit_with(WorkerError::Failed("boom".into()));
    assert!(engine.wait_for(WAIT, |r| r.workers["a"].state == WorkerState::Stopped));
    let report = engine.report();
    assert_eq!(worker(&report, "a").report, json!({"alive": true}));
    assert_eq!(worker(&report, "a").started_at, None);
    assert_eq!(worker(&report, "a").attempts, 2);
}

#[test]
fn repeated_bounces_wait_a_growing_bounce_delay() {
    let clock = ManualClock::new();
    let engine = Engine::new(
        EngineConfig {
            bounce_delay: Duration::from_secs(1),
            ..config()
        },
        Arc::new(clock.clone()),
    );
    let control = Control::default();
    engine.install("a", manifold("a", &[], &control)).unwrap();
    wait_started(&engine, "a", 1);
    for (starts, delay) in [(2u64, 1u64), (3, 2), (4, 4)] {
        control.exit_with(WorkerError::Bounce);
        assert!(engine.wait_for(WAIT, |r| r.workers["a"].state == WorkerState::Stopped));
        clock.advance(Duration::from_millis(delay * 1000 - 1));
        assert_attempts(&engine, "a", starts - 1);
        clock.advance(Duration::from_millis(1));
        wait_started(&engine, "a", starts);
    }
}

#[test]
fn fractional_and_zero_factors() {
    for (factor, delays) in [(1.5, [1000u64, 1500, 2250]), (0.0, [1000, 1000, 1000])] {
        let clock = ManualClock::new();
        let engine = Engine::new(
            EngineConfig {
                factor,
                max_delay: Duration::from_secs(10),
                ..config()
            },
            Arc::new(clock.clone()),
        );
        let control = Control::default();
        engine.install("a", manifold("a", &[], &control)).unwrap();
        wait_started(&engine, "a", 1);
        for (index, delay) in delays.into_iter().enumerate() {
            let starts = index as u64 + 2;
            control.exit_with(WorkerError::Failed("boom".into()));
            assert!(engine.wait_for(WAIT, |r| r.workers["a"].state == WorkerState::Stopped));
            clock.advance(Duration::from_millis(delay - 1));
            assert_attempts(&engine, "a", starts - 1);
            clock.advance(Duration::from_millis(1));
            wait_started(&engine, "a", starts);
        }
    }
}

#[test]
fn workers_failing_together_restart_spread_apart() {
    let clock = ManualClock::new();
    let engine = Engine::new(
        EngineConfig {
            spread: 0.1,
            ..config()
        },
        Arc::new(clock.clone()),
    );
    let controls: Vec<Control> = (0..20).map(|_| Control::default()).collect();
    for (index, control) in controls.iter().enumerate() {
        let name = format!("w{index}");
        engine
            .install(&name, manifold(&name, &[], control))
            .unwrap();
        wait_started(&engine, &name, 1);
    }
    for control in &controls {
        control.exit_with(WorkerError::Failed("together".into()));
    }
    assert!(engine.wait_for(WAIT, |r| r
        .workers
        .values()
        .all(|w| w.state == WorkerState::Stopped)));
    let restarted = |r: &EngineReport| r.workers.values().filter(|w| w.attempts == 2).count();
    // None before 0.9 s; some but not all at 1 s; all by 1.1 s.
    clock.advance(Duration::from_millis(899));
    assert!(!engine.wait_for(Duration::from_millis(50), |r| restarted(r) > 0));
    clock.advance(Duration::from_millis(101));
    assert!(engine.wait_for(WAIT, |r| restarted(r) > 0));
    let at_one_second = restarted(&engine.report());
    assert!(
        at_one_second < 20,
        "all 20 restarted at exactly 1 s: no spread"
    );
    clock.advance(Duration::from_millis(100));
    assert!(engine.wait_for(WAIT, |r| restarted(r) == 20));
}

/// A manifold whose `start` blocks until the engine cancels it.
fn slow_start(log: &Arc<Mutex<Vec<String>>>) -> Manifold {
    let log = log.clone();
    Manifold {
        inputs: vec![],
        start: Arc::new(move |context: &StartContext<'_>| {
            log.lock().push("starting".into());
            if context.wait_cancelled(Duration::from_secs(60)) {
                log.lock().push("cancelled".into());
                return Err(WorkerError::Failed("cancelled".into()));
            }
            Err(WorkerError::Failed("never cancelled".into()))
        }),
        filter: None,
    }
}

#[test]
fn stopping_cancels_a_start_in_progress() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let log = Arc::new(Mutex::new(Vec::new()));
    engine.install("slow", slow_start(&log)).unwrap();
    assert!(engine.wait_for(WAIT, |r| r.workers["slow"].state == WorkerState::Starting));
    let started = std::time::Instant::now();
    engine.stop();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(*log.lock(), vec!["starting", "cancelled"]);
}

#[test]
fn a_filter_turns_a_worker_error_into_another() {
    let clock = ManualClock::new();
    let engine = engine(&clock);
    let control = Control::default();
    let mut filtered = manifold("a", &[], &control);
    filtered.filter = Some(Arc::new(|err| match err {
        WorkerError::Failed(message) if message.contains("disk") => {
            WorkerError::Fatal(format!("filtered: {message}"))
        }
        other => other,
    }));
    engine.install("a", filtered).unwrap();
    wait_started(&engine, "a", 1);
    control.exit_with(WorkerError::Failed("disk gone".into()));
    assert!(engine.wait_for(WAIT, |r| r.state == "stopped"));
    assert_eq!(
        engine.report().error,
        Some(WorkerError::Fatal("filtered: disk gone".into()))
    );
}
