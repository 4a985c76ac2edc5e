//! Logs and traces: the global `tracing` subscriber, OpenTelemetry export over OTLP, and W3C
//! trace context across process boundaries.
//!
//! Every process installs one subscriber with two independent layers:
//! - **logs** (`fmt`, text or JSON on stderr), filtered by `RUST_LOG`;
//! - **traces** (`tracing-opentelemetry`), only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: spans are batched and exported over OTLP/gRPC
//!   to Jaeger or any collector. Filtered separately by `WORLDMESH_TRACE_FILTER` (default
//!   `warn,worldmesh=info`: worldmesh's own spans, not every dependency's), so quiet logs do not
//!   mean empty traces. The service name is `OTEL_SERVICE_NAME` or the service's own name.
//!
//! Trace context crosses processes in two ways:
//! - **gRPC calls** carry the `traceparent` header: clients built on [`crate::Channel`] add
//!   the current span's context ([`inject_current`]), and servers open their request span with [`grpc_server_span`]
//!   as the parent-aware `trace_fn`.
//! - **Messages on long-lived streams** (a handoff's `Begin`, `Prepare`, `Decided`; a player's
//!   `Join`) carry a `trace_parent` field, because one stream carries many unrelated
//!   operations: [`traceparent`] writes it, [`follow`] reads it.
//!
//! With no OpenTelemetry layer installed spans have no context: [`traceparent`] returns an
//! empty string and nothing is sent, so untraced clusters pay nothing on the wire.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::LogFormat;

/// The W3C header (and metadata key) carrying trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Which spans are exported, unless `WORLDMESH_TRACE_FILTER` says otherwise.
pub const DEFAULT_TRACE_FILTER: &str = "warn,worldmesh=info";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber: logs always, OTLP traces when the endpoint is set. Must run
/// inside a Tokio runtime for the exporter (it is skipped, with a warning, otherwise). Later
/// calls do nothing, which tests rely on.
pub fn init(service: &str, default_filter: &str, format: LogFormat) {
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    let provider = endpoint
        .as_ref()
        .and_then(|_| match otlp_provider(service) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("OpenTelemetry export disabled: {e}");
                None
            }
        });
    let installed = install(default_filter, format, provider.clone());
    if installed && let Some(endpoint) = endpoint {
        tracing::info!(%endpoint, service, "exporting traces over OTLP");
    }
}

/// [`init`] with a given tracer provider (tests use an in-memory exporter). Returns whether
/// this call installed the subscriber.
pub fn install(
    default_filter: &str,
    format: LogFormat,
    provider: Option<SdkTracerProvider>,
) -> bool {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Logs go to stderr: stdout belongs to a program's output (JSON reports, status lines).
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let traces = provider.as_ref().map(|p| {
        let filter = std::env::var("WORLDMESH_TRACE_FILTER")
            .ok()
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new(DEFAULT_TRACE_FILTER));
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("worldmesh"))
            // Busy/idle bookkeeping on every enter and exit costs more than it tells here.
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(filter)
    });
    let ok = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init()
        .is_ok();
    if ok && let Some(p) = provider {
        let _ = PROVIDER.set(p);
    }
    ok
}

fn otlp_provider(service: &str) -> Result<SdkTracerProvider, String> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err("not inside a Tokio runtime".into());
    }
    // Endpoint, headers and timeout come from the standard OTEL_EXPORTER_OTLP_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    // Exports run on the process's own Tokio runtime: the SDK's default batch processor runs
    // them on a plain thread, where tonic has no reactor.
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .build())
}

/// Exports the spans still buffered; call once as a process stops (its runtime still alive).
pub async fn flush() {
    if let Some(p) = PROVIDER.get().cloned() {
        // Shutting down blocks until the exporter task, on this runtime, has finished.
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    }
}

/// The W3C `traceparent` of a span, for a message field; empty when the span is not traced.
pub fn traceparent(span: &Span) -> String {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// Makes `span` a child of the trace a message's `traceparent` names (nothing if empty or
/// malformed: a bad field from the network costs a trace link, never an error).
pub fn follow(span: &Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The span of one gRPC request on a server, child of the caller's span when the request
/// carries `traceparent`. Pass to `Server::builder().trace_fn(..)`.
pub fn grpc_server_span(req: &http::Request<()>) -> Span {
    let span = tracing::info_span!(
        "grpc",
        otel.name = %req.uri().path(),
        otel.kind = "server",
        rpc.system = "grpc",
    );
    if !span.is_disabled() && req.headers().contains_key(TRACEPARENT) {
        let cx = TraceContextPropagator::new().extract(&Headers(req.headers()));
        let _ = span.set_parent(cx);
    }
    span
}

/// Adds the current span's trace context to a request's metadata (nothing when untraced).
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut Metadata(metadata));
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn traceparent_round_trips_and_bad_input_is_ignored() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!("root");
            let tp = traceparent(&root);
            assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");
            let child = tracing::info_span!("child");
            follow(&child, &tp);
            assert_eq!(
                child.context().span().span_context().trace_id(),
                root.context().span().span_context().trace_id()
            );
            let stray = tracing::info_span!("stray");
            follow(&stray, "garbage");
            follow(&stray, "");
            assert_ne!(
                stray.context().span().span_context().trace_id(),
                root.context().span().span_context().trace_id()
            );
        });
        // Without a tracing layer there is nothing to send.
        assert_eq!(traceparent(&tracing::info_span!("untraced")), "");
    }
}
