//! Requests per second through the daemon's front door (routing by `decide` into the hello
//! plugin) beside the same handler written directly in axum, in the same process and run.
//!
//! `cargo bench -p epi-daemon --bench front_door`
//!
//! The windows' throughput is noisy on shared machines: each round measures axum twice, and
//! epi's window between them is compared with their mean; the second axum window against the
//! first shows the machine's own spread. The process's CPU time per request is printed beside
//! it. For a count that does not depend on the machine's load, one server can be driven alone
//! by one client for a fixed number of requests, under valgrind, and the user-space
//! instructions of two such runs compared per request:
//!
//! `FRONT_DOOR_ONLY=epi FRONT_DOOR_REQUESTS=20000 valgrind --tool=callgrind <bench executable>`
//! (and `FRONT_DOOR_ONLY=axum`, and each again with another request count: the difference
//! over the difference of requests is the instructions per request).

use axum::extract::Request;
use axum::ServiceExt;
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
    client_for(address, u64::MAX, stop, done)
}

/// As [`client`], ending after `requests` requests at most.
fn client_for(address: SocketAddr, requests: u64, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let request = b"GET /hello/Ada HTTP/1.1\r\nhost: bench\r\n\r\n";
    let mut line = String::new();
    let mut body = Vec::new();
    let mut count = 0u64;
    while count < requests && !stop.load(Ordering::Relaxed) {
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

/// The process's CPU time (user and system, all threads) so far.
fn process_cpu() -> Duration {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value it is handed.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// One window against one server: requests per second, and the process's CPU time per
/// request (clients included, the same for both servers; the other server idles).
fn measure(address: SocketAddr) -> (f64, Duration) {
    let cpu = process_cpu();
    let (rate, requests) = requests_per_second(address);
    (rate, (process_cpu() - cpu) / requests.max(1) as u32)
}

fn requests_per_second(address: SocketAddr) -> (f64, u64) {
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
    let requests = done.load(Ordering::Relaxed);
    (requests as f64 / started.elapsed().as_secs_f64(), requests)
}

/// One server alone: a fixed number of requests from one client when `FRONT_DOOR_REQUESTS`
/// says how many (for valgrind), else one window of the usual clients.
fn drive_alone(which: &str, address: SocketAddr) {
    if let Some(requests) = std::env::var("FRONT_DOOR_REQUESTS")
        .ok()
        .and_then(|requests| requests.parse().ok())
    {
        let (stop, done) = (Arc::default(), Arc::new(AtomicU64::new(0)));
        client_for(address, requests, stop, done.clone());
        println!("{which}: {} requests", done.load(Ordering::Relaxed));
        return;
    }
    let (rate, cpu) = measure(address);
    println!(
        "{which} alone: {rate:.0} requests/s, {:.2} µs of CPU per request",
        cpu.as_secs_f64() * 1e6
    );
}

fn main() {
    let library = epi_testkit::plugin_library("epi-plugin-hello");
    // Valgrind cannot run the load probe's child (it refuses `pidfd_open`), so a counted run
    // loads without it; the requests do not go near it.
    let registry = Registry::new(RegistryConfig {
        load_probe: if std::env::var_os("FRONT_DOOR_REQUESTS").is_some() {
            epi::LoadProbe::Off
        } else {
            RegistryConfig::default().load_probe
        },
        ..RegistryConfig::default()
    })
    .unwrap();
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
        tokio::spawn(async move {
            axum::serve(
                epi_listener,
                ServiceExt::<Request>::into_make_service(epi_app),
            )
            .await
        });
        tokio::spawn(async move { axum::serve(axum_listener, axum_app).await });
        addresses
    });

    if let Ok(which) = std::env::var("FRONT_DOOR_ONLY") {
        let address = if which == "epi" {
            epi_address
        } else {
            axum_address
        };
        return drive_alone(&which, address);
    }
    // Each round measures axum before and after epi: epi is compared with their mean, and the
    // spread of axum against itself is the machine's own from one window to the next, the
    // yardstick for the spread of epi's.
    let (mut ratios, mut controls) = (Vec::new(), Vec::new());
    let (mut epi_sum, mut axum_sum) = (0.0, 0.0);
    let (mut epi_cpu, mut axum_cpu) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (direct, direct_cpu) = measure(axum_address);
        let (through_epi, through_epi_cpu) = measure(epi_address);
        let (again, _) = measure(axum_address);
        ratios.push(through_epi / ((direct + again) / 2.0));
        controls.push(again / direct);
        epi_sum += through_epi;
        axum_sum += direct;
        epi_cpu.push(through_epi_cpu);
        axum_cpu.push(direct_cpu);
    }
    ratios.sort_by(f64::total_cmp);
    controls.sort_by(f64::total_cmp);
    epi_cpu.sort();
    axum_cpu.sort();
    println!("\nepi front door vs the same handler in axum ({CLIENTS} keep-alive clients, {ROUNDS} alternating {WINDOW:?} windows)\n");
    println!("| server | requests/s (mean) | process CPU per request (median) |");
    println!("|---|---|---|");
    println!(
        "| axum handler directly | {:.0} | {:.2} µs |",
        axum_sum / ROUNDS as f64,
        axum_cpu[ROUNDS / 2].as_secs_f64() * 1e6
    );
    println!(
        "| epi: decide over http.handle into the hello plugin | {:.0} | {:.2} µs |",
        epi_sum / ROUNDS as f64,
        epi_cpu[ROUNDS / 2].as_secs_f64() * 1e6
    );
    println!(
        "| ratio epi / axum (the mean of the windows before and after) | {:.3} (median; min {:.3}, max {:.3}) |",
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1]
    );
    println!(
        "| control: axum / axum, the next window | {:.3} (median; min {:.3}, max {:.3}) |\n",
        controls[ROUNDS / 2],
        controls[0],
        controls[ROUNDS - 1]
    );
}
