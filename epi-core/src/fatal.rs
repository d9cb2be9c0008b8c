//! Names the plugin that was running when a fatal signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE,
//! SIGABRT) arrived, or when plugin code ended the process with `exit`.
//!
//! Plugin code runs in the host's process: if it crashes, the host dies with it. What this
//! module adds is a last line on stderr saying which plugin, provider and function the
//! crashing thread was running (read from `epi_plugin::running`, one pointer per thread), so
//! that an operator knows which plugin to isolate or roll back.
//!
//! Invariants: the handler uses async-signal-safe calls only (`write`, `sigaction`); it never
//! allocates or takes a lock. It then hands the signal to the handler that was installed
//! before (Rust's stack-overflow reporter, a crash reporter of the host program) or to the
//! default action, so the process still dies as it would have.

use std::ffi::c_int;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use crate::abi::ProviderEntry;

/// The signals reported, and the handler each had before ours.
const SIGNALS: [c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
];

/// The handlers found at installation, in the order of [`SIGNALS`]; written once before ours
/// are installed, only read afterwards.
static PREVIOUS: OnceLock<[libc::sigaction; 5]> = OnceLock::new();

/// Installs the report once per process (every registry asks; the first one installs).
pub(crate) fn install() {
    PREVIOUS.get_or_init(|| {
        let mut previous = [empty_action(); 5];
        for (slot, signal) in SIGNALS.iter().enumerate() {
            let mut ours = empty_action();
            ours.sa_sigaction = on_fatal_signal as *const () as usize;
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // SAFETY: `sa_mask` is a valid `sigset_t` to fill; `sigaction` reads `ours` and
            // writes the old action into `previous[slot]`, both valid for the call.
            unsafe {
                libc::sigemptyset(&mut ours.sa_mask);
                libc::sigaction(*signal, &ours, &mut previous[slot]);
            }
        }
        // SAFETY: registering a plain `extern "C" fn()` with `atexit` has no precondition.
        unsafe { libc::atexit(on_exit) };
        previous
    });
}

fn empty_action() -> libc::sigaction {
    // SAFETY: `sigaction` is a plain C struct for which all-zero bytes is a valid value
    // (SIG_DFL, no flags, an empty mask).
    unsafe { MaybeUninit::<libc::sigaction>::zeroed().assume_init() }
}

/// A fixed buffer filled without allocating.
struct Line {
    bytes: [u8; 768],
    len: usize,
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        let room = self.bytes.len() - self.len;
        let take = text.len().min(room).min(200);
        self.bytes[self.len..self.len + take].copy_from_slice(&text[..take]);
        self.len += take;
    }

    fn write(&self) {
        // SAFETY: writes initialised bytes of `self` to stderr; `write` is async-signal-safe.
        unsafe { libc::write(2, self.bytes.as_ptr().cast(), self.len) };
    }
}

/// Writes what `entry` names after `headline`.
fn report(headline: &[u8], entry: *const ProviderEntry) {
    // SAFETY: a non-null pointer in the running slot points at an entry of a table pinned by
    // the call in progress on this thread; its strings are the snapshot's, alive as long.
    let entry = unsafe { &*entry };
    let text = |field: &crate::abi::StrRef| {
        // SAFETY: as above.
        unsafe { field.as_bytes() }
    };
    let mut line = Line {
        bytes: [0; 768],
        len: 0,
    };
    line.push(headline);
    line.push(b" while running plugin `");
    line.push(text(&entry.plugin));
    line.push(b"`, provider `");
    line.push(text(&entry.provider));
    line.push(b"`, function `");
    line.push(text(&entry.service));
    line.push(b".");
    line.push(text(&entry.function));
    line.push(b"`\n");
    line.write();
}

/// Writes which plugin activity (not a provider call) this thread runs, if any, after
/// `headline`.
fn report_activity(headline: &[u8]) {
    let (plugin, plugin_len, what, what_len) = epi_plugin::running::current_activity();
    if plugin.is_null() {
        return;
    }
    // SAFETY: the activity slot holds the parts of two strings that outlive the plugin code
    // running on this thread (`running::enter_activity`'s contract).
    let (plugin, what) = unsafe {
        (
            std::slice::from_raw_parts(plugin, plugin_len),
            std::slice::from_raw_parts(what, what_len),
        )
    };
    let mut line = Line {
        bytes: [0; 768],
        len: 0,
    };
    line.push(headline);
    line.push(b" while running plugin `");
    line.push(plugin);
    line.push(b"`: ");
    line.push(what);
    line.push(b"\n");
    line.write();
}

/// The headline of a fatal signal's report.
fn signal_name(signal: c_int) -> &'static [u8] {
    match signal {
        libc::SIGSEGV => b"epi: fatal signal SIGSEGV (invalid memory access)",
        libc::SIGBUS => b"epi: fatal signal SIGBUS (bad memory access)",
        libc::SIGILL => b"epi: fatal signal SIGILL (illegal instruction)",
        libc::SIGFPE => b"epi: fatal signal SIGFPE (arithmetic fault)",
        _ => b"epi: fatal signal SIGABRT (abort)",
    }
}

extern "C" fn on_fatal_signal(
    signal: c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let entry = epi_plugin::running::current();
    if entry.is_null() {
        report_activity(signal_name(signal));
    } else {
        report(signal_name(signal), entry);
    }
    let Some(previous) = PREVIOUS.get() else {
        return;
    };
    let Some(slot) = SIGNALS.iter().position(|s| *s == signal) else {
        return;
    };
    let action = previous[slot];
    match action.sa_sigaction {
        libc::SIG_DFL | libc::SIG_IGN => {
            // Back to the default action; returning re-runs the faulting instruction (or
            // `abort` raises again), and the process dies as it would have.
            let default = empty_action();
            // SAFETY: installs the default action for `signal`; async-signal-safe.
            unsafe { libc::sigaction(signal, &default, std::ptr::null_mut()) };
        }
        handler if action.sa_flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
            // signature; it gets the arguments the kernel gave us.
            let handler: extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(handler) };
            handler(signal, info, context);
        }
        handler => {
            // SAFETY: a handler installed without SA_SIGINFO takes the signal number only.
            let handler: extern "C" fn(c_int) = unsafe { std::mem::transmute(handler) };
            handler(signal);
        }
    }
}

extern "C" fn on_exit() {
    let entry = epi_plugin::running::current();
    let headline = b"epi: the process is exiting (exit called)";
    if entry.is_null() {
        report_activity(headline);
    } else {
        report(headline, entry);
    }
}
