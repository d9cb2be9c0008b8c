//! Plugins calling services through the host: same semantics as the host's own calls,
//! re-entrancy, the nesting limit, and an upgrade of the caller in the middle of a nested call.

use std::thread;

use crate::common::*;
use epi::{ApplyOpts, Decision, Opts, PipeOpts, Registry, RegistryConfig, Upgrade};
use serde_json::{json, Value};

/// `caller` (only the probe) and `worker` (three `math` providers, the last failing; data).
fn two_plugins(registry: &Registry, caller: &std::path::Path) {
    registry
        .load_with_config(caller, &json!({"app": "caller"}))
        .unwrap();
    let worker = plugin_dir().keep().join("worker.so");
    std::fs::copy(testplug(), &worker).unwrap();
    registry
        .load_with_config(
            &worker,
            &json!({
                "app": "worker",
                "services": ["math"],
                "providers": [
                    {"label": "a", "add": 1, "truth": true},
                    {"label": "b", "add": 10, "decides": true, "truth": true},
                    {"label": "c", "add": 100, "behaviour": "fail", "truth": false},
                ],
                "data": [{"service": "cfg", "key": "limits", "static": {"max": 3}}],
            }),
        )
        .unwrap();
}

/// Calls `probe.function(args)`: the answer (or the provider's error text) of the caller and
/// of the worker, which must agree (every load provides the probe).
fn relayed<A: epi::Argument, O: epi::Output + PartialEq + std::fmt::Debug>(
    registry: &Registry,
    function: &str,
    args: &A,
) -> Result<O, String> {
    let mut answers: Vec<Result<O, String>> = registry
        .function::<A, O>("probe", function)
        .apply_with(args, ApplyOpts::new().ignore_errors())
        .unwrap()
        .into_iter()
        .map(|answer| answer.map_err(|err| err.to_string()))
        .collect();
    assert_eq!(answers.len(), 2);
    let second = answers.pop().unwrap();
    let first = answers.pop().unwrap();
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(
            a.split_once(':').map(|(_, rest)| rest),
            b.split_once(':').map(|(_, rest)| rest)
        ),
        _ => panic!("the two probes disagree: {first:?} / {second:?}"),
    }
    first
}

fn strings<T>(results: Vec<Result<T, epi::ProviderError>>) -> Vec<Result<T, String>> {
    results
        .into_iter()
        .map(|result| result.map_err(|err| err.to_string()))
        .collect()
}

#[test]
fn a_plugin_calls_services_through_the_host_with_the_host_semantics() {
    let dir = plugin_dir();
    let caller = write_file(dir.path(), "caller.so", &build(1));
    let registry = registry(&[]);
    two_plugins(&registry, &caller);
    let value = registry.function::<i64, i64>("math", "value");

    // Default apply: the first error stops the call, with the same text.
    let host_error = value.apply(&1).unwrap_err().to_string();
    let text = relayed::<i64, Vec<i64>>(&registry, "relay", &1).unwrap_err();
    assert!(text.contains(&host_error), "{text} / {host_error}");

    for opts in [
        ApplyOpts::new().ignore_errors(),
        ApplyOpts::new().ignore_errors().concurrent(),
    ] {
        let expected = strings(value.apply_with(&1, opts).unwrap());
        let got: Result<Vec<Result<i64, String>>, String> =
            relayed(&registry, "relay_with", &(1i64, Opts::from(opts)));
        assert_eq!(got.unwrap(), expected, "{opts:?}");
    }
    let piped: Result<i64, String> = relayed(
        &registry,
        "relay_pipe",
        &(1i64, Opts::new().ignore_errors()),
    );
    assert_eq!(
        piped.unwrap(),
        value.pipe(1, PipeOpts::new().ignore_errors()).unwrap()
    );
    let decided: Result<Decision<String>, String> = relayed(
        &registry,
        "relay_decide",
        &(1i64, Opts::new().ignore_errors()),
    );
    assert_eq!(decided.unwrap(), Decision::Decided("b".into()));
    let check = registry.function::<i64, bool>("math", "check");
    let any_all: Result<(bool, bool), String> = relayed(
        &registry,
        "relay_any_all",
        &(1i64, Opts::new().ignore_errors()),
    );
    assert_eq!(
        any_all.unwrap(),
        (
            check.any(&1, ApplyOpts::new().ignore_errors()).unwrap(),
            check.all(&1, ApplyOpts::new().ignore_errors()).unwrap()
        )
    );
    let configured: Result<bool, String> = relayed(
        &registry,
        "relay_configured",
        &("math".to_string(), "value".to_string()),
    );
    assert!(configured.unwrap());
    let unknown: Result<bool, String> = relayed(
        &registry,
        "relay_configured",
        &("nothing".to_string(), "here".to_string()),
    );
    assert!(!unknown.unwrap());

    // Calls by name with JSON.
    let applied: Result<Value, String> = relayed(
        &registry,
        "relay_json",
        &(
            "math".to_string(),
            "value".to_string(),
            json!(5),
            Opts::new().ignore_errors(),
            false,
        ),
    );
    assert_eq!(
        applied.unwrap(),
        registry
            .apply_json("math", "value", &json!(5), Opts::new().ignore_errors())
            .unwrap()
            .to_json(true)
    );
    let decided: Result<Value, String> = relayed(
        &registry,
        "relay_json",
        &(
            "math".to_string(),
            "decide".to_string(),
            json!(5),
            Opts::new().ignore_errors(),
            true,
        ),
    );
    assert_eq!(decided.unwrap(), json!({"decided": "b"}));
    let unknown: Result<Value, String> = relayed(
        &registry,
        "relay_json",
        &(
            "nothing".to_string(),
            "here".to_string(),
            json!(null),
            Opts::new(),
            false,
        ),
    );
    assert!(unknown.unwrap_err().contains("unknown service `nothing`"));

    // Data queries.
    let data: Result<(Vec<String>, Vec<Value>), String> = relayed(
        &registry,
        "relay_data",
        &("cfg".to_string(), "limits".to_string()),
    );
    assert_eq!(
        data.unwrap(),
        (vec!["limits".to_string()], vec![json!({"max": 3})])
    );
}

#[test]
fn a_call_back_into_the_calling_plugin_does_not_deadlock() {
    let registry = registry(&[]);
    registry.load(testplug()).unwrap();
    let ping = registry.function::<u64, u64>("probe", "ping");
    assert_eq!(ping.apply(&10).unwrap(), vec![11]);

    // Two plugins: every level calls both providers.
    let second = plugin_dir().keep().join("second.so");
    std::fs::copy(testplug(), &second).unwrap();
    registry
        .load_with_config(&second, &json!({"app": "second"}))
        .unwrap();
    assert_eq!(
        ping.apply(&3).unwrap(),
        vec![15, 15],
        "1 + 2 × (1 + 2 × (1 + 2 × 1))"
    );
}

#[test]
fn nesting_past_the_limit_fails_naming_the_chain() {
    let registry = registry_with(RegistryConfig {
        max_call_depth: Some(8),
        ..Default::default()
    });
    registry.load(testplug()).unwrap();
    let ping = registry.function::<u64, u64>("probe", "ping");
    assert_eq!(ping.apply(&7).unwrap(), vec![8], "within the limit");
    let error = ping.apply(&20).unwrap_err().to_string();
    assert!(error.contains("calls nested deeper than 8"), "{error}");
    assert!(
        error.contains(&["probe.ping"; 9].join(" → ")),
        "the chain, outermost first: {error}"
    );

    // The default limit is 32.
    let registry = registry_with(RegistryConfig::default());
    registry.load(testplug()).unwrap();
    let ping = registry.function::<u64, u64>("probe", "ping");
    assert_eq!(ping.apply(&32).unwrap(), vec![33]);
    let error = ping.apply(&40).unwrap_err().to_string();
    assert!(error.contains("nested deeper than 32"), "{error}");
}

#[test]
fn an_upgrade_of_the_caller_in_the_middle_of_a_nested_call_completes() {
    let dir = plugin_dir();
    let caller = write_file(dir.path(), "caller.so", &build(1));
    let registry = registry_with(RegistryConfig {
        count_calls: true,
        ..Default::default()
    });
    two_plugins(&registry, &caller);
    let relay = registry.function::<u64, Vec<String>>("probe", "relay_sleep");
    let running = {
        let relay = relay.clone();
        thread::spawn(move || (relay.apply(&300), std::time::Instant::now()))
    };
    wait_until_called(&registry, "math", "sleep");
    publish_by_rename(&caller, &build(2));
    assert!(matches!(
        registry.upgrade(&caller).unwrap(),
        Upgrade::Replaced { .. }
    ));
    let upgraded = std::time::Instant::now();
    let (answers, ended) = running.join().unwrap();
    assert_eq!(answers.unwrap(), vec![vec!["a", "b", "c"]; 2]);
    assert!(
        ended > upgraded,
        "the nested call ended before the upgrade did"
    );
    // The new version calls through the host as well.
    assert_eq!(relay.apply(&0).unwrap().len(), 2);
}

#[test]
fn process_bodies_and_their_threads_call_through_the_host() {
    let dir = plugin_dir();
    let caller = write_file(dir.path(), "caller.so", &build(1));
    let registry = registry(&[]);
    two_plugins(&registry, &caller);
    let runner = dir.path().join("runner.so");
    std::fs::copy(testplug(), &runner).unwrap();
    registry
        .load_with_config(
            &runner,
            &json!({
                "app": "runner",
                "processes": [{"name": "poller", "call": ["math", "check", 1]}],
            }),
        )
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let called = loop {
        let report = registry.process_report();
        if let Some(called) = report
            .workers
            .get("runner/poller")
            .and_then(|worker| worker.report.get("called").cloned())
            .filter(|called| !called.is_null())
        {
            break called;
        }
        assert!(std::time::Instant::now() < deadline, "{report:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // Provider `c` fails: the same error as the host's own call, from both threads.
    let expected = registry
        .apply_json("math", "check", &json!(1), Opts::new())
        .unwrap_err()
        .to_string();
    assert_eq!(called, json!([{"Err": expected}, {"Err": expected}]));
    registry.stop_processes();
}
