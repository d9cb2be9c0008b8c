//! What the daemon tests share: the `epi` binary started on a configuration, and JSON calls.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The `epi` binary under test.
pub const EPI: &str = env!("CARGO_BIN_EXE_epi");

/// A running daemon; killed when dropped if still running.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// The URL of `path` on this daemon.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Starts `epi serve --config CONFIG` and waits until it listens.
pub fn start(config: &Path) -> Daemon {
    let mut child = Command::new(EPI)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start epi serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("epi listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    Daemon { child, base }
}

/// A request with an optional JSON body: the status, the value of `header`, and the body as
/// JSON (a string when it is not JSON).
pub fn call_with(
    method: &str,
    url: &str,
    body: Option<Value>,
    header: &str,
) -> (u16, Option<String>, Value) {
    let request = ureq::request(method, url);
    let response = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    let response = match response {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => panic!("{method} {url}: {err}"),
    };
    let status = response.status();
    let value = response.header(header).map(str::to_owned);
    let text = response.into_string().unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, body)
}
