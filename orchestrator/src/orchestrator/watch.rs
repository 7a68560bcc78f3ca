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
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = runs.get(run_id) {
            tx.send_modify(|version| *version = version.wrapping_add(1));
        }
    }
}

/// One watcher's word of a run's new events; the run is no longer watched once the last such
/// is dropped.
struct Following {
    engine: Arc<Engine>,
    run_id: String,
    rx: Option<watch::Receiver<u64>>,
}

impl Following {
    fn new(engine: Arc<Engine>, run_id: &str) -> Self {
        let rx = engine
            .watchers
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(run_id.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        Self {
            engine,
            run_id: run_id.to_owned(),
            rx: Some(rx),
        }
    }

    /// Waits until the run has events that were not durable when this was made or last waited.
    async fn more(&mut self) {
        if let Some(rx) = &mut self.rx {
            // The sender stays in the table while any watcher holds a receiver.
            let _ = rx.changed().await;
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut runs = self
            .engine
            .watchers
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if runs
            .get(&self.run_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            runs.remove(&self.run_id);
        }
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
