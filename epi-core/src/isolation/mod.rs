//! Isolated plugins: an unchanged plugin library run in a supervised child process
//! (`epi plugin-host`), whose providers join the host's dispatch table.
//!
//! A plugin whose code aborts, segfaults, overflows its stack or calls `exit` takes down the
//! process it runs in. A host that lists a plugin in [`crate::RegistryConfig::isolate`] loads
//! it in a child instead: the child (any program that calls [`run_plugin_host`], the `epi`
//! binary's `plugin-host` command) loads the file in a registry of its own and answers
//! requests on a unix socket ([`wire`]). The host builds the plugin's providers from the
//! child's description, with one entry point that sends each call over the socket: typed
//! calls take the stable path (JSON, as calls by name do), so the host's type checks
//! apply as for any plugin built by another compiler. Notifications, state hand-over and data
//! callbacks are forwarded too; the plugin's own processes run in the child.
//!
//! A crash of the child fails the calls in flight with an error naming the plugin and how the
//! child ended; the registry's engine runs a process `APP/plugin-host` that notices the end and
//! restarts the child with the engine's back-off. Calls made while it is down fail at once.
//!
//! What a plugin loses by being isolated: calls it makes through the host reach only its own
//! providers (the child's registry holds only it), providers it adds at run time stay in the
//! child, and every call costs a round trip on a unix socket (see BENCHMARKS.md).

pub(crate) mod child;
pub(crate) mod supervisor;
pub(crate) mod wire;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use child::run_plugin_host;

/// How long a call to an isolated plugin waits for its answer by default.
pub const DEFAULT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The engine name of an isolated plugin's supervising process is `APP/` and this.
pub const SUPERVISOR_PROCESS: &str = "plugin-host";

/// The program a registry runs for an isolated plugin: it is started as
/// `PROGRAM ARGS... FILE SOCKET` and must call [`run_plugin_host`] with `FILE` and `SOCKET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginHostCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the file and the socket.
    pub args: Vec<OsString>,
}

impl PluginHostCommand {
    /// The `epi` binary at `program`, with its `plugin-host` command.
    pub fn epi(program: impl Into<PathBuf>) -> Self {
        PluginHostCommand {
            program: program.into(),
            args: vec!["plugin-host".into()],
        }
    }
}

/// Whether `entry` of [`crate::RegistryConfig::isolate`] names the plugin loaded from `file`
/// (whose app, when it was loaded before, is `app`): the app name, the file name, or the file
/// name without `.so` and a `lib` or `libepi_plugin_` prefix.
pub(crate) fn names(entry: &str, file: &Path, app: Option<&str>) -> bool {
    if app == Some(entry) {
        return true;
    }
    let Some(name) = file.file_name().and_then(|name| name.to_str()) else {
        return false;
    };
    if name == entry {
        return true;
    }
    let stem = name.strip_suffix(".so").unwrap_or(name);
    stem == entry
        || stem.strip_prefix("lib") == Some(entry)
        || stem.strip_prefix("libepi_plugin_") == Some(entry)
}

#[cfg(test)]
mod tests {
    use super::names;
    use std::path::Path;

    #[test]
    fn entries_name_apps_and_files() {
        let file = Path::new("/srv/plugins/libepi_plugin_agent.so");
        assert!(names("agent", file, None));
        assert!(names("epi_plugin_agent", file, None));
        assert!(names("libepi_plugin_agent.so", file, None));
        assert!(names("guests", file, Some("guests")));
        assert!(!names("flare", file, Some("agent")));
        assert!(names("hello", Path::new("hello.so"), None));
        assert!(!names("hell", Path::new("hello.so"), None));
    }
}
