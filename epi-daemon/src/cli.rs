//! Commands other than `serve`: against a running daemon's admin routes when one is given,
//! else against plugins loaded in-process. Both paths produce the same JSON; tables are drawn
//! from it unless `--json` asks for it as is.

use std::process::ExitCode;

use epi::{Opts, Registry};
use serde_json::{json, Value};

use crate::args::{Command, DataQuery};
use crate::config::Config;
use crate::registry::open_registry;
use crate::serve::{reload_all, reload_plugin};
use crate::views::{self, to_json};

/// The call failed (unknown service, provider error, bad arguments).
pub const EXIT_CALL: u8 = 1;
/// The command line was wrong (clap uses the same code for its own errors).
pub const EXIT_USAGE: u8 = 2;
/// The configuration or a plugin file could not be used.
pub const EXIT_CONFIG: u8 = 3;
/// The daemon could not be reached.
pub const EXIT_DAEMON: u8 = 4;

/// A failed command: what to print and the exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn call(message: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_CALL,
            message: message.to_string(),
        }
    }
}

/// Where commands run: in process, or on a daemon at a URL with its admin token (if any).
enum Backend {
    Local(Registry),
    Remote(String, Option<String>),
}

/// A request to the daemon, with the admin token when there is one.
fn authorized(request: ureq::Request, token: &Option<String>) -> ureq::Request {
    match token {
        Some(token) => request.set("authorization", &format!("Bearer {token}")),
        None => request,
    }
}

impl Backend {
    fn get(&self, route: &str, local: impl FnOnce(&Registry) -> Value) -> Result<Value, Failure> {
        match self {
            Backend::Local(registry) => Ok(local(registry)),
            Backend::Remote(base, token) => {
                remote(authorized(ureq::get(&format!("{base}{route}")), token).call())
            }
        }
    }

    fn post(
        &self,
        route: &str,
        body: Value,
        local: impl FnOnce(&Registry) -> Result<Value, Failure>,
    ) -> Result<Value, Failure> {
        match self {
            Backend::Local(registry) => local(registry),
            Backend::Remote(base, token) => {
                remote(authorized(ureq::post(&format!("{base}{route}")), token).send_json(body))
            }
        }
    }
}

fn remote(response: Result<ureq::Response, ureq::Error>) -> Result<Value, Failure> {
    match response {
        Ok(response) => response.into_json().map_err(|err| Failure {
            code: EXIT_DAEMON,
            message: format!("unreadable answer from the daemon: {err}"),
        }),
        Err(ureq::Error::Status(_, response)) => {
            let body: Value = response.into_json().unwrap_or(Value::Null);
            Err(Failure::call(
                body["error"]
                    .as_str()
                    .unwrap_or("the daemon refused the request"),
            ))
        }
        Err(err) => Err(Failure {
            code: EXIT_DAEMON,
            message: format!("cannot reach the daemon: {err}"),
        }),
    }
}

/// Runs a command (not `serve`) and prints its result.
pub fn run(command: Command, config: &Config, daemon: Option<&str>, as_json: bool) -> ExitCode {
    let outcome = match command {
        Command::Inspect { file } => inspect(&file),
        Command::New {
            name,
            dir,
            epi_path,
        } => crate::scaffold::create(&name, &dir, epi_path.as_deref())
            .map(|created| {
                let text = format!(
                    "created {}\nbuild it with `cargo build`, test it with `cargo test`, then `epi inspect {}`\n",
                    created.display(),
                    created
                        .join("target/debug")
                        .join(format!("lib{}.so", name.replace('-', "_")))
                        .display()
                );
                (json!({ "created": created }), text)
            })
            .map_err(|err| Failure {
                code: EXIT_USAGE,
                message: err.to_string(),
            }),
        command => {
            // Listing plugins runs none of their workers.
            let processes = !matches!(command, Command::List);
            backend(config, daemon, processes).and_then(|backend| execute(&backend, command))
        }
    };
    match outcome {
        Ok((value, table)) => {
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print!("{table}");
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("epi: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn backend(config: &Config, daemon: Option<&str>, processes: bool) -> Result<Backend, Failure> {
    match daemon {
        Some(url) => {
            // The token: $EPI_ADMIN_TOKEN, else the configuration's.
            let token = match std::env::var("EPI_ADMIN_TOKEN") {
                Ok(token) if !token.trim().is_empty() => Some(token.trim().to_owned()),
                _ => config.http.token().map_err(|err| Failure {
                    code: EXIT_CONFIG,
                    message: err,
                })?,
            };
            Ok(Backend::Remote(url.trim_end_matches('/').to_owned(), token))
        }
        None => open_registry(config, false, processes)
            .map(Backend::Local)
            .map_err(|err| Failure {
                code: EXIT_CONFIG,
                message: err.to_string(),
            }),
    }
}

fn parse_args(args: &str) -> Result<Value, Failure> {
    serde_json::from_str(args).map_err(|err| Failure::call(format!("--args is not JSON: {err}")))
}

/// Runs a command on a backend: its JSON and its table.
fn execute(backend: &Backend, command: Command) -> Result<(Value, String), Failure> {
    match command {
        Command::Serve
        | Command::Inspect { .. }
        | Command::New { .. }
        | Command::PluginHost { .. } => {
            unreachable!("handled by the caller")
        }
        Command::List => {
            let status = backend.get("/_epi/plugins", |r| {
                to_json(views::Status::from(&r.status()))
            })?;
            Ok((status.clone(), plugins_table(&status)))
        }
        Command::Apply {
            service,
            function,
            args,
            ignore_errors,
            concurrent,
            pipe,
        } => {
            let args = parse_args(&args)?;
            let opts = Opts {
                ignore_errors,
                concurrent,
                pipe,
            };
            let body =
                json!({"service": service, "function": function, "args": args, "opts": opts});
            let value = backend.post("/_epi/apply", body, |r| {
                r.apply_json(&service, &function, &args, opts)
                    .map(|applied| {
                        to_json(views::Called {
                            result: applied.to_json(ignore_errors),
                        })
                    })
                    .map_err(Failure::call)
            })?;
            let table = match &value["result"] {
                Value::Array(items) if !pipe => {
                    items.iter().map(|item| format!("{item}\n")).collect()
                }
                other => format!("{other}\n"),
            };
            Ok((value, table))
        }
        Command::Decide {
            service,
            function,
            args,
            ignore_errors,
        } => {
            let args = parse_args(&args)?;
            let opts = Opts {
                ignore_errors,
                ..Opts::new()
            };
            let body =
                json!({"service": service, "function": function, "args": args, "opts": opts});
            let value = backend.post("/_epi/decide", body, |r| {
                r.decide_json(&service, &function, &args, opts)
                    .map(|decision| {
                        to_json(views::Called {
                            result: views::Decision::from(&decision),
                        })
                    })
                    .map_err(Failure::call)
            })?;
            let table = match &value["result"] {
                Value::Object(decided) => format!(
                    "decided: {}\n",
                    decided.get("decided").unwrap_or(&Value::Null)
                ),
                _ => "no decision\n".to_owned(),
            };
            Ok((value, table))
        }
        Command::Data { query } => data(backend, query),
        Command::Report => {
            let report = backend.get("/_epi/processes", |r| {
                to_json(views::Processes::from(&r.process_report()))
            })?;
            Ok((report.clone(), report_table(&report)))
        }
        Command::Reload { plugin } => {
            let route = match &plugin {
                Some(app) => format!("/_epi/reload?plugin={app}"),
                None => "/_epi/reload".to_owned(),
            };
            let value = backend.post(&route, Value::Null, |r| {
                Ok(match &plugin {
                    Some(app) => reload_plugin(r, app),
                    None => reload_all(r),
                })
            })?;
            let mut table = String::new();
            let mut failed = None;
            for file in value["files"].as_array().into_iter().flatten() {
                let outcome = match (file["result"]["outcome"].as_str(), file["error"].as_str()) {
                    (Some(outcome), _) => outcome.to_owned(),
                    (None, Some(error)) => {
                        failed = Some(error.to_owned());
                        format!("error: {error}")
                    }
                    (None, None) => String::new(),
                };
                table.push_str(&format!(
                    "{}\t{outcome}\n",
                    file["file"].as_str().unwrap_or("-")
                ));
            }
            match (plugin, failed) {
                // Reloading one plugin that could not be reloaded is a failed command.
                (Some(_), Some(error)) => Err(Failure::call(error)),
                _ => Ok((value, table)),
            }
        }
    }
}

fn data(backend: &Backend, query: DataQuery) -> Result<(Value, String), Failure> {
    let value = match &query {
        DataQuery::Keys { service } => backend.get(&format!("/_epi/data/{service}/keys"), |r| {
            to_json(views::data_keys(&r.data(service).keys()))
        })?,
        DataQuery::Get { service, key } => backend
            .get(&format!("/_epi/data/{service}/get/{key}"), |r| {
                to_json(views::data_values(&r.data(service).get(key)))
            })?,
        DataQuery::ByKey {
            service,
            key: Some(key),
        } => backend.get(&format!("/_epi/data/{service}/by-key/{key}"), |r| {
            to_json(views::data_pairs(&r.data(service).by_key(key)))
        })?,
        DataQuery::ByKey { service, key: None } => backend
            .get(&format!("/_epi/data/{service}/by-key"), |r| {
                to_json(views::data_groups(&r.data(service).by_key_all()))
            })?,
        DataQuery::BySource {
            service,
            source: Some(source),
        } => backend.get(&format!("/_epi/data/{service}/by-source/{source}"), |r| {
            to_json(views::data_pairs(&r.data(service).by_source(source)))
        })?,
        DataQuery::BySource {
            service,
            source: None,
        } => backend.get(&format!("/_epi/data/{service}/by-source"), |r| {
            to_json(views::data_groups(&r.data(service).by_source_all()))
        })?,
        DataQuery::Status => backend.get("/_epi/data", |r| {
            to_json(views::data_status(&r.data_status()))
        })?,
    };
    let table = match &value {
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Array(pair) if pair.len() == 2 => {
                    format!("{}\t{}\n", pair[0].as_str().unwrap_or("?"), pair[1])
                }
                Value::String(text) => format!("{text}\n"),
                other => format!("{other}\n"),
            })
            .collect(),
        Value::Object(groups) => groups
            .iter()
            .flat_map(|(name, members)| {
                members.as_array().into_iter().flatten().map(move |pair| {
                    format!("{name}\t{}\t{}\n", pair[0].as_str().unwrap_or("?"), pair[1])
                })
            })
            .collect(),
        other => format!("{other}\n"),
    };
    Ok((value, table))
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text: String = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}  "))
            .collect();
        text.truncate(text.trim_end().len());
        text + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// A JSON array of strings as `a,b,c` (empty for anything else).
fn joined(list: &Value) -> String {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn plugins_table(status: &Value) -> String {
    let rows = status["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                p["app"].as_str().unwrap_or("?").to_owned(),
                p["version"].as_str().unwrap_or("?").to_owned(),
                p["priority"].to_string(),
                joined(&p["services"]),
                p["file"].as_str().unwrap_or("?").to_owned(),
            ]
        })
        .collect();
    let mut out = table(&["APP", "VERSION", "PRIORITY", "SERVICES", "FILE"], rows);
    for file in status["files"].as_array().into_iter().flatten() {
        if let Some(error) = file["error"].as_str() {
            out.push_str(&format!("error: {error}\n"));
        }
    }
    out
}

fn report_table(report: &Value) -> String {
    let rows = report["workers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, w)| {
            vec![
                name.clone(),
                w["state"].as_str().unwrap_or("?").to_owned(),
                w["start_count"].to_string(),
                joined(&w["inputs"]),
                if w["last_error"].is_null() {
                    String::new()
                } else {
                    w["last_error"].to_string()
                },
            ]
        })
        .collect();
    format!(
        "engine: {}\n{}",
        report["state"].as_str().unwrap_or("?"),
        table(
            &["PROCESS", "STATE", "STARTS", "INPUTS", "LAST ERROR"],
            rows
        )
    )
}

/// `epi inspect FILE`: the loader's checks (ABI, toolchain, trust) run before any plugin code;
/// only a compatible plugin is initialised to describe its services and data.
fn inspect(file: &std::path::Path) -> Result<(Value, String), Failure> {
    // Describing a plugin starts none of its processes.
    let registry = Registry::new(epi::RegistryConfig {
        skip_processes: true,
        ..epi::RegistryConfig::default()
    })
    .map_err(|err| Failure {
        code: EXIT_CONFIG,
        message: err.to_string(),
    })?;
    let info = registry.load(file).map_err(|err| Failure {
        code: EXIT_CONFIG,
        message: format!("incompatible: {err}"),
    })?;
    let services = registry.services();
    let data = registry.data_status();
    let value = to_json(views::Inspect::new(&info, &services, &data));
    let mut text = format!(
        "app:        {}\nversion:    {}\nfile:       {}\nhash:       {:016x}\ncompatible: yes (ABI {}, {:?} call path)\nbuilt by:   {}\n",
        info.app,
        info.version,
        info.file.display(),
        info.content_hash,
        epi::abi::ABI_MAJOR,
        info.call_path,
        info.build,
    );
    text.push_str(&format!("defines:    {}\n", info.services.join(", ")));
    for service in &services {
        for (function, providers) in &service.functions {
            let names: Vec<&str> = providers
                .iter()
                .map(|(_, provider)| provider.as_str())
                .collect();
            text.push_str(&format!(
                "provides:   {}.{function} ({})\n",
                service.name,
                names.join(", ")
            ));
        }
    }
    for source in &data {
        text.push_str(&format!(
            "data:       {}/{} ({:?})\n",
            source.service, source.key, source.kind
        ));
    }
    for name in &info.processes {
        text.push_str(&format!("process:    {name}\n"));
    }
    Ok((value, text))
}
