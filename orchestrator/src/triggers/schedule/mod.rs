//! Schedules: the [`Scheduler`] component starts runs of the schedule triggers of the latest
//! version of each registered flow, at their fire times, through a [`RunStarter`].
//!
//! State per (flow, trigger) lives in a [`ScheduleStore`] (the store's `schedules` tree,
//! [`ScheduleRecord`]): the next nominal fire time not yet handled, the paused flag, the last
//! fire. A fire starts a run with the idempotency key `schedule:<flow>:<trigger>:<fire_ms>`
//! and only then moves the stored next fire time on, so a crash in between fires again after the
//! restart, and the key makes that the same run: exactly one run per fire time.
//!
//! Fire times that passed while the orchestrator was down are never forgotten: on start the
//! scheduler carries on from the stored next fire time, and the flow's missed-fire policy
//! ([`rpaflow_core::flow::schedule::plan_fires`]) decides which of them run: a fire late by
//! less than a minute runs whatever the policy; older ones: `skip` none, `run_once` the latest,
//! `catch_up` each, the latest `max_catch_up` at most. Jitter delays a fire by a pseudo-random
//! amount up to `jitter`, the same after a restart; the idempotency key keeps the nominal time.
//! While paused, fire times pass without runs.
//!
//! # Layout
//! - [`clock`]: the system clock, or a clock file for tests.
//! - `store`: [`ScheduleStore`], where the schedules' state is kept.
//! - `tests`: the scheduler's decisions, on a fake clock, store and starter.

pub mod clock;
mod store;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rpaflow_core::flow::schedule::{CompiledSchedule, format_instant, plan_fires};
use rpaflow_core::flow::{Schedule, TriggerKind};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use clock::Clock;
pub use store::ScheduleStore;

use crate::error::{Error, Result};
use crate::orchestrator::StartRun;
use crate::state::RunState;
use crate::store::ScheduleRecord;
use crate::triggers::RunStarter;

/// How often the scheduler looks at the clock.
const TICK: Duration = Duration::from_millis(100);
/// How long a fire that failed for a passing reason (storage, capacity) waits to be tried again.
const RETRY_AFTER_MS: i64 = 1_000;
/// The most missed fire times of one schedule looked at after a downtime.
const MAX_DUE: usize = 100_000;
/// How long a registration waits for the scheduler to store the flow's schedules.
const REGISTER_WAIT: Duration = Duration::from_secs(5);
/// How many next fire times [`SchedulerHandle::list`] shows.
const UPCOMING: usize = 5;

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleView {
    pub flow: String,
    pub trigger: String,
    pub cron: String,
    pub timezone: String,
    pub paused: bool,
    /// Nominal fire times to come, at most five; empty once the schedule has ended.
    pub next_fire_ms: Vec<i64>,
    pub last_fire_ms: Option<i64>,
}

enum Command {
    /// The registry has a new flow version: read the schedules again (and answer once their
    /// state is stored, when asked to).
    FlowsChanged {
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    List {
        flow: String,
        reply: oneshot::Sender<Result<Vec<ScheduleView>>>,
    },
    SetPaused {
        flow: String,
        trigger: String,
        paused: bool,
        reply: oneshot::Sender<Result<ScheduleView>>,
    },
    FireNow {
        flow: String,
        trigger: String,
        reply: oneshot::Sender<Result<(RunState, bool)>>,
    },
}

/// A cheap handle on the scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerHandle {
    commands: mpsc::UnboundedSender<Command>,
    /// Set once [`Scheduler::run`] has begun.
    started: Arc<AtomicBool>,
}

impl SchedulerHandle {
    /// Tells the scheduler that a flow version was registered.
    pub fn flows_changed(&self) {
        // A stopped scheduler has nothing to update.
        let _ = self.commands.send(Command::FlowsChanged { reply: None });
    }

    /// Tells the scheduler that a flow version with schedules was registered, and waits (a
    /// few seconds at most) until their state is stored: a crash right after the registration
    /// then forgets none of their fire times.
    pub async fn schedules_registered(&self) -> Result<()> {
        if !self.started.load(Ordering::Acquire) {
            self.flows_changed();
            return Ok(());
        }
        let ask = self.ask(|reply| Command::FlowsChanged { reply: Some(reply) });
        match tokio::time::timeout(REGISTER_WAIT, ask).await {
            Ok(result) => result,
            Err(_) => Err(Error::Internal(format!(
                "the scheduler did not store the new schedules within {REGISTER_WAIT:?}"
            ))),
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .map_err(|_| Error::NotRunning("scheduler"))?;
        answer.await.map_err(|_| Error::NotRunning("scheduler"))?
    }

    /// The schedules of every flow, or of `flow` when not empty, by flow and trigger.
    pub async fn list(&self, flow: &str) -> Result<Vec<ScheduleView>> {
        let flow = flow.to_owned();
        self.ask(|reply| Command::List { flow, reply }).await
    }

    /// Pauses (or resumes) a schedule.
    pub async fn set_paused(
        &self,
        flow: &str,
        trigger: &str,
        paused: bool,
    ) -> Result<ScheduleView> {
        let (flow, trigger) = (flow.to_owned(), trigger.to_owned());
        self.ask(|reply| Command::SetPaused {
            flow,
            trigger,
            paused,
            reply,
        })
        .await
    }

    /// Starts a run of the schedule now (also when paused), with the key
    /// `schedule:<flow>:<trigger>:now:<uuid>`.
    pub async fn fire_now(&self, flow: &str, trigger: &str) -> Result<(RunState, bool)> {
        let (flow, trigger) = (flow.to_owned(), trigger.to_owned());
        self.ask(|reply| Command::FireNow {
            flow,
            trigger,
            reply,
        })
        .await
    }
}

/// One schedule trigger of the latest version of a flow, with its state.
struct Entry {
    record: ScheduleRecord,
    schedule: Schedule,
    compiled: CompiledSchedule,
    /// After a fire failed for a passing reason: not before this.
    retry_at_ms: i64,
}

impl Entry {
    fn view(&self) -> ScheduleView {
        let next_fire_ms = match self.record.next_ms {
            Some(next) => {
                let mut times = vec![next];
                times.extend(self.compiled.upcoming(next, UPCOMING - 1));
                times
            }
            None => Vec::new(),
        };
        ScheduleView {
            flow: self.record.flow.clone(),
            trigger: self.record.trigger.clone(),
            cron: self.schedule.cron.clone(),
            timezone: self.schedule.timezone.clone(),
            paused: self.record.paused,
            next_fire_ms,
            last_fire_ms: self.record.last_fire_ms,
        }
    }

    /// The key that seeds the fire's jitter.
    fn jitter_ms(&self, fire_ms: i64) -> i64 {
        let key = format!("{}:{}", self.record.flow, self.record.trigger);
        self.compiled.jitter_ms(&key, fire_ms)
    }
}

/// What fire times are computed from: a flow version that changes it starts the schedule afresh.
fn spec(schedule: &Schedule) -> String {
    format!(
        "{}|{}|{:?}|{:?}",
        schedule.cron, schedule.timezone, schedule.start_ms, schedule.end_ms
    )
}

/// Whether a failed start may succeed if tried again shortly.
fn is_passing(err: &Error) -> bool {
    matches!(
        err,
        Error::ResourceExhausted(_) | Error::NotRunning(_) | Error::Storage { .. } | Error::Bus(_)
    )
}

/// The scheduler; [`Scheduler::run`] drives it until shutdown.
pub struct Scheduler {
    clock: Clock,
    commands: mpsc::UnboundedReceiver<Command>,
    handle: SchedulerHandle,
    entries: BTreeMap<(String, String), Entry>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    pub fn new(clock: Clock) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        Self {
            clock,
            commands: receiver,
            handle: SchedulerHandle {
                commands,
                started: Arc::default(),
            },
            entries: BTreeMap::new(),
        }
    }

    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Fires schedules through `starter`, keeping their state in `store`, until `shutdown`.
    pub async fn run(
        mut self,
        starter: impl RunStarter,
        store: impl ScheduleStore,
        shutdown: CancellationToken,
    ) {
        self.handle.started.store(true, Ordering::Release);
        let now = self.wait_for_clock(&shutdown).await;
        let Some(now) = now else { return };
        if let Err(err) = self.reload(&starter, &store, now).await {
            warn!(error = %err, "cannot read the schedules; retrying on the next registration");
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    match self.clock.now_ms() {
                        Ok(now) => self.tick(&starter, &store, now).await,
                        Err(err) => debug!(error = %err, "no time from the clock"),
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { break };
                    self.command(&starter, &store, command).await;
                }
            }
        }
        debug!("scheduler stopped");
    }

    /// The clock's first reading (a clock file may not exist yet).
    async fn wait_for_clock(&self, shutdown: &CancellationToken) -> Option<i64> {
        let mut warned = false;
        loop {
            match self.clock.now_ms() {
                Ok(now) => return Some(now),
                Err(err) if !warned => {
                    warn!(error = %err, "the scheduler waits for its clock");
                    warned = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    async fn command(
        &mut self,
        starter: &impl RunStarter,
        store: &impl ScheduleStore,
        command: Command,
    ) {
        match command {
            Command::FlowsChanged { reply } => {
                let result = match self.clock.now_ms() {
                    Ok(now) => self.reload(starter, store, now).await,
                    Err(err) => Err(Error::Internal(err)),
                };
                if let Err(err) = &result {
                    warn!(error = %err, "cannot read the schedules of a new flow version");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::List { flow, reply } => {
                let views = self
                    .entries
                    .values()
                    .filter(|e| flow.is_empty() || e.record.flow == flow)
                    .map(Entry::view)
                    .collect();
                let _ = reply.send(Ok(views));
            }
            Command::SetPaused {
                flow,
                trigger,
                paused,
                reply,
            } => {
                let result = self.set_paused(store, &flow, &trigger, paused).await;
                let _ = reply.send(result);
            }
            Command::FireNow {
                flow,
                trigger,
                reply,
            } => {
                let result = match self.entry(&flow, &trigger) {
                    Ok(entry) => {
                        let key = format!("schedule:{flow}:{trigger}:now:{}", uuid::Uuid::now_v7());
                        let inputs = entry.schedule.inputs.clone();
                        start(starter, &flow, &trigger, key, inputs).await
                    }
                    Err(err) => Err(err),
                };
                let _ = reply.send(result);
            }
        }
    }

    fn entry(&self, flow: &str, trigger: &str) -> Result<&Entry> {
        self.entries
            .get(&(flow.to_owned(), trigger.to_owned()))
            .ok_or_else(|| Error::ScheduleNotFound {
                flow: flow.to_owned(),
                trigger: trigger.to_owned(),
            })
    }

    async fn set_paused(
        &mut self,
        store: &impl ScheduleStore,
        flow: &str,
        trigger: &str,
        paused: bool,
    ) -> Result<ScheduleView> {
        self.entry(flow, trigger)?;
        let now = self.clock.now_ms().map_err(Error::Internal)?;
        let Some(entry) = self.entries.get_mut(&(flow.to_owned(), trigger.to_owned())) else {
            return Err(Error::Internal("schedule vanished".into()));
        };
        let mut record = entry.record.clone();
        record.paused = paused;
        if !paused && record.next_ms.is_some_and(|next| next <= now) {
            // Fire times that passed while paused do not run.
            record.next_ms = entry.compiled.next_after(now);
        }
        store.put_schedule(&record).await?;
        entry.record = record;
        info!(
            flow,
            trigger,
            paused,
            "schedule {}",
            if paused { "paused" } else { "resumed" }
        );
        Ok(entry.view())
    }

    /// Reads the schedule triggers of the latest version of every flow, keeping the stored
    /// state of those whose fire times are unchanged.
    async fn reload(
        &mut self,
        starter: &impl RunStarter,
        store: &impl ScheduleStore,
        now_ms: i64,
    ) -> Result<()> {
        let mut stored: BTreeMap<(String, String), ScheduleRecord> = store
            .schedules()?
            .into_iter()
            .map(|r| ((r.flow.clone(), r.trigger.clone()), r))
            .collect();
        let mut entries = BTreeMap::new();
        for view in starter.latest_flows()? {
            for trigger in &view.flow.triggers {
                let TriggerKind::Schedule(schedule) = &trigger.kind else {
                    continue;
                };
                let key = (view.record.name.clone(), trigger.id.clone());
                let compiled = match schedule.compile() {
                    Ok(c) => c,
                    Err(err) => {
                        warn!(flow = %key.0, trigger = %key.1, error = %err, "schedule cannot be used");
                        continue;
                    }
                };
                let spec = spec(schedule);
                let previous = self
                    .entries
                    .remove(&key)
                    .map(|e| e.record)
                    .or_else(|| stored.remove(&key));
                stored.remove(&key);
                let record = match previous {
                    Some(record) if record.spec == spec => record,
                    previous => {
                        let record = ScheduleRecord {
                            flow: key.0.clone(),
                            trigger: key.1.clone(),
                            spec,
                            next_ms: compiled.next_after(now_ms),
                            paused: previous.as_ref().is_some_and(|p| p.paused),
                            last_fire_ms: previous.and_then(|p| p.last_fire_ms),
                        };
                        store.put_schedule(&record).await?;
                        info!(
                            flow = %key.0,
                            trigger = %key.1,
                            next = %record.next_ms.map_or_else(|| "never".to_owned(), format_instant),
                            "schedule set"
                        );
                        record
                    }
                };
                entries.insert(
                    key,
                    Entry {
                        record,
                        schedule: schedule.clone(),
                        compiled,
                        retry_at_ms: 0,
                    },
                );
            }
        }
        // Triggers no longer in their flow's latest version.
        let gone: std::collections::BTreeSet<(String, String)> = stored
            .into_keys()
            .chain(self.entries.keys().cloned())
            .collect();
        for (flow, trigger) in gone {
            store.remove_schedule(&flow, &trigger).await?;
            info!(flow = %flow, trigger = %trigger, "schedule removed");
        }
        self.entries = entries;
        Ok(())
    }

    /// Fires every schedule that is due at `now_ms`.
    async fn tick(&mut self, starter: &impl RunStarter, store: &impl ScheduleStore, now_ms: i64) {
        for entry in self.entries.values_mut() {
            if entry.retry_at_ms > now_ms {
                continue;
            }
            if let Err(err) = fire_due(starter, store, entry, now_ms).await {
                warn!(
                    flow = %entry.record.flow,
                    trigger = %entry.record.trigger,
                    error = %err,
                    "schedule fire failed; trying again shortly"
                );
                entry.retry_at_ms = now_ms + RETRY_AFTER_MS;
            }
        }
    }
}

/// Starts the runs of the fire times of `entry` that are due at `now_ms` (per its missed-fire
/// policy) and moves its stored next fire time on.
async fn fire_due(
    starter: &impl RunStarter,
    store: &impl ScheduleStore,
    entry: &mut Entry,
    now_ms: i64,
) -> Result<()> {
    let Some(first) = entry.record.next_ms else {
        return Ok(());
    };
    if first > now_ms {
        return Ok(());
    }
    // The due fire times, (nominal, nominal + jitter), oldest first.
    let mut due = Vec::new();
    let mut next = Some(first);
    while let Some(t) = next {
        let effective = t.saturating_add(entry.jitter_ms(t));
        if t > now_ms || effective > now_ms {
            break;
        }
        if due.len() >= MAX_DUE {
            // A long downtime of a very frequent schedule: the rest of the missed fire times are
            // skipped without looking at each.
            warn!(flow = %entry.record.flow, trigger = %entry.record.trigger, "over {MAX_DUE} fire times missed; the later ones are skipped");
            next = entry.compiled.next_after(now_ms);
            break;
        }
        due.push((t, effective));
        next = entry.compiled.next_after(t);
    }
    if due.is_empty() {
        return Ok(());
    }
    let (flow, trigger) = (entry.record.flow.clone(), entry.record.trigger.clone());
    if entry.record.paused {
        entry.record.next_ms = next;
        return store.put_schedule(&entry.record).await;
    }
    let plan = plan_fires(entry.schedule.missed, due.iter().copied(), now_ms);
    if plan.skipped > 0 {
        info!(flow = %flow, trigger = %trigger, skipped = plan.skipped, policy = ?entry.schedule.missed, "missed fire times skipped");
    }
    for fire_ms in plan.fire {
        let key = format!("schedule:{flow}:{trigger}:{fire_ms}");
        match start(starter, &flow, &trigger, key, entry.schedule.inputs.clone()).await {
            Ok((run, created)) => {
                entry.record.last_fire_ms = Some(fire_ms);
                info!(flow = %flow, trigger = %trigger, run_id = %run.run_id, created, fire = %format_instant(fire_ms), "schedule fired");
            }
            Err(err) if is_passing(&err) => return Err(err),
            Err(err) => {
                warn!(flow = %flow, trigger = %trigger, fire = %format_instant(fire_ms), error = %err, "schedule fire refused; skipped");
            }
        }
        // Durable only after the run is: a crash before this fires again, with the same key.
        entry.record.next_ms = entry.compiled.next_after(fire_ms);
        store.put_schedule(&entry.record).await?;
    }
    entry.record.next_ms = next;
    store.put_schedule(&entry.record).await
}

/// Starts one run of a schedule.
async fn start(
    starter: &impl RunStarter,
    flow: &str,
    trigger: &str,
    idempotency_key: String,
    inputs: serde_json::Map<String, serde_json::Value>,
) -> Result<(RunState, bool)> {
    starter
        .start_run(StartRun {
            flow: flow.to_owned(),
            inputs,
            idempotency_key,
            trigger: format!("schedule:{trigger}"),
            ..StartRun::default()
        })
        .await
}
