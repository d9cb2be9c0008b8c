//! The daemon's TOML configuration. Every key has a default, so no file is needed; unknown keys
//! and bad values are errors naming the file, the line and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a bad value.
    #[error("{path}: line {line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line of the offending key or value (1-based; 0 when unknown).
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where plugins come from and how they are ordered.
    pub plugins: PluginsConfig,
    /// The HTTP front door.
    pub http: HttpConfig,
    /// Where the runtime keeps its files.
    pub data: DataConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[plugins]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Directories to load and watch (default: the directory of the `epi` executable, where
    /// `cargo build` puts this workspace's plugins).
    pub dirs: Vec<PathBuf>,
    /// File names to load (`*` matches any run of characters).
    pub pattern: String,
    /// App names in dispatch order; others follow by name.
    pub order: Vec<String>,
    /// Priority per app name (higher first).
    pub priorities: BTreeMap<String, i32>,
    /// `release` retired versions (the default), `unload` them, or `keep_loaded` them.
    pub retire: Retire,
    /// Follow the directories for new, changed and removed files.
    pub watch: bool,
    /// Configuration handed to a plugin, by file name.
    pub config: BTreeMap<String, toml::Value>,
    /// Load each file in a short-lived child process before the daemon opens it (a file that
    /// crashes, exits or hangs there is refused). On by default.
    pub probe: bool,
    /// How long such a probe may take, in milliseconds (default 20,000); also how long an
    /// isolated plugin's process may take to start.
    pub probe_timeout_ms: Option<u64>,
    /// Plugins run in a supervised process of their own (`epi plugin-host`), by app name or
    /// file name: a crash there fails the calls in flight and restarts that process; the
    /// daemon keeps serving.
    pub isolate: Vec<String>,
    /// How long a call to an isolated plugin may wait for its answer, in milliseconds
    /// (default 30,000).
    pub isolate_call_timeout_ms: Option<u64>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dirs: Vec::new(),
            pattern: "libepi_plugin_*.so".into(),
            order: Vec::new(),
            priorities: BTreeMap::new(),
            retire: Retire::Release,
            watch: true,
            config: BTreeMap::new(),
            probe: true,
            probe_timeout_ms: None,
            isolate: Vec::new(),
            isolate_call_timeout_ms: None,
        }
    }
}

/// What happens to retired plugin versions.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Retire {
    /// Release a retired version once no call uses it; close its library unless it is on the
    /// native path (whose values may borrow it).
    #[default]
    Release,
    /// As `release`, and close native-path libraries too.
    Unload,
    /// Keep every version loaded.
    KeepLoaded,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (every route, admin ones included).
    pub max_body_bytes: usize,
    /// The token admin routes (`/_epi/*`) require, as `Authorization: Bearer TOKEN`.
    pub admin_token: Option<String>,
    /// A file holding the admin token (instead of `admin_token`; surrounding whitespace is
    /// ignored).
    pub admin_token_file: Option<PathBuf>,
    /// Serve admin routes without a token on a non-loopback address (refused otherwise).
    pub allow_unauthenticated_admin: bool,
    /// Host names (besides loopback names and the listen address) admin routes answer to.
    pub hosts: Vec<String>,
    /// Time a client has to send a request's headers, in milliseconds; a connection idle
    /// that long between requests is closed too.
    pub header_timeout_ms: u64,
    /// Connections served at once; more wait to be accepted (logged once per burst).
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            admin_token: None,
            admin_token_file: None,
            allow_unauthenticated_admin: false,
            hosts: Vec::new(),
            header_timeout_ms: 10_000,
            max_connections: 1024,
        }
    }
}

impl HttpConfig {
    /// The admin token, from `admin_token` or `admin_token_file`; an error names the file
    /// or the conflict.
    pub fn token(&self) -> Result<Option<String>, String> {
        match (&self.admin_token, &self.admin_token_file) {
            (Some(_), Some(_)) => {
                Err("[http]: set admin_token or admin_token_file, not both".into())
            }
            (Some(token), None) if token.trim().is_empty() => {
                Err("[http] admin_token: empty".into())
            }
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|err| format!("[http] admin_token_file {}: {err}", file.display()))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(format!(
                        "[http] admin_token_file {}: the file is empty",
                        file.display()
                    ));
                }
                Ok(Some(token.to_owned()))
            }
            (None, None) => Ok(None),
        }
    }
}

/// `[data]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Where private copies of plugin files go (default: the system temp directory), and the
    /// directory plugins keep state in (`EPI_DATA_DIR` in their environment).
    pub dir: Option<PathBuf>,
    /// The largest data file read, in bytes (default 64 MiB).
    pub max_file_bytes: Option<u64>,
    /// How long a data source's read may take, in milliseconds, before it gets an error and
    /// its previous value stays (default 10,000).
    pub read_timeout_ms: Option<u64>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace` (or an `EnvFilter` directive list).
    pub level: String,
    /// `human` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Human,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// For people.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses configuration text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|err| {
            let line = err
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            let key = err
                .span()
                .and_then(|span| text.lines().nth(line.saturating_sub(1)).map(|l| (l, span)))
                .map(|(line_text, _)| line_text.trim().to_owned())
                .unwrap_or_default();
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                message: format!("{} (at `{key}`)", err.message().trim()),
            }
        })?;
        if let Some(dir) = path.parent() {
            // Relative plugin directories are relative to the configuration file.
            for plugin_dir in &mut config.plugins.dirs {
                if plugin_dir.is_relative() {
                    *plugin_dir = dir.join(&*plugin_dir);
                }
            }
        }
        Ok(config)
    }

    /// The plugin directories, defaulting to the executable's own directory.
    pub fn plugin_dirs(&self) -> Vec<PathBuf> {
        if !self.plugins.dirs.is_empty() {
            return self.plugins.dirs.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .into_iter()
            .collect()
    }

    /// The configuration for a plugin file, as JSON (`null` when none).
    pub fn plugin_config(&self, file: &Path) -> serde_json::Value {
        file.file_name()
            .and_then(|name| self.plugins.config.get(&*name.to_string_lossy()))
            .and_then(|value| serde_json::to_value(value).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_all_defaults() {
        let config = Config::parse(Path::new("epi.toml"), "").unwrap();
        assert_eq!(config.http.listen.port(), 8080);
        assert_eq!(config.plugins.pattern, "libepi_plugin_*.so");
        assert!(config.plugins.watch);
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let err = Config::parse(
            Path::new("epi.toml"),
            "[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("epi.toml: line 3:"), "{err}");
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let err = Config::parse(Path::new("/etc/epi.toml"), "[log]\nformat = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/epi.toml: line 2") && err.contains("format"),
            "{err}"
        );
        let err = Config::parse(Path::new("epi.toml"), "[http]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("listen"), "{err}");
    }

    #[test]
    fn plugin_configuration_by_file_name() {
        let config = Config::parse(
            Path::new("/srv/epi.toml"),
            "[plugins]\ndirs = [\"plugins\"]\n[plugins.config.\"a.so\"]\nlevel = 3\n",
        )
        .unwrap();
        assert_eq!(config.plugin_dirs(), vec![PathBuf::from("/srv/plugins")]);
        assert_eq!(
            config.plugin_config(Path::new("/x/a.so")),
            serde_json::json!({"level": 3})
        );
        assert_eq!(
            config.plugin_config(Path::new("b.so")),
            serde_json::Value::Null
        );
    }
}
