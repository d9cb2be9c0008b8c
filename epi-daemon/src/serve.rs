//! `epi serve`: loads and watches the plugins, runs their processes, and serves HTTP.
//!
//! Every request outside `/_epi/` is routed the way CouchDB routes its handlers through
//! couch_epi: a `decide` over the `http` service's `handle` function; the first plugin that
//! decides answers, none gives a JSON 404. `/_epi/` holds the admin routes.

use std::sync::Arc;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use epi::http::{HttpBody, HttpRequest, HttpResponse};
use epi::{DecideOpts, Decision, Error, Function, Opts, Registry};
use serde::Deserialize;
use serde_json::{json, Value};
use smallvec::SmallVec;
use tower::Layer;

use crate::admin::{self, AdminGuard};
use crate::config::{Config, HttpConfig};
use crate::console::Console;
use crate::metrics::http::{CountLayer, CountService, HttpCounts};
use crate::registry::open_registry;
use crate::views;

/// What every handler shares, behind one `Arc`: axum clones the state for every request and
/// extractor, and one count to move is cheaper than six (the clones and drops of six were
/// 0.8% of a request's samples in the front door's profile).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The handlers' shared state itself.
pub struct Shared {
    registry: Registry,
    handle: Arc<Function<HttpRequest, Decision<HttpResponse>>>,
    next_chunk: Arc<Function<u64, Decision<Option<Vec<u8>>>>>,
    max_body: usize,
    console: Arc<Console>,
    http_counts: Arc<HttpCounts>,
}

/// A JSON error response.
fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
}

/// The daemon's HTTP service: the router, with the status of every answer counted once in
/// front of it (a layer on the router itself would wrap every route in one more boxed
/// service, cloned and called per request). Serve it with hyper, or with `axum::serve`
/// through `axum::ServiceExt::into_make_service`.
pub type App = CountService<Router>;

/// The router: admin routes, then everything else to the plugins; admin routes open to any
/// caller (for hosts that embed the router; `epi serve` guards them, see [`router_with`]).
pub fn router(registry: Registry, max_body: usize) -> App {
    router_with(registry, max_body, AdminGuard::open())
}

/// The router with the admin routes behind `guard`.
pub fn router_with(registry: Registry, max_body: usize, guard: AdminGuard) -> App {
    let http_counts = Arc::new(HttpCounts::default());
    let state = AppState(Arc::new(Shared {
        handle: Arc::new(registry.function(epi::http::SERVICE, epi::http::HANDLE)),
        next_chunk: Arc::new(registry.function(epi::http::SERVICE, epi::http::NEXT_CHUNK)),
        registry,
        max_body,
        console: Arc::default(),
        http_counts: http_counts.clone(),
    }));
    let admin = Router::new()
        .route("/_epi/plugins", get(plugins))
        .route("/_epi/services", get(services))
        .route("/_epi/data", get(data_status))
        .route("/_epi/data/{service}/keys", get(data_keys))
        .route("/_epi/data/{service}/get/{key}", get(data_get))
        .route("/_epi/data/{service}/by-key", get(data_by_key_all))
        .route("/_epi/data/{service}/by-key/{key}", get(data_by_key))
        .route("/_epi/data/{service}/by-source", get(data_by_source_all))
        .route(
            "/_epi/data/{service}/by-source/{source}",
            get(data_by_source),
        )
        .route("/_epi/processes", get(processes))
        .route("/_epi/counters", get(counters))
        .route("/_epi/metrics", get(metrics))
        .route("/_epi/ui/panels", get(console_panels))
        .route("/_epi/reload", post(reload))
        .route("/_epi/apply", post(apply))
        .route("/_epi/decide", post(decide))
        .route_layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            admin::guard,
        ))
        // The admin routes' extractors read this limit from the request's extensions; the
        // plugins' requests are limited where their body is read, so they do without it (and
        // without the extension map it allocates per request).
        .layer(DefaultBodyLimit::max(max_body));
    // The console's page holds nothing of the daemon's: a browser can load it without the
    // token (it asks for one), and all it shows and does goes through the routes above.
    let page = Router::new()
        .route("/_epi/ui", get(console_page))
        .route_layer(axum::middleware::from_fn_with_state(
            guard,
            admin::page_guard,
        ));
    let router = Router::new()
        .merge(admin)
        .merge(page)
        .fallback(route_to_plugins)
        .with_state(state);
    CountLayer(http_counts).layer(router)
}

/// Runs the daemon until SIGINT or SIGTERM; SIGHUP reloads plugins and data.
pub async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let registry = tokio::task::spawn_blocking({
        let config = config.clone();
        move || open_registry(&config, true, true)
    })
    .await??;
    let guard = AdminGuard::new(&config.http, config.http.listen)?;
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", config.http.listen))?;
    let address = listener.local_addr()?;
    println!("epi listening on http://{address}");
    tracing::info!(%address, plugins = registry.plugins().len(), "serving");

    tokio::spawn(reload_on_hangup(registry.clone()));
    let app = router_with(registry.clone(), config.http.max_body_bytes, guard);
    serve_connections(listener, app, &config.http, shutdown_signal()).await;
    tracing::info!("requests finished; stopping processes, dependents first");
    let fatal = tokio::task::spawn_blocking(move || registry.stop_processes()).await?;
    if let Some(err) = fatal {
        tracing::warn!("a process had stopped with a fatal error: {err}");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Accepts and serves connections until `shutdown` completes, then waits for the requests in
/// flight. A client gets `header_timeout_ms` to send each request's headers (and a connection
/// idle that long is closed), so half-sent requests neither pile up nor hold shutdown; at most
/// `max_connections` are served at once.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: App,
    http: &HttpConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let header_timeout = std::time::Duration::from_millis(http.header_timeout_ms.max(1));
    let slots = Arc::new(tokio::sync::Semaphore::new(http.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let service = hyper_util::service::TowerToHyperService::new(app);
    tokio::pin!(shutdown);
    let mut at_limit = false;
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore stays open"),
        };
        if slots.available_permits() == 0 && !at_limit {
            tracing::warn!(
                max_connections = http.max_connections,
                "connection limit reached: new connections wait until one closes ([http] max_connections)"
            );
        }
        at_limit = slots.available_permits() == 0;
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: say so, and give it a moment.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        let connection = builder.serve_connection(TokioIo::new(stream), service.clone());
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, "connection ended: {err}");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Requests in flight finish; idle and half-sent connections are closed by the header
    // timeout at the latest.
    graceful.shutdown().await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: finishing requests in flight"),
        _ = interrupt.recv() => tracing::info!("SIGINT: finishing requests in flight"),
    }
}

async fn reload_on_hangup(registry: Registry) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangup.recv().await.is_some() {
        let registry = registry.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let results = registry.reload();
            let data = registry.reload_data();
            for failed in &data.failed {
                tracing::warn!(
                    service = %failed.service,
                    key = %failed.key,
                    source = %failed.source,
                    "data source failed: {}",
                    failed.error.as_deref().unwrap_or_default()
                );
            }
            tracing::info!(
                files = results.len(),
                notified = data.notified,
                failed_sources = data.failed.len(),
                "SIGHUP: plugins and data reloaded"
            );
        })
        .await;
    }
}

/// Routes a request to the first plugin that decides it.
async fn route_to_plugins(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // A request without a body (most GETs) skips collecting one.
    if body.is_end_stream() {
        return decide_request(&state, &parts, &[]);
    }
    let body = match axum::body::to_bytes(body, state.max_body).await {
        Ok(body) => body,
        Err(err) if is_length_limit(&err) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body exceeds {} bytes", state.max_body),
            )
        }
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {err}"),
            )
        }
    };
    decide_request(&state, &parts, &body)
}

/// Lends the request to the plugins and answers with the first one's decision. Not `async`,
/// so that the header list lives on the stack rather than in the request's future.
fn decide_request(state: &AppState, parts: &Parts, body: &[u8]) -> Response {
    // Header values are handed over as text, borrowed as they are; a value that is not UTF-8
    // (rare: HTTP allows any octets) is replaced by a lossy copy.
    let lossy: Vec<String>;
    let mut headers: SmallVec<[(&str, &str); 16]> = SmallVec::new();
    let mut all_text = true;
    for (name, value) in &parts.headers {
        let value = std::str::from_utf8(value.as_bytes()).unwrap_or_else(|_| {
            all_text = false;
            ""
        });
        headers.push((name.as_str(), value));
    }
    if !all_text {
        lossy = parts
            .headers
            .values()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect();
        for ((_, value), text) in headers.iter_mut().zip(&lossy) {
            *value = text;
        }
    }
    let (method, path) = (parts.method.as_str(), parts.uri.path());
    // A streamed body is pulled from the version that answered, through this table, even
    // when an upgrade replaces that version meanwhile.
    let table = state.handle.table();
    let decided = HttpRequest::lend(
        method,
        path,
        parts.uri.query().unwrap_or_default(),
        &headers,
        body,
        |request| state.handle.decide_at(&table, request, DecideOpts::new()),
    );
    match decided {
        Ok(Decision::Decided(response)) => into_response(state, response, table),
        Ok(Decision::NoDecision) | Err(Error::UnknownService(_)) => error(
            StatusCode::NOT_FOUND,
            format!("no plugin handles {method} {path}"),
        ),
        Err(err) => {
            tracing::warn!("{method} {path}: {err}");
            error(StatusCode::INTERNAL_SERVER_ERROR, err)
        }
    }
}

/// Whether a body read failed on the size limit (anything else is a malformed body).
fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if current.to_string().contains("length limit exceeded") {
            return true;
        }
        source = current.source();
    }
    false
}

/// Turns a plugin's response into an HTTP response; a streamed body is pulled chunk by chunk.
fn into_response(state: &AppState, response: HttpResponse, table: epi::Table) -> Response {
    let Ok(status) = StatusCode::from_u16(response.status) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("a plugin answered with status {}", response.status),
        );
    };
    let body = match response.body {
        HttpBody::Full(bytes) => Body::from(bytes),
        HttpBody::Stream { id } => {
            let next_chunk = state.next_chunk.clone();
            let chunks = futures_util::stream::unfold((), move |()| {
                let next_chunk = next_chunk.clone();
                let table = table.clone();
                async move {
                    match next_chunk.decide_at(&table, &id, DecideOpts::new()) {
                        Ok(Decision::Decided(Some(chunk))) => {
                            Some((Ok::<Bytes, std::io::Error>(Bytes::from(chunk)), ()))
                        }
                        // The end the plugin announced.
                        Ok(Decision::Decided(None)) => None,
                        // Nobody knows the stream any more (the version that opened it forgot
                        // it): the body cannot be finished. An error aborts the connection, so
                        // the client sees a cut body, not a complete one.
                        Ok(Decision::NoDecision) => {
                            tracing::warn!(
                                stream = id,
                                "a streamed body lost its plugin; aborting the response"
                            );
                            Some((
                                Err(std::io::Error::other("the stream's plugin is gone")),
                                (),
                            ))
                        }
                        Err(err) => Some((Err(std::io::Error::other(err.to_string())), ())),
                    }
                }
            });
            Body::from_stream(chunks)
        }
    };
    let mut reply = Response::new(body);
    *reply.status_mut() = status;
    for (name, value) in response.headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(name), Ok(value)) => {
                reply.headers_mut().append(name, value);
            }
            _ => tracing::warn!(header = %name, "a plugin answered an invalid header; dropped"),
        }
    }
    reply
}

async fn plugins(State(state): State<AppState>) -> Response {
    Json(views::Status::from(&state.registry.status())).into_response()
}

async fn services(State(state): State<AppState>) -> Response {
    Json(views::services(&state.registry.services())).into_response()
}

async fn data_status(State(state): State<AppState>) -> Response {
    Json(views::data_status(&state.registry.data_status())).into_response()
}

async fn data_keys(State(state): State<AppState>, UrlPath(service): UrlPath<String>) -> Response {
    Json(views::data_keys(&state.registry.data(&service).keys())).into_response()
}

async fn data_get(
    State(state): State<AppState>,
    UrlPath((service, key)): UrlPath<(String, String)>,
) -> Response {
    Json(views::data_values(&state.registry.data(&service).get(&key))).into_response()
}

async fn data_by_key(
    State(state): State<AppState>,
    UrlPath((service, key)): UrlPath<(String, String)>,
) -> Response {
    Json(views::data_pairs(
        &state.registry.data(&service).by_key(&key),
    ))
    .into_response()
}

async fn data_by_key_all(
    State(state): State<AppState>,
    UrlPath(service): UrlPath<String>,
) -> Response {
    Json(views::data_groups(
        &state.registry.data(&service).by_key_all(),
    ))
    .into_response()
}

async fn data_by_source(
    State(state): State<AppState>,
    UrlPath((service, source)): UrlPath<(String, String)>,
) -> Response {
    Json(views::data_pairs(
        &state.registry.data(&service).by_source(&source),
    ))
    .into_response()
}

async fn data_by_source_all(
    State(state): State<AppState>,
    UrlPath(service): UrlPath<String>,
) -> Response {
    Json(views::data_groups(
        &state.registry.data(&service).by_source_all(),
    ))
    .into_response()
}

async fn processes(State(state): State<AppState>) -> Response {
    Json(views::Processes::from(&state.registry.process_report())).into_response()
}

async fn counters(State(state): State<AppState>) -> Response {
    Json(views::counters(&state.registry.counters())).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let done = tokio::task::spawn_blocking(move || {
        crate::metrics::render(&state.registry, &state.http_counts)
    })
    .await;
    match done {
        Ok(Ok(text)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                crate::metrics::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Ok(Err(err)) => {
            tracing::error!("{err}");
            error(StatusCode::INTERNAL_SERVER_ERROR, err)
        }
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

async fn console_page(State(state): State<AppState>) -> Response {
    Html(state.console.page().into_string()).into_response()
}

async fn console_panels(State(state): State<AppState>) -> Response {
    let done =
        tokio::task::spawn_blocking(move || state.console.panels(&state.registry).into_string())
            .await;
    match done {
        Ok(html) => (
            [(axum::http::header::CACHE_CONTROL, "no-store")],
            Html(html),
        )
            .into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

/// Query of `/_epi/reload`.
#[derive(Deserialize)]
pub struct ReloadQuery {
    /// Only this plugin (app name).
    pub plugin: Option<String>,
}

async fn reload(State(state): State<AppState>, Query(query): Query<ReloadQuery>) -> Response {
    let registry = state.registry.clone();
    let done = tokio::task::spawn_blocking(move || match query.plugin {
        Some(app) => reload_plugin(&registry, &app),
        None => reload_all(&registry),
    })
    .await;
    match done {
        Ok(body) => Json(body).into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

/// Re-checks every plugin file and re-reads all data: [`views::Reload`] as a JSON value (keys
/// sorted, as reloads have always answered).
pub fn reload_all(registry: &Registry) -> Value {
    let results = registry.reload();
    let files = results
        .iter()
        .map(|(path, result)| views::FileReload::new(path, result))
        .collect();
    views::to_json(views::Reload::new(files, &registry.reload_data()))
}

/// Re-checks the file of one plugin (upgrading it if it changed), then re-reads all data; same
/// shape as [`reload_all`]. An unknown plugin gives an `error` entry.
pub fn reload_plugin(registry: &Registry, app: &str) -> Value {
    let upgraded = registry
        .plugins()
        .into_iter()
        .find(|plugin| plugin.app == app)
        .map(|plugin| {
            let result = registry.upgrade(&plugin.file);
            (plugin.file, result)
        });
    let files = match &upgraded {
        Some((path, result)) => vec![views::FileReload::new(path, result)],
        None => vec![views::FileReload::error(format!(
            "no plugin named `{app}` is loaded"
        ))],
    };
    views::to_json(views::Reload::new(files, &registry.reload_data()))
}

/// Body of `/_epi/apply` and `/_epi/decide`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    /// The service.
    pub service: String,
    /// The function.
    pub function: String,
    /// Arguments as JSON (`null` for none).
    #[serde(default)]
    pub args: Value,
    /// Options.
    #[serde(default)]
    pub opts: Opts,
}

/// Reads an apply/decide body; a bad one is a 400 with a JSON error.
fn parse_call(body: &Bytes) -> Result<CallBody, Box<Response>> {
    serde_json::from_slice(body).map_err(|err| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("bad request body: {err} (expected {{\"service\", \"function\", \"args\", \"opts\"}})"),
        ))
    })
}

fn call_error(err: Error) -> Response {
    let status = match err {
        Error::UnknownService(_) => StatusCode::NOT_FOUND,
        Error::IncompatibleOptions(_) | Error::BadArguments { .. } => StatusCode::BAD_REQUEST,
        // The caller's arguments did not decode as the function's argument type.
        Error::Provider(ref failed)
            if matches!(
                failed.failure,
                epi::Failure::BadInput(_) | epi::Failure::TypeMismatch { .. }
            ) =>
        {
            StatusCode::BAD_REQUEST
        }
        Error::Provider(_) | Error::TooDeep { .. } | Error::Remote(_) | Error::BadOutput { .. } => {
            StatusCode::BAD_GATEWAY
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, err)
}

async fn apply(State(state): State<AppState>, body: Bytes) -> Response {
    let call = match parse_call(&body) {
        Ok(call) => call,
        Err(response) => return *response,
    };
    // Plugin code may take its time: not on the async workers.
    let done = tokio::task::spawn_blocking(move || {
        state
            .registry
            .apply_json(&call.service, &call.function, &call.args, call.opts)
            .map(|applied| applied.to_json(call.opts.ignore_errors))
    })
    .await;
    match done {
        Ok(Ok(result)) => Json(views::Called { result }).into_response(),
        Ok(Err(err)) => call_error(err),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

async fn decide(State(state): State<AppState>, body: Bytes) -> Response {
    let call = match parse_call(&body) {
        Ok(call) => call,
        Err(response) => return *response,
    };
    let done = tokio::task::spawn_blocking(move || {
        state
            .registry
            .decide_json(&call.service, &call.function, &call.args, call.opts)
    })
    .await;
    match done {
        Ok(Ok(decision)) => Json(views::Called {
            result: views::Decision::from(&decision),
        })
        .into_response(),
        Ok(Err(err)) => call_error(err),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}
