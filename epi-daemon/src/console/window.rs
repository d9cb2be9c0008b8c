//! Latency quantiles over a sliding window: the registry's latency counts only grow, so the
//! window keeps a copy of them at most once a second and compares the newest counts with the
//! oldest copy still inside the window.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use epi::abi::LATENCY_BOUNDS_NS;
use epi::ProviderCounters;

/// A provider function: service, function, plugin, provider.
pub type RowKey = (String, String, String, String);

/// The key of a counters row.
pub fn row_key(row: &ProviderCounters) -> RowKey {
    (
        row.service.clone(),
        row.function.clone(),
        row.plugin.clone(),
        row.provider.clone(),
    )
}

/// The latency counts of every row at one moment.
type Taken = (Instant, HashMap<RowKey, Vec<u64>>);

/// The median and 99th percentile of the calls timed in the window, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quantiles {
    /// Calls timed in the window.
    pub samples: u64,
    /// The median, if any call was timed.
    pub p50: Option<f64>,
    /// The 99th percentile, if any call was timed.
    pub p99: Option<f64>,
}

/// Copies of the latency counts over the last `span`.
pub struct LatencyWindow {
    span: Duration,
    copies: Mutex<VecDeque<Taken>>,
}

impl LatencyWindow {
    /// A window of `span`.
    pub fn new(span: Duration) -> LatencyWindow {
        LatencyWindow {
            span,
            copies: Mutex::new(VecDeque::new()),
        }
    }

    /// The window's length.
    pub fn span(&self) -> Duration {
        self.span
    }

    /// Keeps `rows`' counts (unless the last copy is under a second old) and returns each
    /// row's quantiles since the oldest copy in the window (since its version was loaded,
    /// before there is one).
    pub fn observe(&self, rows: &[ProviderCounters]) -> HashMap<RowKey, Quantiles> {
        let now = Instant::now();
        let current: HashMap<RowKey, Vec<u64>> = rows
            .iter()
            .map(|row| (row_key(row), row.latency.buckets.clone()))
            .collect();
        let mut copies = self.copies.lock().unwrap_or_else(|err| err.into_inner());
        while copies
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.span)
        {
            copies.pop_front();
        }
        let result = current
            .iter()
            .map(|(key, buckets)| {
                let base = copies.front().and_then(|(_, old)| old.get(key));
                (key.clone(), quantiles(&since(buckets, base)))
            })
            .collect();
        let due = copies
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1));
        if due {
            copies.push_back((now, current));
        }
        result
    }
}

/// The counts added since `base`; all of them when there is no base or the counts were reset
/// (a new plugin version starts from zero).
fn since(current: &[u64], base: Option<&Vec<u64>>) -> Vec<u64> {
    match base {
        Some(base)
            if base.len() == current.len() && base.iter().zip(current).all(|(b, c)| b <= c) =>
        {
            current.iter().zip(base).map(|(c, b)| c - b).collect()
        }
        _ => current.to_vec(),
    }
}

/// The median and 99th percentile of bucket counts, interpolated inside the bucket.
pub fn quantiles(buckets: &[u64]) -> Quantiles {
    let samples = buckets.iter().sum();
    Quantiles {
        samples,
        p50: quantile(buckets, samples, 0.5),
        p99: quantile(buckets, samples, 0.99),
    }
}

fn quantile(buckets: &[u64], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let target = q * total as f64;
    let mut below = 0u64;
    for (index, &count) in buckets.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= target {
            let lower = index
                .checked_sub(1)
                .map_or(0, |previous| LATENCY_BOUNDS_NS[previous]);
            let Some(&upper) = LATENCY_BOUNDS_NS.get(index) else {
                // Above the last bound: all that can be said is "more than it".
                return Some(lower as f64 / 1e9);
            };
            let fraction = (target - below as f64) / count as f64;
            return Some((lower as f64 + (upper - lower) as f64 * fraction) / 1e9);
        }
        below += count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::quantiles;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        // 100 calls between 1 and 2.5 µs (bucket 4).
        let mut buckets = vec![0; 26];
        buckets[4] = 100;
        let q = quantiles(&buckets);
        assert_eq!(q.samples, 100);
        assert!((q.p50.unwrap() - 1.75e-6).abs() < 1e-9);
        assert!((q.p99.unwrap() - 2.485e-6).abs() < 1e-9);
        assert_eq!(quantiles(&[0; 26]).p50, None);
    }
}
