//! A probe server: one long-lived child process that probes files for the host, forking a
//! throwaway process per file.
//!
//! Starting a probe process costs an `exec` of the host's executable (its mapping, its dynamic
//! linking, its constructors), about 3.5 ms on the CI machine: more than the rest of a reload.
//! The server is that executable started once with [`SERVER_ENV`] set; from its `.init_array`
//! constructor (before `main`, so with no other thread) it reads one request per line on
//! stdin, and for each `fork`s a copy of itself that opens and closes the file (as
//! [`super::probe`]'s child does) with its stdout and stderr on pipes. The server waits for that
//! copy (killing it when the timeout passes), and answers one line of JSON: the copy's
//! outcome, how it ended, the end of its stderr. A crash kills the copy, never the server.
//!
//! Invariants: the server forks only while it has a single thread (it runs before `main` and
//! starts none); the forked copy writes with `write(2)` only and leaves with `_exit`; the
//! server leaves when its stdin closes, so it never outlives its host.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::image::FileEntry;
use super::probe::OUTCOME_MARK;

/// Asks the host's executable, started with it, to serve probes (see the module docs).
pub(crate) const SERVER_ENV: &str = "EPI_LOAD_PROBE_SERVER";

/// The most of a probed copy's stderr kept.
const MAX_STDERR: usize = 4096;

/// One request: the file to probe, where the host found its entry descriptor and `init`
/// (so that the copy needs not read and parse the file again: the host did), and how long it
/// may take.
#[derive(Serialize, Deserialize)]
struct Request {
    path: PathBuf,
    vaddr: u64,
    init: u64,
    timeout_ms: u64,
}

/// One answer.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Answer {
    /// The copy's line (`{"loaded": .., "error": ..}`), when it wrote one.
    pub(crate) outcome: Option<serde_json::Value>,
    /// The signal that ended the copy.
    pub(crate) signal: Option<i32>,
    /// The copy's exit status, when it exited.
    pub(crate) code: Option<i32>,
    /// Whether it was killed for taking longer than the timeout.
    pub(crate) hung: bool,
    /// The end of what it wrote on stderr.
    pub(crate) stderr: String,
}

/// The server's loop; never returns.
pub(crate) fn serve() -> ! {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let Ok(request) = serde_json::from_str::<Request>(&line) else {
            continue;
        };
        let answer = probe_forked(&request, Duration::from_millis(request.timeout_ms));
        let text = serde_json::to_string(&answer).unwrap_or_default();
        if writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    // SAFETY: `_exit` ends the process at once, running no destructor of the host program.
    unsafe { libc::_exit(0) }
}

/// A pipe's two ends, closed on `exec`.
fn pipe() -> Option<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `pipe2` writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes all of `bytes` to `fd` with `write(2)`.
fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes initialised bytes of a live slice.
        let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if written <= 0 {
            return;
        }
        bytes = &bytes[written as usize..];
    }
}

/// Probes the request's file in a forked copy of this (single-threaded) process.
fn probe_forked(request: &Request, timeout: Duration) -> Answer {
    let failed = |message: &str| Answer {
        outcome: None,
        signal: None,
        code: None,
        hung: false,
        stderr: message.to_owned(),
    };
    let (Some((out_read, out_write)), Some((err_read, err_write))) = (pipe(), pipe()) else {
        return failed("the probe server cannot make a pipe");
    };
    // SAFETY: this process has one thread (the server runs before `main` and starts none), so
    // the copy may run any code; it leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return failed("the probe server cannot fork");
    }
    if pid == 0 {
        // SAFETY: duplicates live descriptors onto stdout and stderr of this copy.
        unsafe {
            libc::dup2(out_write.as_raw_fd(), 1);
            libc::dup2(err_write.as_raw_fd(), 2);
        }
        let outcome =
            std::panic::catch_unwind(|| open_and_close(&request.path, request.vaddr, request.init))
                .unwrap_or_else(|_| Err("the probe itself panicked".into()));
        let line = serde_json::json!({ "loaded": outcome.is_ok(), "error": outcome.err() });
        write_all(1, format!("{OUTCOME_MARK}{line}\n").as_bytes());
        // SAFETY: leaves at once; no destructor of the host program or the library runs.
        unsafe { libc::_exit(0) }
    }
    drop(out_write);
    drop(err_write);
    collect(pid, out_read, err_read, timeout)
}

/// A descriptor that becomes readable when the child `pid` ends (`pidfd_open`, Linux 5.3 and
/// later); `None` where the kernel has none.
pub(super) fn exit_descriptor(pid: i32) -> Option<OwnedFd> {
    // SAFETY: `pidfd_open` takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative result is a descriptor just opened for this process alone.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Milliseconds from now until `deadline`, rounded up, for `poll`.
fn millis_until(deadline: Instant) -> i32 {
    let left = deadline.saturating_duration_since(Instant::now());
    i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
}

/// Sleeps until the child whose [`exit_descriptor`] is `exit` ends or `deadline` passes;
/// without a descriptor, for a millisecond at most.
pub(super) fn wait_for_exit(exit: Option<&OwnedFd>, deadline: Instant) {
    let mut polled = [libc::pollfd {
        fd: exit.map_or(-1, |fd| fd.as_raw_fd()),
        events: libc::POLLIN,
        revents: 0,
    }];
    let wait = match exit {
        Some(_) => millis_until(deadline),
        None => millis_until(deadline).min(1),
    };
    // SAFETY: polls a live array of one entry; a negative descriptor is ignored (only sleeps).
    unsafe { libc::poll(polled.as_mut_ptr(), 1, wait) };
}

/// Reads the copy's pipes and waits for it, killing it after `timeout`.
///
/// It sleeps in `poll` until a pipe has data or closes, or the copy ends (its pidfd), or the
/// deadline passes: never in fixed steps, and never spinning while the copy finishes exiting
/// (on a busy machine a spinning server took the core the copy needed to end).
fn collect(pid: i32, out: OwnedFd, err: OwnedFd, timeout: Duration) -> Answer {
    let deadline = Instant::now() + timeout;
    let exit = exit_descriptor(pid);
    // stdout, then stderr: each pipe while open, and what it gave.
    let mut pipes = [(Some(out), Vec::new()), (Some(err), Vec::new())];
    let mut status = None;
    // Once the copy ended: until when the pipes are still read (a library may leave a process
    // of its own holding them).
    let mut grace: Option<Instant> = None;
    let mut hung = false;
    loop {
        let mut polled: Vec<libc::pollfd> = pipes
            .iter()
            .filter_map(|(fd, _)| fd.as_ref())
            .chain(exit.as_ref().filter(|_| status.is_none()))
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let wait = match (grace, &exit) {
            (Some(until), _) => millis_until(until),
            (None, Some(_)) => millis_until(deadline),
            // No pidfd: look at the copy again every millisecond.
            (None, None) => millis_until(deadline).min(1),
        };
        // SAFETY: polls live descriptors listed in a live array (an empty one only sleeps).
        unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, wait) };
        for (slot, kept) in pipes.iter_mut() {
            let Some(fd) = slot.as_ref() else { continue };
            let raw = fd.as_raw_fd();
            if !polled.iter().any(|p| p.fd == raw && p.revents != 0) {
                continue;
            }
            let mut chunk = [0u8; 8192];
            // SAFETY: reads into a live buffer from a descriptor poll found ready.
            let read = unsafe { libc::read(raw, chunk.as_mut_ptr().cast(), chunk.len()) };
            if read <= 0 {
                *slot = None;
            } else {
                kept.extend_from_slice(&chunk[..read as usize]);
                if kept.len() > 4 * MAX_STDERR {
                    let excess = kept.len() - 4 * MAX_STDERR;
                    kept.drain(..excess);
                }
            }
        }
        if status.is_none() {
            let mut raw = 0;
            // SAFETY: asks about our own child without blocking.
            if unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) } == pid {
                status = Some(raw);
                grace = Some(Instant::now() + Duration::from_millis(50));
            }
        }
        let drained = pipes.iter().all(|(fd, _)| fd.is_none());
        let grace_over = grace.is_some_and(|until| Instant::now() >= until);
        if status.is_some() && (drained || grace_over) {
            break;
        }
        if status.is_none() && Instant::now() >= deadline {
            let mut raw = 0;
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut raw, 0);
            }
            hung = true;
            break;
        }
    }
    let [(_, stdout), (_, stderr)] = pipes;
    let raw = status.unwrap_or(0);
    let outcome = String::from_utf8_lossy(&stdout)
        .lines()
        .find_map(|line| line.strip_prefix(OUTCOME_MARK).map(str::to_owned))
        .and_then(|json| serde_json::from_str(&json).ok());
    let mut kept = String::from_utf8_lossy(&stderr).into_owned();
    if kept.len() > MAX_STDERR {
        let mut cut = kept.len() - MAX_STDERR;
        while !kept.is_char_boundary(cut) {
            cut += 1;
        }
        kept.drain(..cut);
    }
    Answer {
        outcome,
        signal: (!hung && libc::WIFSIGNALED(raw)).then(|| libc::WTERMSIG(raw)),
        code: (!hung && libc::WIFEXITED(raw)).then(|| libc::WEXITSTATUS(raw)),
        hung,
        stderr: kept,
    }
}

/// Opens the library (its constructors run), checks that the mapped entry descriptor is the
/// one the host read from the file, and closes it (its finalisers run).
fn open_and_close(path: &Path, vaddr: u64, init: u64) -> Result<(), String> {
    let entry = super::image::FileEntry {
        vaddr,
        magic: [0; 8],
        abi_major: 0,
        panic_unwind: 0,
        target: String::new(),
        epi_version: String::new(),
        build_info: String::new(),
        init,
    };
    // SAFETY: running the library's constructors in this throwaway process is the point of
    // the probe; the host checked the bytes before asking.
    let library = unsafe {
        libloading::os::unix::Library::open(Some(path), libc::RTLD_NOW | libc::RTLD_LOCAL)
    }
    .map_err(|err| super::dl_reason(&err))?;
    let (_, library) = super::read_entry(path, library, &entry).map_err(|err| err.to_string())?;
    library.close().map_err(|err| super::dl_reason(&err))
}

/// The host's end: the running server, started on first use.
struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static SERVER: parking_lot::Mutex<Option<Server>> = parking_lot::Mutex::new(None);

/// Probes `copy` through the server; `None` when no server can run here (the caller then
/// starts a probe process of its own).
pub(crate) fn probe(copy: &Path, entry: &FileEntry, timeout: Duration) -> Option<Answer> {
    let mut server = SERVER.lock();
    for _attempt in 0..2 {
        if server.is_none() {
            *server = start();
        }
        let running = server.as_mut()?;
        match ask(running, copy, entry, timeout) {
            Some(answer) => return Some(answer),
            // The server died (or answered nonsense): start a new one and ask again once.
            None => *server = None,
        }
    }
    None
}

fn start() -> Option<Server> {
    let mut child = Command::new("/proc/self/exe")
        .env(SERVER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdin = child.stdin.take()?;
    let stdout = BufReader::new(child.stdout.take()?);
    Some(Server {
        child,
        stdin,
        stdout,
    })
}

fn ask(server: &mut Server, copy: &Path, entry: &FileEntry, timeout: Duration) -> Option<Answer> {
    let request = serde_json::to_string(&Request {
        path: copy.to_owned(),
        vaddr: entry.vaddr,
        init: entry.init,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    })
    .ok()?;
    writeln!(server.stdin, "{request}").ok()?;
    server.stdin.flush().ok()?;
    let mut line = String::new();
    if server.stdout.read_line(&mut line).ok()? == 0 {
        return None;
    }
    serde_json::from_str(&line).ok()
}
