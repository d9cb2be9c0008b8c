//! Plugins from other builds: one built by a second rustc (Debian's `rustc-web`) and one built
//! against a patch release of epi load on the stable call path and answer exactly as the
//! same-toolchain build does; one built against an incompatible epi is refused.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use epi::{
    ApplyOpts, CallPath, DecideOpts, Decision, LoadError, Opts, PipeOpts, Registry, Upgrade,
};
use epi_testkit::{build_against_epi_version, build_with_second_toolchain};
use serde_json::{json, Value};

/// The configuration every build is loaded with: providers of every kind, data of every
/// source kind, a subscription and two processes.
fn config(dir: &Path) -> Value {
    std::fs::write(dir.join("limits.json"), br#"{"max": 3}"#).unwrap();
    json!({
        "app": "compat",
        "services": ["math"],
        "providers": [
            {"label": "a", "add": 1, "decides": false, "truth": true},
            {"label": "b", "add": 10, "decides": true, "truth": true},
            {"label": "c", "add": 100, "behaviour": "fail", "truth": false},
        ],
        "data": [
            {"service": "cfg", "key": "limits", "file": dir.join("limits.json").to_str().unwrap()},
            {"service": "cfg", "key": "static", "static": {"answer": 42}},
            {"service": "cfg", "key": "live", "callback": true, "interval_ms": 20},
        ],
        "subscriptions": [["cfg", "static"]],
        "processes": [
            {"name": "queue", "output": {"ready": true}},
            {"name": "delivery", "inputs": ["queue"], "output": "delivering"},
        ],
    })
}

/// Every kind of call, data query and notification, as JSON to compare across builds.
fn exercise(registry: &Registry) -> Value {
    let value = registry.function::<i64, i64>("math", "value");
    let default = value.apply(&1).map_err(|err| err.to_string());
    let ignoring: Vec<Value> = value
        .apply_with(&1, ApplyOpts::new().ignore_errors())
        .unwrap()
        .into_iter()
        .map(|result| match result {
            Ok(value) => json!({ "ok": value }),
            Err(err) => json!({ "error": err.to_string() }),
        })
        .collect();
    let concurrent = value
        .apply_with(&1, ApplyOpts::new().ignore_errors().concurrent())
        .unwrap()
        .len();
    let piped = value.pipe(1, PipeOpts::new().ignore_errors()).unwrap();
    let decided = registry
        .function::<i64, Decision<String>>("math", "decide")
        .decide(&1, DecideOpts::new().ignore_errors())
        .unwrap();
    let check = registry.function::<i64, bool>("math", "check");
    let any = check.any(&1, ApplyOpts::new().ignore_errors()).unwrap();
    let all = check.all(&1, ApplyOpts::new().ignore_errors()).unwrap();
    let scaled = registry
        .function::<(i64, i64), i64>("math", "scale")
        .apply(&(3, 4))
        .map_err(|err| err.to_string());
    // `String` results, handed over whole on the stable path (`tag`, `label`).
    let tagged = registry
        .function::<(String, u64), String>("math", "tag")
        .apply(&("Ada \"Lovelace\" é".to_string(), 7))
        .unwrap();
    let labels = registry
        .function::<(), String>("math", "label")
        .apply(&())
        .unwrap();
    let motto = registry
        .function::<(), std::borrow::Cow<'static, str>>("probe", "motto")
        .apply(&())
        .unwrap();
    let by_name = registry
        .apply_json("math", "value", &json!(5), Opts::new().ignore_errors())
        .unwrap()
        .to_json(true);
    let cfg = registry.data("cfg");
    let probe = registry.function::<Value, ()>("probe", "set_callback");
    probe.apply(&json!({"tick": 1})).unwrap();
    registry.reload_data();
    let data = json!({
        "keys": cfg.keys().iter().map(|k| k.to_string()).collect::<Vec<_>>(),
        "limits": cfg.get_value("compat", "limits").map(|v| (*v).clone()),
        "static": cfg.get_value("compat", "static").map(|v| (*v).clone()),
        "live": cfg.get_value("compat", "live").map(|v| (*v).clone()),
    });
    let notifications = registry
        .function::<(), Vec<epi::Notification>>("probe", "notifications")
        .apply(&())
        .unwrap();
    let report = wait_for_processes(registry);
    json!({
        "default": default,
        "ignoring": ignoring,
        "concurrent": concurrent,
        "piped": piped,
        "decided": decided,
        "any": any,
        "all": all,
        "scaled": scaled,
        "tagged": tagged,
        "labels": labels,
        "motto": motto,
        "by_name": by_name,
        "data": data,
        "notified": !notifications.is_empty(),
        "processes": report,
    })
}

/// The processes' states and inputs once both run.
fn wait_for_processes(registry: &Registry) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = registry.process_report();
        let running: Vec<(String, Value)> = report
            .workers
            .iter()
            .map(|(name, worker)| {
                let inputs = worker.report.get("inputs").cloned().unwrap_or(Value::Null);
                (name.clone(), inputs)
            })
            .collect();
        let ready = report.workers.len() == 2
            && report.workers.values().all(|worker| {
                worker.state == epi::WorkerState::Started && !worker.report.is_null()
            });
        if ready {
            return json!(running);
        }
        assert!(Instant::now() < deadline, "processes never ran: {report:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Loads `library` as `compat.so` in a fresh directory and exercises it.
fn run(library: &Path, expected_path: CallPath) -> Value {
    let dir = plugin_dir();
    let path = dir.path().join("compat.so");
    std::fs::copy(library, &path).unwrap();
    let registry = registry(&[]);
    let info = registry
        .load_with_config(&path, &config(dir.path()))
        .unwrap();
    assert_eq!(info.call_path, expected_path, "{}", info.build);
    if expected_path == CallPath::Stable {
        // A `String` asked of a provider answering a `Cow<str>` (the same serde shape, which
        // the stable path accepts): encoded, not handed over, and read back the same.
        let motto = registry.function::<(), String>("probe", "motto");
        assert_eq!(
            motto.apply(&()).unwrap(),
            ["static text from the plugin's own memory"]
        );
    }
    let results = exercise(&registry);
    registry.stop_processes();
    results
}

#[test]
fn a_plugin_built_by_another_rustc_answers_as_the_same_toolchain_build() {
    let foreign = build_with_second_toolchain("epi-plugin-testplug");
    let native = run(&testplug(), CallPath::Native);
    let stable = run(&foreign, CallPath::Stable);
    assert_eq!(native, stable);

    // Upgrade in place: foreign → native → foreign, state handed over each time.
    let dir = plugin_dir();
    let path = dir.path().join("compat.so");
    std::fs::copy(&foreign, &path).unwrap();
    let registry = registry(&[]);
    let info = registry
        .load_with_config(&path, &config(dir.path()))
        .unwrap();
    assert_eq!(info.call_path, CallPath::Stable);
    // Built by the second toolchain (Debian's `rustc-web`, whatever its release), not the host's.
    let second = std::process::Command::new(epi_testkit::SECOND_RUSTC)
        .arg("--version")
        .output()
        .unwrap();
    let second = String::from_utf8_lossy(&second.stdout);
    let release = second.split_whitespace().nth(1).unwrap();
    assert!(
        info.build.contains(&format!("rustc {release}")),
        "{}",
        info.build
    );
    assert_ne!(info.build, epi::abi::BUILD_INFO);
    let hit = registry.function::<(), u64>("probe", "hit");
    assert_eq!(hit.apply(&()).unwrap(), vec![1]);
    for (library, call_path, expected) in [
        (testplug(), CallPath::Native, 2),
        (foreign.clone(), CallPath::Stable, 3),
    ] {
        publish_by_rename(&path, &std::fs::read(&library).unwrap());
        match registry.upgrade(&path).unwrap() {
            Upgrade::Replaced { new, .. } => assert_eq!(new.call_path, call_path),
            other => panic!("expected a replacement, got {other:?}"),
        }
        assert_eq!(hit.apply(&()).unwrap(), vec![expected], "{call_path:?}");
        assert_eq!(
            registry
                .function::<i64, i64>("math", "value")
                .apply_with(&1, ApplyOpts::new().ignore_errors())
                .unwrap()
                .len(),
            3
        );
    }
    registry.stop_processes();
}

#[test]
fn a_plugin_built_against_an_epi_patch_release_loads_on_the_stable_path() {
    let patched = build_against_epi_version("epi-plugin-testplug", "0.2.99");
    let native = run(&testplug(), CallPath::Native);
    let stable = run(&patched, CallPath::Stable);
    assert_eq!(native, stable);
    assert_eq!(stable["tagged"], json!(vec!["Ada \"Lovelace\" é"; 3]));
    assert_eq!(stable["labels"], json!(["a", "b", "c"]));
    assert_eq!(
        stable["motto"],
        json!(["static text from the plugin's own memory"])
    );
}

#[test]
fn a_plugin_built_against_an_incompatible_epi_is_refused() {
    let next = build_against_epi_version("epi-plugin-testplug", "0.3.0");
    let registry = registry(&[]);
    let err = registry.load(&next).unwrap_err();
    match &err {
        LoadError::VersionMismatch {
            expected, found, ..
        } => assert_eq!((expected.as_str(), found.as_str()), ("0.2.x", "0.3.0")),
        other => panic!("expected a version mismatch, got {other}"),
    }
}
