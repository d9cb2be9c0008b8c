//! Exporting the daemon's `tracing` spans to an OpenTelemetry collector over OTLP (the `otlp`
//! feature). Spans include `epi.apply`, `epi.decide`, `epi.pipe` and their JSON variants, one
//! per host call, with the service and function as attributes.
//!
//! The exporter follows OpenTelemetry's environment variables: it is on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and sends
//! OTLP over HTTP with protobuf. `EPI_OTLP_FILTER` (an `EnvFilter` directive, default
//! `info,epi=trace`) chooses the spans exported, independently of the log level.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// The spans exported unless `EPI_OTLP_FILTER` says otherwise: the dispatch spans (at trace
/// level) and the daemon's own information.
pub const DEFAULT_FILTER: &str = "info,epi=trace";

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its configuration.
    #[error("cannot start the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// `EPI_OTLP_FILTER` is not a filter directive.
    #[error("EPI_OTLP_FILTER: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
}

/// The tracer provider behind the layer: flushes what is pending and stops when dropped.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Err(err) = self.provider.force_flush() {
            tracing::warn!("OTLP flush failed: {err}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!("OTLP shutdown failed: {err}");
        }
    }
}

/// A boxed layer over the subscriber `S`.
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// The OTLP layer when OpenTelemetry's endpoint variable is set, else `None`.
pub fn from_env<S>() -> Result<Option<(BoxedLayer<S>, Telemetry)>, TelemetryError>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
    if !configured {
        return Ok(None);
    }
    let filter = match std::env::var("EPI_OTLP_FILTER") {
        Ok(directive) => EnvFilter::try_new(directive)?,
        Err(_) => EnvFilter::new(DEFAULT_FILTER),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(service())
        .build();
    let (layer, telemetry) = layer_for(provider);
    Ok(Some((layer.with_filter(filter).boxed(), telemetry)))
}

/// A layer exporting each span to `exporter` as it ends (no batching): for tests, and for
/// exporters that batch themselves.
pub fn with_exporter<S, E>(exporter: E) -> (impl Layer<S> + Send + Sync, Telemetry)
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    E: SpanExporter + 'static,
{
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(service())
        .build();
    layer_for(provider)
}

fn service() -> Resource {
    Resource::builder().with_service_name("epi").build()
}

fn layer_for<S>(provider: SdkTracerProvider) -> (impl Layer<S> + Send + Sync, Telemetry)
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    let tracer = provider.tracer("epi");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    (layer, Telemetry { provider })
}
