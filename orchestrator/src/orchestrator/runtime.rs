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
    /// The wall time when the process first made such a clock, plus the time tokio's clock says
    /// has passed since: paused and advanced with the runtime it is read on. An orchestrator
    /// restarted on the same paused runtime goes on from where its predecessor's time had got to.
    Tokio {
        base_ms: i64,
        start: std::time::Instant,
    },
}

impl EngineClock {
    /// The clock that goes with actors run on `runtime`; for [`ActorRuntime::Current`] it is
    /// read on the tokio runtime the actors run on, whose clock it follows.
    pub(crate) fn for_runtime(runtime: ActorRuntime) -> Self {
        match runtime {
            ActorRuntime::Arbiters => Self::System,
            ActorRuntime::Current => {
                static ANCHOR: std::sync::OnceLock<(i64, std::time::Instant)> =
                    std::sync::OnceLock::new();
                let (base_ms, start) = *ANCHOR
                    .get_or_init(|| (rpaflow_core::time::now_ms(), std::time::Instant::now()));
                Self::Tokio { base_ms, start }
            }
        }
    }

    pub(crate) fn now_ms(&self) -> i64 {
        match self {
            Self::System => rpaflow_core::time::now_ms(),
            Self::Tokio { base_ms, start } => {
                // tokio's `Instant` is std's, moved by the runtime's pauses and advances.
                let now = tokio::time::Instant::now().into_std();
                let passed = now.saturating_duration_since(*start).as_millis();
                let passed = i64::try_from(passed).unwrap_or(i64::MAX);
                base_ms.saturating_add(passed)
            }
        }
    }
}
