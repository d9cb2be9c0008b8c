//! The host's side of an isolated plugin: the plugin-host child it runs, the connections calls
//! go through, and the entry points that make the child's providers look like any other.
//!
//! Invariants: a call never waits for a restart (a plugin that is down fails the call at once,
//! naming itself); the child is killed and reaped when the last holder of its [`Link`] lets go;
//! nothing here runs plugin code.

use std::ffi::c_void;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use super::child::{Hello, CONFIG_ENV, READY_LINE};
use super::wire;
use super::PluginHostCommand;
use crate::abi::{RVec, StrRef, STATUS_FAILED, STATUS_OK};
use crate::engine::{WorkerContext, WorkerError};

/// How long a caller spins for a reply before it sleeps (see [`wire::spin_until_readable`]).
const CALLER_SPIN: Duration = Duration::from_micros(50);

/// The most of a child's stderr kept for an error message.
const STDERR_TAIL: usize = 4096;

/// One running plugin-host child.
struct Link {
    child: Mutex<Child>,
    /// Held so the child's stdin stays open: it leaves when this closes.
    _stdin: Option<ChildStdin>,
    socket: PathBuf,
    /// Connections with no request in flight.
    idle: Mutex<Vec<UnixStream>>,
    /// The end of what the child wrote on stderr.
    stderr_tail: Arc<Mutex<String>>,
    pid: u32,
    /// How long a request may wait for its reply.
    call_timeout: Duration,
}

impl Link {
    /// How the child ended, if it did.
    fn exited(&self) -> Option<ExitStatus> {
        self.child.lock().try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the child to end (a broken connection usually means it is
    /// dying): how it ended, if it did.
    fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if started.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// One request and its reply on an idle connection (or a new one).
    fn request(&self, kind: u8, header: &[u32], body: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
        let idle = self.idle.lock().pop();
        let mut stream = match idle {
            Some(stream) => stream,
            None => {
                let stream = UnixStream::connect(&self.socket)?;
                stream.set_read_timeout(Some(self.call_timeout))?;
                stream
            }
        };
        wire::write_request(&mut stream, kind, header, body)?;
        wire::spin_until_readable(&stream, CALLER_SPIN);
        let reply = wire::read_reply(&mut stream)?;
        self.idle.lock().push(stream);
        Ok(reply)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// An isolated plugin version: what starting its child takes, and the child running now.
pub(crate) struct Isolated {
    /// The plugin's app name (empty until the first child said it).
    app: String,
    /// The file the operator installed.
    file: PathBuf,
    /// The private copy the children load (kept until this version goes).
    copy: PathBuf,
    socket: PathBuf,
    config: String,
    command: PluginHostCommand,
    start_timeout: Duration,
    call_timeout: Duration,
    link: ArcSwapOption<Link>,
    /// Serialises (re)starts.
    starting: Mutex<()>,
}

impl Drop for Isolated {
    fn drop(&mut self) {
        // The child goes with the last call holding its link.
        self.link.store(None);
        let _ = std::fs::remove_file(&self.copy);
    }
}

/// What [`Isolated::start`] learned from the first child.
pub(crate) struct Started {
    pub(crate) isolated: Arc<Isolated>,
    pub(crate) hello: Hello,
}

impl Isolated {
    /// Starts the first child for `copy` (of `file`) and asks it what it loaded.
    pub(crate) fn start(
        file: &Path,
        copy: PathBuf,
        socket: PathBuf,
        config: String,
        command: PluginHostCommand,
        start_timeout: Duration,
        call_timeout: Duration,
    ) -> Result<Started, String> {
        let mut isolated = Isolated {
            app: String::new(),
            file: file.to_owned(),
            copy,
            socket,
            config,
            command,
            start_timeout,
            call_timeout,
            link: ArcSwapOption::empty(),
            starting: Mutex::new(()),
        };
        let (link, hello) = isolated.spawn_and_greet()?;
        isolated.app = hello.manifest.app.clone();
        isolated.link.store(Some(Arc::new(link)));
        tracing::info!(
            app = %isolated.app,
            file = %file.display(),
            pid = hello.pid,
            "isolated plugin started in its own process"
        );
        Ok(Started {
            isolated: Arc::new(isolated),
            hello,
        })
    }

    /// Runs a plugin-host child and asks it what it loaded.
    fn spawn_and_greet(&self) -> Result<(Link, Hello), String> {
        let link = self.spawn()?;
        let (status, body) = link
            .request(wire::HELLO, &[], &[])
            .map_err(|err| self.describe_failure(&link, "said nothing", &err))?;
        if status != STATUS_OK {
            return Err(format!(
                "the plugin host refused to describe the plugin: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let hello = serde_json::from_slice(&body)
            .map_err(|err| format!("the plugin host's description is unreadable: {err}"))?;
        Ok((link, hello))
    }

    /// Runs a plugin-host child and waits until it listens.
    fn spawn(&self) -> Result<Link, String> {
        let _ = std::fs::remove_file(&self.socket);
        let mut command = Command::new(&self.command.program);
        command
            .args(&self.command.args)
            .arg(&self.copy)
            .arg(&self.socket)
            .env(CONFIG_ENV, &self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|err| {
            format!(
                "cannot start the plugin host `{}`: {err}",
                self.command.program.display()
            )
        })?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            forward_stderr(stderr, stderr_tail.clone());
        }
        let (ready, listening) = std::sync::mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            let app = self.app.clone();
            let spawned = std::thread::Builder::new()
                .name("epi-plugin-host-out".into())
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if line == READY_LINE {
                            let _ = ready.send(());
                        } else {
                            tracing::info!(app = %app, pid, "{line}");
                        }
                    }
                });
            if let Err(err) = spawned {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("cannot start a thread: {err}"));
            }
        }
        let link = Link {
            child: Mutex::new(child),
            _stdin: stdin,
            socket: self.socket.clone(),
            idle: Mutex::new(Vec::new()),
            stderr_tail,
            pid,
            call_timeout: self.call_timeout,
        };
        match listening.recv_timeout(self.start_timeout) {
            Ok(()) => Ok(link),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "the plugin host did not start within {:?}",
                self.start_timeout
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = link.wait_exit(Duration::from_secs(5));
                Err(self.ended(&link, status, "before it was ready"))
            }
        }
    }

    /// Text for a child that ended (or is ending): how, and what it said last.
    fn ended(&self, link: &Link, status: Option<ExitStatus>, when: &str) -> String {
        let how = match status {
            Some(status) => format!("ended ({status})"),
            None => "stopped answering".to_owned(),
        };
        let said = link.stderr_tail.lock().trim().to_owned();
        if said.is_empty() {
            format!("the plugin host {how} {when}")
        } else {
            format!("the plugin host {how} {when}: {said}")
        }
    }

    /// Text for a request that failed on `link`.
    fn describe_failure(&self, link: &Link, when: &str, err: &std::io::Error) -> String {
        match link.wait_exit(Duration::from_secs(1)) {
            Some(status) => self.ended(link, Some(status), "during the call"),
            None => format!("the plugin host {when}: {err}"),
        }
    }

    /// The message of a call that could not reach the plugin.
    fn unreachable(&self, reason: &str) -> String {
        format!(
            "isolated plugin `{}` ({}): {reason}",
            self.app,
            self.file.display()
        )
    }

    /// One request to the running child: its status and payload, or why it got none.
    pub(crate) fn request(
        &self,
        kind: u8,
        header: &[u32],
        body: &[u8],
    ) -> Result<(u32, Vec<u8>), String> {
        let Some(link) = self.link.load_full() else {
            return Err(self.unreachable("not running (being restarted)"));
        };
        link.request(kind, header, body).map_err(|err| {
            let reason = if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                // The connection is dropped with its late reply; the child keeps serving.
                format!("did not answer within {:?}", self.call_timeout)
            } else {
                self.describe_failure(&link, "broke the connection", &err)
            };
            self.unreachable(&reason)
        })
    }

    /// A request whose reply is JSON text or an error message.
    pub(crate) fn request_json(
        &self,
        kind: u8,
        header: &[u32],
        body: &[u8],
    ) -> Result<Vec<u8>, String> {
        let (status, reply) = self.request(kind, header, body)?;
        if status == STATUS_OK {
            Ok(reply)
        } else {
            Err(String::from_utf8_lossy(&reply).into_owned())
        }
    }

    /// Makes sure a child runs (the engine's start of the supervising process): adopts the
    /// running one, or starts a new one.
    pub(crate) fn ensure_running(&self) -> Result<(), WorkerError> {
        let _starting = self.starting.lock();
        if let Some(link) = self.link.load_full() {
            if link.exited().is_none() {
                return Ok(());
            }
            self.link.store(None);
        }
        let (link, hello) = self.spawn_and_greet().map_err(WorkerError::Failed)?;
        if hello.manifest.app != self.app {
            return Err(WorkerError::Fatal(format!(
                "the restarted plugin host loaded `{}` instead of `{}`",
                hello.manifest.app, self.app
            )));
        }
        tracing::info!(app = %self.app, pid = hello.pid, "isolated plugin restarted");
        self.link.store(Some(Arc::new(link)));
        Ok(())
    }

    /// Watches the running child until the engine stops the process (`Ok`) or the child ends
    /// (an error, so the engine restarts it after its back-off).
    pub(crate) fn watch(&self, context: &WorkerContext) -> Result<(), WorkerError> {
        loop {
            let Some(link) = self.link.load_full() else {
                return Err(WorkerError::Failed(self.unreachable("not running")));
            };
            context.set_report(serde_json::json!({ "pid": link.pid }));
            if let Some(status) = link.exited() {
                // Only this link: a restart may already have replaced it.
                let current = self.link.load();
                if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &link)) {
                    self.link.store(None);
                }
                let reason = self.ended(&link, Some(status), "");
                tracing::error!(app = %self.app, file = %self.file.display(), "{reason}");
                return Err(WorkerError::Failed(reason.trim_end().to_owned()));
            }
            if context.wait_stop(Duration::from_millis(20)) {
                return Ok(());
            }
        }
    }
}

/// Copies a child's stderr to the host's, keeping its end for error messages.
fn forward_stderr(mut stderr: impl Read + Send + 'static, tail: Arc<Mutex<String>>) {
    let spawned = std::thread::Builder::new()
        .name("epi-plugin-host-err".into())
        .spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                let count = match stderr.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(count) => count,
                };
                let chunk = &buffer[..count];
                use std::io::Write;
                let _ = std::io::stderr().write_all(chunk);
                let mut kept = tail.lock();
                kept.push_str(&String::from_utf8_lossy(chunk));
                if kept.len() > STDERR_TAIL {
                    let mut cut = kept.len() - STDERR_TAIL;
                    while !kept.is_char_boundary(cut) {
                        cut += 1;
                    }
                    kept.drain(..cut);
                }
            }
        });
    if let Err(err) = spawned {
        tracing::warn!("cannot forward a plugin host's stderr: {err}");
    }
}

/// The object behind an isolated provider's entries: one record per function.
pub(crate) struct BridgeProvider {
    functions: Vec<BridgeFunction>,
}

/// One function of an isolated provider, as its entry points receive it.
struct BridgeFunction {
    isolated: Arc<Isolated>,
    provider: u32,
    function: u32,
}

impl BridgeProvider {
    /// The provider at `provider` in the child's list, with `count` functions.
    pub(crate) fn new(isolated: &Arc<Isolated>, provider: usize, count: usize) -> Box<Self> {
        Box::new(BridgeProvider {
            functions: (0..count)
                .map(|function| BridgeFunction {
                    isolated: isolated.clone(),
                    provider: provider as u32,
                    function: function as u32,
                })
                .collect(),
        })
    }

    /// The instance pointer of function `index` (stable: the records never move).
    pub(crate) fn function_instance(&self, index: usize) -> *const c_void {
        &self.functions[index] as *const BridgeFunction as *const c_void
    }
}

/// Releases a [`BridgeProvider`].
///
/// # Safety
/// `instance` came from `Box::<BridgeProvider>::into_raw` and is released once.
pub(crate) unsafe extern "C" fn drop_bridge(instance: *mut c_void) {
    // SAFETY: the caller's contract.
    drop(unsafe { Box::from_raw(instance as *mut BridgeProvider) });
}

/// The stable entry point of every isolated function: the call goes to the child.
///
/// # Safety
/// `instance` is a `BridgeFunction` of a live [`BridgeProvider`]; `input` live bytes;
/// `output` and `error` live buffers of the host's.
pub(crate) unsafe extern "C" fn bridge_call(
    instance: *const c_void,
    encoding: u32,
    input: StrRef,
    output: *mut RVec<u8>,
    error: *mut RVec<u8>,
    _scratch: *mut crate::abi::ArgsScratch,
) -> u32 {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the caller's contract.
        let function = unsafe { &*(instance as *const BridgeFunction) };
        // SAFETY: the caller's contract.
        let input = unsafe { input.as_bytes() };
        function.isolated.request(
            wire::CALL,
            // Without flags: the child's answer crosses as bytes and is re-read here.
            &[
                function.provider,
                function.function,
                encoding & crate::abi::ENCODING_MASK,
            ],
            input,
        )
    }));
    let (status, bytes) = match outcome {
        Ok(Ok(reply)) => reply,
        Ok(Err(message)) => (STATUS_FAILED, message.into_bytes()),
        Err(_) => (STATUS_FAILED, b"the isolation bridge panicked".to_vec()),
    };
    let slot = if status == STATUS_OK { output } else { error };
    // SAFETY: the caller's contract: `slot` is a live buffer of the host's heap.
    unsafe { crate::host_calls::put(slot, bytes) };
    status
}
