//! Reads a data source's current content: a JSON or TOML file, static data, or a callback.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::state::ReadJob;
use crate::abi::manifest::DataSource;
use crate::loader::LoadedPlugin;

/// A successfully read value with the hash of its canonical JSON text.
pub(crate) struct Read {
    pub(crate) value: Value,
    pub(crate) hash: u64,
}

fn hashed(value: Value) -> Read {
    // serde_json's maps are sorted, so equal content always gives the same text.
    let text = serde_json::to_vec(&value).unwrap_or_default();
    Read {
        hash: xxhash_rust::xxh3::xxh3_64(&text),
        value,
    }
}

/// Parses file content as JSON or (for `.toml`) TOML. Errors name the file and line.
pub(crate) fn parse_file(path: &Path, text: &[u8]) -> Result<Value, String> {
    let is_toml = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("toml"));
    if is_toml {
        let text = std::str::from_utf8(text)
            .map_err(|err| format!("{}: not UTF-8: {err}", path.display()))?;
        let table: toml::Table = toml::from_str(text).map_err(|err| {
            let line = err
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            format!("{}: line {line}: {}", path.display(), err.message())
        })?;
        serde_json::to_value(table)
            .map_err(|err| format!("{}: cannot represent as JSON: {err}", path.display()))
    } else {
        serde_json::from_slice(text)
            .map_err(|err| format!("{}: line {}: {err}", path.display(), err.line()))
    }
}

/// The default of [`crate::RegistryConfig::max_data_file_bytes`]: 64 MiB.
pub const DEFAULT_MAX_DATA_FILE_BYTES: u64 = 64 << 20;

/// Reads a data file: a regular file (after symlinks) of at most `limit` bytes. A FIFO, a
/// device (`/dev/zero` through a symlink) or a directory is refused without blocking: the file
/// is opened non-blocking and checked through the opened descriptor.
pub(crate) fn read_data_file(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    let metadata = file
        .metadata()
        .map_err(|err| format!("{}: {err}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!(
            "{}: not a regular file (a FIFO, device or directory); data files must be regular files",
            path.display()
        ));
    }
    if metadata.len() > limit {
        return Err(format!(
            "{}: {} bytes, over the data file limit of {limit} bytes",
            path.display(),
            metadata.len()
        ));
    }
    let mut text = Vec::with_capacity(metadata.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut text)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    if text.len() as u64 > limit {
        return Err(format!(
            "{}: grew over the data file limit of {limit} bytes while being read",
            path.display()
        ));
    }
    Ok(text)
}

/// Reads provider `index` of `plugin` (whose file sources resolve against `path` when set; a
/// file over `limit` bytes is refused).
pub(crate) fn read(
    plugin: &LoadedPlugin,
    index: usize,
    file: Option<&Path>,
    limit: u64,
) -> Result<Read, String> {
    let descriptor = &plugin.data_providers[index];
    match (&descriptor.source, file) {
        (DataSource::File(_), Some(path)) => {
            let text = read_data_file(path, limit)?;
            parse_file(path, &text).map(hashed)
        }
        (DataSource::File(path), None) => Err(format!("{path}: no resolved path")),
        (DataSource::Static(json), _) => serde_json::from_str(json)
            .map(hashed)
            .map_err(|err| format!("static data: {err}")),
        (DataSource::Invalid(reason), _) => {
            Err(format!("static data could not be encoded: {reason}"))
        }
        (DataSource::Callback(_), _) => {
            let json = plugin.read_callback(index)?;
            serde_json::from_slice(&json)
                .map(hashed)
                .map_err(|err| format!("callback returned unreadable data: {err}"))
        }
    }
}

/// The default of [`crate::RegistryConfig::data_read_timeout`]: 10 s.
pub const DEFAULT_DATA_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `jobs`, each file or callback read on a thread of its own, and waits at most `timeout`
/// for them all. A read that has not answered by then gets an error (the previous value
/// stays); it goes on in the background, and its source is skipped until it ends.
pub(crate) fn read_all(
    jobs: Vec<ReadJob>,
    timeout: Duration,
) -> Vec<(ReadJob, Result<Read, String>)> {
    let mut outcomes: Vec<Option<Result<Read, String>>> = Vec::with_capacity(jobs.len());
    let (sender, receiver) = mpsc::channel();
    let mut pending = 0;
    for (slot, job) in jobs.iter().enumerate() {
        if matches!(
            job.plugin.data_providers[job.index].source,
            DataSource::Static(_) | DataSource::Invalid(_)
        ) {
            // Data compiled into the plugin: parsing it runs no plugin code and cannot block.
            outcomes.push(Some(read(&job.plugin, job.index, None, job.limit)));
            job.busy.store(false, Ordering::Release);
            continue;
        }
        outcomes.push(None);
        let (plugin, index, path, limit) =
            (job.plugin.clone(), job.index, job.path.clone(), job.limit);
        let (busy, sender) = (job.busy.clone(), sender.clone());
        let spawned = std::thread::Builder::new()
            .name("epi-data-read".into())
            .spawn(move || {
                let outcome = read(&plugin, index, path.as_deref(), limit);
                busy.store(false, Ordering::Release);
                let _ = sender.send((slot, outcome));
            });
        match spawned {
            Ok(_) => pending += 1,
            Err(err) => {
                job.busy.store(false, Ordering::Release);
                outcomes[slot] = Some(Err(format!("cannot start a reader thread: {err}")));
            }
        }
    }
    drop(sender);
    let deadline = Instant::now() + timeout;
    while pending > 0 {
        match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((slot, outcome)) => {
                outcomes[slot] = Some(outcome);
                pending -= 1;
            }
            Err(_) => break,
        }
    }
    jobs.into_iter()
        .zip(outcomes)
        .map(|(job, outcome)| {
            let outcome = outcome.unwrap_or_else(|| {
                let what = match &job.path {
                    Some(path) => format!("{}", path.display()),
                    None => "the callback".to_owned(),
                };
                Err(format!(
                    "{what}: no answer within {:.1} s; the previous value stays, and the source \
                     is read again once that read ends",
                    timeout.as_secs_f64()
                ))
            });
            (job, outcome)
        })
        .collect()
}
