//! The run state machine: pure, no I/O.
//!
//! A run's state is the fold of its events: [`RunState::apply`] applies one stored event.
//! [`RunState::handle`] takes an input (a result, a timer, a person's answer...), decides what
//! happens, and returns the new events, already applied; [`RunState::actions_for`] says what the
//! actor must do for them (dispatch, set timers, tell workers to stop). The actor persists the
//! events before it performs any action.
//!
//! # Layout
//! - `cost.rs`: what a JSON value costs in memory.
//! - `event.rs`: the stored events.
//! - `machine/`: `handle`, the decisions.
//! - `tests.rs`: unit tests and the replay property test.

mod cost;
mod event;
mod machine;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use rpaflow_core::flow::Flow;
use serde::Serialize;
use serde_json::Value as Json;

pub use cost::{json_memory_bytes, json_memory_bytes_up_to};
pub use event::{ErrorInfo, EventKind, ParentRef, RunEvent, RunStart, StepOutcome};
pub use machine::{Action, Input, Rejection, SUBFLOW, TaskSpec, Timer};

/// The largest JSON payload (inputs, a rendered step input) accepted by default.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// The most items a `for_each` may fan out over by default.
pub const DEFAULT_MAX_FOR_EACH_ITEMS: usize = 1_000;
/// What the outputs of one run may take in memory, in all, by default (32 MiB).
pub const DEFAULT_MAX_OUTPUT_MEMORY_BYTES: usize = 32 << 20;
/// The most items of one `for_each` in flight at once by default.
pub const DEFAULT_MAX_FOR_EACH_CONCURRENCY: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a place under its flow's `concurrency.max_runs` (policy `queue`).
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Running | Self::Queued)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    WaitingRetry,
    WaitingApproval,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    /// Finished, one way or another: dependents may start.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::WaitingRetry => "waiting_retry",
            Self::WaitingApproval => "waiting_approval",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Where one unit of work (a plain step, or one item of a `for_each` step) stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitStatus {
    Pending,
    /// Attempt `Unit::attempt` is out; it times out at `deadline_ms`.
    Dispatched {
        deadline_ms: i64,
    },
    /// Attempt `Unit::attempt` failed; the next one is due at `at_ms`.
    RetryAt {
        at_ms: i64,
    },
    Succeeded,
    Failed,
    /// Abandoned: the step or the run ended first; late results are ignored.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unit {
    pub status: UnitStatus,
    /// The last attempt dispatched (attempt numbers only grow, also across run retries).
    pub attempt: u32,
    /// The attempt number this round of retries started after (see `RunRetried`).
    pub round_start: u32,
    /// The input of the last dispatched attempt, kept to dispatch it again after a restart.
    pub input: Option<Json>,
    pub output: Option<Json>,
    pub error: Option<ErrorInfo>,
}

impl Unit {
    fn new(attempt_base: u32) -> Self {
        Self {
            status: UnitStatus::Pending,
            attempt: attempt_base,
            round_start: attempt_base,
            input: None,
            output: None,
            error: None,
        }
    }

    pub fn is_active(&self) -> bool {
        matches!(
            self.status,
            UnitStatus::Dispatched { .. } | UnitStatus::RetryAt { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepState {
    pub status: StepStatus,
    /// The items of a `for_each` step, once computed.
    pub items: Option<Vec<Json>>,
    pub units: Vec<Unit>,
    pub output: Option<Json>,
    pub error: Option<ErrorInfo>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub approval_deadline_ms: Option<i64>,
    /// Attempts made in earlier rounds, so that attempt numbers never repeat.
    pub attempt_base: u32,
}

impl StepState {
    fn new() -> Self {
        Self {
            status: StepStatus::Pending,
            items: None,
            units: Vec::new(),
            output: None,
            error: None,
            started_at_ms: None,
            finished_at_ms: None,
            approval_deadline_ms: None,
            attempt_base: 0,
        }
    }

    /// The status as a person would describe it, refined from the units.
    pub fn display_status(&self) -> StepStatus {
        if self.status != StepStatus::Running {
            return self.status;
        }
        let dispatched = self
            .units
            .iter()
            .any(|u| matches!(u.status, UnitStatus::Dispatched { .. }));
        let retrying = self
            .units
            .iter()
            .any(|u| matches!(u.status, UnitStatus::RetryAt { .. }));
        if !dispatched && retrying {
            StepStatus::WaitingRetry
        } else {
            StepStatus::Running
        }
    }

    /// The highest attempt of any unit (for display).
    pub fn attempt(&self) -> u32 {
        self.units
            .iter()
            .map(|u| u.attempt)
            .max()
            .unwrap_or(self.attempt_base)
    }

    fn unit_index(&self, item: Option<u32>) -> Option<usize> {
        match (item, &self.items) {
            (None, None) => Some(0).filter(|_| !self.units.is_empty()),
            (Some(i), Some(_)) => Some(i as usize).filter(|&i| i < self.units.len()),
            _ => None,
        }
    }
}

/// Everything known about one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunState {
    pub run_id: String,
    #[serde(skip)]
    pub flow: Arc<Flow>,
    pub flow_version: u32,
    pub inputs: Json,
    pub idempotency_key: String,
    /// What started the run: empty for the API, else `schedule:<id>`, `webhook:<id>` or
    /// `kafka:<id>`. Set it before [`RunState::start`], which records it.
    pub trigger: String,
    /// The subflow step that started this run, if one did.
    pub parent: Option<ParentRef>,
    pub status: RunStatus,
    pub steps: Vec<StepState>,
    pub outputs: Option<Json>,
    pub error: Option<ErrorInfo>,
    /// The step whose failure failed the run.
    pub failed_step: Option<String>,
    /// A compensation in progress: (failed step, compensation step).
    pub compensating: Option<(String, String)>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The number of the last event applied.
    pub last_seq: u64,
    /// What the outputs accepted so far take in memory ([`json_memory_bytes`]), derived from
    /// the `TaskSucceeded` events: held once in the units and once more in their steps' outputs.
    #[serde(skip)]
    pub output_memory_bytes: usize,
    /// What the inputs take in memory ([`json_memory_bytes`]), set with them.
    #[serde(skip)]
    pub input_memory_bytes: usize,
    /// Not part of the events: the limit this orchestrator enforces on step inputs.
    #[serde(skip)]
    pub max_payload_bytes: usize,
    /// Not part of the events: the most items a `for_each` may fan out over.
    #[serde(skip)]
    pub max_for_each_items: usize,
    /// Not part of the events: what the outputs of this run may take in memory, in all.
    #[serde(skip)]
    pub max_output_memory_bytes: usize,
    /// Not part of the events: the most items of one `for_each` in flight at once, whatever
    /// its `concurrency`. A deadline runs from dispatch, so items handed out faster than
    /// workers start them would time out waiting in the queue.
    #[serde(skip)]
    pub max_for_each_concurrency: usize,
    /// Not part of the events: whether the flow evaluates expressions
    /// ([`Flow::evaluates_expressions`]), so deciding may be slow and belongs off the actor's
    /// thread.
    #[serde(skip)]
    pub evaluates_expressions: bool,
}

impl RunState {
    /// An empty state for a run of `flow`, before its `RunStarted` event.
    pub fn new(run_id: impl Into<String>, flow: Arc<Flow>, flow_version: u32) -> Self {
        let steps = flow.steps.iter().map(|_| StepState::new()).collect();
        let evaluates_expressions = flow.evaluates_expressions();
        Self {
            run_id: run_id.into(),
            flow,
            flow_version,
            inputs: Json::Null,
            idempotency_key: String::new(),
            trigger: String::new(),
            parent: None,
            status: RunStatus::Running,
            steps,
            outputs: None,
            error: None,
            failed_step: None,
            compensating: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            last_seq: 0,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_for_each_items: DEFAULT_MAX_FOR_EACH_ITEMS,
            max_for_each_concurrency: DEFAULT_MAX_FOR_EACH_CONCURRENCY,
            max_output_memory_bytes: DEFAULT_MAX_OUTPUT_MEMORY_BYTES,
            output_memory_bytes: 0,
            input_memory_bytes: 0,
            evaluates_expressions,
        }
    }

    /// What stands in for the state while it is away being decided on another thread: the
    /// run's id and nothing else.
    pub fn placeholder(&self) -> Self {
        static NO_FLOW: std::sync::LazyLock<Arc<Flow>> = std::sync::LazyLock::new(Arc::default);
        Self::new(self.run_id.clone(), NO_FLOW.clone(), self.flow_version)
    }

    /// Rebuilds a run from its stored events.
    pub fn replay(run_id: &str, flow: Arc<Flow>, flow_version: u32, events: &[RunEvent]) -> Self {
        let mut state = Self::new(run_id, flow, flow_version);
        for event in events {
            state.apply(event);
        }
        state
    }

    pub fn step_state(&self, id: &str) -> Option<&StepState> {
        self.flow.step_index(id).map(|i| &self.steps[i])
    }

    /// Applies one event. Pure bookkeeping: every decision was made when the event was created.
    pub fn apply(&mut self, event: &RunEvent) {
        self.last_seq = event.seq;
        self.updated_at_ms = event.at_ms;
        let at = event.at_ms;
        let index = event.kind.step().and_then(|s| self.flow.step_index(s));
        match &event.kind {
            EventKind::RunStarted(start) | EventKind::RunQueued { start, .. } => {
                self.inputs = start.inputs.clone();
                self.input_memory_bytes = json_memory_bytes(&self.inputs);
                self.idempotency_key = start.idempotency_key.clone();
                self.trigger = start.trigger.clone();
                self.parent = start.parent.clone();
                self.status = if matches!(event.kind, EventKind::RunQueued { .. }) {
                    RunStatus::Queued
                } else {
                    RunStatus::Running
                };
                self.created_at_ms = at;
            }
            EventKind::RunDequeued { .. } => self.status = RunStatus::Running,
            EventKind::StepSkipped { .. } => {
                if let Some(step) = index.map(|i| &mut self.steps[i]) {
                    step.status = StepStatus::Skipped;
                    step.finished_at_ms = Some(at);
                }
            }
            EventKind::StepExpanded { items, .. } => {
                if let Some(step) = index.map(|i| &mut self.steps[i]) {
                    step.units = items.iter().map(|_| Unit::new(step.attempt_base)).collect();
                    step.items = Some(items.clone());
                    step.status = StepStatus::Running;
                    step.started_at_ms.get_or_insert(at);
                }
            }
            EventKind::TaskDispatched {
                item,
                attempt,
                input,
                deadline_ms,
                ..
            } => {
                if let Some(step) = index.map(|i| &mut self.steps[i]) {
                    if item.is_none() && step.units.is_empty() {
                        step.units.push(Unit::new(step.attempt_base));
                    }
                    step.status = StepStatus::Running;
                    step.started_at_ms.get_or_insert(at);
                    if let Some(u) = step.unit_index(*item) {
                        let unit = &mut step.units[u];
                        unit.attempt = *attempt;
                        unit.input = Some(input.clone());
                        unit.status = UnitStatus::Dispatched {
                            deadline_ms: *deadline_ms,
                        };
                    }
                }
            }
            EventKind::TaskRedispatched {
                item, deadline_ms, ..
            } => {
                if let Some(unit) = self.unit_mut(index, *item) {
                    unit.status = UnitStatus::Dispatched {
                        deadline_ms: *deadline_ms,
                    };
                }
            }
            EventKind::TaskSucceeded { item, output, .. } => {
                self.output_memory_bytes = self
                    .output_memory_bytes
                    .saturating_add(json_memory_bytes(output));
                if let Some(unit) = self.unit_mut(index, *item) {
                    unit.status = UnitStatus::Succeeded;
                    unit.output = Some(output.clone());
                    unit.error = None;
                }
            }
            EventKind::TaskFailed { item, error, .. } => {
                if let Some(unit) = self.unit_mut(index, *item) {
                    unit.status = UnitStatus::Failed;
                    unit.error = Some(error.clone());
                }
            }
            EventKind::RetryScheduled { item, due_ms, .. } => {
                if let Some(unit) = self.unit_mut(index, *item) {
                    unit.status = UnitStatus::RetryAt { at_ms: *due_ms };
                }
            }
            EventKind::ApprovalRequested { deadline_ms, .. } => {
                if let Some(step) = index.map(|i| &mut self.steps[i]) {
                    step.status = StepStatus::WaitingApproval;
                    step.started_at_ms.get_or_insert(at);
                    step.approval_deadline_ms = *deadline_ms;
                }
            }
            EventKind::ApprovalAnswered { .. } => {}
            EventKind::StepFinished {
                outcome,
                output,
                error,
                ..
            } => {
                if let Some(step) = index.map(|i| &mut self.steps[i]) {
                    step.status = match outcome {
                        StepOutcome::Succeeded => StepStatus::Succeeded,
                        StepOutcome::Failed => StepStatus::Failed,
                    };
                    step.output = output.clone();
                    step.error = error.clone();
                    step.finished_at_ms = Some(at);
                    step.started_at_ms.get_or_insert(at);
                    for unit in &mut step.units {
                        if unit.is_active() || unit.status == UnitStatus::Pending {
                            unit.status = UnitStatus::Cancelled;
                        }
                    }
                }
            }
            EventKind::CompensationStarted {
                failed_step,
                compensation,
            } => {
                self.compensating = Some((failed_step.clone(), compensation.clone()));
                self.failed_step = Some(failed_step.clone());
            }
            EventKind::RunCancelled { .. } => {
                self.status = RunStatus::Cancelled;
                self.abandon_unfinished(at);
            }
            EventKind::RunRetried { steps } => {
                self.status = RunStatus::Running;
                self.error = None;
                self.failed_step = None;
                self.compensating = None;
                for id in steps {
                    if let Some(i) = self.flow.step_index(id) {
                        let step = &mut self.steps[i];
                        let base = step.attempt().max(step.attempt_base);
                        *step = StepState::new();
                        step.attempt_base = base;
                    }
                }
                // The outputs of the steps to run again are gone.
                self.output_memory_bytes = self
                    .steps
                    .iter()
                    .flat_map(|st| &st.units)
                    .filter_map(|u| u.output.as_ref())
                    .map(json_memory_bytes)
                    .fold(0, usize::saturating_add);
            }
            EventKind::RunSucceeded { outputs } => {
                self.status = RunStatus::Succeeded;
                self.outputs = Some(outputs.clone());
            }
            EventKind::RunFailed { error, step } => {
                self.status = RunStatus::Failed;
                self.error = Some(error.clone());
                self.failed_step = step.clone();
                self.compensating = None;
                self.abandon_unfinished(at);
            }
        }
    }

    fn unit_mut(&mut self, index: Option<usize>, item: Option<u32>) -> Option<&mut Unit> {
        let step = &mut self.steps[index?];
        let u = step.unit_index(item)?;
        Some(&mut step.units[u])
    }

    /// Steps still running when the run ends are cancelled; their late results are ignored.
    fn abandon_unfinished(&mut self, at: i64) {
        for step in &mut self.steps {
            if matches!(
                step.status,
                StepStatus::Running | StepStatus::WaitingApproval
            ) {
                step.status = StepStatus::Cancelled;
                step.finished_at_ms = Some(at);
            }
            for unit in &mut step.units {
                if unit.is_active() {
                    unit.status = UnitStatus::Cancelled;
                }
            }
        }
    }
}
