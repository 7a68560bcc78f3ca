//! Durable storage in sled: flows (every version), runs, run events, idempotency keys.
//!
//! Writes go into sled's trees at once (in memory); [`Store::commit`] waits until they are on
//! disk. Flushes are grouped: one flusher thread serves every commit that arrived while the
//! previous flush ran, so many runs share one `fsync`. Nothing that a client or a dispatch
//! depends on is acknowledged before its commit returns.
//!
//! # Layout
//! - `flush`: [`Store::commit`] and the flusher thread.
//! - `flows`: [`FlowRecord`], every version of every flow, by full name.
//! - `runs`: [`RunSummary`], idempotency keys ([`Created`]) and active runs.
//! - `event_log`: run events, one key per decision (a finished step's output stored once).
//! - `approvals`: [`PendingApproval`].
//! - `secrets`: [`SecretInfo`] and the stored values (by full name: [`rpaflow_core::namespace`]).
//! - `schedules`: [`ScheduleRecord`].
//! - `tokens`: [`NamespaceRecord`], [`TokenRecord`] and the audit log.

mod approvals;
mod event_log;
mod flows;
mod flush;
mod runs;
mod schedules;
mod secrets;
#[cfg(test)]
mod tests;
mod tokens;

pub use self::approvals::PendingApproval;
pub use self::flows::FlowRecord;
pub use self::runs::{Created, RunSummary};
pub use self::schedules::ScheduleRecord;
pub use self::secrets::SecretInfo;
pub use self::tokens::{AuditRecord, NamespaceRecord, TokenRecord};

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

struct Inner {
    flows: sled::Tree,
    runs: sled::Tree,
    events: sled::Tree,
    idempotency: sled::Tree,
    active: sled::Tree,
    /// Pending approvals by `run_id \0 step`.
    approvals: sled::Tree,
    /// Secret values by name.
    secrets: sled::Tree,
    /// Schedule state by `flow \0 trigger`.
    schedules: sled::Tree,
    /// The store's own settings, such as the key secret markers are tagged with.
    meta: sled::Tree,
    /// Namespaces other than `default`, by name.
    namespaces: sled::Tree,
    /// API tokens by id (hashes, never the secrets).
    tokens: sled::Tree,
    /// The audit log: changes made through the API, by time.
    audit: sled::Tree,
    /// What seals and opens secret values; set once by [`Store::use_secrets_key`].
    secrets_key: std::sync::OnceLock<rpaflow_core::secrets::SecretsKey>,
    /// Whether [`Store::commit`] waits for a flush (`orchestrator.flush_writes`).
    flush_writes: bool,
    flusher: Option<std_mpsc::Sender<oneshot::Sender<Result<()>>>>,
    flusher_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    /// Stops the flusher and waits for it, so the database is closed (and its lock released)
    /// when the last handle goes.
    fn drop(&mut self) {
        self.flusher.take();
        if let Some(thread) = self.flusher_thread.take() {
            let _ = thread.join();
        }
    }
}

fn storage(op: &'static str) -> impl Fn(sled::Error) -> Error {
    move |source| Error::Storage { op, source }
}

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Whether [`Store::commit`] waits for the disk (`orchestrator.flush_writes`). Without it
    /// (for tests and benchmarks only) writes are not durable across a crash; they are
    /// written out by [`Store::flush_all`] and when the store closes.
    pub flush_writes: bool,
    /// What sled keeps of its pages in memory, at most (`orchestrator.storage_cache_mb`).
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            flush_writes: true,
            cache_bytes: 64 << 20,
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(format!("cannot encode record: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Internal(format!("corrupt {what} record: {e}")))
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its flusher thread.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// [`Store::open`] with `options`.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Self> {
        let flush_writes = options.flush_writes;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None);
        // sled's background threads let go of the file lock shortly after the last handle of a
        // previous opening (in this process) is dropped: wait a little for it.
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::Other
                        && e.to_string().contains("could not acquire lock")
                        && attempts < 40 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(Error::Open {
                        path: dir.display().to_string(),
                        source,
                    });
                }
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(storage("open tree"));
        let (flusher, requests) = std_mpsc::channel::<oneshot::Sender<Result<()>>>();
        let (flows, runs, events, idempotency, active, approvals) = (
            tree("flows")?,
            tree("runs")?,
            tree("events")?,
            tree("idempotency")?,
            tree("active")?,
            tree("approvals")?,
        );
        let secrets = tree("secrets")?;
        let schedules = tree("schedules")?;
        let meta = tree("meta")?;
        let namespaces = tree("namespaces")?;
        let tokens = tree("tokens")?;
        let audit = tree("audit")?;
        let flusher_thread = std::thread::Builder::new()
            .name("rpaflow-flusher".into())
            .spawn(move || flush::group_flush(&db, &requests))
            .map_err(|e| Error::Internal(format!("cannot start the flusher thread: {e}")))?;
        let inner = Inner {
            flows,
            runs,
            events,
            idempotency,
            active,
            approvals,
            secrets,
            schedules,
            meta,
            namespaces,
            tokens,
            audit,
            secrets_key: std::sync::OnceLock::new(),
            flush_writes,
            flusher: Some(flusher),
            flusher_thread: Some(flusher_thread),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }
}
