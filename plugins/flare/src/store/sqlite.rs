//! The store in embedded SQLite (WAL), for one daemon: one connection, claims in an immediate
//! transaction (SQLite has one writer at a time, so two claimers never take the same row).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::{Clock, Delivery, Outcome, Pause, Store, Written};
use crate::model::{Resource, Subscription};

fn failed(what: &str) -> impl Fn(rusqlite::Error) -> String + '_ {
    move |err| format!("flare database: {what}: {err}")
}

/// A due delivery as the claim query reads it: seq, action, url, revision, content, attempts,
/// queued_at, the subscription's and the resource's JSON.
type ClaimRow = (i64, String, String, i64, String, i64, i64, String, String);

/// The SQLite store.
pub struct Sqlite {
    connection: Mutex<Connection>,
    pause: Pause,
    clock: std::sync::Arc<dyn Clock>,
}

impl Sqlite {
    /// Opens (creating and migrating) the database at `path`; a failing subscriber pauses
    /// as `pause` says; `clock` tells the time.
    pub fn open(
        path: &Path,
        pause: Pause,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Result<Sqlite, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|err| format!("flare database: cannot create {}: {err}", dir.display()))?;
        }
        let connection = Connection::open(path)
            .map_err(|err| format!("flare database {}: {err}", path.display()))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(failed("busy timeout"))?;
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(failed("pragmas"))?;
        migrate(&connection)?;
        Ok(Sqlite {
            connection: Mutex::new(connection),
            pause,
            clock,
        })
    }

    fn page<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        resource: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<T>, i64), String> {
        let connection = self.connection.lock().unwrap();
        let filter = if resource.is_some() {
            "WHERE resource_id = ?1"
        } else {
            "WHERE ?1 IS NULL"
        };
        let total: i64 = connection
            .query_row(
                &format!("SELECT COUNT(*) FROM {table} {filter}"),
                [resource],
                |row| row.get(0),
            )
            .map_err(failed("counting"))?;
        let mut statement = connection
            .prepare_cached(&format!(
                "SELECT doc FROM {table} {filter} ORDER BY rowid LIMIT ?2 OFFSET ?3"
            ))
            .map_err(failed("listing"))?;
        let rows = statement
            .query_map(params![resource, limit, offset], |row| {
                row.get::<_, String>(0)
            })
            .map_err(failed("listing"))?;
        let items = rows
            .filter_map(|doc| doc.ok().and_then(|doc| serde_json::from_str(&doc).ok()))
            .collect();
        Ok((items, total))
    }
}

impl Store for Sqlite {
    /// Stores a new resource; false when its endpoint exists.
    fn insert_resource(&self, resource: &Resource) -> Result<bool, String> {
        let doc = serde_json::to_string(resource).expect("a resource serializes");
        let changed = self
            .connection
            .lock()
            .unwrap()
            .execute(
                "INSERT OR IGNORE INTO resources (id, endpoint, doc) VALUES (?1, ?2, ?3)",
                params![resource.id, resource.endpoint, doc],
            )
            .map_err(failed("creating a resource"))?;
        Ok(changed == 1)
    }

    /// A resource.
    fn resource(&self, id: &str) -> Result<Option<Resource>, String> {
        let connection = self.connection.lock().unwrap();
        let doc: Option<String> = connection
            .prepare_cached("SELECT doc FROM resources WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |row| row.get(0)).optional())
            .map_err(failed("reading a resource"))?;
        Ok(doc.and_then(|doc| serde_json::from_str(&doc).ok()))
    }

    /// A page of resources and the total.
    fn resources(&self, limit: i64, offset: i64) -> Result<(Vec<Resource>, i64), String> {
        self.page("resources", None, limit, offset)
    }

    /// Every resource (for matching document URLs).
    fn all_resources(&self) -> Result<Vec<Resource>, String> {
        Ok(self.page::<Resource>("resources", None, i64::MAX, 0)?.0)
    }

    /// Deletes a resource: `Ok(None)` unknown, `Ok(Some(false))` refused (it has
    /// subscriptions), `Ok(Some(true))` deleted.
    fn delete_resource(&self, id: &str) -> Result<Option<bool>, String> {
        let mut connection = self.connection.lock().unwrap();
        let transaction = connection
            .transaction()
            .map_err(failed("deleting a resource"))?;
        let exists: bool = transaction
            .query_row(
                "SELECT COUNT(*) FROM resources WHERE id = ?1",
                [id],
                |row| row.get::<_, i64>(0),
            )
            .map_err(failed("deleting a resource"))?
            > 0;
        if !exists {
            return Ok(None);
        }
        let subscriptions: i64 = transaction
            .query_row(
                "SELECT COUNT(*) FROM subscriptions WHERE resource_id = ?1",
                [id],
                |row| row.get(0),
            )
            .map_err(failed("deleting a resource"))?;
        if subscriptions > 0 {
            return Ok(Some(false));
        }
        transaction
            .execute("DELETE FROM documents WHERE resource_id = ?1", [id])
            .and_then(|_| transaction.execute("DELETE FROM resources WHERE id = ?1", [id]))
            .map_err(failed("deleting a resource"))?;
        transaction
            .commit()
            .map_err(failed("deleting a resource"))?;
        Ok(Some(true))
    }

    /// Stores a new subscription; false when the resource has one with the same url(s).
    fn insert_subscription(&self, subscription: &Subscription) -> Result<bool, String> {
        let key = super::url_key(subscription);
        let doc = serde_json::to_string(subscription).expect("a subscription serializes");
        let changed = self
            .connection
            .lock()
            .unwrap()
            .execute(
                "INSERT OR IGNORE INTO subscriptions (id, resource_id, url_key, doc) VALUES (?1, ?2, ?3, ?4)",
                params![subscription.id, subscription.resource_id, key, doc],
            )
            .map_err(failed("creating a subscription"))?;
        Ok(changed == 1)
    }

    /// A subscription of a resource.
    fn subscription(&self, resource: &str, id: &str) -> Result<Option<Subscription>, String> {
        let connection = self.connection.lock().unwrap();
        let doc: Option<String> = connection
            .prepare_cached("SELECT doc FROM subscriptions WHERE resource_id = ?1 AND id = ?2")
            .and_then(|mut s| s.query_row([resource, id], |row| row.get(0)).optional())
            .map_err(failed("reading a subscription"))?;
        Ok(doc.and_then(|doc| serde_json::from_str(&doc).ok()))
    }

    /// A page of a resource's subscriptions and the total.
    fn subscriptions(
        &self,
        resource: &str,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Subscription>, i64), String> {
        self.page("subscriptions", Some(resource), limit, offset)
    }

    /// Deletes a subscription (and its pending deliveries); false when unknown.
    fn delete_subscription(&self, resource: &str, id: &str) -> Result<bool, String> {
        let mut connection = self.connection.lock().unwrap();
        let transaction = connection
            .transaction()
            .map_err(failed("deleting a subscription"))?;
        let changed = transaction
            .execute(
                "DELETE FROM subscriptions WHERE resource_id = ?1 AND id = ?2",
                [resource, id],
            )
            .map_err(failed("deleting a subscription"))?;
        transaction
            .execute(
                "DELETE FROM deliveries WHERE subscription_id = ?1 AND status = 'pending'",
                [id],
            )
            .and_then(|_| {
                transaction.execute("DELETE FROM received WHERE subscription_id = ?1", [id])
            })
            .map_err(failed("deleting a subscription"))?;
        transaction
            .commit()
            .map_err(failed("deleting a subscription"))?;
        Ok(changed == 1)
    }

    /// Writes a document version and queues its deliveries.
    fn put_document(
        &self,
        resource: &Resource,
        url: &str,
        content: &Value,
        revision: i64,
    ) -> Result<Written, String> {
        let mut connection = self.connection.lock().unwrap();
        let transaction = connection
            .transaction()
            .map_err(failed("writing a document"))?;
        let subscriptions: Vec<String> = {
            let mut statement = transaction
                .prepare_cached("SELECT id FROM subscriptions WHERE resource_id = ?1")
                .map_err(failed("writing a document"))?;
            let rows = statement
                .query_map([&resource.id], |row| row.get(0))
                .map_err(failed("writing a document"))?;
            rows.collect::<Result<_, _>>()
                .map_err(failed("writing a document"))?
        };
        if subscriptions.is_empty() {
            return Ok(Written::Unsubscribed);
        }
        let stored: Option<i64> = transaction
            .query_row(
                "SELECT revision FROM documents WHERE url = ?1",
                [url],
                |row| row.get(0),
            )
            .optional()
            .map_err(failed("writing a document"))?;
        let (written, action) = match stored {
            None => (Written::Created, "create"),
            Some(old) if revision > old => (Written::Updated, "update"),
            Some(_) => return Ok(Written::Ignored),
        };
        let now = self.clock.now_ms();
        let text = content.to_string();
        transaction
            .execute(
                "INSERT INTO documents (url, resource_id, revision, content, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (url) DO UPDATE SET revision = excluded.revision, content = excluded.content, updated_at = excluded.updated_at",
                params![url, resource.id, revision, text, now],
            )
            .map_err(failed("writing a document"))?;
        for subscription in &subscriptions {
            queue(
                &transaction,
                subscription,
                url,
                action,
                revision,
                &text,
                now,
            )?;
        }
        transaction.commit().map_err(failed("writing a document"))?;
        Ok(written)
    }

    /// Deletes a document: a delete delivery to each subscriber that received it. Unknown
    /// documents are no-ops; returns whether there was one.
    fn delete_document(&self, url: &str) -> Result<bool, String> {
        let mut connection = self.connection.lock().unwrap();
        let transaction = connection
            .transaction()
            .map_err(failed("deleting a document"))?;
        let stored: Option<(i64, String)> = transaction
            .query_row(
                "SELECT revision, content FROM documents WHERE url = ?1",
                [url],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(failed("deleting a document"))?;
        let Some((revision, content)) = stored else {
            return Ok(false);
        };
        let receivers: Vec<String> = {
            let mut statement = transaction
                .prepare_cached("SELECT subscription_id FROM received WHERE url = ?1")
                .map_err(failed("deleting a document"))?;
            let rows = statement
                .query_map([url], |row| row.get(0))
                .map_err(failed("deleting a document"))?;
            rows.collect::<Result<_, _>>()
                .map_err(failed("deleting a document"))?
        };
        let now = self.clock.now_ms();
        // Versions nobody received yet are not sent any more.
        transaction
            .execute(
                "UPDATE deliveries SET status = 'superseded', updated_at = ?2 WHERE url = ?1 AND status = 'pending' AND claimed_until < ?2",
                params![url, now],
            )
            .map_err(failed("deleting a document"))?;
        for subscription in &receivers {
            queue(
                &transaction,
                subscription,
                url,
                "delete",
                revision,
                &content,
                now,
            )?;
        }
        transaction
            .execute("DELETE FROM documents WHERE url = ?1", [url])
            .map_err(failed("deleting a document"))?;
        transaction
            .commit()
            .map_err(failed("deleting a document"))?;
        Ok(true)
    }

    /// A stored document: `{id, revision, content, updatedAt}`.
    fn document(&self, url: &str) -> Result<Option<Value>, String> {
        let connection = self.connection.lock().unwrap();
        connection
            .query_row(
                "SELECT revision, content, updated_at FROM documents WHERE url = ?1",
                [url],
                |row| {
                    Ok(super::shown_document(
                        url,
                        row.get(0)?,
                        &row.get::<_, String>(1)?,
                        row.get(2)?,
                    ))
                },
            )
            .optional()
            .map_err(failed("reading a document"))
    }

    /// Claims up to `limit` due deliveries for `lease_ms`: only the oldest pending one of each
    /// (subscription, document), so each pair is delivered in order.
    fn claim(&self, limit: i64, lease_ms: i64) -> Result<Vec<Delivery>, String> {
        let mut connection = self.connection.lock().unwrap();
        let transaction = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(failed("claiming deliveries"))?;
        let now = self.clock.now_ms();
        let rows: Vec<ClaimRow> = {
            let mut statement = transaction
                .prepare_cached(
                    "SELECT d.seq, d.action, d.url, d.revision, d.content, d.attempts, d.queued_at, s.doc, r.doc
                     FROM deliveries AS d
                     JOIN subscriptions AS s ON s.id = d.subscription_id
                     JOIN resources AS r ON r.id = s.resource_id
                     WHERE d.status = 'pending' AND d.next_at <= ?1 AND d.claimed_until < ?1
                       AND NOT EXISTS (SELECT 1 FROM deliveries AS e
                                       WHERE e.subscription_id = d.subscription_id AND e.url = d.url
                                         AND e.status = 'pending' AND e.seq < d.seq)
                     ORDER BY d.next_at, d.seq LIMIT ?2",
                )
                .map_err(failed("claiming deliveries"))?;
            let rows = statement
                .query_map(params![now, limit], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                        row.get(7)?,
                        row.get(8)?,
                    ))
                })
                .map_err(failed("claiming deliveries"))?;
            rows.collect::<Result<_, _>>()
                .map_err(failed("claiming deliveries"))?
        };
        let mut claimed = Vec::new();
        for (seq, action, url, revision, content, attempts, queued_at, subscription, resource) in
            rows
        {
            transaction
                .execute(
                    "UPDATE deliveries SET claimed_until = ?1 WHERE seq = ?2",
                    params![now + lease_ms, seq],
                )
                .map_err(failed("claiming deliveries"))?;
            let (Ok(subscription), Ok(resource)) = (
                serde_json::from_str(&subscription),
                serde_json::from_str(&resource),
            ) else {
                continue;
            };
            claimed.push(Delivery {
                seq,
                action,
                url,
                revision,
                content: serde_json::from_str(&content).unwrap_or(Value::Null),
                attempts,
                queued_at,
                subscription,
                resource,
            });
        }
        transaction
            .commit()
            .map_err(failed("claiming deliveries"))?;
        Ok(claimed)
    }

    /// Records how an attempt ended.
    fn finish(&self, delivery: &Delivery, outcome: &Outcome) -> Result<(), String> {
        let mut connection = self.connection.lock().unwrap();
        let transaction = connection
            .transaction()
            .map_err(failed("finishing a delivery"))?;
        let now = self.clock.now_ms();
        let (status, next_at, error) = outcome.row();
        transaction
            .execute(
                "UPDATE deliveries SET status = ?1, next_at = ?2, last_error = ?3, attempts = attempts + 1,
                        claimed_until = 0, updated_at = ?4 WHERE seq = ?5",
                params![status, next_at, error, now, delivery.seq],
            )
            .map_err(failed("finishing a delivery"))?;
        let subscription = &delivery.subscription.id;
        match outcome {
            // A subscriber that keeps failing is left alone for a while, the pause growing
            // with its consecutive failures: its queue takes no worker from the others.
            Outcome::Retry { .. } | Outcome::Failed(_) => {
                let failures: i64 = transaction
                    .query_row(
                        "INSERT INTO health (subscription_id, failures, blocked_until) VALUES (?1, 1, 0)
                         ON CONFLICT (subscription_id) DO UPDATE SET failures = failures + 1
                         RETURNING failures",
                        [subscription],
                        |row| row.get(0),
                    )
                    .map_err(failed("finishing a delivery"))?;
                let until = self.pause.until(failures, now);
                transaction
                    .execute(
                        "UPDATE health SET blocked_until = ?1 WHERE subscription_id = ?2",
                        params![until, subscription],
                    )
                    .map_err(failed("finishing a delivery"))?;
                // Its queue waits out the pause (so claims never scan it meanwhile).
                transaction
                    .execute(
                        "UPDATE deliveries SET next_at = ?1
                         WHERE subscription_id = ?2 AND status = 'pending' AND next_at < ?1 AND claimed_until < ?3",
                        params![until, subscription, now],
                    )
                    .map_err(failed("finishing a delivery"))?;
            }
            Outcome::Delivered | Outcome::Discarded(_) => {
                transaction
                    .execute(
                        "DELETE FROM health WHERE subscription_id = ?1",
                        [subscription],
                    )
                    .map_err(failed("finishing a delivery"))?;
            }
        }
        if *outcome == Outcome::Delivered {
            if delivery.action == "delete" {
                transaction.execute(
                    "DELETE FROM received WHERE subscription_id = ?1 AND url = ?2",
                    params![subscription, delivery.url],
                )
            } else {
                transaction.execute(
                    "INSERT INTO received (subscription_id, url, revision) VALUES (?1, ?2, ?3)
                     ON CONFLICT (subscription_id, url) DO UPDATE SET revision = excluded.revision",
                    params![subscription, delivery.url, delivery.revision],
                )
            }
            .map_err(failed("finishing a delivery"))?;
        }
        transaction.commit().map_err(failed("finishing a delivery"))
    }

    /// Deliveries with a status (`failed`, `pending`, ...), newest first, and the total.
    fn deliveries(
        &self,
        status: &str,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Value>, i64), String> {
        let connection = self.connection.lock().unwrap();
        let total: i64 = connection
            .query_row(
                "SELECT COUNT(*) FROM deliveries WHERE status = ?1",
                [status],
                |row| row.get(0),
            )
            .map_err(failed("listing deliveries"))?;
        let mut statement = connection
            .prepare_cached(
                "SELECT seq, subscription_id, url, action, revision, attempts, last_error, updated_at
                 FROM deliveries WHERE status = ?1 ORDER BY seq DESC LIMIT ?2 OFFSET ?3",
            )
            .map_err(failed("listing deliveries"))?;
        let rows = statement
            .query_map(params![status, limit, offset], |row| {
                Ok(super::listed(
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                    row.get(7)?,
                    status,
                ))
            })
            .map_err(failed("listing deliveries"))?;
        Ok((rows.filter_map(Result::ok).collect(), total))
    }

    /// Counts of deliveries by status.
    fn counts(&self) -> Result<Value, String> {
        let connection = self.connection.lock().unwrap();
        let mut statement = connection
            .prepare_cached("SELECT status, COUNT(*) FROM deliveries GROUP BY status")
            .map_err(failed("counting deliveries"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(failed("counting deliveries"))?;
        Ok(Value::Object(
            rows.filter_map(Result::ok)
                .map(|(k, v)| (k, v.into()))
                .collect(),
        ))
    }
}

/// Queues a delivery, superseding the undelivered older ones of the same pair.
fn queue(
    transaction: &rusqlite::Transaction<'_>,
    subscription: &str,
    url: &str,
    action: &str,
    revision: i64,
    content: &str,
    now: i64,
) -> Result<(), String> {
    transaction
        .prepare_cached(
            "UPDATE deliveries SET status = 'superseded', updated_at = ?3
             WHERE subscription_id = ?1 AND url = ?2 AND status = 'pending' AND claimed_until < ?3 AND action != 'delete'",
        )
        .and_then(|mut s| s.execute(params![subscription, url, now]))
        .map_err(failed("queueing a delivery"))?;
    transaction
        .prepare_cached(
            "INSERT INTO deliveries (subscription_id, url, action, revision, content, status, next_at, queued_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending',
                     MAX(?6, COALESCE((SELECT blocked_until FROM health WHERE subscription_id = ?1), 0)), ?6, ?6)",
        )
        .and_then(|mut s| s.execute(params![subscription, url, action, revision, content, now]))
        .map_err(failed("queueing a delivery"))?;
    Ok(())
}

/// Versioned schema migrations, applied in order at start.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE resources (id TEXT PRIMARY KEY, endpoint TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
     CREATE TABLE subscriptions (id TEXT PRIMARY KEY, resource_id TEXT NOT NULL, url_key TEXT NOT NULL,
                                 doc TEXT NOT NULL, UNIQUE (resource_id, url_key));
     CREATE TABLE documents (url TEXT PRIMARY KEY, resource_id TEXT NOT NULL, revision INTEGER NOT NULL,
                             content TEXT NOT NULL, updated_at INTEGER NOT NULL);
     CREATE TABLE received (subscription_id TEXT NOT NULL, url TEXT NOT NULL, revision INTEGER NOT NULL,
                            PRIMARY KEY (subscription_id, url));
     CREATE TABLE deliveries (seq INTEGER PRIMARY KEY AUTOINCREMENT, subscription_id TEXT NOT NULL,
                              url TEXT NOT NULL, action TEXT NOT NULL, revision INTEGER NOT NULL,
                              content TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                              next_at INTEGER NOT NULL, claimed_until INTEGER NOT NULL DEFAULT 0,
                              last_error TEXT NOT NULL DEFAULT '', queued_at INTEGER NOT NULL,
                              updated_at INTEGER NOT NULL);
     CREATE INDEX deliveries_due ON deliveries (status, next_at);
     CREATE INDEX deliveries_pair ON deliveries (subscription_id, url, status, seq);",
    "CREATE TABLE health (subscription_id TEXT PRIMARY KEY, failures INTEGER NOT NULL,
                          blocked_until INTEGER NOT NULL);",
];

fn migrate(connection: &Connection) -> Result<(), String> {
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(failed("reading the schema version"))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        connection
            .execute_batch(&format!(
                "BEGIN; {migration} PRAGMA user_version = {}; COMMIT;",
                index + 1
            ))
            .map_err(|err| format!("flare database: migration {}: {err}", index + 1))?;
    }
    Ok(())
}
