//! Calls by name with JSON values, for the CLI, HTTP and tests. Each provider decodes its
//! arguments from JSON text and encodes its result; slower than typed calls, same semantics.

use serde_json::Value;

use crate::abi::{RVec, StrRef, COUNT_LATENCY, ENCODING_JSON, LATENCY_SAMPLE_EVERY, STATUS_OK};
use crate::dispatch::{failure, provider_error, run_concurrent, Dispatcher, Opts, PipeOpts};
use crate::error::{Error, Failure, ProviderError};
use crate::loader::bytes;
use crate::snapshot::{text, ProviderCall};
use epi_plugin::Decision;

/// The call's span, entered, when the `TRACE` level is on; otherwise `None` after one check of
/// the level (a disabled `tracing` span costs about 30 instructions per call to make, enter
/// and drop).
macro_rules! call_span {
    ($($span:tt)*) => {
        if tracing::level_enabled!(tracing::Level::TRACE) {
            Some(tracing::trace_span!($($span)*).entered())
        } else {
            None
        }
    };
}

/// One provider's answer in a dynamic `apply`.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The plugin's app name.
    pub plugin: String,
    /// The provider's label.
    pub provider: String,
    /// Its value or its failure.
    pub result: Result<Value, ProviderError>,
}

/// What a dynamic `apply` returns.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// Without `pipe`: one reply per provider called, in provider order.
    Each(Vec<Reply>),
    /// With `pipe`: the last provider's output (the input when there are no providers).
    Piped(Value),
}

impl Applied {
    /// The values as JSON: an array of values, or (with `ignore_errors`) of
    /// `{"plugin", "provider", "ok" | "error"}` objects; for a pipe, the piped value.
    pub fn to_json(&self, detailed: bool) -> Value {
        match self {
            Applied::Piped(value) => value.clone(),
            Applied::Each(replies) if !detailed => Value::Array(
                replies
                    .iter()
                    .filter_map(|reply| reply.result.as_ref().ok().cloned())
                    .collect(),
            ),
            Applied::Each(replies) => Value::Array(
                replies
                    .iter()
                    .map(|reply| {
                        let mut object = serde_json::Map::new();
                        object.insert("plugin".into(), reply.plugin.clone().into());
                        object.insert("provider".into(), reply.provider.clone().into());
                        match &reply.result {
                            Ok(value) => object.insert("ok".into(), value.clone()),
                            Err(err) => object.insert("error".into(), err.to_string().into()),
                        };
                        Value::Object(object)
                    })
                    .collect(),
            ),
        }
    }
}

/// Calls one provider's JSON shim with `input` (JSON text); returns its JSON text.
fn call_json(provider: &ProviderCall, input: &[u8]) -> Result<Vec<u8>, ProviderError> {
    let mut output = RVec::new();
    let mut error = RVec::new();
    // Timed as typed calls are: one in `LATENCY_SAMPLE_EVERY`.
    let mut timed = None;
    if provider.count_calls != 0 {
        // SAFETY: the counters live as long as the snapshot holding the entry.
        let counters = unsafe { &*provider.counters };
        let before = counters
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if provider.count_calls & COUNT_LATENCY != 0 && before % LATENCY_SAMPLE_EVERY == 0 {
            timed = Some((counters, std::time::Instant::now()));
        }
    }
    let previous = epi_plugin::running::enter(provider);
    // SAFETY: the JSON shim takes any bytes and fills the buffers through the shared
    // allocator; the plugin is mapped while the snapshot lives; the shim catches panics.
    let status = unsafe {
        (provider.stable)(
            provider.instance,
            ENCODING_JSON,
            StrRef::bytes(input),
            &mut output,
            &mut error,
            std::ptr::null_mut(),
        )
    };
    epi_plugin::running::leave(previous);
    if let Some((counters, start)) = timed {
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counters.latency.record(nanos);
    }
    if status == STATUS_OK {
        Ok(bytes(output))
    } else {
        Err(failure(provider, status, bytes(error)))
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    provider: &ProviderCall,
    bytes: &[u8],
) -> Result<T, ProviderError> {
    serde_json::from_slice(bytes)
        .map_err(|err| provider_error(provider, Failure::BadOutput(err.to_string())))
}

impl Dispatcher {
    fn providers_json<R>(
        &self,
        service: &str,
        function: &str,
        args: &Value,
        body: impl FnOnce(&[ProviderCall], Vec<u8>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let snapshot = self.current.pin();
        let list = snapshot
            .service_ids
            .get(service)
            .and_then(|&id| snapshot.providers_by_name(id, function))
            .ok_or_else(|| Error::UnknownService(service.into()))?;
        let input = serde_json::to_vec(args).map_err(|err| Error::BadArguments {
            service: service.into(),
            function: function.into(),
            reason: err.to_string(),
        })?;
        body(list, input)
    }

    /// `apply` by name with JSON arguments. Options as for typed calls; with `pipe`, a provider
    /// whose input does not fit the previous output fails with a `BadInput` naming it.
    pub(crate) fn apply_json(
        &self,
        service: &str,
        function: &str,
        args: &Value,
        opts: Opts,
    ) -> Result<Applied, Error> {
        let _span = call_span!("epi.apply_json", service, function);
        if opts.pipe {
            let opts = opts.for_pipe()?;
            return self.providers_json(service, function, args, |list, input| {
                pipe_json(list, input, opts).map(Applied::Piped)
            });
        }
        let opts = opts.for_apply()?;
        self.providers_json(service, function, args, |list, input| {
            let one = |provider: &ProviderCall| Reply {
                plugin: text(&provider.plugin).to_owned(),
                provider: text(&provider.provider).to_owned(),
                result: call_json(provider, &input).and_then(|bytes| decode(provider, &bytes)),
            };
            let replies = if opts.concurrent && list.len() > 1 {
                run_concurrent(self, list.as_ptr().cast(), list.len(), |index| {
                    one(&list[index])
                })
            } else {
                let mut replies = Vec::with_capacity(list.len());
                for provider in list {
                    let reply = one(provider);
                    let failed = matches!(&reply.result, Err(err) if !err.failure.is_absent());
                    replies.push(reply);
                    if failed && !opts.ignore_errors {
                        break;
                    }
                }
                replies
            };
            let mut replies = replies;
            replies.retain(|reply| !matches!(&reply.result, Err(err) if err.failure.is_absent()));
            if !opts.ignore_errors {
                if let Some(Err(err)) = replies
                    .iter()
                    .map(|reply| &reply.result)
                    .find(|r| r.is_err())
                {
                    return Err(err.clone().into());
                }
            }
            Ok(Applied::Each(replies))
        })
    }

    /// `decide` by name with JSON arguments: each provider returns `"no_decision"` or
    /// `{"decided": value}`.
    pub(crate) fn decide_json(
        &self,
        service: &str,
        function: &str,
        args: &Value,
        opts: Opts,
    ) -> Result<Decision<Value>, Error> {
        let opts = opts.for_decide()?;
        let _span = call_span!("epi.decide_json", service, function);
        self.providers_json(service, function, args, |list, input| {
            for provider in list {
                let answer = call_json(provider, &input)
                    .and_then(|bytes| decode::<Decision<Value>>(provider, &bytes));
                match answer {
                    Ok(Decision::Decided(value)) => return Ok(Decision::Decided(value)),
                    Ok(Decision::NoDecision) => {}
                    Err(err) if err.failure.is_absent() => tracing::debug!("{err}; skipped"),
                    Err(err) if opts.ignore_errors => tracing::debug!("{err}; no decision"),
                    Err(err) => return Err(err.into()),
                }
            }
            Ok(Decision::NoDecision)
        })
    }
}

fn pipe_json(list: &[ProviderCall], input: Vec<u8>, opts: PipeOpts) -> Result<Value, Error> {
    let mut value = input;
    for (position, provider) in list.iter().enumerate() {
        match call_json(provider, &value) {
            Ok(next) => value = next,
            Err(err) if err.failure.is_absent() => tracing::debug!("{err}; skipped"),
            Err(mut err) => {
                if let (Failure::BadInput(reason), true) = (&err.failure, position > 0) {
                    err.failure = Failure::BadInput(format!(
                        "the previous provider's output does not fit this provider's input: {reason}"
                    ));
                }
                if !opts.ignore_errors {
                    return Err(err.into());
                }
                tracing::debug!("{err}; value passed on unchanged");
            }
        }
    }
    serde_json::from_slice(&value).map_err(|err| Error::BadOutput {
        service: list
            .first()
            .map(|p| text(&p.service).into())
            .unwrap_or_else(|| "?".into()),
        function: list
            .first()
            .map(|p| text(&p.function).into())
            .unwrap_or_else(|| "?".into()),
        reason: format!("the pipe's result is not JSON: {err}"),
    })
}
