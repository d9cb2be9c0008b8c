//! Builds the registry the daemon and the in-process CLI use, from the configuration.

use std::time::Duration;

use epi::{LoadProbe, Registry, RegistryConfig, RetirePolicy};

use crate::config::{Config, Retire};

/// A registry with the configured plugins loaded (a file that fails is logged and skipped)
/// and, when `watch` is set, their directories followed; their processes run unless
/// `processes` is false (read-only commands).
pub fn open_registry(
    config: &Config,
    watch: bool,
    processes: bool,
) -> Result<Registry, Box<dyn std::error::Error + Send + Sync>> {
    let registry = Registry::new(RegistryConfig {
        order: config.plugins.order.clone(),
        priorities: config.plugins.priorities.clone(),
        runtime_dir: config.data.dir.clone(),
        retire: match config.plugins.retire {
            Retire::Release => RetirePolicy::Release,
            Retire::Unload => RetirePolicy::Unload,
            Retire::KeepLoaded => RetirePolicy::KeepLoaded,
        },
        file_pattern: Some(config.plugins.pattern.clone()),
        count_calls: true,
        max_data_file_bytes: config.data.max_file_bytes,
        data_read_timeout: config.data.read_timeout_ms.map(Duration::from_millis),
        load_probe: if config.plugins.probe {
            LoadProbe::Child
        } else {
            LoadProbe::Off
        },
        load_probe_timeout: config.plugins.probe_timeout_ms.map(Duration::from_millis),
        skip_processes: !processes,
        isolate: config.plugins.isolate.clone(),
        isolated_call_timeout: config
            .plugins
            .isolate_call_timeout_ms
            .map(Duration::from_millis),
        plugin_host: std::env::current_exe()
            .ok()
            .map(epi::isolation::PluginHostCommand::epi),
        ..RegistryConfig::default()
    })?;
    // Files the watcher finds later get their `[plugins.config]` entry too.
    let plugins = config.clone();
    registry.set_config_source(move |file| plugins.plugin_config(file));
    for dir in config.plugin_dirs() {
        match registry.load_dir_with_config(&dir, |file| config.plugin_config(file)) {
            Ok(results) => {
                for (_, result) in results {
                    if let Ok(info) = result {
                        tracing::info!(app = %info.app, version = %info.version, "loaded");
                    }
                }
            }
            Err(err) => {
                tracing::warn!(dir = %dir.display(), "cannot read the plugin directory: {err}");
                continue;
            }
        }
        if watch && config.plugins.watch {
            registry.watch(&dir)?;
        }
    }
    Ok(registry)
}
