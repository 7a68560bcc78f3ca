//! A fake [`RunStarter`] and flows for the triggers' unit tests.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::RunStarter;
use crate::error::{Error, Result};
use crate::orchestrator::{FlowView, StartRun};
use crate::state::RunState;
use crate::store::FlowRecord;

/// A parsed flow as the registry shows it, at `version`.
pub(crate) fn flow(source: &str, version: u32) -> FlowView {
    let flow = rpaflow_core::flow::parse("flow.yaml", source).unwrap();
    FlowView {
        record: FlowRecord {
            name: flow.name.clone(),
            version,
            source: source.to_owned(),
            file_name: "flow.yaml".into(),
            created_at_ms: 0,
        },
        versions: (1..=version).collect(),
        flow: Arc::new(flow),
    }
}

/// Starts runs by recording them: one run per idempotency key, and refusals on demand.
#[derive(Clone, Default)]
pub(crate) struct FakeStarter {
    pub flows: Arc<Mutex<Vec<FlowView>>>,
    /// Every start asked for, in order (repeats of a key included).
    pub starts: Arc<Mutex<Vec<StartRun>>>,
    /// Run ids by idempotency key.
    pub runs: Arc<Mutex<HashMap<String, String>>>,
    /// Errors the next starts answer, first first.
    pub refusals: Arc<Mutex<VecDeque<Error>>>,
    /// What [`RunStarter::registrations`] follows.
    pub registrations: Arc<tokio::sync::watch::Sender<u64>>,
    /// While set, [`RunStarter::evaluate`] answers that the evaluator is not running.
    pub evaluator_stopped: Arc<AtomicBool>,
}

impl FakeStarter {
    /// The idempotency key of every start asked for, in order.
    pub fn keys(&self) -> Vec<String> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.idempotency_key.clone())
            .collect()
    }
}

impl RunStarter for FakeStarter {
    async fn start_run(&self, req: StartRun) -> Result<(RunState, bool)> {
        self.starts.lock().unwrap().push(req.clone());
        if let Some(err) = self.refusals.lock().unwrap().pop_front() {
            return Err(err);
        }
        let view = self
            .flows
            .lock()
            .unwrap()
            .iter()
            .find(|v| v.record.name == req.flow)
            .cloned()
            .ok_or_else(|| Error::FlowNotFound(req.flow.clone()))?;
        let mut runs = self.runs.lock().unwrap();
        let fresh = format!("run-{}", runs.len() + 1);
        let run_id = runs
            .entry(req.idempotency_key.clone())
            .or_insert(fresh.clone())
            .clone();
        let created = run_id == fresh;
        Ok((
            RunState::new(run_id, view.flow, view.record.version),
            created,
        ))
    }

    fn latest_flows(&self) -> Result<Vec<FlowView>> {
        Ok(self.flows.lock().unwrap().clone())
    }

    fn registrations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.registrations.subscribe()
    }

    async fn evaluate<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if self.evaluator_stopped.load(Ordering::SeqCst) {
            return Err(Error::NotRunning("evaluator"));
        }
        Ok(work())
    }
}
