//! The orchestrator's [`RunEffects`]: what a run actor's actions do to storage, the bus, the
//! run's watchers and the other runs.

use std::sync::Arc;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tracing::{debug, error, warn};

use super::Engine;
use crate::effects::RunEffects;
use crate::error::Result;
use crate::evaluation::Evaluator;
use crate::state::{ParentRef, RunEvent, RunState, RunStatus, TaskSpec};
use crate::store::Created;

impl RunEffects for Arc<Engine> {
    fn persist(
        &self,
        state: &RunState,
        events: Vec<RunEvent>,
    ) -> BoxFuture<'static, Result<Vec<RunEvent>>> {
        // Written before the events' commit, and made durable with it.
        if let Err(err) = self.track_approvals(state, &events) {
            warn!(run_id = %state.run_id, error = %err, "cannot update the pending approvals");
        }
        let status_changed = events.iter().any(|e| e.kind.changes_run_status());
        let summary = status_changed.then(|| self.summary(state));
        let store = self.store.clone();
        let run_id = state.run_id.clone();
        async move {
            store
                .append(&run_id, &events, summary.as_ref())
                .await
                .map(|()| events)
        }
        .boxed()
    }

    fn create(
        &self,
        state: &RunState,
        events: Vec<RunEvent>,
    ) -> BoxFuture<'static, Result<(Created, Vec<RunEvent>)>> {
        if let Err(err) = self.track_approvals(state, &events) {
            warn!(run_id = %state.run_id, error = %err, "cannot update the pending approvals");
        }
        let summary = self.summary(state);
        let store = self.store.clone();
        async move {
            let created = store.create_run(&summary, &events).await?;
            if let Created::Existing(_) = created {
                // Nothing of this run was recorded: neither are the approvals it would wait for.
                for event in &events {
                    if let crate::state::EventKind::ApprovalRequested { step, .. } = &event.kind {
                        store.remove_approval(&summary.run_id, step)?;
                    }
                }
            }
            Ok((created, events))
        }
        .boxed()
    }

    fn persisted(&self, state: &RunState, events: Vec<RunEvent>) {
        self.metrics.record(state, &events);
        self.publish(&state.run_id, events);
    }

    fn dispatch(&self, state: &RunState, specs: Vec<TaskSpec>) -> BoxFuture<'static, ()> {
        let tasks: Vec<_> = specs
            .into_iter()
            .map(|spec| {
                let task = self.task(state, spec);
                self.backlog.dispatched(
                    &task.run_id,
                    &task.step_id,
                    task.item,
                    task.attempt,
                    &task.queue,
                );
                task
            })
            .collect();
        let bus = self.bus.clone();
        let run_id = state.run_id.clone();
        // The tasks of one decision (a fan-out, parallel steps) go out in one bus call, in
        // order (one run's tasks share a partition).
        async move {
            let spans: Vec<_> = tasks.iter().map(crate::spans::Dispatching::start).collect();
            let steps: Vec<_> = tasks.iter().map(|task| task.step_id.clone()).collect();
            let outcomes = bus.dispatch_all(tasks).await;
            for ((step, span), outcome) in steps.into_iter().zip(spans).zip(outcomes) {
                if let Some(span) = span {
                    span.end(outcome.as_ref().err().map(|e| e as _));
                }
                if let Err(err) = outcome {
                    // The attempt's deadline retries it.
                    error!(run_id = %run_id, step = %step, error = %err, "dispatch failed");
                }
            }
        }
        .boxed()
    }

    fn start_child(&self, state: &RunState, spec: TaskSpec) {
        // A subflow runs in its parent's namespace.
        let namespace = rpaflow_core::namespace::of(&state.flow.name).to_owned();
        tokio::spawn(crate::subflow::start_child(
            self.clone(),
            namespace,
            state.run_id.clone(),
            spec,
        ));
    }

    fn cancel_workers(&self, state: &RunState) {
        let bus = self.bus.clone();
        let run_id = state.run_id.clone();
        // Not tied to the actor, which may stop right after.
        tokio::spawn(async move {
            if let Err(err) = bus.cancel_run(&run_id).await {
                warn!(run_id = %run_id, error = %err, "cannot tell workers to cancel");
            }
        });
    }

    fn cancel_children(&self, state: &RunState) {
        tokio::spawn(crate::subflow::cancel_children(self.clone(), state.clone()));
    }

    fn notify_parent(&self, state: &RunState, parent: &ParentRef) {
        crate::subflow::notify_parent(self, parent, state);
    }

    fn finished(&self, state: &RunState, status: RunStatus) {
        crate::spans::run_finished(state, status);
        debug!(run_id = %state.run_id, status = status.name(), "run finished");
        self.forget(&state.run_id);
    }

    fn abandoned(&self, run_id: &str) {
        self.forget(run_id);
    }

    fn rest(&self, state: &RunState) -> bool {
        Engine::rest(self, state)
    }

    fn evaluator(&self) -> &Evaluator {
        &self.evaluator
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}
