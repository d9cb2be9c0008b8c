//! Discovery: task sockets in the socket directory become providers, and leave when their file
//! goes or their process stops answering.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use epi::Provider;
use epi_provider::wire::{check_task_name, parse_socket_name, RESERVED_PREFIX};
use serde_json::{json, Value};

use crate::endpoint::Endpoint;
use crate::Core;

/// A socket file's identity (device, inode, change time): a restarted provider binds a new
/// file, which may reuse the inode number of the one it removed.
type Identity = (u64, u64, i64, i64);

/// A socket serving as a provider.
struct Known {
    identity: Identity,
    registration: u64,
    endpoint: Arc<Endpoint>,
    service: String,
    function: String,
}

#[derive(Default)]
struct State {
    known: BTreeMap<PathBuf, Known>,
    /// Sockets that refused connections: skipped until their file is replaced.
    stale: HashMap<PathBuf, Identity>,
    /// Files and directories refused, with the reason.
    refused: BTreeMap<PathBuf, String>,
}

/// The sockets this plugin version serves as providers.
pub struct Discovery {
    core: Arc<Core>,
    state: Mutex<State>,
}

/// A socket found by a scan.
struct Found {
    task: String,
    priority: i32,
    provider: String,
    identity: Identity,
}

impl Discovery {
    /// Discovery over `core`'s socket directory (nothing scanned yet).
    pub fn new(core: Arc<Core>) -> Self {
        Discovery {
            core,
            state: Mutex::new(State::default()),
        }
    }

    /// Brings the providers in line with the socket directory.
    pub fn rescan(&self) {
        let mut state = self.state.lock().unwrap();
        let mut refused = BTreeMap::new();
        let found = scan(&self.core, &mut refused);
        for (path, reason) in &refused {
            if state.refused.get(path) != Some(reason) {
                epi::log::warn(&format!("{}: refused: {reason}", path.display()));
            }
        }
        state.refused = refused;
        // Withdraw what went, changed or stopped answering.
        let withdrawn: Vec<PathBuf> = state
            .known
            .iter()
            .filter(|(path, known)| {
                known.endpoint.gone.load(Ordering::Acquire)
                    || found
                        .get(*path)
                        .is_none_or(|f| f.identity != known.identity)
            })
            .map(|(path, _)| path.clone())
            .collect();
        for path in withdrawn {
            let known = state.known.remove(&path).expect("listed above");
            epi::host::remove_provider(known.registration);
            if known.endpoint.gone.load(Ordering::Acquire) {
                state.stale.insert(path.clone(), known.identity);
                epi::log::info(&format!(
                    "{}: stopped answering; provider {} withdrawn until the socket is replaced",
                    path.display(),
                    known.endpoint.provider
                ));
            } else {
                epi::log::info(&format!(
                    "{}: gone; provider {} withdrawn",
                    path.display(),
                    known.endpoint.provider
                ));
            }
        }
        // A stale socket is forgotten when its file goes or changes, or when it answers again.
        state.stale.retain(|path, identity| {
            found.get(path).is_some_and(|f| f.identity == *identity)
                && std::os::unix::net::UnixStream::connect(path).is_err()
        });
        // Add what appeared.
        for (path, socket) in found {
            if state.known.contains_key(&path) || state.stale.contains_key(&path) {
                continue;
            }
            let (service, function) = self.core.config.target(&socket.task);
            let endpoint = Arc::new(Endpoint::new(
                self.core.clone(),
                path.clone(),
                socket.task.clone(),
                socket.provider.clone(),
                socket.priority,
            ));
            let caller = endpoint.clone();
            let provider = Provider::json(
                service.clone(),
                format!("{}/{}", socket.provider, socket.task),
                [function.clone()],
                move |_function: &str, args: Value| caller.call(args),
            )
            .priority(socket.priority);
            match epi::host::add_provider(provider) {
                Ok(registration) => {
                    epi::log::info(&format!(
                        "{}: provider {} of {service}.{function} (priority {})",
                        path.display(),
                        socket.provider,
                        socket.priority
                    ));
                    state.known.insert(
                        path,
                        Known {
                            identity: socket.identity,
                            registration: registration.keep(),
                            endpoint,
                            service,
                            function,
                        },
                    );
                }
                Err(err) => {
                    let reason = format!("cannot add its provider: {err}");
                    epi::log::warn(&format!("{}: {reason}", path.display()));
                    state.refused.insert(path, reason);
                }
            }
        }
    }

    /// What `epi report` shows for the discovery process.
    pub fn report(&self) -> Value {
        let state = self.state.lock().unwrap();
        json!({
            "socket_dir": self.core.config.socket_dir,
            "response_socket": self.core.tracker.path(),
            "outstanding": self.core.tracker.outstanding(),
            "providers": state.known.iter().map(|(path, known)| json!({
                "socket": path,
                "task": known.endpoint.task,
                "provider": known.endpoint.provider,
                "priority": known.endpoint.priority,
                "service": known.service,
                "function": known.function,
                "calls": known.endpoint.calls.load(Ordering::Relaxed),
                "failures": known.endpoint.failures.load(Ordering::Relaxed),
            })).collect::<Vec<_>>(),
            "stale": state.stale.keys().collect::<Vec<_>>(),
            "refused": state.refused.iter().map(|(path, reason)| (path.display().to_string(), Value::from(reason.as_str()))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// Every task socket under the socket directory; what is refused goes to `refused`.
fn scan(core: &Core, refused: &mut BTreeMap<PathBuf, String>) -> BTreeMap<PathBuf, Found> {
    let mut found = BTreeMap::new();
    let dir = &core.config.socket_dir;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            refused.insert(
                dir.clone(),
                format!("cannot list the socket directory: {err}"),
            );
            return found;
        }
    };
    for entry in entries.flatten() {
        let task = entry.file_name().to_string_lossy().into_owned();
        if task.starts_with(RESERVED_PREFIX) {
            continue;
        }
        let task_dir = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&task_dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        if let Err(reason) =
            check_task_name(&task).and_then(|()| check_dir(&meta, core.config.socket_group))
        {
            refused.insert(task_dir, reason);
            continue;
        }
        let Ok(sockets) = std::fs::read_dir(&task_dir) else {
            continue;
        };
        for socket in sockets.flatten() {
            let path = socket.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.file_type().is_socket() {
                continue;
            }
            let name = socket.file_name().to_string_lossy().into_owned();
            match parse_socket_name(&name) {
                Ok((priority, provider)) => {
                    found.insert(
                        path,
                        Found {
                            task: task.clone(),
                            priority,
                            provider,
                            identity: (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()),
                        },
                    );
                }
                Err(reason) => {
                    refused.insert(path, reason);
                }
            }
        }
    }
    found
}

/// A directory others cannot write to: not writable by every user, and writable by its group
/// only when that group is the configured socket group.
pub fn check_dir(meta: &std::fs::Metadata, group: Option<u32>) -> Result<(), String> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(format!(
            "the directory is writable by every user (mode {mode:o}); remove that with chmod o-w"
        ));
    }
    if mode & 0o020 != 0 && group != Some(meta.gid()) {
        return Err(format!(
            "the directory is writable by its group {} (mode {mode:o}), which is not the configured socket_group",
            meta.gid()
        ));
    }
    Ok(())
}

/// Checks the socket directory itself: also owned by this user or root.
pub fn check_socket_dir(dir: &Path, group: Option<u32>) -> Result<(), String> {
    let meta = std::fs::metadata(dir)
        .map_err(|err| format!("socket directory {}: {err}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "socket directory {}: not a directory",
            dir.display()
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "socket directory {} is owned by uid {}, neither root nor this user (uid {me})",
            dir.display(),
            meta.uid()
        ));
    }
    check_dir(&meta, group)
        .map_err(|reason| format!("socket directory {}: {reason}", dir.display()))
}
