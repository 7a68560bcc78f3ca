//! The orchestrator's settings ([`OrchestratorConfig`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::runtime::ActorRuntime;
use crate::state::{
    DEFAULT_MAX_FOR_EACH_CONCURRENCY, DEFAULT_MAX_FOR_EACH_ITEMS, DEFAULT_MAX_OUTPUT_MEMORY_BYTES,
    DEFAULT_MAX_PAYLOAD_BYTES,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorConfig {
    /// Where sled keeps flows, runs and events.
    pub data_dir: PathBuf,
    /// Threads that run the run actors (0: half the CPUs, at least one). The actors take about
    /// half of a step's CPU; more arbiters than that only make them wait for the CPU behind the
    /// worker pool and storage (on 2 cores, 4 arbiters doubled the slowest steps' latency).
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
    /// Steps one flow may have (`docs/limits.md`).
    pub max_flow_steps: usize,
    /// How deeply mappings and sequences may nest in a flow file.
    pub max_flow_nesting: usize,
    /// What one run's inputs may take in memory, as estimated by
    /// [`crate::state::json_memory_bytes`]: `max_payload_bytes` bounds their text, this what
    /// the run holds while it waits (small objects cost ~90 times their text).
    pub max_input_memory_bytes: usize,
    /// Items one `for_each` may fan out over.
    pub max_for_each_items: usize,
    /// What the inputs of all runs in memory may take together; a new run past it answers
    /// RESOURCE_EXHAUSTED.
    pub max_held_input_bytes: usize,
    /// What all the step outputs of one run may take in memory (estimated as for inputs).
    pub max_run_output_memory_bytes: usize,
    /// Items of one `for_each` in flight at once, whatever its `concurrency` says.
    pub max_for_each_concurrency: usize,
    /// How deeply subflow runs may nest (a run, its child, the child's child, ...).
    pub max_subflow_depth: usize,
    /// Fuel of one evaluation of an `if`, `until`, `for_each`, or of all the templates of one
    /// `with` or `outputs`: one per instruction plus one per 64 bytes of data (`docs/limits.md`).
    pub expr_fuel: u64,
    /// The largest result of one such evaluation, in bytes of JSON.
    pub expr_max_output_bytes: usize,
    /// Threads that evaluate the expressions and templates of runs whose flows have any, so
    /// a slow evaluation never holds up a run actor's thread or a gRPC handler (0: one per
    /// CPU).
    pub eval_threads: usize,
    /// Whether API calls need a token: set by the binary from `[auth]` (on unless turned off).
    #[serde(skip)]
    pub auth: crate::auth::AuthConfig,
    /// What seals secret values in the store and in tasks: set by the binary from `[secrets]`;
    /// without it, the data directory's own key (`DATA_DIR/secrets.key`, made on first start).
    #[serde(skip)]
    pub secrets_key: Option<rpaflow_core::secrets::SecretsKey>,
    /// A testing aid: when set, "now" for the scheduler is read from this file (Unix
    /// milliseconds or an RFC 3339 time, re-read every 100 ms), so tests move time by
    /// rewriting it. Unset (the default): the system clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_file: Option<PathBuf>,
    /// Whether a write waits for storage to flush it to disk before it counts (the default).
    /// `false` is for tests and benchmarks only: nothing waits for the disk, and runs are not
    /// durable across a crash (a clean stop writes everything out).
    pub flush_writes: bool,
    /// What storage keeps of its pages in memory, at most, in MiB (64). Recently written and
    /// read runs are served from it; the rest from disk (and the kernel's page cache).
    pub storage_cache_mb: u64,
    /// Where the run actors run: threads of their own (the default), or, for tests, the
    /// runtime of the caller, on its clock ([`ActorRuntime`]). Not read from a file.
    #[serde(skip)]
    pub actor_runtime: ActorRuntime,
}

/// What one run's inputs may take in memory by default (8 MiB).
pub const DEFAULT_MAX_INPUT_MEMORY_BYTES: usize = 8 << 20;

impl OrchestratorConfig {
    /// The budget of the expressions and templates the orchestrator evaluates.
    pub fn expr_limits(&self) -> rpaflow_core::expr::Limits {
        rpaflow_core::expr::Limits {
            fuel: self.expr_fuel,
            max_output_bytes: self.expr_max_output_bytes,
            section: "orchestrator",
        }
    }

    /// The flow limits of this configuration.
    pub fn flow_limits(&self) -> rpaflow_core::flow::FlowLimits {
        rpaflow_core::flow::FlowLimits {
            max_steps: self.max_flow_steps,
            max_nesting: self.max_flow_nesting,
        }
    }
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".rpaflow"),
            arbiters: 0,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_output_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_active_runs: 100_000,
            max_in_flight_per_queue: 10_000,
            max_flow_steps: rpaflow_core::flow::DEFAULT_MAX_FLOW_STEPS,
            max_flow_nesting: rpaflow_core::flow::DEFAULT_MAX_FLOW_NESTING,
            max_input_memory_bytes: DEFAULT_MAX_INPUT_MEMORY_BYTES,
            max_for_each_items: DEFAULT_MAX_FOR_EACH_ITEMS,
            max_for_each_concurrency: DEFAULT_MAX_FOR_EACH_CONCURRENCY,
            max_run_output_memory_bytes: DEFAULT_MAX_OUTPUT_MEMORY_BYTES,
            max_held_input_bytes: 2 << 30,
            max_subflow_depth: 8,
            expr_fuel: rpaflow_core::expr::DEFAULT_FUEL,
            expr_max_output_bytes: rpaflow_core::expr::DEFAULT_MAX_OUTPUT_BYTES,
            eval_threads: 0,
            secrets_key: None,
            auth: crate::auth::AuthConfig::default(),
            clock_file: None,
            flush_writes: true,
            storage_cache_mb: 64,
            actor_runtime: ActorRuntime::default(),
        }
    }
}
