//! Data providers and subscriptions: configuration data plugins contribute under
//! `(service, key)`, queried without a lock, with `notify` on real changes.
//!
//! [`DataHub`] owns the current [`table::DataTable`] (in a [`crate::published::Published`] cell) and the
//! mutable [`state::DataState`]. A background thread re-reads sources when they are due and
//! when a watched file is written; the registry syncs the hub whenever plugins change.

mod source;
mod state;
mod table;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use parking_lot::Mutex;
use serde_json::Value;

use crate::ids::{Interner, ServiceId};
use crate::loader::LoadedPlugin;
pub use source::{DEFAULT_DATA_READ_TIMEOUT, DEFAULT_MAX_DATA_FILE_BYTES};
pub(crate) use state::Delivery;
use state::{DataState, KeyRef, ReadJob};
pub use state::{DataStatus, SourceKind};
use table::DataTable;

/// What the background thread is asked to do.
enum Command {
    /// Files were written or renamed into place.
    Files(Vec<PathBuf>),
    /// Schedules changed: recompute the next wake-up.
    Wake,
    /// The registry is going away.
    Stop,
}

/// Owns the data table and the sources behind it.
pub(crate) struct DataHub {
    pub(crate) current: crate::published::Published<DataTable>,
    state: Mutex<DataState>,
    interner: Arc<Mutex<Interner>>,
    watcher: Mutex<Option<(notify::RecommendedWatcher, BTreeSet<PathBuf>)>>,
    commands: Mutex<Sender<Command>>,
    /// How long a read may take before its source gets an error.
    read_timeout: Duration,
    /// The host's notification observers, by subscription id.
    observers: parking_lot::RwLock<Vec<(u64, Observer)>>,
    next_observer: std::sync::atomic::AtomicU64,
}

/// A host's notification observer ([`crate::Registry::on_notification`]).
pub(crate) type Observer = Arc<dyn Fn(&epi_plugin::Notification) + Send + Sync>;

/// A host's subscription to the registry's notifications; dropping it ends the subscription.
#[must_use = "dropping the subscription ends it"]
pub struct Subscription {
    hub: std::sync::Weak<DataHub>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.observers.write().retain(|(id, _)| *id != self.id);
        }
    }
}

/// What [`crate::Registry::reload_data`] did.
#[derive(Clone, Debug)]
pub struct DataReload {
    /// Notifications delivered to plugins.
    pub notified: usize,
    /// The sources whose last read failed (each keeps its previous value).
    pub failed: Vec<DataStatus>,
}

/// The background thread of a hub; stops it when dropped.
pub(crate) struct DataWorker {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for DataWorker {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl DataHub {
    /// A hub with no sources and its running background thread.
    /// Data files over `max_file_bytes` are refused.
    pub(crate) fn start(
        interner: Arc<Mutex<Interner>>,
        max_file_bytes: u64,
        read_timeout: Duration,
    ) -> std::io::Result<(Arc<DataHub>, DataWorker)> {
        let (commands, receiver) = mpsc::channel();
        let events = commands.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if is_finished_write(&event.kind) {
                    let _ = events.send(Command::Files(event.paths));
                }
            }
        });
        let watcher = match watcher {
            Ok(watcher) => Some((watcher, BTreeSet::new())),
            Err(err) => {
                tracing::warn!("cannot watch data files, polling only: {err}");
                None
            }
        };
        let hub = Arc::new(DataHub {
            current: crate::published::Published::new(Arc::new(DataTable::default())),
            state: Mutex::new(DataState::new(max_file_bytes)),
            interner,
            watcher: Mutex::new(watcher),
            commands: Mutex::new(commands.clone()),
            read_timeout,
            observers: Default::default(),
            next_observer: std::sync::atomic::AtomicU64::new(1),
        });
        let worker_hub = hub.clone();
        let thread = std::thread::Builder::new()
            .name("epi-data".into())
            .spawn(move || worker_hub.run(receiver))?;
        Ok((
            hub,
            DataWorker {
                commands,
                thread: Some(thread),
            },
        ))
    }

    fn run(&self, commands: mpsc::Receiver<Command>) {
        loop {
            let next = self.state.lock().next_due();
            let wait = next
                .map(|due| due.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            let deliveries = match commands.recv_timeout(wait) {
                Ok(Command::Files(paths)) => self.read(|state| state.file_jobs(&paths)),
                Ok(Command::Wake) => continue,
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => self.read(DataState::due_jobs),
            };
            self.deliver(deliveries);
        }
    }

    /// Adds a host observer.
    pub(crate) fn observe(self: &Arc<Self>, observer: Observer) -> Subscription {
        let id = self
            .next_observer
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.observers.write().push((id, observer));
        Subscription {
            hub: Arc::downgrade(self),
            id,
        }
    }

    /// Delivers notifications, one plugin call each (failures are logged by the plugin
    /// wrapper), and those for the host to its observers.
    pub(crate) fn deliver(&self, deliveries: Vec<Delivery>) {
        for (recipient, notification) in deliveries {
            match recipient {
                Some(plugin) => plugin.notify(&notification),
                None => {
                    let observers: Vec<Observer> = self
                        .observers
                        .read()
                        .iter()
                        .map(|(_, o)| o.clone())
                        .collect();
                    for observer in observers {
                        let delivered =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                observer(&notification)
                            }));
                        if delivered.is_err() {
                            tracing::error!("a host's notification observer panicked");
                        }
                    }
                }
            }
        }
    }

    /// Applies a change to the sources; publishes a new table when content changed and returns
    /// the notifications to deliver (after every lock is released).
    fn change(&self, apply: impl FnOnce(&mut DataState) -> BTreeSet<KeyRef>) -> Vec<Delivery> {
        let mut state = self.state.lock();
        let changed = apply(&mut state);
        if changed.is_empty() {
            return Vec::new();
        }
        let mut interner = self.interner.lock();
        let old = self.current.load_full();
        let new = Arc::new(state.table(&mut interner));
        self.current.store(new.clone());
        state.notifications(&changed, &old, &new, &mut interner)
    }

    /// Reads the sources `take` picks off every lock (waiting at most the read timeout), then
    /// publishes what changed; returns the notifications to deliver.
    fn read(&self, take: impl FnOnce(&mut DataState) -> Vec<ReadJob>) -> Vec<Delivery> {
        let jobs = take(&mut self.state.lock());
        if jobs.is_empty() {
            return Vec::new();
        }
        let outcomes = source::read_all(jobs, self.read_timeout);
        self.change(|state| state.apply_reads(outcomes))
    }

    /// Follows the loaded plugins (in dispatch order); the sources of new plugins are read
    /// before it returns.
    pub(crate) fn sync(&self, plugins: &[Arc<LoadedPlugin>]) -> Vec<Delivery> {
        let mut deliveries = self.change(|state| state.sync(plugins));
        deliveries.extend(self.read(DataState::unread_jobs));
        self.update_watches();
        let _ = self.commands.lock().send(Command::Wake);
        deliveries
    }

    /// Re-reads every source now; returns the notifications to deliver.
    pub(crate) fn reload_all(&self) -> Vec<Delivery> {
        self.read(DataState::all_jobs)
    }

    /// Every source's status.
    pub(crate) fn status(&self) -> Vec<DataStatus> {
        self.state.lock().status()
    }

    fn update_watches(&self) {
        let wanted = self.state.lock().watched_dirs();
        let mut guard = self.watcher.lock();
        let Some((watcher, watched)) = guard.as_mut() else {
            return;
        };
        for dir in wanted.difference(&watched.clone()) {
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir.clone());
                }
                Err(err) => tracing::warn!(dir = %dir.display(), "cannot watch: {err}"),
            }
        }
        for dir in watched.clone().difference(&wanted) {
            let _ = watcher.unwatch(dir);
            watched.remove(dir);
        }
    }
}

/// A writer finished: closed after writing, or renamed into place. Opens and reads (including
/// the runtime's own) and partial writes are ignored.
fn is_finished_write(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            | EventKind::Remove(_)
    )
}

/// A service's data: lock-free queries over the current table. Cheap to clone; valid across
/// reloads.
///
/// Values are `Arc<serde_json::Value>`: a query clones pointers, never data. "Plugin order" is
/// the dispatch order of the plugins providing the data.
#[derive(Clone)]
pub struct DataHandle {
    hub: Arc<DataHub>,
    service: ServiceId,
    name: Arc<str>,
}

/// Names (declared keys, or the app names of sources) in order. Derefs to `[Arc<str>]`, and
/// compares with lists of `&str`: `assert_eq!(data.keys(), ["colour", "size"])`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Names(Arc<[Arc<str>]>);

impl std::ops::Deref for Names {
    type Target = [Arc<str>];

    fn deref(&self) -> &[Arc<str>] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a Arc<str>;
    type IntoIter = std::slice::Iter<'a, Arc<str>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl PartialEq<[&str]> for Names {
    fn eq(&self, other: &[&str]) -> bool {
        self.0.len() == other.len() && self.0.iter().zip(other).all(|(a, b)| **a == **b)
    }
}

impl<const N: usize> PartialEq<[&str; N]> for Names {
    fn eq(&self, other: &[&str; N]) -> bool {
        *self == other[..]
    }
}

impl PartialEq<Vec<&str>> for Names {
    fn eq(&self, other: &Vec<&str>) -> bool {
        *self == other[..]
    }
}

/// Values in order. Derefs to `[Arc<Value>]` (a query clones pointers, never data), and
/// compares with lists of values: `assert_eq!(data.get("colour"), [json!("red")])`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct Values(Vec<Arc<Value>>);

impl std::ops::Deref for Values {
    type Target = [Arc<Value>];

    fn deref(&self) -> &[Arc<Value>] {
        &self.0
    }
}

impl IntoIterator for Values {
    type Item = Arc<Value>;
    type IntoIter = std::vec::IntoIter<Arc<Value>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Values {
    type Item = &'a Arc<Value>;
    type IntoIter = std::slice::Iter<'a, Arc<Value>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl PartialEq<[Value]> for Values {
    fn eq(&self, other: &[Value]) -> bool {
        self.0.len() == other.len() && self.0.iter().zip(other).all(|(a, b)| **a == *b)
    }
}

impl<const N: usize> PartialEq<[Value; N]> for Values {
    fn eq(&self, other: &[Value; N]) -> bool {
        *self == other[..]
    }
}

impl PartialEq<Vec<Value>> for Values {
    fn eq(&self, other: &Vec<Value>) -> bool {
        *self == other[..]
    }
}

/// A name (a source's app name or a key) with its value; compares with `(&str, Value)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Named {
    /// The source's app name (queries by key) or the key (queries by source).
    pub name: Arc<str>,
    /// The value.
    pub value: Arc<Value>,
}

impl PartialEq<(&str, Value)> for Named {
    fn eq(&self, (name, value): &(&str, Value)) -> bool {
        &*self.name == *name && *self.value == *value
    }
}

/// A name with its members: a key with its sources' values, or a source with its keys'
/// values. Compares with `(&str, [(&str, Value), ...])`.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The key (queries by key) or the source's app name (queries by source).
    pub name: Arc<str>,
    /// The members, as [`Named`].
    pub members: Vec<Named>,
}

impl<M> PartialEq<(&str, M)> for Group
where
    Vec<Named>: PartialEq<M>,
{
    fn eq(&self, (name, members): &(&str, M)) -> bool {
        &*self.name == *name && self.members == *members
    }
}

/// One `(source, key, value)` of [`DataHandle::all`]; compares with `(&str, &str, Value)`.
#[derive(Clone, Debug, PartialEq)]
pub struct DataEntry {
    /// App name of the providing plugin.
    pub source: Arc<str>,
    /// The declared key.
    pub key: Arc<str>,
    /// The value.
    pub value: Arc<Value>,
}

impl PartialEq<(&str, &str, Value)> for DataEntry {
    fn eq(&self, (source, key, value): &(&str, &str, Value)) -> bool {
        &*self.source == *source && &*self.key == *key && *self.value == *value
    }
}

impl DataHandle {
    pub(crate) fn new(hub: Arc<DataHub>, service: ServiceId, name: Arc<str>) -> Self {
        DataHandle { hub, service, name }
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.name
    }

    fn with<R>(&self, empty: R, query: impl FnOnce(&table::ServiceData) -> R) -> R {
        let table = self.hub.current.pin();
        match table.service(self.service) {
            Some(data) => query(data),
            None => empty,
        }
    }

    /// Declared keys, sorted and unique (wildcard keys keep their `*`).
    pub fn keys(&self) -> Names {
        Names(self.with(Arc::from(Vec::new()), |data| data.keys.clone()))
    }

    /// App names of the plugins providing data for this service, in plugin order.
    pub fn providers(&self) -> Names {
        Names(self.with(Arc::from(Vec::new()), |data| data.sources.clone()))
    }

    /// `source`'s value for `key`: its exact key if it declares one, else its longest
    /// matching wildcard. Allocates nothing.
    #[inline]
    pub fn get_value(&self, source: &str, key: &str) -> Option<Arc<Value>> {
        let table = self.hub.current.pin();
        table.service(self.service)?.get_value(source, key).cloned()
    }

    /// Every source's value for `key`, in plugin order (per source: exact key beats wildcard,
    /// longest prefix wins).
    pub fn get(&self, key: &str) -> Values {
        Values(self.with(Vec::new(), |data| {
            data.resolve(key)
                .into_iter()
                .map(|item| item.value.clone())
                .collect()
        }))
    }

    /// `[(source, value)]` for `key`, resolved as [`DataHandle::get`], in plugin order.
    pub fn by_key(&self, key: &str) -> Vec<Named> {
        self.with(Vec::new(), |data| {
            data.resolve(key)
                .into_iter()
                .map(|item| Named {
                    name: item.source.clone(),
                    value: item.value.clone(),
                })
                .collect()
        })
    }

    /// Every declared key with `[(source, value)]`: keys sorted, sources in plugin order.
    pub fn by_key_all(&self) -> Vec<Group> {
        self.with(Vec::new(), |data| {
            data.declared
                .iter()
                .map(|(key, items)| Group {
                    name: key.clone(),
                    members: items
                        .iter()
                        .map(|item| Named {
                            name: item.source.clone(),
                            value: item.value.clone(),
                        })
                        .collect(),
                })
                .collect()
        })
    }

    /// `[(key, value)]` provided by `source`, keys sorted.
    pub fn by_source(&self, source: &str) -> Vec<Named> {
        self.with(Vec::new(), |data| {
            data.items
                .iter()
                .filter(|item| &*item.source == source)
                .map(|item| Named {
                    name: item.key.clone(),
                    value: item.value.clone(),
                })
                .collect()
        })
    }

    /// Every source with its `[(key, value)]`: sources in plugin order, keys sorted.
    pub fn by_source_all(&self) -> Vec<Group> {
        self.with(Vec::new(), |data| {
            data.sources
                .iter()
                .map(|source| Group {
                    name: source.clone(),
                    members: data
                        .items
                        .iter()
                        .filter(|item| item.source == *source)
                        .map(|item| Named {
                            name: item.key.clone(),
                            value: item.value.clone(),
                        })
                        .collect(),
                })
                .collect()
        })
    }

    /// Every `(source, key, value)`: plugin order, then keys sorted.
    pub fn all(&self) -> Vec<DataEntry> {
        self.with(Vec::new(), |data| {
            data.items
                .iter()
                .map(|item| DataEntry {
                    source: item.source.clone(),
                    key: item.key.clone(),
                    value: item.value.clone(),
                })
                .collect()
        })
    }

    /// Content hash of all this service's data; `None` when there is none. Equal data gives
    /// an equal version.
    pub fn version(&self) -> Option<u64> {
        self.with(None, |data| Some(data.version))
    }

    /// Content hash of one source's data for this service; `None` when it provides none.
    pub fn version_of(&self, source: &str) -> Option<u64> {
        self.with(None, |data| data.source_version(source))
    }
}
