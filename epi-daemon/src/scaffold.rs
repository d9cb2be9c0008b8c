//! `epi new NAME`: a plugin crate that builds, loads and passes its own test without edits.
//!
//! The crate depends on `epi-plugin` (under the name `epi`) and, for its test, on `epi-core`.
//! By default both come from the epi sources this binary was built from, when they are still
//! there, else from the registry (`version = "0.2"`); `--epi-path` names another checkout.

use std::path::{Path, PathBuf};

/// Why a crate could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not a valid crate name.
    #[error("`{0}` is not a valid plugin name: use lowercase letters, digits, `-` and `_`, starting with a letter")]
    BadName(String),
    /// The target directory exists already.
    #[error("{0} already exists; choose another name or directory")]
    Exists(PathBuf),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// The epi checkout this binary was built from, if it is still on disk.
fn own_sources() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    root.join("epi-plugin/Cargo.toml")
        .is_file()
        .then(|| root.to_owned())
}

/// How the generated manifest names an epi package.
fn source(sources: Option<&Path>, package: &str) -> String {
    match sources {
        Some(root) => format!(
            "package = \"{package}\", path = \"{}\"",
            root.join(package).display()
        ),
        None => format!("package = \"{package}\", version = \"0.2\""),
    }
}

fn valid(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Creates the crate `name` in `parent` (its directory is `parent/name`); returns that
/// directory. `epi_path` overrides where the epi packages come from.
pub fn create(
    name: &str,
    parent: &Path,
    epi_path: Option<&Path>,
) -> Result<PathBuf, ScaffoldError> {
    if !valid(name) {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let sources = epi_path.map(Path::to_owned).or_else(own_sources);
    let files = [
        ("Cargo.toml", manifest(name, sources.as_deref())),
        ("src/lib.rs", library(name)),
        ("tests/loads.rs", test(name)),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().expect("a parent directory"))?;
            std::fs::write(&path, text)
        };
        write().map_err(|source| ScaffoldError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(dir)
}

fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first.into_iter().chain(chars).collect::<String>()
        })
        .collect()
}

fn manifest(name: &str, sources: Option<&Path>) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

# A plugin is a shared library the epi host loads with dlopen.
[lib]
crate-type = ["cdylib"]

[dependencies]
# The plugin side of epi only, under the name plugin code uses.
epi = {{ {plugin} }}
serde = {{ version = "1", features = ["derive"] }}

[dev-dependencies]
# The host runtime, for the test that loads the built library.
epi-host = {{ {host} }}

# A crate of its own, even when created inside another workspace.
[workspace]

# What the shipped library is built with: every load copies and maps the whole file, so a
# smaller one loads faster. Unwinding stays on (epi refuses `panic = "abort"` builds: a panic
# in a provider must become an error, not end the host).
[profile.release]
lto = true
codegen-units = 1
strip = true
# opt-level = "s"  # about a fifth smaller again, for slower code
"#,
        plugin = source(sources, "epi-plugin"),
        host = source(sources, "epi-core"),
    )
}

fn library(name: &str) -> String {
    let plugin = type_name(name);
    format!(
        r#"//! The `{name}` epi plugin: defines the `{name}` service and provides its `hello` function.

use epi::{{Plugin, Provider}};

/// The plugin object: one per loaded library.
#[derive(Default)]
pub struct {plugin};

impl Plugin for {plugin} {{
    fn app(&self) -> String {{
        "{name}".into()
    }}

    fn services(&self) -> Vec<String> {{
        vec!["{name}".into()]
    }}

    fn providers(&self) -> Vec<Provider> {{
        vec![Provider::new("{name}", Greeter)]
    }}
}}

/// A provider: every public `&self` method is a function hosts call by name.
pub struct Greeter;

#[epi::provider]
impl Greeter {{
    /// `{name}.hello(name)`.
    pub fn hello(&self, name: &str) -> String {{
        format!("Hello from {name}, {{name}}!")
    }}
}}

epi::export_plugin!({plugin});
"#
    )
}

fn test(name: &str) -> String {
    format!(
        r#"//! Loads the library `cargo test` built and calls it, as a host would.

use std::path::PathBuf;

/// `target/<profile>/lib<crate>.so`, beside this test's `deps` directory.
fn library() -> PathBuf {{
    let exe = std::env::current_exe().expect("test executable");
    let profile = exe.parent().and_then(|deps| deps.parent()).expect("target directory");
    profile.join(format!("lib{{}}.so", env!("CARGO_PKG_NAME").replace('-', "_")))
}}

#[test]
fn the_plugin_loads_and_answers() {{
    let registry = epi_host::Registry::new(Default::default()).expect("registry");
    let info = registry.load(library()).expect("load the plugin");
    assert_eq!(info.app, "{name}");
    let hello = registry.function::<String, String>("{name}", "hello");
    assert_eq!(
        hello.apply(&"Ada".to_string()).expect("call hello"),
        vec!["Hello from {name}, Ada!".to_string()]
    );
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid("my-plugin_2"));
        assert!(!valid("My"));
        assert!(!valid("2x"));
        assert!(!valid("a b"));
        assert_eq!(type_name("my-plugin_x"), "MyPluginX");
    }
}
