//! A fixed number of calls of one kind, for counting instructions with callgrind (which this
//! machine repeats exactly, unlike timings): `KIND N PROVIDERS`, KIND one of `apply`,
//! `decide`, `pipe` through the test plugin and `native-apply`, `native-decide`,
//! `native-pipe` through a `&dyn Trait` loop. The load probe is off so that valgrind can run
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

use epi::{DecideOpts, Decision, LoadProbe, PipeOpts, Registry, RegistryConfig};
use serde_json::json;

mod native;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let all = [
        "apply",
        "decide",
        "pipe",
        "native-apply",
        "native-decide",
        "native-pipe",
    ];
    let (kinds, calls, providers): (Vec<&str>, u64, usize) = match &args[..] {
        [kind, calls, providers] => (
            vec![kind.as_str()],
            calls.parse().expect("N: a number of calls"),
            providers.parse().expect("PROVIDERS: a number"),
        ),
        _ => (all.to_vec(), 1000, 10),
    };
    let registry = Registry::new(RegistryConfig {
        load_probe: LoadProbe::Off,
        ..RegistryConfig::default()
    })
    .expect("registry");
    let configs: Vec<_> = (0..providers)
        .map(|i| json!({"label": format!("p{i}"), "add": 1}))
        .collect();
    registry
        .load_with_config(
            epi_testkit::plugin_library("epi-plugin-testplug"),
            &json!({"app": "bench", "providers": configs}),
        )
        .expect("load the test plugin");
    let inc = registry.function::<u64, u64>("math", "inc");
    let pass = registry.function::<u64, Decision<u64>>("math", "pass");
    let native = native::providers(providers);
    for kind in kinds {
        for _ in 0..calls {
            match kind {
                "apply" => drop(black_box(inc.apply(black_box(&41)).unwrap())),
                "decide" => drop(black_box(
                    pass.decide(black_box(&41), DecideOpts::new()).unwrap(),
                )),
                "pipe" => drop(black_box(inc.pipe(black_box(41), PipeOpts::new()).unwrap())),
                "native-apply" => drop(black_box(native::apply(&native))),
                "native-decide" => drop(black_box(native::decide(&native))),
                "native-pipe" => drop(black_box(native::pipe(&native))),
                other => panic!("unknown kind {other}: one of {all:?}"),
            }
        }
    }
}
