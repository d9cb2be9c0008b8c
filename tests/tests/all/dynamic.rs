//! Calls by name with JSON values (the path the CLI and HTTP use).

use crate::common::*;
use epi::{Applied, Decision, Error, Failure, Opts};
use serde_json::json;

#[test]
fn apply_json_returns_values_in_order() {
    let registry = three(["ok", "ok", "ok"]);
    let applied = registry
        .apply_json("math", "value", &json!(1), Opts::new())
        .unwrap();
    assert_eq!(applied.to_json(false), json!([2, 11, 101]));
    let Applied::Each(replies) = applied else {
        panic!("not a list")
    };
    let plugins: Vec<&str> = replies.iter().map(|r| r.plugin.as_str()).collect();
    assert_eq!(plugins, vec!["alpha", "beta", "gamma"]);
}

#[test]
fn apply_json_with_ignore_errors_reports_each_provider() {
    let registry = three(["ok", "panic", "ok"]);
    let err = registry
        .apply_json("math", "value", &json!(1), Opts::new())
        .unwrap_err();
    assert!(err.to_string().contains("beta"), "{err}");
    let applied = registry
        .apply_json("math", "value", &json!(1), Opts::new().ignore_errors())
        .unwrap();
    let detailed = applied.to_json(true);
    assert_eq!(
        detailed[0],
        json!({"plugin": "alpha", "provider": "alpha-p", "ok": 2})
    );
    assert!(detailed[1]["error"].as_str().unwrap().contains("panicked"));
    assert_eq!(detailed[2]["ok"], json!(101));
}

#[test]
fn apply_json_concurrent_keeps_order() {
    let registry = three(["ok", "ok", "ok"]);
    let applied = registry
        .apply_json("math", "value", &json!(5), Opts::new().concurrent())
        .unwrap();
    assert_eq!(applied.to_json(false), json!([6, 15, 105]));
}

#[test]
fn bad_arguments_are_a_clear_error() {
    let registry = three(["ok", "ok", "ok"]);
    let err = registry
        .apply_json("math", "value", &json!({"not": "a number"}), Opts::new())
        .unwrap_err();
    let Error::Provider(provider) = &err else {
        panic!("{err}")
    };
    assert_eq!(&*provider.function, "value");
    assert!(
        matches!(&provider.failure, Failure::BadInput(reason) if reason.contains("i64")),
        "{err}"
    );
}

#[test]
fn pipe_json_passes_values_along() {
    let registry = three(["ok", "ok", "ok"]);
    let applied = registry
        .apply_json("math", "value", &json!(1), Opts::new().pipe())
        .unwrap();
    assert_eq!(applied, Applied::Piped(json!(112)));
    let skipped = three(["ok", "fail", "ok"])
        .apply_json(
            "math",
            "value",
            &json!(1),
            Opts::new().pipe().ignore_errors(),
        )
        .unwrap();
    assert_eq!(skipped, Applied::Piped(json!(102)));
}

#[test]
fn pipe_json_with_wrong_shaped_output_names_the_provider() {
    let registry = registry(&["a", "b", "c"]);
    load_testplug(&registry, "a", json!([{"label": "num"}]));
    load_testplug(&registry, "b", json!([{"label": "txt", "kind": "text"}]));
    load_testplug(&registry, "c", json!([{"label": "after"}]));
    let err = registry
        .apply_json("math", "value", &json!(1), Opts::new().pipe())
        .unwrap_err();
    let Error::Provider(provider) = &err else {
        panic!("{err}")
    };
    assert_eq!(&*provider.plugin, "c");
    assert!(
        matches!(&provider.failure, Failure::BadInput(reason) if reason.contains("previous provider's output")),
        "{err}"
    );
}

#[test]
fn pipe_json_without_providers_returns_the_input() {
    let registry = registry(&[]);
    load_testplug(&registry, "empty", json!([]));
    let applied = registry
        .apply_json(
            "math",
            "value",
            &json!({"any": ["shape"]}),
            Opts::new().pipe(),
        )
        .unwrap();
    assert_eq!(applied, Applied::Piped(json!({"any": ["shape"]})));
}

#[test]
fn decide_json() {
    let registry = three(["ok", "ok", "ok"]);
    assert_eq!(
        registry
            .decide_json("math", "decide", &json!(0), Opts::new())
            .unwrap(),
        Decision::Decided(json!("gamma-p"))
    );
    let failing = three(["fail", "ok", "ok"]);
    assert!(failing
        .decide_json("math", "decide", &json!(0), Opts::new())
        .is_err());
    assert_eq!(
        failing
            .decide_json("math", "decide", &json!(0), Opts::new().ignore_errors())
            .unwrap(),
        Decision::Decided(json!("gamma-p"))
    );
}

#[test]
fn unknown_service_by_name() {
    let registry = three(["ok", "ok", "ok"]);
    let err = registry
        .apply_json("nope", "value", &json!(1), Opts::new())
        .unwrap_err();
    assert_eq!(err, Error::UnknownService("nope".into()));
}

#[test]
fn options_deserialise_from_json() {
    let opts: Opts = serde_json::from_value(json!({"ignore_errors": true})).unwrap();
    assert_eq!(opts, Opts::new().ignore_errors());
    assert!(serde_json::from_value::<Opts>(json!({"ignore_erors": true})).is_err());
}
