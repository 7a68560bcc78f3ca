//! Run actors: one actix actor per active run, spread over a few arbiters (threads).
//!
//! The actor owns the run's [`RunState`]. For every input it asks the state machine for events,
//! makes them durable, and only then performs the actions: dispatches, child runs, timers,
//! cancellations. While a batch is being persisted the actor takes no other message, so events
//! and actions keep their order. Everything outside the run's state it reaches through one port,
//! [`RunEffects`]; timers are its own (messages to itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::prelude::*;
use actix_rt::{Arbiter, ArbiterHandle, System};
use rpaflow_core::bus::Ack;
use tracing::error;

use crate::effects::RunEffects;
use crate::error::{Error, Result};
use crate::evaluation::{self, Evaluator};
use crate::state::{Action, Input, Rejection, RunEvent, RunState};
use crate::store::Created;

/// The actix system on its own thread, with the arbiters that run actors.
pub struct ActorSystem {
    system: System,
    arbiters: Vec<ArbiterHandle>,
    next: AtomicUsize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ActorSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorSystem")
            .field("arbiters", &self.arbiters.len())
            .finish()
    }
}

impl ActorSystem {
    /// Starts `arbiters` threads for actors; 0: half the CPUs, at least one.
    pub fn start(arbiters: usize) -> Result<Self> {
        let arbiters = match arbiters {
            0 => std::thread::available_parallelism().map_or(1, |cpus| (cpus.get() / 2).max(1)),
            n => n,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("rpaflow-actors".into())
            .spawn(move || {
                let runner = System::new();
                let handles: Vec<(Arbiter, ArbiterHandle)> = (0..arbiters.max(1))
                    .map(|_| {
                        let arbiter = Arbiter::new();
                        let handle = arbiter.handle();
                        (arbiter, handle)
                    })
                    .collect();
                let _ = tx.send((
                    System::current(),
                    handles.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>(),
                ));
                let _ = runner.run();
                for (arbiter, _) in handles {
                    arbiter.stop();
                    let _ = arbiter.join();
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the actor system: {e}")))?;
        let (system, arbiters) = rx
            .recv()
            .map_err(|_| Error::Internal("actor system failed to start".into()))?;
        Ok(Self {
            system,
            arbiters,
            next: AtomicUsize::new(0),
            thread: Some(thread),
        })
    }

    fn next_arbiter(&self) -> &ArbiterHandle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        &self.arbiters[i]
    }

    /// Starts the actor of a run on the next arbiter; it handles `initial` before any message.
    pub(crate) fn spawn_run(
        &self,
        state: RunState,
        effects: Arc<dyn RunEffects>,
        initial: Initial,
    ) -> Addr<RunActor> {
        RunActor::start_in_arbiter(self.next_arbiter(), move |_| RunActor {
            state,
            effects,
            initial: Some(initial),
        })
    }

    /// Actors on the actix system of the caller ([`crate::orchestrator::ActorRuntime::Current`]):
    /// they run on its arbiter and stop with it.
    pub fn current() -> Self {
        Self {
            system: System::current(),
            arbiters: vec![Arbiter::current()],
            next: AtomicUsize::new(0),
            thread: None,
        }
    }

    /// Stops the actor system when it is this one's own.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.system.stop();
            let _ = thread.join();
        }
    }
}

impl Drop for ActorSystem {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct RunActor {
    state: RunState,
    effects: Arc<dyn RunEffects>,
    initial: Option<Initial>,
}

/// What a run actor does first, before it takes any message: every way a run comes into memory
/// goes through the same "durable, then act" as the decisions after it.
pub(crate) enum Initial {
    /// A new run: its first events are recorded (unless its idempotency key names another
    /// run), then acted on; `reply` learns which, once it is durable.
    Start {
        events: Vec<RunEvent>,
        reply: tokio::sync::oneshot::Sender<Result<Created>>,
    },
    /// A run rebuilt from storage: what recovery added (attempts handed out again) is made
    /// durable and acted on, and `timers` (retries due, approval deadlines) are armed again.
    Recovered {
        events: Vec<RunEvent>,
        timers: Vec<Action>,
    },
    /// A run brought back into memory for a command (a retry of a failed run).
    Loaded,
}

/// An input for the run, with the bus acknowledgement to give once it is durable.
#[derive(Message)]
#[rtype(result = "Result<(), Rejection>")]
pub struct Deliver {
    pub input: Input,
    pub ack: Option<Ack>,
}

/// A run whose next timer is nearer than this stays in memory rather than rest.
const REST_HORIZON_MS: i64 = 10_000;

/// How long a run that waits only for people stays in memory after its last decision.
const REST_AFTER: Duration = Duration::from_millis(250);

/// A copy of the run's current state.
#[derive(Message)]
#[rtype(result = "RunState")]
pub struct Snapshot;

impl Actor for RunActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        match self.initial.take() {
            Some(Initial::Start { events, reply }) => self.create(events, reply, ctx),
            Some(Initial::Recovered { events, timers }) => {
                if events.is_empty() {
                    self.perform(timers, ctx);
                } else {
                    // The mailbox waits until the attempts handed out again are durable.
                    let committed = self
                        .commit(Ok(events), None)
                        .map(move |_, act, ctx| act.perform(timers, ctx));
                    ctx.wait(committed);
                }
            }
            Some(Initial::Loaded) | None => {}
        }
    }
}

impl Handler<Snapshot> for RunActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}

impl Handler<Deliver> for RunActor {
    type Result = AtomicResponse<Self, Result<(), Rejection>>;

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) -> Self::Result {
        let Deliver { input, ack } = msg;
        let now = self.effects.now_ms();
        if !self.state.evaluates_expressions {
            let decided = self.state.handle(input, now);
            return AtomicResponse::new(self.commit(decided, ack));
        }
        // Deciding may evaluate expressions, which can be slow: tried here on a small
        // allowance when the run's data is small, else (or when that is not enough) on the
        // evaluation pool, so the other runs of this arbiter go on meanwhile.
        let extra = match &input {
            Input::Result {
                outcome: Ok(output),
                ..
            } => crate::state::json_memory_bytes_up_to(output, evaluation::INLINE_DATA_BYTES),
            _ => 0,
        };
        if let Some(decided) = Evaluator::try_here(&mut self.state, extra, |state| {
            state.handle(input.clone(), now)
        }) {
            return AtomicResponse::new(self.commit(decided, ack));
        }
        // The actor takes no other message until the state is back.
        let placeholder = self.state.placeholder();
        let state = std::mem::replace(&mut self.state, placeholder);
        let evaluator = self.effects.evaluator().clone();
        let decide = async move {
            evaluator
                .run(move || {
                    let mut state = state;
                    let decided = state.handle(input, now);
                    (state, decided)
                })
                .await
        };
        AtomicResponse::new(Box::pin(decide.into_actor(self).then(
            move |decided, act, ctx| match decided {
                Ok((state, decided)) => {
                    act.state = state;
                    act.commit(decided, ack)
                }
                Err(err) => {
                    // The state is lost with the evaluation; the run is rebuilt from what is
                    // durable on the next start.
                    error!(run_id = %act.state.run_id, error = %err, "cannot decide the run's next step; run actor stops");
                    act.effects.abandoned(&act.state.run_id);
                    ctx.stop();
                    Box::pin(fut::ready(Ok(())))
                }
            },
        )))
    }
}

impl RunActor {
    /// Records the new run with its first events, then answers `reply` and acts; a run whose
    /// idempotency key named another leaves at once, having written nothing.
    fn create(
        &mut self,
        events: Vec<RunEvent>,
        reply: tokio::sync::oneshot::Sender<Result<Created>>,
        ctx: &mut Context<Self>,
    ) {
        let actions = self.state.actions_for(&events);
        let created = self.effects.create(&self.state, events);
        // The mailbox waits until the run is durable.
        ctx.wait(
            created
                .into_actor(self)
                .map(move |created, act, ctx| match created {
                    Ok((Created::New, events)) => {
                        act.effects.persisted(&act.state, events);
                        // Nobody waiting for the answer is fine: the run is durable.
                        let _ = reply.send(Ok(Created::New));
                        act.perform(actions, ctx);
                    }
                    Ok((existing, _)) => {
                        let _ = reply.send(Ok(existing));
                        act.effects.abandoned(&act.state.run_id);
                        ctx.stop();
                    }
                    Err(err) => {
                        error!(run_id = %act.state.run_id, error = %err, "cannot record a new run");
                        let _ = reply.send(Err(err));
                        act.effects.abandoned(&act.state.run_id);
                        ctx.stop();
                    }
                }),
        );
    }

    /// Makes the events of one decision durable, then acknowledges the input and performs the
    /// actions.
    fn commit(
        &mut self,
        decided: Result<Vec<RunEvent>, Rejection>,
        ack: Option<Ack>,
    ) -> ResponseActFuture<Self, Result<(), Rejection>> {
        let events = match decided {
            Ok(events) => events,
            Err(rejection) => {
                if let Some(msg_ack) = ack {
                    Ack::ack(msg_ack)
                }
                return Box::pin(fut::ready(Err(rejection)));
            }
        };
        if events.is_empty() {
            if let Some(msg_ack) = ack {
                Ack::ack(msg_ack)
            }
            return Box::pin(fut::ready(Ok(())));
        }
        let actions = self.state.actions_for(&events);
        let persist = self.effects.persist(&self.state, events);
        Box::pin(persist.into_actor(self).map(move |persisted, act, ctx| {
            match persisted {
                Ok(events) => {
                    if let Some(msg_ack) = ack {
                        Ack::ack(msg_ack)
                    }
                    act.effects.persisted(&act.state, events);
                    act.perform(actions, ctx);
                }
                Err(err) => {
                    // The state ran ahead of storage: leave memory without acknowledging; the
                    // run is rebuilt from what is durable on the next start.
                    error!(run_id = %act.state.run_id, error = %err, "cannot persist run events; run actor stops");
                    act.effects.abandoned(&act.state.run_id);
                    ctx.stop();
                }
            }
            Ok(())
        }))
    }

    /// Performs one decision's actions, in order, through the effects port.
    fn perform(&mut self, actions: Vec<Action>, ctx: &mut Context<Self>) {
        let mut specs = Vec::new();
        for action in actions {
            match action {
                Action::Dispatch(spec) => specs.push(spec),
                Action::StartChild(spec) => self.effects.start_child(&self.state, spec),
                Action::SetTimer { at_ms, timer } => {
                    let delay = u64::try_from(at_ms - self.effects.now_ms()).unwrap_or(0);
                    // Through the mailbox, behind the results that arrived before it: a
                    // result that came in time is never judged late because many others
                    // were still waiting to be handled (`notify` would jump the queue).
                    ctx.run_later(Duration::from_millis(delay), move |_, ctx| {
                        ctx.address().do_send(Deliver {
                            input: Input::Timer(timer),
                            ack: None,
                        });
                    });
                }
                Action::CancelWorkers => self.effects.cancel_workers(&self.state),
                Action::CancelChildren => self.effects.cancel_children(&self.state),
                Action::NotifyParent(parent) => self.effects.notify_parent(&self.state, &parent),
                Action::Finished(status) => {
                    self.effects.finished(&self.state, status);
                    ctx.stop();
                }
            }
        }
        if !specs.is_empty() {
            // The actor waits so a later input cannot overtake its dispatches.
            let sent = self.effects.dispatch(&self.state, specs);
            ctx.wait(sent.into_actor(self));
        } else if self.may_rest() {
            // Not at once: an input on its way (the command that woke the run) comes first.
            // Then, still waiting and kept by the engine as resting, the actor leaves memory;
            // the run is rebuilt from storage when a person answers or a deadline passes.
            ctx.run_later(REST_AFTER, |act, ctx| {
                if act.may_rest() && act.effects.rest(&act.state) {
                    ctx.stop();
                }
            });
        }
    }

    /// Whether the run waits only for people and none of its timers (approval deadlines) is
    /// due within [`REST_HORIZON_MS`]: a timer armed here must fire here.
    fn may_rest(&self) -> bool {
        self.state.waits_only_for_people()
            && self
                .state
                .next_timer_ms()
                .is_none_or(|at_ms| at_ms > self.effects.now_ms().saturating_add(REST_HORIZON_MS))
    }
}

/// Events of one run that were just made durable.
pub type Published = Arc<(String, Vec<RunEvent>)>;

#[cfg(test)]
mod tests;
