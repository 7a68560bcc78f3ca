//! Results, timers, retries and deadlines.

use std::time::Duration;

use rpaflow_core::expr;
use rpaflow_core::flow::Step;
use serde_json::{Value as Json, json};

use super::advance::finish_failed;
use super::dispatch::dispatch;
use super::{Action, Timer, Tx, millis};
use crate::state::{ErrorInfo, EventKind, RunState, RunStatus, StepStatus, UnitStatus};

impl RunState {
    /// When the first of [`Self::pending_timers`] is due, if any.
    pub fn next_timer_ms(&self) -> Option<i64> {
        self.pending_timers()
            .iter()
            .filter_map(|action| match action {
                Action::SetTimer { at_ms, .. } => Some(*at_ms),
                _ => None,
            })
            .min()
    }

    /// Whether the run waits only for people: running, at least one approval asked, every other
    /// unfinished step waiting for the steps before it, no attempt out with a worker or a child
    /// run, no retry due, no compensation going on. Such a run needs nothing in memory until a
    /// person answers or an approval's deadline passes ([`Self::pending_timers`] says when).
    pub fn waits_only_for_people(&self) -> bool {
        self.status == RunStatus::Running
            && self.compensating.is_none()
            && self
                .steps
                .iter()
                .any(|st| st.status == StepStatus::WaitingApproval)
            && self.steps.iter().all(|st| {
                (matches!(st.status, StepStatus::Pending | StepStatus::WaitingApproval)
                    || st.status.is_finished())
                    && st.units.iter().all(|unit| {
                        !matches!(
                            unit.status,
                            UnitStatus::Dispatched { .. } | UnitStatus::RetryAt { .. }
                        )
                    })
            })
    }

    /// Timers a rebuilt run needs beyond its redispatches: retries due and approval deadlines.
    pub fn pending_timers(&self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.status != RunStatus::Running {
            return actions;
        }
        for (def, st) in self.flow.steps.iter().zip(&self.steps) {
            if let (StepStatus::WaitingApproval, Some(at)) = (st.status, st.approval_deadline_ms) {
                actions.push(Action::SetTimer {
                    at_ms: at,
                    timer: Timer::ApprovalDeadline {
                        step: def.id.clone(),
                    },
                });
            }
            for (i, unit) in st.units.iter().enumerate() {
                if let UnitStatus::RetryAt { at_ms } = unit.status {
                    let item = st.items.as_ref().map(|_| i as u32);
                    actions.push(Action::SetTimer {
                        at_ms,
                        timer: Timer::RetryDue {
                            step: def.id.clone(),
                            item,
                            attempt: unit.attempt,
                        },
                    });
                }
            }
        }
        actions
    }
}

pub(super) fn on_result(
    tx: &mut Tx<'_>,
    step: &str,
    item: Option<u32>,
    attempt: u32,
    outcome: Result<Json, ErrorInfo>,
) {
    if tx.state.status != RunStatus::Running {
        return;
    }
    let Some(index) = tx.state.flow.step_index(step) else {
        return;
    };
    let st = &tx.state.steps[index];
    let Some(u) = st.unit_index(item) else { return };
    let unit = &st.units[u];
    // One result per attempt: anything but the answer to the attempt that is out is stale.
    if !matches!(unit.status, UnitStatus::Dispatched { .. }) || unit.attempt != attempt {
        return;
    }
    let def = tx.state.flow.steps[index].clone();
    let outcome = outcome.and_then(|output| within_output_budget(tx.state, output));
    match outcome {
        Ok(output) => match def
            .until
            .as_deref()
            .map(|cond| check_until(tx, &def.id, cond, &output, item))
        {
            Some(Err(error)) => fail_attempt(tx, &def, item, attempt, error),
            _ => tx.emit(EventKind::TaskSucceeded {
                step: step.to_owned(),
                item,
                attempt,
                output,
            }),
        },
        Err(error) => fail_attempt(tx, &def, item, attempt, error),
    }
}

/// Ok when `until` holds for the output; the error to fail the attempt with otherwise.
fn check_until(
    tx: &mut Tx<'_>,
    step: &str,
    cond: &str,
    output: &Json,
    item: Option<u32>,
) -> Result<(), ErrorInfo> {
    let mut extra: Vec<(&str, Json)> = vec![("output", output.clone())];
    if let Some(i) = item {
        let value = tx
            .state
            .step_state(step)
            .and_then(|st| st.items.as_ref()?.get(i as usize).cloned());
        extra.push(("item", value.unwrap_or(Json::Null)));
        extra.push(("index", json!(i)));
    }
    let refs: Vec<(&str, &Json)> = extra.iter().map(|(k, v)| (*k, v)).collect();
    let ctx = tx.context().with(&refs);
    match expr::eval_bool(cond, &ctx) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ErrorInfo::new(
            "until",
            format!("`until` is false for this output: {cond}"),
            true,
        )),
        Err(e) => Err(ErrorInfo::new(
            "expr",
            format!("`until` failed: {}", e.message),
            false,
        )),
    }
}

/// Refuses an output that would take the run's outputs over `max_output_memory_bytes`.
fn within_output_budget(state: &RunState, output: Json) -> Result<Json, ErrorInfo> {
    let cost = crate::state::json_memory_bytes(&output);
    let total = state.output_memory_bytes.saturating_add(cost);
    if total > state.max_output_memory_bytes {
        return Err(ErrorInfo::new(
            "limit",
            format!(
                "the output would take about {cost} bytes of memory, and the run's outputs {total} \
                 bytes, over the limit of {} bytes (orchestrator.max_run_output_memory_bytes)",
                state.max_output_memory_bytes
            ),
            false,
        ));
    }
    Ok(output)
}

fn fail_attempt(tx: &mut Tx<'_>, def: &Step, item: Option<u32>, attempt: u32, error: ErrorInfo) {
    let round_start = tx
        .state
        .step_state(&def.id)
        .and_then(|st| st.unit_index(item).map(|u| st.units[u].round_start))
        .unwrap_or(0);
    let retry = def
        .retry
        .should_retry(attempt - round_start, &error.code, error.retryable);
    tx.emit(EventKind::TaskFailed {
        step: def.id.clone(),
        item,
        attempt,
        error,
    });
    if retry {
        let due_ms = tx.now + millis(def.retry.delay_after(attempt - round_start));
        tx.emit(EventKind::RetryScheduled {
            step: def.id.clone(),
            item,
            attempt,
            due_ms,
        });
    }
}

pub(super) fn on_timer(tx: &mut Tx<'_>, timer: Timer) {
    if tx.state.status != RunStatus::Running {
        return;
    }
    match timer {
        Timer::Deadline {
            step,
            item,
            attempt,
        } => {
            let Some(def) = tx.state.flow.step(&step).cloned() else {
                return;
            };
            if let Some(UnitStatus::Dispatched { deadline_ms }) = tx.state.unit_status(&step, item)
            {
                let current = tx
                    .state
                    .step_state(&step)
                    .and_then(|st| st.unit_index(item).map(|u| st.units[u].attempt));
                if current == Some(attempt) && tx.now >= deadline_ms {
                    let message = format!("no result within {}", humantime_ms(def.timeout));
                    fail_attempt(
                        tx,
                        &def,
                        item,
                        attempt,
                        ErrorInfo::new("timeout", message, true),
                    );
                }
            }
        }
        Timer::RetryDue {
            step,
            item,
            attempt,
        } => {
            if let Some(UnitStatus::RetryAt { at_ms }) = tx.state.unit_status(&step, item) {
                let current = tx
                    .state
                    .step_state(&step)
                    .and_then(|st| st.unit_index(item).map(|u| st.units[u].attempt));
                if current == Some(attempt)
                    && tx.now >= at_ms
                    && let Some(index) = tx.state.flow.step_index(&step)
                {
                    dispatch(tx, index, item);
                }
            }
        }
        Timer::ApprovalDeadline { step } => {
            let Some(index) = tx.state.flow.step_index(&step) else {
                return;
            };
            let st = &tx.state.steps[index];
            if st.status == StepStatus::WaitingApproval
                && st.approval_deadline_ms.is_some_and(|at| tx.now >= at)
            {
                let error = ErrorInfo::new(
                    "approval_timeout",
                    "no answer before the approval deadline",
                    false,
                );
                finish_failed(tx, index, error);
            }
        }
    }
}

fn humantime_ms(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
