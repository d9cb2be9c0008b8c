//! The views' JSON, pinned: each expected string is what epi-core's own serde wrote for the
//! same values before the views replaced it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::*;

fn plugin(app: &str, version: &str, call_path: epi::CallPath) -> epi::PluginInfo {
    epi::PluginInfo {
        app: app.to_owned(),
        version: version.to_owned(),
        file: PathBuf::from(format!("/plugins/lib{app}.so")),
        content_hash: 0x0123_4567_89ab_cdef,
        priority: -3,
        services: vec!["greeting".to_owned()],
        call_path,
        build: "rustc 1.85.0 x86_64-unknown-linux-gnu epi 0.1.0".to_owned(),
        processes: vec!["ticker".to_owned()],
    }
}

fn status() -> epi::RegistryStatus {
    epi::RegistryStatus {
        plugins: vec![
            plugin("hello", "1.0.0", epi::CallPath::Native),
            plugin("fr", "2.0.0", epi::CallPath::Isolated),
        ],
        files: vec![
            epi::FileStatus {
                path: "/plugins/libhello.so".into(),
                app: Some("hello".to_owned()),
                error: None,
            },
            epi::FileStatus {
                path: "/plugins/libbad.so".into(),
                app: None,
                error: Some("not \"loadable\"".to_owned()),
            },
        ],
        retired_mapped: 1,
        retired_kept: 2,
        retired_total: 3,
    }
}

fn upgrades() -> Vec<epi::Upgrade> {
    vec![
        epi::Upgrade::Unchanged,
        epi::Upgrade::Loaded(plugin("hello", "1.0.0", epi::CallPath::Stable)),
        epi::Upgrade::Replaced {
            old: plugin("hello", "1.0.0", epi::CallPath::Native),
            new: plugin("hello", "1.1.0", epi::CallPath::Stable),
        },
        epi::Upgrade::Removed(plugin("fr", "2.0.0", epi::CallPath::Native)),
    ]
}

fn service_list() -> Vec<epi::ServiceInfo> {
    vec![
        epi::ServiceInfo {
            name: "greeting".to_owned(),
            declared: true,
            functions: vec![
                (
                    "greet".to_owned(),
                    vec![
                        ("hello".to_owned(), "Hello".to_owned()),
                        ("fr".to_owned(), "Bonjour".to_owned()),
                    ],
                ),
                ("language".to_owned(), vec![]),
            ],
        },
        epi::ServiceInfo {
            name: "math".to_owned(),
            declared: false,
            functions: vec![],
        },
    ]
}

fn counter_list() -> Vec<epi::ProviderCounters> {
    vec![epi::ProviderCounters {
        plugin: "hello".to_owned(),
        provider: "Hello".to_owned(),
        service: "greeting".to_owned(),
        function: "greet".to_owned(),
        added: true,
        calls: 7,
        errors: 2,
        panics: 1,
        latency: epi::LatencyCounts {
            buckets: vec![1, 0, 4],
            sum_ns: 1_500,
        },
    }]
}

fn data_list() -> Vec<epi::DataStatus> {
    vec![
        epi::DataStatus {
            service: "config".to_owned(),
            key: "limits".to_owned(),
            source: "hello".to_owned(),
            kind: epi::SourceKind::File,
            path: Some("/etc/epi/limits.toml".into()),
            interval: Some(Duration::from_millis(5_250)),
            hash: Some(u64::MAX),
            error: Some("limits.toml:3: expected `=`".to_owned()),
            checked_at: Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 500)),
        },
        epi::DataStatus {
            service: "config".to_owned(),
            key: "*".to_owned(),
            source: "fr".to_owned(),
            kind: epi::SourceKind::Static,
            path: None,
            interval: None,
            hash: None,
            error: None,
            checked_at: None,
        },
        epi::DataStatus {
            service: "config".to_owned(),
            key: "live".to_owned(),
            source: "fr".to_owned(),
            kind: epi::SourceKind::Callback,
            path: None,
            interval: Some(Duration::from_secs(5)),
            hash: Some(42),
            error: None,
            checked_at: None,
        },
    ]
}

fn report() -> epi::EngineReport {
    use epi::engine::WorkerError as E;
    let worker = |state, last_error, report| epi::WorkerReport {
        state,
        inputs: vec!["hello/config".to_owned()],
        start_count: 3,
        attempts: 4,
        started_at: Some(Duration::from_millis(1_500)),
        last_error,
        report,
    };
    let mut workers = BTreeMap::new();
    workers.insert(
        "hello/ticker".to_owned(),
        worker(epi::WorkerState::Started, None, json!({"pid": 12})),
    );
    workers.insert(
        "a/missing".to_owned(),
        worker(epi::WorkerState::Stopped, Some(E::Missing), Value::Null),
    );
    workers.insert(
        "b/bounce".to_owned(),
        worker(epi::WorkerState::Starting, Some(E::Bounce), Value::Null),
    );
    workers.insert(
        "c/uninstall".to_owned(),
        worker(epi::WorkerState::Stopping, Some(E::Uninstall), Value::Null),
    );
    workers.insert(
        "d/failed".to_owned(),
        worker(
            epi::WorkerState::Stopped,
            Some(E::Failed("no socket".to_owned())),
            Value::Null,
        ),
    );
    epi::EngineReport {
        state: "stopping",
        error: Some(E::Fatal("disk full".to_owned())),
        workers,
    }
}

fn data_reload() -> epi::DataReload {
    epi::DataReload {
        notified: 2,
        failed: data_list().into_iter().take(1).collect(),
    }
}

fn named(name: &str, value: Value) -> epi::Named {
    epi::Named {
        name: Arc::from(name),
        value: Arc::new(value),
    }
}

fn group(name: &str, members: Vec<epi::Named>) -> epi::Group {
    epi::Group {
        name: Arc::from(name),
        members,
    }
}

fn pair_list() -> Vec<epi::Named> {
    vec![
        named("hello", json!({"max": 3, "ratio": 0.5})),
        named("fr", json!(["a", null, true])),
    ]
}

fn group_list() -> Vec<epi::Group> {
    vec![
        group("zeta", pair_list()),
        group("alpha", vec![named("fr", json!("x"))]),
        group("mid", vec![]),
    ]
}

fn text(view: impl serde::Serialize) -> String {
    serde_json::to_string(&view).unwrap()
}

#[test]
fn status_is_the_registry_status() {
    let status = status();
    assert_eq!(
        text(Status::from(&status)),
        r#"{"plugins":[{"app":"hello","version":"1.0.0","file":"/plugins/libhello.so","content_hash":81985529216486895,"priority":-3,"services":["greeting"],"call_path":"native","build":"rustc 1.85.0 x86_64-unknown-linux-gnu epi 0.1.0","processes":["ticker"]},{"app":"fr","version":"2.0.0","file":"/plugins/libfr.so","content_hash":81985529216486895,"priority":-3,"services":["greeting"],"call_path":"isolated","build":"rustc 1.85.0 x86_64-unknown-linux-gnu epi 0.1.0","processes":["ticker"]}],"files":[{"path":"/plugins/libhello.so","app":"hello","error":null},{"path":"/plugins/libbad.so","app":null,"error":"not \"loadable\""}],"retired_mapped":1,"retired_kept":2,"retired_total":3}"#
    );
}

#[test]
fn upgrades_are_tagged_by_outcome() {
    let upgrades = upgrades();
    let views: Vec<Upgrade> = upgrades.iter().map(Upgrade::from).collect();
    assert_eq!(
        text(views),
        r#"[{"outcome":"unchanged"},{"outcome":"loaded","app":"hello","version":"1.0.0","file":"/plugins/libhello.so","content_hash":81985529216486895,"priority":-3,"services":["greeting"],"call_path":"stable","build":"rustc 1.85.0 x86_64-unknown-linux-gnu epi 0.1.0","processes":["ticker"]},{"outcome":"replaced","old":{"app":"hello","version":"1.0.0","file":"/plugins/libhello.so","content_hash":81985529216486895,"priority":-3,"services":["greeting"],"call_path":"native","build":"rustc 1.85.0 x86_64-unknown-linux-gnu epi 0.1.0","processes":["ticker"]},"new":{"app":"hello","version":"1.1.0","file":"/plugins/libhello.so","content_hash":81985529216486895,"priority":-3,"services":["greeting"],"call_path":"stable","build":"rustc 1.85.0 x86_64-unknown-linux-gnu epi 0.1.0","processes":["ticker"]}},{"outcome":"removed","app":"fr","version":"2.0.0","file":"/plugins/libfr.so","content_hash":81985529216486895,"priority":-3,"services":["greeting"],"call_path":"native","build":"rustc 1.85.0 x86_64-unknown-linux-gnu epi 0.1.0","processes":["ticker"]}]"#
    );
}

#[test]
fn services_list_functions_and_providers_as_arrays() {
    let list = service_list();
    assert_eq!(
        text(services(&list)),
        r#"[{"name":"greeting","declared":true,"functions":[["greet",[["hello","Hello"],["fr","Bonjour"]]],["language",[]]]},{"name":"math","declared":false,"functions":[]}]"#
    );
}

#[test]
fn counters_carry_their_latency() {
    let list = counter_list();
    assert_eq!(
        text(counters(&list)),
        r#"[{"plugin":"hello","provider":"Hello","service":"greeting","function":"greet","added":true,"calls":7,"errors":2,"panics":1,"latency":{"buckets":[1,0,4],"sum_ns":1500}}]"#
    );
}

#[test]
fn data_status_writes_durations_and_times_as_serde_does() {
    let list = data_list();
    assert_eq!(
        text(data_status(&list)),
        r#"[{"service":"config","key":"limits","source":"hello","kind":"file","path":"/etc/epi/limits.toml","interval":{"secs":5,"nanos":250000000},"hash":18446744073709551615,"error":"limits.toml:3: expected `=`","checked_at":{"secs_since_epoch":1700000000,"nanos_since_epoch":500}},{"service":"config","key":"*","source":"fr","kind":"static","path":null,"interval":null,"hash":null,"error":null,"checked_at":null},{"service":"config","key":"live","source":"fr","kind":"callback","path":null,"interval":{"secs":5,"nanos":0},"hash":42,"error":null,"checked_at":null}]"#
    );
}

#[test]
fn processes_spell_states_and_errors_as_the_engine_does() {
    let report = report();
    assert_eq!(
        text(Processes::from(&report)),
        r#"{"state":"stopping","error":{"kind":"fatal","message":"disk full"},"workers":{"a/missing":{"state":"stopped","inputs":["hello/config"],"start_count":3,"attempts":4,"started_at":{"secs":1,"nanos":500000000},"last_error":{"kind":"missing"},"report":null},"b/bounce":{"state":"starting","inputs":["hello/config"],"start_count":3,"attempts":4,"started_at":{"secs":1,"nanos":500000000},"last_error":{"kind":"bounce"},"report":null},"c/uninstall":{"state":"stopping","inputs":["hello/config"],"start_count":3,"attempts":4,"started_at":{"secs":1,"nanos":500000000},"last_error":{"kind":"uninstall"},"report":null},"d/failed":{"state":"stopped","inputs":["hello/config"],"start_count":3,"attempts":4,"started_at":{"secs":1,"nanos":500000000},"last_error":{"kind":"failed","message":"no socket"},"report":null},"hello/ticker":{"state":"started","inputs":["hello/config"],"start_count":3,"attempts":4,"started_at":{"secs":1,"nanos":500000000},"last_error":null,"report":{"pid":12}}}}"#
    );
}

#[test]
fn decisions_are_results() {
    let none = epi::Decision::NoDecision;
    let decided = epi::Decision::Decided(json!({"a": 1}));
    for (decision, expected) in [
        (none, r#"{"result":"no_decision"}"#),
        (decided, r#"{"result":{"decided":{"a":1}}}"#),
    ] {
        let view = Called {
            result: Decision::from(&decision),
        };
        assert_eq!(text(view), expected);
    }
}

#[test]
fn data_queries_are_pairs_and_groups_sorted_by_name() {
    let pairs = pair_list();
    assert_eq!(
        text(data_pairs(&pairs)),
        r#"[["hello",{"max":3,"ratio":0.5}],["fr",["a",null,true]]]"#
    );
    let groups = group_list();
    assert_eq!(
        text(data_groups(&groups)),
        r#"{"alpha":[["fr","x"]],"mid":[],"zeta":[["hello",{"max":3,"ratio":0.5}],["fr",["a",null,true]]]}"#
    );
    let keys: Arc<[Arc<str>]> = vec![Arc::from("a"), Arc::from("b*")].into();
    assert_eq!(text(data_keys(&keys)), r#"["a","b*"]"#);
    let values = vec![Arc::new(json!(1)), Arc::new(json!({"x": "y"}))];
    assert_eq!(text(data_values(&values)), r#"[1,{"x":"y"}]"#);
}

/// A reload is answered as a JSON value (keys sorted), as it always was.
#[test]
fn reload_lists_files_then_data() {
    let data = data_reload();
    let path = PathBuf::from("/plugins/libhello.so");
    let replaced = Ok(upgrades().swap_remove(2));
    let refused = Err(epi::LoadError::Untrusted {
        path: path.clone(),
        reason: "world-writable".to_owned(),
    });
    let files = vec![
        FileReload::new(&path, &replaced),
        FileReload::new(&path, &refused),
        FileReload::error("no plugin named `x` is loaded".to_owned()),
    ];
    let reload = Reload::new(files, &data);
    assert_eq!(
        text(to_json(reload)),
        r#"{"data_failures":[{"checked_at":{"nanos_since_epoch":500,"secs_since_epoch":1700000000},"error":"limits.toml:3: expected `=`","hash":18446744073709551615,"interval":{"nanos":250000000,"secs":5},"key":"limits","kind":"file","path":"/etc/epi/limits.toml","service":"config","source":"hello"}],"data_notifications":2,"files":[{"file":"/plugins/libhello.so","result":{"new":{"app":"hello","build":"rustc 1.85.0 x86_64-unknown-linux-gnu epi 0.1.0","call_path":"stable","content_hash":81985529216486895,"file":"/plugins/libhello.so","priority":-3,"processes":["ticker"],"services":["greeting"],"version":"1.1.0"},"old":{"app":"hello","build":"rustc 1.85.0 x86_64-unknown-linux-gnu epi 0.1.0","call_path":"native","content_hash":81985529216486895,"file":"/plugins/libhello.so","priority":-3,"processes":["ticker"],"services":["greeting"],"version":"1.0.0"},"outcome":"replaced"}},{"error":"/plugins/libhello.so: refusing an untrusted plugin: world-writable","file":"/plugins/libhello.so"},{"error":"no plugin named `x` is loaded","file":null}]}"#
    );
}

#[test]
fn inspect_describes_one_plugin() {
    let info = plugin("hello", "1.0.0", epi::CallPath::Stable);
    let list = service_list();
    let data = data_list();
    let abi = format!("{}.{}", epi::abi::ABI_MAJOR, epi::abi::ABI_MINOR);
    assert_eq!(
        text(to_json(Inspect::new(&info, &list, &data))),
        r#"{"abi":"ABI","build":"rustc 1.85.0 x86_64-unknown-linux-gnu epi 0.1.0","call_path":"stable","compatible":true,"data":[{"checked_at":{"nanos_since_epoch":500,"secs_since_epoch":1700000000},"error":"limits.toml:3: expected `=`","hash":18446744073709551615,"interval":{"nanos":250000000,"secs":5},"key":"limits","kind":"file","path":"/etc/epi/limits.toml","service":"config","source":"hello"},{"checked_at":null,"error":null,"hash":null,"interval":null,"key":"*","kind":"static","path":null,"service":"config","source":"fr"},{"checked_at":null,"error":null,"hash":42,"interval":{"nanos":0,"secs":5},"key":"live","kind":"callback","path":null,"service":"config","source":"fr"}],"plugin":{"app":"hello","build":"rustc 1.85.0 x86_64-unknown-linux-gnu epi 0.1.0","call_path":"stable","content_hash":81985529216486895,"file":"/plugins/libhello.so","priority":-3,"processes":["ticker"],"services":["greeting"],"version":"1.0.0"},"processes":["ticker"],"services":[{"declared":true,"functions":[["greet",[["hello","Hello"],["fr","Bonjour"]]],["language",[]]],"name":"greeting"},{"declared":false,"functions":[],"name":"math"}]}"#.replace("ABI", &abi)
    );
}
