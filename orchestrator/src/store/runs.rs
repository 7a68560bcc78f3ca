//! Runs: their summaries, their events, the idempotency keys that name them and the set of runs
//! still active.

use serde::{Deserialize, Serialize};

use super::{Store, decode, encode, storage};
use crate::error::Result;
use crate::state::{ErrorInfo, RunEvent, RunStatus};

/// What ListRuns shows of a run; rewritten when the run's status changes (so `updated_at_ms` is
/// the time of the last status change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    /// The flow's full name ([`rpaflow_core::namespace`]).
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

/// The outcome of creating a run with an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New,
    /// The key already named this run.
    Existing(String),
}

fn idempotency_key(flow: &str, key: &str) -> Vec<u8> {
    [flow.as_bytes(), &[0], key.as_bytes()].concat()
}

impl Store {
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

    /// Runs of a namespace newest first, after `page_token` (a run id), filtered by flow (its
    /// full name; `""` for all) and status.
    pub fn list_runs(
        &self,
        namespace: &str,
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
            if rpaflow_core::namespace::contains(namespace, &run.flow)
                && (flow.is_empty() || run.flow == flow)
                && status.is_none_or(|s| run.status() == s)
            {
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
