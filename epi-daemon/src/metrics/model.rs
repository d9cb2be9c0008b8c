//! Small builders over the `prometheus` crate's data model: labels, samples and families.

use epi::abi::LATENCY_BOUNDS_NS;
use epi::LatencyCounts;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

/// Label pairs from `(name, value)`.
pub fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect()
}

/// A counter sample.
pub fn counter(labels: Vec<LabelPair>, value: u64) -> Metric {
    let mut sample = Counter::default();
    sample.set_value(value as f64);
    let mut metric = Metric::default();
    metric.set_label(labels);
    metric.set_counter(sample);
    metric
}

/// A gauge sample.
pub fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut sample = Gauge::default();
    sample.set_value(value);
    let mut metric = Metric::default();
    metric.set_label(labels);
    metric.set_gauge(sample);
    metric
}

/// A histogram in seconds from durations counted in epi's nanosecond buckets.
pub fn histogram(labels: Vec<LabelPair>, counts: &LatencyCounts) -> Metric {
    let mut cumulative = 0;
    let buckets = LATENCY_BOUNDS_NS
        .iter()
        .zip(&counts.buckets)
        .map(|(bound, count)| {
            cumulative += count;
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(*bound as f64 / 1e9);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    let mut sample = Histogram::default();
    sample.set_bucket(buckets);
    sample.set_sample_count(counts.count());
    sample.set_sample_sum(counts.sum_ns as f64 / 1e9);
    let mut metric = Metric::default();
    metric.set_label(labels);
    metric.set_histogram(sample);
    metric
}

/// A family; `None` when it has no samples (the text format has no empty families).
pub fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    metrics: Vec<Metric>,
) -> Option<MetricFamily> {
    if metrics.is_empty() {
        return None;
    }
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    Some(family)
}
