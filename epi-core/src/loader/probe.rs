//! Probe loads: a plugin file is opened first in a short-lived child process, and only a file
//! the child opened and closed cleanly is opened in the host.
//!
//! `dlopen` runs a library's constructors and trusts its program headers, dynamic section and
//! symbol tables; a damaged file (or a C library whose constructor aborts) kills the process
//! that opens it, on every restart. The child checks the bytes as the host does, opens the
//! library (its constructors run), finds and checks its entry, closes it (its finalisers run),
//! reports on stdout and leaves with `_exit`, so no destructor of the host program runs there.
//! It does not call the plugin's `init`: that may touch the plugin's real state (a database,
//! a socket), which a probe must leave alone; a crash in `init` or later is plugin code
//! crashing, which `epi::fatal` names and only an isolated plugin survives. If the child dies
//! of a signal, exits on its own or hangs, the host refuses the file with a
//! [`LoadError::ProbeFailed`] naming what happened; the file was never opened in the host.
//!
//! The child is this very executable (`/proc/self/exe`) started with [`PROBE_ENV`] set: every
//! program that links epi-core answers a probe before its `main` runs, from a constructor in
//! `.init_array` ([`RUN_PROBE_IF_ASKED`]). A host therefore needs no helper binary, and its
//! probe loads plugins with the same epi build it will load them with.
//!
//! Invariant: the constructor does nothing but read one environment variable unless that
//! variable is set.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::LoadError;

/// Names the file a child process started by [`probe`] loads.
pub(crate) const PROBE_ENV: &str = "EPI_LOAD_PROBE_FILE";
/// Starts the child's one line of outcome on stdout (a plugin may print too).
pub(super) const OUTCOME_MARK: &str = "EPI-LOAD-PROBE-OUTCOME ";
/// The most of the child's stderr kept for the error message.
const MAX_STDERR: usize = 4096;

/// How long a probe may take before the file is refused as hanging.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a host does before opening a plugin file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadProbe {
    /// Load the file in a short-lived child process first (a few milliseconds per load): a
    /// file that crashes, exits or hangs there is refused and never opened in the host (the
    /// default).
    #[default]
    Child,
    /// Open files in the host directly: faster reloads, for hosts that trust every build
    /// they are given. A damaged file can then crash the host at load.
    Off,
}

/// Runs before `main` in every program that links epi-core; see the module docs.
#[used]
#[link_section = ".init_array"]
static RUN_PROBE_IF_ASKED: extern "C" fn() = run_probe_if_asked;

extern "C" fn run_probe_if_asked() {
    if std::env::var_os(super::probe_server::SERVER_ENV).is_some() {
        super::probe_server::serve();
    }
    let Some(file) = std::env::var_os(PROBE_ENV) else {
        return;
    };
    let outcome = std::panic::catch_unwind(|| load_here(Path::new(&file)))
        .unwrap_or_else(|_| Err("the probe itself panicked".into()));
    let line = serde_json::json!({ "loaded": outcome.is_ok(), "error": outcome.err() });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{OUTCOME_MARK}{line}");
    let _ = stdout.flush();
    // SAFETY: `_exit` ends the process at once; nothing runs after it, so no destructor of the
    // host program or of the probed library runs in this child.
    unsafe { libc::_exit(0) }
}

/// The child's side: the file's bytes checked, the library opened (its constructors run),
/// its entry found and checked, then closed (its finalisers run). No plugin code beyond
/// constructors and finalisers runs: `init` may touch the plugin's real state (its database,
/// its sockets), which a probe must leave alone.
pub(super) fn load_here(file: &Path) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|err| format!("{}: {err}", file.display()))?;
    super::elf::validate(&bytes)?;
    let entry = super::read_file_entry(file, &bytes).map_err(|err| err.to_string())?;
    // SAFETY: running the library's constructors in this throwaway process is the point of
    // the probe; the bytes passed the checks above.
    let library = unsafe {
        libloading::os::unix::Library::open(Some(file), libc::RTLD_NOW | libc::RTLD_LOCAL)
    }
    .map_err(|err| super::dl_reason(&err))?;
    let (_, library) = super::read_entry(file, library, &entry).map_err(|err| err.to_string())?;
    library.close().map_err(|err| super::dl_reason(&err))
}

/// How a registry probes: how long a probe may take.
pub(crate) struct ProbeSettings {
    pub(crate) timeout: Duration,
}

/// Opens `copy` (the private copy of `original`) in a child process; `Ok` when the child
/// finished, whatever its outcome (the host's own load then reports an ordinary refusal the
/// same way), an error when the child died, exited or hung.
pub(crate) fn probe(
    original: &Path,
    copy: &Path,
    entry: &super::image::FileEntry,
    settings: &ProbeSettings,
) -> Result<(), LoadError> {
    let timeout = settings.timeout;
    let failed = |reason: String| LoadError::ProbeFailed {
        path: original.to_owned(),
        reason,
    };
    if let Some(answer) = super::probe_server::probe(copy, entry, timeout) {
        return judge_answer(answer, timeout, failed);
    }
    let mut command = Command::new("/proc/self/exe");
    command
        .env(PROBE_ENV, copy)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        // No `/proc` (or no right to run this executable): probing is impossible here, not
        // the file's fault. Say so once per file and load without it.
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            tracing::warn!(
                file = %original.display(),
                "cannot start a probe process ({err}): loading without a probe"
            );
            return Ok(());
        }
        Err(err) => return Err(failed(format!("cannot start the probe process: {err}"))),
    };
    let stdout = child.stdout.take().map(|out| reader(out, usize::MAX));
    let stderr = child.stderr.take().map(|err| reader(err, MAX_STDERR));
    let deadline = Instant::now() + timeout;
    let exit = super::probe_server::exit_descriptor(child.id() as i32);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                super::probe_server::wait_for_exit(exit.as_ref(), deadline)
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "loading it did not finish within {} s (a constructor that hangs?)",
                    timeout.as_secs_f64()
                )));
            }
            Err(err) => return Err(failed(format!("cannot wait for the probe process: {err}"))),
        }
    };
    let stdout = stdout.and_then(|r| r.join().ok()).unwrap_or_default();
    let stderr = stderr.and_then(|r| r.join().ok()).unwrap_or_default();
    let reported = String::from_utf8_lossy(&stdout)
        .lines()
        .any(|line| line.starts_with(OUTCOME_MARK));
    if reported && status.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt;
    let what = match (status.signal(), status.code()) {
        (Some(signal), _) => format!(
            "loading it killed the probe process with {}",
            signal_name(signal)
        ),
        (None, Some(code)) => format!(
            "loading it ended the probe process with exit status {code} (the library exits?)"
        ),
        (None, None) => format!("the probe process ended with {status}"),
    };
    let stderr = String::from_utf8_lossy(&stderr);
    let last = stderr.trim().lines().last().unwrap_or("").trim().to_owned();
    Err(failed(if last.is_empty() {
        what
    } else {
        format!("{what}; its last words: {last}")
    }))
}

/// The verdict on a probe server's answer, worded as for a probe process of its own.
fn judge_answer(
    answer: super::probe_server::Answer,
    timeout: Duration,
    failed: impl Fn(String) -> LoadError,
) -> Result<(), LoadError> {
    if answer.hung {
        return Err(failed(format!(
            "loading it did not finish within {} s (a constructor that hangs?)",
            timeout.as_secs_f64()
        )));
    }
    if answer.outcome.is_some() && answer.code == Some(0) {
        return Ok(());
    }
    let what = match (answer.signal, answer.code) {
        (Some(signal), _) => format!(
            "loading it killed the probe process with {}",
            signal_name(signal)
        ),
        (None, Some(code)) => format!(
            "loading it ended the probe process with exit status {code} (the library exits?)"
        ),
        (None, None) => "the probe process ended in an unknown way".to_owned(),
    };
    let last = answer
        .stderr
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_owned();
    Err(failed(if last.is_empty() {
        what
    } else {
        format!("{what}; its last words: {last}")
    }))
}

/// Reads a pipe to its end on a thread of its own, keeping at most `limit` bytes.
fn reader(mut pipe: impl Read + Send + 'static, limit: usize) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = limit.saturating_sub(kept.len());
                    // Keep the end of stderr (the last words), the start of stdout.
                    if room >= n {
                        kept.extend_from_slice(&chunk[..n]);
                    } else if limit != usize::MAX {
                        kept.extend_from_slice(&chunk[..n]);
                        let excess = kept.len() - limit;
                        kept.drain(..excess);
                    }
                }
            }
        }
        kept
    })
}

/// The usual name of a fatal signal.
pub(crate) fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV (invalid memory access)",
        libc::SIGBUS => "SIGBUS (bad memory access)",
        libc::SIGILL => "SIGILL (illegal instruction)",
        libc::SIGFPE => "SIGFPE (arithmetic fault)",
        libc::SIGABRT => "SIGABRT (abort)",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS (bad system call)",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}
