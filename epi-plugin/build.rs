//! Records which compiler, target and epi version built this copy of `epi-plugin`.
//!
//! A host and a plugin with equal build strings were compiled by the same rustc for the same
//! target against the same epi: they exchange Rust values by pointer (the native path). Any
//! other compatible pair exchanges JSON (the stable path).

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let verbose = Command::new(&rustc)
        .arg("-vV")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .unwrap_or_default();
    let field = |key: &str| {
        verbose
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(str::trim)
            .unwrap_or("unknown")
            .to_owned()
    };
    let target = std::env::var("TARGET").unwrap_or_default();
    let panic = std::env::var("CARGO_CFG_PANIC").unwrap_or_default();
    let build = format!(
        "epi {}; rustc {} ({}); target {}; panic={}",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
        field("release:"),
        field("commit-hash:"),
        target,
        panic,
    );
    println!("cargo:rustc-env=EPI_BUILD_INFO={build}");
    println!("cargo:rustc-env=EPI_TARGET={target}");
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-changed=build.rs");
}
