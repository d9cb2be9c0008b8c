//! The wire protocol: frames, requests, responses, socket names and URLs.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. A caller sends a
//! [`Request`] on a task socket; the provider answers at once on the same connection with an
//! acknowledgement (a [`Response`] with neither result nor error, or with the error that made
//! it refuse the request), then runs the task and sends the real [`Response`] to the request's
//! `response_hook`. See `plugins/provider/PROTOCOL.md`.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest frame either side accepts unless configured otherwise: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// The priority of a task socket whose provider configured none.
pub const DEFAULT_PRIORITY: i32 = 50;

/// A frame that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit.
    #[error("a frame of {length} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The announced length.
        length: u64,
        /// The limit.
        limit: usize,
    },
    /// The peer closed the connection inside a frame.
    #[error(
        "the peer closed the connection in the middle of a frame ({read} of {expected} bytes read)"
    )]
    Truncated {
        /// Bytes of the frame (prefix included) that arrived.
        read: usize,
        /// Bytes the frame needed.
        expected: usize,
    },
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads one frame's body. `Ok(None)`: the peer closed the connection between frames.
pub fn read_frame(reader: &mut impl Read, limit: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; 4];
    let got = read_full(reader, &mut prefix)?;
    if got == 0 {
        return Ok(None);
    }
    if got < prefix.len() {
        return Err(FrameError::Truncated {
            read: got,
            expected: prefix.len(),
        });
    }
    let length = u32::from_be_bytes(prefix) as usize;
    if length > limit {
        return Err(FrameError::TooLarge {
            length: length as u64,
            limit,
        });
    }
    let mut body = vec![0u8; length];
    let got = read_full(reader, &mut body)?;
    if got < length {
        return Err(FrameError::Truncated {
            read: prefix.len() + got,
            expected: prefix.len() + length,
        });
    }
    Ok(Some(body))
}

/// Reads until `buffer` is full or the peer closes; returns how many bytes arrived.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Writes `body` as one frame (a single write of prefix and body).
pub fn write_frame(writer: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let length = u32::try_from(body.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a frame of {} bytes does not fit a 4-byte length",
                body.len()
            ),
        )
    })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(body);
    writer.write_all(&frame)?;
    writer.flush()
}

/// Writes `value` as JSON in one frame.
pub fn write_json(writer: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_frame(writer, &body)
}

/// A task request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Unique among the caller's outstanding requests; the response carries it back.
    pub id: String,
    /// The task to run (the directory the socket is in).
    pub task: String,
    /// Where the response goes: `unix:///path/of/the/caller's/response.sock`.
    pub response_hook: String,
    /// The task's arguments (any JSON value; `null` when absent).
    #[serde(default)]
    pub args: Value,
    /// The caller's deadline for the response, in milliseconds (optional, informative: the
    /// caller fails the call after it whatever the provider does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl Request {
    /// Reads a request frame's JSON. A frame that is not a JSON object, or that misses `id`,
    /// `task` or `response_hook` (or has them of the wrong type), is refused with the reason
    /// and whatever id it carried, so the acknowledgement can name it.
    pub fn parse(body: &[u8]) -> Result<Request, (Option<String>, String)> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| (None, format!("the request is not JSON: {err}")))?;
        let Value::Object(mut object) = value else {
            return Err((None, "the request is not a JSON object".into()));
        };
        let id = match object.remove("id") {
            Some(Value::String(id)) if !id.is_empty() => Some(id),
            _ => None,
        };
        let mut text = |name: &str| match object.remove(name) {
            Some(Value::String(text)) if !text.is_empty() => Ok(text),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                Err(format!("the request has no `{name}`"))
            }
            Some(other) => Err(format!("the request's `{name}` is not a string: {other}")),
        };
        let task = text("task");
        let response_hook = text("response_hook");
        let Some(id) = id else {
            return Err((None, "the request has no `id` (a non-empty string)".into()));
        };
        let task = task.map_err(|reason| (Some(id.clone()), reason))?;
        let response_hook = response_hook.map_err(|reason| (Some(id.clone()), reason))?;
        unix_url_path(&response_hook)
            .map_err(|reason| (Some(id.clone()), format!("`response_hook`: {reason}")))?;
        let timeout_ms = match object.remove("timeout_ms") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(other) => {
                return Err((
                    Some(id),
                    format!("the request's `timeout_ms` is not a whole number: {other}"),
                ))
            }
        };
        Ok(Request {
            id,
            task,
            response_hook,
            args: object.remove("args").unwrap_or(Value::Null),
            timeout_ms,
        })
    }
}

/// An acknowledgement or a response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: String,
    /// The task's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why the task (or, in an acknowledgement, the request) failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where to read the task's byte stream: `unix:///path` (one connection, read to the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_url: Option<String>,
}

impl Response {
    /// The acknowledgement of an accepted request.
    pub fn ack(id: impl Into<String>) -> Self {
        Response {
            id: id.into(),
            ..Response::default()
        }
    }

    /// A response (or an acknowledgement) carrying an error.
    pub fn error(id: impl Into<String>, error: impl Into<String>) -> Self {
        Response {
            id: id.into(),
            error: Some(error.into()),
            ..Response::default()
        }
    }

    /// Reads a response frame's JSON. A response with both a result and an error is a
    /// protocol error. Errors carry the response's id when it had one.
    pub fn parse(body: &[u8]) -> Result<Response, (Option<String>, String)> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| (None, format!("the response is not JSON: {err}")))?;
        let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
        let response: Response = serde_json::from_value(value).map_err(|err| {
            (
                id.clone(),
                format!("the response is not a valid response object: {err}"),
            )
        })?;
        if response.error.is_some() && response.result.as_ref().is_some_and(|r| !r.is_null()) {
            return Err((
                id,
                "the response has both a result and an error (protocol error)".into(),
            ));
        }
        Ok(response)
    }
}

/// The path of a `unix:///absolute/path` URL.
pub fn unix_url_path(url: &str) -> Result<PathBuf, String> {
    let path = url
        .strip_prefix("unix://")
        .ok_or_else(|| format!("{url:?} is not a unix:// URL"))?;
    if !path.starts_with('/') {
        return Err(format!("{url:?} does not name an absolute path"));
    }
    Ok(PathBuf::from(path))
}

/// The `unix://` URL of a socket path.
pub fn unix_url(path: &Path) -> String {
    format!("unix://{}", path.display())
}

/// Names in a socket directory that start with this are epi's own (the tracker's response
/// sockets, stream sockets): no task may be called so.
pub const RESERVED_PREFIX: char = '.';

/// Checks a task name: a non-empty file name, not starting with [`RESERVED_PREFIX`].
pub fn check_task_name(task: &str) -> Result<(), String> {
    if task.is_empty() {
        return Err("a task name is empty".into());
    }
    if task.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "task name {task:?} starts with {RESERVED_PREFIX:?}, reserved for epi's own sockets"
        ));
    }
    if task.contains('/') || task.contains('\0') {
        return Err(format!("task name {task:?} contains '/' or NUL"));
    }
    Ok(())
}

/// A task socket's file name, `PRIORITY-NAME.sock`: its priority and provider name.
pub fn parse_socket_name(file_name: &str) -> Result<(i32, String), String> {
    let stem = file_name
        .strip_suffix(".sock")
        .ok_or_else(|| format!("{file_name:?} does not end in .sock"))?;
    let (number, name) = stem
        .split_once('-')
        .ok_or_else(|| format!("{file_name:?} is not PRIORITY-NAME.sock"))?;
    let priority = number.parse::<i32>().map_err(|_| {
        format!("{file_name:?}: {number:?} is not a priority (a whole number, as in 50-name.sock)")
    })?;
    if name.is_empty() {
        return Err(format!(
            "{file_name:?} has no provider name after the priority"
        ));
    }
    Ok((priority, name.to_owned()))
}

/// A task socket's file name.
pub fn socket_name(priority: i32, provider: &str) -> String {
    format!("{priority}-{provider}.sock")
}

/// The socket directory both sides use when none is configured: `$XDG_RUNTIME_DIR/epi/providers`,
/// else `epi-UID/providers` under the system's temporary directory.
pub fn default_socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("epi").join("providers"),
        None => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            std::env::temp_dir()
                .join(format!("epi-{uid}"))
                .join("providers")
        }
    }
}

/// True when the peer closed `connection` (or left bytes in it that nobody asked for: the
/// connection cannot be trusted for another request either). Never blocks.
pub fn peer_closed(connection: &std::os::unix::net::UnixStream) -> bool {
    if connection.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let closed = !matches!((&*connection).read(&mut byte), Err(err) if err.kind() == io::ErrorKind::WouldBlock);
    let _ = connection.set_nonblocking(false);
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_named() {
        let mut buffer = Vec::new();
        write_frame(&mut buffer, b"{\"a\":1}").unwrap();
        write_frame(&mut buffer, b"").unwrap();
        let mut reader = &buffer[..];
        assert_eq!(read_frame(&mut reader, 100).unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(read_frame(&mut reader, 100).unwrap().unwrap(), b"");
        assert!(read_frame(&mut reader, 100).unwrap().is_none());

        let mut big = &[0u8, 0, 1, 0][..];
        let err = read_frame(&mut big, 100).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    length: 256,
                    limit: 100
                }
            ),
            "{err}"
        );
        let mut prefix_only = &[0u8, 0, 0, 5][..];
        let err = read_frame(&mut prefix_only, 100).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    read: 4,
                    expected: 9
                }
            ),
            "{err}"
        );
        let mut half_prefix = &[0u8, 0][..];
        assert!(matches!(
            read_frame(&mut half_prefix, 100).unwrap_err(),
            FrameError::Truncated {
                read: 2,
                expected: 4
            }
        ));
    }

    #[test]
    fn requests_missing_fields_are_refused_naming_the_field() {
        let ok = Request::parse(
            br#"{"id":"1","task":"echo","response_hook":"unix:///tmp/r.sock","args":[1]}"#,
        )
        .unwrap();
        assert_eq!(ok.args, serde_json::json!([1]));
        let (id, reason) =
            Request::parse(br#"{"id":"7","response_hook":"unix:///tmp/r.sock"}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("7"));
        assert!(reason.contains("`task`"), "{reason}");
        let (id, reason) = Request::parse(br#"{"task":"t","response_hook":"x"}"#).unwrap_err();
        assert!(id.is_none() && reason.contains("`id`"), "{reason}");
        let (_, reason) =
            Request::parse(br#"{"id":"1","task":"t","response_hook":"http://x"}"#).unwrap_err();
        assert!(reason.contains("unix://"), "{reason}");
        let (_, reason) = Request::parse(b"[1]").unwrap_err();
        assert!(reason.contains("object"), "{reason}");
    }

    #[test]
    fn a_response_with_result_and_error_is_a_protocol_error() {
        let (id, err) = Response::parse(br#"{"id":"1","result":2,"error":"x"}"#).unwrap_err();
        assert!(
            err.contains("protocol error") && id.as_deref() == Some("1"),
            "{err}"
        );
        let ok = Response::parse(br#"{"id":"1","result":null,"error":"x"}"#).unwrap();
        assert_eq!(ok.error.as_deref(), Some("x"));
    }

    #[test]
    fn socket_names_carry_priority_and_provider() {
        assert_eq!(parse_socket_name("100-x.sock").unwrap(), (100, "x".into()));
        assert!(parse_socket_name("-5-neg.sock")
            .unwrap_err()
            .contains("priority"));
        assert!(parse_socket_name("abc-x.sock")
            .unwrap_err()
            .contains("priority"));
        assert!(parse_socket_name("50-.sock").is_err());
        assert!(check_task_name(".tracker").is_err());
        assert!(check_task_name("response").is_ok());
    }
}
