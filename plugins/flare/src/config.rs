//! Flare's configuration; errors name the key.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

/// Where flare's data lives.
#[derive(Clone, Debug, PartialEq)]
pub enum Location {
    /// An embedded SQLite database file (one daemon).
    Sqlite(PathBuf),
    /// A PostgreSQL server (`postgres://...`), which several daemons may share.
    Postgres(String),
}

impl Location {
    /// The location for reports: the path, or the URL without its password.
    pub fn shown(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    let credentials = &url[scheme + 3..at];
                    match credentials.split_once(':') {
                        Some((user, _)) => {
                            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
                        }
                        None => url.clone(),
                    }
                }
                _ => url.clone(),
            },
        }
    }
}

/// Flare's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The database.
    pub store: Location,
    /// PostgreSQL connections this daemon opens at most.
    pub connections: usize,
    /// Delivery workers.
    pub workers: usize,
    /// Per-request timeout of a delivery.
    pub timeout: Duration,
    /// The first retry delay.
    pub retry_base: Duration,
    /// The longest retry delay.
    pub retry_cap: Duration,
    /// Attempts before a delivery is marked failed.
    pub max_attempts: u32,
    /// A prefix of every route (`""`: none).
    pub prefix: String,
}

impl Config {
    /// Reads the configuration (`null`: defaults).
    pub fn from_json(value: &Value) -> Result<Config, String> {
        let empty = Map::new();
        let object = match value {
            Value::Null => &empty,
            Value::Object(object) => object,
            other => {
                return Err(format!(
                    "flare configuration: expected a table, found {other}"
                ))
            }
        };
        let mut config = Config {
            store: Location::Sqlite(epi::host::data_dir().join("flare.sqlite")),
            connections: 0,
            workers: 4,
            timeout: Duration::from_secs(5),
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(300),
            max_attempts: 10,
            prefix: String::new(),
        };
        for (key, value) in object {
            let bad = |expected: &str| {
                format!("flare configuration: `{key}`: expected {expected}, found {value}")
            };
            let positive = || {
                value
                    .as_u64()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("a whole number above 0"))
            };
            match key.as_str() {
                "store" | "db" => match value.as_str() {
                    Some(path) if path.starts_with('/') => config.store = Location::Sqlite(path.into()),
                    Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                        config.store = Location::Postgres(url.to_owned())
                    }
                    _ => return Err(bad("an absolute SQLite path or a postgres:// URL")),
                },
                "connections" => config.connections = positive()? as usize,
                "workers" => config.workers = positive()? as usize,
                "timeout_ms" => config.timeout = Duration::from_millis(positive()?),
                "retry_base_ms" => config.retry_base = Duration::from_millis(positive()?),
                "retry_cap_ms" => config.retry_cap = Duration::from_millis(positive()?),
                "max_attempts" => config.max_attempts = positive()?.min(u32::MAX as u64) as u32,
                "prefix" => match value.as_str() {
                    Some("") | Some("/") => config.prefix = String::new(),
                    Some(p) if p.starts_with('/') && !p.ends_with('/') => config.prefix = p.to_owned(),
                    _ => return Err(bad("a path starting with '/' and not ending with '/'")),
                },
                other => {
                    return Err(format!(
                        "flare configuration: unknown key `{other}` (known: store, connections, workers, timeout_ms, retry_base_ms, retry_cap_ms, max_attempts, prefix)"
                    ))
                }
            }
        }
        if config.connections == 0 {
            // Every worker plus the API's requests.
            config.connections = config.workers + 4;
        }
        Ok(config)
    }
}
