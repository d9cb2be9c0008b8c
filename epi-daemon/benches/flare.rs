//! Flare through the daemon's router, on SQLite and on PostgreSQL (a throwaway server from
//! the machine's binaries): documents accepted per second, deliveries per second to a local
//! subscriber, PUT-to-delivery latency, with a second subscriber beside the measured one:
//! alive, then dead (answering 500). Then scale-out: one `epi` daemon, then two, on one PostgreSQL,
//! delivering to a subscriber that answers after 20 ms, each daemon capped at 4 concurrent
//! deliveries. Prints tables.
//!
//! `cargo bench -p epi-daemon --bench flare`

mod common;

use axum::extract::Request;
use axum::ServiceExt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Client;
use epi::{Registry, RegistryConfig};
use serde_json::{json, Value};

const DOCUMENTS: usize = 4_000;
const CLIENTS: usize = 4;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// `(sent, arrived)` times in microseconds of each delivery a subscriber got.
type Arrivals = Arc<Mutex<Vec<(u64, u64)>>>;

/// A subscriber answering `status`; records each body's `document.sent` and the arrival time.
fn subscriber(status: u16) -> (String, Arrivals) {
    subscriber_after(status, Duration::ZERO)
}

/// [`subscriber`] answering after `delay`.
fn subscriber_after(status: u16, delay: Duration) -> (String, Arrivals) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let shared = log.clone();
    std::thread::spawn(move || {
        for connection in listener.incoming().flatten() {
            let log = shared.clone();
            std::thread::spawn(move || {
                let _ = connection.set_nodelay(true);
                let mut writer = connection.try_clone().unwrap();
                let mut reader = BufReader::new(connection);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    std::thread::sleep(delay);
                    if let Some(sent) = body["document"]["sent"].as_u64() {
                        log.lock().unwrap().push((sent, now_us()));
                    }
                    // One write: a response split over several small writes waits for the peer's
                    // delayed acknowledgement (Nagle).
                    let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    let _ = writer.write_all(response.as_bytes());
                }
            });
        }
    });
    (url, log)
}

/// One run: a fresh flare on `store` (a SQLite path or a `postgres://` URL of an empty
/// database) with two subscribers, the second answering `second` (200 or 500); returns
/// (puts/s, deliveries/s to the first, p50, p99 ms).
fn run(store: &str, second: u16) -> (f64, f64, f64, f64) {
    let registry = Registry::new(RegistryConfig::default()).unwrap();
    registry
        .load_with_config(
            epi_testkit::plugin_library("epi-plugin-flare"),
            &json!({"store": store, "workers": 4, "retry_base_ms": 1000}),
        )
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let address = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = epi_daemon::serve::router(registry.clone(), 1 << 20);
        tokio::spawn(async move {
            axum::serve(listener, ServiceExt::<Request>::into_make_service(app)).await
        });
        address
    });
    let mut client = Client::connect(address);
    let (status, body) = client.request(
        "POST",
        "/resources",
        r#"{"endpoint": "http://api.io/docs/{id}", "change": {"field": "version"}}"#,
    );
    assert_eq!(status, 201);
    let resource: Value = serde_json::from_slice(&body).unwrap();
    let path = format!(
        "/resources/{}/subscriptions",
        resource["id"].as_str().unwrap()
    );
    let (alive, log) = subscriber(200);
    let mut urls = vec![alive];
    urls.push(subscriber(second).0);
    for url in &urls {
        let body =
            json!({"endpoint": {"url": url}, "delivery": {"success": [200], "discard": [410]}})
                .to_string();
        assert_eq!(client.request("POST", &path, &body).0, 201);
    }
    let started = Instant::now();
    std::thread::scope(|scope| {
        for first in 0..CLIENTS {
            scope.spawn(move || {
                let mut client = Client::connect(address);
                for n in (first..DOCUMENTS).step_by(CLIENTS) {
                    let body = json!({"version": 1, "sent": now_us()}).to_string();
                    let (status, answer) =
                        client.request("PUT", &format!("/documents/http://api.io/docs/{n}"), &body);
                    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&answer));
                }
            });
        }
    });
    let accepted = DOCUMENTS as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    while log.lock().unwrap().len() < DOCUMENTS {
        assert!(Instant::now() < deadline, "deliveries stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    let delivered = DOCUMENTS as f64 / started.elapsed().as_secs_f64();
    let mut latencies: Vec<u64> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(sent, at)| at.saturating_sub(*sent))
        .collect();
    latencies.sort_unstable();
    let at = |p: usize| latencies[(latencies.len() - 1) * p / 100] as f64 / 1000.0;
    drop(runtime);
    (accepted, delivered, at(50), at(99))
}

/// Deliveries per second to a subscriber answering after 20 ms, from `daemons` `epi serve`
/// processes sharing the PostgreSQL database `store`, each with 4 delivery workers.
fn scale_out(store: &str, daemons: usize) -> f64 {
    const CHANGES: usize = 1_000;
    let plugins = epi_testkit::plugin_dir();
    epi_testkit::install(plugins.path(), "epi-plugin-flare", "libepi_plugin_flare.so");
    let config = plugins.path().join("epi.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins]\ndirs = [\".\"]\n[plugins.config.\"libepi_plugin_flare.so\"]\n\
             store = \"{store}\"\nworkers = 4\n[http]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let epi = epi_testkit::build_binary("epi-daemon", "epi");
    let running: Vec<common::Daemon> = (0..daemons)
        .map(|_| common::Daemon::start(&epi, &config))
        .collect();
    let mut client = Client::connect(running[0].address);
    let (status, body) = client.request(
        "POST",
        "/resources",
        r#"{"endpoint": "http://api.io/slow/{id}", "change": {"field": "version"}}"#,
    );
    assert_eq!(status, 201);
    let resource: Value = serde_json::from_slice(&body).unwrap();
    let (url, log) = subscriber_after(200, Duration::from_millis(20));
    let body = json!({"endpoint": {"url": url}, "delivery": {"success": [200], "discard": [410]}});
    let path = format!(
        "/resources/{}/subscriptions",
        resource["id"].as_str().unwrap()
    );
    assert_eq!(client.request("POST", &path, &body.to_string()).0, 201);
    let started = Instant::now();
    for n in 0..CHANGES {
        let body = json!({"version": 1, "sent": now_us()}).to_string();
        let (status, _) =
            client.request("PUT", &format!("/documents/http://api.io/slow/{n}"), &body);
        assert_eq!(status, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while log.lock().unwrap().len() < CHANGES {
        assert!(Instant::now() < deadline, "deliveries stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    CHANGES as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let state = tempfile::tempdir().unwrap();
    let sqlite = |name: &str| state.path().join(name).display().to_string();
    let postgres = epi_testkit::postgres::Postgres::start();
    let rows = [
        (
            "SQLite",
            run(&sqlite("alive.sqlite"), 0),
            run(&sqlite("dead.sqlite"), 1),
        ),
        (
            "PostgreSQL",
            run(&postgres.create_database("alive"), 200),
            run(&postgres.create_database("dead"), 500),
        ),
    ];
    println!("\nflare, {DOCUMENTS} documents PUT by {CLIENTS} clients, 4 delivery workers\n");
    println!("| store | subscribers | PUT accepted/s | deliveries/s to the first | PUT → delivery p50 / p99 |");
    println!("|---|---|---|---|---|");
    for (store, alive, dead) in rows {
        let (put_alive, delivered_alive, p50_alive, p99_alive) = alive;
        let (put_dead, delivered_dead, p50_dead, p99_dead) = dead;
        println!(
            "| {store} | two live | {put_alive:.0} | {delivered_alive:.0} | {p50_alive:.1} / {p99_alive:.1} ms |"
        );
        println!("| {store} | one live, one dead (500) | {put_dead:.0} | {delivered_dead:.0} | {p50_dead:.1} / {p99_dead:.1} ms |");
        println!(
            "| {store} | the live one's throughput beside a dead one / beside a live one | | {:.2} | |",
            delivered_dead / delivered_alive
        );
    }
    let one = scale_out(&postgres.create_database("one_daemon"), 1);
    let two = scale_out(&postgres.create_database("two_daemons"), 2);
    println!("\nscale-out on one PostgreSQL: 1,000 changes to a subscriber answering after 20 ms, 4 delivery workers per daemon\n");
    println!("| daemons | deliveries/s |");
    println!("|---|---|");
    println!("| 1 | {one:.0} |");
    println!("| 2 | {two:.0} |");
    println!("| two / one | {:.2} |\n", two / one);
}
