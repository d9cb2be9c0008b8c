//! The flare component through the real `epi` binary and real HTTP: resources, subscriptions,
//! documents, and deliveries to subscriber servers the tests run on 127.0.0.1.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{start, Daemon};

struct Setup {
    dir: tempfile::TempDir,
    _state: tempfile::TempDir,
    config: PathBuf,
}

fn setup(flare: &str) -> Setup {
    setup_on(None, flare)
}

/// Flare on `store` (a `postgres://` URL), or on SQLite in a temp dir when `None`.
fn setup_on(store: Option<&str>, flare: &str) -> Setup {
    let dir = epi_testkit::plugin_dir();
    epi_testkit::install(dir.path(), "epi-plugin-flare", "libepi_plugin_flare.so");
    let state = tempfile::tempdir().unwrap();
    let store = match store {
        Some(url) => url.to_owned(),
        None => state.path().join("flare.sqlite").display().to_string(),
    };
    let config = dir.path().join("epi.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins]\ndirs = [\".\"]\n\
             [plugins.config.\"libepi_plugin_flare.so\"]\nstore = \"{store}\"\n{flare}\n\
             [http]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    Setup {
        dir,
        _state: state,
        config,
    }
}

/// Status, Location header and JSON body.
fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Option<String>, Value) {
    common::call_with(method, url, body, "location")
}

/// A request a subscriber received, and the status it answered.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
    status: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The idempotency keys of what a subscriber took (answered 200).
fn keys(received: &[Received]) -> HashSet<String> {
    received
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect()
}

/// A subscriber: an HTTP server on 127.0.0.1 answering every request with `status`.
struct Subscriber {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    gate: Arc<Gate>,
}

/// While shut, the subscriber's requests wait for their answer (and are counted): the
/// deliveries stay under way.
#[derive(Default)]
struct Gate {
    shut: AtomicBool,
    waiting: AtomicUsize,
}

impl Gate {
    fn pass(&self) {
        if self.shut.load(Ordering::SeqCst) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while self.shut.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Subscriber {
    fn start(status: u16, delay: Duration) -> Subscriber {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(status));
        let gate = Arc::new(Gate::default());
        let (log, code, shared_gate) = (received.clone(), status.clone(), gate.clone());
        std::thread::spawn(move || {
            for connection in listener.incoming().flatten() {
                let (log, code, gate) = (log.clone(), code.clone(), shared_gate.clone());
                std::thread::spawn(move || serve(connection, &log, &code, &gate, delay));
            }
        });
        Subscriber {
            url,
            received,
            status,
            gate,
        }
    }

    /// Holds every answer from now on until [`Subscriber::release`].
    fn hold(&self) {
        self.gate.shut.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.gate.shut.store(false, Ordering::SeqCst);
    }

    /// Waits until `count` requests wait for their answer.
    fn wait_held(&self, count: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.gate.waiting.load(Ordering::SeqCst) < count {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `check` holds on what was received.
    fn wait(&self, what: &str, timeout: Duration, check: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(&self.received()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}; received {}",
                self.received().len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve(
    connection: TcpStream,
    log: &Mutex<Vec<Received>>,
    code: &AtomicU16,
    gate: &Gate,
    delay: Duration,
) {
    let _ = connection.set_nodelay(true);
    let mut writer = connection.try_clone().unwrap();
    let mut reader = BufReader::new(connection);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut headers = Vec::new();
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
                if name == "content-length" {
                    length = value.parse().unwrap_or(0);
                }
                headers.push((name, value));
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        std::thread::sleep(delay);
        gate.pass();
        let status = code.load(Ordering::Relaxed);
        log.lock().unwrap().push(Received {
            method,
            path,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            status,
        });
        // One write: a response split over small writes would wait for the peer's delayed
        // acknowledgement (Nagle).
        let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn resource(daemon: &Daemon, endpoint: &str) -> String {
    let (status, location, body) = call(
        "POST",
        &format!("{}/resources", daemon.base),
        Some(json!({"endpoint": endpoint, "change": {"field": "version"}})),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        location.unwrap(),
        format!("/resources/{}", body["id"].as_str().unwrap())
    );
    body["id"].as_str().unwrap().to_owned()
}

fn subscribe(daemon: &Daemon, resource: &str, body: Value) -> String {
    let (status, _, answer) = call(
        "POST",
        &format!("{}/resources/{resource}/subscriptions", daemon.base),
        Some(body),
    );
    assert_eq!(status, 201, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

fn put(daemon: &Daemon, url: &str, document: Value) -> Value {
    let (status, _, answer) = call(
        "PUT",
        &format!("{}/documents/{url}", daemon.base),
        Some(document),
    );
    assert_eq!(status, 202, "{answer}");
    answer
}

/// How many deliveries have `status`.
fn deliveries(daemon: &Daemon, status: &str) -> u64 {
    let url = daemon.url(&format!("/deliveries?status={status}&limit=1"));
    let (code, _, page) = call("GET", &url, None);
    assert_eq!(code, 200, "{page}");
    page["pagination"]["total"].as_u64().unwrap()
}

/// Waits until no delivery is pending: every attempt made was recorded, and there is nothing
/// left to send.
fn wait_none_pending(daemon: &Daemon, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while deliveries(daemon, "pending") > 0 {
        assert!(Instant::now() < deadline, "deliveries still pending");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_validation_rule_names_its_field() {
    let setup = setup("");
    let daemon = start(&setup.config);
    let base = &daemon.base;
    let post = |body: Value| call("POST", &format!("{base}/resources"), Some(body));
    for (body, field) in [
        (
            json!({"endpoint": "ftp://a.io/users/{id}", "change": {"field": "v"}}),
            "endpoint",
        ),
        (
            json!({"endpoint": "http://a.io/users/x{id}", "change": {"field": "v"}}),
            "endpoint",
        ),
        (
            json!({"endpoint": "http://a.io/users/{id}/{id}", "change": {"field": "v"}}),
            "endpoint",
        ),
        (
            json!({"endpoint": "http://a.io/users/{id}?q=1", "change": {"field": "v"}}),
            "endpoint",
        ),
        (
            json!({"endpoint": "http://a.io/users/{revision}", "change": {"field": "v"}}),
            "endpoint",
        ),
        (json!({"endpoint": "http://a.io/users/{id}"}), "change"),
        (
            json!({"endpoint": "http://a.io/users/{id}", "change": {}}),
            "change.field",
        ),
        (
            json!({"endpoint": "http://a.io/users/{id}", "change": {"field": "v", "format": "soon"}}),
            "change.format",
        ),
    ] {
        let (status, _, answer) = post(body.clone());
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"]["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{body}: {answer}"
        );
    }
    let id = resource(&daemon, "http://a.io/users/{id}");
    let (status, _, _) =
        post(json!({"endpoint": "http://a.io/users/{id}", "change": {"field": "v"}}));
    assert_eq!(status, 409);
    let (status, _, page) = call("GET", &format!("{base}/resources?limit=1&offset=0"), None);
    assert_eq!(
        (status, page["pagination"].clone()),
        (200, json!({"limit": 1, "offset": 0, "total": 1}))
    );
    for bad in ["limit=0", "limit=1001", "offset=-1", "limit=x"] {
        let (status, _, _) = call("GET", &format!("{base}/resources?{bad}"), None);
        assert_eq!(status, 400, "{bad}");
    }
    let subscriptions = format!("{base}/resources/{id}/subscriptions");
    let good = json!({"endpoint": {"url": "http://127.0.0.1:9/x"}, "delivery": {"success": [200], "discard": [410]}});
    for (change, field) in [
        (
            json!({"endpoint": {"url": "http://127.0.0.1:9/x", "method": "FETCH"}}),
            "endpoint.method",
        ),
        (json!({"endpoint": {"method": "post"}}), "endpoint.url"),
        (
            json!({"delivery": {"success": [], "discard": [410]}}),
            "delivery.success",
        ),
        (
            json!({"delivery": {"success": [200], "discard": [1000]}}),
            "delivery.discard",
        ),
        (
            json!({"content": {"envelope": false}, "data": {"x": 1}}),
            "data",
        ),
        (json!({"data": {"user": "{name}"}}), "data"),
    ] {
        let mut body = good.clone();
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        let (status, _, answer) = call("POST", &subscriptions, Some(body.clone()));
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"]["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{answer}"
        );
    }
    // Methods are case-insensitive; the same url twice is a conflict.
    let mut lower = good.clone();
    lower["endpoint"]["method"] = json!("put");
    let (status, _, created) = call("POST", &subscriptions, Some(lower));
    assert_eq!(
        (status, created["endpoint"]["method"].clone()),
        (201, json!("PUT"))
    );
    let (status, _, _) = call("POST", &subscriptions, Some(good));
    assert_eq!(status, 409);
    // A resource with subscriptions cannot go.
    let (status, _, _) = call("DELETE", &format!("{base}/resources/{id}"), None);
    assert_eq!(status, 409);
    // Documents: no resource, unsupported revision types.
    let (status, _, _) = call(
        "PUT",
        &format!("{base}/documents/http://b.io/users/1"),
        Some(json!({"version": 1})),
    );
    assert_eq!(status, 404);
    for document in [json!({"version": true}), json!({"version": {}}), json!({})] {
        let (status, _, answer) = call(
            "PUT",
            &format!("{base}/documents/http://a.io/users/1"),
            Some(document),
        );
        assert_eq!(status, 400);
        let detail = answer["error"]["detail"].as_str().unwrap();
        assert!(
            detail.contains("data type not supported") && detail.starts_with("version:"),
            "{detail}"
        );
    }
    // No subscription: accepted, nothing stored.
    let other = resource(&daemon, "http://c.io/items/{id}");
    let answer = put(&daemon, "http://c.io/items/1", json!({"version": 1}));
    assert_eq!(answer["action"], "unsubscribed");
    let (status, _, _) = call(
        "GET",
        &format!("{base}/documents/http://c.io/items/1"),
        None,
    );
    assert_eq!(status, 404);
    let (status, _, _) = call("DELETE", &format!("{base}/resources/{other}"), None);
    assert_eq!(status, 204);
    let (status, _, _) = call("DELETE", &format!("{base}/resources/{other}"), None);
    assert_eq!(status, 404);
    // Deleting an unknown document is harmless.
    let (status, _, _) = call(
        "DELETE",
        &format!("{base}/documents/http://a.io/users/404"),
        None,
    );
    assert_eq!(status, 202);
}

#[test]
fn a_document_is_created_updated_ignored_and_deleted_once_each() {
    create_update_ignore_delete(&setup(""));
}

#[test]
fn on_postgres_a_document_is_created_updated_ignored_and_deleted_once_each() {
    let server = epi_testkit::postgres::Postgres::start();
    create_update_ignore_delete(&setup_on(Some(&server.url()), ""));
}

fn create_update_ignore_delete(setup: &Setup) {
    let daemon = start(&setup.config);
    let subscriber = Subscriber::start(200, Duration::ZERO);
    let id = resource(&daemon, "http://api.io/users/{id}");
    subscribe(
        &daemon,
        &id,
        json!({
            "endpoint": {"url": format!("{}/users/{{id}}", subscriber.url), "method": "post",
                         "headers": {"x-team": ["blue"]},
                         "actions": {"delete": {"method": "delete", "url": format!("{}/gone/{{id}}/{{revision}}", subscriber.url)}}},
            "delivery": {"success": [200], "discard": [410]},
            "data": {"service": "users", "user": "{id}"},
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        }),
    );
    let url = "http://api.io/users/7";
    assert_eq!(
        put(&daemon, url, json!({"version": 1, "name": "Ada"}))["action"],
        "create"
    );
    subscriber.wait("the create arrives", Duration::from_secs(10), |r| {
        r.len() == 1
    });
    assert_eq!(
        put(&daemon, url, json!({"version": 1, "name": "Ada"}))["action"],
        "ignored"
    );
    assert_eq!(
        put(&daemon, url, json!({"version": 0, "name": "old"}))["action"],
        "ignored"
    );
    assert_eq!(
        put(&daemon, url, json!({"version": 2, "name": "Ada L."}))["action"],
        "update"
    );
    subscriber.wait("the update arrives", Duration::from_secs(10), |r| {
        r.len() == 2
    });
    let (status, _, stored) = call("GET", &format!("{}/documents/{url}", daemon.base), None);
    assert_eq!((status, stored["revision"].clone()), (200, json!(2)));
    let (status, _, _) = call("DELETE", &format!("{}/documents/{url}", daemon.base), None);
    assert_eq!(status, 202);
    subscriber.wait("the delete arrives", Duration::from_secs(10), |r| {
        r.len() == 3
    });
    // Nothing pending: nothing more can come.
    wait_none_pending(&daemon, Duration::from_secs(10));
    assert_eq!(deliveries(&daemon, "delivered"), 3);
    let received = subscriber.received();
    assert_eq!(received.len(), 3, "nothing more: {received:?}");
    let (create, update, delete) = (&received[0], &received[1], &received[2]);
    assert_eq!(
        (create.method.as_str(), create.path.as_str()),
        ("POST", "/users/7")
    );
    assert_eq!(create.body["action"], "create");
    assert_eq!(create.body["id"], url);
    assert_eq!(
        create.body["data"],
        json!({"service": "users", "user": "7"})
    );
    assert_eq!(
        create.body["document"],
        json!({"version": 1, "name": "Ada"})
    );
    assert_eq!(create.header("x-team"), Some("blue"));
    assert_eq!(create.header("content-type"), Some("application/json"));
    assert_eq!(
        create.header("idempotency-key"),
        Some("http://api.io/users/7@1:create")
    );
    assert_eq!(
        create.header("webhook-id"),
        create.header("idempotency-key")
    );
    assert!(create
        .header("webhook-signature")
        .unwrap()
        .starts_with("v1,"));
    assert_eq!(update.body["action"], "update");
    assert_eq!(update.body["document"]["name"], "Ada L.");
    assert_eq!(
        (delete.method.as_str(), delete.path.as_str()),
        ("DELETE", "/gone/7/2")
    );
    assert_eq!(delete.body["action"], "delete");
}

const DEAD_SUBSCRIBER_CONFIG: &str =
    "retry_base_ms = 20\nretry_cap_ms = 100\nmax_attempts = 3\nworkers = 4";

#[test]
fn a_dead_subscriber_never_delays_the_others() {
    dead_subscriber(&setup(DEAD_SUBSCRIBER_CONFIG));
}

#[test]
fn on_postgres_a_dead_subscriber_never_delays_the_others() {
    let server = epi_testkit::postgres::Postgres::start();
    dead_subscriber(&setup_on(Some(&server.url()), DEAD_SUBSCRIBER_CONFIG));
}

fn dead_subscriber(setup: &Setup) {
    let daemon = start(&setup.config);
    let alive = Subscriber::start(200, Duration::ZERO);
    let dead = Subscriber::start(500, Duration::ZERO);
    let id = resource(&daemon, "http://api.io/things/{id}");
    for subscriber in [&dead, &alive] {
        subscribe(
            &daemon,
            &id,
            json!({"endpoint": {"url": format!("{}/hook", subscriber.url)}, "delivery": {"success": [200], "discard": [410]}}),
        );
    }
    let started = Instant::now();
    for n in 0..1000 {
        put(
            &daemon,
            &format!("http://api.io/things/{n}"),
            json!({"version": 1}),
        );
    }
    alive.wait(
        "1000 documents reach the live subscriber",
        Duration::from_secs(60),
        |r| r.len() >= 1000,
    );
    let elapsed = started.elapsed();
    assert_eq!(keys(&alive.received()).len(), 1000);
    // Deliveries to the dead one are given up on after their attempts; failures are visible.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, failed) = call(
            "GET",
            &format!("{}/deliveries?status=failed&limit=1", daemon.base),
            None,
        );
        if failed["pagination"]["total"].as_u64().unwrap_or(0) >= 1 {
            assert!(
                failed["deliveries"][0]["error"]
                    .as_str()
                    .unwrap()
                    .contains("status 500"),
                "{failed}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "failures not recorded: {failed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // While it fails, the dead one is probed a few deliveries at a time, not sent its whole
    // queue at once.
    assert!(
        dead.received().len() < 3000,
        "{} attempts",
        dead.received().len()
    );
    eprintln!("1000 documents reached the live subscriber in {elapsed:?}");
}

#[test]
fn a_killed_daemon_delivers_every_accepted_document_after_a_restart() {
    let setup = setup("timeout_ms = 500\nworkers = 2");
    let daemon = start(&setup.config);
    let subscriber = Subscriber::start(200, Duration::from_millis(5));
    let id = resource(&daemon, "http://api.io/orders/{id}");
    subscribe(
        &daemon,
        &id,
        json!({"endpoint": {"url": format!("{}/hook", subscriber.url)}, "delivery": {"success": [200], "discard": [410]}}),
    );
    for n in 0..300 {
        put(
            &daemon,
            &format!("http://api.io/orders/{n}"),
            json!({"version": n}),
        );
    }
    // Deliveries under way at the kill: answers held, a few more documents, and both
    // workers waiting for an answer (what came before may all be delivered by now).
    subscriber.hold();
    for n in 300..304 {
        put(
            &daemon,
            &format!("http://api.io/orders/{n}"),
            json!({"version": n}),
        );
    }
    subscriber.wait_held(2, "both workers are in the middle of a delivery");
    drop(daemon);
    subscriber.release();
    let restarted = start(&setup.config);
    let expected: HashSet<String> = (0..304)
        .map(|n| format!("http://api.io/orders/{n}@{n}:create"))
        .collect();
    subscriber.wait(
        "every accepted document arrives",
        Duration::from_secs(60),
        |received| keys(received) == expected,
    );
    drop(restarted);
}

#[test]
fn an_upgrade_of_flare_during_deliveries_loses_none() {
    // Quick retries, never given up: refused deliveries wait for the subscriber.
    let setup = setup("workers = 2\nretry_base_ms = 20\nretry_cap_ms = 100\nmax_attempts = 1000");
    let mut daemon = start(&setup.config);
    let subscriber = Subscriber::start(200, Duration::from_millis(2));
    let id = resource(&daemon, "http://api.io/carts/{id}");
    subscribe(
        &daemon,
        &id,
        json!({"endpoint": {"url": format!("{}/hook", subscriber.url)}, "delivery": {"success": [200], "discard": [410]}}),
    );
    fn flare_build(daemon: &Daemon) -> Value {
        let (_, _, status) = call("GET", &daemon.url("/_epi/plugins"), None);
        let plugins = status["plugins"].as_array().unwrap();
        let flare = plugins.iter().find(|p| p["app"] == "flare").unwrap();
        flare["content_hash"].clone()
    }
    fn put(daemon: &mut Daemon, n: usize) {
        let url = format!("{}/documents/http://api.io/carts/{n}", daemon.base);
        if let Err(err) = ureq::put(&url).send_json(json!({"version": 1})) {
            // Time for a dying daemon to be gone, to say how it ended.
            std::thread::sleep(Duration::from_millis(500));
            panic!("PUT {n}: {err}; the daemon: {:?}", daemon.child.try_wait());
        }
    }
    let old = flare_build(&daemon);
    for n in 0..100 {
        put(&mut daemon, n);
    }
    subscriber.wait("deliveries are under way", Duration::from_secs(10), |r| {
        !r.is_empty()
    });
    // From here the subscriber refuses (503: retried) until the new version serves, so what
    // was accepted before the upgrade and refused is surely delivered after it.
    subscriber.status.store(503, Ordering::Relaxed);
    put(&mut daemon, 100);
    subscriber.wait("a document refused", Duration::from_secs(10), |r| {
        r.iter().any(|r| r.status == 503)
    });
    let library = setup.dir.path().join("libepi_plugin_flare.so");
    let mut bytes = std::fs::read(&library).unwrap();
    bytes.extend_from_slice(&[9; 16]);
    let staged = setup.dir.path().join("flare.staged");
    std::fs::write(&staged, &bytes).unwrap();
    std::fs::rename(&staged, &library).unwrap();
    for n in 101..200 {
        put(&mut daemon, n);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while flare_build(&daemon) == old {
        assert!(Instant::now() < deadline, "flare was not upgraded");
        std::thread::sleep(Duration::from_millis(20));
    }
    subscriber.status.store(200, Ordering::Relaxed);
    subscriber.wait("all 200 arrive", Duration::from_secs(30), |received| {
        keys(received).len() == 200
    });
}

#[test]
fn two_daemons_on_one_postgres_deliver_each_change_exactly_once() {
    const CHANGES: usize = 10_000;
    let server = epi_testkit::postgres::Postgres::start();
    let setup = setup_on(Some(&server.url()), "workers = 4");
    let first = start(&setup.config);
    let second = start(&setup.config);
    let subscribers = [
        Subscriber::start(200, Duration::ZERO),
        Subscriber::start(200, Duration::ZERO),
    ];
    // Made through one daemon, seen through the other: they share the database.
    let id = resource(&first, "http://api.io/parcels/{id}");
    for subscriber in &subscribers {
        subscribe(
            &second,
            &id,
            json!({"endpoint": {"url": format!("{}/hook", subscriber.url)}, "delivery": {"success": [200], "discard": [410]}}),
        );
    }
    // 10,000 changes (documents), half accepted by each daemon, by four clients at once; the
    // first 1,000 are also written at the same time through the other daemon, where exactly
    // one of the two writes may count.
    let creates = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for client in 0..4 {
            let (daemons, creates) = ([&first, &second], &creates);
            scope.spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                let mut mine: Vec<(usize, usize)> =
                    (client..CHANGES).step_by(4).map(|n| (n, n % 2)).collect();
                // Clients 0/1 and 2/3 race on the same first 1,000 documents.
                let partner = client ^ 1;
                mine.extend((partner..1000).step_by(4).map(|n| (n, (n + 1) % 2)));
                mine.sort();
                for (n, daemon) in mine {
                    let url = daemons[daemon].url(&format!("/documents/http://api.io/parcels/{n}"));
                    let answer: Value = agent
                        .put(&url)
                        .send_json(json!({"version": 1}))
                        .unwrap_or_else(|err| panic!("PUT {url}: {err}"))
                        .into_json()
                        .unwrap();
                    if answer["action"] == "create" {
                        creates.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(
        creates.load(Ordering::Relaxed),
        CHANGES,
        "one create per document, whichever daemon got it first"
    );
    for subscriber in &subscribers {
        subscriber.wait(
            "every change arrives",
            Duration::from_secs(120),
            |received| received.len() >= CHANGES,
        );
    }
    // Nothing pending (the database is shared): nothing more can come.
    wait_none_pending(&first, Duration::from_secs(30));
    for subscriber in &subscribers {
        let received = subscriber.received();
        let mut keys = HashSet::new();
        for request in &received {
            let key = request.header("idempotency-key").unwrap().to_owned();
            assert!(keys.insert(key.clone()), "{key} was delivered twice");
        }
        assert_eq!(received.len(), CHANGES);
        eprintln!(
            "{} deliveries to one subscriber, none twice",
            received.len()
        );
    }
    // Both daemons took part in the delivery (their process reports refresh every second).
    for daemon in [&first, &second] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, _, report) = call("GET", &daemon.url("/_epi/processes"), None);
            let sent = find_key(&report, "sent").and_then(Value::as_u64);
            if let Some(sent) = sent.filter(|&sent| sent > 0) {
                eprintln!("{}: {sent} deliveries sent", daemon.base);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} sent nothing: {report}",
                daemon.base
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The first value under `key` anywhere in `value`.
fn find_key<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

#[test]
fn on_postgres_the_claims_of_a_killed_daemon_are_taken_over_by_the_other() {
    let server = epi_testkit::postgres::Postgres::start();
    let setup = setup_on(Some(&server.url()), "timeout_ms = 500\nworkers = 2");
    let doomed = start(&setup.config);
    let survivor = start(&setup.config);
    let subscriber = Subscriber::start(200, Duration::from_millis(5));
    let id = resource(&doomed, "http://api.io/orders/{id}");
    subscribe(
        &doomed,
        &id,
        json!({"endpoint": {"url": format!("{}/hook", subscriber.url)}, "delivery": {"success": [200], "discard": [410]}}),
    );
    for n in 0..300 {
        let daemon = if n % 2 == 0 { &doomed } else { &survivor };
        put(
            daemon,
            &format!("http://api.io/orders/{n}"),
            json!({"version": n}),
        );
    }
    // Claims under way at the kill: answers held, a few more documents, and all four workers
    // (two a daemon) waiting for an answer (what came before may all be delivered by now).
    subscriber.hold();
    for n in 300..308 {
        let daemon = if n % 2 == 0 { &doomed } else { &survivor };
        put(
            daemon,
            &format!("http://api.io/orders/{n}"),
            json!({"version": n}),
        );
    }
    subscriber.wait_held(4, "every worker is in the middle of a delivery");
    drop(doomed); // SIGKILL, mid-delivery
    subscriber.release();
    let expected: HashSet<String> = (0..308)
        .map(|n| format!("http://api.io/orders/{n}@{n}:create"))
        .collect();
    subscriber.wait(
        "every accepted document arrives through the survivor",
        Duration::from_secs(60),
        |received| keys(received) == expected,
    );
    // The killed daemon's deliveries under way (the subscriber logged them when it let them
    // go) are made again by the survivor once their claims expire.
    subscriber.wait(
        "the survivor sends the killed daemon's claimed deliveries again",
        Duration::from_secs(30),
        |received| received.len() > keys(received).len(),
    );
    drop(survivor);
}
