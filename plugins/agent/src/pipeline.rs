//! Running an action's stages: each stage is a `decide` over an epi service's function (served
//! by an in-process plugin or a provider process), in order, stopping at the first error.
//!
//! A stage receives `{"action", "guest", "args"}` and decides `{"guest"?, "result"?,
//! "stream"?}`: a returned guest replaces the current one (and is persisted), a result is the
//! action's answer (the last one wins), a stream (`{"path", "remove"}` or `{"url"}`) is what a
//! Stream action sends.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use epi::{Decision, Opts};
use serde_json::{json, Value};

use crate::config::Stage;

/// What a pipeline produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The guest after the last stage.
    pub guest: Value,
    /// The last result a stage gave.
    pub result: Option<Value>,
    /// The last stream a stage gave.
    pub stream: Option<Value>,
}

/// The stage that failed (`service.method`) and why.
#[derive(Clone, Debug, PartialEq)]
pub struct StageError {
    /// `service.method`.
    pub stage: String,
    /// Why.
    pub message: String,
}

/// Per-service limits on stages running at once.
#[derive(Default)]
pub struct Limits {
    limits: HashMap<String, usize>,
    running: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

impl Limits {
    /// Limits by service (services not listed are unlimited).
    pub fn new(limits: impl IntoIterator<Item = (String, usize)>) -> Self {
        Limits {
            limits: limits.into_iter().collect(),
            ..Limits::default()
        }
    }

    fn run<R>(&self, service: &str, body: impl FnOnce() -> R) -> R {
        let Some(&limit) = self.limits.get(service) else {
            return body();
        };
        {
            let mut running = self.running.lock().unwrap();
            while running.get(service).copied().unwrap_or(0) >= limit {
                running = self.freed.wait(running).unwrap();
            }
            *running.entry(service.to_owned()).or_default() += 1;
        }
        struct Release<'a>(&'a Limits, &'a str);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                if let Some(count) = self.0.running.lock().unwrap().get_mut(self.1) {
                    *count -= 1;
                }
                self.0.freed.notify_all();
            }
        }
        let _release = Release(self, service);
        body()
    }
}

/// The stage's arguments: the request's keys over the stage's.
fn merge(stage: &Value, request: &Value) -> Value {
    match (stage, request) {
        (Value::Object(base), Value::Object(over)) => {
            let mut merged = base.clone();
            merged.extend(over.iter().map(|(k, v)| (k.clone(), v.clone())));
            Value::Object(merged)
        }
        (base, Value::Null) => base.clone(),
        (_, over) => over.clone(),
    }
}

/// Runs `stages` for `action` on `guest`; `persist` is called with the guest after each stage
/// that changed it.
pub fn run(
    limits: &Limits,
    action: &str,
    stages: &[Stage],
    guest: Value,
    args: &Value,
    mut persist: impl FnMut(&Value) -> Result<(), String>,
) -> Result<Outcome, StageError> {
    let mut outcome = Outcome {
        guest,
        ..Outcome::default()
    };
    for stage in stages {
        let name = format!("{}.{}", stage.service, stage.method);
        let fail = |message: String| StageError {
            stage: name.clone(),
            message,
        };
        let input =
            json!({"action": action, "guest": outcome.guest, "args": merge(&stage.args, args)});
        let decision = limits
            .run(&stage.service, || {
                epi::host::decide_json(&stage.service, &stage.method, &input, Opts::new())
            })
            .map_err(|err| fail(err.to_string()))?;
        let Decision::Decided(answer) = decision else {
            return Err(fail(format!("no provider of {name} took the stage")));
        };
        if let Some(guest) = answer.get("guest").filter(|g| !g.is_null()) {
            if *guest != outcome.guest {
                outcome.guest = guest.clone();
                persist(&outcome.guest).map_err(&fail)?;
            }
        }
        if let Some(result) = answer.get("result") {
            outcome.result = Some(result.clone());
        }
        if let Some(stream) = answer.get("stream").filter(|s| !s.is_null()) {
            outcome.stream = Some(stream.clone());
        }
    }
    Ok(outcome)
}
