//! [`OrchestratorHandle`]: what the API, the triggers and `rpaflow dev` call: flows,
//! schedules, runs and their commands, secrets and approvals.
//!
//! Namespaces ([`rpaflow_core::namespace`]): a method that names a flow by what a caller typed,
//! lists, or acts on a run or a secret takes the caller's namespace and never sees past it (a run
//! of another namespace is "not found", as one that does not exist). [`StartRun::flow`] is a full
//! name: the API qualifies what its caller named, triggers and subflows know their flow's.

use std::sync::Arc;

use rpaflow_core::flow::{Flow, TriggerKind};
use rpaflow_core::namespace;
use serde_json::Value as Json;
use tokio::sync::broadcast;
use tracing::warn;

use super::Engine;
use crate::actors::{Deliver, Initial, Published, Snapshot};
use crate::error::{Error, Result};
use crate::registry::Registered;
use crate::state::{Input, RunState, RunStatus};
use crate::store::{Created, FlowRecord, PendingApproval, RunSummary, SecretInfo, Store};
use crate::triggers::schedule::ScheduleView;

/// How long GetRun waits for a busy run actor before reading the run from storage.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// A request to start a run.
#[derive(Debug, Clone, Default)]
pub struct StartRun {
    /// The flow's full name ([`namespace::full_name`]).
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

/// A person's answer to an approval step.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub step: String,
    pub approve: bool,
    pub comment: String,
    /// Who answers: the caller's name.
    pub by: String,
    /// The caller's role; empty when it has none (authentication off).
    pub role: String,
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
    pub(super) shared: Arc<Engine>,
}

impl std::fmt::Debug for OrchestratorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrchestratorHandle")
    }
}

impl OrchestratorHandle {
    pub(crate) fn from_shared(shared: Arc<Engine>) -> Self {
        Self { shared }
    }

    /// Registers a flow version in `namespace`.
    pub async fn register_flow(
        &self,
        namespace: &str,
        file_name: &str,
        source: &str,
    ) -> Result<Registered> {
        let registered = self
            .shared
            .registry
            .register(namespace, file_name, source)
            .await?;
        if registered.created {
            self.shared.registrations.send_modify(|n| *n += 1);
            // A new version may allow more runs at once.
            self.shared.wake_queue(&registered.record.name, usize::MAX);
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

    /// Runs an evaluation of expressions or templates on the evaluation pool
    /// ([`crate::evaluation`]), never on the caller's thread.
    pub(crate) async fn evaluate<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.shared.evaluator.run(work).await
    }

    /// What checks the API's tokens ([`crate::auth`]).
    pub fn authenticator(&self) -> crate::auth::Authenticator {
        crate::auth::Authenticator::new(self.shared.store.clone(), &self.shared.config.auth)
    }

    /// On the first start of a store with authentication on and no token: an admin token, to
    /// show once; also written to `DATA_DIR/admin.token` (mode 0600).
    pub async fn bootstrap_admin_token(&self) -> Result<Option<String>> {
        let path = self.shared.config.data_dir.join("admin.token");
        self.authenticator().bootstrap(&path).await
    }

    /// The key that seals secret values: what an embedded worker opens them with.
    pub fn secrets_key(&self) -> Option<rpaflow_core::secrets::SecretsKey> {
        self.shared.store.secrets_key_cloned()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Schedule triggers of the latest flow versions of `namespace` (of `flow` when not empty),
    /// with their next fire times.
    pub async fn list_schedules(&self, namespace: &str, flow: &str) -> Result<Vec<ScheduleView>> {
        let mut views = match flow {
            "" => self.shared.scheduler.list("").await?,
            flow => {
                self.shared
                    .scheduler
                    .list(&full_flow(namespace, flow)?)
                    .await?
            }
        };
        views.retain(|view| namespace::contains(namespace, &view.flow));
        Ok(views)
    }

    /// Pauses a schedule: fire times pass without runs until it is resumed.
    pub async fn pause_schedule(
        &self,
        namespace: &str,
        flow: &str,
        trigger: &str,
    ) -> Result<ScheduleView> {
        self.set_paused(namespace, flow, trigger, true).await
    }

    pub async fn resume_schedule(
        &self,
        namespace: &str,
        flow: &str,
        trigger: &str,
    ) -> Result<ScheduleView> {
        self.set_paused(namespace, flow, trigger, false).await
    }

    async fn set_paused(
        &self,
        namespace: &str,
        flow: &str,
        trigger: &str,
        paused: bool,
    ) -> Result<ScheduleView> {
        let flow = full_flow(namespace, flow)?;
        self.shared
            .scheduler
            .set_paused(&flow, trigger, paused)
            .await
    }

    /// Starts a run of a schedule now, outside its cron.
    pub async fn trigger_schedule(
        &self,
        namespace: &str,
        flow: &str,
        trigger: &str,
    ) -> Result<(RunState, bool)> {
        let flow = full_flow(namespace, flow)?;
        self.shared.scheduler.fire_now(&flow, trigger).await
    }

    /// Parses and validates a flow within this orchestrator's limits, storing nothing.
    pub fn validate_flow(
        &self,
        file_name: &str,
        source: &str,
    ) -> std::result::Result<rpaflow_core::flow::Flow, rpaflow_core::flow::Diagnostics> {
        self.shared.registry.parse(file_name, source)
    }

    /// A flow version of `namespace` (0: the latest).
    pub fn get_flow(&self, namespace: &str, name: &str, version: u32) -> Result<FlowView> {
        let name = &full_flow(namespace, name)?;
        let registry = &self.shared.registry;
        let record = registry.get_record(name, version)?;
        let flow = registry.get(name, record.version)?;
        Ok(FlowView {
            versions: registry.versions(name)?,
            record,
            flow,
        })
    }

    /// The latest version of every flow of `namespace`.
    pub fn list_flows(&self, namespace: &str) -> Result<Vec<FlowView>> {
        self.views(self.shared.registry.latest_in(namespace)?)
    }

    /// The latest version of every flow of every namespace (for the triggers).
    pub(crate) fn all_flows(&self) -> Result<Vec<FlowView>> {
        self.views(self.shared.registry.latest()?)
    }

    fn views(&self, records: Vec<FlowRecord>) -> Result<Vec<FlowView>> {
        let registry = &self.shared.registry;
        records
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

    /// Adds the orchestrator's metrics to `registry` ([`crate::metrics`]).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.shared.metrics.register(registry);
    }

    /// Sets the metrics read from the orchestrator's tables (runs active and queued by flow,
    /// the backlog per queue, dead letters): called before each scrape.
    pub fn refresh_metrics(&self) {
        use crate::metrics::{FlowLabels, QueueLabels};
        let metrics = &self.shared.metrics;
        // Flows seen before and without runs now show 0.
        let mut seen = metrics.flows_seen();
        for labels in seen.iter() {
            metrics.runs_active.get_or_create(labels).set(0);
            metrics.runs_queued.get_or_create(labels).set(0);
        }
        if let Ok(runs) = self.shared.flow_runs.lock() {
            for (flow, running, queued) in runs.counts() {
                let labels = FlowLabels::of(flow);
                seen.insert(labels.clone());
                metrics
                    .runs_active
                    .get_or_create(&labels)
                    .set(i64::try_from(running).unwrap_or(i64::MAX));
                metrics
                    .runs_queued
                    .get_or_create(&labels)
                    .set(i64::try_from(queued).unwrap_or(i64::MAX));
            }
        }
        for (queue, n) in self.shared.backlog.per_queue() {
            metrics
                .backlog
                .get_or_create(&QueueLabels { queue })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        metrics.dead_letters.inner().store(
            rpaflow_core::kafka::dead_letters(),
            std::sync::atomic::Ordering::Relaxed,
        );
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
        // What a waiting run holds: small objects cost ~90 times their text.
        let memory = crate::state::json_memory_bytes(&inputs);
        if memory > shared.config.max_input_memory_bytes {
            return Err(Error::InvalidArgument(format!(
                "inputs of flow `{}` would take about {memory} bytes of memory ({size} bytes of \
                 JSON), over the limit of {} bytes (orchestrator.max_input_memory_bytes); pass \
                 fewer, larger values, or a reference to the data",
                req.flow, shared.config.max_input_memory_bytes
            )));
        }
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
        // A child run belongs to a parent that was already admitted. The place is held until
        // the run's actor is in the table (or, for a run that ended as it started, to the end).
        let admitted = match &req.parent {
            None => Some(shared.admit(&flow, memory)?),
            Some(_) => None,
        };
        let run_id = uuid::Uuid::now_v7().to_string();
        let mut state = RunState::new(&run_id, flow, version);
        shared.apply_limits(&mut state);
        state.trigger = req.trigger.clone();
        // The first steps' `if` and `with` may be slow to evaluate: not on this handler.
        let (key, parent) = (req.idempotency_key.clone(), req.parent.clone());
        let now = shared.clock.now_ms();
        let (state, events) = shared
            .evaluator
            .decide(state, memory, move |state| {
                let (inputs, key, parent) = (inputs.clone(), key.clone(), parent.clone());
                state.start(inputs, key, parent, queued.clone(), now)
            })
            .await?;
        // Recorded, then acted on, by the run's actor, as every later decision is; a run that
        // ended as it started has no actor and nothing to act on.
        let created = if state.status.is_finished() {
            let _admitted = admitted;
            shared.track_approvals(&state, &events)?;
            let created = shared
                .store
                .create_run(&shared.summary(&state), &events)
                .await?;
            if let Created::New = created {
                shared.metrics.record(&state, &events);
                shared.publish(&run_id, events);
            }
            created
        } else {
            let (reply, created) = tokio::sync::oneshot::channel();
            shared.ensure_actor(state.clone(), Initial::Start { events, reply })?;
            // The actor holds the run's place now (and gives it up if the start comes to
            // nothing): counting both would refuse starts that fit.
            drop(admitted);
            created
                .await
                .map_err(|_| Error::NotRunning("orchestrator"))??
        };
        if let Created::Existing(existing) = created {
            return Ok((self.run(&existing).await?, false));
        }
        if state.status == RunStatus::Queued
            && let Some(concurrency) = &state.flow.concurrency
        {
            // A run may have ended between the decision and now.
            shared.wake_queue(&req.flow, concurrency.max_runs as usize);
        }
        Ok((state, true))
    }

    async fn existing_for_key(&self, flow: &str, key: &str) -> Result<Option<RunState>> {
        match self.shared.store.run_for_key(flow, key)? {
            Some(run_id) => Ok(Some(self.run(&run_id).await?)),
            None => Ok(None),
        }
    }

    /// A run of `namespace` (see [`Self::run`]); a run of another namespace is not found.
    pub async fn get_run(&self, namespace: &str, run_id: &str) -> Result<RunState> {
        self.check_run(namespace, run_id)?;
        self.run(run_id).await
    }

    /// Whether `run_id` is a run of `namespace`: [`Error::RunNotFound`] when it is not, exactly
    /// as when there is no such run.
    pub fn check_run(&self, namespace: &str, run_id: &str) -> Result<()> {
        match self.shared.store.run(run_id)? {
            Some(run) if namespace::contains(namespace, &run.flow) => Ok(()),
            _ => Err(Error::RunNotFound(run_id.to_owned())),
        }
    }

    /// The run as its actor holds it; from storage when it has none, or when the actor is busy
    /// for longer than [`SNAPSHOT_WAIT`] (deciding a step whose templates are slow to render):
    /// storage has everything the actor made durable, which is all a client could have seen.
    pub(crate) async fn run(&self, run_id: &str) -> Result<RunState> {
        if let Some(addr) = self.shared.actor(run_id)
            && let Ok(Ok(state)) = tokio::time::timeout(SNAPSHOT_WAIT, addr.send(Snapshot)).await
        {
            return Ok(state);
        }
        self.shared.load(run_id)
    }

    /// Runs of `namespace` newest first (of `flow` when not empty); returns the page and the
    /// token for the next one (empty at the end).
    pub fn list_runs(
        &self,
        namespace: &str,
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
        let flow = match flow {
            "" => String::new(),
            flow => full_flow(namespace, flow)?,
        };
        let runs = self
            .shared
            .store
            .list_runs(namespace, &flow, status, page_token, size + 1)?;
        let next = if runs.len() > size {
            runs[size - 1].run_id.clone()
        } else {
            String::new()
        };
        Ok((runs.into_iter().take(size).collect(), next))
    }

    pub async fn cancel_run(
        &self,
        namespace: &str,
        run_id: &str,
        reason: &str,
    ) -> Result<RunState> {
        self.check_run(namespace, run_id)?;
        self.cancel(run_id, reason).await
    }

    /// Cancels a run of any namespace (a parent's children).
    pub(crate) async fn cancel(&self, run_id: &str, reason: &str) -> Result<RunState> {
        let reason = if reason.is_empty() {
            "cancelled by request".to_owned()
        } else {
            reason.to_owned()
        };
        self.command(run_id, Input::Cancel { reason }).await
    }

    pub async fn retry_run(&self, namespace: &str, run_id: &str) -> Result<RunState> {
        self.check_run(namespace, run_id)?;
        self.command(run_id, Input::Retry).await
    }

    /// Answers an approval step of a run of `namespace`.
    pub async fn signal_run(
        &self,
        namespace: &str,
        run_id: &str,
        answer: Answer,
    ) -> Result<RunState> {
        self.check_run(namespace, run_id)?;
        let Answer {
            step,
            approve,
            comment,
            by,
            role,
        } = answer;
        let input = Input::Signal {
            step,
            approve,
            comment,
            by,
            role,
        };
        self.command(run_id, input).await
    }

    /// Delivers a person's command to a run and returns the run afterwards.
    async fn command(&self, run_id: &str, input: Input) -> Result<RunState> {
        let rejected = |rejection| Error::Rejected {
            run_id: run_id.to_owned(),
            rejection,
        };
        // An actor that went to rest just before the input reached it is woken again.
        let mut tries = 0;
        loop {
            tries += 1;
            let addr = match self.shared.wake(run_id)? {
                Some(addr) => addr,
                None => {
                    let mut state = self.shared.load(run_id)?;
                    if !(matches!(input, Input::Retry) && state.status == RunStatus::Failed) {
                        // Not running: the state machine says why the command does not apply.
                        let now = self.shared.clock.now_ms();
                        state.handle(input, now).map_err(rejected)?;
                        return Err(Error::FailedPrecondition(format!(
                            "run {run_id} is not active"
                        )));
                    }
                    self.shared.ensure_actor(state, Initial::Loaded)?
                }
            };
            match addr
                .send(Deliver {
                    input: input.clone(),
                    ack: None,
                })
                .await
            {
                Ok(Ok(())) => break,
                Ok(Err(rejection)) => return Err(rejected(rejection)),
                Err(_) if tries < 3 => {}
                Err(_) => {
                    return Err(Error::FailedPrecondition(format!(
                        "run {run_id} finished meanwhile"
                    )));
                }
            }
        }
        self.run(run_id).await
    }

    /// Stores a secret of `namespace` (its flows read it as `{{ secrets.NAME }}` in `with`).
    pub async fn set_secret(&self, namespace: &str, name: &str, value: &str) -> Result<SecretInfo> {
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
        let mut info = self
            .shared
            .store
            .put_secret(&namespace::qualify(namespace, name), value)
            .await?;
        info.name = name.to_owned();
        Ok(info)
    }

    pub async fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool> {
        match namespace::full_name(namespace, name) {
            Some(full) => self.shared.store.delete_secret(&full).await,
            None => Ok(false),
        }
    }

    /// The names and update times of the secrets of `namespace`, never values.
    pub fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        let mut secrets = self.shared.store.secrets()?;
        secrets.retain(|s| namespace::contains(namespace, &s.name));
        for secret in &mut secrets {
            secret.name = namespace::local(&secret.name).to_owned();
        }
        Ok(secrets)
    }

    /// Approval steps of `namespace` waiting for a person (of `flow` when not empty), oldest
    /// run first.
    pub fn list_approvals(&self, namespace: &str, flow: &str) -> Result<Vec<PendingApproval>> {
        let flow = match flow {
            "" => String::new(),
            flow => full_flow(namespace, flow)?,
        };
        self.shared.store.approvals(namespace, &flow)
    }

    /// Changes whenever a new flow version is registered (for components that follow the
    /// registry, such as the Kafka triggers).
    pub fn registrations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.registrations.subscribe()
    }

    /// Every batch of events of every run, as each becomes durable: `(run_id, events)`.
    /// For in-process readers that keep up: the batches a receiver has not read stay in memory
    /// (up to the channel's 65,536), and one that falls behind further loses batches
    /// (`Lagged`; the store still has them). A client following one run uses
    /// [`Self::watch_run`], which holds nothing for it.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.shared.events.subscribe()
    }

    /// The active runs: how many are in memory with their actor, and how many rest (wait only
    /// for people, nothing of them in memory but their entry).
    pub fn active_runs(&self) -> ActiveRuns {
        self.shared.active_runs()
    }
}

/// What [`OrchestratorHandle::active_runs`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActiveRuns {
    pub in_memory: usize,
    pub resting: usize,
}

/// The full name of the flow a caller in `namespace` named; a name that cannot be one of its
/// flows is not found, like a flow that does not exist.
fn full_flow(namespace: &str, name: &str) -> Result<String> {
    namespace::full_name(namespace, name)
        .ok_or_else(|| Error::NotFound(format!("no flow named `{name}`")))
}
