//! Providers that come and go: plugins add and remove providers at run time, typed or made of
//! a closure over JSON, under the ordering rules of declared providers, with notifications,
//! withdrawn with their version, under concurrent calls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::*;
use epi::{ApplyOpts, Failure, Notification, Opts, Registry, Upgrade};
use serde_json::{json, Value};

fn alpha(registry: &Registry, path: &std::path::Path) {
    registry
        .load_with_config(
            path,
            &json!({"app": "alpha", "services": ["math"], "providers": [{"label": "a", "add": 1}]}),
        )
        .unwrap();
}

fn add(registry: &Registry, config: Value) -> u64 {
    registry
        .function::<Value, u64>("probe", "add_provider")
        .apply(&config)
        .unwrap()[0]
}

fn values(registry: &Registry) -> Vec<i64> {
    registry
        .function::<i64, i64>("math", "value")
        .apply(&1)
        .unwrap()
}

#[test]
fn providers_added_at_run_time_take_part_in_calls_in_order() {
    let registry = registry(&[]);
    alpha(&registry, &testplug());
    let value = registry.function::<i64, i64>("math", "value");
    assert_eq!(value.apply(&1).unwrap(), vec![2]);

    let b = add(&registry, json!({"label": "b", "add": 10, "priority": 5}));
    assert_eq!(
        value.apply(&1).unwrap(),
        vec![11, 2],
        "higher priority first"
    );
    add(&registry, json!({"label": "c", "add": 100}));
    assert_eq!(
        value.apply(&1).unwrap(),
        vec![11, 2, 101],
        "after the declared ones"
    );
    // A label in use is refused, naming it.
    let err = registry
        .function::<Value, u64>("probe", "add_provider")
        .apply(&json!({"label": "a"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("labelled `a` is already registered"), "{err}");

    assert!(
        registry
            .function::<u64, bool>("probe", "remove_provider")
            .apply(&b)
            .unwrap()[0]
    );
    assert_eq!(value.apply(&1).unwrap(), vec![2, 101]);
    let services = registry.services();
    let math = services.iter().find(|s| s.name == "math").unwrap();
    let providers: Vec<&str> = math
        .functions
        .iter()
        .find(|(name, _)| name == "value")
        .unwrap()
        .1
        .iter()
        .map(|(_, provider)| provider.as_str())
        .collect();
    assert_eq!(providers, vec!["a", "c"]);

    // Each change notified the plugin defining the service.
    let notifications = registry
        .function::<(), Vec<Notification>>("probe", "notifications")
        .apply(&())
        .unwrap()
        .remove(0);
    let changes: Vec<Vec<String>> = notifications
        .iter()
        .filter_map(|n| match n {
            Notification::Providers { service, new, .. } if service == "math" => {
                Some(new.iter().map(|p| p.provider.clone()).collect())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            vec!["a"],
            vec!["a", "b"],
            vec!["a", "b", "c"],
            vec!["a", "c"]
        ],
        "the load, then each change"
    );
}

#[test]
fn a_closure_provider_answers_calls_by_name_and_value_calls() {
    let registry = registry(&[]);
    alpha(&registry, &testplug());
    registry
        .function::<String, u64>("probe", "add_json_provider")
        .apply(&"j".to_string())
        .unwrap();
    let applied = registry
        .apply_json("math", "value", &json!(5), Opts::new())
        .unwrap()
        .to_json(false);
    assert_eq!(applied, json!([6, 1005]));
    let echoed = registry
        .function::<Value, Value>("math", "echo")
        .apply(&json!({"x": [1, 2]}))
        .unwrap();
    assert_eq!(echoed, vec![json!({"x": [1, 2]})]);
    // A typed call with other types: a clear type error for the closure provider only.
    let results = registry
        .function::<i64, i64>("math", "value")
        .apply_with(&5, ApplyOpts::new().ignore_errors())
        .unwrap();
    assert_eq!(results[0].as_ref().unwrap(), &6);
    let err = results[1].as_ref().unwrap_err();
    assert!(
        matches!(&err.failure, Failure::TypeMismatch { found, .. } if found.contains("serde_json::value::Value")),
        "{err}"
    );
}

#[test]
fn added_providers_go_with_their_version_and_come_back_when_it_re_adds_them() {
    let dir = plugin_dir();
    let path = write_file(dir.path(), "alpha.so", &build(1));
    let registry = registry(&[]);
    alpha(&registry, &path);
    add(&registry, json!({"label": "b", "add": 10}));
    assert_eq!(values(&registry), vec![2, 11]);
    // The new version re-adds what the old one handed over.
    publish_by_rename(&path, &build(2));
    assert!(matches!(
        registry.upgrade(&path).unwrap(),
        Upgrade::Replaced { .. }
    ));
    assert_eq!(values(&registry), vec![2, 11]);
    assert_eq!(
        registry
            .function::<(), Vec<String>>("probe", "added")
            .apply(&())
            .unwrap()[0],
        vec!["b"]
    );
    // Unloaded: its added providers go with it.
    registry.unload("alpha");
    assert!(registry.services().iter().all(|s| s.name != "math"));
}

#[test]
fn a_hundred_callers_see_only_providers_registered_while_another_churns() {
    const CYCLES: u64 = 10_000;
    let registry = registry(&[]);
    alpha(&registry, &testplug());
    let value = registry.function::<i64, i64>("math", "value");
    let done = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let value = value.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let (mut calls, mut with_added, mut last) = (0u64, 0u64, 0i64);
                while !done.load(Ordering::Relaxed) {
                    let answers = value.apply(&0).expect("no call fails");
                    calls += 1;
                    assert_eq!(answers[0], 1, "the declared provider answers first");
                    match answers[1..] {
                        [] => {}
                        [k] => {
                            // churn-k answers k; registrations only move forward.
                            assert!(
                                (1..=CYCLES as i64).contains(&k) && k >= last,
                                "{k} after {last}"
                            );
                            last = k;
                            with_added += 1;
                        }
                        _ => panic!("at most one added provider is registered: {answers:?}"),
                    }
                    std::thread::yield_now();
                }
                (calls, with_added)
            })
        })
        .collect();
    let churned = registry
        .function::<(u64, String), u64>("probe", "churn")
        .apply(&(CYCLES, "math".to_string()))
        .unwrap();
    done.store(true, Ordering::Relaxed);
    let (mut calls, mut with_added) = (0, 0);
    for caller in callers {
        let (c, w) = caller.join().unwrap();
        calls += c;
        with_added += w;
    }
    assert_eq!(churned, vec![CYCLES]);
    eprintln!("{calls} calls, {with_added} answered by an added provider, 0 failed");
    assert!(calls > 0);
    assert_eq!(
        values(&registry),
        vec![2],
        "every added provider was withdrawn"
    );
}
