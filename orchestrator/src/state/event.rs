//! Run events: the append-only record of everything that happened to a run. A run's state is
//! exactly the fold of its events (see [`super::RunState::apply`]).

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// An error attached to a step, an item or a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub retryable: bool,
}

impl ErrorInfo {
    pub fn new(code: &str, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            retryable,
        }
    }
}

/// The step attempt of another run that started this run as a `subflow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    pub run_id: String,
    pub step: String,
    pub item: Option<u32>,
    pub attempt: u32,
}

/// One stored event, numbered from 1 within its run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    pub seq: u64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Succeeded,
    Failed,
}

/// What a run is started with: the fields of `RunStarted`, and of `RunQueued` for a run that
/// waits first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStart {
    pub flow: String,
    pub version: u32,
    pub inputs: Json,
    #[serde(default)]
    pub idempotency_key: String,
    /// Set when a `subflow` step of another run started this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// What started the run: empty for the API, else `schedule:<id>`, `webhook:<id>` or
    /// `kafka:<id>` (a trigger of the flow).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trigger: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted(RunStart),
    /// The first event of a run that must wait: its flow has `concurrency.max_runs` runs
    /// active (policy `queue`). Nothing runs until `RunDequeued`.
    RunQueued {
        #[serde(flatten)]
        start: RunStart,
        /// Why it waits, for people.
        reason: String,
    },
    /// A queued run got its place and starts.
    RunDequeued {
        /// How long it waited.
        waited_ms: i64,
    },
    /// The step's `if` was false.
    StepSkipped {
        step: String,
        reason: String,
    },
    /// A `for_each` step's items were computed.
    StepExpanded {
        step: String,
        items: Vec<Json>,
    },
    /// An attempt was handed to the bus.
    TaskDispatched {
        step: String,
        item: Option<u32>,
        attempt: u32,
        input: Json,
        deadline_ms: i64,
    },
    /// An attempt still without a result was handed to the bus again after a restart.
    TaskRedispatched {
        step: String,
        item: Option<u32>,
        attempt: u32,
        deadline_ms: i64,
    },
    TaskSucceeded {
        step: String,
        item: Option<u32>,
        attempt: u32,
        output: Json,
    },
    /// An attempt failed: an executor error, a timeout, or a false `until`.
    TaskFailed {
        step: String,
        item: Option<u32>,
        attempt: u32,
        error: ErrorInfo,
    },
    /// The next attempt is due at `at_ms`.
    RetryScheduled {
        step: String,
        item: Option<u32>,
        attempt: u32,
        due_ms: i64,
    },
    /// An approval step is waiting for a person (until `deadline_ms`, when set).
    ApprovalRequested {
        step: String,
        message: String,
        deadline_ms: Option<i64>,
    },
    ApprovalAnswered {
        step: String,
        approved: bool,
        comment: String,
        by: String,
    },
    /// A step is done; its output is what later steps read.
    StepFinished {
        step: String,
        outcome: StepOutcome,
        output: Option<Json>,
        error: Option<ErrorInfo>,
    },
    /// A failed step's compensation started; the run fails once it ends.
    CompensationStarted {
        failed_step: String,
        compensation: String,
    },
    RunCancelled {
        reason: String,
    },
    /// A failed run restarts from its failed and unfinished steps.
    RunRetried {
        steps: Vec<String>,
    },
    RunSucceeded {
        outputs: Json,
    },
    RunFailed {
        error: ErrorInfo,
        step: Option<String>,
    },
}

impl EventKind {
    /// The snake_case name of the event, as clients see it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RunStarted(_) => "run_started",
            Self::RunQueued { .. } => "run_queued",
            Self::RunDequeued { .. } => "run_dequeued",
            Self::StepSkipped { .. } => "step_skipped",
            Self::StepExpanded { .. } => "step_expanded",
            Self::TaskDispatched { .. } => "task_dispatched",
            Self::TaskRedispatched { .. } => "task_redispatched",
            Self::TaskSucceeded { .. } => "task_succeeded",
            Self::TaskFailed { .. } => "task_failed",
            Self::RetryScheduled { .. } => "retry_scheduled",
            Self::ApprovalRequested { .. } => "approval_requested",
            Self::ApprovalAnswered { .. } => "approval_answered",
            Self::StepFinished { .. } => "step_finished",
            Self::CompensationStarted { .. } => "compensation_started",
            Self::RunCancelled { .. } => "run_cancelled",
            Self::RunRetried { .. } => "run_retried",
            Self::RunSucceeded { .. } => "run_succeeded",
            Self::RunFailed { .. } => "run_failed",
        }
    }

    /// True for the events that give a run its outcome; a run records exactly one of them
    /// (until a `RunRetried` reopens a failed run).
    pub fn is_outcome(&self) -> bool {
        matches!(
            self,
            Self::RunSucceeded { .. } | Self::RunFailed { .. } | Self::RunCancelled { .. }
        )
    }

    /// True for the events after which the run's status is different.
    pub fn changes_run_status(&self) -> bool {
        matches!(
            self,
            Self::RunStarted(_)
                | Self::RunQueued { .. }
                | Self::RunDequeued { .. }
                | Self::RunRetried { .. }
                | Self::RunSucceeded { .. }
                | Self::RunFailed { .. }
                | Self::RunCancelled { .. }
        )
    }

    /// The step the event is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Self::StepSkipped { step, .. }
            | Self::StepExpanded { step, .. }
            | Self::TaskDispatched { step, .. }
            | Self::TaskRedispatched { step, .. }
            | Self::TaskSucceeded { step, .. }
            | Self::TaskFailed { step, .. }
            | Self::RetryScheduled { step, .. }
            | Self::ApprovalRequested { step, .. }
            | Self::ApprovalAnswered { step, .. }
            | Self::StepFinished { step, .. } => Some(step),
            Self::CompensationStarted { failed_step, .. } => Some(failed_step),
            Self::RunFailed { step, .. } => step.as_deref(),
            _ => None,
        }
    }

    /// The item and attempt the event is about, if any.
    pub fn item_attempt(&self) -> (Option<u32>, u32) {
        match self {
            Self::TaskDispatched { item, attempt, .. }
            | Self::TaskRedispatched { item, attempt, .. }
            | Self::TaskSucceeded { item, attempt, .. }
            | Self::TaskFailed { item, attempt, .. }
            | Self::RetryScheduled { item, attempt, .. } => (*item, *attempt),
            _ => (None, 0),
        }
    }
}
