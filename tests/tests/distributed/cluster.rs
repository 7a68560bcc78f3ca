//! [`Cluster`]: a broker (one Apache Kafka node or a three-node cluster), an `rpaflow
//! orchestrator` service and some `rpaflow worker` processes, with the waits and checks the
//! scenarios share. The scenarios run one at a time (they share two cores).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rpaflow_tests::kafka::Broker;
use rpaflow_tests::{Dev, WorkerProcess, describe_run};
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard};

/// Five chained no-op steps.
pub const FIVE_STEPS: &str = r#"
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
pub const SLOW: &str = r#"
name: slow
steps:
  - id: hold
    uses: sleep
    with: { duration: 3s }
    timeout: 6s
    retry: { max_attempts: 4, delay: 100ms, backoff: fixed }
  - { id: after, uses: echo, needs: hold, with: { done: true } }
"#;

pub const WORKER_ARGS: &[&str] = &["--concurrency", "64"];
/// Four partitions per topic: enough for three workers to share a queue.
pub const ENV: &[(&str, &str)] = &[("RPAFLOW_KAFKA__PARTITIONS", "4")];
pub const PARTITIONS: usize = 4;

pub fn serial() -> &'static Mutex<()> {
    static SERIAL: std::sync::OnceLock<Mutex<()>> = std::sync::OnceLock::new();
    SERIAL.get_or_init(|| Mutex::new(()))
}

/// A broker, an orchestrator service and some workers.
pub struct Cluster {
    pub broker: Broker,
    pub orchestrator: Dev,
    pub workers: Vec<WorkerProcess>,
    _serial: MutexGuard<'static, ()>,
}

impl Cluster {
    pub async fn start(workers: usize) -> Self {
        Self::start_with(workers, &[]).await
    }

    pub async fn start_with(workers: usize, orchestrator_args: &[&str]) -> Self {
        let serial = serial().lock().await;
        let broker = Broker::start().await.expect("cannot start the broker");
        Self::on(serial, broker, workers, orchestrator_args).await
    }

    /// The services on a three-node Kafka cluster.
    pub async fn on_three_nodes(workers: usize) -> Self {
        let serial = serial().lock().await;
        let broker = Broker::cluster()
            .await
            .expect("cannot start a three-node cluster");
        Self::on(serial, broker, workers, &[]).await
    }

    async fn on(
        serial: MutexGuard<'static, ()>,
        broker: Broker,
        workers: usize,
        orchestrator_args: &[&str],
    ) -> Self {
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

    pub async fn add_worker(&mut self) -> usize {
        let id = format!("w{}", self.workers.len() + 1);
        let worker = WorkerProcess::start(&self.broker.brokers(), &id, WORKER_ARGS, ENV).await;
        self.workers.push(worker);
        self.workers.len() - 1
    }

    /// Waits until the live workers' latest assignments cover every partition of the queue.
    pub async fn wait_balanced(&self) {
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
    pub fn fail(&self, message: &str) -> ! {
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
            "{message}\n{workers}--- Kafka ---\n{}",
            self.broker.log()
        ))
    }

    /// Starts `n` runs of `flow` with distinct idempotency keys; returns their ids.
    pub async fn start_runs(&self, flow: &str, n: usize, key_prefix: &str) -> Vec<String> {
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
    pub async fn wait_progress(&self, n: usize, what: &str) {
        self.wait_progress_of("five", n, what).await;
    }

    /// Waits (a minute at most) until at least `n` runs of `flow` succeeded.
    pub async fn wait_progress_of(&self, flow: &str, n: usize, what: &str) {
        let started = Instant::now();
        loop {
            let done = self.orchestrator.list_runs(flow, "succeeded").await.len();
            if done >= n {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                self.fail(&format!(
                    "only {done} runs of `{flow}` succeeded in a minute, {what}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that nothing reached the dead-letter topic.
    pub async fn assert_no_dead_letters(&self) {
        let dead = self
            .broker
            .read_all("rpaflow.dlq", Duration::from_secs(30))
            .await;
        if !dead.is_empty() {
            self.fail(&format!("{} dead letters: {dead:?}", dead.len()));
        }
    }

    /// Waits (30 s at most) until worker `worker` has started step `step` of each run in `ids`.
    pub async fn wait_runs_started(&self, worker: usize, ids: &[String], step: &str) {
        let started = Instant::now();
        let needle = format!("step={step} ");
        loop {
            let out = self.workers[worker].output();
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| {
                    !out.lines().any(|l| {
                        l.contains(id.as_str()) && l.contains(&needle) && l.contains("step started")
                    })
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            if started.elapsed() > Duration::from_secs(30) {
                self.fail(&format!(
                    "worker {worker} did not start step {step} of runs {missing:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (30 s at most) until each of the given workers has started a step.
    pub async fn wait_steps_started(&self, workers: std::ops::Range<usize>) {
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
    pub async fn wait_all_succeeded(&self, flow: &str, n: usize, timeout: Duration) {
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
    pub async fn assert_exactly_once(&self, run_ids: &[String]) {
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
