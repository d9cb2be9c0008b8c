//! The flare component (modelled on diegobernardes/flare): HTTP resources whose documents are
//! tracked by revision, subscriptions, and change notifications delivered to subscribers only
//! when a document really changed.
//!
//! - [`model`]: resources, subscriptions, endpoints and wildcards, revisions (numbers or dates
//!   in Go layouts); validation naming the field.
//! - [`store`]: SQLite (WAL): resources, subscriptions, documents, who received what, and the
//!   delivery queue with leases; versioned migrations.
//! - [`delivery`]: the envelope, signatures (Standard Webhooks), back-off, the worker pool (the
//!   `delivery` process).
//! - [`api`]: the routes, through the daemon's front door.

pub mod api;
pub mod config;
pub mod delivery;
pub mod model;
pub mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use epi::http::{HttpRequest, HttpResponse};
use epi::{Decision, Plugin, PluginContext, Process, Provider};
use serde_json::{json, Value};

use crate::config::Config;
use crate::store::{Clock, Pause, Store, SystemClock};

/// Flare's state, shared by the HTTP provider and the delivery workers.
pub struct Flare {
    /// The configuration.
    pub config: Config,
    /// The database.
    pub store: Box<dyn Store>,
    /// The queue's time.
    pub clock: Arc<dyn Clock>,
    stop: AtomicBool,
    /// Delivery attempts this process made (for the report).
    pub sent: std::sync::atomic::AtomicU64,
    work: Mutex<u64>,
    work_ready: Condvar,
}

impl Flare {
    /// True once the workers were asked to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Wakes an idle worker (deliveries were queued).
    pub fn wake_workers(&self) {
        *self.work.lock().unwrap() += 1;
        self.work_ready.notify_all();
    }

    /// Waits until woken or `timeout` passed.
    pub fn wait_for_work(&self, timeout: Duration) {
        let guard = self.work.lock().unwrap();
        let _ = self.work_ready.wait_timeout(guard, timeout).unwrap();
    }

    /// Asks the workers to stop after their current delivery.
    pub fn stop_workers(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake_workers();
    }

    /// The `delivery` process's report.
    pub fn report(&self) -> Value {
        json!({"store": self.config.store.shown(), "workers": self.config.workers, "sent": self.sent.load(Ordering::Relaxed), "deliveries": self.store.counts().unwrap_or(Value::Null)})
    }
}

/// The HTTP provider.
pub struct Web {
    flare: Arc<Flare>,
}

#[epi::provider]
impl Web {
    /// Answers flare's routes; other requests are left to other plugins.
    pub fn handle(&self, request: &HttpRequest) -> Decision<HttpResponse> {
        api::handle(&self.flare, request)
    }
}

/// The plugin object.
pub struct FlarePlugin {
    flare: Arc<Flare>,
}

impl FlarePlugin {
    /// Reads the configuration and opens (migrating) the database.
    pub fn from_context(context: &PluginContext) -> Result<Self, String> {
        let config = Config::from_json(&context.config)?;
        let pause = Pause {
            base: config.retry_base,
            cap: config.retry_cap,
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = store::open(&config.store, pause, config.connections, clock.clone())?;
        Ok(FlarePlugin {
            flare: Arc::new(Flare {
                config,
                store,
                clock,
                stop: AtomicBool::new(false),
                sent: Default::default(),
                work: Mutex::new(0),
                work_ready: Condvar::new(),
            }),
        })
    }
}

impl Plugin for FlarePlugin {
    fn app(&self) -> String {
        "flare".into()
    }

    fn services(&self) -> Vec<String> {
        vec![epi::http::SERVICE.into()]
    }

    fn providers(&self) -> Vec<Provider> {
        vec![Provider::new(
            epi::http::SERVICE,
            Web {
                flare: self.flare.clone(),
            },
        )
        .label("api")]
    }

    fn processes(&self) -> Vec<Process> {
        let flare = self.flare.clone();
        vec![Process::new("delivery").run(move |context| {
            flare.stop.store(false, Ordering::Release);
            delivery::run(&flare, context);
            Ok(())
        })]
    }
}

epi::export_plugin!(FlarePlugin, try FlarePlugin::from_context);
