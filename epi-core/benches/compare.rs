//! The workloads of `bench/compare`, on epi and natively (`&dyn Trait`), printed as one JSON
//! object per line: `{"workload", "epi_ns", "native_ns"}`. `bench/compare` runs the same
//! workloads on pluggy and prints the table.
//!
//! `cargo bench -p epi-core --bench compare [-- WORDS]`: with words, only the workloads whose
//! name contains one of them (`-- "stable path"`).

use std::hint::black_box;
use std::time::Instant;

use epi::{DecideOpts, Decision, LoadProbe};
use serde_json::json;

mod native;
mod plugin;

use plugin::{registry, stable_registry};

/// Median nanoseconds per call of `body` over 7 runs of a calibrated batch (~100 ms each).
fn time(mut body: impl FnMut()) -> f64 {
    let mut batch = 1u64;
    loop {
        let started = Instant::now();
        for _ in 0..batch {
            body();
        }
        if started.elapsed().as_millis() >= 20 {
            break;
        }
        batch *= 2;
    }
    batch *= 5;
    let mut runs: Vec<f64> = (0..7)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..batch {
                body();
            }
            started.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[3]
}

fn main() {
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let wanted = |workload: &str| words.is_empty() || words.iter().any(|w| workload.contains(w));
    let mut rows = Vec::new();
    for count in [1usize, 5, 10, 100] {
        if !wanted(&format!("apply, {count} providers")) {
            continue;
        }
        let registry = registry(count, LoadProbe::Child);
        let inc = registry.function::<u64, u64>("math", "inc");
        let native = native::providers(count);
        let epi_ns = time(|| {
            black_box(inc.apply(black_box(&41)).unwrap());
        });
        let native_ns = time(|| {
            black_box(native::apply(&native));
        });
        rows.push(json!({"workload": format!("apply, {count} providers"), "epi_ns": epi_ns, "native_ns": native_ns}));
    }
    if wanted("decide, 10 providers, none decides") {
        rows.push(decide_row());
    }
    // `tag((String, u64)) -> String` on both call paths: the native path (same build) and the
    // stable path (the same library announcing another rustc, so its values cross as JSON).
    for count in [1usize, 10] {
        let args = ("Ada".to_string(), 7u64);
        let native = native::providers(count);
        let native_ns = time(|| {
            black_box(native::tag(&native, &args));
        });
        for path in ["native", "stable"] {
            let workload = format!("tag, {count} providers, {path} path");
            if !wanted(&workload) {
                continue;
            }
            let registry = match path {
                "native" => registry(count, LoadProbe::Child),
                _ => stable_registry(count, LoadProbe::Child),
            };
            let tag = registry.function::<(String, u64), String>("math", "tag");
            assert_eq!(tag.apply(&args).unwrap(), vec!["Ada".to_string(); count]);
            let epi_ns = time(|| {
                black_box(tag.apply(black_box(&args)).unwrap());
            });
            rows.push(json!({"workload": workload, "epi_ns": epi_ns, "native_ns": native_ns}));
        }
    }
    for row in rows {
        println!("{row}");
    }
}

/// `decide` over 10 providers none of which decides, beside the native loop.
fn decide_row() -> serde_json::Value {
    let ten = registry(10, LoadProbe::Child);
    let pass = ten.function::<u64, Decision<u64>>("math", "pass");
    let native = native::providers(10);
    let epi_ns = time(|| {
        black_box(pass.decide(black_box(&41), DecideOpts::new()).unwrap());
    });
    let native_ns = time(|| {
        black_box(native::decide(&native));
    });
    json!({"workload": "decide, 10 providers, none decides", "epi_ns": epi_ns, "native_ns": native_ns})
}
