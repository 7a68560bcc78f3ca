//! The orchestrator in this test's process: its actors on the test's actix system, its run
//! time on tokio's paused clock, storage that does not wait for the disk, the in-process bus,
//! and a worker loop whose answers each test scripts.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use rpaflow_core::bus::{InProcessBus, StepBus, TaskSource};
use rpaflow_orchestrator::orchestrator::ActorRuntime;
use rpaflow_orchestrator::state::{RunState, RunStatus};
use rpaflow_orchestrator::{Orchestrator, OrchestratorConfig, OrchestratorHandle, StartRun};
use rpaflow_proto::v1 as pb;
use serde_json::{Value as Json, json};
use tokio_util::sync::CancellationToken;

/// The namespace of every flow here.
pub const NS: &str = "default";

/// The most (paused) time a scenario may take before it is stuck.
const SCENARIO_LIMIT: Duration = Duration::from_secs(3600);

thread_local! {
    /// Where the paused clock of this test's last runtime got to.
    static REACHED: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Runs `scenario` on a paused current-thread runtime under an actix system, as the orchestrator's
/// actors need; a scenario that stops making progress fails instead of hanging. Time never goes
/// back within a test: a second runtime (an orchestrator restarted on the same store) starts
/// where the first one's clock got to.
pub fn paused<F: Future>(scenario: F) -> F::Output {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a tokio runtime")
    });
    system.block_on(async {
        let now = tokio::time::Instant::now().into_std();
        if let Some(reached) = REACHED.get().filter(|reached| *reached > now) {
            tokio::time::advance(reached - now).await;
        }
        let output = tokio::time::timeout(SCENARIO_LIMIT, scenario)
            .await
            .expect("the scenario got stuck");
        REACHED.set(Some(tokio::time::Instant::now().into_std()));
        output
    })
}

/// What the worker does with one task.
#[derive(Debug, Clone)]
pub enum Reply {
    Output(Json),
    Fail {
        code: &'static str,
        retryable: bool,
    },
    /// No answer at all (a lost task, a dead worker).
    Silent,
    /// The reply after this much (paused) time.
    After(Duration, Box<Reply>),
}

/// The worker's script: its reply to each task.
pub type Script = Arc<dyn Fn(&pb::Task) -> Reply + Send + Sync>;

/// Replies every task with `{"step": <step id>, "attempt": <n>}`.
pub fn succeed_all() -> Script {
    Arc::new(|task| Reply::Output(json!({"step": task.step_id, "attempt": task.attempt})))
}

/// A task the worker took, and when (on the paused clock).
#[derive(Debug, Clone)]
pub struct Taken {
    pub run_id: String,
    pub step: String,
    pub attempt: u32,
    pub at: tokio::time::Instant,
}

/// An orchestrator with its worker, on `dir`.
pub struct Engine {
    pub handle: OrchestratorHandle,
    /// Every task the worker took, in order.
    pub taken: Arc<Mutex<Vec<Taken>>>,
    shutdown: CancellationToken,
    orchestrator: tokio::task::JoinHandle<rpaflow_orchestrator::Result<()>>,
    worker: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Opens (or reopens) the orchestrator's store in `dir` and starts it with a worker.
    pub async fn start(dir: &Path, script: Script) -> Self {
        let config = OrchestratorConfig {
            data_dir: dir.to_path_buf(),
            flush_writes: false,
            actor_runtime: ActorRuntime::Current,
            eval_threads: 1,
            ..OrchestratorConfig::default()
        };
        let bus = InProcessBus::new();
        let steps: Arc<dyn StepBus> = Arc::new(bus.clone());
        let orchestrator = Orchestrator::start(config, steps)
            .await
            .expect("the orchestrator starts");
        let handle = orchestrator.handle();
        let shutdown = CancellationToken::new();
        let orchestrator = tokio::spawn(orchestrator.run(shutdown.clone()));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let worker = tokio::spawn(work(bus, script, Arc::clone(&taken)));
        Self {
            handle,
            taken,
            shutdown,
            orchestrator,
            worker,
        }
    }

    /// Stops the orchestrator (and the worker), as a process that is told to stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.orchestrator
            .await
            .expect("the orchestrator task")
            .expect("the orchestrator stops cleanly");
        self.worker.abort();
    }

    pub async fn register(&self, source: &str) {
        self.handle
            .register_flow(NS, "flow.yaml", source)
            .await
            .expect("the flow registers");
    }

    /// Starts a run of `flow` with `inputs` and returns its id.
    pub async fn start_run(&self, flow: &str, inputs: Json) -> String {
        self.try_start(flow, inputs)
            .await
            .expect("the run starts")
            .run_id
    }

    pub async fn try_start(
        &self,
        flow: &str,
        inputs: Json,
    ) -> rpaflow_orchestrator::Result<RunState> {
        let Json::Object(inputs) = inputs else {
            panic!("inputs are an object")
        };
        let (run, _) = self
            .handle
            .start_run(StartRun {
                flow: flow.to_owned(),
                inputs,
                ..StartRun::default()
            })
            .await?;
        Ok(run)
    }

    pub async fn run(&self, run_id: &str) -> RunState {
        self.handle
            .get_run(NS, run_id)
            .await
            .expect("the run exists")
    }

    /// Waits (on paused time) until `ready` holds for the run, and returns it: looks again
    /// after each event of any run, and at least every second.
    pub async fn wait_until(&self, run_id: &str, ready: impl Fn(&RunState) -> bool) -> RunState {
        let mut events = self.handle.subscribe();
        loop {
            let run = self.run(run_id).await;
            if ready(&run) {
                return run;
            }
            tokio::select! {
                _ = events.recv() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Waits until the run has finished (its events end), and returns it.
    pub async fn finished(&self, run_id: &str) -> RunState {
        let events = self
            .handle
            .watch_run(NS, run_id, 1)
            .expect("the run exists");
        events.for_each(|_| async {}).await;
        let run = self.run(run_id).await;
        assert!(run.status.is_finished(), "{run_id} is {:?}", run.status);
        run
    }

    /// The names of the run's events, in order, once it has finished, each with its time in
    /// milliseconds since the run's first event.
    pub async fn events(&self, run_id: &str) -> Vec<(String, i64)> {
        let stream = self
            .handle
            .watch_run(NS, run_id, 1)
            .expect("the run exists");
        let events: Vec<_> = stream.collect().await;
        let events: Vec<_> = events.into_iter().map(|e| e.expect("an event")).collect();
        let first = events.first().map_or(0, |e| e.at_ms);
        events
            .into_iter()
            .map(|e| (e.kind.name().to_owned(), e.at_ms - first))
            .collect()
    }

    /// Just the names of [`Self::events`].
    pub async fn event_names(&self, run_id: &str) -> Vec<String> {
        self.events(run_id)
            .await
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    /// The ids of the runs of `flow`, oldest first.
    pub fn runs_of(&self, flow: &str) -> Vec<String> {
        let (runs, _) = self
            .handle
            .list_runs(NS, flow, None, 100, "")
            .expect("runs are listed");
        runs.into_iter().rev().map(|r| r.run_id).collect()
    }

    /// The tasks taken so far for `run_id`, as (step, attempt).
    pub fn taken_for(&self, run_id: &str) -> Vec<(String, u32)> {
        self.taken
            .lock()
            .expect("the worker's record")
            .iter()
            .filter(|t| t.run_id == run_id)
            .map(|t| (t.step.clone(), t.attempt))
            .collect()
    }
}

/// Whether the run has reached `status`.
pub fn is(status: RunStatus) -> impl Fn(&RunState) -> bool {
    move |run| run.status == status
}

/// The worker: takes every task, records it, and answers it as `script` says (each on its own
/// task, so slow answers do not hold up the others).
async fn work(bus: InProcessBus, script: Script, taken: Arc<Mutex<Vec<Taken>>>) {
    while let Some(delivery) = bus.next_task().await {
        let task = delivery.task;
        delivery.ack.ack();
        taken.lock().expect("the worker's record").push(Taken {
            run_id: task.run_id.clone(),
            step: task.step_id.clone(),
            attempt: task.attempt,
            at: tokio::time::Instant::now(),
        });
        let reply = script(&task);
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut reply = reply;
            while let Reply::After(wait, then) = reply {
                tokio::time::sleep(wait).await;
                reply = *then;
            }
            let outcome = match reply {
                Reply::Output(output) => pb::task_result::Outcome::OutputJson(output.to_string()),
                Reply::Fail { code, retryable } => pb::task_result::Outcome::Error(pb::TaskError {
                    code: code.to_owned(),
                    message: format!("{code} (scripted)"),
                    retryable,
                }),
                Reply::Silent | Reply::After(..) => return,
            };
            let result = pb::TaskResult {
                run_id: task.run_id,
                step_id: task.step_id,
                item: task.item,
                attempt: task.attempt,
                outcome: Some(outcome),
                worker_id: "test-worker".into(),
                namespace: task.namespace,
                ..pb::TaskResult::default()
            };
            // A closed bus: the orchestrator stopped; the result is lost, as in a crash.
            let _ = bus.publish(result).await;
        });
    }
}
