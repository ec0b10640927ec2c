//! Logs and traces, set up once per process ([`init`]), and the W3C trace context carried
//! between services ([`continue_trace`], [`traceparent_of`], [`link_to`]).
//!
//! - Logs go to stderr, filtered by `RUST_LOG`, in JSON when `LOG_FORMAT=json` (containers).
//!   Every line written inside a span carries that span's `trace_id` and `span_id`.
//! - Spans go to OpenTelemetry always, so trace ids exist (in logs, in event metadata, in AMQP
//!   headers) whether or not anything collects them; they leave the process over OTLP/HTTP
//!   (protobuf) only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set. The
//!   standard variables apply: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`.
//! - Long-lived worker spans (a relay session, a consumer: [`WORKER_SPANS`]) label log lines
//!   but are never sampled; the spans of one message inside them are roots (`parent: None`)
//!   that continue the message's trace.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, ShouldSample};
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The default filter of a running service.
pub const SERVICE: &str = "info,sqlx=warn";
/// The default filter while a command prints a report of its own (a benchmark, the demo): only
/// warnings and errors, so log lines do not break up the report.
pub const QUIET: &str = "warn";
/// Names of long-lived spans (a relay session, a consumer, lapin's connection thread) that
/// label logs but are kept out of traces.
pub const WORKER_SPANS: [&str; 3] = ["relay", "consumer", "io_loop"];

/// The process's tracer provider. Keep it for the life of the process; [`Telemetry::shutdown`]
/// sends what is still buffered.
#[derive(Debug, Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans leave the process.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes and stops exporting.
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs logging and tracing for this process. `service` names it in traces unless
/// `OTEL_SERVICE_NAME` does. Calling it twice keeps the first set-up (and answers with the
/// provider of the second, which nothing feeds).
pub fn init(default_filter: &str, service: &str) -> Telemetry {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    let mut provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_sampler(WorkersUnsampled(Sampler::ParentBased(Box::new(
            Sampler::AlwaysOn,
        ))));
    let mut exporting = false;
    if export_configured() {
        // The exporter reads the standard variables itself (and adds `/v1/traces` to the
        // generic endpoint).
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                provider = provider.with_batch_exporter(exporter);
                exporting = true;
            }
            Err(e) => eprintln!("traces are not exported: the OTLP exporter: {e}"),
        }
    }
    let telemetry = Telemetry {
        provider: provider.build(),
        exporting,
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registered = Registered::default();
    let fmt = if json {
        fmt.json()
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format().json(),
                json: true,
                registered: registered.clone(),
            })
            .boxed()
    } else {
        fmt.event_format(WithTraceIds {
            inner: tracing_subscriber::fmt::format(),
            json: false,
            registered: registered.clone(),
        })
        .boxed()
    };
    // Spans carry what we give them, not the layer's extras (source location, thread, target,
    // busy/idle time: eight attributes and two clock reads per span, paid for on every span
    // exported).
    // Nor is a span's OpenTelemetry context made the thread's current one each time the span is
    // entered (every poll of an instrumented future): only OpenTelemetry-native instrumentation
    // would read it, and we have none; our log lines ask the layer for their span's ids instead
    // ([`WithTraceIds`]). Entering spans was 2% of a service's CPU under load.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(telemetry.provider.tracer("tillstream"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false);
    let gate = Gate {
        logs,
        spans: Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target("h2", LevelFilter::OFF)
            .with_target("hyper", LevelFilter::OFF)
            .with_target("lapin", LevelFilter::WARN)
            .with_target("sqlx", LevelFilter::WARN),
    };
    let _ = tracing_subscriber::registry()
        .with(gate)
        .with(fmt)
        .with(traces)
        .with(registered)
        .try_init();
    telemetry
}

fn export_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// The process's one filter: the spans traces want (ours at info and up, whatever the log
/// level: a quiet benchmark still propagates its trace ids) and the events and spans the log
/// filter (`RUST_LOG`) wants. Global, not per layer: per-layer filters hand their verdict to
/// their layer in a thread-local that another call (sqlx asks about its query log after each
/// statement) can overwrite first, and whole requests' spans went missing from traces and
/// logs that way (tokio-rs/tracing#2519).
struct Gate {
    logs: EnvFilter,
    spans: Targets,
}

impl Gate {
    fn traced(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.is_span() && self.spans.would_enable(meta.target(), meta.level())
    }
}

impl<S> Layer<S> for Gate
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        let logs = Layer::<S>::register_callsite(&self.logs, meta);
        if self.traced(meta) {
            tracing::subscriber::Interest::always()
        } else {
            logs
        }
    }

    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.traced(meta) || Layer::<S>::enabled(&self.logs, meta, ctx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(
            Layer::<S>::max_level_hint(&self.logs)
                .map_or(LevelFilter::INFO, |l| l.max(LevelFilter::INFO)),
        )
    }

    // The log filter keeps track of spans for directives that name span fields.
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.logs.on_new_span(attrs, id, ctx);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.logs.on_record(id, values, ctx);
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.logs.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.logs.on_exit(id, ctx);
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.logs.on_close(id, ctx);
    }
}

/// Samples as the inner sampler does, except the long-lived worker spans ([`WORKER_SPANS`]):
/// they label log lines, but as trace spans every message a worker handles would join one
/// endless trace. (Spans for one message start a trace of their own or continue the
/// message's; see `messaging`.)
#[derive(Debug, Clone)]
struct WorkersUnsampled(Sampler);

impl ShouldSample for WorkersUnsampled {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        span_kind: &opentelemetry::trace::SpanKind,
        attributes: &[opentelemetry::KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        if WORKER_SPANS.contains(&name) {
            return opentelemetry_sdk::trace::SamplingResult {
                decision: opentelemetry_sdk::trace::SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: Default::default(),
            };
        }
        self.0
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// Adds the current span's `trace_id` and `span_id` to a log line: as the first fields of a
/// JSON object, or at the start of a text line.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
    /// Where to ask the OpenTelemetry layer for the span's ids.
    registered: Registered,
}

/// The dispatcher the process's layers were registered with, kept for [`WithTraceIds`]: a
/// formatter gets the span a log line is written in, but not the layers that know its trace.
#[derive(Clone, Default)]
struct Registered(Arc<OnceLock<WeakDispatch>>);

impl Registered {
    /// The trace and span ids of span `id`, if it is traced.
    fn span_context(&self, id: &tracing::span::Id) -> Option<SpanContext> {
        let dispatch = self.0.get()?.upgrade()?;
        let context = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = context.span().span_context().clone();
        span.is_valid().then_some(span)
    }
}

impl<S: tracing::Subscriber> Layer<S> for Registered {
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let span = ctx
            .lookup_current()
            .and_then(|current| self.registered.span_context(&current.id()));
        let Some(span) = span else {
            return self.inner.format_event(ctx, writer, event);
        };
        let (trace_id, span_id) = (span.trace_id(), span.span_id());
        if self.json {
            let mut line = String::new();
            self.inner
                .format_event(ctx, Writer::new(&mut line), event)?;
            match line.strip_prefix('{') {
                Some(rest) => write!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
                ),
                None => writer.write_str(&line),
            }
        } else {
            // Written first, so the formatter's colours and line end stay as they are.
            write!(writer, "trace_id={trace_id} span_id={span_id} ")?;
            self.inner.format_event(ctx, writer, event)
        }
    }
}

/// Makes `span` continue the W3C trace in `traceparent`; a missing or malformed value leaves
/// it a root (or a child of the current span). Call before the span is first entered.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if let Some(parent) = remote_context(traceparent) {
        let _ = span.set_parent(parent);
    }
}

/// Renames `span` in its trace, also after it started (`otel.name` set later is ignored then).
pub fn rename(span: &Span, name: String) {
    span.context().span().update_name(name);
}

/// Links `span` to the trace in `traceparent` (work done for several traces at once).
pub fn link_to(span: &Span, traceparent: &str) {
    if let Some(parent) = remote_context(Some(traceparent)) {
        span.add_link(parent.span().span_context().clone());
    }
}

/// The W3C `traceparent` of `span`, if it is traced: written here as the propagator writes it
/// (version 00, only the sampled flag), without its map of headers, as every request needs it.
pub fn traceparent_of(span: &Span) -> Option<String> {
    let context = span.context();
    let ids = context.span().span_context().clone();
    ids.is_valid().then(|| {
        let flags = ids.trace_flags() & TraceFlags::SAMPLED;
        format!(
            "00-{}-{}-{:02x}",
            ids.trace_id(),
            ids.span_id(),
            flags.to_u8()
        )
    })
}

/// The `traceparent` of the current span, if it is traced.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

fn remote_context(traceparent: Option<&str>) -> Option<Context> {
    let traceparent = traceparent?;
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_json_log_line_inside_a_span_names_its_trace_and_span() {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = lines.clone();
        let provider = SdkTracerProvider::builder().build();
        let registered = Registered::default();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(WithTraceIds {
                        inner: tracing_subscriber::fmt::format().json(),
                        json: true,
                        registered: registered.clone(),
                    })
                    .with_writer(move || SharedBuffer(sink.clone())),
            )
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("test"))
                    .with_context_activation(false),
            )
            .with(registered);
        let expected = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::info!(order = 7, "inside");
            let context = span.context();
            let ids = context.span().span_context().clone();
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["trace_id"], expected.0.as_str(), "{}", lines[1]);
        assert_eq!(lines[1]["span_id"], expected.1.as_str());
        assert_eq!(lines[1]["fields"]["order"], 7);
    }

    struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_traceparent_is_written_as_the_w3c_propagator_writes_it() {
        let _telemetry = init("off", "test");
        let span = tracing::info_span!("work");
        continue_trace(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let mut carrier = std::collections::HashMap::new();
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        assert_eq!(traceparent_of(&span), carrier.remove("traceparent"));
        assert_eq!(traceparent_of(&tracing::Span::none()), None);
    }

    #[test]
    fn a_span_continues_the_trace_it_is_given_and_hands_on_its_own_id() {
        let telemetry = init("off", "test");
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = tracing::info_span!("work");
        continue_trace(&span, Some(parent));
        let own = traceparent_of(&span).expect("traced");
        assert!(
            own.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{own}"
        );
        assert_ne!(own, parent, "the span's own id is handed on");
        assert!(own.ends_with("-01"), "sampled, as its parent: {own}");
        let root = tracing::info_span!("root");
        let root = traceparent_of(&root).expect("traced");
        assert!(root.ends_with("-01"), "a new trace is sampled: {root}");

        // Garbage starts a new trace instead of failing.
        let fresh = tracing::info_span!("work");
        continue_trace(&fresh, Some("not a traceparent"));
        let fresh = traceparent_of(&fresh).expect("traced");
        assert!(!fresh.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(!telemetry.exporting());

        // Worker spans stay out of traces.
        let worker = tracing::info_span!("relay");
        let inside = worker.in_scope(|| tracing::info_span!(parent: None, "message"));
        assert!(
            traceparent_of(&worker).is_none_or(|t| t.ends_with("-00")),
            "a worker span is not sampled"
        );
        assert!(traceparent_of(&inside).expect("traced").ends_with("-01"));
    }
}
