//! Kafka triggers: every message on a flow's trigger topic starts one run.
//!
//! [`KafkaTriggers::run`] keeps one consumer per `kafka` trigger of the latest version of each
//! registered flow, looking at the registry every few seconds: a newly registered flow or
//! version gets its consumers, a trigger that is gone or moved to another topic loses its old
//! one. Each consumer reads its topic in the group `rpaflow-trigger-<flow>-<trigger>` (see
//! [`rpaflow_core::kafka::KafkaTriggerSource`]) and, for each message:
//!
//! - maps it to the run's inputs: the trigger's `input` template with `message` in scope, or the
//!   message itself, which must then be an object;
//! - starts a run with the idempotency key `kafka:<topic>:<partition>:<offset>`, so a message
//!   delivered again after a crash starts nothing new, and the run records `kafka:<trigger>` as
//!   its trigger;
//! - acknowledges the message (its offset may be committed) only once StartRun returned, when
//!   the run is durable.
//!
//! StartRun refused for load (`RESOURCE_EXHAUSTED`) or because the orchestrator is stopping is
//! tried again with back-off, the message unacknowledged; refused by the flow's concurrency
//! policy (`skip`), the message is acknowledged without a run. A message that can never start a run
//! (its inputs do not map, or the flow refuses them) goes to `rpaflow.dlq` with the reason, and
//! is acknowledged once there. Undecodable messages (not JSON) go there from the poll loop.
//!
//! What becomes of one message is `start`, which reaches the dead-letter topic through the
//! `DeadLetters` port: the unit tests (`tests.rs`) run it on fakes, without a broker.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rpaflow_core::flow::TriggerKind;
use rpaflow_core::kafka::{
    KafkaConfig, KafkaTriggerSource, TriggerDelivery, TriggerMessage, trigger_group,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::error::Error;
use crate::orchestrator::StartRun;
use crate::triggers::RunStarter;

/// How often the registry is looked at without a registration (consumers that stopped are
/// started again then).
const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// Runs being started at once per trigger (their storage flushes are shared).
const MAX_STARTING: usize = 64;
/// Back-off between attempts of a StartRun refused for load: from the first, doubling, to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long to wait before connecting again after a consumer could not be created.
const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// What a trigger consumer needs to know about its trigger; it may change with a new version
/// of the flow while the consumer keeps its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    flow: String,
    version: u32,
    trigger: String,
    topic: String,
    input: Option<String>,
}

/// A consumer at work for one trigger.
struct Running {
    spec: watch::Sender<Spec>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The Kafka triggers of every registered flow, starting runs through `S` (the orchestrator's
/// handle).
pub struct KafkaTriggers<S> {
    starter: S,
    config: KafkaConfig,
}

impl<S> std::fmt::Debug for KafkaTriggers<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTriggers")
            .field("brokers", &self.config.brokers)
            .finish()
    }
}

impl<S: RunStarter> KafkaTriggers<S> {
    pub fn new(starter: S, config: KafkaConfig) -> Self {
        Self { starter, config }
    }

    /// Keeps the consumers in step with the registry until `shutdown`; then stops them, each
    /// finishing the runs it is starting and committing what is acknowledged.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut running: HashMap<(String, String), Running> = HashMap::new();
        // A registration reconciles at once; the tick restarts consumers that stopped on their
        // own.
        let mut registrations = self.starter.registrations();
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                changed = registrations.changed() => if changed.is_err() { break },
            }
            let wanted = match self.wanted() {
                Ok(wanted) => wanted,
                Err(err) => {
                    warn!(error = %err, "cannot read the flow registry for kafka triggers");
                    continue;
                }
            };
            // Gone, moved to another topic, or stopped on its own: stop (and start again).
            let stale: Vec<(String, String)> = running
                .iter()
                .filter(|(key, r)| {
                    r.task.is_finished()
                        || wanted
                            .get(*key)
                            .is_none_or(|spec| spec.topic != r.spec.borrow().topic)
                })
                .map(|(key, _)| key.clone())
                .collect();
            for key in stale {
                if let Some(r) = running.remove(&key) {
                    info!(flow = %key.0, trigger = %key.1, "kafka trigger removed or changed; stopping its consumer");
                    r.stop.cancel();
                    let _ = r.task.await;
                }
            }
            for (key, spec) in wanted {
                match running.get(&key) {
                    Some(r) => {
                        r.spec.send_if_modified(|current| {
                            let changed = *current != spec;
                            *current = spec;
                            changed
                        });
                    }
                    None => {
                        let (tx, rx) = watch::channel(spec);
                        let stop = shutdown.child_token();
                        let consumer = Consumer {
                            starter: self.starter.clone(),
                            config: self.config.clone(),
                            spec: rx,
                            stop: stop.clone(),
                        };
                        let task = tokio::spawn(consumer.run());
                        running.insert(
                            key,
                            Running {
                                spec: tx,
                                stop,
                                task,
                            },
                        );
                    }
                }
            }
        }
        for (_, r) in running.drain() {
            r.stop.cancel();
            let _ = r.task.await;
        }
    }

    /// The kafka triggers of the latest version of every flow, by (flow, trigger id).
    fn wanted(&self) -> crate::Result<HashMap<(String, String), Spec>> {
        let mut wanted = HashMap::new();
        for view in self.starter.latest_flows()? {
            for trigger in &view.flow.triggers {
                if let TriggerKind::Kafka(kafka) = &trigger.kind {
                    let spec = Spec {
                        flow: view.record.name.clone(),
                        version: view.record.version,
                        trigger: trigger.id.clone(),
                        topic: kafka.topic.clone(),
                        input: kafka.input.clone(),
                    };
                    wanted.insert((spec.flow.clone(), spec.trigger.clone()), spec);
                }
            }
        }
        Ok(wanted)
    }
}

/// One trigger's consumer.
struct Consumer<S> {
    starter: S,
    config: KafkaConfig,
    spec: watch::Receiver<Spec>,
    stop: CancellationToken,
}

impl<S: RunStarter> Consumer<S> {
    async fn run(self) {
        let spec = self.spec.borrow().clone();
        let group = trigger_group(&spec.flow, &spec.trigger);
        let source = loop {
            match KafkaTriggerSource::connect(&self.config, &group, &spec.topic).await {
                Ok(source) => break source,
                Err(err) => {
                    error!(flow = %spec.flow, trigger = %spec.trigger, topic = %spec.topic, error = %err, "cannot consume the trigger topic; trying again");
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(CONNECT_RETRY) => {}
                    }
                }
            }
        };
        info!(flow = %spec.flow, trigger = %spec.trigger, topic = %spec.topic, group = %group, "kafka trigger consuming");
        let mut starting = FuturesUnordered::new();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                Some(()) = starting.next(), if !starting.is_empty() => {}
                delivery = source.next(), if starting.len() < MAX_STARTING => {
                    let Some(delivery) = delivery else { break };
                    let spec = self.spec.borrow().clone();
                    starting.push(start(self.starter.clone(), &source, spec, delivery, self.stop.clone()));
                }
            }
        }
        // Runs being started finish (a back-off wait ends at once, unacknowledged).
        while starting.next().await.is_some() {}
        source.close().await;
        info!(flow = %spec.flow, trigger = %spec.trigger, "kafka trigger stopped");
    }
}

/// Where a message that can never start a run goes, with the reason: the dead-letter topic
/// ([`KafkaTriggerSource::dead_letter`]); a fake in the unit tests.
trait DeadLetters: Sync {
    /// Returns once the message is kept there (for Kafka: once the broker has it).
    fn dead_letter(
        &self,
        message: &TriggerMessage,
        reason: &str,
    ) -> impl Future<Output = rpaflow_core::bus::Result<()>> + Send;
}

impl DeadLetters for KafkaTriggerSource {
    async fn dead_letter(
        &self,
        message: &TriggerMessage,
        reason: &str,
    ) -> rpaflow_core::bus::Result<()> {
        KafkaTriggerSource::dead_letter(self, message, reason).await
    }
}

/// Starts the run of one message; acknowledges the message once the run is durable, or once it
/// is on the dead-letter topic.
async fn start(
    starter: impl RunStarter,
    dead_letters: &impl DeadLetters,
    spec: Spec,
    delivery: TriggerDelivery,
    stop: CancellationToken,
) {
    let arrived = std::time::SystemTime::now();
    let TriggerDelivery { message, ack } = delivery;
    let (template, value) = (spec.input.clone(), message.value.clone());
    let mapped = starter
        .evaluate(move || {
            let scope = [("message", &value)];
            crate::triggers::trigger_inputs(template.as_deref(), &scope, &value, "the message")
        })
        .await;
    let inputs = match mapped {
        Ok(Ok(inputs)) => inputs,
        Ok(Err(reason)) => return dead_letter(dead_letters, &spec, message, ack, &reason).await,
        Err(err) => {
            // The message stays unacknowledged and comes again.
            warn!(flow = %spec.flow, trigger = %spec.trigger, error = %err, "cannot map a message to run inputs");
            return;
        }
    };
    let req = StartRun {
        flow: spec.flow.clone(),
        version: spec.version,
        inputs,
        idempotency_key: format!(
            "kafka:{}:{}:{}",
            message.topic, message.partition, message.offset
        ),
        trigger: format!("kafka:{}", spec.trigger),
        ..StartRun::default()
    };
    let mut wait = RETRY_FIRST;
    loop {
        match starter.start_run(req.clone()).await {
            Ok((run, created)) => {
                crate::spans::run_started(
                    &run.run_id,
                    crate::spans::Entry::Kafka {
                        topic: &message.topic,
                        partition: message.partition,
                        offset: message.offset,
                    },
                    arrived,
                    message.traceparent.as_deref(),
                    created,
                );
                ack.ack();
                if created {
                    tracing::debug!(flow = %spec.flow, trigger = %spec.trigger, run_id = %run.run_id, offset = message.offset, "kafka trigger started a run");
                } else {
                    // After a crash or a lost commit: the run exists, nothing new starts.
                    info!(flow = %spec.flow, trigger = %spec.trigger, run_id = %run.run_id, partition = message.partition, offset = message.offset, "kafka message delivered again; its run already exists");
                }
                return;
            }
            Err(
                err @ (Error::InvalidArgument(_)
                | Error::FlowNotFound(_)
                | Error::FlowVersionNotFound { .. }
                | Error::InvalidFlow(_)),
            ) => {
                return dead_letter(dead_letters, &spec, message, ack, &err.to_string()).await;
            }
            Err(Error::FailedPrecondition(reason)) => {
                // The flow's concurrency policy (`skip`) refused the run: the message is done.
                info!(flow = %spec.flow, trigger = %spec.trigger, offset = message.offset, reason = %reason, "kafka message skipped");
                ack.ack();
                return;
            }
            Err(err) => {
                if !matches!(err, Error::ResourceExhausted(_)) {
                    warn!(flow = %spec.flow, trigger = %spec.trigger, offset = message.offset, error = %err, "cannot start a run for a kafka message; trying again");
                }
                tokio::select! {
                    // Unacknowledged: delivered again after the restart.
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

async fn dead_letter(
    dead_letters: &impl DeadLetters,
    spec: &Spec,
    message: TriggerMessage,
    ack: rpaflow_core::bus::Ack,
    reason: &str,
) {
    warn!(flow = %spec.flow, trigger = %spec.trigger, topic = %message.topic, partition = message.partition, offset = message.offset, reason = %reason, "kafka message cannot start a run; sending it to the dead-letter topic");
    match dead_letters.dead_letter(&message, reason).await {
        Ok(()) => ack.ack(),
        // Unacknowledged: it comes back after a restart.
        Err(err) => error!(error = %err, "cannot write to the dead-letter topic"),
    }
}

#[cfg(test)]
mod tests;
