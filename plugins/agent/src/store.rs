//! Guests, metadata and the job log in SQLite. The database is the truth about the queue: a job
//! starts only by an update that marks it Running if no job of its guest runs, so a guest's jobs
//! run one at a time even across plugin versions sharing the file during an upgrade.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
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

/// What [`Store::start`] found.
#[derive(Debug)]
pub enum Start {
    /// The job is Running: run it.
    Started(Claimed),
    /// Another job of its guest runs (another version of the plugin runs it): try later.
    Blocked,
    /// The job is no longer queued.
    Gone,
}

/// The database: one connection for writes, and a pool of read-only connections so that
/// reads (the Info actions, job queries) run beside each other and beside a write (WAL mode).
pub struct Store {
    connection: Mutex<Connection>,
    path: std::path::PathBuf,
    readers: Mutex<Vec<Connection>>,
}

/// Read-only connections kept open for reuse.
const IDLE_READERS: usize = 8;

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
                 CREATE INDEX IF NOT EXISTS jobs_by_guest ON jobs (guest, seq);
                 CREATE INDEX IF NOT EXISTS jobs_by_guest_status ON jobs (guest, status);",
            )
            .map_err(|err| format!("agent database {}: {err}", path.display()))?;
        Ok(Store {
            connection: Mutex::new(connection),
            path: path.to_owned(),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Runs `read` on a read-only connection from the pool (opening one when none is idle).
    fn read<T>(
        &self,
        what: &str,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, String> {
        let idle = self.readers.lock().unwrap().pop();
        let connection = match idle {
            Some(connection) => connection,
            None => {
                let connection = Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|err| format!("agent database {}: {err}", self.path.display()))?;
                connection
                    .busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(failed("busy timeout"))?;
                // Pages read through a mapping, not a read(2) each.
                connection
                    .pragma_update(None, "mmap_size", 256i64 << 20)
                    .map_err(failed("mapping the database"))?;
                connection
            }
        };
        let result = read(&connection).map_err(failed(what));
        let mut idle = self.readers.lock().unwrap();
        if idle.len() < IDLE_READERS {
            idle.push(connection);
        }
        result
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
        Ok(self
            .guest_text(id)?
            .and_then(|doc| serde_json::from_str(&doc).ok()))
    }

    /// A guest's document as stored (JSON text).
    pub fn guest_text(&self, id: &str) -> Result<Option<String>, String> {
        self.read("reading a guest", |connection| {
            connection
                .prepare_cached("SELECT doc FROM guests WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()
        })
    }

    /// Every guest, by id.
    pub fn guests(&self) -> Result<Vec<Value>, String> {
        let docs: Vec<String> = self.read("listing guests", |connection| {
            connection
                .prepare_cached("SELECT doc FROM guests ORDER BY id")?
                .query_map([], |row| row.get::<_, String>(0))?
                .collect()
        })?;
        Ok(docs
            .iter()
            .filter_map(|doc| serde_json::from_str(doc).ok())
            .collect())
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

    /// Queues a job; returns its sequence number.
    pub fn enqueue(
        &self,
        id: &str,
        guest: &str,
        action: &str,
        args: &Value,
    ) -> Result<i64, String> {
        let now = now_ms();
        let connection = self.connection.lock().unwrap();
        connection
            .prepare_cached(
                "INSERT INTO jobs (id, guest, action, args, status, queued_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            )
            .and_then(|mut s| s.execute(params![id, guest, action, args.to_string(), QUEUED, now]))
            .map_err(failed("queueing a job"))?;
        Ok(connection.last_insert_rowid())
    }

    /// Queued jobs newer than `after`, oldest first: `(seq, guest)`.
    pub fn queued_after(&self, after: i64) -> Result<Vec<(i64, String)>, String> {
        let connection = self.connection.lock().unwrap();
        let mut statement = connection
            .prepare_cached(
                "SELECT seq, guest FROM jobs WHERE status = ?1 AND seq > ?2 ORDER BY seq",
            )
            .map_err(failed("polling the queue"))?;
        let rows = statement
            .query_map(params![QUEUED, after], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(failed("polling the queue"))?;
        rows.collect::<Result<_, _>>()
            .map_err(failed("polling the queue"))
    }

    /// Marks job `seq` Running unless another job of its guest runs (in any process sharing
    /// the database).
    pub fn start(&self, seq: i64) -> Result<Start, String> {
        let connection = self.connection.lock().unwrap();
        let changed = connection
            .prepare_cached(
                "UPDATE jobs SET status = ?1, runner = ?2, started_at = ?3, updated_at = ?3
                 WHERE seq = ?4 AND status = ?5
                   AND NOT EXISTS (SELECT 1 FROM jobs AS r WHERE r.guest = jobs.guest AND r.status = ?1)",
            )
            .and_then(|mut s| s.execute(params![RUNNING, std::process::id() as i64, now_ms(), seq, QUEUED]))
            .map_err(failed("starting a job"))?;
        let row = connection
            .prepare_cached("SELECT id, guest, action, args, status FROM jobs WHERE seq = ?1")
            .and_then(|mut s| {
                s.query_row([seq], |row| {
                    Ok((
                        Claimed {
                            id: row.get(0)?,
                            guest_id: row.get(1)?,
                            action: row.get(2)?,
                            args: serde_json::from_str(&row.get::<_, String>(3)?)
                                .unwrap_or(Value::Null),
                        },
                        row.get::<_, String>(4)?,
                    ))
                })
                .optional()
            })
            .map_err(failed("starting a job"))?;
        Ok(match (changed, row) {
            (1, Some((job, _))) => Start::Started(job),
            (_, Some((_, status))) if status == QUEUED => Start::Blocked,
            _ => Start::Gone,
        })
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
            .prepare_cached(
                "UPDATE jobs SET status = ?1, stage = ?2, message = ?3, updated_at = ?4 WHERE id = ?5",
            )
            .and_then(|mut s| s.execute(params![status, stage, message, now_ms(), job.id]))
            .map_err(failed("finishing a job"))?;
        transaction
            .prepare_cached(
                "DELETE FROM jobs WHERE guest = ?1 AND status IN (?2, ?3) AND seq <= (
                     SELECT seq FROM jobs WHERE guest = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?4)",
            )
            .and_then(|mut s| s.execute(params![job.guest_id, COMPLETE, ERROR, keep as i64]))
            .map_err(failed("trimming the job log"))?;
        transaction.commit().map_err(failed("finishing a job"))
    }

    /// A job of `guest`.
    pub fn job(&self, guest: &str, id: &str) -> Result<Option<Job>, String> {
        self.read("reading a job", |connection| {
            connection
                .prepare_cached(&format!("{JOB_COLUMNS} WHERE guest = ?1 AND id = ?2"))?
                .query_row([guest, id], read_job)
                .optional()
        })
    }

    /// Any job by id (image jobs belong to no guest).
    pub fn job_by_id(&self, id: &str) -> Result<Option<Job>, String> {
        self.read("reading a job", |connection| {
            connection
                .prepare_cached(&format!("{JOB_COLUMNS} WHERE id = ?1"))?
                .query_row([id], read_job)
                .optional()
        })
    }

    /// The newest `limit` jobs, of one guest or of all.
    pub fn jobs(&self, guest: Option<&str>, limit: usize) -> Result<Vec<Job>, String> {
        let limit = limit as i64;
        self.read("listing jobs", |connection| match guest {
            Some(guest) => connection
                .prepare_cached(&format!(
                    "{JOB_COLUMNS} WHERE guest = ?1 ORDER BY seq DESC LIMIT ?2"
                ))?
                .query_map(params![guest, limit], read_job)?
                .collect(),
            None => connection
                .prepare_cached(&format!("{JOB_COLUMNS} ORDER BY seq DESC LIMIT ?1"))?
                .query_map(params![limit], read_job)?
                .collect(),
        })
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
