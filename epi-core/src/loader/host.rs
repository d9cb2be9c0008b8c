//! What a host lends each plugin that needs nothing of the registry: its global allocator and
//! its log. The registry's `host_calls` puts them in the table plugins receive.

use std::alloc::Layout;

use crate::abi::StrRef;

pub(crate) unsafe extern "C" fn host_alloc(size: usize, align: usize) -> *mut u8 {
    // SAFETY: the plugin's allocator passes on a layout it received from `GlobalAlloc`.
    unsafe { std::alloc::alloc(Layout::from_size_align_unchecked(size, align)) }
}

pub(crate) unsafe extern "C" fn host_alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    // SAFETY: as `host_alloc`.
    unsafe { std::alloc::alloc_zeroed(Layout::from_size_align_unchecked(size, align)) }
}

pub(crate) unsafe extern "C" fn host_dealloc(ptr: *mut u8, size: usize, align: usize) {
    // SAFETY: as `host_alloc`; `ptr` came from this allocator with this layout.
    unsafe { std::alloc::dealloc(ptr, Layout::from_size_align_unchecked(size, align)) }
}

pub(crate) unsafe extern "C" fn host_realloc(
    ptr: *mut u8,
    size: usize,
    align: usize,
    new: usize,
) -> *mut u8 {
    // SAFETY: as `host_dealloc`.
    unsafe { std::alloc::realloc(ptr, Layout::from_size_align_unchecked(size, align), new) }
}

pub(crate) unsafe extern "C" fn host_log(level: u32, plugin: StrRef, message: StrRef) {
    // SAFETY: the plugin passes strings that live for the call.
    let (plugin, message) = unsafe { (plugin.to_string_lossy(), message.to_string_lossy()) };
    match level {
        1 => tracing::error!(target: "epi::plugin", plugin, "{message}"),
        2 => tracing::warn!(target: "epi::plugin", plugin, "{message}"),
        3 => tracing::info!(target: "epi::plugin", plugin, "{message}"),
        4 => tracing::debug!(target: "epi::plugin", plugin, "{message}"),
        _ => tracing::trace!(target: "epi::plugin", plugin, "{message}"),
    }
}
