//! Streams through the daemon's HTTP front door: `GET /provider/streams?url=URL` serves the
//! byte stream a task returned (`stream_url`) as a streamed body. Only stream sockets under the
//! socket directory's `.streams/` are served, each once (the provider removes the socket when
//! its reader connects).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Component;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use epi::http::{HttpRequest, HttpResponse};
use epi::Decision;
use serde_json::json;

use crate::Core;

/// The route's path.
pub const STREAMS_PATH: &str = "/provider/streams";

/// The largest chunk handed to the daemon at a time.
const CHUNK: usize = 64 * 1024;

/// The HTTP provider: open streams by id.
pub struct Web {
    core: Arc<Core>,
    /// Open streams (ids carry a per-version tag in their high bits).
    streams: Mutex<HashMap<u64, UnixStream>>,
    tag: u64,
    next: AtomicU64,
}

impl Web {
    /// The route for `core`'s socket directory; `tag` tells this version's stream ids apart.
    pub fn new(core: Arc<Core>, tag: u64) -> Self {
        Web {
            core,
            streams: Mutex::new(HashMap::new()),
            tag: tag << 32,
            next: AtomicU64::new(0),
        }
    }

    fn open(&self, url: &str) -> Result<UnixStream, (u16, String)> {
        let path = epi_provider::wire::unix_url_path(url).map_err(|reason| (400, reason))?;
        let streams = self.core.config.socket_dir.join(".streams");
        let inside = path.parent() == Some(streams.as_path())
            && path
                .components()
                .all(|c| !matches!(c, Component::ParentDir));
        if !inside {
            return Err((
                403,
                format!("only streams under {} are served", streams.display()),
            ));
        }
        UnixStream::connect(&path)
            .map_err(|err| (404, format!("stream {url}: {err} (a stream is read once)")))
    }
}

#[epi::provider]
impl Web {
    /// Answers `GET /provider/streams?url=...`; leaves every other request to other plugins.
    pub fn handle(&self, request: &HttpRequest) -> Decision<HttpResponse> {
        if request.path() != STREAMS_PATH {
            return Decision::NoDecision;
        }
        if request.method() != "GET" {
            return Decision::Decided(error(405, "use GET"));
        }
        let Some(url) = request.query_param("url").map(percent_decode) else {
            return Decision::Decided(error(400, "the `url` query parameter is missing"));
        };
        Decision::Decided(match self.open(&url) {
            Ok(stream) => {
                let id = self.tag | (self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff);
                self.streams.lock().unwrap().insert(id, stream);
                HttpResponse::stream("application/octet-stream", id)
            }
            Err((status, reason)) => error(status, &reason),
        })
    }

    /// The next chunk of stream `id` (`None` at its end); streams of others: no decision.
    pub fn next_chunk(&self, id: &u64) -> Decision<Option<Vec<u8>>> {
        let mut streams = self.streams.lock().unwrap();
        let Some(stream) = streams.get_mut(id) else {
            return Decision::NoDecision;
        };
        let mut chunk = vec![0u8; CHUNK];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                streams.remove(id);
                Decision::Decided(None)
            }
            Ok(read) => {
                chunk.truncate(read);
                Decision::Decided(Some(chunk))
            }
        }
    }
}

fn error(status: u16, detail: &str) -> HttpResponse {
    HttpResponse::json(
        status,
        &json!({"error": {"title": "stream", "detail": detail}}),
    )
}

/// Decodes `%XX` escapes (a URL in a query string is usually escaped).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[at], bytes.get(at + 1), bytes.get(at + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                at += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
