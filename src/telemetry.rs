//! Logs and traces.
//!
//! - **Logs** go to stderr: JSON lines (`ACCESSGOV_LOG_FORMAT=json`, the
//!   container default) or human-readable text (`pretty`), level from
//!   `RUST_LOG` (default `info`). Each JSON line carries the `trace_id` and
//!   `span_id` of the span it was logged in.
//! - **Traces**: every step is a `tracing` span, mapped to OpenTelemetry by
//!   `tracing-opentelemetry`. Spans are exported over OTLP/HTTP (protobuf)
//!   only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set
//!   and not empty; the other standard variables (`OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, `OTEL_SDK_DISABLED`) are read
//!   by the SDK. Unset, nothing is recorded or sent: root spans are not
//!   sampled, so spans cost their ids and nothing else, and a caller's sampled
//!   trace is still passed on unchanged.
//! - **Propagation**: the W3C `traceparent` ([`inject`], [`extract`]) goes from
//!   the webhook's headers into the AMQP headers, from there into the worker,
//!   and onward on every provider and JSM request.
//!
//! Spans carry ids (event id, ticket, application, action, outcome), never
//! secrets, tokens, email addresses or bodies.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::fmt;
use std::sync::{Arc, OnceLock};
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (for a terminal).
    #[value(alias = "text")]
    Pretty,
    /// One JSON object per line, with `trace_id` and `span_id` (for containers).
    Json,
}

/// Flushes and stops the span exporter when dropped (keep it until `main` returns).
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if self.exporting {
            // Sends what is still batched; bounded, so a dead collector cannot hang the exit.
            let _ = self.provider.shutdown_with_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// The OTLP traces endpoint from the standard variables, when export is on.
fn otlp_endpoint() -> Option<String> {
    let set = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// Installs the global subscriber (call once, from `main`). `service` names
/// the process in traces unless `OTEL_SERVICE_NAME` does.
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    init_with_writer(format, service, BoxMakeWriter::new(std::io::stderr))
}

/// [`init`] with the log lines written to `writer` (the benchmark formats
/// them, as in production, into a sink).
pub fn init_with_writer(format: LogFormat, service: &'static str, writer: BoxMakeWriter) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,sqlx=warn"));
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
        resource = resource.with_service_name(service);
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let mut export_error = None;
    let endpoint = otlp_endpoint();
    let exporting = match &endpoint {
        Some(_) => match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
            Ok(exporter) => {
                // The sampler stays the SDK's (OTEL_TRACES_SAMPLER, default parent-based always-on).
                builder = builder.with_batch_exporter(exporter);
                true
            }
            Err(e) => {
                export_error = Some(e.to_string());
                false
            }
        },
        None => false,
    };
    if !exporting {
        // Nothing is recorded: our own roots are not sampled, a caller's decision is kept.
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
    }
    let provider = builder.build();
    let dispatch = dispatch(format, filter, &provider, writer);
    let _ = tracing::dispatcher::set_global_default(dispatch);
    match (&endpoint, &export_error) {
        (Some(endpoint), None) => tracing::info!(endpoint = %endpoint, service, "exporting spans over OTLP/HTTP"),
        (Some(_), Some(e)) => tracing::error!(error = %e, "cannot build the OTLP exporter; spans are not exported"),
        _ => {}
    }
    Telemetry { provider, exporting }
}

/// The subscriber: the level filter, the OpenTelemetry layer on `provider`'s
/// tracer, and log lines in `format` to `writer`.
fn dispatch(
    format: LogFormat,
    filter: EnvFilter,
    provider: &SdkTracerProvider,
    writer: BoxMakeWriter,
) -> tracing::Dispatch {
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("accessgov"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        // Ids and parents come from the span tree and `inject`/`extract`; no
        // OpenTelemetry context is made current on every enter.
        .with_context_activation(false);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match format {
        LogFormat::Pretty => {
            tracing::Dispatch::new(registry.with(tracing_subscriber::fmt::layer().with_writer(writer)))
        }
        LogFormat::Json => {
            let slot: Arc<OnceLock<WeakDispatch>> = Arc::new(OnceLock::new());
            let dispatch = tracing::Dispatch::new(
                registry.with(
                    tracing_subscriber::fmt::layer()
                        .fmt_fields(JsonPairs)
                        .event_format(JsonLines { dispatch: slot.clone() })
                        .with_writer(writer),
                ),
            );
            let _ = slot.set(dispatch.downgrade());
            dispatch
        }
    }
}

/// Logs as JSON lines: `timestamp`, `level`, `target`, `message`, the
/// event's fields, the current span (`span`: its name and fields), and the
/// OpenTelemetry `trace_id` and `span_id`. Written straight into the line,
/// without an intermediate JSON value.
struct JsonLines {
    /// The subscriber this formatter is part of (set right after it is built),
    /// to read a span's OpenTelemetry context without re-entering the dispatcher.
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S> FormatEvent<S, JsonPairs> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonPairs>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":\"");
        line.push_str(&chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push_str("\",\"target\":");
        push_json_str(&mut line, meta.target());
        let mut fields = PairVisitor { out: &mut line };
        event.record(&mut fields);
        let current = event.parent().and_then(|id| ctx.span(id)).or_else(|| ctx.lookup_current());
        if let Some(span) = current {
            line.push_str(",\"span\":{\"name\":");
            push_json_str(&mut line, span.name());
            if let Some(f) = span.extensions().get::<FormattedFields<JsonPairs>>() {
                line.push_str(f);
            }
            line.push('}');
            let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
            if let Some(cx) = dispatch.and_then(|d| tracing_opentelemetry::get_otel_context(&span.id(), &d)) {
                let sc = cx.span().span_context().clone();
                if sc.is_valid() {
                    line.push_str(&format!(",\"trace_id\":\"{}\",\"span_id\":\"{}\"", sc.trace_id(), sc.span_id()));
                }
            }
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// Span fields kept as `,"key":value` pairs, appended to on `record`
/// (tracing-subscriber's `JsonFields` parses and re-serializes them all on
/// every `record`, which cost more than the rest of a span).
#[derive(Default)]
struct JsonPairs;

impl<'w> FormatFields<'w> for JsonPairs {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut out = String::new();
        fields.record(&mut PairVisitor { out: &mut out });
        writer.write_str(&out)
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &tracing::span::Record<'_>) -> fmt::Result {
        fields.record(&mut PairVisitor { out: &mut current.fields });
        Ok(())
    }
}

/// Appends each field as `,"name":value` (strings escaped as JSON).
struct PairVisitor<'a> {
    out: &'a mut String,
}

impl PairVisitor<'_> {
    fn key(&mut self, field: &tracing::field::Field) {
        self.out.push(',');
        push_json_str(self.out, field.name());
        self.out.push(':');
    }
}

/// `s` as a JSON string literal (most values need no escaping: no allocation).
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

impl tracing::field::Visit for PairVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.key(field);
        push_json_str(self.out, &format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.key(field);
        push_json_str(self.out, value);
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.key(field);
        self.out.push_str(&value.to_string());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.key(field);
        self.out.push_str(&value.to_string());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.key(field);
        match serde_json::Number::from_f64(value) {
            Some(n) => self.out.push_str(&n.to_string()),
            None => self.out.push_str("null"),
        }
    }
    fn record_error(&mut self, field: &tracing::field::Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        push_json_str(self.out, &value.to_string());
    }
}

/// Reads W3C trace headers from any string map.
struct Get<'a, F: Fn(&str) -> Option<&'a str>>(F);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Get<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Collects the W3C trace headers to send.
#[derive(Default)]
struct Headers(Vec<(&'static str, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        let key = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((key, value));
    }
}

/// Makes `span` a child of the trace that `get` (a header lookup: the
/// webhook's HTTP headers, a message's AMQP headers) carries, if any.
pub fn extract<'a>(span: &tracing::Span, get: impl Fn(&str) -> Option<&'a str>) {
    let cx = TraceContextPropagator::new().extract(&Get(get));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C headers (`traceparent`, and `tracestate` when there is one) that
/// make the receiver's spans children of `span`. Empty when `span` is
/// disabled (no subscriber: tests, `simulate`).
pub fn inject(span: &tracing::Span) -> Vec<(&'static str, String)> {
    let mut headers = Headers::default();
    TraceContextPropagator::new().inject_context(&span.context(), &mut headers);
    headers.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_trace_is_continued_and_passed_on_with_a_new_span_id() {
        // A subscriber with the OpenTelemetry layer, for this thread only.
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = tracing::info_span!("webhook");
            extract(&span, |k| (k == "traceparent").then_some(incoming));
            let out = inject(&span);
            let (_, tp) = out.iter().find(|(k, _)| *k == "traceparent").expect("a traceparent");
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
            assert_ne!(parts[2], "00f067aa0ba902b7", "our own span, not the caller's");
            assert_eq!(parts[3], "01", "the caller's sampling decision is kept");
        });
    }

    #[test]
    fn json_lines_carry_the_event_the_span_fields_recorded_later_and_the_trace_ids() {
        let buffer: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
        let sink = buffer.clone();
        let writer = BoxMakeWriter::new(move || Shared(sink.clone()));
        let provider = SdkTracerProvider::builder().build();
        let dispatch = dispatch(LogFormat::Json, EnvFilter::new("info"), &provider, writer);
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("consume", ticket = "ACC-1", outcome = tracing::field::Empty);
            let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            extract(&span, |k| (k == "traceparent").then_some(incoming));
            span.record("outcome", "applied");
            tracing::info!(parent: &span, ops = 2, ok = true, note = "a \"quoted\"\nline", "event applied");
        });
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(line["message"], "event applied");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["ops"], 2);
        assert_eq!(line["ok"], true);
        assert_eq!(line["note"], "a \"quoted\"\nline");
        assert_eq!(line["span"], serde_json::json!({"name": "consume", "ticket": "ACC-1", "outcome": "applied"}));
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["span_id"].as_str().map(str::len), Some(16));
        assert_ne!(line["span_id"], "00f067aa0ba902b7", "the line's own span, not the caller's");
    }

    /// A log writer into a shared buffer.
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("webhook");
            extract(&span, |k| (k == "traceparent").then_some("00-zz-yy-01"));
            let tp = inject(&span).into_iter().find(|(k, _)| *k == "traceparent").expect("a traceparent").1;
            assert_eq!(tp.len(), 55);
            assert!(!tp.contains("zz"));
        });
    }
}
