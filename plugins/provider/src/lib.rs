//! The provider component: provider processes that serve tasks on unix sockets
//! (`SOCKET_DIR/TASK/PRIORITY-NAME.sock`, the layout of mistify's provider framework) become
//! providers of epi services, so hosts reach them with `apply`, `decide` and `pipe` like
//! in-process providers. A provider process that crashes fails the calls it was serving and
//! is withdrawn; the host keeps serving.
//!
//! - [`config`]: the plugin's configuration, errors naming the key.
//! - [`tracker`]: this version's response socket, matching responses to waiting calls.
//! - [`endpoint`]: one socket as a provider: request, acknowledgement, response, timeouts.
//! - [`discovery`]: sockets appearing and disappearing (watched with `notify`), trust checks.
//! - [`web`]: task streams as streamed HTTP bodies through the daemon.
//!
//! The protocol is in `PROTOCOL.md` beside this crate; `epi-provider` implements it for Rust
//! provider processes.

pub mod config;
pub mod discovery;
pub mod endpoint;
pub mod tracker;
pub mod web;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use epi::{Plugin, PluginContext, Process, ProcessError, Provider};
use notify::{RecursiveMode, Watcher};

use crate::config::Config;
use crate::discovery::Discovery;
use crate::tracker::Tracker;

/// Where this version's response socket lives, under the socket directory (a name no task can
/// have: task names may not start with '.').
const TRACKER_DIR: &str = ".tracker";

/// What every endpoint of this version shares.
pub struct Core {
    /// The plugin's configuration.
    pub config: Config,
    /// The response socket.
    pub tracker: Tracker,
    /// This version's prefix for request ids.
    instance: String,
    next_id: AtomicU64,
    /// Wakes the discovery process (a socket stopped answering).
    wake: Mutex<Option<mpsc::Sender<()>>>,
}

impl Core {
    /// A request id unique to this version.
    pub fn next_request_id(&self) -> String {
        format!(
            "{}-{}",
            self.instance,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A number telling this version's HTTP stream ids from other versions' and plugins'.
    pub fn instance_tag(&self) -> u64 {
        self.instance
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
                (hash ^ byte as u64).wrapping_mul(0x100_0000_01b3)
            })
            & 0xffff_ffff
    }

    /// Asks discovery to look again now.
    pub fn wake_discovery(&self) {
        if let Some(wake) = &*self.wake.lock().unwrap() {
            let _ = wake.send(());
        }
    }
}

/// The plugin object.
pub struct ProviderPlugin {
    core: Arc<Core>,
    discovery: Arc<Discovery>,
}

impl ProviderPlugin {
    /// Reads the configuration, prepares the socket directory, opens the response socket and
    /// adds a provider for every socket already there (so a new version serves from its first
    /// call).
    pub fn from_context(context: &PluginContext) -> Result<Self, String> {
        let config = Config::from_json(&context.config)?;
        prepare_socket_dir(&config)?;
        let shared = config.socket_group.is_some();
        let tracker_dir = config.socket_dir.join(TRACKER_DIR);
        make_dir(
            &tracker_dir,
            if shared { 0o2770 } else { 0o700 },
            config.socket_group,
        )?;
        static VERSIONS: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let instance = format!(
            "{}.{}.{nanos:x}",
            std::process::id(),
            VERSIONS.fetch_add(1, Ordering::Relaxed)
        );
        let tracker = Tracker::start(
            &tracker_dir.join(format!("{instance}.sock")),
            if shared { 0o660 } else { 0o600 },
            config.max_frame,
        )?;
        let core = Arc::new(Core {
            config,
            tracker,
            instance,
            next_id: AtomicU64::new(0),
            wake: Mutex::new(None),
        });
        let discovery = Arc::new(Discovery::new(core.clone()));
        discovery.rescan();
        Ok(ProviderPlugin { core, discovery })
    }
}

/// Creates the socket directory (0700, or 2770 with the configured group) or checks the one
/// there.
fn prepare_socket_dir(config: &Config) -> Result<(), String> {
    let dir = &config.socket_dir;
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
        }
        let mode = if config.socket_group.is_some() {
            0o2770
        } else {
            0o700
        };
        make_dir(dir, mode, config.socket_group)?;
    }
    discovery::check_socket_dir(dir, config.socket_group)
}

/// Creates `dir` with `mode` and `group` unless it exists.
fn make_dir(dir: &Path, mode: u32, group: Option<u32>) -> Result<(), String> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(dir, None, Some(gid))
            .map_err(|err| format!("cannot give {} to group {gid}: {err}", dir.display()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|err| format!("cannot set the mode of {}: {err}", dir.display()))
}

impl Plugin for ProviderPlugin {
    fn app(&self) -> String {
        "provider".into()
    }

    fn services(&self) -> Vec<String> {
        let mut services = self.core.config.services();
        services.push(epi::http::SERVICE.into());
        services
    }

    fn providers(&self) -> Vec<Provider> {
        let tag = self.core.instance_tag();
        vec![
            Provider::new(epi::http::SERVICE, web::Web::new(self.core.clone(), tag))
                .label("streams"),
        ]
    }

    fn processes(&self) -> Vec<Process> {
        let discovery = self.discovery.clone();
        let core = self.core.clone();
        vec![Process::new("discovery").run(move |context| {
            let (wake, woken) = mpsc::channel();
            *core.wake.lock().unwrap() = Some(wake.clone());
            let mut watcher = notify::recommended_watcher(move |_event| {
                let _ = wake.send(());
            })
            .map_err(|err| ProcessError::Failed(format!("cannot watch for sockets: {err}")))?;
            watcher
                .watch(&core.config.socket_dir, RecursiveMode::Recursive)
                .map_err(|err| {
                    ProcessError::Failed(format!(
                        "cannot watch {}: {err}",
                        core.config.socket_dir.display()
                    ))
                })?;
            // Sockets that came while no one watched.
            discovery.rescan();
            context.set_report(&discovery.report());
            let mut scanned = Instant::now();
            while !context.is_stopping() {
                let woke = match woken.recv_timeout(Duration::from_millis(50)) {
                    Ok(()) => true,
                    Err(mpsc::RecvTimeoutError::Timeout) => false,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                // A fallback for events a watcher can miss (a directory created and filled
                // before its watch was added): look again every second.
                if woke || scanned.elapsed() > Duration::from_secs(1) {
                    while woken.try_recv().is_ok() {}
                    discovery.rescan();
                    scanned = Instant::now();
                    context.set_report(&discovery.report());
                }
            }
            *core.wake.lock().unwrap() = None;
            Ok(())
        })]
    }
}

epi::export_plugin!(ProviderPlugin, try ProviderPlugin::from_context);
