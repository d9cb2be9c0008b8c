//! Which provider the current thread is running, so that a host can name it when a fatal
//! signal arrives in the middle of a call (`epi::fatal`).
//!
//! One pointer per thread, set around every provider call: a thread-local with a constant
//! initialiser and no destructor, so reading it is a plain load, safe in a signal handler.

use std::cell::Cell;

use crate::abi::ProviderEntry;

thread_local! {
    static CURRENT: Cell<*const ProviderEntry> = const { Cell::new(std::ptr::null()) };
}

/// Marks `entry` as running on this thread; returns what was running before (a call nested
/// in another).
#[inline(always)]
pub fn enter(entry: *const ProviderEntry) -> *const ProviderEntry {
    CURRENT.with(|current| current.replace(entry))
}

/// Restores what [`enter`] returned.
#[inline(always)]
pub fn leave(previous: *const ProviderEntry) {
    CURRENT.with(|current| current.set(previous));
}

/// The provider this thread is running, or null. Async-signal-safe.
pub fn current() -> *const ProviderEntry {
    CURRENT.with(Cell::get)
}
