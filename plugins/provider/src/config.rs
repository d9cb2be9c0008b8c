//! The plugin's configuration (the daemon's `[plugins.config."libepi_plugin_provider.so"]`),
//! read by hand so that every error names its key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use epi_provider::wire::{check_task_name, default_socket_dir, DEFAULT_MAX_FRAME};

/// The service a task's providers join unless configured otherwise.
pub const DEFAULT_SERVICE: &str = "provider";
/// The time a call waits for its response unless configured otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The plugin's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where providers create their task sockets.
    pub socket_dir: PathBuf,
    /// The group given the socket directory (mode 2770) so providers of that group can
    /// register; `None`: the directory is private to this user (0700).
    pub socket_group: Option<u32>,
    /// The service of tasks without their own.
    pub service: String,
    /// How long a call waits for its response.
    pub request_timeout: Duration,
    /// The largest response or acknowledgement frame accepted.
    pub max_frame: usize,
    /// Per-task settings.
    pub tasks: BTreeMap<String, TaskConfig>,
}

/// One task's settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskConfig {
    /// The service its providers join.
    pub service: Option<String>,
    /// The function name (default: the task's name).
    pub function: Option<String>,
    /// Its own time limit.
    pub timeout: Option<Duration>,
}

impl Config {
    /// Reads the configuration (`null`: all defaults).
    pub fn from_json(value: &Value) -> Result<Config, String> {
        let empty = Map::new();
        let object = match value {
            Value::Null => &empty,
            Value::Object(object) => object,
            other => {
                return Err(format!(
                    "provider configuration: expected a table, found {other}"
                ))
            }
        };
        let mut config = Config {
            socket_dir: default_socket_dir(),
            socket_group: None,
            service: DEFAULT_SERVICE.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_frame: DEFAULT_MAX_FRAME,
            tasks: BTreeMap::new(),
        };
        for (key, value) in object {
            let bad = |expected: &str| {
                format!("provider configuration: `{key}`: expected {expected}, found {value}")
            };
            match key.as_str() {
                "socket_dir" => match value.as_str() {
                    Some(dir) if dir.starts_with('/') => config.socket_dir = dir.into(),
                    _ => return Err(bad("an absolute path")),
                },
                "socket_group" => {
                    config.socket_group = Some(match value {
                        Value::Number(n) => n
                            .as_u64()
                            .and_then(|gid| u32::try_from(gid).ok())
                            .ok_or_else(|| bad("a group name or id"))?,
                        Value::String(name) => group_id(name).map_err(|reason| {
                            format!("provider configuration: `{key}`: {reason}")
                        })?,
                        _ => return Err(bad("a group name or id")),
                    })
                }
                "service" => config.service = service_name(value).ok_or_else(|| bad("a service name"))?,
                "request_timeout" => {
                    config.request_timeout = match seconds(value).ok_or_else(|| bad("whole seconds"))? {
                        Duration::ZERO => DEFAULT_REQUEST_TIMEOUT,
                        timeout => timeout,
                    }
                }
                "max_frame" => {
                    config.max_frame = value
                        .as_u64()
                        .filter(|&n| n > 0 && n <= u32::MAX as u64)
                        .ok_or_else(|| bad("a size in bytes, 1 to 4294967295"))?
                        as usize
                }
                "tasks" => {
                    let Value::Object(tasks) = value else {
                        return Err(bad("a table of tasks"));
                    };
                    for (task, settings) in tasks {
                        check_task_name(task)
                            .map_err(|reason| format!("provider configuration: `tasks.{task}`: {reason}"))?;
                        config.tasks.insert(task.clone(), task_config(task, settings)?);
                    }
                }
                other => {
                    return Err(format!(
                        "provider configuration: unknown key `{other}` (known: socket_dir, socket_group, service, request_timeout, max_frame, tasks)"
                    ))
                }
            }
        }
        Ok(config)
    }

    /// The service and function a task's providers serve.
    pub fn target(&self, task: &str) -> (String, String) {
        let settings = self.tasks.get(task);
        (
            settings
                .and_then(|t| t.service.clone())
                .unwrap_or_else(|| self.service.clone()),
            settings
                .and_then(|t| t.function.clone())
                .unwrap_or_else(|| task.to_owned()),
        )
    }

    /// How long a call of `task` waits for its response.
    pub fn timeout(&self, task: &str) -> Duration {
        self.tasks
            .get(task)
            .and_then(|t| t.timeout)
            .unwrap_or(self.request_timeout)
    }

    /// Every service a task may join: the plugin defines them.
    pub fn services(&self) -> Vec<String> {
        let mut services = vec![self.service.clone()];
        for task in self.tasks.values() {
            if let Some(service) = &task.service {
                if !services.contains(service) {
                    services.push(service.clone());
                }
            }
        }
        services
    }
}

fn task_config(task: &str, value: &Value) -> Result<TaskConfig, String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "provider configuration: `tasks.{task}`: expected a table, found {value}"
        ));
    };
    let mut config = TaskConfig::default();
    for (key, value) in object {
        let bad = |expected: &str| {
            format!(
                "provider configuration: `tasks.{task}.{key}`: expected {expected}, found {value}"
            )
        };
        match key.as_str() {
            "service" => config.service = Some(service_name(value).ok_or_else(|| bad("a service name"))?),
            "function" => config.function = Some(service_name(value).ok_or_else(|| bad("a function name"))?),
            "timeout" => {
                config.timeout = match seconds(value).ok_or_else(|| bad("whole seconds"))? {
                    Duration::ZERO => None,
                    timeout => Some(timeout),
                }
            }
            other => {
                return Err(format!(
                    "provider configuration: unknown key `tasks.{task}.{other}` (known: service, function, timeout)"
                ))
            }
        }
    }
    Ok(config)
}

fn service_name(value: &Value) -> Option<String> {
    value
        .as_str()
        .filter(|name| !name.trim().is_empty())
        .map(str::to_owned)
}

fn seconds(value: &Value) -> Option<Duration> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .or_else(|| n.as_f64().and_then(|s| Duration::try_from_secs_f64(s).ok())),
        _ => None,
    }
}

/// A group's id from its name.
fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|err| format!("cannot read /etc/group to find group {name:?}: {err}"))?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let group = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (group == name).then_some(gid)
        })
        .next()
        .ok_or_else(|| format!("no group named {name:?} in /etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_errors_naming_the_key() {
        let config = Config::from_json(&Value::Null).unwrap();
        assert_eq!(config.service, "provider");
        assert_eq!(config.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let config = Config::from_json(&json!({
            "request_timeout": 0, "tasks": {"echo": {"timeout": 2, "service": "tools"}}
        }))
        .unwrap();
        assert_eq!(config.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(config.timeout("echo"), Duration::from_secs(2));
        assert_eq!(config.target("echo"), ("tools".into(), "echo".into()));
        assert_eq!(
            config.services(),
            vec!["provider".to_string(), "tools".into()]
        );
        for (bad, key) in [
            (json!({"socket_dir": "relative"}), "`socket_dir`"),
            (json!({"request_timeout": "soon"}), "`request_timeout`"),
            (
                json!({"tasks": {"echo": {"timeout": -1}}}),
                "`tasks.echo.timeout`",
            ),
            (json!({"tasks": {".tracker": {}}}), "`tasks..tracker`"),
            (json!({"colour": 1}), "`colour`"),
            (
                json!({"tasks": {"echo": {"priority": 1}}}),
                "`tasks.echo.priority`",
            ),
            (
                json!({"socket_group": "no-such-group-here"}),
                "`socket_group`",
            ),
        ] {
            let err = Config::from_json(&bad).unwrap_err();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }
}
