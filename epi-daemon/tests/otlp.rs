//! The `otlp` feature's layer: an apply through the registry is exported as an OpenTelemetry
//! span (`epi.apply`, with its service and function), here to an in-memory exporter in place
//! of the OTLP one. `cargo test -p epi-daemon --features otlp --test otlp`.
#![cfg(feature = "otlp")]

use epi::{Registry, RegistryConfig};
use opentelemetry::Value;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn an_apply_is_exported_as_a_span() {
    let registry = Registry::new(RegistryConfig::default()).unwrap();
    registry
        .load(epi_testkit::plugin_library("epi-plugin-hello"))
        .unwrap();
    let greet = registry.function::<String, String>("greeting", "greet");

    let exporter = InMemorySpanExporter::default();
    let (layer, telemetry) = epi_daemon::telemetry::with_exporter(exporter.clone());
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        assert_eq!(greet.apply(&"Ada".to_owned()).unwrap(), ["Hello, Ada!"]);
    });
    telemetry.flush();

    let spans = exporter.get_finished_spans().unwrap();
    let apply = spans
        .iter()
        .find(|span| span.name == "epi.apply")
        .unwrap_or_else(|| panic!("no epi.apply span among {spans:?}"));
    let attribute = |key: &str| {
        apply
            .attributes
            .iter()
            .find(|pair| pair.key.as_str() == key)
            .map(|pair| pair.value.clone())
    };
    assert_eq!(attribute("service"), Some(Value::from("greeting")));
    assert_eq!(attribute("function"), Some(Value::from("greet")));
}
