//! Conversions between the orchestrator's types and the `rpaflow.v1` messages, in one place.
//!
//! Flows are kept under full names ([`rpaflow_core::namespace`]); a client sees a flow's own
//! name, and its namespace where a message has a field for it.

use rpaflow_core::namespace;
use rpaflow_proto::v1 as pb;
use serde_json::Value as Json;

use crate::orchestrator::FlowView;
use crate::state::{ErrorInfo, EventKind, RunEvent, RunState, RunStatus, StepStatus};
use crate::store::{PendingApproval, RunSummary};
use crate::triggers::schedule::ScheduleView;

pub fn run_status(status: RunStatus) -> pb::RunStatus {
    match status {
        RunStatus::Queued => pb::RunStatus::Queued,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::Succeeded => pb::RunStatus::Succeeded,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
    }
}

pub fn step_status(status: StepStatus) -> pb::StepStatus {
    match status {
        StepStatus::Pending => pb::StepStatus::Pending,
        StepStatus::Running => pb::StepStatus::Running,
        StepStatus::WaitingRetry => pb::StepStatus::WaitingRetry,
        StepStatus::WaitingApproval => pb::StepStatus::WaitingApproval,
        StepStatus::Succeeded => pb::StepStatus::Succeeded,
        StepStatus::Failed => pb::StepStatus::Failed,
        StepStatus::Skipped => pb::StepStatus::Skipped,
        StepStatus::Cancelled => pb::StepStatus::Cancelled,
    }
}

fn error(e: &ErrorInfo) -> pb::StepError {
    pb::StepError {
        code: e.code.clone(),
        message: e.message.clone(),
        retryable: e.retryable,
    }
}

fn json_text(v: Option<&Json>) -> String {
    v.map(ToString::to_string).unwrap_or_default()
}

pub fn run(state: &RunState) -> pb::Run {
    pb::Run {
        run_id: state.run_id.clone(),
        flow: local(&state.flow.name),
        namespace: namespace::of(&state.flow.name).to_owned(),
        flow_version: state.flow_version,
        status: run_status(state.status) as i32,
        inputs_json: state.inputs.to_string(),
        outputs_json: json_text(state.outputs.as_ref()),
        error: state.error.as_ref().map(error),
        created_at_ms: state.created_at_ms,
        updated_at_ms: state.updated_at_ms,
        idempotency_key: state.idempotency_key.clone(),
        trigger: state.trigger.clone(),
        steps: state
            .flow
            .steps
            .iter()
            .zip(&state.steps)
            .map(|(def, st)| pb::StepRun {
                step_id: def.id.clone(),
                status: step_status(st.display_status()) as i32,
                attempt: st.attempt(),
                output_json: json_text(st.output.as_ref()),
                error: st
                    .error
                    .as_ref()
                    .or_else(|| st.units.iter().rev().find_map(|u| u.error.as_ref()))
                    .map(error),
                items_total: st.items.as_ref().map_or(0, |i| i.len() as u32),
                items_done: st
                    .units
                    .iter()
                    .filter(|u| u.output.is_some() && st.items.is_some())
                    .count() as u32,
                started_at_ms: st.started_at_ms.unwrap_or(0),
                finished_at_ms: st.finished_at_ms.unwrap_or(0),
            })
            .collect(),
    }
}

pub fn schedule(view: &ScheduleView) -> pb::ScheduleInfo {
    pb::ScheduleInfo {
        flow: local(&view.flow),
        trigger: view.trigger.clone(),
        cron: view.cron.clone(),
        timezone: view.timezone.clone(),
        paused: view.paused,
        next_fire_ms: view.next_fire_ms.clone(),
        last_fire_ms: view.last_fire_ms.unwrap_or(0),
    }
}

pub fn run_summary(summary: &RunSummary) -> pb::Run {
    pb::Run {
        run_id: summary.run_id.clone(),
        flow: local(&summary.flow),
        namespace: namespace::of(&summary.flow).to_owned(),
        flow_version: summary.version,
        status: run_status(summary.status()) as i32,
        error: summary.error.as_ref().map(error),
        created_at_ms: summary.created_at_ms,
        updated_at_ms: summary.updated_at_ms,
        idempotency_key: summary.idempotency_key.clone(),
        trigger: summary.trigger.clone(),
        ..Default::default()
    }
}

pub fn flow(view: &FlowView) -> pb::Flow {
    pb::Flow {
        name: local(&view.record.name),
        namespace: namespace::of(&view.record.name).to_owned(),
        version: view.record.version,
        source: view.record.source.clone(),
        definition: Some(view.flow.as_ref().into()),
        created_at_ms: view.record.created_at_ms,
        versions: view.versions.clone(),
    }
}

/// A run event for clients, with a one-line human description.
pub fn event(run_id: &str, e: &RunEvent) -> pb::RunEvent {
    let (item, attempt) = e.kind.item_attempt();
    let status = match &e.kind {
        EventKind::RunSucceeded { .. } => RunStatus::Succeeded,
        EventKind::RunFailed { .. } => RunStatus::Failed,
        EventKind::RunCancelled { .. } => RunStatus::Cancelled,
        EventKind::RunQueued { .. } => RunStatus::Queued,
        _ => RunStatus::Running,
    };
    pb::RunEvent {
        run_id: run_id.to_owned(),
        seq: e.seq,
        at_ms: e.at_ms,
        kind: e.kind.name().to_owned(),
        step_id: e.kind.step().unwrap_or_default().to_owned(),
        item,
        attempt,
        message: describe(&e.kind),
        detail_json: serde_json::to_string(&e.kind).unwrap_or_default(),
        run_status: run_status(status) as i32,
    }
}

fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::RunStarted(start) => {
            format!("run of {} v{} started", local(&start.flow), start.version)
        }
        EventKind::RunQueued { start, reason } => {
            format!(
                "run of {} v{} queued: {reason}",
                local(&start.flow),
                start.version
            )
        }
        EventKind::RunDequeued { waited_ms } => format!(
            "run left the queue after {:.1}s and started",
            *waited_ms as f64 / 1000.0
        ),
        EventKind::StepSkipped { reason, .. } => format!("skipped: {reason}"),
        EventKind::StepExpanded { items, .. } => format!("{} items", items.len()),
        EventKind::TaskDispatched { .. } => "dispatched".into(),
        EventKind::TaskRedispatched { .. } => "dispatched again after a restart".into(),
        EventKind::TaskSucceeded { .. } => "succeeded".into(),
        EventKind::TaskFailed { error, .. } => {
            format!("failed: {} ({})", error.message, error.code)
        }
        EventKind::RetryScheduled { due_ms, .. } => {
            let wait = (*due_ms - rpaflow_core::time::now_ms()).max(0);
            format!("retry in {:.1}s", wait as f64 / 1000.0)
        }
        EventKind::ApprovalRequested { message, .. } => format!("waiting for approval: {message}"),
        EventKind::ApprovalAnswered {
            approved,
            by,
            comment,
            ..
        } => {
            let verdict = if *approved { "approved" } else { "rejected" };
            let by = if by.is_empty() {
                String::new()
            } else {
                format!(" by {by}")
            };
            let comment = if comment.is_empty() {
                String::new()
            } else {
                format!(": {comment}")
            };
            format!("{verdict}{by}{comment}")
        }
        EventKind::StepFinished { outcome, error, .. } => match error {
            Some(e) => format!(
                "step {}: {} ({})",
                serde_json::to_string(outcome)
                    .unwrap_or_default()
                    .trim_matches('"'),
                e.message,
                e.code
            ),
            None => format!(
                "step {}",
                serde_json::to_string(outcome)
                    .unwrap_or_default()
                    .trim_matches('"')
            ),
        },
        EventKind::CompensationStarted { compensation, .. } => {
            format!("compensating with {compensation}")
        }
        EventKind::RunCancelled { reason } => format!("run cancelled: {reason}"),
        EventKind::RunRetried { steps } => format!("run retried from {}", steps.join(", ")),
        EventKind::RunSucceeded { .. } => "run succeeded".into(),
        EventKind::RunFailed { error, .. } => {
            format!("run failed: {} ({})", error.message, error.code)
        }
    }
}

pub fn approval(a: &PendingApproval) -> pb::Approval {
    pb::Approval {
        run_id: a.run_id.clone(),
        flow: local(&a.flow),
        flow_version: a.version,
        step_id: a.step.clone(),
        message: a.message.clone(),
        requested_at_ms: a.requested_at_ms,
        deadline_ms: a.deadline_ms.unwrap_or(0),
        approver_roles: a.approver_roles.clone(),
        approver_names: a.approver_names.clone(),
    }
}

/// A flow's own name, from its full name.
fn local(full: &str) -> String {
    namespace::local(full).to_owned()
}
