//! The distributed services over a real Kafka-protocol broker: one `rpaflow orchestrator`, two or
//! more `rpaflow worker` processes, talking only through Kafka. Processes are killed mid-flight,
//! the broker is stopped and started again, garbage is put on a task topic, a worker joins under
//! load; every run must still succeed exactly once.
//!
//! The scenarios run one at a time (they share two cores), each on its own broker.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rpaflow_tests::kafka::Broker;
use rpaflow_tests::{Dev, WorkerProcess, describe_run, pb};
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard};

/// Five chained no-op steps.
const FIVE_STEPS: &str = r#"
name: five
steps:
  - { id: s1, uses: echo, with: { n: 1 } }
  - { id: s2, uses: echo, needs: s1, with: { n: "{{ steps.s1.output.n + 1 }}" } }
  - { id: s3, uses: echo, needs: s2, with: { n: "{{ steps.s2.output.n + 1 }}" } }
  - { id: s4, uses: echo, needs: s3, with: { n: "{{ steps.s3.output.n + 1 }}" } }
  - { id: s5, uses: echo, needs: s4, with: { n: "{{ steps.s4.output.n + 1 }}" } }
outputs:
  n: "{{ steps.s5.output.n }}"
"#;

/// A step that takes a while, with a timeout and retries for when its worker dies.
const SLOW: &str = r#"
name: slow
steps:
  - id: hold
    uses: sleep
    with: { duration: 3s }
    timeout: 6s
    retry: { max_attempts: 4, delay: 100ms, backoff: fixed }
  - { id: after, uses: echo, needs: hold, with: { done: true } }
"#;

const WORKER_ARGS: &[&str] = &["--concurrency", "64"];
/// Four partitions per topic: enough for three workers to share a queue, and fewer requests per
/// fetch for a broker that answers each partition with its own queries (tansu on SQLite).
const ENV: &[(&str, &str)] = &[("RPAFLOW_KAFKA__PARTITIONS", "4")];
const PARTITIONS: usize = 4;

fn serial() -> &'static Mutex<()> {
    static SERIAL: std::sync::OnceLock<Mutex<()>> = std::sync::OnceLock::new();
    SERIAL.get_or_init(|| Mutex::new(()))
}

/// A broker, an orchestrator service and some workers.
struct Cluster {
    broker: Broker,
    orchestrator: Dev,
    workers: Vec<WorkerProcess>,
    _serial: MutexGuard<'static, ()>,
}

impl Cluster {
    async fn start(workers: usize) -> Self {
        Self::start_with(workers, &[]).await
    }

    async fn start_with(workers: usize, orchestrator_args: &[&str]) -> Self {
        let serial = serial().lock().await;
        let broker = Broker::start().await.expect("cannot start the broker");
        let orchestrator = Dev::orchestrator(&broker.brokers(), orchestrator_args, ENV).await;
        let mut cluster = Self {
            broker,
            orchestrator,
            workers: Vec::new(),
            _serial: serial,
        };
        for _ in 0..workers {
            cluster.add_worker().await;
        }
        cluster
    }

    async fn add_worker(&mut self) -> usize {
        let id = format!("w{}", self.workers.len() + 1);
        let worker = WorkerProcess::start(&self.broker.brokers(), &id, WORKER_ARGS, ENV).await;
        self.workers.push(worker);
        self.workers.len() - 1
    }

    /// Waits until the live workers' latest assignments cover every partition of the queue.
    async fn wait_balanced(&self) {
        let started = Instant::now();
        loop {
            let assigned: Option<usize> = self
                .workers
                .iter()
                .filter(|w| w.is_running())
                .map(|w| {
                    let out = w.output();
                    let last = out.lines().rev().find(|l| {
                        l.contains("rpaflow-workers-default")
                            && (l.contains("partitions assigned")
                                || l.contains("partitions revoked"))
                    })?;
                    if last.contains("revoked") {
                        return None;
                    }
                    last.split("partitions=")
                        .nth(1)?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .sum();
            if assigned == Some(PARTITIONS) {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                self.fail(&format!(
                    "the pool did not settle on {PARTITIONS} partitions"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Panics with `message` and what every process printed.
    fn fail(&self, message: &str) -> ! {
        let workers: String = self
            .workers
            .iter()
            .map(|w| {
                format!(
                    "--- worker {} ---\n{}\n",
                    w.id(),
                    rpaflow_tests::tail(&w.output(), 40)
                )
            })
            .collect();
        self.orchestrator.fail(&format!(
            "{message}\n{workers}--- broker ---\n{}",
            rpaflow_tests::tail(&self.broker.log(), 20)
        ))
    }

    /// Starts `n` runs of `flow` with distinct idempotency keys; returns their ids.
    async fn start_runs(&self, flow: &str, n: usize, key_prefix: &str) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let (run, created) = self
                .orchestrator
                .start(flow, json!({}), &format!("{key_prefix}-{i}"))
                .await;
            assert!(created, "run {i} was not new");
            ids.push(run.run_id);
        }
        ids
    }

    /// Waits (a minute at most) until at least `n` runs of `five` succeeded: the load is under way.
    async fn wait_progress(&self, n: usize, what: &str) {
        let started = Instant::now();
        loop {
            let done = self.orchestrator.list_runs("five", "succeeded").await.len();
            if done >= n {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                self.fail(&format!("only {done} runs succeeded in a minute, {what}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (30 s at most) until each of the given workers has started a step.
    async fn wait_steps_started(&self, workers: std::ops::Range<usize>) {
        let started = Instant::now();
        while self.workers[workers.clone()]
            .iter()
            .any(|w| !w.output().contains("step started"))
        {
            if started.elapsed() > Duration::from_secs(30) {
                self.fail(&format!("workers {workers:?} did not all start steps"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `n` runs of `flow` succeeded; fails early on a failed run.
    async fn wait_all_succeeded(&self, flow: &str, n: usize, timeout: Duration) {
        let started = Instant::now();
        loop {
            let succeeded = self.orchestrator.list_runs(flow, "succeeded").await.len();
            if succeeded == n {
                return;
            }
            let failed = self.orchestrator.list_runs(flow, "failed").await;
            if let Some(run) = failed.first() {
                self.fail(&format!("a run failed:\n{}", describe_run(run)));
            }
            if started.elapsed() > timeout {
                let running = self.orchestrator.list_runs(flow, "running").await;
                let sample: Vec<String> = running.iter().take(3).map(describe_run).collect();
                self.fail(&format!(
                    "{succeeded} of {n} runs of `{flow}` succeeded within {timeout:?}; {} still \
                     running, e.g.:\n{}",
                    running.len(),
                    sample.join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every run ended once, and every step and item has exactly one accepted result for each
    /// attempt and exactly one `step_finished`.
    async fn assert_exactly_once(&self, run_ids: &[String]) {
        for id in run_ids {
            let events = self.orchestrator.events(id).await;
            let ends = events.count("run_succeeded");
            if ends != 1 {
                self.fail(&format!("run {id} succeeded {ends} times:\n{events}"));
            }
            if let Some((attempt, n)) = events
                .results_per_attempt()
                .into_iter()
                .find(|(_, n)| *n != 1)
            {
                self.fail(&format!(
                    "run {id}: {n} results accepted for {attempt:?}:\n{events}"
                ));
            }
            let mut finished: BTreeMap<&str, usize> = BTreeMap::new();
            for e in events.of("step_finished") {
                *finished.entry(e.step_id.as_str()).or_default() += 1;
            }
            if let Some((step, n)) = finished.iter().find(|(_, n)| **n != 1) {
                self.fail(&format!(
                    "run {id}: step {step} finished {n} times:\n{events}"
                ));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_runs_of_five_steps_across_two_workers() {
    let cluster = Cluster::start(2).await;
    cluster.orchestrator.register(FIVE_STEPS).await;
    let ids = cluster.start_runs("five", 1000, "bulk").await;
    cluster
        .wait_all_succeeded("five", 1000, Duration::from_secs(240))
        .await;
    // Spot-check outputs and the exactly-once record on a sample.
    for id in ids.iter().step_by(50) {
        let run = cluster.orchestrator.get(id).await;
        let outputs: serde_json::Value =
            serde_json::from_str(&run.outputs_json).expect("outputs are JSON");
        assert_eq!(outputs, json!({"n": 5}), "{}", describe_run(&run));
    }
    cluster.assert_exactly_once(&ids[..100]).await;
    let per_worker: Vec<usize> = cluster
        .workers
        .iter()
        .map(WorkerProcess::steps_succeeded)
        .collect();
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "both workers must have run steps: {per_worker:?}"
    );
    assert!(
        per_worker.iter().sum::<usize>() >= 5000,
        "5,000 steps must have run: {per_worker:?}"
    );
}

/// A worker dies with steps in hand; as under Kubernetes, a replacement starts. The dead worker's
/// steps time out and are retried (or redelivered from its uncommitted offsets) on the others.
///
/// The replacement is needed with tansu: its group coordinator drops an expired member but
/// hands the survivors their previous assignment, so the dead member's partitions stay
/// unassigned until the next member joins (reproduced with plain librdkafka clients). Apache
/// Kafka reassigns them after `session.timeout.ms` without help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_of_a_killed_worker_are_retried_on_the_others() {
    let mut cluster = Cluster::start(2).await;
    cluster.orchestrator.register(SLOW).await;
    cluster.wait_balanced().await;
    let ids = cluster.start_runs("slow", 12, "slow").await;
    // Wait until both workers are in the middle of `hold` steps.
    cluster.wait_steps_started(0..2).await;
    cluster.workers[0].kill9();
    let killed = cluster.workers[0].output();
    let held: Vec<String> = ids
        .iter()
        .filter(|id| {
            let of_run = |what: &str| {
                killed
                    .lines()
                    .any(|l| l.contains(id.as_str()) && l.contains(what))
            };
            of_run("step started") && !of_run("step succeeded")
        })
        .cloned()
        .collect();
    assert!(!held.is_empty(), "w1 held no step when it was killed");
    let replacement = cluster.add_worker().await;

    cluster
        .wait_all_succeeded("slow", 12, Duration::from_secs(120))
        .await;
    cluster.assert_exactly_once(&ids).await;
    let survivors = format!(
        "{}{}",
        cluster.workers[1].output(),
        cluster.workers[replacement].output()
    );
    for id in &held {
        for step in ["hold", "after"] {
            assert!(
                survivors.lines().any(|l| l.contains(id.as_str())
                    && l.contains(&format!("step={step} "))
                    && l.contains("step succeeded")),
                "run {id}: step {step}, held by the killed worker, was not run by another"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_killed_mid_load_and_restarted_finishes_every_run_once() {
    let mut cluster = Cluster::start(2).await;
    cluster.orchestrator.register(FIVE_STEPS).await;
    let ids = cluster.start_runs("five", 300, "crash").await;
    // Kill it while runs are half-way.
    cluster.wait_progress(30, "before the kill").await;
    cluster.orchestrator.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.orchestrator.restart().await;
    cluster
        .wait_all_succeeded("five", 300, Duration::from_secs(180))
        .await;
    cluster.assert_exactly_once(&ids).await;
    // Starting again with the same keys starts nothing new.
    let (again, created) = cluster
        .orchestrator
        .start("five", json!({}), "crash-7")
        .await;
    assert!(!created);
    assert_eq!(again.run_id, ids[7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_and_restarted_mid_load_loses_nothing() {
    let mut cluster = Cluster::start(2).await;
    cluster.orchestrator.register(FIVE_STEPS).await;
    let ids = cluster.start_runs("five", 200, "outage").await;
    cluster.wait_progress(20, "before the outage").await;
    cluster.broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster
        .broker
        .restart()
        .await
        .expect("the broker restarts on its data");
    cluster
        .wait_all_succeeded("five", 200, Duration::from_secs(240))
        .await;
    cluster.assert_exactly_once(&ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_task_topic_goes_to_the_dead_letter_topic() {
    let cluster = Cluster::start(2).await;
    cluster.orchestrator.register(FIVE_STEPS).await;
    let (partition, offset) = cluster
        .broker
        .produce_raw("rpaflow.tasks.default", "junk-key", b"this is not protobuf")
        .await;
    let ids = cluster.start_runs("five", 20, "after-garbage").await;
    cluster
        .wait_all_succeeded("five", 20, Duration::from_secs(60))
        .await;
    let dead = cluster
        .broker
        .read_all("rpaflow.dlq", Duration::from_secs(30))
        .await;
    let letter = dead
        .iter()
        .find(|m| m.payload == b"this is not protobuf")
        .unwrap_or_else(|| cluster.fail(&format!("no dead letter; rpaflow.dlq has {dead:?}")));
    let header = |name: &str| {
        letter
            .header(name)
            .unwrap_or_else(|| panic!("dead letter without {name}: {letter:?}"))
    };
    assert!(
        header("rpaflow-dlq-reason").contains("rpaflow.v1.Task"),
        "{letter:?}"
    );
    assert_eq!(header("rpaflow-dlq-topic"), "rpaflow.tasks.default");
    assert_eq!(header("rpaflow-dlq-partition"), partition.to_string());
    assert_eq!(header("rpaflow-dlq-offset"), offset.to_string());
    assert_eq!(letter.key.as_deref(), Some("junk-key"));
    cluster.assert_exactly_once(&ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_worker_joining_under_load_takes_a_share_and_nothing_is_lost() {
    let mut cluster = Cluster::start(2).await;
    cluster.orchestrator.register(FIVE_STEPS).await;
    let ids = cluster.start_runs("five", 600, "join").await;
    cluster
        .wait_progress(50, "before the third worker joined")
        .await;
    let third = cluster.add_worker().await;
    let more = cluster.start_runs("five", 300, "join-more").await;
    cluster
        .wait_all_succeeded("five", 900, Duration::from_secs(240))
        .await;
    let w3 = &cluster.workers[third];
    assert!(
        w3.output().contains("partitions assigned"),
        "w3 was assigned no partition:\n{}",
        w3.output()
    );
    assert!(
        w3.steps_succeeded() > 0,
        "w3 ran no step after joining:\n{}",
        rpaflow_tests::tail(&w3.output(), 30)
    );
    cluster.assert_exactly_once(&ids).await;
    cluster.assert_exactly_once(&more).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_finishes_its_steps_and_leaves() {
    let mut cluster = Cluster::start(1).await;
    cluster.orchestrator.register(SLOW).await;
    cluster.wait_balanced().await;
    let ids = cluster.start_runs("slow", 3, "drain").await;
    cluster.wait_steps_started(0..1).await;
    let status = cluster.workers[0].terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "the worker exited with {status}");
    let output = cluster.workers[0].output();
    assert!(output.contains("rpaflow worker w1: stopped"), "{output}");
    // What it held was finished and published before it left: no retry was needed.
    cluster.add_worker().await;
    cluster
        .wait_all_succeeded("slow", 3, Duration::from_secs(60))
        .await;
    for id in &ids {
        let events = cluster.orchestrator.events(id).await;
        assert!(
            events.of("task_failed").next().is_none(),
            "run {id} needed a retry after a graceful stop:\n{events}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_run_is_refused_past_the_backlog_of_a_queue() {
    // No worker: tasks pile up on the queue.
    let config = tempfile::NamedTempFile::new().expect("a temporary config file");
    std::fs::write(
        config.path(),
        "[orchestrator]\nmax_in_flight_per_queue = 5\n",
    )
    .expect("write the config");
    let path = config.path().to_str().expect("a UTF-8 path").to_owned();
    let mut cluster = Cluster::start_with(0, &["--config", &path]).await;
    cluster.orchestrator.register(SLOW).await;
    cluster.start_runs("slow", 5, "backlog").await;
    let refused = cluster
        .orchestrator
        .client()
        .await
        .start_run(pb::StartRunRequest {
            flow: "slow".into(),
            version: 0,
            inputs_json: "{}".into(),
            idempotency_key: "backlog-5".into(),
        })
        .await
        .expect_err("the sixth run is over the backlog");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("queue `default`")
            && refused.message().contains("max_in_flight_per_queue"),
        "{}",
        refused.message()
    );
    // Workers drain the backlog; new runs are accepted again.
    cluster.add_worker().await;
    cluster
        .wait_all_succeeded("slow", 5, Duration::from_secs(60))
        .await;
    cluster.start_runs("slow", 1, "after-backlog").await;
    cluster
        .wait_all_succeeded("slow", 6, Duration::from_secs(60))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_a_flow_over_kafka() {
    let _serial = serial().lock().await;
    let broker = Broker::start().await.expect("cannot start the broker");
    let data = tempfile::tempdir().expect("a temporary directory");
    let data_dir = data.path().to_str().expect("a UTF-8 path");
    let brokers = broker.brokers();
    let out = rpaflow_tests::rpaflow(
        &[
            "dev",
            "examples/hello.yaml",
            "--kafka",
            &brokers,
            "--listen",
            "127.0.0.1:0",
            "--data",
            data_dir,
        ],
        Duration::from_secs(120),
    )
    .await;
    out.expect_success();
    assert!(out.stdout.contains("SUCCEEDED"), "{out}");
    assert!(out.stdout.contains("log: Hello, world!"), "{out}");
}

/// A step longer than `max.poll.interval.ms` (10 s here, the lowest librdkafka allows with a
/// 10 s session): if it held up polling, librdkafka would leave the group mid-step and the task
/// would be delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_longer_than_the_poll_interval_keeps_its_partitions() {
    const LONG: &str = r#"
name: long
steps:
  - id: browse
    uses: sleep
    with: { duration: 14s }
    timeout: 60s
"#;
    let _serial = serial().lock().await;
    let broker = Broker::start().await.expect("cannot start the broker");
    let orchestrator = Dev::orchestrator(&broker.brokers(), &[], ENV).await;
    let env = [
        ("RPAFLOW_KAFKA__PARTITIONS", "4"),
        ("RPAFLOW_KAFKA__CONSUMER__MAX_POLL_INTERVAL_MS", "10000"),
    ];
    let worker = WorkerProcess::start(&broker.brokers(), "w1", WORKER_ARGS, &env).await;
    orchestrator.register(LONG).await;
    let id = orchestrator.run("long", json!({})).await;
    orchestrator
        .wait_succeeded(&id, Duration::from_secs(60))
        .await;
    let out = worker.output();
    let started = out
        .lines()
        .filter(|l| l.contains(id.as_str()) && l.contains("step started"))
        .count();
    assert_eq!(started, 1, "the step was delivered again:\n{out}");
    assert!(
        !out.contains("partitions revoked"),
        "the worker lost its partitions during the step:\n{out}"
    );
    let events = orchestrator.events(&id).await;
    assert_eq!(events.count("task_dispatched"), 1, "{events}");
}
