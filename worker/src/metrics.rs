//! The worker's Prometheus metrics (`docs/operations.md`): tasks by kind and outcome, their
//! duration, and the worker's slots. Never labelled by run id.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub const TASKS: &str = "rpaflow_worker_tasks";
pub const TASK_DURATION: &str = "rpaflow_worker_task_duration_seconds";
pub const TASKS_IN_FLIGHT: &str = "rpaflow_worker_tasks_in_flight";
pub const FREE_SLOTS: &str = "rpaflow_worker_free_slots";

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum TaskOutcome {
    succeeded,
    failed,
    cancelled,
}

impl TaskOutcome {
    /// How a task with this error code (none: success) ended.
    pub fn of(error_code: Option<&str>) -> Self {
        match error_code {
            None => Self::succeeded,
            Some(crate::codes::CANCELLED) => Self::cancelled,
            Some(_) => Self::failed,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub kind: String,
    pub outcome: TaskOutcome,
}

fn duration_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ])
}

/// A worker's metrics; the gauges are set from its counters before each scrape
/// ([`crate::WorkerHandle::refresh_metrics`]).
#[derive(Debug)]
pub struct WorkerMetrics {
    tasks: Family<TaskLabels, Counter>,
    task_duration: Family<TaskLabels, Histogram, fn() -> Histogram>,
    pub(crate) in_flight: Gauge,
    pub(crate) free_slots: Gauge,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self {
            tasks: Family::default(),
            task_duration: Family::new_with_constructor(duration_buckets),
            in_flight: Gauge::default(),
            free_slots: Gauge::default(),
        }
    }
}

impl WorkerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            TASKS,
            "Tasks this worker ran, by step kind and outcome",
            self.tasks.clone(),
        );
        registry.register(
            TASK_DURATION,
            "Seconds a task's executor ran, by step kind and outcome",
            self.task_duration.clone(),
        );
        registry.register(
            TASKS_IN_FLIGHT,
            "Tasks running on this worker now",
            self.in_flight.clone(),
        );
        registry.register(
            FREE_SLOTS,
            "Tasks this worker could start now (its concurrency less the tasks in flight)",
            self.free_slots.clone(),
        );
    }

    /// A task of `kind` ended after `seconds`, failed with `error_code` (none: succeeded).
    pub(crate) fn task_finished(&self, kind: &str, error_code: Option<&str>, seconds: f64) {
        let labels = TaskLabels {
            kind: kind.to_owned(),
            outcome: TaskOutcome::of(error_code),
        };
        self.tasks.get_or_create(&labels).inc();
        self.task_duration.get_or_create(&labels).observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_counted_by_kind_and_outcome() {
        let metrics = WorkerMetrics::default();
        metrics.task_finished("http", None, 0.2);
        metrics.task_finished("http", Some("timeout"), 1.0);
        metrics.task_finished("http", Some(crate::codes::CANCELLED), 0.1);
        metrics.task_finished("http", None, 0.4);
        let count = |outcome| {
            metrics
                .tasks
                .get_or_create(&TaskLabels {
                    kind: "http".into(),
                    outcome,
                })
                .get()
        };
        assert_eq!(count(TaskOutcome::succeeded), 2);
        assert_eq!(count(TaskOutcome::failed), 1);
        assert_eq!(count(TaskOutcome::cancelled), 1);
        let succeeded = metrics.task_duration.get_or_create(&TaskLabels {
            kind: "http".into(),
            outcome: TaskOutcome::succeeded,
        });
        assert_eq!(succeeded.count(), 2);
        assert!((succeeded.sum() - 0.6).abs() < 1e-9);
    }
}
