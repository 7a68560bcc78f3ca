//! The step bus over Kafka, with `rdkafka` (librdkafka).
//!
//! Topics (created on start when missing, `partitions` each):
//! - `rpaflow.tasks.<queue>`: tasks for the worker pool of a queue; a pool is one consumer group.
//! - `rpaflow.results`: results for the orchestrator.
//! - `rpaflow.dlq`: messages that could not be decoded, with the reason in headers.
//! - `rpaflow.events`: run events, for other systems to consume.
//! - `rpaflow.control`: cancellations (one partition), read by every worker from the end.
//!
//! Messages are protobuf, keyed by run id so the steps of one run stay in order on one partition.
//! Producers are idempotent with `acks=all`. Consumers never auto-commit: each delivery carries an
//! [`Ack`](crate::bus::Ack), and a partition's offset is committed only up to the oldest delivery
//! not yet acknowledged ([`offsets`]). The poll loop never waits for the application: deliveries
//! go through a small buffer and the partitions are paused while it is full, so a ten-minute step
//! does not stop polling or trigger a rebalance. W3C `traceparent` travels in message headers.
//!
//! Nothing here depends on a particular broker: it is tested against Apache Kafka 4.4 (one node
//! and a three-node cluster) and speaks the plain Kafka protocol. Any librdkafka setting passes through `client`, `producer` and `consumer`
//! (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`, ... for a managed Kafka).
//!
//! # Layout
//! - [`connectivity`](Connectivity): the process's view of the brokers (an outage logged once) and
//!   the client context every client shares.
//! - [`offsets`]: which offsets may be committed (pure).
//! - `consumer`: the poll loop shared by both sides: buffer, pause/resume, commits, dead letters.
//! - [`KafkaStepBus`] (`step_bus`): the orchestrator's side.
//! - [`KafkaTaskSource`] (`task_source`): the worker's side.
//! - [`KafkaTriggerSource`] (`trigger`): the messages of a flow's Kafka trigger topic.

mod connectivity;
mod consumer;
pub mod offsets;
mod step_bus;
mod task_source;
mod trigger;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};

use crate::telemetry::messaging;

/// The W3C trace context a step carries, here where the Kafka headers are written.
pub use crate::trace_context::{TRACEPARENT_HEADER, traceparent};
pub use connectivity::{ClientHealth, Connectivity, connectivity};
pub use step_bus::KafkaStepBus;
pub use task_source::KafkaTaskSource;
pub use trigger::{KafkaTriggerSource, TriggerDelivery, TriggerMessage, trigger_group};

/// The prefix of task topics: `rpaflow.tasks.<queue>`.
pub const TASKS_TOPIC_PREFIX: &str = "rpaflow.tasks.";
pub const RESULTS_TOPIC: &str = "rpaflow.results";
pub const DLQ_TOPIC: &str = "rpaflow.dlq";
pub const EVENTS_TOPIC: &str = "rpaflow.events";
pub const CONTROL_TOPIC: &str = "rpaflow.control";

/// Dead-letter headers: why, and where the message came from.
pub const DLQ_REASON_HEADER: &str = "rpaflow-dlq-reason";
pub const DLQ_TOPIC_HEADER: &str = "rpaflow-dlq-topic";
pub const DLQ_PARTITION_HEADER: &str = "rpaflow-dlq-partition";
pub const DLQ_OFFSET_HEADER: &str = "rpaflow-dlq-offset";

/// The task topic of a queue.
pub fn tasks_topic(queue: &str) -> String {
    format!("{TASKS_TOPIC_PREFIX}{queue}")
}

/// rpaflow's producers: idempotent, and reporting outages through [`Connectivity`].
pub type Producer = FutureProducer<ClientHealth>;

/// The consumer group of a queue's worker pool.
pub fn worker_group(queue: &str) -> String {
    format!("rpaflow-workers-{queue}")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid kafka configuration: {message}")]
    Config { message: String },
    #[error("kafka client for {role} cannot be created")]
    Client {
        role: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("cannot create topic {topic}: {message}")]
    CreateTopic { topic: String, message: String },
    #[error("kafka at {brokers} does not answer ({security}): {message}")]
    Unreachable {
        brokers: String,
        /// `security.protocol` and the SASL mechanism and user, when set.
        security: String,
        message: String,
    },
    #[error("kafka at {brokers} refused the credentials ({security}): {message}")]
    Refused {
        brokers: String,
        security: String,
        message: String,
    },
    #[error("cannot subscribe to {topic}")]
    Subscribe {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How rpaflow reaches Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port]...`; empty means Kafka is not used.
    pub brokers: String,
    /// Partitions of the topics rpaflow creates (existing topics are left as they are).
    pub partitions: i32,
    /// Replication factor of the topics rpaflow creates; by default the cluster's node count up
    /// to 3 (`min(3, brokers)`), so one setting fits a single test broker and a real cluster.
    pub replication: Option<i32>,
    /// How often consumers commit the offsets that moved, in milliseconds.
    pub commit_interval_ms: u64,
    /// librdkafka settings for every client (`security.protocol`, `sasl.*`, `ssl.*`, ...).
    #[serde(deserialize_with = "settings")]
    pub client: BTreeMap<String, String>,
    /// librdkafka settings for producers only (`linger.ms`, `compression.type`, ...).
    #[serde(deserialize_with = "settings")]
    pub producer: BTreeMap<String, String>,
    /// librdkafka settings for consumers only (`session.timeout.ms`, ...).
    #[serde(deserialize_with = "settings")]
    pub consumer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            partitions: 8,
            replication: None,
            commit_interval_ms: 200,
            client: BTreeMap::new(),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }
}

/// librdkafka settings as text, whether a file or variable gave `10`, `true` or `"10"`.
fn settings<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => Ok((key, text)),
            serde_json::Value::Number(n) => Ok((key, n.to_string())),
            serde_json::Value::Bool(b) => Ok((key, b.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "kafka setting `{key}` must be text, a number or a boolean, not {other}"
            ))),
        })
        .collect()
}

/// Settings rpaflow's guarantees rest on: a configuration may not turn them off.
const PINNED_CONSUMER: &[&str] = &["enable.auto.commit", "enable.auto.offset.store"];

impl KafkaConfig {
    pub fn is_enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    /// Checks the values before anything starts.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config { message });
        if !self.is_enabled() {
            return fail("kafka.brokers is empty".into());
        }
        if self.partitions < 1 {
            return fail(format!(
                "kafka.partitions must be at least 1, not {}",
                self.partitions
            ));
        }
        if let Some(replication) = self.replication.filter(|r| *r < 1) {
            return fail(format!(
                "kafka.replication must be at least 1, not {replication}"
            ));
        }
        if self.commit_interval_ms == 0 {
            return fail("kafka.commit_interval_ms must be above 0".into());
        }
        for key in PINNED_CONSUMER {
            let set = |map: &BTreeMap<String, String>| map.keys().any(|k| setting(k) == *key);
            if set(&self.consumer) || set(&self.client) {
                return fail(format!(
                    "kafka.consumer.\"{key}\" cannot be set: offsets are committed by rpaflow once the work is done"
                ));
            }
        }
        for (section, map) in [
            ("client", &self.client),
            ("producer", &self.producer),
            ("consumer", &self.consumer),
        ] {
            if map.keys().any(|k| setting(k) == "bootstrap.servers") {
                return fail(format!(
                    "kafka.{section}.\"bootstrap.servers\" cannot be set: use kafka.brokers"
                ));
            }
        }
        Ok(())
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        // librdkafka's own logs would go to stderr unformatted; errors reach us as results.
        config.set("log_level", "3");
        // Every message is small and awaited: Nagle's algorithm would hold a request back
        // until the previous segment is acknowledged (up to the peer's delayed ACK, 40 ms).
        config.set("socket.nagle.disable", "true");
        for (key, value) in &self.client {
            config.set(setting(key), value);
        }
        config
    }

    /// An idempotent producer (`acks=all`); `producer` settings apply last.
    pub fn producer(&self) -> Result<Producer> {
        let mut config = self.base();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2");
        for (key, value) in &self.producer {
            config.set(setting(key), value);
        }
        config
            .create_with_context(ClientHealth)
            .map_err(|source| Error::Client {
                role: "producer",
                source,
            })
    }

    /// How the clients authenticate, for messages: `security.protocol` and the SASL mechanism
    /// and user when set (never the password).
    fn security(&self) -> String {
        let get = |names: &[&str]| {
            self.client
                .iter()
                .find(|(k, _)| names.contains(&setting(k).as_str()))
                .map(|(_, v)| v.clone())
        };
        let protocol = get(&["security.protocol"]).unwrap_or_else(|| "PLAINTEXT".into());
        let mut text = format!("security.protocol={protocol}");
        if let Some(mechanism) = get(&["sasl.mechanism", "sasl.mechanisms"]) {
            text.push_str(&format!(", SASL mechanism {mechanism}"));
        } else if protocol.to_ascii_uppercase().starts_with("SASL") {
            text.push_str(", SASL mechanism GSSAPI (librdkafka's default)");
        }
        if let Some(user) = get(&["sasl.username"]) {
            text.push_str(&format!(" as user `{user}`"));
        }
        text
    }

    /// Asks the cluster for its metadata until it answers (30 s at most), and returns how many
    /// brokers it has. Authentication failures end the wait at once: retrying cannot help.
    async fn cluster_size(&self) -> Result<usize> {
        let unreachable = |message: String| {
            let (brokers, security) = (self.brokers.clone(), self.security());
            if is_refusal(&message) {
                Error::Refused {
                    brokers,
                    security,
                    message,
                }
            } else {
                Error::Unreachable {
                    brokers,
                    security,
                    message,
                }
            }
        };
        let config = self.base();
        let answer = tokio::task::spawn_blocking(move || {
            // A producer's callbacks carry librdkafka's reason text (a consumer's carry the code
            // only): an authentication failure says what was refused.
            let client: BaseProducer<ClientHealth> = config
                .create_with_context(ClientHealth)
                .map_err(|e| e.to_string())?;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let answer = client.client().fetch_metadata(None, Duration::from_secs(2));
                // Serves the client's callbacks: an authentication failure arrives as an error
                // event, the metadata request only times out.
                client.poll(Duration::from_millis(100));
                let message = match answer {
                    Ok(metadata) if !metadata.brokers().is_empty() => {
                        return Ok(metadata.brokers().len());
                    }
                    Ok(_) => "the metadata lists no broker".to_owned(),
                    Err(err) => connectivity()
                        .last_error()
                        .unwrap_or_else(|| err.to_string()),
                };
                if is_refusal(&message) || std::time::Instant::now() >= deadline {
                    return Err(message);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
        .await
        .map_err(|e| unreachable(e.to_string()))?;
        let brokers = answer.map_err(unreachable)?;
        connectivity().ok();
        Ok(brokers)
    }

    /// A consumer's settings: manual commits only, from the earliest offset for a new group.
    pub(crate) fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.base();
        config
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // A fetch waits at most this long for data: step latency over a broker that answers
            // fetches only at the deadline. Apache Kafka answers as soon as data arrives.
            .set("fetch.wait.max.ms", "20")
            // Keep the local prefetch small: what sits there is held by this member only.
            .set("queued.max.messages.kbytes", "4096");
        for (key, value) in &self.consumer {
            config.set(setting(key), value);
        }
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        config
    }

    /// Creates the topics that do not exist yet, with `kafka.partitions` partitions and
    /// `kafka.replication` replicas (by default `min(3, brokers)`). Fails with
    /// [`Error::Unreachable`], naming the brokers and the authentication, when the cluster does
    /// not answer or refuses the credentials.
    pub async fn ensure_topics(&self, topics: &[String]) -> Result<()> {
        let admin: AdminClient<ClientHealth> = self
            .base()
            .create_with_context(ClientHealth)
            .map_err(|source| Error::Client {
                role: "admin",
                source,
            })?;
        let brokers = self.cluster_size().await?;
        let replication = self
            .replication
            .unwrap_or_else(|| i32::try_from(brokers.min(3)).unwrap_or(1));
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, self.partitions, TopicReplication::Fixed(replication)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(new.iter(), &options)
            .await
            .map_err(|e| Error::CreateTopic {
                topic: topics.join(","),
                message: e.to_string(),
            })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::CreateTopic {
                        topic,
                        message: code.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Produces one message and waits until the broker holds it (`acks=all`). With a `trace` (the
/// W3C trace context of the caller) the message carries a `traceparent` header: the caller's, or
/// when traces are exported that of a `send {topic}` span recorded around the delivery.
pub(crate) async fn produce(
    producer: &Producer,
    topic: &str,
    key: &str,
    payload: &[u8],
    trace: Option<&str>,
) -> crate::bus::Result<()> {
    let sending =
        trace.and_then(|parent| messaging::Sending::start(topic, key, payload.len(), parent));
    let header = sending
        .as_ref()
        .map(messaging::Sending::traceparent)
        .or(trace);
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    if let Some(trace) = header {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: TRACEPARENT_HEADER,
            value: Some(trace),
        }));
    }
    match producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
    {
        Ok(delivery) => {
            connectivity().ok();
            if let Some(sending) = sending {
                sending.delivered(delivery.partition, delivery.offset);
            }
            Ok(())
        }
        Err((err, _)) => {
            if let Some(sending) = sending {
                sending.failed(&err.to_string());
            }
            Err(crate::bus::BusError::Transport {
                topic: topic.to_owned(),
                message: err.to_string(),
            })
        }
    }
}

/// Where a dead letter came from.
pub(crate) struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// Puts a message on the dead-letter topic with `reason` and its origin in headers; returns once
/// the broker holds it (librdkafka retries until `message.timeout.ms`).
pub(crate) async fn dead_letter(
    producer: &Producer,
    origin: &Origin<'_>,
    reason: &str,
) -> crate::bus::Result<()> {
    let partition = origin.partition.to_string();
    let offset = origin.offset.to_string();
    let headers = [
        (DLQ_REASON_HEADER, reason),
        (DLQ_TOPIC_HEADER, origin.topic),
        (DLQ_PARTITION_HEADER, partition.as_str()),
        (DLQ_OFFSET_HEADER, offset.as_str()),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(DLQ_TOPIC)
        .payload(origin.payload)
        .headers(headers);
    if let Some(key) = origin.key {
        record = record.key(key);
    }
    producer
        .send(record, Timeout::Never)
        .await
        .map(|_| {
            DEAD_LETTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .map_err(|(err, _)| crate::bus::BusError::Transport {
            topic: DLQ_TOPIC.to_owned(),
            message: err.to_string(),
        })
}

/// Messages this process put on the dead-letter topic.
static DEAD_LETTERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many messages this process has put on the dead-letter topic since it started (the
/// services' `rpaflow_dead_letters_total`).
pub fn dead_letters() -> u64 {
    DEAD_LETTERS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether a client error says the broker refused the credentials (retrying cannot help).
fn is_refusal(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("authentication") || lower.contains("sasl") || lower.contains("ssl handshake")
}

/// librdkafka names use dots; environment variables cannot, so `linger_ms` means `linger.ms`.
fn setting(key: &str) -> String {
    key.replace('_', ".").to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_guarantees_rest_on_are_refused() {
        let mut config = KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            ..KafkaConfig::default()
        };
        config.validate().unwrap();
        config
            .consumer
            .insert("enable.auto.commit".into(), "true".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("enable.auto.commit"), "{err}");
        let empty = KafkaConfig::default().validate().unwrap_err().to_string();
        assert!(empty.contains("kafka.brokers is empty"), "{empty}");
    }
}
