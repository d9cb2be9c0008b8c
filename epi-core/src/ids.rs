//! Dense ids for service and function names, given out once and never changed for the life of
//! a registry, so handles resolved once stay valid across every snapshot.

use std::sync::Arc;

use rustc_hash::FxHashMap;

/// Dense id of a service name.
pub(crate) type ServiceId = u32;
/// Dense id of a `(service, function)` pair.
pub(crate) type FunctionId = u32;

/// Names to ids. Grows only; guarded by a mutex, never touched by calls.
#[derive(Default)]
pub(crate) struct Interner {
    services: FxHashMap<String, ServiceId>,
    service_names: Vec<Arc<str>>,
    /// Per service, its functions' ids (looked up by `&str`, without allocating).
    functions: Vec<FxHashMap<Box<str>, FunctionId>>,
    function_names: Vec<Arc<str>>,
}

impl Interner {
    pub(crate) fn service(&mut self, name: &str) -> (ServiceId, Arc<str>) {
        if let Some(&id) = self.services.get(name) {
            return (id, self.service_names[id as usize].clone());
        }
        let id = self.service_names.len() as ServiceId;
        let shared: Arc<str> = Arc::from(name);
        self.services.insert(name.to_owned(), id);
        self.service_names.push(shared.clone());
        (id, shared)
    }

    pub(crate) fn function_name(&self, id: FunctionId) -> &Arc<str> {
        &self.function_names[id as usize]
    }

    pub(crate) fn service_name(&self, id: ServiceId) -> &Arc<str> {
        &self.service_names[id as usize]
    }

    pub(crate) fn function(&mut self, service: ServiceId, name: &str) -> (FunctionId, Arc<str>) {
        let index = service as usize;
        if self.functions.len() <= index {
            self.functions.resize_with(index + 1, Default::default);
        }
        if let Some(&id) = self.functions[index].get(name) {
            return (id, self.function_names[id as usize].clone());
        }
        let id = self.function_names.len() as FunctionId;
        let shared: Arc<str> = Arc::from(name);
        self.functions[index].insert(name.into(), id);
        self.function_names.push(shared.clone());
        (id, shared)
    }
}
