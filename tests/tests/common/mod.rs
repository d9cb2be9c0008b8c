//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use epi::{PluginInfo, Registry, RegistryConfig};
use serde_json::{json, Value};

#[allow(unused_imports)]
pub use epi_testkit::{install, plugin_dir, plugin_library, write_file};

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

/// Replaces every occurrence of `from` by `to` (same length) in `bytes`; returns how many.
pub fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut count = 0;
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(from.len()).position(|w| w == from) {
        let start = at + found;
        bytes[start..start + to.len()].copy_from_slice(to);
        count += 1;
        at = start + to.len();
    }
    count
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
