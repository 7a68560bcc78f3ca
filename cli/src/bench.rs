//! `rpaflow bench`: the embedded orchestrator (in-process bus, durable sled storage) under load.
//!
//! Throughput mode registers a flow of K chained `echo` steps and runs N of them, C at a time.
//! Step latency is the time between a run's consecutive step completions as an observer sees
//! them (dispatch, execution, the result made durable, the next dispatch). Waiting mode starts N
//! runs that wait for an approval and reports the memory they hold. Recovery mode starts N such
//! runs, stops the orchestrator, and times a fresh one on the same data until every run is back.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use rpaflow_core::namespace::DEFAULT as DEFAULT_NAMESPACE;
use rpaflow_orchestrator::state::{EventKind, RunStatus};
use rpaflow_orchestrator::{OrchestratorHandle, StartRun};
use tokio::sync::{broadcast, oneshot};

use crate::config::{DevConfig, Layered as _};
use crate::dev::Embedded;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// How many runs.
    #[arg(long, default_value_t = 1000)]
    pub flows: usize,
    /// Steps per run.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Runs in flight at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Give every step a templated input (`{{ run.id }}` and the previous step's output), so
    /// each decision evaluates templates, on the orchestrator's evaluation threads.
    #[arg(long)]
    pub templated: bool,
    /// Instead: start this many runs that wait for an approval, and report memory per run.
    #[arg(long, conflicts_with = "recovery")]
    pub waiting: Option<usize>,
    /// Instead: start this many runs that wait for an approval, stop the orchestrator, start a
    /// fresh one on the same data and report how long until every run is back and answers.
    #[arg(long)]
    pub recovery: Option<usize>,
    /// Where to keep the data (default: a fresh temporary directory).
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// Steps the embedded worker pool runs at once.
    #[arg(long, default_value_t = 256)]
    pub worker_concurrency: usize,
    /// Send steps through this Kafka cluster instead of in-process channels.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// With --kafka, run no embedded worker: `rpaflow worker` processes serve the `default` queue.
    #[arg(long, requires = "kafka")]
    pub external_workers: bool,
}

/// Waiters for run completions, fed by one subscription to the orchestrator's events.
#[derive(Default)]
struct Tracker {
    runs: HashMap<String, Tracked>,
}

struct Tracked {
    last: Instant,
    done: Option<oneshot::Sender<RunStatus>>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let tmp = tempfile_dir()?;
    // Defaults and RPAFLOW_* variables, as for `rpaflow dev`.
    let mut config = DevConfig::load(None, figment::Figment::new())?;
    config.orchestrator.data_dir = args
        .data
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    config.worker.concurrency = args.worker_concurrency;
    // Waiting and recovery modes hold N runs (and waiting mode's warm-up runs) at once: the
    // active-run limit must not be what they measure.
    let held = args.waiting.or(args.recovery).unwrap_or(0) + WARM_UP_RUNS;
    config.orchestrator.max_active_runs = config.orchestrator.max_active_runs.max(held);
    if let Some(brokers) = &args.kafka {
        config.kafka.brokers.clone_from(brokers);
    }
    let _telemetry = rpaflow_core::telemetry::init_telemetry(&config.telemetry, "rpaflow-dev");
    let embedded = Embedded::start_with(&config, !args.external_workers).await?;
    if let Some(n) = args.recovery {
        return recovery(embedded, &config, !args.external_workers, n)
            .await
            .map(|()| ExitCode::SUCCESS);
    }
    let result = match args.waiting {
        Some(n) => waiting(&embedded.handle, n).await,
        None => throughput(&embedded.handle, &args).await,
    };
    embedded.stop().await;
    result.map(|()| ExitCode::SUCCESS)
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    let path = std::env::temp_dir().join(format!("rpaflow-bench-{}", uuid_like()));
    std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(TempDir(path))
}

fn uuid_like() -> String {
    format!("{}-{}", std::process::id(), rpaflow_core::time::now_ms())
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn throughput(handle: &OrchestratorHandle, args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.steps >= 1 && args.flows >= 1 && args.concurrency >= 1,
        "--flows, --steps and --concurrency must be at least 1"
    );
    let mut yaml =
        String::from("name: bench\ndescription: no-op steps for rpaflow bench\nsteps:\n");
    for i in 0..args.steps {
        yaml.push_str(&format!("  - {{ id: s{i}, uses: echo"));
        if i > 0 {
            yaml.push_str(&format!(", needs: s{}", i - 1));
        }
        if args.templated {
            let previous = match i {
                0 => "none".to_owned(),
                _ => format!("{{{{ steps.s{}.output.step }}}}", i - 1),
            };
            yaml.push_str(&format!(
                ", with: {{ run: \"{{{{ run.id }}}}\", step: s{i}, after: \"{previous}\" }}"
            ));
        }
        yaml.push_str(" }\n");
    }
    let registered = handle
        .register_flow(DEFAULT_NAMESPACE, "bench.yaml", &yaml)
        .await?;
    let version = registered.record.version;

    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let step_latencies = Arc::new(Mutex::new(Vec::with_capacity(args.flows * args.steps)));
    let listener = tokio::spawn(listen(
        handle.subscribe(),
        tracker.clone(),
        step_latencies.clone(),
    ));

    let next = Arc::new(AtomicUsize::new(0));
    let run_latencies = Arc::new(Mutex::new(Vec::with_capacity(args.flows)));
    let started = Instant::now();
    let mut drivers = Vec::new();
    for _ in 0..args.concurrency.min(args.flows) {
        let (handle, tracker, next, run_latencies) = (
            handle.clone(),
            tracker.clone(),
            next.clone(),
            run_latencies.clone(),
        );
        let flows = args.flows;
        drivers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < flows {
                let t0 = Instant::now();
                let (tx, rx) = oneshot::channel();
                let req = StartRun {
                    flow: "bench".into(),
                    version,
                    ..StartRun::default()
                };
                // Register the waiter before the run can finish.
                let (state, _) = {
                    let (state, created) = handle.start_run(req).await?;
                    (state, created)
                };
                let status = if state.status.is_finished() {
                    state.status
                } else {
                    {
                        let mut t = tracker
                            .lock()
                            .map_err(|_| anyhow::anyhow!("tracker poisoned"))?;
                        t.runs.insert(
                            state.run_id.clone(),
                            Tracked {
                                last: t0,
                                done: Some(tx),
                            },
                        );
                    }
                    wait(&handle, &tracker, &state.run_id, rx).await?
                };
                anyhow::ensure!(
                    status == RunStatus::Succeeded,
                    "run {} ended {}",
                    state.run_id,
                    status.name()
                );
                if let Ok(mut l) = run_latencies.lock() {
                    l.push(t0.elapsed());
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for d in drivers {
        d.await??;
    }
    let elapsed = started.elapsed();
    listener.abort();

    let steps = (args.flows * args.steps) as f64;
    let mut step_l = step_latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut run_l = run_latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    println!(
        "runs={} steps_per_run={} concurrency={} elapsed_s={:.2} run_p50_ms={:.1} run_p99_ms={:.1}",
        args.flows,
        args.steps,
        args.concurrency,
        elapsed.as_secs_f64(),
        percentile(&mut run_l, 0.50),
        percentile(&mut run_l, 0.99)
    );
    println!(
        "steps_per_s={:.0} runs_per_s={:.1} p50_ms={:.2} p99_ms={:.2}",
        steps / elapsed.as_secs_f64(),
        args.flows as f64 / elapsed.as_secs_f64(),
        percentile(&mut step_l, 0.50),
        percentile(&mut step_l, 0.99)
    );
    Ok(())
}

/// Waits for a run's completion, checking storage now and then in case a batch of events was
/// missed by a lagging subscription.
async fn wait(
    handle: &OrchestratorHandle,
    tracker: &Mutex<Tracker>,
    run_id: &str,
    mut rx: oneshot::Receiver<RunStatus>,
) -> anyhow::Result<RunStatus> {
    loop {
        match tokio::time::timeout(Duration::from_secs(2), &mut rx).await {
            Ok(Ok(status)) => return Ok(status),
            Ok(Err(_)) => anyhow::bail!("tracker dropped run {run_id}"),
            Err(_) => {
                let state = handle.get_run(DEFAULT_NAMESPACE, run_id).await?;
                if state.status.is_finished() {
                    if let Ok(mut t) = tracker.lock() {
                        t.runs.remove(run_id);
                    }
                    return Ok(state.status);
                }
            }
        }
    }
}

async fn listen(
    mut rx: broadcast::Receiver<rpaflow_orchestrator::Published>,
    tracker: Arc<Mutex<Tracker>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
) {
    loop {
        let batch = match rx.recv().await {
            Ok(batch) => batch,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let (run_id, events) = &*batch;
        let now = Instant::now();
        let Ok(mut t) = tracker.lock() else { return };
        let Some(tracked) = t.runs.get_mut(run_id) else {
            continue;
        };
        for event in events {
            match &event.kind {
                EventKind::StepFinished { .. } => {
                    if let Ok(mut l) = latencies.lock() {
                        l.push(now - tracked.last);
                    }
                    tracked.last = now;
                }
                EventKind::RunSucceeded { .. }
                | EventKind::RunFailed { .. }
                | EventKind::RunCancelled { .. } => {
                    let status = match &event.kind {
                        EventKind::RunSucceeded { .. } => RunStatus::Succeeded,
                        EventKind::RunFailed { .. } => RunStatus::Failed,
                        _ => RunStatus::Cancelled,
                    };
                    if let Some(done) = tracked.done.take() {
                        let _ = done.send(status);
                    }
                }
                _ => {}
            }
        }
        if tracked.done.is_none() {
            t.runs.remove(run_id);
        }
    }
}

fn percentile(values: &mut [Duration], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[i].as_secs_f64() * 1000.0
}

/// Runs waiting mode starts before it measures.
const WARM_UP_RUNS: usize = 100;

/// A flow whose runs wait for an approval.
const WAITING_FLOW: &str = "name: bench-waiting\nsteps:\n  - { id: approve, uses: approval, with: { message: 'ok?' } }\n  - { id: after, uses: echo, needs: approve }\n";

async fn waiting(handle: &OrchestratorHandle, n: usize) -> anyhow::Result<()> {
    handle
        .register_flow(DEFAULT_NAMESPACE, "bench-waiting.yaml", WAITING_FLOW)
        .await?;
    // Warm up the allocator and the actor system.
    for _ in 0..WARM_UP_RUNS {
        handle
            .start_run(StartRun {
                flow: "bench-waiting".into(),
                ..StartRun::default()
            })
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kb()?;
    let started = Instant::now();
    for _ in 0..n {
        handle
            .start_run(StartRun {
                flow: "bench-waiting".into(),
                ..StartRun::default()
            })
            .await?;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kb()?;
    let per_run = (after.saturating_sub(before)) as f64 / n as f64;
    let active = handle.active_runs();
    println!(
        "waiting_runs={n} start_per_s={:.0} rss_before_mb={:.1} rss_after_mb={:.1} rss_per_waiting_run_kb={:.2} in_memory={} resting={}",
        n as f64 / elapsed.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per_run,
        active.in_memory,
        active.resting
    );
    Ok(())
}

/// Starts `n` waiting runs, stops the orchestrator (a clean stop: storage flushed), then times a
/// fresh orchestrator on the same data: `recovery_s` until it has rebuilt every unfinished run
/// and serves, then `verify_s` for asking every run for its state (GetRun's path) and checking
/// that each still waits for its approval.
async fn recovery(
    embedded: Embedded,
    config: &DevConfig,
    with_worker: bool,
    n: usize,
) -> anyhow::Result<()> {
    let handle = embedded.handle.clone();
    handle
        .register_flow(DEFAULT_NAMESPACE, "bench-waiting.yaml", WAITING_FLOW)
        .await?;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let (state, _) = handle
            .start_run(StartRun {
                flow: "bench-waiting".into(),
                ..StartRun::default()
            })
            .await?;
        ids.push(state.run_id);
    }
    let start_s = started.elapsed().as_secs_f64();
    drop(handle);
    embedded.stop().await;

    let reopened = Instant::now();
    let fresh = Embedded::start_with(config, with_worker).await?;
    let recovery_s = reopened.elapsed().as_secs_f64();
    let verified = Instant::now();
    let mut recovered = 0usize;
    for id in &ids {
        let state = fresh.handle.get_run(DEFAULT_NAMESPACE, id).await?;
        if state.status == RunStatus::Running {
            recovered += 1;
        }
    }
    let verify_s = verified.elapsed().as_secs_f64();
    fresh.stop().await;
    println!(
        "waiting_runs={n} start_s={start_s:.2} recovered_runs={recovered} recovery_s={recovery_s:.2} verify_s={verify_s:.2}"
    );
    anyhow::ensure!(
        recovered == n,
        "{} of {n} runs did not come back waiting",
        n - recovered
    );
    Ok(())
}

/// This process's resident memory in KiB (Linux).
fn rss_kb() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/self/status")
}
