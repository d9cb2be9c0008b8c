#![warn(missing_docs)]
//! Test and benchmark helpers: build the workspace's plugin libraries (once per process, with
//! the same profile as the running test or bench) and lay out plugin directories.

pub mod postgres;

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
    "epi-plugin-provider",
    "epi-plugin-agent",
    "epi-plugin-agent-qemu",
    "epi-plugin-flare",
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
/// process) and stages the libraries in `epi-staged-plugins` beside them (mode 0755, files
/// 0644, so the loader's trust check passes whatever the build's umask). Returns that
/// directory.
pub fn build_plugins() -> &'static Path {
    // One staging directory in the target directory, shared by every test process (a
    // temporary directory held by a static is never removed: it leaked 92 MB per test binary).
    // Files are replaced by rename, so a process still using an older copy keeps it.
    static STAGED: OnceLock<PathBuf> = OnceLock::new();
    STAGED.get_or_init(|| {
        let built = cargo_build(PLUGINS);
        let staged = built.join("epi-staged-plugins");
        std::fs::create_dir_all(&staged).expect("create the staging directory");
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the staging directory");
        for plugin in PLUGINS {
            let name = library_name(plugin);
            let temporary = format!(".{name}.{}.tmp", std::process::id());
            install_from(&built.join(&name), &staged, &temporary);
            std::fs::rename(staged.join(&temporary), staged.join(&name))
                .expect("put the staged plugin in place");
        }
        staged
    })
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

/// Builds the binary `bin` of the workspace package `package` with the running executable's
/// profile (once per process and binary); returns its path.
pub fn build_binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let dir = profile_dir();
    if !built.iter().any(|p| p == package) {
        cargo_build(&[package]);
        built.push(package.to_owned());
    }
    dir.join(bin)
}

fn cargo_build(packages: &[&str]) -> PathBuf {
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
        for package in packages {
            command.args(["-p", package]);
        }
        let status = command.status().expect("run cargo build");
        assert!(status.success(), "building {packages:?} failed");
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

/// Replaces every occurrence of `from` in `bytes` with `to` (same length); returns how many.
pub fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut count = 0;
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(from.len()).position(|w| w == from) {
        let start = at + found;
        bytes[start..start + to.len()].copy_from_slice(to);
        count += 1;
        at = start + to.len();
    }
    count
}

/// A plugin library's `bytes` with one byte of the rustc release in its build string
/// (`build_info`, the host's `epi::abi::BUILD_INFO`) changed: the loader takes it for another
/// compiler's build and puts it on the stable call path (same code, same results).
pub fn as_other_compiler(mut bytes: Vec<u8>, build_info: &str) -> Vec<u8> {
    let info = build_info.as_bytes();
    let at = build_info
        .find("rustc ")
        .expect("rustc in the build string")
        + 6;
    let mut other = info.to_vec();
    other[at] = if other[at] == b'9' { b'8' } else { b'9' };
    assert!(patch(&mut bytes, info, &other) >= 1);
    bytes
}

/// Where Debian's `rustc-web` and `cargo-web` packages install the second toolchain.
pub const SECOND_RUSTC: &str = "/usr/bin/rustc";
/// See [`SECOND_RUSTC`].
pub const SECOND_CARGO: &str = "/usr/bin/cargo";

/// Builds a plugin crate of this workspace with Debian's second toolchain (`rustc-web`,
/// `cargo-web`), a different rustc than the one building the tests, and returns the library
/// (staged with safe permissions, built once per process). Panics saying what to install when
/// that toolchain is missing.
pub fn build_with_second_toolchain(crate_name: &str) -> PathBuf {
    for tool in [SECOND_RUSTC, SECOND_CARGO] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: this test builds a plugin with a second Rust toolchain; \
             install it with `apt-get install rustc-web cargo-web` (or run `cargo xtask test`, \
             which does)"
        );
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let target = profile_dir()
        .parent()
        .expect("target directory")
        .join("second-toolchain");
    foreign_build(
        workspace,
        &target,
        crate_name,
        SECOND_CARGO,
        Some(SECOND_RUSTC),
    )
}

/// Builds a plugin crate of this workspace against a copy of `epi-plugin` whose version is
/// `epi_version` (as if it were built against another release of epi), with this toolchain.
/// Returns the staged library.
pub fn build_against_epi_version(crate_name: &str, epi_version: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let copy = tempfile::Builder::new()
        .prefix("epi-version-")
        .tempdir()
        .expect("temporary workspace");
    let crate_dir = workspace
        .join("plugins")
        .join(crate_name.trim_start_matches("epi-plugin-"));
    let members = ["epi-plugin", "epi-macros"];
    for member in members {
        copy_tree(&workspace.join(member), &copy.path().join(member));
    }
    let plugin_dir = copy
        .path()
        .join("plugins")
        .join(crate_dir.file_name().unwrap());
    copy_tree(&crate_dir, &plugin_dir);
    std::fs::copy(workspace.join("Cargo.lock"), copy.path().join("Cargo.lock")).expect("lock");
    let manifest = std::fs::read_to_string(workspace.join("Cargo.toml")).expect("manifest");
    let manifest = rewrite_workspace(&manifest, &plugin_dir, copy.path(), epi_version);
    std::fs::write(copy.path().join("Cargo.toml"), manifest).expect("write manifest");
    let target = profile_dir()
        .parent()
        .expect("target directory")
        .join(format!("epi-{epi_version}"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    foreign_build(copy.path(), &target, crate_name, &cargo, None)
}

/// The workspace manifest for a copy holding only the plugin side and one plugin, with the
/// workspace version set to `version`.
fn rewrite_workspace(manifest: &str, plugin: &Path, root: &Path, version: &str) -> String {
    let relative = plugin.strip_prefix(root).expect("inside the copy");
    let mut out = String::new();
    let mut in_members = false;
    for line in manifest.lines() {
        if line.starts_with("members") {
            in_members = true;
            out.push_str(&format!(
                "members = [\"epi-plugin\", \"epi-macros\", \"{}\"]\n",
                relative.display()
            ));
            continue;
        }
        if in_members {
            in_members = !line.starts_with(']');
            continue;
        }
        if line.starts_with("version = ") {
            out.push_str(&format!("version = \"{version}\"\n"));
            continue;
        }
        out.push_str(&line.replace(
            &format!("version = \"{}\" }}", env!("CARGO_PKG_VERSION")),
            &format!("version = \"{version}\" }}"),
        ));
        out.push('\n');
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Runs `cargo build` for one plugin crate in `workspace` into `target` and stages the library.
fn foreign_build(
    workspace: &Path,
    target: &Path,
    crate_name: &str,
    cargo: &str,
    rustc: Option<&str>,
) -> PathBuf {
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--quiet", "--offline", "-p", crate_name])
        .env("CARGO_TARGET_DIR", target);
    for variable in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "CARGO_MAKEFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        command.env_remove(variable);
    }
    if let Some(rustc) = rustc {
        command.env("RUSTC", rustc);
    }
    let status = command
        .status()
        .unwrap_or_else(|err| panic!("run {cargo}: {err}"));
    assert!(
        status.success(),
        "building {crate_name} with {cargo} failed"
    );
    let staged = plugin_dir().keep();
    install_from(
        &target.join("debug").join(library_name(crate_name)),
        &staged,
        &library_name(crate_name),
    )
}
