//! Async jobs: a pool of workers takes jobs from the schedule ([`crate::queue`]; one at a time
//! per guest, guests in parallel), starts them in the database and runs their pipelines.

use std::sync::Arc;
use std::time::Duration;

use epi::ProcessContext;
use serde_json::{json, Value};

use crate::store::{Claimed, Start};
use crate::{Agent, AGENT_QUEUE};

/// How often an idle worker looks for jobs queued by another version of the plugin.
const POLL: Duration = Duration::from_millis(200);

/// Runs the worker pool until `context` says stop; a running job finishes first.
pub fn run_workers(agent: &Arc<Agent>, context: &ProcessContext) {
    poll(agent);
    std::thread::scope(|scope| {
        for number in 0..agent.config.workers {
            let agent = agent.clone();
            std::thread::Builder::new()
                .name(format!("epi-agent worker {number}"))
                .spawn_scoped(scope, move || worker(&agent))
                .expect("start an agent worker");
        }
        let mut reported: Option<std::time::Instant> = None;
        while !context.wait_stop(POLL) {
            poll(agent);
            if reported.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                context.set_report(&agent.report());
                reported = Some(std::time::Instant::now());
            }
        }
        agent.stop_workers();
    });
}

/// Brings jobs queued by another version of the plugin (or before a restart) into the schedule.
fn poll(agent: &Agent) {
    match agent.store.queued_after(agent.queue.polled()) {
        Ok(jobs) => agent.queue.add_polled(jobs),
        Err(err) => epi::log::error(&err),
    }
    agent.queue.unblock();
}

fn worker(agent: &Agent) {
    let started = std::time::Instant::now();
    loop {
        if agent.stopping() {
            return;
        }
        // Right after a start the plugins the stages call may still be loading.
        if started.elapsed() < agent.config.start_grace && !agent.problems().is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let Some((guest, seq)) = agent.queue.next(POLL) else {
            continue;
        };
        if agent.stopping() {
            // Stays queued in the database for the next version (or start).
            agent.queue.blocked(&guest, seq);
            return;
        }
        match agent.store.start(seq) {
            Ok(Start::Started(job)) => {
                run(agent, &job);
                agent.queue.done(&guest, seq);
            }
            Ok(Start::Blocked) => agent.queue.blocked(&guest, seq),
            Ok(Start::Gone) => agent.queue.done(&guest, seq),
            Err(err) => {
                epi::log::error(&err);
                agent.queue.blocked(&guest, seq);
            }
        }
    }
}

/// Runs one started job and records its end.
fn run(agent: &Agent, job: &Claimed) {
    let outcome = execute(agent, job);
    if let Err((stage, message)) = &outcome {
        epi::log::warn(&format!(
            "job {} ({} of guest {}) failed at {stage}: {message}",
            job.id, job.action, job.guest_id
        ));
    }
    if let Err(err) = agent.store.finish(job, outcome, agent.config.keep_jobs) {
        epi::log::error(&err);
    }
}

fn execute(agent: &Agent, job: &Claimed) -> Result<(), (String, String)> {
    let guest = if job.guest_id == AGENT_QUEUE {
        Value::Null
    } else {
        match agent.store.guest(&job.guest_id) {
            Ok(Some(guest)) => guest,
            Ok(None) => {
                return Err((
                    String::new(),
                    format!("guest {} does not exist", job.guest_id),
                ))
            }
            Err(err) => return Err((String::new(), err)),
        }
    };
    let stages = agent.config.stages(&job.action);
    let guest_id = job.guest_id.clone();
    let outcome = crate::pipeline::run(
        &agent.limits,
        &job.action,
        stages,
        guest,
        &job.args,
        |guest| {
            if guest_id == AGENT_QUEUE {
                Ok(())
            } else {
                agent.store.put_guest(&guest_id, guest)
            }
        },
    )
    .map_err(|err| (err.stage, err.message))?;
    if job.action == "delete" && job.guest_id != AGENT_QUEUE {
        agent
            .store
            .delete_guest(&job.guest_id)
            .map_err(|err| (String::new(), err))?;
    }
    let _ = outcome;
    Ok(())
}

/// The workers' report for `epi report`.
pub fn report(agent: &Agent) -> Value {
    let (queued, running) = agent.store.pending().unwrap_or((0, 0));
    json!({
        "queued": queued,
        "running": running,
        "workers": agent.config.workers,
        "db": agent.config.db,
        "problems": agent.problems(),
    })
}
