//! The admin JSON: one view per shape the admin routes (`/_epi/*`) answer and the CLI prints,
//! built from the registry's types by borrowing them.
//!
//! The daemon owns these shapes, so epi-core's structs need no serde of their own and can
//! change without changing what clients read. Each view keeps the field names, nesting and
//! spelling the routes have always answered with; `tests` pins them.

mod calls;
mod data;
mod plugins;
mod processes;
mod reload;
#[cfg(test)]
mod tests;

pub use calls::{counters, services, Called, Counters, Decision, Latency, Service};
pub use data::{
    data_groups, data_keys, data_pairs, data_status, data_values, DataGroups, DataPair, DataStatus,
    SourceKind,
};
pub use plugins::{CallPath, FileStatus, Inspect, Plugin, Status, Upgrade};
pub use processes::{Processes, Worker, WorkerError, WorkerState};
pub use reload::{FileReload, Reload};

/// A view as a JSON value, its objects' keys sorted (`null` if serde refuses it: a path that
/// is not UTF-8, a time before 1970).
pub fn to_json(view: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(view).unwrap_or(serde_json::Value::Null)
}
