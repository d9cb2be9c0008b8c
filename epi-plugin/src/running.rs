//! Which provider the current thread is running, so that a host can name it when a fatal
//! signal arrives in the middle of a call (`epi::fatal`).
//!
//! One pointer per thread, set around every provider call: a thread-local with a constant
//! initialiser and no destructor, so reading it is a plain load, safe in a signal handler.

use std::cell::Cell;

use crate::abi::ProviderEntry;

thread_local! {
    static CURRENT: Cell<*const ProviderEntry> = const { Cell::new(std::ptr::null()) };
    /// What plugin code outside a provider call this thread runs: (plugin, len, activity,
    /// len) of two strings that outlive the call.
    static ACTIVITY: Cell<Activity> = const { Cell::new((std::ptr::null(), 0, std::ptr::null(), 0)) };
}

/// A plugin's name and what of it runs, as raw parts of two strings.
pub type Activity = (*const u8, usize, *const u8, usize);

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

/// Marks plugin code other than a provider call as running on this thread (`init`,
/// `notify`, a data callback, a process): `plugin` names the plugin (or its file, before
/// `init` says its name), `what` the activity. Both must outlive the matching [`leave_activity`].
/// Returns what was marked before.
#[inline]
pub fn enter_activity(plugin: &str, what: &str) -> Activity {
    ACTIVITY
        .with(|current| current.replace((plugin.as_ptr(), plugin.len(), what.as_ptr(), what.len())))
}

/// Restores what [`enter_activity`] returned.
#[inline]
pub fn leave_activity(previous: Activity) {
    ACTIVITY.with(|current| current.set(previous));
}

/// The plugin activity this thread runs (null pointers when none). Async-signal-safe.
pub fn current_activity() -> Activity {
    ACTIVITY.with(Cell::get)
}
