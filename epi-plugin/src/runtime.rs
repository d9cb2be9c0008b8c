//! What a plugin borrows from its host: the global allocator and the log.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use crate::abi::{HostVTable, StrRef};

/// The host's table, set by `init` before the plugin allocates anything.
static HOST: AtomicPtr<HostVTable> = AtomicPtr::new(std::ptr::null_mut());

/// The registry this plugin was loaded into, passed back with every call through the host.
static CONTEXT: AtomicPtr<std::ffi::c_void> = AtomicPtr::new(std::ptr::null_mut());

/// The app name, for the log lines this plugin emits.
static APP: OnceLock<String> = OnceLock::new();

/// Installs the host's table and this plugin's context. Called by `init` before anything
/// else.
pub(crate) fn install(table: *const HostVTable, context: *const std::ffi::c_void) {
    CONTEXT.store(context as *mut std::ffi::c_void, Ordering::Release);
    HOST.store(table as *mut HostVTable, Ordering::Release);
}

/// The host's table and this plugin's context, once a host loaded the plugin.
pub(crate) fn host() -> Option<(&'static HostVTable, *const std::ffi::c_void)> {
    table().map(|table| {
        (
            table,
            CONTEXT.load(Ordering::Acquire) as *const std::ffi::c_void,
        )
    })
}

/// Records the app name for log lines.
pub(crate) fn set_app(app: &str) {
    let _ = APP.set(app.to_owned());
}

fn table() -> Option<&'static HostVTable> {
    let table = HOST.load(Ordering::Acquire);
    // SAFETY: the host's table is a `static` of the host, which outlives every plugin; the
    // pointer is null until `init` installed it.
    unsafe { table.as_ref() }
}

/// Global allocator of every plugin library: forwards to the host's allocator once the host
/// introduced itself, so the host and all plugins share one heap and a value allocated on one
/// side may be freed on the other. Falls back to the system allocator before that (for
/// example when a plugin crate is linked into its own unit tests).
pub struct PluginAllocator;

// SAFETY: forwards each request unchanged to an allocator honouring the `GlobalAlloc` contract.
unsafe impl GlobalAlloc for PluginAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match table() {
            // SAFETY: the host's allocator receives the caller's valid layout.
            Some(table) => unsafe { (table.alloc)(layout.size(), layout.align()) },
            // SAFETY: as above, for the system allocator.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match table() {
            // SAFETY: as `alloc`.
            Some(table) => unsafe { (table.alloc_zeroed)(layout.size(), layout.align()) },
            // SAFETY: as `alloc`.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match table() {
            // SAFETY: `ptr` came from the same allocator with this layout.
            Some(table) => unsafe { (table.dealloc)(ptr, layout.size(), layout.align()) },
            // SAFETY: as above.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match table() {
            // SAFETY: `ptr` came from the same allocator with this layout.
            Some(table) => unsafe { (table.realloc)(ptr, layout.size(), layout.align(), new_size) },
            // SAFETY: as above.
            None => unsafe { System.realloc(ptr, layout, new_size) },
        }
    }
}

/// Sends a log line to the host's `tracing` subscriber (a plugin has its own copy of every
/// crate, so its own `tracing` macros would reach no subscriber). Levels: 1 error .. 5 trace.
pub(crate) fn log(level: u32, message: &str) {
    if let Some(table) = table() {
        let app = APP.get().map(String::as_str).unwrap_or("?");
        // SAFETY: both strings outlive the call; the host copies what it keeps.
        unsafe { (table.log)(level, StrRef::new(app), StrRef::new(message)) };
    }
}
