//! The run actor against a fake [`RunEffects`] that records every effect in order: what it does
//! between the pure state machine (tested in `state::tests`) and the real orchestrator (tested
//! through processes), in-process and in milliseconds.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use rpaflow_core::flow;
use serde_json::json;

use super::*;
use crate::state::{ErrorInfo, ParentRef, RunStatus, TaskSpec};

/// One effect, as the fake saw it.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    /// A new run recorded with its first events, by kind.
    Create(Vec<String>),
    /// Events made durable, by kind.
    Persist(Vec<String>),
    /// The input's bus delivery acknowledged.
    Ack,
    Dispatch(Vec<(String, Option<u32>, u32)>),
    StartChild(String),
    CancelWorkers,
    CancelChildren,
    NotifyParent(String),
    Finished(RunStatus),
    Abandoned,
}

#[derive(Default)]
struct Fake {
    log: Mutex<Vec<Effect>>,
    /// Storage refuses every write.
    storage_down: AtomicBool,
    /// The idempotency key of a new run already names another run.
    key_taken: AtomicBool,
    evaluator: std::sync::OnceLock<Evaluator>,
}

impl Fake {
    fn push(&self, effect: Effect) {
        self.log.lock().unwrap().push(effect);
    }

    fn log(&self) -> Vec<Effect> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log holds `n` effects (the actor works on its own thread).
    async fn wait_for(&self, n: usize) -> Vec<Effect> {
        for _ in 0..200 {
            let log = self.log();
            if log.len() >= n {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} effects: {:?}", self.log());
    }
}

impl RunEffects for Fake {
    fn create(
        &self,
        _state: &RunState,
        events: Vec<RunEvent>,
    ) -> BoxFuture<'static, Result<(Created, Vec<RunEvent>)>> {
        if self.key_taken.load(Ordering::SeqCst) {
            return futures::future::ready(Ok((Created::Existing("other-run".into()), events)))
                .boxed();
        }
        self.push(Effect::Create(
            events.iter().map(|e| e.kind.name().to_owned()).collect(),
        ));
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok((Created::New, events))
        }
        .boxed()
    }

    fn persist(
        &self,
        _state: &RunState,
        events: Vec<RunEvent>,
    ) -> BoxFuture<'static, Result<Vec<RunEvent>>> {
        if self.storage_down.load(Ordering::SeqCst) {
            return futures::future::ready(Err(Error::Internal("disk full".into()))).boxed();
        }
        self.push(Effect::Persist(
            events.iter().map(|e| e.kind.name().to_owned()).collect(),
        ));
        // Durable a moment later, as a flush is.
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(events)
        }
        .boxed()
    }

    fn persisted(&self, _state: &RunState, _events: Vec<RunEvent>) {}

    fn dispatch(&self, _state: &RunState, specs: Vec<TaskSpec>) -> BoxFuture<'static, ()> {
        self.push(Effect::Dispatch(
            specs
                .into_iter()
                .map(|s| (s.step, s.item, s.attempt))
                .collect(),
        ));
        futures::future::ready(()).boxed()
    }

    fn start_child(&self, _state: &RunState, spec: TaskSpec) {
        self.push(Effect::StartChild(spec.step));
    }

    fn cancel_workers(&self, _state: &RunState) {
        self.push(Effect::CancelWorkers);
    }

    fn cancel_children(&self, _state: &RunState) {
        self.push(Effect::CancelChildren);
    }

    fn notify_parent(&self, _state: &RunState, parent: &ParentRef) {
        self.push(Effect::NotifyParent(parent.run_id.clone()));
    }

    fn finished(&self, _state: &RunState, status: RunStatus) {
        self.push(Effect::Finished(status));
    }

    fn abandoned(&self, _run_id: &str) {
        self.push(Effect::Abandoned);
    }

    fn evaluator(&self) -> &Evaluator {
        self.evaluator.get_or_init(|| Evaluator::new(1))
    }
}

/// A run of `src` started through its actor (recorded, then acted on), on a system of its own.
async fn spawn(src: &str, parent: Option<ParentRef>) -> (ActorSystem, Addr<RunActor>, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let (system, addr, created) = start(src, parent, fake.clone());
    assert!(
        matches!(created.await, Ok(Ok(Created::New))),
        "the run was not created"
    );
    // The tests below look at what follows the run's creation.
    let mut log = fake.log.lock().unwrap();
    assert!(matches!(log.first(), Some(Effect::Create(_))), "{log:?}");
    log.remove(0);
    drop(log);
    (system, addr, fake)
}

/// Spawns the actor of a new run of `src` on `fake`; the receiver learns whether it was created.
fn start(
    src: &str,
    parent: Option<ParentRef>,
    fake: Arc<Fake>,
) -> (
    ActorSystem,
    Addr<RunActor>,
    tokio::sync::oneshot::Receiver<Result<Created>>,
) {
    let flow = Arc::new(flow::parse("t.yaml", src).unwrap_or_else(|e| panic!("{e}")));
    let mut state = RunState::new("run-1", flow, 1);
    let now = rpaflow_core::time::now_ms();
    let events = state.start(json!({}), String::new(), parent, None, now);
    let system = ActorSystem::start(1).unwrap();
    let (reply, created) = tokio::sync::oneshot::channel();
    let addr = system.spawn_run(state, fake, Initial::Start { events, reply });
    (system, addr, created)
}

fn ack_into(fake: &Arc<Fake>) -> Option<Ack> {
    let fake = fake.clone();
    Some(Ack::new(move || fake.push(Effect::Ack)))
}

fn result(
    step: &str,
    attempt: u32,
    outcome: std::result::Result<serde_json::Value, ErrorInfo>,
) -> Input {
    Input::Result {
        step: step.into(),
        item: None,
        attempt,
        outcome,
    }
}

fn one(step: &str, attempt: u32) -> Effect {
    Effect::Dispatch(vec![(step.into(), None, attempt)])
}

#[tokio::test]
async fn events_are_durable_before_the_input_is_acknowledged_and_acted_on() {
    let (_system, addr, fake) = spawn(
        "name: t\nsteps:\n  - { id: a, uses: echo }\n  - { id: b, uses: echo, needs: a }\n",
        None,
    )
    .await;
    assert_eq!(fake.wait_for(1).await, [one("a", 1)]);
    addr.send(Deliver {
        input: result("a", 1, Ok(json!({"ok": true}))),
        ack: ack_into(&fake),
    })
    .await
    .unwrap()
    .unwrap();
    let log = fake.wait_for(4).await;
    assert!(
        matches!(&log[1], Effect::Persist(kinds) if kinds.contains(&"task_succeeded".to_owned())),
        "{log:?}"
    );
    assert_eq!(log[2..], [Effect::Ack, one("b", 1)]);

    addr.send(Deliver {
        input: result("b", 1, Ok(json!(2))),
        ack: None,
    })
    .await
    .unwrap()
    .unwrap();
    let log = fake.wait_for(6).await;
    assert_eq!(log[5], Effect::Finished(RunStatus::Succeeded), "{log:?}");
    // A finished run's actor leaves memory.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!addr.connected(), "the actor stopped");
}

#[tokio::test]
async fn a_result_storage_refuses_is_never_acknowledged_and_the_actor_leaves() {
    let (_system, addr, fake) = spawn(
        "name: t\nsteps:\n  - { id: a, uses: echo }\n  - { id: b, uses: echo, needs: a }\n",
        None,
    )
    .await;
    fake.wait_for(1).await;
    fake.storage_down.store(true, Ordering::SeqCst);
    let _ = addr
        .send(Deliver {
            input: result("a", 1, Ok(json!(1))),
            ack: ack_into(&fake),
        })
        .await;
    let log = fake.wait_for(2).await;
    assert_eq!(log, [one("a", 1), Effect::Abandoned]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!addr.connected(), "the actor stopped");
    assert!(!fake.log().contains(&Effect::Ack));
}

#[tokio::test]
async fn a_failed_attempt_is_retried_by_the_actors_own_timer() {
    let (_system, addr, fake) = spawn(
        "name: t\nsteps:\n  - { id: a, uses: http, retry: { max_attempts: 2, delay: 50ms, backoff: fixed } }\n",
        None,
    )
    .await;
    fake.wait_for(1).await;
    addr.send(Deliver {
        input: result("a", 1, Err(ErrorInfo::new("http_status", "503", true))),
        ack: None,
    })
    .await
    .unwrap()
    .unwrap();
    // The retry timer goes through the mailbox and dispatches attempt 2.
    let log = fake.wait_for(4).await;
    assert_eq!(log[0], one("a", 1));
    assert!(matches!(&log[1], Effect::Persist(_)), "{log:?}");
    assert!(matches!(&log[2], Effect::Persist(_)), "{log:?}");
    assert_eq!(log[3], one("a", 2), "{log:?}");
}

#[tokio::test]
async fn subflows_are_child_runs_not_tasks_and_a_child_tells_its_parent() {
    let parent = ParentRef {
        run_id: "parent-run".into(),
        step: "call".into(),
        item: None,
        attempt: 1,
    };
    let (_system, addr, fake) = spawn(
        "name: t\nsteps:\n  - { id: child, uses: subflow, with: { flow: other } }\n  - { id: b, uses: echo, needs: child }\n",
        Some(parent),
    )
    .await;
    assert_eq!(fake.wait_for(1).await, [Effect::StartChild("child".into())]);
    addr.send(Deliver {
        input: Input::Cancel {
            reason: "test".into(),
        },
        ack: None,
    })
    .await
    .unwrap()
    .unwrap();
    let log = fake.wait_for(6).await;
    assert_eq!(
        log[2..],
        [
            Effect::CancelWorkers,
            Effect::CancelChildren,
            Effect::NotifyParent("parent-run".into()),
            Effect::Finished(RunStatus::Cancelled),
        ],
        "{log:?}"
    );
}

#[tokio::test]
async fn a_new_run_is_recorded_before_its_start_is_answered_and_acted_on() {
    let fake = Arc::new(Fake::default());
    let (_system, _addr, created) = start(
        "name: t\nsteps:\n  - { id: a, uses: echo }\n",
        None,
        fake.clone(),
    );
    assert!(matches!(created.await, Ok(Ok(Created::New))));
    let log = fake.wait_for(2).await;
    assert!(
        matches!(&log[0], Effect::Create(kinds) if kinds.first().map(String::as_str) == Some("run_started")),
        "{log:?}"
    );
    assert_eq!(log[1], one("a", 1));
}

#[tokio::test]
async fn a_start_whose_key_names_another_run_does_nothing_and_leaves() {
    let fake = Arc::new(Fake::default());
    fake.key_taken.store(true, Ordering::SeqCst);
    let (_system, addr, created) = start(
        "name: t\nsteps:\n  - { id: a, uses: echo }\n",
        None,
        fake.clone(),
    );
    assert!(matches!(created.await, Ok(Ok(Created::Existing(ref id))) if id == "other-run"));
    let log = fake.wait_for(1).await;
    assert_eq!(log, [Effect::Abandoned]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!addr.connected());
    assert_eq!(fake.log(), [Effect::Abandoned], "nothing dispatched");
}

#[tokio::test]
async fn a_recovered_run_makes_its_redispatches_durable_before_sending_them() {
    let flow = Arc::new(
        flow::parse(
            "t.yaml",
            "name: t\nsteps:\n  - { id: a, uses: echo }\n  - { id: b, uses: http, retry: { max_attempts: 3, delay: 40ms, backoff: fixed } }\n",
        )
        .unwrap(),
    );
    // Before the crash: both started; `b` failed once and waits for its retry.
    let mut state = RunState::new("run-1", flow.clone(), 1);
    let now = rpaflow_core::time::now_ms();
    let mut events = state.start(json!({}), String::new(), None, None, now);
    events.extend(
        state
            .handle(
                result("b", 1, Err(ErrorInfo::new("http_status", "503", true))),
                now,
            )
            .unwrap(),
    );
    // Recovery from those events: `a` is handed out again, `b`'s retry timer armed again.
    let mut rebuilt = RunState::replay("run-1", flow, 1, &events);
    let recovered = rebuilt.handle(Input::Recover, now).unwrap();
    let timers = rebuilt.pending_timers();
    assert_eq!(timers.len(), 1, "{timers:?}");
    let fake = Arc::new(Fake::default());
    let system = ActorSystem::start(1).unwrap();
    let _addr = system.spawn_run(
        rebuilt,
        fake.clone(),
        Initial::Recovered {
            events: recovered,
            timers,
        },
    );
    let log = fake.wait_for(3).await;
    assert_eq!(
        log[0],
        Effect::Persist(vec!["task_redispatched".into()]),
        "{log:?}"
    );
    assert_eq!(log[1], one("a", 1));
    // The retry's timer fires and `b` goes out again as attempt 2.
    assert!(matches!(&log[2], Effect::Persist(_)), "{log:?}");
    let log = fake.wait_for(4).await;
    assert_eq!(log[3], one("b", 2), "{log:?}");
}
