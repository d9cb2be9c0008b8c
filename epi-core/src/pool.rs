//! The pool `concurrent` calls run on: rayon's threads help the calling thread, which takes
//! tasks too.
//!
//! When no task is left, the caller spins for at most [`SPIN_WAIT`] for the helpers still
//! running one before it parks. Waiting in a rayon scope instead parks it at once, and waking
//! it back cost 11 µs per call on the 2-vCPU machine BENCHMARKS.md was measured on: a tenth of
//! a call of 10 providers working 20 µs each.
//!
//! A helper joins a call only while the call is open: the caller closes it once no task is
//! left, and waits only for the helpers that joined. A call whose helpers never start (the
//! pool's threads are all busy, or the caller is itself the pool's only thread) is run by the
//! caller alone and never waits for them.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a caller with no task left spins for its helpers before it parks.
pub(crate) const SPIN_WAIT: Duration = Duration::from_micros(50);

/// Runs concurrent calls: `threads - 1` pool threads help the calling thread.
pub(crate) struct CallPool {
    pool: rayon::ThreadPool,
}

/// `Call::state`'s bit saying no helper may join any more.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// One concurrent call, shared with the helper jobs (which may start after it returned).
struct Call {
    /// The next task index to take.
    next: AtomicUsize,
    /// How many tasks.
    count: usize,
    /// The tasks, borrowed from the caller's frame with the lifetime erased: used only by
    /// helpers that joined while the call was open, which the caller waits for.
    task: *const (dyn Fn(usize) + Sync + 'static),
    /// [`CLOSED`], and how many helpers have joined and not yet left.
    state: AtomicUsize,
    /// The calling thread, unparked by the last helper to leave.
    caller: Thread,
    /// A helper's panic, raised again on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `task` is `Sync` and is called only while the caller waits in `CallPool::run`
// (see `Call::help`); everything else in `Call` is `Send` and `Sync`.
unsafe impl Send for Call {}
// SAFETY: as for `Send`.
unsafe impl Sync for Call {}

impl Call {
    /// Takes tasks until none is left.
    ///
    /// # Safety
    /// The caller of `CallPool::run` is still inside it (it is the caller, or a helper that
    /// joined before the call closed).
    unsafe fn work(&self) {
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= self.count {
                return;
            }
            // SAFETY: the function's contract keeps the borrowed tasks alive.
            unsafe { (*self.task)(index) };
        }
    }

    /// A helper job: joins the call if it is still open, works, and leaves.
    fn help(&self) {
        if self.state.fetch_add(1, Ordering::Acquire) & CLOSED != 0 {
            // Too late: the caller ran every task and does not wait for this helper.
            self.state.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        // SAFETY: joined while open: the caller waits until this helper leaves below.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { self.work() }));
        if let Err(panic) = outcome {
            *self.panic.lock() = Some(panic);
        }
        let caller = self.caller.clone();
        if self.state.fetch_sub(1, Ordering::Release) == CLOSED + 1 {
            caller.unpark();
        }
    }

    /// Closes the call and waits until every helper that joined has left: spinning for at
    /// most [`SPIN_WAIT`], then parked.
    fn close_and_wait(&self) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
        let started = Instant::now();
        let mut spun = 0u32;
        while self.state.load(Ordering::Acquire) != CLOSED {
            if spun < 64 {
                spun += 1;
                std::hint::spin_loop();
            } else if started.elapsed() < SPIN_WAIT {
                spun = 0;
            } else {
                std::thread::park();
            }
        }
    }
}

/// Closes the call and waits for its helpers when dropped, so that the borrowed tasks outlive
/// every helper even when the caller's own task panics.
struct WaitForHelpers<'c>(&'c Call);

impl Drop for WaitForHelpers<'_> {
    fn drop(&mut self) {
        self.0.close_and_wait();
    }
}

impl CallPool {
    /// A pool for `threads` threads in all, the caller's included (so `threads - 1` pool
    /// threads, at least one).
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.saturating_sub(1).max(1))
            .thread_name(|index| format!("epi-concurrent-{index}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(CallPool { pool })
    }

    /// Runs `task(0)` .. `task(count - 1)` on the pool's threads and the calling thread
    /// together, each taking the next index until none is left, and returns once every task
    /// returned. A helper's panic is raised again here.
    pub(crate) fn run(&self, count: usize, task: &(dyn Fn(usize) + Sync)) {
        let helpers = self.pool.current_num_threads().min(count.saturating_sub(1));
        // SAFETY: only the lifetime is erased, and `task` is used only by this thread and by
        // helpers that joined before `WaitForHelpers` closed the call; this function does not
        // return or unwind before every one of those has left.
        let task: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(task) };
        let call = Arc::new(Call {
            next: AtomicUsize::new(0),
            count,
            task,
            state: AtomicUsize::new(0),
            caller: std::thread::current(),
            panic: Mutex::new(None),
        });
        for _ in 0..helpers {
            let call = call.clone();
            self.pool.spawn(move || call.help());
        }
        {
            let _wait = WaitForHelpers(&call);
            // SAFETY: this is the caller, inside `run`.
            unsafe { call.work() };
        }
        let panic = call.panic.lock().take();
        if let Some(panic) = panic {
            std::panic::resume_unwind(panic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_task_runs_once() {
        let pool = CallPool::new(3).unwrap();
        for count in [0, 1, 2, 7, 50] {
            let runs: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
            pool.run(count, &|index| {
                runs[index].fetch_add(1, Ordering::Relaxed);
            });
            assert!(runs.iter().all(|runs| runs.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn the_caller_waits_for_slow_helpers() {
        let pool = CallPool::new(2).unwrap();
        let done = AtomicUsize::new(0);
        pool.run(4, &|_| {
            std::thread::sleep(Duration::from_millis(20));
            done.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(done.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_call_from_the_only_pool_thread_runs_on_it_alone() {
        // One pool thread: the inner call's helper can never start while the outer task holds
        // that thread, so the inner call must not wait for it.
        let pool = CallPool::new(2).unwrap();
        let inner_runs = AtomicUsize::new(0);
        pool.run(2, &|_| {
            pool.run(3, &|_| {
                inner_runs.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(inner_runs.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn a_helpers_panic_reaches_the_caller() {
        let pool = CallPool::new(2).unwrap();
        let caller = std::thread::current().id();
        let helped = std::sync::atomic::AtomicBool::new(false);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|_| {
                if std::thread::current().id() != caller {
                    helped.store(true, Ordering::Relaxed);
                    panic!("helper failed");
                }
                // Leave tasks for the helper until it has taken one.
                let deadline = Instant::now() + Duration::from_secs(10);
                while !helped.load(Ordering::Relaxed) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        }));
        let panic = outcome.expect_err("the helper's panic is raised again");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"helper failed"));
    }
}
