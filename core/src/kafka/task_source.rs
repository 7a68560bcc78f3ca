//! The worker's side: tasks in from `rpaflow.tasks.<queue>` (one consumer group per queue),
//! results out to `rpaflow.results`, cancellations in from `rpaflow.control`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message as _;
use rdkafka::Offset;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::Producer as _;
use rpaflow_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::connectivity::{ClientHealth, poll_error};
use super::consumer::{Out, Partitions, PollLoop, all_partitions, traceparent_header};
use super::{
    CONTROL_TOPIC, DLQ_TOPIC, Error, KafkaConfig, Producer, RESULTS_TOPIC, Result,
    TRACEPARENT_HEADER, produce, tasks_topic, traceparent, worker_group,
};
use crate::bus::{Ack, TaskDelivery, TaskSource};

pub struct KafkaTaskSource {
    queues: Vec<String>,
    producer: Producer,
    tasks: tokio::sync::Mutex<mpsc::Receiver<(pb::Task, Ack)>>,
    polls: Vec<PollLoop>,
    cancel_tx: broadcast::Sender<String>,
    stop_control: CancellationToken,
}

impl std::fmt::Debug for KafkaTaskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTaskSource")
            .field("queues", &self.queues)
            .finish()
    }
}

impl KafkaTaskSource {
    /// Joins the worker pool of each queue and starts listening for cancellations.
    pub async fn connect(config: KafkaConfig, queues: &[String], worker_id: &str) -> Result<Self> {
        config.validate()?;
        if queues.is_empty() {
            return Err(Error::Config {
                message: "a worker needs at least one queue".into(),
            });
        }
        let mut topics: Vec<String> = queues.iter().map(|q| tasks_topic(q)).collect();
        topics.extend([
            RESULTS_TOPIC.to_owned(),
            DLQ_TOPIC.to_owned(),
            CONTROL_TOPIC.to_owned(),
        ]);
        config.ensure_topics(&topics).await?;
        let producer = config.producer()?;
        // One task waits in the channel: the worker pulls only when it has a free slot, and the
        // rest stays on the broker (or paused) for other members of the pool.
        let (tx, rx) = mpsc::channel(1);
        let mut polls = Vec::new();
        for queue in queues {
            polls.push(
                PollLoop::spawn(
                    &config,
                    &worker_group(queue),
                    Partitions::Group(vec![tasks_topic(queue)]),
                    decode_task,
                    Out::Channel(tx.clone()),
                    producer.clone(),
                )
                .await?,
            );
        }
        let (cancel_tx, _) = broadcast::channel(1024);
        let stop_control = CancellationToken::new();
        let control = control_consumer(&config, worker_id).await?;
        tokio::spawn(listen_control(
            control,
            cancel_tx.clone(),
            stop_control.clone(),
        ));
        info!(queues = ?queues, brokers = %config.brokers, "worker joined its pools");
        Ok(Self {
            queues: queues.to_vec(),
            producer,
            tasks: tokio::sync::Mutex::new(rx),
            polls,
            cancel_tx,
            stop_control,
        })
    }
}

#[async_trait]
impl TaskSource for KafkaTaskSource {
    async fn next_task(&self) -> Option<TaskDelivery> {
        let (task, ack) = self.tasks.lock().await.recv().await?;
        Some(TaskDelivery { task, ack })
    }

    /// The result's message continues the caller's span (the worker's `step` span) when traces
    /// are exported, else the step's own trace context.
    async fn publish(&self, result: pb::TaskResult) -> crate::bus::Result<()> {
        let trace = crate::telemetry::run_trace::traceparent_of(&tracing::Span::current())
            .unwrap_or_else(|| {
                traceparent(&result.run_id, &result.step_id, result.item, result.attempt)
            });
        let payload = result.encode_to_vec();
        produce(
            &self.producer,
            RESULTS_TOPIC,
            &result.run_id,
            &payload,
            Some(&trace),
        )
        .await
    }

    fn cancellations(&self) -> broadcast::Receiver<String> {
        self.cancel_tx.subscribe()
    }

    async fn close(&self) {
        self.stop_control.cancel();
        for poll in &self.polls {
            poll.shutdown().await;
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    }
}

/// A task continues its message's `process` span when there is one; otherwise the trace
/// context it carries (the orchestrator's dispatch span), or else the message's header.
fn decode_task(
    message: &OwnedMessage,
    trace: Option<&str>,
) -> std::result::Result<pb::Task, String> {
    let payload = message.payload().unwrap_or_default();
    let mut task = pb::Task::decode(payload).map_err(|e| format!("not a rpaflow.v1.Task: {e}"))?;
    if task.run_id.is_empty()
        || task.step_id.is_empty()
        || task.kind.is_empty()
        || task.attempt == 0
    {
        return Err("a Task needs run_id, step_id, kind and attempt".into());
    }
    let trace = trace.or_else(|| {
        (!task.headers.contains_key(TRACEPARENT_HEADER))
            .then(|| traceparent_header(message))
            .flatten()
    });
    if let Some(trace) = trace {
        task.headers
            .insert(TRACEPARENT_HEADER.to_owned(), trace.to_owned());
    }
    Ok(task)
}

/// A consumer of every partition of the control topic from its end: each worker sees every
/// cancellation sent while it runs, and none from before.
async fn control_consumer(
    config: &KafkaConfig,
    worker_id: &str,
) -> Result<Arc<StreamConsumer<ClientHealth>>> {
    let group = format!("rpaflow-control-{worker_id}");
    let consumer: StreamConsumer<ClientHealth> = config
        .consumer_config(&group)
        .create_with_context(ClientHealth)
        .map_err(|source| Error::Client {
            role: "control consumer",
            source,
        })?;
    let consumer = Arc::new(consumer);
    let assignment = all_partitions(Arc::clone(&consumer), CONTROL_TOPIC, Offset::End).await?;
    consumer
        .assign(&assignment)
        .map_err(|source| Error::Subscribe {
            topic: CONTROL_TOPIC.to_owned(),
            source,
        })?;
    Ok(consumer)
}

async fn listen_control(
    consumer: Arc<StreamConsumer<ClientHealth>>,
    cancel_tx: broadcast::Sender<String>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => match message.payload().map(std::str::from_utf8) {
                Some(Ok(run_id)) => {
                    // No receiver means nothing runs.
                    let _ = cancel_tx.send(run_id.to_owned());
                }
                _ => warn!(
                    offset = message.offset(),
                    "control message is not a run id; ignored"
                ),
            },
            Err(err) => {
                poll_error(CONTROL_TOPIC, &err);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
