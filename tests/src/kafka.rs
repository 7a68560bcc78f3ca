//! [`Broker`]: real Apache Kafka for the scenarios: one node or a three-node KRaft cluster on free
//! ports of 127.0.0.1, started, killed and restarted through `scripts/kafka.sh` (the same script a
//! developer runs), on a temporary directory of its own; and the raw Kafka calls scenarios make
//! against it.
//!
//! The first start of a test binary may download Kafka's jars from Maven Central into the cache
//! (`scripts/kafka.sh install`, seconds). Topics are not created on first use, as on a production
//! cluster: create them ([`Broker::create_topic`]) or let the code under test do it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tempfile::TempDir;

/// How long the nodes may take to serve metadata with every node in it after the script said
/// they listen.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// [`Broker::read_all`] stops after this long without a new message (once caught up).
const READ_IDLE: Duration = Duration::from_secs(2);
/// How long one Kafka request of a helper may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How many lines of each node's log a failure message shows.
const TAIL_LINES: usize = 20;

/// One message as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub partition: i32,
    pub offset: i64,
    /// The key as (lossy) UTF-8; rpaflow keys are run ids.
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// Header names and values, values as (lossy) UTF-8 (empty for a null value).
    pub headers: Vec<(String, String)>,
}

impl RawMessage {
    /// What a consumer received, headers included.
    pub fn from_message(message: &impl rdkafka::message::Message) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned()),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }

    /// The value of header `name`, when the message has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What to start: how many nodes, and the users of a SASL_PLAINTEXT (PLAIN) listener if any.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// 1 (the default when 0) or 3.
    pub nodes: usize,
    /// `(user, password)` pairs; a SASL listener is added to node 1 when there are any.
    pub sasl_users: Vec<(String, String)>,
}

/// Apache Kafka on `127.0.0.1`, one node or a cluster, killed (SIGKILL) when dropped; its
/// temporary directory (storage and `node-K/kafka.log`) is removed on drop.
pub struct Broker {
    dir: TempDir,
    /// Node K listens for clients on `base + 2(K-1)`.
    base: u16,
    nodes: usize,
    sasl: bool,
    /// The producer of [`Broker::produce_raw`], made on first use and dropped by [`Broker::stop`].
    producer: OnceLock<FutureProducer>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("brokers", &self.brokers())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Broker {
    /// Starts one node on free ports and a new temporary directory, and waits until a Kafka
    /// client gets its metadata.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(BrokerOptions::default()).await
    }

    /// Starts a three-node cluster (replication factor 3, `min.insync.replicas=2`).
    pub async fn cluster() -> anyhow::Result<Self> {
        Self::start_with(BrokerOptions {
            nodes: 3,
            ..BrokerOptions::default()
        })
        .await
    }

    /// Starts what `options` says and waits until every node is in the metadata.
    pub async fn start_with(options: BrokerOptions) -> anyhow::Result<Self> {
        let nodes = options.nodes.max(1);
        let dir = tempfile::Builder::new()
            .prefix("rpaflow-kafka-")
            .tempdir()
            .context("cannot create the broker's temporary directory")?;
        let mut broker = Self {
            dir,
            base: 0,
            nodes,
            sasl: !options.sasl_users.is_empty(),
            producer: OnceLock::new(),
        };
        let mut args = vec!["--nodes".to_owned(), nodes.to_string()];
        for (user, password) in &options.sasl_users {
            args.push("--sasl".into());
            args.push(format!("{user}:{password}"));
        }
        // The ports are free when picked but not held: another process may take one first, so
        // a start that fails gets other ports (and a fresh directory).
        let mut last_error = None;
        for _ in 0..3 {
            broker.base = free_ports(2 * nodes + usize::from(broker.sasl));
            let port = broker.base.to_string();
            let mut start = vec!["start", "--port", &port];
            start.extend(args.iter().map(String::as_str));
            match broker.script(&start).await {
                Ok(_) => {
                    broker.wait_ready().await?;
                    return Ok(broker);
                }
                Err(e) => {
                    broker.stop();
                    for k in 1..=nodes {
                        let _ =
                            std::fs::remove_dir_all(broker.dir.path().join(format!("node-{k}")));
                    }
                    let _ = std::fs::remove_file(broker.dir.path().join("cluster.env"));
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    /// The bootstrap servers, `127.0.0.1:PORT[,...]`, one per node.
    pub fn brokers(&self) -> String {
        (1..=self.nodes)
            .map(|k| format!("127.0.0.1:{}", self.client_port(k)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The SASL_PLAINTEXT listener (mechanism PLAIN) of node 1, when started with users.
    pub fn sasl_brokers(&self) -> Option<String> {
        self.sasl
            .then(|| format!("127.0.0.1:{}", self.base + 2 * self.nodes as u16))
    }

    /// How many nodes the cluster has.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The directory holding `cluster.env` and `node-K/`.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills every node (SIGKILL: no chance to flush) and waits for them to be gone.
    pub fn stop(&mut self) {
        self.producer = OnceLock::new();
        self.script_blocking(&["kill", "all"]);
    }

    /// Starts every node that is not running again on its data, and waits until all answer.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.script(&["restart", "all"]).await?;
        self.wait_ready().await
    }

    /// Kills node `node` (1-based) with SIGKILL.
    pub fn kill(&mut self, node: usize) {
        self.producer = OnceLock::new();
        self.script_blocking(&["kill", &node.to_string()]);
    }

    /// Starts node `node` again on its data and waits until every node is in the metadata.
    pub async fn restart_node(&mut self, node: usize) -> anyhow::Result<()> {
        self.script(&["restart", &node.to_string()]).await?;
        self.wait_ready().await
    }

    /// The node that leads `topic`/`partition`, from the metadata of a live node.
    pub async fn leader(&self, topic: &str, partition: i32) -> usize {
        self.placement(topic, partition).await.0
    }

    /// How many nodes hold a replica of `topic`/`partition`.
    pub async fn replicas(&self, topic: &str, partition: i32) -> usize {
        self.placement(topic, partition).await.1
    }

    /// The leader and the replica count of `topic`/`partition`.
    async fn placement(&self, topic: &str, partition: i32) -> (usize, usize) {
        let metadata = self.metadata(topic).await;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
            .and_then(|p| Some((usize::try_from(p.leader()).ok()?, p.replicas().len())))
            .filter(|(leader, _)| (1..=self.nodes).contains(leader))
            .unwrap_or_else(|| self.fail(&format!("{topic}/{partition} has no leader")))
    }

    /// What every node logged at WARN and above (the last lines of each), with the script's
    /// lines per start and kill; the whole logs are `node-K/kafka.log` under [`Broker::data_dir`].
    pub fn log(&self) -> String {
        (1..=self.nodes)
            .map(|k| {
                let text: String = std::fs::read_to_string(self.log_path(k))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| {
                        l.contains("] WARN ")
                            || l.contains("] ERROR ")
                            || l.starts_with("[scripts/kafka.sh]")
                            || l.starts_with("Exception")
                    })
                    .flat_map(|l| [l, "\n"])
                    .collect();
                format!(
                    "--- node {k} ({}) ---\n{}\n",
                    self.log_path(k).display(),
                    crate::tail(&text, TAIL_LINES)
                )
            })
            .collect()
    }

    /// Panics with `message` and the tail of every node's log.
    pub fn fail(&self, message: &str) -> ! {
        panic!("{message}\n{}--- end of the Kafka logs ---", self.log())
    }

    /// A client configuration with `bootstrap.servers` set, for scenarios that make their own
    /// producers and consumers.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.brokers());
        config
    }

    /// Creates `topic` with `partitions` partitions (CreateTopics, as rpaflow does); a topic that
    /// already exists is left alone.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .unwrap_or_else(|e| self.fail(&format!("cannot create an admin client: {e}")));
        let new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(self.nodes.min(3) as i32),
        );
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = admin
            .create_topics([&new], &options)
            .await
            .unwrap_or_else(|e| self.fail(&format!("CreateTopics `{topic}` failed: {e}")));
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => self.fail(&format!("CreateTopics `{name}` failed: {code}")),
            }
        }
    }

    /// Produces one message (no headers) and returns the partition and offset it got. The topic
    /// must exist.
    pub async fn produce_raw(&self, topic: &str, key: &str, payload: &[u8]) -> (i32, i64) {
        self.produce_with_headers(topic, key, payload, &[]).await
    }

    /// [`Broker::produce_raw`] with headers.
    pub async fn produce_with_headers(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> (i32, i64) {
        let producer = self.producer.get_or_init(|| {
            self.client_config()
                .set("acks", "all")
                .set(
                    "message.timeout.ms",
                    REQUEST_TIMEOUT.as_millis().to_string(),
                )
                .create()
                .unwrap_or_else(|e| self.fail(&format!("cannot create a producer: {e}")))
        });
        let mut owned = rdkafka::message::OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(rdkafka::message::Header {
                key: name,
                value: Some(*value),
            });
        }
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(owned);
        match producer.send(record, REQUEST_TIMEOUT).await {
            Ok(delivery) => (delivery.partition, delivery.offset),
            Err((e, _)) => self.fail(&format!("producing to `{topic}` (key {key}) failed: {e}")),
        }
    }

    /// Every message of `topic`, every partition from its beginning, sorted by partition and
    /// offset. Reads with a consumer of a new group id that is assigned the partitions (it joins
    /// no group and commits nothing) until it has reached the end of every partition and no new
    /// message came for 2 s, or until `timeout`. Panics when the topic does not exist.
    pub async fn read_all(&self, topic: &str, timeout: Duration) -> Vec<RawMessage> {
        let deadline = Instant::now() + timeout;
        let consumer: StreamConsumer = self
            .client_config()
            .set("group.id", fresh_group_id())
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap_or_else(|e| self.fail(&format!("cannot create a consumer: {e}")));
        let partitions = self.partitions(topic).await;
        let mut assignment = TopicPartitionList::new();
        for &partition in &partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap_or_else(|e| self.fail(&format!("bad partition {partition}: {e}")));
        }
        consumer
            .assign(&assignment)
            .unwrap_or_else(|e| self.fail(&format!("cannot assign `{topic}`: {e}")));

        let mut messages = Vec::new();
        let mut at_end = std::collections::BTreeSet::new();
        let mut last_news = Instant::now();
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let caught_up = at_end.len() == partitions.len();
            if caught_up && now.duration_since(last_news) >= READ_IDLE {
                break;
            }
            let wait = (deadline - now).min(READ_IDLE);
            match tokio::time::timeout(wait, consumer.recv()).await {
                Err(_) => {}
                Ok(Ok(message)) => {
                    at_end.remove(&message.partition());
                    last_news = Instant::now();
                    messages.push(RawMessage::from_message(&message));
                }
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    at_end.insert(partition);
                }
                // A node of the cluster is down (a failure test killed it): the client says so
                // and reads from the others.
                Ok(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
                ))) => {}
                Ok(Err(e)) => self.fail(&format!("consuming `{topic}` failed: {e}")),
            }
        }
        messages.sort_by_key(|m| (m.partition, m.offset));
        messages
    }

    /// The offset `group` has committed for `topic`/`partition` (the next one it will read),
    /// `None` when it committed none. Asks the group coordinator without joining the group.
    pub async fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap_or_else(|e| self.fail(&format!("cannot create a consumer: {e}")));
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition(topic, partition);
        let offsets = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(wanted, REQUEST_TIMEOUT)
        })
        .await
        .unwrap_or_else(|e| self.fail(&format!("the offset lookup panicked: {e}")))
        .unwrap_or_else(|e| {
            self.fail(&format!(
                "OffsetFetch of group `{group}` for {topic}/{partition} failed: {e}"
            ))
        });
        match offsets.find_partition(topic, partition).map(|p| p.offset()) {
            Some(Offset::Offset(offset)) => Some(offset),
            _ => None,
        }
    }

    /// The cluster's metadata of `topic`, from a live node.
    async fn metadata(&self, topic: &str) -> rdkafka::metadata::Metadata {
        let consumer: BaseConsumer = self
            .client_config()
            .create()
            .unwrap_or_else(|e| self.fail(&format!("cannot create a client: {e}")));
        let name = topic.to_owned();
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&name), REQUEST_TIMEOUT))
            .await
            .unwrap_or_else(|e| self.fail(&format!("the metadata request panicked: {e}")))
            .unwrap_or_else(|e| self.fail(&format!("metadata of `{topic}` failed: {e}")))
    }

    /// The partition numbers of `topic`, from the broker's metadata.
    async fn partitions(&self, topic: &str) -> Vec<i32> {
        let metadata = self.metadata(topic).await;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            self.fail(&format!("the metadata has no topic `{topic}`"))
        };
        if let Some(error) = found.error() {
            self.fail(&format!(
                "topic `{topic}`: {}",
                RDKafkaErrorCode::from(error)
            ));
        }
        found.partitions().iter().map(|p| p.id()).collect()
    }

    fn client_port(&self, node: usize) -> u16 {
        self.base + 2 * (node as u16 - 1)
    }

    fn log_path(&self, node: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("node-{node}"))
            .join("kafka.log")
    }

    /// Runs `scripts/kafka.sh ARGS... --data DIR` off the async threads.
    async fn script(&self, args: &[&str]) -> anyhow::Result<String> {
        let command = self.script_command(args);
        let shown = format!("scripts/kafka.sh {}", args.join(" "));
        let out = tokio::task::spawn_blocking(move || {
            let mut command = command;
            command.output()
        })
        .await?
        .with_context(|| format!("cannot run {shown}"))?;
        if !out.status.success() {
            bail!(
                "{shown} failed ({}):\n{}\n{}",
                out.status,
                crate::tail(&String::from_utf8_lossy(&out.stderr), 40),
                self.log()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`Broker::script`] for `Drop` and other places that cannot wait asynchronously; a failure
    /// is only printed.
    fn script_blocking(&self, args: &[&str]) {
        match self.script_command(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "scripts/kafka.sh {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("cannot run scripts/kafka.sh: {e}"),
        }
    }

    fn script_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(crate::workspace_root().join("scripts").join("kafka.sh"))
            .args(args)
            .arg("--data")
            .arg(self.dir.path())
            .env_remove("KAFKA_HEAP_OPTS")
            .stdin(Stdio::null());
        command
    }

    /// Waits until a client gets metadata that lists every node.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let probe: BaseConsumer = self
            .client_config()
            .create()
            .context("cannot create a metadata client")?;
        let probe = std::sync::Arc::new(probe);
        loop {
            let client = std::sync::Arc::clone(&probe);
            let metadata = tokio::task::spawn_blocking(move || {
                client.fetch_metadata(None, Duration::from_secs(2))
            })
            .await?;
            let seen = metadata.as_ref().map_or(0, |m| m.brokers().len());
            if seen == self.nodes {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the metadata lists {seen} of {} nodes after {READY_TIMEOUT:?}:\n{}",
                    self.nodes,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A base port above which `count` consecutive ports of 127.0.0.1 are free, below the range the
/// kernel hands out for port 0 (so that [`crate::closed_port`] picks cannot collide with it).
fn free_ports(count: usize) -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed =
        u64::from(std::process::id()) * 7919 + NEXT.fetch_add(1, Ordering::Relaxed) * 104_729;
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed + attempt * 613) % 12_000) as u16;
        let free = (0..count as u16).all(|i| {
            std::net::TcpListener::bind(std::net::SocketAddr::from(([127, 0, 0, 1], base + i)))
                .is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no {count} consecutive free ports between 20000 and 32000")
}

/// A consumer group id no other consumer of this machine uses.
fn fresh_group_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "rpaflow-tests-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
