//! What happened to the plugin set, for operators: every load, upgrade, unload and refused
//! file with when it happened, how long it took and its outcome (the latest
//! [`HISTORY_LENGTH`]), totals per file, and the durations of all of them.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::abi::LATENCY_BOUNDS_NS;
use crate::error::LoadError;
use crate::registry::{LatencyCounts, Upgrade};

/// How many changes [`crate::Registry::history`] keeps.
pub const HISTORY_LENGTH: usize = 256;

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A plugin was loaded from a file no plugin came from.
    Loaded,
    /// A new version replaced the one loaded from the file.
    Replaced,
    /// The plugin was unloaded (its file is gone, or the host asked).
    Removed,
    /// The file was refused; what served before keeps serving.
    Failed,
}

/// One change of the plugin set.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// When it ended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The plugin file.
    pub file: PathBuf,
    /// The plugin's app name, when known.
    pub app: Option<String>,
    /// What happened.
    pub kind: ChangeKind,
    /// The version serving before, if any.
    pub from_version: Option<String>,
    /// The version serving after, if any.
    pub to_version: Option<String>,
    /// How long it took, checks and `init` included, in seconds.
    pub seconds: f64,
    /// Why the file was refused.
    pub error: Option<String>,
}

/// Changes of one plugin file since the registry started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileTotals {
    /// The app name of the last plugin loaded from it, if one ever was.
    pub app: Option<String>,
    /// First loads.
    pub loads: u64,
    /// Replacements by a new version.
    pub upgrades: u64,
    /// Unloads.
    pub removals: u64,
    /// Refusals.
    pub failures: u64,
}

/// The registry's history (see [`crate::Registry::history`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The latest changes, oldest first.
    pub changes: Vec<Change>,
    /// Totals per plugin file.
    pub totals: BTreeMap<PathBuf, FileTotals>,
    /// Durations of every change since the registry started.
    pub durations: LatencyCounts,
}

/// The history as the registry keeps it.
#[derive(Debug)]
pub(crate) struct Recorder {
    changes: VecDeque<Change>,
    totals: BTreeMap<PathBuf, FileTotals>,
    durations: LatencyCounts,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            changes: VecDeque::new(),
            totals: BTreeMap::new(),
            durations: LatencyCounts {
                buckets: vec![0; LATENCY_BOUNDS_NS.len() + 1],
                sum_ns: 0,
            },
        }
    }
}

impl Recorder {
    /// Records what an attempt on `path` gave, if it changed anything or failed.
    pub(crate) fn record(
        &mut self,
        path: &Path,
        took: Duration,
        result: &Result<Upgrade, LoadError>,
    ) {
        let (kind, app, from_version, to_version, error) = match result {
            Ok(Upgrade::Unchanged) => return,
            Ok(Upgrade::Loaded(info)) => (
                ChangeKind::Loaded,
                Some(info.app.clone()),
                None,
                Some(info.version.clone()),
                None,
            ),
            Ok(Upgrade::Replaced { old, new }) => (
                ChangeKind::Replaced,
                Some(new.app.clone()),
                Some(old.version.clone()),
                Some(new.version.clone()),
                None,
            ),
            Ok(Upgrade::Removed(info)) => (
                ChangeKind::Removed,
                Some(info.app.clone()),
                Some(info.version.clone()),
                None,
                None,
            ),
            Err(err) => (ChangeKind::Failed, None, None, None, Some(err.to_string())),
        };
        let totals = self.totals.entry(path.to_owned()).or_default();
        match kind {
            ChangeKind::Loaded => totals.loads += 1,
            ChangeKind::Replaced => totals.upgrades += 1,
            ChangeKind::Removed => totals.removals += 1,
            ChangeKind::Failed => totals.failures += 1,
        }
        if app.is_some() {
            totals.app.clone_from(&app);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < nanos);
        self.durations.buckets[bucket] += 1;
        self.durations.sum_ns = self.durations.sum_ns.saturating_add(nanos);
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|since| since.as_millis() as u64)
            .unwrap_or(0);
        if self.changes.len() == HISTORY_LENGTH {
            self.changes.pop_front();
        }
        self.changes.push_back(Change {
            at_ms,
            file: path.to_owned(),
            app: app.or_else(|| totals.app.clone()),
            kind,
            from_version,
            to_version,
            seconds: took.as_secs_f64(),
            error,
        });
    }

    /// A copy for readers.
    pub(crate) fn report(&self) -> History {
        History {
            changes: self.changes.iter().cloned().collect(),
            totals: self.totals.clone(),
            durations: self.durations.clone(),
        }
    }
}
