//! [`OrchestratorHandle::watch_run`]: a run's stored events, then its live ones.

use futures::Stream;
use tokio::sync::broadcast;

use super::OrchestratorHandle;
use crate::error::Result;
use crate::state::{EventKind, RunEvent};

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
        let mut live = shared.events.subscribe();
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
                loop {
                    match live.recv().await {
                        Ok(batch) if batch.0 == run_id => break,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                }
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
