//! Views of loaded plugins: `/_epi/plugins`, an upgrade's outcome, `epi inspect`.

use std::path::Path;

use serde::Serialize;

use super::calls::Service;
use super::data::DataStatus;

/// A loaded plugin (from [`epi::PluginInfo`]).
#[derive(Serialize)]
pub struct Plugin<'a> {
    /// Application name.
    pub app: &'a str,
    /// Version string.
    pub version: &'a str,
    /// The file it was loaded from.
    pub file: &'a Path,
    /// xxh3 hash of the file's bytes.
    pub content_hash: u64,
    /// Default priority of its providers.
    pub priority: i32,
    /// Services it defines.
    pub services: &'a [String],
    /// How calls reach it.
    pub call_path: CallPath,
    /// The compiler, target and epi version that built it.
    pub build: &'a str,
    /// Its processes, as the plugin names them.
    pub processes: &'a [String],
}

impl<'a> From<&'a epi::PluginInfo> for Plugin<'a> {
    fn from(info: &'a epi::PluginInfo) -> Self {
        Plugin {
            app: &info.app,
            version: &info.version,
            file: &info.file,
            content_hash: info.content_hash,
            priority: info.priority,
            services: &info.services,
            call_path: info.call_path.into(),
            build: &info.build,
            processes: &info.processes,
        }
    }
}

/// How calls reach a plugin: `native`, `stable` or `isolated` (from [`epi::CallPath`]).
#[derive(Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallPath {
    /// By pointer, in Rust layout.
    Native,
    /// As JSON, checked by serde shape.
    Stable,
    /// In a child process of its own.
    Isolated,
}

impl From<epi::CallPath> for CallPath {
    fn from(path: epi::CallPath) -> Self {
        match path {
            epi::CallPath::Native => CallPath::Native,
            epi::CallPath::Stable => CallPath::Stable,
            epi::CallPath::Isolated => CallPath::Isolated,
        }
    }
}

/// A plugin file and its last error (from [`epi::FileStatus`]).
#[derive(Serialize)]
pub struct FileStatus<'a> {
    /// The file.
    pub path: &'a Path,
    /// App name of the plugin loaded from it, if one is.
    pub app: Option<&'a str>,
    /// The last load or upgrade error.
    pub error: Option<&'a str>,
}

impl<'a> From<&'a epi::FileStatus> for FileStatus<'a> {
    fn from(file: &'a epi::FileStatus) -> Self {
        FileStatus {
            path: &file.path,
            app: file.app.as_deref(),
            error: file.error.as_deref(),
        }
    }
}

/// `/_epi/plugins` and `epi list`: the registry's status (from [`epi::RegistryStatus`]).
#[derive(Serialize)]
pub struct Status<'a> {
    /// Loaded plugins in dispatch order.
    pub plugins: Vec<Plugin<'a>>,
    /// Every plugin file the registry was asked to load.
    pub files: Vec<FileStatus<'a>>,
    /// Retired versions whose library is still mapped.
    pub retired_mapped: usize,
    /// Retired versions kept loaded.
    pub retired_kept: usize,
    /// Versions retired since the registry started.
    pub retired_total: u64,
}

impl<'a> From<&'a epi::RegistryStatus> for Status<'a> {
    fn from(status: &'a epi::RegistryStatus) -> Self {
        Status {
            plugins: status.plugins.iter().map(Plugin::from).collect(),
            files: status.files.iter().map(FileStatus::from).collect(),
            retired_mapped: status.retired_mapped,
            retired_kept: status.retired_kept,
            retired_total: status.retired_total,
        }
    }
}

/// What an upgrade did, tagged by `outcome` (from [`epi::Upgrade`]): `{"outcome":
/// "unchanged"}`, or `loaded` and `removed` with the plugin's fields beside the tag, or
/// `replaced` with `old` and `new`.
#[derive(Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Upgrade<'a> {
    /// Nothing was done.
    Unchanged,
    /// The file was loaded.
    Loaded(Plugin<'a>),
    /// The plugin loaded from the file was replaced.
    Replaced {
        /// The retired version.
        old: Plugin<'a>,
        /// The version now serving.
        new: Plugin<'a>,
    },
    /// The plugin was unloaded.
    Removed(Plugin<'a>),
}

impl<'a> From<&'a epi::Upgrade> for Upgrade<'a> {
    fn from(upgrade: &'a epi::Upgrade) -> Self {
        match upgrade {
            epi::Upgrade::Unchanged => Upgrade::Unchanged,
            epi::Upgrade::Loaded(info) => Upgrade::Loaded(info.into()),
            epi::Upgrade::Replaced { old, new } => Upgrade::Replaced {
                old: old.into(),
                new: new.into(),
            },
            epi::Upgrade::Removed(info) => Upgrade::Removed(info.into()),
        }
    }
}

/// `epi inspect FILE --json`: a plugin loaded alone, with what it provides.
#[derive(Serialize)]
pub struct Inspect<'a> {
    /// The plugin.
    pub plugin: Plugin<'a>,
    /// Always `true`: an incompatible file is an error instead.
    pub compatible: bool,
    /// The compiler, target and epi version that built it.
    pub build: &'a str,
    /// How calls reach it.
    pub call_path: CallPath,
    /// The ABI version of this host, `MAJOR.MINOR`.
    pub abi: String,
    /// The services it provides.
    pub services: Vec<Service<'a>>,
    /// Its data sources.
    pub data: Vec<DataStatus<'a>>,
    /// Its processes.
    pub processes: &'a [String],
}

impl<'a> Inspect<'a> {
    /// The view of `info`, loaded alone into a registry that lists `services` and `data`.
    pub fn new(
        info: &'a epi::PluginInfo,
        services: &'a [epi::ServiceInfo],
        data: &'a [epi::DataStatus],
    ) -> Self {
        Inspect {
            plugin: info.into(),
            compatible: true,
            build: &info.build,
            call_path: info.call_path.into(),
            abi: format!("{}.{}", epi::abi::ABI_MAJOR, epi::abi::ABI_MINOR),
            services: super::services(services),
            data: super::data_status(data),
            processes: &info.processes,
        }
    }
}
