//! [`Published`]: a value one writer replaces and many threads read, where a read takes no
//! locked instruction and a replaced value is released when the last read of it ends.
//!
//! This is what the dispatch table lives in. `arc-swap`, which it replaces there, costs a
//! call two locked read-modify-writes (its per-thread debt slot, then paying the debt back)
//! and about 60 instructions; a pin here is a few plain loads and stores.
//!
//! How it works (hazard pointers with asymmetric fences):
//! - Every thread that reads has a [`Record`] of a few slots, registered in [`RECORDS`] while
//!   the thread lives. To pin, a reader loads the current pointer, writes it into a free slot
//!   of its record, and loads the current pointer again: if it changed, it tries again.
//! - To replace the value, the writer swaps the pointer, puts the old value on the retired
//!   list, and looks through every record's slots: a retired value no slot holds is released.
//! - Between the reader's slot write and its second load, and between the writer's swap and
//!   its look, each needs a full fence, or the reader could use a value the writer releases.
//!   The writer's side takes it all where Linux offers `membarrier(PRIVATE_EXPEDITED)`, which
//!   makes every running thread of the process pass a full fence: a reader then needs only a
//!   compiler fence. Without it both sides use a `SeqCst` fence.
//! - A reader of a replaced value that leaves while something is retired looks through the
//!   records too (the same fence pairing covers its slot's clearing and its load of the
//!   flag), so a replaced value is released when its last read ends, as an `Arc` would be.
//!   Readers of the current value never look, and no lock is held across a fence, so a
//!   reader never waits for the writer's `membarrier`.
//!
//! A thread's record has [`SLOTS`] slots; a pin beyond them (pins nested that deeply on one
//! thread) takes a reference count under the retired list's lock instead.

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Pins one thread can hold at once without taking a lock.
const SLOTS: usize = 4;

/// One reading thread's slots: the values its pins hold (null when free). Written only by its
/// thread; read by whoever looks for retired values.
struct Record {
    held: [AtomicPtr<()>; SLOTS],
    /// Whether a thread owns this record (records are reused, never freed).
    owned: AtomicBool,
}

/// Every record, owned or free.
static RECORDS: Mutex<Vec<&'static Record>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's record, once it has read.
    static RECORD: std::cell::Cell<Option<&'static Record>> =
        const { std::cell::Cell::new(None) };
    /// Gives the record back when the thread ends.
    static RELEASE: ReleaseOnExit = const { ReleaseOnExit };
}

/// Frees this thread's record when the thread ends (no pin can outlive its thread: a
/// [`Pin`] is not `Send`).
struct ReleaseOnExit;

impl Drop for ReleaseOnExit {
    fn drop(&mut self) {
        if let Some(record) = RECORD.with(|cell| cell.take()) {
            record.owned.store(false, Ordering::Release);
        }
    }
}

/// This thread's record, registered on first use.
#[inline]
fn record() -> &'static Record {
    match RECORD.with(std::cell::Cell::get) {
        Some(record) => record,
        None => register(),
    }
}

#[cold]
fn register() -> &'static Record {
    let mut records = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
    let record = match records.iter().find(|record| {
        record
            .owned
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }) {
        Some(record) => *record,
        None => {
            let record: &'static Record = Box::leak(Box::new(Record {
                held: Default::default(),
                owned: AtomicBool::new(true),
            }));
            records.push(record);
            record
        }
    };
    drop(records);
    RECORD.with(|cell| cell.set(Some(record)));
    // Registers the destructor; a thread already ending keeps its record (it reads no more).
    let _ = RELEASE.try_with(|_| ());
    record
}

/// A free slot of this thread's record, if one is left.
#[inline]
fn free_slot() -> Option<&'static AtomicPtr<()>> {
    record()
        .held
        .iter()
        .find(|slot| slot.load(Ordering::Relaxed).is_null())
}

/// Whether the writer's side fences every running thread (`membarrier`), so that readers
/// need only a compiler fence. Decided once, before the first [`Published`] exists.
static ASYMMETRIC: AtomicBool = AtomicBool::new(false);
static DECIDED: OnceLock<()> = OnceLock::new();

fn decide_fences() {
    DECIDED.get_or_init(|| {
        if membarrier::register() {
            ASYMMETRIC.store(true, Ordering::SeqCst);
        }
    });
}

/// The reader's fence between writing a slot (or clearing it) and its next load.
#[inline(always)]
fn light_fence() {
    if ASYMMETRIC.load(Ordering::Relaxed) {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The writer's fence, pairing with every reader's [`light_fence`].
fn heavy_fence() {
    fence(Ordering::SeqCst);
    if ASYMMETRIC.load(Ordering::Relaxed) {
        membarrier::private_expedited();
    }
}

/// A value readers pin without a locked instruction and one writer at a time replaces (see
/// the module's documentation).
pub(crate) struct Published<T> {
    /// The current value, from `Arc::into_raw`: this owns one strong count.
    current: AtomicPtr<T>,
    /// Replaced values some pin may still hold.
    retired: Mutex<Vec<Arc<T>>>,
    /// Whether `retired` is not empty: leaving readers look then.
    has_retired: AtomicBool,
}

// SAFETY: it hands out `&T` to pinning threads and `Arc<T>`s: as `Arc<T>` needs.
unsafe impl<T: Send + Sync> Send for Published<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send + Sync> Sync for Published<T> {}

impl<T> Published<T> {
    /// Publishes `value`.
    pub(crate) fn new(value: Arc<T>) -> Self {
        decide_fences();
        Published {
            current: AtomicPtr::new(Arc::into_raw(value).cast_mut()),
            retired: Mutex::new(Vec::new()),
            has_retired: AtomicBool::new(false),
        }
    }

    /// Pins the current value: it stays alive until the pin is dropped. Dropping the last pin
    /// of a replaced value releases it, on the dropping thread.
    #[inline]
    pub(crate) fn pin(&self) -> Pin<'_, T> {
        let Some(slot) = free_slot() else {
            return self.pin_counted();
        };
        let (value, retried) = self.protect(slot);
        if retried && self.has_retired.load(Ordering::Acquire) {
            // The slot held a value replaced meanwhile, which a writer may have seen and kept
            // retired: look as a leaving reader of a replaced value would.
            self.leave_slow();
        }
        Pin {
            published: self,
            value,
            slot,
            _thread: PhantomData,
        }
    }

    /// Writes the current value into `slot` (a free slot of this thread's record) until the
    /// value read after the write is still the current one, and returns it (held by the slot
    /// from then on, it stays alive until the slot is cleared), and whether it had to try
    /// again.
    #[inline]
    fn protect(&self, slot: &AtomicPtr<()>) -> (*mut T, bool) {
        let mut value = self.current.load(Ordering::Acquire);
        let mut retried = false;
        loop {
            slot.store(value.cast(), Ordering::Relaxed);
            light_fence();
            let again = self.current.load(Ordering::Acquire);
            if again == value {
                return (value, retried);
            }
            value = again;
            retried = true;
        }
    }

    /// A pin holding a strong count, for a thread whose slots are all taken.
    #[cold]
    fn pin_counted(&self) -> Pin<'_, T> {
        Pin {
            published: self,
            value: Arc::into_raw(self.load_locked()).cast_mut(),
            slot: ptr::null(),
            _thread: PhantomData,
        }
    }

    /// The current value, counted, read under the retired list's lock: a writer swaps the
    /// pointer before it takes that lock to retire the old value, and releases values only
    /// under it, so the value read stays alive until the count is taken.
    fn load_locked(&self) -> Arc<T> {
        let _retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let value = self.current.load(Ordering::Acquire);
        // SAFETY: `value` came from `Arc::into_raw` and is alive (see above).
        unsafe {
            Arc::increment_strong_count(value);
            Arc::from_raw(value)
        }
    }

    /// Whether `value` is the current value (compared by address; nothing is pinned).
    pub(crate) fn is_current(&self, value: *const T) -> bool {
        ptr::eq(self.current.load(Ordering::Acquire), value)
    }

    /// The current value, counted. Releases nothing, so it may be called on a thread that
    /// must not release a replaced value (a plugin's own thread: see `host_calls`); a value
    /// its slot held for a moment while it was replaced is released by the next store or the
    /// next pin of a replaced value to leave.
    pub(crate) fn load_full(&self) -> Arc<T> {
        let Some(slot) = free_slot() else {
            return self.load_locked();
        };
        let (value, _) = self.protect(slot);
        // SAFETY: `slot` keeps the value, which came from `Arc::into_raw`, alive.
        let counted = unsafe {
            Arc::increment_strong_count(value);
            Arc::from_raw(value)
        };
        slot.store(ptr::null_mut(), Ordering::Release);
        counted
    }

    /// Replaces the value; the old one is released once no pin holds it.
    ///
    /// No lock is held across a fence, so readers never wait for a `membarrier`: the fence
    /// after the swap makes every slot holding the old value visible, and only when one
    /// does is the flag set and a second fence made, after which a reader leaving that slot
    /// either is seen by the look that follows or sees the flag and looks itself.
    pub(crate) fn store(&self, value: Arc<T>) {
        let old = self
            .current
            .swap(Arc::into_raw(value).cast_mut(), Ordering::AcqRel);
        // SAFETY: `old` came from `Arc::into_raw` and its count was `current`'s.
        let old = unsafe { Arc::from_raw(old) };
        heavy_fence();
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.push(old);
        let released = self.release_unheld(&mut retired);
        let pending = !retired.is_empty();
        if pending {
            self.has_retired.store(true, Ordering::SeqCst);
        }
        drop(retired);
        drop(released);
        if pending {
            heavy_fence();
            self.leave_slow();
        }
    }

    /// Looks for retired values no pin holds, when a pin of a replaced value leaves while
    /// some are retired.
    #[cold]
    fn leave_slow(&self) {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let released = self.release_unheld(&mut retired);
        drop(retired);
        drop(released);
    }

    /// Takes the retired values no slot holds out of `retired` (the caller drops them once it
    /// released the lock: dropping a dispatch table can release a plugin version).
    fn release_unheld(&self, retired: &mut Vec<Arc<T>>) -> Vec<Arc<T>> {
        let records = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
        let held = |value: &Arc<T>| {
            let value = Arc::as_ptr(value).cast::<()>().cast_mut();
            records.iter().any(|record| {
                record
                    .held
                    .iter()
                    .any(|slot| slot.load(Ordering::Acquire) == value)
            })
        };
        let (kept, released): (Vec<_>, Vec<_>) = retired.drain(..).partition(held);
        drop(records);
        *retired = kept;
        if retired.is_empty() {
            self.has_retired.store(false, Ordering::SeqCst);
        }
        released
    }
}

impl<T> Drop for Published<T> {
    fn drop(&mut self) {
        // SAFETY: `current` came from `Arc::into_raw`; nothing can pin a value being dropped.
        drop(unsafe { Arc::from_raw(*self.current.get_mut()) });
    }
}

/// A pinned value: alive until this is dropped. Not `Send`: its slot is its thread's.
pub(crate) struct Pin<'p, T> {
    published: &'p Published<T>,
    value: *mut T,
    /// The slot of this thread's record that holds `value`; null when the pin holds a strong
    /// count of it instead (the thread's slots were all taken).
    slot: *const AtomicPtr<()>,
    _thread: PhantomData<*const ()>,
}

impl<T> std::ops::Deref for Pin<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the pin keeps the value alive.
        unsafe { &*self.value }
    }
}

impl<T> Drop for Pin<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.slot.is_null() {
            return self.drop_counted();
        }
        // SAFETY: the slot is a record's, and records are never freed.
        unsafe { &*self.slot }.store(ptr::null_mut(), Ordering::Release);
        light_fence();
        // Only a pin of a replaced value can be the last one of a retired value (the flag is
        // set after the swap, so a pin that sees it also sees the new value).
        let published = self.published;
        if published.has_retired.load(Ordering::Acquire)
            && published.current.load(Ordering::Relaxed) != self.value
        {
            published.leave_slow();
        }
    }
}

impl<T> Pin<'_, T> {
    #[cold]
    fn drop_counted(&mut self) {
        // SAFETY: `pin_counted` took this strong count of `value`, from `Arc::into_raw`.
        unsafe { Arc::decrement_strong_count(self.value) }
    }
}

/// The `membarrier` system call, where the kernel has it.
mod membarrier {
    const CMD_QUERY: libc::c_int = 0;
    const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    fn call(command: libc::c_int) -> libc::c_long {
        // SAFETY: membarrier takes a command and two integers and touches no memory of ours.
        unsafe { libc::syscall(libc::SYS_membarrier, command, 0, 0) }
    }

    /// Registers the process for private expedited barriers; false where the kernel (or a
    /// seccomp filter) refuses.
    pub(super) fn register() -> bool {
        let supported = call(CMD_QUERY);
        supported >= 0
            && supported & libc::c_long::from(CMD_PRIVATE_EXPEDITED) != 0
            && call(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    }

    /// Makes every running thread of the process pass a full memory barrier.
    pub(super) fn private_expedited() {
        let result = call(CMD_PRIVATE_EXPEDITED);
        // Registered once before any use, so this cannot fail; if it ever did, readers could
        // see a value being released: stop rather than risk it.
        assert_eq!(
            result,
            0,
            "membarrier failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// Counts its drops.
    struct Counted<'c>(u64, &'c AtomicUsize);

    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.1.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn a_replaced_value_lives_until_its_last_pin_leaves() {
        let drops = AtomicUsize::new(0);
        let published = Published::new(Arc::new(Counted(1, &drops)));
        let pin = published.pin();
        published.store(Arc::new(Counted(2, &drops)));
        assert_eq!(pin.0, 1);
        assert_eq!(drops.load(Relaxed), 0, "released while pinned");
        assert_eq!(published.pin().0, 2);
        drop(pin);
        assert_eq!(
            drops.load(Relaxed),
            1,
            "not released when its last pin left"
        );
        published.store(Arc::new(Counted(3, &drops)));
        assert_eq!(
            drops.load(Relaxed),
            2,
            "an unpinned value is released at once"
        );
        drop(published);
        assert_eq!(drops.load(Relaxed), 3);
    }

    #[test]
    fn pins_nested_beyond_the_slots_still_hold_their_values() {
        let drops = AtomicUsize::new(0);
        let published = Published::new(Arc::new(Counted(0, &drops)));
        let mut pins = Vec::new();
        for value in 1..=SLOTS as u64 + 3 {
            pins.push(published.pin());
            published.store(Arc::new(Counted(value, &drops)));
        }
        assert_eq!(drops.load(Relaxed), 0);
        for (expected, pin) in pins.iter().enumerate() {
            assert_eq!(pin.0, expected as u64);
        }
        // Out of order: the first pins first.
        let count = pins.len();
        for (left, pin) in pins.drain(..).enumerate() {
            drop(pin);
            assert_eq!(drops.load(Relaxed), left + 1);
        }
        assert_eq!(count, SLOTS + 3);
        assert_eq!(published.load_full().0, SLOTS as u64 + 3);
    }

    #[test]
    fn readers_never_see_a_released_value() {
        // Readers check a value's canary while a writer replaces it as fast as it can; a value
        // released too early would be overwritten (its canary cleared on drop).
        struct Canary(AtomicUsize);
        impl Drop for Canary {
            fn drop(&mut self) {
                self.0.store(0, Relaxed);
            }
        }
        let published = Published::new(Arc::new(Canary(AtomicUsize::new(7))));
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    let mut reads = 0u64;
                    while !stop.load(Relaxed) {
                        let pin = published.pin();
                        assert_eq!(pin.0.load(Relaxed), 7, "read a released value");
                        std::hint::spin_loop();
                        assert_eq!(pin.0.load(Relaxed), 7, "value released while pinned");
                        reads += 1;
                    }
                    assert!(reads > 0);
                });
            }
            for _ in 0..20_000 {
                published.store(Arc::new(Canary(AtomicUsize::new(7))));
            }
            stop.store(true, Relaxed);
        });
        assert!(published.retired.lock().unwrap().is_empty());
    }
}
