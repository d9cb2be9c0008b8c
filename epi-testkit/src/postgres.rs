//! A throwaway PostgreSQL server for tests and benchmarks, started from the machine's Debian
//! binaries (`/usr/lib/postgresql/VERSION/bin`) in a temp dir, on a free port of 127.0.0.1,
//! and stopped when dropped. PostgreSQL refuses to run as root: when the tests run as root
//! (as CI does) the server runs as the `postgres` system user (or `nobody`).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a missing installation tells the user.
const INSTALL: &str = "the PostgreSQL server binaries were not found under /usr/lib/postgresql/*/bin; \
     install the Debian package `postgresql` (the README's test command `cargo xtask test` installs it with apt-get)";

/// A running PostgreSQL server; stopped (and its files removed) when dropped.
pub struct Postgres {
    child: Child,
    port: u16,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Initializes a cluster in a temp dir and starts a server on a free port; panics, saying
    /// what to install or showing the server's log, when it cannot.
    pub fn start() -> Postgres {
        let bin = binaries();
        let user = unprivileged_user();
        let dir = tempfile::Builder::new()
            .prefix("epi-test-postgres-")
            .tempdir()
            .expect("a temp dir for PostgreSQL");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("give the PostgreSQL temp dir to its user");
        }
        let data = dir.path().join("data");
        let initdb = run_as(Command::new(bin.join("initdb")), user)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", bin.join("initdb").display()));
        assert!(
            initdb.status.success(),
            "{} -D {} failed: {}{}",
            bin.join("initdb").display(),
            data.display(),
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut last_error = String::new();
        for _ in 0..5 {
            match Self::launch(&bin, user, dir.path()) {
                Ok((child, port)) => {
                    return Postgres {
                        child,
                        port,
                        bin,
                        user,
                        dir,
                    }
                }
                Err(err) => last_error = err,
            }
        }
        panic!("PostgreSQL did not start: {last_error}");
    }

    /// Starts the server on a free port and waits until it accepts connections.
    fn launch(bin: &Path, user: Option<(u32, u32)>, dir: &Path) -> Result<(Child, u16), String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let log_path = dir.join("postgres.log");
        let log = File::create(&log_path).expect("the PostgreSQL log file");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid)).expect("chown the log");
        }
        let mut child = run_as(Command::new(bin.join("postgres")), user)
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .map_err(|err| format!("cannot run {}: {err}", bin.join("postgres").display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the server exited ({status}) on port {port}; its log:\n{}",
                    tail(&log_path)
                ));
            }
            let ready = run_as(Command::new(bin.join("pg_isready")), user)
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(port.to_string())
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return Ok((child, port));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the server on port {port} was not ready after 60 s; its log:\n{}",
                    tail(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates the database `name` (letters, digits and `_`); returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {name:?}"
        );
        let output = run_as(Command::new(self.bin.join("createdb")), self.user)
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(name)
            .output()
            .unwrap_or_else(|err| panic!("cannot run createdb: {err}"));
        assert!(
            output.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs one SQL command with `psql` against the database `database`; returns its output
    /// (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = run_as(Command::new(self.bin.join("psql")), self.user)
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
            ])
            .arg(self.port.to_string())
            .args(["-d", database, "-c", sql])
            .output()
            .unwrap_or_else(|err| panic!("cannot run psql: {err}"));
        assert!(
            output.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The server's data and log directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown (disconnects clients, no waiting for them).
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newest `/usr/lib/postgresql/VERSION/bin` holding `initdb` and `postgres`.
fn binaries() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| panic!("{INSTALL}"))
}

/// `(uid, gid)` to run the server as when this process is root: `postgres`, else `nobody`.
fn unprivileged_user() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok());
    if euid != Some(0) {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let lookup = |name: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == name)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
    };
    Some(
        lookup("postgres")
            .or_else(|| lookup("nobody"))
            .unwrap_or((65534, 65534)),
    )
}

fn run_as(mut command: Command, user: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = user {
        command.gid(gid).uid(uid);
        // Tools look up their home and locale: keep them from reading root's.
        command.env("HOME", "/tmp").current_dir("/tmp");
    }
    command
}

/// The last 40 lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
