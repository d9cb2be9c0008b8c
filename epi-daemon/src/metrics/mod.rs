//! `/_epi/metrics`: the daemon's state in Prometheus' text format.
//!
//! Every family is built when scraped, from what the registry already keeps (provider
//! counters and sampled latencies, the reload history, data and process reports) and from
//! the daemon's own count of HTTP answers: serving metrics adds no work to a call.

pub mod http;
mod model;

use epi::Registry;
use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

use self::http::HttpCounts;
use self::model::{counter, family, gauge, histogram, labels};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the metrics could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The encoder refused a family.
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] prometheus::Error),
    /// The encoder wrote something that is not UTF-8.
    #[error("the metrics are not UTF-8: {0}")]
    Text(#[from] std::string::FromUtf8Error),
}

/// Every family, in the text format.
pub fn render(registry: &Registry, http: &HttpCounts) -> Result<String, MetricsError> {
    let mut families = Vec::new();
    families.extend(calls(registry));
    families.extend(plugins(registry));
    families.extend(data(registry));
    families.extend(processes(registry));
    families.extend(requests(http));
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&families, &mut buffer)?;
    Ok(String::from_utf8(buffer)?)
}

/// Calls, errors, panics and sampled durations per provider function.
fn calls(registry: &Registry) -> Vec<MetricFamily> {
    let rows = registry.counters();
    let key = |row: &epi::ProviderCounters| {
        labels(&[
            ("service", &row.service),
            ("function", &row.function),
            ("plugin", &row.plugin),
            ("provider", &row.provider),
        ])
    };
    let each = |value: fn(&epi::ProviderCounters) -> u64| {
        rows.iter()
            .map(|row| counter(key(row), value(row)))
            .collect::<Vec<_>>()
    };
    [
        family(
            "epi_calls_total",
            "Calls of a provider function since its plugin version was loaded.",
            MetricType::COUNTER,
            each(|row| row.calls),
        ),
        family(
            "epi_call_errors_total",
            "Calls of a provider function that returned an error.",
            MetricType::COUNTER,
            each(|row| row.errors),
        ),
        family(
            "epi_call_panics_total",
            "Calls of a provider function that panicked.",
            MetricType::COUNTER,
            each(|row| row.panics),
        ),
        family(
            "epi_call_duration_seconds",
            "Durations of sampled calls of a provider function (one call in 32 is timed).",
            MetricType::HISTOGRAM,
            rows.iter()
                .map(|row| histogram(key(row), &row.latency))
                .collect(),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Loaded plugins, and what loads, upgrades and refusals happened per file.
fn plugins(registry: &Registry) -> Vec<MetricFamily> {
    let status = registry.status();
    let history = registry.history();
    let per_file = |value: fn(&epi::FileTotals) -> u64| {
        history
            .totals
            .iter()
            .map(|(path, totals)| {
                let file = path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let app = totals.app.clone().unwrap_or_default();
                counter(labels(&[("plugin", &app), ("file", &file)]), value(totals))
            })
            .collect::<Vec<_>>()
    };
    [
        family(
            "epi_plugins_loaded",
            "Plugins serving.",
            MetricType::GAUGE,
            vec![gauge(Vec::new(), status.plugins.len() as f64)],
        ),
        family(
            "epi_plugin_info",
            "The version serving per plugin (always 1).",
            MetricType::GAUGE,
            status
                .plugins
                .iter()
                .map(|plugin| {
                    let path = format!("{:?}", plugin.call_path).to_lowercase();
                    gauge(
                        labels(&[
                            ("plugin", &plugin.app),
                            ("version", &plugin.version),
                            ("call_path", &path),
                        ]),
                        1.0,
                    )
                })
                .collect(),
        ),
        family(
            "epi_plugin_loads_total",
            "First loads of a plugin file.",
            MetricType::COUNTER,
            per_file(|totals| totals.loads),
        ),
        family(
            "epi_plugin_upgrades_total",
            "Replacements of a plugin by a new version from its file.",
            MetricType::COUNTER,
            per_file(|totals| totals.upgrades),
        ),
        family(
            "epi_plugin_unloads_total",
            "Unloads of a plugin (its file gone, or asked).",
            MetricType::COUNTER,
            per_file(|totals| totals.removals),
        ),
        family(
            "epi_plugin_failures_total",
            "Refused loads or upgrades of a plugin file (what served before keeps serving).",
            MetricType::COUNTER,
            per_file(|totals| totals.failures),
        ),
        family(
            "epi_plugin_file_failing",
            "1 while the last attempt on a plugin file failed.",
            MetricType::GAUGE,
            status
                .files
                .iter()
                .map(|file| {
                    let name = file.path.display().to_string();
                    let failing = if file.error.is_some() { 1.0 } else { 0.0 };
                    gauge(labels(&[("file", &name)]), failing)
                })
                .collect(),
        ),
        family(
            "epi_reload_duration_seconds",
            "Durations of loads, upgrades, unloads and refusals (checks and init included).",
            MetricType::HISTOGRAM,
            vec![histogram(Vec::new(), &history.durations)],
        ),
        family(
            "epi_retired_versions_mapped",
            "Retired plugin versions whose library is still mapped.",
            MetricType::GAUGE,
            vec![gauge(Vec::new(), status.retired_mapped as f64)],
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Data sources whose last read failed.
fn data(registry: &Registry) -> Vec<MetricFamily> {
    let sources = registry.data_status();
    family(
        "epi_data_source_errors",
        "1 while a data source's last read failed (its previous value keeps being served).",
        MetricType::GAUGE,
        sources
            .iter()
            .map(|source| {
                let failing = if source.error.is_some() { 1.0 } else { 0.0 };
                gauge(
                    labels(&[
                        ("service", &source.service),
                        ("key", &source.key),
                        ("source", &source.source),
                    ]),
                    failing,
                )
            })
            .collect(),
    )
    .into_iter()
    .collect()
}

/// Plugin processes: starts, restarts, and whether each runs.
fn processes(registry: &Registry) -> Vec<MetricFamily> {
    let report = registry.process_report();
    let each = |value: fn(&epi::WorkerReport) -> f64, as_counter: bool| {
        report
            .workers
            .iter()
            .map(|(name, worker)| {
                let key = labels(&[("process", name)]);
                if as_counter {
                    counter(key, value(worker) as u64)
                } else {
                    gauge(key, value(worker))
                }
            })
            .collect::<Vec<_>>()
    };
    [
        family(
            "epi_process_starts_total",
            "Starts of a plugin process (since its plugin version was installed).",
            MetricType::COUNTER,
            each(|worker| worker.start_count as f64, true),
        ),
        family(
            "epi_process_restarts_total",
            "Restarts of a plugin process: starts after the first.",
            MetricType::COUNTER,
            each(|worker| worker.start_count.saturating_sub(1) as f64, true),
        ),
        family(
            "epi_process_up",
            "1 while a plugin process runs.",
            MetricType::GAUGE,
            each(
                |worker| {
                    if worker.state == epi::WorkerState::Started {
                        1.0
                    } else {
                        0.0
                    }
                },
                false,
            ),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// HTTP answers by status.
fn requests(http: &HttpCounts) -> Vec<MetricFamily> {
    family(
        "epi_http_requests_total",
        "HTTP requests answered, by status code.",
        MetricType::COUNTER,
        http.counts()
            .into_iter()
            .map(|(code, count)| counter(labels(&[("code", &code.to_string())]), count))
            .collect(),
    )
    .into_iter()
    .collect()
}
