//! HTTP requests and responses as plain data, for plugins that serve HTTP through the `epi`
//! daemon. The daemon routes each request with a `decide` over the [`SERVICE`] service's
//! [`HANDLE`] function: the first provider that decides answers.
//!
//! A provider streams a body by answering [`HttpBody::Stream`] with an id of its choosing;
//! the daemon then calls [`NEXT_CHUNK`] with that id until the owning provider decides
//! `None` (the end). Other providers answer `NoDecision` for ids they do not own.

use serde::{Deserialize, Serialize};

/// The service HTTP handlers provide.
pub const SERVICE: &str = "http";
/// `fn handle(&self, request: &HttpRequest) -> Decision<HttpResponse>`.
pub const HANDLE: &str = "handle";
/// `fn next_chunk(&self, stream: &u64) -> Decision<Option<Vec<u8>>>`.
pub const NEXT_CHUNK: &str = "next_chunk";

/// A request as the daemon received it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, percent-decoding left to the handler (`/hello/Ada`).
    pub path: String,
    /// The raw query string without `?` (empty when none).
    pub query: String,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (the daemon enforces a size limit before any plugin sees it).
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The path split on `/`, without empty segments.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// The first value of a query parameter (no percent-decoding).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }
}

/// A response body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpBody {
    /// The whole body.
    Full(Vec<u8>),
    /// A body streamed chunk by chunk through [`NEXT_CHUNK`].
    Stream {
        /// The id the providing plugin recognises.
        id: u64,
    },
}

/// A response a handler decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: HttpBody,
}

impl HttpResponse {
    /// A response with a body and a content type.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: HttpBody::Full(body.into()),
        }
    }

    /// `200 text/plain`.
    pub fn text(body: impl Into<String>) -> Self {
        Self::new(200, "text/plain; charset=utf-8", body.into().into_bytes())
    }

    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(status, "application/json", value.to_string().into_bytes())
    }

    /// A streamed response (see [`HttpBody::Stream`]).
    pub fn stream(content_type: &str, id: u64) -> Self {
        HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            body: HttpBody::Stream { id },
        }
    }
}
