//! The semantics of apply, decide, pipe, any and all over real plugin libraries.

use std::sync::Arc;

use crate::common::*;
use epi::{ApplyOpts, DecideOpts, Decision, Error, Failure, Opts, PipeOpts, RegistryConfig};
use serde_json::json;

fn calls(registry: &epi::Registry) -> Vec<u64> {
    registry
        .function::<(), u64>("math", "calls")
        .apply(&())
        .unwrap()
}

#[test]
fn apply_returns_every_result_in_provider_order() {
    let registry = three(["ok", "ok", "ok"]);
    let value = registry.function::<i64, i64>("math", "value");
    assert_eq!(value.apply(&1).unwrap(), vec![2, 11, 101]);
    // Same through a service handle with the function named per call.
    let math = registry.service("math");
    assert_eq!(
        math.apply::<i64, i64>("value", &2).unwrap(),
        vec![3, 12, 102]
    );
}

#[test]
fn order_follows_configuration_then_app_name() {
    let registry = registry(&["gamma", "alpha"]);
    for app in ["beta", "alpha", "zeta", "gamma"] {
        load_testplug(&registry, app, json!([{"label": app}]));
    }
    let labels = registry.function::<(), String>("math", "label");
    assert_eq!(
        labels.apply(&()).unwrap(),
        vec!["gamma", "alpha", "beta", "zeta"]
    );
    let apps: Vec<String> = registry.plugins().into_iter().map(|p| p.app).collect();
    assert_eq!(apps, vec!["gamma", "alpha", "beta", "zeta"]);
}

#[test]
fn priorities_override_order_and_ties_keep_declaration_order() {
    let registry = registry_with(RegistryConfig {
        order: vec!["first".into(), "second".into(), "third".into()],
        priorities: [("third".to_string(), 5)].into_iter().collect(),
        ..Default::default()
    });
    // first: two providers, the second with an explicit priority 10.
    load_testplug(
        &registry,
        "first",
        json!([{"label": "f1"}, {"label": "f2", "priority": 10}, {"label": "f3"}]),
    );
    // second: declares plugin priority 5 itself.
    load_testplug_config(
        &registry,
        json!({"app": "second", "priority": 5, "providers": [{"label": "s1"}, {"label": "s2"}]}),
    );
    // third: priority 5 from the host's configuration (it declares none).
    load_testplug(&registry, "third", json!([{"label": "t1"}]));
    let labels = registry.function::<(), String>("math", "label");
    assert_eq!(
        labels.apply(&()).unwrap(),
        vec!["f2", "s1", "s2", "t1", "f1", "f3"]
    );
    // Deterministic: the same answer every time.
    for _ in 0..10 {
        assert_eq!(labels.apply(&()).unwrap()[0], "f2");
    }
}

#[test]
fn first_error_stops_apply_and_names_plugin_provider_and_function() {
    let registry = three(["ok", "fail", "ok"]);
    let value = registry.function::<i64, i64>("math", "value");
    let err = value.apply(&1).unwrap_err();
    let Error::Provider(provider) = &err else {
        panic!("expected a provider error, got {err}")
    };
    assert_eq!(&*provider.plugin, "beta");
    assert_eq!(&*provider.provider, "beta-p");
    assert_eq!(&*provider.service, "math");
    assert_eq!(&*provider.function, "value");
    assert_eq!(provider.failure, Failure::Failed("beta-p refused".into()));
    let text = err.to_string();
    assert!(
        text.contains("beta") && text.contains("math.value"),
        "{text}"
    );
    assert_eq!(calls(&registry), vec![1, 1, 0], "gamma must not be called");
    // apply_with without ignore_errors behaves the same.
    assert!(value.apply_with(&1, ApplyOpts::new()).is_err());
    assert_eq!(calls(&registry), vec![2, 2, 0]);
}

#[test]
fn ignore_errors_calls_everyone_and_keeps_failures_in_place() {
    let registry = three(["ok", "fail", "ok"]);
    let value = registry.function::<i64, i64>("math", "value");
    let results = value
        .apply_with(&1, ApplyOpts::new().ignore_errors())
        .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], Ok(2));
    assert_eq!(&*results[1].as_ref().unwrap_err().plugin, "beta");
    assert_eq!(results[2], Ok(101));
}

#[test]
fn a_panicking_provider_becomes_an_error_and_the_host_lives() {
    let registry = three(["ok", "panic", "ok"]);
    let value = registry.function::<i64, i64>("math", "value");
    for _ in 0..3 {
        let err = value.apply(&1).unwrap_err();
        let Error::Provider(provider) = &err else {
            panic!("{err}")
        };
        assert_eq!(&*provider.plugin, "beta");
        assert_eq!(
            provider.failure,
            Failure::Panicked("beta-p panicked on purpose".into())
        );
    }
    let results = value
        .apply_with(&1, ApplyOpts::new().ignore_errors())
        .unwrap();
    assert!(matches!(
        &results[1],
        Err(e) if matches!(e.failure, Failure::Panicked(_))
    ));
    assert_eq!((results[0].clone(), results[2].clone()), (Ok(2), Ok(101)));
}

#[test]
fn concurrent_runs_providers_in_parallel_and_keeps_order() {
    let registry = registry_with(RegistryConfig {
        concurrency: Some(4),
        ..Default::default()
    });
    let labels: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    let providers: Vec<_> = labels.iter().map(|l| json!({"label": l})).collect();
    load_testplug(&registry, "par", json!(providers));
    // Each provider waits until all four are inside the call at the same time: only a parallel
    // run can answer `true` for all of them (a sequential one times out and answers false).
    let meet = registry.function::<(u32, u64), bool>("math", "rendezvous");
    let together = meet
        .apply_with(&(4, 10_000), ApplyOpts::new().concurrent())
        .unwrap();
    assert_eq!(together, vec![Ok(true), Ok(true), Ok(true), Ok(true)]);
    // Results come back in provider order.
    let sleep = registry.function::<u64, String>("math", "sleep");
    let order: Vec<String> = sleep
        .apply_with(&5, ApplyOpts::new().concurrent())
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(order, labels);
}

#[test]
fn concurrent_reports_the_first_error_in_provider_order() {
    let registry = three(["ok", "fail", "panic"]);
    let value = registry.function::<i64, i64>("math", "value");
    let err = value
        .apply_with(&1, ApplyOpts::new().concurrent())
        .unwrap_err();
    assert!(err.to_string().contains("beta"), "{err}");
    let results = value
        .apply_with(&1, ApplyOpts::new().concurrent().ignore_errors())
        .unwrap();
    assert_eq!(results[0], Ok(2));
    assert!(results[1].is_err() && results[2].is_err());
    assert_eq!(calls(&registry), vec![2, 2, 2], "everyone ran both times");
}

#[test]
fn pipe_feeds_each_output_to_the_next() {
    let registry = three(["ok", "ok", "ok"]);
    let value = registry.function::<i64, i64>("math", "value");
    assert_eq!(value.pipe(1, PipeOpts::new()).unwrap(), 112);
    assert_eq!(
        registry
            .service("math")
            .pipe("value", 5i64, PipeOpts::new())
            .unwrap(),
        116
    );
}

#[test]
fn pipe_without_providers_returns_the_input() {
    let registry = registry(&[]);
    load_testplug(&registry, "empty", json!([]));
    let value = registry.function::<i64, i64>("math", "value");
    assert_eq!(value.pipe(42, PipeOpts::new()).unwrap(), 42);
}

#[test]
fn pipe_with_ignore_errors_skips_a_failing_provider() {
    let registry = three(["ok", "fail", "ok"]);
    let value = registry.function::<i64, i64>("math", "value");
    assert_eq!(value.pipe(1, PipeOpts::new().ignore_errors()).unwrap(), 102);
    let err = value.pipe(1, PipeOpts::new()).unwrap_err();
    assert!(err.to_string().contains("beta"), "{err}");
}

#[test]
fn pipe_through_a_wrongly_typed_provider_is_a_clear_error() {
    let registry = registry(&["a", "b"]);
    load_testplug(&registry, "a", json!([{"label": "num", "add": 1}]));
    load_testplug(&registry, "b", json!([{"label": "txt", "kind": "text"}]));
    let value = registry.function::<i64, i64>("math", "value");
    let err = value.pipe(1, PipeOpts::new()).unwrap_err();
    let Error::Provider(provider) = &err else {
        panic!("{err}")
    };
    assert_eq!(&*provider.plugin, "b");
    assert!(
        matches!(&provider.failure, Failure::TypeMismatch { found, .. } if found.contains("String")),
        "{err}"
    );
    assert_eq!(calls(&registry), vec![0], "refused before any provider ran");
    // With ignore_errors the mismatched provider is skipped.
    assert_eq!(value.pipe(1, PipeOpts::new().ignore_errors()).unwrap(), 2);
}

#[test]
fn concurrent_and_pipe_by_name_are_refused_before_any_provider_runs() {
    // Typed calls cannot express these combinations (`PipeOpts` has no `concurrent`,
    // `ApplyOpts` no `pipe`: see the compile_fail examples in `epi_plugin::opts`); options
    // that arrive as data can.
    let registry = three(["ok", "ok", "ok"]);
    let err = registry
        .apply_json("math", "value", &json!(1), Opts::new().concurrent().pipe())
        .unwrap_err();
    assert!(matches!(err, Error::IncompatibleOptions(_)), "{err}");
    assert_eq!(calls(&registry), vec![0, 0, 0]);
}

#[test]
fn unknown_service_and_unprovided_function() {
    let registry = three(["ok", "ok", "ok"]);
    let err = registry
        .function::<i64, i64>("nobody-defines-this", "value")
        .apply(&1)
        .unwrap_err();
    assert_eq!(err, Error::UnknownService("nobody-defines-this".into()));
    assert!(err.to_string().contains("nobody-defines-this"));
    let missing = registry.function::<i64, i64>("math", "no_such_function");
    assert_eq!(missing.apply(&1).unwrap(), Vec::<i64>::new());
    let decide = registry.function::<i64, Decision<String>>("math", "no_such_function");
    assert_eq!(
        decide.decide(&1, DecideOpts::new()).unwrap(),
        Decision::NoDecision
    );
    assert!(!registry.service("math").is_configured("no_such_function"));
    assert!(registry.service("math").is_configured("value"));
    assert!(registry.service("math").is_declared());
    assert!(!registry.service("nobody-defines-this").is_declared());
    assert!(!missing.is_configured());
}

#[test]
fn decide_stops_at_the_first_decision() {
    let registry = registry(&["a", "b", "c"]);
    load_testplug(&registry, "a", json!([{"label": "a"}]));
    load_testplug(&registry, "b", json!([{"label": "b", "decides": true}]));
    load_testplug(&registry, "c", json!([{"label": "c", "decides": true}]));
    let decide = registry.function::<i64, Decision<String>>("math", "decide");
    assert_eq!(
        decide.decide(&0, DecideOpts::new()).unwrap(),
        Decision::Decided("b".into())
    );
    assert_eq!(calls(&registry), vec![1, 1, 0], "c is never asked");
    let by_name = registry
        .service("math")
        .decide::<i64, String>("decide", &0, DecideOpts::new())
        .unwrap();
    assert_eq!(by_name, Decision::Decided("b".into()));
}

#[test]
fn decide_without_a_decision() {
    let registry = registry(&[]);
    load_testplug(&registry, "a", json!([{"label": "a"}, {"label": "b"}]));
    let decide = registry.function::<i64, Decision<String>>("math", "decide");
    assert_eq!(
        decide.decide(&0, DecideOpts::new()).unwrap(),
        Decision::NoDecision
    );
}

#[test]
fn decide_errors_stop_unless_ignored() {
    let registry = registry(&["a", "b"]);
    load_testplug(
        &registry,
        "a",
        json!([{"label": "a", "behaviour": "panic"}]),
    );
    load_testplug(&registry, "b", json!([{"label": "b", "decides": true}]));
    let decide = registry.function::<i64, Decision<String>>("math", "decide");
    let err = decide.decide(&0, DecideOpts::new()).unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
    assert_eq!(
        decide
            .decide(&0, DecideOpts::new().ignore_errors())
            .unwrap(),
        Decision::Decided("b".into())
    );
    for opts in [Opts::new().concurrent(), Opts::new().pipe()] {
        let err = registry
            .decide_json("math", "decide", &json!(0), opts)
            .unwrap_err();
        assert!(
            matches!(err, Error::IncompatibleOptions(_)),
            "{opts:?}: {err}"
        );
    }
}

#[test]
fn any_and_all() {
    let registry = registry(&["a", "b"]);
    load_testplug(&registry, "a", json!([{"label": "a", "truth": true}]));
    load_testplug(&registry, "b", json!([{"label": "b", "truth": false}]));
    let check = registry.function::<i64, bool>("math", "check");
    assert!(check.any(&0, ApplyOpts::new()).unwrap());
    assert!(!check.all(&0, ApplyOpts::new()).unwrap());
    registry.unload("b");
    assert!(check.all(&0, ApplyOpts::new()).unwrap());
    let math = registry.service("math");
    assert!(math.any("check", &0i64, ApplyOpts::new()).unwrap());
    // No providers: any is false, all is true (the empty conjunction, as couch_epi's
    // `[] == [R || R <- Replies, R == false]`).
    assert!(!math.any("nothing", &0i64, ApplyOpts::new()).unwrap());
    assert!(math.all("nothing", &0i64, ApplyOpts::new()).unwrap());
}

#[test]
fn a_call_with_the_wrong_types_is_refused_naming_the_provider() {
    let registry = three(["ok", "ok", "ok"]);
    let wrong = registry.function::<String, i64>("math", "value");
    let err = wrong.apply(&"one".to_string()).unwrap_err();
    let Error::Provider(provider) = &err else {
        panic!("{err}")
    };
    assert_eq!(&*provider.plugin, "alpha");
    let text = err.to_string();
    assert!(
        text.contains("alloc::string::String") && text.contains("i64"),
        "{text}"
    );
    assert_eq!(calls(&registry), vec![0, 0, 0]);
}

#[test]
fn several_arguments_travel_as_a_tuple() {
    let registry = registry(&[]);
    load_testplug(&registry, "t", json!([{"label": "t", "add": 1}]));
    let scale = registry.function::<(i64, i64), i64>("math", "scale");
    assert_eq!(scale.apply(&(6, 7)).unwrap(), vec![43]);
}

#[test]
fn a_call_in_flight_finishes_on_the_plugin_being_unloaded() {
    let registry = registry_with(RegistryConfig {
        count_calls: true,
        ..Default::default()
    });
    load_testplug(&registry, "slow", json!([{"label": "slow"}]));
    let sleep = Arc::new(registry.function::<u64, String>("math", "sleep"));
    let call = {
        let sleep = sleep.clone();
        std::thread::spawn(move || (sleep.apply(&300), std::time::Instant::now()))
    };
    wait_until_called(&registry, "math", "sleep");
    assert!(registry.unload("slow"));
    let unloaded = std::time::Instant::now();
    let (answer, ended) = call.join().unwrap();
    assert_eq!(answer.unwrap(), vec!["slow".to_string()]);
    assert!(ended > unloaded, "the call ended before the unload did");
    assert!(matches!(sleep.apply(&0), Err(Error::UnknownService(_))));
}

#[test]
fn an_app_listed_twice_in_the_order_takes_its_first_place() {
    let registry = registry(&["b", "a", "b"]);
    load_testplug(&registry, "a", json!([{"label": "a"}]));
    load_testplug(&registry, "b", json!([{"label": "b"}]));
    load_testplug(&registry, "c", json!([{"label": "c"}]));
    let order = registry
        .function::<(), String>("math", "label")
        .apply(&())
        .unwrap();
    assert_eq!(order, ["b", "a", "c"]);
}

#[test]
fn answers_say_which_provider_gave_each_result_and_who_decided() {
    let registry = three(["ok", "fail", "ok"]);
    let value = registry.function::<i64, i64>("math", "value");
    let answers = value
        .apply_answers(&1, ApplyOpts::new().ignore_errors())
        .unwrap();
    let who: Vec<(&str, &str, Option<i64>)> = answers
        .iter()
        .map(|a| (&*a.plugin, &*a.provider, a.result.as_ref().ok().copied()))
        .collect();
    assert_eq!(
        who,
        vec![
            ("alpha", "alpha-p", Some(2)),
            ("beta", "beta-p", None),
            ("gamma", "gamma-p", Some(101)),
        ]
    );
    // Without ignore_errors the first failure is the call's error, as for apply.
    let err = value.apply_answers(&1, ApplyOpts::new()).unwrap_err();
    assert!(err.to_string().contains("beta-p"), "{err}");
    // Concurrently, the same answers in provider order.
    let concurrent = value
        .apply_answers(&1, ApplyOpts::new().ignore_errors().concurrent())
        .unwrap();
    assert_eq!(concurrent, answers);

    let decide = registry.function::<i64, Decision<String>>("math", "decide");
    let decided = decide
        .decide_answer(&1, DecideOpts::new().ignore_errors())
        .unwrap()
        .unwrap();
    assert_eq!((&*decided.plugin, &*decided.provider), ("gamma", "gamma-p"));
    assert_eq!(decided.result.unwrap(), "gamma-p");
    registry.unload("gamma");
    assert_eq!(
        decide
            .decide_answer(&1, DecideOpts::new().ignore_errors())
            .unwrap(),
        None
    );
}

#[test]
fn try_function_refuses_a_service_no_plugin_defines() {
    let registry = three(["ok", "ok", "ok"]);
    assert!(matches!(
        registry.try_function::<i64, i64>("nothing", "value"),
        Err(Error::UnknownService(name)) if &*name == "nothing"
    ));
    let value = registry.try_function::<i64, i64>("math", "value").unwrap();
    assert_eq!(value.apply(&1).unwrap(), vec![2, 11, 101]);
}
