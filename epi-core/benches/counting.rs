//! What counting costs: the same calls with `RegistryConfig::count_calls` off and on, in the
//! same run. On, every provider call adds one to its `calls` counter, and one call in
//! `LATENCY_SAMPLE_EVERY` is timed into its latency histogram (what `/_epi/metrics` and the
//! console show). The cost per provider call is (on − off) / providers.
//!
//! Groups: `apply` and `pipe` over 1 and 10 providers.
//!
//! `cargo bench -p epi-core --bench counting` (builds the test plugin in release first).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use epi::{Function, PipeOpts, Registry, RegistryConfig};
use serde_json::json;

const COUNTS: [usize; 2] = [1, 10];

/// A registry with one test plugin holding `count` providers of `math`.
fn registry(count: usize, count_calls: bool) -> Registry {
    let library = epi_testkit::plugin_library("epi-plugin-testplug");
    let registry = Registry::new(RegistryConfig {
        count_calls,
        ..RegistryConfig::default()
    })
    .expect("registry");
    let providers: Vec<_> = (0..count)
        .map(|i| json!({"label": format!("p{i}"), "add": 1}))
        .collect();
    registry
        .load_with_config(&library, &json!({"app": "bench", "providers": providers}))
        .expect("load the test plugin");
    registry
}

fn configure(c: &mut Criterion) -> Criterion {
    std::mem::take(c)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

fn counting(c: &mut Criterion) {
    let mut group = c.benchmark_group("counting");
    for count in COUNTS {
        for (mode, on) in [("off", false), ("on", true)] {
            let registry = registry(count, on);
            let inc: Function<u64, u64> = registry.function("math", "inc");
            assert_eq!(inc.apply(&1).unwrap(), vec![2; count]);
            group.bench_function(BenchmarkId::new(format!("apply/{mode}"), count), |b| {
                b.iter(|| inc.apply(black_box(&41)).unwrap())
            });
            group.bench_function(BenchmarkId::new(format!("pipe/{mode}"), count), |b| {
                b.iter(|| inc.pipe(black_box(41), PipeOpts::new()).unwrap())
            });
            if on {
                let row = registry
                    .counters()
                    .into_iter()
                    .find(|row| row.function == "inc")
                    .expect("counters of inc");
                assert!(row.calls > 0 && row.latency.count() > 0, "{row:?}");
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = configure(&mut Criterion::default());
    targets = counting
}
criterion_main!(benches);
