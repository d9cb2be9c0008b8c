//! Error types: why a plugin file was refused ([`LoadError`]), why a call failed ([`Error`]),
//! and what one provider did wrong ([`ProviderError`]).

use std::path::PathBuf;

/// Why a plugin file was not loaded. Every variant names the file; the host keeps running with
/// what it had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file or its directory could not be read.
    #[error("{path}: cannot read the plugin file: {source}")]
    Io {
        /// The plugin file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file or its directory may be modified by other users (as sshd's StrictModes).
    #[error("{path}: refusing an untrusted plugin: {reason}")]
    Untrusted {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong with its ownership or permissions.
        reason: String,
    },
    /// Not a complete shared library for this machine (empty, text, truncated, wrong kind).
    #[error("{path}: not a loadable shared library: {reason}")]
    NotALibrary {
        /// The plugin file.
        path: PathBuf,
        /// What the ELF check found.
        reason: String,
    },
    /// Loading the file in a probe process crashed, exited or hung it (see
    /// [`crate::LoadProbe`]); the file was not opened in this process.
    #[error("{path}: refused: {reason}; it was not loaded in this process")]
    ProbeFailed {
        /// The plugin file.
        path: PathBuf,
        /// What happened to the probe process.
        reason: String,
    },
    /// An isolated plugin's child process could not load it or did not start.
    #[error("{path}: the isolated plugin did not start: {reason}")]
    Isolation {
        /// The plugin file.
        path: PathBuf,
        /// What the child process did or said.
        reason: String,
    },
    /// The dynamic loader refused the library.
    #[error("{path}: the dynamic loader refused it: {reason}")]
    Dlopen {
        /// The plugin file.
        path: PathBuf,
        /// The `dlerror` text.
        reason: String,
    },
    /// The library has no epi entry symbol.
    #[error("{path}: not an epi plugin: it exports no `{symbol}` symbol")]
    NoEntry {
        /// The plugin file.
        path: PathBuf,
        /// The symbol looked for.
        symbol: &'static str,
    },
    /// The entry symbol does not start with epi's magic bytes.
    #[error("{path}: `{symbol}` is not an epi plugin entry (magic {found:?})")]
    BadMagic {
        /// The plugin file.
        path: PathBuf,
        /// The symbol read.
        symbol: &'static str,
        /// The bytes found instead of the magic.
        found: [u8; 8],
    },
    /// The plugin was built against another version of the binary contract.
    #[error(
        "{path}: built against epi ABI {found}, this host loads ABI {expected} (rebuild the plugin against a compatible epi)"
    )]
    AbiMismatch {
        /// The plugin file.
        path: PathBuf,
        /// The host's ABI version.
        expected: u32,
        /// The plugin's ABI version.
        found: u32,
    },
    /// The plugin was built for another target (architecture, OS, C library).
    #[error("{path}: built for target `{found}`, this host runs `{expected}`")]
    TargetMismatch {
        /// The plugin file.
        path: PathBuf,
        /// The host's target triple.
        expected: String,
        /// The plugin's target triple.
        found: String,
    },
    /// The plugin was built against an epi version that is not semver-compatible.
    #[error(
        "{path}: built against epi {found}, this host loads plugins built against epi {expected}"
    )]
    VersionMismatch {
        /// The plugin file.
        path: PathBuf,
        /// The versions this host accepts.
        expected: String,
        /// The plugin's epi version.
        found: String,
    },
    /// The plugin was built with `panic = "abort"`: a panicking provider would take the host down.
    #[error("{path}: built with panic=abort; epi requires panic=unwind so that a panicking provider cannot abort the host")]
    PanicAbort {
        /// The plugin file.
        path: PathBuf,
    },
    /// The plugin's `init` returned an error or panicked.
    #[error("{path}: the plugin failed to initialise: {message}")]
    Init {
        /// The plugin file.
        path: PathBuf,
        /// Its error or panic message.
        message: String,
    },
    /// The plugin describes itself inconsistently.
    #[error("{path}: invalid plugin `{app}`: {reason}")]
    Invalid {
        /// The plugin file.
        path: PathBuf,
        /// Its app name.
        app: String,
        /// What is inconsistent.
        reason: String,
    },
    /// Another loaded plugin already has this app name.
    #[error("{path}: a plugin named `{app}` is already loaded from {existing}")]
    DuplicateApp {
        /// The plugin file.
        path: PathBuf,
        /// The clashing app name.
        app: String,
        /// The file the loaded one came from.
        existing: PathBuf,
    },
}

pub use epi_plugin::error::{Error, Failure, ProviderError, ProviderFailure};
