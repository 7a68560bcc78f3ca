//! [`OrchestratorHandle::watch_run`]: a run's stored events, then its live ones.
//!
//! A watcher reads the run's events from storage and, between reads, waits for word that the
//! run has more ([`RunWatchers`]): nothing of the events is held for it in memory, so a client
//! that reads slowly (or not at all) costs the orchestrator nothing but its own stream, and a
//! watcher wakes only for its run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::Stream;
use tokio::sync::watch;

use super::{Engine, OrchestratorHandle};
use crate::error::Result;
use crate::state::{EventKind, RunEvent};

/// The runs someone watches, each with a counter bumped whenever more of its events are durable.
#[derive(Default)]
pub(crate) struct RunWatchers {
    runs: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl RunWatchers {
    /// More of `run_id`'s events are durable.
    pub(crate) fn notify(&self, run_id: &str) {
        if let Some(tx) = self.lock().get(run_id) {
            tx.send_modify(|version| *version = version.wrapping_add(1));
        }
    }

    /// Word of `run_id`'s events from now on.
    fn follow(&self, run_id: &str) -> watch::Receiver<u64> {
        self.lock()
            .entry(run_id.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// A watcher of `run_id` leaves (its receiver is dropped right after): the run is no longer
    /// watched once the last one has.
    fn unfollow(&self, run_id: &str) {
        let mut runs = self.lock();
        // The leaving watcher's receiver still counts.
        if runs.get(run_id).is_some_and(|tx| tx.receiver_count() <= 1) {
            runs.remove(run_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One watcher's word of a run's new events.
struct Following {
    engine: Arc<Engine>,
    run_id: String,
    rx: watch::Receiver<u64>,
}

impl Following {
    fn new(engine: Arc<Engine>, run_id: &str) -> Self {
        let rx = engine.watchers.follow(run_id);
        Self {
            engine,
            run_id: run_id.to_owned(),
            rx,
        }
    }

    /// Waits until the run has events that were not durable when this was made or last waited.
    async fn more(&mut self) {
        // The sender stays in the table while any watcher holds a receiver.
        let _ = self.rx.changed().await;
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.engine.watchers.unfollow(&self.run_id);
    }
}

impl OrchestratorHandle {
    /// The events of a run of `namespace` from `from_seq`, then live ones until it finishes.
    pub fn watch_run(
        &self,
        namespace: &str,
        run_id: &str,
        from_seq: u64,
    ) -> Result<impl Stream<Item = Result<RunEvent>> + Send + 'static> {
        let shared = self.shared.clone();
        let run_id = run_id.to_owned();
        // Before the first read: nothing durable after it goes unnoticed.
        let mut more = Following::new(shared.clone(), &run_id);
        self.check_run(namespace, &run_id)?;
        Ok(async_stream(move |tx| async move {
            let mut next = from_seq.max(1);
            loop {
                // Everything stored from `next` on; the stream ends with the run.
                let mut ended = false;
                for event in shared.store.events(&run_id, next)? {
                    next = event.seq + 1;
                    ended = is_terminal(&event.kind);
                    if tx.send(Ok(event)).await.is_err() {
                        return Ok(());
                    }
                }
                if ended {
                    return Ok(());
                }
                let finished = shared
                    .store
                    .run(&run_id)?
                    .is_some_and(|r| r.status().is_finished());
                if finished {
                    // The run ended after the read above: send what was stored meanwhile.
                    for event in shared.store.events(&run_id, next)? {
                        if tx.send(Ok(event)).await.is_err() {
                            return Ok(());
                        }
                    }
                    return Ok(());
                }
                more.more().await;
            }
        }))
    }
}

fn is_terminal(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::RunSucceeded { .. }
            | EventKind::RunFailed { .. }
            | EventKind::RunCancelled { .. }
    )
}

/// A stream fed by an async producer through a small channel.
fn async_stream<F, Fut>(producer: F) -> impl Stream<Item = Result<RunEvent>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<RunEvent>>) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let errors = tx.clone();
    let fut = producer(tx);
    tokio::spawn(async move {
        if let Err(err) = fut.await {
            let _ = errors.send(Err(err)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
