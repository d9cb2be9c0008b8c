//! Isolated plugins: the test plugin run in `epi plugin-host` children, through the library
//! (typed and JSON calls, a panic, an abort, the engine's restart, unload) and through the
//! daemon (a crash fails the call and the daemon keeps serving).

use std::time::{Duration, Instant};

use epi::engine::EngineConfig;
use epi::isolation::PluginHostCommand;
use epi::{CallPath, Opts, Registry, RegistryConfig};
use serde_json::{json, Value};

mod common;

use common::{call_with, start, EPI};

/// The test plugin's configuration: `math` answers x + 1, `bad` panics, `crash` aborts.
fn plugin_config() -> Value {
    json!({
        "app": "testplug",
        "services": ["math", "bad", "crash"],
        "providers": [
            {"label": "inc", "service": "math", "add": 1},
            {"label": "panics", "service": "bad", "behaviour": "panic"},
            {"label": "aborts", "service": "crash", "behaviour": "abort"}
        ]
    })
}

fn isolating_registry() -> Registry {
    Registry::new(RegistryConfig {
        isolate: vec!["testplug".into()],
        plugin_host: Some(PluginHostCommand::epi(EPI)),
        engine: EngineConfig {
            initial_delay: Duration::from_millis(50),
            spread: 0.0,
            ..EngineConfig::default()
        },
        ..RegistryConfig::default()
    })
    .unwrap()
}

/// The pid the supervising process reports for the running child.
fn child_pid(registry: &Registry) -> Option<u32> {
    let report = serde_json::to_value(registry.process_report()).unwrap();
    report["workers"]["testplug/plugin-host"]["report"]["pid"]
        .as_u64()
        .map(|pid| pid as u32)
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_isolated_plugin_serves_crashes_alone_and_comes_back() {
    let dir = epi_testkit::plugin_dir();
    let file = epi_testkit::install(
        dir.path(),
        "epi-plugin-testplug",
        "libepi_plugin_testplug.so",
    );
    let registry = isolating_registry();
    let info = registry.load_with_config(&file, &plugin_config()).unwrap();
    assert_eq!(info.app, "testplug");
    assert_eq!(info.call_path, CallPath::Isolated);

    // Typed calls take the stable path over the socket; calls by name JSON.
    let math = registry.function::<i64, i64>("math", "value");
    assert_eq!(math.apply(&41).unwrap(), vec![42]);
    let by_name = registry
        .apply_json("math", "value", &json!(1), Opts::default())
        .unwrap();
    assert_eq!(by_name.to_json(false), json!([2]));
    // A type the plugin does not take is refused by the host's check, as for any plugin.
    let wrong = registry.function::<String, i64>("math", "value");
    assert!(wrong.apply(&"x".to_string()).is_err());

    // A panic in the child is the provider's panic, as in-process.
    let panicked = registry
        .function::<i64, i64>("bad", "value")
        .apply(&1)
        .unwrap_err()
        .to_string();
    assert!(panicked.contains("panic"), "{panicked}");

    // An abort kills the child only: the call fails naming the plugin and how it ended.
    let first = wait_for("the supervisor's report", || child_pid(&registry));
    let crashed = registry
        .function::<i64, i64>("crash", "value")
        .apply(&1)
        .unwrap_err()
        .to_string();
    assert!(crashed.contains("isolated plugin `testplug`"), "{crashed}");

    // The engine restarts it after its back-off; calls work again in a new process.
    let answer = wait_for("the restarted child", || math.apply(&41).ok());
    assert_eq!(answer, vec![42]);
    let second = wait_for("the new child's pid", || {
        child_pid(&registry).filter(|pid| *pid != first)
    });
    let report = serde_json::to_value(registry.process_report()).unwrap();
    let worker = &report["workers"]["testplug/plugin-host"];
    assert!(worker["start_count"].as_u64().unwrap() >= 2, "{worker}");
    assert!(
        worker["last_error"].to_string().contains("SIGABRT"),
        "{worker}"
    );

    // Unloading the plugin ends its child.
    assert!(registry.unload("testplug"));
    wait_for("the child to end", || {
        (!std::path::Path::new(&format!("/proc/{second}")).exists()).then_some(())
    });
}

#[test]
fn a_daemon_keeps_serving_when_an_isolated_plugin_crashes() {
    let dir = epi_testkit::plugin_dir();
    epi_testkit::install(dir.path(), "epi-plugin-hello", "libepi_plugin_hello.so");
    epi_testkit::install(
        dir.path(),
        "epi-plugin-testplug",
        "libepi_plugin_testplug.so",
    );
    let config = dir.path().join("epi.toml");
    // `plugin_config()` in TOML.
    let plugin = "app = \"testplug\"\nservices = [\"math\", \"bad\", \"crash\"]\nproviders = [\
                  { label = \"inc\", service = \"math\", add = 1 }, \
                  { label = \"panics\", service = \"bad\", behaviour = \"panic\" }, \
                  { label = \"aborts\", service = \"crash\", behaviour = \"abort\" }]";
    std::fs::write(
        &config,
        format!(
            "[plugins]\ndirs = [\".\"]\nisolate = [\"testplug\"]\n\
             [plugins.config.\"libepi_plugin_testplug.so\"]\n{plugin}\n\
             [http]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let daemon = start(&config);
    let apply = |service: &str| {
        call_with(
            "POST",
            &daemon.url("/_epi/apply"),
            Some(json!({"service": service, "function": "value", "args": 41})),
            "content-type",
        )
    };
    let (status, _, plugins) = call_with("GET", &daemon.url("/_epi/plugins"), None, "x");
    assert_eq!(status, 200);
    let testplug = plugins["plugins"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["app"] == "testplug"))
        .cloned()
        .unwrap_or_else(|| panic!("testplug not loaded: {plugins}"));
    assert_eq!(testplug["call_path"], "isolated", "{testplug}");
    assert_eq!(apply("math").2["result"], json!([42]));

    let (status, _, body) = apply("crash");
    assert_ne!(status, 200, "{body}");
    let text = body.to_string();
    assert!(text.contains("isolated plugin `testplug`"), "{text}");

    // The daemon never stopped answering; the plugin comes back.
    let (status, _, hello) = call_with("GET", &daemon.url("/hello/Ada"), None, "x");
    assert_eq!(status, 200, "{hello}");
    let started = Instant::now();
    loop {
        let (status, _, body) = apply("math");
        if status == 200 {
            assert_eq!(body["result"], json!([42]));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stream_whose_isolated_plugin_dies_is_cut_not_completed() {
    use std::io::{Read, Write};
    let dir = epi_testkit::plugin_dir();
    epi_testkit::install(dir.path(), "epi-plugin-hello", "libepi_plugin_hello.so");
    let config = dir.path().join("epi.toml");
    std::fs::write(
        &config,
        "[plugins]\ndirs = [\".\"]\nisolate = [\"hello\"]\n[http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let daemon = start(&config);
    let address = daemon.base.strip_prefix("http://").unwrap().to_owned();
    let mut connection = std::net::TcpStream::connect(&address).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        connection,
        "GET /hello-stream/1000000 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = vec![0; 4096];
    let read = connection.read(&mut head).unwrap();
    assert!(head[..read].starts_with(b"HTTP/1.1 200"));
    // The child serving the stream dies.
    let (_, _, report) = call_with("GET", &daemon.url("/_epi/processes"), None, "x");
    let pid = report["workers"]["hello/plugin-host"]["report"]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no plugin host pid: {report}"));
    // SAFETY: kill(2) on the plugin host child of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let mut rest = Vec::new();
    let _ = connection.read_to_end(&mut rest);
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "the body ended as if complete after {} bytes",
        read + rest.len()
    );
    assert!(read + rest.len() < 20_000_000, "the stream was not cut");
}

#[test]
fn a_hung_isolated_provider_fails_its_call_after_the_timeout_and_the_rest_serve() {
    let dir = epi_testkit::plugin_dir();
    let file = epi_testkit::install(
        dir.path(),
        "epi-plugin-testplug",
        "libepi_plugin_testplug.so",
    );
    let registry = Registry::new(RegistryConfig {
        isolate: vec!["testplug".into()],
        plugin_host: Some(PluginHostCommand::epi(EPI)),
        isolated_call_timeout: Some(Duration::from_millis(300)),
        ..RegistryConfig::default()
    })
    .unwrap();
    registry
        .load_with_config(
            &file,
            &json!({"app": "testplug", "services": ["math", "slow"], "providers": [
                {"label": "inc", "service": "math", "add": 1},
                {"label": "stuck", "service": "slow", "behaviour": "hang"}
            ]}),
        )
        .unwrap();
    let started = Instant::now();
    let err = registry
        .function::<i64, i64>("slow", "value")
        .apply(&1)
        .unwrap_err()
        .to_string();
    let waited = started.elapsed();
    assert!(err.contains("did not answer within"), "{err}");
    assert!(err.contains("isolated plugin `testplug`"), "{err}");
    assert!(
        waited < Duration::from_secs(2),
        "the call waited {waited:?}"
    );
    // The child still serves other calls meanwhile (another connection).
    let math = registry.function::<i64, i64>("math", "value");
    assert_eq!(math.apply(&41).unwrap(), vec![42]);
}
