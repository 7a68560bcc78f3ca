//! Admission: every decision about whether a run may start, and what those decisions count.
//!
//! - this file: [`Engine::admit`], the one decision for a new run (the active-run limit, the
//!   memory its inputs would add, its queues' backlog), made under the actor table's lock, and
//!   [`Admitted`], the place it holds until the run's actor has it.
//! - [`backlog`]: tasks dispatched and not yet answered, per queue.
//! - [`policies`]: the flows' `concurrency` policies (`queue`, `skip`, `cancel_oldest`): which
//!   runs hold a running place, starting queued runs as places free, making room.

mod backlog;
mod policies;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rpaflow_core::flow::Flow;

pub(crate) use self::backlog::Backlog;
pub(in crate::orchestrator) use self::policies::FlowRuns;
use super::Engine;
use crate::error::{Error, Result};

/// The memory the inputs of the runs in memory take ([`crate::state::json_memory_bytes`]).
#[derive(Debug, Default)]
pub(crate) struct HeldInputs {
    pub(super) by_run: HashMap<String, usize>,
    /// The sum of `by_run`.
    pub(super) total: usize,
    /// Reserved by runs admitted and not yet in `by_run`.
    pub(super) starting: usize,
}

impl Engine {
    /// The one admission decision for a new run: refuses it when the orchestrator or one of
    /// the flow's queues is full, and otherwise holds its place until its actor exists. Count
    /// and reservation happen under the actor table's lock, so concurrent starts cannot all
    /// see the same free place; a run is counted twice (reserved and active) for a moment,
    /// never zero times.
    pub(super) fn admit(self: &Arc<Self>, flow: &Flow, input_bytes: usize) -> Result<Admitted> {
        let actors = self
            .actors
            .lock()
            .map_err(|_| Error::Internal("actor table poisoned".into()))?;
        let mut held = self
            .held_inputs
            .lock()
            .map_err(|_| Error::Internal("input table poisoned".into()))?;
        let holding = held.total.saturating_add(held.starting);
        if holding.saturating_add(input_bytes) > self.config.max_held_input_bytes {
            return Err(Error::ResourceExhausted(format!(
                "the runs in memory hold about {holding} bytes of inputs; this run's {input_bytes} \
                 would pass the limit of {} bytes (orchestrator.max_held_input_bytes); retry later",
                self.config.max_held_input_bytes
            )));
        }
        let active = actors.len() + self.starting.load(Ordering::SeqCst);
        if active >= self.config.max_active_runs {
            return Err(Error::ResourceExhausted(format!(
                "{active} runs are active, the limit is {} (orchestrator.max_active_runs); retry later",
                self.config.max_active_runs
            )));
        }
        for step in &flow.steps {
            let in_flight = self.backlog.in_flight(&step.queue);
            if in_flight >= self.config.max_in_flight_per_queue {
                return Err(Error::ResourceExhausted(format!(
                    "queue `{}` has {in_flight} steps waiting for workers, the limit is {} \
                     (orchestrator.max_in_flight_per_queue); retry later",
                    step.queue, self.config.max_in_flight_per_queue
                )));
            }
        }
        self.starting.fetch_add(1, Ordering::SeqCst);
        held.starting = held.starting.saturating_add(input_bytes);
        drop(held);
        drop(actors);
        Ok(Admitted {
            shared: self.clone(),
            input_bytes,
        })
    }
}

/// A place (and the memory of its inputs) held for a run being started; dropped once its actor
/// is in the table (or the start failed).
pub(super) struct Admitted {
    shared: Arc<Engine>,
    input_bytes: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared.starting.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut held) = self.shared.held_inputs.lock() {
            held.starting = held.starting.saturating_sub(self.input_bytes);
        }
    }
}
