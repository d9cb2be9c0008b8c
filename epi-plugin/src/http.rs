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

/// A request as the daemon received it, read through its methods.
///
/// The daemon *lends* a request to the handlers ([`HttpRequest::lend`]): method, path, query,
/// headers and body stay where the HTTP server put them, and the handlers read them in place
/// for the one call, so routing a request copies none of it. A request decoded on the stable
/// path, made with [`HttpRequest::new`] or cloned owns its parts. Either way a handler sees
/// `&HttpRequest` and cannot tell the difference.
pub struct HttpRequest {
    method: Part<String, str>,
    path: Part<String, str>,
    query: Part<String, str>,
    headers: Part<Vec<(String, String)>, [Header<'static>]>,
    body: Part<Vec<u8>, [u8]>,
}

/// A header's name and value, borrowed.
type Header<'a> = (&'a str, &'a str);

/// One part of a request: owned, or borrowed from the caller of [`HttpRequest::lend`].
///
/// A `Lent` pointer is only ever made inside `lend`, from references that outlive the
/// request, and the request is only handed out by reference for that call: nothing can move
/// a lent request out of it or clone its pointers (`Clone` copies the parts into owned ones).
enum Part<O, B: ?Sized> {
    Owned(O),
    Lent(*const B),
}

// SAFETY: a lent part is a shared reference in disguise (see `Part`), and shared references
// to `B` may cross threads when `B: Sync`.
unsafe impl<O: Send, B: ?Sized + Sync> Send for Part<O, B> {}
// SAFETY: as above; the part is only ever read.
unsafe impl<O: Sync, B: ?Sized + Sync> Sync for Part<O, B> {}

impl<O: std::borrow::Borrow<B>, B: ?Sized> Part<O, B> {
    fn get(&self) -> &B {
        match self {
            Part::Owned(owned) => owned.borrow(),
            // SAFETY: lent by `HttpRequest::lend` from a reference that outlives the request,
            // and `self` borrows the request (see `Part`).
            Part::Lent(lent) => unsafe { &**lent },
        }
    }
}

impl HttpRequest {
    /// An owned request with no query, headers or body (the daemon lends its requests
    /// instead; this is for tests, clients and plugins forwarding requests).
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        HttpRequest {
            method: Part::Owned(method.into()),
            path: Part::Owned(path.into()),
            query: Part::Owned(String::new()),
            headers: Part::Owned(Vec::new()),
            body: Part::Owned(Vec::new()),
        }
    }

    /// This request with the raw query string `query` (without `?`).
    pub fn with_query(mut self, query: impl Into<String>) -> Self {
        self.query = Part::Owned(query.into());
        self
    }

    /// This request with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Part::Lent(_) = self.headers {
            self.headers = Part::Owned(self.owned_headers());
        }
        if let Part::Owned(headers) = &mut self.headers {
            headers.push((name.into(), value.into()));
        }
        self
    }

    /// This request with `body`.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Part::Owned(body.into());
        self
    }

    /// Calls `handle` with a request that borrows its parts from the arguments for the
    /// duration of the call (what the daemon does for every request: nothing is copied).
    pub fn lend<R>(
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        handle: impl FnOnce(&HttpRequest) -> R,
    ) -> R {
        let headers: *const [Header<'_>] = headers;
        let request = HttpRequest {
            method: Part::Lent(method),
            path: Part::Lent(path),
            query: Part::Lent(query),
            // Only the lifetime changes: `Part::Lent` never hands out a `'static` reference
            // (`headers()` reads the pairs back with the request's own lifetime).
            #[allow(clippy::unnecessary_cast)] // the cast is the lifetime's, which clippy ignores
            headers: Part::Lent(headers as *const [Header<'static>]),
            body: Part::Lent(body),
        };
        handle(&request)
    }

    /// `GET`, `POST`, ...
    pub fn method(&self) -> &str {
        self.method.get()
    }

    /// The path, percent-decoding left to the handler (`/hello/Ada`).
    pub fn path(&self) -> &str {
        self.path.get()
    }

    /// The raw query string without `?` (empty when none).
    pub fn query(&self) -> &str {
        self.query.get()
    }

    /// Header names (lower case) and values, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let (owned, lent): (&[(String, String)], &[Header<'_>]) = match &self.headers {
            Part::Owned(owned) => (owned, &[]),
            // SAFETY: lent by `lend` (see `Part`); the pairs are read back with `self`'s
            // lifetime (the binding's type shortens them), never as `'static`.
            Part::Lent(lent) => (&[], unsafe { &**lent }),
        };
        owned
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .chain(lent.iter().copied())
    }

    /// The first value of header `name` (compared ignoring ASCII case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// The body (the daemon enforces a size limit before any plugin sees it).
    pub fn body(&self) -> &[u8] {
        self.body.get()
    }

    /// The path split on `/`, without empty segments.
    pub fn segments(&self) -> Vec<&str> {
        self.path().split('/').filter(|s| !s.is_empty()).collect()
    }

    /// The first value of a query parameter (no percent-decoding).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    fn owned_headers(&self) -> Vec<(String, String)> {
        self.headers()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }
}

impl Clone for HttpRequest {
    /// An owned copy (a lent request's copy owns its parts).
    fn clone(&self) -> Self {
        HttpRequest {
            method: Part::Owned(self.method().to_owned()),
            path: Part::Owned(self.path().to_owned()),
            query: Part::Owned(self.query().to_owned()),
            headers: Part::Owned(self.owned_headers()),
            body: Part::Owned(self.body().to_vec()),
        }
    }
}

impl Default for HttpRequest {
    fn default() -> Self {
        HttpRequest::new("", "")
    }
}

impl PartialEq for HttpRequest {
    fn eq(&self, other: &Self) -> bool {
        self.method() == other.method()
            && self.path() == other.path()
            && self.query() == other.query()
            && self.headers().eq(other.headers())
            && self.body() == other.body()
    }
}

impl Eq for HttpRequest {}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("query", &self.query())
            .field("headers", &self.headers().collect::<Vec<_>>())
            .field("body", &self.body())
            .finish()
    }
}

/// The encoded form: the same fields in the same order as the owned parts, so a request
/// encodes (and its serde shape reads) the same lent or owned.
#[derive(Deserialize)]
#[serde(rename = "HttpRequest")]
struct OwnedRequest {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Serialize for HttpRequest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut fields = serializer.serialize_struct("HttpRequest", 5)?;
        fields.serialize_field("method", self.method())?;
        fields.serialize_field("path", self.path())?;
        fields.serialize_field("query", self.query())?;
        fields.serialize_field("headers", &SerializeHeaders(self))?;
        fields.serialize_field("body", self.body())?;
        fields.end()
    }
}

/// A request's headers as a sequence of pairs (as `Vec<(String, String)>` encodes).
struct SerializeHeaders<'a>(&'a HttpRequest);

impl Serialize for SerializeHeaders<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.headers())
    }
}

impl<'de> Deserialize<'de> for HttpRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let owned = OwnedRequest::deserialize(deserializer)?;
        Ok(HttpRequest {
            method: Part::Owned(owned.method),
            path: Part::Owned(owned.path),
            query: Part::Owned(owned.query),
            headers: Part::Owned(owned.headers),
            body: Part::Owned(owned.body),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The request as it was declared before it could be lent: what plugins built against
    /// earlier versions decode on the stable path.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename = "HttpRequest")]
    struct Declared {
        method: String,
        path: String,
        query: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    fn declared() -> Declared {
        Declared {
            method: "POST".into(),
            path: "/guests/7".into(),
            query: "limit=2&x".into(),
            headers: vec![
                ("host".into(), "bench".into()),
                ("X-Two".into(), "a".into()),
                ("x-two".into(), "b".into()),
            ],
            body: b"{\"a\":1}".to_vec(),
        }
    }

    fn lend<R>(declared: &Declared, handle: impl FnOnce(&HttpRequest) -> R) -> R {
        let headers: Vec<(&str, &str)> = declared
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        HttpRequest::lend(
            &declared.method,
            &declared.path,
            &declared.query,
            &headers,
            &declared.body,
            handle,
        )
    }

    #[test]
    fn a_lent_request_reads_encodes_and_clones_as_an_owned_one() {
        let declared = declared();
        let owned = HttpRequest::new("POST", "/guests/7")
            .with_query("limit=2&x")
            .with_header("host", "bench")
            .with_header("X-Two", "a")
            .with_header("x-two", "b")
            .with_body(b"{\"a\":1}".to_vec());
        let expected = serde_json::to_string(&declared).unwrap();
        assert_eq!(serde_json::to_string(&owned).unwrap(), expected);
        let copy = lend(&declared, |request| {
            assert_eq!(request.method(), "POST");
            assert_eq!(request.path(), "/guests/7");
            assert_eq!(request.segments(), ["guests", "7"]);
            assert_eq!(request.query_param("limit"), Some("2"));
            assert_eq!(request.query_param("x"), Some(""));
            assert_eq!(request.header("x-two"), Some("a"));
            assert_eq!(request.header("content-type"), None);
            assert_eq!(request.body(), b"{\"a\":1}");
            assert_eq!(serde_json::to_string(request).unwrap(), expected);
            assert_eq!(*request, owned);
            request.clone()
        });
        // The clone outlives the lent parts' borrow: it owns copies of them.
        drop(declared);
        assert_eq!(copy, owned);
        assert_eq!(format!("{copy:?}"), format!("{owned:?}"));
    }

    #[test]
    fn a_request_decodes_and_traces_as_the_declared_struct_did() {
        let declared = declared();
        let bytes = serde_json::to_vec(&declared).unwrap();
        let decoded: HttpRequest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            serde_json::from_slice::<Declared>(&serde_json::to_vec(&decoded).unwrap()).unwrap(),
            declared
        );
        assert_eq!(
            crate::describe::shape_of::<HttpRequest>(),
            crate::describe::shape_of::<Declared>()
        );
    }
}
