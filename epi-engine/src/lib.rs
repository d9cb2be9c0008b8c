#![warn(missing_docs)]
//! A dependency engine for long-running workers, with the semantics of juju's.
//!
//! Each named [`Manifold`] lists `inputs` (other workers' names) and a `start` function that
//! receives the inputs' outputs and returns the worker's own output and the body it runs until
//! told to stop. The engine:
//! - starts a worker only when every input runs, and restarts it when an input restarts;
//! - restarts a failed worker after a delay that grows by a factor up to a cap, reset once it
//!   ran long enough (a `start` that fails never ran: its delays keep growing), each delay
//!   spread at random by ±[`EngineConfig::spread`] so that workers failing together do not
//!   restart in lock-step;
//! - leaves a worker that finished (`Ok(())`) or answered [`WorkerError::Missing`] stopped
//!   until one of its inputs changes (an input restarted, or was replaced under its name);
//!   [`WorkerError::Bounce`] restarts after [`EngineConfig::bounce_delay`], growing for
//!   repeated bounces; [`WorkerError::Uninstall`] removes the manifold; [`WorkerError::Fatal`]
//!   stops the engine with the first (worst) fatal error;
//! - passes a worker's errors through its manifold's [`Manifold::filter`] first;
//! - refuses duplicate names, an input named twice, and dependency cycles;
//! - cancels a `start` in progress (through [`StartContext`]) and stops a body when an input
//!   goes or the engine stops, dependents first;
//! - reports each worker's state, inputs, starts (successful ones), attempts, when it
//!   started, its last error and its own report.
//!
//! One thread runs the decisions; each worker runs on its own thread. Time comes from a
//! [`Clock`], so tests advance a [`ManualClock`] instead of sleeping.

mod clock;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use clock::{Clock, ManualClock, RealClock};
use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use serde_json::Value;

/// Why a worker or its `start` stopped. Its JSON form is that of `epi_plugin::ProcessError`,
/// which plugin processes return across the boundary: the two are separate types so that a
/// plugin compiles no part of the engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum WorkerError {
    /// An input it needs is unavailable: not restarted until an input changes.
    #[error("an input is missing")]
    Missing,
    /// Restart at once.
    #[error("bounced")]
    Bounce,
    /// Remove this manifold from the engine.
    #[error("uninstall requested")]
    Uninstall,
    /// Stop the whole engine with this error.
    #[error("fatal: {0}")]
    Fatal(String),
    /// Restart after the back-off delay.
    #[error("{0}")]
    Failed(String),
}

/// Why the engine refused an installation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A manifold of this name is installed.
    #[error("a worker named `{0}` is already installed")]
    Duplicate(String),
    /// The manifold names the same input twice.
    #[error("`{name}` names its input `{input}` twice")]
    DuplicateInput {
        /// The manifold refused.
        name: String,
        /// The input named twice.
        input: String,
    },
    /// Installing it would close a dependency cycle.
    #[error("installing `{name}` would create a dependency cycle: {cycle}")]
    Cycle {
        /// The manifold refused.
        name: String,
        /// The cycle, as `a -> b -> a`.
        cycle: String,
    },
    /// The engine is stopping or stopped.
    #[error("the engine is stopped")]
    Stopped,
}

/// What a worker's body receives while it runs.
pub struct WorkerContext {
    stop: Arc<StopSignal>,
    report: Arc<Mutex<Value>>,
}

impl WorkerContext {
    /// True once the engine asked this worker to stop.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_set()
    }

    /// Waits until asked to stop or `timeout` passed; true when asked to stop.
    pub fn wait_stop(&self, timeout: Duration) -> bool {
        self.stop.wait(Some(timeout))
    }

    /// Waits until asked to stop.
    pub fn wait_stopped(&self) {
        self.stop.wait(None);
    }

    /// Replaces this worker's own report (shown in the engine report).
    pub fn set_report(&self, report: Value) {
        *self.report.lock() = report;
    }
}

/// The body of a started worker: runs until asked to stop or until it fails.
pub type WorkerBody = Box<dyn FnOnce(&WorkerContext) -> Result<(), WorkerError> + Send>;

/// What `start` returns: the output dependents receive and the body to run.
pub struct Started {
    /// The value dependents find under this worker's name.
    pub output: Value,
    /// Runs on the worker's thread once dependents may start.
    pub body: WorkerBody,
}

/// What a worker's `start` receives: its inputs' outputs and a stop signal, so that a slow
/// start can give up when an input goes or the engine stops.
pub struct StartContext<'a> {
    inputs: &'a BTreeMap<String, Value>,
    stop: &'a StopSignal,
}

impl StartContext<'_> {
    /// The inputs' outputs, keyed by input name.
    pub fn inputs(&self) -> &BTreeMap<String, Value> {
        self.inputs
    }

    /// True once the engine no longer wants this start (an input went, or it stops); the
    /// start should then return an error soon.
    pub fn is_cancelled(&self) -> bool {
        self.stop.is_set()
    }

    /// Waits until cancelled or `timeout` passed; true when cancelled.
    pub fn wait_cancelled(&self, timeout: Duration) -> bool {
        self.stop.wait(Some(timeout))
    }
}

/// Starts a worker.
pub type StartFn = Arc<dyn Fn(&StartContext<'_>) -> Result<Started, WorkerError> + Send + Sync>;

/// Turns a worker's error into another before the engine acts on it (juju's `Filter`).
pub type FilterFn = Arc<dyn Fn(WorkerError) -> WorkerError + Send + Sync>;

/// A node of the dependency graph.
#[derive(Clone)]
pub struct Manifold {
    /// Names of the workers this one needs running, each once.
    pub inputs: Vec<String>,
    /// Starts the worker.
    pub start: StartFn,
    /// Applied to every error its `start` or body returns (none: taken as is).
    pub filter: Option<FilterFn>,
}

/// Restart timing.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Delay before restarting a worker after its first failure.
    pub initial_delay: Duration,
    /// Each further failure multiplies the delay by this (fractions allowed); `0` or `1`
    /// keeps it constant.
    pub factor: f64,
    /// The delay never exceeds this.
    pub max_delay: Duration,
    /// A worker that ran at least this long before failing starts again from `initial_delay`.
    pub reset_after: Duration,
    /// Delay before restarting a worker that answered [`WorkerError::Bounce`]; repeated
    /// bounces grow it by `factor`, as failures do.
    pub bounce_delay: Duration,
    /// Every delay is multiplied by a random factor in `[1 - spread, 1 + spread)` (juju: 0.1),
    /// so that workers failing together restart apart. `0` for exact delays.
    pub spread: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            initial_delay: Duration::from_millis(100),
            factor: 2.0,
            max_delay: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
            bounce_delay: Duration::from_millis(10),
            spread: 0.1,
        }
    }
}

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Not running (waiting for inputs, a delay, or never started).
    Stopped,
    /// `start` is running.
    Starting,
    /// Running; its output is available to dependents.
    Started,
    /// Asked to stop, not stopped yet.
    Stopping,
}

/// One worker in the engine report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerReport {
    /// Its state.
    pub state: WorkerState,
    /// Its inputs.
    pub inputs: Vec<String>,
    /// How many times `start` succeeded.
    pub start_count: u64,
    /// How many times `start` was called (successful or not).
    pub attempts: u64,
    /// When the current run started, on the engine's clock (since the clock's origin); `None`
    /// while it is not started.
    pub started_at: Option<Duration>,
    /// The error it (or its start) last returned.
    pub last_error: Option<WorkerError>,
    /// Its own report from its current run, or from its last one while it is stopped (`null`
    /// unless it set one; cleared when a new run starts).
    pub report: Value,
}

/// The engine report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EngineReport {
    /// `running`, `stopping` or `stopped`.
    pub state: &'static str,
    /// The worst fatal error, once one happened.
    pub error: Option<WorkerError>,
    /// Every installed worker by name.
    pub workers: BTreeMap<String, WorkerReport>,
}

/// A stop request a worker can wait on.
#[derive(Default)]
struct StopSignal {
    set: Mutex<bool>,
    changed: Condvar,
}

impl StopSignal {
    fn set(&self) {
        *self.set.lock() = true;
        self.changed.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.set.lock()
    }

    fn wait(&self, timeout: Option<Duration>) -> bool {
        let mut set = self.set.lock();
        match timeout {
            Some(timeout) => {
                if !*set {
                    self.changed.wait_for(&mut set, timeout);
                }
            }
            None => {
                while !*set {
                    self.changed.wait(&mut set);
                }
            }
        }
        *set
    }
}

struct Node {
    manifold: Manifold,
    state: WorkerState,
    /// Unique across the engine (a reinstalled worker never reuses one): events of older
    /// runs are ignored, and dependents tell a replaced input from the one they started with.
    run: u64,
    stop: Option<Arc<StopSignal>>,
    output: Option<Value>,
    start_count: u64,
    attempts: u64,
    last_error: Option<WorkerError>,
    report: Arc<Mutex<Value>>,
    /// Runs of the inputs this worker was started with.
    started_with: BTreeMap<String, u64>,
    /// After `Missing` or finishing: the input runs seen then; restart only once they differ.
    waiting_with: Option<BTreeMap<String, u64>>,
    /// The current back-off delay (failures and bounces).
    delay: Duration,
    not_before: Duration,
    /// When the current run's `start` succeeded; `None` until it does.
    started_at: Option<Duration>,
    /// The engine stopped it on purpose (inputs changed, uninstall, shutdown).
    stop_requested: bool,
    uninstalling: bool,
}

enum Event {
    Started {
        name: String,
        run: u64,
        output: Value,
    },
    Stopped {
        name: String,
        run: u64,
        result: Result<(), WorkerError>,
    },
    Wake,
    Shutdown,
}

struct Inner {
    nodes: BTreeMap<String, Node>,
    /// The last run number handed out.
    runs: u64,
    stopping: bool,
    stopped: bool,
    fatal: Option<WorkerError>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
    events: Mutex<Sender<Event>>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
}

/// The engine. Dropping it stops every worker.
pub struct Engine {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// An engine with no workers, deciding on its own thread.
    pub fn new(config: EngineConfig, clock: Arc<dyn Clock>) -> Engine {
        let (sender, receiver) = mpsc::channel();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                nodes: BTreeMap::new(),
                runs: 0,
                stopping: false,
                stopped: false,
                fatal: None,
            }),
            changed: Condvar::new(),
            events: Mutex::new(sender.clone()),
            clock: clock.clone(),
            config,
        });
        let waker = Mutex::new(sender);
        clock.on_advance(Box::new(move || {
            let _ = waker.lock().send(Event::Wake);
        }));
        let loop_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("epi-engine".into())
            .spawn(move || run_loop(loop_shared, receiver))
            .expect("spawn the engine thread");
        Engine {
            shared,
            thread: Some(thread),
        }
    }

    /// Installs a manifold; its worker starts once its inputs run.
    pub fn install(&self, name: &str, manifold: Manifold) -> Result<(), EngineError> {
        {
            let mut inner = self.shared.inner.lock();
            if inner.stopping {
                return Err(EngineError::Stopped);
            }
            if inner.nodes.contains_key(name) {
                return Err(EngineError::Duplicate(name.to_owned()));
            }
            let mut seen = BTreeSet::new();
            if let Some(twice) = manifold.inputs.iter().find(|input| !seen.insert(*input)) {
                return Err(EngineError::DuplicateInput {
                    name: name.to_owned(),
                    input: twice.clone(),
                });
            }
            if let Some(cycle) = find_cycle(&inner.nodes, name, &manifold.inputs) {
                return Err(EngineError::Cycle {
                    name: name.to_owned(),
                    cycle,
                });
            }
            inner.nodes.insert(
                name.to_owned(),
                Node {
                    manifold,
                    state: WorkerState::Stopped,
                    run: 0,
                    stop: None,
                    output: None,
                    start_count: 0,
                    attempts: 0,
                    last_error: None,
                    report: Arc::new(Mutex::new(Value::Null)),
                    started_with: BTreeMap::new(),
                    waiting_with: None,
                    delay: Duration::ZERO,
                    not_before: Duration::ZERO,
                    started_at: None,
                    stop_requested: false,
                    uninstalling: false,
                },
            );
        }
        self.wake();
        Ok(())
    }

    /// Stops and removes workers; returns once every one of them stopped. Their dependents
    /// stop too, and wait for the inputs to come back.
    pub fn uninstall(&self, names: &[String]) {
        {
            let mut inner = self.shared.inner.lock();
            for name in names {
                if let Some(node) = inner.nodes.get_mut(name) {
                    node.uninstalling = true;
                }
            }
        }
        self.wake();
        let mut inner = self.shared.inner.lock();
        while names.iter().any(|name| inner.nodes.contains_key(name)) {
            self.shared.changed.wait(&mut inner);
        }
    }

    /// The engine report.
    pub fn report(&self) -> EngineReport {
        let inner = self.shared.inner.lock();
        EngineReport {
            state: if inner.stopped {
                "stopped"
            } else if inner.stopping {
                "stopping"
            } else {
                "running"
            },
            error: inner.fatal.clone(),
            workers: inner
                .nodes
                .iter()
                .map(|(name, node)| {
                    (
                        name.clone(),
                        WorkerReport {
                            state: node.state,
                            inputs: node.manifold.inputs.clone(),
                            start_count: node.start_count,
                            attempts: node.attempts,
                            started_at: node.started_at,
                            last_error: node.last_error.clone(),
                            report: node.report.lock().clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Blocks until `done` holds for the engine's state or `timeout` passes; returns whether
    /// it held. For tests and shutdown.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&EngineReport) -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if done(&self.report()) {
                return true;
            }
            let mut inner = self.shared.inner.lock();
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            self.shared
                .changed
                .wait_for(&mut inner, (deadline - now).min(Duration::from_millis(50)));
        }
    }

    /// Stops every worker, dependents first, and returns the worst fatal error if any.
    pub fn stop(&self) -> Option<WorkerError> {
        self.shared.inner.lock().stopping = true;
        self.wake();
        let mut inner = self.shared.inner.lock();
        while !inner.stopped {
            self.shared.changed.wait(&mut inner);
        }
        inner.fatal.clone()
    }

    fn wake(&self) {
        let _ = self.shared.events.lock().send(Event::Wake);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
        let _ = self.shared.events.lock().send(Event::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The cycle `name` would close through `inputs`, as text.
fn find_cycle(nodes: &BTreeMap<String, Node>, name: &str, inputs: &[String]) -> Option<String> {
    fn visit(
        nodes: &BTreeMap<String, Node>,
        target: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        if at == target {
            return true;
        }
        if !seen.insert(at.to_owned()) {
            return false;
        }
        let Some(node) = nodes.get(at) else {
            return false;
        };
        for input in &node.manifold.inputs {
            path.push(input.clone());
            if visit(nodes, target, input, path, seen) {
                return true;
            }
            path.pop();
        }
        false
    }
    for input in inputs {
        let mut path = vec![name.to_owned(), input.clone()];
        if visit(nodes, name, input, &mut path, &mut BTreeSet::new()) {
            return Some(path.join(" -> "));
        }
    }
    None
}

fn run_loop(shared: Arc<Shared>, events: Receiver<Event>) {
    loop {
        let wait = decide(&shared);
        let event = match wait.and_then(|wait| shared.clock.block_for(wait)) {
            Some(timeout) => match events.recv_timeout(timeout) {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            },
            None => match events.recv() {
                Ok(event) => Some(event),
                Err(_) => return,
            },
        };
        match event {
            Some(Event::Shutdown) => return,
            Some(event) => handle(&shared, event),
            None => {}
        }
        // Drain what else arrived before deciding again.
        while let Ok(event) = events.try_recv() {
            match event {
                Event::Shutdown => return,
                event => handle(&shared, event),
            }
        }
    }
}

/// Applies a worker's start or stop to the state.
fn handle(shared: &Shared, event: Event) {
    let mut inner = shared.inner.lock();
    let now = shared.clock.now();
    match event {
        Event::Started { name, run, output } => {
            if let Some(node) = inner.nodes.get_mut(&name).filter(|node| node.run == run) {
                if node.state == WorkerState::Starting {
                    node.state = WorkerState::Started;
                    node.output = Some(output);
                    node.started_at = Some(now);
                    node.start_count += 1;
                }
            }
        }
        Event::Stopped { name, run, result } => {
            let mut fatal = None;
            let mut remove = false;
            let config = shared.config;
            if let Some(node) = inner.nodes.get_mut(&name).filter(|node| node.run == run) {
                node.state = WorkerState::Stopped;
                node.output = None;
                node.stop = None;
                let requested = std::mem::take(&mut node.stop_requested);
                // How long this run ran: a `start` that failed never ran.
                let ran = node
                    .started_at
                    .take()
                    .map_or(Duration::ZERO, |at| now.saturating_sub(at));
                let result = match (result, &node.manifold.filter) {
                    (Err(err), Some(filter)) => Err(filter(err)),
                    (result, _) => result,
                };
                match result {
                    Ok(()) => {
                        // Finished: stays stopped until an input changes (as juju's nil).
                        node.delay = Duration::ZERO;
                        node.waiting_with = Some(node.started_with.clone());
                    }
                    Err(err) => {
                        match &err {
                            WorkerError::Missing => {
                                node.waiting_with = Some(node.started_with.clone());
                            }
                            WorkerError::Bounce => {
                                node.delay =
                                    next_delay(&config, node.delay, ran, config.bounce_delay);
                                node.not_before = now + spread(&config, node.delay);
                            }
                            WorkerError::Uninstall => remove = true,
                            WorkerError::Fatal(_) => fatal = Some(err.clone()),
                            WorkerError::Failed(_) if !requested => {
                                node.delay =
                                    next_delay(&config, node.delay, ran, config.initial_delay);
                                node.not_before = now + spread(&config, node.delay);
                            }
                            WorkerError::Failed(_) => {}
                        }
                        tracing::debug!(worker = %name, "worker stopped: {err}");
                        node.last_error = Some(err);
                    }
                }
                if node.uninstalling {
                    remove = true;
                }
            }
            if remove {
                inner.nodes.remove(&name);
            }
            if let Some(err) = fatal {
                tracing::error!(worker = %name, "fatal worker error, stopping the engine: {err}");
                // The first fatal error is the worst: later ones are usually its consequences.
                inner.fatal.get_or_insert(err);
                inner.stopping = true;
            }
        }
        Event::Wake | Event::Shutdown => {}
    }
    drop(inner);
    shared.changed.notify_all();
}

/// Starts and stops workers as the state requires; returns how long until the next delayed
/// start is due, if any.
fn decide(shared: &Arc<Shared>) -> Option<Duration> {
    let mut inner = shared.inner.lock();
    let now = shared.clock.now();
    let stopping = inner.stopping;
    // Which inputs are available now: started and not on their way out.
    let available: BTreeMap<String, u64> = inner
        .nodes
        .iter()
        .filter(|(_, node)| node.state == WorkerState::Started && !node.uninstalling)
        .map(|(name, node)| (name.clone(), node.run))
        .collect();
    let busy: BTreeSet<String> = inner
        .nodes
        .iter()
        .filter(|(_, node)| node.state != WorkerState::Stopped)
        .flat_map(|(_, node)| node.manifold.inputs.iter().cloned())
        .collect();
    let mut next_due: Option<Duration> = None;
    let mut gone = Vec::new();
    let mut runs = inner.runs;

    for (name, node) in inner.nodes.iter_mut() {
        let inputs_now: BTreeMap<String, u64> = node
            .manifold
            .inputs
            .iter()
            .filter_map(|input| available.get(input).map(|run| (input.clone(), *run)))
            .collect();
        let all_inputs = inputs_now.len() == node.manifold.inputs.len();
        match node.state {
            WorkerState::Started | WorkerState::Starting => {
                let leaving = stopping || node.uninstalling;
                // Leaving workers wait for their dependents to stop first.
                let stop_now = if leaving {
                    !busy.contains(name)
                } else {
                    node.started_with != inputs_now
                };
                if stop_now {
                    node.stop_requested = true;
                    node.state = WorkerState::Stopping;
                    if let Some(stop) = &node.stop {
                        stop.set();
                    }
                }
            }
            WorkerState::Stopping => {}
            WorkerState::Stopped if node.uninstalling => gone.push(name.clone()),
            WorkerState::Stopped => {
                if stopping || !all_inputs || node.waiting_with.as_ref() == Some(&inputs_now) {
                    continue;
                }
                if node.not_before > now {
                    let wait = node.not_before - now;
                    next_due = Some(next_due.map_or(wait, |due| due.min(wait)));
                    continue;
                }
                node.waiting_with = None;
                let run = {
                    runs += 1;
                    runs
                };
                start(shared, name, node, inputs_now, run);
            }
        }
    }
    inner.runs = runs;
    for name in gone {
        inner.nodes.remove(&name);
    }
    if inner.stopping
        && inner
            .nodes
            .values()
            .all(|node| node.state == WorkerState::Stopped)
    {
        inner.stopped = true;
    }
    drop(inner);
    shared.changed.notify_all();
    next_due
}

/// Starts one worker on its own thread.
fn start(
    shared: &Arc<Shared>,
    name: &str,
    node: &mut Node,
    started_with: BTreeMap<String, u64>,
    run: u64,
) {
    let inputs: Vec<String> = started_with.keys().cloned().collect();
    node.run = run;
    node.attempts += 1;
    node.started_at = None;
    *node.report.lock() = Value::Null;
    node.state = WorkerState::Starting;
    node.started_with = started_with;
    let stop = Arc::new(StopSignal::default());
    node.stop = Some(stop.clone());
    let run = node.run;
    let start = node.manifold.start.clone();
    let report = node.report.clone();
    let name = name.to_owned();
    let shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("epi-worker-{name}"))
        .spawn(move || {
            let outputs: BTreeMap<String, Value> = {
                let inner = shared.inner.lock();
                inputs
                    .iter()
                    .filter_map(|input| {
                        let output = inner.nodes.get(input)?.output.clone()?;
                        Some((input.clone(), output))
                    })
                    .collect()
            };
            let send = |event| {
                let _ = shared.events.lock().send(event);
            };
            if outputs.len() != inputs.len() {
                // An input went away between the decision and this thread.
                send(Event::Stopped {
                    name,
                    run,
                    result: Err(WorkerError::Missing),
                });
                return;
            }
            let context = StartContext {
                inputs: &outputs,
                stop: &stop,
            };
            let started = catch_unwind(AssertUnwindSafe(|| (start)(&context)))
                .unwrap_or_else(|_| Err(WorkerError::Failed("start panicked".into())));
            let result = match started {
                Ok(Started { output, body }) => {
                    send(Event::Started {
                        name: name.clone(),
                        run,
                        output,
                    });
                    let context = WorkerContext { stop, report };
                    catch_unwind(AssertUnwindSafe(|| body(&context)))
                        .unwrap_or_else(|_| Err(WorkerError::Failed("worker panicked".into())))
                }
                Err(err) => Err(err),
            };
            send(Event::Stopped { name, run, result });
        });
    if let Err(err) = spawned {
        node.state = WorkerState::Stopped;
        node.last_error = Some(WorkerError::Failed(format!("cannot spawn a thread: {err}")));
    }
}

/// The back-off delay after a run that ran `ran`: `first` after a long run or the first
/// failure, else the previous delay times the factor, capped.
fn next_delay(
    config: &EngineConfig,
    previous: Duration,
    ran: Duration,
    first: Duration,
) -> Duration {
    if previous.is_zero() || ran >= config.reset_after {
        return first;
    }
    let factor = if config.factor > 0.0 {
        config.factor
    } else {
        1.0
    };
    previous
        .mul_f64(factor)
        .min(config.max_delay)
        .max(first.min(config.max_delay))
}

/// `delay` spread at random by ±`config.spread`.
fn spread(config: &EngineConfig, delay: Duration) -> Duration {
    if config.spread <= 0.0 || delay.is_zero() {
        return delay;
    }
    let spread = config.spread.min(1.0);
    delay.mul_f64(1.0 - spread + 2.0 * spread * fastrand::f64())
}
