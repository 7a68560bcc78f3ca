//! The flows' `concurrency` policies: which runs of each flow hold a running place and which
//! wait ([`FlowRuns`]), starting queued runs as places free, and making room before a new run.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use rpaflow_core::flow::{Concurrency, ConcurrencyPolicy};
use tracing::{info, warn};

use crate::actors::Deliver;
use crate::error::{Error, Result};
use crate::orchestrator::{Engine, OrchestratorHandle};
use crate::state::Input;

/// The unfinished runs of each flow, oldest first, for the flows' concurrency policies: those
/// running and those queued (policy `queue`).
#[derive(Default)]
pub(in crate::orchestrator) struct FlowRuns {
    by_flow: HashMap<String, FlowSlots>,
    /// run id -> (flow, created at): where to find it in `by_flow`.
    flow_of: HashMap<String, (String, i64)>,
}

/// One flow's runs, each in exactly one of the two sets.
#[derive(Default)]
struct FlowSlots {
    running: BTreeSet<(i64, String)>,
    queued: BTreeSet<(i64, String)>,
}

impl FlowRuns {
    /// The flow (full name) of a run in memory.
    pub(in crate::orchestrator) fn flow_of(&self, run_id: &str) -> Option<&str> {
        self.flow_of.get(run_id).map(|(flow, _)| flow.as_str())
    }

    pub(in crate::orchestrator) fn add(
        &mut self,
        run_id: &str,
        flow: &str,
        created_at_ms: i64,
        queued: bool,
    ) {
        let slots = self.by_flow.entry(flow.to_owned()).or_default();
        let set = if queued {
            &mut slots.queued
        } else {
            &mut slots.running
        };
        set.insert((created_at_ms, run_id.to_owned()));
        self.flow_of
            .insert(run_id.to_owned(), (flow.to_owned(), created_at_ms));
    }

    /// Forgets a run; returns its flow when it held a running place (one may be free now).
    pub(in crate::orchestrator) fn remove(&mut self, run_id: &str) -> Option<String> {
        let (flow, created) = self.flow_of.remove(run_id)?;
        let slots = self.by_flow.get_mut(&flow)?;
        let key = (created, run_id.to_owned());
        let was_running = slots.running.remove(&key);
        if !was_running {
            slots.queued.remove(&key);
        }
        if slots.running.is_empty() && slots.queued.is_empty() {
            self.by_flow.remove(&flow);
        }
        was_running.then_some(flow)
    }

    /// The flow's running runs, oldest first.
    pub(in crate::orchestrator) fn running(&self, flow: &str) -> Vec<String> {
        self.by_flow
            .get(flow)
            .map(|s| s.running.iter().map(|(_, id)| id.clone()).collect())
            .unwrap_or_default()
    }

    pub(in crate::orchestrator) fn queued(&self, flow: &str) -> usize {
        self.by_flow.get(flow).map_or(0, |s| s.queued.len())
    }

    /// Each flow's running and queued runs.
    pub(in crate::orchestrator) fn counts(&self) -> impl Iterator<Item = (&str, usize, usize)> {
        self.by_flow
            .iter()
            .map(|(flow, s)| (flow.as_str(), s.running.len(), s.queued.len()))
    }

    /// Flows with queued runs.
    pub(in crate::orchestrator) fn with_queue(&self) -> Vec<String> {
        self.by_flow
            .iter()
            .filter(|(_, s)| !s.queued.is_empty())
            .map(|(flow, _)| flow.clone())
            .collect()
    }

    /// Moves the oldest queued runs of `flow` to running while fewer than `max` run; returns
    /// them, oldest first.
    pub(in crate::orchestrator) fn promote(&mut self, flow: &str, max: usize) -> Vec<String> {
        let mut promoted = Vec::new();
        let Some(slots) = self.by_flow.get_mut(flow) else {
            return promoted;
        };
        while slots.running.len() < max {
            let Some(next) = slots.queued.pop_first() else {
                break;
            };
            promoted.push(next.1.clone());
            slots.running.insert(next);
        }
        promoted
    }
}

impl Engine {
    /// Has the flow's queued runs started, on a task of their own (it waits for the flow's
    /// admission lock), when it has some and fewer than `max_running` runs hold a place.
    pub(in crate::orchestrator) fn wake_queue(self: &Arc<Self>, flow: &str, max_running: usize) {
        let waiting = self
            .flow_runs
            .lock()
            .is_ok_and(|r| r.queued(flow) > 0 && r.running(flow).len() < max_running);
        if waiting {
            tokio::spawn(self.clone().dequeue(flow.to_owned()));
        }
    }

    /// Starts the oldest queued runs of `flow` while it has fewer than `max_runs` running (the
    /// latest version's `concurrency`; all of them when it has no `queue` policy any more).
    async fn dequeue(self: Arc<Self>, flow: String) {
        let lock = self.admission_lock(&flow);
        let promoted = {
            let _admission = lock.lock().await;
            let max = match self
                .registry
                .latest_version(&flow)
                .and_then(|v| self.registry.get(&flow, v))
            {
                Ok(latest) => match &latest.concurrency {
                    Some(c) if c.policy == ConcurrencyPolicy::Queue => c.max_runs as usize,
                    _ => usize::MAX,
                },
                Err(err) => {
                    warn!(flow, error = %err, "cannot read the flow's concurrency; its queued runs wait");
                    return;
                }
            };
            match self.flow_runs.lock() {
                Ok(mut runs) => runs.promote(&flow, max),
                Err(_) => return,
            }
        };
        for run_id in promoted {
            let Some(addr) = self.actor(&run_id) else {
                continue;
            };
            match addr
                .send(Deliver {
                    input: Input::Dequeue,
                    ack: None,
                })
                .await
            {
                Ok(Ok(())) => info!(run_id = %run_id, flow, "queued run started"),
                // Cancelled meanwhile: its end frees the place again.
                Ok(Err(rejection)) => {
                    info!(run_id = %run_id, flow, %rejection, "queued run not started")
                }
                Err(_) => {}
            }
        }
    }

    pub(in crate::orchestrator) fn admission_lock(
        &self,
        flow: &str,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .admission
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(flow.to_owned()).or_default().clone()
    }
}

impl OrchestratorHandle {
    /// Applies the flow's concurrency policy before a new run. With `max_runs` runs active,
    /// `queue` has it wait (returns why), `skip` refuses it and `cancel_oldest` cancels the
    /// oldest ones to make room. A run queues behind runs already waiting.
    pub(in crate::orchestrator) async fn make_room(
        &self,
        flow: &str,
        concurrency: &Concurrency,
    ) -> Result<Option<String>> {
        let (running, queued) = {
            let runs = self
                .shared
                .flow_runs
                .lock()
                .map_err(|_| Error::Internal("run table poisoned".into()))?;
            (runs.running(flow), runs.queued(flow))
        };
        let max = concurrency.max_runs as usize;
        if running.len() < max && queued == 0 {
            return Ok(None);
        }
        match concurrency.policy {
            ConcurrencyPolicy::Queue => {
                if let Some(limit) = concurrency.max_queued
                    && queued >= limit as usize
                {
                    return Err(Error::FailedPrecondition(format!(
                        "flow {flow} has {} runs active and {queued} queued, the limit is {limit} (concurrency.max_queued)",
                        running.len()
                    )));
                }
                Ok(Some(format!(
                    "{} runs of {flow} active (concurrency.max_runs {max}), {queued} queued before it",
                    running.len()
                )))
            }
            ConcurrencyPolicy::Skip => Err(Error::FailedPrecondition(format!(
                "flow {flow} has {} runs active (concurrency.max_runs)",
                running.len()
            ))),
            ConcurrencyPolicy::CancelOldest => {
                let excess = (running.len() + 1).saturating_sub(max);
                for run_id in &running[..excess] {
                    let reason = format!(
                        "cancelled to make room for a new run of {flow} (concurrency: cancel_oldest, max_runs {max})"
                    );
                    match self.cancel(run_id, &reason).await {
                        Ok(_) => info!(run_id = %run_id, flow, "run cancelled to make room"),
                        // It ended meanwhile: room made all the same.
                        Err(Error::Rejected { .. } | Error::FailedPrecondition(_)) => {}
                        Err(err) => return Err(err),
                    }
                    // Finished now; its actor leaves a moment later.
                    if let Ok(mut runs) = self.shared.flow_runs.lock() {
                        runs.remove(run_id);
                    }
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FlowRuns;

    #[test]
    fn runs_are_listed_oldest_first_and_queued_ones_counted() {
        let mut runs = FlowRuns::default();
        runs.add("b", "f", 20, false);
        runs.add("a", "f", 10, false);
        runs.add("q", "f", 30, true);
        runs.add("x", "other", 5, false);
        assert_eq!(runs.running("f"), ["a", "b"]);
        assert_eq!(runs.queued("f"), 1);
        assert_eq!(runs.running("other"), ["x"]);
        assert_eq!(runs.queued("other"), 0);
        assert_eq!(runs.with_queue(), ["f"]);
        assert!(runs.running("unknown").is_empty());
        assert_eq!(runs.queued("unknown"), 0);
    }

    #[test]
    fn remove_names_the_flow_only_when_a_running_place_frees() {
        let mut runs = FlowRuns::default();
        runs.add("r", "f", 1, false);
        runs.add("q", "f", 2, true);
        assert_eq!(runs.remove("q"), None);
        assert_eq!(runs.queued("f"), 0);
        assert_eq!(runs.remove("r").as_deref(), Some("f"));
        assert!(runs.running("f").is_empty());
        // Gone already, or never known.
        assert_eq!(runs.remove("r"), None);
        assert_eq!(runs.remove("unknown"), None);
        assert!(runs.with_queue().is_empty());
    }

    #[test]
    fn promote_starts_the_oldest_queued_runs_while_fewer_than_max_run() {
        let mut runs = FlowRuns::default();
        runs.add("r1", "f", 1, false);
        runs.add("q3", "f", 30, true);
        runs.add("q1", "f", 10, true);
        runs.add("q2", "f", 20, true);
        assert!(runs.promote("f", 1).is_empty());
        assert_eq!(runs.promote("f", 3), ["q1", "q2"]);
        assert_eq!(runs.running("f"), ["r1", "q1", "q2"]);
        assert_eq!(runs.queued("f"), 1);
        // A promoted run now holds a running place.
        assert_eq!(runs.remove("q1").as_deref(), Some("f"));
        assert_eq!(runs.promote("f", usize::MAX), ["q3"]);
        assert_eq!(runs.queued("f"), 0);
        assert!(runs.with_queue().is_empty());
        assert!(runs.promote("unknown", 5).is_empty());
    }
}
