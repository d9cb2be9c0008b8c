//! A plugin's processes as manifolds of the registry's engine: named `app/process`, inputs
//! resolved (`name` → `app/name`), and the plugin kept loaded while its workers run.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::{Engine, Manifold, Started};
use crate::loader::LoadedPlugin;

/// The engine name of a process of `app` (`app/name`), or an input named as in `Process::inputs`.
fn engine_name(app: &str, name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("{app}/{name}")
    }
}

/// The engine names of a plugin's processes.
pub(crate) fn names(plugin: &LoadedPlugin) -> Vec<String> {
    plugin
        .processes
        .iter()
        .map(|process| engine_name(&plugin.info.app, &process.name))
        .collect()
}

/// Installs a plugin's processes; a refused one (duplicate name, cycle) is logged.
pub(crate) fn install(engine: &Engine, plugin: &Arc<LoadedPlugin>) {
    let app = &plugin.info.app;
    for (index, process) in plugin.processes.iter().enumerate() {
        // The plugin sees its inputs under the names it declared.
        let inputs: Vec<(String, String)> = process
            .inputs
            .iter()
            .map(|input| (engine_name(app, input), input.clone()))
            .collect();
        let owner = plugin.clone();
        let declared = inputs.clone();
        let manifold = Manifold {
            inputs: inputs.iter().map(|(engine, _)| engine.clone()).collect(),
            start: Arc::new(move |context| {
                let outputs = context.inputs();
                let as_declared: BTreeMap<String, serde_json::Value> = declared
                    .iter()
                    .filter_map(|(engine, local)| {
                        Some((local.clone(), outputs.get(engine)?.clone()))
                    })
                    .collect();
                let output = owner.process_output(index, &as_declared)?;
                let runner = owner.clone();
                Ok(Started {
                    output,
                    body: Box::new(move |context| runner.process_run(index, context)),
                })
            }),
            filter: None,
        };
        let name = engine_name(app, &process.name);
        if let Err(err) = engine.install(&name, manifold) {
            tracing::error!(app = %app, process = %name, "process not started: {err}");
        }
    }
}

/// Stops and removes a plugin's processes; returns once they stopped.
pub(crate) fn uninstall(engine: &Engine, plugin: &LoadedPlugin) {
    let names = names(plugin);
    if !names.is_empty() {
        engine.uninstall(&names);
    }
}
