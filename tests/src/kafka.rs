//! [`Broker`]: a real Kafka-protocol broker for the scenarios, the Rust broker tansu as a child
//! process on a free port of 127.0.0.1, keeping its topics and group offsets in a SQLite file of
//! its own temporary directory, and the raw Kafka calls scenarios make against it.
//!
//! The binary is `$RPAFLOW_TANSU` when set, else what `scripts/kafka.sh install` prints (it builds
//! tansu into the cache on first use, which takes minutes; it runs once per test binary).
//!
//! tansu does not create topics on first use: create them ([`Broker::create_topic`]) or let the
//! code under test do it, as against a production cluster.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// How long a broker may take to answer a metadata request after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// [`Broker::read_all`] stops after this long without a new message (once caught up).
const READ_IDLE: Duration = Duration::from_secs(2);
/// How long one Kafka request of a helper may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How many lines of the broker log a failure message shows.
const TAIL_LINES: usize = 60;
/// The variables tansu reads instead of its defaults; cleared so that the caller's environment
/// cannot redirect the broker (every setting that matters is passed as a flag).
const TANSU_ENV: [&str; 6] = [
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

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

/// A tansu broker on `127.0.0.1:<free port>`, killed when dropped; its temporary directory (the
/// SQLite file and `tansu.log`) is removed on drop.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// How many processes this handle has started (1 for the first).
    generation: u32,
    /// The producer of [`Broker::produce_raw`], made on first use and dropped by [`Broker::stop`].
    producer: OnceLock<FutureProducer>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("brokers", &self.brokers())
            .field("dir", &self.dir.path())
            .field("generation", &self.generation)
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl Broker {
    /// Starts a broker on a free port and a new temporary directory, and waits until a Kafka
    /// client gets its metadata.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = tokio::task::spawn_blocking(tansu_bin).await??;
        let dir = tempfile::Builder::new()
            .prefix("rpaflow-kafka-")
            .tempdir()
            .context("cannot create the broker's temporary directory")?;
        let mut broker = Self {
            child: None,
            port: 0,
            dir,
            generation: 0,
            producer: OnceLock::new(),
        };
        // The port is free when picked but not held: another process may take it before tansu
        // binds it, so a broker that dies at once gets another port.
        let mut last_error = None;
        for _ in 0..3 {
            broker.port = crate::closed_port();
            match broker.spawn(&bin).await {
                Ok(()) => return Ok(broker),
                Err(e) => {
                    broker.stop();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    /// The bootstrap servers, `127.0.0.1:PORT`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory holding `tansu.db` and `tansu.log`.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends SIGKILL (no chance to flush) and waits for the process to be gone.
    pub fn stop(&mut self) {
        self.producer = OnceLock::new();
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on Unix.
            let _ = child.kill();
            let status = child.wait();
            self.note(&format!("[broker#{}] killed: {status:?}", self.generation));
        }
    }

    /// Kills the broker if it still runs, then starts a new one on the same port and SQLite file
    /// and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let bin = tokio::task::spawn_blocking(tansu_bin).await??;
        self.spawn(&bin).await
    }

    /// Everything the broker processes of this handle printed, with a line per start and kill.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Panics with `message` and the tail of the broker log.
    pub fn fail(&self, message: &str) -> ! {
        panic!(
            "{message}\n--- tansu log ({}) ---\n{}\n--- end of log ---",
            self.log_path().display(),
            crate::tail(&self.log(), TAIL_LINES)
        )
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
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
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
        let record = FutureRecord::to(topic).key(key).payload(payload);
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

    /// The partition numbers of `topic`, from the broker's metadata.
    async fn partitions(&self, topic: &str) -> Vec<i32> {
        let consumer: BaseConsumer = self
            .client_config()
            .create()
            .unwrap_or_else(|e| self.fail(&format!("cannot create a client: {e}")));
        let name = topic.to_owned();
        let metadata = tokio::task::spawn_blocking(move || {
            consumer.fetch_metadata(Some(&name), REQUEST_TIMEOUT)
        })
        .await
        .unwrap_or_else(|e| self.fail(&format!("the metadata request panicked: {e}")))
        .unwrap_or_else(|e| self.fail(&format!("metadata of `{topic}` failed: {e}")));
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

    /// Spawns a process on `self.port` and the SQLite file, and waits until it serves metadata.
    async fn spawn(&mut self, bin: &Path) -> anyhow::Result<()> {
        self.generation += 1;
        let tag = format!("broker#{}", self.generation);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("cannot open tansu.log")?;
        let listener = format!("tcp://{}", self.brokers());
        let mut command = Command::new(bin);
        // tansu resolves the SQLite path against its working directory, even an absolute one
        // (`sqlite:///tmp/x/tansu.db` opens `$PWD/tmp/x/tansu.db`): it runs in its directory.
        command
            .args(["broker", "--cluster-id", "rpaflow-tests"])
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "sqlite://./tansu.db"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot share tansu.log")?)
            .stderr(log);
        for key in TANSU_ENV {
            command.env_remove(key);
        }
        self.note(&format!("[{tag}] starting {command:?}"));
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.note(&format!("[{tag}] pid {} on {}", child.id(), self.brokers()));
        self.child = Some(child);

        let started = Instant::now();
        let probe: BaseConsumer = self
            .client_config()
            .create()
            .context("cannot create a metadata client")?;
        let probe = std::sync::Arc::new(probe);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "{tag} exited ({status}) before it served metadata on {}; tansu.log:\n{}",
                    self.brokers(),
                    crate::tail(&self.log(), TAIL_LINES)
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "{tag} served no metadata on {} within {START_TIMEOUT:?}; tansu.log:\n{}",
                    self.brokers(),
                    crate::tail(&self.log(), TAIL_LINES)
                );
            }
            if port_open(self.port) {
                let client = probe.clone();
                let metadata = tokio::task::spawn_blocking(move || {
                    client.fetch_metadata(None, Duration::from_secs(1))
                })
                .await?;
                if metadata.is_ok_and(|m| !m.brokers().is_empty()) {
                    self.note(&format!(
                        "[{tag}] ready after {} ms",
                        started.elapsed().as_millis()
                    ));
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// Appends a line of the harness's own to the broker log.
    fn note(&self, line: &str) {
        use std::io::Write as _;
        if let Ok(mut log) = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
        {
            let _ = writeln!(log, "{line}");
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The tansu binary: `$RPAFLOW_TANSU`, else installed (when missing) and located by
/// `scripts/kafka.sh install`, once per test binary.
fn tansu_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("RPAFLOW_TANSU") {
            let bin = PathBuf::from(bin);
            return if bin.is_file() {
                Ok(bin)
            } else {
                Err(format!("RPAFLOW_TANSU={} is not a file", bin.display()))
            };
        }
        let script = crate::workspace_root().join("scripts").join("kafka.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("install")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`scripts/kafka.sh install` failed ({}):\n{}",
                out.status,
                crate::tail(&String::from_utf8_lossy(&out.stderr), 40)
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bin = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!(
                "`scripts/kafka.sh install` printed no binary path:\n{stdout}"
            ))
        }
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
fn port_open(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
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
