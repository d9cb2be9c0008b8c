//! The real `epi` binary: HTTP routed through decide, admin routes, bad input, signals, the
//! CLI in-process and against the daemon.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{start, Daemon, EPI};

/// A plugin directory with the example plugins and the test plugin, and a config file.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn setup(extra: &str) -> Setup {
    let dir = epi_testkit::plugin_dir();
    for (krate, file) in [
        ("epi-plugin-hello", "libepi_plugin_hello.so"),
        ("epi-plugin-greeter-fr", "libepi_plugin_greeter_fr.so"),
        ("epi-plugin-testplug", "libepi_plugin_testplug.so"),
    ] {
        epi_testkit::install(dir.path(), krate, file);
    }
    let config = dir.path().join("epi.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins]\ndirs = [\".\"]\norder = [\"hello\", \"greeter-fr\"]\n{extra}\n\
             [plugins.config.\"libepi_plugin_testplug.so\"]\napp = \"testplug\"\n\
             providers = [{{ label = \"slow\" }}]\n\
             processes = [{{ name = \"ticker\" }}]\n\
             [http]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 1024\n"
        ),
    )
    .unwrap();
    Setup { dir, config }
}

fn signal(daemon: &Daemon, signal: i32) {
    // SAFETY: kill(2) on a child we own.
    assert_eq!(unsafe { libc::kill(daemon.child.id() as i32, signal) }, 0);
}

fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(response) => (response.status(), response.into_string().unwrap()),
        Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
        Err(err) => panic!("{url}: {err}"),
    }
}

fn post(url: &str, body: &str) -> (u16, String) {
    match ureq::post(url)
        .set("content-type", "application/json")
        .send_string(body)
    {
        Ok(response) => (response.status(), response.into_string().unwrap()),
        Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
        Err(err) => panic!("{url}: {err}"),
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

#[test]
fn requests_are_routed_through_decide() {
    let setup = setup("");
    let daemon = start(&setup.config);
    assert_eq!(
        get(&format!("{}/hello/Ada", daemon.base)),
        (200, "Hello, Ada!".into())
    );
    assert_eq!(
        get(&format!("{}/bonjour/Ada", daemon.base)),
        (200, "Bonjour, Ada !".into())
    );
    let (status, body) = get(&format!("{}/hello-stream/3", daemon.base));
    assert_eq!(status, 200);
    assert_eq!(body, "line 1 of 3\nline 2 of 3\nline 3 of 3\n");
    let (status, body) = get(&format!("{}/hello-stream/many", daemon.base));
    assert_eq!(
        (status, json(&body)["error"].as_str().is_some()),
        (400, true)
    );
    let (status, body) = get(&format!("{}/nobody/here", daemon.base));
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"], "no plugin handles GET /nobody/here");
}

#[test]
fn bad_requests_get_json_errors_and_the_daemon_keeps_serving() {
    let setup = setup("");
    let daemon = start(&setup.config);
    let (status, body) = post(&format!("{}/_epi/apply", daemon.base), "{not json");
    assert_eq!(status, 400);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("bad request body"));
    let (status, body) = post(
        &format!("{}/_epi/apply", daemon.base),
        r#"{"service": "nope", "function": "f"}"#,
    );
    assert_eq!(
        (
            status,
            json(&body)["error"].as_str().unwrap().contains("nope")
        ),
        (404, true)
    );
    let (status, body) = post(
        &format!("{}/_epi/apply", daemon.base),
        r#"{"service": "greeting", "function": "greet", "args": 42}"#,
    );
    assert_eq!(status, 400, "the caller's arguments do not decode: {body}");
    let big = "x".repeat(4096);
    let (status, body) = post(&format!("{}/hello/Ada", daemon.base), &big);
    assert_eq!(status, 413);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("1024 bytes"));
    assert_eq!(get(&format!("{}/hello/again", daemon.base)).0, 200);
}

#[test]
fn admin_routes_show_plugins_services_data_processes_and_counters() {
    let setup = setup("");
    let daemon = start(&setup.config);
    let plugins = json(&get(&format!("{}/_epi/plugins", daemon.base)).1);
    let apps: Vec<&str> = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["app"].as_str().unwrap())
        .collect();
    assert_eq!(apps, vec!["hello", "greeter-fr", "testplug"]);
    let services = json(&get(&format!("{}/_epi/services", daemon.base)).1);
    assert!(services
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "greeting"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = json(&get(&format!("{}/_epi/processes", daemon.base)).1);
        if report["workers"]["testplug/ticker"]["state"] == "started" {
            break;
        }
        assert!(Instant::now() < deadline, "{report}");
        std::thread::sleep(Duration::from_millis(20));
    }
    get(&format!("{}/hello/x", daemon.base));
    get(&format!("{}/hello/y", daemon.base));
    let counters = json(&get(&format!("{}/_epi/counters", daemon.base)).1);
    let hello_handle = counters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["plugin"] == "hello" && c["function"] == "handle")
        .unwrap();
    assert!(hello_handle["calls"].as_u64().unwrap() >= 2, "{counters}");
    let (status, body) = post(
        &format!("{}/_epi/decide", daemon.base),
        r#"{"service": "greeting", "function": "language", "args": "en-GB"}"#,
    );
    assert_eq!(
        (status, json(&body)["result"].clone()),
        (200, json!({"decided": "English"}))
    );
    let (status, body) = post(&format!("{}/_epi/reload", daemon.base), "");
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["files"].as_array().unwrap().len() >= 3);
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let setup = setup("");
    let mut daemon = start(&setup.config);
    let url = format!("{}/_epi/apply", daemon.base);
    let slow = std::thread::spawn(move || {
        let answer = post(
            &url,
            r#"{"service": "math", "function": "sleep", "args": 700}"#,
        );
        (answer, Instant::now())
    });
    // Wait until the daemon counted the call: it is in flight, not merely about to start.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counters = json(&get(&format!("{}/_epi/counters", daemon.base)).1);
        let started = counters
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["function"] == "sleep" && c["calls"].as_u64().unwrap_or(0) > 0);
        if started {
            break;
        }
        assert!(Instant::now() < deadline, "the slow call never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = Instant::now();
    signal(&daemon, libc::SIGTERM);
    let ((status, body), answered) = slow.join().unwrap();
    assert!(answered > sent, "the call was answered before the signal");
    assert_eq!(
        (status, json(&body)["result"].clone()),
        (200, json!(["slow"]))
    );
    let exit = daemon.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
}

#[test]
fn sighup_reloads_plugins() {
    let setup = setup("watch = false");
    let daemon = start(&setup.config);
    let version = |daemon: &Daemon| {
        let plugins = json(&get(&format!("{}/_epi/plugins", daemon.base)).1);
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["app"] == "testplug")
            .unwrap()["version"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(version(&daemon), "0.1.0+00000000");
    let path = setup.dir.path().join("libepi_plugin_testplug.so");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(16)
        .position(|w| w == b"EPIMARK:00000000")
        .unwrap();
    bytes[at + 8..at + 16].copy_from_slice(b"00000007");
    let temp = setup.dir.path().join(".next.tmp");
    std::fs::write(&temp, &bytes).unwrap();
    std::fs::rename(&temp, &path).unwrap();
    // No watching: nothing happens, and so no event can say when it would have. Look a few
    // times over the while a watcher would take.
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        assert_eq!(
            version(&daemon),
            "0.1.0+00000000",
            "no watching: nothing yet"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&daemon, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while version(&daemon) != "0.1.0+00000007" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn epi(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(EPI).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_cli_works_in_process_and_against_the_daemon() {
    let setup = setup("");
    let config = setup.config.to_str().unwrap();
    let (code, out, err) = epi(&["--config", config, "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("APP") && out.contains("hello") && out.contains("greeter-fr"),
        "{out}"
    );
    let (code, out, _) = epi(&[
        "--config", config, "apply", "greeting", "greet", "--args", "\"Ada\"",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "\"Hello, Ada!\"\n\"Bonjour, Ada !\"\n")
    );
    let (code, out, _) = epi(&[
        "--config", config, "--json", "decide", "greeting", "language", "--args", "\"fr\"",
    ]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["result"], json!({"decided": "français"}));
    let (code, _, err) = epi(&["--config", config, "apply", "missing", "f"]);
    assert_eq!(code, 1, "an unknown service is a call failure");
    assert!(err.contains("unknown service `missing`"), "{err}");
    let (code, _, err) = epi(&[
        "--config", config, "apply", "greeting", "greet", "--args", "{oops",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--args is not JSON"), "{err}");

    let daemon = start(&setup.config);
    let remote = ["--config", config, "--daemon", daemon.base.as_str()];
    let (code, out, err) = epi(&[
        &remote[..],
        &["apply", "greeting", "greet", "--args", "\"Bo\""],
    ]
    .concat());
    assert_eq!(
        (code, out.as_str()),
        (0, "\"Hello, Bo!\"\n\"Bonjour, Bo !\"\n"),
        "{err}"
    );
    let (code, out, _) = epi(&[&remote[..], &["report"]].concat());
    assert_eq!(code, 0);
    assert!(out.contains("testplug/ticker"), "{out}");
    let (code, out, _) = epi(&[&remote[..], &["--json", "list"]].concat());
    assert_eq!(code, 0);
    assert_eq!(json(&out)["plugins"].as_array().unwrap().len(), 3);
    let (code, out, err) = epi(&[&remote[..], &["reload", "testplug"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("libepi_plugin_testplug.so\tunchanged"),
        "{out}"
    );
    let (code, _, err) = epi(&[&remote[..], &["reload", "nope"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("no plugin named `nope`"), "{err}");
    let (code, _, err) = epi(&["--daemon", "http://127.0.0.1:1", "list"]);
    assert_eq!(code, 4, "an unreachable daemon: {err}");
}

#[test]
fn inspect_describes_a_plugin_and_refuses_a_bad_file() {
    let setup = setup("");
    let hello = setup.dir.path().join("libepi_plugin_hello.so");
    let (code, out, err) = epi(&["inspect", hello.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("app:        hello") && out.contains("provides:   greeting.greet"),
        "{out}"
    );
    let junk = setup.dir.path().join("junk.so");
    std::fs::write(&junk, b"junk").unwrap();
    let (code, _, err) = epi(&["inspect", junk.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert!(
        err.contains("incompatible") && err.contains("junk.so"),
        "{err}"
    );
}

#[test]
fn a_bad_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("epi.toml");
    std::fs::write(&config, "[http]\nlisten = \"127.0.0.1:0\"\nport = 8\n").unwrap();
    let (code, _, err) = epi(&["--config", config.to_str().unwrap(), "serve"]);
    assert_eq!(code, 3);
    assert!(
        err.contains("epi.toml: line 3") && err.contains("port"),
        "{err}"
    );
}

/// The daemon with the provider plugin, and the example provider process serving its tasks.
struct WithProvider {
    dir: tempfile::TempDir,
    _sockets: tempfile::TempDir,
    config: PathBuf,
    daemon: Daemon,
    provider: std::process::Child,
}

impl Drop for WithProvider {
    fn drop(&mut self) {
        let _ = self.provider.kill();
        let _ = self.provider.wait();
    }
}

fn start_with_provider() -> WithProvider {
    let dir = epi_testkit::plugin_dir();
    epi_testkit::install(
        dir.path(),
        "epi-plugin-provider",
        "libepi_plugin_provider.so",
    );
    let sockets = tempfile::tempdir().unwrap();
    let config = dir.path().join("epi.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins]\ndirs = [\".\"]\n\
             [plugins.config.\"libepi_plugin_provider.so\"]\nsocket_dir = \"{}\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n",
            sockets.path().display()
        ),
    )
    .unwrap();
    let daemon = start(&config);
    let provider_binary = epi_testkit::build_binary("epi-provider-example", "epi-example-provider");
    let mut provider = Command::new(provider_binary)
        .args(["--name", "example", "--socket-dir"])
        .arg(sockets.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut provider_out = BufReader::new(provider.stdout.take().unwrap());
    let mut line = String::new();
    provider_out.read_line(&mut line).unwrap();
    assert!(line.starts_with("serving"), "{line}");
    WithProvider {
        dir,
        _sockets: sockets,
        config,
        daemon,
        provider,
    }
}

/// A stream of the example provider's `lines` task; returns its URL on the daemon.
fn lines_stream(daemon: &Daemon, count: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = post(
            &format!("{}/_epi/apply", daemon.base),
            &format!(
                r#"{{"service": "provider", "function": "lines", "args": {{"count": {count}}}}}"#
            ),
        );
        if status == 200 {
            if let Some(url) = json(&body)["result"][0]["stream_url"].as_str() {
                return format!("{}/provider/streams?url={url}", daemon.base);
            }
        }
        assert!(Instant::now() < deadline, "no stream: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn provider_processes_answer_the_cli_and_stream_over_http() {
    let setup = start_with_provider();
    let (config, daemon) = (&setup.config, &setup.daemon);
    let config = config.to_str().unwrap();
    let remote = ["--config", config, "--daemon", daemon.base.as_str()];
    let args = r#"{"lang": "en", "name": "Ada"}"#;
    let decide = [
        &remote[..],
        &["decide", "provider", "greet", "--args", args],
    ]
    .concat();
    let deadline = Instant::now() + Duration::from_secs(5);
    let out = loop {
        let (code, out, err) = epi(&decide);
        if code == 0 && out.starts_with("decided") {
            break out;
        }
        assert!(Instant::now() < deadline, "no decision: {out} {err}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(out, "decided: \"example greets Ada in en\"\n");
    // A stream: the task's value names it; the daemon serves its bytes once.
    let stream = lines_stream(daemon, 2);
    assert_eq!(get(&stream), (200, "line 1\nline 2\n".into()));
    assert_eq!(get(&stream).0, 404, "a stream is read once");
    let (status, body) = get(&format!(
        "{}/provider/streams?url=unix:///etc/passwd",
        daemon.base
    ));
    assert_eq!(status, 403, "{body}");
}

#[test]
fn a_provider_stream_finishes_on_the_version_that_opened_it_across_an_upgrade() {
    use std::io::{Read, Write};
    let setup = start_with_provider();
    let daemon = &setup.daemon;
    // About 25 MB: more than the sockets can buffer while the client does not read.
    let stream = lines_stream(daemon, 2_500_000);
    let path = stream.strip_prefix(&daemon.base).unwrap();
    let address = daemon.base.strip_prefix("http://").unwrap();
    let mut connection = std::net::TcpStream::connect(address).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        connection,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = vec![0; 4096];
    let read = connection.read(&mut head).unwrap();
    assert!(
        head[..read].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..read])
    );
    // A new build of the provider plugin replaces the one serving the stream.
    let library = setup.dir.path().join("libepi_plugin_provider.so");
    let mut bytes = std::fs::read(&library).unwrap();
    bytes.extend_from_slice(&[7; 16]);
    let staged = setup.dir.path().join(".provider.staged");
    std::fs::write(&staged, &bytes).unwrap();
    std::fs::rename(&staged, &library).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, plugins) = get(&format!("{}/_epi/plugins", daemon.base));
        let hashes: Vec<Value> = json(&plugins)["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["content_hash"].clone())
            .collect();
        if hashes.len() == 1 && json(&plugins)["retired_total"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upgrade did not happen: {plugins}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The old version (held by the response's table) serves the stream to its end.
    let body = read_chunked_body(&head[..read], &mut connection);
    let expected: String = (1..=2_500_000).map(|n| format!("line {n}\n")).collect();
    assert!(
        body == expected.as_bytes(),
        "{} bytes of {}",
        body.len(),
        expected.len()
    );
}

/// The whole body of a chunked response whose first `read` bytes (head included) were read;
/// fails when the body does not end with its last chunk (a cut connection).
fn read_chunked_body(first: &[u8], connection: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut raw = first.to_vec();
    connection.read_to_end(&mut raw).unwrap();
    let start = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the end of the head")
        + 4;
    let mut body = Vec::new();
    let mut at = start;
    loop {
        let line_end = at
            + raw[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .unwrap_or_else(|| panic!("cut after {} body bytes", body.len()));
        let size = usize::from_str_radix(std::str::from_utf8(&raw[at..line_end]).unwrap(), 16)
            .expect("a chunk size");
        at = line_end + 2;
        if size == 0 {
            return body;
        }
        assert!(
            raw.len() >= at + size + 2,
            "cut after {} body bytes",
            body.len()
        );
        body.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

#[test]
fn a_stream_finishes_on_the_version_that_opened_it_across_an_upgrade() {
    use std::io::{Read, Write};
    let setup = setup("");
    let daemon = start(&setup.config);
    // About 20 MB of lines: more than the sockets buffer while the client does not read.
    let lines = 1_000_000u64;
    let address = daemon.base.strip_prefix("http://").unwrap();
    let mut connection = std::net::TcpStream::connect(address).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        connection,
        "GET /hello-stream/{lines} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = vec![0; 4096];
    let read = connection.read(&mut head).unwrap();
    assert!(head[..read].starts_with(b"HTTP/1.1 200"));
    // A new build of hello replaces the version serving the stream.
    let library = setup.dir.path().join("libepi_plugin_hello.so");
    let mut bytes = std::fs::read(&library).unwrap();
    bytes.extend_from_slice(&[7; 16]);
    let staged = setup.dir.path().join(".hello.staged");
    std::fs::write(&staged, &bytes).unwrap();
    std::fs::rename(&staged, &library).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, plugins) = get(&format!("{}/_epi/plugins", daemon.base));
        if json(&plugins)["retired_total"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no upgrade: {plugins}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = read_chunked_body(&head[..read], &mut connection);
    let expected: String = (1..=lines)
        .map(|n| format!("line {n} of {lines}\n"))
        .collect();
    assert!(
        body == expected.as_bytes(),
        "{} bytes of {}",
        body.len(),
        expected.len()
    );
    // New requests reach the new version meanwhile.
    assert_eq!(get(&format!("{}/hello/Ada", daemon.base)).0, 200);
}

/// [`setup`] with more `[http]` settings.
fn setup_http(http: &str) -> Setup {
    let setup = setup("");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(http);
    std::fs::write(&setup.config, text).unwrap();
    setup
}

/// A request with extra headers and an optional body: status and body.
fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String) {
    let mut request = ureq::request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    match response {
        Ok(response) => (response.status(), response.into_string().unwrap()),
        Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
        Err(err) => panic!("{method} {url}: {err}"),
    }
}

/// Sends raw bytes on a new connection; returns everything the daemon answers until it
/// closes the connection (or 5 s pass).
fn raw(daemon: &Daemon, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let address = daemon.base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The daemon may answer and close before taking everything.
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn handlers_see_the_request_as_sent_lent_without_a_copy() {
    let setup = setup("");
    let daemon = start(&setup.config);
    // Repeated headers in order, a value that is not UTF-8 (replaced lossily), a query and a
    // body: what the hello plugin's echo route saw.
    let answer = raw(
        &daemon,
        b"POST /hello-echo?a=1&b HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Twice: one\r\nX-Twice: two\r\n\
          X-Bytes: caf\xe9\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    let echo = json(body);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/hello-echo");
    assert_eq!(echo["query"], "a=1&b");
    assert_eq!(echo["body"], json!(b"hello".to_vec()));
    let headers: Vec<(String, String)> = serde_json::from_value(echo["headers"].clone()).unwrap();
    let named = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(candidate, _)| candidate == name)
            .map(|(_, value)| value.as_str())
            .collect()
    };
    assert_eq!(named("x-twice"), ["one", "two"]);
    assert_eq!(named("x-bytes"), ["caf\u{fffd}"]);
    assert_eq!(named("content-length"), ["5"]);
    // A request without a body is lent an empty one.
    let (status, body) = get(&daemon.url("/hello-echo"));
    assert_eq!(status, 200);
    assert_eq!(json(&body)["body"], json!([]));
    assert_eq!(json(&body)["method"], "GET");
}

const APPLY: &str = r#"{"service": "greeting", "function": "greet", "args": "Ada"}"#;

#[test]
fn admin_routes_need_the_admin_token_when_one_is_set() {
    let setup = setup_http("admin_token = \"s3cret\"\n");
    let daemon = start(&setup.config);
    let plugins = daemon.url("/_epi/plugins");
    assert_eq!(call("GET", &plugins, &[], None).0, 401);
    assert_eq!(
        call("GET", &plugins, &[("authorization", "Bearer wrong")], None).0,
        401
    );
    assert_eq!(
        call("GET", &plugins, &[("authorization", "Bearer s3cret")], None).0,
        200
    );
    let (status, body) = call(
        "POST",
        &daemon.url("/_epi/apply"),
        &[("content-type", "application/json")],
        Some(APPLY),
    );
    assert_eq!(status, 401, "{body}");
    // Plugins' routes are not admin routes.
    assert_eq!(get(&daemon.url("/hello/Ada")).0, 200);
    // The CLI sends the configuration's token.
    let (code, out, err) = epi(&[
        "--config",
        setup.config.to_str().unwrap(),
        "--daemon",
        &daemon.base,
        "list",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hello"), "{out}");
}

#[test]
fn a_public_address_without_admin_protection_is_refused() {
    let setup = setup("");
    let text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"");
    std::fs::write(&setup.config, &text).unwrap();
    let mut child = Command::new(EPI)
        .args(["serve", "--config"])
        .arg(&setup.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("epi serve started on 0.0.0.0 without admin protection");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("0.0.0.0") && err.contains("admin_token"),
        "{err}"
    );
    // Said explicitly, it serves.
    std::fs::write(
        &setup.config,
        format!("{text}allow_unauthenticated_admin = true\n"),
    )
    .unwrap();
    let daemon = start(&setup.config);
    let port = daemon.base.rsplit(':').next().unwrap();
    assert_eq!(get(&format!("http://127.0.0.1:{port}/hello/Ada")).0, 200);
}

#[test]
fn cross_site_form_and_rebinding_admin_requests_are_refused() {
    let setup = setup("");
    let daemon = start(&setup.config);
    let apply = daemon.url("/_epi/apply");
    for kind in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, body) = call("POST", &apply, &[("content-type", kind)], Some(APPLY));
        assert_eq!(status, 415, "{kind}: {body}");
    }
    let json = ("content-type", "application/json");
    let (status, body) = call(
        "POST",
        &apply,
        &[json, ("origin", "http://evil.example")],
        Some(APPLY),
    );
    assert_eq!(status, 403, "{body}");
    let own = daemon.base.clone();
    assert_eq!(
        call(
            "POST",
            &apply,
            &[json, ("origin", own.as_str())],
            Some(APPLY)
        )
        .0,
        200
    );
    assert_eq!(call("POST", &apply, &[json], Some(APPLY)).0, 200);
    // DNS rebinding: the right address under another name.
    let answer = raw(
        &daemon,
        b"GET /_epi/plugins HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = raw(
        &daemon,
        b"GET /_epi/plugins HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A reload without a body, as the CLI sends it, is fine.
    assert_eq!(call("POST", &daemon.url("/_epi/reload"), &[], None).0, 200);
}

#[test]
fn admin_bodies_obey_max_body_bytes_and_bad_bodies_are_400() {
    let setup = setup("");
    let daemon = start(&setup.config);
    // max_body_bytes is 1024 in this configuration. The daemon answers 413 as soon as the
    // body passes the limit, possibly while the client still sends: read the answer anyway.
    let body = format!(
        r#"{{"service": "greeting", "function": "greet", "args": "{}"}}"#,
        "a".repeat(1_500_000)
    );
    let mut request = format!(
        "POST /_epi/apply HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    let answer = raw(&daemon, &request);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = raw(
        &daemon,
        b"POST /hello/Ada HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nZZZ\r\nnot a chunk\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(get(&daemon.url("/hello/Ada")).0, 200);
}

#[test]
fn half_sent_requests_time_out_and_do_not_hold_shutdown() {
    use std::io::{Read, Write};
    let setup = setup_http("header_timeout_ms = 300\n");
    let mut daemon = start(&setup.config);
    let address = daemon.base.strip_prefix("http://").unwrap().to_owned();
    let mut slow: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            stream
                .write_all(b"GET /hello/Ada HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            stream
        })
        .collect();
    // Every half-sent request is dropped once its time is up.
    for stream in &mut slow {
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        assert!(read.is_ok(), "still open after 5 s: {read:?}");
    }
    assert_eq!(get(&daemon.url("/hello/Ada")).0, 200);
    // One more, then SIGTERM: the daemon does not wait for it.
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream.write_all(b"GET /hello/Ada HTTP/1.1\r\nHo").unwrap();
    signal(&daemon, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "a half-sent request held shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stream);
}

#[test]
fn admin_calls_run_off_the_async_workers() {
    let setup = setup("");
    let daemon = start(&setup.config);
    let decide = daemon.url("/_epi/decide");
    let slow = r#"{"service": "probe", "function": "stage_sleep", "args": {"args": {"ms": 2000}}}"#;
    let finished = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let (status, body) = call(
                    "POST",
                    &decide,
                    &[("content-type", "application/json")],
                    Some(slow),
                );
                assert_eq!(status, 200, "{body}");
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        // All four are in the plugin (counted as they start).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let counters = json(&get(&daemon.url("/_epi/counters")).1);
            let started: u64 = counters
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["function"] == "stage_sleep")
                .filter_map(|c| c["calls"].as_u64())
                .sum();
            if started >= 4 {
                break;
            }
            assert!(Instant::now() < deadline, "{started} slow calls started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        assert_eq!(get(&daemon.url("/hello/Ada")).0, 200);
        // Four 2-second calls run meanwhile; with them on the async workers (two on this
        // machine) this request waited for them.
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "GET /hello took {:?} beside slow admin calls",
            started.elapsed()
        );
        assert_eq!(
            finished.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "a slow call ended before GET /hello did"
        );
    });
}

#[test]
fn a_callers_bad_arguments_are_a_400() {
    let setup = setup("");
    let daemon = start(&setup.config);
    // greeting.greet takes a string.
    let (status, body) = post(
        &daemon.url("/_epi/decide"),
        r#"{"service": "greeting", "function": "language", "args": {"not": "a string"}}"#,
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        &daemon.url("/_epi/apply"),
        r#"{"service": "greeting", "function": "greet", "args": [1, 2]}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("greet"), "{body}");
}

#[test]
fn run_as_an_unprivileged_user_epi_refuses_a_link_another_user_planted() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // The daemon's user (nobody) and an attacker (another unprivileged uid).
    const DAEMON_USER: u32 = 65534;
    const ATTACKER: u32 = 65533;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test acts as two other users (setuid, lchown): run the tests as root, as CI does"
    );
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let trusted = epi_testkit::plugin_dir();
    let target = epi_testkit::install(trusted.path(), "epi-plugin-hello", "hello.so");
    let link = shared.path().join("libepi_plugin_hello.so");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let inspect_as_daemon_user = || {
        Command::new(EPI)
            .arg("inspect")
            .arg(&link)
            .uid(DAEMON_USER)
            .gid(DAEMON_USER)
            .env("HOME", "/tmp")
            .current_dir("/")
            .output()
            .unwrap()
    };
    std::os::unix::fs::lchown(&link, Some(ATTACKER), Some(ATTACKER)).unwrap();
    let output = inspect_as_daemon_user();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{err}");
    assert!(
        err.contains("symlink") && err.contains(&format!("uid {ATTACKER}")),
        "{err}"
    );
    // Its own link (or root's target) it trusts.
    std::os::unix::fs::lchown(&link, Some(DAEMON_USER), Some(DAEMON_USER)).unwrap();
    let output = inspect_as_daemon_user();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn read_only_commands_run_no_plugin_processes() {
    // The test plugin's process leaves a file when it runs.
    let marks = tempfile::tempdir().unwrap();
    let mark = marks.path().join("ran");
    let dir = epi_testkit::plugin_dir();
    let library = epi_testkit::install(
        dir.path(),
        "epi-plugin-testplug",
        "libepi_plugin_testplug.so",
    );
    let config = dir.path().join("epi.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins]\ndirs = [\".\"]\n\
             [plugins.config.\"libepi_plugin_testplug.so\"]\napp = \"testplug\"\n\
             processes = [{{ name = \"worker\", touch = \"{}\" }}]\n",
            mark.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (code, out, err) = epi(&["--config", config, "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("testplug"), "{out}");
    // (inspect loads the file without configuration: the plugin declares no process then.)
    let (code, _, err) = epi(&["inspect", library.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !mark.exists(),
        "a read-only command ran the plugin's process"
    );
    // The control: a registry that runs processes gets the mark.
    let registry = epi::Registry::new(epi::RegistryConfig::default()).unwrap();
    registry
        .load_with_config(
            &library,
            &json!({"app": "testplug", "processes": [{"name": "worker", "touch": mark}]}),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mark.exists() {
        assert!(Instant::now() < deadline, "the control run left no mark");
        std::thread::sleep(Duration::from_millis(20));
    }
}
