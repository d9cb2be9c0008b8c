//! Views of data: `/_epi/data` (every source's state) and the queries under
//! `/_epi/data/{service}/`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

/// One data source's state (from [`epi::DataStatus`]). `interval` is `{"secs", "nanos"}` and
/// `checked_at` `{"secs_since_epoch", "nanos_since_epoch"}`, as serde writes those types.
#[derive(Serialize)]
pub struct DataStatus<'a> {
    /// The service.
    pub service: &'a str,
    /// The declared key.
    pub key: &'a str,
    /// App name of the providing plugin.
    pub source: &'a str,
    /// What kind of source it is.
    pub kind: SourceKind,
    /// The resolved file, for file sources.
    pub path: Option<&'a Path>,
    /// How often it is re-checked.
    pub interval: Option<Duration>,
    /// Content hash of the value being served, if one was ever read.
    pub hash: Option<u64>,
    /// The last read's error.
    pub error: Option<&'a str>,
    /// When it was last read.
    pub checked_at: Option<SystemTime>,
}

impl<'a> From<&'a epi::DataStatus> for DataStatus<'a> {
    fn from(status: &'a epi::DataStatus) -> Self {
        DataStatus {
            service: &status.service,
            key: &status.key,
            source: &status.source,
            kind: status.kind.into(),
            path: status.path.as_deref(),
            interval: status.interval,
            hash: status.hash,
            error: status.error.as_deref(),
            checked_at: status.checked_at,
        }
    }
}

/// What kind of source a data source is: `file`, `static` or `callback` (from
/// [`epi::SourceKind`]).
#[derive(Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A JSON or TOML file.
    File,
    /// Data compiled into the plugin.
    Static,
    /// A plugin callback.
    Callback,
}

impl From<epi::SourceKind> for SourceKind {
    fn from(kind: epi::SourceKind) -> Self {
        match kind {
            epi::SourceKind::File => SourceKind::File,
            epi::SourceKind::Static => SourceKind::Static,
            epi::SourceKind::Callback => SourceKind::Callback,
        }
    }
}

/// `/_epi/data`: every data source.
pub fn data_status(status: &[epi::DataStatus]) -> Vec<DataStatus<'_>> {
    status.iter().map(DataStatus::from).collect()
}

/// `/_epi/data/{service}/keys`: the declared keys.
pub fn data_keys(keys: &[Arc<str>]) -> Vec<&str> {
    keys.iter().map(|key| &**key).collect()
}

/// `/_epi/data/{service}/get/{key}`: every source's value for a key.
pub fn data_values(values: &[Arc<Value>]) -> Vec<&Value> {
    values.iter().map(|value| &**value).collect()
}

/// A name (a source or a key) with a value, written `[name, value]`.
pub type DataPair<'a> = (&'a str, &'a Value);

/// `/_epi/data/{service}/by-key/{key}` and `by-source/{source}`: `[[name, value], ...]`.
pub fn data_pairs(pairs: &[epi::Named]) -> Vec<DataPair<'_>> {
    pairs
        .iter()
        .map(|named| (&*named.name, &*named.value))
        .collect()
}

/// Groups by key or by source, as an object sorted by name: `{name: [[name, value], ...]}`.
pub type DataGroups<'a> = BTreeMap<&'a str, Vec<DataPair<'a>>>;

/// `/_epi/data/{service}/by-key` and `by-source`: every key's or source's pairs.
pub fn data_groups(groups: &[epi::Group]) -> DataGroups<'_> {
    groups
        .iter()
        .map(|group| (&*group.name, data_pairs(&group.members)))
        .collect()
}
