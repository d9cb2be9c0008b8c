//! Data providers, subscriptions, the data queries and notify, over real plugin libraries,
//! real files and the real file watcher.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use epi::{Applied, Notification, Opts, Registry, SourceKind, SourcedValue};
use serde_json::{json, Value};

/// Waits for something the background thread does (file events, polling); fails after 10 s.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the (only) data source has been read `reads` more times, the last of them
/// finished: the data thread takes a read only after the previous one's notifications went
/// out, so `reads + 1` new check times prove `reads` complete reads.
fn wait_for_reads(registry: &Registry, reads: usize) {
    let checked = || registry.data_status()[0].checked_at;
    let mut last = checked();
    for _ in 0..=reads {
        wait_for("another read of the source", || checked() != last);
        last = checked();
    }
}

/// Loads the test plugin from `dir` (so relative data files resolve there).
fn load_in(registry: &Registry, dir: &Path, file: &str, config: Value) {
    let path = if dir.join(file).exists() {
        dir.join(file)
    } else {
        install(dir, "epi-plugin-testplug", file)
    };
    registry.load_with_config(path, &config).expect("load");
}

/// Notifications a plugin received, through its `probe` provider.
fn received(registry: &Registry, app: &str) -> Vec<Notification> {
    let Applied::Each(replies) = registry
        .apply_json("probe", "notifications", &Value::Null, Opts::new())
        .unwrap()
    else {
        unreachable!()
    };
    let reply = replies
        .into_iter()
        .find(|r| r.plugin == app)
        .expect("plugin");
    serde_json::from_value(reply.result.unwrap()).unwrap()
}

fn data_notes(notes: &[Notification], key: &str) -> Vec<(Vec<SourcedValue>, Vec<SourcedValue>)> {
    notes
        .iter()
        .filter_map(|note| match note {
            Notification::Data {
                key: k, old, new, ..
            } if k == key => Some((old.clone(), new.clone())),
            _ => None,
        })
        .collect()
}

fn sv(source: &str, value: Value) -> SourcedValue {
    SourcedValue {
        source: source.into(),
        value,
    }
}

/// Writes a file the way operators should: to a temporary name, then rename into place.
fn publish(dir: &Path, name: &str, text: &str) {
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, dir.join(name)).unwrap();
}

fn v(value: Value) -> Arc<Value> {
    Arc::new(value)
}

#[test]
fn every_query_shape_over_static_data() {
    let registry = registry(&["a", "b"]);
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "a", "data": [
                {"service": "cfg", "key": "colour", "static": "red"},
                {"service": "cfg", "key": "size", "static": {"w": 1}}]}),
        )
        .unwrap();
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "b", "data": [{"service": "cfg", "key": "colour", "static": "blue"}]}),
        )
        .unwrap();
    let cfg = registry.data("cfg");
    assert_eq!(cfg.service(), "cfg");
    // Every query compares with literals.
    assert_eq!(cfg.keys(), ["colour", "size"]);
    assert_eq!(cfg.providers(), ["a", "b"]);
    assert_eq!(cfg.get("colour"), [json!("red"), json!("blue")]);
    assert_eq!(cfg.get_value("b", "colour"), Some(v(json!("blue"))));
    assert_eq!(cfg.get_value("b", "size"), None);
    assert_eq!(cfg.get_value("nobody", "colour"), None);
    assert_eq!(
        cfg.by_key("colour"),
        [("a", json!("red")), ("b", json!("blue"))]
    );
    assert_eq!(
        cfg.by_key_all(),
        [
            ("colour", vec![("a", json!("red")), ("b", json!("blue"))]),
            ("size", vec![("a", json!({"w": 1}))]),
        ]
    );
    assert_eq!(
        cfg.by_source("a"),
        [("colour", json!("red")), ("size", json!({"w": 1}))]
    );
    assert_eq!(
        cfg.by_source_all(),
        [
            (
                "a",
                vec![("colour", json!("red")), ("size", json!({"w": 1}))]
            ),
            ("b", vec![("colour", json!("blue"))]),
        ]
    );
    assert_eq!(
        cfg.all(),
        [
            ("a", "colour", json!("red")),
            ("a", "size", json!({"w": 1})),
            ("b", "colour", json!("blue")),
        ]
    );
    let version = cfg.version().expect("a version");
    assert_ne!(cfg.version_of("a"), cfg.version_of("b"));
    assert_eq!(cfg.version_of("nobody"), None);
    // Reloading identical data keeps the version.
    registry.reload_data();
    assert_eq!(cfg.version(), Some(version));
    // Unloading a source removes its data.
    registry.unload("b");
    assert_eq!(cfg.get("colour"), [json!("red")]);
}

#[test]
fn a_subscription_without_provider_gives_empty_answers() {
    let registry = registry(&[]);
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "lonely", "subscriptions": [["nothing", "here"]]}),
        )
        .unwrap();
    let data = registry.data("nothing");
    assert!(data.keys().is_empty());
    assert!(data.providers().is_empty());
    assert!(data.get("here").is_empty());
    assert_eq!(data.get_value("lonely", "here"), None);
    assert!(data.by_key("here").is_empty() && data.by_key_all().is_empty());
    assert!(data.by_source("lonely").is_empty() && data.by_source_all().is_empty());
    assert!(data.all().is_empty());
    assert_eq!(data.version(), None);
}

#[test]
fn wildcard_keys_match_by_prefix_exact_first_longest_prefix_wins() {
    let registry = registry(&["a", "b"]);
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "a", "data": [
                {"service": "w", "key": "pre*", "static": "short"},
                {"service": "w", "key": "prefix*", "static": "long"},
                {"service": "w", "key": "prefixed", "static": "exact"}]}),
        )
        .unwrap();
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "b", "data": [{"service": "w", "key": "prefix", "static": "b-exact"}]}),
        )
        .unwrap();
    let w = registry.data("w");
    assert_eq!(
        w.get_value("a", "pre"),
        Some(v(json!("short"))),
        "pre* matches pre"
    );
    assert_eq!(w.get_value("a", "prelude"), Some(v(json!("short"))));
    assert_eq!(w.get_value("a", "pr"), None, "pre* does not match pr");
    assert_eq!(
        w.get_value("a", "prefix"),
        Some(v(json!("long"))),
        "longest prefix wins"
    );
    assert_eq!(w.get_value("a", "prefixes"), Some(v(json!("long"))));
    assert_eq!(
        w.get_value("a", "prefixed"),
        Some(v(json!("exact"))),
        "exact beats wildcard"
    );
    assert_eq!(w.get_value("b", "prefixes"), None);
    assert_eq!(w.get("prefix"), [json!("long"), json!("b-exact")]);
    assert_eq!(w.get("prefixes"), [json!("long")]);
    assert_eq!(w.keys(), ["pre*", "prefix", "prefix*", "prefixed"]);
}

#[test]
fn file_sources_json_and_toml_relative_to_the_plugin() {
    let dir = plugin_dir();
    write_file(dir.path(), "settings.json", br#"{"level": "info"}"#);
    write_file(dir.path(), "limits.toml", b"[http]\nmax_body = 1024\n");
    let registry = registry(&[]);
    load_in(
        &registry,
        dir.path(),
        "files.so",
        json!({"app": "files", "data": [
            {"service": "cfg", "key": "settings", "file": "settings.json"},
            {"service": "cfg", "key": "limits", "file": "limits.toml"}]}),
    );
    let cfg = registry.data("cfg");
    assert_eq!(
        cfg.get_value("files", "settings"),
        Some(v(json!({"level": "info"})))
    );
    assert_eq!(
        cfg.get_value("files", "limits"),
        Some(v(json!({"http": {"max_body": 1024}})))
    );
    let status = registry.data_status();
    assert_eq!(status.len(), 2);
    assert!(status
        .iter()
        .all(|s| s.kind == SourceKind::File && s.error.is_none()));
    assert_eq!(
        status[0].path.as_deref(),
        Some(dir.path().join("settings.json").as_path())
    );
}

#[test]
fn a_changed_file_is_picked_up_at_once_and_notified() {
    let dir = plugin_dir();
    write_file(dir.path(), "feature.json", br#"{"on": false}"#);
    let registry = registry(&["owner", "watcher"]);
    // A long interval: only the file watcher can explain a prompt update.
    load_in(
        &registry,
        dir.path(),
        "owner.so",
        json!({"app": "owner", "data": [
            {"service": "cfg", "key": "feature", "file": "feature.json", "interval_ms": 600000}]}),
    );
    load_in(
        &registry,
        dir.path(),
        "watcher.so",
        json!({"app": "watcher", "subscriptions": [["cfg", "feature"]]}),
    );
    let cfg = registry.data("cfg");
    // Rename into place.
    publish(dir.path(), "feature.json", r#"{"on": true}"#);
    wait_for("the renamed file", || {
        cfg.get_value("owner", "feature") == Some(v(json!({"on": true})))
    });
    wait_for("the notification", || {
        data_notes(&received(&registry, "watcher"), "feature").len() == 1
    });
    let notes = data_notes(&received(&registry, "watcher"), "feature");
    assert_eq!(notes[0].0, vec![sv("owner", json!({"on": false}))]);
    assert_eq!(notes[0].1, vec![sv("owner", json!({"on": true}))]);
    // Plain rewrite in place (cp over).
    std::fs::write(dir.path().join("feature.json"), r#"{"on": "maybe"}"#).unwrap();
    wait_for("the rewritten file", || {
        cfg.get_value("owner", "feature") == Some(v(json!({"on": "maybe"})))
    });
    // The provider is notified as well (it provides the key), first load included.
    wait_for("the provider's notifications", || {
        data_notes(&received(&registry, "owner"), "feature").len() == 3
    });
    let owner = data_notes(&received(&registry, "owner"), "feature");
    assert!(owner[0].0.is_empty(), "old is empty on first load");
}

#[test]
fn an_identical_rewrite_is_not_a_change() {
    let dir = plugin_dir();
    write_file(dir.path(), "same.json", br#"{"a": 1, "b": 2}"#);
    let registry = registry(&[]);
    load_in(
        &registry,
        dir.path(),
        "same.so",
        json!({"app": "same", "data": [{"service": "cfg", "key": "same", "file": "same.json", "interval_ms": 20}]}),
    );
    let cfg = registry.data("cfg");
    let version = cfg.version();
    assert_eq!(
        data_notes(&received(&registry, "same"), "same").len(),
        1,
        "first load"
    );
    // Same content, other formatting and key order, published twice; then let polling run.
    publish(dir.path(), "same.json", "{\n  \"b\": 2,\n  \"a\": 1\n}\n");
    publish(dir.path(), "same.json", r#"{"a":1,"b":2}"#);
    // A poll that started after both publishes, and finished.
    wait_for_reads(&registry, 1);
    assert_eq!(cfg.version(), version);
    assert_eq!(data_notes(&received(&registry, "same"), "same").len(), 1);
    assert_eq!(
        registry.reload_data().notified,
        0,
        "a manual reload finds nothing new"
    );
}

#[test]
fn callbacks_are_polled_and_changes_detected_by_hash() {
    let registry = registry(&[]);
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "cb", "data": [{"service": "cfg", "key": "live", "callback": true, "interval_ms": 20}]}),
        )
        .unwrap();
    let cfg = registry.data("cfg");
    assert_eq!(cfg.get_value("cb", "live"), Some(v(Value::Null)));
    let probe = registry.service("probe");
    probe
        .apply::<Value, ()>("set_callback", &json!({"n": 1}))
        .unwrap();
    wait_for("the polled callback", || {
        cfg.get_value("cb", "live") == Some(v(json!({"n": 1})))
    });
    // Two more polls of the same value, finished.
    wait_for_reads(&registry, 2);
    let notes = data_notes(&received(&registry, "cb"), "live");
    assert_eq!(
        notes.len(),
        2,
        "first load and one change, not one per poll: {notes:?}"
    );
}

#[test]
fn manual_reload_reads_every_source_at_once() {
    let registry = registry(&[]);
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "slow", "data": [{"service": "cfg", "key": "k", "callback": true, "interval_ms": 600000}]}),
        )
        .unwrap();
    registry
        .service("probe")
        .apply::<Value, ()>("set_callback", &json!("fresh"))
        .unwrap();
    assert_eq!(
        registry.data("cfg").get_value("slow", "k"),
        Some(v(Value::Null))
    );
    assert_eq!(
        registry.reload_data().notified,
        1,
        "one notification: the provider's"
    );
    assert_eq!(
        registry.data("cfg").get_value("slow", "k"),
        Some(v(json!("fresh")))
    );
    let notes = data_notes(&received(&registry, "slow"), "k");
    assert_eq!(notes.last().unwrap().1, vec![sv("slow", json!("fresh"))]);
}

#[test]
fn a_malformed_file_keeps_the_previous_data_and_reports_file_and_line() {
    let dir = plugin_dir();
    write_file(dir.path(), "conf.json", br#"{"good": true}"#);
    write_file(dir.path(), "conf.toml", b"good = true\n");
    let registry = registry(&[]);
    load_in(
        &registry,
        dir.path(),
        "bad.so",
        json!({"app": "bad", "data": [
            {"service": "cfg", "key": "json", "file": "conf.json", "interval_ms": 600000},
            {"service": "cfg", "key": "toml", "file": "conf.toml", "interval_ms": 600000}]}),
    );
    publish(dir.path(), "conf.json", "{\n  \"good\": @\n}");
    publish(dir.path(), "conf.toml", "good = true\nbad = = 1\n");
    wait_for("both errors in the status", || {
        registry.data_status().iter().all(|s| s.error.is_some())
    });
    let status = registry.data_status();
    let json_error = status[0].error.clone().unwrap();
    assert!(
        json_error.contains("conf.json") && json_error.contains("line 2"),
        "{json_error}"
    );
    let toml_error = status[1].error.clone().unwrap();
    assert!(
        toml_error.contains("conf.toml") && toml_error.contains("line 2"),
        "{toml_error}"
    );
    let cfg = registry.data("cfg");
    assert_eq!(cfg.get_value("bad", "json"), Some(v(json!({"good": true}))));
    assert_eq!(cfg.get_value("bad", "toml"), Some(v(json!({"good": true}))));
    // Fixed: served again, error cleared.
    publish(dir.path(), "conf.json", r#"{"good": "again"}"#);
    wait_for("recovery", || {
        cfg.get_value("bad", "json") == Some(v(json!({"good": "again"})))
    });
    assert!(registry.data_status()[0].error.is_none());
}

#[test]
fn a_missing_file_is_an_error_not_a_failure_to_load() {
    let dir = plugin_dir();
    let registry = registry(&[]);
    load_in(
        &registry,
        dir.path(),
        "missing.so",
        json!({"app": "missing", "data": [{"service": "cfg", "key": "k", "file": "absent.json"}]}),
    );
    assert_eq!(registry.data("cfg").get_value("missing", "k"), None);
    let error = registry.data_status()[0].error.clone().unwrap();
    assert!(error.contains("absent.json"), "{error}");
    // It appears later: the watcher picks it up.
    publish(dir.path(), "absent.json", "42");
    wait_for("the late file", || {
        registry.data("cfg").get_value("missing", "k") == Some(v(json!(42)))
    });
}

#[test]
fn a_failing_or_panicking_callback_keeps_the_previous_data() {
    let registry = registry(&[]);
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "flaky", "data": [{"service": "cfg", "key": "k", "callback": true, "interval_ms": 600000}]}),
        )
        .unwrap();
    let probe = registry.service("probe");
    probe
        .apply::<Value, ()>("set_callback", &json!("good"))
        .unwrap();
    registry.reload_data();
    let cfg = registry.data("cfg");
    for (behaviour, expected) in [
        ("fail", "the callback refused"),
        ("panic", "panicked on purpose"),
    ] {
        probe
            .apply::<String, ()>("set_callback_behaviour", &behaviour.to_string())
            .unwrap();
        probe
            .apply::<Value, ()>("set_callback", &json!("never served"))
            .unwrap();
        let reload = registry.reload_data();
        assert_eq!(reload.notified, 0);
        assert_eq!(cfg.get_value("flaky", "k"), Some(v(json!("good"))));
        let error = registry.data_status()[0].error.clone().unwrap();
        assert!(error.contains(expected), "{error}");
        assert_eq!(registry.data_status_of("flaky").len(), 1);
        assert!(registry.data_status_of("nobody").is_empty());
        // The reload says which source failed, and why.
        assert_eq!(reload.failed.len(), 1);
        assert_eq!(
            (&*reload.failed[0].source, &*reload.failed[0].key),
            ("flaky", "k")
        );
        assert!(reload.failed[0].error.as_ref().unwrap().contains(expected));
    }
    probe
        .apply::<String, ()>("set_callback_behaviour", &"ok".to_string())
        .unwrap();
    assert!(registry.reload_data().failed.is_empty());
    assert_eq!(cfg.get_value("flaky", "k"), Some(v(json!("never served"))));
    assert!(registry.data_status()[0].error.is_none());
}

#[test]
fn a_panicking_notify_is_contained() {
    let registry = registry(&[]);
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "grumpy", "notify_panics": true,
                    "data": [{"service": "cfg", "key": "k", "static": 1}]}),
        )
        .unwrap();
    assert_eq!(
        registry.data("cfg").get_value("grumpy", "k"),
        Some(v(json!(1)))
    );
    registry.load(plugin_library("epi-plugin-hello")).unwrap();
    assert_eq!(registry.plugins().len(), 2);
}

#[test]
fn service_definers_are_notified_when_providers_change() {
    let registry = registry(&["definer", "extra"]);
    registry
        .load_with_config(testplug(), &json!({"app": "definer", "services": ["math"]}))
        .unwrap();
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "extra", "services": [], "providers": [{"label": "x"}]}),
        )
        .unwrap();
    registry.unload("extra");
    let changes: Vec<(usize, usize)> = received(&registry, "definer")
        .into_iter()
        .filter_map(|note| match note {
            Notification::Providers { service, old, new } if service == "math" => {
                Some((old.len(), new.len()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(changes, vec![(0, 1), (1, 0)]);
}

#[test]
fn a_fifo_a_device_or_an_oversized_data_file_is_refused_without_blocking() {
    let dir = plugin_dir();
    write_file(
        dir.path(),
        "big.json",
        format!("\"{}\"", "x".repeat(2000)).as_bytes(),
    );
    let fifo = dir.path().join("fifo.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo (coreutils)");
    assert!(made.success());
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.json")).unwrap();
    write_file(dir.path(), "good.json", b"1");
    let registry = Registry::new(epi::RegistryConfig {
        max_data_file_bytes: Some(1024),
        ..epi::RegistryConfig::default()
    })
    .unwrap();
    install(dir.path(), "epi-plugin-testplug", "files.so");
    let started = Instant::now();
    load_in(
        &registry,
        dir.path(),
        "files.so",
        json!({"app": "files", "data": [
            {"service": "cfg", "key": "fifo", "file": "fifo.json", "interval_ms": 600000},
            {"service": "cfg", "key": "zero", "file": "zero.json", "interval_ms": 600000},
            {"service": "cfg", "key": "big", "file": "big.json", "interval_ms": 600000},
            {"service": "cfg", "key": "good", "file": "good.json", "interval_ms": 600000}]}),
    );
    // Loading did not wait on the FIFO (no writer ever opens it) nor read /dev/zero forever.
    assert!(started.elapsed() < Duration::from_secs(5));
    let status = registry.data_status();
    let error = |key: &str| {
        status
            .iter()
            .find(|s| s.key == key)
            .and_then(|s| s.error.clone())
            .unwrap_or_default()
    };
    assert!(
        error("fifo").contains("fifo.json") && error("fifo").contains("not a regular file"),
        "{}",
        error("fifo")
    );
    assert!(
        error("zero").contains("not a regular file"),
        "{}",
        error("zero")
    );
    assert!(
        error("big").contains("big.json")
            && error("big").contains("over the data file limit of 1024"),
        "{}",
        error("big")
    );
    assert_eq!(error("good"), "");
    assert_eq!(
        registry.data("cfg").get_value("files", "good"),
        Some(v(json!(1)))
    );
    // The registry still answers and reloads.
    registry.reload_data();
    assert_eq!(registry.plugins().len(), 1);
}

#[test]
fn a_callback_that_hangs_times_out_off_every_lock_and_keeps_the_previous_data() {
    let registry = registry_with(epi::RegistryConfig {
        data_read_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "stuck", "data": [{"service": "cfg", "key": "k", "callback": true, "interval_ms": 600000}]}),
        )
        .unwrap();
    let probe = registry.service("probe");
    probe
        .apply::<Value, ()>("set_callback", &json!("good"))
        .unwrap();
    registry.reload_data();
    let cfg = registry.data("cfg");
    assert_eq!(cfg.get_value("stuck", "k"), Some(v(json!("good"))));

    probe
        .apply::<String, ()>("set_callback_behaviour", &"hang".to_string())
        .unwrap();
    probe
        .apply::<Value, ()>("set_callback", &json!("late"))
        .unwrap();
    let started = Instant::now();
    assert_eq!(registry.reload_data().notified, 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the reload waited for the hanging callback: {:?}",
        started.elapsed()
    );
    let error = registry.data_status()[0].error.clone().unwrap();
    assert!(error.contains("no answer within 0.3 s"), "{error}");
    assert_eq!(cfg.get_value("stuck", "k"), Some(v(json!("good"))));

    // While the read hangs, the registry loads, queries and reloads as usual; a second reload
    // does not pile another read on the hanging one.
    let started = Instant::now();
    load_testplug(&registry, "other", json!([{"label": "o", "add": 1}]));
    assert_eq!(registry.reload_data().notified, 0);
    assert!(registry.data_status().len() == 1);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Once the hanging read ends, the source is read again and the new value served.
    probe
        .apply::<String, ()>("set_callback_behaviour", &"ok".to_string())
        .unwrap();
    wait_for("the hanging read to end", || {
        registry.reload_data();
        cfg.get_value("stuck", "k") == Some(v(json!("late")))
    });
    assert!(registry.data_status()[0].error.is_none());
}

#[test]
fn hosts_observe_notifications_directly() {
    let registry = registry(&[]);
    let (sender, received) = std::sync::mpsc::channel();
    let subscription = registry.on_notification(move |notification| {
        let _ = sender.send(notification.clone());
    });
    // A plugin defining `math` with one provider: the providers of `math` changed.
    load_testplug(&registry, "alpha", json!([{"label": "a"}]));
    let mut seen = Vec::new();
    while let Ok(notification) = received.recv_timeout(std::time::Duration::from_secs(5)) {
        let done = matches!(&notification, epi::Notification::Providers { service, .. } if service == "math");
        seen.push(notification);
        if done {
            break;
        }
    }
    assert!(
        seen.iter().any(
            |n| matches!(n, epi::Notification::Providers { service, new, .. }
            if service == "math" && new.len() == 1)
        ),
        "{seen:?}"
    );
    // Data a plugin provides, which no plugin subscribes to, is still seen by the host.
    registry
        .load_with_config(
            testplug(),
            &json!({"app": "beta", "data": [{"service": "cfg", "key": "k", "static": 7}]}),
        )
        .unwrap();
    let data = loop {
        let notification = received
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the data notification");
        if let epi::Notification::Data {
            service, key, new, ..
        } = notification
        {
            break (service, key, new);
        }
    };
    assert_eq!((&*data.0, &*data.1), ("cfg", "k"));
    assert_eq!(data.2[0].value, json!(7));
    // Dropping the subscription ends it.
    drop(subscription);
    registry.unload("beta");
    assert!(received
        .recv_timeout(std::time::Duration::from_millis(200))
        .is_err());
}
