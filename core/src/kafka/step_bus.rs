//! The orchestrator's side: tasks out to `rpaflow.tasks.<queue>`, results in from
//! `rpaflow.results`, cancellations out to `rpaflow.control`, run events to `rpaflow.events`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use prost::Message as _;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureRecord, Producer as _};
use rpaflow_proto::v1 as pb;

use super::consumer::{Out, Partitions, PollLoop};
use super::{
    CONTROL_TOPIC, DLQ_TOPIC, EVENTS_TOPIC, KafkaConfig, Producer, RESULTS_TOPIC, Result,
    TRACEPARENT_HEADER, produce, tasks_topic, traceparent,
};
use crate::bus::{BusError, ResultDelivery, ResultSink, ResultSlot, StepBus};

/// The group whose offsets record which results the orchestrator has made durable. The
/// orchestrator reads every partition of `rpaflow.results` itself (one orchestrator per cluster),
/// so it never waits for a rebalance after a restart.
pub const ORCHESTRATOR_GROUP: &str = "rpaflow-orchestrator";

pub struct KafkaStepBus {
    config: KafkaConfig,
    producer: Producer,
    /// Results go here from the poll loop, as they are read.
    results: Arc<ResultSlot>,
    poll: PollLoop,
    /// Task topics known to exist.
    topics: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for KafkaStepBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStepBus")
            .field("brokers", &self.config.brokers)
            .finish()
    }
}

impl KafkaStepBus {
    /// Creates the shared topics when missing and starts reading results.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        config.validate()?;
        config
            .ensure_topics(&[
                RESULTS_TOPIC.to_owned(),
                DLQ_TOPIC.to_owned(),
                EVENTS_TOPIC.to_owned(),
                CONTROL_TOPIC.to_owned(),
            ])
            .await?;
        let producer = config.producer()?;
        let results = Arc::new(ResultSlot::default());
        let slot = Arc::clone(&results);
        let poll = PollLoop::spawn(
            &config,
            ORCHESTRATOR_GROUP,
            Partitions::All(RESULTS_TOPIC.to_owned()),
            decode_result,
            Out::Direct(Arc::new(move |result, ack| {
                slot.deliver(ResultDelivery { result, ack });
            })),
            producer.clone(),
        )
        .await?;
        Ok(Self {
            config,
            producer,
            results,
            poll,
            topics: Mutex::new(HashSet::new()),
        })
    }

    /// Creates the task topic of `queue` unless it is known to exist.
    pub async fn ensure_queue(&self, queue: &str) -> Result<()> {
        let topic = tasks_topic(queue);
        if self.known(&topic) {
            return Ok(());
        }
        self.config
            .ensure_topics(std::slice::from_ref(&topic))
            .await?;
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic);
        Ok(())
    }

    fn known(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(topic)
    }

    /// Queues a run event for `rpaflow.events` without waiting for the broker (the events topic
    /// is a feed for other systems; the run's history of record stays in the orchestrator).
    pub fn publish_event(&self, event: &pb::RunEvent) -> crate::bus::Result<()> {
        let payload = event.encode_to_vec();
        let record = FutureRecord::to(EVENTS_TOPIC)
            .key(&event.run_id)
            .payload(&payload);
        match self.producer.send_result(record) {
            // Delivery completes in the background; its outcome is librdkafka's to retry.
            Ok(_delivery) => Ok(()),
            Err((err, _)) => Err(BusError::Transport {
                topic: EVENTS_TOPIC.to_owned(),
                message: err.to_string(),
            }),
        }
    }
}

#[async_trait]
impl StepBus for KafkaStepBus {
    async fn dispatch(&self, task: pb::Task) -> crate::bus::Result<()> {
        let topic = tasks_topic(&task.queue);
        if !self.known(&topic) {
            self.ensure_queue(&task.queue)
                .await
                .map_err(|e| BusError::Transport {
                    topic: topic.clone(),
                    message: e.to_string(),
                })?;
        }
        let trace = task
            .headers
            .get(TRACEPARENT_HEADER)
            .cloned()
            .unwrap_or_else(|| traceparent(&task.run_id, &task.step_id, task.item, task.attempt));
        let payload = task.encode_to_vec();
        produce(&self.producer, &topic, &task.run_id, &payload, Some(&trace)).await
    }

    async fn cancel_run(&self, run_id: &str) -> crate::bus::Result<()> {
        produce(
            &self.producer,
            CONTROL_TOPIC,
            run_id,
            run_id.as_bytes(),
            None,
        )
        .await
    }

    fn deliver_results(&self, sink: Arc<dyn ResultSink>) -> crate::bus::Result<()> {
        self.results.attach(sink)
    }

    async fn close(&self) {
        self.poll.shutdown().await;
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    }
}

/// A result's trace needs nothing more: its `process` span ends when the result is durable.
fn decode_result(
    message: &OwnedMessage,
    _trace: Option<&str>,
) -> std::result::Result<pb::TaskResult, String> {
    let payload = message.payload().unwrap_or_default();
    let result =
        pb::TaskResult::decode(payload).map_err(|e| format!("not a rpaflow.v1.TaskResult: {e}"))?;
    if result.run_id.is_empty() || result.step_id.is_empty() || result.attempt == 0 {
        return Err("a TaskResult needs run_id, step_id and attempt".into());
    }
    Ok(result)
}
