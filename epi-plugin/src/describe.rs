//! Stable descriptions of the types that cross the boundary.
//!
//! On the stable call path, arguments and outputs cross as JSON, so what must agree between a
//! host and a plugin built by different compilers is each type's *serde shape*: struct and
//! field names in order, enum variants, element types. [`shape_of`] traces a type's
//! `Deserialize` implementation with `serde-reflection` (no value is needed) and renders the
//! result as canonical JSON text, which both sides compare as a string.
//!
//! Some types cannot be traced: those whose `Deserialize` asks the format what comes next
//! (`serde_json::Value`, untagged enums, flattened fields) or rejects the placeholder values
//! tracing feeds it. Their shape is `"name:"` followed by the type's path, so for them the
//! check falls back to comparing names, and decoding still checks every value.

use serde::de::DeserializeOwned;
use serde_reflection::{Samples, Tracer, TracerConfig};

/// Extra tracing passes for enums nested inside the type: a pass visits every variant of an
/// enum by name, and the following ones match variant indexes to names.
const EXTRA_PASSES: usize = 4;

/// The canonical serde shape of `T` (see the module docs).
pub fn shape_of<T: DeserializeOwned>() -> String {
    trace::<T>().unwrap_or_else(|_| format!("name:{}", std::any::type_name::<T>()))
}

fn trace<T: DeserializeOwned>() -> Result<String, serde_reflection::Error> {
    let samples = Samples::new();
    let mut tracer = Tracer::new(TracerConfig::default());
    let (format, _) = tracer.trace_type::<T>(&samples)?;
    // `trace_type` completes the type itself when it is an enum; enums nested inside it need
    // passes of their own.
    for _ in 0..EXTRA_PASSES {
        tracer.trace_type_once::<T>(&samples)?;
    }
    let registry = tracer.registry()?;
    Ok(serde_json::to_string(&(format, registry)).unwrap_or_default())
}
