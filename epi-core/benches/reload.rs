//! Hot reload figures, printed as a table:
//! - latency from renaming a new build into a watched directory to the first call answered
//!   by it (p50, p99, max over many upgrades);
//! - `apply` throughput while the plugin is replaced every 10 ms, as a ratio to the steady
//!   state measured in the same run; and, to tell the reload's own cost from the upgrade's
//!   file writes (1.5 MB every 10 ms, on the same cores), the throughput while the same
//!   files are written and renamed in a directory nobody watches.
//!
//! `cargo bench -p epi-core --bench reload`
//!
//! `EPI_BENCH_RELOAD_CPU=<seconds>` runs only the storm instead (2 callers, a reload every
//! 10 ms) and prints where the CPU went: each thread's and child process's CPU time per reload,
//! and the hypervisor's steal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use epi::{Registry, RegistryConfig};
use serde_json::json;

const UPGRADES: u32 = 200;
const WINDOW: Duration = Duration::from_secs(1);
/// Steady and storm windows alternate this many times; the median ratio is reported.
const ROUNDS: usize = 5;
const RELOAD_EVERY: Duration = Duration::from_millis(10);

/// The test plugin with its build mark set to `mark`.
fn build(base: &[u8], offset: usize, mark: u32) -> Vec<u8> {
    let mut bytes = base.to_vec();
    bytes[offset..offset + 8].copy_from_slice(format!("{mark:08}").as_bytes());
    bytes
}

/// Writes `bytes` under a temporary dotfile name in `dir`, ready to be renamed into place.
fn stage(dir: &Path, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let temp = dir.join(".incoming.so.tmp");
    std::fs::write(&temp, bytes).unwrap();
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644)).unwrap();
    temp
}

/// For `length`, writes a new build of `base` (numbered from `version` on, the mark at
/// `offset`) every 10 ms and renames it over `counter.so` in `dir`, as an operator's upgrade
/// does; returns how many it wrote.
fn upgrade_every_10ms(
    dir: &Path,
    length: Duration,
    (base, offset): (&[u8], usize),
    version: &mut u32,
) -> u32 {
    let until = Instant::now() + length;
    let mut written = 0;
    while Instant::now() < until {
        *version += 1;
        let staged = stage(dir, &build(base, offset, *version));
        std::fs::rename(&staged, dir.join("counter.so")).unwrap();
        written += 1;
        std::thread::sleep(RELOAD_EVERY);
    }
    written
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Calls per second of `threads` callers over `WINDOW`, while `during` runs.
fn throughput(registry: &Registry, threads: usize, during: impl FnOnce(&AtomicBool)) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..threads)
        .map(|_| {
            let value = registry.function::<u64, u64>("math", "inc");
            let (stop, calls) = (stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut local = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        std::hint::black_box(value.apply(&1).expect("no call may fail"));
                    }
                    local += 64;
                }
                calls.fetch_add(local, Ordering::Relaxed);
            })
        })
        .collect();
    let started = Instant::now();
    during(&stop);
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.join().unwrap();
    }
    calls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let library = epi_testkit::plugin_library("epi-plugin-testplug");
    let base = std::fs::read(&library).unwrap();
    let marker = b"EPIMARK:00000000";
    let offset = base
        .windows(marker.len())
        .position(|window| window == marker)
        .expect("build mark")
        + 8;
    let dir = epi_testkit::plugin_dir();
    let path = dir.path().join("counter.so");
    std::fs::rename(stage(dir.path(), &build(&base, offset, 0)), &path).unwrap();
    let probe = if std::env::var_os("EPI_BENCH_PROBE_OFF").is_some() {
        epi::LoadProbe::Off
    } else {
        epi::LoadProbe::Child
    };
    let registry = Registry::new(RegistryConfig {
        load_probe: probe,
        ..RegistryConfig::default()
    })
    .unwrap();
    registry
        .load_with_config(
            &path,
            &json!({"app": "counter", "providers": [{"label": "p", "add": 1}]}),
        )
        .unwrap();
    registry.watch(dir.path()).unwrap();
    let mark = registry.function::<(), String>("probe", "mark");

    if let Some(seconds) = std::env::var_os("EPI_BENCH_RELOAD_CPU") {
        let seconds = seconds.to_str().and_then(|s| s.parse().ok());
        let seconds = seconds.expect("EPI_BENCH_RELOAD_CPU: a number of seconds");
        let steady_before = CpuTimes::now();
        let steady = throughput(&registry, 2, |_| {
            std::thread::sleep(Duration::from_secs(seconds))
        });
        let steady_steal = CpuTimes::now().steal - steady_before.steal;
        let before = CpuTimes::now();
        // Builds are numbered from 1 (the loaded one is 0): the last number is the count.
        let mut reloads = 0;
        let calls = throughput(&registry, 2, |_| {
            upgrade_every_10ms(
                dir.path(),
                Duration::from_secs(seconds),
                (&base, offset),
                &mut reloads,
            );
        });
        CpuTimes::now().print_since(&before, reloads, calls);
        println!(
            "steady, the same time without reloads: {:.1} M calls/s (ratio {:.3}), steal {:.1}% of both cores (during the reloads: {:.1}%)",
            steady / 1e6,
            calls / steady,
            CpuTimes::share(steady_steal, seconds),
            CpuTimes::share(CpuTimes::now().steal - before.steal, seconds),
        );
        return;
    }
    // Latency: rename into place, then call until the new build answers.
    let mut latencies = Vec::new();
    for version in 1..=UPGRADES {
        let staged = stage(dir.path(), &build(&base, offset, version));
        let expected = format!("{version:08}");
        let started = Instant::now();
        std::fs::rename(&staged, &path).unwrap();
        loop {
            if mark.apply(&()).unwrap()[0] == expected {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "upgrade {version} never served"
            );
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();

    println!(
        "\nepi hot reload (library {} KiB, {} upgrades)\n",
        base.len() / 1024,
        UPGRADES
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| rename → first call on new build, p50 | {:.2} ms |",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3
    );
    println!(
        "| rename → first call on new build, p99 | {:.2} ms |",
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| rename → first call on new build, max | {:.2} ms |",
        latencies.last().unwrap().as_secs_f64() * 1e3
    );

    // Throughput: steady, the files of the upgrades written where nobody watches, and a reload
    // every 10 ms, alternating windows in the same run, so that drift of the machine hits
    // every side; the median of the per-round ratios is reported.
    let unwatched = epi_testkit::plugin_dir();
    let mut version = UPGRADES;
    let mut storm = |into: &Path, reloads: &mut u32| {
        *reloads += upgrade_every_10ms(into, WINDOW, (&base, offset), &mut version);
    };
    for threads in [1usize, 2] {
        let (mut ratios, mut write_ratios) = (Vec::new(), Vec::new());
        let (mut steady_sum, mut storm_sum, mut reloads, mut writes) = (0.0, 0.0, 0u32, 0u32);
        for _ in 0..ROUNDS {
            let steady = throughput(&registry, threads, |_| std::thread::sleep(WINDOW));
            let written = throughput(&registry, threads, |_| storm(unwatched.path(), &mut writes));
            let reloading = throughput(&registry, threads, |_| storm(dir.path(), &mut reloads));
            ratios.push(reloading / steady);
            write_ratios.push(written / steady);
            steady_sum += steady;
            storm_sum += reloading;
        }
        ratios.sort_by(f64::total_cmp);
        write_ratios.sort_by(f64::total_cmp);
        println!(
            "| apply throughput, {threads} caller(s): steady {:.1} M/s, during a reload every 10 ms {:.1} M/s ({reloads} renames) | ratio {:.3} (median of {ROUNDS}; min {:.3}, max {:.3}) |",
            steady_sum / ROUNDS as f64 / 1e6,
            storm_sum / ROUNDS as f64 / 1e6,
            ratios[ROUNDS / 2],
            ratios[0],
            ratios[ROUNDS - 1],
        );
        println!(
            "| the same files written every 10 ms where nobody watches ({writes} renames), {threads} caller(s) | ratio {:.3} (median of {ROUNDS}; min {:.3}, max {:.3}) |",
            write_ratios[ROUNDS / 2],
            write_ratios[0],
            write_ratios[ROUNDS - 1],
        );
    }
    let status = registry.status();
    println!(
        "\nretired versions: {} in all, {} still mapped\n",
        status.retired_total, status.retired_mapped
    );
}

/// CPU time (user + system) of this process's threads, of its child processes (with the
/// children they reaped) and the machine's steal time, from /proc, in clock ticks.
struct CpuTimes {
    threads: std::collections::BTreeMap<u32, (String, u64)>,
    children: std::collections::BTreeMap<u32, (String, u64)>,
    steal: u64,
}

impl CpuTimes {
    fn now() -> Self {
        // `comm` is in parentheses and may hold spaces; the numbers follow the last `)`.
        let read = |stat: &str| -> (String, u64, u64) {
            let (head, tail) = stat.rsplit_once(')').unwrap();
            let name = head.split_once('(').unwrap().1.to_owned();
            let field = |at: usize| {
                tail.split_whitespace()
                    .nth(at)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            };
            (name, field(11) + field(12), field(13) + field(14))
        };
        let (mut threads, mut children) = (Default::default(), Default::default());
        let map = |into: &mut std::collections::BTreeMap<_, _>, id: &str, name, ticks| {
            into.insert(id.parse::<u32>().unwrap(), (name, ticks));
        };
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            let (name, own, _) = read(&std::fs::read_to_string(task.join("stat")).unwrap());
            map(
                &mut threads,
                task.file_name().unwrap().to_str().unwrap(),
                name,
                own,
            );
            for child in std::fs::read_to_string(task.join("children"))
                .unwrap_or_default()
                .split_whitespace()
            {
                if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
                    let (name, own, reaped) = read(&stat);
                    map(&mut children, child, name, own + reaped);
                }
            }
        }
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let steal = stat
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(8)
            .unwrap()
            .parse()
            .unwrap();
        CpuTimes {
            threads,
            children,
            steal,
        }
    }

    /// The share of two cores' time over `seconds` that `ticks` are, in percent.
    fn share(ticks: u64, seconds: u64) -> f64 {
        ticks as f64 / Self::ticks_per_second() / (2 * seconds) as f64 * 100.0
    }

    fn ticks_per_second() -> f64 {
        // SAFETY: sysconf reads a constant of the system.
        (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
    }

    /// Prints, per thread and child process that used CPU since `before`, its CPU per reload.
    fn print_since(&self, before: &CpuTimes, reloads: u32, calls_per_second: f64) {
        let per_reload =
            |ticks: u64| ticks as f64 * 1e3 / Self::ticks_per_second() / reloads as f64;
        println!(
            "\n{reloads} reloads, 2 callers: {:.1} M calls/s\n",
            calls_per_second / 1e6
        );
        println!("| who | CPU per reload |");
        println!("|---|---|");
        for (kind, now, then) in [
            ("thread", &self.threads, &before.threads),
            ("child process", &self.children, &before.children),
        ] {
            for (id, (name, ticks)) in now {
                let spent = ticks - then.get(id).map_or(0, |(_, ticks)| *ticks);
                if spent > 0 {
                    println!("| {kind} `{name}` | {:.3} ms |", per_reload(spent));
                }
            }
        }
        println!(
            "| steal (the hypervisor's, both cores) | {:.3} ms |",
            per_reload(self.steal - before.steal)
        );
        println!("\n(the callers' threads have ended and are not listed)");
    }
}
