//! Example plugin: provides the `greeting` service (defined by `hello`) in French.

use epi::{Decision, Plugin, Provider};

/// The plugin object.
#[derive(Default)]
pub struct GreeterFr;

impl Plugin for GreeterFr {
    fn app(&self) -> String {
        "greeter-fr".into()
    }

    fn providers(&self) -> Vec<Provider> {
        vec![Provider::new("greeting", French)]
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

epi::export_plugin!(GreeterFr);
