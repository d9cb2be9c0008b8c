//! The agent's configuration (the daemon's `[plugins.config."libepi_plugin_agent.so"]`), read
//! by hand so that every error names its key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

/// How an action runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Queued as a job, one at a time per guest; answered 202 with the job id.
    Async,
    /// Run at request time; the answer is the pipeline's result.
    Info,
    /// Run at request time; the answer is a byte stream.
    Stream,
}

/// Every action, by name, with its kind (fixed, as in the original agent).
pub const ACTIONS: &[(&str, Kind)] = &[
    ("create", Kind::Async),
    ("delete", Kind::Async),
    ("reboot", Kind::Async),
    ("restart", Kind::Async),
    ("poweroff", Kind::Async),
    ("shutdown", Kind::Async),
    ("start", Kind::Async),
    ("suspend", Kind::Async),
    ("snapshot_create", Kind::Async),
    ("snapshot_delete", Kind::Async),
    ("snapshot_rollback", Kind::Async),
    ("image_fetch", Kind::Async),
    ("image_delete", Kind::Async),
    ("guest_get", Kind::Info),
    ("guest_list", Kind::Info),
    ("metrics_cpu", Kind::Info),
    ("metrics_disk", Kind::Info),
    ("metrics_nic", Kind::Info),
    ("images_list", Kind::Info),
    ("image_get", Kind::Info),
    ("snapshots_list", Kind::Info),
    ("snapshot_get", Kind::Info),
    ("snapshot_download", Kind::Stream),
];

/// The kind of a known action.
pub fn kind(action: &str) -> Option<Kind> {
    ACTIONS
        .iter()
        .find(|(name, _)| *name == action)
        .map(|(_, kind)| *kind)
}

/// One stage: a `decide` over `service.method`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// The epi service.
    pub service: String,
    /// Its function.
    pub method: String,
    /// Arguments merged under the request's.
    pub args: Value,
}

/// The agent's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The SQLite database.
    pub db: PathBuf,
    /// A prefix of every route (`""`: none).
    pub prefix: String,
    /// Async jobs running at once, over all guests.
    pub workers: usize,
    /// Info and Stream actions running at once per guest.
    pub sync_per_guest: usize,
    /// Jobs kept per guest (the newest).
    pub keep_jobs: usize,
    /// Stages running at once per service.
    pub concurrency: BTreeMap<String, usize>,
    /// How long after it starts the job queue waits for the plugins its stages call to load
    /// before it runs jobs anyway (the daemon loads plugins one after another).
    pub start_grace: std::time::Duration,
    /// Each configured action's stages.
    pub actions: BTreeMap<String, Vec<Stage>>,
}

impl Config {
    /// Reads the configuration (`null`: all defaults, no stages).
    pub fn from_json(value: &Value) -> Result<Config, String> {
        let empty = Map::new();
        let object = match value {
            Value::Null => &empty,
            Value::Object(object) => object,
            other => {
                return Err(format!(
                    "agent configuration: expected a table, found {other}"
                ))
            }
        };
        let mut config = Config {
            db: epi::host::data_dir().join("agent.sqlite"),
            prefix: String::new(),
            workers: 8,
            sync_per_guest: 4,
            keep_jobs: 1000,
            concurrency: BTreeMap::new(),
            start_grace: std::time::Duration::from_secs(2),
            actions: BTreeMap::new(),
        };
        for (key, value) in object {
            let bad = |expected: &str| {
                format!("agent configuration: `{key}`: expected {expected}, found {value}")
            };
            match key.as_str() {
                "db" => match value.as_str() {
                    Some(path) if path.starts_with('/') => config.db = path.into(),
                    _ => return Err(bad("an absolute path")),
                },
                "prefix" => match value.as_str() {
                    Some("") | Some("/") => config.prefix = String::new(),
                    Some(prefix) if prefix.starts_with('/') && !prefix.ends_with('/') => {
                        config.prefix = prefix.to_owned()
                    }
                    _ => return Err(bad("a path starting with '/' and not ending with '/'")),
                },
                "workers" => config.workers = count(value).ok_or_else(|| bad("a count above 0"))?,
                "sync_per_guest" => {
                    config.sync_per_guest = count(value).ok_or_else(|| bad("a count above 0"))?
                }
                "keep_jobs" => config.keep_jobs = count(value).ok_or_else(|| bad("a count above 0"))?,
                "start_grace_ms" => {
                    config.start_grace = std::time::Duration::from_millis(
                        value.as_u64().ok_or_else(|| bad("milliseconds"))?,
                    )
                }
                "concurrency" => {
                    let Value::Object(limits) = value else {
                        return Err(bad("a table of service = limit"));
                    };
                    for (service, limit) in limits {
                        let limit = count(limit).ok_or_else(|| {
                            format!("agent configuration: `concurrency.{service}`: expected a count above 0, found {limit}")
                        })?;
                        config.concurrency.insert(service.clone(), limit);
                    }
                }
                "actions" => {
                    let Value::Object(actions) = value else {
                        return Err(bad("a table of actions"));
                    };
                    for (name, action) in actions {
                        config.actions.insert(name.clone(), read_action(name, action)?);
                    }
                }
                other => {
                    return Err(format!(
                        "agent configuration: unknown key `{other}` (known: db, prefix, workers, sync_per_guest, keep_jobs, start_grace_ms, concurrency, actions)"
                    ))
                }
            }
        }
        Ok(config)
    }

    /// The stages of `action` (none when not configured).
    pub fn stages(&self, action: &str) -> &[Stage] {
        self.actions.get(action).map(Vec::as_slice).unwrap_or(&[])
    }
}

fn read_action(name: &str, value: &Value) -> Result<Vec<Stage>, String> {
    if kind(name).is_none() {
        let known: Vec<&str> = ACTIONS.iter().map(|(name, _)| *name).collect();
        return Err(format!(
            "agent configuration: `actions.{name}`: not a valid action (valid: {})",
            known.join(", ")
        ));
    }
    let Value::Object(action) = value else {
        return Err(format!(
            "agent configuration: `actions.{name}`: expected a table with `stages`"
        ));
    };
    let mut stages = Vec::new();
    for (key, value) in action {
        if key != "stages" {
            return Err(format!(
                "agent configuration: unknown key `actions.{name}.{key}` (known: stages)"
            ));
        }
        let Value::Array(list) = value else {
            return Err(format!("agent configuration: `actions.{name}.stages`: expected a list of {{service, method, args}}"));
        };
        for (index, stage) in list.iter().enumerate() {
            let at = format!("actions.{name}.stages[{index}]");
            let Value::Object(stage) = stage else {
                return Err(format!(
                    "agent configuration: `{at}`: expected a table {{service, method, args}}"
                ));
            };
            let text = |field: &str| match stage.get(field) {
                Some(Value::String(text)) if !text.trim().is_empty() => Ok(text.clone()),
                _ => Err(format!(
                    "agent configuration: `{at}.{field}`: expected a non-empty string"
                )),
            };
            for key in stage.keys() {
                if !["service", "method", "args"].contains(&key.as_str()) {
                    return Err(format!("agent configuration: unknown key `{at}.{key}` (known: service, method, args)"));
                }
            }
            stages.push(Stage {
                service: text("service")?,
                method: text("method")?,
                args: stage.get("args").cloned().unwrap_or(Value::Null),
            });
        }
    }
    Ok(stages)
}

fn count(value: &Value) -> Option<usize> {
    value.as_u64().filter(|&n| n > 0).map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stages_and_errors_naming_the_key() {
        let config = Config::from_json(&json!({
            "actions": {"create": {"stages": [{"service": "qemu", "method": "create_disks", "args": {"x": 1}}]}},
            "concurrency": {"qemu": 2}
        }))
        .unwrap();
        assert_eq!(config.stages("create")[0].method, "create_disks");
        assert!(config.stages("start").is_empty());
        for (bad, key) in [
            (json!({"actions": {"fly": {"stages": []}}}), "`actions.fly`"),
            (
                json!({"actions": {"create": {"stages": [{"service": "", "method": "m"}]}}}),
                "`actions.create.stages[0].service`",
            ),
            (
                json!({"actions": {"create": {"stages": [{"service": "s"}]}}}),
                "`actions.create.stages[0].method`",
            ),
            (json!({"workers": 0}), "`workers`"),
            (
                json!({"concurrency": {"qemu": "two"}}),
                "`concurrency.qemu`",
            ),
            (json!({"prefix": "api/"}), "`prefix`"),
            (json!({"colour": 1}), "`colour`"),
        ] {
            let err = Config::from_json(&bad).unwrap_err();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }
}
