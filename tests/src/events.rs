//! A run's events as WatchRun streams them, with the counting the scenarios assert on.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::pb;
use crate::pb::flow_service_client::FlowServiceClient;

/// A step and, for `for_each` steps, an item: what one task result is about.
pub type Unit = (String, Option<u32>);

/// Events of one run, in sequence order.
#[derive(Debug, Clone, Default)]
pub struct Events(pub Vec<pb::RunEvent>);

impl Events {
    pub fn iter(&self) -> impl Iterator<Item = &pb::RunEvent> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn last(&self) -> Option<&pb::RunEvent> {
        self.0.last()
    }

    /// Events of `kind` ("task_dispatched", "run_succeeded", ...).
    pub fn of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a pb::RunEvent> + 'a {
        self.0.iter().filter(move |e| e.kind == kind)
    }

    pub fn count(&self, kind: &str) -> usize {
        self.of(kind).count()
    }

    /// Events of `kind` about `step` (any item).
    pub fn of_step<'a>(
        &'a self,
        kind: &'a str,
        step: &'a str,
    ) -> impl Iterator<Item = &'a pb::RunEvent> + 'a {
        self.of(kind).filter(move |e| e.step_id == step)
    }

    /// How many events of `kind` there are per step and item.
    pub fn per_unit(&self, kind: &str) -> BTreeMap<Unit, usize> {
        let mut out = BTreeMap::new();
        for e in self.of(kind) {
            *out.entry((e.step_id.clone(), e.item)).or_insert(0) += 1;
        }
        out
    }

    /// How many results (`task_succeeded` or `task_failed`) were accepted per step, item and
    /// attempt.
    pub fn results_per_attempt(&self) -> BTreeMap<(String, Option<u32>, u32), usize> {
        let mut out = BTreeMap::new();
        for e in self
            .0
            .iter()
            .filter(|e| e.kind == "task_succeeded" || e.kind == "task_failed")
        {
            *out.entry((e.step_id.clone(), e.item, e.attempt))
                .or_insert(0) += 1;
        }
        out
    }

    /// The first event of `kind`, if any.
    pub fn first<'a>(&'a self, kind: &'a str) -> Option<&'a pb::RunEvent> {
        self.of(kind).next()
    }
}

impl fmt::Display for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            let mut target = e.step_id.clone();
            if let Some(item) = e.item {
                target.push_str(&format!("[{item}]"));
            }
            if e.attempt > 0 {
                target.push_str(&format!(" #{}", e.attempt));
            }
            writeln!(
                f,
                "  {:>4} {:<20} {:<16} {}",
                e.seq, e.kind, target, e.message
            )?;
        }
        Ok(())
    }
}

/// Follows a run's events in the background (WatchRun from the start), so a scenario can look at
/// what happened so far without waiting for the run to end. The stream stops when the run ends
/// or its server goes away.
pub struct EventLog {
    events: Arc<Mutex<Vec<pb::RunEvent>>>,
    end: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for EventLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLog")
            .field("events", &self.snapshot().len())
            .field("end", &self.end())
            .finish()
    }
}

impl EventLog {
    /// Follows `run_id` with `client` (clones of one client share one connection).
    pub fn spawn(mut client: FlowServiceClient<Channel>, run_id: &str) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let end = Arc::new(Mutex::new(None));
        let (sink, end_sink) = (events.clone(), end.clone());
        let req = pb::WatchRunRequest {
            run_id: run_id.to_owned(),
            from_seq: 0,
        };
        let task = tokio::spawn(async move {
            let why = match client.watch_run(req).await {
                Err(status) => format!(
                    "WatchRun refused: {:?}: {}",
                    status.code(),
                    status.message()
                ),
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    loop {
                        match stream.next().await {
                            Some(Ok(event)) => {
                                sink.lock().unwrap_or_else(|e| e.into_inner()).push(event)
                            }
                            Some(Err(status)) => {
                                break format!(
                                    "stream broke off: {:?}: {}",
                                    status.code(),
                                    status.message()
                                );
                            }
                            None => break "stream ended".to_owned(),
                        }
                    }
                }
            };
            *end_sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        });
        Self { events, end, task }
    }

    /// The events received so far.
    pub fn snapshot(&self) -> Events {
        Events(
            self.events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Why the stream stopped, once it has.
    pub fn end(&self) -> Option<String> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}
