//! A fixed number of calls of one kind, for counting instructions with callgrind (which this
//! machine repeats exactly, unlike timings): `KIND N PROVIDERS`, KIND one of `apply`,
//! `ignore-errors` (apply with that option), `decide`, `pipe`, `tag` through the test plugin, `stable-tag` through it on the stable path,
//! and `native-apply`, `native-decide`, `native-pipe`, `native-tag` through a `&dyn Trait` loop. The load probe is off so that valgrind can run
//! it. The cost of one call is the difference between two counts over the difference of N:
//!
//! ```sh
//! cargo bench -p epi-core --bench instructions --no-run   # prints the executable's path
//! valgrind --tool=callgrind target/release/deps/instructions-* decide 1000 10
//! valgrind --tool=callgrind target/release/deps/instructions-* decide 21000 10
//! ```
//!
//! Without arguments (as `cargo bench` runs it) it makes 1,000 calls of each kind.

use std::hint::black_box;

use epi::{ApplyOpts, DecideOpts, Decision, LoadProbe, PipeOpts};

mod native;
mod plugin;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let all = [
        "apply",
        "ignore-errors",
        "decide",
        "pipe",
        "tag",
        "stable-tag",
        "native-apply",
        "native-decide",
        "native-pipe",
        "native-tag",
    ];
    let (kinds, calls, providers): (Vec<&str>, u64, usize) = match &args[..] {
        [kind, calls, providers] => (
            vec![kind.as_str()],
            calls.parse().expect("N: a number of calls"),
            providers.parse().expect("PROVIDERS: a number"),
        ),
        _ => (all.to_vec(), 1000, 10),
    };
    let registry = plugin::registry(providers, LoadProbe::Off);
    let stable = plugin::stable_registry(providers, LoadProbe::Off);
    let inc = registry.function::<u64, u64>("math", "inc");
    let pass = registry.function::<u64, Decision<u64>>("math", "pass");
    let tag = registry.function::<(String, u64), String>("math", "tag");
    let stable_tag = stable.function::<(String, u64), String>("math", "tag");
    let args = ("Ada".to_string(), 7u64);
    let native = native::providers(providers);
    for kind in kinds {
        for _ in 0..calls {
            match kind {
                "apply" => drop(black_box(inc.apply(black_box(&41)).unwrap())),
                "decide" => drop(black_box(
                    pass.decide(black_box(&41), DecideOpts::new()).unwrap(),
                )),
                "ignore-errors" => drop(black_box(
                    inc.apply_with(black_box(&41), ApplyOpts::new().ignore_errors())
                        .unwrap(),
                )),
                "pipe" => drop(black_box(inc.pipe(black_box(41), PipeOpts::new()).unwrap())),
                "tag" => drop(black_box(tag.apply(black_box(&args)).unwrap())),
                "stable-tag" => drop(black_box(stable_tag.apply(black_box(&args)).unwrap())),
                "native-apply" => drop(black_box(native::apply(&native))),
                "native-decide" => drop(black_box(native::decide(&native))),
                "native-pipe" => drop(black_box(native::pipe(&native))),
                "native-tag" => drop(black_box(native::tag(&native, &args))),
                other => panic!("unknown kind {other}: one of {all:?}"),
            }
        }
    }
}
