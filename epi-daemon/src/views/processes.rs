//! The view of the plugins' processes: `/_epi/processes` and `epi report`.

use std::collections::BTreeMap;
use std::time::Duration;

use epi::engine;
use serde::Serialize;
use serde_json::Value;

/// The engine that runs plugin processes (from [`epi::EngineReport`]).
#[derive(Serialize)]
pub struct Processes<'a> {
    /// `running`, `stopping` or `stopped`.
    pub state: &'a str,
    /// The worst fatal error, once one happened.
    pub error: Option<WorkerError<'a>>,
    /// Every process by name (`app/name`).
    pub workers: BTreeMap<&'a str, Worker<'a>>,
}

impl<'a> From<&'a epi::EngineReport> for Processes<'a> {
    fn from(report: &'a epi::EngineReport) -> Self {
        Processes {
            state: report.state,
            error: report.error.as_ref().map(WorkerError::from),
            workers: report
                .workers
                .iter()
                .map(|(name, worker)| (name.as_str(), worker.into()))
                .collect(),
        }
    }
}

/// One process (from [`epi::WorkerReport`]). `started_at` is `{"secs", "nanos"}` on the
/// engine's clock.
#[derive(Serialize)]
pub struct Worker<'a> {
    /// Where it is in its life.
    pub state: WorkerState,
    /// Its inputs.
    pub inputs: &'a [String],
    /// How many times `start` succeeded.
    pub start_count: u64,
    /// How many times `start` was called.
    pub attempts: u64,
    /// When the current run started; `null` while it is not started.
    pub started_at: Option<Duration>,
    /// The error it last returned.
    pub last_error: Option<WorkerError<'a>>,
    /// Its own report (`null` unless it set one).
    pub report: &'a Value,
}

impl<'a> From<&'a epi::WorkerReport> for Worker<'a> {
    fn from(worker: &'a epi::WorkerReport) -> Self {
        Worker {
            state: worker.state.into(),
            inputs: &worker.inputs,
            start_count: worker.start_count,
            attempts: worker.attempts,
            started_at: worker.started_at,
            last_error: worker.last_error.as_ref().map(WorkerError::from),
            report: &worker.report,
        }
    }
}

/// Where a process is: `stopped`, `starting`, `started` or `stopping` (from
/// [`epi::WorkerState`]).
#[derive(Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Not running.
    Stopped,
    /// Starting.
    Starting,
    /// Running.
    Started,
    /// Asked to stop, not stopped yet.
    Stopping,
}

impl From<epi::WorkerState> for WorkerState {
    fn from(state: epi::WorkerState) -> Self {
        match state {
            epi::WorkerState::Stopped => WorkerState::Stopped,
            epi::WorkerState::Starting => WorkerState::Starting,
            epi::WorkerState::Started => WorkerState::Started,
            epi::WorkerState::Stopping => WorkerState::Stopping,
        }
    }
}

/// Why a process stopped: `{"kind": ...}`, with a `message` for `fatal` and `failed` (from
/// `epi::engine::WorkerError`).
#[derive(Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum WorkerError<'a> {
    /// An input it needs is unavailable.
    Missing,
    /// Restarted at once.
    Bounce,
    /// It asked to be removed.
    Uninstall,
    /// It stopped the whole engine.
    Fatal(&'a str),
    /// It failed; restarted after the back-off delay.
    Failed(&'a str),
}

impl<'a> From<&'a engine::WorkerError> for WorkerError<'a> {
    fn from(error: &'a engine::WorkerError) -> Self {
        match error {
            engine::WorkerError::Missing => WorkerError::Missing,
            engine::WorkerError::Bounce => WorkerError::Bounce,
            engine::WorkerError::Uninstall => WorkerError::Uninstall,
            engine::WorkerError::Fatal(message) => WorkerError::Fatal(message),
            engine::WorkerError::Failed(message) => WorkerError::Failed(message),
        }
    }
}
