//! Data queries over 10,000 keys, beside plain hash maps holding the same values.
//!
//! `cargo bench -p epi-core --bench data`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use epi::{Registry, RegistryConfig};
use rustc_hash::FxHashMap;
use serde_json::{json, Value};

const KEYS: usize = 10_000;

fn data(c: &mut Criterion) {
    let library = epi_testkit::plugin_library("epi-plugin-testplug");
    let registry = Registry::new(RegistryConfig::default()).expect("registry");
    let data: Vec<_> = (0..KEYS)
        .map(|i| json!({"service": "bench", "key": format!("key-{i}"), "static": {"n": i}}))
        .collect();
    registry
        .load_with_config(&library, &json!({"app": "source", "data": data}))
        .expect("load the test plugin");
    let handle = registry.data("bench");
    assert_eq!(handle.keys().len(), KEYS);

    let std_map: HashMap<(String, String), Arc<Value>> = (0..KEYS)
        .map(|i| {
            let key = ("source".to_string(), format!("key-{i}"));
            (key, Arc::new(json!({"n": i})))
        })
        .collect();
    let fx_map: FxHashMap<String, Arc<Value>> = (0..KEYS)
        .map(|i| (format!("key-{i}"), Arc::new(json!({"n": i}))))
        .collect();
    let key = "key-4711";
    assert_eq!(
        handle.get_value("source", key),
        Some(Arc::new(json!({"n": 4711})))
    );

    let mut group = c.benchmark_group("data_10k");
    group.bench_function("epi/get_value", |b| {
        b.iter(|| handle.get_value(black_box("source"), black_box(key)))
    });
    group.bench_function("native_std_hashmap_owned_key/get_value", |b| {
        b.iter(|| {
            std_map
                .get(&(black_box("source").to_string(), black_box(key).to_string()))
                .cloned()
        })
    });
    group.bench_function("native_fx_hashmap/get_value", |b| {
        b.iter(|| fx_map.get(black_box(key)).cloned())
    });
    let swap = arc_swap::ArcSwap::from_pointee(fx_map.clone());
    group.bench_function("arcswap_load_then_fx_hashmap/get_value", |b| {
        b.iter(|| swap.load().get(black_box(key)).cloned())
    });
    group.bench_function("epi/get", |b| b.iter(|| handle.get(black_box(key))));
    group.bench_function("epi/by_key", |b| b.iter(|| handle.by_key(black_box(key))));
    group.bench_function("epi/keys", |b| b.iter(|| handle.keys()));
    group.finish();
}

criterion_group!(benches, data);
criterion_main!(benches);
