//! The process-wide default registry and the free functions over it, in couch_epi's shape:
//! `epi::apply(service, function, &args)` against one registry the host installs once with
//! [`install`].
//!
//! Each free call finds the service and function by name in the current dispatch table and
//! checks the providers' types (no lock, no allocation beyond the result); a [`Function`]
//! resolved once with [`function`] skips both and is as fast as any handle.
//!
//! Invariant: the default registry, once installed, is never replaced (handles and data
//! queries taken from it stay valid for the life of the process).

use std::sync::OnceLock;

use serde::de::DeserializeOwned;

use crate::dispatch::{ApplyOpts, Argument, DecideOpts, Function, Output, PipeOpts};
use crate::error::{Error, ProviderError};
use crate::{DataHandle, Decision, Registry};

static DEFAULT: OnceLock<Registry> = OnceLock::new();

/// Installs `registry` as the process-wide default the free functions call through. Once per
/// process: a second call gives the registry back.
pub fn install(registry: Registry) -> Result<(), Registry> {
    DEFAULT.set(registry)
}

/// The default registry, once installed.
pub fn installed() -> Option<&'static Registry> {
    DEFAULT.get()
}

fn default_registry() -> Result<&'static Registry, Error> {
    DEFAULT.get().ok_or(Error::NoDefaultRegistry)
}

/// `apply` on the default registry: every provider of `service` in order, their results in
/// that order; the first error stops the call (see [`crate::ServiceHandle::apply`]).
pub fn apply<A: Argument, O: Output>(
    service: &str,
    function: &str,
    args: &A,
) -> Result<Vec<O>, Error> {
    default_registry()?
        .shared
        .dispatcher
        .apply_named(service, function, args)
}

/// `apply` with options on the default registry (see [`crate::ServiceHandle::apply_with`]).
pub fn apply_with<A: Argument, O: Output>(
    service: &str,
    function: &str,
    args: &A,
    opts: ApplyOpts,
) -> Result<Vec<Result<O, ProviderError>>, Error> {
    default_registry()?
        .shared
        .dispatcher
        .apply_with_named(service, function, args, opts)
}

/// `decide` on the default registry: providers in order until one decides.
pub fn decide<A: Argument, T: DeserializeOwned + Send + 'static>(
    service: &str,
    function: &str,
    args: &A,
    opts: DecideOpts,
) -> Result<Decision<T>, Error> {
    default_registry()?
        .shared
        .dispatcher
        .decide_named(service, function, args, opts)
}

/// `pipe` on the default registry: `input` through every provider in order.
pub fn pipe<T: Argument + Send>(
    service: &str,
    function: &str,
    input: T,
    opts: PipeOpts,
) -> Result<T, Error> {
    default_registry()?
        .shared
        .dispatcher
        .pipe_named(service, function, input, opts)
}

/// `any` on the default registry: some provider returned `true`.
pub fn any<A: Argument>(
    service: &str,
    function: &str,
    args: &A,
    opts: ApplyOpts,
) -> Result<bool, Error> {
    default_registry()?.shared.dispatcher.truth_named(
        service,
        function,
        args,
        opts,
        epi_plugin::call::Truth::Any,
    )
}

/// `all` on the default registry: no provider returned `false` (`true` with none).
pub fn all<A: Argument>(
    service: &str,
    function: &str,
    args: &A,
    opts: ApplyOpts,
) -> Result<bool, Error> {
    default_registry()?.shared.dispatcher.truth_named(
        service,
        function,
        args,
        opts,
        epi_plugin::call::Truth::All,
    )
}

/// A typed handle to a function of the default registry: resolve once, call at full speed.
pub fn function<A, O>(service: &str, function: &str) -> Result<Function<A, O>, Error> {
    Ok(default_registry()?.function(service, function))
}

/// The data of `service` in the default registry.
pub fn data(service: &str) -> Result<DataHandle, Error> {
    Ok(default_registry()?.data(service))
}
