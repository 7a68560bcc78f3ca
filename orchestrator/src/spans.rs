//! The spans the orchestrator records in a run's trace (`run {flow}` when the run ends,
//! `dispatch {step}` per step attempt, and how the run was started); see
//! [`rpaflow_core::telemetry::run_trace`]. Without a trace exporter they cost a no-op tracer call.

use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use rpaflow_core::telemetry::run_trace;
use rpaflow_proto::v1 as pb;

use crate::state::{RunState, RunStatus};

/// Records the run's root span: from its creation (stored, so the same after a restart) until
/// now.
pub(crate) fn run_finished(state: &RunState, status: RunStatus) {
    if !run_trace::enabled() {
        return;
    }
    let error = match status {
        RunStatus::Failed => Some(
            state
                .error
                .as_ref()
                .map_or("failed", |error| error.code.as_str()),
        ),
        _ => None,
    };
    run_trace::record_run(&run_trace::RunSpan {
        run_id: &state.run_id,
        flow: &state.flow.name,
        flow_version: state.flow_version,
        created_at_ms: state.created_at_ms,
        outcome: status.name(),
        error,
    });
}

/// What started a run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Entry<'a> {
    /// A gRPC call: `StartRun`, `TriggerSchedule`.
    Grpc { method: &'static str },
    /// A webhook delivery, answered with `status`.
    Webhook { status: u16 },
    /// A message of a Kafka trigger's topic.
    Kafka {
        topic: &'a str,
        partition: i32,
        offset: i64,
    },
}

/// Records the start of run `run_id` (its gRPC server span, the webhook's HTTP server span or the
/// Kafka trigger's CONSUMER span) as a child of the run span, linked to `caller`, the trace
/// context the call or message came with. `created` is false when the call named a run that
/// existed already (the same idempotency key).
pub(crate) fn run_started(
    run_id: &str,
    entry: Entry<'_>,
    started: SystemTime,
    caller: Option<&str>,
    created: bool,
) {
    if !run_trace::enabled() {
        return;
    }
    let created = KeyValue::new("rpaflow.run.created", created);
    let (name, kind, attributes) = match entry {
        Entry::Grpc { method } => (
            format!("rpaflow.v1.FlowService/{method}"),
            SpanKind::Server,
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "rpaflow.v1.FlowService"),
                KeyValue::new("rpc.method", method),
                KeyValue::new("rpc.grpc.status_code", 0_i64),
                created,
            ],
        ),
        Entry::Webhook { status } => (
            format!("POST {}", crate::triggers::webhook::ROUTE),
            SpanKind::Server,
            vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", crate::triggers::webhook::ROUTE),
                KeyValue::new("http.response.status_code", i64::from(status)),
                created,
            ],
        ),
        Entry::Kafka {
            topic,
            partition,
            offset,
        } => (
            format!("process {topic}"),
            SpanKind::Consumer,
            vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", topic.to_owned()),
                KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                KeyValue::new("messaging.kafka.offset", offset),
                created,
            ],
        ),
    };
    run_trace::record_start(run_trace::Start {
        run_id,
        name,
        kind,
        started,
        attributes,
        caller,
    });
}

/// A step attempt on its way to the bus.
pub(crate) struct Dispatching {
    started: SystemTime,
    run_id: String,
    step: String,
    item: Option<u32>,
    attempt: u32,
    kind: String,
    queue: String,
    traceparent: String,
}

impl Dispatching {
    /// None when traces are off.
    pub(crate) fn start(task: &pb::Task) -> Option<Self> {
        if !run_trace::enabled() {
            return None;
        }
        Some(Self {
            started: SystemTime::now(),
            run_id: task.run_id.clone(),
            step: task.step_id.clone(),
            item: task.item,
            attempt: task.attempt,
            kind: task.kind.clone(),
            queue: task.queue.clone(),
            traceparent: task
                .headers
                .get(rpaflow_core::kafka::TRACEPARENT_HEADER)
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// Records the dispatch span, failed when the bus refused the task.
    pub(crate) fn end(self, error: Option<&dyn std::fmt::Display>) {
        let error = error.map(ToString::to_string);
        run_trace::record_dispatch(&run_trace::Dispatch {
            run_id: &self.run_id,
            step: &self.step,
            item: self.item,
            attempt: self.attempt,
            kind: &self.kind,
            queue: &self.queue,
            traceparent: &self.traceparent,
            started: self.started,
            error: error.as_deref(),
        });
    }
}
