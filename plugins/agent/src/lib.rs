//! The agent component: a hypervisor agent's REST API (modelled on mistify's agent) whose
//! actions are pipelines of epi service calls, with a per-guest job queue in SQLite.
//!
//! - [`config`]: actions, stages, limits; errors naming the key.
//! - [`store`]: guests, metadata and the job log (also the queue) in SQLite.
//! - [`pipeline`]: an action's stages, each a `decide` over an epi service.
//! - [`queue`]: the in-memory schedule of queued jobs, filled from the database.
//! - [`jobs`]: the worker pool that runs Async actions (the `jobs` process).
//! - [`api`]: the HTTP routes, served through the daemon's front door.

pub mod api;
pub mod config;
pub mod jobs;
pub mod pipeline;
pub mod queue;
pub mod store;

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use epi::http::{HttpRequest, HttpResponse};
use epi::{Decision, Plugin, PluginContext, Process, Provider};
use serde_json::Value;

use crate::config::Config;
use crate::pipeline::{Limits, Outcome};
use crate::store::Store;

/// The queue of jobs that concern the hypervisor, not a guest (images).
pub const AGENT_QUEUE: &str = "agent";

/// A byte stream being sent as an HTTP body.
pub type Stream = Box<dyn Read + Send>;

/// The agent's state, shared by the HTTP provider and the workers.
pub struct Agent {
    /// The configuration.
    pub config: Config,
    /// The database.
    pub store: Store,
    /// Per-service stage limits.
    pub limits: Limits,
    /// Queued jobs.
    pub queue: queue::Queue,
    stop: AtomicBool,
    /// Info and Stream actions running, per guest.
    sync: Mutex<HashMap<String, usize>>,
    sync_freed: Condvar,
    streams: Mutex<HashMap<u64, Stream>>,
    stream_tag: u64,
    next_stream: AtomicU64,
}

impl Agent {
    fn new(config: Config) -> Result<Agent, String> {
        let store = Store::open(&config.db)?;
        let interrupted = store.interrupt_orphans()?;
        if interrupted > 0 {
            epi::log::warn(&format!(
                "{interrupted} jobs were running when the agent last stopped: marked Error (interrupted)"
            ));
        }
        let limits = Limits::new(config.concurrency.clone());
        let stream_tag = (std::process::id() as u64) << 40
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64)
                .unwrap_or(0)
                << 16;
        Ok(Agent {
            config,
            store,
            limits,
            queue: queue::Queue::default(),
            stop: AtomicBool::new(false),
            sync: Mutex::new(HashMap::new()),
            sync_freed: Condvar::new(),
            streams: Mutex::new(HashMap::new()),
            stream_tag,
            next_stream: AtomicU64::new(0),
        })
    }

    /// True once the workers were asked to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks the workers to stop after their current job.
    pub fn stop_workers(&self) {
        self.stop.store(true, Ordering::Release);
        self.queue.wake_all();
    }

    /// Stages naming a function no loaded plugin provides.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (action, stages) in &self.config.actions {
            for (index, stage) in stages.iter().enumerate() {
                if !epi::host::is_configured(&stage.service, &stage.method) {
                    problems.push(format!(
                        "actions.{action}.stages[{index}]: no loaded plugin provides {}.{}",
                        stage.service, stage.method
                    ));
                }
            }
        }
        problems
    }

    /// The `jobs` process's report.
    pub fn report(&self) -> Value {
        jobs::report(self)
    }

    /// Runs an Info or Stream action now, at most `sync_per_guest` at a time per guest.
    pub fn run_sync(
        &self,
        guest_id: Option<&str>,
        action: &str,
        guest: Value,
        args: &Value,
    ) -> Result<Outcome, HttpResponse> {
        let stages = self.config.stages(action);
        if stages.is_empty() {
            // Nothing to bound: the answer is the guest (or the list) as stored.
            return Ok(Outcome {
                guest,
                result: None,
                stream: None,
            });
        }
        let key = guest_id.unwrap_or(AGENT_QUEUE).to_owned();
        {
            let mut running = self.sync.lock().unwrap();
            while running.get(&key).copied().unwrap_or(0) >= self.config.sync_per_guest {
                running = self.sync_freed.wait(running).unwrap();
            }
            *running.entry(key.clone()).or_default() += 1;
        }
        let persist_id = guest_id.map(str::to_owned);
        let result =
            pipeline::run(
                &self.limits,
                action,
                stages,
                guest,
                args,
                |guest| match &persist_id {
                    Some(id) => self.store.put_guest(id, guest),
                    None => Ok(()),
                },
            );
        {
            let mut running = self.sync.lock().unwrap();
            if let Some(count) = running.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    running.remove(&key);
                }
            }
        }
        self.sync_freed.notify_all();
        result.map_err(|err| {
            api::error(
                502,
                format!("{action} failed at stage {}: {}", err.stage, err.message),
            )
        })
    }

    /// Registers a stream for the daemon to pull; returns its id.
    pub fn open_stream(&self, stream: Stream) -> u64 {
        let id = self.stream_tag | (self.next_stream.fetch_add(1, Ordering::Relaxed) & 0xffff);
        self.streams.lock().unwrap().insert(id, stream);
        id
    }
}

/// The HTTP provider.
pub struct Web {
    agent: Arc<Agent>,
}

#[epi::provider]
impl Web {
    /// Answers the agent's routes; other requests are left to other plugins.
    pub fn handle(&self, request: &HttpRequest) -> Decision<HttpResponse> {
        api::handle(&self.agent, request)
    }

    /// The next chunk of one of the agent's streams (`None` at its end).
    pub fn next_chunk(&self, id: &u64) -> Decision<Option<Vec<u8>>> {
        let mut stream = match self.agent.streams.lock().unwrap().remove(id) {
            Some(stream) => stream,
            None => return Decision::NoDecision,
        };
        let mut chunk = vec![0u8; 64 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => Decision::Decided(None),
            Ok(read) => {
                chunk.truncate(read);
                self.agent.streams.lock().unwrap().insert(*id, stream);
                Decision::Decided(Some(chunk))
            }
        }
    }
}

/// The plugin object.
pub struct AgentPlugin {
    agent: Arc<Agent>,
}

impl AgentPlugin {
    /// Reads the configuration and opens the database.
    pub fn from_context(context: &PluginContext) -> Result<Self, String> {
        let config = Config::from_json(&context.config)?;
        Ok(AgentPlugin {
            agent: Arc::new(Agent::new(config)?),
        })
    }
}

impl Plugin for AgentPlugin {
    fn app(&self) -> String {
        "agent".into()
    }

    fn services(&self) -> Vec<String> {
        vec![epi::http::SERVICE.into()]
    }

    fn providers(&self) -> Vec<Provider> {
        vec![Provider::new(
            epi::http::SERVICE,
            Web {
                agent: self.agent.clone(),
            },
        )
        .label("api")]
    }

    fn processes(&self) -> Vec<Process> {
        let agent = self.agent.clone();
        vec![Process::new("jobs").run(move |context| {
            agent.stop.store(false, Ordering::Release);
            for problem in agent.problems() {
                epi::log::warn(&problem);
            }
            jobs::run_workers(&agent, context);
            Ok(())
        })]
    }
}

epi::export_plugin!(AgentPlugin, try AgentPlugin::from_context);
