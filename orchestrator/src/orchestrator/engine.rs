//! [`Engine`]: the orchestrator's engine room, shared by the handle (the API's way in) and, through
//! [`crate::effects::RunEffects`], by the run actors: storage, the flow registry, the bus, the
//! actor table and what admission counts.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use actix::Addr;
use rpaflow_core::bus::StepBus;
use rpaflow_proto::v1 as pb;
use tokio::sync::broadcast;
use tracing::warn;

use super::OrchestratorConfig;
use super::admission::{Backlog, FlowRuns, HeldInputs};
use crate::actors::{ActorSystem, Initial, Published, RunActor};
use crate::error::{Error, Result};
use crate::evaluation::Evaluator;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::state::{EventKind, RunEvent, RunState, RunStatus, TaskSpec};
use crate::store::{PendingApproval, RunSummary, Store};
use crate::triggers::schedule::SchedulerHandle;

/// An active run in the actor table.
pub(crate) enum Slot {
    /// In memory, with its actor.
    Live(Addr<RunActor>),
    /// Waiting only for people ([`RunState::waits_only_for_people`]): nothing of it in memory
    /// but this entry; [`Engine::wake`] rebuilds it from storage.
    Resting,
}

/// The orchestrator's shared state: storage, registry, bus, the actor table and admission.
pub struct Engine {
    pub(crate) store: Store,
    pub(crate) registry: Registry,
    pub(crate) bus: Arc<dyn StepBus>,
    pub(crate) backlog: Backlog,
    pub(crate) metrics: Metrics,
    pub(super) scheduler: SchedulerHandle,
    pub(crate) config: OrchestratorConfig,
    /// Where expressions and templates are evaluated ([`crate::evaluation`]).
    pub(crate) evaluator: Evaluator,
    /// What time it is for runs ([`super::EngineClock`]).
    pub(crate) clock: super::EngineClock,
    /// The active runs: each with its actor, or resting ([`Slot`]).
    pub(super) actors: Mutex<HashMap<String, Slot>>,
    /// Runs admitted and not yet in `actors`: counted with them by `admit`.
    pub(super) starting: AtomicUsize,
    /// What the inputs of the runs in memory take, for `max_held_input_bytes`.
    pub(super) held_inputs: Mutex<HeldInputs>,
    /// The same runs by flow, for `concurrency`.
    pub(super) flow_runs: Mutex<FlowRuns>,
    /// Starts of a flow with a `concurrency` policy, one at a time (count, decide, create).
    pub(super) admission: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(super) system: Mutex<Option<ActorSystem>>,
    /// Every durable batch of events, for in-process subscribers that keep up (the Kafka event
    /// feed, benchmarks): one that falls behind misses batches.
    pub(super) events: broadcast::Sender<Published>,
    /// The runs clients watch ([`super::OrchestratorHandle::watch_run`]).
    pub(super) watchers: super::watch::RunWatchers,
    /// Bumped whenever a new flow version is registered.
    pub(super) registrations: tokio::sync::watch::Sender<u64>,
}

impl Engine {
    pub(crate) fn summary(&self, state: &RunState) -> RunSummary {
        RunSummary {
            run_id: state.run_id.clone(),
            flow: state.flow.name.clone(),
            version: state.flow_version,
            status: state.status.name().to_owned(),
            created_at_ms: state.created_at_ms,
            updated_at_ms: state.updated_at_ms,
            idempotency_key: state.idempotency_key.clone(),
            error: state.error.clone(),
            trigger: state.trigger.clone(),
        }
    }

    /// Keeps the store's list of pending approvals in step with `events` (written before, and
    /// made durable with, the events' commit).
    pub(crate) fn track_approvals(&self, state: &RunState, events: &[RunEvent]) -> Result<()> {
        for event in events {
            match &event.kind {
                EventKind::ApprovalRequested {
                    step,
                    message,
                    deadline_ms,
                } => {
                    let approvers = state
                        .flow
                        .step(step)
                        .and_then(|def| rpaflow_core::flow::Approvers::of(&def.with).ok().flatten())
                        .unwrap_or_default();
                    self.store.put_approval(&PendingApproval {
                        run_id: state.run_id.clone(),
                        flow: state.flow.name.clone(),
                        version: state.flow_version,
                        step: step.clone(),
                        message: message.clone(),
                        requested_at_ms: event.at_ms,
                        deadline_ms: *deadline_ms,
                        approver_roles: approvers.roles,
                        approver_names: approvers.names,
                    })?;
                }
                // Only approval steps have a pending approval to remove: other steps cost no
                // storage operation here.
                EventKind::StepFinished { step, .. }
                    if state
                        .flow
                        .step(step)
                        .is_some_and(|def| def.uses == "approval") =>
                {
                    self.store.remove_approval(&state.run_id, step)?
                }
                EventKind::RunCancelled { .. } | EventKind::RunFailed { .. } => {
                    for (def, st) in state.flow.steps.iter().zip(&state.steps) {
                        if def.uses == "approval" && st.status.is_finished() {
                            self.store.remove_approval(&state.run_id, &def.id)?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(crate) fn publish(&self, run_id: &str, events: Vec<RunEvent>) {
        // Nobody subscribed is fine.
        let _ = self.events.send(Arc::new((run_id.to_owned(), events)));
        self.watchers.notify(run_id);
    }

    pub(crate) fn forget(self: &Arc<Self>, run_id: &str) {
        if let Ok(mut actors) = self.actors.lock() {
            actors.remove(run_id);
        }
        if let Ok(mut held) = self.held_inputs.lock()
            && let Some(bytes) = held.by_run.remove(run_id)
        {
            held.total = held.total.saturating_sub(bytes);
        }
        let freed = self
            .flow_runs
            .lock()
            .ok()
            .and_then(|mut r| r.remove(run_id));
        if let Some(flow) = freed {
            self.wake_queue(&flow, usize::MAX);
        }
        self.backlog.run_ended(run_id);
    }

    /// The sealed values of the secrets whose markers in the task's input were made for this
    /// attempt (by the marker's whole text; empty for a secret that is not set, which the
    /// worker reports by name). Markers that came from data get nothing: the worker refuses
    /// them.
    fn task_secrets(&self, state: &RunState, spec: &TaskSpec) -> HashMap<String, String> {
        let this = rpaflow_core::secrets::Attempt {
            run_id: &state.run_id,
            step: &spec.step,
            item: spec.item,
            attempt: spec.attempt,
        };
        let namespace = rpaflow_core::namespace::of(&state.flow.name);
        rpaflow_core::secrets::markers(&spec.input)
            .into_iter()
            .filter(|marker| this.is_valid(marker))
            .map(|marker| {
                // The run's own namespace's secret of that name, and no other.
                let name = rpaflow_core::namespace::qualify(namespace, &marker.name);
                let sealed = match self.store.sealed_secret(&name) {
                    Ok(sealed) => sealed.unwrap_or_default(),
                    Err(err) => {
                        warn!(run_id = %state.run_id, secret = %marker.name, error = %err, "cannot read secret");
                        String::new()
                    }
                };
                (marker.text, sealed)
            })
            .collect()
    }

    pub(crate) fn task(&self, state: &RunState, spec: TaskSpec) -> pb::Task {
        let secrets = self.task_secrets(state, &spec);
        let traceparent =
            rpaflow_core::kafka::traceparent(&state.run_id, &spec.step, spec.item, spec.attempt);
        pb::Task {
            secrets,
            namespace: rpaflow_core::namespace::of(&state.flow.name).to_owned(),
            run_id: state.run_id.clone(),
            step_id: spec.step,
            item: spec.item,
            attempt: spec.attempt,
            kind: spec.kind,
            input_json: spec.input.to_string(),
            queue: spec.queue,
            timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
            flow: state.flow.name.clone(),
            flow_version: state.flow_version,
            max_output_bytes: self.config.max_output_bytes as u64,
            headers: HashMap::from([(
                rpaflow_core::kafka::TRACEPARENT_HEADER.to_owned(),
                traceparent,
            )]),
        }
    }

    /// Whether a worker's result names the namespace of its run (an empty one is `default`).
    pub(super) fn result_namespace_matches(&self, result: &pb::TaskResult) -> bool {
        let named = match result.namespace.as_str() {
            "" => rpaflow_core::namespace::DEFAULT,
            named => named,
        };
        self.flow_runs
            .lock()
            .ok()
            .and_then(|runs| {
                runs.flow_of(&result.run_id)
                    .map(|flow| rpaflow_core::namespace::contains(named, flow))
            })
            .unwrap_or(false)
    }

    /// How many active runs are in memory, and how many rest.
    pub(crate) fn active_runs(&self) -> super::ActiveRuns {
        let mut counted = super::ActiveRuns::default();
        if let Ok(actors) = self.actors.lock() {
            for slot in actors.values() {
                match slot {
                    Slot::Live(_) => counted.in_memory += 1,
                    Slot::Resting => counted.resting += 1,
                }
            }
        }
        counted
    }

    /// The actor of a run in memory; `None` for a run that is resting, finished or unknown.
    pub(crate) fn actor(&self, run_id: &str) -> Option<Addr<RunActor>> {
        match self.actors.lock().ok()?.get(run_id)? {
            Slot::Live(addr) => Some(addr.clone()),
            Slot::Resting => None,
        }
    }

    /// The actor of an active run, rebuilding a resting run from storage first (its approval
    /// deadlines armed again); `None` for a run that is not active.
    pub(crate) fn wake(self: &Arc<Self>, run_id: &str) -> Result<Option<Addr<RunActor>>> {
        let mut actors = self
            .actors
            .lock()
            .map_err(|_| Error::Internal("actor table poisoned".into()))?;
        match actors.get(run_id) {
            None => return Ok(None),
            Some(Slot::Live(addr)) => return Ok(Some(addr.clone())),
            Some(Slot::Resting) => {}
        }
        // Under the table's lock: nobody else wakes it meanwhile, from an older state.
        let state = self.load(run_id)?;
        let timers = state.pending_timers();
        let initial = Initial::Recovered {
            events: Vec::new(),
            timers,
        };
        self.spawn_locked(&mut actors, state, initial).map(Some)
    }

    /// Wakes a resting run when its first approval deadline passes.
    fn wake_at_deadline(self: &Arc<Self>, state: &RunState) {
        let Some(at_ms) = state.next_timer_ms() else {
            return;
        };
        let delay = u64::try_from(at_ms - self.clock.now_ms()).unwrap_or(0);
        let engine = Arc::downgrade(self);
        let run_id = state.run_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            // Woken (and maybe resting again) meanwhile: waking is harmless.
            if let Some(engine) = engine.upgrade()
                && let Err(err) = engine.wake(&run_id)
            {
                warn!(run_id = %run_id, error = %err, "cannot wake a resting run at its approval deadline");
            }
        });
    }

    /// Keeps a run that waits only for people as resting, its actor leaving memory; a passing
    /// approval deadline wakes it. `false` when the table does not hold it as in memory.
    pub(super) fn rest(self: &Arc<Self>, state: &RunState) -> bool {
        let Ok(mut actors) = self.actors.lock() else {
            return false;
        };
        match actors.get_mut(&state.run_id) {
            Some(slot @ Slot::Live(_)) => *slot = Slot::Resting,
            _ => return false,
        }
        drop(actors);
        self.wake_at_deadline(state);
        true
    }

    /// Starts the actor of a run unless one is running; returns the run's actor, which handles
    /// `initial` first. `state` carries this orchestrator's limits ([`Self::apply_limits`]).
    pub(super) fn ensure_actor(
        self: &Arc<Self>,
        state: RunState,
        initial: Initial,
    ) -> Result<Addr<RunActor>> {
        let mut actors = self
            .actors
            .lock()
            .map_err(|_| Error::Internal("actor table poisoned".into()))?;
        self.spawn_locked(&mut actors, state, initial)
    }

    /// [`Self::ensure_actor`], the table locked by the caller.
    fn spawn_locked(
        self: &Arc<Self>,
        actors: &mut HashMap<String, Slot>,
        state: RunState,
        initial: Initial,
    ) -> Result<Addr<RunActor>> {
        let resting = match actors.get(&state.run_id) {
            Some(Slot::Live(addr)) => return Ok(addr.clone()),
            Some(Slot::Resting) => true,
            None => false,
        };
        let run_id = state.run_id.clone();
        let system = self
            .system
            .lock()
            .map_err(|_| Error::Internal("actor system poisoned".into()))?;
        let system = system.as_ref().ok_or(Error::NotRunning("orchestrator"))?;
        if resting {
            // Still counted (inputs, its flow's runs) from when it was first in memory.
            let addr = system.spawn_run(state, Arc::new(self.clone()), initial);
            actors.insert(run_id, Slot::Live(addr.clone()));
            return Ok(addr);
        }
        let (flow, created_at_ms) = (state.flow.name.clone(), state.created_at_ms);
        let queued = state.status == RunStatus::Queued;
        let input_bytes = crate::state::json_memory_bytes(&state.inputs);
        // The run's first tasks count in its queues' backlog now, before StartRun answers, not
        // when the new actor gets to them: back-to-back starts all see them. (The actor counts
        // them again when it dispatches; the same attempt only replaces itself.)
        let first = match &initial {
            Initial::Start { events, .. } | Initial::Recovered { events, .. } => {
                state.actions_for(events)
            }
            Initial::Loaded => Vec::new(),
        };
        for action in &first {
            if let crate::state::Action::Dispatch(spec) = action {
                self.backlog
                    .dispatched(&run_id, &spec.step, spec.item, spec.attempt, &spec.queue);
            }
        }
        let addr = system.spawn_run(state, Arc::new(self.clone()), initial);
        self.count_in(&run_id, &flow, created_at_ms, queued, input_bytes);
        actors.insert(run_id, Slot::Live(addr.clone()));
        Ok(addr)
    }

    /// Counts a run now in the table in what admission holds: its inputs, its flow's runs.
    fn count_in(
        &self,
        run_id: &str,
        flow: &str,
        created_at_ms: i64,
        queued: bool,
        input_bytes: usize,
    ) {
        if let Ok(mut held) = self.held_inputs.lock()
            && held.by_run.insert(run_id.to_owned(), input_bytes).is_none()
        {
            held.total = held.total.saturating_add(input_bytes);
        }
        if let Ok(mut runs) = self.flow_runs.lock() {
            runs.add(run_id, flow, created_at_ms, queued);
        }
    }

    /// A recovered run that waits only for people enters the table resting, without an actor.
    pub(super) fn recover_resting(self: &Arc<Self>, state: &RunState) -> Result<()> {
        let mut actors = self
            .actors
            .lock()
            .map_err(|_| Error::Internal("actor table poisoned".into()))?;
        if actors.contains_key(&state.run_id) {
            return Ok(());
        }
        self.count_in(
            &state.run_id,
            &state.flow.name,
            state.created_at_ms,
            false,
            crate::state::json_memory_bytes(&state.inputs),
        );
        actors.insert(state.run_id.clone(), Slot::Resting);
        drop(actors);
        self.wake_at_deadline(state);
        Ok(())
    }

    /// The limits this orchestrator enforces on a run, which are not part of its events.
    pub(super) fn apply_limits(&self, state: &mut RunState) {
        state.max_payload_bytes = self.config.max_payload_bytes;
        state.max_for_each_items = self.config.max_for_each_items;
        state.max_for_each_concurrency = self.config.max_for_each_concurrency;
        state.max_output_memory_bytes = self.config.max_run_output_memory_bytes;
    }

    /// A run's state from storage alone.
    pub(super) fn load(&self, run_id: &str) -> Result<RunState> {
        self.load_listed(run_id).map(|(state, _)| state)
    }

    /// [`Self::load`], with the run's stored listing it was rebuilt from.
    pub(super) fn load_listed(&self, run_id: &str) -> Result<(RunState, RunSummary)> {
        let summary = self
            .store
            .run(run_id)?
            .ok_or_else(|| Error::RunNotFound(run_id.to_owned()))?;
        let flow = self.registry.get(&summary.flow, summary.version)?;
        let events = self.store.events(run_id, 1)?;
        let mut state = RunState::replay(run_id, flow, summary.version, &events);
        self.apply_limits(&mut state);
        Ok((state, summary))
    }
}
