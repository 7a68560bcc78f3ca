//! Where the run actors live and what time it is for them: [`ActorRuntime`] chooses, and
//! [`EngineClock`] is the time that the actors' decisions, timers and the starts of runs read.

use serde::{Deserialize, Serialize};

/// Where the run actors run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorRuntime {
    /// On an actix system of their own: `arbiters` threads, each with its runtime; run time is
    /// the wall clock.
    #[default]
    Arbiters,
    /// On the actix system (and tokio runtime) of the task that starts the orchestrator, with
    /// run time following tokio's clock: a test on a paused runtime moves every timer, deadline
    /// and timestamp with `tokio::time::advance` or auto-advance. For tests: the actors stop
    /// with that runtime, not with [`crate::Orchestrator::run`].
    Current,
}

/// The engine's "now", in Unix milliseconds.
#[derive(Debug, Clone, Copy)]
pub enum EngineClock {
    /// The wall clock.
    System,
    /// The wall time when the orchestrator started plus the time tokio's clock says has passed
    /// since: paused and advanced with the runtime it was made on.
    Tokio {
        base_ms: i64,
        start: tokio::time::Instant,
    },
}

impl EngineClock {
    /// The clock that goes with actors run on `runtime`; [`ActorRuntime::Current`] must be
    /// asked for inside the tokio runtime the actors will run on.
    pub(crate) fn for_runtime(runtime: ActorRuntime) -> Self {
        match runtime {
            ActorRuntime::Arbiters => Self::System,
            ActorRuntime::Current => Self::Tokio {
                base_ms: rpaflow_core::time::now_ms(),
                start: tokio::time::Instant::now(),
            },
        }
    }

    pub(crate) fn now_ms(&self) -> i64 {
        match self {
            Self::System => rpaflow_core::time::now_ms(),
            Self::Tokio { base_ms, start } => {
                let passed = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
                base_ms.saturating_add(passed)
            }
        }
    }
}
