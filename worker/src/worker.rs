//! The worker component: pulls tasks from a [`TaskSource`], runs them with the executors of a
//! [`Registry`], publishes one result per task and acknowledges the delivery.
//!
//! # What a task goes through
//! 1. The loop takes a concurrency slot *before* pulling a task, so a busy worker leaves tasks on
//!    the bus for idle ones.
//! 2. The input JSON is parsed (bad JSON is `invalid_input`) and the executor looked up (none is
//!    `unknown_kind`, not retryable).
//! 3. The executor runs under the task's timeout (`timeout`, retryable) and its run's
//!    cancellation (`cancelled`, when the run id arrives on [`TaskSource::cancellations`]).
//!    A panicking executor fails its step with `internal`; the worker goes on.
//! 4. The output is serialized and checked against the task's `max_output_bytes` (or the
//!    configured default): a larger output fails with `payload_too_large`. Nothing is truncated.
//! 5. The [`pb::TaskResult`] is published, then the delivery acknowledged. A result that cannot
//!    be published leaves the delivery unacknowledged, to be delivered again.
//!
//! Each task runs in a `step` span with `run_id`, `step`, `item`, `attempt` and `kind`. Inputs and
//! outputs are never logged: they may hold secrets.
//!
//! # Shutdown
//! When the shutdown token is cancelled the worker stops pulling, lets the tasks in flight finish
//! (each bounded by its own timeout, all by `drain_timeout`: what still runs then is handed back
//! unacknowledged) and publish, closes the source (offsets committed, pools left), then returns. [`TaskSource::next_task`] is
//! abandoned mid-wait at shutdown, so a source must not lose a task it has not returned yet (an
//! unacknowledged task is delivered again anyway).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use rpaflow_core::bus::{TaskDelivery, TaskSource};
use rpaflow_core::time::now_ms;
use rpaflow_proto::v1::{self as pb, task_result::Outcome};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::{Error, Registry, Result, StepError, TaskContext};

/// The name of the span each task runs in.
pub const STEP_SPAN: &str = "step";

/// How a worker runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Names this worker in results, logs and its control consumer group; unique per process by
    /// default (see [`default_worker_id`]).
    pub id: String,
    /// How many tasks run at once.
    pub concurrency: usize,
    /// The output limit for tasks that do not set one (1 MiB).
    pub max_output_bytes: usize,
    /// The timeout for tasks that do not set one.
    #[serde(with = "crate::duration")]
    pub default_timeout: Duration,
    /// The inference node `llm` steps use (`http://host:port` or `host:port`), or several,
    /// comma-separated (`RPAFLOW_WORKER__INFERENCE_ENDPOINT=a:50061,b:50061`); without one they
    /// fail saying so. Taken together with `inference_endpoints`.
    pub inference_endpoint: Option<String>,
    /// More inference nodes, a list. A name may resolve to several addresses (a Kubernetes
    /// headless Service): each is a node, and requests are balanced over them.
    pub inference_endpoints: Vec<String>,
    /// How often the endpoints' names are resolved again, to find nodes that came or went.
    #[serde(with = "crate::duration")]
    pub inference_refresh: Duration,
    /// How long a stopping worker waits for its steps in flight; those still running then are
    /// handed back unacknowledged, to be delivered again.
    #[serde(with = "crate::duration")]
    pub drain_timeout: Duration,
    /// Fuel of one expression evaluation in a `transform`: one per instruction plus one per 64
    /// bytes of data (`docs/limits.md`).
    pub expr_fuel: u64,
    /// The largest result of one such evaluation, in bytes of JSON.
    pub expr_max_output_bytes: usize,
    /// Fuel of all the expression evaluations of one `transform` step.
    pub transform_fuel: u64,
    /// Which hosts and addresses steps may reach (`docs/security.md`); public ones only by
    /// default. The policy of every namespace without one in `egress_namespaces`.
    pub egress: crate::egress::EgressConfig,
    /// Namespaces with an egress policy of their own (`[worker.egress_namespaces.team-a]`), each
    /// complete: it replaces `egress` for the namespace's steps, with nothing merged from it.
    pub egress_namespaces: BTreeMap<String, crate::egress::EgressConfig>,
    /// What opens the secret values tasks carry sealed: set by the binary from `[secrets]`
    /// (the orchestrator's key). Without it, steps that use secrets fail saying so.
    #[serde(skip)]
    pub secrets_key: Option<rpaflow_core::secrets::SecretsKey>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: default_worker_id(),
            concurrency: 16,
            max_output_bytes: 1024 * 1024,
            default_timeout: Duration::from_secs(300),
            inference_endpoint: None,
            inference_endpoints: Vec::new(),
            inference_refresh: crate::executors::llm::DEFAULT_REFRESH,
            drain_timeout: Duration::from_secs(60),
            expr_fuel: rpaflow_core::expr::DEFAULT_FUEL,
            expr_max_output_bytes: rpaflow_core::expr::DEFAULT_MAX_OUTPUT_BYTES,
            transform_fuel: crate::executors::DEFAULT_TRANSFORM_FUEL,
            egress: crate::egress::EgressConfig::default(),
            egress_namespaces: BTreeMap::new(),
            secrets_key: None,
        }
    }
}

/// `HOSTNAME-XXXXXX`: the host (a pod's name under Kubernetes) and six random hex digits, so that
/// two workers never share an id even where every container's process is PID 1, and a restarted
/// worker is told from its previous life.
pub fn default_worker_id() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let host = if host.trim().is_empty() {
        "worker".to_owned()
    } else {
        host
    };
    // The last digits of a v7 UUID are random (its first ones are the time).
    let random = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}-{}", &random[random.len() - 6..])
}

impl WorkerConfig {
    /// The budget of one expression evaluation on this worker.
    pub fn expr_limits(&self) -> rpaflow_core::expr::Limits {
        rpaflow_core::expr::Limits {
            fuel: self.expr_fuel,
            max_output_bytes: self.expr_max_output_bytes,
            section: "worker",
        }
    }

    /// Every inference endpoint configured: `inference_endpoint` (comma-separated) and
    /// `inference_endpoints`.
    pub fn inference_endpoints(&self) -> Vec<String> {
        let single = self.inference_endpoint.iter().flat_map(|e| e.split(','));
        single
            .chain(self.inference_endpoints.iter().map(String::as_str))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Checks the values before anything starts.
    pub fn validate(&self) -> Result<()> {
        let fail = |field: &'static str, message: &str| {
            Err(Error::Config {
                field: field.into(),
                message: message.to_owned(),
            })
        };
        if self.id.trim().is_empty() {
            return fail("id", "must not be empty");
        }
        if self.concurrency == 0 {
            return fail("concurrency", "must be at least 1");
        }
        if self.concurrency > Semaphore::MAX_PERMITS {
            return fail("concurrency", "is too large");
        }
        if self.max_output_bytes == 0 {
            return fail("max_output_bytes", "must be at least 1");
        }
        if self.default_timeout.is_zero() {
            return fail("default_timeout", "must be longer than zero");
        }
        if self.expr_fuel < 100 || self.transform_fuel < self.expr_fuel {
            return fail(
                "expr_fuel",
                "must be at least 100, and transform_fuel at least expr_fuel",
            );
        }
        if self.expr_max_output_bytes == 0 {
            return fail("expr_max_output_bytes", "must be at least 1");
        }
        crate::egress::EgressPolicies::new(&self.egress, &self.egress_namespaces)?;
        if self.inference_refresh < Duration::from_secs(1) {
            return fail("inference_refresh", "must be at least 1s");
        }
        let endpoints = self.inference_endpoints();
        if !endpoints.is_empty() {
            crate::executors::LlmExecutor::new(&endpoints, self.inference_refresh)?;
        }
        Ok(())
    }
}

/// The worker component. Create it with [`Worker::new`], keep a [`Worker::handle`] to watch it,
/// and drive it with [`Worker::run`].
pub struct Worker {
    config: WorkerConfig,
    registry: Registry,
    source: Arc<dyn TaskSource>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// A cheap, cloneable view of a running worker.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    id: Arc<str>,
    stats: Arc<Stats>,
}

/// What a worker has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerStats {
    /// Tasks running now.
    pub in_flight: usize,
    /// Tasks whose result was a success.
    pub succeeded: u64,
    /// Tasks whose result was an error.
    pub failed: u64,
    /// Whether the loop is running (pulling or draining).
    pub running: bool,
}

#[derive(Debug, Default)]
struct Stats {
    /// The configured concurrency, for the free slots.
    concurrency: AtomicUsize,
    metrics: crate::metrics::WorkerMetrics,
    in_flight: AtomicUsize,
    succeeded: AtomicU64,
    failed: AtomicU64,
    running: AtomicBool,
}

impl WorkerHandle {
    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds the worker's metrics to `registry` ([`crate::metrics`]).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.stats.metrics.register(registry);
    }

    /// Sets the gauges (tasks in flight, free slots): called before each scrape.
    pub fn refresh_metrics(&self) {
        let in_flight = self.stats.in_flight.load(Ordering::Relaxed);
        let concurrency = self.stats.concurrency.load(Ordering::Relaxed);
        let metrics = &self.stats.metrics;
        metrics
            .in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        metrics
            .free_slots
            .set(i64::try_from(concurrency.saturating_sub(in_flight)).unwrap_or(i64::MAX));
    }

    /// A snapshot of the worker's counters.
    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            in_flight: self.stats.in_flight.load(Ordering::Relaxed),
            succeeded: self.stats.succeeded.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            running: self.stats.running.load(Ordering::Relaxed),
        }
    }
}

impl Worker {
    pub fn new(config: WorkerConfig, registry: Registry, source: Arc<dyn TaskSource>) -> Self {
        let stats = Stats {
            concurrency: AtomicUsize::new(config.concurrency),
            ..Stats::default()
        };
        Self {
            config,
            registry,
            source,
            stats: Arc::new(stats),
        }
    }

    /// A handle to watch the worker with.
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            id: Arc::from(self.config.id.as_str()),
            stats: Arc::clone(&self.stats),
        }
    }

    /// Runs until `shutdown` is cancelled or the source closes, then waits for the tasks in
    /// flight. Fails only on an invalid configuration.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        self.config.validate()?;
        let Self {
            config,
            registry,
            source,
            stats,
        } = self;
        let runs = Arc::new(RunTokens::default());
        let listener_stop = CancellationToken::new();
        let _stop_listener = listener_stop.clone().drop_guard();
        tokio::spawn(listen_for_cancellations(
            source.cancellations(),
            Arc::clone(&runs),
            listener_stop,
        ));

        let shared = Arc::new(Shared {
            config,
            registry,
            source,
            stats,
        });
        let slots = Arc::new(Semaphore::new(shared.config.concurrency));
        let mut in_flight = JoinSet::new();
        shared.stats.running.store(true, Ordering::Relaxed);
        info!(
            worker_id = %shared.config.id,
            concurrency = shared.config.concurrency,
            kinds = ?shared.registry.kinds(),
            egress_namespaces = ?shared.registry.namespaces(),
            "worker started"
        );

        loop {
            let slot = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                slot = Arc::clone(&slots).acquire_owned() => slot,
            };
            // The semaphore is never closed.
            let Ok(slot) = slot else { break };
            let delivery = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                delivery = shared.source.next_task() => delivery,
            };
            let Some(delivery) = delivery else {
                info!(worker_id = %shared.config.id, "step bus closed");
                break;
            };
            let cancel = runs.register(&delivery.task.run_id);
            let shared = Arc::clone(&shared);
            in_flight.spawn(async move {
                shared.process(delivery, &cancel).await;
                drop(slot);
            });
            while let Some(joined) = in_flight.try_join_next() {
                report_join(joined);
            }
        }

        info!(
            worker_id = %shared.config.id,
            in_flight = in_flight.len(),
            "worker stopping; waiting for the tasks in flight"
        );
        let drained = tokio::time::timeout(shared.config.drain_timeout, async {
            while let Some(joined) = in_flight.join_next().await {
                report_join(joined);
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                worker_id = %shared.config.id,
                handed_back = in_flight.len(),
                "steps still running at the drain timeout are handed back unacknowledged"
            );
            in_flight.shutdown().await;
        }
        // Commit what was published and leave the pools.
        shared.source.close().await;
        // Nothing runs any more: executors may let go of browsers and connections.
        shared.registry.shutdown().await;
        shared.stats.running.store(false, Ordering::Relaxed);
        info!(worker_id = %shared.config.id, "worker stopped");
        Ok(())
    }
}

/// What every task of a worker shares.
struct Shared {
    config: WorkerConfig,
    registry: Registry,
    source: Arc<dyn TaskSource>,
    stats: Arc<Stats>,
}

impl Shared {
    /// Runs one task, publishes its result and acknowledges the delivery.
    async fn process(&self, delivery: TaskDelivery, cancel: &RunToken) {
        let TaskDelivery { task, ack } = delivery;
        let span = info_span!(
            STEP_SPAN,
            otel.name = %format_args!("{STEP_SPAN} {}", task.kind),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            messaging.operation.type = "process",
            messaging.destination.name = %task.queue,
            run_id = %task.run_id,
            step = %task.step_id,
            item = task.item,
            attempt = task.attempt,
            kind = %task.kind,
            namespace = %crate::egress::policy::canonical_namespace(&task.namespace),
            worker_id = %self.config.id,
        );
        // The task's `traceparent` names its dispatch span: the step is its child.
        rpaflow_core::telemetry::run_trace::continue_trace(
            &span,
            task.headers
                .get(rpaflow_core::kafka::TRACEPARENT_HEADER)
                .map(String::as_str),
        );
        async {
            self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let started_at_ms = now_ms();
            let started = Instant::now();
            let outcome = self.execute(&task, cancel.token()).await;
            let elapsed = started.elapsed();
            let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            self.stats.metrics.task_finished(
                &task.kind,
                outcome.as_ref().err().map(|e| e.code.as_str()),
                elapsed.as_secs_f64(),
            );
            match &outcome {
                Ok(_) => {
                    self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                    info!(elapsed_ms, "step succeeded");
                }
                Err(err) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    rpaflow_core::telemetry::run_trace::record_error(
                        &tracing::Span::current(),
                        &err.code,
                    );
                    if err.code == crate::codes::CANCELLED {
                        info!(elapsed_ms, "step cancelled");
                    } else {
                        warn!(
                            elapsed_ms,
                            code = %err.code,
                            retryable = err.retryable,
                            error = %err.message,
                            "step failed"
                        );
                    }
                }
            }
            let result = pb::TaskResult {
                namespace: task.namespace,
                run_id: task.run_id,
                step_id: task.step_id,
                item: task.item,
                attempt: task.attempt,
                outcome: Some(match outcome {
                    Ok(output_json) => Outcome::OutputJson(output_json),
                    Err(err) => Outcome::Error(err.into()),
                }),
                worker_id: self.config.id.clone(),
                started_at_ms,
                finished_at_ms: now_ms(),
            };
            match self.source.publish(result).await {
                Ok(()) => ack.ack(),
                Err(err) => error!(
                    error = %err,
                    "could not publish the step result; the task stays unacknowledged"
                ),
            }
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        .instrument(span)
        .await;
    }

    /// Runs the task's executor and returns its output as JSON text; the output and an error's
    /// message come back with the task's secrets masked (an API echoing a header, say).
    async fn execute(
        &self,
        task: &pb::Task,
        cancel: CancellationToken,
    ) -> Result<String, StepError> {
        let secrets = self.open_secrets(task)?;
        let masker = rpaflow_core::secrets::Masker::new(secrets.values().map(String::as_str));
        self.run_executor(task, cancel, &secrets, &masker)
            .await
            .map_err(|mut err| {
                err.message = masker.mask_str(&err.message);
                err
            })
    }

    /// The values of the task's secrets, opened, by their markers' text.
    fn open_secrets(&self, task: &pb::Task) -> Result<HashMap<String, String>, StepError> {
        let missing = |message: String| StepError::permanent(crate::codes::SECRET_MISSING, message);
        let mut opened = HashMap::with_capacity(task.secrets.len());
        for (marker, sealed) in &task.secrets {
            let name = rpaflow_core::secrets::Marker::parse(marker)
                .map(|m| m.name)
                .unwrap_or_default();
            if sealed.is_empty() {
                return Err(missing(format!(
                    "secret `{name}` is not set (set it with `rpaflow secret set {name}`)"
                )));
            }
            let Some(key) = &self.config.secrets_key else {
                return Err(missing(format!(
                    "this worker has no secrets key to open secret `{name}` with (set secrets.key_file to the orchestrator's key)"
                )));
            };
            // Sealed for the secret's full name: a value of another namespace's secret of the
            // same name does not open here.
            let full = rpaflow_core::namespace::qualify(&task.namespace, &name);
            let value = key
                .open(&full, sealed)
                .map_err(|e| missing(e.to_string()))?;
            opened.insert(marker.clone(), value);
        }
        Ok(opened)
    }

    async fn run_executor(
        &self,
        task: &pb::Task,
        cancel: CancellationToken,
        secrets: &HashMap<String, String>,
        masker: &rpaflow_core::secrets::Masker,
    ) -> Result<String, StepError> {
        // The namespace's own executor where it has one (its egress policy), else the default.
        let Some(executor) = self.registry.get_for(&task.namespace, &task.kind) else {
            return Err(StepError::unknown_kind(&task.kind, &self.registry.kinds()));
        };
        let mut input = parse_input(&task.input_json)?;
        // Only markers the orchestrator tagged for this attempt have values; any other came
        // from data and is refused rather than passed on.
        let refused = |marker: rpaflow_core::secrets::Marker| {
            StepError::permanent(
                crate::codes::SECRET_REFUSED,
                format!(
                    "the input holds a marker for secret `{}` that the step's `with` did not make (markers in run inputs or step outputs are refused)",
                    marker.name
                ),
            )
        };
        if executor.receives_secrets() {
            rpaflow_core::secrets::reveal(&mut input, secrets).map_err(refused)?;
        } else {
            if let Some(unknown) = rpaflow_core::secrets::markers(&input)
                .into_iter()
                .find(|m| !secrets.contains_key(&m.text))
            {
                return Err(refused(unknown));
            }
            rpaflow_core::secrets::conceal(&mut input);
        }
        let ctx = TaskContext::from_task(
            task,
            self.config.default_timeout,
            self.config.max_output_bytes,
            cancel,
        );
        debug!(
            timeout_ms = ctx.timeout.as_millis(),
            traceparent = task.headers.get("traceparent").map(String::as_str),
            "step started"
        );
        let run = AssertUnwindSafe(executor.execute(&ctx, input)).catch_unwind();
        let output = tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
            finished = tokio::time::timeout(ctx.timeout, run) => match finished {
                Err(_elapsed) => return Err(StepError::timeout(ctx.timeout)),
                Ok(Err(panic)) => return Err(StepError::internal(format!(
                    "the `{}` executor panicked: {}",
                    task.kind,
                    panic_message(panic.as_ref())
                ))),
                Ok(Ok(result)) => result?,
            },
        };
        let mut output = output;
        masker.mask(&mut output);
        encode_output(&output, ctx.max_output_bytes)
    }
}

/// The task's input; an empty string is an empty mapping.
fn parse_input(text: &str) -> Result<Json, StepError> {
    if text.trim().is_empty() {
        return Ok(Json::Object(serde_json::Map::new()));
    }
    serde_json::from_str(text)
        .map_err(|e| StepError::invalid_input(format!("the task input is not valid JSON: {e}")))
}

/// The output as JSON text, or `payload_too_large` with its full size (counted, not kept).
fn encode_output(output: &Json, limit: usize) -> Result<String, StepError> {
    let mut writer = CappedWriter {
        buf: Vec::new(),
        limit,
        total: 0,
    };
    serde_json::to_writer(&mut writer, output)
        .map_err(|e| StepError::internal(format!("the output could not be serialized: {e}")))?;
    if writer.total > limit {
        return Err(StepError::payload_too_large("output", writer.total, limit));
    }
    String::from_utf8(writer.buf)
        .map_err(|e| StepError::internal(format!("the output is not UTF-8: {e}")))
}

/// Keeps bytes up to a limit, and counts all of them.
struct CappedWriter {
    buf: Vec<u8>,
    limit: usize,
    total: usize,
}

impl io::Write for CappedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.total = self.total.saturating_add(bytes.len());
        if self.total <= self.limit {
            self.buf.extend_from_slice(bytes);
        } else if !self.buf.is_empty() {
            self.buf = Vec::new();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

fn report_join(joined: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        // Executors' panics are caught; this is a panic in publishing or acknowledging.
        error!(error = %err, "a task of the worker failed");
    }
}

/// Cancels the tasks of a run when its id arrives.
async fn listen_for_cancellations(
    mut cancellations: broadcast::Receiver<String>,
    runs: Arc<RunTokens>,
    stop: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            received = cancellations.recv() => received,
        };
        match received {
            Ok(run_id) => {
                if runs.cancel(&run_id) {
                    info!(run_id = %run_id, "run cancelled; stopping its steps");
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "missed run cancellations; some steps may run to the end"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// One cancellation token per run with tasks in flight here; each task holds a child of it.
#[derive(Debug, Default)]
struct RunTokens {
    runs: Mutex<HashMap<String, (CancellationToken, usize)>>,
}

impl RunTokens {
    fn register(self: &Arc<Self>, run_id: &str) -> RunToken {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let (token, tasks) = runs
            .entry(run_id.to_owned())
            .or_insert_with(|| (CancellationToken::new(), 0));
        *tasks += 1;
        RunToken {
            token: token.child_token(),
            run_id: run_id.to_owned(),
            runs: Arc::clone(self),
        }
    }

    /// Cancels the run's tasks; false when none runs here.
    fn cancel(&self, run_id: &str) -> bool {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.get(run_id).map(|(token, _)| token.cancel()).is_some()
    }

    fn release(&self, run_id: &str) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, tasks)) = runs.get_mut(run_id) {
            *tasks -= 1;
            if *tasks == 0 {
                runs.remove(run_id);
            }
        }
    }
}

/// A task's cancellation token; unregisters the task when dropped.
#[derive(Debug)]
struct RunToken {
    token: CancellationToken,
    run_id: String,
    runs: Arc<RunTokens>,
}

impl RunToken {
    fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for RunToken {
    fn drop(&mut self) {
        self.runs.release(&self.run_id);
    }
}

#[cfg(test)]
mod tests;
