//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use epi::{PluginInfo, Registry, RegistryConfig};
use serde_json::{json, Value};

#[allow(unused_imports)]
pub use epi_testkit::{install, patch, plugin_dir, plugin_library, write_file};

/// A registry with the given dispatch order.
pub fn registry(order: &[&str]) -> Registry {
    registry_with(RegistryConfig {
        order: order.iter().map(|name| name.to_string()).collect(),
        ..RegistryConfig::default()
    })
}

/// A registry with a full configuration.
pub fn registry_with(config: RegistryConfig) -> Registry {
    Registry::new(config).expect("registry")
}

/// Path of the built test plugin library.
pub fn testplug() -> PathBuf {
    plugin_library("epi-plugin-testplug")
}

/// Loads the test plugin as `app` with the given providers.
pub fn load_testplug(registry: &Registry, app: &str, providers: Value) -> PluginInfo {
    load_testplug_config(registry, json!({"app": app, "providers": providers}))
}

/// Loads the test plugin with a whole configuration.
pub fn load_testplug_config(registry: &Registry, config: Value) -> PluginInfo {
    registry
        .load_with_config(testplug(), &config)
        .expect("load testplug")
}

/// The bytes of a built plugin.
pub fn library_bytes(crate_name: &str) -> Vec<u8> {
    std::fs::read(plugin_library(crate_name)).expect("read plugin")
}

/// Asserts the registry still loads and serves a good plugin.
pub fn assert_still_serving(registry: &Registry, dir: &Path) {
    let good = install(dir, "epi-plugin-hello", "hello-after-failure.so");
    let _ = registry.unload("hello");
    registry.load(&good).expect("a good plugin still loads");
    let replies = registry
        .function::<String, String>("greeting", "greet")
        .apply(&"after".to_string())
        .expect("still serving");
    assert!(
        replies.contains(&"Hello, after!".to_string()),
        "{replies:?}"
    );
}

/// Three plugins in order alpha, beta, gamma, each with one `math` provider labelled
/// `{app}-p` adding 1, 10 and 100 with the given behaviours; gamma's decides.
pub fn three(behaviours: [&str; 3]) -> Registry {
    let registry = registry(&["alpha", "beta", "gamma"]);
    for ((app, add), behaviour) in [("alpha", 1), ("beta", 10), ("gamma", 100)]
        .into_iter()
        .zip(behaviours)
    {
        load_testplug(
            &registry,
            app,
            json!([{"label": format!("{app}-p"), "add": add, "behaviour": behaviour,
                    "decides": app == "gamma"}]),
        );
    }
    registry
}

/// The test plugin with its build mark set to `mark`: a distinct build of the same library.
pub fn build(mark: u32) -> Vec<u8> {
    static BASE: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
    let (base, offset) = BASE.get_or_init(|| {
        let bytes = library_bytes("epi-plugin-testplug");
        let marker = b"EPIMARK:00000000";
        let offset = bytes
            .windows(marker.len())
            .position(|window| window == marker)
            .expect("the build mark");
        (bytes, offset + 8)
    });
    let mut bytes = base.clone();
    bytes[*offset..*offset + 8].copy_from_slice(format!("{mark:08}").as_bytes());
    bytes
}

/// How many distinct files under `runtime` are mapped into this process.
pub fn mapped_copies(runtime: &Path) -> usize {
    let runtime = runtime.to_string_lossy().into_owned();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let copies: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with(&runtime))
        .collect();
    copies.len()
}

/// Waits until `registry` counted at least one call of `service.function` (the registry needs
/// `RegistryConfig::count_calls`): the call is running, not merely about to start.
pub fn wait_until_called(registry: &Registry, service: &str, function: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let called = registry
            .counters()
            .iter()
            .any(|c| c.service == service && c.function == function && c.calls > 0);
        if called {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{service}.{function} was never called"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Publishes a new build the safe way: write a temporary dotfile, rename it into place.
pub fn publish_by_rename(path: &Path, bytes: &[u8]) {
    let dir = path.parent().unwrap();
    let temp = write_file(
        dir,
        &format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()),
        bytes,
    );
    std::fs::rename(temp, path).unwrap();
}

/// `bytes` with one byte of the rustc release in its build string changed: the loader takes it
/// for another compiler's build and puts it on the stable call path (same code, same results).
pub fn as_other_compiler(bytes: Vec<u8>) -> Vec<u8> {
    epi_testkit::as_other_compiler(bytes, epi::abi::BUILD_INFO)
}
