//! A soak of the real daemon: for 60 s (`EPI_SOAK_SECS` to change it), keep-alive clients
//! call a plugin route as fast as they can while the plugin is replaced every 500 ms, a data
//! file is rewritten every 100 ms, admin routes are called, and a slowloris client keeps
//! half-sent requests open. Then: no failed request, no truncated body, and bounded memory and
//! descriptors. Retired versions are unloaded (`retire = "unload"`): under the default
//! `release` policy each retired native-path version stays mapped on purpose (values may
//! borrow its memory), so memory grows by about a library's size per upgrade.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

mod common;

use common::{start, Daemon};

const TOKEN: &str = "soak-token";

/// One keep-alive connection sending `GET path` and reading whole responses.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(daemon: &Daemon) -> Client {
        let stream = TcpStream::connect(daemon.base.strip_prefix("http://").unwrap()).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    /// The status and body, or why the exchange failed.
    fn get(&mut self, path: &str, headers: &str) -> Result<(u16, Vec<u8>), String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n");
        self.writer
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut length = None;
        loop {
            line.clear();
            self.reader
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            if line.is_empty() {
                return Err("closed in the headers".into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let length = length.ok_or("no content-length")?;
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("truncated body: {e}"))?;
        Ok((status, body))
    }
}

fn publish(path: &Path, bytes: &[u8]) {
    let staged = path.with_file_name(format!(
        ".{}.staged",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&staged, bytes).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// (resident memory in KiB, open descriptors) of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

#[test]
fn the_daemon_holds_up_under_load_swaps_data_rewrites_admin_calls_and_slowloris() {
    let seconds: u64 = std::env::var("EPI_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = epi_testkit::plugin_dir();
    let hello = epi_testkit::install(dir.path(), "epi-plugin-hello", "libepi_plugin_hello.so");
    epi_testkit::install(
        dir.path(),
        "epi-plugin-testplug",
        "libepi_plugin_testplug.so",
    );
    let data = epi_testkit::write_file(dir.path(), "soak.json", b"0");
    let config = dir.path().join("epi.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins]\ndirs = [\".\"]\nretire = \"unload\"\n\
             [plugins.config.\"libepi_plugin_testplug.so\"]\napp = \"testplug\"\n\
             data = [{{ service = \"cfg\", key = \"soak\", file = \"{}\" }}]\n\
             [http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{TOKEN}\"\nheader_timeout_ms = 2000\n",
            data.display()
        ),
    )
    .unwrap();
    let daemon = start(&config);
    let pid = daemon.child.id();
    let hello_bytes = std::fs::read(&hello).unwrap();
    let stop = AtomicBool::new(false);
    let (requests, failures) = (AtomicU64::new(0), AtomicU64::new(0));
    let (swaps, admin_calls, slow_opened) =
        (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let first_failure = std::sync::Mutex::new(None::<String>);
    let fail = |what: String| {
        failures.fetch_add(1, Ordering::Relaxed);
        first_failure.lock().unwrap().get_or_insert(what);
    };
    let mut early_usage = (0, 0);
    std::thread::scope(|scope| {
        // Load: four keep-alive clients.
        for _ in 0..4 {
            scope.spawn(|| {
                let mut client = Client::connect(&daemon);
                while !stop.load(Ordering::Relaxed) {
                    match client.get("/hello/Ada", "") {
                        Ok((200, body)) if body == b"Hello, Ada!" => {}
                        Ok((status, body)) => fail(format!(
                            "GET /hello/Ada: {status} {}",
                            String::from_utf8_lossy(&body)
                        )),
                        Err(err) => {
                            fail(format!("GET /hello/Ada: {err}"));
                            client = Client::connect(&daemon);
                        }
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // A new build of the plugin every 500 ms.
        scope.spawn(|| {
            let mut build = 0u8;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                build = build.wrapping_add(1);
                let mut bytes = hello_bytes.clone();
                bytes.extend_from_slice(&[build; 16]);
                publish(&hello, &bytes);
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        });
        // The data file rewritten every 100 ms.
        scope.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                n += 1;
                publish(&data, n.to_string().as_bytes());
            }
        });
        // Admin calls every 200 ms, with the token.
        scope.spawn(|| {
            let auth = format!("authorization: Bearer {TOKEN}\r\n");
            let mut client = Client::connect(&daemon);
            while !stop.load(Ordering::Relaxed) {
                for path in ["/_epi/plugins", "/_epi/data", "/_epi/counters"] {
                    match client.get(path, &auth) {
                        Ok((200, _)) => {}
                        Ok((status, body)) => fail(format!(
                            "GET {path}: {status} {}",
                            String::from_utf8_lossy(&body)
                        )),
                        Err(err) => {
                            fail(format!("GET {path}: {err}"));
                            client = Client::connect(&daemon);
                        }
                    }
                    admin_calls.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        // Slowloris: 100 half-sent requests at a time, reopened as the daemon drops them.
        scope.spawn(|| {
            let address = daemon.base.strip_prefix("http://").unwrap();
            let mut open: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                open.retain(|stream| {
                    let mut byte = [0u8; 1];
                    stream.set_nonblocking(true).unwrap();
                    // Still open while a read would block.
                    matches!(
                        (&*stream).read(&mut byte),
                        Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
                    )
                });
                while open.len() < 100 {
                    let Ok(mut stream) = TcpStream::connect(address) else {
                        break;
                    };
                    let _ =
                        stream.write_all(b"GET /hello/Ada HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
                    open.push(stream);
                    slow_opened.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_secs(seconds.min(10)));
        early_usage = usage(pid);
        std::thread::sleep(Duration::from_secs(seconds.saturating_sub(10)));
        stop.store(true, Ordering::Relaxed);
    });
    let late_usage = usage(pid);
    let requests = requests.load(Ordering::Relaxed);
    eprintln!(
        "{requests} requests, {} admin calls, {} swaps, {} slow connections; RSS {} → {} KiB, fds {} → {}",
        admin_calls.load(Ordering::Relaxed),
        swaps.load(Ordering::Relaxed),
        slow_opened.load(Ordering::Relaxed),
        early_usage.0,
        late_usage.0,
        early_usage.1,
        late_usage.1
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "first failure: {:?}",
        first_failure.lock().unwrap()
    );
    assert!(requests > 1000, "only {requests} requests");
    assert!(
        swaps.load(Ordering::Relaxed) >= seconds * 3 / 2,
        "too few swaps"
    );
    // Bounded: memory and descriptors do not grow with the swaps and connections.
    assert!(
        late_usage.0 < early_usage.0 * 2 + 64 * 1024,
        "RSS grew from {} to {} KiB",
        early_usage.0,
        late_usage.0
    );
    assert!(
        late_usage.1 < early_usage.1 + 200,
        "descriptors grew from {} to {}",
        early_usage.1,
        late_usage.1
    );
    // Every swap was served: the last build answers.
    let mut client = Client::connect(&daemon);
    assert_eq!(
        client.get("/hello/Ada", "").unwrap(),
        (200, b"Hello, Ada!".to_vec())
    );
}
