//! Time for the engine: the real clock, or a manual one tests advance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What the engine asks of time. The engine waits for events; with a real clock it also wakes
/// at deadlines, with a manual clock only when the test advances it.
pub trait Clock: Send + Sync + 'static {
    /// Time elapsed since some fixed origin.
    fn now(&self) -> Duration;

    /// How long to block waiting for an event when the next deadline is `wait` away; `None`
    /// blocks until an event arrives (the clock itself sends one when time moves).
    fn block_for(&self, wait: Duration) -> Option<Duration>;

    /// Registers a callback the clock calls whenever its time moves by itself being advanced.
    fn on_advance(&self, wake: Box<dyn Fn() + Send + Sync>);
}

/// Wall-clock time.
pub struct RealClock {
    origin: Instant,
}

impl Default for RealClock {
    fn default() -> Self {
        RealClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn block_for(&self, wait: Duration) -> Option<Duration> {
        Some(wait)
    }

    fn on_advance(&self, _wake: Box<dyn Fn() + Send + Sync>) {}
}

/// A clock that moves only when told to: restart delays are tested without sleeping.
#[derive(Clone, Default)]
pub struct ManualClock {
    inner: Arc<Mutex<ManualInner>>,
}

#[derive(Default)]
struct ManualInner {
    now: Duration,
    wakers: Vec<Box<dyn Fn() + Send + Sync>>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward and wakes every engine using this clock.
    pub fn advance(&self, by: Duration) {
        let inner = {
            let mut inner = self.inner.lock();
            inner.now += by;
            inner.wakers.len()
        };
        for index in 0..inner {
            let inner = self.inner.lock();
            (inner.wakers[index])();
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.inner.lock().now
    }

    fn block_for(&self, _wait: Duration) -> Option<Duration> {
        None
    }

    fn on_advance(&self, wake: Box<dyn Fn() + Send + Sync>) {
        self.inner.lock().wakers.push(wake);
    }
}
