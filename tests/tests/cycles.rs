//! 1000 load/retire cycles of a plugin that unloads cleanly. Alone in its test binary so that
//! resident memory is this test's alone.

mod common;

use common::*;
use epi::{RegistryConfig, Upgrade};

/// This process's resident memory, in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_thousand_load_retire_cycles_stay_bounded() {
    let runtime = tempfile::tempdir().unwrap();
    let dir = plugin_dir();
    let path = write_file(dir.path(), "cycle.so", &build(0));
    let registry = registry_with(RegistryConfig {
        runtime_dir: Some(runtime.path().to_owned()),
        // Close every retired library: the default keeps native-path ones mapped.
        retire: epi::RetirePolicy::Unload,
        ..Default::default()
    });
    registry.upgrade(&path).unwrap();
    let builds = [build(1), build(2)];
    let mark = registry.function::<(), String>("probe", "mark");
    // Warm up allocator and page cache before measuring.
    for cycle in 0..20 {
        std::fs::write(&path, &builds[cycle % 2]).unwrap();
        registry.upgrade(&path).unwrap();
    }
    let start_rss = resident_kib();
    let mut most_mapped = 0;
    for cycle in 0..1000 {
        std::fs::write(&path, &builds[cycle % 2]).unwrap();
        assert!(matches!(
            registry.upgrade(&path).unwrap(),
            Upgrade::Replaced { .. }
        ));
        assert_eq!(
            mark.apply(&()).unwrap(),
            vec![format!("{:08}", cycle % 2 + 1)]
        );
        most_mapped = most_mapped.max(mapped_copies(runtime.path()));
    }
    let growth_kib = resident_kib().saturating_sub(start_rss);
    let status = registry.status();
    eprintln!(
        "1000 cycles: at most {most_mapped} copies mapped, {} now, {} retired still mapped, RSS growth {growth_kib} KiB",
        mapped_copies(runtime.path()),
        status.retired_mapped
    );
    assert!(
        most_mapped <= 2,
        "mapped copies must stay bounded: {most_mapped}"
    );
    assert_eq!(mapped_copies(runtime.path()), 1, "only the serving version");
    assert_eq!(status.retired_mapped, 0);
    assert!(
        growth_kib < 64 * 1024,
        "resident memory grew by {growth_kib} KiB"
    );
}
