//! The test plugin as the comparison benches load it: on the native path (this build) or on
//! the stable path (the same library announcing another rustc).

use epi::{LoadProbe, Registry, RegistryConfig};
use serde_json::json;

/// A registry with the test plugin's `count` providers (each adding 1), loaded from `path`.
fn load(path: &std::path::Path, count: usize, probe: LoadProbe) -> (Registry, epi::PluginInfo) {
    let registry = Registry::new(RegistryConfig {
        load_probe: probe,
        ..RegistryConfig::default()
    })
    .expect("registry");
    let providers: Vec<_> = (0..count)
        .map(|i| json!({"label": format!("p{i}"), "add": 1}))
        .collect();
    let info = registry
        .load_with_config(path, &json!({"app": "bench", "providers": providers}))
        .expect("load the test plugin");
    (registry, info)
}

/// The test plugin's `count` providers on the native path.
pub fn registry(count: usize, probe: LoadProbe) -> Registry {
    let library = epi_testkit::plugin_library("epi-plugin-testplug");
    load(&library, count, probe).0
}

/// The test plugin with one byte of its rustc release changed in its build string: the loader
/// takes it for another compiler's build and puts its `count` providers on the stable path.
pub fn stable_registry(count: usize, probe: LoadProbe) -> Registry {
    let library = epi_testkit::plugin_library("epi-plugin-testplug");
    let bytes = epi_testkit::as_other_compiler(
        std::fs::read(&library).expect("read the test plugin"),
        epi::abi::BUILD_INFO,
    );
    let dir = epi_testkit::plugin_dir().keep();
    let path = epi_testkit::write_file(&dir, "stable.so", &bytes);
    let (registry, info) = load(&path, count, probe);
    assert_eq!(info.call_path, epi::CallPath::Stable);
    registry
}
