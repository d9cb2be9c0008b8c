//! The immutable dispatch table calls read without a lock, and how it is built.
//!
//! Services and functions have dense ids ([`crate::ids`]) that never change for the life of a
//! registry, so handles resolved once stay valid across every later snapshot: a call indexes
//! `functions[id]` and finds the providers already in order.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::abi::manifest::TypeDesc;
use crate::abi::{ProviderEntry, StrRef, TypeRef};
use crate::ids::{FunctionId, Interner, ServiceId};
use crate::loader::LoadedPlugin;

/// One provider function as a call sees it: the `#[repr(C)]` entry the host and calling
/// plugins share. Its strings point into the snapshot's plugins and `names`.
pub(crate) type ProviderCall = ProviderEntry;

/// A string of an entry of a live snapshot.
pub(crate) fn text(value: &StrRef) -> &str {
    // SAFETY: entries are only read through a snapshot, which keeps every string they point
    // at alive (its plugins and its `names`); the strings came from `str`s.
    std::str::from_utf8(unsafe { value.as_bytes() }).unwrap_or("?")
}

fn type_ref(desc: &TypeDesc) -> TypeRef {
    TypeRef {
        name: StrRef::new(&desc.name),
        shape: StrRef::new(&desc.shape),
        size: desc.size,
        align: desc.align,
    }
}

/// Per service: whether a plugin defines it and its functions that have providers.
#[derive(Clone, Default)]
pub(crate) struct ServiceSlot {
    pub(crate) declared: bool,
    pub(crate) functions: FxHashMap<Box<str>, FunctionId>,
}

/// An immutable view of every loaded plugin. Published in a [`crate::published::Published`] cell.
#[derive(Default)]
pub(crate) struct Snapshot {
    /// Increases with every published snapshot.
    pub(crate) generation: u64,
    /// Providers plugins added at run time, as of this snapshot. Declared before `plugins` so
    /// that they are released while their libraries are still mapped.
    pub(crate) added: Vec<Vec<Arc<crate::loader::LoadedProvider>>>,
    /// Loaded plugins in dispatch order. Keeps their libraries mapped.
    pub(crate) plugins: Vec<Arc<LoadedPlugin>>,
    /// Indexed by `ServiceId`.
    pub(crate) services: Vec<ServiceSlot>,
    /// Ids of the services this snapshot names, for calls by name without the interner's lock.
    pub(crate) service_ids: FxHashMap<Box<str>, ServiceId>,
    /// Indexed by `FunctionId`: providers in call order (shared by the snapshots a change of
    /// another service's providers builds).
    pub(crate) functions: Vec<Arc<[ProviderCall]>>,
    /// The service and function names the entries point at: the interner never drops a name.
    _names: Option<Arc<parking_lot::Mutex<Interner>>>,
}

impl Snapshot {
    /// Whether a loaded plugin defines the service.
    pub(crate) fn is_declared(&self, service: ServiceId) -> bool {
        self.services
            .get(service as usize)
            .is_some_and(|slot| slot.declared)
    }

    /// Providers of a function, or `None` when no loaded plugin defines the service.
    #[inline]
    pub(crate) fn providers(
        &self,
        service: ServiceId,
        function: FunctionId,
    ) -> Option<&[ProviderCall]> {
        match self.services.get(service as usize) {
            Some(slot) if slot.declared => Some(
                self.functions
                    .get(function as usize)
                    .map(|list| &list[..])
                    .unwrap_or(&[]),
            ),
            _ => None,
        }
    }

    /// Providers of a function named at call time.
    #[inline]
    pub(crate) fn providers_by_name(
        &self,
        service: ServiceId,
        function: &str,
    ) -> Option<&[ProviderCall]> {
        match self.services.get(service as usize) {
            Some(slot) if slot.declared => Some(
                slot.functions
                    .get(function)
                    .and_then(|&id| self.functions.get(id as usize))
                    .map(|list| &list[..])
                    .unwrap_or(&[]),
            ),
            _ => None,
        }
    }
}

/// What the host configured about dispatch: plugin order, priorities, call counting.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rules {
    /// App names in dispatch order; the rest follow by app name.
    pub(crate) order: Vec<String>,
    /// Priority per app name, overriding the plugin's.
    pub(crate) priorities: BTreeMap<String, i32>,
    /// Count every call.
    pub(crate) count_calls: bool,
}

/// Position of a plugin in the configured order: listed plugins first, in list order, then the
/// rest by app name.
fn plugin_rank(rules: &Rules, app: &str) -> (usize, String) {
    let listed = rules.order.iter().position(|name| name == app);
    (listed.unwrap_or(usize::MAX), app.to_owned())
}

/// The priority a plugin's providers take unless they set their own.
pub(crate) fn plugin_priority(rules: &Rules, plugin: &LoadedPlugin) -> i32 {
    rules
        .priorities
        .get(&plugin.info.app)
        .copied()
        .unwrap_or(plugin.info.priority)
}

/// Builds the snapshot for `loaded`, interning every name it mentions.
pub(crate) fn build(
    generation: u64,
    loaded: &[Arc<LoadedPlugin>],
    config: &Rules,
    names: &Arc<parking_lot::Mutex<Interner>>,
) -> Snapshot {
    let mut plugins = loaded.to_vec();
    plugins.sort_by_cached_key(|plugin| plugin_rank(config, &plugin.info.app));
    let mut interner = names.lock();
    let interner = &mut *interner;

    let mut services: Vec<ServiceSlot> = Vec::new();
    let mut service_ids: FxHashMap<Box<str>, ServiceId> = FxHashMap::default();
    let slot = |services: &mut Vec<ServiceSlot>, id: ServiceId| -> usize {
        let index = id as usize;
        if services.len() <= index {
            services.resize_with(index + 1, ServiceSlot::default);
        }
        index
    };

    // (priority, plugin position, declaration position) orders providers; collect then sort.
    // One reading of each plugin's added providers: the entries below point into these.
    let added: Vec<Vec<Arc<crate::loader::LoadedProvider>>> = plugins
        .iter()
        .map(|plugin| by_label(plugin.dynamic.current()))
        .collect();
    let mut lists: FxHashMap<FunctionId, Vec<(Key, ProviderCall)>> = FxHashMap::default();
    for (position, plugin) in plugins.iter().enumerate() {
        for service in &plugin.info.services {
            let (id, _) = interner.service(service);
            service_ids.insert(service.as_str().into(), id);
            let index = slot(&mut services, id);
            services[index].declared = true;
        }
        let default_priority = plugin_priority(config, plugin);
        let providers = plugin
            .providers
            .iter()
            .chain(added[position].iter().map(|p| &**p));
        for (declaration, provider) in providers.enumerate() {
            let (service_id, service_name) = interner.service(&provider.service);
            if !service_ids.contains_key(&*provider.service) {
                service_ids.insert((*provider.service).into(), service_id);
            }
            let index = slot(&mut services, service_id);
            let priority = provider.priority.unwrap_or(default_priority);
            let at = Placed {
                plugin,
                provider,
                key: (Reverse(priority), position, declaration),
            };
            let service = (service_id, &*service_name);
            push_functions(
                &at,
                service,
                &mut services[index],
                &mut lists,
                interner,
                config,
            );
        }
    }

    let mut functions: Vec<Arc<[ProviderCall]>> = Vec::new();
    for (id, list) in lists {
        set_list(&mut functions, id, list);
    }

    Snapshot {
        generation,
        added,
        plugins,
        services,
        service_ids,
        functions,
        _names: Some(names.clone()),
    }
}

/// A plugin's added providers in the order they rank among themselves: by label (a
/// plugin's added providers of equal priority come after its declared ones, by label).
fn by_label(
    mut added: Vec<Arc<crate::loader::LoadedProvider>>,
) -> Vec<Arc<crate::loader::LoadedProvider>> {
    added.sort_by(|a, b| a.label.cmp(&b.label));
    added
}

/// (priority, plugin position, declaration position): the order of a function's providers.
type Key = (Reverse<i32>, usize, usize);

/// A provider and where it stands in the order.
struct Placed<'p> {
    plugin: &'p LoadedPlugin,
    provider: &'p crate::loader::LoadedProvider,
    key: Key,
}

/// Adds the entries of `at`'s functions to `lists`, and their names to the service's slot.
fn push_functions(
    at: &Placed<'_>,
    (service_id, service_name): (ServiceId, &str),
    slot: &mut ServiceSlot,
    lists: &mut FxHashMap<FunctionId, Vec<(Key, ProviderCall)>>,
    interner: &mut Interner,
    config: &Rules,
) {
    for function in &at.provider.functions {
        let (function_id, function_name) = interner.function(service_id, &function.name);
        if !slot.functions.contains_key(function.name.as_str()) {
            slot.functions
                .insert(function.name.as_str().into(), function_id);
        }
        let names = (service_name, &*function_name);
        lists.entry(function_id).or_default().push((
            at.key,
            entry(at.plugin, at.provider, function, names, config),
        ));
    }
}

/// The entry of one provider function. `names` are the interned service and function names,
/// which outlive every snapshot (the snapshot holds the interner).
fn entry(
    plugin: &LoadedPlugin,
    provider: &crate::loader::LoadedProvider,
    function: &crate::loader::LoadedFunction,
    names: (&str, &str),
    config: &Rules,
) -> ProviderEntry {
    ProviderEntry {
        counters: Arc::as_ptr(&function.counters),
        count_calls: if config.count_calls {
            crate::abi::COUNT_CALLS | crate::abi::COUNT_LATENCY
        } else {
            0
        },
        plugin: StrRef::new(&plugin.app),
        provider: StrRef::new(&provider.label),
        service: StrRef::new(names.0),
        function: StrRef::new(names.1),
        instance: function.instance,
        typed: function.typed,
        stable: function.stable,
        args: type_ref(&function.args),
        output: type_ref(&function.output),
    }
}

/// Sorts `list` by key and stores it as function `id`'s providers.
fn set_list(
    functions: &mut Vec<Arc<[ProviderCall]>>,
    id: FunctionId,
    mut list: Vec<(Key, ProviderCall)>,
) {
    list.sort_by_key(|(key, _)| *key);
    let index = id as usize;
    if functions.len() <= index {
        functions.resize_with(index + 1, || Arc::from(Vec::new()));
    }
    functions[index] = list.into_iter().map(|(_, call)| call).collect();
}

/// The snapshot after providers added at run time changed for `service` only (the loaded
/// plugins are those of `old`): every other function keeps its list.
pub(crate) fn update_service(
    old: &Snapshot,
    generation: u64,
    config: &Rules,
    names: &Arc<parking_lot::Mutex<Interner>>,
    service: &str,
) -> Snapshot {
    let plugins = old.plugins.clone();
    // The lists of other services are `old`'s: they point into `old`'s added providers of those
    // services, which stay; the changed service's lists are rebuilt from its providers now.
    let added: Vec<Vec<Arc<crate::loader::LoadedProvider>>> = plugins
        .iter()
        .zip(&old.added)
        .map(|(plugin, before)| {
            let kept = before.iter().filter(|p| &*p.service != service).cloned();
            let now = plugin
                .dynamic
                .current()
                .into_iter()
                .filter(|p| &*p.service == service);
            by_label(kept.chain(now).collect())
        })
        .collect();
    let mut services = old.services.clone();
    let mut service_ids = old.service_ids.clone();
    let mut functions = old.functions.clone();
    let mut interner = names.lock();
    let (service_id, service_name) = interner.service(service);
    if !service_ids.contains_key(service) {
        service_ids.insert(service.into(), service_id);
    }
    let index = service_id as usize;
    if services.len() <= index {
        services.resize_with(index + 1, ServiceSlot::default);
    }
    let mut lists: FxHashMap<FunctionId, Vec<(Key, ProviderCall)>> = services[index]
        .functions
        .values()
        .map(|&id| (id, Vec::new()))
        .collect();
    for (position, plugin) in plugins.iter().enumerate() {
        let default_priority = plugin_priority(config, plugin);
        let providers = plugin
            .providers
            .iter()
            .chain(added[position].iter().map(|p| &**p))
            .filter(|provider| &*provider.service == service);
        for (declaration, provider) in providers.enumerate() {
            let priority = provider.priority.unwrap_or(default_priority);
            let at = Placed {
                plugin,
                provider,
                key: (Reverse(priority), position, declaration),
            };
            let service = (service_id, &*service_name);
            push_functions(
                &at,
                service,
                &mut services[index],
                &mut lists,
                &mut interner,
                config,
            );
        }
    }
    drop(interner);
    for (id, list) in lists {
        set_list(&mut functions, id, list);
    }
    Snapshot {
        generation,
        added,
        plugins,
        services,
        service_ids,
        functions,
        _names: Some(names.clone()),
    }
}
