//! Loading real plugin libraries, and refusing every kind of bad file without harm.

use std::os::unix::fs::PermissionsExt;

use crate::common::*;
use epi::abi::{ABI_MAJOR, ABI_MINOR, BUILD_INFO, MAGIC, TARGET};
use epi::{ApplyOpts, CallPath, DecideOpts, Decision, LoadError};
use serde_json::json;

#[test]
fn loads_a_plugin_and_reports_what_it_is() {
    let registry = registry(&[]);
    let info = registry
        .load(plugin_library("epi-plugin-hello"))
        .expect("load hello");
    assert_eq!(info.app, "hello");
    assert_eq!(info.version, "1.0.0");
    assert_eq!(
        info.services,
        vec!["greeting".to_string(), "http".to_string()]
    );
    assert_ne!(info.content_hash, 0);
    assert_eq!(registry.plugins(), vec![info]);
    let services = registry.services();
    assert_eq!(services.len(), 2);
    assert_eq!(services[0].name, "greeting");
    assert_eq!(services[1].name, "http");
    assert!(services[0].declared);
    let functions: Vec<&str> = services[0]
        .functions
        .iter()
        .map(|(f, _)| f.as_str())
        .collect();
    assert_eq!(functions, vec!["greet", "greeted", "language"]);
}

#[test]
fn empty_file_is_refused() {
    let dir = plugin_dir();
    let path = write_file(dir.path(), "empty.so", b"");
    let registry = registry(&[]);
    let err = registry.load(&path).unwrap_err();
    assert!(matches!(err, LoadError::NotALibrary { .. }), "{err}");
    assert!(err.to_string().contains("empty.so"), "{err}");
    assert!(err.to_string().contains("empty"), "{err}");
    assert_still_serving(&registry, dir.path());
}

#[test]
fn text_file_is_refused() {
    let dir = plugin_dir();
    let path = write_file(dir.path(), "notes.so", b"this is not a library\n");
    let registry = registry(&[]);
    let err = registry.load(&path).unwrap_err();
    assert!(matches!(err, LoadError::NotALibrary { .. }), "{err}");
    assert!(err.to_string().contains("not an ELF file"), "{err}");
    assert_still_serving(&registry, dir.path());
}

#[test]
fn truncated_libraries_are_refused_not_fatal() {
    // dlopen of some of these kills the process with SIGBUS: the ELF check must catch them all.
    let bytes = library_bytes("epi-plugin-hello");
    let dir = plugin_dir();
    let registry = registry(&[]);
    for keep in [
        16,
        64,
        1000,
        4096,
        bytes.len() / 2,
        bytes.len() - 4096,
        bytes.len() - 100,
    ] {
        let path = write_file(dir.path(), &format!("cut-{keep}.so"), &bytes[..keep]);
        let err = registry.load(&path).unwrap_err();
        assert!(
            matches!(err, LoadError::NotALibrary { .. }),
            "{keep} bytes: {err}"
        );
        assert!(err.to_string().contains(&format!("cut-{keep}.so")), "{err}");
    }
    assert!(registry.plugins().is_empty());
    assert_still_serving(&registry, dir.path());
}

#[test]
fn library_without_entry_symbol_is_refused() {
    let dir = plugin_dir();
    let path = install(dir.path(), "epi-fixture-no-entry", "no-entry.so");
    let registry = registry(&[]);
    let err = registry.load(&path).unwrap_err();
    assert!(matches!(err, LoadError::NoEntry { .. }), "{err}");
    assert!(err.to_string().contains("EPI_PLUGIN_ENTRY"), "{err}");
    assert_still_serving(&registry, dir.path());
}

/// The entry's magic followed by the ABI major and minor version and panic=unwind
/// (little-endian).
fn entry_prefix(abi: u32, unwind: u32) -> Vec<u8> {
    let mut prefix = MAGIC.to_vec();
    prefix.extend_from_slice(&abi.to_le_bytes());
    prefix.extend_from_slice(&ABI_MINOR.to_le_bytes());
    prefix.extend_from_slice(&unwind.to_le_bytes());
    prefix
}

#[test]
fn plugin_built_against_another_abi_is_refused_before_running_it() {
    let mut bytes = library_bytes("epi-plugin-hello");
    assert_eq!(
        patch(&mut bytes, &entry_prefix(ABI_MAJOR, 1), &entry_prefix(7, 1)),
        1
    );
    let dir = plugin_dir();
    let path = write_file(dir.path(), "old-abi.so", &bytes);
    let registry = registry(&[]);
    let err = registry.load(&path).unwrap_err();
    match &err {
        LoadError::AbiMismatch {
            expected, found, ..
        } => assert_eq!((*expected, *found), (ABI_MAJOR, 7)),
        other => panic!("expected an ABI mismatch, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("old-abi.so")
            && text.contains("ABI 7")
            && text.contains(&format!("ABI {ABI_MAJOR}")),
        "{text}"
    );
    assert_still_serving(&registry, dir.path());
}

#[test]
fn plugin_announcing_another_compiler_takes_the_stable_path() {
    let mut bytes = library_bytes("epi-plugin-hello");
    let rustc = BUILD_INFO.find("rustc ").expect("rustc in build info") + 6;
    let mut other = BUILD_INFO.as_bytes().to_vec();
    other[rustc] = if other[rustc] == b'9' { b'8' } else { b'9' };
    assert!(patch(&mut bytes, BUILD_INFO.as_bytes(), &other) >= 1);
    let dir = plugin_dir();
    let path = write_file(dir.path(), "other-rustc.so", &bytes);
    let registry = registry(&[]);
    let info = registry.load(&path).unwrap();
    assert_eq!(info.call_path, CallPath::Stable);
    assert_eq!(info.build.as_bytes(), &other[..]);
    let greet = registry.function::<String, String>("greeting", "greet");
    assert_eq!(greet.apply(&"Ada".into()).unwrap(), vec!["Hello, Ada!"]);
    let language = registry.function::<String, Decision<String>>("greeting", "language");
    assert_eq!(
        language.decide(&"en-GB".into(), DecideOpts::new()).unwrap(),
        Decision::Decided("English".into())
    );
    // A type whose shape differs is refused before the provider runs, naming both shapes.
    let err = registry
        .function::<u64, String>("greeting", "greet")
        .apply(&7)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shapes s1 u64"), "{err}");
}

#[test]
fn plugin_built_for_another_target_is_refused() {
    let mut bytes = library_bytes("epi-plugin-hello");
    let other: String = TARGET
        .chars()
        .map(|c| if c == 'x' { 'y' } else { c })
        .collect();
    assert_ne!(other, TARGET);
    assert!(patch(&mut bytes, TARGET.as_bytes(), other.as_bytes()) >= 1);
    let dir = plugin_dir();
    let path = write_file(dir.path(), "other-target.so", &bytes);
    let registry = registry(&[]);
    let err = registry.load(&path).unwrap_err();
    match &err {
        LoadError::TargetMismatch {
            expected, found, ..
        } => assert_eq!(
            (expected.as_str(), found.as_str()),
            (TARGET, other.as_str())
        ),
        other => panic!("expected a target mismatch, got {other}"),
    }
    assert!(err.to_string().contains("other-target.so"), "{err}");
    assert_still_serving(&registry, dir.path());
}

#[test]
fn plugin_built_with_panic_abort_is_refused() {
    let mut bytes = library_bytes("epi-plugin-hello");
    assert_eq!(
        patch(
            &mut bytes,
            &entry_prefix(ABI_MAJOR, 1),
            &entry_prefix(ABI_MAJOR, 0)
        ),
        1
    );
    let dir = plugin_dir();
    let path = write_file(dir.path(), "aborts.so", &bytes);
    let registry = registry(&[]);
    let err = registry.load(&path).unwrap_err();
    assert!(matches!(err, LoadError::PanicAbort { .. }), "{err}");
    assert!(err.to_string().contains("panic=abort"), "{err}");
}

#[test]
fn duplicate_app_name_is_refused_and_the_first_keeps_serving() {
    let dir = plugin_dir();
    let first = install(dir.path(), "epi-plugin-hello", "hello.so");
    let second = install(dir.path(), "epi-plugin-hello", "hello-again.so");
    let registry = registry(&[]);
    registry.load(&first).unwrap();
    let err = registry.load(&second).unwrap_err();
    match &err {
        LoadError::DuplicateApp { app, existing, .. } => {
            assert_eq!(app, "hello");
            assert_eq!(existing, &first);
        }
        other => panic!("expected a duplicate, got {other}"),
    }
    assert!(err.to_string().contains("hello-again.so"), "{err}");
    assert_eq!(registry.plugins().len(), 1);
    let replies = registry
        .function::<String, String>("greeting", "greet")
        .apply(&"x".to_string())
        .unwrap();
    assert_eq!(replies, vec!["Hello, x!".to_string()]);
}

#[test]
fn files_writable_by_others_are_refused() {
    let dir = plugin_dir();
    let path = install(dir.path(), "epi-plugin-hello", "hello.so");
    let registry = registry(&[]);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = registry.load(&path).unwrap_err();
    assert!(matches!(err, LoadError::Untrusted { .. }), "{err}");
    assert!(err.to_string().contains("writable by every user"), "{err}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
    let err = registry.load(&path).unwrap_err();
    assert!(err.to_string().contains("writable by its group"), "{err}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = registry.load(&path).unwrap_err();
    assert!(matches!(err, LoadError::Untrusted { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("the directory {}", dir.path().display())),
        "{err}"
    );

    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    registry.load(&path).expect("trusted again");
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let registry = registry(&[]);
    let err = registry.load("/nonexistent/plugin.so").unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/plugin.so"), "{err}");
}

#[test]
fn panicking_init_is_reported_and_contained() {
    let registry = registry(&[]);
    let err = registry
        .load_with_config(testplug(), &json!({"providers": "not a list"}))
        .unwrap_err();
    assert!(matches!(err, LoadError::Init { .. }), "{err}");
    assert!(
        err.to_string().contains("invalid testplug configuration"),
        "{err}"
    );
    let dir = plugin_dir();
    assert_still_serving(&registry, dir.path());
}

#[test]
fn several_builds_of_one_library_are_loaded_side_by_side() {
    // Same file, three loads: each from its own private copy, each with its own state.
    let registry = registry(&["one", "two", "three"]);
    for (app, add) in [("one", 1), ("two", 2), ("three", 3)] {
        load_testplug(&registry, app, json!([{"label": app, "add": add}]));
    }
    let value = registry.function::<i64, i64>("math", "value");
    assert_eq!(value.apply(&10).unwrap(), vec![11, 12, 13]);
    let calls = registry.function::<(), u64>("math", "calls");
    assert_eq!(calls.apply(&()).unwrap(), vec![1, 1, 1]);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let copies: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.contains("libepi_plugin_testplug."))
        .collect();
    assert!(
        copies.len() >= 3,
        "expected three mapped copies: {copies:?}"
    );
}

#[test]
fn unloading_removes_providers_and_closes_the_library() {
    let runtime = tempfile::tempdir().unwrap();
    let registry = registry_with(epi::RegistryConfig {
        runtime_dir: Some(runtime.path().to_owned()),
        retire: epi::RetirePolicy::Unload,
        ..Default::default()
    });
    let mapped = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|line| line.contains(runtime.path().to_str().unwrap()))
            .count()
    };
    load_testplug(&registry, "solo", json!([{"label": "s", "add": 1}]));
    let value = registry.function::<i64, i64>("math", "value");
    assert_eq!(value.apply(&1).unwrap(), vec![2]);
    assert!(mapped() > 0, "the private copy is mapped while loaded");
    assert!(registry.unload("solo"));
    assert!(!registry.unload("solo"));
    assert_eq!(mapped(), 0, "the library is unmapped once unloaded");
    let err = value.apply(&1).unwrap_err();
    assert!(matches!(err, epi::Error::UnknownService(_)), "{err}");
    // The handle resolved before works again once a provider is back.
    load_testplug(&registry, "solo", json!([{"label": "s", "add": 5}]));
    assert_eq!(value.apply(&1).unwrap(), vec![6]);
}

#[test]
fn load_dir_loads_good_files_and_reports_bad_ones() {
    let dir = plugin_dir();
    install(dir.path(), "epi-plugin-hello", "a-hello.so");
    install(dir.path(), "epi-plugin-greeter-fr", "b-fr.so");
    write_file(dir.path(), "c-broken.so", b"garbage");
    write_file(dir.path(), ".hidden.so", b"garbage");
    write_file(dir.path(), "readme.txt", b"not a plugin");
    let registry = registry(&[]);
    let results = registry.load_dir(dir.path()).unwrap();
    let names: Vec<String> = results
        .iter()
        .map(|(path, result)| {
            format!(
                "{}:{}",
                path.file_name().unwrap().to_string_lossy(),
                result.is_ok()
            )
        })
        .collect();
    assert_eq!(
        names,
        vec!["a-hello.so:true", "b-fr.so:true", "c-broken.so:false"]
    );
    assert_eq!(registry.plugins().len(), 2);
}

#[test]
fn plugin_copies_left_by_a_dead_registry_are_removed_at_start() {
    let runtime = tempfile::tempdir().unwrap();
    // Left by a process that is gone (no pid is that high), and by one that runs (this one).
    let stale = runtime.path().join("epi-plugins-999999999-abc123");
    let live = runtime
        .path()
        .join(format!("epi-plugins-{}-def456", std::process::id()));
    let unrelated = runtime.path().join("epi-plugins-notapid");
    for dir in [&stale, &live, &unrelated] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("copy.so"), vec![0u8; 4096]).unwrap();
    }
    let registry = epi::Registry::new(epi::RegistryConfig {
        runtime_dir: Some(runtime.path().to_owned()),
        ..epi::RegistryConfig::default()
    })
    .unwrap();
    assert!(!stale.exists(), "the dead registry's copies stay");
    assert!(live.exists() && unrelated.exists());
    // This registry's own directory is named after this process.
    let own: Vec<String> = std::fs::read_dir(runtime.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&format!("epi-plugins-{}-", std::process::id())))
        .collect();
    assert_eq!(own.len(), 2, "{own:?}");
    drop(registry);
}

/// A uid that is neither root nor this user: the attacker.
const OTHER_USER: u32 = 65534;

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn refusal(path: &std::path::Path) -> String {
    let registry = epi::Registry::new(epi::RegistryConfig::default()).unwrap();
    match registry.load(path) {
        Err(err @ epi::LoadError::Untrusted { .. }) => err.to_string(),
        other => panic!("{} was not refused as untrusted: {other:?}", path.display()),
    }
}

#[test]
fn a_plugin_directory_under_a_directory_anyone_can_write_is_refused() {
    // /base (0777, not sticky) / plugins (0755) / hello.so: anyone can swap `plugins` for
    // another directory.
    let base = tempfile::tempdir().unwrap();
    set_mode(base.path(), 0o777);
    let plugins = base.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    set_mode(&plugins, 0o755);
    let file = epi_testkit::install(&plugins, "epi-plugin-hello", "hello.so");
    let err = refusal(&file);
    assert!(
        err.contains(&base.path().display().to_string()) && err.contains("every user"),
        "{err}"
    );
    // Fixed, it loads.
    set_mode(base.path(), 0o755);
    epi::Registry::new(epi::RegistryConfig::default())
        .unwrap()
        .load(&file)
        .unwrap();
}

#[test]
fn a_symlink_into_a_directory_anyone_can_write_is_refused() {
    let open = tempfile::tempdir().unwrap();
    set_mode(open.path(), 0o777);
    let target = epi_testkit::install(open.path(), "epi-plugin-hello", "hello.so");
    let plugins = plugin_dir();
    let link = plugins.path().join("hello.so");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = refusal(&link);
    assert!(
        err.contains(&open.path().display().to_string()) && err.contains("every user"),
        "{err}"
    );
    // The same link to a trusted place loads.
    set_mode(open.path(), 0o755);
    epi::Registry::new(epi::RegistryConfig::default())
        .unwrap()
        .load(&link)
        .unwrap();
}

#[test]
fn a_symlink_another_user_made_in_a_sticky_directory_is_refused() {
    // Like `dirs = ["/tmp"]`: a sticky directory where another user made a link to a
    // perfectly trusted plugin.
    let shared = tempfile::tempdir().unwrap();
    set_mode(shared.path(), 0o1777);
    let trusted = plugin_dir();
    let target = epi_testkit::install(trusted.path(), "epi-plugin-hello", "hello.so");
    let link = shared.path().join("hello.so");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(OTHER_USER), Some(OTHER_USER)).unwrap_or_else(|err| {
        panic!("this test gives a symlink to another user (lchown: {err}): run the tests as root, as CI does")
    });
    let err = refusal(&link);
    assert!(
        err.contains("symlink") && err.contains(&format!("uid {OTHER_USER}")),
        "{err}"
    );
    // Made by this user, it loads.
    std::os::unix::fs::lchown(&link, Some(unsafe_free_euid()), None).unwrap();
    epi::Registry::new(epi::RegistryConfig::default())
        .unwrap()
        .load(&link)
        .unwrap();
}

/// This process's effective uid, read from /proc.
fn unsafe_free_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .unwrap()
}

#[test]
fn stable_path_plugins_decode_a_calls_arguments_once_each_and_answer_every_provider() {
    // Two stable-path copies of the test plugin around a native one: the arguments of one call
    // are decoded by the first provider of each stable copy and read by its next ones.
    let stable = as_other_compiler(library_bytes("epi-plugin-testplug"));
    let dir = plugin_dir();
    let registry = registry(&["one", "native", "two"]);
    for app in ["one", "two"] {
        let path = write_file(dir.path(), &format!("{app}.so"), &stable);
        let providers = json!([{"label": format!("{app}-a"), "add": 1}, {"label": format!("{app}-b"), "add": 2}]);
        let info = registry
            .load_with_config(&path, &json!({"app": app, "providers": providers}))
            .unwrap();
        assert_eq!(info.call_path, CallPath::Stable);
    }
    load_testplug(&registry, "native", json!([{"label": "native", "add": 3}]));

    let tag = registry.function::<(String, u64), String>("math", "tag");
    assert_eq!(tag.apply(&("Ada".into(), 7)).unwrap(), ["Ada"; 5]);
    assert_eq!(tag.apply(&("Grace".into(), 8)).unwrap(), [""; 5]);
    let concurrent: Vec<String> = tag
        .apply_with(&("Ada".into(), 9), ApplyOpts::new().concurrent())
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(concurrent, ["Ada"; 5]);
    // A value parameter and a reference parameter, read from the kept arguments.
    let scale = registry.function::<(i64, i64), i64>("math", "scale");
    assert_eq!(scale.apply(&(3, 4)).unwrap(), [13, 14, 15, 13, 14]);
    // No arguments at all.
    let label = registry.function::<(), String>("math", "label");
    assert_eq!(
        label.apply(&()).unwrap(),
        ["one-a", "one-b", "native", "two-a", "two-b"]
    );
}
