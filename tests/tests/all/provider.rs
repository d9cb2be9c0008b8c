//! The provider component: real provider processes (the Rust example and the Python one) on
//! unix sockets, reached through the `provider` plugin with apply, decide and pipe.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::common::*;
use epi::{Applied, Decision, Opts, Registry};
use epi_provider::wire::{read_frame, write_frame, Request, Response};
use serde_json::{json, Value};

/// A socket directory (0700) removed when dropped.
fn socket_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("epi-test-sockets-")
        .tempdir()
        .expect("socket directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// A registry with the provider plugin loaded with `config` (plus the socket directory).
fn provider_registry(sockets: &Path, mut config: Value) -> Registry {
    config["socket_dir"] = json!(sockets);
    let registry = registry(&[]);
    registry
        .load_with_config(plugin_library("epi-plugin-provider"), &config)
        .expect("load the provider plugin");
    registry
}

/// A provider process, killed when dropped.
struct Provider {
    child: Child,
    /// Its standard output, kept open so that it never writes into a closed pipe.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Provider {
    /// Starts the example provider `name` with `args`, once its sockets exist.
    fn rust(sockets: &Path, name: &str, priority: i32, args: &[&str]) -> Provider {
        Provider::start(Provider::rust_command(sockets, name, priority, args), name)
    }

    /// As [`Provider::rust`], logging at debug level: each line of its log goes to the
    /// returned channel (and on to the test's standard error).
    fn rust_logged(
        sockets: &Path,
        name: &str,
        priority: i32,
        args: &[&str],
    ) -> (Provider, mpsc::Receiver<String>) {
        let mut command = Provider::rust_command(sockets, name, priority, args);
        command.env("RUST_LOG", "debug").stderr(Stdio::piped());
        let mut provider = Provider::start(command, name);
        let log = BufReader::new(provider.child.stderr.take().unwrap());
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in log.lines().map_while(Result::ok) {
                eprintln!("{line}");
                let _ = sender.send(line);
            }
        });
        (provider, lines)
    }

    fn rust_command(sockets: &Path, name: &str, priority: i32, args: &[&str]) -> Command {
        let binary = epi_testkit::build_binary("epi-provider-example", "epi-example-provider");
        let mut command = Command::new(binary);
        command
            .args(["--name", name, "--priority", &priority.to_string()])
            .arg("--socket-dir")
            .arg(sockets)
            .args(args);
        command
    }

    /// Starts the Python provider `name` (standard library only).
    fn python(sockets: &Path, name: &str, priority: i32) -> Provider {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/provider.py");
        assert!(
            Path::new("/usr/bin/python3").exists() || which("python3"),
            "python3 is needed for the Python provider: apt-get install python3-minimal (cargo xtask test does)"
        );
        let mut command = Command::new("python3");
        command
            .arg(script)
            .arg(sockets)
            .args([name, &priority.to_string()]);
        Provider::start(command, name)
    }

    fn start(mut command: Command, name: &str) -> Provider {
        // Its standard error is the test's unless the command says otherwise.
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a provider process");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout
            .read_line(&mut line)
            .expect("read the provider's first line");
        assert!(line.starts_with("serving"), "provider {name} said {line:?}");
        Provider {
            child,
            _stdout: stdout,
        }
    }

    /// kill -9.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for it to exit (it removes its sockets).
    fn terminate(mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.kill();
    }
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The values of a JSON apply.
fn values(applied: Applied) -> Vec<Value> {
    match applied.to_json(false) {
        Value::Array(values) => values,
        other => panic!("not a list: {other}"),
    }
}

/// Polls `check` for up to 5 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn whoami(registry: &Registry, service: &str, function: &str) -> Vec<Value> {
    values(
        registry
            .apply_json(service, function, &Value::Null, Opts::new())
            .expect("apply"),
    )
}

/// Waits until the providers answering `provider.whoami` are `names`, in order.
fn wait_for(registry: &Registry, names: &[&str]) {
    let expected: Vec<Value> = names.iter().map(|n| json!(n)).collect();
    eventually(&format!("the providers are {names:?}"), || {
        whoami(registry, "provider", "whoami") == expected
    });
}

/// The discovery process's report.
fn report(registry: &Registry) -> Value {
    let report = registry.process_report();
    report
        .workers
        .iter()
        .find(|(name, _)| name.ends_with("discovery"))
        .map(|(_, worker)| worker.report.clone())
        .unwrap_or(Value::Null)
}

#[test]
fn provider_processes_rank_by_number_among_in_process_providers() {
    let sockets = socket_dir();
    let registry = provider_registry(
        sockets.path(),
        json!({"tasks": {"whoami": {"service": "math", "function": "label"}}}),
    );
    load_testplug(
        &registry,
        "alpha",
        json!([{"label": "in-process-75", "priority": 75}, {"label": "in-process-10", "priority": 10}]),
    );
    let _low = Provider::rust(sockets.path(), "rust-50", 50, &["--task", "whoami"]);
    let _high = Provider::python(sockets.path(), "python-100", 100);
    let _tie = Provider::rust(sockets.path(), "a-rust-50", 50, &["--task", "whoami"]);
    let expected = json!([
        "python-100",
        "in-process-75",
        "a-rust-50",
        "rust-50",
        "in-process-10"
    ]);
    eventually("both kinds of providers answer in priority order", || {
        Value::Array(whoami(&registry, "math", "label")) == expected
    });
    // The Python provider echoes through the same protocol.
    let echoed = registry
        .apply_json("provider", "echo", &json!({"x": [1, "two"]}), Opts::new())
        .unwrap();
    assert_eq!(values(echoed), vec![json!({"x": [1, "two"]})]);
}

#[test]
fn decide_stops_at_the_first_deciding_process() {
    let sockets = socket_dir();
    let registry = provider_registry(sockets.path(), json!({}));
    let _fr = Provider::rust(sockets.path(), "fr", 100, &["--lang", "fr"]);
    let _en = Provider::rust(sockets.path(), "en", 60, &["--lang", "en"]);
    let _en_too = Provider::rust(sockets.path(), "en-too", 50, &["--lang", "en"]);
    wait_for(&registry, &["fr", "en", "en-too"]);
    let decided = registry
        .decide_json(
            "provider",
            "greet",
            &json!({"lang": "en", "name": "Ada"}),
            Opts::new(),
        )
        .unwrap();
    assert_eq!(decided, Decision::Decided(json!("en greets Ada in en")));
    let none = registry
        .decide_json("provider", "greet", &json!({"lang": "de"}), Opts::new())
        .unwrap();
    assert_eq!(none, Decision::NoDecision);
    // en-too was asked only once (for "de"), never for "en".
    eventually("the report counts the calls", || {
        let report = report(&registry);
        let calls = |provider: &str| {
            report["providers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["provider"] == provider && p["task"] == "greet")
                .map(|p| p["calls"].clone())
        };
        calls("fr") == Some(json!(2))
            && calls("en") == Some(json!(2))
            && calls("en-too") == Some(json!(1))
    });
}

#[test]
fn ignore_errors_keeps_the_replies_of_the_processes_that_answered() {
    let sockets = socket_dir();
    let registry = provider_registry(sockets.path(), json!({}));
    let _good = Provider::rust(sockets.path(), "good", 60, &[]);
    let _bad = Provider::rust(sockets.path(), "bad", 50, &["--fail-with", "disk on fire"]);
    eventually("both answer", || {
        registry
            .apply_json("provider", "echo", &json!(1), Opts::new().ignore_errors())
            .map(|applied| applied.to_json(true).as_array().map(Vec::len) == Some(2))
            .unwrap_or(false)
    });
    let detailed = registry
        .apply_json("provider", "echo", &json!(7), Opts::new().ignore_errors())
        .unwrap()
        .to_json(true);
    assert_eq!(detailed[0]["ok"], json!(7));
    let error = detailed[1]["error"].as_str().unwrap();
    assert!(
        error.contains("disk on fire") && error.contains("bad"),
        "{error}"
    );
    let err = registry
        .apply_json("provider", "echo", &json!(7), Opts::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("disk on fire"), "{err}");
    // A pipe runs through the good provider and passes the value on past the failing one.
    let piped = registry
        .apply_json(
            "provider",
            "echo",
            &json!("through"),
            Opts::new().pipe().ignore_errors(),
        )
        .unwrap();
    assert_eq!(piped.to_json(false), json!("through"));
}

#[test]
fn a_provider_killed_mid_call_fails_that_call_and_the_next_goes_to_the_others() {
    let sockets = socket_dir();
    let registry = provider_registry(sockets.path(), json!({}));
    let (mut doomed, log) = Provider::rust_logged(sockets.path(), "doomed", 100, &[]);
    let _survivor = Provider::rust(sockets.path(), "survivor", 50, &[]);
    wait_for(&registry, &["doomed", "survivor"]);
    // Killed once it logs that it acknowledged the call and sleeps: the call is in flight.
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let sleeping = loop {
            match log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("sleeping 10000 ms") => break true,
                Ok(_) => {}
                Err(_) => break false,
            }
        };
        doomed.kill();
        (doomed, sleeping)
    });
    let started = Instant::now();
    let err = registry
        .apply_json("provider", "sleep", &json!({"ms": 10_000}), Opts::new())
        .unwrap_err()
        .to_string();
    let (_doomed, sleeping) = killer.join().unwrap();
    assert!(sleeping, "the provider never started the call: {err}");
    // Noticed while waiting for the response, after the acknowledgement.
    assert!(
        err.contains("doomed")
            && err.contains("100-doomed.sock")
            && err.contains("went away during request"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the call waited for its timeout"
    );
    // The next call reaches the survivor only; no error for the dead one.
    let slept = registry
        .apply_json("provider", "sleep", &json!({"ms": 0}), Opts::new())
        .unwrap();
    assert_eq!(values(slept), vec![json!({"slept_ms": 0})]);
    wait_for(&registry, &["survivor"]);
    assert_still_serving(&registry, plugin_dir().path());
}

#[test]
fn a_restarted_provider_reappears_and_a_stopped_one_leaves() {
    let sockets = socket_dir();
    let registry = provider_registry(sockets.path(), json!({}));
    let first = Provider::rust(sockets.path(), "phoenix", 50, &[]);
    wait_for(&registry, &["phoenix"]);
    first.terminate();
    wait_for(&registry, &[]);
    let _again = Provider::rust(sockets.path(), "phoenix", 50, &[]);
    wait_for(&registry, &["phoenix"]);
    // kill -9 leaves the socket file behind: skipped, then withdrawn until replaced.
    let mut other = Provider::rust(sockets.path(), "crashy", 70, &[]);
    wait_for(&registry, &["crashy", "phoenix"]);
    other.kill();
    assert_eq!(
        whoami(&registry, "provider", "whoami"),
        vec![json!("phoenix")]
    );
    let _back = Provider::rust(sockets.path(), "crashy", 70, &[]);
    wait_for(&registry, &["crashy", "phoenix"]);
    drop(other);
}

#[test]
fn a_stale_socket_file_is_skipped_and_withdrawn() {
    let sockets = socket_dir();
    let task = sockets.path().join("whoami");
    std::fs::create_dir(&task).unwrap();
    drop(UnixListener::bind(task.join("90-ghost.sock")).unwrap());
    let registry = provider_registry(sockets.path(), json!({}));
    let _live = Provider::rust(sockets.path(), "live", 50, &["--task", "whoami"]);
    wait_for(&registry, &["live"]);
    eventually("the report lists the stale socket", || {
        report(&registry)["stale"]
            .to_string()
            .contains("90-ghost.sock")
    });
}

#[test]
fn untrusted_directories_and_bad_names_are_refused_and_reported() {
    let sockets = socket_dir();
    let open = sockets.path().join("whoami");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let registry = provider_registry(sockets.path(), json!({}));
    let _provider = Provider::rust(
        sockets.path(),
        "anyone",
        50,
        &["--task", "whoami", "--task", "echo"],
    );
    let named = sockets.path().join("echo");
    eventually("the echo socket exists", || {
        named.join("50-anyone.sock").exists()
    });
    drop(UnixListener::bind(named.join("high-x.sock")).unwrap());
    eventually("both are refused", || {
        let refused = report(&registry)["refused"].to_string();
        refused.contains("writable by every user") && refused.contains("high-x.sock")
    });
    assert_eq!(whoami(&registry, "provider", "whoami"), Vec::<Value>::new());
    let echoed = registry
        .apply_json("provider", "echo", &json!(1), Opts::new())
        .unwrap();
    assert_eq!(values(echoed), vec![json!(1)]);
    // A socket directory writable by everyone refuses the plugin itself.
    let shared = socket_dir();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = registry
        .load_with_config(
            plugin_library("epi-plugin-provider"),
            &json!({"socket_dir": shared.path()}),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("writable by every user"), "{err}");
}

#[test]
fn a_response_that_takes_too_long_times_out_naming_task_provider_and_timeout() {
    let sockets = socket_dir();
    let registry = provider_registry(sockets.path(), json!({"tasks": {"sleep": {"timeout": 1}}}));
    let _slow = Provider::rust(sockets.path(), "slow", 50, &[]);
    wait_for(&registry, &["slow"]);
    let err = registry
        .apply_json("provider", "sleep", &json!({"ms": 3000}), Opts::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sleep") && err.contains("slow") && err.contains("1s"),
        "{err}"
    );
    let fast = registry
        .apply_json("provider", "sleep", &json!({"ms": 1}), Opts::new())
        .unwrap();
    assert_eq!(values(fast), vec![json!({"slept_ms": 1})]);
    eventually("nothing is outstanding", || {
        report(&registry)["outstanding"] == json!(0)
    });
}

/// A fake provider for task `odd` that answers every request with `misbehave`.
fn fake_provider(
    sockets: &Path,
    name: &str,
    misbehave: impl Fn(&mut UnixStream, &Request) + Send + 'static,
) -> PathBuf {
    let dir = sockets.join("odd");
    let _ = std::fs::create_dir(&dir);
    let path = dir.join(format!("50-{name}.sock"));
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let Ok(mut connection) = connection else {
                return;
            };
            if let Ok(Some(body)) = read_frame(&mut connection, 1 << 20) {
                let request = Request::parse(&body).unwrap();
                misbehave(&mut connection, &request);
            }
        }
    });
    path
}

#[test]
fn bad_frames_fail_the_call_naming_the_socket_and_everything_keeps_serving() {
    let sockets = socket_dir();
    let registry = provider_registry(
        sockets.path(),
        json!({"max_frame": 1024, "request_timeout": 2}),
    );
    let _good = Provider::rust(sockets.path(), "good", 50, &["--task", "echo"]);
    wait_for(&registry, &[]);
    type Misbehaviour = Box<dyn Fn(&mut UnixStream, &Request) + Send>;
    let cases: Vec<(&str, Misbehaviour, &str)> = vec![
        (
            "huge",
            Box::new(|c, _| {
                let _ = write_frame(c, &vec![b' '; 4096]);
            }),
            "over the limit",
        ),
        (
            "prefix-only",
            Box::new(|c, _| {
                let _ = c.write_all(&10u32.to_be_bytes());
            }),
            "middle of a frame",
        ),
        (
            "not-json",
            Box::new(|c, _| {
                let _ = write_frame(c, b"{not json");
            }),
            "not JSON",
        ),
        (
            "half-frame",
            Box::new(|c, _| {
                let _ = c.write_all(&[0, 0, 0, 20, b'{', b'"']);
            }),
            "middle of a frame",
        ),
        (
            "both",
            Box::new(|c, request| {
                let _ = write_frame(c, &serde_json::to_vec(&Response::ack(&request.id)).unwrap());
                let hook = epi_provider::wire::unix_url_path(&request.response_hook).unwrap();
                let mut hook = UnixStream::connect(hook).unwrap();
                let body = json!({"id": request.id, "result": 1, "error": "and an error"});
                let _ = write_frame(&mut hook, body.to_string().as_bytes());
            }),
            "protocol error",
        ),
        (
            "refuses",
            Box::new(|c, request| {
                let _ = write_frame(
                    c,
                    &serde_json::to_vec(&Response::error(&request.id, "not today")).unwrap(),
                );
            }),
            "not today",
        ),
    ];
    for (name, misbehave, expected) in cases {
        let socket = fake_provider(sockets.path(), name, misbehave);
        let err = loop {
            let applied = registry.apply_json("provider", "odd", &json!(1), Opts::new());
            match applied {
                Err(err) => break err.to_string(),
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        assert!(
            err.contains(expected) && err.contains(&*socket.to_string_lossy()),
            "{name}: {err}"
        );
        std::fs::remove_file(&socket).unwrap();
        eventually("the fake provider is withdrawn", || {
            registry
                .apply_json("provider", "odd", &json!(1), Opts::new())
                .is_ok_and(|applied| values(applied).is_empty())
        });
        let echoed = registry
            .apply_json("provider", "echo", &json!(name), Opts::new())
            .unwrap();
        assert_eq!(values(echoed), vec![json!(name)]);
    }
}

#[test]
fn a_request_missing_a_field_gets_an_ack_with_the_error_and_nothing_runs() {
    let sockets = socket_dir();
    let provider = Provider::rust(sockets.path(), "strict", 50, &["--task", "fail"]);
    let socket = sockets.path().join("fail/50-strict.sock");
    let mut connection = UnixStream::connect(&socket).unwrap();
    for (request, field) in [
        (
            json!({"id": "1", "response_hook": "unix:///nowhere.sock"}),
            "`task`",
        ),
        (json!({"id": "2", "task": "fail"}), "`response_hook`"),
        (
            json!({"task": "fail", "response_hook": "unix:///nowhere.sock"}),
            "`id`",
        ),
    ] {
        write_frame(&mut connection, request.to_string().as_bytes()).unwrap();
        let ack = read_frame(&mut connection, 1 << 20).unwrap().unwrap();
        let ack: Value = serde_json::from_slice(&ack).unwrap();
        assert!(ack["error"].as_str().unwrap().contains(field), "{ack}");
    }
    drop(provider);
}

#[test]
fn a_stream_result_is_read_once_as_bytes() {
    let sockets = socket_dir();
    let registry = provider_registry(sockets.path(), json!({}));
    let _streamer = Provider::rust(sockets.path(), "streamer", 50, &[]);
    wait_for(&registry, &["streamer"]);
    let applied = registry
        .apply_json("provider", "lines", &json!({"count": 3}), Opts::new())
        .unwrap();
    let reply = &values(applied)[0];
    assert_eq!(reply["result"], json!(3));
    let url = reply["stream_url"].as_str().unwrap();
    let mut text = String::new();
    epi_provider::stream::open(url)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "line 1\nline 2\nline 3\n");
    assert!(
        epi_provider::stream::open(url).is_err(),
        "a stream is one-shot"
    );
}

#[test]
fn upgrading_the_provider_plugin_with_calls_in_flight_loses_no_call() {
    let sockets = socket_dir();
    let plugins = plugin_dir();
    let path = install(plugins.path(), "epi-plugin-provider", "provider.so");
    let registry = registry(&[]);
    registry
        .load_with_config(&path, &json!({"socket_dir": sockets.path()}))
        .unwrap();
    let _steady = Provider::rust(sockets.path(), "steady", 50, &[]);
    wait_for(&registry, &["steady"]);
    // A provider of task `odd` that acknowledges each request and hands it to the test, which
    // answers it when it likes: a call surely in flight during an upgrade.
    let (sender, held) = mpsc::channel::<Request>();
    fake_provider(sockets.path(), "held", move |connection, request| {
        let ack = serde_json::to_vec(&Response::ack(&request.id)).unwrap();
        let _ = write_frame(connection, &ack);
        let _ = sender.send(request.clone());
    });
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..2)
        .map(|caller| {
            let registry = registry.clone();
            let (stop, calls) = (stop.clone(), calls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let args = json!({"ms": 5, "caller": caller});
                    let applied = registry
                        .apply_json("provider", "sleep", &args, Opts::new())
                        .expect("no call fails during an upgrade");
                    assert_eq!(values(applied), vec![json!({"slept_ms": 5})]);
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // A few more calls answered: the callers are busy on the version serving now.
    let a_few_more_calls = || {
        let before = calls.load(Ordering::Relaxed);
        eventually("the callers make calls", || {
            calls.load(Ordering::Relaxed) >= before + 4
        });
    };
    let original = std::fs::read(&path).unwrap();
    for round in 1..=3u8 {
        eventually("the version serving now has the held provider", || {
            registry
                .counters()
                .iter()
                .any(|c| c.service == "provider" && c.function == "odd")
        });
        let held_call = {
            let registry = registry.clone();
            std::thread::spawn(move || {
                registry.apply_json("provider", "odd", &json!(round), Opts::new())
            })
        };
        let request = held
            .recv_timeout(Duration::from_secs(10))
            .expect("the held provider gets the call");
        a_few_more_calls();
        // Another build as far as the loader can tell: trailing bytes change the content.
        let mut bytes = original.clone();
        bytes.extend_from_slice(&[round; 16]);
        let staged = write_file(plugins.path(), "provider.so.new", &bytes);
        std::fs::rename(&staged, &path).unwrap();
        assert!(
            matches!(
                registry.upgrade(&path).unwrap(),
                epi::Upgrade::Replaced { .. }
            ),
            "round {round}"
        );
        // Answered only now (so in flight across the upgrade), at the retired version's hook.
        let hook = epi_provider::wire::unix_url_path(&request.response_hook).unwrap();
        let answer = json!({"id": request.id, "result": round});
        write_frame(
            &mut UnixStream::connect(hook).unwrap(),
            answer.to_string().as_bytes(),
        )
        .unwrap();
        let applied = held_call.join().unwrap().expect("the held call succeeds");
        assert_eq!(values(applied), vec![json!(round)], "round {round}");
    }
    a_few_more_calls();
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.join().unwrap();
    }
    assert!(calls.load(Ordering::Relaxed) > 10);
}

#[test]
fn a_socket_group_shares_the_directory_with_providers_of_that_group() {
    use std::os::unix::fs::MetadataExt;
    let parent = socket_dir();
    let sockets = parent.path().join("shared");
    // SAFETY: getegid has no preconditions and cannot fail.
    let gid = unsafe { libc::getegid() };
    let registry = provider_registry(&sockets, json!({"socket_group": gid}));
    let meta = std::fs::metadata(&sockets).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o2770, gid));
    // A group-writable task directory of that group is accepted.
    let task = sockets.join("whoami");
    std::fs::create_dir(&task).unwrap();
    std::fs::set_permissions(&task, std::fs::Permissions::from_mode(0o770)).unwrap();
    let _member = Provider::rust(&sockets, "member", 50, &["--task", "whoami"]);
    wait_for(&registry, &["member"]);
    // Without the group setting, the same directory is refused.
    let err = registry
        .load_with_config(
            plugin_library("epi-plugin-provider"),
            &json!({"socket_dir": sockets}),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("writable by its group"), "{err}");
}
