//! The poll loop both sides share.
//!
//! One tokio task per consumer polls without pause: decoded deliveries go into a bounded channel
//! (through a local overflow, so nothing polled is ever dropped), and while the application
//! falls behind by more than [`PAUSE_AT`] deliveries the assigned partitions are paused rather
//! than polling stopping; or, for an application that takes each delivery at once
//! ([`Out::Direct`]), straight to it, pausing while more than [`PAUSE_AT`] of them are not yet
//! acknowledged. Offsets are committed on a
//! timer, only up to the oldest unacknowledged delivery of each partition, and synchronously
//! before a partition is revoked and at shutdown. A message that cannot be decoded goes to the
//! dead-letter topic with the reason in its headers; its offset counts as done once it is there.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers as _, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::connectivity::{ClientHealth, connectivity, is_transport, poll_error};
use super::offsets::Offsets;
use super::{Error, KafkaConfig, Origin, Producer, Result, TRACEPARENT_HEADER, dead_letter};
use crate::bus::Ack;
use crate::telemetry::messaging;

/// Turns a message into what the application wants, or says why it cannot. The second argument
/// is the trace context the application continues: the message's `process` span, when traces
/// are exported and the message carries a `traceparent`.
pub(crate) type Decode<T> = fn(&OwnedMessage, Option<&str>) -> std::result::Result<T, String>;

type SharedOffsets = Arc<Mutex<Offsets>>;

/// The backlog at which the partitions are paused, and at which they are resumed: deliveries
/// polled but not yet taken by the application ([`Out::Channel`]), or taken but not yet
/// acknowledged ([`Out::Direct`], which takes everything at once).
const PAUSE_AT: usize = 512;
const RESUME_AT: usize = 128;

/// How often a paused loop with a direct output looks whether the application has caught up
/// (acknowledgements come from its threads and wake nothing here).
const RECHECK_PAUSED: Duration = Duration::from_millis(10);

fn lock(offsets: &SharedOffsets) -> std::sync::MutexGuard<'_, Offsets> {
    offsets.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Commits what is done before partitions move, and routes librdkafka's logs to `tracing`.
pub(crate) struct Context {
    offsets: SharedOffsets,
    group: String,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        ClientHealth.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        ClientHealth.error(error, reason);
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let mut commit = TopicPartitionList::new();
        {
            let mut offsets = lock(&self.offsets);
            for element in revoked.elements() {
                if let Some(position) = offsets.revoke(element.topic(), element.partition()) {
                    let _ = commit.add_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Offset(position),
                    );
                }
            }
        }
        info!(group = %self.group, partitions = revoked.count(), "partitions revoked");
        if commit.count() > 0
            && let Err(err) = consumer.commit(&commit, CommitMode::Sync)
        {
            warn!(group = %self.group, error = %err, "commit before a rebalance failed");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            info!(group = %self.group, partitions = assigned.count(), "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(err) = result {
            // Commit those positions again on the next tick.
            if is_transport(&err) || connectivity().is_down() {
                debug!(group = %self.group, error = %err, "offset commit failed; will retry");
            } else {
                warn!(group = %self.group, error = %err, "offset commit failed; will retry");
            }
            let mut tracked = lock(&self.offsets);
            for element in offsets.elements() {
                tracked.retry(element.topic(), element.partition());
            }
        }
    }
}

/// Which partitions a poll loop reads.
pub(crate) enum Partitions {
    /// Whatever the consumer group assigns this member (a worker pool).
    Group(Vec<String>),
    /// Every partition of the topic, from the group's committed offsets, without joining the
    /// group: for a single reader (the orchestrator), which then never waits for a rebalance or
    /// depends on the broker noticing that its previous incarnation died.
    All(String),
}

/// Every partition of `topic`, at `offset`, from the broker's metadata. A topic that was just
/// created can be missing from a node's metadata for a moment (on a cluster the controller tells
/// the other nodes a little later): asked again until it shows, 30 s at most.
pub(crate) async fn all_partitions<C: ConsumerContext + 'static>(
    consumer: Arc<StreamConsumer<C>>,
    topic: &str,
    offset: Offset,
) -> Result<TopicPartitionList> {
    let name = topic.to_owned();
    let found = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let metadata = consumer.fetch_metadata(Some(&name), Duration::from_secs(10))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == name && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if !partitions.is_empty() || std::time::Instant::now() >= deadline {
                return Ok::<_, rdkafka::error::KafkaError>(partitions);
            }
            debug!(topic = %name, "the topic has no partitions in the metadata yet; asking again");
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .map_err(|e| Error::Config {
        message: format!("metadata of {topic}: {e}"),
    })?
    .map_err(|source| Error::Subscribe {
        topic: topic.to_owned(),
        source,
    })?;
    if found.is_empty() {
        return Err(Error::Config {
            message: format!(
                "topic {topic} has no partitions in the cluster's metadata after 30 s"
            ),
        });
    }
    let mut assignment = TopicPartitionList::new();
    for partition in found {
        let _ = assignment.add_partition_offset(topic, partition, offset);
    }
    Ok(assignment)
}

/// The group's committed position of each partition in `partitions` (the beginning where it has
/// none), asked until the group coordinator answers (a minute at most).
///
/// Assigning with `Offset::Stored` instead leaves the position to librdkafka's own offset fetch,
/// and on a cluster that is still loading its coordinators (a new one, or one whose coordinator
/// just moved) that fetch could fail and leave the partitions unread, silently.
async fn committed_positions<C: ConsumerContext + 'static>(
    consumer: Arc<StreamConsumer<C>>,
    partitions: TopicPartitionList,
) -> Result<TopicPartitionList> {
    let wanted = partitions.clone();
    let found = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match consumer.committed_offsets(wanted.clone(), Duration::from_secs(10)) {
                Ok(found) => return Ok(found),
                Err(err) if std::time::Instant::now() < deadline => {
                    debug!(error = %err, "committed offsets not available yet; asking again");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(err) => return Err(err),
            }
        }
    })
    .await
    .map_err(|e| Error::Config {
        message: format!("committed offsets: {e}"),
    })?
    .map_err(|source| Error::Subscribe {
        topic: partitions
            .elements()
            .first()
            .map(|e| e.topic().to_owned())
            .unwrap_or_default(),
        source,
    })?;
    let mut positions = TopicPartitionList::new();
    for element in found.elements() {
        let offset = match element.offset() {
            Offset::Offset(n) => Offset::Offset(n),
            _ => Offset::Beginning,
        };
        let _ = positions.add_partition_offset(element.topic(), element.partition(), offset);
    }
    Ok(positions)
}

/// Where a poll loop puts what it decoded.
pub(crate) enum Out<T> {
    /// A bounded channel the application reads at its pace.
    Channel(mpsc::Sender<(T, Ack)>),
    /// A function that takes each delivery at once, on the poll loop's task (it must not block).
    Direct(Arc<dyn Fn(T, Ack) + Send + Sync>),
}

impl<T> Out<T> {
    /// Room for one delivery in the channel; never, for a direct output (nothing waits for it).
    async fn reserve(&self) -> Option<mpsc::Permit<'_, (T, Ack)>> {
        match self {
            Self::Channel(tx) => tx.reserve().await.ok(),
            Self::Direct(_) => std::future::pending().await,
        }
    }
}

/// A running poll loop.
pub(crate) struct PollLoop {
    stop: CancellationToken,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl PollLoop {
    /// Reads `partitions` for `group` and starts polling into `out`.
    pub(crate) async fn spawn<T: Send + 'static>(
        config: &KafkaConfig,
        group: &str,
        partitions: Partitions,
        decode: Decode<T>,
        out: Out<T>,
        dlq: Producer,
    ) -> Result<Self> {
        let offsets = SharedOffsets::default();
        let context = Context {
            offsets: Arc::clone(&offsets),
            group: group.to_owned(),
        };
        let consumer: StreamConsumer<Context> = config
            .consumer_config(group)
            .create_with_context(context)
            .map_err(|source| Error::Client {
                role: "consumer",
                source,
            })?;
        let consumer = match partitions {
            Partitions::Group(topics) => {
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                consumer
                    .subscribe(&names)
                    .map_err(|source| Error::Subscribe {
                        topic: topics.join(","),
                        source,
                    })?;
                info!(group, topics = ?topics, "consumer subscribed");
                consumer
            }
            Partitions::All(topic) => {
                let consumer = Arc::new(consumer);
                let partitions =
                    all_partitions(Arc::clone(&consumer), &topic, Offset::Invalid).await?;
                let assignment = committed_positions(Arc::clone(&consumer), partitions).await?;
                consumer
                    .assign(&assignment)
                    .map_err(|source| Error::Subscribe {
                        topic: topic.clone(),
                        source,
                    })?;
                info!(group, topic = %topic, partitions = assignment.count(), "consumer assigned every partition");
                Arc::into_inner(consumer).ok_or_else(|| Error::Config {
                    message: "consumer still shared after its assignment".into(),
                })?
            }
        };
        let stop = CancellationToken::new();
        let state = Loop {
            consumer,
            offsets,
            decode,
            out,
            dlq,
            stop: stop.clone(),
            commit_every: Duration::from_millis(config.commit_interval_ms),
            group: group.to_owned(),
        };
        Ok(Self {
            stop,
            task: tokio::sync::Mutex::new(Some(tokio::spawn(state.run()))),
        })
    }

    /// Stops polling, commits what is done and leaves the group.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        if let Some(task) = self.task.lock().await.take()
            && let Err(err) = task.await
        {
            error!(error = %err, "kafka poll loop panicked");
        }
    }
}

impl Drop for PollLoop {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Loop<T> {
    consumer: StreamConsumer<Context>,
    offsets: SharedOffsets,
    decode: Decode<T>,
    out: Out<T>,
    dlq: Producer,
    stop: CancellationToken,
    commit_every: Duration,
    group: String,
}

impl<T: Send + 'static> Loop<T> {
    async fn run(self) {
        let mut overflow: VecDeque<(T, Ack)> = VecDeque::new();
        let mut paused = false;
        let mut tick = tokio::time::interval(self.commit_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            // (A direct output took everything already: the overflow stays empty.)
            while let Out::Channel(tx) = &self.out
                && let Some(front) = overflow.pop_front()
            {
                match tx.try_send(front) {
                    Ok(()) => {}
                    Err(TrySendError::Full(item)) => {
                        overflow.push_front(item);
                        break;
                    }
                    Err(TrySendError::Closed(_)) => {
                        // The application is gone: what it did not take is delivered again.
                        self.finish();
                        return;
                    }
                }
            }
            // Pausing makes librdkafka drop its prefetched messages and fetch again on resume:
            // only worth it for a real backlog, with room between the two thresholds.
            let backlog = match &self.out {
                Out::Channel(_) => overflow.len(),
                Out::Direct(_) => lock(&self.offsets).in_flight(),
            };
            if !paused && backlog >= PAUSE_AT {
                paused = true;
                self.set_paused(true);
            } else if paused && backlog <= RESUME_AT {
                paused = false;
                self.set_paused(false);
            }
            let direct = matches!(self.out, Out::Direct(_));
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                _ = tick.tick() => self.commit(CommitMode::Async),
                () = tokio::time::sleep(RECHECK_PAUSED), if paused && direct => {}
                permit = self.out.reserve(), if !overflow.is_empty() => match permit {
                    Some(permit) => {
                        if let Some(item) = overflow.pop_front() {
                            permit.send(item);
                        }
                    }
                    None => break,
                },
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        connectivity().ok();
                        let message = message.detach();
                        if let Some(item) = self.take(message).await {
                            match &self.out {
                                Out::Direct(take) => take(item.0, item.1),
                                Out::Channel(_) => overflow.push_back(item),
                            }
                            if paused {
                                // A rebalance may have assigned partitions that are not paused.
                                self.set_paused(true);
                            }
                        }
                    }
                    Err(err) => {
                        poll_error(&self.group, &err);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        self.finish();
    }

    /// Decodes a message; one that cannot be decoded goes to the dead-letter topic. A message
    /// with trace context gets a `process {topic}` span, ended when the application acknowledges
    /// it.
    async fn take(&self, message: OwnedMessage) -> Option<(T, Ack)> {
        let topic = message.topic().to_owned();
        let (partition, offset) = (message.partition(), message.offset());
        lock(&self.offsets).delivered(&topic, partition, offset);
        let processing = messaging::Processing::start(
            &messaging::Received {
                topic: &topic,
                group: &self.group,
                partition,
                offset,
                key: message.key(),
                body_size: message.payload().map_or(0, <[u8]>::len),
            },
            traceparent_header(&message),
        );
        match (self.decode)(
            &message,
            processing.as_ref().map(messaging::Processing::traceparent),
        ) {
            Ok(item) => {
                let offsets = Arc::clone(&self.offsets);
                let ack = Ack::new(move || {
                    lock(&offsets).done(&topic, partition, offset);
                    if let Some(processing) = processing {
                        processing.end();
                    }
                });
                Some((item, ack))
            }
            Err(reason) => {
                warn!(
                    topic = %topic, partition, offset, reason = %reason,
                    "message cannot be decoded; sending it to the dead-letter topic"
                );
                if let Some(processing) = processing {
                    processing.fail("undecodable", &reason);
                }
                if self.dead_letter(&message, &reason).await {
                    lock(&self.offsets).done(&topic, partition, offset);
                }
                None
            }
        }
    }

    /// Puts a message on the dead-letter topic; `false` when the broker did not take it (the
    /// offset then stays uncommitted and the message comes back after a restart).
    async fn dead_letter(&self, message: &OwnedMessage, reason: &str) -> bool {
        let origin = Origin {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            payload: message.payload().unwrap_or_default(),
        };
        match dead_letter(&self.dlq, &origin, reason).await {
            Ok(()) => true,
            Err(err) => {
                error!(error = %err, "cannot write to the dead-letter topic");
                false
            }
        }
    }

    fn set_paused(&self, pause: bool) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        if assignment.count() == 0 {
            return;
        }
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => debug!(group = %self.group, pause, "partitions paused or resumed"),
            Err(err) => warn!(group = %self.group, error = %err, "cannot pause or resume"),
        }
    }

    fn commit(&self, mode: CommitMode) {
        let moved = lock(&self.offsets).to_commit();
        if moved.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (topic, partition, offset) in &moved {
            let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        if let Err(err) = self.consumer.commit(&list, mode) {
            if is_transport(&err) || connectivity().is_down() {
                debug!(group = %self.group, error = %err, "offset commit failed; will retry");
            } else {
                warn!(group = %self.group, error = %err, "offset commit failed; will retry");
            }
            let mut offsets = lock(&self.offsets);
            for (topic, partition, _) in &moved {
                offsets.retry(topic, *partition);
            }
        }
    }

    /// Commits what is done; dropping the consumer then leaves the group.
    fn finish(&self) {
        self.commit(CommitMode::Sync);
        info!(
            group = %self.group,
            unfinished = lock(&self.offsets).in_flight(),
            "consumer stopped"
        );
    }
}

/// The message's W3C `traceparent` header, when it has one.
pub(crate) fn traceparent_header(message: &OwnedMessage) -> Option<&str> {
    message
        .headers()?
        .iter()
        .find(|header| header.key == TRACEPARENT_HEADER)
        .and_then(|header| std::str::from_utf8(header.value?).ok())
}
