//! The mutable side of data: every source's last good value, last error and schedule. Guarded
//! by a mutex that queries never take; each change produces a new [`DataTable`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::source;
use super::table::{self, DataTable, Item};
use crate::abi::manifest::DataSource;
use crate::ids::Interner;
use crate::loader::LoadedPlugin;
use epi_plugin::{Notification, SourcedValue};

/// How often a file or callback source is re-read when its plugin sets no interval.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// What kind of source an entry reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A JSON or TOML file.
    File,
    /// Data compiled into the plugin.
    Static,
    /// A plugin callback.
    Callback,
}

/// One data source as the registry status shows it.
#[derive(Clone, Debug)]
pub struct DataStatus {
    /// The service.
    pub service: String,
    /// The declared key.
    pub key: String,
    /// App name of the providing plugin.
    pub source: String,
    /// What kind of source it is.
    pub kind: SourceKind,
    /// The resolved file, for file sources.
    pub path: Option<PathBuf>,
    /// How often it is re-checked (the shortest interval among the key's providers).
    pub interval: Option<Duration>,
    /// Content hash of the value being served, if one was ever read.
    pub hash: Option<u64>,
    /// The last read's error; the previous value keeps being served.
    pub error: Option<String>,
    /// When it was last read.
    pub checked_at: Option<SystemTime>,
}

/// A `(service, key)` whose content may have changed.
pub(crate) type KeyRef = (Arc<str>, Arc<str>);

/// A notification and the plugin it goes to.
/// A notification and whom it goes to: a plugin, or (`None`) the host's observers
/// ([`crate::Registry::on_notification`]).
pub(crate) type Delivery = (Option<Arc<LoadedPlugin>>, Notification);

struct Entry {
    plugin: Arc<LoadedPlugin>,
    /// Index in `plugin.data_providers`.
    index: usize,
    rank: u32,
    service: Arc<str>,
    key: Arc<str>,
    kind: SourceKind,
    path: Option<PathBuf>,
    interval: Option<Duration>,
    next_due: Option<Instant>,
    current: Option<(Arc<Value>, u64)>,
    error: Option<String>,
    checked_at: Option<SystemTime>,
    /// Set while a read of this source is under way (it may outlive its timeout).
    busy: Arc<AtomicBool>,
}

/// One source to read, taken from the state so that the read runs off its lock.
pub(crate) struct ReadJob {
    pub(crate) plugin: Arc<LoadedPlugin>,
    pub(crate) index: usize,
    pub(crate) path: Option<PathBuf>,
    pub(crate) limit: u64,
    /// Cleared by whoever finishes the read.
    pub(crate) busy: Arc<AtomicBool>,
}

impl Entry {
    fn new(plugin: &Arc<LoadedPlugin>, index: usize, rank: u32) -> Self {
        let descriptor = &plugin.data_providers[index];
        let (kind, path) = match &descriptor.source {
            DataSource::File(path) => {
                let path = PathBuf::from(path);
                let path = if path.is_absolute() {
                    path
                } else {
                    plugin.directory().join(path)
                };
                (SourceKind::File, Some(path))
            }
            DataSource::Static(_) | DataSource::Invalid(_) => (SourceKind::Static, None),
            DataSource::Callback(_) => (SourceKind::Callback, None),
        };
        Entry {
            plugin: plugin.clone(),
            index,
            rank,
            service: descriptor.service.as_str().into(),
            key: descriptor.key.as_str().into(),
            kind,
            path,
            interval: None,
            next_due: None,
            current: None,
            error: None,
            checked_at: None,
            busy: Arc::default(),
        }
    }

    /// Own interval before taking the key's minimum.
    fn own_interval(&self) -> Option<Duration> {
        match self.kind {
            SourceKind::Static => None,
            _ => Some(
                self.plugin.data_providers[self.index]
                    .interval_ms
                    .map(Duration::from_millis)
                    .unwrap_or(DEFAULT_INTERVAL),
            ),
        }
    }

    /// Takes a read of the source, unless one is under way.
    fn job(&mut self, now: Instant, limit: u64) -> Option<ReadJob> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.checked_at = Some(SystemTime::now());
        self.next_due = self.interval.map(|interval| now + interval);
        Some(ReadJob {
            plugin: self.plugin.clone(),
            index: self.index,
            path: self.path.clone(),
            limit,
            busy: self.busy.clone(),
        })
    }

    /// Takes a read's outcome; true when the served content changed. A failure keeps the old
    /// value.
    fn apply(&mut self, outcome: Result<source::Read, String>) -> bool {
        match outcome {
            Ok(read) => {
                self.error = None;
                if self
                    .current
                    .as_ref()
                    .is_some_and(|(_, hash)| *hash == read.hash)
                {
                    return false;
                }
                self.current = Some((Arc::new(read.value), read.hash));
                true
            }
            Err(reason) => {
                if self.error.as_deref() != Some(&reason) {
                    tracing::error!(
                        plugin = %self.plugin.info.app,
                        service = %self.service,
                        key = %self.key,
                        "data source failed, keeping its previous data: {reason}"
                    );
                }
                self.error = Some(reason);
                false
            }
        }
    }

    fn key_ref(&self) -> KeyRef {
        (self.service.clone(), self.key.clone())
    }
}

/// Every data source of the loaded plugins.
pub(crate) struct DataState {
    entries: Vec<Entry>,
    plugins: Vec<Arc<LoadedPlugin>>,
    /// Data files larger than this are refused.
    max_file_bytes: u64,
}

impl DataState {
    /// No sources; data files up to `max_file_bytes` are read.
    pub(crate) fn new(max_file_bytes: u64) -> DataState {
        DataState {
            entries: Vec::new(),
            plugins: Vec::new(),
            max_file_bytes,
        }
    }
}

impl DataState {
    /// Follows a new set of loaded plugins (in dispatch order): keeps the state of sources
    /// that remain, reads new ones, drops removed ones. Returns the keys that may have changed.
    pub(crate) fn sync(&mut self, plugins: &[Arc<LoadedPlugin>]) -> BTreeSet<KeyRef> {
        let now = Instant::now();
        let mut changed = BTreeSet::new();
        let mut old: Vec<Option<Entry>> = std::mem::take(&mut self.entries)
            .into_iter()
            .map(Some)
            .collect();
        for (rank, plugin) in plugins.iter().enumerate() {
            for index in 0..plugin.data_providers.len() {
                let kept = old.iter_mut().find_map(|slot| {
                    slot.take_if(|entry| Arc::ptr_eq(&entry.plugin, plugin) && entry.index == index)
                });
                let entry = match kept {
                    Some(mut entry) => {
                        if entry.rank != rank as u32 {
                            entry.rank = rank as u32;
                            changed.insert(entry.key_ref());
                        }
                        entry
                    }
                    None => {
                        // Read by the caller, off the lock (`unread_jobs`).
                        let entry = Entry::new(plugin, index, rank as u32);
                        changed.insert(entry.key_ref());
                        entry
                    }
                };
                self.entries.push(entry);
            }
        }
        changed.extend(old.into_iter().flatten().map(|entry| entry.key_ref()));
        self.plugins = plugins.to_vec();
        self.schedule(now);
        changed
    }

    /// Gives every entry its key's shortest interval and a due time.
    fn schedule(&mut self, now: Instant) {
        let mut shortest: BTreeMap<KeyRef, Duration> = BTreeMap::new();
        for entry in &self.entries {
            if let Some(interval) = entry.own_interval() {
                shortest
                    .entry(entry.key_ref())
                    .and_modify(|current| *current = (*current).min(interval))
                    .or_insert(interval);
            }
        }
        for entry in &mut self.entries {
            entry.interval = match entry.kind {
                SourceKind::Static => None,
                _ => shortest.get(&entry.key_ref()).copied(),
            };
            let due = entry.interval.map(|interval| now + interval);
            entry.next_due = match (entry.next_due, due) {
                (Some(current), Some(due)) => Some(current.min(due)),
                (_, due) => due,
            };
        }
    }

    /// Reads of the entries `select` picks (those not being read already).
    fn jobs(&mut self, select: impl Fn(&Entry) -> bool) -> Vec<ReadJob> {
        let now = Instant::now();
        let limit = self.max_file_bytes;
        self.entries
            .iter_mut()
            .filter(|entry| select(entry))
            .filter_map(|entry| entry.job(now, limit))
            .collect()
    }

    /// Reads of the sources never read yet (new since the last `sync`).
    pub(crate) fn unread_jobs(&mut self) -> Vec<ReadJob> {
        self.jobs(|entry| entry.checked_at.is_none())
    }

    /// Reads of every source whose time came.
    pub(crate) fn due_jobs(&mut self) -> Vec<ReadJob> {
        let now = Instant::now();
        self.jobs(|entry| entry.next_due.is_some_and(|due| due <= now))
    }

    /// Reads of every file source reading one of `paths`.
    pub(crate) fn file_jobs(&mut self, paths: &[PathBuf]) -> Vec<ReadJob> {
        self.jobs(|entry| entry.path.as_ref().is_some_and(|path| paths.contains(path)))
    }

    /// Reads of every source.
    pub(crate) fn all_jobs(&mut self) -> Vec<ReadJob> {
        self.jobs(|_| true)
    }

    /// Takes the outcomes of reads (for sources still present); returns the keys whose
    /// content changed.
    pub(crate) fn apply_reads(
        &mut self,
        outcomes: Vec<(ReadJob, Result<source::Read, String>)>,
    ) -> BTreeSet<KeyRef> {
        let mut changed = BTreeSet::new();
        for (job, outcome) in outcomes {
            let entry = self
                .entries
                .iter_mut()
                .find(|entry| Arc::ptr_eq(&entry.plugin, &job.plugin) && entry.index == job.index);
            if let Some(entry) = entry {
                if entry.apply(outcome) {
                    changed.insert(entry.key_ref());
                }
            }
        }
        changed
    }

    /// When the next source is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.entries.iter().filter_map(|entry| entry.next_due).min()
    }

    /// Directories holding file sources, to watch.
    pub(crate) fn watched_dirs(&self) -> BTreeSet<PathBuf> {
        self.entries
            .iter()
            .filter_map(|entry| entry.path.as_ref()?.parent().map(PathBuf::from))
            .collect()
    }

    /// Builds the data table from every source's current value.
    pub(crate) fn table(&self, interner: &mut Interner) -> DataTable {
        let items = self
            .entries
            .iter()
            .filter_map(|entry| {
                let (value, hash) = entry.current.as_ref()?;
                let (service, _) = interner.service(&entry.service);
                Some((
                    service,
                    Item {
                        source: entry.plugin.app.clone(),
                        key: entry.key.clone(),
                        value: value.clone(),
                        hash: *hash,
                        rank: entry.rank,
                    },
                ))
            })
            .collect();
        table::build(items)
    }

    /// Notifications for the keys in `changed` whose content differs between two tables:
    /// to every current plugin that subscribes to or provides the key, once.
    pub(crate) fn notifications(
        &self,
        changed: &BTreeSet<KeyRef>,
        old: &DataTable,
        new: &DataTable,
        interner: &mut Interner,
    ) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        for (service, key) in changed {
            let (id, _) = interner.service(service);
            let before = old.declared(id, key);
            let after = new.declared(id, key);
            let fingerprint = |items: &[Item]| {
                items
                    .iter()
                    .map(|i| (i.source.clone(), i.hash))
                    .collect::<Vec<_>>()
            };
            if fingerprint(before) == fingerprint(after) {
                continue;
            }
            let values = |items: &[Item]| {
                items
                    .iter()
                    .map(|item| SourcedValue {
                        source: item.source.to_string(),
                        value: (*item.value).clone(),
                    })
                    .collect::<Vec<_>>()
            };
            let notification = Notification::Data {
                service: service.to_string(),
                key: key.to_string(),
                old: values(before),
                new: values(after),
            };
            for plugin in &self.plugins {
                if interested(plugin, service, key) {
                    deliveries.push((Some(plugin.clone()), notification.clone()));
                }
            }
            deliveries.push((None, notification));
        }
        deliveries
    }

    /// Every source's status, in plugin order.
    pub(crate) fn status(&self) -> Vec<DataStatus> {
        self.entries
            .iter()
            .map(|entry| DataStatus {
                service: entry.service.to_string(),
                key: entry.key.to_string(),
                source: entry.plugin.info.app.clone(),
                kind: entry.kind,
                path: entry.path.clone(),
                interval: entry.interval,
                hash: entry.current.as_ref().map(|(_, hash)| *hash),
                error: entry.error.clone(),
                checked_at: entry.checked_at,
            })
            .collect()
    }
}

/// Whether `a` and `b` name overlapping keys (either may be a `*` wildcard).
fn keys_overlap(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let covers = |wild: &str, other: &str| {
        wild.strip_suffix('*')
            .is_some_and(|prefix| other.starts_with(prefix))
    };
    covers(a, b) || covers(b, a)
}

/// Whether `plugin` subscribes to or provides `(service, key)`.
fn interested(plugin: &LoadedPlugin, service: &str, key: &str) -> bool {
    plugin
        .data_subscriptions
        .iter()
        .any(|(s, k)| s == service && keys_overlap(k, key))
        || plugin
            .data_providers
            .iter()
            .any(|provider| provider.service == service && provider.key == key)
}

#[cfg(test)]
mod tests {
    use super::keys_overlap;

    #[test]
    fn wildcards_overlap_by_prefix() {
        assert!(keys_overlap("log.level", "log.level"));
        assert!(keys_overlap("log.*", "log.level"));
        assert!(keys_overlap("log.level", "log.*"));
        assert!(keys_overlap("log*", "log"));
        assert!(!keys_overlap("log.*", "lo"));
        assert!(!keys_overlap("a", "b"));
    }
}
