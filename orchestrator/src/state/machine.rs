//! The decisions: what a result, a timer or a person's answer does to a run.

use std::time::Duration;

use rpaflow_core::expr::{self, Context};
use rpaflow_core::flow::{OnFailure, Step};
use serde_json::{Value as Json, json};

use super::{
    ErrorInfo, EventKind, RunEvent, RunState, RunStatus, StepOutcome, StepStatus, UnitStatus,
};

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
        by: String,
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

/// What the actor must do once the events are durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Dispatch(TaskSpec),
    SetTimer {
        at_ms: i64,
        timer: Timer,
    },
    /// Tell workers to stop this run's steps.
    CancelWorkers,
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
}

/// One call of `handle`: the events made so far, applied as they are made.
struct Tx<'a> {
    state: &'a mut RunState,
    now: i64,
    events: Vec<RunEvent>,
    ctx: Option<Context>,
}

impl Tx<'_> {
    fn emit(&mut self, kind: EventKind) {
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
        // Secrets render to markers; their values never enter a run's events (see core::secrets).
        let secrets: serde_json::Map<String, Json> = self
            .flow
            .secrets
            .iter()
            .map(|name| {
                (
                    name.clone(),
                    Json::String(rpaflow_core::secrets::marker(name)),
                )
            })
            .collect();
        json!({
            "inputs": self.inputs,
            "steps": steps,
            "run": { "id": self.run_id, "flow": self.flow.name, "version": self.flow_version },
            "secrets": secrets,
        })
    }

    /// The first events of a new run; the `RunStarted` event records `self.trigger`. With
    /// `queued` (the reason), the run only records `RunQueued` and waits for `Input::Dequeue`.
    pub fn start(
        &mut self,
        inputs: Json,
        idempotency_key: String,
        parent: Option<super::ParentRef>,
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
                        actions.push(Action::Dispatch(spec));
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
                    actions.push(Action::CancelWorkers)
                }
                _ => {}
            }
        }
        if self.status.is_finished()
            && events.iter().any(|e| {
                matches!(
                    e.kind,
                    EventKind::RunSucceeded { .. }
                        | EventKind::RunFailed { .. }
                        | EventKind::RunCancelled { .. }
                )
            })
        {
            actions.push(Action::Finished(self.status));
        }
        actions
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

/// The deadline of attempts that have none.
pub const NO_DEADLINE: i64 = i64::MAX;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn on_result(
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

fn on_timer(tx: &mut Tx<'_>, timer: Timer) {
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

/// Moves the run forward as far as it can go without outside input.
fn advance(tx: &mut Tx<'_>) {
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
fn finish_failed(tx: &mut Tx<'_>, index: usize, error: ErrorInfo) {
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

/// Starts a step whose needs are met: its `if`, then approval, `for_each` or a single dispatch.
fn start_step(tx: &mut Tx<'_>, index: usize) {
    let def = tx.state.flow.steps[index].clone();
    if let Some(cond) = &def.condition {
        let ctx = tx.context();
        match expr::eval_bool(cond, &ctx) {
            Ok(true) => {}
            Ok(false) => {
                tx.emit(EventKind::StepSkipped {
                    step: def.id.clone(),
                    reason: format!("`if` is false: {cond}"),
                });
                return;
            }
            Err(e) => {
                finish_failed(
                    tx,
                    index,
                    ErrorInfo::new("expr", format!("`if` failed: {}", e.message), false),
                );
                return;
            }
        }
    }
    if def.uses == "approval" {
        let ctx = tx.context();
        let message = match def.with.get("message").map(|m| expr::render(m, &ctx)) {
            Some(Ok(Json::String(s))) => s,
            Some(Ok(other)) => other.to_string(),
            Some(Err(e)) => format!("(message could not be rendered: {})", e.message),
            None => format!("approve step `{}`?", def.id),
        };
        let deadline_ms = (!def.timeout.is_zero()).then(|| tx.now + millis(def.timeout));
        tx.emit(EventKind::ApprovalRequested {
            step: def.id.clone(),
            message,
            deadline_ms,
        });
        return;
    }
    if let Some(fe) = &def.for_each {
        let ctx = tx.context();
        match expr::eval(&fe.items, &ctx) {
            Ok(Json::Array(items)) => {
                let empty = items.is_empty();
                tx.emit(EventKind::StepExpanded {
                    step: def.id.clone(),
                    items,
                });
                if empty {
                    tx.emit(EventKind::StepFinished {
                        step: def.id.clone(),
                        outcome: StepOutcome::Succeeded,
                        output: Some(Json::Array(vec![])),
                        error: None,
                    });
                }
                // Units are dispatched by `fill_for_each`.
            }
            Ok(other) => {
                let error = ErrorInfo::new(
                    "expr",
                    format!("`for_each` must give a list, got {}", type_name(&other)),
                    false,
                );
                finish_failed(tx, index, error);
            }
            Err(e) => finish_failed(
                tx,
                index,
                ErrorInfo::new("expr", format!("`for_each` failed: {}", e.message), false),
            ),
        }
        return;
    }
    dispatch(tx, index, None);
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
            if active >= fe.concurrency as usize
                || st.units.iter().any(|u| u.status == UnitStatus::Failed)
            {
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

/// Renders the step's inputs and hands out the next attempt of one unit.
fn dispatch(tx: &mut Tx<'_>, index: usize, item: Option<u32>) {
    let def = tx.state.flow.steps[index].clone();
    let st = &tx.state.steps[index];
    let attempt = match st.unit_index(item) {
        Some(u) => st.units[u].attempt + 1,
        None => st.attempt_base + 1,
    };
    let item_json = item.and_then(|i| {
        st.items
            .as_ref()
            .and_then(|items| items.get(i as usize))
            .cloned()
    });
    let rendered = if expr::has_templates(&def.with) {
        let base = tx.context();
        let ctx = match (&item_json, item) {
            (Some(value), Some(i)) => base.with(&[("item", value), ("index", &json!(i))]),
            _ => base,
        };
        expr::render(&def.with, &ctx).map_err(|e| {
            ErrorInfo::new(
                "expr",
                format!("rendering `with` failed: {}", e.message),
                false,
            )
        })
    } else {
        Ok(def.with.clone())
    };
    let rendered = rendered.and_then(|input| {
        let size = input.to_string().len();
        if size > tx.state.max_payload_bytes {
            Err(ErrorInfo::new(
                "payload_too_large",
                format!(
                    "rendered input is {size} bytes, over the limit of {} bytes",
                    tx.state.max_payload_bytes
                ),
                false,
            ))
        } else {
            Ok(input)
        }
    });
    match rendered {
        Ok(input) => {
            let deadline_ms = deadline_after(tx.now, def.timeout);
            tx.emit(EventKind::TaskDispatched {
                step: def.id.clone(),
                item,
                attempt,
                input,
                deadline_ms,
            });
        }
        Err(error) => {
            // Record the attempt so the failure has a unit to land on.
            tx.emit(EventKind::TaskDispatched {
                step: def.id.clone(),
                item,
                attempt,
                input: Json::Null,
                deadline_ms: tx.now,
            });
            tx.emit(EventKind::TaskFailed {
                step: def.id,
                item,
                attempt,
                error,
            });
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

fn type_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a mapping",
    }
}
