//! Views of what can be called: `/_epi/services`, `/_epi/counters`, and the answers of
//! `/_epi/apply` and `/_epi/decide`.

use serde::Serialize;
use serde_json::Value;

/// A service and its providers in call order (from [`epi::ServiceInfo`]).
#[derive(Serialize)]
pub struct Service<'a> {
    /// Service name.
    pub name: &'a str,
    /// Whether a loaded plugin defines it.
    pub declared: bool,
    /// `[function, [[plugin, provider], ...]]` sorted by function, providers in call order.
    pub functions: Vec<(&'a str, Vec<(&'a str, &'a str)>)>,
}

impl<'a> From<&'a epi::ServiceInfo> for Service<'a> {
    fn from(service: &'a epi::ServiceInfo) -> Self {
        Service {
            name: &service.name,
            declared: service.declared,
            functions: service
                .functions
                .iter()
                .map(|(function, providers)| {
                    let providers = providers
                        .iter()
                        .map(|(plugin, provider)| (plugin.as_str(), provider.as_str()))
                        .collect();
                    (function.as_str(), providers)
                })
                .collect(),
        }
    }
}

/// `/_epi/services`: every service.
pub fn services(services: &[epi::ServiceInfo]) -> Vec<Service<'_>> {
    services.iter().map(Service::from).collect()
}

/// One provider function's calls, errors and panics (from [`epi::ProviderCounters`]).
#[derive(Serialize)]
pub struct Counters<'a> {
    /// The plugin's app name.
    pub plugin: &'a str,
    /// The provider's label.
    pub provider: &'a str,
    /// The service.
    pub service: &'a str,
    /// The function.
    pub function: &'a str,
    /// Whether the provider was added at run time.
    pub added: bool,
    /// Calls.
    pub calls: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Calls that panicked.
    pub panics: u64,
    /// Durations of sampled calls.
    pub latency: Latency<'a>,
}

impl<'a> From<&'a epi::ProviderCounters> for Counters<'a> {
    fn from(counters: &'a epi::ProviderCounters) -> Self {
        Counters {
            plugin: &counters.plugin,
            provider: &counters.provider,
            service: &counters.service,
            function: &counters.function,
            added: counters.added,
            calls: counters.calls,
            errors: counters.errors,
            panics: counters.panics,
            latency: (&counters.latency).into(),
        }
    }
}

/// Sampled call durations: counts per bucket of `epi::abi::LATENCY_BOUNDS_NS` (one more for
/// the rest) and their sum (from [`epi::LatencyCounts`]).
#[derive(Serialize)]
pub struct Latency<'a> {
    /// Count per bucket.
    pub buckets: &'a [u64],
    /// Sum of the sampled durations, in nanoseconds.
    pub sum_ns: u64,
}

impl<'a> From<&'a epi::LatencyCounts> for Latency<'a> {
    fn from(latency: &'a epi::LatencyCounts) -> Self {
        Latency {
            buckets: &latency.buckets,
            sum_ns: latency.sum_ns,
        }
    }
}

/// `/_epi/counters`: every provider function's counters.
pub fn counters(counters: &[epi::ProviderCounters]) -> Vec<Counters<'_>> {
    counters.iter().map(Counters::from).collect()
}

/// The answer of `/_epi/apply` and `/_epi/decide`: `{"result": ...}`.
#[derive(Serialize)]
pub struct Called<T> {
    /// What the call returned: apply's results, or decide's [`Decision`].
    pub result: T,
}

/// What a `decide` gave: `"no_decision"` or `{"decided": value}` (from [`epi::Decision`]).
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision<'a> {
    /// No provider decided.
    NoDecision,
    /// A provider decided this.
    Decided(&'a Value),
}

impl<'a> From<&'a epi::Decision<Value>> for Decision<'a> {
    fn from(decision: &'a epi::Decision<Value>) -> Self {
        match decision {
            epi::Decision::NoDecision => Decision::NoDecision,
            epi::Decision::Decided(value) => Decision::Decided(value),
        }
    }
}
