//! Requests per second through the daemon's front door (routing by `decide` into the hello
//! plugin) beside the same handler written directly in axum, in the same process and run.
//!
//! `cargo bench -p epi-daemon --bench front_door`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use epi::{Registry, RegistryConfig};

const CLIENTS: usize = 4;
const WINDOW: Duration = Duration::from_secs(2);
const ROUNDS: usize = 5;

/// The handler the hello plugin implements, written directly in axum.
async fn hello(Path(name): Path<String>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; charset=utf-8")],
        format!("Hello, {name}!"),
    )
}

/// One keep-alive connection sending `GET /hello/Ada` and reading each response whole.
fn client(address: SocketAddr, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let request = b"GET /hello/Ada HTTP/1.1\r\nhost: bench\r\n\r\n";
    let mut line = String::new();
    let mut body = Vec::new();
    let mut count = 0u64;
    while !stop.load(Ordering::Relaxed) {
        writer.write_all(request).unwrap();
        let mut length = 0usize;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            assert!(!line.is_empty(), "connection closed");
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).unwrap();
        assert_eq!(&body[..], b"Hello, Ada!");
        count += 1;
    }
    done.fetch_add(count, Ordering::Relaxed);
}

fn requests_per_second(address: SocketAddr) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || client(address, stop, done))
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(WINDOW);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let library = epi_testkit::plugin_library("epi-plugin-hello");
    let registry = Registry::new(RegistryConfig::default()).unwrap();
    registry.load(&library).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (epi_address, axum_address) = runtime.block_on(async {
        let epi_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let axum_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addresses = (
            epi_listener.local_addr().unwrap(),
            axum_listener.local_addr().unwrap(),
        );
        let epi_app = epi_daemon::serve::router(registry.clone(), 1 << 20);
        let axum_app = Router::new().route("/hello/{name}", get(hello));
        tokio::spawn(async move { axum::serve(epi_listener, epi_app).await });
        tokio::spawn(async move { axum::serve(axum_listener, axum_app).await });
        addresses
    });

    let mut ratios = Vec::new();
    let (mut epi_sum, mut axum_sum) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        let direct = requests_per_second(axum_address);
        let through_epi = requests_per_second(epi_address);
        ratios.push(through_epi / direct);
        epi_sum += through_epi;
        axum_sum += direct;
    }
    ratios.sort_by(f64::total_cmp);
    println!("\nepi front door vs the same handler in axum ({CLIENTS} keep-alive clients, {ROUNDS} alternating {WINDOW:?} windows)\n");
    println!("| server | requests/s (mean) |");
    println!("|---|---|");
    println!(
        "| axum handler directly | {:.0} |",
        axum_sum / ROUNDS as f64
    );
    println!(
        "| epi: decide over http.handle into the hello plugin | {:.0} |",
        epi_sum / ROUNDS as f64
    );
    println!(
        "| ratio epi / axum | {:.3} (median; min {:.3}, max {:.3}) |\n",
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1]
    );
}
