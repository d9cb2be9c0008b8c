#![warn(missing_docs)]
//! Test and benchmark helpers: build the workspace's plugin libraries (once per process, with
//! the same profile as the running test or bench) and lay out plugin directories.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Plugin crates of this workspace that tests load.
pub const PLUGINS: &[&str] = &[
    "epi-plugin-hello",
    "epi-plugin-greeter-fr",
    "epi-plugin-testplug",
    "epi-fixture-no-entry",
];

/// The `target/<profile>` directory the running executable was built into.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().expect("executable directory").to_owned();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    dir
}

/// Builds every plugin in [`PLUGINS`] with the running executable's profile (once per
/// process) and stages the libraries in a private directory (mode 0755, files 0644, so the
/// loader's trust check passes whatever the build's umask). Returns that directory.
pub fn build_plugins() -> &'static Path {
    static STAGED: OnceLock<tempfile::TempDir> = OnceLock::new();
    STAGED
        .get_or_init(|| {
            let built = build_with_cargo();
            let staged = plugin_dir();
            for plugin in PLUGINS {
                let name = library_name(plugin);
                install_from(&built.join(&name), staged.path(), &name);
            }
            staged
        })
        .path()
}

/// File name of a plugin crate's library.
fn library_name(crate_name: &str) -> String {
    format!("lib{}.so", crate_name.replace('-', "_"))
}

fn install_from(source: &Path, dir: &Path, file_name: &str) -> PathBuf {
    let target = dir.join(file_name);
    std::fs::copy(source, &target).unwrap_or_else(|err| panic!("copy {}: {err}", source.display()));
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))
        .expect("chmod plugin library");
    target
}

fn build_with_cargo() -> PathBuf {
    {
        let dir = profile_dir();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(workspace).arg("build").arg("--quiet");
        if dir.file_name().is_some_and(|name| name == "release") {
            command.arg("--release");
        }
        if let Some(target) = dir.parent() {
            command.env("CARGO_TARGET_DIR", target);
        }
        for plugin in PLUGINS {
            command.args(["-p", plugin]);
        }
        let status = command.status().expect("run cargo build for the plugins");
        assert!(status.success(), "building the plugin libraries failed");
        dir
    }
}

/// Path of the built library of a plugin crate (e.g. `epi-plugin-hello`).
pub fn plugin_library(crate_name: &str) -> PathBuf {
    build_plugins().join(library_name(crate_name))
}

/// A fresh plugin directory (mode 0755) that is removed when dropped.
pub fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("epi-test-plugins-")
        .tempdir()
        .expect("temporary plugin directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod plugin directory");
    dir
}

/// Copies a built plugin into `dir` under `file_name` (mode 0644); returns the new path.
pub fn install(dir: &Path, crate_name: &str, file_name: &str) -> PathBuf {
    install_from(&plugin_library(crate_name), dir, file_name)
}

/// Writes `bytes` as a file in `dir` (mode 0644); returns its path.
pub fn write_file(dir: &Path, file_name: &str, bytes: &[u8]) -> PathBuf {
    let target = dir.join(file_name);
    std::fs::write(&target, bytes).expect("write file");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).expect("chmod file");
    target
}
