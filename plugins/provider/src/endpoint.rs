//! One provider socket as a provider of an epi function: each call sends a request, reads the
//! acknowledgement on the same connection and waits for the response at the tracker.

use std::io::{self, BufReader};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use epi::HandlerError;
use epi_provider::wire::{peer_closed, read_frame, write_frame, FrameError, Request, Response};
use serde_json::{json, Value};

use crate::Core;

/// How often a waiting call checks that its provider is still there.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(100);
/// How often it connects to check a provider whose connection ended (one that closes its
/// connections after each acknowledgement).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// A provider process's socket for one task.
pub struct Endpoint {
    /// The socket.
    pub socket: PathBuf,
    /// The task (the socket's directory).
    pub task: String,
    /// The provider's name (from `PRIORITY-NAME.sock`).
    pub provider: String,
    /// The priority (from the file name).
    pub priority: i32,
    /// Set when the socket stopped accepting connections: discovery withdraws it.
    pub gone: AtomicBool,
    /// Calls made and calls that failed.
    pub calls: AtomicU64,
    /// Calls that failed.
    pub failures: AtomicU64,
    /// Idle connections, each acknowledged all it was sent (buffered: a frame is one read).
    idle: Mutex<Vec<Connection>>,
    core: Arc<Core>,
}

/// A connection to the provider's socket, reads buffered.
type Connection = BufReader<UnixStream>;

/// A failed exchange: either the provider is gone (skip it) or the call failed.
enum Trouble {
    Gone(String),
    Failed(String),
}

impl Endpoint {
    /// An endpoint for the socket at `socket`.
    pub fn new(
        core: Arc<Core>,
        socket: PathBuf,
        task: String,
        provider: String,
        priority: i32,
    ) -> Self {
        Endpoint {
            socket,
            task,
            provider,
            priority,
            gone: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            core,
        }
    }

    /// Runs the task with `args`: its result, or the error naming task, provider and socket.
    pub fn call(&self, args: Value) -> Result<Value, HandlerError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.exchange(args);
        if let Err(HandlerError::Failed(_)) = &result {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn exchange(&self, args: Value) -> Result<Value, HandlerError> {
        let timeout = self.core.config.timeout(&self.task);
        let id = self.core.next_request_id();
        let slot = self
            .core
            .tracker
            .expect(&id)
            .map_err(|reason| self.failed(&reason))?;
        let request = Request {
            id: id.clone(),
            task: self.task.clone(),
            response_hook: self.core.tracker.url().to_owned(),
            args,
            timeout_ms: Some(timeout.as_millis() as u64),
        };
        let body = serde_json::to_vec(&request).map_err(|err| {
            self.core.tracker.forget(&id);
            self.failed(&format!("cannot encode the request: {err}"))
        })?;
        let started = Instant::now();
        let (ack, mut connection) = match self.send(&body, &id, timeout) {
            Ok(sent) => sent,
            Err(trouble) => {
                self.core.tracker.forget(&id);
                return Err(match trouble {
                    Trouble::Gone(reason) => {
                        self.withdraw();
                        HandlerError::Absent(self.describe(&reason))
                    }
                    Trouble::Failed(reason) => self.failed(&reason),
                });
            }
        };
        if let Some(error) = ack.error {
            self.core.tracker.forget(&id);
            self.keep(connection);
            return Err(self.failed(&format!("refused request {id}: {error}")));
        }
        // Wait for the response; meanwhile notice a provider that dies (its connection ends
        // and its socket refuses connections).
        let mut closed = false;
        let mut last_probe = None;
        let answer = loop {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                self.core.tracker.forget(&id);
                return Err(self.failed(&format!(
                    "no response to request {id} within the timeout of {:?}",
                    timeout
                )));
            }
            if let Some(answer) = slot.wait(left.min(LIVENESS_INTERVAL)) {
                break answer;
            }
            if !closed {
                closed = connection
                    .as_ref()
                    .is_some_and(|c| !c.buffer().is_empty() || peer_closed(c.get_ref()));
                if closed {
                    connection = None;
                }
            }
            let probe_due = last_probe.is_none_or(|at: Instant| at.elapsed() >= PROBE_INTERVAL);
            if closed && probe_due && {
                last_probe = Some(Instant::now());
                UnixStream::connect(&self.socket).is_err()
            } {
                self.core.tracker.forget(&id);
                self.withdraw();
                return Err(self.failed(&format!("went away during request {id}")));
            }
        };
        self.core.tracker.forget(&id);
        if let Some(connection) = connection {
            self.keep(Some(connection));
        }
        let response = answer.map_err(|reason| self.failed(&reason))?;
        if let Some(error) = response.error {
            return Err(self.failed(&error));
        }
        let result = response.result.unwrap_or(Value::Null);
        Ok(match response.stream_url {
            Some(url) => json!({"result": result, "stream_url": url}),
            None => result,
        })
    }

    /// Sends a request frame and reads its acknowledgement, on an idle connection when there
    /// is one (a connection the provider closed since is replaced once: it acknowledged
    /// nothing, so nothing ran).
    fn send(
        &self,
        body: &[u8],
        request_id: &str,
        timeout: Duration,
    ) -> Result<(Response, Option<Connection>), Trouble> {
        loop {
            let reused = self.idle.lock().unwrap().pop();
            let was_reused = reused.is_some();
            let mut connection = match reused {
                Some(connection) => connection,
                None => {
                    let connection = self.connect()?;
                    // The task's timeout bounds every wait for an acknowledgement on it, and
                    // every write.
                    let _ = connection.set_read_timeout(Some(timeout));
                    let _ = connection.set_write_timeout(Some(timeout));
                    BufReader::new(connection)
                }
            };
            if let Err(err) = write_frame(connection.get_mut(), body) {
                if was_reused {
                    continue;
                }
                return Err(Trouble::Failed(format!("cannot send the request: {err}")));
            }
            match read_frame(&mut connection, self.core.config.max_frame) {
                Ok(Some(frame)) => {
                    let ack = Response::parse(&frame).map_err(|(_, reason)| {
                        Trouble::Failed(format!("sent a bad acknowledgement: {reason}"))
                    })?;
                    if !ack.id.is_empty() && ack.id != request_id {
                        return Err(Trouble::Failed(format!(
                            "acknowledged request {} instead of {request_id}",
                            ack.id
                        )));
                    }
                    return Ok((ack, Some(connection)));
                }
                Ok(None) if was_reused => continue,
                Ok(None) => {
                    // A provider stopping between our connect and its accept closes without a
                    // word: nothing ran, and if its socket now refuses, it is gone.
                    if let Err(Trouble::Gone(reason)) = self.connect() {
                        return Err(Trouble::Gone(reason));
                    }
                    return Err(Trouble::Failed(
                        "closed the connection without acknowledging the request".into(),
                    ));
                }
                Err(FrameError::Io(err))
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Trouble::Failed(format!(
                        "did not acknowledge the request within {timeout:?}"
                    )))
                }
                Err(err) if was_reused && matches!(err, FrameError::Io(_)) => continue,
                Err(err) => {
                    return Err(Trouble::Failed(format!(
                        "sent a bad acknowledgement frame: {err}"
                    )))
                }
            }
        }
    }

    fn connect(&self) -> Result<UnixStream, Trouble> {
        UnixStream::connect(&self.socket).map_err(|err| match err.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => {
                Trouble::Gone(format!("its socket refuses connections ({err})"))
            }
            _ => Trouble::Failed(format!("cannot connect: {err}")),
        })
    }

    /// Keeps a connection for the next call (one the provider closed since is noticed and
    /// replaced when it is next used: see [`Endpoint::send`]).
    fn keep(&self, connection: Option<Connection>) {
        if let Some(connection) = connection {
            if connection.buffer().is_empty() {
                self.idle.lock().unwrap().push(connection);
            }
        }
    }

    /// Marks the socket gone and asks discovery to withdraw it.
    fn withdraw(&self) {
        self.gone.store(true, Ordering::Release);
        self.idle.lock().unwrap().clear();
        self.core.wake_discovery();
    }

    fn describe(&self, reason: &str) -> String {
        format!(
            "provider {} of task {} at {}: {reason}",
            self.provider,
            self.task,
            self.socket.display()
        )
    }

    fn failed(&self, reason: &str) -> HandlerError {
        HandlerError::Failed(self.describe(reason))
    }
}
