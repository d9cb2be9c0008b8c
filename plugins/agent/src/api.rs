//! The HTTP API, served through the daemon's front door. Errors are `{"message", "code"}`.

use std::fs::File;
use std::io::Read;

use epi::http::{HttpRequest, HttpResponse};
use epi::Decision;
use serde_json::{json, Map, Value};

use crate::config::{kind, Kind};
use crate::{Agent, Stream, AGENT_QUEUE};

/// Power actions a `POST /guests/{id}/{action}` runs.
const POWER: &[&str] = &[
    "shutdown", "reboot", "restart", "poweroff", "start", "suspend",
];

/// An error response.
pub fn error(code: u16, message: impl Into<String>) -> HttpResponse {
    HttpResponse::json(code, &json!({"message": message.into(), "code": code}))
}

fn ok(value: &Value) -> HttpResponse {
    HttpResponse::json(200, value)
}

fn accepted(job: &str, body: &Value) -> HttpResponse {
    let mut response = HttpResponse::json(202, body);
    response.headers.push(("x-guest-job-id".into(), job.into()));
    response
}

fn body_json(request: &HttpRequest) -> Result<Value, HttpResponse> {
    if request.body().iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(request.body())
        .map_err(|err| error(400, format!("the body is not JSON: {err}")))
}

fn body_object(request: &HttpRequest) -> Result<Map<String, Value>, HttpResponse> {
    match body_json(request)? {
        Value::Object(object) => Ok(object),
        Value::Null => Ok(Map::new()),
        other => Err(error(
            400,
            format!("the body must be a JSON object, not {other}"),
        )),
    }
}

/// Answers a request under the agent's prefix; other paths are left to other plugins.
pub fn handle(agent: &Agent, request: &HttpRequest) -> Decision<HttpResponse> {
    let Some(path) = request.path().strip_prefix(agent.config.prefix.as_str()) else {
        return Decision::NoDecision;
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(first) = segments.first() else {
        return Decision::NoDecision;
    };
    if !["metadata", "guests", "jobs", "images"].contains(first) {
        return Decision::NoDecision;
    }
    let response = route(agent, request, &segments).unwrap_or_else(|response| response);
    Decision::Decided(response)
}

fn not_allowed(request: &HttpRequest) -> HttpResponse {
    error(405, format!("{} is not allowed here", request.method()))
}

fn route(
    agent: &Agent,
    request: &HttpRequest,
    segments: &[&str],
) -> Result<HttpResponse, HttpResponse> {
    let method = request.method();
    let internal = |err: String| error(500, err);
    match segments {
        ["metadata"] => match method {
            "GET" => Ok(ok(&Value::Object(
                agent.store.metadata().map_err(internal)?,
            ))),
            "PATCH" => {
                let patch = body_object(request)?;
                agent.store.patch_metadata(&patch).map_err(internal)?;
                Ok(ok(&Value::Object(
                    agent.store.metadata().map_err(internal)?,
                )))
            }
            _ => Err(not_allowed(request)),
        },
        ["jobs"] => match method {
            "GET" => {
                let limit = limit(request)?;
                Ok(ok(&json!(agent
                    .store
                    .jobs(None, limit)
                    .map_err(internal)?)))
            }
            _ => Err(not_allowed(request)),
        },
        ["jobs", job] => match method {
            "GET" => match agent.store.job_by_id(job).map_err(internal)? {
                Some(job) => Ok(ok(&json!(job))),
                None => Err(error(404, format!("no job {job}"))),
            },
            _ => Err(not_allowed(request)),
        },
        ["guests"] => match method {
            "GET" => info(agent, "guest_list", None, Value::Null),
            "POST" => create_guest(agent, request),
            _ => Err(not_allowed(request)),
        },
        ["images"] => match method {
            "GET" => info(agent, "images_list", None, Value::Null),
            "POST" => queue(
                agent,
                AGENT_QUEUE,
                "image_fetch",
                Value::Object(body_object(request)?),
                &Value::Null,
            ),
            _ => Err(not_allowed(request)),
        },
        ["images", image] => match method {
            "GET" => info(agent, "image_get", None, json!({"image": image})),
            "DELETE" => queue(
                agent,
                AGENT_QUEUE,
                "image_delete",
                json!({"image": image}),
                &Value::Null,
            ),
            _ => Err(not_allowed(request)),
        },
        // A guest's job log outlives the guest (its delete job is in it).
        ["guests", id, "jobs"] if method == "GET" => {
            let jobs = agent
                .store
                .jobs(Some(id), limit(request)?)
                .map_err(internal)?;
            if jobs.is_empty() && agent.store.guest(id).map_err(internal)?.is_none() {
                return Err(error(404, format!("no guest {id}")));
            }
            Ok(ok(&json!(jobs)))
        }
        ["guests", id, "jobs", job] if method == "GET" => {
            match agent.store.job(id, job).map_err(internal)? {
                Some(job) => Ok(ok(&json!(job))),
                None => Err(error(404, format!("guest {id} has no job {job}"))),
            }
        }
        // The Info action with no stages answers the stored document as it is.
        ["guests", id] if method == "GET" && agent.config.stages("guest_get").is_empty() => {
            match agent.store.guest_text(id).map_err(internal)? {
                Some(doc) => Ok(HttpResponse::new(200, "application/json", doc.into_bytes())),
                None => Err(error(404, format!("no guest {id}"))),
            }
        }
        ["guests", id, rest @ ..] => {
            let guest = agent
                .store
                .guest(id)
                .map_err(internal)?
                .ok_or_else(|| error(404, format!("no guest {id}")))?;
            guest_route(agent, request, id, guest, rest)
        }
        _ => Err(error(404, format!("no route {}", request.path()))),
    }
}

fn limit(request: &HttpRequest) -> Result<usize, HttpResponse> {
    match request.query_param("limit") {
        None => Ok(100),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| error(400, format!("limit {text:?} is not a count above 0"))),
    }
}

fn create_guest(agent: &Agent, request: &HttpRequest) -> Result<HttpResponse, HttpResponse> {
    let mut guest = body_object(request)?;
    let id = match guest.get("id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(id)) => uuid::Uuid::parse_str(id)
            .map_err(|err| error(400, format!("id {id:?} is not a UUID: {err}")))?
            .hyphenated()
            .to_string(),
        Some(other) => return Err(error(400, format!("id must be a UUID string, not {other}"))),
    };
    guest.insert("id".into(), Value::String(id.clone()));
    guest.entry("metadata").or_insert_with(|| json!({}));
    guest.entry("state").or_insert_with(|| json!("creating"));
    let guest = Value::Object(guest);
    if !agent
        .store
        .insert_guest(&id, &guest)
        .map_err(|err| error(500, err))?
    {
        return Err(error(409, format!("guest {id} exists")));
    }
    queue(agent, &id, "create", Value::Null, &guest)
}

/// Queues an Async action: 202 with the job id.
fn queue(
    agent: &Agent,
    guest: &str,
    action: &str,
    args: Value,
    body: &Value,
) -> Result<HttpResponse, HttpResponse> {
    let job = uuid::Uuid::new_v4().to_string();
    let seq = agent
        .store
        .enqueue(&job, guest, action, &args)
        .map_err(|err| error(500, err))?;
    agent.queue.add([(seq, guest.to_owned())]);
    let body = if body.is_null() {
        json!({"job_id": job})
    } else {
        body.clone()
    };
    Ok(accepted(&job, &body))
}

/// Runs an Info action now: its result, or the guest (or the guest list) when no stage gave one.
fn info(
    agent: &Agent,
    action: &str,
    guest: Option<(&str, Value)>,
    args: Value,
) -> Result<HttpResponse, HttpResponse> {
    debug_assert_eq!(kind(action), Some(Kind::Info));
    let (id, guest) = match guest {
        Some((id, guest)) => (Some(id), guest),
        None => (None, Value::Null),
    };
    let outcome = agent.run_sync(id, action, guest, &args)?;
    let answer = match (outcome.result, action) {
        (Some(result), _) => result,
        (None, "guest_list") => json!(agent.store.guests().map_err(|err| error(500, err))?),
        (None, _) => outcome.guest,
    };
    Ok(ok(&answer))
}

fn guest_route(
    agent: &Agent,
    request: &HttpRequest,
    id: &str,
    guest: Value,
    rest: &[&str],
) -> Result<HttpResponse, HttpResponse> {
    let method = request.method();
    match rest {
        [] => match method {
            "GET" => info(agent, "guest_get", Some((id, guest)), Value::Null),
            "DELETE" => queue(agent, id, "delete", Value::Null, &Value::Null),
            _ => Err(not_allowed(request)),
        },
        ["jobs"] | ["jobs", _] => Err(not_allowed(request)),
        ["metadata"] => match method {
            "GET" => Ok(ok(guest.get("metadata").unwrap_or(&json!({})))),
            "PATCH" => {
                let patch = body_object(request)?;
                let mut guest = guest;
                let metadata = guest
                    .as_object_mut()
                    .ok_or_else(|| error(500, format!("guest {id} is not a JSON object")))?
                    .entry("metadata")
                    .or_insert_with(|| json!({}));
                if !metadata.is_object() {
                    *metadata = json!({});
                }
                let map = metadata.as_object_mut().expect("an object");
                for (key, value) in patch {
                    if value.is_null() {
                        map.remove(&key);
                    } else {
                        map.insert(key, value);
                    }
                }
                let metadata = metadata.clone();
                agent
                    .store
                    .put_guest(id, &guest)
                    .map_err(|e| error(500, e))?;
                Ok(ok(&metadata))
            }
            _ => Err(not_allowed(request)),
        },
        ["metrics", which @ ("cpu" | "disk" | "nic")] => match method {
            "GET" => info(
                agent,
                &format!("metrics_{which}"),
                Some((id, guest)),
                Value::Null,
            ),
            _ => Err(not_allowed(request)),
        },
        [action] if POWER.contains(action) => match method {
            "POST" => queue(
                agent,
                id,
                action,
                Value::Object(body_object(request)?),
                &Value::Null,
            ),
            _ => Err(not_allowed(request)),
        },
        ["snapshots", tail @ ..] => snapshots(agent, request, id, guest, None, tail),
        ["disks", disk, "snapshots", tail @ ..] => {
            snapshots(agent, request, id, guest, Some(disk), tail)
        }
        _ => Err(error(404, format!("no route {}", request.path()))),
    }
}

fn snapshots(
    agent: &Agent,
    request: &HttpRequest,
    id: &str,
    guest: Value,
    disk: Option<&str>,
    tail: &[&str],
) -> Result<HttpResponse, HttpResponse> {
    let method = request.method();
    let args = |name: Option<&str>| {
        let mut args = Map::new();
        if let Some(disk) = disk {
            args.insert("disk".into(), json!(disk));
        }
        if let Some(name) = name {
            args.insert("name".into(), json!(name));
        }
        Value::Object(args)
    };
    match tail {
        [] => match method {
            "GET" => info(agent, "snapshots_list", Some((id, guest)), args(None)),
            "POST" => {
                let body = body_object(request)?;
                let name = match body.get("name") {
                    None | Some(Value::Null) => format!(
                        "snap-{}",
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0)
                    ),
                    Some(Value::String(name)) if valid_name(name) => name.clone(),
                    Some(other) => {
                        return Err(error(
                            400,
                            format!(
                                "snapshot name {other} must be letters, digits, '-', '_' or '.'"
                            ),
                        ))
                    }
                };
                let body = json!({"name": name});
                queue(agent, id, "snapshot_create", args(Some(&name)), &body)
            }
            _ => Err(not_allowed(request)),
        },
        [name] => match method {
            "GET" => info(agent, "snapshot_get", Some((id, guest)), args(Some(name))),
            "DELETE" => queue(agent, id, "snapshot_delete", args(Some(name)), &Value::Null),
            _ => Err(not_allowed(request)),
        },
        [name, "rollback"] => match method {
            "POST" => queue(
                agent,
                id,
                "snapshot_rollback",
                args(Some(name)),
                &Value::Null,
            ),
            _ => Err(not_allowed(request)),
        },
        [name, "download"] => match method {
            "GET" => download(agent, id, guest, args(Some(name))),
            _ => Err(not_allowed(request)),
        },
        _ => Err(error(404, format!("no route {}", request.path()))),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The Stream action: the pipeline's stream as a streamed body.
fn download(
    agent: &Agent,
    id: &str,
    guest: Value,
    args: Value,
) -> Result<HttpResponse, HttpResponse> {
    let outcome = agent.run_sync(Some(id), "snapshot_download", guest, &args)?;
    let stream = outcome
        .stream
        .ok_or_else(|| error(500, "no stage of snapshot_download gave a stream"))?;
    let reader: Stream = match (
        stream.get("path").and_then(Value::as_str),
        stream.get("url").and_then(Value::as_str),
    ) {
        (Some(path), _) => {
            let file =
                File::open(path).map_err(|err| error(500, format!("stream {path}: {err}")))?;
            let remove = stream
                .get("remove")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if remove {
                // The open file stays readable after its name is gone.
                let _ = std::fs::remove_file(path);
            }
            Box::new(file)
        }
        (None, Some(url)) => {
            let path = url
                .strip_prefix("unix://")
                .ok_or_else(|| error(500, format!("stream url {url} is not unix://")))?;
            Box::new(
                std::os::unix::net::UnixStream::connect(path)
                    .map_err(|err| error(500, format!("stream {url}: {err}")))?,
            ) as Box<dyn Read + Send>
        }
        _ => {
            return Err(error(
                500,
                format!("a stream needs a path or a url: {stream}"),
            ))
        }
    };
    Ok(HttpResponse::stream(
        "application/octet-stream",
        agent.open_stream(reader),
    ))
}
