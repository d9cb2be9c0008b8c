//! The tracker: this plugin version's response socket. Providers send each task's response
//! there (`response_hook`); the tracker hands it to the call waiting for that request id.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use epi_provider::wire::{read_frame, unix_url, Response};

/// What a waiting call receives: the response, or why the provider's response was unusable.
pub type Answer = Result<Response, String>;

/// Open provider connections and the threads reading them, by connection number.
type Readers = Arc<Mutex<HashMap<u64, (UnixStream, Option<JoinHandle<()>>)>>>;

/// One outstanding request's mailbox.
#[derive(Default)]
pub struct Slot {
    answer: Mutex<Option<Answer>>,
    ready: Condvar,
}

impl Slot {
    /// Waits up to `timeout` for the answer.
    pub fn wait(&self, timeout: Duration) -> Option<Answer> {
        let deadline = Instant::now() + timeout;
        let mut answer = self.answer.lock().unwrap();
        loop {
            if let Some(answer) = answer.take() {
                return Some(answer);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            answer = self.ready.wait_timeout(answer, left).unwrap().0;
        }
    }

    fn fill(&self, answer: Answer) {
        *self.answer.lock().unwrap() = Some(answer);
        self.ready.notify_one();
    }
}

/// Outstanding requests by id.
#[derive(Default)]
struct Pending {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Pending {
    fn answer(&self, id: Option<&str>, answer: Answer) {
        let slot = id.and_then(|id| self.slots.lock().unwrap().remove(id));
        match (slot, answer) {
            (Some(slot), answer) => slot.fill(answer),
            (None, Ok(response)) => tracing_log(&format!(
                "a response to request {:?}, which no call waits for (it timed out or was never sent)",
                response.id
            )),
            (None, Err(reason)) => tracing_log(&format!("an unusable response: {reason}")),
        }
    }
}

fn tracing_log(message: &str) {
    epi::log::warn(message);
}

/// The response socket and the threads reading it.
pub struct Tracker {
    path: PathBuf,
    url: String,
    pending: Arc<Pending>,
    stopping: Arc<AtomicBool>,
    readers: Readers,
    thread: Option<JoinHandle<()>>,
}

impl Tracker {
    /// Binds `path` (mode `mode`) and starts accepting providers' connections.
    pub fn start(path: &Path, mode: u32, max_frame: usize) -> Result<Tracker, String> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|err| format!("cannot bind the response socket {}: {err}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|err| format!("cannot set the mode of {}: {err}", path.display()))?;
        let pending = Arc::new(Pending::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let readers = Arc::new(Mutex::new(HashMap::new()));
        let thread = {
            let (pending, stopping, readers) = (pending.clone(), stopping.clone(), readers.clone());
            let name = path.display().to_string();
            std::thread::Builder::new()
                .name("epi-provider tracker".into())
                .spawn(move || accept(listener, &name, pending, stopping, readers, max_frame))
                .map_err(|err| format!("cannot start the tracker thread: {err}"))?
        };
        Ok(Tracker {
            path: path.to_owned(),
            url: unix_url(path),
            pending,
            stopping,
            readers,
            thread: Some(thread),
        })
    }

    /// The URL requests name as their `response_hook`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the mailbox of request `id`; an id already outstanding is an error.
    pub fn expect(&self, id: &str) -> Result<Arc<Slot>, String> {
        let mut slots = self.pending.slots.lock().unwrap();
        if slots.contains_key(id) {
            return Err(format!("request id {id} is already outstanding"));
        }
        let slot = Arc::new(Slot::default());
        slots.insert(id.to_owned(), slot.clone());
        Ok(slot)
    }

    /// Closes the mailbox of request `id` (it was answered, failed or timed out).
    pub fn forget(&self, id: &str) {
        self.pending.slots.lock().unwrap().remove(id);
    }

    /// How many requests wait for their response.
    pub fn outstanding(&self) -> usize {
        self.pending.slots.lock().unwrap().len()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wake the accept loop, which sees `stopping` and returns.
        let _ = UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
        let readers: Vec<_> = self.readers.lock().unwrap().drain().collect();
        for (_, (connection, thread)) in readers {
            let _ = connection.shutdown(std::net::Shutdown::Both);
            // No thread of this plugin outlives its tracker.
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
    }
}

fn accept(
    listener: UnixListener,
    name: &str,
    pending: Arc<Pending>,
    stopping: Arc<AtomicBool>,
    readers: Readers,
    max_frame: usize,
) {
    for (number, connection) in listener.incoming().enumerate() {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut connection) = connection else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let number = number as u64;
        let Ok(kept) = connection.try_clone() else {
            continue;
        };
        let pending = pending.clone();
        let thread_name = name.to_owned();
        let thread_readers = readers.clone();
        // Held while spawning: the thread's last act (removing its entry) comes after the insert.
        let mut open = readers.lock().unwrap();
        let spawned = std::thread::Builder::new()
            .name("epi-provider responses".into())
            .spawn(move || {
                read_responses(&mut connection, &thread_name, &pending, max_frame);
                thread_readers.lock().unwrap().remove(&number);
            });
        match spawned {
            Ok(thread) => {
                open.insert(number, (kept, Some(thread)));
            }
            Err(err) => tracing_log(&format!("{name}: cannot start a reader thread: {err}")),
        }
    }
}

/// Hands every response read from one provider connection to its waiting call.
fn read_responses(connection: &mut UnixStream, name: &str, pending: &Pending, max_frame: usize) {
    let mut connection = std::io::BufReader::new(connection);
    loop {
        match read_frame(&mut connection, max_frame) {
            Ok(Some(body)) => match Response::parse(&body) {
                Ok(response) => {
                    let id = response.id.clone();
                    pending.answer(Some(&id), Ok(response))
                }
                Err((id, reason)) => pending.answer(id.as_deref(), Err(reason)),
            },
            Ok(None) => return,
            Err(err) => {
                tracing_log(&format!(
                    "{name}: a provider sent a bad response frame: {err}"
                ));
                return;
            }
        }
    }
}
