//! The dispatch core: `apply`, `decide`, `pipe`, `any` and `all` over a list of
//! [`ProviderEntry`]s, with the type checks and the two call paths.
//!
//! One implementation serves both directions: a host runs it over its current dispatch table
//! (`epi::Function`), and a plugin calling a service through its host runs it over the same
//! table, which the host pins for the duration of the call (`epi::host`). Same semantics,
//! errors and ordering by construction.
//!
//! A provider's shims trust the types they are given: the native shim reads its arguments and
//! writes its output by pointer. The only way to call one is through a [`Typed`], and the
//! only ways to get one are a passed check ([`check`], [`precheck`]) or a [`Checked`] list,
//! itself made by [`precheck`] or asserted (unsafely) by a caller that checked the same
//! immutable list before. A [`Providers`] list can only be made unsafely, by whoever vouches
//! that its entries describe live providers.

use std::any::TypeId;
use std::cell::{Cell, UnsafeCell};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::abi::{
    ArgsScratch, CallCounters, ProviderEntry, RVec, StableCallFn, StrRef, TypeRef, COUNT_LATENCY,
    ENCODING_JSON, LATENCY_SAMPLE_EVERY, OUTPUT_STRING, STATUS_ABSENT, STATUS_BAD_INPUT,
    STATUS_FAILED, STATUS_OK, STATUS_OK_STRING, STATUS_PANICKED,
};
use crate::error::{Error, Failure, ProviderError, ProviderFailure};
use crate::opts::{ApplyOpts, DecideOpts, PipeOpts};
use crate::Decision;

/// What an argument type must be: shared by every provider, and encodable for plugins on the
/// stable path (whose type check traces its shape).
pub trait Argument: Serialize + DeserializeOwned + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Sync + 'static> Argument for T {}

/// What an output type must be: decodable from plugins on the stable path.
pub trait Output: DeserializeOwned + Send + 'static {}
impl<T: DeserializeOwned + Send + 'static> Output for T {}

/// Runs tasks in parallel for `concurrent` calls: the host's pool.
pub trait Pool: Sync {
    /// Runs `task(0)` .. `task(count - 1)`, in parallel where it can, and returns when all
    /// returned.
    fn run(&self, count: usize, task: &(dyn Fn(usize) + Sync));
}

/// A provider list a call can run over.
#[derive(Clone, Copy)]
pub struct Providers<'s> {
    list: &'s [ProviderEntry],
}

impl<'s> Providers<'s> {
    /// Wraps a host's list.
    ///
    /// # Safety
    /// Every entry describes a live provider of a loaded plugin (its object, entry points,
    /// strings and counters stay valid for `'s`), as the host's dispatch table does.
    pub unsafe fn new(list: &'s [ProviderEntry]) -> Self {
        Providers { list }
    }

    /// How many providers.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The entries.
    pub fn entries(&self) -> &'s [ProviderEntry] {
        self.list
    }
}

/// The bytes of a string of a live entry.
fn text(value: &StrRef) -> &str {
    // SAFETY: `Providers::new` vouches that an entry's strings are live; the host wrote them
    // from `str`s, so they are UTF-8 (checked anyway).
    std::str::from_utf8(unsafe { value.as_bytes() }).unwrap_or("?")
}

/// Whether `desc` is `T` as this build compiled it (native path).
fn is_native<T>(desc: &TypeRef) -> bool {
    desc.size == std::mem::size_of::<T>()
        && desc.align == std::mem::align_of::<T>()
        && text(&desc.name) == std::any::type_name::<T>()
}

/// The serde shape of `T`, traced once per type for the life of the process.
fn shape<T: DeserializeOwned + 'static>() -> Arc<str> {
    static SHAPES: OnceLock<RwLock<HashMap<std::any::TypeId, Arc<str>>>> = OnceLock::new();
    let shapes = SHAPES.get_or_init(Default::default);
    let id = std::any::TypeId::of::<T>();
    if let Some(shape) = shapes.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return shape.clone();
    }
    let shape: Arc<str> = crate::describe::shape_of::<T>().into();
    shapes
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(id)
        .or_insert(shape)
        .clone()
}

/// Whether `desc` describes `T` on the provider's call path.
fn matches<T: DeserializeOwned + 'static>(provider: &ProviderEntry, desc: &TypeRef) -> bool {
    if provider.typed.is_some() {
        is_native::<T>(desc)
    } else {
        let theirs = text(&desc.shape);
        let ours = shape::<T>();
        if crate::describe::same_format(theirs, &ours) {
            theirs == &*ours
        } else {
            // Rendered by another version of the probe: only the names can be compared, and
            // decoding checks every value.
            text(&desc.name) == std::any::type_name::<T>()
        }
    }
}

/// A provider proven to take `&A` and return `O`.
pub struct Typed<'s, A, O> {
    provider: &'s ProviderEntry,
    _types: PhantomData<fn(&A) -> O>,
}

impl<A, O> Clone for Typed<'_, A, O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A, O> Copy for Typed<'_, A, O> {}

/// A provider list proven to take `&A` and return `O`, every one of them.
pub struct Checked<'s, A, O> {
    list: &'s [ProviderEntry],
    _types: PhantomData<fn(&A) -> O>,
}

impl<A, O> Clone for Checked<'_, A, O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A, O> Copy for Checked<'_, A, O> {}

impl<'s, A, O> Checked<'s, A, O> {
    /// A list checked before.
    ///
    /// # Safety
    /// Every provider of `list` passed [`check::<A, O>`](check) (the same immutable list).
    pub unsafe fn assume_checked(list: Providers<'s>) -> Self {
        Checked {
            list: list.list,
            _types: PhantomData,
        }
    }

    fn get(&self, index: usize) -> Typed<'s, A, O> {
        Typed {
            provider: &self.list[index],
            _types: PhantomData,
        }
    }

    fn iter(&self) -> impl Iterator<Item = Typed<'s, A, O>> + 's {
        self.list.iter().map(|provider| Typed {
            provider,
            _types: PhantomData,
        })
    }
}

/// Checks that `provider` declares exactly `A -> O` on its call path.
pub fn check<'s, A, O>(provider: &'s ProviderEntry) -> Result<Typed<'s, A, O>, ProviderError>
where
    A: DeserializeOwned + 'static,
    O: DeserializeOwned + 'static,
{
    if matches::<A>(provider, &provider.args) && matches::<O>(provider, &provider.output) {
        return Ok(Typed {
            provider,
            _types: PhantomData,
        });
    }
    let ours = format!(
        "fn(&{}) -> {}",
        std::any::type_name::<A>(),
        std::any::type_name::<O>()
    );
    let theirs = format!(
        "fn(&{}) -> {}",
        text(&provider.args.name),
        text(&provider.output.name)
    );
    let (expected, found) = if provider.typed.is_some() {
        (ours, theirs)
    } else {
        (
            format!("{ours} with shapes {} -> {}", shape::<A>(), shape::<O>()),
            format!(
                "{theirs} with shapes {} -> {}",
                text(&provider.args.shape),
                text(&provider.output.shape)
            ),
        )
    };
    Err(provider_error(
        provider,
        Failure::TypeMismatch { expected, found },
    ))
}

/// Checks every provider. `Some`: all match. With `ignore_errors`, a mismatch gives `None`
/// (each provider is then checked as it is called); without, the first mismatch is returned
/// before any provider runs.
pub fn precheck<'s, A, O>(
    list: Providers<'s>,
    ignore_errors: bool,
) -> Result<Option<Checked<'s, A, O>>, Error>
where
    A: DeserializeOwned + 'static,
    O: DeserializeOwned + 'static,
{
    for provider in list.list {
        if let Err(err) = check::<A, O>(provider) {
            if ignore_errors {
                return Ok(None);
            }
            return Err(err.into());
        }
    }
    // SAFETY: every provider passed `check` just above.
    Ok(Some(unsafe { Checked::assume_checked(list) }))
}

/// A call's arguments, encoded on first need (stable-path providers), once per call.
pub struct Args<'a, A> {
    value: &'a A,
    /// The thread making the call ([`thread_mark`]), when stable calls keep the decoded
    /// arguments for the next provider; 0 when they do not.
    keeper: usize,
    /// Made by the first stable call (a call on the native path never pays for it, and its
    /// `Args` drops one empty cell).
    encoded: OnceLock<Encoded>,
    /// Shared with the threads of a concurrent call, never sent: it is dropped on the thread
    /// that made it, with the scratch.
    _not_send: PhantomData<std::sync::MutexGuard<'static, ()>>,
}

/// The arguments as JSON, and what a stable entry point decoded from them.
struct Encoded {
    /// Made by the first stable call that keeps the decoded arguments. Dropped before
    /// `bytes`: what it holds borrows those bytes.
    scratch: ManuallyDrop<OnceLock<Scratch>>,
    bytes: ManuallyDrop<Result<Vec<u8>, String>>,
}

impl Drop for Encoded {
    /// Out of line, so that dropping an `Args` no stable call encoded (every call on the
    /// native path) stays one inlined check.
    #[inline(never)]
    #[cold]
    fn drop(&mut self) {
        // SAFETY: each field is dropped once, here, in the order the borrow needs.
        unsafe {
            ManuallyDrop::drop(&mut self.scratch);
            ManuallyDrop::drop(&mut self.bytes);
        }
    }
}

impl<'a, A: Serialize> Args<'a, A> {
    /// The arguments of one call to `providers` providers (with more than one, a plugin on
    /// the stable path decodes them once for all of its providers that share an entry point).
    #[inline]
    pub fn new(value: &'a A, providers: usize) -> Self {
        Args {
            value,
            keeper: if providers > 1 { thread_mark() } else { 0 },
            encoded: OnceLock::new(),
            _not_send: PhantomData,
        }
    }

    /// The encoded arguments and the cell of their scratch.
    fn encoded(&self) -> Result<(&[u8], &OnceLock<Scratch>), &str> {
        let encoded = self.encoded.get_or_init(|| Encoded {
            scratch: ManuallyDrop::new(OnceLock::new()),
            bytes: ManuallyDrop::new(serde_json::to_vec(self.value).map_err(|err| err.to_string())),
        });
        match &*encoded.bytes {
            Ok(bytes) => Ok((bytes, &encoded.scratch)),
            Err(reason) => Err(reason),
        }
    }
}

/// The decoded arguments a call keeps for the stable entry point that filled it
/// ([`ArgsScratch`]). Made, lent and dropped only on the thread that makes the call (in a
/// concurrent call the other threads' shims decode for themselves), to one shim call at a time.
struct Scratch {
    /// Set while the slot is lent (a provider that waits on a concurrent call of its own can
    /// run another provider of this call on this thread, which must not get it then).
    busy: Cell<bool>,
    /// The entry point that filled `slot` (as an address), and the slot.
    filled: UnsafeCell<(usize, ArgsScratch)>,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            busy: Cell::new(false),
            filled: UnsafeCell::new((
                0,
                ArgsScratch {
                    value: std::ptr::null_mut(),
                    drop: None,
                },
            )),
        }
    }

    /// The slot for a call of `entry` with the call's bytes, emptied first if another entry
    /// point filled it; `None` while it is lent. Only on the thread that made the call.
    #[inline]
    fn lend(&self, entry: StableCallFn) -> Option<Lent<'_>> {
        if self.busy.replace(true) {
            return None;
        }
        // SAFETY: on the thread that made the call (the caller checks), not lent (checked just
        // above): nothing else touches `filled` until `Lent` gives it back.
        let (owner, slot) = unsafe { &mut *self.filled.get() };
        if *owner != entry as usize {
            // SAFETY: filled by a shim of a plugin mapped while this call runs.
            unsafe { empty(slot) };
            *owner = entry as usize;
        }
        Some(Lent {
            scratch: self,
            slot,
        })
    }
}

// SAFETY: a `Scratch` is made, lent and dropped only on the thread that makes the call
// (`Args::keeper`): other threads holding the `Args` never touch it.
unsafe impl Sync for Scratch {}
// SAFETY: as `Sync`: it never leaves the thread that made it (the `Args` holding it is not
// `Send`).
unsafe impl Send for Scratch {}

/// An address unique to the calling thread while it lives.
#[inline]
fn thread_mark() -> usize {
    thread_local! {
        static MARK: u8 = const { 0 };
    }
    MARK.with(|mark| mark as *const u8 as usize)
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: the call is ending; its plugins are still mapped (the table is pinned
        // around every call) and the bytes the value borrows are dropped after this.
        unsafe { empty(&mut self.filled.get_mut().1) }
    }
}

/// Releases what `slot` holds.
///
/// # Safety
/// The plugin whose shim filled `slot` is mapped.
unsafe fn empty(slot: &mut ArgsScratch) {
    if let Some(drop) = slot.drop.take() {
        // SAFETY: the caller's contract; `value` came with `drop` from the same shim.
        unsafe { drop(std::mem::replace(&mut slot.value, std::ptr::null_mut())) }
    }
}

/// A [`Scratch`] lent to one shim call; gives it back when dropped.
struct Lent<'s> {
    scratch: &'s Scratch,
    slot: &'s mut ArgsScratch,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.scratch.busy.set(false);
    }
}

/// The largest output buffer a thread keeps for its next stable call.
const MAX_KEPT_OUTPUT: usize = 64 * 1024;

thread_local! {
    /// Each thread's output buffer for stable calls: its capacity is reused.
    static OUTPUT: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A buffer's bytes, taken back from the boundary.
pub fn take_bytes(buffer: RVec<u8>) -> Vec<u8> {
    // SAFETY: every `RVec<u8>` a shim fills was made through the host's allocator, which this
    // side shares (a plugin forwards to it; a host is it).
    unsafe { buffer.into_vec() }
}

impl<'s, A: Serialize, O: DeserializeOwned + 'static> Typed<'s, A, O> {
    /// Calls the provider, leaving its output in `output` (initialised on `Ok`), so a caller
    /// can inspect it in place instead of moving it.
    #[inline(always)]
    pub fn call_into(
        self,
        args: &Args<'_, A>,
        output: &mut MaybeUninit<O>,
    ) -> Result<(), ProviderError> {
        let provider = self.provider;
        let previous = crate::running::enter(provider);
        let result = if provider.count_calls != 0 {
            // SAFETY: the counters live as long as the entry (`Providers::new`).
            let counters = unsafe { &*provider.counters };
            let before = counters.calls.fetch_add(1, Ordering::Relaxed);
            if provider.count_calls & COUNT_LATENCY != 0 && before % LATENCY_SAMPLE_EVERY == 0 {
                self.call_timed(args, output, counters)
            } else {
                self.call_uncounted(args, output)
            }
        } else {
            self.call_uncounted(args, output)
        };
        crate::running::leave(previous);
        result
    }

    /// A sampled call: timed into the provider's latency histogram (which the entry's
    /// [`COUNT_LATENCY`] bit says exists).
    #[cold]
    #[inline(never)]
    fn call_timed(
        self,
        args: &Args<'_, A>,
        output: &mut MaybeUninit<O>,
        counters: &CallCounters,
    ) -> Result<(), ProviderError> {
        let start = std::time::Instant::now();
        let result = self.call_uncounted(args, output);
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counters.latency.record(nanos);
        result
    }

    /// The call itself, after counting.
    #[inline(always)]
    fn call_uncounted(
        self,
        args: &Args<'_, A>,
        output: &mut MaybeUninit<O>,
    ) -> Result<(), ProviderError> {
        let provider = self.provider;
        let mut error = RVec::new();
        let status = match provider.typed {
            // SAFETY: `self` proves the provider declares exactly `A -> O` as this build
            // compiled them (native path); its plugin is mapped while the list lives; the shim
            // writes `output` only on OK and catches panics.
            Some(typed) => unsafe {
                typed(
                    provider.instance,
                    args.value as *const A as *const std::ffi::c_void,
                    output.as_mut_ptr() as *mut std::ffi::c_void,
                    &mut error,
                )
            },
            None => return self.call_stable(args, output),
        };
        if status == STATUS_OK {
            Ok(())
        } else {
            Err(failure(provider, status, take_bytes(error)))
        }
    }

    /// The stable path: arguments and output as JSON; a `String` output is handed over
    /// as it is when the provider's is a `String` too ([`OUTPUT_STRING`]).
    #[inline(never)]
    fn call_stable(
        self,
        args: &Args<'_, A>,
        output: &mut MaybeUninit<O>,
    ) -> Result<(), ProviderError> {
        let provider = self.provider;
        let (input, scratch_cell) = args.encoded().map_err(|reason| {
            provider_error(
                provider,
                Failure::BadInput(format!("cannot encode the arguments: {reason}")),
            )
        })?;
        let wants_string = TypeId::of::<O>() == TypeId::of::<String>();
        // A handed-over string replaces the buffer: lend an empty one then.
        let (mut result, encoding) = if wants_string {
            (RVec::new(), ENCODING_JSON | OUTPUT_STRING)
        } else {
            (RVec::from_vec(OUTPUT.take()), ENCODING_JSON)
        };
        let mut error = RVec::new();
        let mut lent = if args.keeper == thread_mark() {
            scratch_cell.get_or_init(Scratch::new).lend(provider.stable)
        } else {
            None
        };
        let scratch = lent.as_mut().map_or(std::ptr::null_mut(), |lent| {
            &mut *lent.slot as *mut ArgsScratch
        });
        // SAFETY: the stable shim takes any bytes and fills the buffers through the shared
        // allocator; the plugin is mapped while the list lives; it catches panics. The
        // scratch, when lent, was filled by this entry point from these same bytes, or is
        // empty.
        let status = unsafe {
            (provider.stable)(
                provider.instance,
                encoding,
                StrRef::bytes(input),
                &mut result,
                &mut error,
                scratch,
            )
        };
        drop(lent);
        let result = take_bytes(result);
        let decoded = match status {
            STATUS_OK => {
                let decoded = serde_json::from_slice(&result)
                    .map_err(|err| provider_error(provider, Failure::BadOutput(err.to_string())));
                // Keep the buffer for the next call unless a large result made it large.
                if result.capacity() <= MAX_KEPT_OUTPUT {
                    OUTPUT.set(result);
                }
                decoded
            }
            STATUS_OK_STRING => utf8(result)
                .map_err(|err| provider_error(provider, Failure::BadOutput(err.to_string())))
                .and_then(|text| {
                    crate::shim::same_type::<String, O>(text).map_err(|_| {
                        provider_error(
                            provider,
                            Failure::BadOutput("a string answered for another type".into()),
                        )
                    })
                }),
            _ => Err(failure(provider, status, take_bytes(error))),
        };
        output.write(decoded?);
        Ok(())
    }

    /// Calls the provider and returns its output.
    #[inline(always)]
    pub fn call(self, args: &Args<'_, A>) -> Result<O, ProviderError> {
        let mut output = MaybeUninit::<O>::uninit();
        self.call_into(args, &mut output)?;
        // SAFETY: `call_into` returned OK, so the output is initialised.
        Ok(unsafe { output.assume_init() })
    }
}

/// `bytes` as a `String` when they are UTF-8. ASCII, which most short strings are, is checked
/// by a byte scan first: for a few bytes it costs a fifth of the full validation.
#[inline]
fn utf8(bytes: Vec<u8>) -> Result<String, std::string::FromUtf8Error> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are UTF-8.
        Ok(unsafe { String::from_utf8_unchecked(bytes) })
    } else {
        String::from_utf8(bytes)
    }
}

/// Builds the error for a status other than OK, counting it.
#[cold]
pub fn failure(provider: &ProviderEntry, status: u32, message: Vec<u8>) -> ProviderError {
    let message = String::from_utf8(message)
        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned());
    // SAFETY: the counters live as long as the entry (`Providers::new`).
    let counters = unsafe { &*provider.counters };
    match status {
        STATUS_PANICKED => counters.panics.fetch_add(1, Ordering::Relaxed),
        STATUS_ABSENT => 0,
        _ => counters.errors.fetch_add(1, Ordering::Relaxed),
    };
    let failure = match status {
        STATUS_FAILED => Failure::Failed(message),
        STATUS_PANICKED => Failure::Panicked(message),
        STATUS_BAD_INPUT => Failure::BadInput(message),
        STATUS_ABSENT => Failure::Absent(message),
        other => Failure::Failed(format!("unknown status {other}: {message}")),
    };
    provider_error(provider, failure)
}

/// The error naming `provider`.
#[cold]
pub fn provider_error(provider: &ProviderEntry, failure: Failure) -> ProviderError {
    ProviderError::new(ProviderFailure {
        plugin: text(&provider.plugin).into(),
        provider: text(&provider.provider).into(),
        service: text(&provider.service).into(),
        function: text(&provider.function).into(),
        failure,
    })
}

/// Calls one provider, checking its types first unless the whole list was checked. Inlined
/// into the loops, as the call itself is (a call through a separate frame cost pipe about 20
/// instructions per provider).
#[inline(always)]
fn checked_call<A: Argument, O: Output>(
    list: Providers<'_>,
    checked: Option<Checked<'_, A, O>>,
    index: usize,
    args: &Args<'_, A>,
) -> Result<O, ProviderError> {
    let typed = match checked {
        Some(checked) => checked.get(index),
        None => check::<A, O>(&list.list[index])?,
    };
    typed.call(args)
}

/// `apply` over providers whose types all match: results in provider order; the first error
/// stops the call and is returned.
#[inline(always)]
pub fn apply<A: Argument, O: Output>(
    checked: Checked<'_, A, O>,
    args: &A,
) -> Result<Vec<O>, Error> {
    let args = Args::new(args, checked.list.len());
    let mut values = Vec::with_capacity(checked.list.len());
    for typed in checked.iter() {
        match typed.call(&args) {
            Ok(value) => values.push(value),
            Err(err) if err.failure.is_absent() => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(values)
}

/// `apply` with options: with `ignore_errors` failures stay in the list as per-provider
/// errors; with `concurrent` providers run in parallel on `pool`.
pub fn apply_with<A: Argument, O: Output>(
    pool: &dyn Pool,
    list: Providers<'_>,
    checked: Option<Checked<'_, A, O>>,
    args: &A,
    opts: ApplyOpts,
) -> Result<Vec<Result<O, ProviderError>>, Error> {
    let args = Args::new(args, list.len());
    if let (Some(checked), false) = (checked, opts.concurrent && list.len() > 1) {
        // The common case, as `apply`'s loop: one pass over providers already checked.
        let mut kept = Vec::with_capacity(list.len());
        for typed in checked.iter() {
            match typed.call(&args) {
                Ok(value) => kept.push(Ok(value)),
                Err(err) if err.failure.is_absent() => {}
                Err(err) if opts.ignore_errors => kept.push(Err(err)),
                Err(err) => return Err(err.into()),
            }
        }
        return Ok(kept);
    }
    call_each(
        pool,
        list,
        opts,
        |index| checked_call(list, checked, index, &args),
        |result| result.as_ref().err(),
        |result| result.err().expect("an error"),
    )
}

/// Calls `call(index)` for every provider of `list`, on `pool` when `concurrent` asks and
/// there is more than one, and keeps what each returned in provider order, leaving out the
/// providers that are gone (see [`Failure::Absent`]). Without `ignore_errors` the first
/// failure in provider order is the call's error (a sequential call stops there).
/// `error_of` reads a reply's failure; `into_error` takes it.
fn call_each<R: Send>(
    pool: &dyn Pool,
    list: Providers<'_>,
    opts: ApplyOpts,
    call: impl Fn(usize) -> R + Sync,
    error_of: impl Fn(&R) -> Option<&ProviderError>,
    into_error: impl Fn(R) -> ProviderError,
) -> Result<Vec<R>, Error> {
    if !(opts.concurrent && list.len() > 1) {
        let mut kept = Vec::with_capacity(list.len());
        for index in 0..list.len() {
            let reply = call(index);
            match error_of(&reply) {
                Some(err) if err.failure.is_absent() => {}
                Some(_) if !opts.ignore_errors => return Err(into_error(reply).into()),
                _ => kept.push(reply),
            }
        }
        return Ok(kept);
    }
    let mut kept = run_concurrent(pool, list.list.as_ptr().cast(), list.len(), call);
    kept.retain(|reply| !error_of(reply).is_some_and(|err| err.failure.is_absent()));
    if !opts.ignore_errors {
        if let Some(position) = kept.iter().position(|reply| error_of(reply).is_some()) {
            return Err(into_error(kept.swap_remove(position)).into());
        }
    }
    Ok(kept)
}

/// One provider's answer, with who gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer<T> {
    /// The plugin's app name.
    pub plugin: std::sync::Arc<str>,
    /// The provider's label.
    pub provider: std::sync::Arc<str>,
    /// Its value, or (with `ignore_errors`) its failure.
    pub result: Result<T, ProviderError>,
}

/// `apply` with options, each result with the plugin and provider that gave it (in provider
/// order). Costs two shared strings per provider, which plain `apply` does not pay.
pub fn apply_answers<A: Argument, O: Output>(
    pool: &dyn Pool,
    list: Providers<'_>,
    checked: Option<Checked<'_, A, O>>,
    args: &A,
    opts: ApplyOpts,
) -> Result<Vec<Answer<O>>, Error> {
    let args = Args::new(args, list.len());
    call_each(
        pool,
        list,
        opts,
        |index| {
            let entry = &list.list[index];
            Answer {
                plugin: text(&entry.plugin).into(),
                provider: text(&entry.provider).into(),
                result: checked_call(list, checked, index, &args),
            }
        },
        |answer| answer.result.as_ref().err(),
        |answer| answer.result.err().expect("an error"),
    )
}

/// Below this much work for all providers together (as measured the last time this thread
/// made a concurrent call over the same list), a concurrent call runs them on the calling
/// thread: handing work to the pool and waiting for it costs about 10 µs, more than trivial
/// providers take together.
const WORTH_A_POOL: std::time::Duration = std::time::Duration::from_micros(20);

/// A call run on the calling thread because the list's providers were quick is timed again
/// once in this many such calls (two clock reads cost as much as a few trivial providers).
const RETIME_EVERY: u32 = 8;

/// The list a thread last called concurrently, and how long its providers took.
#[derive(Clone, Copy)]
struct LastConcurrent {
    /// The list's address.
    list: usize,
    /// How long its providers took together when last timed (running them, not waiting for
    /// them), in nanoseconds.
    took_ns: u64,
    /// Calls run on this thread since that timing.
    untimed: u32,
}

thread_local! {
    /// This thread's last concurrent call.
    static LAST_CONCURRENT: std::cell::Cell<LastConcurrent> = const {
        std::cell::Cell::new(LastConcurrent { list: 0, took_ns: u64::MAX, untimed: 0 })
    };
}

/// Runs `call(index)` for `0..count` over the provider list `list` (its address identifies
/// it), concurrently where that pays; results in index order.
///
/// The providers run on `pool` (and the calling thread), unless they took less than
/// `WORTH_A_POOL` together the last time this thread timed a concurrent call of this list:
/// then they run on the calling thread, one after another, and are timed again every
/// [`RETIME_EVERY`]th call.
pub fn run_concurrent<R: Send>(
    pool: &dyn Pool,
    list: *const (),
    count: usize,
    call: impl Fn(usize) -> R + Sync,
) -> Vec<R> {
    let key = list as usize;
    let last = LAST_CONCURRENT.with(std::cell::Cell::get);
    if last.list == key && last.took_ns <= WORTH_A_POOL.as_nanos() as u64 {
        if last.untimed + 1 < RETIME_EVERY {
            LAST_CONCURRENT.with(|cell| {
                cell.set(LastConcurrent {
                    untimed: last.untimed + 1,
                    ..last
                })
            });
            return (0..count).map(&call).collect();
        }
        let started = std::time::Instant::now();
        let results: Vec<R> = (0..count).map(&call).collect();
        let took_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        LAST_CONCURRENT.with(|cell| {
            cell.set(LastConcurrent {
                list: key,
                took_ns,
                untimed: 0,
            })
        });
        return results;
    }
    let busy = std::sync::atomic::AtomicU64::new(0);
    let call = |index: usize| {
        let started = std::time::Instant::now();
        let result = call(index);
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        busy.fetch_add(took, Ordering::Relaxed);
        result
    };
    let slots: Vec<Mutex<Option<R>>> = (0..count).map(|_| Mutex::new(None)).collect();
    pool.run(count, &|index| {
        let value = call(index);
        *slots[index].lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    });
    LAST_CONCURRENT.with(|cell| {
        cell.set(LastConcurrent {
            list: key,
            took_ns: busy.load(Ordering::Relaxed),
            untimed: 0,
        })
    });
    slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every provider ran")
        })
        .collect()
}

/// Which boolean fold [`truth`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truth {
    /// couch_epi's `any`: some provider returned `true`.
    Any,
    /// couch_epi's `all`: no provider returned `false` (`true` with no providers).
    All,
}

/// `any` or `all` over every provider's `bool`, as couch_epi computes them from `apply`: every
/// provider is called, in order, and the first error stops the call (with `ignore_errors` a
/// failure counts as neither `true` nor `false`). Allocates nothing unless `concurrent`.
pub fn truth<A: Argument>(
    pool: &dyn Pool,
    list: Providers<'_>,
    checked: Option<Checked<'_, A, bool>>,
    args: &A,
    opts: ApplyOpts,
    fold: Truth,
) -> Result<bool, Error> {
    if opts.concurrent && list.len() > 1 {
        let results = apply_with(pool, list, checked, args, opts)?;
        return Ok(match fold {
            Truth::Any => any_true(&results),
            Truth::All => all_true(&results),
        });
    }
    // `any` looks for a `true`, `all` for a `false`.
    let wanted = fold == Truth::Any;
    let mut found = false;
    let args = Args::new(args, list.len());
    for index in 0..list.len() {
        match checked_call::<A, bool>(list, checked, index, &args) {
            Ok(value) => found |= value == wanted,
            Err(err) if err.failure.is_absent() => {}
            Err(_) if opts.ignore_errors => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(if wanted { found } else { !found })
}

/// couch_epi's `any`: some provider returned `true`.
pub fn any_true(results: &[Result<bool, ProviderError>]) -> bool {
    results.iter().any(|result| matches!(result, Ok(true)))
}

/// couch_epi's `all`: no provider returned `false`. With no providers it is `true` (the empty
/// conjunction), and a provider that failed (skipped with `ignore_errors`) is not a `false`.
pub fn all_true(results: &[Result<bool, ProviderError>]) -> bool {
    !results.iter().any(|result| matches!(result, Ok(false)))
}

/// Asks providers in order until one returns `Decided`; none → `NoDecision`.
#[inline(always)]
pub fn decide<A: Argument, T: DeserializeOwned + 'static>(
    list: Providers<'_>,
    checked: Option<Checked<'_, A, Decision<T>>>,
    args: &A,
    opts: DecideOpts,
) -> Result<Decision<T>, Error> {
    Ok(match decide_at(list, checked, args, opts)? {
        Some((_, value)) => Decision::Decided(value),
        None => Decision::NoDecision,
    })
}

/// `decide`, saying who decided: the deciding provider's plugin and label with the value.
pub fn decide_answer<A: Argument, T: DeserializeOwned + 'static>(
    list: Providers<'_>,
    checked: Option<Checked<'_, A, Decision<T>>>,
    args: &A,
    opts: DecideOpts,
) -> Result<Option<Answer<T>>, Error> {
    Ok(decide_at(list, checked, args, opts)?.map(|(index, value)| {
        let entry = &list.list[index];
        Answer {
            plugin: text(&entry.plugin).into(),
            provider: text(&entry.provider).into(),
            result: Ok(value),
        }
    }))
}

/// The decision and the index of the provider that made it, if one did.
#[inline(always)]
fn decide_at<A: Argument, T: DeserializeOwned + 'static>(
    list: Providers<'_>,
    checked: Option<Checked<'_, A, Decision<T>>>,
    args: &A,
    opts: DecideOpts,
) -> Result<Option<(usize, T)>, Error> {
    let args = Args::new(args, list.len());
    let mut output = MaybeUninit::<Decision<T>>::uninit();
    for (index, provider) in list.list.iter().enumerate() {
        let answered = match checked {
            Some(checked) => checked.get(index).call_into(&args, &mut output),
            None => check::<A, Decision<T>>(provider)
                .and_then(|typed| typed.call_into(&args, &mut output)),
        };
        match answered {
            // Look at the tag in place: moving the whole value out right after the plugin wrote
            // it stalls on store forwarding, and most providers do not decide.
            // SAFETY: `call_into` returned OK, so the output is initialised.
            Ok(()) => match unsafe { output.assume_init_ref() } {
                // SAFETY: initialised (above); read once, then the loop ends.
                Decision::Decided(_) => match unsafe { output.assume_init_read() } {
                    Decision::Decided(value) => return Ok(Some((index, value))),
                    Decision::NoDecision => unreachable!("the tag was read above"),
                },
                // SAFETY: initialised (above); dropped once before the next provider writes.
                Decision::NoDecision => unsafe { output.assume_init_drop() },
            },
            Err(err) if err.failure.is_absent() => {}
            Err(_) if opts.ignore_errors => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(None)
}

/// Passes `input` through every provider in order, each one's output the next one's input.
/// No providers → `input` comes back unchanged.
#[inline(always)]
pub fn pipe<T: Argument + Send>(
    list: Providers<'_>,
    checked: Option<Checked<'_, T, T>>,
    input: T,
    opts: PipeOpts,
) -> Result<T, Error> {
    let mut value = input;
    for index in 0..list.len() {
        let next = checked_call::<T, T>(list, checked, index, &Args::new(&value, 1));
        match next {
            Ok(next) => value = next,
            Err(err) if err.failure.is_absent() => {}
            Err(_) if opts.ignore_errors => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::utf8;

    #[test]
    fn a_handed_over_string_is_checked_as_utf8_on_either_branch() {
        assert_eq!(utf8(b"Ada".to_vec()).unwrap(), "Ada");
        assert_eq!(utf8("Adé".as_bytes().to_vec()).unwrap(), "Adé");
        assert!(utf8(vec![b'A', 0xff]).is_err());
        assert!(utf8(vec![0xc3]).is_err());
    }
}
