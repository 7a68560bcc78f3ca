//! A run's trace. Its trace id is a function of the run id (see [`crate::trace_context::traceparent`]),
//! so every service, and an orchestrator after a restart, names the same trace without storing
//! anything. The orchestrator records two kinds of spans in it, with ids derived the same way:
//!
//! - `run {flow}` ([`RUN_SPAN`]): the root, recorded once when the run ends, from the run's
//!   creation to its end. An orchestrator that stops mid-run records none; the one that finishes
//!   the run does, with the run's original start time.
//! - `dispatch {step}` ([`DISPATCH_SPAN`]), PRODUCER, child of the run span: one per step
//!   attempt sent to a queue. Its span id is the one in the task's `traceparent`, so the worker's
//!   `step {kind}` span is its child.
//! - the start of the run ([`record_start`]), child of the run span: the gRPC server span of the
//!   `StartRun` call, the webhook's HTTP server span, or the Kafka trigger's. A caller's own
//!   trace context (a `traceparent` on the call, the request or the message) becomes a span
//!   link: the run keeps its own trace, and the caller's trace leads to it.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use super::TRACER_NAME;

/// The name prefix of a run's root span: `run {flow}`.
pub const RUN_SPAN: &str = "run";
/// The name prefix of a step attempt's dispatch span: `dispatch {step}`.
pub const DISPATCH_SPAN: &str = "dispatch";

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether traces are exported in this process: callers skip preparing spans otherwise.
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

pub(super) fn set_enabled() {
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The run's trace id.
pub fn trace_id(run_id: &str) -> TraceId {
    parse_traceparent(&crate::trace_context::traceparent(run_id, "", None, 0))
        .map_or(TraceId::INVALID, |cx| cx.trace_id())
}

/// The span id of the run's root span (the same in every orchestrator that runs it).
fn run_span_id(run_id: &str) -> SpanId {
    parse_traceparent(&crate::trace_context::traceparent(run_id, "", None, 0))
        .map_or(SpanId::INVALID, |cx| cx.span_id())
}

/// A W3C `traceparent` (`00-{trace}-{span}-{flags}`) as a remote span context.
pub fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let mut parts = text.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let cx = SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    cx.is_valid().then_some(cx)
}

/// The `traceparent` naming `cx` as the parent.
pub fn format_traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// The context a task's `traceparent` header names, to continue its trace.
pub fn remote_context(traceparent: Option<&str>) -> Option<Context> {
    let cx = parse_traceparent(traceparent?)?;
    Some(Context::new().with_remote_span_context(cx))
}

/// Makes `span` (a `tracing` span) continue the trace of `traceparent`, when there is one and
/// traces are exported.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !enabled() {
        return;
    }
    if let Some(cx) = remote_context(traceparent) {
        // An error means the span is disabled (filtered out): nothing to continue.
        let _ = span.set_parent(cx);
    }
}

/// Marks `span` failed: `error.type` (the error code) and an ERROR status, as OTel's
/// conventions say. The span must declare both fields (`tracing::field::Empty`).
pub fn record_error(span: &tracing::Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}

/// The `traceparent` that names `span` (a `tracing` span) as the parent of what it calls;
/// none when traces are not exported.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let own = cx.span().span_context().clone();
    own.is_valid().then(|| format_traceparent(&own))
}

/// Records consecutive child spans of `parent` (a `tracing` span) from `start`, one per
/// `(name, duration)`: the phases of work done elsewhere (an engine thread) and timed there.
pub fn record_phases(parent: &tracing::Span, start: SystemTime, phases: &[(&str, Duration)]) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !enabled() {
        return;
    }
    let parent = parent.context();
    if !parent.span().span_context().is_valid() {
        return;
    }
    let tracer = opentelemetry::global::tracer(TRACER_NAME);
    let mut at = start;
    for (name, duration) in phases {
        let end = at + *duration;
        let mut span = tracer
            .span_builder((*name).to_owned())
            .with_kind(SpanKind::Internal)
            .with_start_time(at)
            .start_with_context(&tracer, &parent);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, end);
        at = end;
    }
}

/// What the run span says about a run.
#[derive(Debug)]
pub struct RunSpan<'a> {
    pub run_id: &'a str,
    pub flow: &'a str,
    pub flow_version: u32,
    pub created_at_ms: i64,
    /// `succeeded`, `failed`, `cancelled`.
    pub outcome: &'a str,
    /// The error code of a failed run.
    pub error: Option<&'a str>,
}

/// Records the run's root span, from its creation until now.
pub fn record_run(run: &RunSpan<'_>) {
    let tracer = opentelemetry::global::tracer(TRACER_NAME);
    let start = UNIX_EPOCH + Duration::from_millis(u64::try_from(run.created_at_ms).unwrap_or(0));
    let mut attributes = vec![
        KeyValue::new("rpaflow.run.id", run.run_id.to_owned()),
        KeyValue::new("rpaflow.flow.name", run.flow.to_owned()),
        KeyValue::new("rpaflow.flow.version", i64::from(run.flow_version)),
        KeyValue::new("rpaflow.run.outcome", run.outcome.to_owned()),
    ];
    if let Some(code) = run.error {
        attributes.push(KeyValue::new("error.type", code.to_owned()));
    }
    let builder = tracer
        .span_builder(format!("{RUN_SPAN} {}", run.flow))
        .with_kind(SpanKind::Internal)
        .with_start_time(start)
        .with_attributes(attributes);
    let span = with_ids(trace_id(run.run_id), run_span_id(run.run_id), || {
        builder.start_with_context(&tracer, &Context::new())
    });
    let mut span = span;
    if let Some(code) = run.error {
        opentelemetry::trace::Span::set_status(&mut span, Status::error(code.to_owned()));
    }
    opentelemetry::trace::Span::end_with_timestamp(&mut span, SystemTime::now());
}

/// What the dispatch span says about a step attempt.
#[derive(Debug)]
pub struct Dispatch<'a> {
    pub run_id: &'a str,
    pub step: &'a str,
    pub item: Option<u32>,
    pub attempt: u32,
    pub kind: &'a str,
    pub queue: &'a str,
    /// The task's `traceparent`: its span id becomes the dispatch span's.
    pub traceparent: &'a str,
    /// When the task was handed to the bus.
    pub started: SystemTime,
    /// Why the bus refused it, if it did.
    pub error: Option<&'a str>,
}

/// Records the dispatch of a step attempt, as a child of the run span.
pub fn record_dispatch(dispatch: &Dispatch<'_>) {
    let Some(own) = parse_traceparent(dispatch.traceparent) else {
        return;
    };
    let tracer = opentelemetry::global::tracer(TRACER_NAME);
    let parent = SpanContext::new(
        own.trace_id(),
        run_span_id(dispatch.run_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let mut attributes = vec![
        KeyValue::new("rpaflow.run.id", dispatch.run_id.to_owned()),
        KeyValue::new("rpaflow.step.id", dispatch.step.to_owned()),
        KeyValue::new("rpaflow.step.kind", dispatch.kind.to_owned()),
        KeyValue::new("rpaflow.step.attempt", i64::from(dispatch.attempt)),
        // The task message is created here; the bus sends it (Kafka's `send` span).
        KeyValue::new("messaging.operation.type", "create"),
        KeyValue::new("messaging.destination.name", dispatch.queue.to_owned()),
    ];
    if let Some(item) = dispatch.item {
        attributes.push(KeyValue::new("rpaflow.step.item", i64::from(item)));
    }
    let builder = tracer
        .span_builder(format!("{DISPATCH_SPAN} {}", dispatch.step))
        .with_kind(SpanKind::Producer)
        .with_start_time(dispatch.started)
        .with_attributes(attributes);
    let mut span = with_ids(own.trace_id(), own.span_id(), || {
        builder.start_with_context(&tracer, &Context::new().with_remote_span_context(parent))
    });
    if let Some(error) = dispatch.error {
        opentelemetry::trace::Span::set_attribute(
            &mut span,
            KeyValue::new("error.type", "dispatch_failed"),
        );
        opentelemetry::trace::Span::set_status(&mut span, Status::error(error.to_owned()));
    }
    opentelemetry::trace::Span::end(&mut span);
}

/// How a run was started, for its start span.
#[derive(Debug)]
pub struct Start<'a> {
    pub run_id: &'a str,
    /// The span's name: `rpaflow.v1.FlowService/StartRun`, `POST /hooks/{namespace}/{flow}`,
    /// `process {topic}`.
    pub name: String,
    pub kind: SpanKind,
    /// When the call or message arrived.
    pub started: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// The caller's trace context, linked from the span.
    pub caller: Option<&'a str>,
}

/// Records how the run was started, as a child of the run span; does nothing when traces are
/// not exported.
pub fn record_start(start: Start<'_>) {
    if !enabled() {
        return;
    }
    let trace = trace_id(start.run_id);
    if trace == TraceId::INVALID {
        return;
    }
    let tracer = opentelemetry::global::tracer(TRACER_NAME);
    let parent = SpanContext::new(
        trace,
        run_span_id(start.run_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let mut attributes = start.attributes;
    attributes.push(KeyValue::new("rpaflow.run.id", start.run_id.to_owned()));
    let links = start
        .caller
        .and_then(parse_traceparent)
        .map(|caller| vec![opentelemetry::trace::Link::with_context(caller)])
        .unwrap_or_default();
    let mut span = tracer
        .span_builder(start.name)
        .with_kind(start.kind)
        .with_start_time(start.started)
        .with_attributes(attributes)
        .with_links(links)
        .start_with_context(&tracer, &Context::new().with_remote_span_context(parent));
    opentelemetry::trace::Span::end(&mut span);
}

thread_local! {
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
    static NEXT_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// Runs `start` (which starts one span) with the ids that span gets.
fn with_ids<T>(trace: TraceId, span: SpanId, start: impl FnOnce() -> T) -> T {
    NEXT_TRACE_ID.with(|c| c.set(Some(trace)));
    NEXT_SPAN_ID.with(|c| c.set(Some(span)));
    let started = start();
    NEXT_TRACE_ID.with(|c| c.set(None));
    NEXT_SPAN_ID.with(|c| c.set(None));
    started
}

/// Random ids, except for the spans the orchestrator records with ids derived from the run.
#[derive(Debug, Default)]
pub(super) struct RunIdGenerator {
    random: RandomIdGenerator,
}

impl IdGenerator for RunIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_the_run_id() {
        let run = "01935f2a-7c1e-7b44-9a55-0d3c1f2e4b6a";
        assert_eq!(
            trace_id(run).to_string(),
            "01935f2a7c1e7b449a550d3c1f2e4b6a"
        );
        let task = crate::trace_context::traceparent(run, "fetch", Some(2), 3);
        let cx = parse_traceparent(&task).unwrap();
        assert_eq!(cx.trace_id(), trace_id(run));
        assert_ne!(cx.span_id(), run_span_id(run), "a step is not the run");
        assert!(cx.is_remote() && cx.is_sampled());
        assert_eq!(format_traceparent(&cx), task);
    }

    #[test]
    fn bad_traceparents_are_ignored() {
        for bad in [
            "",
            "00-0-0-01",
            "01-01935f2a7c1e7b449a550d3c1f2e4b6a-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-01935f2a7c1e7b449a550d3c1f2e4b6a-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn overridden_ids_are_used_once() {
        let generator = RunIdGenerator::default();
        let (trace, span) = (TraceId::from(7_u128), SpanId::from(9_u64));
        let (t, s) = with_ids(trace, span, || {
            (generator.new_trace_id(), generator.new_span_id())
        });
        assert_eq!((t, s), (trace, span));
        assert_ne!(generator.new_span_id(), span);
        assert_ne!(generator.new_trace_id(), trace);
    }
}
