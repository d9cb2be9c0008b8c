//! What a call allocates on the native path, counted by this binary's global allocator (which
//! plugins allocate through too: they install the host's allocator at `init`). `decide`, `any`
//! and `all` allocate nothing of their own; `apply` only its result vector.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use crate::common::*;
use epi::{ApplyOpts, DecideOpts, Decision};
use serde_json::json;

/// Counts the allocations of threads that asked to be counted.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|count| count.set(count.get() + 1));
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|count| count.set(count.get() + 1));
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(pointer, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The allocations `body` makes on this thread.
fn allocations<R>(body: impl FnOnce() -> R) -> (u64, R) {
    COUNT.with(|count| count.set(0));
    COUNTING.with(|counting| counting.set(true));
    let result = body();
    COUNTING.with(|counting| counting.set(false));
    (COUNT.with(Cell::get), result)
}

#[test]
fn any_all_and_decide_allocate_nothing_and_apply_only_its_vector() {
    let registry = registry(&[]);
    load_testplug(
        &registry,
        "alpha",
        json!([
            {"label": "yes", "truth": true},
            {"label": "no", "truth": false},
            {"label": "maybe", "truth": true}
        ]),
    );
    let check = registry.function::<i64, bool>("math", "check");
    let decide = registry.function::<i64, Decision<String>>("math", "decide");
    let value = registry.function::<i64, i64>("math", "value");
    let math = registry.service("math");
    // The first call of a handle checks the types (and caches the proof).
    assert!(check.any(&1, ApplyOpts::new()).unwrap());
    assert!(!check.all(&1, ApplyOpts::new()).unwrap());
    decide.decide(&1, DecideOpts::new()).unwrap();
    value.apply(&1).unwrap();

    for _ in 0..3 {
        let (count, any) = allocations(|| check.any(&1, ApplyOpts::new()).unwrap());
        assert!(any);
        assert_eq!(count, 0, "any allocated");
        let (count, all) = allocations(|| check.all(&1, ApplyOpts::new()).unwrap());
        assert!(!all);
        assert_eq!(count, 0, "all allocated");
        let (count, all) = allocations(|| check.all(&1, ApplyOpts::new().ignore_errors()).unwrap());
        assert!(!all);
        assert_eq!(count, 0, "all with ignore_errors allocated");
        let (count, decided) = allocations(|| decide.decide(&1, DecideOpts::new()).unwrap());
        assert_eq!(decided, Decision::NoDecision);
        assert_eq!(count, 0, "decide allocated");
        let (count, values) = allocations(|| value.apply(&1).unwrap());
        assert_eq!(values.len(), 3);
        assert_eq!(count, 1, "apply allocated more than its result vector");
    }
    // Through a service handle (the types are checked per call, without allocating).
    let (count, any) = allocations(|| math.any::<i64>("check", &1, ApplyOpts::new()).unwrap());
    assert!(any);
    assert_eq!(count, 0, "a service handle's any allocated");
}
