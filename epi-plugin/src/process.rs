//! Plugin side of processes: long-running workers a plugin declares in
//! [`crate::Plugin::processes`] and the host's dependency engine supervises.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::abi::manifest::ProcessManifest;
use crate::abi::{ProcessHost, ProcessTable, RVec, StrRef, STATUS_FAILED};
use crate::shim::{guarded, put, read_json, write_json};

/// Why a process (or the computation of its output) stopped; the host's engine acts on it as
/// juju's dependency engine does. Crosses the boundary as JSON
/// (`{"kind": "failed", "message": "..."}`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ProcessError {
    /// An input it needs is unavailable: not restarted until an input changes.
    #[error("an input is missing")]
    Missing,
    /// Restart at once.
    #[error("bounced")]
    Bounce,
    /// Remove this worker from the engine.
    #[error("uninstall requested")]
    Uninstall,
    /// Stop the whole engine with this error.
    #[error("fatal: {0}")]
    Fatal(String),
    /// Restart after the back-off delay.
    #[error("{0}")]
    Failed(String),
}

/// What a running process can ask of the host.
pub struct ProcessContext<'h> {
    host: &'h ProcessHost,
}

impl ProcessContext<'_> {
    /// True once the host asked this process to stop.
    pub fn is_stopping(&self) -> bool {
        // SAFETY: the host's table is valid for the duration of `run`, which outlives `self`.
        unsafe { (self.host.is_stopping)(self.host.context) }
    }

    /// Waits until asked to stop or `timeout` passed; true when asked to stop.
    pub fn wait_stop(&self, timeout: Duration) -> bool {
        // SAFETY: as `is_stopping`.
        unsafe { (self.host.wait_stop)(self.host.context, timeout.as_millis() as u64) }
    }

    /// Replaces this process's report, shown in the host's process report.
    pub fn set_report(&self, report: &Value) {
        let text = report.to_string();
        // SAFETY: as `is_stopping`; the host copies the text.
        unsafe { (self.host.set_report)(self.host.context, StrRef::new(&text)) }
    }
}

type OutputFn = Box<dyn Fn(&BTreeMap<String, Value>) -> Result<Value, ProcessError> + Send + Sync>;
type RunFn = Box<dyn Fn(&ProcessContext) -> Result<(), ProcessError> + Send + Sync>;

/// A process object as the plugin keeps it.
struct ProcessObject {
    output: OutputFn,
    run: RunFn,
}

/// A long-running worker, returned from [`crate::Plugin::processes`].
///
/// ```ignore
/// Process::new("delivery")
///     .inputs(["queue"])                                  // another process of this plugin
///     .output(|inputs| Ok(json!({"ready": true})))         // what dependents receive
///     .run(|ctx| { while !ctx.wait_stop(Duration::from_secs(1)) { /* work */ } Ok(()) })
/// ```
pub struct Process {
    name: String,
    inputs: Vec<String>,
    output: Option<OutputFn>,
    run: Option<RunFn>,
}

impl Process {
    /// A process that, unless given a body, idles until stopped.
    pub fn new(name: impl Into<String>) -> Self {
        Process {
            name: name.into(),
            inputs: Vec::new(),
            output: None,
            run: None,
        }
    }

    /// Workers this one needs running: `name` for one of this plugin, `app/name` for another
    /// plugin's. It starts when all run and restarts when one restarts.
    pub fn inputs<I, S>(mut self, inputs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.inputs = inputs.into_iter().map(Into::into).collect();
        self
    }

    /// Computes, from the inputs' outputs (by input name), what dependents receive. An error
    /// is handled as the engine handles a worker error (e.g. `Missing` waits for an input
    /// change).
    pub fn output(
        mut self,
        output: impl Fn(&BTreeMap<String, Value>) -> Result<Value, ProcessError> + Send + Sync + 'static,
    ) -> Self {
        self.output = Some(Box::new(output));
        self
    }

    /// The body: runs until `ctx` says stop (return `Ok`) or fails.
    pub fn run(
        mut self,
        run: impl Fn(&ProcessContext) -> Result<(), ProcessError> + Send + Sync + 'static,
    ) -> Self {
        self.run = Some(Box::new(run));
        self
    }

    /// Splits the process into what the manifest says and what the host calls.
    pub(crate) fn into_parts(self) -> (ProcessManifest, ProcessTable) {
        let object = ProcessObject {
            output: self.output.unwrap_or_else(|| Box::new(|_| Ok(Value::Null))),
            run: self.run.unwrap_or_else(|| {
                Box::new(|context| {
                    while !context.wait_stop(Duration::from_secs(3600)) {}
                    Ok(())
                })
            }),
        };
        (
            ProcessManifest {
                name: self.name,
                inputs: self.inputs,
            },
            ProcessTable {
                object: crate::shim::object(object),
                start: process_start_shim,
                run: process_run_shim,
            },
        )
    }
}

/// Encodes a process error for the boundary.
fn encode_error(err: &ProcessError) -> (u32, String) {
    (
        STATUS_FAILED,
        serde_json::to_string(err).unwrap_or_else(|_| err.to_string()),
    )
}

/// Computes a process's output from its inputs (JSON object text).
///
/// # Safety
/// `instance` is a `ProcessObject` of this plugin, `input` live bytes, `output` and `error`
/// live buffers.
unsafe extern "C" fn process_start_shim(
    instance: *const c_void,
    input: StrRef,
    output: *mut RVec<u8>,
    error: *mut RVec<u8>,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        guarded(error, || {
            let process = &*(instance as *const ProcessObject);
            let inputs = read_json(input.as_bytes(), || "unreadable inputs".into())?;
            let value = (process.output)(&inputs).map_err(|err| encode_error(&err))?;
            put(output, write_json(&value, "output")?);
            Ok(())
        })
    }
}

/// Runs a process until it stops.
///
/// # Safety
/// `instance` is a `ProcessObject` of this plugin, `host` valid for the call, `error` a live
/// buffer.
unsafe extern "C" fn process_run_shim(
    instance: *const c_void,
    host: *const ProcessHost,
    error: *mut RVec<u8>,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        guarded(error, || {
            let process = &*(instance as *const ProcessObject);
            (process.run)(&ProcessContext { host: &*host }).map_err(|err| encode_error(&err))
        })
    }
}
