//! The step bus: how tasks reach workers and results come back.
//!
//! Both sides honour one at-least-once contract. A task may be delivered more than once (after a
//! crash or a redelivery), so every task carries `run_id/step_id/item/attempt` and the orchestrator
//! accepts one result per attempt. A result is acknowledged only once its effect is durable.
//!
//! [`StepBus`] is the orchestrator's side, [`TaskSource`] the worker's. [`InProcessBus`] implements
//! both over channels for `rpaflow dev` and tests; [`crate::kafka`] has the Kafka bus of the
//! distributed services. Results go to the orchestrator's [`ResultSink`] on the bus's own task as
//! they arrive: no loop of the orchestrator's stands between a worker and the run it answers.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use async_trait::async_trait;
use rpaflow_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("step bus is closed")]
    Closed,
    #[error("step bus failed on {topic}: {message}")]
    Transport { topic: String, message: String },
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// Called once the effect of a delivery is durable (for Kafka: the offset may be committed).
pub struct Ack(Option<Box<dyn FnOnce() + Send>>);

impl Ack {
    /// An acknowledgement that does nothing (the in-process bus keeps no offsets).
    pub fn none() -> Self {
        Self(None)
    }

    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Self(Some(Box::new(f)))
    }

    pub fn ack(mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

/// A result from a worker, to be acknowledged once recorded.
#[derive(Debug)]
pub struct ResultDelivery {
    pub result: pb::TaskResult,
    pub ack: Ack,
}

/// A task for a worker, to be acknowledged once its result is published.
#[derive(Debug)]
pub struct TaskDelivery {
    pub task: pb::Task,
    pub ack: Ack,
}

/// Where the bus hands each result, as it arrives, on the bus's own task (a worker's, or the
/// Kafka consumer's): it must not block. The orchestrator's routes a result to its run.
pub trait ResultSink: Send + Sync + 'static {
    fn deliver(&self, delivery: ResultDelivery);
}

/// A channel is a sink: its receiver reads the results (tests, tools).
impl ResultSink for mpsc::UnboundedSender<ResultDelivery> {
    fn deliver(&self, delivery: ResultDelivery) {
        // A receiver that is gone wants no more results; unacknowledged, they come again.
        let _ = self.send(delivery);
    }
}

/// The orchestrator's side of the bus.
#[async_trait]
pub trait StepBus: Send + Sync + 'static {
    /// Hands a task to the worker pool of its queue; returns once the bus holds it.
    async fn dispatch(&self, task: pb::Task) -> Result<()>;
    /// Hands the tasks of one decision (a fan-out, parallel steps) to their pools in one call,
    /// in order; returns each one's outcome, in the same order, once the bus holds them all. By
    /// default each is handed over on the first poll, in order, and the acknowledgements are
    /// awaited together rather than one round trip after the other.
    async fn dispatch_all(&self, tasks: Vec<pb::Task>) -> Vec<Result<()>> {
        futures::future::join_all(tasks.into_iter().map(|task| self.dispatch(task))).await
    }
    /// Tells workers to stop whatever they run for this run (best effort).
    async fn cancel_run(&self, run_id: &str) -> Result<()>;
    /// From now on, hands every result to `sink` as it arrives (and at once those that came
    /// before). One sink per bus: a second is refused.
    fn deliver_results(&self, sink: Arc<dyn ResultSink>) -> Result<()>;
    /// Stops taking results, commits what is acknowledged and flushes what was sent.
    async fn close(&self) {}
}

/// A bus's results until the orchestrator attaches its sink (kept, in order), then the sink.
#[derive(Default)]
pub(crate) struct ResultSlot {
    sink: OnceLock<Arc<dyn ResultSink>>,
    /// What came before the sink; its lock also orders those results before later ones.
    early: Mutex<Vec<ResultDelivery>>,
}

impl ResultSlot {
    pub(crate) fn deliver(&self, delivery: ResultDelivery) {
        if let Some(sink) = self.sink.get() {
            return sink.deliver(delivery);
        }
        let mut early = self.early.lock().unwrap_or_else(PoisonError::into_inner);
        match self.sink.get() {
            Some(sink) => {
                drop(early);
                sink.deliver(delivery);
            }
            None => early.push(delivery),
        }
    }

    pub(crate) fn attach(&self, sink: Arc<dyn ResultSink>) -> Result<()> {
        let mut early = self.early.lock().unwrap_or_else(PoisonError::into_inner);
        if self.sink.set(Arc::clone(&sink)).is_err() {
            return Err(BusError::Transport {
                topic: "results".into(),
                message: "results already go to another sink".into(),
            });
        }
        for delivery in early.drain(..) {
            sink.deliver(delivery);
        }
        Ok(())
    }
}

/// The worker's side of the bus.
#[async_trait]
pub trait TaskSource: Send + Sync + 'static {
    /// The next task; `None` once the bus is closed.
    async fn next_task(&self) -> Option<TaskDelivery>;
    /// Sends a result back to the orchestrator; returns once the bus holds it.
    async fn publish(&self, result: pb::TaskResult) -> Result<()>;
    /// Run ids whose steps should stop.
    fn cancellations(&self) -> broadcast::Receiver<String>;
    /// Stops taking tasks, commits what is acknowledged and leaves: what was not acknowledged is
    /// delivered again, to this worker's pool.
    async fn close(&self) {}
}

/// Channels in one process: every queue is served by the embedded worker pool.
#[derive(Clone)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

struct Inner {
    tasks_tx: mpsc::UnboundedSender<pb::Task>,
    tasks_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<pb::Task>>,
    results: ResultSlot,
    cancel_tx: broadcast::Sender<String>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcessBus")
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessBus {
    pub fn new() -> Self {
        let (tasks_tx, tasks_rx) = mpsc::unbounded_channel();
        let (cancel_tx, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                tasks_tx,
                tasks_rx: tokio::sync::Mutex::new(tasks_rx),
                results: ResultSlot::default(),
                cancel_tx,
            }),
        }
    }

    /// The results, read from a channel instead of by a sink (tests, tools).
    pub fn results_channel(&self) -> Result<mpsc::UnboundedReceiver<ResultDelivery>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.deliver_results(Arc::new(tx))?;
        Ok(rx)
    }
}

#[async_trait]
impl StepBus for InProcessBus {
    async fn dispatch(&self, task: pb::Task) -> Result<()> {
        self.inner.tasks_tx.send(task).map_err(|_| BusError::Closed)
    }

    async fn cancel_run(&self, run_id: &str) -> Result<()> {
        // No subscriber simply means no worker is running anything.
        let _ = self.inner.cancel_tx.send(run_id.to_owned());
        Ok(())
    }

    fn deliver_results(&self, sink: Arc<dyn ResultSink>) -> Result<()> {
        self.inner.results.attach(sink)
    }
}

#[async_trait]
impl TaskSource for InProcessBus {
    async fn next_task(&self) -> Option<TaskDelivery> {
        let task = self.inner.tasks_rx.lock().await.recv().await?;
        Some(TaskDelivery {
            task,
            ack: Ack::none(),
        })
    }

    async fn publish(&self, result: pb::TaskResult) -> Result<()> {
        // Straight to the orchestrator's sink, on this worker's task.
        self.inner.results.deliver(ResultDelivery {
            result,
            ack: Ack::none(),
        });
        Ok(())
    }

    fn cancellations(&self) -> broadcast::Receiver<String> {
        self.inner.cancel_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(step: &str) -> pb::TaskResult {
        pb::TaskResult {
            run_id: "run-1".into(),
            step_id: step.into(),
            attempt: 1,
            ..Default::default()
        }
    }

    fn steps(rx: &mut mpsc::UnboundedReceiver<ResultDelivery>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|d| d.result.step_id)
            .collect()
    }

    #[tokio::test]
    async fn results_published_before_the_sink_reach_it_first_and_in_order() {
        let bus = InProcessBus::new();
        bus.publish(result("a")).await.unwrap();
        bus.publish(result("b")).await.unwrap();
        let mut rx = bus.results_channel().unwrap();
        bus.publish(result("c")).await.unwrap();
        assert_eq!(steps(&mut rx), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_second_sink_is_refused_and_the_first_keeps_the_results() {
        let bus = InProcessBus::new();
        let mut first = bus.results_channel().unwrap();
        let err = bus.results_channel().unwrap_err();
        assert!(
            err.to_string().contains("already go to another sink"),
            "{err}"
        );
        bus.publish(result("a")).await.unwrap();
        assert_eq!(steps(&mut first), ["a"]);
    }

    #[tokio::test]
    async fn a_decision_s_tasks_reach_the_workers_in_order() {
        let bus = InProcessBus::new();
        let tasks = ["a", "b", "c"].map(|step| pb::Task {
            run_id: "run-1".into(),
            step_id: step.into(),
            attempt: 1,
            ..Default::default()
        });
        let outcomes = bus.dispatch_all(tasks.to_vec()).await;
        assert!(outcomes.iter().all(Result::is_ok));
        for step in ["a", "b", "c"] {
            assert_eq!(bus.next_task().await.unwrap().task.step_id, step);
        }
    }
}
