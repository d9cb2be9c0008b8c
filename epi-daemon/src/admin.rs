//! Who may use the admin routes (`/_epi/*`, which reload plugins and run plugin code): a
//! token when one is configured, a `Host` the daemon answers to (against DNS rebinding), and,
//! for requests that change something, no cross-site `Origin` and no body a browser form can
//! send (against CSRF).

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::HttpConfig;

/// The admin routes' policy.
#[derive(Clone, Debug)]
pub struct AdminGuard {
    token: Option<String>,
    hosts: Vec<String>,
}

impl AdminGuard {
    /// The policy of `http`; refuses a non-loopback `listen` without a token unless
    /// `allow_unauthenticated_admin` says otherwise.
    pub fn new(http: &HttpConfig, listen: SocketAddr) -> Result<AdminGuard, String> {
        let token = http.token()?;
        if token.is_none() && !listen.ip().is_loopback() && !http.allow_unauthenticated_admin {
            return Err(format!(
                "[http] listen = \"{listen}\" is not a loopback address, and the admin routes \
                 (/_epi/*) have no protection: set admin_token or admin_token_file, or \
                 allow_unauthenticated_admin = true"
            ));
        }
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        if !listen.ip().is_unspecified() {
            hosts.push(listen.ip().to_string());
        }
        hosts.extend(http.hosts.iter().map(|host| host.to_ascii_lowercase()));
        Ok(AdminGuard { token, hosts })
    }

    /// A guard that lets everything through (in-process hosts and benchmarks).
    pub fn open() -> AdminGuard {
        AdminGuard {
            token: None,
            hosts: Vec::new(),
        }
    }

    /// Whether the token is configured (the console's page then asks for it).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn check(&self, request: &Request) -> Result<(), (StatusCode, String)> {
        self.check_host(request)?;
        self.check_caller(request)
    }

    /// The `Host` check alone (against DNS rebinding).
    fn check_host(&self, request: &Request) -> Result<(), (StatusCode, String)> {
        let headers = request.headers();
        if !self.hosts.is_empty() {
            let host = headers
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
                .map(host_name)
                .or_else(|| request.uri().host().map(str::to_ascii_lowercase))
                .ok_or((
                    StatusCode::FORBIDDEN,
                    "admin routes need a Host header".to_owned(),
                ))?;
            if !self.hosts.contains(&host) {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!(
                        "host {host:?} is not one this daemon answers to (add it to [http] hosts)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The token, and for requests that change something, the `Origin` and body checks.
    fn check_caller(&self, request: &Request) -> Result<(), (StatusCode, String)> {
        let headers = request.headers();
        if let Some(expected) = &self.token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "admin routes need `Authorization: Bearer TOKEN` with the daemon's admin token"
                        .to_owned(),
                ));
            }
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            if let Some(origin) = headers.get(header::ORIGIN) {
                let origin = origin.to_str().unwrap_or("");
                let host = headers
                    .get(header::HOST)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("");
                let same = origin
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host));
                if !same {
                    return Err((
                        StatusCode::FORBIDDEN,
                        format!("cross-site admin request from origin {origin:?} refused"),
                    ));
                }
            }
            if let Some(kind) = headers.get(header::CONTENT_TYPE) {
                let kind = kind.to_str().unwrap_or("");
                let essence = kind.split(';').next().unwrap_or("").trim();
                if !essence.eq_ignore_ascii_case("application/json") {
                    return Err((
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!("admin requests take application/json, not {kind:?}"),
                    ));
                }
            } else if request_has_body(request) {
                return Err((
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "admin requests with a body need Content-Type: application/json".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// The host name of a `Host` header, lower case, without the port.
fn host_name(value: &str) -> String {
    let value = value.trim().to_ascii_lowercase();
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_owned();
    }
    match value.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_owned(),
        _ => value,
    }
}

fn request_has_body(request: &Request) -> bool {
    let headers = request.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|length| length.trim() != "0")
}

/// The middleware in front of the admin routes.
pub async fn guard(State(guard): State<AdminGuard>, request: Request, next: Next) -> Response {
    let checked = guard.check(&request);
    pass_or_refuse(checked, request, next).await
}

/// The middleware in front of the console's page (`/_epi/ui`): the `Host` check only. The
/// page is static and holds nothing of the daemon's; everything it shows and does goes
/// through admin routes behind [`guard`], with the token the operator gives the page.
pub async fn page_guard(State(guard): State<AdminGuard>, request: Request, next: Next) -> Response {
    let checked = guard.check_host(&request);
    pass_or_refuse(checked, request, next).await
}

async fn pass_or_refuse(
    checked: Result<(), (StatusCode, String)>,
    request: Request,
    next: Next,
) -> Response {
    match checked {
        Ok(()) => next.run(request).await,
        Err((status, message)) => {
            tracing::warn!(
                method = %request.method(),
                path = request.uri().path(),
                "admin request refused: {message}"
            );
            (status, Json(json!({"error": message}))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("LocalHost:8080"), "localhost");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("example.com"), "example.com");
    }
}
