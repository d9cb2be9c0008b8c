//! Example plugin: defines the `greeting` service and provides it in English.

use std::sync::atomic::{AtomicU64, Ordering};

use epi::{Decision, Plugin, Provider};

/// The plugin object.
#[derive(Default)]
pub struct Hello;

impl Plugin for Hello {
    fn app(&self) -> String {
        "hello".into()
    }

    fn services(&self) -> Vec<String> {
        vec!["greeting".into()]
    }

    fn providers(&self) -> Vec<Provider> {
        vec![Provider::new("greeting", English::default())]
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

epi::export_plugin!(Hello);
