//! The store in PostgreSQL, shared by several daemons. The delivery queue is claimed with
//! `FOR UPDATE SKIP LOCKED` plus a lease (`claimed_until`): two daemons never claim the same
//! delivery while its lease runs, and the claims of a daemon that died expire and are taken
//! over. Writes of one document URL are serialized across daemons by a transaction-scoped
//! advisory lock on the URL. Schema migrations are versioned (`flare_migrations`) and applied
//! at start under an advisory lock, so daemons starting together migrate once.
//!
//! Connections come from a small pool that keeps each connection's prepared statements with
//! it (one round trip per query instead of a prepare and an execute). TLS is not supported:
//! connect over a local or otherwise trusted network.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use serde_json::Value;

use super::{Clock, Delivery, Outcome, Pause, Store, Written};
use crate::model::{Resource, Subscription};

/// Any number that identifies flare's migration lock among the database's advisory locks.
const MIGRATION_LOCK: i64 = 0x666c_6172_6500;

/// Versioned schema migrations, applied in order at start.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE resources (seq BIGSERIAL UNIQUE, id TEXT PRIMARY KEY, endpoint TEXT NOT NULL UNIQUE,
                             doc TEXT NOT NULL);
     CREATE TABLE subscriptions (seq BIGSERIAL UNIQUE, id TEXT PRIMARY KEY, resource_id TEXT NOT NULL,
                                 url_key TEXT NOT NULL, doc TEXT NOT NULL, UNIQUE (resource_id, url_key));
     CREATE INDEX subscriptions_by_resource ON subscriptions (resource_id, seq);
     CREATE TABLE documents (url TEXT PRIMARY KEY, resource_id TEXT NOT NULL, revision BIGINT NOT NULL,
                             content TEXT NOT NULL, updated_at BIGINT NOT NULL);
     CREATE INDEX documents_by_resource ON documents (resource_id);
     CREATE TABLE received (subscription_id TEXT NOT NULL, url TEXT NOT NULL, revision BIGINT NOT NULL,
                            PRIMARY KEY (subscription_id, url));
     CREATE INDEX received_by_url ON received (url);
     CREATE TABLE deliveries (seq BIGSERIAL PRIMARY KEY, subscription_id TEXT NOT NULL, url TEXT NOT NULL,
                              action TEXT NOT NULL, revision BIGINT NOT NULL, content TEXT NOT NULL,
                              status TEXT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0,
                              next_at BIGINT NOT NULL, claimed_until BIGINT NOT NULL DEFAULT 0,
                              last_error TEXT NOT NULL DEFAULT '', queued_at BIGINT NOT NULL,
                              updated_at BIGINT NOT NULL);
     -- A queue: rows are updated a few times each and then left; room on each page for the
     -- claim's update in place, and vacuum and statistics kept up with the churn.
     ALTER TABLE deliveries SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02,
                                 autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_threshold = 200,
                                 autovacuum_analyze_threshold = 200);
     CREATE INDEX deliveries_pending ON deliveries (next_at, seq) WHERE status = 'pending';
     CREATE INDEX deliveries_pair ON deliveries (subscription_id, url, status, seq);
     CREATE INDEX deliveries_by_status ON deliveries (status, seq);
     CREATE INDEX deliveries_unparked ON deliveries (subscription_id)
         WHERE status = 'pending' AND next_at < 9223372036854775807;
     CREATE TABLE health (subscription_id TEXT PRIMARY KEY, failures BIGINT NOT NULL,
                          blocked_until BIGINT NOT NULL);",
];

/// `next_at` of a parked delivery: its subscriber is paused, and one delivery of it (the
/// probe) is tried on its own back-off until the subscriber answers again.
/// (Spelled out in `maintain` and in the index `deliveries_unparked`.)
const PARKED: i64 = i64::MAX;

/// How many times a transaction that lost a deadlock or a serialization conflict is retried.
const RETRIES: usize = 5;

/// The PostgreSQL store.
pub struct Postgres {
    pool: Pool,
    pause: Pause,
    clock: Arc<dyn Clock>,
}

impl Postgres {
    /// Connects to `url`, applies the migrations this database lacks, and keeps at most
    /// `connections` connections open; a failing subscriber pauses as `pause` says; `clock`
    /// tells the time.
    pub fn open(
        url: &str,
        pause: Pause,
        connections: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Postgres, String> {
        let config: postgres::Config = url
            .parse()
            .map_err(|err| format!("flare database: the PostgreSQL URL is not valid: {err}"))?;
        let store = Postgres {
            pool: Pool::new(config, connections.max(1)),
            pause,
            clock,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), String> {
        let mut session = self.pool.get()?;
        let client = &mut session.client;
        let mut transaction = client
            .transaction()
            .map_err(failed("starting the migrations"))?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(failed("locking the migrations"))?;
        transaction
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS flare_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .map_err(failed("creating the migrations table"))?;
        let applied: i32 = transaction
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM flare_migrations",
                &[],
            )
            .and_then(|row| row.try_get(0))
            .map_err(failed("reading the schema version"))?;
        if applied as usize > MIGRATIONS.len() {
            return Err(format!(
                "flare database: the schema is at version {applied}, newer than this build knows ({}); \
                 upgrade flare rather than run an older one against this database",
                MIGRATIONS.len()
            ));
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            let version = index as i32 + 1;
            transaction
                .batch_execute(migration)
                .and_then(|()| {
                    transaction.execute(
                        "INSERT INTO flare_migrations (version, applied_at) VALUES ($1, $2)",
                        &[&version, &super::now_ms()],
                    )
                })
                .map_err(|err| format!("flare database: migration {version}: {}", detail(&err)))?;
        }
        transaction
            .commit()
            .map_err(failed("committing the migrations"))
    }

    /// Runs `body` in a transaction, again when it lost a deadlock or a serialization
    /// conflict.
    fn transaction<T>(
        &self,
        what: &str,
        mut body: impl FnMut(&mut Session) -> Result<T, postgres::Error>,
    ) -> Result<T, String> {
        let mut session = self.pool.get()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = session
                .client
                .batch_execute("BEGIN")
                .and_then(|()| body(&mut session))
                .and_then(|value| session.client.batch_execute("COMMIT").map(|()| value));
            match result {
                Ok(value) => return Ok(value),
                Err(err) => {
                    // A failed ROLLBACK means the connection is gone: the pool drops it.
                    let _ = session.client.batch_execute("ROLLBACK");
                    let conflict = matches!(
                        err.code(),
                        Some(&SqlState::T_R_DEADLOCK_DETECTED)
                            | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                    );
                    if !(conflict && attempt < RETRIES) {
                        return Err(failed(what)(err));
                    }
                }
            }
        }
    }

    /// Runs `body` on a connection, outside any transaction.
    fn with<T>(
        &self,
        what: &str,
        body: impl FnOnce(&mut Session) -> Result<T, postgres::Error>,
    ) -> Result<T, String> {
        let mut session = self.pool.get()?;
        body(&mut session).map_err(failed(what))
    }
}

impl Store for Postgres {
    fn insert_resource(&self, resource: &Resource) -> Result<bool, String> {
        let doc = serde_json::to_string(resource).expect("a resource serializes");
        self.with("creating a resource", |session| {
            session.execute(
                "INSERT INTO resources (id, endpoint, doc) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&resource.id, &resource.endpoint, &doc],
            )
        })
        .map(|changed| changed == 1)
    }

    fn resource(&self, id: &str) -> Result<Option<Resource>, String> {
        let doc = self.with("reading a resource", |session| {
            session
                .query_opt("SELECT doc FROM resources WHERE id = $1", &[&id])?
                .map(|row| row.try_get::<_, String>(0))
                .transpose()
        })?;
        Ok(doc.and_then(|doc| serde_json::from_str(&doc).ok()))
    }

    fn resources(&self, limit: i64, offset: i64) -> Result<(Vec<Resource>, i64), String> {
        self.with("listing resources", |session| {
            let total = session
                .query_one("SELECT COUNT(*) FROM resources", &[])?
                .try_get(0)?;
            let rows = session.query(
                "SELECT doc FROM resources ORDER BY seq LIMIT $1 OFFSET $2",
                &[&limit, &offset],
            )?;
            Ok((parse_docs(&rows)?, total))
        })
    }

    fn all_resources(&self) -> Result<Vec<Resource>, String> {
        self.with("listing resources", |session| {
            let rows = session.query("SELECT doc FROM resources ORDER BY seq", &[])?;
            parse_docs(&rows)
        })
    }

    fn delete_resource(&self, id: &str) -> Result<Option<bool>, String> {
        self.transaction("deleting a resource", |session| {
            if session
                .query_opt("SELECT 1 FROM resources WHERE id = $1 FOR UPDATE", &[&id])?
                .is_none()
            {
                return Ok(None);
            }
            let subscriptions: i64 = session
                .query_one(
                    "SELECT COUNT(*) FROM subscriptions WHERE resource_id = $1",
                    &[&id],
                )?
                .try_get(0)?;
            if subscriptions > 0 {
                return Ok(Some(false));
            }
            session.execute("DELETE FROM documents WHERE resource_id = $1", &[&id])?;
            session.execute("DELETE FROM resources WHERE id = $1", &[&id])?;
            Ok(Some(true))
        })
    }

    fn insert_subscription(&self, subscription: &Subscription) -> Result<bool, String> {
        let key = super::url_key(subscription);
        let doc = serde_json::to_string(subscription).expect("a subscription serializes");
        let inserted = self.transaction("creating a subscription", |session| {
            // Holds off a concurrent delete of the resource until this commits.
            if session
                .query_opt(
                    "SELECT 1 FROM resources WHERE id = $1 FOR SHARE",
                    &[&subscription.resource_id],
                )?
                .is_none()
            {
                return Ok(None);
            }
            session
                .execute(
                    "INSERT INTO subscriptions (id, resource_id, url_key, doc) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                    &[&subscription.id, &subscription.resource_id, &key, &doc],
                )
                .map(|changed| Some(changed == 1))
        })?;
        inserted.ok_or_else(|| {
            format!(
                "flare database: resource {} was deleted meanwhile",
                subscription.resource_id
            )
        })
    }

    fn subscription(&self, resource: &str, id: &str) -> Result<Option<Subscription>, String> {
        let doc = self.with("reading a subscription", |session| {
            session
                .query_opt(
                    "SELECT doc FROM subscriptions WHERE resource_id = $1 AND id = $2",
                    &[&resource, &id],
                )?
                .map(|row| row.try_get::<_, String>(0))
                .transpose()
        })?;
        Ok(doc.and_then(|doc| serde_json::from_str(&doc).ok()))
    }

    fn subscriptions(
        &self,
        resource: &str,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Subscription>, i64), String> {
        self.with("listing subscriptions", |session| {
            let total = session
                .query_one(
                    "SELECT COUNT(*) FROM subscriptions WHERE resource_id = $1",
                    &[&resource],
                )?
                .try_get(0)?;
            let rows = session.query(
                "SELECT doc FROM subscriptions WHERE resource_id = $1 ORDER BY seq LIMIT $2 OFFSET $3",
                &[&resource, &limit, &offset],
            )?;
            Ok((parse_docs(&rows)?, total))
        })
    }

    fn delete_subscription(&self, resource: &str, id: &str) -> Result<bool, String> {
        self.transaction("deleting a subscription", |session| {
            let changed = session.execute(
                "DELETE FROM subscriptions WHERE resource_id = $1 AND id = $2",
                &[&resource, &id],
            )?;
            session.execute(
                "DELETE FROM deliveries WHERE subscription_id = $1 AND status = 'pending'",
                &[&id],
            )?;
            session.execute("DELETE FROM received WHERE subscription_id = $1", &[&id])?;
            Ok(changed == 1)
        })
    }

    fn put_document(
        &self,
        resource: &Resource,
        url: &str,
        content: &Value,
        revision: i64,
    ) -> Result<Written, String> {
        let text = content.to_string();
        self.transaction("writing a document", |session| {
            let subscriptions: Vec<String> = session
                .query(
                    "SELECT id FROM subscriptions WHERE resource_id = $1 ORDER BY seq",
                    &[&resource.id],
                )?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            if subscriptions.is_empty() {
                return Ok(Written::Unsubscribed);
            }
            // Writers of one URL, on any daemon, take turns from here to their commit.
            session.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&url],
            )?;
            let stored: Option<i64> = session
                .query_opt("SELECT revision FROM documents WHERE url = $1", &[&url])?
                .map(|row| row.try_get(0))
                .transpose()?;
            let (written, action) = match stored {
                None => (Written::Created, "create"),
                Some(old) if revision > old => (Written::Updated, "update"),
                Some(_) => return Ok(Written::Ignored),
            };
            let now = self.clock.now_ms();
            session.execute(
                "INSERT INTO documents (url, resource_id, revision, content, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (url) DO UPDATE SET revision = excluded.revision, content = excluded.content,
                                                 updated_at = excluded.updated_at",
                &[&url, &resource.id, &revision, &text, &now],
            )?;
            for subscription in &subscriptions {
                queue(session, subscription, url, action, revision, &text, now)?;
            }
            Ok(written)
        })
    }

    fn delete_document(&self, url: &str) -> Result<bool, String> {
        self.transaction("deleting a document", |session| {
            session.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&url],
            )?;
            let Some(row) = session.query_opt(
                "SELECT revision, content FROM documents WHERE url = $1",
                &[&url],
            )?
            else {
                return Ok(false);
            };
            let (revision, content): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
            let receivers: Vec<String> = session
                .query(
                    "SELECT subscription_id FROM received WHERE url = $1",
                    &[&url],
                )?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            let now = self.clock.now_ms();
            // Versions nobody received yet are not sent any more.
            session.execute(
                "UPDATE deliveries SET status = 'superseded', updated_at = $2
                 WHERE url = $1 AND status = 'pending' AND claimed_until < $2",
                &[&url, &now],
            )?;
            for subscription in &receivers {
                queue(
                    session,
                    subscription,
                    url,
                    "delete",
                    revision,
                    &content,
                    now,
                )?;
            }
            session.execute("DELETE FROM documents WHERE url = $1", &[&url])?;
            Ok(true)
        })
    }

    fn document(&self, url: &str) -> Result<Option<Value>, String> {
        self.with("reading a document", |session| {
            session
                .query_opt(
                    "SELECT revision, content, updated_at FROM documents WHERE url = $1",
                    &[&url],
                )?
                .map(|row| {
                    Ok(super::shown_document(
                        url,
                        row.try_get(0)?,
                        &row.try_get::<_, String>(1)?,
                        row.try_get(2)?,
                    ))
                })
                .transpose()
        })
    }

    fn claim(&self, limit: i64, lease_ms: i64) -> Result<Vec<Delivery>, String> {
        let now = self.clock.now_ms();
        let until = now + lease_ms;
        let rows = self.with("claiming deliveries", |session| {
            // One statement, so one implicit transaction: rows another claimer holds are
            // skipped, not waited for; a row claimed and committed meanwhile is re-checked
            // (its lease) before it is taken.
            session.query(
                "WITH due AS (
                     SELECT d.seq FROM deliveries AS d
                     WHERE d.status = 'pending' AND d.next_at <= $1 AND d.claimed_until < $1
                       AND NOT EXISTS (SELECT 1 FROM deliveries AS e
                                       WHERE e.subscription_id = d.subscription_id AND e.url = d.url
                                         AND e.status = 'pending' AND e.seq < d.seq)
                     ORDER BY d.next_at, d.seq
                     LIMIT $2
                     FOR UPDATE OF d SKIP LOCKED)
                 UPDATE deliveries AS c SET claimed_until = $3
                 FROM due, subscriptions AS s, resources AS r
                 WHERE c.seq = due.seq AND s.id = c.subscription_id AND r.id = s.resource_id
                 RETURNING c.seq, c.action, c.url, c.revision, c.content, c.attempts, c.queued_at, s.doc, r.doc",
                &[&now, &limit, &until],
            )
        })?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let read = || -> Result<Delivery, String> {
                let text = |index: usize| {
                    row.try_get::<_, String>(index)
                        .map_err(failed("reading a claim"))
                };
                let number = |index: usize| {
                    row.try_get::<_, i64>(index)
                        .map_err(failed("reading a claim"))
                };
                Ok(Delivery {
                    seq: number(0)?,
                    action: text(1)?,
                    url: text(2)?,
                    revision: number(3)?,
                    content: serde_json::from_str(&text(4)?).unwrap_or(Value::Null),
                    attempts: number(5)?,
                    queued_at: number(6)?,
                    subscription: serde_json::from_str(&text(7)?)
                        .map_err(|err| format!("flare database: a stored subscription: {err}"))?,
                    resource: serde_json::from_str(&text(8)?)
                        .map_err(|err| format!("flare database: a stored resource: {err}"))?,
                })
            };
            claimed.push(read()?);
        }
        Ok(claimed)
    }

    fn finish(&self, delivery: &Delivery, outcome: &Outcome) -> Result<(), String> {
        let (status, next_at, error) = outcome.row();
        let subscription = &delivery.subscription.id;
        self.transaction("finishing a delivery", |session| {
            let now = self.clock.now_ms();
            session.execute(
                "UPDATE deliveries SET status = $1, next_at = $2, last_error = $3, attempts = attempts + 1,
                        claimed_until = 0, updated_at = $4 WHERE seq = $5",
                &[&status, &next_at, &error, &now, &delivery.seq],
            )?;
            match outcome {
                // A subscriber that keeps failing is left alone: at the first failure of a
                // streak its other pending deliveries are parked, and this one (the probe)
                // is retried on its back-off, no sooner than the pause allows.
                Outcome::Retry { .. } | Outcome::Failed(_) => {
                    let failures: i64 = session
                        .query_one(
                            "INSERT INTO health (subscription_id, failures, blocked_until) VALUES ($1, 1, 0)
                             ON CONFLICT (subscription_id) DO UPDATE SET failures = health.failures + 1
                             RETURNING failures",
                            &[subscription],
                        )?
                        .try_get(0)?;
                    let until = self.pause.until(failures, now);
                    session.execute(
                        "UPDATE health SET blocked_until = $1 WHERE subscription_id = $2",
                        &[&until, subscription],
                    )?;
                    if let Outcome::Retry { .. } = outcome {
                        session.execute(
                            "UPDATE deliveries SET next_at = GREATEST(next_at, $1) WHERE seq = $2",
                            &[&until, &delivery.seq],
                        )?;
                    }
                    if failures == 1 {
                        session.execute(
                            "UPDATE deliveries SET next_at = $1
                             WHERE subscription_id = $2 AND status = 'pending' AND seq != $3
                               AND claimed_until < $4 AND next_at < $1",
                            &[&PARKED, subscription, &delivery.seq, &now],
                        )?;
                    }
                }
                Outcome::Delivered | Outcome::Discarded(_) => {
                    let paused = session.execute(
                        "DELETE FROM health WHERE subscription_id = $1",
                        &[subscription],
                    )?;
                    if paused > 0 {
                        // It answers again: its parked deliveries are due.
                        session.execute(
                            "UPDATE deliveries SET next_at = $1
                             WHERE subscription_id = $2 AND status = 'pending' AND next_at = $3",
                            &[&now, subscription, &PARKED],
                        )?;
                    }
                }
            }
            if *outcome == Outcome::Delivered {
                if delivery.action == "delete" {
                    session.execute(
                        "DELETE FROM received WHERE subscription_id = $1 AND url = $2",
                        &[subscription, &delivery.url],
                    )?;
                } else {
                    session.execute(
                        "INSERT INTO received (subscription_id, url, revision) VALUES ($1, $2, $3)
                         ON CONFLICT (subscription_id, url) DO UPDATE SET revision = excluded.revision",
                        &[subscription, &delivery.url, &delivery.revision],
                    )?;
                }
            }
            Ok(())
        })
    }

    fn deliveries(
        &self,
        status: &str,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Value>, i64), String> {
        self.with("listing deliveries", |session| {
            let total = session
                .query_one(
                    "SELECT COUNT(*) FROM deliveries WHERE status = $1",
                    &[&status],
                )?
                .try_get(0)?;
            let rows = session.query(
                "SELECT seq, subscription_id, url, action, revision, attempts, last_error, updated_at
                 FROM deliveries WHERE status = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3",
                &[&status, &limit, &offset],
            )?;
            let listed = rows
                .iter()
                .map(|row| {
                    Ok(super::listed(
                        row.try_get(0)?,
                        row.try_get(1)?,
                        row.try_get(2)?,
                        row.try_get(3)?,
                        row.try_get(4)?,
                        row.try_get(5)?,
                        row.try_get(6)?,
                        row.try_get(7)?,
                        status,
                    ))
                })
                .collect::<Result<_, postgres::Error>>()?;
            Ok((listed, total))
        })
    }

    /// A paused subscriber whose probe is gone (it failed for good, or a newer revision
    /// superseded it) gets its oldest parked delivery as the next probe, due when the pause
    /// ends.
    fn maintain(&self) -> Result<(), String> {
        self.with("choosing probes", |session| {
            // The literal is PARKED, so that the partial index `deliveries_unparked` serves.
            session.execute(
                "WITH orphaned AS (
                     SELECT h.subscription_id, h.blocked_until FROM health AS h
                     WHERE NOT EXISTS (SELECT 1 FROM deliveries AS q
                                       WHERE q.subscription_id = h.subscription_id AND q.status = 'pending'
                                         AND q.next_at < 9223372036854775807)),
                 probes AS (
                     SELECT o.blocked_until,
                            (SELECT MIN(p.seq) FROM deliveries AS p
                             WHERE p.subscription_id = o.subscription_id AND p.status = 'pending') AS seq
                     FROM orphaned AS o)
                 UPDATE deliveries AS d SET next_at = GREATEST(probes.blocked_until, $2)
                 FROM probes WHERE d.seq = probes.seq AND d.next_at = $1",
                &[&PARKED, &self.clock.now_ms()],
            )
        })
        .map(drop)
    }

    fn counts(&self) -> Result<Value, String> {
        self.with("counting deliveries", |session| {
            let rows = session.query(
                "SELECT status, COUNT(*) FROM deliveries GROUP BY status",
                &[],
            )?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get::<_, String>(0)?,
                        Value::from(row.try_get::<_, i64>(1)?),
                    ))
                })
                .collect::<Result<serde_json::Map<_, _>, _>>()
                .map(Value::Object)
        })
    }
}

/// Queues a delivery, superseding the undelivered older ones of the same pair; a paused
/// subscriber's delivery is parked.
fn queue(
    session: &mut Session,
    subscription: &String,
    url: &str,
    action: &str,
    revision: i64,
    content: &String,
    now: i64,
) -> Result<(), postgres::Error> {
    session.execute(
        "UPDATE deliveries SET status = 'superseded', updated_at = $3
         WHERE subscription_id = $1 AND url = $2 AND status = 'pending' AND claimed_until < $3
           AND action != 'delete'",
        &[subscription, &url, &now],
    )?;
    session.execute(
        "INSERT INTO deliveries (subscription_id, url, action, revision, content, status, next_at, queued_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'pending',
                 CASE WHEN EXISTS (SELECT 1 FROM health WHERE subscription_id = $1) THEN $7::BIGINT ELSE $6::BIGINT END,
                 $6, $6)",
        &[subscription, &url, &action, &revision, content, &now, &PARKED],
    )?;
    Ok(())
}

fn parse_docs<T: serde::de::DeserializeOwned>(rows: &[Row]) -> Result<Vec<T>, postgres::Error> {
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        if let Ok(item) = serde_json::from_str(&row.try_get::<_, String>(0)?) {
            items.push(item);
        }
    }
    Ok(items)
}

/// The server's message for a database error (with its detail), or the client's.
fn detail(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => err.to_string(),
    }
}

fn failed(what: &str) -> impl Fn(postgres::Error) -> String + '_ {
    move |err| format!("flare database: {what}: {}", detail(&err))
}

/// A connection and the statements prepared on it.
struct Session {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Session {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params)
    }

    fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_one(&statement, params)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_opt(&statement, params)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params)
    }
}

/// At most `max` connections; a caller waits for a free one. Broken connections are dropped
/// when returned, and replaced on demand.
struct Pool {
    config: postgres::Config,
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<Session>,
    open: usize,
}

/// A connection borrowed from the pool, returned when dropped.
struct Borrowed<'a> {
    pool: &'a Pool,
    session: Option<Session>,
}

impl std::ops::Deref for Borrowed<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("a borrowed session")
    }
}

impl std::ops::DerefMut for Borrowed<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("a borrowed session")
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let mut state = self.pool.state.lock().unwrap();
        if session.client.is_closed() {
            state.open -= 1;
        } else {
            state.idle.push(session);
        }
        drop(state);
        self.pool.freed.notify_one();
    }
}

impl Pool {
    fn new(mut config: postgres::Config, max: usize) -> Pool {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // The queue's tables grow from empty to thousands of rows within seconds: a plan
        // cached while they were small (a generic plan) can scan a whole subscriber's queue
        // per statement. Plan each execution with its values and the tables' current size.
        if config.get_options().is_none() {
            config.options("-c plan_cache_mode=force_custom_plan");
        }
        Pool {
            config,
            max,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn get(&self) -> Result<Borrowed<'_>, String> {
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(session) = state.idle.pop() {
                return Ok(Borrowed {
                    pool: self,
                    session: Some(session),
                });
            }
            if state.open < self.max {
                state.open += 1;
                break;
            }
            state = self.freed.wait(state).unwrap();
        }
        drop(state);
        match self.config.connect(NoTls) {
            Ok(client) => Ok(Borrowed {
                pool: self,
                session: Some(Session {
                    client,
                    statements: HashMap::new(),
                }),
            }),
            Err(err) => {
                self.state.lock().unwrap().open -= 1;
                self.freed.notify_one();
                Err(format!(
                    "flare database: cannot connect to PostgreSQL ({}): {}",
                    shown_target(&self.config),
                    detail(&err)
                ))
            }
        }
    }
}

/// Where the pool connects, without credentials.
fn shown_target(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or("(default database)");
    format!("{host}:{port}/{database}")
}
