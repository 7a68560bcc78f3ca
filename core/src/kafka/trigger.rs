//! Trigger topics: the messages of a topic that a flow's Kafka trigger turns into runs.
//!
//! A [`KafkaTriggerSource`] reads every partition of one topic through the shared poll loop, with
//! the offsets of its own consumer group ([`trigger_group`]). Messages are JSON; one that is not
//! goes to `rpaflow.dlq` through the poll loop's decode error. Each delivery carries an
//! [`Ack`]: the application acknowledges a message once the run it starts is durable, or once
//! it has put the message on the dead-letter topic ([`KafkaTriggerSource::dead_letter`]) because
//! no run can come of it. Nothing acknowledged, nothing committed: a crash in between delivers
//! the message again, and the run's idempotency key makes that start nothing new.
//!
//! Like `rpaflow.results`, a trigger topic is read whole by its one orchestrator (no group
//! membership), so a restarted orchestrator carries on at once from the committed offsets
//! instead of waiting for the broker to notice that its previous incarnation died. Partitions
//! added to the topic later are read after the next restart.

use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::Producer as _;
use serde_json::Value as Json;
use tokio::sync::mpsc;

use super::consumer::{Out, Partitions, PollLoop};
use super::{DLQ_TOPIC, KafkaConfig, Origin, Producer, Result, dead_letter};
use crate::bus::Ack;

/// Deliveries polled ahead of the application.
const BUFFER: usize = 256;

/// The consumer group whose offsets record which messages of a trigger topic started their run.
pub fn trigger_group(flow: &str, trigger: &str) -> String {
    format!("rpaflow-trigger-{flow}-{trigger}")
}

/// One message of a trigger topic, decoded. The default (topic `""`, offset 0, a `null` value, no
/// payload) is for tests, which set the public fields they need.
#[derive(Debug, Clone, Default)]
pub struct TriggerMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The message, parsed as JSON.
    pub value: Json,
    /// The trace context to continue: the message's `process` span, when the message came with
    /// a `traceparent` and traces are exported.
    pub traceparent: Option<String>,
    /// The raw key and payload, for the dead-letter topic.
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// A message to be acknowledged once its run is durable.
#[derive(Debug)]
pub struct TriggerDelivery {
    pub message: TriggerMessage,
    pub ack: Ack,
}

/// The messages of one trigger topic.
pub struct KafkaTriggerSource {
    topic: String,
    group: String,
    producer: Producer,
    messages: tokio::sync::Mutex<mpsc::Receiver<(TriggerMessage, Ack)>>,
    poll: PollLoop,
}

impl std::fmt::Debug for KafkaTriggerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTriggerSource")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish()
    }
}

impl KafkaTriggerSource {
    /// Creates `topic` (and the dead-letter topic) when missing and starts reading every
    /// partition of it from `group`'s committed offsets (from the beginning for a new group).
    pub async fn connect(config: &KafkaConfig, group: &str, topic: &str) -> Result<Self> {
        config.validate()?;
        config
            .ensure_topics(&[topic.to_owned(), DLQ_TOPIC.to_owned()])
            .await?;
        let producer = config.producer()?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let poll = PollLoop::spawn(
            config,
            group,
            Partitions::All(topic.to_owned()),
            decode_trigger,
            Out::Channel(tx),
            producer.clone(),
        )
        .await?;
        Ok(Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            producer,
            messages: tokio::sync::Mutex::new(rx),
            poll,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message; `None` once the poll loop stopped.
    pub async fn next(&self) -> Option<TriggerDelivery> {
        let (message, ack) = self.messages.lock().await.recv().await?;
        Some(TriggerDelivery { message, ack })
    }

    /// Puts a message that cannot start a run on the dead-letter topic, with `reason` and where
    /// it came from in its headers; returns once the broker has it.
    pub async fn dead_letter(
        &self,
        message: &TriggerMessage,
        reason: &str,
    ) -> crate::bus::Result<()> {
        let origin = Origin {
            topic: &message.topic,
            partition: message.partition,
            offset: message.offset,
            key: message.key.as_deref(),
            payload: &message.payload,
        };
        dead_letter(&self.producer, &origin, reason).await
    }

    /// Stops polling, commits the offsets of what was acknowledged and flushes the producer.
    pub async fn close(&self) {
        self.poll.shutdown().await;
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    }
}

fn decode_trigger(
    message: &OwnedMessage,
    trace: Option<&str>,
) -> std::result::Result<TriggerMessage, String> {
    let payload = message.payload().unwrap_or_default();
    let value: Json =
        serde_json::from_slice(payload).map_err(|e| format!("message is not JSON: {e}"))?;
    Ok(TriggerMessage {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        value,
        traceparent: trace.map(str::to_owned),
        key: message.key().map(<[u8]>::to_vec),
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;

    use super::*;

    fn message(payload: &[u8]) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload.to_vec()),
            Some(b"k".to_vec()),
            "orders".into(),
            Timestamp::NotAvailable,
            2,
            41,
            None,
        )
    }

    #[test]
    fn messages_are_json_with_their_place() {
        let decoded = decode_trigger(&message(br#"{"id": 7}"#), None).unwrap();
        assert_eq!(decoded.value, serde_json::json!({"id": 7}));
        assert_eq!(
            (decoded.topic.as_str(), decoded.partition, decoded.offset),
            ("orders", 2, 41)
        );
        assert_eq!(decoded.key.as_deref(), Some(&b"k"[..]));
        let err = decode_trigger(&message(b"{not json"), None).unwrap_err();
        assert!(err.starts_with("message is not JSON: "), "{err}");
        assert_eq!(trigger_group("f", "t"), "rpaflow-trigger-f-t");
    }
}
