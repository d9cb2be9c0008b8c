//! Dispatch cost: epi calls through a plugin library beside the same provider bodies called
//! natively through `&dyn Trait`, in the same run, so each result reads as a ratio.
//!
//! Groups: handle resolution; `apply` over 1/5/10/100 providers in each mode (default,
//! ignore_errors, concurrent, pipe); `decide` over 10 providers decided by the first, by the
//! last, and by none; dynamic (JSON) apply; the same apply from the host and from inside a
//! plugin through the host (`from_plugin`).
//!
//! `cargo bench -p epi-core --bench dispatch` (builds the test plugin in release first).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use epi::{ApplyOpts, DecideOpts, Decision, Function, Opts, PipeOpts, Registry, RegistryConfig};
use serde_json::json;

const COUNTS: [usize; 4] = [1, 5, 10, 100];

/// The native baseline: the provider functions the test plugin exports, as a trait.
trait Provide: Send + Sync {
    fn inc(&self, x: &u64) -> u64;
    fn choose(&self, x: &u64) -> Decision<u64>;
}

/// Same fields and bodies as the test plugin's `Scripted::inc` / `Scripted::choose`.
struct Native {
    add: i64,
    decides: bool,
}

impl Provide for Native {
    fn inc(&self, x: &u64) -> u64 {
        x.wrapping_add(self.add as u64)
    }
    fn choose(&self, x: &u64) -> Decision<u64> {
        if self.decides {
            Decision::Decided(x.wrapping_add(self.add as u64))
        } else {
            Decision::NoDecision
        }
    }
}

/// `count` providers; the one at `decider` (if any) decides.
fn native_providers(count: usize, decider: Option<usize>) -> Vec<Box<dyn Provide>> {
    (0..count)
        .map(|i| {
            Box::new(Native {
                add: 1,
                decides: Some(i) == decider,
            }) as Box<dyn Provide>
        })
        .collect()
}

/// A registry with one test plugin holding `count` providers of `math`.
fn registry(count: usize, decider: Option<usize>) -> Registry {
    let library = epi_testkit::plugin_library("epi-plugin-testplug");
    let registry = Registry::new(RegistryConfig::default()).expect("registry");
    let providers: Vec<_> = (0..count)
        .map(|i| json!({"label": format!("p{i}"), "add": 1, "decides": Some(i) == decider}))
        .collect();
    registry
        .load_with_config(&library, &json!({"app": "bench", "providers": providers}))
        .expect("load the test plugin");
    registry
}

fn native_apply(providers: &[Box<dyn Provide>], x: &u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(providers.len());
    for provider in providers {
        out.push(provider.inc(x));
    }
    out
}

fn native_apply_each(providers: &[Box<dyn Provide>], x: &u64) -> Vec<Result<u64, String>> {
    let mut out = Vec::with_capacity(providers.len());
    for provider in providers {
        out.push(Ok(provider.inc(x)));
    }
    out
}

fn native_concurrent(
    pool: &rayon::ThreadPool,
    providers: &[Box<dyn Provide>],
    x: &u64,
) -> Vec<u64> {
    let mut slots: Vec<Option<u64>> = vec![None; providers.len()];
    pool.scope(|scope| {
        for (provider, slot) in providers.iter().zip(slots.iter_mut()) {
            scope.spawn(move |_| *slot = Some(provider.inc(x)));
        }
    });
    slots.into_iter().map(Option::unwrap).collect()
}

fn native_pipe(providers: &[Box<dyn Provide>], x: u64) -> u64 {
    providers
        .iter()
        .fold(x, |value, provider| provider.inc(&value))
}

fn native_decide(providers: &[Box<dyn Provide>], x: &u64) -> Decision<u64> {
    for provider in providers {
        if let Decision::Decided(value) = provider.choose(x) {
            return Decision::Decided(value);
        }
    }
    Decision::NoDecision
}

/// Concurrent apply against default apply over the same providers: 10 providers that each
/// work 20 µs on a core (concurrency should pay), and 5 trivial ones (it should cost little).
fn concurrent_work(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrent_work");
    let working = registry(10, None);
    let spin: Function<u64, u64> = working.function("math", "spin");
    group.bench_function("spin20us_x10/default", |b| {
        b.iter(|| spin.apply(black_box(&20)).unwrap())
    });
    group.bench_function("spin20us_x10/concurrent", |b| {
        b.iter(|| {
            spin.apply_with(black_box(&20), ApplyOpts::new().concurrent())
                .unwrap()
        })
    });
    let trivial = registry(5, None);
    let inc: Function<u64, u64> = trivial.function("math", "inc");
    group.bench_function("trivial_x5/default", |b| {
        b.iter(|| inc.apply(black_box(&41)).unwrap())
    });
    group.bench_function("trivial_x5/concurrent", |b| {
        b.iter(|| {
            inc.apply_with(black_box(&41), ApplyOpts::new().concurrent())
                .unwrap()
        })
    });
    group.finish();
}

fn configure(c: &mut Criterion) -> Criterion {
    std::mem::take(c)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

fn apply(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("apply");
    for count in COUNTS {
        let registry = registry(count, None);
        let inc: Function<u64, u64> = registry.function("math", "inc");
        assert_eq!(inc.apply(&1).unwrap(), vec![2; count]);
        let native = native_providers(count, None);
        let id = |name: &str| BenchmarkId::new(name, count);
        group.bench_function(id("default/epi"), |b| {
            b.iter(|| inc.apply(black_box(&41)).unwrap())
        });
        group.bench_function(id("default/native_dyn"), |b| {
            b.iter(|| native_apply(black_box(&native), black_box(&41)))
        });
        group.bench_function(id("ignore_errors/epi"), |b| {
            b.iter(|| {
                inc.apply_with(black_box(&41), ApplyOpts::new().ignore_errors())
                    .unwrap()
            })
        });
        group.bench_function(id("ignore_errors/native_dyn"), |b| {
            b.iter(|| native_apply_each(black_box(&native), black_box(&41)))
        });
        group.bench_function(id("concurrent/epi"), |b| {
            b.iter(|| {
                inc.apply_with(black_box(&41), ApplyOpts::new().concurrent())
                    .unwrap()
            })
        });
        group.bench_function(id("concurrent/native_dyn"), |b| {
            b.iter(|| native_concurrent(&pool, black_box(&native), black_box(&41)))
        });
        group.bench_function(id("pipe/epi"), |b| {
            b.iter(|| inc.pipe(black_box(41), PipeOpts::new()).unwrap())
        });
        group.bench_function(id("pipe/native_dyn"), |b| {
            b.iter(|| native_pipe(black_box(&native), black_box(41)))
        });
        let math = registry.service("math");
        group.bench_function(id("default_by_name/epi"), |b| {
            b.iter(|| {
                math.apply::<u64, u64>(black_box("inc"), black_box(&41))
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_10");
    for (case, decider) in [("first", Some(0)), ("last", Some(9)), ("none", None)] {
        let registry = registry(10, decider);
        let choose: Function<u64, Decision<u64>> = registry.function("math", "choose");
        let expected = if decider.is_some() {
            Decision::Decided(42)
        } else {
            Decision::NoDecision
        };
        assert_eq!(choose.decide(&41, DecideOpts::new()).unwrap(), expected);
        let native = native_providers(10, decider);
        group.bench_function(format!("{case}/epi"), |b| {
            b.iter(|| choose.decide(black_box(&41), DecideOpts::new()).unwrap())
        });
        group.bench_function(format!("{case}/native_dyn"), |b| {
            b.iter(|| native_decide(black_box(&native), black_box(&41)))
        });
    }
    group.finish();
}

fn resolve(c: &mut Criterion) {
    let mut group = c.benchmark_group("resolve");
    let registry = registry(1, None);
    group.bench_function("function_handle", |b| {
        b.iter(|| registry.function::<u64, u64>(black_box("math"), black_box("inc")))
    });
    group.bench_function("service_handle", |b| {
        b.iter(|| registry.service(black_box("math")))
    });
    group.finish();
}

fn dynamic(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_json");
    let registry = registry(1, None);
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

/// One `apply` of `math.inc` (1 and 10 providers) from the host, beside the same call made
/// from inside a plugin through the host: `probe.inner_loop(1000)` makes 1000 of them with a
/// handle resolved once, so its time / 1000 is the cost of one call from a plugin.
fn from_plugin(c: &mut Criterion) {
    const INNER: u64 = 1000;
    let mut group = c.benchmark_group("from_plugin");
    for count in [1usize, 10] {
        let registry = registry(count, None);
        let inc = registry.function::<u64, u64>("math", "inc");
        group.bench_function(BenchmarkId::new("host_x1000", count), |b| {
            b.iter(|| {
                for _ in 0..INNER {
                    black_box(inc.apply(black_box(&0)).unwrap());
                }
            })
        });
        let inner = registry.function::<u64, u64>("probe", "inner_loop");
        group.bench_function(BenchmarkId::new("plugin_x1000", count), |b| {
            b.iter(|| black_box(inner.apply(black_box(&INNER)).unwrap()))
        });
    }
    group.finish();
}

/// A plugin adding and then removing one provider (`probe.churn`: 100 cycles), with 100
/// providers registered: the time per cycle is one addition plus one removal, each of which
/// publishes a new dispatch table. `quiet`: a service no plugin defines (nobody is notified);
/// `notified`: `math`, whose defining plugin receives each change (the old and new lists of
/// 100 providers, as JSON) and keeps it.
fn added_providers(c: &mut Criterion) {
    const CYCLES: u64 = 100;
    let mut group = c.benchmark_group("added_providers");
    let registry = registry(100, None);
    let churn = registry.function::<(u64, String), u64>("probe", "churn");
    for service in ["quiet", "math"] {
        let args = (CYCLES, service.to_string());
        group.bench_function(BenchmarkId::new("add_remove_x100", service), |b| {
            b.iter(|| black_box(churn.apply(black_box(&args)).unwrap()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = configure(&mut Criterion::default());
    targets = resolve, apply, decide, dynamic, from_plugin, added_providers, concurrent_work
}
criterion_main!(benches);
