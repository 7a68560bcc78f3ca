//! Moving a run forward: finishing steps, starting ready ones, and ending the run.

use rpaflow_core::expr;
use rpaflow_core::flow::OnFailure;
use serde_json::Value as Json;

use super::Tx;
use super::dispatch::{dispatch, start_step};
use crate::state::{ErrorInfo, EventKind, RunStatus, StepOutcome, StepStatus, UnitStatus};

/// Moves the run forward as far as it can go without outside input.
pub(super) fn advance(tx: &mut Tx<'_>) {
    loop {
        if tx.state.status != RunStatus::Running {
            return;
        }
        let before = tx.events.len();
        finish_steps(tx);
        if tx.state.status != RunStatus::Running {
            return;
        }
        if tx.state.compensating.is_none() {
            start_ready_steps(tx);
            fill_for_each(tx);
        }
        // Starting a step can end the run (a failing `if`, `for_each` or `with` under
        // `on_failure: fail`); a finished run is not finished again.
        if tx.state.status != RunStatus::Running {
            return;
        }
        finish_run(tx);
        if tx.events.len() == before {
            return;
        }
    }
}

/// Steps whose units are all done (or one failed for good) finish.
fn finish_steps(tx: &mut Tx<'_>) {
    for index in 0..tx.state.steps.len() {
        let st = &tx.state.steps[index];
        if st.status != StepStatus::Running || st.units.is_empty() {
            continue;
        }
        if let Some((u, unit)) = st
            .units
            .iter()
            .enumerate()
            .find(|(_, u)| u.status == UnitStatus::Failed)
        {
            let mut error = unit
                .error
                .clone()
                .unwrap_or_else(|| ErrorInfo::new("failed", "step failed", false));
            if st.items.is_some() {
                error.message = format!("item {u}: {}", error.message);
            }
            finish_failed(tx, index, error);
            if tx.state.status != RunStatus::Running {
                return;
            }
            continue;
        }
        if st.units.iter().all(|u| u.status == UnitStatus::Succeeded) {
            let output = match &st.items {
                Some(_) => Json::Array(
                    st.units
                        .iter()
                        .map(|u| u.output.clone().unwrap_or(Json::Null))
                        .collect(),
                ),
                None => st.units[0].output.clone().unwrap_or(Json::Null),
            };
            let step = tx.state.flow.steps[index].id.clone();
            tx.emit(EventKind::StepFinished {
                step,
                outcome: StepOutcome::Succeeded,
                output: Some(output),
                error: None,
            });
        }
    }
}

/// A step failed for good: its `on_failure` decides what the run does.
pub(super) fn finish_failed(tx: &mut Tx<'_>, index: usize, error: ErrorInfo) {
    let def = tx.state.flow.steps[index].clone();
    tx.emit(EventKind::StepFinished {
        step: def.id.clone(),
        outcome: StepOutcome::Failed,
        output: None,
        error: Some(error.clone()),
    });
    if def.compensation {
        // A compensation that fails still ends the compensation; the run fails either way.
        return;
    }
    match &def.on_failure {
        OnFailure::Continue => {}
        OnFailure::Fail => tx.emit(EventKind::RunFailed {
            error,
            step: Some(def.id),
        }),
        OnFailure::Compensate(target) => {
            if tx.state.compensating.is_some() {
                tx.emit(EventKind::RunFailed {
                    error,
                    step: Some(def.id),
                });
                return;
            }
            tx.emit(EventKind::CompensationStarted {
                failed_step: def.id.clone(),
                compensation: target.clone(),
            });
            if let Some(c) = tx.state.flow.step_index(target) {
                start_step(tx, c);
            }
        }
    }
}

fn start_ready_steps(tx: &mut Tx<'_>) {
    for index in 0..tx.state.steps.len() {
        if tx.state.status != RunStatus::Running || tx.state.compensating.is_some() {
            return;
        }
        let def = &tx.state.flow.steps[index];
        if def.compensation || tx.state.steps[index].status != StepStatus::Pending {
            continue;
        }
        let ready = def.needs.iter().all(|need| {
            tx.state
                .step_state(need)
                .is_some_and(|st| st.status.is_finished())
        });
        if ready {
            start_step(tx, index);
        }
    }
}
/// Dispatches pending items of running `for_each` steps up to their concurrency.
fn fill_for_each(tx: &mut Tx<'_>) {
    for index in 0..tx.state.steps.len() {
        let Some(fe) = tx.state.flow.steps[index].for_each.clone() else {
            continue;
        };
        loop {
            let st = &tx.state.steps[index];
            if st.status != StepStatus::Running || tx.state.status != RunStatus::Running {
                break;
            }
            let active = st.units.iter().filter(|u| u.is_active()).count();
            let concurrency = (fe.concurrency as usize).min(tx.state.max_for_each_concurrency);
            if active >= concurrency || st.units.iter().any(|u| u.status == UnitStatus::Failed) {
                break;
            }
            let Some(next) = st
                .units
                .iter()
                .position(|u| u.status == UnitStatus::Pending)
            else {
                break;
            };
            dispatch(tx, index, Some(next as u32));
        }
    }
}
/// Ends the run when nothing is left to do, or when a compensation has finished.
fn finish_run(tx: &mut Tx<'_>) {
    if let Some((failed, comp)) = tx.state.compensating.clone() {
        let done = tx
            .state
            .step_state(&comp)
            .is_some_and(|st| st.status.is_finished());
        if done {
            let error = tx
                .state
                .step_state(&failed)
                .and_then(|st| st.error.clone())
                .unwrap_or_else(|| ErrorInfo::new("failed", "step failed", false));
            tx.emit(EventKind::RunFailed {
                error,
                step: Some(failed),
            });
        }
        return;
    }
    let all_done = tx
        .state
        .flow
        .steps
        .iter()
        .zip(&tx.state.steps)
        .all(|(def, st)| def.compensation || st.status.is_finished());
    if !all_done {
        return;
    }
    if tx.state.flow.outputs.is_empty() {
        tx.emit(EventKind::RunSucceeded {
            outputs: Json::Object(serde_json::Map::new()),
        });
        return;
    }
    let ctx = tx.context();
    let outputs: Result<serde_json::Map<String, Json>, _> = tx
        .state
        .flow
        .outputs
        .iter()
        .map(|(k, v)| expr::render(v, &ctx).map(|r| (k.clone(), r)))
        .collect();
    match outputs {
        Ok(outputs) => tx.emit(EventKind::RunSucceeded {
            outputs: Json::Object(outputs),
        }),
        Err(e) => tx.emit(EventKind::RunFailed {
            error: ErrorInfo::new(
                "expr",
                format!("rendering `outputs` failed: {}", e.message),
                false,
            ),
            step: None,
        }),
    }
}
