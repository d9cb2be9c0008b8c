//! Where flare keeps resources, subscriptions, documents and the delivery queue: embedded
//! SQLite ([`sqlite`], one daemon) or PostgreSQL ([`postgres`], several daemons sharing the
//! work). Both keep the same rules:
//!
//! - a document write and the deliveries it queues commit together;
//! - a delivery is claimed with a lease: a daemon that dies mid-delivery has its claims expire
//!   and taken over by whoever claims next;
//! - only the oldest pending delivery of a (subscription, document) pair can be claimed, so a
//!   pair is delivered in revision order, and a newer revision supersedes an undelivered older
//!   one;
//! - a subscriber that keeps failing is paused, so it takes no worker from the others: SQLite
//!   pushes its queue's `next_at` past each pause; PostgreSQL, where rewriting a long queue at
//!   every failure costs a new version of every row, parks the queue once per failure streak
//!   and retries one delivery (the probe) until the subscriber answers again.

pub mod postgres;
pub mod sqlite;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::config::Location;
use crate::model::{Resource, Subscription};

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What time it is for the queue (when a delivery is due, when a lease or a pause ends). The
/// daemon uses [`SystemClock`]; tests move a clock of their own.
pub trait Clock: Send + Sync {
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// What a document write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// First version: create deliveries queued.
    Created,
    /// A newer revision: update deliveries queued.
    Updated,
    /// The same or an older revision: nothing.
    Ignored,
    /// The resource has no subscription: nothing stored.
    Unsubscribed,
}

/// A claimed delivery and what sending it needs.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Its sequence number.
    pub seq: i64,
    /// `create`, `update` or `delete`.
    pub action: String,
    /// The document's URL.
    pub url: String,
    /// The revision.
    pub revision: i64,
    /// The document at that revision.
    pub content: Value,
    /// Attempts made before this one.
    pub attempts: i64,
    /// When it was queued (ms).
    pub queued_at: i64,
    /// The subscription.
    pub subscription: Subscription,
    /// The subscription's resource.
    pub resource: Resource,
}

/// How a delivery attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A success status.
    Delivered,
    /// A discard status.
    Discarded(u16),
    /// Try again at this time (ms).
    Retry {
        /// When (ms since the epoch).
        at: i64,
        /// Why the attempt failed.
        error: String,
    },
    /// No more attempts.
    Failed(String),
}

impl Outcome {
    /// The delivery's status after this outcome, when to try next (ms; 0: never) and the error.
    fn row(&self) -> (&'static str, i64, String) {
        match self {
            Outcome::Delivered => ("delivered", 0, String::new()),
            Outcome::Discarded(code) => {
                ("discarded", 0, format!("status {code} is a discard status"))
            }
            Outcome::Retry { at, error } => ("pending", *at, error.clone()),
            Outcome::Failed(error) => ("failed", 0, error.clone()),
        }
    }
}

/// How long a subscriber with `failures` consecutive failures is left alone.
#[derive(Clone, Copy, Debug)]
pub struct Pause {
    /// The first pause.
    pub base: Duration,
    /// The longest pause.
    pub cap: Duration,
}

impl Pause {
    /// The end of the pause (ms) after the `failures`-th consecutive failure at `now`.
    fn until(&self, failures: i64, now: i64) -> i64 {
        let pause = crate::delivery::backoff(
            failures.saturating_sub(1).clamp(0, u32::MAX as i64) as u32,
            self.base,
            self.cap,
            1.0,
        );
        now + pause.as_millis() as i64
    }
}

/// Flare's storage: every query the API and the delivery workers make.
pub trait Store: Send + Sync {
    /// Stores a new resource; false when its endpoint exists.
    fn insert_resource(&self, resource: &Resource) -> Result<bool, String>;

    /// A resource.
    fn resource(&self, id: &str) -> Result<Option<Resource>, String>;

    /// A page of resources (in creation order) and the total.
    fn resources(&self, limit: i64, offset: i64) -> Result<(Vec<Resource>, i64), String>;

    /// Every resource (for matching document URLs).
    fn all_resources(&self) -> Result<Vec<Resource>, String>;

    /// Deletes a resource: `Ok(None)` unknown, `Ok(Some(false))` refused (it has
    /// subscriptions), `Ok(Some(true))` deleted.
    fn delete_resource(&self, id: &str) -> Result<Option<bool>, String>;

    /// Stores a new subscription; false when the resource has one with the same url(s).
    fn insert_subscription(&self, subscription: &Subscription) -> Result<bool, String>;

    /// A subscription of a resource.
    fn subscription(&self, resource: &str, id: &str) -> Result<Option<Subscription>, String>;

    /// A page of a resource's subscriptions (in creation order) and the total.
    fn subscriptions(
        &self,
        resource: &str,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Subscription>, i64), String>;

    /// Deletes a subscription (and its pending deliveries); false when unknown.
    fn delete_subscription(&self, resource: &str, id: &str) -> Result<bool, String>;

    /// Writes a document version and queues its deliveries, in one transaction.
    fn put_document(
        &self,
        resource: &Resource,
        url: &str,
        content: &Value,
        revision: i64,
    ) -> Result<Written, String>;

    /// Deletes a document: a delete delivery to each subscriber that received it. Unknown
    /// documents are no-ops; returns whether there was one.
    fn delete_document(&self, url: &str) -> Result<bool, String>;

    /// A stored document: `{id, revision, content, updatedAt}`.
    fn document(&self, url: &str) -> Result<Option<Value>, String>;

    /// Claims up to `limit` due deliveries for `lease_ms`: only the oldest pending one of each
    /// (subscription, document), and none another claimer holds.
    fn claim(&self, limit: i64, lease_ms: i64) -> Result<Vec<Delivery>, String>;

    /// Records how an attempt ended.
    fn finish(&self, delivery: &Delivery, outcome: &Outcome) -> Result<(), String>;

    /// Deliveries with a status (`failed`, `pending`, ...), newest first, and the total.
    fn deliveries(
        &self,
        status: &str,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Value>, i64), String>;

    /// Counts of deliveries by status.
    fn counts(&self) -> Result<Value, String>;

    /// Periodic upkeep (the delivery process calls it about once a second).
    fn maintain(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Opens (creating and migrating) the store at `location`, telling time by `clock`;
/// `connections` bounds PostgreSQL's connection pool.
pub fn open(
    location: &Location,
    pause: Pause,
    connections: usize,
    clock: std::sync::Arc<dyn Clock>,
) -> Result<Box<dyn Store>, String> {
    Ok(match location {
        Location::Sqlite(path) => Box::new(sqlite::Sqlite::open(path, pause, clock)?),
        Location::Postgres(url) => {
            Box::new(postgres::Postgres::open(url, pause, connections, clock)?)
        }
    })
}

/// A delivery row as listed by the API.
#[allow(clippy::too_many_arguments)]
fn listed(
    seq: i64,
    subscription: String,
    url: String,
    action: String,
    revision: i64,
    attempts: i64,
    error: String,
    updated_at: i64,
    status: &str,
) -> Value {
    serde_json::json!({
        "id": seq,
        "subscription": subscription,
        "document": url,
        "action": action,
        "revision": revision,
        "attempts": attempts,
        "error": error,
        "updatedAt": crate::delivery::rfc3339(updated_at),
        "status": status,
    })
}

/// A stored document as the API shows it.
fn shown_document(url: &str, revision: i64, content: &str, updated_at: i64) -> Value {
    serde_json::json!({
        "id": url,
        "revision": revision,
        "content": serde_json::from_str::<Value>(content).unwrap_or(Value::Null),
        "updatedAt": crate::delivery::rfc3339(updated_at),
    })
}

/// The key that makes a subscription's url(s) unique within its resource.
fn url_key(subscription: &Subscription) -> String {
    let mut urls: Vec<String> = ["create", "update", "delete"]
        .iter()
        .filter_map(|action| subscription.target(action).url)
        .collect();
    urls.dedup();
    urls.join(" ")
}
