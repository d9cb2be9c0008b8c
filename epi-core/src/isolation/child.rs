//! The plugin-host child: loads one plugin file in a registry of its own and answers the host's
//! requests on a unix socket until the host goes away.
//!
//! Invariant: the child ends when its stdin reaches end of file (the host closed it or died),
//! so no child outlives its host.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wire::{self, take_u32};
use crate::abi::manifest::{FunctionManifest, Manifest, ProviderManifest};
use crate::abi::{RVec, StrRef, STATUS_BAD_INPUT, STATUS_FAILED, STATUS_OK};
use crate::loader::{bytes, LoadedPlugin};
use crate::snapshot::{text, ProviderCall, Snapshot};
use crate::{Registry, RegistryConfig};

/// The environment variable holding the plugin's configuration (JSON) for the child.
pub(crate) const CONFIG_ENV: &str = "EPI_PLUGIN_HOST_CONFIG";
/// The line the child prints on stdout once it listens.
pub(crate) const READY_LINE: &str = "EPI-PLUGIN-HOST-READY";

/// How long a connection's thread spins for the next request before it sleeps.
const SERVER_SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// What the child says about its plugin (the `HELLO` reply).
#[derive(Serialize, Deserialize)]
pub(crate) struct Hello {
    /// The plugin's description, as its `init` gave it.
    pub(crate) manifest: Manifest,
    /// The compiler, target and epi version that built it.
    pub(crate) build: String,
    /// The child's process id.
    pub(crate) pid: u32,
}

/// The loaded plugin and, per provider and function, the dispatch entry that runs it.
struct Served {
    plugin: Arc<LoadedPlugin>,
    /// Keeps the entries alive.
    _snapshot: Arc<Snapshot>,
    entries: Vec<Vec<*const ProviderCall>>,
    hello: Vec<u8>,
}

// SAFETY: the entries point into `_snapshot`, which is immutable and shared; the plugin's
// providers are `Send + Sync`.
unsafe impl Send for Served {}
// SAFETY: as `Send`.
unsafe impl Sync for Served {}

/// Runs the child: loads `file`, listens on `socket`, says so on stdout, and serves until its
/// stdin closes. Returns only on a failure to start.
pub fn run_plugin_host(file: &Path, socket: &Path) -> Result<(), String> {
    let config: Value = match std::env::var(CONFIG_ENV) {
        Ok(text) if !text.is_empty() => serde_json::from_str(&text)
            .map_err(|err| format!("unreadable configuration in {CONFIG_ENV}: {err}"))?,
        _ => Value::Null,
    };
    let registry = Registry::new(RegistryConfig {
        // The host checked and probed the file; this process is the isolation.
        load_probe: crate::LoadProbe::Off,
        runtime_dir: socket.parent().map(Path::to_owned),
        ..RegistryConfig::default()
    })
    .map_err(|err| format!("cannot start a registry: {err}"))?;
    registry
        .load_with_config(file, &config)
        .map_err(|err| err.to_string())?;
    let served = Arc::new(served(&registry)?);
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .map_err(|err| format!("cannot listen on {}: {err}", socket.display()))?;
    // The host's end of stdin closing means the host is gone: leave at once.
    std::thread::Builder::new()
        .name("epi-plugin-host-stdin".into())
        .spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            // SAFETY: `_exit` ends the process at once, without running destructors that
            // could wait for plugin threads.
            unsafe { libc::_exit(0) }
        })
        .map_err(|err| format!("cannot start a thread: {err}"))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{READY_LINE}").map_err(|err| err.to_string())?;
        stdout.flush().map_err(|err| err.to_string())?;
    }
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let served = served.clone();
                let spawned = std::thread::Builder::new()
                    .name("epi-plugin-host-conn".into())
                    .spawn(move || serve_connection(&served, stream));
                if let Err(err) = spawned {
                    tracing::error!("cannot start a connection thread: {err}");
                }
            }
            Err(err) => tracing::warn!("accept failed: {err}"),
        }
    }
    Ok(())
}

/// Finds the loaded plugin, its entries and its description.
fn served(registry: &Registry) -> Result<Served, String> {
    let plugin = registry
        .shared
        .state
        .lock()
        .plugins
        .first()
        .cloned()
        .ok_or("the plugin did not load")?;
    let snapshot = registry.shared.dispatcher.current.load_full();
    let mut entries = Vec::new();
    for provider in &plugin.providers {
        let mut functions = Vec::new();
        for function in &provider.functions {
            let entry = snapshot
                .functions
                .iter()
                .flat_map(|list| list.iter())
                .find(|entry| {
                    text(&entry.plugin) == &*plugin.app
                        && text(&entry.provider) == &*provider.label
                        && text(&entry.service) == &*provider.service
                        && text(&entry.function) == function.name
                })
                .ok_or_else(|| {
                    format!(
                        "provider `{}` function `{}` is not in the dispatch table",
                        provider.label, function.name
                    )
                })?;
            functions.push(entry as *const ProviderCall);
        }
        entries.push(functions);
    }
    let manifest = Manifest {
        app: plugin.info.app.clone(),
        version: plugin.info.version.clone(),
        priority: plugin.info.priority,
        services: plugin.info.services.clone(),
        providers: plugin
            .providers
            .iter()
            .map(|provider| ProviderManifest {
                service: provider.service.to_string(),
                label: provider.label.to_string(),
                priority: provider.priority,
                functions: provider
                    .functions
                    .iter()
                    .map(|function| FunctionManifest {
                        name: function.name.clone(),
                        args: function.args.clone(),
                        output: function.output.clone(),
                    })
                    .collect(),
            })
            .collect(),
        data_providers: plugin.data_providers.clone(),
        data_subscriptions: plugin.data_subscriptions.clone(),
        processes: plugin.processes.clone(),
    };
    let hello = serde_json::to_vec(&Hello {
        manifest,
        build: plugin.info.build.clone(),
        pid: std::process::id(),
    })
    .map_err(|err| err.to_string())?;
    Ok(Served {
        plugin,
        _snapshot: snapshot,
        entries,
        hello,
    })
}

/// Answers one connection's requests in turn until the host closes it.
fn serve_connection(served: &Served, mut stream: UnixStream) {
    loop {
        // A caller calling in a loop finds this thread awake.
        wire::spin_until_readable(&stream, SERVER_SPIN);
        let frame = match wire::read_frame(&mut stream) {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!("reading a request failed: {err}");
                return;
            }
        };
        let (status, body) = answer(served, &frame);
        if let Err(err) = wire::write_reply(&mut stream, status, &body) {
            tracing::warn!("writing a reply failed: {err}");
            return;
        }
    }
}

/// The reply to one request.
fn answer(served: &Served, frame: &[u8]) -> (u32, Vec<u8>) {
    let bad = |what: &str| (STATUS_BAD_INPUT, what.as_bytes().to_vec());
    let Some((&kind, rest)) = frame.split_first() else {
        return bad("an empty request");
    };
    let plugin = &served.plugin;
    match kind {
        wire::HELLO => (STATUS_OK, served.hello.clone()),
        wire::CALL => {
            let (Some(provider), Some(function), Some(encoding)) =
                (take_u32(rest, 0), take_u32(rest, 4), take_u32(rest, 8))
            else {
                return bad("a call without its header");
            };
            let Some(&entry) = served
                .entries
                .get(provider as usize)
                .and_then(|functions| functions.get(function as usize))
            else {
                return bad("a call to a function this plugin does not have");
            };
            call(entry, encoding, &rest[12..])
        }
        wire::NOTIFY => match serde_json::from_slice(rest) {
            Ok(notification) => {
                plugin.notify(&notification);
                (STATUS_OK, Vec::new())
            }
            Err(err) => bad(&format!("unreadable notification: {err}")),
        },
        wire::EXPORT => match serde_json::to_vec(&plugin.export_state()) {
            Ok(json) => (STATUS_OK, json),
            Err(err) => (STATUS_FAILED, err.to_string().into_bytes()),
        },
        wire::IMPORT => match serde_json::from_slice(rest) {
            Ok(state) => {
                plugin.import_state(&state);
                (STATUS_OK, Vec::new())
            }
            Err(err) => bad(&format!("unreadable state: {err}")),
        },
        wire::CALLBACK => {
            let Some(index) = take_u32(rest, 0) else {
                return bad("a callback request without its index");
            };
            match plugin.read_callback(index as usize) {
                Ok(json) => (STATUS_OK, json),
                Err(message) => (STATUS_FAILED, message.into_bytes()),
            }
        }
        other => bad(&format!("unknown request kind {other}")),
    }
}

/// Runs one provider function through its stable entry point.
fn call(entry: *const ProviderCall, encoding: u32, input: &[u8]) -> (u32, Vec<u8>) {
    // SAFETY: `entry` points into the snapshot `Served` keeps alive.
    let provider = unsafe { &*entry };
    let mut output = RVec::new();
    let mut error = RVec::new();
    let previous = epi_plugin::running::enter(entry);
    // SAFETY: the stable shim takes any bytes and fills the buffers through the shared
    // allocator; the plugin is mapped while the snapshot lives; the shim catches panics.
    let status = unsafe {
        (provider.stable)(
            provider.instance,
            encoding,
            StrRef::bytes(input),
            &mut output,
            &mut error,
            std::ptr::null_mut(),
        )
    };
    epi_plugin::running::leave(previous);
    if status == STATUS_OK {
        (status, bytes(output))
    } else {
        (status, bytes(error))
    }
}
