//! Plugin lifecycle: load, upgrade in place (with state hand-over), unload, retirement, and the
//! status report.
//!
//! An upgrade checks and loads the new build *before* touching what serves: a bad file, an
//! ABI mismatch or a panicking `init` leaves the running version in place and records the
//! error for the file, to be retried when the file changes again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use serde_json::Value;

use super::{processes, Registry, RetirePolicy};

use crate::error::LoadError;
use crate::loader::{self, CheckedFile, FileIdentity, LoadedPlugin, PluginInfo};
use crate::snapshot;

/// What the registry remembers about a plugin file it was asked to load.
#[derive(Default)]
struct FileRecord {
    /// App name of the plugin loaded from it, while one is.
    app: Option<String>,
    /// Configuration handed to every build loaded from it.
    config: Value,
    /// Identity and hash of the file last checked.
    identity: Option<FileIdentity>,
    hash: Option<u64>,
    /// Why the last attempt failed (the previous version, if any, keeps serving).
    error: Option<String>,
}

/// Whether [`Registry::upgrade_checked`] re-reads a file whose identity is unchanged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Recheck {
    /// Always (explicit upgrades and reloads: they hash the file).
    Always,
    /// Only when its identity changed or is too recent to trust (the watcher).
    IfChanged,
}

/// A retired version, tracked until its library is unmapped.
struct Retired {
    copy: PathBuf,
    plugin: Weak<LoadedPlugin>,
}

/// Everything writers change, under one lock.
#[derive(Default)]
pub(crate) struct State {
    /// Loaded plugins in load order (the snapshot sorts them for dispatch).
    pub(crate) plugins: Vec<Arc<LoadedPlugin>>,
    files: BTreeMap<PathBuf, FileRecord>,
    retired: Vec<Retired>,
    /// How many retired versions were left after the last look at `/proc/self/maps`.
    retired_after_prune: usize,
    /// Retired versions kept loaded by [`RetirePolicy::KeepLoaded`].
    kept: Vec<Arc<LoadedPlugin>>,
    /// Retired versions so far.
    retired_total: u64,
    /// The configuration each file was given, kept when its plugin is unloaded: a file
    /// removed and put back gets it again.
    configs: BTreeMap<PathBuf, Value>,
}

/// A load, upgrade or unload under way (see `Registry::changing`).
struct Changing<'r> {
    registry: &'r Registry,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        let shared = &self.registry.shared;
        if shared
            .changing
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.registry.publish_pending();
        }
    }
}

/// What an upgrade did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The file has the identity or content already loaded: nothing was done.
    Unchanged,
    /// No plugin came from this file before: it was loaded.
    Loaded(PluginInfo),
    /// The plugin loaded from this file was replaced.
    Replaced {
        /// The retired version.
        old: PluginInfo,
        /// The version now serving.
        new: PluginInfo,
    },
    /// The file is gone: the plugin loaded from it was unloaded.
    Removed(PluginInfo),
}

/// A plugin file as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStatus {
    /// The file.
    pub path: PathBuf,
    /// App name of the plugin loaded from it, if one is.
    pub app: Option<String>,
    /// The last load or upgrade error; the previous version, if any, keeps serving.
    pub error: Option<String>,
}

/// The registry's state for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryStatus {
    /// Loaded plugins in dispatch order.
    pub plugins: Vec<PluginInfo>,
    /// Every plugin file the registry was asked to load, with its last error.
    pub files: Vec<FileStatus>,
    /// Retired versions whose library is still mapped: calls still running on them, or
    /// pinned by glibc (live threads or thread-local destructors of the plugin).
    pub retired_mapped: usize,
    /// Retired versions kept loaded by [`RetirePolicy::KeepLoaded`].
    pub retired_kept: usize,
    /// Versions retired since the registry started.
    pub retired_total: u64,
}

/// Paths of the files mapped into this process, as `/proc/self/maps` lists them.
fn mapped_files() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(str::to_owned)
        .collect()
}

impl State {
    /// Keeps only retired versions that are still referenced or still mapped.
    fn prune_retired(&mut self) -> usize {
        if self.retired.is_empty() {
            return 0;
        }
        let mapped = mapped_files();
        self.retired.retain(|retired| {
            retired.plugin.strong_count() > 0 || mapped.contains(&*retired.copy.to_string_lossy())
        });
        self.retired_after_prune = self.retired.len();
        self.retired.len()
    }
}

impl Registry {
    /// Loads the plugin in `path` and publishes a snapshot that includes it.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<PluginInfo, LoadError> {
        self.load_with_config(path, &Value::Null)
    }

    /// Loads a plugin, handing it `config` (see [`crate::PluginContext::config`]); later
    /// upgrades of the same file receive the same configuration.
    pub fn load_with_config(
        &self,
        path: impl AsRef<Path>,
        config: &Value,
    ) -> Result<PluginInfo, LoadError> {
        let path = path.as_ref();
        let started = Instant::now();
        let result = loader::check(path).and_then(|checked| self.install(checked, config, false));
        self.record_change(path, started, &result);
        match result {
            Ok(Upgrade::Loaded(info)) => Ok(info),
            Ok(other) => unreachable!("a fresh load cannot give {other:?}"),
            Err(err) => {
                self.record_error(path, config, &err);
                Err(err)
            }
        }
    }

    /// Loads every plugin file of `dir` (see [`crate::RegistryConfig::file_pattern`]), in
    /// file name order. Returns one result per file; a file that fails does not stop the
    /// others.
    pub fn load_dir(
        &self,
        dir: impl AsRef<Path>,
    ) -> std::io::Result<Vec<(PathBuf, Result<PluginInfo, LoadError>)>> {
        self.load_dir_with_config(dir, |_| Value::Null)
    }

    /// As [`Registry::load_dir`], handing each plugin the configuration `config_for` gives
    /// its file.
    pub fn load_dir_with_config(
        &self,
        dir: impl AsRef<Path>,
        config_for: impl Fn(&Path) -> Value,
    ) -> std::io::Result<Vec<(PathBuf, Result<PluginInfo, LoadError>)>> {
        Ok(self
            .plugin_files(dir.as_ref())?
            .into_iter()
            .map(|path| {
                let result = self.load_with_config(&path, &config_for(&path));
                if let Err(err) = &result {
                    tracing::warn!("{err}");
                }
                (path, result)
            })
            .collect())
    }

    /// Brings the plugin of `path` up to date with the file: loads it if no plugin came from
    /// it, replaces the running version if the content changed (the new version takes the
    /// old one's place; calls in flight finish on the old one), and does nothing if the file
    /// is unchanged. If the file is gone, the plugin loaded from it is unloaded.
    ///
    /// On error the running version keeps serving and the error is kept in the status until
    /// the file changes again.
    pub fn upgrade(&self, path: impl AsRef<Path>) -> Result<Upgrade, LoadError> {
        self.upgrade_checked(path.as_ref(), Recheck::Always)
    }

    /// [`Registry::upgrade`] for the watcher: a file whose identity (device, inode, size,
    /// mtime) is unchanged is skipped, unless its mtime is too recent to tell a same-size
    /// rewrite apart (git's "racily clean" rule).
    pub(crate) fn upgrade_if_changed(&self, path: &Path) -> Result<Upgrade, LoadError> {
        self.upgrade_checked(path, Recheck::IfChanged)
    }

    fn upgrade_checked(&self, path: &Path, recheck: Recheck) -> Result<Upgrade, LoadError> {
        let started = Instant::now();
        let result = self.upgrade_unrecorded(path, recheck);
        self.record_change(path, started, &result);
        result
    }

    /// Adds what an attempt on `path` did to the history.
    fn record_change(&self, path: &Path, started: Instant, result: &Result<Upgrade, LoadError>) {
        self.shared
            .history
            .lock()
            .record(path, started.elapsed(), result);
    }

    fn upgrade_unrecorded(&self, path: &Path, recheck: Recheck) -> Result<Upgrade, LoadError> {
        let Ok(identity) = FileIdentity::stat(path) else {
            let unloaded = self.unload_where(|plugin| plugin.info.file == path);
            return Ok(match unloaded {
                Some(info) => Upgrade::Removed(info),
                None => {
                    // A file that failed to load and is gone leaves the status.
                    self.shared.state.lock().files.remove(path);
                    Upgrade::Unchanged
                }
            });
        };
        let known = {
            let state = self.shared.state.lock();
            match state.files.get(path) {
                // Same file as last time: loaded, or failed and not changed since.
                Some(record)
                    if recheck == Recheck::IfChanged
                        && record.identity == Some(identity)
                        && !identity.racy() =>
                {
                    return Ok(Upgrade::Unchanged)
                }
                Some(record) => Some(record.config.clone()),
                None => state.configs.get(path).cloned(),
            }
        };
        let config = known.unwrap_or_else(|| self.configured(path));
        let result = loader::check(path).and_then(|checked| {
            if self.already_serving(&checked) {
                return Ok(Upgrade::Unchanged);
            }
            self.install(checked, &config, true)
        });
        if let Err(err) = &result {
            tracing::error!("upgrade refused, the running version keeps serving: {err}");
            self.record_error(path, &config, err);
        }
        result
    }

    /// True when the plugin loaded from this file has this content (only the identity
    /// changed, e.g. `touch`); records the new identity.
    fn already_serving(&self, checked: &CheckedFile) -> bool {
        let mut state = self.shared.state.lock();
        let State { files, plugins, .. } = &mut *state;
        let Some(record) = files.get_mut(&checked.path) else {
            return false;
        };
        let loaded = record
            .app
            .as_ref()
            .is_some_and(|app| plugins.iter().any(|p| &p.info.app == app));
        if loaded && record.hash == Some(checked.hash) {
            record.identity = Some(checked.identity);
            record.error = None;
            return true;
        }
        false
    }

    /// Sets where the configuration of plugin files the registry finds itself comes from:
    /// files the watcher or [`Registry::reload`] sees for the first time. A file loaded with
    /// [`Registry::load_with_config`] keeps the configuration it was given, also after its
    /// plugin is unloaded and the file comes back.
    pub fn set_config_source(&self, source: impl Fn(&Path) -> Value + Send + Sync + 'static) {
        *self.shared.config_source.lock() = Some(Arc::new(source));
    }

    /// The configuration the config source gives `path` (`null` without one).
    fn configured(&self, path: &Path) -> Value {
        let source = self.shared.config_source.lock().clone();
        source.map_or(Value::Null, |source| source(path))
    }

    /// Whether the plugin of `path` runs in a child process (see `RegistryConfig::isolate`).
    fn isolates(&self, path: &Path) -> bool {
        let isolate = &self.shared.config.isolate;
        if isolate.is_empty() {
            return false;
        }
        let app = self
            .shared
            .state
            .lock()
            .files
            .get(path)
            .and_then(|record| record.app.clone());
        isolate
            .iter()
            .any(|entry| crate::isolation::names(entry, path, app.as_deref()))
    }

    /// How this registry probes files before opening them (`None`: it does not).
    fn probe_settings(&self) -> Option<loader::probe::ProbeSettings> {
        let config = &self.shared.config;
        (config.load_probe == loader::probe::LoadProbe::Child).then(|| {
            loader::probe::ProbeSettings {
                timeout: config
                    .load_probe_timeout
                    .unwrap_or(loader::probe::DEFAULT_PROBE_TIMEOUT),
            }
        })
    }

    /// Loads a checked file and publishes it, replacing the plugin loaded from the same file
    /// when `replace` is set.
    fn install(
        &self,
        checked: CheckedFile,
        config: &Value,
        replace: bool,
    ) -> Result<Upgrade, LoadError> {
        let path = checked.path.clone();
        let (identity, hash) = (checked.identity, checked.hash);
        let config_text = if config.is_null() {
            String::new()
        } else {
            config.to_string()
        };
        let sequence = self.shared.sequence.fetch_add(1, Ordering::Relaxed);
        // The slow part (copy, dlopen, init) runs before taking the lock.
        let close_native = self.shared.config.retire == RetirePolicy::Unload;
        let dynamic = loader::DynamicProviders::new();
        let registry = Arc::downgrade(&self.shared);
        let republish: crate::host_calls::Republish = Box::new(move |service| {
            if let Some(shared) = registry.upgrade() {
                Registry { shared }.republish(service);
            }
        });
        let host = crate::host_calls::context(
            &self.shared.dispatcher,
            &self.shared.data,
            &dynamic,
            republish,
        );
        let plugin = if self.isolates(&path) {
            drop(host);
            let config = &self.shared.config;
            let command = config
                .plugin_host
                .as_ref()
                .ok_or_else(|| LoadError::Isolation {
                    path: path.clone(),
                    reason: "the registry has no plugin host program \
                             (RegistryConfig::plugin_host)"
                        .into(),
                })?;
            let settings = loader::IsolationSettings {
                command,
                start_timeout: config
                    .load_probe_timeout
                    .unwrap_or(loader::probe::DEFAULT_PROBE_TIMEOUT),
                call_timeout: config
                    .isolated_call_timeout
                    .unwrap_or(crate::isolation::DEFAULT_CALL_TIMEOUT),
            };
            loader::load_isolated(
                checked,
                &self.shared.copies,
                sequence,
                &config_text,
                &settings,
            )?
        } else {
            loader::load(
                checked,
                &self.shared.copies,
                sequence,
                &config_text,
                close_native,
                host,
                dynamic,
                self.probe_settings().as_ref(),
            )?
        };

        let _changing = self.changing();
        let mut state = self.shared.state.lock();
        let mut previous = if replace {
            state.plugins.iter().position(|p| p.info.file == path)
        } else {
            None
        };
        let clash =
            state.plugins.iter().enumerate().find(|(index, other)| {
                other.info.app == plugin.info.app && Some(*index) != previous
            });
        if let Some((index, existing)) = clash {
            if previous.is_none() && !existing.info.file.exists() {
                // The plugin's file was renamed to this one (the new name's event came
                // first): the plugin moves with it.
                let old_file = existing.info.file.clone();
                tracing::info!(
                    app = %plugin.info.app,
                    from = %old_file.display(),
                    to = %path.display(),
                    "plugin file renamed"
                );
                state.files.remove(&old_file);
                previous = Some(index);
            } else {
                return Err(LoadError::DuplicateApp {
                    path,
                    app: plugin.info.app.clone(),
                    existing: existing.info.file.clone(),
                });
            }
        }
        let mut info = plugin.info.clone();
        info.priority = snapshot::plugin_priority(&self.shared.rules, &plugin);
        let plugin = Arc::new(plugin);
        let new_plugin = plugin.clone();
        let retired = match previous {
            Some(index) => {
                // Its workers stop before the state is exported and the version retired; from
                // here its added providers change nothing until it is gone.
                let old = &state.plugins[index];
                old.dynamic.published.store(false, Ordering::Release);
                processes::uninstall(&self.shared.engine, old);
                // Hand-over as late as possible: calls the old version answers after this
                // point are not in the state it exported.
                if let Some(handed) = state.plugins[index].export_state() {
                    plugin.import_state(&handed);
                }
                Some(std::mem::replace(&mut state.plugins[index], plugin))
            }
            None => {
                state.plugins.push(plugin.clone());
                None
            }
        };
        state.configs.insert(path.clone(), config.clone());
        state.files.insert(
            path,
            FileRecord {
                app: Some(info.app.clone()),
                config: config.clone(),
                identity: Some(identity),
                hash: Some(hash),
                error: None,
            },
        );
        let mut deliveries = self.publish(&state.plugins);
        new_plugin.dynamic.published.store(true, Ordering::SeqCst);
        // Providers it added or removed since the table above was built.
        if new_plugin.dynamic.dirty.swap(false, Ordering::SeqCst) {
            deliveries.extend(self.publish(&state.plugins));
        }
        if !self.shared.config.skip_processes {
            processes::install(&self.shared.engine, &new_plugin);
        }
        let outcome = match retired {
            Some(old) => {
                let mut old_info = old.info.clone();
                old_info.priority = snapshot::plugin_priority(&self.shared.rules, &old);
                tracing::info!(
                    app = %info.app,
                    from = %old_info.version,
                    to = %info.version,
                    "plugin upgraded"
                );
                self.retire(&mut state, old);
                Upgrade::Replaced {
                    old: old_info,
                    new: info,
                }
            }
            None => Upgrade::Loaded(info),
        };
        drop(state);
        self.shared.data.deliver(deliveries);
        Ok(outcome)
    }

    fn record_error(&self, path: &Path, config: &Value, err: &LoadError) {
        let mut state = self.shared.state.lock();
        if !state.configs.contains_key(path) {
            state.configs.insert(path.to_owned(), config.clone());
        }
        let record = state.files.entry(path.to_owned()).or_default();
        if record.app.is_none() {
            record.config = config.clone();
        }
        record.identity = FileIdentity::stat(path).ok();
        record.error = Some(err.to_string());
    }

    /// Moves a version out of service: dropped now (its library closes when the last call
    /// using it returns) or kept, per the retire policy.
    fn retire(&self, state: &mut State, old: Arc<LoadedPlugin>) {
        state.retired_total += 1;
        match self.shared.config.retire {
            RetirePolicy::KeepLoaded => state.kept.push(old),
            RetirePolicy::Release | RetirePolicy::Unload => {
                state.retired.push(Retired {
                    copy: old.copy.clone(),
                    plugin: Arc::downgrade(&old),
                });
                drop(old);
                // Reading `/proc/self/maps` costs time in the number of mappings, which grows
                // with every retired native-path version: look again only when the list has
                // doubled since the last look, so a retirement costs O(1) amortised.
                if state.retired.len() >= 2 * state.retired_after_prune.max(16) {
                    state.prune_retired();
                }
            }
        }
    }

    /// Publishes a new dispatch table after a plugin added or removed a provider of
    /// `service`, and delivers the notifications; while a load, upgrade or unload is under way
    /// (which may be what calls the plugin), once it ends.
    pub(crate) fn republish(&self, service: &str) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.pending.lock().insert(service.to_owned());
        if self.shared.changing.load(SeqCst) == 0 {
            self.publish_pending();
        }
    }

    /// Publishes the queued changes of added providers.
    fn publish_pending(&self) {
        let services = std::mem::take(&mut *self.shared.pending.lock());
        if services.is_empty() {
            return;
        }
        let state = self.shared.state.lock();
        let mut deliveries = Vec::new();
        for service in &services {
            deliveries.extend(self.publish_with(&state.plugins, Some(service)));
        }
        drop(state);
        self.shared.data.deliver(deliveries);
    }

    /// Marks a load, upgrade or unload under way until the mark is dropped, then publishes
    /// what plugins changed meanwhile. Take it before the state lock (so that it is dropped
    /// after).
    fn changing(&self) -> Changing<'_> {
        self.shared
            .changing
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Changing { registry: self }
    }

    /// Removes a plugin from dispatch. Calls already running finish on it; its library is
    /// closed when the last of them returns. Returns false when no such plugin is loaded.
    pub fn unload(&self, app: &str) -> bool {
        let started = Instant::now();
        let unloaded = self.unload_where(|plugin| plugin.info.app == app);
        if let Some(info) = &unloaded {
            self.record_change(&info.file, started, &Ok(Upgrade::Removed(info.clone())));
        }
        unloaded.is_some()
    }

    /// Unloads the plugin loaded from `path`, if any.
    pub fn unload_file(&self, path: impl AsRef<Path>) -> Option<PluginInfo> {
        let path = path.as_ref();
        let started = Instant::now();
        let unloaded = self.unload_where(|plugin| plugin.info.file == path);
        if let Some(info) = &unloaded {
            self.record_change(path, started, &Ok(Upgrade::Removed(info.clone())));
        }
        unloaded
    }

    fn unload_where(&self, matches: impl Fn(&LoadedPlugin) -> bool) -> Option<PluginInfo> {
        let _changing = self.changing();
        let mut state = self.shared.state.lock();
        let index = state.plugins.iter().position(|plugin| matches(plugin))?;
        state.plugins[index]
            .dynamic
            .published
            .store(false, Ordering::Release);
        processes::uninstall(&self.shared.engine, &state.plugins[index]);
        let old = state.plugins.remove(index);
        state.files.remove(&old.info.file);
        let deliveries = self.publish(&state.plugins);
        let info = old.info.clone();
        tracing::info!(app = %info.app, version = %info.version, "plugin unloaded");
        self.retire(&mut state, old);
        // Files refused while it was loaded (a duplicate of it, say) get another chance.
        let failed: Vec<PathBuf> = state
            .files
            .iter()
            .filter(|(_, record)| record.app.is_none() && record.error.is_some())
            .map(|(path, _)| path.clone())
            .collect();
        drop(state);
        self.shared.data.deliver(deliveries);
        for path in failed {
            let _ = self.upgrade(&path);
        }
        Some(info)
    }

    /// Re-checks every known plugin file and every plugin file of the watched directories:
    /// upgrades what changed, loads new files, unloads plugins whose file is gone. Returns
    /// what happened per file.
    pub fn reload(&self) -> Vec<(PathBuf, Result<Upgrade, LoadError>)> {
        let mut paths: BTreeSet<PathBuf> = self.shared.state.lock().files.keys().cloned().collect();
        for dir in self.watched_dirs() {
            paths.extend(self.plugin_files(&dir).unwrap_or_default());
        }
        paths
            .into_iter()
            .map(|path| {
                let result = self.upgrade(&path);
                (path, result)
            })
            .collect()
    }

    /// The status of one plugin file: the plugin loaded from it and its last error, if the
    /// registry knows the file.
    pub fn file_status(&self, path: impl AsRef<Path>) -> Option<FileStatus> {
        let path = path.as_ref();
        self.status()
            .files
            .into_iter()
            .find(|file| file.path == path)
    }

    /// The registry's state for operators: plugins, files with their errors, retired
    /// versions still mapped.
    pub fn status(&self) -> RegistryStatus {
        let plugins = self.plugins();
        let mut state = self.shared.state.lock();
        let retired_mapped = state.prune_retired();
        RegistryStatus {
            plugins,
            files: state
                .files
                .iter()
                .map(|(path, record)| FileStatus {
                    path: path.clone(),
                    app: record.app.clone(),
                    error: record.error.clone(),
                })
                .collect(),
            retired_mapped,
            retired_kept: state.kept.len(),
            retired_total: state.retired_total,
        }
    }
}
