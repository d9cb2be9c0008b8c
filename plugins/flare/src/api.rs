//! Flare's HTTP API. Errors are `{"error": {"title", "detail"}}`.

use epi::http::{HttpRequest, HttpResponse};
use epi::Decision;
use serde_json::{json, Value};

use crate::model::{self, Endpoint, Invalid};
use crate::store::Written;
use crate::Flare;

fn error(status: u16, title: &str, detail: impl Into<String>) -> HttpResponse {
    HttpResponse::json(
        status,
        &json!({"error": {"title": title, "detail": detail.into()}}),
    )
}

fn bad(invalid: Invalid) -> HttpResponse {
    error(
        400,
        &format!("invalid {}", invalid.field),
        format!("{}: {}", invalid.field, invalid.detail),
    )
}

fn internal(err: String) -> HttpResponse {
    error(500, "storage error", err)
}

fn not_allowed(request: &HttpRequest) -> HttpResponse {
    error(
        405,
        "method not allowed",
        format!("{} is not allowed on {}", request.method(), request.path()),
    )
}

fn body(request: &HttpRequest) -> Result<Value, HttpResponse> {
    serde_json::from_slice(request.body())
        .map_err(|err| error(400, "invalid body", format!("the body is not JSON: {err}")))
}

/// `?limit&offset`: default 30, at most 1000.
fn pagination(request: &HttpRequest) -> Result<(i64, i64), HttpResponse> {
    let number = |name: &str, default: i64, max: i64| match request.query_param(name) {
        None => Ok(default),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0 && *n <= max && (name != "limit" || *n > 0))
            .ok_or_else(|| {
                error(
                    400,
                    &format!("invalid {name}"),
                    format!(
                        "{name} {text:?} must be a whole number from {} to {max}",
                        if name == "limit" { 1 } else { 0 }
                    ),
                )
            }),
    };
    Ok((number("limit", 30, 1000)?, number("offset", 0, i64::MAX)?))
}

fn page(key: &str, items: Value, limit: i64, offset: i64, total: i64) -> HttpResponse {
    HttpResponse::json(
        200,
        &json!({key: items, "pagination": {"limit": limit, "offset": offset, "total": total}}),
    )
}

fn created(location: String, value: &Value) -> HttpResponse {
    let mut response = HttpResponse::json(201, value);
    response.headers.push(("location".into(), location));
    response
}

/// Answers a request under flare's prefix; other paths are left to other plugins.
pub fn handle(flare: &Flare, request: &HttpRequest) -> Decision<HttpResponse> {
    let Some(path) = request.path().strip_prefix(flare.config.prefix.as_str()) else {
        return Decision::NoDecision;
    };
    if let Some(document) = path.strip_prefix("/documents/") {
        return Decision::Decided(documents(flare, request, document).unwrap_or_else(|r| r));
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if !matches!(segments.first(), Some(&"resources") | Some(&"deliveries")) {
        return Decision::NoDecision;
    }
    Decision::Decided(route(flare, request, &segments).unwrap_or_else(|r| r))
}

fn route(
    flare: &Flare,
    request: &HttpRequest,
    segments: &[&str],
) -> Result<HttpResponse, HttpResponse> {
    let prefix = &flare.config.prefix;
    match (request.method(), segments) {
        ("POST", ["resources"]) => {
            let resource =
                model::resource(&body(request)?, uuid::Uuid::new_v4().to_string()).map_err(bad)?;
            if !flare.store.insert_resource(&resource).map_err(internal)? {
                return Err(error(
                    409,
                    "resource exists",
                    format!("a resource with endpoint {} exists", resource.endpoint),
                ));
            }
            Ok(created(
                format!("{prefix}/resources/{}", resource.id),
                &json!(resource),
            ))
        }
        ("GET", ["resources"]) => {
            let (limit, offset) = pagination(request)?;
            let (items, total) = flare.store.resources(limit, offset).map_err(internal)?;
            Ok(page("resources", json!(items), limit, offset, total))
        }
        ("GET", ["resources", id]) => match flare.store.resource(id).map_err(internal)? {
            Some(resource) => Ok(HttpResponse::json(200, &json!(resource))),
            None => Err(error(
                404,
                "resource not found",
                format!("no resource {id}"),
            )),
        },
        ("DELETE", ["resources", id]) => match flare.store.delete_resource(id).map_err(internal)? {
            None => Err(error(
                404,
                "resource not found",
                format!("no resource {id}"),
            )),
            Some(false) => Err(error(
                409,
                "resource has subscriptions",
                format!("delete the subscriptions of {id} first"),
            )),
            Some(true) => Ok(HttpResponse::new(204, "application/json", Vec::new())),
        },
        (_, ["resources"]) | (_, ["resources", _]) => Err(not_allowed(request)),
        (method, ["resources", id, "subscriptions", rest @ ..]) => {
            let resource = flare
                .store
                .resource(id)
                .map_err(internal)?
                .ok_or_else(|| error(404, "resource not found", format!("no resource {id}")))?;
            match (method, rest) {
                ("POST", []) => {
                    let subscription = model::subscription(
                        &body(request)?,
                        uuid::Uuid::new_v4().to_string(),
                        &resource,
                    )
                    .map_err(bad)?;
                    if !flare
                        .store
                        .insert_subscription(&subscription)
                        .map_err(internal)?
                    {
                        return Err(error(
                            409,
                            "subscription exists",
                            "the resource has a subscription with the same url",
                        ));
                    }
                    Ok(created(
                        format!("{prefix}/resources/{id}/subscriptions/{}", subscription.id),
                        &json!(subscription),
                    ))
                }
                ("GET", []) => {
                    let (limit, offset) = pagination(request)?;
                    let (items, total) = flare
                        .store
                        .subscriptions(id, limit, offset)
                        .map_err(internal)?;
                    Ok(page("subscriptions", json!(items), limit, offset, total))
                }
                ("GET", [sid]) => match flare.store.subscription(id, sid).map_err(internal)? {
                    Some(subscription) => Ok(HttpResponse::json(200, &json!(subscription))),
                    None => Err(error(
                        404,
                        "subscription not found",
                        format!("no subscription {sid}"),
                    )),
                },
                ("DELETE", [sid]) => {
                    match flare.store.delete_subscription(id, sid).map_err(internal)? {
                        true => Ok(HttpResponse::new(204, "application/json", Vec::new())),
                        false => Err(error(
                            404,
                            "subscription not found",
                            format!("no subscription {sid}"),
                        )),
                    }
                }
                (_, [] | [_]) => Err(not_allowed(request)),
                _ => Err(error(
                    404,
                    "not found",
                    format!("no route {}", request.path()),
                )),
            }
        }
        ("GET", ["deliveries"]) => {
            let (limit, offset) = pagination(request)?;
            let status = request.query_param("status").unwrap_or("failed");
            if !["pending", "delivered", "discarded", "failed", "superseded"].contains(&status) {
                return Err(error(400, "invalid status", format!("status {status:?} is not pending, delivered, discarded, failed or superseded")));
            }
            let (items, total) = flare
                .store
                .deliveries(status, limit, offset)
                .map_err(internal)?;
            Ok(page("deliveries", json!(items), limit, offset, total))
        }
        _ => Err(error(
            404,
            "not found",
            format!("no route {}", request.path()),
        )),
    }
}

fn documents(
    flare: &Flare,
    request: &HttpRequest,
    url: &str,
) -> Result<HttpResponse, HttpResponse> {
    let url = if request.query().is_empty() {
        url.to_owned()
    } else {
        format!("{url}?{}", request.query())
    };
    match request.method() {
        "PUT" => {
            let resources = flare.store.all_resources().map_err(internal)?;
            let resource = resources
                .iter()
                .find(|r| Endpoint::parse(&r.endpoint).is_ok_and(|e| e.capture(&url).is_some()))
                .ok_or_else(|| {
                    error(
                        404,
                        "no matching resource",
                        format!("{url} matches no resource's endpoint"),
                    )
                })?;
            let content = body(request)?;
            if !content.is_object() {
                return Err(error(
                    400,
                    "invalid body",
                    "the document must be a JSON object",
                ));
            }
            let revision = model::revision(&content, &resource.change).map_err(bad)?;
            let written = flare
                .store
                .put_document(resource, &url, &content, revision)
                .map_err(internal)?;
            if matches!(written, Written::Created | Written::Updated) {
                flare.wake_workers();
            }
            let action = match written {
                Written::Created => "create",
                Written::Updated => "update",
                Written::Ignored => "ignored",
                Written::Unsubscribed => "unsubscribed",
            };
            Ok(HttpResponse::json(
                202,
                &json!({"id": url, "revision": revision, "action": action}),
            ))
        }
        "DELETE" => {
            let existed = flare.store.delete_document(&url).map_err(internal)?;
            if existed {
                flare.wake_workers();
            }
            Ok(HttpResponse::json(
                202,
                &json!({"id": url, "deleted": existed}),
            ))
        }
        "GET" => match flare.store.document(&url).map_err(internal)? {
            Some(document) => Ok(HttpResponse::json(200, &document)),
            None => Err(error(
                404,
                "document not found",
                format!("no document {url}"),
            )),
        },
        _ => Err(not_allowed(request)),
    }
}
