//! Reads a data source's current content: a JSON or TOML file, static data, or a callback.

use std::path::Path;

use serde_json::Value;

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

/// Reads provider `index` of `plugin` (whose file sources resolve against `path` when set).
pub(crate) fn read(
    plugin: &LoadedPlugin,
    index: usize,
    file: Option<&Path>,
) -> Result<Read, String> {
    let descriptor = &plugin.data_providers[index];
    match (&descriptor.source, file) {
        (DataSource::File(_), Some(path)) => {
            let text = std::fs::read(path).map_err(|err| format!("{}: {err}", path.display()))?;
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
