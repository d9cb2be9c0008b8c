//! The registry: loads, upgrades and unloads plugins and publishes a new [`Snapshot`] after
//! each change.
//!
//! Writers are serialised by a mutex and never block callers: a call pins the current
//! snapshot (`crate::published`) and keeps using it until it returns, so a plugin replaced or
//! removed meanwhile stays mapped until its last call finished.
//!
//! `lifecycle` holds load, upgrade, unload and retirement; `watch` the plugin directory watcher.

mod history;
mod lifecycle;
mod processes;
mod watch;

pub use history::{Change, ChangeKind, FileTotals, History};
pub use lifecycle::{FileStatus, RegistryStatus, Upgrade};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::data::{DataHandle, DataHub, DataStatus, DataWorker};
use crate::dispatch::{Dispatcher, Function, Opts, ServiceHandle};
use crate::dynamic::Applied;
use crate::engine::{Engine, EngineConfig, EngineReport, RealClock};
use crate::error::Error;
use crate::ids::Interner;
use crate::loader::probe::LoadProbe;
use crate::loader::{CopyDir, LoadedPlugin, PluginInfo};
use crate::snapshot::{self, Snapshot};
use epi_plugin::{Notification, ProviderVersion};

/// How a registry orders and runs plugins.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Plugin app names in dispatch order; plugins not listed follow, sorted by app name.
    pub order: Vec<String>,
    /// Priority per app name, overriding what the plugin declares (higher runs first).
    pub priorities: BTreeMap<String, i32>,
    /// Threads a `concurrent` call runs on, the calling thread included (default: the number
    /// of CPUs).
    pub concurrency: Option<usize>,
    /// Where private copies of plugin files are made (default: the system temp directory).
    pub runtime_dir: Option<PathBuf>,
    /// What happens to a version an upgrade or unload retires.
    pub retire: RetirePolicy,
    /// Restart timing of plugin processes.
    pub engine: EngineConfig,
    /// Plugin file names loaded from directories and followed by the watcher: a glob where
    /// `*` matches any run of characters (default `*.so`). Dotfiles never match.
    pub file_pattern: Option<String>,
    /// How deeply calls that plugins make through the host may nest on one thread (a cycle
    /// such as A calls B calls A ...) before failing with `Error::TooDeep` (default 32).
    pub max_call_depth: Option<usize>,
    /// Count every provider call in [`Registry::counters`] (errors and panics are always
    /// counted). Off by default: a shared counter per call costs cross-core traffic.
    pub count_calls: bool,
    /// The largest data file read, in bytes (default 64 MiB); a larger one is refused with
    /// an error in [`Registry::data_status`] and the previous value stays.
    pub max_data_file_bytes: Option<u64>,
    /// Load plugins without running their processes: for read-only tools (`epi list`,
    /// `epi inspect`) that must not start a plugin's workers.
    pub skip_processes: bool,
    /// How long a data source's read (a file, a plugin's callback) may take before its source
    /// gets an error and keeps its previous value (default
    /// [`crate::DEFAULT_DATA_READ_TIMEOUT`], 10 s). Reads run off every lock.
    pub data_read_timeout: Option<std::time::Duration>,
    /// Whether a file is loaded in a short-lived child process before the host opens it
    /// (default: yes, see [`LoadProbe`]).
    pub load_probe: LoadProbe,
    /// How long a probe load may take before the file is refused (default
    /// [`crate::DEFAULT_PROBE_TIMEOUT`], 20 s).
    pub load_probe_timeout: Option<std::time::Duration>,
    /// Plugins run in a supervised child process of their own (see [`crate::isolation`]),
    /// named by app or file: an entry matches the app name of a plugin loaded from the file
    /// before, the file name, or the file name without `.so` and a `lib` or `libepi_plugin_`
    /// prefix. Needs [`RegistryConfig::plugin_host`].
    pub isolate: Vec<String>,
    /// The program that runs isolated plugins (the daemon uses its own `epi plugin-host`).
    pub plugin_host: Option<crate::isolation::PluginHostCommand>,
    /// How long a call to an isolated plugin may wait for its answer before it fails (default
    /// [`crate::isolation::DEFAULT_CALL_TIMEOUT`], 30 s): a hung child fails its calls instead
    /// of holding the callers.
    pub isolated_call_timeout: Option<std::time::Duration>,
}

/// The default of [`RegistryConfig::max_call_depth`].
pub const DEFAULT_MAX_CALL_DEPTH: usize = 32;

/// Calls, errors and panics of one provider function since its version was loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderCounters {
    /// The plugin's app name.
    pub plugin: String,
    /// The provider's label.
    pub provider: String,
    /// The service.
    pub service: String,
    /// The function.
    pub function: String,
    /// Whether the provider was added at run time (`epi::host::add_provider`) rather than
    /// declared by its plugin.
    pub added: bool,
    /// Calls (counted only with `RegistryConfig::count_calls`).
    pub calls: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Calls that panicked.
    pub panics: u64,
    /// Durations of sampled calls (one in [`crate::abi::LATENCY_SAMPLE_EVERY`], counted only
    /// with `RegistryConfig::count_calls`).
    pub latency: LatencyCounts,
}

/// A provider function's sampled call durations: counts per bucket of
/// [`crate::abi::LATENCY_BOUNDS_NS`] (not cumulative; one more bucket for the rest) and their
/// sum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyCounts {
    /// Count per bucket, `LATENCY_BOUNDS_NS.len() + 1` of them.
    pub buckets: Vec<u64>,
    /// Sum of the sampled durations, in nanoseconds.
    pub sum_ns: u64,
}

impl LatencyCounts {
    /// How many calls were timed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// What happens to a plugin version once an upgrade replaced it or it was unloaded.
///
/// A value a provider on the native path returns may borrow the plugin library's memory (a
/// `Cow::Borrowed("static text")`); a host may hold it long after the version was retired.
/// The default therefore never unmaps a native-path library; values from the stable path are
/// decoded into host memory, so those libraries are closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetirePolicy {
    /// Once no call uses a retired version, release its objects (in the plugin's code) and
    /// close its library if it is on the stable path. A native-path library stays mapped for
    /// the life of the process, so every value it returned stays readable (the default).
    #[default]
    Release,
    /// As `Release`, and close native-path libraries too. Only for plugins whose outputs own
    /// their data: a borrowed static from a closed library would dangle. A library that still
    /// has live threads or thread-local destructors stays mapped (glibc pins it); the status
    /// counts those.
    Unload,
    /// Keep every version's objects and library loaded for the life of the process, for
    /// plugins known not to release cleanly.
    KeepLoaded,
}

/// A service and its providers, in call order (for inspection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Service name.
    pub name: String,
    /// Whether a loaded plugin defines it.
    pub declared: bool,
    /// `(function, [(plugin, provider)])` sorted by function name, providers in call order.
    pub functions: Vec<(String, Vec<(String, String)>)>,
}

pub(crate) struct Shared {
    /// Runs plugin processes; dropped (every worker stopped) before the plugins.
    engine: Engine,
    /// The dispatch table and what handles need to call through it.
    pub(crate) dispatcher: Arc<Dispatcher>,
    data: Arc<DataHub>,
    /// Stops the data thread when the registry goes away.
    _data_worker: DataWorker,
    /// Loaded plugins and files; holding this lock serialises every change.
    pub(crate) state: Mutex<lifecycle::State>,
    /// The plugin directory watcher, once `watch` was called.
    watcher: Mutex<Option<watch::DirWatcher>>,
    config: RegistryConfig,
    copies: CopyDir,
    _copies_dir: tempfile::TempDir,
    sequence: AtomicU64,
    /// How many loads, upgrades and unloads are under way: while any is, a plugin's change of
    /// its added providers is queued in `pending` (the change may be waiting for one of the
    /// plugins it calls), and published when the last one ends.
    changing: std::sync::atomic::AtomicUsize,
    /// Services whose added providers changed while a load, upgrade or unload was under way.
    pending: Mutex<std::collections::BTreeSet<String>>,
    /// Order, priorities and counting, as the snapshot builder needs them.
    rules: snapshot::Rules,
    /// Loads, upgrades, unloads and refusals, for operators.
    history: Mutex<history::Recorder>,
    /// Configuration for plugin files the registry finds itself (see
    /// [`Registry::set_config_source`]).
    config_source: Mutex<Option<ConfigSource>>,
}

/// Gives the configuration of a plugin file by its path.
pub(crate) type ConfigSource = Arc<dyn Fn(&Path) -> serde_json::Value + Send + Sync>;

impl Drop for Shared {
    fn drop(&mut self) {
        // Plugins hold their registry's dispatcher and data hub (for their calls through the
        // host), which hold the plugins: release the plugins so the cycle ends.
        self.dispatcher.current.store(Arc::new(Snapshot::default()));
        drop(self.data.sync(&[]));
        self.state.lock().plugins.clear();
    }
}

/// Loads plugins and hands out handles to call them. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Registry {
    pub(crate) shared: Arc<Shared>,
}

/// The name of a registry's copies directory: this, the owner's process id, `-`, a random
/// suffix.
const COPIES_PREFIX: &str = "epi-plugins-";

/// Removes the copies directories in `parent` of registries whose process is gone (killed
/// daemons leave them: 20 crashes left 135 MB in /tmp). Only this user's are touched.
fn remove_stale_copies(parent: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(COPIES_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let owned = entry
            .metadata()
            .is_ok_and(|meta| meta.is_dir() && meta.uid() == me);
        if !owned || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!(
                dir = %entry.path().display(),
                pid,
                "removed the plugin copies of a registry that is gone"
            ),
            Err(err) => tracing::warn!(
                dir = %entry.path().display(),
                "cannot remove stale plugin copies: {err}"
            ),
        }
    }
}

impl Registry {
    /// A registry with no plugins; an error when its directory or threads cannot be made.
    pub fn new(config: RegistryConfig) -> std::io::Result<Self> {
        // The copies directory is named after this process, so that the next registry to
        // start in the same place removes what a killed one left behind.
        let prefix = format!("{COPIES_PREFIX}{}-", std::process::id());
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        let parent = match &config.runtime_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                dir.clone()
            }
            None => std::env::temp_dir(),
        };
        remove_stale_copies(&parent);
        let copies_dir = builder.tempdir_in(&parent)?;
        let threads = config.concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2)
        });
        let pool = crate::pool::CallPool::new(threads)?;
        crate::fatal::install();
        let interner = Arc::new(Mutex::new(Interner::default()));
        let (data, data_worker) = DataHub::start(
            interner.clone(),
            config
                .max_data_file_bytes
                .unwrap_or(crate::data::DEFAULT_MAX_DATA_FILE_BYTES),
            config
                .data_read_timeout
                .unwrap_or(crate::data::DEFAULT_DATA_READ_TIMEOUT),
        )?;
        Ok(Registry {
            shared: Arc::new(Shared {
                engine: Engine::new(config.engine, Arc::new(RealClock::default())),
                dispatcher: Arc::new(Dispatcher {
                    current: crate::published::Published::new(Arc::new(Snapshot::default())),
                    interner,
                    pool,
                    max_depth: config.max_call_depth.unwrap_or(DEFAULT_MAX_CALL_DEPTH),
                }),
                rules: snapshot::Rules {
                    order: config.order.clone(),
                    priorities: config.priorities.clone(),
                    count_calls: config.count_calls,
                },
                data,
                _data_worker: data_worker,
                state: Mutex::new(lifecycle::State::default()),
                watcher: Mutex::new(None),
                copies: CopyDir {
                    dir: copies_dir.path().to_owned(),
                },
                _copies_dir: copies_dir,
                config,
                sequence: AtomicU64::new(0),
                changing: Default::default(),
                pending: Default::default(),
                history: Default::default(),
                config_source: Mutex::new(None),
            }),
        })
    }

    /// Loaded plugins in dispatch order.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        let snapshot = self.shared.dispatcher.current.pin();
        snapshot
            .plugins
            .iter()
            .map(|plugin| {
                let mut info = plugin.info.clone();
                info.priority = snapshot::plugin_priority(&self.shared.rules, plugin);
                info
            })
            .collect()
    }

    /// Every service named by a loaded plugin, sorted by name, with providers in call order.
    pub fn services(&self) -> Vec<ServiceInfo> {
        let snapshot = self.shared.dispatcher.current.pin();
        let interner = self.shared.dispatcher.interner.lock();
        let mut services: Vec<ServiceInfo> = snapshot
            .services
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.declared || !slot.functions.is_empty())
            .map(|(id, slot)| {
                let mut functions: Vec<(String, Vec<(String, String)>)> = slot
                    .functions
                    .iter()
                    .map(|(name, &function)| {
                        let providers = snapshot.functions[function as usize]
                            .iter()
                            .map(|call| {
                                (
                                    snapshot::text(&call.plugin).to_owned(),
                                    snapshot::text(&call.provider).to_owned(),
                                )
                            })
                            .collect();
                        (name.to_string(), providers)
                    })
                    .collect();
                functions.sort();
                ServiceInfo {
                    name: interner.service_name(id as u32).to_string(),
                    declared: slot.declared,
                    functions,
                }
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services
    }

    /// A handle to call a service's functions. Resolve it once and reuse it: it stays valid
    /// across loads, unloads and reloads.
    pub fn service(&self, name: &str) -> ServiceHandle {
        self.shared.dispatcher.service(name)
    }

    /// A handle to one function with its argument and output types: the fastest way to call.
    pub fn function<A, O>(&self, service: &str, function: &str) -> Function<A, O> {
        self.service(service).function(function)
    }

    /// [`Registry::function`], refused with [`Error::UnknownService`] when no loaded plugin
    /// defines `service` now (a handle for it would fail every call until one does).
    pub fn try_function<A, O>(
        &self,
        service: &str,
        function: &str,
    ) -> Result<Function<A, O>, Error> {
        let handle = self.service(service);
        if !handle.is_declared() {
            return Err(Error::UnknownService(service.into()));
        }
        Ok(handle.function(function))
    }

    /// `apply` by name with JSON arguments. Options as for typed calls; with `pipe`, a provider
    /// whose input does not fit the previous output fails with a `BadInput` naming it.
    pub fn apply_json(
        &self,
        service: &str,
        function: &str,
        args: &serde_json::Value,
        opts: Opts,
    ) -> Result<Applied, Error> {
        self.shared
            .dispatcher
            .apply_json(service, function, args, opts)
    }

    /// `decide` by name with JSON arguments: each provider returns `"no_decision"` or
    /// `{"decided": value}`.
    pub fn decide_json(
        &self,
        service: &str,
        function: &str,
        args: &serde_json::Value,
        opts: Opts,
    ) -> Result<epi_plugin::Decision<serde_json::Value>, Error> {
        self.shared
            .dispatcher
            .decide_json(service, function, args, opts)
    }

    /// The latest loads, upgrades, unloads and refused files (oldest first), with totals per
    /// file and the durations of every change since the registry started.
    pub fn history(&self) -> History {
        self.shared.history.lock().report()
    }

    /// Per provider function counters, sorted by service, function, then call order.
    pub fn counters(&self) -> Vec<ProviderCounters> {
        use std::sync::atomic::Ordering::Relaxed;
        let snapshot = self.shared.dispatcher.current.pin();
        // Added providers' functions, known by their counters.
        let added: std::collections::HashSet<*const crate::abi::CallCounters> = snapshot
            .added
            .iter()
            .flatten()
            .flat_map(|provider| &provider.functions)
            .map(|function| Arc::as_ptr(&function.counters))
            .collect();
        let mut rows: Vec<ProviderCounters> = snapshot
            .functions
            .iter()
            .flat_map(|list| list.iter())
            .map(|call| {
                // SAFETY: the counters live as long as the snapshot holding the entry.
                let counters = unsafe { &*call.counters };
                (call, counters)
            })
            .map(|(call, counters)| ProviderCounters {
                plugin: snapshot::text(&call.plugin).to_owned(),
                provider: snapshot::text(&call.provider).to_owned(),
                service: snapshot::text(&call.service).to_owned(),
                function: snapshot::text(&call.function).to_owned(),
                added: added.contains(&call.counters),
                calls: counters.calls.load(Relaxed),
                errors: counters.errors.load(Relaxed),
                panics: counters.panics.load(Relaxed),
                latency: LatencyCounts {
                    buckets: counters
                        .latency
                        .buckets
                        .iter()
                        .map(|bucket| bucket.load(Relaxed))
                        .collect(),
                    sum_ns: counters.latency.sum_ns.load(Relaxed),
                },
            })
            .collect();
        rows.sort_by(|a, b| (&a.service, &a.function).cmp(&(&b.service, &b.function)));
        rows
    }

    /// Stops every plugin process, dependents first, and returns the worst fatal error any
    /// of them returned. For shutdown: processes are not started again afterwards.
    pub fn stop_processes(&self) -> Option<crate::engine::WorkerError> {
        self.shared.engine.stop()
    }

    /// The state of every plugin process (named `app/process`).
    pub fn process_report(&self) -> EngineReport {
        self.shared.engine.report()
    }

    /// Data contributed under `service`: lock-free queries. Resolve once and reuse.
    pub fn data(&self, service: &str) -> DataHandle {
        let (id, name) = self.shared.dispatcher.interner.lock().service(service);
        DataHandle::new(self.shared.data.clone(), id, name)
    }

    /// Re-reads every data source now, publishes what changed and notifies: how many
    /// notifications plugins received, and the sources whose read failed (each keeps its
    /// previous value).
    pub fn reload_data(&self) -> crate::DataReload {
        let deliveries = self.shared.data.reload_all();
        let notified = deliveries.iter().filter(|(to, _)| to.is_some()).count();
        self.shared.data.deliver(deliveries);
        let failed = self
            .shared
            .data
            .status()
            .into_iter()
            .filter(|status| status.error.is_some())
            .collect();
        crate::DataReload { notified, failed }
    }

    /// Calls `observer` with every notification the registry makes: data under any key
    /// changed, the providers of any service changed (what plugins receive through
    /// `Plugin::notify` for what they subscribe to or define). Runs on the thread that made
    /// the change, after every lock is released; a panic in it is caught and logged. Dropping
    /// the returned subscription ends it.
    ///
    /// ```no_run
    /// # let registry = epi::Registry::new(epi::RegistryConfig::default()).unwrap();
    /// let (sender, changes) = std::sync::mpsc::channel();
    /// let _subscription = registry.on_notification(move |notification| {
    ///     let _ = sender.send(notification.clone());
    /// });
    /// for notification in changes.iter() {
    ///     println!("{notification:?}");
    /// }
    /// ```
    pub fn on_notification(
        &self,
        observer: impl Fn(&Notification) + Send + Sync + 'static,
    ) -> crate::data::Subscription {
        self.shared.data.observe(Arc::new(observer))
    }

    /// Every data source with its last error, hash and schedule, in plugin order.
    pub fn data_status(&self) -> Vec<DataStatus> {
        self.shared.data.status()
    }

    /// The status of the data sources plugin `source` (an app name) contributes.
    pub fn data_status_of(&self, source: &str) -> Vec<DataStatus> {
        let mut statuses = self.shared.data.status();
        statuses.retain(|status| status.source == source);
        statuses
    }

    /// Publishes the dispatch table for `loaded`, then syncs data. Returns the notifications to
    /// deliver once the caller released its locks.
    fn publish(&self, loaded: &[Arc<LoadedPlugin>]) -> Vec<crate::data::Delivery> {
        self.publish_with(loaded, None)
    }

    /// As `publish`; with `changed`, only the providers a plugin added at run time for that
    /// service changed: the other functions keep their lists, and data is not synced (the
    /// loaded plugins, so their data, are the same).
    pub(crate) fn publish_with(
        &self,
        loaded: &[Arc<LoadedPlugin>],
        changed: Option<&str>,
    ) -> Vec<crate::data::Delivery> {
        let old = self.shared.dispatcher.current.load_full();
        let generation = old.generation + 1;
        let names = &self.shared.dispatcher.interner;
        let snapshot = match changed {
            Some(service) => {
                snapshot::update_service(&old, generation, &self.shared.rules, names, service)
            }
            None => snapshot::build(generation, loaded, &self.shared.rules, names),
        };
        let snapshot = Arc::new(snapshot);
        self.shared.dispatcher.current.store(snapshot.clone());
        crate::host_calls::reap();
        tracing::debug!(
            generation,
            plugins = loaded.len(),
            "dispatch table published"
        );
        let mut deliveries = provider_changes(&old, &snapshot, changed);
        if changed.is_none() {
            deliveries.extend(self.shared.data.sync(&snapshot.plugins));
        }
        deliveries
    }
}

/// `(service, plugin, provider, version, content hash)` of every provider of a snapshot,
/// borrowed, sorted by service (stable, so providers stay in plugin order within a service).
/// The hash makes an upgrade to a build with the same version string a change, as couch_epi
/// notifies on every recompile.
type Row<'s> = (&'s str, &'s str, &'s str, &'s str, u64);

fn provider_rows<'s>(snapshot: &'s Snapshot, only: Option<&str>) -> Vec<Row<'s>> {
    let mut rows = Vec::new();
    for (plugin, added) in snapshot.plugins.iter().zip(&snapshot.added) {
        let providers = plugin.providers.iter().chain(added.iter().map(|p| &**p));
        for provider in providers.filter(|p| only.is_none_or(|service| *p.service == *service)) {
            rows.push((
                &*provider.service,
                plugin.info.app.as_str(),
                &*provider.label,
                plugin.info.version.as_str(),
                plugin.info.content_hash,
            ));
        }
    }
    rows.sort_by_key(|row| row.0);
    rows
}

/// The rows of one service.
fn rows_of<'r, 's>(rows: &'r [Row<'s>], service: &str) -> &'r [Row<'s>] {
    let start = rows.partition_point(|row| row.0 < service);
    let end = rows.partition_point(|row| row.0 <= service);
    &rows[start..end]
}

/// Notifications to the plugins defining each service whose providers changed. Allocates only
/// for the services that changed.
fn provider_changes(
    old: &Snapshot,
    new: &Snapshot,
    only: Option<&str>,
) -> Vec<crate::data::Delivery> {
    let before = provider_rows(old, only);
    let after = provider_rows(new, only);
    let group = |rows: &[Row<'_>], service: &str| -> Vec<ProviderVersion> {
        rows.iter()
            .filter(|row| row.0 == service)
            .map(|row| ProviderVersion {
                plugin: row.1.to_owned(),
                provider: row.2.to_owned(),
                version: row.3.to_owned(),
            })
            .collect()
    };
    let services: std::collections::BTreeSet<&str> =
        before.iter().chain(after.iter()).map(|row| row.0).collect();
    let mut deliveries = Vec::new();
    for service in services {
        if rows_of(&before, service) == rows_of(&after, service) {
            continue;
        }
        let notification = Notification::Providers {
            service: service.to_owned(),
            old: group(&before, service),
            new: group(&after, service),
        };
        for plugin in &new.plugins {
            if plugin.info.services.iter().any(|s| s == service) {
                deliveries.push((Some(plugin.clone()), notification.clone()));
            }
        }
        deliveries.push((None, notification));
    }
    deliveries
}

/// Whether `path` names a plugin library: a `.so` file that is not a dotfile (writers'
/// temporary names start with a dot or end in something else).
pub fn is_plugin_file(path: &Path) -> bool {
    is_plugin_name(path, "*.so") && path.is_file()
}

/// Whether a file name matches `pattern` (`*` matches any run of characters) and is not a
/// dotfile. Works for paths that no longer exist.
pub(crate) fn is_plugin_name(path: &Path, pattern: &str) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| !name.starts_with('.') && glob_match(pattern, name))
}

/// Matches `name` against `pattern`, where `*` matches any run of characters.
fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Registry {
    /// The plugin files of `dir` (see [`RegistryConfig::file_pattern`]), sorted by name.
    pub(crate) fn plugin_files(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| self.matches_pattern(path) && path.is_file())
            .collect();
        files.sort();
        Ok(files)
    }

    /// Whether the registry treats `path` as a plugin file (see
    /// [`RegistryConfig::file_pattern`]).
    pub(crate) fn matches_pattern(&self, path: &Path) -> bool {
        let pattern = self.shared.config.file_pattern.as_deref().unwrap_or("*.so");
        is_plugin_name(path, pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*.so", "libx.so"));
        assert!(!glob_match("*.so", "libx.so.tmp"));
        assert!(glob_match("libepi_plugin_*.so", "libepi_plugin_hello.so"));
        assert!(!glob_match("libepi_plugin_*.so", "libepi_macros.so"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(glob_match("exact.so", "exact.so"));
        assert!(!glob_match("exact.so", "exact.so2"));
        assert!(!glob_match("ab*ba", "aba"));
    }
}
