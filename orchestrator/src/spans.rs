//! The spans the orchestrator records in a run's trace (`run {flow}` when the run ends,
//! `dispatch {step}` per step attempt); see [`rpaflow_core::telemetry::run_trace`]. Without a
//! trace exporter they cost a no-op tracer call.

use std::time::SystemTime;

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
