//! Requests the daemon answered, by status code: one relaxed atomic add per request, no
//! label lookup on the way.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Status codes 100 to 599.
const CODES: usize = 500;

/// Requests answered per status code.
#[derive(Debug)]
pub struct HttpCounts {
    by_code: Box<[AtomicU64; CODES]>,
}

impl Default for HttpCounts {
    fn default() -> Self {
        HttpCounts {
            by_code: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl HttpCounts {
    /// Counts one answer.
    pub fn record(&self, status: u16) {
        if let Some(slot) = usize::from(status)
            .checked_sub(100)
            .and_then(|index| self.by_code.get(index))
        {
            slot.fetch_add(1, Relaxed);
        }
    }

    /// `(status, count)` for every status answered at least once.
    pub fn counts(&self) -> Vec<(u16, u64)> {
        self.by_code
            .iter()
            .enumerate()
            .map(|(index, count)| (index as u16 + 100, count.load(Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

/// The middleware that counts every response's status (admin routes and plugins' alike).
pub async fn count(
    State(counts): State<Arc<HttpCounts>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    counts.record(response.status().as_u16());
    response
}
