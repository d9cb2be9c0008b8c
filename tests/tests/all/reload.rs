//! Hot reload: upgrading plugins in a running registry, by hand and through the directory
//! watcher, under load, with state hand-over, bad builds and retirement.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use epi::{LoadError, Notification, Opts, Registry, RegistryConfig, RetirePolicy, Upgrade};
use serde_json::{json, Value};

/// Publishes the way `cp new old` does: truncate the existing file and write into it.
fn publish_by_copy(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn marks(registry: &Registry) -> Vec<String> {
    registry
        .function::<(), String>("math", "mark")
        .apply(&())
        .unwrap()
}

fn version_of(registry: &Registry, app: &str) -> Option<String> {
    registry
        .plugins()
        .into_iter()
        .find(|plugin| plugin.app == app)
        .map(|plugin| plugin.version)
}

/// A plugin file holding build `mark`, loaded with two `math` providers.
fn setup(dir: &Path, mark: u32) -> (Registry, PathBuf) {
    let path = write_file(dir, "counter.so", &build(mark));
    let registry = registry(&[]);
    registry
        .load_with_config(
            &path,
            &json!({"app": "counter", "providers": [{"label": "one"}, {"label": "two"}]}),
        )
        .unwrap();
    (registry, path)
}

#[test]
fn upgrade_replaces_in_place_and_an_identical_file_is_a_no_op() {
    let dir = plugin_dir();
    let (registry, path) = setup(dir.path(), 1);
    // Another plugin on each side, to see the order kept.
    let registry_order = registry_with(RegistryConfig {
        order: vec!["before".into(), "counter".into(), "after".into()],
        ..Default::default()
    });
    drop(registry);
    let registry = registry_order;
    load_testplug(&registry, "before", json!([{"label": "b"}]));
    registry
        .load_with_config(
            &path,
            &json!({"app": "counter", "providers": [{"label": "one"}, {"label": "two"}]}),
        )
        .unwrap();
    load_testplug(&registry, "after", json!([{"label": "a"}]));
    let labels = registry.function::<(), String>("math", "label");
    assert_eq!(labels.apply(&()).unwrap(), vec!["b", "one", "two", "a"]);
    assert_eq!(version_of(&registry, "counter").unwrap(), "0.1.0+00000001");

    publish_by_rename(&path, &build(2));
    match registry.upgrade(&path).unwrap() {
        Upgrade::Replaced { old, new } => {
            assert_eq!(old.version, "0.1.0+00000001");
            assert_eq!(new.version, "0.1.0+00000002");
            assert_ne!(old.content_hash, new.content_hash);
        }
        other => panic!("expected a replacement, got {other:?}"),
    }
    assert_eq!(
        labels.apply(&()).unwrap(),
        vec!["b", "one", "two", "a"],
        "same place"
    );
    let counter_marks: Vec<String> = registry
        .apply_json("math", "mark", &Value::Null, Opts::new())
        .unwrap()
        .to_json(false)
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(counter_marks[1..3], ["00000002", "00000002"]);

    assert_eq!(registry.upgrade(&path).unwrap(), Upgrade::Unchanged);
    // Same bytes written again (new mtime): the content hash says nothing changed.
    publish_by_copy(&path, &build(2));
    assert_eq!(registry.upgrade(&path).unwrap(), Upgrade::Unchanged);
    assert_eq!(registry.status().retired_total, 1);
}

#[test]
fn definers_are_notified_of_an_upgraded_provider() {
    let dir = plugin_dir();
    let (registry, path) = setup(dir.path(), 1);
    publish_by_rename(&path, &build(2));
    registry.upgrade(&path).unwrap();
    let notes = notifications(&registry);
    let upgraded = notes.iter().any(|note| match note {
        Notification::Providers { service, old, new } => {
            service == "math"
                && old.iter().all(|p| p.version == "0.1.0+00000001")
                && new.iter().all(|p| p.version == "0.1.0+00000002")
                && !new.is_empty()
        }
        _ => false,
    });
    assert!(upgraded, "{notes:?}");
}

#[test]
fn state_is_handed_over_across_ten_upgrades() {
    let dir = plugin_dir();
    let (registry, path) = setup(dir.path(), 1);
    let hit = registry.function::<(), u64>("probe", "hit");
    let mut expected = 0;
    for version in 2..=11 {
        for _ in 0..3 {
            expected += 1;
            assert_eq!(hit.apply(&()).unwrap(), vec![expected]);
        }
        publish_by_rename(&path, &build(version));
        assert!(matches!(
            registry.upgrade(&path).unwrap(),
            Upgrade::Replaced { .. }
        ));
    }
    assert_eq!(version_of(&registry, "counter").unwrap(), "0.1.0+00000011");
    assert_eq!(
        hit.apply(&()).unwrap(),
        vec![31],
        "30 calls over 10 versions, then this one"
    );
}

#[test]
fn every_bad_build_during_an_upgrade_leaves_the_old_version_answering() {
    let dir = plugin_dir();
    let (registry, path) = setup(dir.path(), 1);
    let good = build(1);
    let mut abi = good.clone();
    let mut entry = epi::abi::MAGIC.to_vec();
    entry.extend_from_slice(&epi::abi::ABI_MAJOR.to_le_bytes());
    let mut other_abi = epi::abi::MAGIC.to_vec();
    other_abi.extend_from_slice(&9u32.to_le_bytes());
    assert_eq!(patch(&mut abi, &entry, &other_abi), 1);
    let mut target = good.clone();
    let other_target = epi::abi::TARGET.replace('x', "y");
    assert!(
        patch(
            &mut target,
            epi::abi::TARGET.as_bytes(),
            other_target.as_bytes()
        ) >= 1
    );
    let no_entry = library_bytes("epi-fixture-no-entry");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "empty"),
        (
            "text",
            b"#!/bin/sh\necho not a library\n".to_vec(),
            "not an ELF",
        ),
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        ("no entry", no_entry, "EPI_PLUGIN_ENTRY"),
        ("other ABI", abi, "ABI 9"),
        ("other target", target, "built for target"),
        ("panicking init", build(99_999_999), "refuses to start"),
    ];
    for (case, bytes, expected) in cases {
        publish_by_rename(&path, &bytes);
        let err = registry.upgrade(&path).unwrap_err();
        assert!(err.to_string().contains(expected), "{case}: {err}");
        assert!(err.to_string().contains("counter.so"), "{case}: {err}");
        assert_eq!(marks(&registry), vec!["00000001", "00000001"], "{case}");
        let status = registry.status();
        let error = status.files[0].error.clone().expect("error in the status");
        assert!(error.contains(expected), "{case}: {error}");
        // An explicit upgrade tries again (the cause may have been transient) and is
        // refused the same way.
        let again = registry.upgrade(&path).unwrap_err();
        assert!(again.to_string().contains(expected), "{case}: {again}");
        assert_eq!(marks(&registry), vec!["00000001", "00000001"], "{case}");
    }
    // Untrusted: writable by everyone.
    publish_by_rename(&path, &build(2));
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let err = registry.upgrade(&path).unwrap_err();
    assert!(matches!(err, LoadError::Untrusted { .. }), "{err}");
    assert_eq!(marks(&registry), vec!["00000001", "00000001"]);
    // A good build once the file changes again.
    publish_by_rename(&path, &build(3));
    assert!(matches!(
        registry.upgrade(&path).unwrap(),
        Upgrade::Replaced { .. }
    ));
    assert_eq!(marks(&registry), vec!["00000003", "00000003"]);
    assert!(registry.status().files[0].error.is_none());
}

#[test]
fn the_watcher_follows_renames_copies_new_files_and_removals() {
    let dir = plugin_dir();
    let path = write_file(dir.path(), "counter.so", &build(1));
    write_file(dir.path(), "notes.txt", b"not a plugin");
    let registry = registry(&[]);
    let loaded = registry.watch(dir.path()).unwrap();
    assert_eq!(loaded.len(), 1);
    assert!(matches!(loaded[0].1, Ok(Upgrade::Loaded(_))));
    let mark = registry.function::<(), String>("probe", "mark");
    assert_eq!(mark.apply(&()).unwrap(), vec!["00000001"]);

    publish_by_rename(&path, &build(2));
    wait_for("the renamed build", || {
        mark.apply(&()).unwrap() == ["00000002"]
    });
    publish_by_copy(&path, &build(3));
    wait_for("the copied build", || {
        mark.apply(&()).unwrap() == ["00000003"]
    });

    // A new plugin file appears (copied in, then renamed into place).
    let hello = dir.path().join("hello.so");
    publish_by_rename(&hello, &library_bytes("epi-plugin-hello"));
    wait_for("the new plugin", || {
        version_of(&registry, "hello").is_some()
    });
    // A removed file unloads its plugin.
    std::fs::remove_file(&hello).unwrap();
    wait_for("the removal", || version_of(&registry, "hello").is_none());
    // A bad build is reported, and the good one keeps serving.
    publish_by_rename(&path, b"garbage");
    wait_for("the error in the status", || {
        registry
            .file_status(&path)
            .is_some_and(|file| file.error.is_some())
    });
    assert_eq!(
        registry.file_status(&path).unwrap().app.as_deref(),
        Some("testplug")
    );
    assert_eq!(mark.apply(&()).unwrap(), vec!["00000003"]);
    // A reload on demand re-checks the refused file (still garbage) and changes nothing else.
    for (path, result) in registry.reload() {
        match result {
            Ok(Upgrade::Unchanged) => {}
            Err(LoadError::NotALibrary { .. }) if path == dir.path().join("counter.so") => {}
            other => panic!("{}: {other:?}", path.display()),
        }
    }
    assert_eq!(mark.apply(&()).unwrap(), vec!["00000003"]);
}

#[test]
fn a_plugin_file_keeps_its_configuration_across_removal_and_files_found_later_get_theirs() {
    let dir = plugin_dir();
    let registry = registry(&[]);
    registry.set_config_source(|file| {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        json!({"app": format!("found-{stem}"), "providers": [{"label": "x"}]})
    });
    let path = write_file(dir.path(), "counter.so", &build(1));
    registry
        .load_with_config(
            &path,
            &json!({"app": "given", "providers": [{"label": "one"}]}),
        )
        .unwrap();
    registry.watch(dir.path()).unwrap();
    let labels = registry.function::<(), String>("math", "label");
    assert_eq!(labels.apply(&()).unwrap(), vec!["one"]);

    // Removed, then put back: the plugin comes back with the configuration it was given.
    std::fs::remove_file(&path).unwrap();
    wait_for("the removal", || version_of(&registry, "given").is_none());
    publish_by_rename(&path, &build(2));
    wait_for("the file put back", || {
        version_of(&registry, "given").is_some()
    });
    assert_eq!(labels.apply(&()).unwrap(), vec!["one"]);

    // A file the watcher finds for the first time is configured by the config source.
    publish_by_rename(&dir.path().join("other.so"), &build(3));
    wait_for("the new file", || {
        version_of(&registry, "found-other").is_some()
    });
    // Ordered by app name: `found-other` before `given`.
    assert_eq!(labels.apply(&()).unwrap(), vec!["x", "one"]);
}

/// The notifications the (first) test plugin received, through its `probe` provider.
fn notifications(registry: &Registry) -> Vec<Notification> {
    let Value::Array(replies) = registry
        .apply_json("probe", "notifications", &Value::Null, Opts::new())
        .unwrap()
        .to_json(false)
    else {
        panic!("notifications are a list")
    };
    serde_json::from_value(replies[0].clone()).unwrap()
}

/// The file each loaded plugin came from.
fn files(registry: &Registry) -> Vec<PathBuf> {
    registry.plugins().into_iter().map(|p| p.file).collect()
}

#[test]
fn renaming_a_plugin_file_to_an_earlier_name_keeps_it_loaded() {
    let dir = plugin_dir();
    let late = write_file(dir.path(), "zz.so", &build(1));
    let registry = registry(&[]);
    registry.watch(dir.path()).unwrap();
    let early = dir.path().join("aa.so");
    std::fs::rename(&late, &early).unwrap();
    wait_for("the plugin to follow its file", || {
        files(&registry) == vec![early.clone()]
    });
    // The old name's removal came too: still loaded, still answering, no error left. To know
    // the watcher dealt with it, a file it refuses, written after the rename and named after
    // "zz.so" (a batch of events is handled in name order): once refused, all before is done.
    let fence = write_file(dir.path(), "zzz-fence.so", b"not a library");
    wait_for("the fence refused", || {
        registry
            .status()
            .files
            .iter()
            .any(|f| f.path == fence && f.error.is_some())
    });
    std::fs::remove_file(&fence).unwrap();
    wait_for("the fence gone", || {
        registry.status().files.iter().all(|f| f.path != fence)
    });
    assert_eq!(files(&registry), vec![early.clone()]);
    let mark = registry.function::<(), String>("probe", "mark");
    assert_eq!(mark.apply(&()).unwrap(), vec!["00000001"]);
    assert!(
        registry.status().files.iter().all(|f| f.error.is_none()),
        "{:?}",
        registry.status().files
    );
    // A reload agrees.
    registry.reload();
    assert_eq!(files(&registry), vec![early]);
}

#[test]
fn a_refused_duplicate_takes_over_when_the_original_goes() {
    let dir = plugin_dir();
    let original = write_file(dir.path(), "one.so", &build(1));
    let registry = registry(&[]);
    registry.watch(dir.path()).unwrap();
    let copy = dir.path().join("two.so");
    publish_by_rename(&copy, &build(2));
    wait_for("the duplicate refused", || {
        registry
            .status()
            .files
            .iter()
            .any(|f| f.path == copy && f.error.is_some())
    });
    std::fs::remove_file(&original).unwrap();
    let mark = registry.function::<(), String>("probe", "mark");
    wait_for("the duplicate to take over", || {
        mark.apply(&()).map(|m| m == ["00000002"]).unwrap_or(false)
    });
    assert_eq!(files(&registry), vec![copy]);
    // The gone file's record left the status, and nothing is in error.
    let status = registry.status();
    assert!(
        status
            .files
            .iter()
            .all(|f| f.path != original && f.error.is_none()),
        "{:?}",
        status.files
    );
}

#[test]
fn an_explicit_reload_retries_a_failed_file_and_hashes_what_looks_unchanged() {
    use std::os::unix::fs::PermissionsExt;
    let dir = plugin_dir();
    let registry = registry(&[]);
    registry.watch(dir.path()).unwrap();
    // Refused for its permissions; fixed by chmod alone, which changes no content.
    let path = dir.path().join("late.so");
    std::fs::write(&path, build(1)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(registry.upgrade(&path).is_err());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    registry.reload();
    let mark = registry.function::<(), String>("probe", "mark");
    assert_eq!(mark.apply(&()).unwrap(), vec!["00000001"]);
    // `cp -p` of a same-size build: same inode, size and mtime, other bytes.
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, build(2)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    registry.reload();
    assert_eq!(mark.apply(&()).unwrap(), vec!["00000002"]);
}

#[test]
fn callers_lose_no_call_while_the_plugin_is_replaced_100_times() {
    let dir = plugin_dir();
    let (registry, path) = setup(dir.path(), 1);
    // Watching finds the file already loaded and unchanged; upgrades keep its configuration.
    let found = registry.watch(dir.path()).unwrap();
    assert!(matches!(found[0].1, Ok(Upgrade::Unchanged)));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let mark = registry.function::<(), String>("math", "mark");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen: Vec<u32> = Vec::new();
                let mut calls = 0u64;
                loop {
                    // One last call after the stop: it must see the final version.
                    let stopping = stop.load(Ordering::SeqCst);
                    let answer = mark.apply(&()).expect("no call may fail");
                    calls += 1;
                    assert_eq!(answer.len(), 2, "both providers answer");
                    assert_eq!(answer[0], answer[1], "one whole version per call");
                    let version: u32 = answer[0].parse().unwrap();
                    if seen.last() != Some(&version) {
                        assert!(
                            seen.last().is_none_or(|last| *last < version),
                            "versions in order: {seen:?} then {version}"
                        );
                        seen.push(version);
                    }
                    if stopping {
                        break;
                    }
                }
                (calls, seen)
            })
        })
        .collect();
    for version in 2..=101u32 {
        if version % 2 == 0 {
            publish_by_rename(&path, &build(version));
        } else {
            publish_by_copy(&path, &build(version));
        }
        let expected = format!("0.1.0+{version:08}");
        wait_for("the new version", || {
            version_of(&registry, "counter").as_deref() == Some(&expected)
        });
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        let (calls, seen) = caller.join().expect("a caller failed");
        assert!(calls > 100, "{calls} calls");
        assert!(seen.len() > 1, "saw {seen:?}");
        assert_eq!(*seen.last().unwrap(), 101);
    }
    assert_eq!(registry.status().retired_total, 100);
}

#[test]
fn keep_loaded_policy_keeps_every_version_mapped() {
    let runtime = tempfile::tempdir().unwrap();
    let dir = plugin_dir();
    let path = write_file(dir.path(), "kept.so", &build(1));
    let registry = registry_with(RegistryConfig {
        runtime_dir: Some(runtime.path().to_owned()),
        retire: RetirePolicy::KeepLoaded,
        ..Default::default()
    });
    registry.upgrade(&path).unwrap();
    for version in 2..=4 {
        publish_by_rename(&path, &build(version));
        registry.upgrade(&path).unwrap();
    }
    let status = registry.status();
    assert_eq!(status.retired_kept, 3);
    assert_eq!(mapped_copies(runtime.path()), 4);
    let mark = registry.function::<(), String>("probe", "mark");
    assert_eq!(mark.apply(&()).unwrap(), vec!["00000004"]);
}

#[test]
fn a_retired_version_stays_mapped_while_a_call_runs_on_it() {
    let dir = plugin_dir();
    let path = write_file(dir.path(), "counter.so", &build(1));
    let registry = registry_with(RegistryConfig {
        count_calls: true,
        retire: RetirePolicy::Unload,
        ..Default::default()
    });
    registry
        .load_with_config(
            &path,
            &json!({"app": "counter", "providers": [{"label": "one"}, {"label": "two"}]}),
        )
        .unwrap();
    let sleep = registry.function::<u64, String>("math", "sleep");
    let running = std::thread::spawn(move || sleep.apply(&400));
    wait_until_called(&registry, "math", "sleep");
    publish_by_rename(&path, &build(2));
    assert!(matches!(
        registry.upgrade(&path).unwrap(),
        Upgrade::Replaced { .. }
    ));
    assert_eq!(
        registry.status().retired_mapped,
        1,
        "the old version still runs a call"
    );
    assert_eq!(running.join().unwrap().unwrap(), vec!["one", "two"]);
    assert_eq!(registry.status().retired_mapped, 0);
    assert_eq!(marks(&registry), vec!["00000002", "00000002"]);
}

#[test]
fn removing_the_file_unloads_on_upgrade() {
    let dir = plugin_dir();
    let (registry, path) = setup(dir.path(), 1);
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        registry.upgrade(&path).unwrap(),
        Upgrade::Removed(_)
    ));
    assert!(registry.plugins().is_empty());
}

const MOTTO: &str = "static text from the plugin's own memory";

#[test]
fn a_borrowed_static_stays_readable_after_its_version_is_retired() {
    use std::borrow::Cow;
    let dir = plugin_dir();
    let runtime = tempfile::tempdir().unwrap();
    let registry = registry_with(RegistryConfig {
        runtime_dir: Some(runtime.path().to_owned()),
        ..Default::default()
    });

    // Native path: the value points into the library, which the default policy keeps mapped.
    let path = write_file(dir.path(), "counter.so", &build(1));
    registry.load(&path).unwrap();
    let motto = registry.function::<(), Cow<'static, str>>("probe", "motto");
    let native = motto.apply(&()).unwrap().remove(0);
    assert!(
        matches!(native, Cow::Borrowed(_)),
        "zero-copy on the native path"
    );
    publish_by_rename(&path, &build(2));
    assert!(matches!(
        registry.upgrade(&path).unwrap(),
        Upgrade::Replaced { .. }
    ));
    assert_eq!(
        registry.status().retired_mapped,
        1,
        "retired but kept mapped"
    );
    assert_eq!(native, MOTTO);
    assert!(registry.unload("testplug"));

    // Stable path: the value is decoded into host memory and the library really is unmapped.
    let stable_path = write_file(dir.path(), "stable.so", &as_other_compiler(build(3)));
    let info = registry.load(&stable_path).unwrap();
    assert_eq!(info.call_path, epi::CallPath::Stable);
    let copies_before = mapped_copies(runtime.path());
    let stable = motto.apply(&()).unwrap().remove(0);
    assert!(
        matches!(stable, Cow::Owned(_)),
        "decoded on the stable path"
    );
    assert!(registry.unload("testplug"));
    assert_eq!(
        mapped_copies(runtime.path()),
        copies_before - 1,
        "the stable-path library is closed"
    );
    assert_eq!(stable, MOTTO);
}

#[test]
fn a_chmod_that_makes_a_loaded_file_untrusted_is_refused_loudly_at_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = plugin_dir();
    let path = write_file(dir.path(), "counter.so", &build(1));
    let registry = registry(&[]);
    registry.watch(dir.path()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    wait_for("the refusal in the status", || {
        registry
            .status()
            .files
            .iter()
            .any(|f| f.path == path && f.error.as_deref().is_some_and(|e| e.contains("untrusted")))
    });
    // The version already running keeps serving; a restart would refuse the file, and the
    // status says so now rather than then.
    let mark = registry.function::<(), String>("probe", "mark");
    assert_eq!(mark.apply(&()).unwrap(), vec!["00000001"]);
    // Fixed: the error goes.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_for("the error cleared", || {
        registry.status().files.iter().all(|f| f.error.is_none())
    });
}

#[test]
fn links_created_in_a_watched_directory_are_loaded() {
    let outside = plugin_dir();
    let built = write_file(outside.path(), "built.so", &build(7));
    let hello = write_file(
        outside.path(),
        "hello-build.so",
        &library_bytes("epi-plugin-hello"),
    );
    let dir = plugin_dir();
    let registry = registry(&[]);
    registry.watch(dir.path()).unwrap();
    std::fs::hard_link(&built, dir.path().join("linked.so")).unwrap();
    let mark = registry.function::<(), String>("probe", "mark");
    wait_for("the hard link loaded", || {
        mark.apply(&()).map(|m| m == ["00000007"]).unwrap_or(false)
    });
    std::os::unix::fs::symlink(&hello, dir.path().join("hello.so")).unwrap();
    wait_for("the symlink loaded", || {
        version_of(&registry, "hello").is_some()
    });
}

#[test]
fn definers_are_notified_of_a_rebuild_with_the_same_version() {
    let dir = plugin_dir();
    let (registry, path) = setup(dir.path(), 1);
    // Same version string (the mark is part of it), other bytes: a recompile.
    let mut rebuilt = build(1);
    rebuilt.extend_from_slice(&[5; 32]);
    publish_by_rename(&path, &rebuilt);
    assert!(matches!(
        registry.upgrade(&path).unwrap(),
        Upgrade::Replaced { .. }
    ));
    let notes = notifications(&registry);
    let rebuilt = notes.iter().any(|note| match note {
        Notification::Providers { service, old, new } => {
            service == "math" && !new.is_empty() && old == new
        }
        _ => false,
    });
    assert!(
        rebuilt,
        "no provider notification for the rebuild: {notes:?}"
    );
}
