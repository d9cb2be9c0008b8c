//! Dispatch cost: epi calls through a plugin library beside the same provider body called
//! natively through `&dyn Trait`, in the same run, so each result reads as a ratio.
//!
//! `cargo bench -p epi-core --bench dispatch` (builds the test plugin in release first).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use epi::{Decision, Function, Opts, Registry, RegistryConfig};
use serde_json::json;

/// The native baseline: the provider functions the test plugin exports, as a trait.
trait Provide: Send + Sync {
    fn inc(&self, x: &u64) -> u64;
    fn pass(&self, x: &u64) -> Decision<u64>;
}

/// Same fields and bodies as the test plugin's `Scripted::inc` / `Scripted::pass`.
struct Native {
    add: i64,
}

impl Provide for Native {
    fn inc(&self, x: &u64) -> u64 {
        x.wrapping_add(self.add as u64)
    }
    fn pass(&self, _x: &u64) -> Decision<u64> {
        Decision::NoDecision
    }
}

fn native_providers(count: usize) -> Vec<Box<dyn Provide>> {
    (0..count)
        .map(|_| Box::new(Native { add: 1 }) as Box<dyn Provide>)
        .collect()
}

/// A registry with one test plugin holding `count` providers of `math`.
fn registry(count: usize) -> Registry {
    let library = epi_testkit::plugin_library("epi-plugin-testplug");
    let registry = Registry::new(RegistryConfig::default()).expect("registry");
    let providers: Vec<_> = (0..count)
        .map(|i| json!({"label": format!("p{i}"), "add": 1}))
        .collect();
    registry
        .load_with_config(&library, &json!({"app": "bench", "providers": providers}))
        .expect("load the test plugin");
    registry
}

/// What a host does with `apply`'s results in both columns: collect them in order.
fn native_apply(providers: &[Box<dyn Provide>], x: &u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(providers.len());
    for provider in providers {
        out.push(provider.inc(x));
    }
    out
}

fn native_decide(providers: &[Box<dyn Provide>], x: &u64) -> Decision<u64> {
    for provider in providers {
        if let Decision::Decided(value) = provider.pass(x) {
            return Decision::Decided(value);
        }
    }
    Decision::NoDecision
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    for count in [1usize, 5, 10] {
        let registry = registry(count);
        let inc: Function<u64, u64> = registry.function("math", "inc");
        assert_eq!(inc.apply(&1).unwrap(), vec![2; count]);
        let native = native_providers(count);
        group.bench_with_input(BenchmarkId::new("epi", count), &count, |b, _| {
            b.iter(|| inc.apply(black_box(&41)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("native_dyn", count), &count, |b, _| {
            b.iter(|| native_apply(black_box(&native), black_box(&41)))
        });
        let math = registry.service("math");
        group.bench_with_input(BenchmarkId::new("epi_by_name", count), &count, |b, _| {
            b.iter(|| {
                math.apply::<u64, u64>(black_box("inc"), black_box(&41))
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    let registry = registry(10);
    let pass: Function<u64, Decision<u64>> = registry.function("math", "pass");
    assert_eq!(pass.decide(&1, Opts::new()).unwrap(), Decision::NoDecision);
    let native = native_providers(10);
    group.bench_function("epi/10_none", |b| {
        b.iter(|| pass.decide(black_box(&41), Opts::new()).unwrap())
    });
    group.bench_function("native_dyn/10_none", |b| {
        b.iter(|| native_decide(black_box(&native), black_box(&41)))
    });
    group.finish();
}

fn resolve(c: &mut Criterion) {
    let mut group = c.benchmark_group("resolve");
    let registry = registry(1);
    group.bench_function("function_handle", |b| {
        b.iter(|| registry.function::<u64, u64>(black_box("math"), black_box("inc")))
    });
    group.finish();
}

fn dynamic(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_json");
    let registry = registry(1);
    let args = json!(41);
    group.bench_function("epi/1", |b| {
        b.iter(|| {
            registry
                .apply_json("math", "inc", black_box(&args), Opts::new())
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, apply, decide, resolve, dynamic);
criterion_main!(benches);
