//! Flare on SQLite through the daemon's router: documents accepted per second, deliveries per
//! second to a local subscriber, PUT-to-delivery latency, and the same with a second,
//! dead subscriber (answering 500) beside the live one. Prints a table.
//!
//! `cargo bench -p epi-daemon --bench flare`

mod common;

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

/// One run: a fresh flare, `dead` extra dead subscribers; returns (puts/s, deliveries/s, p50, p99 ms).
fn run(dead: usize) -> (f64, f64, f64, f64) {
    let state = tempfile::tempdir().unwrap();
    let registry = Registry::new(RegistryConfig::default()).unwrap();
    registry
        .load_with_config(
            epi_testkit::plugin_library("epi-plugin-flare"),
            &json!({"store": state.path().join("flare.sqlite"), "workers": 4, "retry_base_ms": 1000}),
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
        tokio::spawn(async move { axum::serve(listener, app).await });
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
    for _ in 0..dead {
        urls.push(subscriber(500).0);
    }
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
                    let (status, _) =
                        client.request("PUT", &format!("/documents/http://api.io/docs/{n}"), &body);
                    assert_eq!(status, 202);
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

fn main() {
    let (put_alive, delivered_alive, p50_alive, p99_alive) = run(0);
    let (put_dead, delivered_dead, p50_dead, p99_dead) = run(1);
    println!(
        "\nflare on SQLite, {DOCUMENTS} documents PUT by {CLIENTS} clients, 4 delivery workers\n"
    );
    println!("| subscribers | PUT accepted/s | deliveries/s to the live one | PUT → delivery p50 / p99 |");
    println!("|---|---|---|---|");
    println!(
        "| one live | {put_alive:.0} | {delivered_alive:.0} | {p50_alive:.1} / {p99_alive:.1} ms |"
    );
    println!("| one live, one dead (500) | {put_dead:.0} | {delivered_dead:.0} | {p50_dead:.1} / {p99_dead:.1} ms |");
    println!(
        "| live throughput with a dead one / without | | {:.2} | |\n",
        delivered_dead / delivered_alive
    );
}
