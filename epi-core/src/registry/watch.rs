//! Watching plugin directories: a file finished by its writer, renamed into place or removed
//! is brought up to date by [`Registry::upgrade`] on the `epi-reload` thread.
//!
//! Only finished writes count: close-after-write and renames (`To`, `Both`, `From`), plus
//! removals, and the creation of a symlink or hard link (new names for complete content).
//! Attribute changes (chmod, chown) re-check the file's trust. Opens, reads (the loader's own
//! included) and partial writes are ignored; dotfiles and names not matching the plugin
//! pattern (writers' temporary names) too. A rename reports `To` and
//! `Both` for one file: events are drained and de-duplicated, and an unchanged file identity
//! makes the second a no-op anyway.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Weak};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use super::lifecycle::Upgrade;
use super::{Registry, Shared};
use crate::error::LoadError;

/// The watcher and the directories it watches. Dropping it ends the `epi-reload` thread.
pub(crate) struct DirWatcher {
    watcher: notify::RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
}

/// What an event asks of the reload thread.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Check {
    /// The content may have changed: upgrade if the identity changed.
    IfChanged,
    /// Ownership or permissions changed (content did not): check the file again, trust
    /// included, and refuse it loudly if it is no longer trusted.
    Again,
}

/// Whether an event means a plugin file's content, or its trust, may have changed.
fn check_for(kind: &EventKind, paths: &[PathBuf]) -> Option<Check> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(
            RenameMode::To | RenameMode::Both | RenameMode::From,
        ))
        | EventKind::Remove(_) => Some(Check::IfChanged),
        EventKind::Modify(ModifyKind::Metadata(_)) => Some(Check::Again),
        // A new name for existing content: a symlink, or a hard link (a file being written
        // under a new name has one link, and its close-after-write follows).
        EventKind::Create(_) => paths
            .iter()
            .any(|path| is_link(path))
            .then_some(Check::IfChanged),
        _ => None,
    }
}

fn is_link(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .is_ok_and(|meta| meta.file_type().is_symlink() || (meta.is_file() && meta.nlink() > 1))
}

impl DirWatcher {
    fn start(registry: Weak<Shared>, pattern: String) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel::<Vec<(PathBuf, Check)>>();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let paths: Vec<PathBuf> = event
                .paths
                .into_iter()
                .filter(|path| super::is_plugin_name(path, &pattern))
                .collect();
            let Some(check) = check_for(&event.kind, &paths) else {
                return;
            };
            if !paths.is_empty() {
                let _ = sender.send(paths.into_iter().map(|path| (path, check)).collect());
            }
        })
        .map_err(std::io::Error::other)?;
        std::thread::Builder::new()
            .name("epi-reload".into())
            .spawn(move || reload_loop(registry, receiver))?;
        Ok(DirWatcher {
            watcher,
            dirs: BTreeSet::new(),
        })
    }
}

/// Runs until the watcher (and with it the sender) is dropped with the registry.
fn reload_loop(registry: Weak<Shared>, receiver: mpsc::Receiver<Vec<(PathBuf, Check)>>) {
    while let Ok(first) = receiver.recv() {
        // Per path, the strongest check any of its events asked for.
        let mut paths: std::collections::BTreeMap<PathBuf, Check> = Default::default();
        for (path, check) in first.into_iter().chain(receiver.try_iter().flatten()) {
            let entry = paths.entry(path).or_insert(check);
            *entry = (*entry).max(check);
        }
        for (path, check) in paths {
            let Some(shared) = registry.upgrade() else {
                return;
            };
            let registry = Registry { shared };
            let result = match check {
                Check::IfChanged => registry.upgrade_if_changed(&path),
                Check::Again => registry.upgrade(&path),
            };
            match result {
                Ok(Upgrade::Unchanged) | Err(_) => {}
                Ok(outcome) => tracing::debug!(path = %path.display(), "{outcome:?}"),
            }
        }
    }
}

impl Registry {
    /// Loads every plugin file of `dir`, then watches it: a plugin file written (closed after
    /// writing, or renamed into place) is upgraded, a new one loaded, a removed one unloaded.
    /// Publish by writing a temporary name and renaming it into place; `cp` over the file
    /// works too (the running version is a private copy).
    pub fn watch(
        &self,
        dir: impl AsRef<Path>,
    ) -> std::io::Result<Vec<(PathBuf, Result<Upgrade, LoadError>)>> {
        let dir = dir.as_ref().to_owned();
        {
            let mut guard = self.shared.watcher.lock();
            if guard.is_none() {
                let pattern = self.shared.config.file_pattern.clone();
                *guard = Some(DirWatcher::start(
                    Arc::downgrade(&self.shared),
                    pattern.unwrap_or_else(|| "*.so".into()),
                )?);
            }
            let watcher = guard.as_mut().expect("just started");
            if !watcher.dirs.contains(&dir) {
                watcher
                    .watcher
                    .watch(&dir, RecursiveMode::NonRecursive)
                    .map_err(std::io::Error::other)?;
                watcher.dirs.insert(dir.clone());
            }
        }
        Ok(self
            .plugin_files(&dir)?
            .into_iter()
            .map(|path| {
                let result = self.upgrade(&path);
                (path, result)
            })
            .collect())
    }

    /// Directories given to [`Registry::watch`].
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        self.shared
            .watcher
            .lock()
            .as_ref()
            .map(|watcher| watcher.dirs.iter().cloned().collect())
            .unwrap_or_default()
    }
}
