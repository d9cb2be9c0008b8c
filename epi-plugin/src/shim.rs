//! The `extern "C"` functions a plugin exports for its objects, and the traits the macros
//! implement. Every shim runs its body inside `catch_unwind`: no panic crosses the boundary.

use std::any::Any;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::{Deserialize, DeserializeOwned};
use serde::Serialize;

use crate::abi::manifest::{FunctionManifest, TypeDesc};
use crate::abi::{
    ArgsScratch, FunctionTable, RVec, StrRef, ENCODING_JSON, ENCODING_MASK, OUTPUT_STRING,
    STATUS_BAD_INPUT, STATUS_FAILED, STATUS_OK, STATUS_OK_STRING, STATUS_PANICKED,
};

/// One public method of a provider, described by `#[epi::provider]`.
///
/// Implementing it by hand is safe: the shims only ever cast a provider object to
/// `Self::Provider`, and [`FunctionEntry`] ties each entry to that type.
pub trait Method: 'static {
    /// The provider type the method belongs to.
    type Provider: Send + Sync + 'static;
    /// The argument type (`()` when the method takes none, a tuple when several).
    type Args: Serialize + DeserializeOwned + 'static;
    /// The value it returns (the `T` of a `Result<T, E>`).
    type Output: Serialize + DeserializeOwned + 'static;
    /// The arguments as the stable path decodes them: `Args` with each `&str` parameter as a
    /// [`WireStr`] borrowed from the encoded bytes, so decoding allocates nothing for it. Must
    /// accept every encoding of `Args` (same serde shape).
    type Wire<'de>: Deserialize<'de>;
    /// The method's name.
    const NAME: &'static str;
    /// Calls the method; an `Err` carries the error's `Display` text.
    fn call(provider: &Self::Provider, args: &Self::Args) -> Result<Self::Output, String>;
    /// Calls the method with decoded stable-path arguments.
    fn call_wire(provider: &Self::Provider, args: &Self::Wire<'_>) -> Result<Self::Output, String>;
}

/// A `&str` argument as the stable path decodes it: borrowed from the encoded bytes when the
/// JSON text holds it verbatim (no escapes), owned otherwise.
#[derive(Debug)]
pub struct WireStr<'de>(std::borrow::Cow<'de, str>);

impl std::ops::Deref for WireStr<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for WireStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = WireStr<'de>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(WireStr(std::borrow::Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(WireStr(std::borrow::Cow::Owned(text.to_owned())))
            }

            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(WireStr(std::borrow::Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A provider object's function table. Implemented by `#[epi::provider]`.
///
/// Safe to implement: a [`FunctionEntry<Self>`] can only be made from a [`Method`] whose
/// provider is `Self`, so no table can make the host call a shim with an object of another
/// type.
pub trait Provides: Send + Sync + Sized + 'static {
    /// One entry per public method, in declaration order.
    fn functions() -> Vec<FunctionEntry<Self>>;
}

/// One function of provider type `P`: its description and entry points. Made only by
/// [`function_entry`].
pub struct FunctionEntry<P> {
    manifest: FunctionManifest,
    table: FunctionTable,
    _provider: PhantomData<fn(&P)>,
}

impl<P> FunctionEntry<P> {
    /// The function's name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub(crate) fn into_parts(self) -> (FunctionManifest, FunctionTable) {
        (self.manifest, self.table)
    }
}

/// The type description of `T` (see [`crate::describe`]).
pub fn type_desc<T: DeserializeOwned>() -> TypeDesc {
    TypeDesc {
        name: std::any::type_name::<T>().to_owned(),
        size: std::mem::size_of::<T>(),
        align: std::mem::align_of::<T>(),
        shape: crate::describe::shape_of::<T>(),
    }
}

/// The function table entry of `M`.
pub fn function_entry<M: Method>() -> FunctionEntry<M::Provider> {
    FunctionEntry {
        manifest: FunctionManifest {
            name: M::NAME.to_owned(),
            args: type_desc::<M::Args>(),
            output: type_desc::<M::Output>(),
        },
        table: FunctionTable {
            // Set to the provider object when the provider is handed over.
            instance: std::ptr::null(),
            typed: typed_shim::<M>,
            stable: stable_shim::<M>,
        },
        _provider: PhantomData,
    }
}

/// Text of a caught panic payload.
pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// A failure: a status and its message.
pub(crate) type Failure = (u32, String);

/// Decodes JSON text; a failure is [`STATUS_BAD_INPUT`] with `what` and the reason.
pub(crate) fn read_json<'de, T: Deserialize<'de>>(
    text: &'de [u8],
    what: impl FnOnce() -> String,
) -> Result<T, Failure> {
    serde_json::from_slice(text).map_err(|err| (STATUS_BAD_INPUT, format!("{}: {err}", what())))
}

/// Encodes `value` as JSON text; a failure is [`STATUS_FAILED`] naming `what`.
pub(crate) fn write_json<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(value)
        .map_err(|err| (STATUS_FAILED, format!("cannot encode the {what}: {err}")))
}

/// Replaces the buffer `slot` points at with `bytes`.
///
/// # Safety
/// `slot` points at a live [`RVec<u8>`] owned by the caller (the host's heap).
pub(crate) unsafe fn put(slot: *mut RVec<u8>, bytes: Vec<u8>) {
    // SAFETY: the caller hands a live buffer; the old one is released through the shared
    // allocator and replaced.
    unsafe { drop(std::ptr::replace(slot, RVec::from_vec(bytes)).into_vec()) }
}

/// Runs `body`, turning an error into its status and a panic into [`STATUS_PANICKED`], with the
/// message in `error`.
///
/// # Safety
/// `error` points at a live [`RVec<u8>`].
pub(crate) unsafe fn guarded(
    error: *mut RVec<u8>,
    body: impl FnOnce() -> Result<(), Failure>,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { guarded_status(error, || body().map(|()| STATUS_OK)) }
}

/// As [`guarded`], for a body that picks its success status.
///
/// # Safety
/// `error` points at a live [`RVec<u8>`].
pub(crate) unsafe fn guarded_status(
    error: *mut RVec<u8>,
    body: impl FnOnce() -> Result<u32, Failure>,
) -> u32 {
    let (status, message) = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => return status,
        Ok(Err(failure)) => failure,
        Err(payload) => (STATUS_PANICKED, panic_message(payload)),
    };
    // SAFETY: the caller's contract.
    unsafe { put(error, message.into_bytes()) };
    status
}

/// Native call shim of `M`: arguments and output by pointer.
///
/// # Safety
/// `instance` is an `M::Provider`, `input` an `M::Args`, `output` uninitialised room for an
/// `M::Output`, `error` a live buffer; the host checked that its types are `M`'s (same build,
/// same type names, sizes and alignments) before calling.
pub unsafe extern "C" fn typed_shim<M: Method>(
    instance: *const c_void,
    input: *const c_void,
    output: *mut c_void,
    error: *mut RVec<u8>,
) -> u32 {
    // SAFETY: the caller's contract: every pointer has the type named above.
    unsafe {
        guarded(error, || {
            let provider = &*(instance as *const M::Provider);
            let args = &*(input as *const M::Args);
            let value = M::call(provider, args).map_err(|message| (STATUS_FAILED, message))?;
            (output as *mut M::Output).write(value);
            Ok(())
        })
    }
}

/// Decodes arguments in `encoding`; a failure is [`STATUS_BAD_INPUT`] naming the type
/// `Named` (the arguments' type, of which `T` may be the borrowing form).
pub(crate) fn decode<'de, T: Deserialize<'de>, Named: ?Sized>(
    encoding: u32,
    bytes: &'de [u8],
) -> Result<T, Failure> {
    let expected = || format!("expected {}", std::any::type_name::<Named>());
    match encoding & ENCODING_MASK {
        ENCODING_JSON => read_json(bytes, expected),
        other => Err((STATUS_BAD_INPUT, format!("unknown encoding {other}"))),
    }
}

/// Clears the host's buffer `output` (its capacity is reused) and writes `value` into it as
/// JSON, the one encoding [`decode`] accepts (every caller decoded its input first).
///
/// # Safety
/// `output` points at a live buffer of the host's.
pub(crate) unsafe fn fill<T: Serialize>(output: *mut RVec<u8>, value: &T) -> Result<(), Failure> {
    // SAFETY: the caller's contract; the buffer is taken and put back.
    unsafe {
        let mut buffer = std::ptr::replace(output, RVec::new()).into_vec();
        buffer.clear();
        let written = serde_json::to_writer(&mut buffer, value)
            .map_err(|err| (STATUS_FAILED, format!("cannot encode the result: {err}")));
        output.write(RVec::from_vec(buffer));
        written
    }
}

/// Stable call shim of `M`: arguments and output as JSON (typed calls from another build, and
/// calls by name).
///
/// # Safety
/// `instance` is an `M::Provider`, `input` live bytes, `output` and `error` live buffers;
/// `scratch` is null or an [`ArgsScratch`] that is empty or was filled by this same entry point
/// from the same, still live `input` (see [`ArgsScratch`]).
pub unsafe extern "C" fn stable_shim<M: Method>(
    instance: *const c_void,
    encoding: u32,
    input: StrRef,
    output: *mut RVec<u8>,
    error: *mut RVec<u8>,
    scratch: *mut ArgsScratch,
) -> u32 {
    // SAFETY: the caller's contract: every pointer has the type named above.
    unsafe {
        guarded_status(error, || {
            let provider = &*(instance as *const M::Provider);
            let bytes = input.as_bytes();
            let decoded;
            let args: &M::Wire<'_> = match scratch.as_mut() {
                None => {
                    decoded = decode::<M::Wire<'_>, M::Args>(encoding, bytes)?;
                    &decoded
                }
                // Filled by this entry point from these bytes (the caller's contract).
                Some(scratch) if !scratch.value.is_null() => {
                    &*(scratch.value as *const M::Wire<'_>)
                }
                Some(scratch) => {
                    let boxed = Box::new(decode::<M::Wire<'_>, M::Args>(encoding, bytes)?);
                    let raw = Box::into_raw(boxed);
                    scratch.value = raw as *mut c_void;
                    scratch.drop = Some(drop_shim::<M::Wire<'static>>);
                    &*raw
                }
            };
            let value = M::call_wire(provider, args).map_err(|message| (STATUS_FAILED, message))?;
            let value = if encoding & OUTPUT_STRING != 0 {
                match same_type::<_, String>(value) {
                    Ok(text) => {
                        put(output, text.into_bytes());
                        return Ok(STATUS_OK_STRING);
                    }
                    Err(value) => value,
                }
            } else {
                value
            };
            fill(output, &value).map(|()| STATUS_OK)
        })
    }
}

/// `value` as a `U` when `T` is `U`, else `value` back: a `String` result handed over on the
/// stable path (by the shim, and taken back by the caller as its output type).
pub(crate) fn same_type<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>() {
        Some(same) => Ok(same.take().expect("filled just above")),
        None => Err(slot.expect("only taken when the types are the same")),
    }
}

/// Releases a boxed `T` created by this plugin, catching a panicking `Drop`.
///
/// # Safety
/// `instance` came from `Box::<T>::into_raw` in this plugin and is released once.
pub unsafe extern "C" fn drop_shim<T>(instance: *mut c_void) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's contract.
        drop(unsafe { Box::from_raw(instance as *mut T) })
    }));
    if let Err(payload) = result {
        crate::runtime::log(
            1,
            &format!("panic while dropping: {}", panic_message(payload)),
        );
    }
}

/// Boxes `object` for the host: the pointer and the function that releases it.
pub(crate) fn object<T: Send + Sync + 'static>(object: T) -> crate::abi::ObjectTable {
    crate::abi::ObjectTable {
        instance: Box::into_raw(Box::new(object)) as *mut c_void,
        drop: drop_shim::<T>,
    }
}

/// A callback data source as the plugin stores it: returns JSON text or an error message.
pub(crate) type BoxedCallback = Box<dyn Fn() -> Result<Vec<u8>, String> + Send + Sync>;

/// Calls a callback data source.
///
/// # Safety
/// `instance` is a [`BoxedCallback`] created by this plugin, `output` and `error` live buffers.
pub(crate) unsafe extern "C" fn data_shim(
    instance: *const c_void,
    output: *mut RVec<u8>,
    error: *mut RVec<u8>,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        guarded(error, || {
            let callback = &*(instance as *const BoxedCallback);
            let json = callback().map_err(|message| (STATUS_FAILED, message))?;
            put(output, json);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn string_arguments_decode_borrowed_and_escaped_ones_owned() {
        let bytes = serde_json::to_vec(&("Ada".to_string(), 7u64)).unwrap();
        let (name, n) = decode::<(WireStr<'_>, u64), (String, u64)>(ENCODING_JSON, &bytes).unwrap();
        assert!(matches!(name.0, Cow::Borrowed("Ada")), "{name:?}");
        assert_eq!(n, 7);

        let text = br#"["A\"da", 7]"#;
        let (name, n) = decode::<(WireStr<'_>, u64), (String, u64)>(ENCODING_JSON, text).unwrap();
        assert!(
            matches!(&name.0, Cow::Owned(owned) if owned == "A\"da"),
            "{name:?}"
        );
        assert_eq!(n, 7);
    }

    #[test]
    fn only_a_string_result_is_handed_over_as_one() {
        assert_eq!(
            same_type::<_, String>("text".to_string()),
            Ok("text".to_string())
        );
        assert_eq!(same_type::<_, String>(7u64), Err(7));
        let borrowed: Cow<'static, str> = Cow::Borrowed("text");
        assert_eq!(same_type::<_, String>(borrowed.clone()), Err(borrowed));
    }

    #[test]
    fn a_wire_decoding_failure_names_the_arguments_type() {
        let bytes = serde_json::to_vec(&(7u64, 7u64)).unwrap();
        let (status, message) =
            decode::<(WireStr<'_>, u64), (String, u64)>(ENCODING_JSON, &bytes).unwrap_err();
        assert_eq!(status, STATUS_BAD_INPUT);
        assert!(
            message.starts_with("expected (alloc::string::String, u64): "),
            "{message}"
        );
    }
}
