//! The provider component against its physical floor: a `decide` answered by one provider
//! process (the example provider, a real process) beside a bare round trip on a unix socket
//! (one frame out, one frame back, on an open connection), measured in the same run,
//! alternating; then the throughput of 4 callers. Prints a table.
//!
//! `cargo bench -p epi-tests --bench provider`

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use epi::{Decision, Opts, Registry, RegistryConfig};
use epi_provider::wire::{read_frame, write_frame};
use serde_json::json;

const ROUND: usize = 5_000;
const ROUNDS: usize = 5;

fn main() {
    let sockets = tempfile::tempdir().unwrap();
    std::fs::set_permissions(sockets.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let registry = Registry::new(RegistryConfig::default()).unwrap();
    registry
        .load_with_config(
            epi_testkit::plugin_library("epi-plugin-provider"),
            &json!({"socket_dir": sockets.path()}),
        )
        .unwrap();
    let binary = epi_testkit::build_binary("epi-provider-example", "epi-example-provider");
    let mut child = Command::new(binary)
        .args(["--name", "bench", "--task", "greet", "--socket-dir"])
        .arg(sockets.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let args = json!({"lang": "en", "name": "Ada"});
    let decide = || {
        registry
            .decide_json("provider", "greet", &args, Opts::new())
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !decide().is_decided() {
        assert!(Instant::now() < deadline, "the provider never answered");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The floor: an echo server thread, one connection, a frame of the same request's size.
    let echo_path = sockets.path().join("echo.sock");
    let listener = UnixListener::bind(&echo_path).unwrap();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let mut connection = connection.unwrap();
            std::thread::spawn(move || {
                while let Ok(Some(body)) = read_frame(&mut connection, 1 << 20) {
                    if write_frame(&mut connection, &body).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut client = UnixStream::connect(&echo_path).unwrap();
    let request = json!({"id": "0000000000.0.0-0", "task": "greet", "response_hook": format!("unix://{}/.tracker/x.sock", sockets.path().display()), "args": args, "timeout_ms": 60000}).to_string();

    let mut echo_p50 = Vec::new();
    let mut decide_p50 = Vec::new();
    let mut decide_p99 = Vec::new();
    for _ in 0..ROUNDS {
        let mut times = Vec::with_capacity(ROUND);
        for _ in 0..ROUND {
            let start = Instant::now();
            write_frame(&mut client, request.as_bytes()).unwrap();
            read_frame(&mut client, 1 << 20).unwrap().unwrap();
            times.push(start.elapsed());
        }
        echo_p50.push(percentile(&mut times, 50));
        let mut times = Vec::with_capacity(ROUND);
        for _ in 0..ROUND {
            let start = Instant::now();
            let decided = decide();
            times.push(start.elapsed());
            assert!(matches!(decided, Decision::Decided(_)));
        }
        decide_p50.push(percentile(&mut times, 50));
        decide_p99.push(percentile(&mut times, 99));
    }

    // Throughput: 4 callers for 3 s.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let (stop, calls, decide) = (stop.clone(), calls.clone(), &decide);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert!(decide().is_decided());
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
    });
    let per_second = calls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    // Discovery: from a provider's sockets existing to its first answer.
    let mut discovered = Vec::new();
    for round in 0..5 {
        let name = format!("late-{round}");
        let mut late = Command::new(epi_testkit::build_binary(
            "epi-provider-example",
            "epi-example-provider",
        ))
        .args(["--name", &name, "--task", "whoami", "--socket-dir"])
        .arg(sockets.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let mut out = BufReader::new(late.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let started = Instant::now();
        loop {
            let names = registry
                .apply_json("provider", "whoami", &serde_json::Value::Null, Opts::new())
                .unwrap()
                .to_json(false);
            if names.as_array().unwrap().iter().any(|n| n == &json!(name)) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "never discovered"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        discovered.push(started.elapsed());
        let _ = late.kill();
        let _ = late.wait();
    }
    let discovery_max = discovered.iter().max().unwrap().as_secs_f64() * 1e3;
    let discovery_p50 = percentile(&mut discovered, 50).as_secs_f64() * 1e3;

    let median = |values: &mut Vec<Duration>| percentile(values, 50).as_secs_f64() * 1e6;
    let (echo, decided, tail) = (
        median(&mut echo_p50),
        median(&mut decide_p50),
        median(&mut decide_p99),
    );
    println!("| workload | figure |");
    println!("|---|---|");
    println!("| bare unix-socket round trip, p50 | {echo:.1} µs |");
    println!("| decide by one provider process, p50 / p99 | {decided:.1} / {tail:.1} µs |");
    println!("| decide p50 / round trip p50 | {:.2}× |", decided / echo);
    println!("| 4 concurrent callers | {per_second:.0} calls/s |");
    println!("| a new socket → its first answer, p50 / max of 5 | {discovery_p50:.1} / {discovery_max:.1} ms |");
    println!("(round trips: medians over {ROUNDS} alternating rounds of {ROUND} calls each)");
    let _ = child.kill();
    let _ = child.wait();
}

fn percentile(values: &mut [Duration], percent: usize) -> Duration {
    values.sort_unstable();
    values[(values.len() - 1) * percent / 100]
}
