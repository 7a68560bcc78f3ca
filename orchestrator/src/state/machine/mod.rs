//! The decisions: what a result, a timer or a person's answer does to a run.
//!
//! # Layout
//! - `mod.rs`: the inputs, timers and actions; `start`, `handle` and `actions_for`.
//! - `advance.rs`: moving a run forward: finishing steps, starting ready ones, ending the run.
//! - `dispatch.rs`: starting one step (`if`, approval, `for_each`) and handing out attempts.
//! - `results.rs`: results, timers, retries and deadlines.

mod advance;
mod dispatch;
mod results;

use std::time::Duration;

use rpaflow_core::expr::Context;
use rpaflow_core::flow::Step;
use serde_json::{Value as Json, json};

use super::{
    ErrorInfo, EventKind, ParentRef, RunEvent, RunState, RunStatus, StepOutcome, StepStatus,
    UnitStatus,
};
use advance::advance;
use results::{on_result, on_timer};

/// Something that happens to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A worker's result for one attempt.
    Result {
        step: String,
        item: Option<u32>,
        attempt: u32,
        outcome: Result<Json, ErrorInfo>,
    },
    Timer(Timer),
    Cancel {
        reason: String,
    },
    Signal {
        step: String,
        approve: bool,
        comment: String,
        /// Who answers: the caller's name.
        by: String,
        /// The caller's role; empty when the caller has none (authentication off).
        role: String,
    },
    /// Restart a failed run from its failed steps.
    Retry,
    /// A queued run got its place: start it.
    Dequeue,
    /// The orchestrator restarted: hand out again what has no result yet.
    Recover,
}

/// A timer the actor set; stale timers (for an attempt that already ended) do nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Timer {
    Deadline {
        step: String,
        item: Option<u32>,
        attempt: u32,
    },
    RetryDue {
        step: String,
        item: Option<u32>,
        attempt: u32,
    },
    ApprovalDeadline {
        step: String,
    },
}

/// What the actor must do once the events are durable: every effect of a decision on the
/// world outside the run's state, performed through [`crate::effects::RunEffects`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Hand an attempt to the worker pool of its queue.
    Dispatch(TaskSpec),
    /// Start (or find) the child run of a `subflow` attempt; its outcome comes back as the
    /// attempt's result.
    StartChild(TaskSpec),
    SetTimer {
        at_ms: i64,
        timer: Timer,
    },
    /// Tell workers to stop this run's steps.
    CancelWorkers,
    /// Cancel the child runs its `subflow` steps still have.
    CancelChildren,
    /// Deliver the run's outcome to the parent run that started it.
    NotifyParent(ParentRef),
    /// The run ended; the actor can leave memory.
    Finished(RunStatus),
}

/// An attempt to hand to the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub step: String,
    pub item: Option<u32>,
    pub attempt: u32,
    pub kind: String,
    pub queue: String,
    pub input: Json,
    pub timeout: Duration,
}

/// Why a person's command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("run is {0}, not running")]
    NotRunning(&'static str),
    #[error("run is {0}, not queued")]
    NotQueued(&'static str),
    #[error("run is {0}; only failed runs can be retried")]
    NotFailed(&'static str),
    #[error("flow has no step `{0}`")]
    UnknownStep(String),
    #[error("step `{step}` is {status}, not waiting for approval")]
    NotWaiting { step: String, status: &'static str },
    #[error("step `{step}` may only be answered by {allowed}")]
    NotAnApprover { step: String, allowed: String },
}

/// One call of `handle`: the events made so far, applied as they are made.
struct Tx<'a> {
    state: &'a mut RunState,
    now: i64,
    events: Vec<RunEvent>,
    ctx: Option<Context>,
}

impl Tx<'_> {
    /// Records one event and applies it. A finished run takes no event but `RunRetried`:
    /// its outcome is decided once, by the first outcome event, whatever the decisions that
    /// follow in the same call would add (a later `RunSucceeded`, a dispatch, a skip).
    fn emit(&mut self, kind: EventKind) {
        if self.state.status.is_finished() && !matches!(kind, EventKind::RunRetried { .. }) {
            return;
        }
        if matches!(
            kind,
            EventKind::StepFinished { .. } | EventKind::StepSkipped { .. }
        ) {
            self.ctx = None;
        }
        let event = RunEvent {
            seq: self.state.last_seq + 1,
            at_ms: self.now,
            kind,
        };
        self.state.apply(&event);
        self.events.push(event);
    }

    /// The expression context (`inputs`, `steps`, `run`), built once per change of outputs.
    fn context(&mut self) -> Context {
        if self.ctx.is_none() {
            self.ctx = Some(Context::new(&self.state.context_json()));
        }
        self.ctx
            .clone()
            .unwrap_or_else(|| Context::new(&Json::Null))
    }
}

impl RunState {
    /// The JSON the expressions of this run see.
    pub fn context_json(&self) -> Json {
        let steps: serde_json::Map<String, Json> = self
            .flow
            .steps
            .iter()
            .zip(&self.steps)
            .map(|(def, st)| {
                let mut entry = json!({ "status": st.status.name() });
                if let Some(out) = &st.output {
                    entry["output"] = out.clone();
                }
                if let Some(err) = &st.error {
                    entry["error"] = json!({ "code": err.code, "message": err.message });
                }
                (def.id.clone(), entry)
            })
            .collect();
        json!({
            "inputs": self.inputs,
            "steps": steps,
            "run": {
                "id": self.run_id,
                "flow": rpaflow_core::namespace::local(&self.flow.name),
                "namespace": rpaflow_core::namespace::of(&self.flow.name),
                "version": self.flow_version,
            },
        })
    }

    /// The first events of a new run; the `RunStarted` event records `self.trigger`. With
    /// `queued` (the reason), the run only records `RunQueued` and waits for `Input::Dequeue`.
    pub fn start(
        &mut self,
        inputs: Json,
        idempotency_key: String,
        parent: Option<ParentRef>,
        queued: Option<String>,
        now_ms: i64,
    ) -> Vec<RunEvent> {
        let mut tx = Tx {
            state: self,
            now: now_ms,
            events: Vec::new(),
            ctx: None,
        };
        let start = super::RunStart {
            flow: tx.state.flow.name.clone(),
            version: tx.state.flow_version,
            inputs,
            idempotency_key,
            parent,
            trigger: tx.state.trigger.clone(),
        };
        let kind = match queued {
            Some(reason) => EventKind::RunQueued { start, reason },
            None => EventKind::RunStarted(start),
        };
        tx.emit(kind);
        advance(&mut tx);
        tx.events
    }

    /// Decides what `input` does and returns the resulting events, already applied.
    /// Results and timers that no longer matter produce no events.
    pub fn handle(&mut self, input: Input, now_ms: i64) -> Result<Vec<RunEvent>, Rejection> {
        let mut tx = Tx {
            state: self,
            now: now_ms,
            events: Vec::new(),
            ctx: None,
        };
        match input {
            Input::Result {
                step,
                item,
                attempt,
                outcome,
            } => on_result(&mut tx, &step, item, attempt, outcome),
            Input::Timer(timer) => on_timer(&mut tx, timer),
            Input::Cancel { reason } => {
                if !matches!(tx.state.status, RunStatus::Running | RunStatus::Queued) {
                    return Err(Rejection::NotRunning(tx.state.status.name()));
                }
                tx.emit(EventKind::RunCancelled { reason });
            }
            Input::Signal {
                step,
                approve,
                comment,
                by,
                role,
            } => {
                if tx.state.status != RunStatus::Running {
                    return Err(Rejection::NotRunning(tx.state.status.name()));
                }
                let st = tx
                    .state
                    .step_state(&step)
                    .ok_or_else(|| Rejection::UnknownStep(step.clone()))?;
                if st.status != StepStatus::WaitingApproval {
                    return Err(Rejection::NotWaiting {
                        step,
                        status: st.display_status().name(),
                    });
                }
                // The flow was validated when registered: its `approvers` parse.
                let approvers =
                    tx.state.flow.step(&step).and_then(|def| {
                        rpaflow_core::flow::Approvers::of(&def.with).ok().flatten()
                    });
                if let Some(approvers) = approvers
                    && !approvers.allow(&role, &by)
                {
                    return Err(Rejection::NotAnApprover {
                        step,
                        allowed: approvers.describe(),
                    });
                }
                tx.emit(EventKind::ApprovalAnswered {
                    step: step.clone(),
                    approved: approve,
                    comment: comment.clone(),
                    by: by.clone(),
                });
                let output = json!({ "approved": approve, "comment": comment, "by": by });
                tx.emit(EventKind::StepFinished {
                    step,
                    outcome: StepOutcome::Succeeded,
                    output: Some(output),
                    error: None,
                });
            }
            Input::Retry => {
                if tx.state.status != RunStatus::Failed {
                    return Err(Rejection::NotFailed(tx.state.status.name()));
                }
                let steps = tx
                    .state
                    .flow
                    .steps
                    .iter()
                    .zip(&tx.state.steps)
                    .filter(|(def, st)| {
                        def.compensation
                            || !matches!(st.status, StepStatus::Succeeded | StepStatus::Skipped)
                    })
                    .map(|(def, _)| def.id.clone())
                    .collect();
                tx.emit(EventKind::RunRetried { steps });
            }
            Input::Dequeue => {
                if tx.state.status != RunStatus::Queued {
                    return Err(Rejection::NotQueued(tx.state.status.name()));
                }
                let waited_ms = (tx.now - tx.state.created_at_ms).max(0);
                tx.emit(EventKind::RunDequeued { waited_ms });
            }
            Input::Recover => {
                if tx.state.status == RunStatus::Running {
                    let deadline = |step: &Step| deadline_after(tx.now, step.timeout);
                    let mut redispatch = Vec::new();
                    for (def, st) in tx.state.flow.steps.iter().zip(&tx.state.steps) {
                        for (i, unit) in st.units.iter().enumerate() {
                            if matches!(unit.status, UnitStatus::Dispatched { .. }) {
                                let item = st.items.as_ref().map(|_| i as u32);
                                redispatch.push(EventKind::TaskRedispatched {
                                    step: def.id.clone(),
                                    item,
                                    attempt: unit.attempt,
                                    deadline_ms: deadline(def),
                                });
                            }
                        }
                    }
                    for kind in redispatch {
                        tx.emit(kind);
                    }
                }
            }
        }
        advance(&mut tx);
        Ok(tx.events)
    }

    /// The actions the actor performs once `events` (the result of one `handle`) are durable.
    pub fn actions_for(&self, events: &[RunEvent]) -> Vec<Action> {
        let mut actions = Vec::new();
        for event in events {
            match &event.kind {
                EventKind::TaskDispatched {
                    step,
                    item,
                    attempt,
                    ..
                }
                | EventKind::TaskRedispatched {
                    step,
                    item,
                    attempt,
                    ..
                } => {
                    if let Some(spec) = self.task_spec(step, *item, *attempt)
                        && let Some(UnitStatus::Dispatched { deadline_ms }) =
                            self.unit_status(step, *item)
                    {
                        actions.push(if spec.kind == SUBFLOW {
                            Action::StartChild(spec)
                        } else {
                            Action::Dispatch(spec)
                        });
                        if deadline_ms != NO_DEADLINE {
                            actions.push(Action::SetTimer {
                                at_ms: deadline_ms,
                                timer: Timer::Deadline {
                                    step: step.clone(),
                                    item: *item,
                                    attempt: *attempt,
                                },
                            });
                        }
                    }
                }
                EventKind::RetryScheduled {
                    step,
                    item,
                    attempt,
                    due_ms,
                } => {
                    if matches!(
                        self.unit_status(step, *item),
                        Some(UnitStatus::RetryAt { .. })
                    ) {
                        actions.push(Action::SetTimer {
                            at_ms: *due_ms,
                            timer: Timer::RetryDue {
                                step: step.clone(),
                                item: *item,
                                attempt: *attempt,
                            },
                        });
                    }
                }
                EventKind::ApprovalRequested {
                    step,
                    deadline_ms: Some(at),
                    ..
                } => {
                    actions.push(Action::SetTimer {
                        at_ms: *at,
                        timer: Timer::ApprovalDeadline { step: step.clone() },
                    });
                }
                EventKind::RunCancelled { .. } | EventKind::RunFailed { .. } => {
                    actions.push(Action::CancelWorkers);
                    if self.flow.steps.iter().any(|s| s.uses == SUBFLOW) {
                        actions.push(Action::CancelChildren);
                    }
                }
                _ => {}
            }
        }
        if self.status.is_finished() && events.iter().any(|e| e.kind.is_outcome()) {
            if let Some(parent) = &self.parent {
                actions.push(Action::NotifyParent(parent.clone()));
            }
            actions.push(Action::Finished(self.status));
        }
        actions
    }

    fn unit_status(&self, step: &str, item: Option<u32>) -> Option<UnitStatus> {
        let st = self.step_state(step)?;
        st.unit_index(item).map(|u| st.units[u].status.clone())
    }

    fn task_spec(&self, step: &str, item: Option<u32>, attempt: u32) -> Option<TaskSpec> {
        let index = self.flow.step_index(step)?;
        let (def, st) = (&self.flow.steps[index], &self.steps[index]);
        let unit = &st.units[st.unit_index(item)?];
        Some(TaskSpec {
            step: step.to_owned(),
            item,
            attempt,
            kind: def.uses.clone(),
            queue: def.queue.clone(),
            input: unit.input.clone().unwrap_or(Json::Null),
            timeout: def.timeout,
        })
    }
}

/// When an attempt started `now` times out; never for steps without a timeout (a `subflow`
/// or `approval` that sets none).
fn deadline_after(now: i64, timeout: Duration) -> i64 {
    if timeout.is_zero() {
        NO_DEADLINE
    } else {
        now.saturating_add(millis(timeout))
    }
}

/// The step kind that runs another flow as a child run ([`Action::StartChild`]).
pub const SUBFLOW: &str = "subflow";

/// The deadline of attempts that have none.
pub const NO_DEADLINE: i64 = i64::MAX;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
