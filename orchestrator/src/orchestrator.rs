//! The orchestrator component: storage, the flow registry, run actors and the result loop,
//! behind a cheap [`OrchestratorHandle`] that the gRPC API, `rpaflow dev` and the benchmarks use.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix::Addr;
use futures::Stream;
use rpaflow_core::bus::{ResultDelivery, StepBus};
use rpaflow_core::flow::{Concurrency, ConcurrencyPolicy, Flow, TriggerKind};
use rpaflow_core::time::now_ms;
use rpaflow_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::actors::{ActorSystem, Deliver, Published, RunActor, Snapshot};
use crate::backlog::Backlog;
use crate::error::{Error, Result};
use crate::registry::{Registered, Registry};
use crate::schedule::{Clock, ScheduleView, Scheduler, SchedulerHandle};
use crate::state::{
    DEFAULT_MAX_PAYLOAD_BYTES, ErrorInfo, EventKind, Input, RunEvent, RunState, RunStatus, TaskSpec,
};
use crate::store::{Created, FlowRecord, PendingApproval, RunSummary, SecretInfo, Store};

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

/// The unfinished runs of each flow, oldest first, for the flows' concurrency policies: those
/// running and those queued (policy `queue`).
#[derive(Default)]
struct FlowRuns {
    by_flow: HashMap<String, FlowSlots>,
    /// run id -> (flow, created at, queued).
    flow_of: HashMap<String, (String, i64, bool)>,
}

#[derive(Default)]
struct FlowSlots {
    running: BTreeSet<(i64, String)>,
    queued: BTreeSet<(i64, String)>,
}

impl FlowSlots {
    fn set(&mut self, queued: bool) -> &mut BTreeSet<(i64, String)> {
        if queued {
            &mut self.queued
        } else {
            &mut self.running
        }
    }
}

impl FlowRuns {
    fn add(&mut self, run_id: &str, flow: &str, created_at_ms: i64, queued: bool) {
        self.by_flow
            .entry(flow.to_owned())
            .or_default()
            .set(queued)
            .insert((created_at_ms, run_id.to_owned()));
        self.flow_of
            .insert(run_id.to_owned(), (flow.to_owned(), created_at_ms, queued));
    }

    /// Forgets a run; returns its flow when it held a running place (one may be free now).
    fn remove(&mut self, run_id: &str) -> Option<String> {
        let (flow, created, queued) = self.flow_of.remove(run_id)?;
        let slots = self.by_flow.get_mut(&flow)?;
        slots.set(queued).remove(&(created, run_id.to_owned()));
        if slots.running.is_empty() && slots.queued.is_empty() {
            self.by_flow.remove(&flow);
        }
        (!queued).then_some(flow)
    }

    /// The flow's running runs, oldest first.
    fn running(&self, flow: &str) -> Vec<String> {
        self.by_flow
            .get(flow)
            .map(|s| s.running.iter().map(|(_, id)| id.clone()).collect())
            .unwrap_or_default()
    }

    fn queued(&self, flow: &str) -> usize {
        self.by_flow.get(flow).map_or(0, |s| s.queued.len())
    }

    /// Flows with queued runs.
    fn with_queue(&self) -> Vec<String> {
        self.by_flow
            .iter()
            .filter(|(_, s)| !s.queued.is_empty())
            .map(|(flow, _)| flow.clone())
            .collect()
    }

    /// Moves the oldest queued runs of `flow` to running while fewer than `max` run; returns
    /// them, oldest first.
    fn promote(&mut self, flow: &str, max: usize) -> Vec<String> {
        let mut promoted = Vec::new();
        let Some(slots) = self.by_flow.get_mut(flow) else {
            return promoted;
        };
        while slots.running.len() < max {
            let Some(next) = slots.queued.pop_first() else {
                break;
            };
            if let Some(entry) = self.flow_of.get_mut(&next.1) {
                entry.2 = false;
            }
            promoted.push(next.1.clone());
            slots.running.insert(next);
        }
        promoted
    }
}

/// What the actors and the handle share.
pub struct Shared {
    pub(crate) store: Store,
    pub(crate) registry: Registry,
    pub(crate) bus: Arc<dyn StepBus>,
    pub(crate) backlog: Backlog,
    scheduler: SchedulerHandle,
    config: OrchestratorConfig,
    actors: Mutex<HashMap<String, Addr<RunActor>>>,
    /// The same runs by flow, for `concurrency`.
    flow_runs: Mutex<FlowRuns>,
    /// Starts of a flow with a `concurrency` policy, one at a time (count, decide, create).
    admission: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    system: Mutex<Option<ActorSystem>>,
    events: broadcast::Sender<Published>,
    /// Bumped whenever a new flow version is registered.
    registrations: tokio::sync::watch::Sender<u64>,
}

impl Shared {
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
                    self.store.put_approval(&PendingApproval {
                        run_id: state.run_id.clone(),
                        flow: state.flow.name.clone(),
                        version: state.flow_version,
                        step: step.clone(),
                        message: message.clone(),
                        requested_at_ms: event.at_ms,
                        deadline_ms: *deadline_ms,
                    })?;
                }
                EventKind::StepFinished { step, .. } => {
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
        // Nobody watching is fine.
        let _ = self.events.send(Arc::new((run_id.to_owned(), events)));
    }

    pub(crate) fn forget(self: &Arc<Self>, run_id: &str) {
        if let Ok(mut actors) = self.actors.lock() {
            actors.remove(run_id);
        }
        let freed = self.flow_runs.lock().ok().and_then(|mut runs| {
            let flow = runs.remove(run_id)?;
            (runs.queued(&flow) > 0).then_some(flow)
        });
        if let Some(flow) = freed {
            tokio::spawn(self.clone().dequeue(flow));
        }
        self.backlog.run_ended(run_id);
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

    fn admission_lock(&self, flow: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .admission
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(flow.to_owned()).or_default().clone()
    }

    /// Refuses a new run of `flow` when the orchestrator or one of the flow's queues is full.
    fn admit(&self, flow: &Flow) -> Result<()> {
        let active = self.actors.lock().map_or(0, |a| a.len());
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
        Ok(())
    }

    pub(crate) fn task(&self, state: &RunState, spec: TaskSpec) -> pb::Task {
        // The values of the secrets the input refers to; a missing one is reported by the
        // worker, naming it, when it puts the values in place.
        let secrets = rpaflow_core::secrets::referenced(&spec.input)
            .into_iter()
            .filter_map(|name| match self.store.secret(&name) {
                Ok(value) => value.map(|v| (name, v)),
                Err(err) => {
                    warn!(run_id = %state.run_id, secret = %name, error = %err, "cannot read secret");
                    None
                }
            })
            .collect();
        let traceparent =
            rpaflow_core::kafka::traceparent(&state.run_id, &spec.step, spec.item, spec.attempt);
        pb::Task {
            secrets,
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

    pub(crate) fn actor(&self, run_id: &str) -> Option<Addr<RunActor>> {
        self.actors.lock().ok()?.get(run_id).cloned()
    }

    /// Starts the actor of a run unless one is running; returns the run's actor.
    fn ensure_actor(
        self: &Arc<Self>,
        mut state: RunState,
        initial: Vec<crate::state::Action>,
    ) -> Result<Addr<RunActor>> {
        let mut actors = self
            .actors
            .lock()
            .map_err(|_| Error::Internal("actor table poisoned".into()))?;
        if let Some(addr) = actors.get(&state.run_id) {
            return Ok(addr.clone());
        }
        state.max_payload_bytes = self.config.max_payload_bytes;
        let run_id = state.run_id.clone();
        let system = self
            .system
            .lock()
            .map_err(|_| Error::Internal("actor system poisoned".into()))?;
        let system = system.as_ref().ok_or(Error::NotRunning("orchestrator"))?;
        let (flow, created_at_ms) = (state.flow.name.clone(), state.created_at_ms);
        let queued = state.status == RunStatus::Queued;
        let addr = system.spawn_run(state, self.clone(), initial);
        if let Ok(mut runs) = self.flow_runs.lock() {
            runs.add(&run_id, &flow, created_at_ms, queued);
        }
        actors.insert(run_id, addr.clone());
        Ok(addr)
    }

    /// A run's state from storage alone.
    fn load(&self, run_id: &str) -> Result<RunState> {
        let summary = self
            .store
            .run(run_id)?
            .ok_or_else(|| Error::RunNotFound(run_id.to_owned()))?;
        let flow = self.registry.get(&summary.flow, summary.version)?;
        let events = self.store.events(run_id, 1)?;
        let mut state = RunState::replay(run_id, flow, summary.version, &events);
        state.max_payload_bytes = self.config.max_payload_bytes;
        Ok(state)
    }
}

/// The orchestrator; [`Orchestrator::run`] drives it until shutdown.
pub struct Orchestrator {
    shared: Arc<Shared>,
    /// Started by [`Orchestrator::run`].
    scheduler: Scheduler,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("data_dir", &self.shared.config.data_dir)
            .finish()
    }
}

impl Orchestrator {
    /// Opens storage, starts the actor system and rebuilds every unfinished run.
    pub async fn start(config: OrchestratorConfig, bus: Arc<dyn StepBus>) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Internal(format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let store = Store::open(&config.data_dir)?;
        let registry = Registry::new(store.clone());
        let system = ActorSystem::start(config.arbiters)?;
        let (events, _) = broadcast::channel(64 * 1024);
        let scheduler = Scheduler::new(Clock::new(config.clock_file.clone()));
        let shared = Arc::new(Shared {
            store,
            registry,
            bus,
            backlog: Backlog::default(),
            scheduler: scheduler.handle(),
            config,
            actors: Mutex::new(HashMap::new()),
            flow_runs: Mutex::default(),
            admission: Mutex::default(),
            system: Mutex::new(Some(system)),
            events,
            registrations: tokio::sync::watch::Sender::new(0),
        });
        let orchestrator = Self { shared, scheduler };
        orchestrator.recover().await?;
        Ok(orchestrator)
    }

    /// Rebuilds unfinished runs from their events, re-dispatches what has no result and sets
    /// their timers again.
    async fn recover(&self) -> Result<()> {
        let shared = &self.shared;
        let mut rebuilt = Vec::new();
        for run_id in shared.store.active_runs()? {
            let mut state = match shared.load(&run_id) {
                Ok(state) => state,
                Err(err) => {
                    warn!(run_id = %run_id, error = %err, "cannot rebuild run; left as it is");
                    continue;
                }
            };
            let events = state.handle(Input::Recover, now_ms()).unwrap_or_default();
            let mut actions = state.actions_for(&events);
            actions.extend(state.pending_timers());
            let summary = shared.summary(&state);
            rebuilt.push((state, events, summary, actions));
        }
        // Concurrent appends share flushes.
        futures::future::try_join_all(rebuilt.iter().map(|(state, events, summary, _)| {
            shared.store.append(&state.run_id, events, Some(summary))
        }))
        .await?;
        let mut recovered = 0usize;
        for (state, _, _, actions) in rebuilt {
            if !state.status.is_finished() {
                shared.ensure_actor(state, actions)?;
                recovered += 1;
            }
        }
        if recovered > 0 {
            info!(runs = recovered, "recovered unfinished runs");
        }
        Ok(())
    }

    pub fn handle(&self) -> OrchestratorHandle {
        OrchestratorHandle {
            shared: self.shared.clone(),
        }
    }

    /// Routes worker results to run actors and fires schedules until `shutdown`, then stops the
    /// scheduler and the actors.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let handle = self.handle();
        let Self { shared, scheduler } = self;
        let scheduler_stop = shutdown.child_token();
        let scheduler = tokio::spawn(scheduler.run(handle, scheduler_stop.clone()));
        // Places may have freed while the orchestrator was down.
        let waiting = shared
            .flow_runs
            .lock()
            .map(|r| r.with_queue())
            .unwrap_or_default();
        for flow in waiting {
            tokio::spawn(shared.clone().dequeue(flow));
        }
        loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => break,
                delivery = shared.bus.next_result() => delivery,
            };
            let Some(ResultDelivery { result, ack }) = delivery else {
                break;
            };
            shared
                .backlog
                .answered(&result.run_id, &result.step_id, result.item, result.attempt);
            let Some(addr) = shared.actor(&result.run_id) else {
                // A finished or unknown run: nothing to record.
                ack.ack();
                continue;
            };
            let outcome = match result.outcome {
                Some(pb::task_result::Outcome::OutputJson(text)) => serde_json::from_str(&text)
                    .map_err(|e| {
                        ErrorInfo::new(
                            "invalid_output",
                            format!("worker sent output that is not JSON: {e}"),
                            false,
                        )
                    }),
                Some(pb::task_result::Outcome::Error(e)) => Err(ErrorInfo {
                    code: e.code,
                    message: e.message,
                    retryable: e.retryable,
                }),
                None => Err(ErrorInfo::new(
                    "invalid_output",
                    "worker sent a result with neither output nor error",
                    false,
                )),
            };
            let input = Input::Result {
                step: result.step_id,
                item: result.item,
                attempt: result.attempt,
                outcome,
            };
            addr.do_send(Deliver {
                input,
                ack: Some(ack),
            });
        }
        info!("orchestrator stopping");
        scheduler_stop.cancel();
        if let Err(err) = scheduler.await {
            warn!(error = %err, "scheduler task failed");
        }
        if let Ok(mut system) = shared.system.lock()
            && let Some(mut system) = system.take()
        {
            system.stop();
        }
        shared.store.commit().await?;
        // Everything acknowledged is durable now: its offsets may be committed.
        shared.bus.close().await;
        Ok(())
    }
}

/// A request to start a run.
#[derive(Debug, Clone, Default)]
pub struct StartRun {
    pub flow: String,
    /// 0 for the latest version.
    pub version: u32,
    pub inputs: serde_json::Map<String, Json>,
    pub idempotency_key: String,
    /// The subflow step starting this run, if any.
    pub parent: Option<crate::state::ParentRef>,
    /// What starts the run: empty for the API, else `schedule:<trigger id>`,
    /// `webhook:<trigger id>` or `kafka:<trigger id>`; recorded in its `RunStarted` event.
    pub trigger: String,
}

/// A flow version with what clients want to know about it.
#[derive(Debug, Clone)]
pub struct FlowView {
    pub record: FlowRecord,
    pub flow: Arc<Flow>,
    pub versions: Vec<u32>,
}

/// A cheap handle on the orchestrator.
#[derive(Clone)]
pub struct OrchestratorHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for OrchestratorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrchestratorHandle")
    }
}

impl OrchestratorHandle {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub async fn register_flow(&self, file_name: &str, source: &str) -> Result<Registered> {
        let registered = self.shared.registry.register(file_name, source).await?;
        if registered.created {
            self.shared.registrations.send_modify(|n| *n += 1);
            // A new version may allow more runs at once.
            tokio::spawn(self.shared.clone().dequeue(registered.record.name.clone()));
            let schedules = registered
                .flow
                .triggers
                .iter()
                .any(|t| matches!(t.kind, TriggerKind::Schedule(_)));
            if !schedules {
                self.shared.scheduler.flows_changed();
            } else if let Err(err) = self.shared.scheduler.schedules_registered().await {
                // The version is registered; the scheduler picks the schedules up when it can.
                warn!(flow = %registered.record.name, error = %err, "schedules not stored yet");
            }
        }
        Ok(registered)
    }

    pub(crate) fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Schedule triggers of the latest flow versions (of `flow` when not empty), with their
    /// next fire times.
    pub async fn list_schedules(&self, flow: &str) -> Result<Vec<ScheduleView>> {
        self.shared.scheduler.list(flow).await
    }

    /// Pauses a schedule: fire times pass without runs until it is resumed.
    pub async fn pause_schedule(&self, flow: &str, trigger: &str) -> Result<ScheduleView> {
        self.shared.scheduler.set_paused(flow, trigger, true).await
    }

    pub async fn resume_schedule(&self, flow: &str, trigger: &str) -> Result<ScheduleView> {
        self.shared.scheduler.set_paused(flow, trigger, false).await
    }

    /// Starts a run of a schedule now, outside its cron.
    pub async fn trigger_schedule(&self, flow: &str, trigger: &str) -> Result<(RunState, bool)> {
        self.shared.scheduler.fire_now(flow, trigger).await
    }

    pub fn get_flow(&self, name: &str, version: u32) -> Result<FlowView> {
        let registry = &self.shared.registry;
        let record = registry.get_record(name, version)?;
        let flow = registry.get(name, record.version)?;
        Ok(FlowView {
            versions: registry.versions(name)?,
            record,
            flow,
        })
    }

    pub fn list_flows(&self) -> Result<Vec<FlowView>> {
        let registry = &self.shared.registry;
        registry
            .latest()?
            .into_iter()
            .map(|record| {
                Ok(FlowView {
                    flow: registry.get(&record.name, record.version)?,
                    versions: registry.versions(&record.name)?,
                    record,
                })
            })
            .collect()
    }

    /// Starts a run, or returns the run its idempotency key already named (then `false`).
    pub async fn start_run(&self, req: StartRun) -> Result<(RunState, bool)> {
        let shared = &self.shared;
        let version = if req.version == 0 {
            shared.registry.latest_version(&req.flow)?
        } else {
            req.version
        };
        let flow = shared.registry.get(&req.flow, version)?;
        let size = serde_json::to_vec(&req.inputs).map_or(0, |v| v.len());
        if size > shared.config.max_payload_bytes {
            return Err(Error::InvalidArgument(format!(
                "inputs are {size} bytes, over the limit of {} bytes",
                shared.config.max_payload_bytes
            )));
        }
        let inputs = flow
            .resolve_inputs(&req.inputs)
            .map_err(|e| Error::InvalidArgument(format!("flow `{}`: {e}", req.flow)))?;
        if !req.idempotency_key.is_empty()
            && let Some(existing) = self
                .existing_for_key(&req.flow, &req.idempotency_key)
                .await?
        {
            return Ok((existing, false));
        }
        // Count, decide and create one start at a time per flow with a concurrency policy.
        let (_admission, queued) = match &flow.concurrency {
            Some(concurrency) => {
                let lock = shared.admission_lock(&req.flow);
                let guard = lock.lock_owned().await;
                let queued = self.make_room(&req.flow, concurrency).await?;
                (Some(guard), queued)
            }
            None => (None, None),
        };
        // A child run belongs to a parent that was already admitted.
        if req.parent.is_none() {
            shared.admit(&flow)?;
        }
        let run_id = uuid::Uuid::now_v7().to_string();
        let mut state = RunState::new(&run_id, flow, version);
        state.max_payload_bytes = shared.config.max_payload_bytes;
        state.trigger = req.trigger.clone();
        let events = state.start(
            inputs,
            req.idempotency_key.clone(),
            req.parent.clone(),
            queued,
            now_ms(),
        );
        shared.track_approvals(&state, &events)?;
        match shared
            .store
            .create_run(&shared.summary(&state), &events)
            .await?
        {
            Created::Existing(existing) => return Ok((self.get_run(&existing).await?, false)),
            Created::New => {}
        }
        let actions = state.actions_for(&events);
        shared.publish(&run_id, events);
        if !state.status.is_finished() {
            shared.ensure_actor(state.clone(), actions)?;
        }
        if state.status == RunStatus::Queued {
            // Runs ahead of it may have ended meanwhile; this runs once the admission is done.
            tokio::spawn(shared.clone().dequeue(req.flow.clone()));
        }
        Ok((state, true))
    }

    /// Applies the flow's concurrency policy before a new run. With `max_runs` runs active,
    /// `queue` has it wait (returns why), `skip` refuses it and `cancel_oldest` cancels the
    /// oldest ones to make room. A run queues behind runs already waiting.
    async fn make_room(&self, flow: &str, concurrency: &Concurrency) -> Result<Option<String>> {
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
                    match self.cancel_run(run_id, &reason).await {
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

    async fn existing_for_key(&self, flow: &str, key: &str) -> Result<Option<RunState>> {
        match self.shared.store.run_for_key(flow, key)? {
            Some(run_id) => Ok(Some(self.get_run(&run_id).await?)),
            None => Ok(None),
        }
    }

    pub async fn get_run(&self, run_id: &str) -> Result<RunState> {
        if let Some(addr) = self.shared.actor(run_id)
            && let Ok(state) = addr.send(Snapshot).await
        {
            return Ok(state);
        }
        self.shared.load(run_id)
    }

    /// Runs newest first; returns the page and the token for the next one (empty at the end).
    pub fn list_runs(
        &self,
        flow: &str,
        status: Option<RunStatus>,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<RunSummary>, String)> {
        let size = if page_size == 0 {
            50
        } else {
            page_size.min(1000)
        };
        let runs = self
            .shared
            .store
            .list_runs(flow, status, page_token, size + 1)?;
        let next = if runs.len() > size {
            runs[size - 1].run_id.clone()
        } else {
            String::new()
        };
        Ok((runs.into_iter().take(size).collect(), next))
    }

    pub async fn cancel_run(&self, run_id: &str, reason: &str) -> Result<RunState> {
        let reason = if reason.is_empty() {
            "cancelled by request".to_owned()
        } else {
            reason.to_owned()
        };
        self.command(run_id, Input::Cancel { reason }).await
    }

    pub async fn retry_run(&self, run_id: &str) -> Result<RunState> {
        self.command(run_id, Input::Retry).await
    }

    pub async fn signal_run(
        &self,
        run_id: &str,
        step: &str,
        approve: bool,
        comment: &str,
        by: &str,
    ) -> Result<RunState> {
        let input = Input::Signal {
            step: step.to_owned(),
            approve,
            comment: comment.to_owned(),
            by: by.to_owned(),
        };
        self.command(run_id, input).await
    }

    /// Delivers a person's command to a run and returns the run afterwards.
    async fn command(&self, run_id: &str, input: Input) -> Result<RunState> {
        let rejected = |rejection| Error::Rejected {
            run_id: run_id.to_owned(),
            rejection,
        };
        let addr = match self.shared.actor(run_id) {
            Some(addr) => addr,
            None => {
                let mut state = self.shared.load(run_id)?;
                if !(matches!(input, Input::Retry) && state.status == RunStatus::Failed) {
                    // Not running: the state machine says why the command does not apply.
                    state.handle(input, now_ms()).map_err(rejected)?;
                    return Err(Error::FailedPrecondition(format!(
                        "run {run_id} is not active"
                    )));
                }
                self.shared.ensure_actor(state, Vec::new())?
            }
        };
        match addr.send(Deliver { input, ack: None }).await {
            Ok(Ok(())) => {}
            Ok(Err(rejection)) => return Err(rejected(rejection)),
            Err(_) => {
                return Err(Error::FailedPrecondition(format!(
                    "run {run_id} finished meanwhile"
                )));
            }
        }
        self.get_run(run_id).await
    }

    /// Stores a secret (flows read it as `{{ secrets.NAME }}` in `with`).
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<SecretInfo> {
        if !rpaflow_core::secrets::valid_name(name) {
            return Err(Error::InvalidArgument(format!(
                "secret name `{name}` must start with a letter or `_` and use only letters, digits and `_`"
            )));
        }
        if value.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "secret `{name}` needs a value"
            )));
        }
        self.shared.store.put_secret(name, value).await
    }

    pub async fn delete_secret(&self, name: &str) -> Result<bool> {
        self.shared.store.delete_secret(name).await
    }

    /// Secret names and update times, never values.
    pub fn list_secrets(&self) -> Result<Vec<SecretInfo>> {
        self.shared.store.secrets()
    }

    /// Approval steps waiting for a person, oldest run first.
    pub fn list_approvals(&self, flow: &str) -> Result<Vec<PendingApproval>> {
        self.shared.store.approvals(flow)
    }

    /// Changes whenever a new flow version is registered (for components that follow the
    /// registry, such as the Kafka triggers).
    pub fn registrations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.registrations.subscribe()
    }

    /// Every batch of events of every run, as each becomes durable: `(run_id, events)`.
    /// A receiver that falls behind loses batches (`Lagged`); the store still has them.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.shared.events.subscribe()
    }

    /// The run's events from `from_seq`, then live ones until it finishes.
    pub fn watch_run(
        &self,
        run_id: &str,
        from_seq: u64,
    ) -> Result<impl Stream<Item = Result<RunEvent>> + Send + 'static> {
        let shared = self.shared.clone();
        let run_id = run_id.to_owned();
        let mut live = shared.events.subscribe();
        shared
            .store
            .run(&run_id)?
            .ok_or_else(|| Error::RunNotFound(run_id.clone()))?;
        Ok(async_stream(move |tx| async move {
            let mut next = from_seq.max(1);
            loop {
                // Everything stored from `next` on; the stream ends with the run.
                let mut ended = false;
                for event in shared.store.events(&run_id, next)? {
                    next = event.seq + 1;
                    ended = is_terminal(&event.kind);
                    if tx.send(Ok(event)).await.is_err() {
                        return Ok(());
                    }
                }
                if ended {
                    return Ok(());
                }
                let finished = shared
                    .store
                    .run(&run_id)?
                    .is_some_and(|r| r.status().is_finished());
                if finished {
                    // The run ended after the read above: send what was stored meanwhile.
                    for event in shared.store.events(&run_id, next)? {
                        if tx.send(Ok(event)).await.is_err() {
                            return Ok(());
                        }
                    }
                    return Ok(());
                }
                loop {
                    match live.recv().await {
                        Ok(batch) if batch.0 == run_id => break,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                }
            }
        }))
    }
}

fn is_terminal(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::RunSucceeded { .. }
            | EventKind::RunFailed { .. }
            | EventKind::RunCancelled { .. }
    )
}

/// A stream fed by an async producer through a small channel.
fn async_stream<F, Fut>(producer: F) -> impl Stream<Item = Result<RunEvent>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<RunEvent>>) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let errors = tx.clone();
    let fut = producer(tx);
    tokio::spawn(async move {
        if let Err(err) = fut.await {
            let _ = errors.send(Err(err)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
