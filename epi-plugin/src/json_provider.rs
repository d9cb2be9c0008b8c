//! Providers made of a closure over JSON values ([`crate::Provider::json`]): each function is
//! a record inside the provider object, and its entry points receive that record.

use std::ffi::c_void;
use std::sync::Arc;

use serde_json::Value;

use crate::abi::manifest::FunctionManifest;
use crate::abi::{FunctionTable, RVec, StrRef, STATUS_ABSENT, STATUS_FAILED};
use crate::shim::{decode, fill, guarded, type_desc};

/// Answers `(function, args)`.
pub(crate) type Handler = Arc<dyn Fn(&str, Value) -> Result<Value, HandlerError> + Send + Sync>;

/// Why a closure provider ([`crate::Provider::json`]) gave no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandlerError {
    /// The call failed: the caller gets a provider error with this message.
    Failed(String),
    /// What the provider stands for is gone (a bridged process that exited, say): the call
    /// goes on as if the provider were not listed (see [`crate::Failure::Absent`]).
    Absent(String),
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError::Failed(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::Failed(message.to_owned())
    }
}

impl HandlerError {
    /// The status and message for the boundary.
    fn into_failure(self) -> crate::shim::Failure {
        match self {
            HandlerError::Failed(message) => (STATUS_FAILED, message),
            HandlerError::Absent(message) => (STATUS_ABSENT, message),
        }
    }
}

/// One function: its name and the provider's handler.
struct JsonFunction {
    name: String,
    handler: Handler,
}

/// The provider object: the function records (built once and never changed, so their
/// addresses never move).
pub(crate) struct JsonProvider {
    functions: Vec<JsonFunction>,
}

impl JsonProvider {
    pub(crate) fn new(
        functions: impl IntoIterator<Item = impl Into<String>>,
        handler: Handler,
    ) -> Self {
        JsonProvider {
            functions: functions
                .into_iter()
                .map(|name| JsonFunction {
                    name: name.into(),
                    handler: handler.clone(),
                })
                .collect(),
        }
    }

    /// Each function's manifest and entry points, pointing at its record.
    pub(crate) fn functions(&self) -> Vec<(FunctionManifest, FunctionTable)> {
        self.functions
            .iter()
            .map(|function| {
                (
                    FunctionManifest {
                        name: function.name.clone(),
                        args: type_desc::<Value>(),
                        output: type_desc::<Value>(),
                    },
                    FunctionTable {
                        instance: function as *const JsonFunction as *const c_void,
                        typed: typed_shim,
                        stable: stable_shim,
                    },
                )
            })
            .collect()
    }
}

/// Native call: a `Value` in, a `Value` out, by pointer.
///
/// # Safety
/// `instance` is a `JsonFunction` of this plugin, `input` a `Value`, `output` room for a
/// `Value`, `error` a live buffer; the host checked the types.
unsafe extern "C" fn typed_shim(
    instance: *const c_void,
    input: *const c_void,
    output: *mut c_void,
    error: *mut RVec<u8>,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        guarded(error, || {
            let function = &*(instance as *const JsonFunction);
            let args = (*(input as *const Value)).clone();
            let value =
                (function.handler)(&function.name, args).map_err(HandlerError::into_failure)?;
            (output as *mut Value).write(value);
            Ok(())
        })
    }
}

/// Stable call and calls by name: encoded `Value`s.
///
/// # Safety
/// `instance` is a `JsonFunction` of this plugin, `input` live bytes, `output` and `error`
/// live buffers.
unsafe extern "C" fn stable_shim(
    instance: *const c_void,
    encoding: u32,
    input: StrRef,
    output: *mut RVec<u8>,
    error: *mut RVec<u8>,
    _scratch: *mut crate::abi::ArgsScratch,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        guarded(error, || {
            let function = &*(instance as *const JsonFunction);
            let args = decode::<Value, Value>(encoding, input.as_bytes())?;
            let value =
                (function.handler)(&function.name, args).map_err(HandlerError::into_failure)?;
            fill(output, &value)
        })
    }
}
