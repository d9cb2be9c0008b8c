//! Example plugin: defines the `greeting` service and provides it in English.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use epi::http::{HttpRequest, HttpResponse};
use epi::{Decision, Plugin, Provider};

/// The plugin object.
#[derive(Default)]
pub struct Hello;

impl Plugin for Hello {
    fn app(&self) -> String {
        "hello".into()
    }

    fn services(&self) -> Vec<String> {
        vec!["greeting".into(), epi::http::SERVICE.into()]
    }

    fn providers(&self) -> Vec<Provider> {
        vec![
            Provider::new("greeting", English::default()),
            Provider::new(epi::http::SERVICE, Web::default()),
        ]
    }
}

/// Greets in English and counts the greetings it gave.
#[derive(Default)]
pub struct English {
    greeted: AtomicU64,
}

#[epi::provider]
impl English {
    /// A greeting for `name`.
    pub fn greet(&self, name: &str) -> String {
        self.greeted.fetch_add(1, Ordering::Relaxed);
        format!("Hello, {name}!")
    }

    /// Decides the language for a locale it knows.
    pub fn language(&self, locale: &str) -> Decision<String> {
        if locale.starts_with("en") {
            Decision::Decided("English".into())
        } else {
            Decision::NoDecision
        }
    }

    /// How many greetings this provider gave since it was loaded.
    pub fn greeted(&self) -> u64 {
        self.greeted.load(Ordering::Relaxed)
    }
}

/// HTTP routes: `GET /hello/{name}`, `GET /hello-stream/{count}` (a streamed body of
/// `count` lines) and `/hello-echo` (any method: the request as this handler sees it, as JSON).
#[derive(Default)]
pub struct Web {
    /// Open streams: id → lines still to send.
    streams: Mutex<HashMap<u64, (u64, u64)>>,
    next_id: AtomicU64,
}

#[epi::provider]
impl Web {
    /// Answers the routes above; leaves every other request to other plugins.
    pub fn handle(&self, request: &HttpRequest) -> Decision<HttpResponse> {
        if request.path() == "/hello-echo" {
            let echo = serde_json::to_value(request).unwrap_or_default();
            return Decision::Decided(HttpResponse::json(200, &echo));
        }
        if request.method() != "GET" {
            return Decision::NoDecision;
        }
        match request.segments().as_slice() {
            ["hello", name] => Decision::Decided(HttpResponse::text(format!("Hello, {name}!"))),
            ["hello-stream", count] => match count.parse::<u64>() {
                Ok(count) => {
                    // Ids only this plugin hands out: a per-process tag and a counter.
                    let id = (std::process::id() as u64) << 32
                        | self.next_id.fetch_add(1, Ordering::Relaxed);
                    self.streams.lock().unwrap().insert(id, (0, count));
                    Decision::Decided(HttpResponse::stream("text/plain; charset=utf-8", id))
                }
                Err(_) => Decision::Decided(HttpResponse::json(
                    400,
                    &serde_json::json!({"error": "the count must be a number"}),
                )),
            },
            _ => Decision::NoDecision,
        }
    }

    /// The next chunk of a stream this provider opened; `None` ends it.
    pub fn next_chunk(&self, stream: &u64) -> Decision<Option<Vec<u8>>> {
        let mut streams = self.streams.lock().unwrap();
        let Some((sent, total)) = streams.get_mut(stream) else {
            return Decision::NoDecision;
        };
        if sent == total {
            streams.remove(stream);
            return Decision::Decided(None);
        }
        *sent += 1;
        Decision::Decided(Some(format!("line {sent} of {total}\n").into_bytes()))
    }
}

epi::export_plugin!(Hello);
