//! `subflow` steps: a step that runs another registered flow and waits for its outcome.
//!
//! The step's attempt starts the child run with the idempotency key `parent/step[/item]/attempt`,
//! so handing the attempt out again (after a restart) finds the same child instead of starting a
//! second one. The child records its parent in its `run_started` event; when it finishes, its
//! outcome is delivered to the parent as the attempt's result (outputs, or `subflow_failed`). A
//! child that had already finished when the attempt was handed out again answers at once.

use std::sync::Arc;

use serde_json::Value as Json;
use tracing::warn;

use crate::actors::Deliver;
use crate::orchestrator::{Engine, OrchestratorHandle, StartRun};
use crate::state::{ErrorInfo, Input, ParentRef, RunState, RunStatus, TaskSpec};

/// Error code of a subflow that could not start or did not succeed.
pub const SUBFLOW_FAILED: &str = "subflow_failed";

fn child_key(parent: &ParentRef) -> String {
    match parent.item {
        Some(item) => format!(
            "{}/{}/{item}/{}",
            parent.run_id, parent.step, parent.attempt
        ),
        None => format!("{}/{}/{}", parent.run_id, parent.step, parent.attempt),
    }
}

/// Starts (or finds) the child run of a subflow attempt, of a flow of the parent's namespace.
pub(crate) async fn start_child(
    shared: Arc<Engine>,
    namespace: String,
    parent_run: String,
    spec: TaskSpec,
) {
    let parent = ParentRef {
        run_id: parent_run,
        step: spec.step.clone(),
        item: spec.item,
        attempt: spec.attempt,
    };
    let flow = spec
        .input
        .get("flow")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_owned();
    let version = spec
        .input
        .get("version")
        .and_then(Json::as_u64)
        .unwrap_or(0) as u32;
    let inputs = match spec.input.get("inputs") {
        None | Some(Json::Null) => serde_json::Map::new(),
        Some(Json::Object(map)) => map.clone(),
        Some(_) => {
            let error = ErrorInfo::new(
                "invalid_input",
                "`inputs` of a subflow step must be a mapping",
                false,
            );
            return deliver(&shared, &parent, Err(error));
        }
    };
    // A flow may start itself through its subflows: bound how deep runs nest, since children
    // are not counted against max_active_runs (their parents were).
    let max = shared.config.max_subflow_depth;
    if nesting(&shared, &parent.run_id, max).await > max {
        let error = ErrorInfo::new(
            SUBFLOW_FAILED,
            format!(
                "cannot start flow `{flow}`: subflows nest deeper than the limit of {max} \
                 (orchestrator.max_subflow_depth)"
            ),
            false,
        );
        return deliver(&shared, &parent, Err(error));
    }
    // The name is the flow's own name in the parent's namespace; a name that would reach into
    // another namespace is a flow that does not exist.
    let Some(full) = rpaflow_core::namespace::full_name(&namespace, &flow) else {
        let error = ErrorInfo::new(
            SUBFLOW_FAILED,
            format!("cannot start flow `{flow}`: no flow named `{flow}`"),
            false,
        );
        return deliver(&shared, &parent, Err(error));
    };
    let req = StartRun {
        flow: full,
        version,
        inputs,
        idempotency_key: child_key(&parent),
        parent: Some(parent.clone()),
        ..StartRun::default()
    };
    let handle = OrchestratorHandle::from_shared(shared.clone());
    match handle.start_run(req).await {
        Ok((child, _)) if child.status.is_finished() => {
            if let Some(parent) = &child.parent {
                notify_parent(&shared, parent, &child);
            }
        }
        Ok(_) => {}
        Err(err) => {
            let retryable = matches!(
                err,
                crate::Error::NotRunning(_) | crate::Error::Storage { .. }
            );
            let error = ErrorInfo::new(
                SUBFLOW_FAILED,
                format!("cannot start flow `{flow}`: {err}"),
                retryable,
            );
            deliver(&shared, &parent, Err(error));
        }
    }
}

/// How many runs a child of `run_id` would have above it (`run_id`, its parent, ...), counted
/// by walking up one parent at a time, and no further than `limit + 1`.
async fn nesting(shared: &Arc<Engine>, run_id: &str, limit: usize) -> usize {
    let handle = OrchestratorHandle::from_shared(shared.clone());
    let mut depth = 1;
    let mut next = handle.run(run_id).await.ok().and_then(|r| r.parent);
    while let Some(parent) = next {
        depth += 1;
        if depth > limit {
            break;
        }
        next = handle.run(&parent.run_id).await.ok().and_then(|r| r.parent);
    }
    depth
}

/// Delivers a finished child's outcome to its parent.
pub(crate) fn notify_parent(shared: &Engine, parent: &ParentRef, child: &RunState) {
    let outcome = match child.status {
        RunStatus::Succeeded => Ok(child.outputs.clone().unwrap_or(Json::Null)),
        RunStatus::Failed => {
            let why = child.error.as_ref().map_or_else(
                || "failed".to_owned(),
                |e| format!("{} ({})", e.message, e.code),
            );
            Err(ErrorInfo::new(
                SUBFLOW_FAILED,
                format!(
                    "run {} of {} failed: {why}",
                    child.run_id,
                    rpaflow_core::namespace::local(&child.flow.name)
                ),
                false,
            ))
        }
        RunStatus::Cancelled => Err(ErrorInfo::new(
            SUBFLOW_FAILED,
            format!(
                "run {} of {} was cancelled",
                child.run_id,
                rpaflow_core::namespace::local(&child.flow.name)
            ),
            false,
        )),
        RunStatus::Running | RunStatus::Queued => return,
    };
    deliver(shared, parent, outcome);
}

fn deliver(shared: &Engine, parent: &ParentRef, outcome: Result<Json, ErrorInfo>) {
    // A parent that is no longer active (finished, cancelled) has no use for the result.
    if let Some(addr) = shared.actor(&parent.run_id) {
        let input = Input::Result {
            step: parent.step.clone(),
            item: parent.item,
            attempt: parent.attempt,
            outcome,
        };
        addr.do_send(Deliver { input, ack: None });
    }
}

/// Cancels the children a cancelled or failed run still has running.
pub(crate) async fn cancel_children(shared: Arc<Engine>, parent: RunState) {
    let handle = OrchestratorHandle::from_shared(shared.clone());
    for (def, st) in parent.flow.steps.iter().zip(&parent.steps) {
        if def.uses != "subflow" {
            continue;
        }
        for (i, unit) in st.units.iter().enumerate() {
            let Some(flow) = unit
                .input
                .as_ref()
                .and_then(|input| input.get("flow"))
                .and_then(Json::as_str)
            else {
                continue;
            };
            let item = st.items.as_ref().map(|_| i as u32);
            let key = child_key(&ParentRef {
                run_id: parent.run_id.clone(),
                step: def.id.clone(),
                item,
                attempt: unit.attempt,
            });
            let Ok(Some(child)) = shared.store.run_for_key(flow, &key) else {
                continue;
            };
            if let Err(err) = handle.cancel(&child, "its parent run ended").await
                && !matches!(
                    err,
                    crate::Error::Rejected { .. } | crate::Error::FailedPrecondition(_)
                )
            {
                warn!(run_id = %parent.run_id, child = %child, error = %err, "cannot cancel a subflow run");
            }
        }
    }
}
