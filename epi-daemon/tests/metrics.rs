//! `/_epi/metrics` scraped from a running daemon and read with an independent parser of the
//! Prometheus text format: calls and sampled latencies per provider function, HTTP answers
//! by status, loads and upgrades per plugin, reload durations, processes; behind the admin
//! token like every admin route.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value};

mod common;

use common::{start, Daemon};

/// A plugin directory with the example plugins and the test plugin (with a process), and a
/// configuration with `http` added to its `[http]` table.
fn setup(http: &str) -> (tempfile::TempDir, PathBuf) {
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
            "[plugins]\ndirs = [\".\"]\norder = [\"hello\", \"greeter-fr\"]\n\
             [plugins.config.\"libepi_plugin_testplug.so\"]\napp = \"testplug\"\n\
             providers = [{{ label = \"slow\" }}]\n\
             processes = [{{ name = \"ticker\" }}]\n\
             [http]\nlisten = \"127.0.0.1:0\"\n{http}\n"
        ),
    )
    .unwrap();
    (dir, config)
}

fn status_of(result: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match result {
        Ok(response) => (response.status(), response.into_string().unwrap()),
        Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
        Err(err) => panic!("{err}"),
    }
}

/// Scrapes and parses the daemon's metrics, checking the content type on the way.
fn scrape(daemon: &Daemon) -> Scrape {
    let response = ureq::get(&daemon.url("/_epi/metrics")).call().unwrap();
    assert!(
        response.content_type().starts_with("text/plain"),
        "{}",
        response.content_type()
    );
    let text = response.into_string().unwrap();
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .unwrap_or_else(|err| panic!("not the text format ({err}):\n{text}"))
}

/// The sample of `metric` whose labels include every pair of `labels`.
fn find<'s>(scrape: &'s Scrape, metric: &str, labels: &[(&str, &str)]) -> &'s Sample {
    scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == metric
                && labels
                    .iter()
                    .all(|(name, value)| sample.labels.get(name) == Some(*value))
        })
        .unwrap_or_else(|| panic!("no {metric} with {labels:?}"))
}

fn number(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => *value,
        other => panic!("{}: not a number: {other:?}", sample.metric),
    }
}

/// A histogram's total count (its `+Inf` bucket).
fn histogram_count(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Histogram(buckets) => {
            let last = buckets
                .iter()
                .find(|bucket| bucket.less_than.is_infinite())
                .expect("a +Inf bucket");
            let mut previous = 0.0;
            for bucket in buckets {
                assert!(bucket.count >= previous, "buckets are cumulative");
                previous = bucket.count;
            }
            last.count
        }
        other => panic!("{}: not a histogram: {other:?}", sample.metric),
    }
}

#[test]
fn metrics_are_prometheus_text_with_calls_latency_reloads_processes_and_statuses() {
    let (dir, config) = setup("");
    let daemon = start(&config);
    for _ in 0..40 {
        assert_eq!(
            status_of(ureq::get(&daemon.url("/hello/Ada")).call()).0,
            200
        );
    }
    assert_eq!(
        status_of(ureq::get(&daemon.url("/nobody/here")).call()).0,
        404
    );

    let scrape = scrape(&daemon);
    let handle = [
        ("service", "http"),
        ("function", "handle"),
        ("plugin", "hello"),
        ("provider", "Web"),
    ];
    assert!(number(find(&scrape, "epi_calls_total", &handle)) >= 40.0);
    assert_eq!(number(find(&scrape, "epi_call_errors_total", &handle)), 0.0);
    assert_eq!(number(find(&scrape, "epi_call_panics_total", &handle)), 0.0);
    // One call in 32 is timed, the first one included: 40 calls give at least 2.
    assert!(histogram_count(find(&scrape, "epi_call_duration_seconds", &handle)) >= 2.0);
    assert!(number(find(&scrape, "epi_http_requests_total", &[("code", "200")])) >= 40.0);
    assert!(number(find(&scrape, "epi_http_requests_total", &[("code", "404")])) >= 1.0);
    for app in ["hello", "greeter-fr", "testplug"] {
        assert_eq!(
            number(find(&scrape, "epi_plugin_loads_total", &[("plugin", app)])),
            1.0,
            "{app}"
        );
    }
    assert_eq!(number(find(&scrape, "epi_plugins_loaded", &[])), 3.0);
    assert!(histogram_count(find(&scrape, "epi_reload_duration_seconds", &[])) >= 3.0);
    assert_eq!(
        number(find(
            &scrape,
            "epi_process_up",
            &[("process", "testplug/ticker")]
        )),
        1.0
    );
    assert!(
        number(find(
            &scrape,
            "epi_process_starts_total",
            &[("process", "testplug/ticker")]
        )) >= 1.0
    );
    assert!(scrape.docs.contains_key("epi_calls_total"), "HELP lines");

    // A new build of the test plugin: an upgrade, counted for its file.
    let path = dir.path().join("libepi_plugin_testplug.so");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(16)
        .position(|w| w == b"EPIMARK:00000000")
        .unwrap();
    bytes[at + 8..at + 16].copy_from_slice(b"00000003");
    epi_testkit::write_file(dir.path(), ".next.tmp", &bytes);
    std::fs::rename(dir.path().join(".next.tmp"), &path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = self::scrape(&daemon);
        let upgrades = number(find(
            &scrape,
            "epi_plugin_upgrades_total",
            &[("plugin", "testplug")],
        ));
        if upgrades == 1.0 {
            let info = find(&scrape, "epi_plugin_info", &[("plugin", "testplug")]);
            assert_eq!(info.labels.get("version"), Some("0.1.0+00000003"));
            break;
        }
        assert!(Instant::now() < deadline, "the upgrade was not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_need_the_admin_token_when_one_is_set() {
    let (_dir, config) = setup("admin_token = \"s3cret\"");
    let daemon = start(&config);
    let (status, _) = status_of(ureq::get(&daemon.url("/_epi/metrics")).call());
    assert_eq!(status, 401);
    let (status, text) = status_of(
        ureq::get(&daemon.url("/_epi/metrics"))
            .set("authorization", "Bearer s3cret")
            .call(),
    );
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE epi_calls_total counter"), "{text}");
}
