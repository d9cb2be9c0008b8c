//! Guests, metadata and the job log in SQLite. The database is the job queue too: a job is
//! claimed by a transaction that marks it Running only if no job of its guest runs, so guests'
//! jobs run one at a time even across plugin versions sharing the file during an upgrade.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use serde_json::Value;

/// A job's status.
pub const QUEUED: &str = "Queued";
/// A job's status.
pub const RUNNING: &str = "Running";
/// A job's status.
pub const COMPLETE: &str = "Complete";
/// A job's status.
pub const ERROR: &str = "Error";

/// A job as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Job {
    /// Its id.
    pub id: String,
    /// Its guest.
    pub guest_id: String,
    /// The action.
    pub action: String,
    /// Queued, Running, Complete or Error.
    pub status: String,
    /// The error, when it failed.
    pub message: String,
    /// The stage that failed (`service.method`), when one did.
    pub stage: String,
    /// Milliseconds since the epoch.
    pub queued_at: i64,
    /// Milliseconds since the epoch (0: not started).
    pub started_at: i64,
    /// Milliseconds since the epoch.
    pub updated_at: i64,
}

/// A claimed job: what a worker needs to run it.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// Its id.
    pub id: String,
    /// Its guest.
    pub guest_id: String,
    /// The action.
    pub action: String,
    /// The request's arguments.
    pub args: Value,
}

/// The database.
pub struct Store {
    connection: Mutex<Connection>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A database error, naming what was being done.
fn failed(what: &str) -> impl Fn(rusqlite::Error) -> String + '_ {
    move |err| format!("agent database: {what}: {err}")
}

impl Store {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|err| format!("agent database: cannot create {}: {err}", dir.display()))?;
        }
        let connection = Connection::open(path)
            .map_err(|err| format!("agent database {}: {err}", path.display()))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(failed("busy timeout"))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS guests (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS jobs (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     id TEXT NOT NULL UNIQUE,
                     guest TEXT NOT NULL,
                     action TEXT NOT NULL,
                     args TEXT NOT NULL,
                     status TEXT NOT NULL,
                     message TEXT NOT NULL DEFAULT '',
                     stage TEXT NOT NULL DEFAULT '',
                     runner INTEGER NOT NULL DEFAULT 0,
                     queued_at INTEGER NOT NULL,
                     started_at INTEGER NOT NULL DEFAULT 0,
                     updated_at INTEGER NOT NULL);
                 CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
                 CREATE INDEX IF NOT EXISTS jobs_by_guest ON jobs (guest, seq);",
            )
            .map_err(|err| format!("agent database {}: {err}", path.display()))?;
        Ok(Store {
            connection: Mutex::new(connection),
        })
    }

    /// Marks Running jobs of another process (one that died) as Error "interrupted"; returns
    /// how many. Jobs a previous version of the plugin in this process runs are left alone.
    pub fn interrupt_orphans(&self) -> Result<usize, String> {
        let me = std::process::id() as i64;
        self.connection
            .lock()
            .unwrap()
            .execute(
                "UPDATE jobs SET status = ?1, message = 'interrupted: the agent stopped while it ran', updated_at = ?2
                 WHERE status = ?3 AND runner != ?4",
                params![ERROR, now_ms(), RUNNING, me],
            )
            .map_err(failed("interrupting orphaned jobs"))
    }

    /// A guest's document.
    pub fn guest(&self, id: &str) -> Result<Option<Value>, String> {
        let connection = self.connection.lock().unwrap();
        let doc: Option<String> = connection
            .query_row("SELECT doc FROM guests WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()
            .map_err(failed("reading a guest"))?;
        Ok(doc.and_then(|doc| serde_json::from_str(&doc).ok()))
    }

    /// Every guest, by id.
    pub fn guests(&self) -> Result<Vec<Value>, String> {
        let connection = self.connection.lock().unwrap();
        let mut statement = connection
            .prepare_cached("SELECT doc FROM guests ORDER BY id")
            .map_err(failed("listing guests"))?;
        let docs = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(failed("listing guests"))?
            .filter_map(|doc| doc.ok().and_then(|doc| serde_json::from_str(&doc).ok()))
            .collect();
        Ok(docs)
    }

    /// Stores a guest (insert or replace).
    pub fn put_guest(&self, id: &str, doc: &Value) -> Result<(), String> {
        self.connection
            .lock()
            .unwrap()
            .execute(
                "INSERT INTO guests (id, doc) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                params![id, doc.to_string()],
            )
            .map(drop)
            .map_err(failed("storing a guest"))
    }

    /// Stores a new guest; false when the id is taken.
    pub fn insert_guest(&self, id: &str, doc: &Value) -> Result<bool, String> {
        let inserted = self
            .connection
            .lock()
            .unwrap()
            .execute(
                "INSERT OR IGNORE INTO guests (id, doc) VALUES (?1, ?2)",
                params![id, doc.to_string()],
            )
            .map_err(failed("creating a guest"))?;
        Ok(inserted == 1)
    }

    /// Removes a guest (its jobs stay in the log).
    pub fn delete_guest(&self, id: &str) -> Result<(), String> {
        self.connection
            .lock()
            .unwrap()
            .execute("DELETE FROM guests WHERE id = ?1", [id])
            .map(drop)
            .map_err(failed("deleting a guest"))
    }

    /// The hypervisor's metadata.
    pub fn metadata(&self) -> Result<serde_json::Map<String, Value>, String> {
        let connection = self.connection.lock().unwrap();
        let mut statement = connection
            .prepare_cached("SELECT key, value FROM metadata ORDER BY key")
            .map_err(failed("reading metadata"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(failed("reading metadata"))?;
        Ok(rows
            .filter_map(Result::ok)
            .map(|(key, value)| (key, serde_json::from_str(&value).unwrap_or(Value::Null)))
            .collect())
    }

    /// Applies a metadata patch: `null` deletes a key.
    pub fn patch_metadata(&self, patch: &serde_json::Map<String, Value>) -> Result<(), String> {
        let mut connection = self.connection.lock().unwrap();
        let transaction = connection
            .transaction()
            .map_err(failed("patching metadata"))?;
        for (key, value) in patch {
            if value.is_null() {
                transaction.execute("DELETE FROM metadata WHERE key = ?1", [key])
            } else {
                transaction.execute(
                    "INSERT INTO metadata (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value.to_string()],
                )
            }
            .map_err(failed("patching metadata"))?;
        }
        transaction.commit().map_err(failed("patching metadata"))
    }

    /// Queues a job.
    pub fn enqueue(&self, id: &str, guest: &str, action: &str, args: &Value) -> Result<(), String> {
        let now = now_ms();
        self.connection
            .lock()
            .unwrap()
            .execute(
                "INSERT INTO jobs (id, guest, action, args, status, queued_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                params![id, guest, action, args.to_string(), QUEUED, now],
            )
            .map(drop)
            .map_err(failed("queueing a job"))
    }

    /// Claims the oldest queued job whose guest runs nothing: marks it Running.
    pub fn claim(&self) -> Result<Option<Claimed>, String> {
        let mut connection = self.connection.lock().unwrap();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed("claiming a job"))?;
        let claimed = transaction
            .query_row(
                "SELECT id, guest, action, args FROM jobs AS q
                 WHERE status = ?1
                   AND NOT EXISTS (SELECT 1 FROM jobs AS r WHERE r.guest = q.guest AND r.status = ?2)
                   AND seq = (SELECT MIN(seq) FROM jobs AS f WHERE f.guest = q.guest AND f.status = ?1)
                 ORDER BY seq LIMIT 1",
                params![QUEUED, RUNNING],
                |row| {
                    Ok(Claimed {
                        id: row.get(0)?,
                        guest_id: row.get(1)?,
                        action: row.get(2)?,
                        args: serde_json::from_str(&row.get::<_, String>(3)?).unwrap_or(Value::Null),
                    })
                },
            )
            .optional()
            .map_err(failed("claiming a job"))?;
        if let Some(job) = &claimed {
            let now = now_ms();
            transaction
                .execute(
                    "UPDATE jobs SET status = ?1, runner = ?2, started_at = ?3, updated_at = ?3 WHERE id = ?4",
                    params![RUNNING, std::process::id() as i64, now, job.id],
                )
                .map_err(failed("claiming a job"))?;
        }
        transaction.commit().map_err(failed("claiming a job"))?;
        Ok(claimed)
    }

    /// Records a job's end and trims its guest's log to the newest `keep` jobs.
    pub fn finish(
        &self,
        job: &Claimed,
        outcome: Result<(), (String, String)>,
        keep: usize,
    ) -> Result<(), String> {
        let (status, stage, message) = match outcome {
            Ok(()) => (COMPLETE, String::new(), String::new()),
            Err((stage, message)) => (ERROR, stage, message),
        };
        let mut connection = self.connection.lock().unwrap();
        let transaction = connection
            .transaction()
            .map_err(failed("finishing a job"))?;
        transaction
            .execute(
                "UPDATE jobs SET status = ?1, stage = ?2, message = ?3, updated_at = ?4 WHERE id = ?5",
                params![status, stage, message, now_ms(), job.id],
            )
            .map_err(failed("finishing a job"))?;
        transaction
            .execute(
                "DELETE FROM jobs WHERE guest = ?1 AND status IN (?2, ?3) AND seq <= (
                     SELECT seq FROM jobs WHERE guest = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?4)",
                params![job.guest_id, COMPLETE, ERROR, keep as i64],
            )
            .map_err(failed("trimming the job log"))?;
        transaction.commit().map_err(failed("finishing a job"))
    }

    /// A job of `guest`.
    pub fn job(&self, guest: &str, id: &str) -> Result<Option<Job>, String> {
        let connection = self.connection.lock().unwrap();
        connection
            .query_row(
                &format!("{JOB_COLUMNS} WHERE guest = ?1 AND id = ?2"),
                [guest, id],
                read_job,
            )
            .optional()
            .map_err(failed("reading a job"))
    }

    /// The newest `limit` jobs, of one guest or of all.
    pub fn jobs(&self, guest: Option<&str>, limit: usize) -> Result<Vec<Job>, String> {
        let connection = self.connection.lock().unwrap();
        let limit = limit as i64;
        let rows: Result<Vec<Job>, rusqlite::Error> = match guest {
            Some(guest) => connection
                .prepare_cached(&format!(
                    "{JOB_COLUMNS} WHERE guest = ?1 ORDER BY seq DESC LIMIT ?2"
                ))
                .and_then(|mut s| s.query_map(params![guest, limit], read_job)?.collect()),
            None => connection
                .prepare_cached(&format!("{JOB_COLUMNS} ORDER BY seq DESC LIMIT ?1"))
                .and_then(|mut s| s.query_map(params![limit], read_job)?.collect()),
        };
        rows.map_err(failed("listing jobs"))
    }

    /// How many jobs are queued or running.
    pub fn pending(&self) -> Result<(u64, u64), String> {
        let connection = self.connection.lock().unwrap();
        let count = |status: &str| {
            connection.query_row(
                "SELECT COUNT(*) FROM jobs WHERE status = ?1",
                [status],
                |row| row.get::<_, i64>(0),
            )
        };
        Ok((
            count(QUEUED).map_err(failed("counting jobs"))? as u64,
            count(RUNNING).map_err(failed("counting jobs"))? as u64,
        ))
    }
}

const JOB_COLUMNS: &str =
    "SELECT id, guest, action, status, message, stage, queued_at, started_at, updated_at FROM jobs";

fn read_job(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: row.get(0)?,
        guest_id: row.get(1)?,
        action: row.get(2)?,
        status: row.get(3)?,
        message: row.get(4)?,
        stage: row.get(5)?,
        queued_at: row.get(6)?,
        started_at: row.get(7)?,
        updated_at: row.get(8)?,
    })
}
