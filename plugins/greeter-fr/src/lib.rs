//! Example plugin: provides the `greeting` service (defined by `hello`) in French.

use epi::http::{HttpRequest, HttpResponse};
use epi::{Decision, Plugin, Provider};

/// The plugin object.
#[derive(Default)]
pub struct GreeterFr;

impl Plugin for GreeterFr {
    fn app(&self) -> String {
        "greeter-fr".into()
    }

    fn services(&self) -> Vec<String> {
        vec![epi::http::SERVICE.into()]
    }

    fn providers(&self) -> Vec<Provider> {
        vec![
            Provider::new("greeting", French),
            Provider::new(epi::http::SERVICE, FrenchWeb),
        ]
    }
}

/// Greets in French.
pub struct French;

#[epi::provider]
impl French {
    /// A greeting for `name`.
    pub fn greet(&self, name: &str) -> String {
        format!("Bonjour, {name} !")
    }

    /// Decides the language for French locales.
    pub fn language(&self, locale: &str) -> Decision<String> {
        if locale.starts_with("fr") {
            Decision::Decided("français".into())
        } else {
            Decision::NoDecision
        }
    }
}

/// HTTP route: `GET /bonjour/{name}`.
pub struct FrenchWeb;

#[epi::provider]
impl FrenchWeb {
    /// Answers `/bonjour/{name}`; leaves every other request to other plugins.
    pub fn handle(&self, request: &HttpRequest) -> Decision<HttpResponse> {
        match (request.method(), request.segments().as_slice()) {
            ("GET", ["bonjour", name]) => {
                Decision::Decided(HttpResponse::text(format!("Bonjour, {name} !")))
            }
            _ => Decision::NoDecision,
        }
    }
}

epi::export_plugin!(GreeterFr);
