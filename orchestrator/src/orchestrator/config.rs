//! The orchestrator's settings ([`OrchestratorConfig`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::state::DEFAULT_MAX_PAYLOAD_BYTES;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorConfig {
    /// Where sled keeps flows, runs and events.
    pub data_dir: PathBuf,
    /// Threads that run the run actors.
    pub arbiters: usize,
    /// The largest run input or rendered step input accepted, in bytes.
    pub max_payload_bytes: usize,
    /// The largest step output a worker may return, in bytes.
    pub max_output_bytes: usize,
    /// Runs that may be active at once; StartRun past it answers RESOURCE_EXHAUSTED.
    pub max_active_runs: usize,
    /// Tasks of one queue dispatched and not yet answered; past it, StartRun of a flow using
    /// the queue answers RESOURCE_EXHAUSTED.
    pub max_in_flight_per_queue: usize,
    /// A testing aid: when set, "now" for the scheduler is read from this file (Unix
    /// milliseconds or an RFC 3339 time, re-read every 100 ms), so tests move time by
    /// rewriting it. Unset (the default): the system clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_file: Option<PathBuf>,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".rpaflow"),
            arbiters: 4,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_output_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_active_runs: 100_000,
            max_in_flight_per_queue: 10_000,
            clock_file: None,
        }
    }
}
