//! Durable storage in sled: flows (every version), runs, run events, idempotency keys.
//!
//! Writes go into sled's trees at once (in memory); [`Store::commit`] waits until they are on
//! disk. Flushes are grouped: one flusher thread serves every commit that arrived while the
//! previous flush ran, so many runs share one `fsync`. Nothing that a client or a dispatch
//! depends on is acknowledged before its commit returns.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::state::{ErrorInfo, RunEvent, RunStatus};

/// A stored flow version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRecord {
    pub name: String,
    pub version: u32,
    pub source: String,
    pub file_name: String,
    pub created_at_ms: i64,
}

/// What ListRuns shows of a run; rewritten when the run's status changes (so `updated_at_ms` is
/// the time of the last status change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub flow: String,
    pub version: u32,
    pub status: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub error: Option<ErrorInfo>,
    /// What started the run (see [`crate::state::RunState::trigger`]); empty for the API.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trigger: String,
}

impl RunSummary {
    pub fn status(&self) -> RunStatus {
        RunStatus::from_name(&self.status).unwrap_or(RunStatus::Running)
    }
}

/// An approval step waiting for a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    pub run_id: String,
    pub flow: String,
    pub version: u32,
    pub step: String,
    pub message: String,
    pub requested_at_ms: i64,
    pub deadline_ms: Option<i64>,
}

/// A secret as the API shows it: no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at_ms: i64,
}

/// A secret as stored. Values are kept in clear in the data directory (its file permissions are
/// the protection); encryption at rest is not built.
#[derive(Serialize, Deserialize)]
struct StoredSecret {
    value: String,
    updated_at_ms: i64,
}

/// The state of one schedule trigger of a flow (`schedules` tree, by `flow \0 trigger`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub flow: String,
    pub trigger: String,
    /// What the fire times were computed from (cron, zone, start, end); a new flow version that
    /// changes it makes the schedule start afresh from the present.
    pub spec: String,
    /// The next nominal fire time not yet handled; `None` once the schedule has ended.
    pub next_ms: Option<i64>,
    pub paused: bool,
    /// The nominal time of the last fire that started a run.
    pub last_fire_ms: Option<i64>,
}

/// The outcome of creating a run with an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New,
    /// The key already named this run.
    Existing(String),
}

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

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(format!("cannot encode record: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Internal(format!("corrupt {what} record: {e}")))
}

fn flow_key(name: &str, version: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 5);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn event_key(run_id: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(run_id.len() + 9);
    key.extend_from_slice(run_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn schedule_key(flow: &str, trigger: &str) -> Vec<u8> {
    [flow.as_bytes(), &[0], trigger.as_bytes()].concat()
}

fn idempotency_key(flow: &str, key: &str) -> Vec<u8> {
    [flow.as_bytes(), &[0], key.as_bytes()].concat()
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its flusher thread.
    pub fn open(dir: &Path) -> Result<Self> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(256 * 1024 * 1024)
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
        let flusher_thread = std::thread::Builder::new()
            .name("rpaflow-flusher".into())
            .spawn(move || group_flush(&db, &requests))
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
            flusher: Some(flusher),
            flusher_thread: Some(flusher_thread),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Waits until everything written so far is on disk.
    pub async fn commit(&self) -> Result<()> {
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

    // ---- flows ----

    pub async fn put_flow(&self, record: &FlowRecord) -> Result<()> {
        self.inner
            .flows
            .insert(flow_key(&record.name, record.version), encode(record)?)
            .map_err(storage("put flow"))?;
        self.commit().await
    }

    pub fn flow(&self, name: &str, version: u32) -> Result<Option<FlowRecord>> {
        match self
            .inner
            .flows
            .get(flow_key(name, version))
            .map_err(storage("get flow"))?
        {
            Some(bytes) => decode(&bytes, "flow").map(Some),
            None => Ok(None),
        }
    }

    /// Every version of a flow, oldest first.
    pub fn flow_versions(&self, name: &str) -> Result<Vec<u32>> {
        let prefix = [name.as_bytes(), &[0]].concat();
        self.inner
            .flows
            .scan_prefix(prefix)
            .keys()
            .map(|k| {
                let k = k.map_err(storage("scan flows"))?;
                let tail: [u8; 4] = k[k.len() - 4..]
                    .try_into()
                    .map_err(|_| Error::Internal("corrupt flow key".into()))?;
                Ok(u32::from_be_bytes(tail))
            })
            .collect()
    }

    /// The latest version of every flow, by name.
    pub fn latest_flows(&self) -> Result<Vec<FlowRecord>> {
        let mut out: Vec<FlowRecord> = Vec::new();
        for entry in self.inner.flows.iter() {
            let (_, value) = entry.map_err(storage("scan flows"))?;
            let record: FlowRecord = decode(&value, "flow")?;
            match out.last_mut() {
                Some(last) if last.name == record.name => *last = record,
                _ => out.push(record),
            }
        }
        Ok(out)
    }

    // ---- runs ----

    /// Records a new run and its first events, durably. With an idempotency key already used
    /// for this flow, records nothing and names the existing run.
    pub async fn create_run(&self, summary: &RunSummary, events: &[RunEvent]) -> Result<Created> {
        if !summary.idempotency_key.is_empty() {
            let key = idempotency_key(&summary.flow, &summary.idempotency_key);
            let claimed = self
                .inner
                .idempotency
                .compare_and_swap(&key, None as Option<&[u8]>, Some(summary.run_id.as_bytes()))
                .map_err(storage("claim idempotency key"))?;
            if let Err(current) = claimed
                && let Some(existing) = current.current
            {
                let existing = String::from_utf8_lossy(&existing).into_owned();
                // A claim whose run never became durable (a crash in between) is void.
                if self.run(&existing)?.is_some() {
                    self.commit().await?;
                    return Ok(Created::Existing(existing));
                }
                self.inner
                    .idempotency
                    .insert(&key, summary.run_id.as_bytes())
                    .map_err(storage("claim idempotency key"))?;
            }
        }
        self.inner
            .active
            .insert(summary.run_id.as_bytes(), &[])
            .map_err(storage("mark run active"))?;
        self.write_events(&summary.run_id, events)?;
        self.inner
            .runs
            .insert(summary.run_id.as_bytes(), encode(summary)?)
            .map_err(storage("put run"))?;
        self.commit().await?;
        Ok(Created::New)
    }

    /// The run an idempotency key names, if that run exists.
    pub fn run_for_key(&self, flow: &str, key: &str) -> Result<Option<String>> {
        let Some(id) = self
            .inner
            .idempotency
            .get(idempotency_key(flow, key))
            .map_err(storage("get idempotency key"))?
        else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&id).into_owned();
        Ok(self.run(&id)?.map(|_| id))
    }

    /// Appends events of a run, durably; with a summary (when the run's status changed), also
    /// records that and whether the run is still active.
    pub async fn append(
        &self,
        run_id: &str,
        events: &[RunEvent],
        summary: Option<&RunSummary>,
    ) -> Result<()> {
        self.write_events(run_id, events)?;
        if let Some(summary) = summary {
            self.inner
                .runs
                .insert(run_id.as_bytes(), encode(summary)?)
                .map_err(storage("put run"))?;
            if summary.status().is_finished() {
                self.inner
                    .active
                    .remove(run_id.as_bytes())
                    .map_err(storage("mark run finished"))?;
            } else {
                self.inner
                    .active
                    .insert(run_id.as_bytes(), &[])
                    .map_err(storage("mark run active"))?;
            }
        }
        self.commit().await
    }

    /// Stores a secret's value, durably.
    pub async fn put_secret(&self, name: &str, value: &str) -> Result<SecretInfo> {
        let info = SecretInfo {
            name: name.to_owned(),
            updated_at_ms: rpaflow_core::time::now_ms(),
        };
        let record = StoredSecret {
            value: value.to_owned(),
            updated_at_ms: info.updated_at_ms,
        };
        self.inner
            .secrets
            .insert(name.as_bytes(), encode(&record)?)
            .map_err(storage("put secret"))?;
        self.commit().await?;
        Ok(info)
    }

    /// Deletes a secret, durably; false when there was none.
    pub async fn delete_secret(&self, name: &str) -> Result<bool> {
        let existed = self
            .inner
            .secrets
            .remove(name.as_bytes())
            .map_err(storage("delete secret"))?
            .is_some();
        self.commit().await?;
        Ok(existed)
    }

    /// A secret's value.
    pub fn secret(&self, name: &str) -> Result<Option<String>> {
        match self
            .inner
            .secrets
            .get(name.as_bytes())
            .map_err(storage("get secret"))?
        {
            Some(bytes) => decode::<StoredSecret>(&bytes, "secret").map(|s| Some(s.value)),
            None => Ok(None),
        }
    }

    /// Every secret's name and update time, by name (never the values).
    pub fn secrets(&self) -> Result<Vec<SecretInfo>> {
        self.inner
            .secrets
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(storage("scan secrets"))?;
                let stored: StoredSecret = decode(&value, "secret")?;
                Ok(SecretInfo {
                    name: String::from_utf8_lossy(&key).into_owned(),
                    updated_at_ms: stored.updated_at_ms,
                })
            })
            .collect()
    }

    // ---- schedules ----

    /// Stores a schedule's state, durably.
    pub async fn put_schedule(&self, record: &ScheduleRecord) -> Result<()> {
        self.inner
            .schedules
            .insert(schedule_key(&record.flow, &record.trigger), encode(record)?)
            .map_err(storage("put schedule"))?;
        self.commit().await
    }

    /// Forgets a schedule (its trigger left the flow), durably.
    pub async fn remove_schedule(&self, flow: &str, trigger: &str) -> Result<()> {
        self.inner
            .schedules
            .remove(schedule_key(flow, trigger))
            .map_err(storage("remove schedule"))?;
        self.commit().await
    }

    /// Every stored schedule, by flow and trigger.
    pub fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        self.inner
            .schedules
            .iter()
            .values()
            .map(|value| decode(&value.map_err(storage("scan schedules"))?, "schedule"))
            .collect()
    }

    /// Records a pending approval; durable with the next commit.
    pub fn put_approval(&self, approval: &PendingApproval) -> Result<()> {
        let key = [approval.run_id.as_bytes(), &[0], approval.step.as_bytes()].concat();
        self.inner
            .approvals
            .insert(key, encode(approval)?)
            .map_err(storage("put approval"))?;
        Ok(())
    }

    /// Forgets a pending approval; durable with the next commit.
    pub fn remove_approval(&self, run_id: &str, step: &str) -> Result<()> {
        let key = [run_id.as_bytes(), &[0], step.as_bytes()].concat();
        self.inner
            .approvals
            .remove(key)
            .map_err(storage("remove approval"))?;
        Ok(())
    }

    /// Pending approvals, oldest run first, of one flow or (with `""`) of all.
    pub fn approvals(&self, flow: &str) -> Result<Vec<PendingApproval>> {
        let mut out = Vec::new();
        for entry in self.inner.approvals.iter() {
            let (_, value) = entry.map_err(storage("scan approvals"))?;
            let approval: PendingApproval = decode(&value, "approval")?;
            if flow.is_empty() || approval.flow == flow {
                out.push(approval);
            }
        }
        Ok(out)
    }

    fn write_events(&self, run_id: &str, events: &[RunEvent]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for event in events {
            batch.insert(event_key(run_id, event.seq), encode(event)?);
        }
        self.inner
            .events
            .apply_batch(batch)
            .map_err(storage("append events"))
    }

    pub fn run(&self, run_id: &str) -> Result<Option<RunSummary>> {
        match self
            .inner
            .runs
            .get(run_id.as_bytes())
            .map_err(storage("get run"))?
        {
            Some(bytes) => decode(&bytes, "run").map(Some),
            None => Ok(None),
        }
    }

    /// A run's events with `seq >= from_seq`, in order.
    pub fn events(&self, run_id: &str, from_seq: u64) -> Result<Vec<RunEvent>> {
        let start = event_key(run_id, from_seq.max(1));
        let end = event_key(run_id, u64::MAX);
        self.inner
            .events
            .range(start..=end)
            .values()
            .map(|v| decode(&v.map_err(storage("read events"))?, "event"))
            .collect()
    }

    /// Runs newest first, after `page_token` (a run id), filtered.
    pub fn list_runs(
        &self,
        flow: &str,
        status: Option<RunStatus>,
        after: &str,
        limit: usize,
    ) -> Result<Vec<RunSummary>> {
        let iter = if after.is_empty() {
            self.inner.runs.iter().rev()
        } else {
            self.inner.runs.range(..after.as_bytes()).rev()
        };
        let mut out = Vec::new();
        for entry in iter {
            let (_, value) = entry.map_err(storage("scan runs"))?;
            let run: RunSummary = decode(&value, "run")?;
            if (flow.is_empty() || run.flow == flow) && status.is_none_or(|s| run.status() == s) {
                out.push(run);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Ids of runs that have not finished.
    pub fn active_runs(&self) -> Result<Vec<String>> {
        self.inner
            .active
            .iter()
            .keys()
            .map(|k| {
                Ok(String::from_utf8_lossy(&k.map_err(storage("scan active runs"))?).into_owned())
            })
            .collect()
    }
}

/// The flusher thread: one `flush` for every batch of waiting commits.
fn group_flush(db: &sled::Db, requests: &std_mpsc::Receiver<oneshot::Sender<Result<()>>>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EventKind;

    fn summary(id: &str, key: &str) -> RunSummary {
        RunSummary {
            run_id: id.into(),
            flow: "f".into(),
            version: 1,
            status: "running".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
            idempotency_key: key.into(),
            error: None,
            trigger: String::new(),
        }
    }

    fn event(seq: u64) -> RunEvent {
        RunEvent {
            seq,
            at_ms: 1,
            kind: EventKind::RunCancelled {
                reason: format!("{seq}"),
            },
        }
    }

    #[tokio::test]
    async fn runs_and_events_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(
                store
                    .create_run(&summary("r1", ""), &[event(1)])
                    .await
                    .unwrap(),
                Created::New
            );
            let mut done = summary("r1", "");
            done.status = "succeeded".into();
            store
                .append("r1", &[event(2), event(3)], Some(&done))
                .await
                .unwrap();
            store
                .create_run(&summary("r2", ""), &[event(1)])
                .await
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.events("r1", 0).unwrap().len(), 3);
        assert_eq!(store.events("r1", 3).unwrap(), vec![event(3)]);
        assert_eq!(store.active_runs().unwrap(), vec!["r2".to_owned()]);
        assert_eq!(
            store.run("r1").unwrap().unwrap().status(),
            RunStatus::Succeeded
        );
        let listed = store
            .list_runs("", Some(RunStatus::Running), "", 10)
            .unwrap();
        assert_eq!(
            listed.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
            vec!["r2"]
        );
    }

    #[tokio::test]
    async fn idempotency_keys_name_the_first_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store
                .create_run(&summary("r1", "k"), &[event(1)])
                .await
                .unwrap(),
            Created::New
        );
        assert_eq!(
            store
                .create_run(&summary("r2", "k"), &[event(1)])
                .await
                .unwrap(),
            Created::Existing("r1".into())
        );
        assert!(store.run("r2").unwrap().is_none());
    }

    #[tokio::test]
    async fn flows_keep_every_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (name, v) in [("a", 1), ("a", 2), ("b", 1)] {
            let rec = FlowRecord {
                name: name.into(),
                version: v,
                source: String::new(),
                file_name: String::new(),
                created_at_ms: 0,
            };
            store.put_flow(&rec).await.unwrap();
        }
        assert_eq!(store.flow_versions("a").unwrap(), vec![1, 2]);
        let latest: Vec<(String, u32)> = store
            .latest_flows()
            .unwrap()
            .into_iter()
            .map(|r| (r.name, r.version))
            .collect();
        assert_eq!(latest, vec![("a".into(), 2), ("b".into(), 1)]);
    }

    #[tokio::test]
    async fn schedules_persist_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let record = ScheduleRecord {
            flow: "f".into(),
            trigger: "nightly".into(),
            spec: "0 2 * * *|UTC||".into(),
            next_ms: Some(7_200_000),
            paused: false,
            last_fire_ms: None,
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_schedule(&record).await.unwrap();
            let other = ScheduleRecord {
                trigger: "gone".into(),
                ..record.clone()
            };
            store.put_schedule(&other).await.unwrap();
            store.remove_schedule("f", "gone").await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schedules().unwrap(), vec![record]);
    }
}
