//! Project tasks, run as `cargo xtask TASK`.
//!
//! `cargo xtask test [ARGS]`: installs the Debian packages the tests need when they are missing
//! (`rustc-web` and `cargo-web`: a second Rust toolchain, to build a plugin with another
//! compiler than the host's; `python3-minimal`: the example provider process written in
//! Python; `qemu-utils`: `qemu-img` and `qemu-io` for the agent's storage backend;
//! `libsqlite3-dev`: the shared SQLite the agent and flare link to; `postgresql`: the server
//! binaries flare's PostgreSQL tests and benchmarks start as throwaway servers; `chromium` and
//! `chromium-driver`: the headless browser and its WebDriver server the console's browser test
//! drives), then runs `cargo test --workspace [ARGS]`; without ARGS, also the tests that need a
//! feature (`epi-daemon`'s `otlp`).

use std::path::Path;
use std::process::{exit, Command};

/// Debian packages the tests need, with a file each one installs; a `*` path component
/// matches any directory (the PostgreSQL version differs between Debian releases).
const PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "/usr/bin/rustc"),
    ("cargo-web", "/usr/bin/cargo"),
    ("python3-minimal", "/usr/bin/python3"),
    ("qemu-utils", "/usr/bin/qemu-img"),
    ("libsqlite3-dev", "/usr/include/sqlite3.h"),
    ("postgresql", "/usr/lib/postgresql/*/bin/initdb"),
    ("chromium", "/usr/bin/chromium"),
    ("chromium-driver", "/usr/bin/chromedriver"),
];

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("test") => {
            install_missing();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let args: Vec<String> = args.collect();
            let run = |arguments: &[&str], extra: &[String]| {
                Command::new(&cargo)
                    .args(arguments)
                    .args(extra)
                    .status()
                    .unwrap_or_else(|err| fail(&format!("cannot run cargo test: {err}")))
            };
            let status = run(&["test", "--workspace"], &args);
            if !status.success() || !args.is_empty() {
                exit(status.code().unwrap_or(1));
            }
            // What a feature adds: the daemon's OTLP span export (feature `otlp`).
            let status = run(
                &[
                    "test",
                    "-p",
                    "epi-daemon",
                    "--features",
                    "otlp",
                    "--test",
                    "otlp",
                ],
                &[],
            );
            exit(status.code().unwrap_or(1));
        }
        _ => fail("usage: cargo xtask test [cargo test arguments]"),
    }
}

/// Installs the missing packages with apt-get; says what to install when that is impossible
/// (the tests that need them then fail, naming the package).
fn install_missing() {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !installed(Path::new(file)))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    eprintln!("xtask: installing {} with apt-get", missing.join(" "));
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|status| status.success())
    };
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    if !(apt(&install) || (apt(&["update", "-qq"]) && apt(&install))) {
        eprintln!(
            "xtask: could not install {}: run `apt-get install {}` as root; the tests that \
             need them will fail until then, naming what is missing",
            missing.join(" "),
            missing.join(" ")
        );
    }
}

/// Whether `path` exists, a `*` component matching any directory entry.
fn installed(path: &Path) -> bool {
    let mut candidates = vec![std::path::PathBuf::from("/")];
    for component in path.components().skip(1) {
        let part = component.as_os_str();
        candidates = candidates
            .into_iter()
            .flat_map(|dir| {
                if part == "*" {
                    std::fs::read_dir(&dir)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|entry| entry.path())
                        .collect::<Vec<_>>()
                } else {
                    vec![dir.join(part)]
                }
            })
            .filter(|candidate| candidate.exists())
            .collect();
    }
    !candidates.is_empty()
}

fn fail(message: &str) -> ! {
    eprintln!("xtask: {message}");
    exit(2)
}
