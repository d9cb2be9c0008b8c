//! A framework for provider processes: register task handlers, serve each task on its socket
//! (`SOCKET_DIR/TASK/PRIORITY-SERVICE.sock`), acknowledge requests, send responses to their
//! hooks, serve byte streams, and remove the sockets when stopped.
//!
//! ```no_run
//! use epi_provider::server::{Config, Reply, Server};
//!
//! let mut server = Server::new(Config::new("echoer")).unwrap();
//! server.register_task("echo", |request| Ok(Reply::value(&request.args))).unwrap();
//! server.start().unwrap().stop_on_signal();
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::{
    self, check_task_name, peer_closed, read_frame, socket_name, unix_url, unix_url_path,
    write_json, Request, Response, DEFAULT_MAX_FRAME, DEFAULT_PRIORITY, RESERVED_PREFIX,
};

/// What a provider process is configured with (JSON, e.g. from a file; unknown keys are
/// errors).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The provider's name: the `NAME` in each socket's `PRIORITY-NAME.sock`. Required.
    pub service_name: String,
    /// Where task sockets go (default: [`wire::default_socket_dir`]).
    #[serde(default)]
    pub socket_dir: Option<PathBuf>,
    /// The priority of tasks configured without one (default 50; higher runs first).
    #[serde(default = "default_priority")]
    pub default_priority: i32,
    /// Per-task settings.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskConfig>,
    /// The largest request frame accepted, in bytes (default 16 MiB).
    #[serde(default = "default_max_frame")]
    pub max_frame: usize,
}

/// One task's settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Its priority (default: [`Config::default_priority`]).
    #[serde(default)]
    pub priority: Option<i32>,
    /// Seconds the handler may take: a result that comes later is replaced by a timeout
    /// error (0 or absent: no limit of its own).
    #[serde(default)]
    pub timeout: Option<u64>,
}

fn default_priority() -> i32 {
    DEFAULT_PRIORITY
}

fn default_max_frame() -> usize {
    DEFAULT_MAX_FRAME
}

impl Config {
    /// A configuration with defaults for everything but the name.
    pub fn new(service_name: impl Into<String>) -> Self {
        Config {
            service_name: service_name.into(),
            socket_dir: None,
            default_priority: DEFAULT_PRIORITY,
            tasks: BTreeMap::new(),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// Reads a configuration from JSON; errors name the key.
    pub fn from_json(value: Value) -> Result<Self, ServerError> {
        let config: Config =
            serde_json::from_value(value).map_err(|err| ServerError::Config(err.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a configuration file (JSON).
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read(path)
            .map_err(|err| ServerError::Config(format!("cannot read {}: {err}", path.display())))?;
        let value = serde_json::from_slice(&text)
            .map_err(|err| ServerError::Config(format!("{}: {err}", path.display())))?;
        Self::from_json(value).map_err(|err| match err {
            ServerError::Config(reason) => {
                ServerError::Config(format!("{}: {reason}", path.display()))
            }
            other => other,
        })
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ServerError> {
        let name = &self.service_name;
        if name.is_empty() || name.contains('/') || name.starts_with(RESERVED_PREFIX) {
            return Err(ServerError::Config(format!(
                "`service_name` {name:?} must be a non-empty file name not starting with '.'"
            )));
        }
        if self.max_frame == 0 {
            return Err(ServerError::Config("`max_frame` must be above 0".into()));
        }
        if self.default_priority < 0 {
            return Err(ServerError::Config(format!(
                "`default_priority` {} must be 0 or more (it is the number in PRIORITY-NAME.sock)",
                self.default_priority
            )));
        }
        for (task, settings) in &self.tasks {
            check_task_name(task)
                .map_err(|reason| ServerError::Config(format!("`tasks.{task}`: {reason}")))?;
            if settings.priority.is_some_and(|p| p < 0) {
                return Err(ServerError::Config(format!(
                    "`tasks.{task}.priority` must be 0 or more"
                )));
            }
        }
        Ok(())
    }

    /// The socket directory in use.
    pub fn socket_dir(&self) -> PathBuf {
        self.socket_dir
            .clone()
            .unwrap_or_else(wire::default_socket_dir)
    }

    /// A task's priority.
    pub fn priority(&self, task: &str) -> i32 {
        self.tasks
            .get(task)
            .and_then(|t| t.priority)
            .unwrap_or(self.default_priority)
    }

    /// A task's own time limit, if any.
    pub fn timeout(&self, task: &str) -> Option<Duration> {
        self.tasks
            .get(task)
            .and_then(|t| t.timeout)
            .filter(|&seconds| seconds > 0)
            .map(Duration::from_secs)
    }
}

/// Why a provider process could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A bad configuration value.
    #[error("provider configuration: {0}")]
    Config(String),
    /// A task registered twice or with a bad name.
    #[error("task {task:?}: {reason}")]
    Task {
        /// The task.
        task: String,
        /// What is wrong.
        reason: String,
    },
    /// A socket or directory could not be set up.
    #[error("{path}: {reason}")]
    Socket {
        /// The path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// A task handler's answer: a result value, a byte stream, or both.
pub struct Reply {
    result: Value,
    stream: Option<Box<dyn Read + Send>>,
}

impl Reply {
    /// A result value.
    pub fn value(value: impl Serialize) -> Self {
        Reply {
            result: serde_json::to_value(value).unwrap_or_else(|err| {
                Value::String(format!("(the result could not be encoded: {err})"))
            }),
            stream: None,
        }
    }

    /// A byte stream the caller reads once (through `stream_url`), with a `null` result.
    pub fn stream(reader: impl Read + Send + 'static) -> Self {
        Reply {
            result: Value::Null,
            stream: Some(Box::new(reader)),
        }
    }

    /// Sets the result that goes with a stream.
    pub fn with_result(mut self, value: impl Serialize) -> Self {
        self.result = Reply::value(value).result;
        self
    }
}

/// A task handler: the request in, a reply or an error message out.
pub type Handler = dyn Fn(&Request) -> Result<Reply, String> + Send + Sync;

/// A provider process's tasks, before they are served.
pub struct Server {
    config: Config,
    tasks: BTreeMap<String, Arc<Handler>>,
}

impl Server {
    /// A server for `config` (checked here).
    pub fn new(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        Ok(Server {
            config,
            tasks: BTreeMap::new(),
        })
    }

    /// Registers `handler` for `task`.
    pub fn register_task(
        &mut self,
        task: &str,
        handler: impl Fn(&Request) -> Result<Reply, String> + Send + Sync + 'static,
    ) -> Result<(), ServerError> {
        check_task_name(task).map_err(|reason| ServerError::Task {
            task: task.into(),
            reason,
        })?;
        if self.tasks.contains_key(task) {
            return Err(ServerError::Task {
                task: task.into(),
                reason: "registered twice".into(),
            });
        }
        self.tasks.insert(task.to_owned(), Arc::new(handler));
        Ok(())
    }

    /// The registered task names.
    pub fn registered_tasks(&self) -> Vec<&str> {
        self.tasks.keys().map(String::as_str).collect()
    }

    /// Creates every task's socket and starts serving.
    pub fn start(self) -> Result<Running, ServerError> {
        let socket_dir = self.config.socket_dir();
        let dir_mode = prepare_dir(&socket_dir, 0o700)?;
        // Task directories are shared the way the socket directory is (its group bits).
        let shared_mode = dir_mode & 0o770;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            max_frame: self.config.max_frame,
            hooks: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            stream_dir: socket_dir.join(".streams"),
            next_stream: AtomicU64::new(0),
            shared_mode,
            provider: self.config.service_name.clone(),
        });
        let mut running = Running {
            shared,
            listeners: Vec::new(),
        };
        for (task, handler) in self.tasks {
            let dir = socket_dir.join(&task);
            prepare_dir(&dir, shared_mode | 0o700)?;
            let path = dir.join(socket_name(
                self.config.priority(&task),
                &self.config.service_name,
            ));
            let listener = bind(&path, shared_mode & 0o660 | 0o600)?;
            let timeout = self.config.timeout(&task);
            let shared = running.shared.clone();
            let accept_path = path.clone();
            let thread = std::thread::Builder::new()
                .name(format!("epi-provider {task}"))
                .spawn(move || accept_loop(listener, shared, task, handler, timeout))
                .map_err(|err| ServerError::Socket {
                    path: accept_path,
                    reason: format!("cannot start its thread: {err}"),
                })?;
            running.listeners.push((path, Some(thread)));
        }
        tracing::info!(
            "provider {} serving {} tasks in {}",
            running.shared.provider,
            running.listeners.len(),
            socket_dir.display()
        );
        Ok(running)
    }
}

/// Creates `dir` (with `mode`) unless it exists; returns its permission bits.
fn prepare_dir(dir: &Path, mode: u32) -> Result<u32, ServerError> {
    let failed = |reason: String| ServerError::Socket {
        path: dir.to_owned(),
        reason,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|err| failed(format!("cannot create the directory: {err}")))?;
        // The mode exactly, whatever the umask (group members must be able to bind in it).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|err| failed(format!("cannot set its mode: {err}")))?;
    }
    let meta = std::fs::metadata(dir).map_err(|err| failed(err.to_string()))?;
    if !meta.is_dir() {
        return Err(failed("not a directory".into()));
    }
    Ok(meta.permissions().mode() & 0o7777)
}

/// Binds a task socket, replacing a stale socket file no process answers on.
fn bind(path: &Path, mode: u32) -> Result<UnixListener, ServerError> {
    let failed = |reason: String| ServerError::Socket {
        path: path.to_owned(),
        reason,
    };
    if path.exists() {
        match UnixStream::connect(path) {
            Ok(_) => return Err(failed("another process is serving this socket".into())),
            // Only a socket nobody listens on is stale; another error (no permission, say)
            // may hide a live socket of another user.
            Err(err) if err.kind() != std::io::ErrorKind::ConnectionRefused => {
                return Err(failed(format!("cannot tell whether it is in use: {err}")))
            }
            Err(_) => {}
        }
        std::fs::remove_file(path)
            .map_err(|err| failed(format!("cannot remove the stale socket: {err}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|err| failed(format!("cannot bind: {err}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|err| failed(format!("cannot set its mode: {err}")))?;
    Ok(listener)
}

/// What the threads of a running server share.
struct Shared {
    stopping: AtomicBool,
    max_frame: usize,
    /// Open connections to response hooks, by hook URL, each used by one thread at a time.
    hooks: Mutex<HashMap<String, Vec<UnixStream>>>,
    /// Open caller connections, to shut down when stopping.
    connections: Mutex<HashMap<u64, (UnixStream, JoinHandle<()>)>>,
    next_connection: AtomicU64,
    stream_dir: PathBuf,
    next_stream: AtomicU64,
    /// The socket directory's group bits, given to what this process creates in it.
    shared_mode: u32,
    provider: String,
}

fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    task: String,
    handler: Arc<Handler>,
    timeout: Option<Duration>,
) {
    for connection in listener.incoming() {
        if shared.stopping.load(Ordering::Acquire) {
            break;
        }
        let connection = match connection {
            Ok(connection) => connection,
            Err(err) => {
                tracing::warn!("task {task}: accept failed: {err}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Ok(kept) = connection.try_clone() else {
            continue;
        };
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let (thread_shared, thread_task, thread_handler) =
            (shared.clone(), task.clone(), handler.clone());
        // Held while spawning: the thread's last act (removing its entry) comes after the insert.
        let mut connections = shared.connections.lock().unwrap();
        let spawned = std::thread::Builder::new()
            .name(format!("epi-provider {task} #{id}"))
            .spawn(move || {
                serve_connection(
                    connection,
                    &thread_shared,
                    &thread_task,
                    &*thread_handler,
                    timeout,
                );
                thread_shared.connections.lock().unwrap().remove(&id);
            });
        match spawned {
            Ok(thread) => {
                connections.retain(|_, (_, thread)| !thread.is_finished());
                connections.insert(id, (kept, thread));
            }
            Err(err) => tracing::warn!("task {task}: cannot start a connection thread: {err}"),
        }
    }
}

/// Reads requests from one caller connection until it closes: acknowledges each, runs it and
/// sends its response to its hook.
fn serve_connection(
    connection: UnixStream,
    shared: &Shared,
    task: &str,
    handler: &Handler,
    timeout: Option<Duration>,
) {
    let mut reader = std::io::BufReader::new(match connection.try_clone() {
        Ok(reader) => reader,
        Err(err) => {
            tracing::warn!("task {task}: {err}");
            return;
        }
    });
    let mut connection = connection;
    // A caller that stops reading cannot hold this thread (and so a stop) for ever.
    let _ = connection.set_write_timeout(Some(WRITE_TIMEOUT));
    loop {
        let body = match read_frame(&mut reader, shared.max_frame) {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!("task {task}: bad frame from a caller: {err}");
                let _ = write_json(&mut connection, &Response::error("", err.to_string()));
                return;
            }
        };
        let request = match Request::parse(&body) {
            Ok(request) if request.task != task => Err((
                Some(request.id),
                format!("this socket serves task {task:?}, not {:?}", request.task),
            )),
            other => other,
        };
        let request = match request {
            Ok(request) => request,
            Err((id, reason)) => {
                tracing::warn!("task {task}: refused a request: {reason}");
                if write_json(
                    &mut connection,
                    &Response::error(id.unwrap_or_default(), reason),
                )
                .is_err()
                {
                    return;
                }
                continue;
            }
        };
        if write_json(&mut connection, &Response::ack(&request.id)).is_err() {
            return;
        }
        let started = Instant::now();
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&request)))
            .unwrap_or_else(|_| Err(format!("the handler of task {task} panicked")));
        let mut response = match answer {
            Ok(reply) => {
                let stream_url = match reply.stream {
                    Some(reader) => match serve_stream(shared, reader) {
                        Ok(url) => Some(url),
                        Err(err) => {
                            deliver(shared, &request, Response::error(&request.id, err));
                            continue;
                        }
                    },
                    None => None,
                };
                Response {
                    id: request.id.clone(),
                    result: Some(reply.result),
                    error: None,
                    stream_url,
                }
            }
            Err(error) => Response::error(&request.id, error),
        };
        if let Some(limit) = timeout.filter(|limit| started.elapsed() > *limit) {
            response = Response::error(
                &request.id,
                format!(
                    "task {task} took {:.1} s, over its timeout of {} s",
                    started.elapsed().as_secs_f64(),
                    limit.as_secs()
                ),
            );
        }
        deliver(shared, &request, response);
    }
}

/// Sends `response` to the request's hook, on a kept connection when one is free.
fn deliver(shared: &Shared, request: &Request, response: Response) {
    let hook = &request.response_hook;
    let Ok(path) = unix_url_path(hook) else {
        return;
    };
    let kept = shared
        .hooks
        .lock()
        .unwrap()
        .get_mut(hook)
        .and_then(Vec::pop);
    if let Some(mut stream) = kept {
        if write_json(&mut stream, &response).is_ok() {
            shared
                .hooks
                .lock()
                .unwrap()
                .entry(hook.clone())
                .or_default()
                .push(stream);
            return;
        }
    }
    match UnixStream::connect(&path).and_then(|mut stream| {
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        write_json(&mut stream, &response)?;
        Ok(stream)
    }) {
        Ok(stream) => {
            let mut hooks = shared.hooks.lock().unwrap();
            // Hooks of callers that went away (a plugin version retired, say) are dropped
            // when a new one appears, so their connections do not pile up.
            for kept in hooks.values_mut() {
                kept.retain(|stream| !peer_closed(stream));
            }
            hooks.retain(|_, kept| !kept.is_empty());
            hooks.entry(hook.clone()).or_default().push(stream);
        }
        Err(err) => tracing::warn!(
            "cannot deliver the response to request {} at {hook}: {err}",
            request.id
        ),
    }
}

/// How long a write to a caller or a response hook may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stream socket waits for its reader.
const STREAM_WAIT: Duration = Duration::from_secs(60);

/// Serves `reader` on a one-shot socket; returns its URL.
fn serve_stream(shared: &Shared, mut reader: Box<dyn Read + Send>) -> Result<String, String> {
    prepare_dir(&shared.stream_dir, shared.shared_mode | 0o700).map_err(|err| err.to_string())?;
    let path = shared.stream_dir.join(format!(
        "{}-{}-{}.sock",
        shared.provider,
        std::process::id(),
        shared.next_stream.fetch_add(1, Ordering::Relaxed)
    ));
    let listener =
        bind(&path, shared.shared_mode & 0o660 | 0o600).map_err(|err| err.to_string())?;
    listener
        .set_nonblocking(true)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    let url = unix_url(&path);
    std::thread::Builder::new()
        .name("epi-provider stream".into())
        .spawn(move || {
            let deadline = Instant::now() + STREAM_WAIT;
            let connection = loop {
                match listener.accept() {
                    Ok((connection, _)) => break Some(connection),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            break None;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break None,
                }
            };
            // One reader only: the socket goes before the bytes do.
            let _ = std::fs::remove_file(&path);
            if let Some(mut connection) = connection {
                let _ = connection.set_nonblocking(false);
                let _ = connection.set_write_timeout(Some(WRITE_TIMEOUT));
                if let Err(err) = std::io::copy(&mut reader, &mut connection) {
                    tracing::warn!("stream {}: {err}", path.display());
                }
            }
        })
        .map_err(|err| format!("cannot start the stream's thread: {err}"))?;
    Ok(url)
}

/// A serving provider process; stops (removing its sockets) when dropped.
pub struct Running {
    shared: Arc<Shared>,
    listeners: Vec<(PathBuf, Option<JoinHandle<()>>)>,
}

impl Running {
    /// The task sockets being served.
    pub fn socket_paths(&self) -> Vec<PathBuf> {
        self.listeners
            .iter()
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// Waits for SIGTERM, SIGINT or SIGHUP, then stops.
    pub fn stop_on_signal(self) {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(mut signals) => {
                if let Some(signal) = signals.forever().next() {
                    tracing::info!("signal {signal}: stopping");
                }
            }
            Err(err) => tracing::error!("cannot wait for signals: {err}"),
        }
        drop(self);
    }

    /// Stops: removes the sockets (callers stop finding this provider), lets requests under
    /// way finish, and closes every connection.
    pub fn stop(self) {
        drop(self)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        for (path, thread) in &mut self.listeners {
            // Wake the accept loop, which sees `stopping` and returns.
            let _ = UnixStream::connect(&*path);
            let _ = std::fs::remove_file(&*path);
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
        let connections: Vec<_> = self.shared.connections.lock().unwrap().drain().collect();
        for (_, (stream, thread)) in connections {
            // A connection thread reading its next request sees the end; one running a
            // handler finishes it and delivers its response first.
            let _ = stream.shutdown(std::net::Shutdown::Read);
            let _ = thread.join();
        }
        self.shared.hooks.lock().unwrap().clear();
    }
}
