//! The orchestrator component: storage, the flow registry, run actors and the routing of results,
//! behind a cheap [`OrchestratorHandle`] that the gRPC API, `rpaflow dev` and the benchmarks use.
//!
//! # Layout
//! - `config`: [`OrchestratorConfig`].
//! - `runtime`: where the run actors run ([`ActorRuntime`]) and their clock ([`EngineClock`]).
//! - `engine`: [`Engine`], the state the handle and the run actors' effects share.
//! - `run_effects`: the engine as the run actors' [`crate::effects::RunEffects`] port.
//! - `admission`: whether a run may start (limits, memory, queues' backlog) and the flows'
//!   `concurrency` policies.
//! - `handle`: [`OrchestratorHandle`], [`StartRun`] and [`FlowView`].
//! - `results`: workers' results, routed to their runs' actors as the bus delivers them.
//! - `watch`: following a run's events ([`OrchestratorHandle::watch_run`]).

mod admission;
mod config;
mod engine;
mod handle;
mod results;
mod run_effects;
mod runtime;
mod watch;

pub use self::config::OrchestratorConfig;
pub use self::engine::Engine;
pub use self::handle::{ActiveRuns, Answer, FlowView, OrchestratorHandle, StartRun};
pub use self::runtime::{ActorRuntime, EngineClock};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rpaflow_core::bus::StepBus;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::admission::Backlog;
use self::results::ResultRouter;
use crate::actors::{ActorSystem, Initial};
use crate::error::{Error, Result};
use crate::evaluation::Evaluator;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::state::{Action, Input, RunEvent, RunState};
use crate::store::{RunSummary, Store, StoreOptions};
use crate::triggers::schedule::{Clock, Scheduler};

/// The orchestrator; [`Orchestrator::run`] drives it until shutdown.
pub struct Orchestrator {
    shared: Arc<Engine>,
    /// Started by [`Orchestrator::run`].
    scheduler: Scheduler,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("data_dir", &self.shared.config.data_dir)
            .finish()
    }
}

/// Creates the data directory readable by its owner only (0700), and makes an existing one so.
fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    let failed = |e: std::io::Error| {
        Error::Internal(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(failed)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    }
    Ok(())
}

/// Makes everything under the data directory its owner's only: directories 0700, files 0600
/// (sled creates its files with the process's umask).
fn restrict_permissions(dir: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mut todo = vec![dir.to_path_buf()];
        while let Some(dir) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let mode = if kind.is_dir() {
                    todo.push(path.clone());
                    0o700
                } else if kind.is_file() {
                    0o600
                } else {
                    continue;
                };
                if let Err(err) =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                {
                    warn!(path = %path.display(), error = %err, "cannot restrict the permissions of a data file");
                }
            }
        }
    }
}

/// A rebuilt run: its state, the events recovery added, its listing when the stored one
/// disagrees with its events (a crash between the two writes), and the timers to arm again.
type Rebuilt = (RunState, Vec<RunEvent>, Option<RunSummary>, Vec<Action>);

/// Rebuilds every unfinished run from its events and decides what each must do again, on as
/// many threads as there are cores (each run is read and replayed on its own); `now_ms` is the
/// engine's time when recovery began, read on the runtime whose clock it follows.
fn rebuild_active_runs(shared: &Engine, now_ms: i64) -> Result<Vec<Rebuilt>> {
    let run_ids = shared.store.active_runs()?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = run_ids.len().div_ceil(threads).max(1);
    let rebuilt = std::thread::scope(|scope| {
        let workers: Vec<_> = run_ids
            .chunks(chunk)
            .map(|ids| {
                scope.spawn(move || {
                    ids.iter()
                        .filter_map(|id| rebuild(shared, id, now_ms))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    Ok(rebuilt)
}

/// One run rebuilt from storage, or none when it cannot be (logged; left as it is).
fn rebuild(shared: &Engine, run_id: &str, now_ms: i64) -> Option<Rebuilt> {
    let (mut state, listed) = match shared.load_listed(run_id) {
        Ok(loaded) => loaded,
        Err(err) => {
            warn!(run_id = %run_id, error = %err, "cannot rebuild run; left as it is");
            return None;
        }
    };
    let events = state.handle(Input::Recover, now_ms).unwrap_or_default();
    let timers = state.pending_timers();
    // The listing read to rebuild the run, compared with what its events say.
    let repair = (listed.status != state.status.name()).then(|| shared.summary(&state));
    Some((state, events, repair, timers))
}

impl Orchestrator {
    /// Opens storage, starts the actor system and rebuilds every unfinished run.
    pub async fn start(config: OrchestratorConfig, bus: Arc<dyn StepBus>) -> Result<Self> {
        create_private_dir(&config.data_dir)?;
        // Process-wide: the run state machine evaluates expressions without a config at hand;
        // the first orchestrator of a process sets it (see `rpaflow_core::expr::set_limits`).
        rpaflow_core::expr::set_limits(config.expr_limits());
        let store = Store::open_with(
            &config.data_dir,
            &StoreOptions {
                flush_writes: config.flush_writes,
                cache_bytes: config.storage_cache_mb.saturating_mul(1 << 20),
            },
        )?;
        let secrets_key = match config.secrets_key.clone() {
            Some(key) => key,
            None => rpaflow_core::secrets::SecretsConfig::default()
                .load(Some(&config.data_dir))
                .map_err(|e| Error::Internal(e.to_string()))?
                .ok_or_else(|| Error::Internal("no secrets key".into()))?,
        };
        store.use_secrets_key(secrets_key);
        match store.reseal_secrets().await {
            Ok(0) => {}
            Ok(n) => info!(secrets = n, "sealed secrets under the current secrets key"),
            Err(err) => {
                warn!(error = %err, "some secrets cannot be opened with the configured keys; steps using them will fail")
            }
        }
        rpaflow_core::secrets::set_marker_key(store.marker_key().await?);
        restrict_permissions(&config.data_dir);
        let registry = Registry::new(store.clone(), config.flow_limits());
        let system = match config.actor_runtime {
            ActorRuntime::Arbiters => ActorSystem::start(config.arbiters)?,
            ActorRuntime::Current => ActorSystem::current(),
        };
        let clock = EngineClock::for_runtime(config.actor_runtime);
        let (events, _) = broadcast::channel(64 * 1024);
        let scheduler = Scheduler::new(Clock::new(config.clock_file.clone(), clock));
        let shared = Arc::new(Engine {
            store,
            registry,
            bus,
            backlog: Backlog::default(),
            metrics: Metrics::default(),
            scheduler: scheduler.handle(),
            evaluator: Evaluator::new(config.eval_threads),
            clock,
            config,
            actors: Mutex::new(HashMap::new()),
            starting: Default::default(),
            held_inputs: Default::default(),
            flow_runs: Mutex::default(),
            admission: Mutex::default(),
            system: Mutex::new(Some(system)),
            events,
            watchers: Default::default(),
            registrations: tokio::sync::watch::Sender::new(0),
        });
        let orchestrator = Self { shared, scheduler };
        orchestrator.recover().await?;
        Ok(orchestrator)
    }

    /// Rebuilds unfinished runs from their events, re-dispatches what has no result and sets
    /// their timers again.
    async fn recover(&self) -> Result<()> {
        // Rebuilding reads storage and may evaluate expressions: on the evaluation pool.
        let shared = self.shared.clone();
        let now_ms = shared.clock.now_ms();
        let rebuilt = self
            .shared
            .evaluator
            .run(move || rebuild_active_runs(&shared, now_ms))
            .await??;
        let shared = &self.shared;
        // A listing that disagrees with the run's events is written again here; what recovery
        // added (attempts handed out again) each run's actor makes durable before it acts, as
        // it does every decision. Concurrent appends share flushes.
        futures::future::try_join_all(
            rebuilt
                .iter()
                .filter_map(|(state, _, repair, _)| Some((state, repair.as_ref()?)))
                .map(|(state, repair)| shared.store.append(&state.run_id, &[], Some(repair))),
        )
        .await?;
        let mut recovered = 0usize;
        for (state, events, _, timers) in rebuilt {
            if state.status.is_finished() {
                continue;
            }
            if events.is_empty() && state.waits_only_for_people() {
                shared.recover_resting(&state)?;
            } else {
                shared.ensure_actor(state, Initial::Recovered { events, timers })?;
            }
            recovered += 1;
        }
        if recovered > 0 {
            info!(runs = recovered, "recovered unfinished runs");
        }
        Ok(())
    }

    pub fn handle(&self) -> OrchestratorHandle {
        OrchestratorHandle {
            shared: self.shared.clone(),
        }
    }

    /// Has worker results routed to run actors and fires schedules until `shutdown`, then stops
    /// the scheduler and the actors.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let handle = self.handle();
        let Self { shared, scheduler } = self;
        // Results go straight from the bus to their runs' actors from now on (and those that
        // came since the start, at once); from the shutdown on, none is taken.
        shared
            .bus
            .deliver_results(Arc::new(ResultRouter::new(
                Arc::downgrade(&shared),
                shutdown.child_token(),
            )))
            .map_err(|e| Error::Internal(format!("cannot take results from the bus: {e}")))?;
        let scheduler_stop = shutdown.child_token();
        let scheduler =
            tokio::spawn(scheduler.run(handle, shared.store.clone(), scheduler_stop.clone()));
        // Places may have freed while the orchestrator was down.
        let waiting = shared
            .flow_runs
            .lock()
            .map(|r| r.with_queue())
            .unwrap_or_default();
        for flow in waiting {
            shared.wake_queue(&flow, usize::MAX);
        }
        shutdown.cancelled().await;
        info!("orchestrator stopping");
        scheduler_stop.cancel();
        if let Err(err) = scheduler.await {
            warn!(error = %err, "scheduler task failed");
        }
        if let Ok(mut system) = shared.system.lock()
            && let Some(mut system) = system.take()
        {
            system.stop();
        }
        shared.store.flush_all().await?;
        // Everything acknowledged is durable now: its offsets may be committed.
        shared.bus.close().await;
        Ok(())
    }
}
