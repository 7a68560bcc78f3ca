//! The orchestrator's Prometheus metrics (`docs/operations.md`), named in the manner of TGI's
//! and never labelled by run id: flows are labelled by their own name and namespace (bounded by
//! the registered flows), steps by kind, tasks by queue.
//!
//! Counters and histograms move as the run actors make events durable ([`Metrics::record`]);
//! the gauges (active and queued runs, the dispatch backlog, dead letters) are read from the
//! orchestrator's own tables when scraped ([`crate::OrchestratorHandle::refresh_metrics`]), so
//! the hot path pays nothing for them.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::state::{EventKind, RunEvent, RunState, StepOutcome};

pub const RUNS_STARTED: &str = "rpaflow_runs_started";
pub const RUNS_FINISHED: &str = "rpaflow_runs_finished";
pub const RUN_DURATION: &str = "rpaflow_run_duration_seconds";
pub const STEPS_FINISHED: &str = "rpaflow_steps_finished";
pub const STEP_DURATION: &str = "rpaflow_step_duration_seconds";
pub const STEP_SCHEDULE_TO_START: &str = "rpaflow_step_schedule_to_start_seconds";
pub const RUNS_ACTIVE: &str = "rpaflow_runs_active";
pub const RUNS_QUEUED: &str = "rpaflow_runs_queued";
pub const DISPATCH_BACKLOG: &str = "rpaflow_dispatch_backlog";
pub const DEAD_LETTERS: &str = "rpaflow_dead_letters";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    pub namespace: String,
    pub flow: String,
}

impl FlowLabels {
    /// From a flow's full name (`ns/name`).
    pub fn of(full: &str) -> Self {
        let (namespace, flow) = rpaflow_core::namespace::split(full);
        Self {
            namespace: namespace.to_owned(),
            flow: flow.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    succeeded,
    failed,
    cancelled,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunOutcomeLabels {
    pub namespace: String,
    pub flow: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub kind: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

/// Seconds, from a few milliseconds (a no-op step) to an hour (a long run).
fn duration_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
        3600.0,
    ])
}

/// Seconds a task waits between its dispatch and a worker starting it.
fn latency_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The orchestrator's metrics.
#[derive(Debug)]
pub struct Metrics {
    runs_started: Family<FlowLabels, Counter>,
    runs_finished: Family<RunOutcomeLabels, Counter>,
    run_duration: HistogramFamily<RunOutcomeLabels>,
    steps_finished: Family<StepLabels, Counter>,
    step_duration: HistogramFamily<StepLabels>,
    schedule_to_start: HistogramFamily<QueueLabels>,
    pub(crate) runs_active: Family<FlowLabels, Gauge>,
    pub(crate) runs_queued: Family<FlowLabels, Gauge>,
    pub(crate) backlog: Family<QueueLabels, Gauge>,
    pub(crate) dead_letters: Counter,
    /// The flows whose runs the gauges have shown (bounded by the registered flows).
    flows_seen: std::sync::Mutex<std::collections::HashSet<FlowLabels>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            runs_started: Family::default(),
            runs_finished: Family::default(),
            run_duration: Family::new_with_constructor(duration_buckets),
            steps_finished: Family::default(),
            step_duration: Family::new_with_constructor(duration_buckets),
            schedule_to_start: Family::new_with_constructor(latency_buckets),
            runs_active: Family::default(),
            runs_queued: Family::default(),
            backlog: Family::default(),
            dead_letters: Counter::default(),
            flows_seen: Default::default(),
        }
    }
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

impl Metrics {
    /// Adds the metrics to `registry` (they stay shared with `self`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            RUNS_STARTED,
            "Runs started (queued runs count when they are created), by flow",
            self.runs_started.clone(),
        );
        registry.register(
            RUNS_FINISHED,
            "Runs that ended, by flow and outcome",
            self.runs_finished.clone(),
        );
        registry.register(
            RUN_DURATION,
            "Seconds from a run's creation to its outcome, by flow and outcome",
            self.run_duration.clone(),
        );
        registry.register(
            STEPS_FINISHED,
            "Steps that ended (after their retries), by kind and outcome",
            self.steps_finished.clone(),
        );
        registry.register(
            STEP_DURATION,
            "Seconds from a step's start to its end, retries included, by kind and outcome",
            self.step_duration.clone(),
        );
        registry.register(
            STEP_SCHEDULE_TO_START,
            "Seconds from a task's dispatch to a worker starting it, by queue",
            self.schedule_to_start.clone(),
        );
        registry.register(
            RUNS_ACTIVE,
            "Runs in memory holding a running place, by flow",
            self.runs_active.clone(),
        );
        registry.register(
            RUNS_QUEUED,
            "Runs waiting for a place under their flow's concurrency policy, by flow",
            self.runs_queued.clone(),
        );
        registry.register(
            DISPATCH_BACKLOG,
            "Tasks dispatched and not answered yet, by queue",
            self.backlog.clone(),
        );
        registry.register(
            DEAD_LETTERS,
            "Messages this process sent to the dead-letter topic because they could not be decoded",
            self.dead_letters.clone(),
        );
    }

    pub(crate) fn flows_seen(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashSet<FlowLabels>> {
        self.flows_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts what `events`, just made durable, say; `state` has them applied.
    pub(crate) fn record(&self, state: &RunState, events: &[RunEvent]) {
        for event in events {
            match &event.kind {
                EventKind::RunStarted(_) | EventKind::RunQueued { .. } => {
                    let labels = FlowLabels::of(&state.flow.name);
                    self.runs_started.get_or_create(&labels).inc();
                    // The flow's gauges show 0 from now on, rather than nothing.
                    self.flows_seen().insert(labels);
                }
                EventKind::RunSucceeded { .. } => self.run_ended(state, event, Outcome::succeeded),
                EventKind::RunFailed { .. } => self.run_ended(state, event, Outcome::failed),
                EventKind::RunCancelled { .. } => self.run_ended(state, event, Outcome::cancelled),
                EventKind::StepFinished { step, outcome, .. } => {
                    let Some(index) = state.flow.steps.iter().position(|s| &s.id == step) else {
                        continue;
                    };
                    let labels = StepLabels {
                        kind: state.flow.steps[index].uses.clone(),
                        outcome: match outcome {
                            StepOutcome::Succeeded => Outcome::succeeded,
                            StepOutcome::Failed => Outcome::failed,
                        },
                    };
                    self.steps_finished.get_or_create(&labels).inc();
                    if let Some(started) = state.steps.get(index).and_then(|s| s.started_at_ms) {
                        self.step_duration
                            .get_or_create(&labels)
                            .observe(seconds(event.at_ms - started));
                    }
                }
                _ => {}
            }
        }
    }

    fn run_ended(&self, state: &RunState, event: &RunEvent, outcome: Outcome) {
        let FlowLabels { namespace, flow } = FlowLabels::of(&state.flow.name);
        let labels = RunOutcomeLabels {
            namespace,
            flow,
            outcome,
        };
        self.runs_finished.get_or_create(&labels).inc();
        self.run_duration
            .get_or_create(&labels)
            .observe(seconds(event.at_ms - state.created_at_ms));
    }

    /// A worker started a task of `queue` `started_at_ms`; it was dispatched `dispatched_at_ms`
    /// (both by the wall clock: different machines' clocks may disagree, a negative wait
    /// counts as none).
    pub(crate) fn task_started(&self, queue: &str, dispatched_at_ms: i64, started_at_ms: i64) {
        if started_at_ms <= 0 {
            return;
        }
        self.schedule_to_start
            .get_or_create(&QueueLabels {
                queue: queue.to_owned(),
            })
            .observe(seconds(started_at_ms - dispatched_at_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_labelled_by_namespace_and_own_name() {
        assert_eq!(
            FlowLabels::of("team-a/invoices"),
            FlowLabels {
                namespace: "team-a".into(),
                flow: "invoices".into()
            }
        );
        assert_eq!(FlowLabels::of("invoices").namespace, "default");
    }

    /// Drives a run of `src` through the state machine, answering each dispatched attempt with
    /// `answer(step)`, recording every decision as the actor does; returns the metrics.
    fn record_run(
        metrics: &Metrics,
        src: &str,
        answer: impl Fn(&str) -> Result<serde_json::Value, crate::state::ErrorInfo>,
    ) {
        use crate::state::{Action, Input};
        let mut flow = rpaflow_core::flow::parse("t.yaml", src).expect("a flow");
        // As the registry keeps it: under its namespace.
        flow.name = rpaflow_core::namespace::qualify("team-a", &flow.name);
        let flow = std::sync::Arc::new(flow);
        let mut state = RunState::new("run-1", flow, 1);
        let mut now = 1_000;
        let events = state.start(serde_json::json!({}), String::new(), None, None, now);
        metrics.record(&state, &events);
        let mut actions = state.actions_for(&events);
        while let Some(action) = actions.pop() {
            let Action::Dispatch(spec) = action else {
                continue;
            };
            now += 250;
            let events = state
                .handle(
                    Input::Result {
                        outcome: answer(&spec.step),
                        step: spec.step,
                        item: spec.item,
                        attempt: spec.attempt,
                    },
                    now,
                )
                .expect("a current attempt");
            metrics.record(&state, &events);
            actions.extend(state.actions_for(&events));
        }
    }

    #[test]
    fn runs_and_steps_are_counted_once_by_outcome_with_their_durations() {
        const FLOW: &str = "name: t\nsteps:\n  - { id: a, uses: echo, with: { x: 1 } }\n  - { id: b, uses: http, needs: a, retry: { max_attempts: 2, delay: 1ms } }\n  - { id: c, uses: log, needs: b, with: { message: hi } }\n";
        let metrics = Metrics::default();
        record_run(&metrics, FLOW, |_| Ok(serde_json::json!({"ok": true})));
        record_run(&metrics, FLOW, |step| match step {
            "b" => Err(crate::state::ErrorInfo::new("http_status", "502", false)),
            _ => Ok(serde_json::json!({})),
        });
        let flow = FlowLabels {
            namespace: "team-a".into(),
            flow: "t".into(),
        };
        assert_eq!(metrics.runs_started.get_or_create(&flow).get(), 2);
        let run = |outcome| RunOutcomeLabels {
            namespace: "team-a".into(),
            flow: "t".into(),
            outcome,
        };
        assert_eq!(
            metrics
                .runs_finished
                .get_or_create(&run(Outcome::succeeded))
                .get(),
            1
        );
        assert_eq!(
            metrics
                .runs_finished
                .get_or_create(&run(Outcome::failed))
                .get(),
            1
        );
        let succeeded = metrics.run_duration.get_or_create(&run(Outcome::succeeded));
        // Three steps of 250 ms each.
        assert_eq!((succeeded.count(), succeeded.sum()), (1, 0.75));
        let step = |kind: &str, outcome| StepLabels {
            kind: kind.into(),
            outcome,
        };
        for (kind, outcome, n) in [
            ("echo", Outcome::succeeded, 2),
            ("http", Outcome::succeeded, 1),
            ("http", Outcome::failed, 1),
            ("log", Outcome::succeeded, 1),
            ("log", Outcome::failed, 0),
        ] {
            let labels = step(kind, outcome);
            assert_eq!(
                metrics.steps_finished.get_or_create(&labels).get(),
                n,
                "{kind}"
            );
            assert_eq!(
                metrics.step_duration.get_or_create(&labels).count(),
                n,
                "{kind}"
            );
        }
        assert_eq!(
            metrics
                .step_duration
                .get_or_create(&step("http", Outcome::succeeded))
                .sum(),
            0.25
        );
        // Both runs' flow shows in the gauges from now on.
        assert!(metrics.flows_seen().contains(&flow));
    }

    #[test]
    fn a_negative_wait_counts_as_none_and_an_unknown_start_is_not_counted() {
        let metrics = Metrics::default();
        metrics.task_started("web", 2_000, 1_500);
        metrics.task_started("web", 2_000, 0);
        let web = metrics.schedule_to_start.get_or_create(&QueueLabels {
            queue: "web".into(),
        });
        assert_eq!(web.count(), 1);
        assert_eq!(web.sum(), 0.0);
    }
}
