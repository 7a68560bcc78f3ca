//! [`RunEffects`]: the one port through which a run actor reaches the world outside its run's
//! state. The state machine decides ([`crate::state::RunState::handle`]) and says what must
//! happen ([`Action`](crate::state::Action)); the actor makes the events durable, then performs
//! the actions, each through one method here. The orchestrator's implementation is its shared
//! state ([`crate::orchestrator::Engine`]: storage, the bus, the other runs); a test gives the
//! actor its own and sees every effect in order.

use futures::future::BoxFuture;

use crate::error::Result;
use crate::evaluation::Evaluator;
use crate::state::{ParentRef, RunEvent, RunState, RunStatus, TaskSpec};
use crate::store::Created;

pub(crate) trait RunEffects: Send + Sync + 'static {
    /// Makes one decision's events durable (and the run's listing, when its status changed,
    /// and its pending approvals with them); resolves with the events once they are.
    fn persist(
        &self,
        state: &RunState,
        events: Vec<RunEvent>,
    ) -> BoxFuture<'static, Result<Vec<RunEvent>>>;

    /// Records a new run with its first events, durably, unless its idempotency key already
    /// names another run ([`Created::Existing`], and nothing is written).
    fn create(
        &self,
        state: &RunState,
        events: Vec<RunEvent>,
    ) -> BoxFuture<'static, Result<(Created, Vec<RunEvent>)>>;

    /// The events are durable: count them and tell the run's watchers.
    fn persisted(&self, state: &RunState, events: Vec<RunEvent>);

    /// Hands attempts to their queues' worker pools, in order; resolves once the bus holds
    /// each (a refused one is retried by its deadline).
    fn dispatch(&self, state: &RunState, specs: Vec<TaskSpec>) -> BoxFuture<'static, ()>;

    /// Starts (or finds) the child run of a `subflow` attempt.
    fn start_child(&self, state: &RunState, spec: TaskSpec);

    /// Tells workers to stop the run's steps (best effort).
    fn cancel_workers(&self, state: &RunState);

    /// Cancels the child runs the run's `subflow` steps still have.
    fn cancel_children(&self, state: &RunState);

    /// Delivers the finished run's outcome to `parent`.
    fn notify_parent(&self, state: &RunState, parent: &ParentRef);

    /// The run ended with `status`: its actor leaves memory.
    fn finished(&self, state: &RunState, status: RunStatus);

    /// The actor stops without the run having ended (its state could not be made durable or
    /// decided): the run is rebuilt from storage on the next start.
    fn abandoned(&self, run_id: &str);

    /// The run waits only for people ([`RunState::waits_only_for_people`]): whether its actor
    /// may leave memory, the run kept as resting (rebuilt from storage when a person answers or
    /// an approval's deadline passes). By default it stays.
    fn rest(&self, _state: &RunState) -> bool {
        false
    }

    /// Where decisions that may be slow are evaluated.
    fn evaluator(&self) -> &Evaluator;

    /// What time it is for the run (Unix milliseconds): its decisions and timers read it.
    fn now_ms(&self) -> i64 {
        rpaflow_core::time::now_ms()
    }
}
