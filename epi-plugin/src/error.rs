//! Why a call failed: [`Error`] for the call as a whole, [`ProviderError`] for one provider.
//! Shared by hosts and by plugins calling services through their host.

use std::mem::ManuallyDrop;
use std::sync::Arc;

/// How one provider failed during a call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The provider returned an error.
    Failed(String),
    /// The provider panicked; the panic was caught in the plugin.
    Panicked(String),
    /// The provider could not decode its (JSON) input.
    BadInput(String),
    /// The provider's argument or output type differs from the call's.
    TypeMismatch {
        /// What the caller uses.
        expected: String,
        /// What the provider declares.
        found: String,
    },
    /// The provider's output could not be read (dynamic calls).
    BadOutput(String),
    /// The provider is gone (a bridge to a process that went away); calls skip it.
    Absent(String),
}

impl Failure {
    /// True for [`Failure::Absent`]: the provider is skipped, not counted as an error.
    pub fn is_absent(&self) -> bool {
        matches!(self, Failure::Absent(_))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Failed(message) => write!(f, "failed: {message}"),
            Failure::Panicked(message) => write!(f, "panicked: {message}"),
            Failure::BadInput(message) => write!(f, "rejected its input: {message}"),
            Failure::TypeMismatch { expected, found } => {
                write!(f, "has another signature: the call uses {expected}, the provider declares {found}")
            }
            Failure::BadOutput(message) => write!(f, "returned unreadable output: {message}"),
            Failure::Absent(message) => write!(f, "is gone: {message}"),
        }
    }
}

/// One provider's failure, naming plugin, provider, service and function.
///
/// One pointer wide, so that `Result<T, ProviderError>` (a list `apply` returns with
/// `ignore_errors`) is barely bigger than `T`: the details live behind it, and its fields read
/// as a struct's (`err.plugin`, `err.failure`) through [`ProviderFailure`].
///
/// Dropping one calls out of line, so that dropping a list of results (most of them `Ok`)
/// stays a tag check per element.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderError(ManuallyDrop<Box<ProviderFailure>>);

impl Drop for ProviderError {
    #[inline]
    fn drop(&mut self) {
        release(&mut self.0);
    }
}

/// Drops an error's details.
#[cold]
#[inline(never)]
fn release(details: &mut ManuallyDrop<Box<ProviderFailure>>) {
    // SAFETY: called once, from `ProviderError::drop`; the details are not used after.
    unsafe { ManuallyDrop::drop(details) }
}

/// What [`ProviderError`] holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderFailure {
    /// The plugin's app name.
    pub plugin: Arc<str>,
    /// The provider's label.
    pub provider: Arc<str>,
    /// The service called.
    pub service: Arc<str>,
    /// The function called.
    pub function: Arc<str>,
    /// What went wrong.
    pub failure: Failure,
}

impl ProviderError {
    /// The error of `details`.
    pub fn new(details: ProviderFailure) -> Self {
        ProviderError(ManuallyDrop::new(Box::new(details)))
    }

    /// The details, owned.
    pub fn into_details(self) -> ProviderFailure {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the details are taken once.
        *unsafe { ManuallyDrop::take(&mut this.0) }
    }
}

impl From<ProviderFailure> for ProviderError {
    fn from(details: ProviderFailure) -> Self {
        ProviderError::new(details)
    }
}

impl std::ops::Deref for ProviderError {
    type Target = ProviderFailure;

    fn deref(&self) -> &ProviderFailure {
        &self.0
    }
}

impl std::ops::DerefMut for ProviderError {
    fn deref_mut(&mut self) -> &mut ProviderFailure {
        &mut self.0
    }
}

impl std::fmt::Debug for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ProviderFailure {
            plugin,
            provider,
            service,
            function,
            failure,
        } = &**self.0;
        write!(
            f,
            "plugin `{plugin}` provider `{provider}`: {service}.{function} {failure}"
        )
    }
}

impl std::error::Error for ProviderError {}

/// Why a call (`apply`, `decide`, ...) failed as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No loaded plugin defines the service.
    #[error("unknown service `{0}`: no loaded plugin defines it")]
    UnknownService(Arc<str>),
    /// The options cannot be combined.
    #[error("incompatible options: {0}")]
    IncompatibleOptions(&'static str),
    /// A provider failed and `ignore_errors` was not set.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Calls from plugins nested deeper than the host allows (a cycle such as A calls B calls
    /// A ...).
    #[error("calls nested deeper than {max}: {chain}")]
    TooDeep {
        /// The host's limit.
        max: usize,
        /// The calls in progress on this thread, outermost first (`service.function`).
        chain: String,
    },
    /// A plugin called the host's services while no host runs it (in a plugin's own unit
    /// tests, or after its host was dropped).
    #[error("no host: {0}")]
    NoHost(&'static str),
    /// A free function (`epi::apply`, ...) was called before a host installed the default
    /// registry.
    #[error("no default registry: the host installs one with `epi::install` first")]
    NoDefaultRegistry,
    /// The host answered a plugin's call by name or data query with an error.
    #[error("{0}")]
    Remote(String),
    /// A call's result could not be decoded as the caller's type (a pipe's last output, a
    /// decision or a result of a call by name): the provider answered something else.
    #[error("unreadable result of {service}.{function}: {reason}")]
    BadOutput {
        /// The service called.
        service: Arc<str>,
        /// The function called.
        function: Arc<str>,
        /// Why.
        reason: String,
    },
    /// The arguments of a dynamic call could not be encoded.
    #[error("bad arguments for {service}.{function}: {reason}")]
    BadArguments {
        /// The service called.
        service: Arc<str>,
        /// The function called.
        function: Arc<str>,
        /// Why.
        reason: String,
    },
}
