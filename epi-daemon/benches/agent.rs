//! The agent through the daemon's front door: an Info action (`GET /guests/{id}`) beside the
//! front-door baseline (`GET /hello/Ada` into the hello plugin) in the same process and run,
//! alternating; then 10,000 no-op Async jobs over 100 guests, queued over HTTP by 4 clients,
//! until the last one completes. Prints a table.
//!
//! `cargo bench -p epi-daemon --bench agent`

mod common;

use axum::extract::Request;
use axum::ServiceExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Client;
use epi::{Registry, RegistryConfig};
use serde_json::{json, Value};

const CLIENTS: usize = 4;
const WINDOW: Duration = Duration::from_secs(2);
const ROUNDS: usize = 5;
const GUESTS: usize = 100;
const JOBS: usize = 10_000;

fn requests_per_second(address: SocketAddr, path: &str) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, done, path) = (stop.clone(), done.clone(), path.to_owned());
            std::thread::spawn(move || {
                let mut client = Client::connect(address);
                let mut count = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (status, _) = client.request("GET", &path, "");
                    assert_eq!(status, 200, "{path}");
                    count += 1;
                }
                done.fetch_add(count, Ordering::Relaxed);
            })
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
    let state = tempfile::tempdir().unwrap();
    let registry = Registry::new(RegistryConfig::default()).unwrap();
    registry
        .load(epi_testkit::plugin_library("epi-plugin-hello"))
        .unwrap();
    registry
        .load_with_config(
            epi_testkit::plugin_library("epi-plugin-agent"),
            &json!({"db": state.path().join("agent.sqlite"), "workers": 8, "keep_jobs": 1000}),
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

    // 100 guests (their create jobs are no-ops: no stages configured).
    let mut client = Client::connect(address);
    let guests: Vec<String> = (0..GUESTS)
        .map(|_| {
            let (status, body) = client.request("POST", "/guests", "{}");
            assert_eq!(status, 202);
            let guest: Value = serde_json::from_slice(&body).unwrap();
            guest["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let info_path = format!("/guests/{}", guests[0]);

    // The same two requests in process, without HTTP: the handlers' own cost.
    let handle = registry
        .function::<epi::http::HttpRequest, epi::Decision<epi::http::HttpResponse>>(
            epi::http::SERVICE,
            epi::http::HANDLE,
        );
    let in_process = |path: &str| {
        let request = epi::http::HttpRequest::new("GET", path);
        let calls = 20_000;
        let started = Instant::now();
        for _ in 0..calls {
            match handle.decide(&request, epi::DecideOpts::new()).unwrap() {
                epi::Decision::Decided(answer) => assert_eq!(answer.status, 200, "{path}"),
                epi::Decision::NoDecision => panic!("nobody answered {path}"),
            }
        }
        started.elapsed().as_secs_f64() * 1e6 / calls as f64
    };
    let (hello_call, info_call) = (in_process("/hello/Ada"), in_process(&info_path));

    let mut ratios = Vec::new();
    let (mut info_sum, mut hello_sum) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        let hello = requests_per_second(address, "/hello/Ada");
        let info = requests_per_second(address, &info_path);
        ratios.push(info / hello);
        info_sum += info;
        hello_sum += hello;
    }
    ratios.sort_by(f64::total_cmp);

    // 10,000 no-op jobs, 100 per guest, queued by 4 clients; then wait for the last.
    let started = Instant::now();
    let last_jobs: Vec<(String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = guests
            .chunks(GUESTS / CLIENTS)
            .map(|chunk| {
                scope.spawn(move || {
                    let mut client = Client::connect(address);
                    let mut last = Vec::new();
                    for round in 0..JOBS / GUESTS {
                        for guest in chunk {
                            let path = format!("/guests/{guest}/restart");
                            let (status, body) = client.request("POST", &path, "");
                            assert_eq!(status, 202);
                            if round == JOBS / GUESTS - 1 {
                                let job: Value = serde_json::from_slice(&body).unwrap();
                                last.push((
                                    guest.clone(),
                                    job["job_id"].as_str().unwrap().to_owned(),
                                ));
                            }
                        }
                    }
                    last
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let queued = started.elapsed();
    for (guest, job) in &last_jobs {
        loop {
            let (_, body) = client.request("GET", &format!("/guests/{guest}/jobs/{job}"), "");
            let job: Value = serde_json::from_slice(&body).unwrap();
            if job["status"] == "Complete" {
                break;
            }
            assert_ne!(job["status"], "Error", "{job}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let total = started.elapsed();

    println!("\nthe agent through the front door ({CLIENTS} keep-alive clients, {ROUNDS} alternating {WINDOW:?} windows)\n");
    println!("| workload | figure |");
    println!("|---|---|");
    println!(
        "| GET /hello/Ada (front-door baseline) | {:.0} requests/s |",
        hello_sum / ROUNDS as f64
    );
    println!(
        "| GET /guests/{{id}} (Info action) | {:.0} requests/s |",
        info_sum / ROUNDS as f64
    );
    println!(
        "| ratio Info / baseline | {:.3} (median; min {:.3}, max {:.3}) |",
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1]
    );
    println!(
        "| one call of `http.handle` in process, no HTTP: hello / Info | {hello_call:.1} µs / {info_call:.1} µs |"
    );
    println!(
        "| {JOBS} no-op jobs over {GUESTS} guests, queued over HTTP then run | queued in {:.2} s, all complete after {:.2} s: {:.0} jobs/s |\n",
        queued.as_secs_f64(),
        total.as_secs_f64(),
        JOBS as f64 / total.as_secs_f64()
    );
}
