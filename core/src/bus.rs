//! The step bus: how tasks reach workers and results come back.
//!
//! Both sides honour one at-least-once contract. A task may be delivered more than once (after a
//! crash or a redelivery), so every task carries `run_id/step_id/item/attempt` and the orchestrator
//! accepts one result per attempt. A result is acknowledged only once its effect is durable.
//!
//! [`StepBus`] is the orchestrator's side, [`TaskSource`] the worker's. [`InProcessBus`] implements
//! both over channels for `rpaflow dev` and tests; [`crate::kafka`] has the Kafka bus of the
//! distributed services.

use std::sync::Arc;

use async_trait::async_trait;
use rpaflow_proto::v1 as pb;
use tokio::sync::{Mutex, broadcast, mpsc};

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

/// The orchestrator's side of the bus.
#[async_trait]
pub trait StepBus: Send + Sync + 'static {
    /// Hands a task to the worker pool of its queue; returns once the bus holds it.
    async fn dispatch(&self, task: pb::Task) -> Result<()>;
    /// Tells workers to stop whatever they run for this run (best effort).
    async fn cancel_run(&self, run_id: &str) -> Result<()>;
    /// The next result from any worker; `None` once the bus is closed.
    async fn next_result(&self) -> Option<ResultDelivery>;
    /// Stops taking results, commits what is acknowledged and flushes what was sent.
    async fn close(&self) {}
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
    tasks_rx: Mutex<mpsc::UnboundedReceiver<pb::Task>>,
    results_tx: mpsc::UnboundedSender<pb::TaskResult>,
    results_rx: Mutex<mpsc::UnboundedReceiver<pb::TaskResult>>,
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
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let (cancel_tx, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                tasks_tx,
                tasks_rx: Mutex::new(tasks_rx),
                results_tx,
                results_rx: Mutex::new(results_rx),
                cancel_tx,
            }),
        }
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

    async fn next_result(&self) -> Option<ResultDelivery> {
        let result = self.inner.results_rx.lock().await.recv().await?;
        Some(ResultDelivery {
            result,
            ack: Ack::none(),
        })
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
        self.inner
            .results_tx
            .send(result)
            .map_err(|_| BusError::Closed)
    }

    fn cancellations(&self) -> broadcast::Receiver<String> {
        self.inner.cancel_tx.subscribe()
    }
}
