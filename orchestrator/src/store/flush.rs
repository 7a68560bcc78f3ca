//! Grouped flushes: [`Store::commit`] and the flusher thread that serves it.

use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

use super::{Store, storage};
use crate::error::{Error, Result};

impl Store {
    /// Waits until everything written so far is on disk (at once when the store was opened
    /// not to flush writes).
    pub async fn commit(&self) -> Result<()> {
        if !self.inner.flush_writes {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let flusher = self
            .inner
            .flusher
            .as_ref()
            .ok_or(Error::NotRunning("storage flusher"))?;
        flusher
            .send(tx)
            .map_err(|_| Error::NotRunning("storage flusher"))?;
        rx.await.map_err(|_| Error::NotRunning("storage flusher"))?
    }

    /// Writes everything out now, also when the store does not flush each commit: on
    /// stopping. (On a blocking thread: a test on paused time does not jump ahead meanwhile.)
    pub async fn flush_all(&self) -> Result<()> {
        let tree = self.inner.meta.clone();
        tokio::task::spawn_blocking(move || tree.flush())
            .await
            .map_err(|e| Error::Internal(format!("the final flush panicked: {e}")))?
            .map_err(storage("flush"))?;
        Ok(())
    }
}

/// The flusher thread: one `flush` for every batch of waiting commits.
pub(super) fn group_flush(
    db: &sled::Db,
    requests: &std_mpsc::Receiver<oneshot::Sender<Result<()>>>,
) {
    while let Ok(first) = requests.recv() {
        let mut waiting = vec![first];
        waiting.extend(requests.try_iter());
        let outcome = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for reply in waiting {
            let result = outcome
                .clone()
                .map_err(|message| Error::Internal(format!("storage flush failed: {message}")));
            // The caller may have gone away; the data is flushed either way.
            let _ = reply.send(result);
        }
    }
}
