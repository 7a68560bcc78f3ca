//! The worker loop end to end over the in-process bus.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rpaflow_core::bus::{Ack, InProcessBus, ResultDelivery, StepBus, TaskDelivery, TaskSource};
use rpaflow_proto::v1::{self as pb, task_result::Outcome};
use serde_json::{Value as Json, json};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{Executor, Registry, StepError, TaskContext};

mod egress;

fn task(run_id: &str, step_id: &str, kind: &str, input: Json) -> pb::Task {
    pb::Task {
        run_id: run_id.into(),
        step_id: step_id.into(),
        attempt: 1,
        kind: kind.into(),
        input_json: input.to_string(),
        queue: "default".into(),
        timeout_ms: 60_000,
        flow: "support-inbox".into(),
        flow_version: 1,
        ..Default::default()
    }
}

/// Wraps the in-process bus to count pulls and acknowledgements.
struct CountingSource {
    bus: InProcessBus,
    /// What the worker published, as the orchestrator would receive it.
    results: tokio::sync::Mutex<mpsc::UnboundedReceiver<ResultDelivery>>,
    pulled: AtomicUsize,
    acked: Arc<AtomicUsize>,
}

impl CountingSource {
    fn new() -> Self {
        let bus = InProcessBus::new();
        let results = bus.results_channel().expect("the first sink");
        Self {
            bus,
            results: tokio::sync::Mutex::new(results),
            pulled: AtomicUsize::default(),
            acked: Arc::default(),
        }
    }

    async fn next_result(&self) -> Option<ResultDelivery> {
        self.results.lock().await.recv().await
    }
}

#[async_trait]
impl TaskSource for CountingSource {
    async fn next_task(&self) -> Option<TaskDelivery> {
        let delivery = self.bus.next_task().await?;
        self.pulled.fetch_add(1, Ordering::SeqCst);
        let acked = Arc::clone(&self.acked);
        Some(TaskDelivery {
            task: delivery.task,
            ack: Ack::new(move || {
                acked.fetch_add(1, Ordering::SeqCst);
            }),
        })
    }

    async fn publish(&self, result: pb::TaskResult) -> rpaflow_core::bus::Result<()> {
        self.bus.publish(result).await
    }

    fn cancellations(&self) -> broadcast::Receiver<String> {
        self.bus.cancellations()
    }
}

/// Sleeps for `ms` and records how many of its tasks ran at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

#[async_trait]
impl Executor for Arc<Gauge> {
    fn kind(&self) -> &'static str {
        "gauge"
    }

    async fn execute(&self, _ctx: &TaskContext, input: Json) -> Result<Json, StepError> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        let ms = input["ms"].as_u64().unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(json!({"ms": ms}))
    }
}

struct Panics;

#[async_trait]
impl Executor for Panics {
    fn kind(&self) -> &'static str {
        "panics"
    }

    async fn execute(&self, _ctx: &TaskContext, _input: Json) -> Result<Json, StepError> {
        panic!("index out of bounds")
    }
}

struct Harness {
    source: Arc<CountingSource>,
    handle: WorkerHandle,
    shutdown: CancellationToken,
    running: JoinHandle<crate::Result<()>>,
}

impl Harness {
    fn start(registry: Registry, concurrency: usize) -> Self {
        let source = Arc::new(CountingSource::new());
        let config = WorkerConfig {
            id: "worker-test".into(),
            concurrency,
            ..WorkerConfig::default()
        };
        let worker = Worker::new(config, registry, Arc::clone(&source) as Arc<dyn TaskSource>);
        let handle = worker.handle();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone()));
        Self {
            source,
            handle,
            shutdown,
            running,
        }
    }

    async fn dispatch(&self, task: pb::Task) {
        self.source.bus.dispatch(task).await.unwrap();
    }

    async fn result(&self) -> pb::TaskResult {
        tokio::time::timeout(Duration::from_secs(3600), self.source.next_result())
            .await
            .expect("a result within the hour")
            .expect("the bus is open")
            .result
    }

    /// Waits (in paused time, cheaply) until `n` tasks are in flight.
    async fn until_in_flight(&self, n: usize) {
        while self.handle.stats().in_flight != n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.running.await.unwrap().unwrap();
    }
}

fn output(result: &pb::TaskResult) -> Json {
    match &result.outcome {
        Some(Outcome::OutputJson(text)) => serde_json::from_str(text).unwrap(),
        other => panic!("expected an output, got {other:?}"),
    }
}

fn error(result: &pb::TaskResult) -> &pb::TaskError {
    match &result.outcome {
        Some(Outcome::Error(err)) => err,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn builtin() -> Registry {
    Registry::builtin().unwrap()
}

#[tokio::test(start_paused = true)]
async fn runs_tasks_and_publishes_results() {
    let worker = Harness::start(builtin(), 4);
    let mut echo = task("run-1", "compute", "echo", json!({"total": 42}));
    echo.item = Some(3);
    echo.attempt = 2;
    worker.dispatch(echo).await;
    let result = worker.result().await;
    assert_eq!(output(&result), json!({"total": 42}));
    assert_eq!(
        (
            result.run_id.as_str(),
            result.step_id.as_str(),
            result.item,
            result.attempt
        ),
        ("run-1", "compute", Some(3), 2)
    );
    assert_eq!(result.worker_id, "worker-test");
    assert!(result.started_at_ms > 0 && result.started_at_ms <= result.finished_at_ms);

    worker
        .dispatch(task(
            "run-1",
            "clean",
            "transform",
            json!({"data": [{"a": " x "}, {"a": null}], "ops": [{"drop_empty": "a"}, {"trim": "a"}]}),
        ))
        .await;
    assert_eq!(
        output(&worker.result().await),
        json!({"data": [{"a": "x"}], "count": 1, "dropped": 1})
    );

    worker
        .dispatch(task("run-1", "wait", "sleep", json!({"duration": "2s"})))
        .await;
    assert_eq!(output(&worker.result().await), json!({"slept_ms": 2000}));

    // Every delivery is acknowledged once its result is published.
    assert_eq!(worker.source.acked.load(Ordering::SeqCst), 3);
    let stats = worker.handle.stats();
    assert_eq!((stats.succeeded, stats.failed, stats.in_flight), (3, 0, 0));
    assert!(stats.running);
    worker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn unknown_kinds_and_bad_inputs_fail_for_good() {
    let worker = Harness::start(builtin(), 4);
    worker
        .dispatch(task("run-1", "drive", "teleport", json!({})))
        .await;
    let result = worker.result().await;
    let err = error(&result);
    assert_eq!(err.code, "unknown_kind");
    assert!(!err.retryable);
    assert!(err.message.contains("`teleport`"), "{}", err.message);

    let mut bad = task("run-1", "compute", "echo", Json::Null);
    bad.input_json = "{not json".into();
    worker.dispatch(bad).await;
    let result = worker.result().await;
    let err = error(&result);
    assert_eq!(err.code, "invalid_input");
    assert!(
        err.message.starts_with("the task input is not valid JSON"),
        "{}",
        err.message
    );

    worker
        .dispatch(task("run-1", "fetch", "http", json!({"method": "GET"})))
        .await;
    assert_eq!(error(&worker.result().await).message, "`url` is required");

    // A failed step is still a delivered result: acknowledged, counted.
    assert_eq!(worker.source.acked.load(Ordering::SeqCst), 3);
    assert_eq!(worker.handle.stats().failed, 3);
    worker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn steps_past_their_timeout_fail_and_may_retry() {
    let worker = Harness::start(builtin(), 4);
    let mut slow = task("run-1", "wait", "sleep", json!({"duration": "10m"}));
    slow.timeout_ms = 1_500;
    let start = tokio::time::Instant::now();
    worker.dispatch(slow).await;
    let result = worker.result().await;
    let err = error(&result);
    assert_eq!(err.code, "timeout");
    assert!(err.retryable);
    assert_eq!(err.message, "step did not finish within 1s 500ms");
    assert_eq!(start.elapsed(), Duration::from_millis(1_500));
    worker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_run_stops_only_its_steps() {
    let worker = Harness::start(builtin(), 4);
    worker
        .dispatch(task("run-a", "wait", "sleep", json!({"duration": "1h"})))
        .await;
    worker
        .dispatch(task("run-b", "wait", "sleep", json!({"duration": "10s"})))
        .await;
    worker.until_in_flight(2).await;
    worker.source.bus.cancel_run("run-a").await.unwrap();

    let first = worker.result().await;
    assert_eq!(first.run_id, "run-a");
    assert_eq!(error(&first).code, "cancelled");
    assert!(!error(&first).retryable);
    let second = worker.result().await;
    assert_eq!(second.run_id, "run-b");
    assert_eq!(output(&second), json!({"slept_ms": 10_000}));
    worker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_bounded_and_slots_come_before_pulls() {
    let gauge = Arc::new(Gauge::default());
    let mut registry = Registry::new();
    registry.register(Arc::clone(&gauge));
    let worker = Harness::start(registry, 3);
    for i in 0..10 {
        worker
            .dispatch(task(
                "run-1",
                &format!("s{i}"),
                "gauge",
                json!({"ms": 1000}),
            ))
            .await;
    }
    worker.until_in_flight(3).await;
    // A full worker leaves the rest on the bus for other workers.
    assert_eq!(worker.source.pulled.load(Ordering::SeqCst), 3);
    for _ in 0..10 {
        assert!(worker.result().await.outcome.is_some());
    }
    assert_eq!(gauge.max.load(Ordering::SeqCst), 3);
    assert_eq!(worker.source.pulled.load(Ordering::SeqCst), 10);
    worker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_tasks_in_flight_and_pulls_no_more() {
    let worker = Harness::start(builtin(), 2);
    for i in 0..5 {
        worker
            .dispatch(task(
                "run-1",
                &format!("s{i}"),
                "sleep",
                json!({"duration": "5s"}),
            ))
            .await;
    }
    worker.until_in_flight(2).await;
    worker.shutdown.cancel();
    let handle = worker.handle.clone();
    let source = Arc::clone(&worker.source);
    worker.running.await.unwrap().unwrap();
    // Both tasks in flight finished and were published before `run` returned.
    assert_eq!(source.pulled.load(Ordering::SeqCst), 2);
    assert_eq!(source.acked.load(Ordering::SeqCst), 2);
    assert_eq!(handle.stats().succeeded, 2);
    assert!(!handle.stats().running);
    for _ in 0..2 {
        let result = source.next_result().await.unwrap().result;
        assert_eq!(output(&result), json!({"slept_ms": 5000}));
    }
}

#[tokio::test(start_paused = true)]
async fn outputs_over_the_limit_are_refused_not_truncated() {
    let worker = Harness::start(builtin(), 4);
    let big = json!({"text": "x".repeat(2_000)});
    let mut over = task("run-1", "compute", "echo", big.clone());
    over.max_output_bytes = 1_000;
    worker.dispatch(over).await;
    let result = worker.result().await;
    let err = error(&result);
    assert_eq!(err.code, "payload_too_large");
    assert!(!err.retryable);
    assert_eq!(
        err.message,
        "output is 2011 bytes, over the limit of 1000 bytes"
    );

    // Without a limit of its own the task gets the worker's (1 MiB).
    worker
        .dispatch(task("run-1", "compute", "echo", big.clone()))
        .await;
    assert_eq!(output(&worker.result().await), big);
    worker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_executor_fails_its_step_only() {
    let mut registry = builtin();
    registry.register(Panics);
    let worker = Harness::start(registry, 1);
    worker
        .dispatch(task("run-1", "bad", "panics", json!({})))
        .await;
    let result = worker.result().await;
    let err = error(&result);
    assert_eq!(err.code, "internal");
    assert!(
        err.message.contains("index out of bounds"),
        "{}",
        err.message
    );
    worker.dispatch(task("run-1", "ok", "echo", json!(1))).await;
    assert_eq!(output(&worker.result().await), json!(1));
    worker.stop().await;
}

#[tokio::test]
async fn an_invalid_config_stops_the_worker_at_once() {
    let config = WorkerConfig {
        concurrency: 0,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(config, builtin(), Arc::new(InProcessBus::new()));
    let err = worker.run(CancellationToken::new()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid worker configuration: `concurrency` must be at least 1"
    );
}

#[test]
fn config_reads_human_durations() {
    let config: WorkerConfig =
        serde_json::from_value(json!({"id": "w1", "default_timeout": "2m"})).unwrap();
    assert_eq!(config.default_timeout, Duration::from_secs(120));
    assert_eq!(config.max_output_bytes, 1024 * 1024);
    assert!(config.validate().is_ok());
}

#[test]
fn output_size_is_counted_in_full() {
    let value = json!(["abc", "def"]);
    assert_eq!(encode_output(&value, 100).unwrap(), r#"["abc","def"]"#);
    let err = encode_output(&value, 5).unwrap_err();
    assert_eq!(err.message, "output is 13 bytes, over the limit of 5 bytes");
}

#[test]
fn default_worker_ids_name_the_host_and_differ_per_process() {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let (a, b) = (default_worker_id(), default_worker_id());
    assert_ne!(
        a, b,
        "two workers on one host (or two PID-1 containers) share an id"
    );
    for id in [&a, &b] {
        let (prefix, suffix) = id.rsplit_once('-').expect("HOST-RANDOM");
        assert_eq!(prefix, host, "{id}");
        assert_eq!(suffix.len(), 6, "{id}");
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
}
