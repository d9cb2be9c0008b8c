//! `epi new`: the crate it creates builds, passes its own test and loads with `epi inspect`,
//! without edits.

use std::path::Path;
use std::process::Command;

const EPI: &str = env!("CARGO_BIN_EXE_epi");

/// The workspace's target directory, shared so the generated crate reuses built dependencies.
fn target_dir() -> std::path::PathBuf {
    epi_testkit::profile_dir()
        .parent()
        .expect("target directory")
        .to_owned()
}

fn cargo(dir: &Path, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(dir)
        .args(args)
        .arg("--quiet")
        .arg("--offline")
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "cargo {args:?} failed in {}",
        dir.display()
    );
}

#[test]
fn a_new_plugin_crate_builds_tests_and_loads_without_edits() {
    let parent = tempfile::tempdir().unwrap();
    let output = Command::new(EPI)
        .args(["new", "demo-plugin", "--dir"])
        .arg(parent.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let dir = parent.path().join("demo-plugin");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(r#"crate-type = ["cdylib"]"#),
        "{manifest}"
    );

    cargo(&dir, &["build"]);
    cargo(&dir, &["test"]);
    let library = target_dir().join("debug/libdemo_plugin.so");
    let inspected = Command::new(EPI)
        .arg("inspect")
        .arg(&library)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert!(inspected.status.success(), "{inspected:?}");
    assert!(
        text.contains("demo-plugin") && text.contains("demo-plugin.hello"),
        "{text}"
    );

    // A second `epi new` with the same name refuses to overwrite it.
    let again = Command::new(EPI)
        .args(["new", "demo-plugin", "--dir"])
        .arg(parent.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}
