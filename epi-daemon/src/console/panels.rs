//! The console's panels as HTML, rendered on the server at each refresh: plugins and files,
//! services, provider counters and latency, processes, data, the reload history.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use epi::{ChangeKind, History, ProviderCounters, Registry};
use maud::{html, Markup, PreEscaped};

use super::graph;
use super::window::{row_key, LatencyWindow, Quantiles};

/// How many reload history entries the panel shows (newest first).
const HISTORY_SHOWN: usize = 50;

/// Every panel, as one fragment the page swaps in.
pub fn render(registry: &Registry, window: &LatencyWindow) -> Markup {
    let counters = registry.counters();
    let latency = window.observe(&counters);
    let history = registry.history();
    html! {
        (plugins(registry, &history))
        (services(&counters))
        (calls(&counters, &latency, window))
        (processes(registry))
        (data(registry))
        (reloads(&history))
    }
}

/// The file name of a path, for narrow columns (the full path is the cell's title).
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(at_ms: u64) -> String {
    let seconds = at_ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Seconds as a short human duration.
fn duration(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else if seconds >= 1e-3 {
        format!("{:.2} ms", seconds * 1e3)
    } else if seconds >= 1e-6 {
        format!("{:.2} µs", seconds * 1e6)
    } else {
        format!("{:.0} ns", seconds * 1e9)
    }
}

fn plugins(registry: &Registry, history: &History) -> Markup {
    let status = registry.status();
    // When each app's serving version arrived: its latest load or replacement.
    let mut loaded_at: HashMap<&str, u64> = HashMap::new();
    for change in &history.changes {
        if let (Some(app), ChangeKind::Loaded | ChangeKind::Replaced) = (&change.app, change.kind) {
            loaded_at.insert(app, change.at_ms);
        }
    }
    html! {
        section #plugins-panel {
            h2 { "Plugins" }
            table #plugins {
                thead { tr {
                    th { "app" } th { "version" } th { "file" } th { "content hash" }
                    th { "priority" } th { "services" } th { "call path" } th { "loaded at" }
                    th {}
                } }
                tbody {
                    @for plugin in &status.plugins {
                        tr data-app=(plugin.app) {
                            td.app { (plugin.app) }
                            td.version { (plugin.version) }
                            td.file title=(plugin.file.display()) { (file_name(&plugin.file)) }
                            td.mono { (format!("{:016x}", plugin.content_hash)) }
                            td.num { (plugin.priority) }
                            td { (plugin.services.join(", ")) }
                            td { (format!("{:?}", plugin.call_path).to_lowercase()) }
                            td { (loaded_at.get(plugin.app.as_str()).map(|&at| utc(at)).unwrap_or_default()) }
                            td { button.reload type="button" data-plugin=(plugin.app) { "Reload" } }
                        }
                    }
                }
            }
            h3 { "Files" }
            table #files {
                thead { tr { th { "file" } th { "app" } th { "last error" } } }
                tbody {
                    @for file in &status.files {
                        tr.failed[file.error.is_some()] {
                            td.file title=(file.path.display()) { (file_name(&file.path)) }
                            td { (file.app.as_deref().unwrap_or("—")) }
                            td.error { (file.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            p.note {
                "Retired versions still mapped: " strong #retired-mapped { (status.retired_mapped) }
                " · kept loaded: " (status.retired_kept)
                " · retired since start: " (status.retired_total)
            }
        }
    }
}

fn services(counters: &[ProviderCounters]) -> Markup {
    // service → function → providers in dispatch order (the counters are in that order).
    let mut services: BTreeMap<&str, BTreeMap<&str, Vec<&ProviderCounters>>> = BTreeMap::new();
    for row in counters {
        services
            .entry(&row.service)
            .or_default()
            .entry(&row.function)
            .or_default()
            .push(row);
    }
    html! {
        section #services-panel {
            h2 { "Services" }
            table #services {
                thead { tr { th { "service" } th { "function" } th { "providers, in dispatch order" } } }
                tbody {
                    @for (service, functions) in &services {
                        @for (function, providers) in functions {
                            tr {
                                td { (service) }
                                td.mono { (function) }
                                td {
                                    ol.providers {
                                        @for row in providers {
                                            li {
                                                (row.plugin) "/" (row.provider)
                                                @if row.added { " " span.tag { "added" } } @else { " " span.tag.static { "declared" } }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn calls(
    counters: &[ProviderCounters],
    latency: &HashMap<super::window::RowKey, Quantiles>,
    window: &LatencyWindow,
) -> Markup {
    let shown = |value: Option<f64>| value.map(duration).unwrap_or_else(|| "—".to_owned());
    html! {
        section #calls-panel {
            h2 { "Calls" }
            p.note {
                "Latency over the last " (window.span().as_secs()) " s, from sampled calls (one in "
                (epi::abi::LATENCY_SAMPLE_EVERY) " is timed)."
            }
            table #calls {
                thead { tr {
                    th { "service" } th { "function" } th { "provider" } th { "calls" }
                    th { "errors" } th { "panics" } th { "timed" } th { "p50" } th { "p99" }
                } }
                tbody {
                    @for row in counters {
                        @let q = latency.get(&row_key(row)).copied().unwrap_or_default();
                        tr.failed[row.errors + row.panics > 0] {
                            td { (row.service) }
                            td.mono { (row.function) }
                            td { (row.plugin) "/" (row.provider) }
                            td.num { (row.calls) }
                            td.num { (row.errors) }
                            td.num { (row.panics) }
                            td.num { (q.samples) }
                            td.num { (shown(q.p50)) }
                            td.num { (shown(q.p99)) }
                        }
                    }
                }
            }
        }
    }
}

fn processes(registry: &Registry) -> Markup {
    let report = registry.process_report();
    html! {
        section #processes-panel {
            h2 { "Processes" }
            p.note {
                "Engine: " strong { (report.state) }
                @if let Some(err) = &report.error { " · fatal error: " span.error { (err) } }
            }
            @if report.workers.is_empty() {
                p.note { "No plugin declares a process." }
            } @else {
                div.graph-box { (graph::render(&report)) }
                table #processes {
                    thead { tr {
                        th { "process" } th { "state" } th { "inputs" } th { "starts" }
                        th { "last error" } th { "report" }
                    } }
                    tbody {
                        @for (name, worker) in &report.workers {
                            tr.failed[worker.last_error.is_some()] {
                                td.mono { (name) }
                                td { (format!("{:?}", worker.state).to_lowercase()) }
                                td { (worker.inputs.join(", ")) }
                                td.num { (worker.start_count) }
                                td.error { (worker.last_error.as_ref().map(ToString::to_string).unwrap_or_default()) }
                                td.mono.report {
                                    @if !worker.report.is_null() { (worker.report.to_string()) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn data(registry: &Registry) -> Markup {
    let sources = registry.data_status();
    let mut versions: BTreeMap<&str, Option<u64>> = BTreeMap::new();
    for source in &sources {
        versions
            .entry(&source.service)
            .or_insert_with(|| registry.data(&source.service).version());
    }
    html! {
        section #data-panel {
            h2 { "Data" }
            @if sources.is_empty() {
                p.note { "No plugin contributes data." }
            } @else {
                p.note {
                    "Service versions: "
                    @for (service, version) in &versions {
                        span.mono { (service) " " (version.map(|v| format!("{v:016x}")).unwrap_or_else(|| "—".into())) } " "
                    }
                }
                table #data {
                    thead { tr {
                        th { "service" } th { "key" } th { "source" } th { "kind" }
                        th { "version (content hash)" } th { "checked at" } th { "error" }
                    } }
                    tbody {
                        @for source in &sources {
                            tr.failed[source.error.is_some()] {
                                td { (source.service) }
                                td.mono { (source.key) }
                                td { (source.source) }
                                td {
                                    (format!("{:?}", source.kind).to_lowercase())
                                    @if let Some(path) = &source.path { " " span.mono title=(path.display()) { (file_name(path)) } }
                                }
                                td.mono { (source.hash.map(|h| format!("{h:016x}")).unwrap_or_else(|| "—".into())) }
                                td {
                                    (source.checked_at
                                        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                                        .map(|since| utc(since.as_millis() as u64))
                                        .unwrap_or_default())
                                }
                                td.error { (source.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn reloads(history: &History) -> Markup {
    html! {
        section #history-panel {
            h2 { "Reload history" }
            @if history.changes.is_empty() {
                p.note { "Nothing loaded yet." }
            } @else {
                table #history {
                    thead { tr {
                        th { "when (UTC)" } th { "file" } th { "app" } th { "what" }
                        th { "versions" } th { "took" } th { "error" }
                    } }
                    tbody {
                        @for change in history.changes.iter().rev().take(HISTORY_SHOWN) {
                            tr.failed[change.kind == ChangeKind::Failed] {
                                td { (utc(change.at_ms)) }
                                td.file title=(change.file.display()) { (file_name(&change.file)) }
                                td { (change.app.as_deref().unwrap_or("—")) }
                                td { (format!("{:?}", change.kind).to_lowercase()) }
                                td.mono {
                                    (change.from_version.as_deref().unwrap_or(""))
                                    @if change.from_version.is_some() && change.to_version.is_some() { (PreEscaped(" &rarr; ")) }
                                    (change.to_version.as_deref().unwrap_or(""))
                                }
                                td.num { (duration(change.seconds)) }
                                td.error { (change.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_709_251_199_000), "2024-02-29 23:59:59");
    }
}
