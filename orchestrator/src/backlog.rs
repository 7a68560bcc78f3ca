//! Tasks dispatched and not yet answered, counted per queue, for admission (which decides in
//! one place, `Shared::admit`).
//!
//! When a queue's workers fall behind (or are gone), its backlog grows; past
//! `max_in_flight_per_queue` the orchestrator refuses new runs that use the queue, and past
//! `max_active_runs` any new run, with `RESOURCE_EXHAUSTED`, instead of growing without limit.
//! Runs already started go on: their next steps are dispatched even over the limit, so a run
//! never stalls half-way because others were admitted.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

type StepKey = (String, Option<u32>);

#[derive(Debug, Default)]
pub(crate) struct Backlog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per run: the unanswered attempt of each step/item, and its queue.
    runs: HashMap<String, HashMap<StepKey, (u32, String)>>,
    per_queue: HashMap<String, usize>,
}

impl Inner {
    fn release(&mut self, queue: &str) {
        if let Some(n) = self.per_queue.get_mut(queue) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Backlog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A task went out; a newer attempt of the same step replaces the older one.
    pub(crate) fn dispatched(
        &self,
        run_id: &str,
        step: &str,
        item: Option<u32>,
        attempt: u32,
        queue: &str,
    ) {
        let mut inner = self.lock();
        let previous = inner
            .runs
            .entry(run_id.to_owned())
            .or_default()
            .insert((step.to_owned(), item), (attempt, queue.to_owned()));
        if let Some((_, old_queue)) = previous {
            inner.release(&old_queue);
        }
        *inner.per_queue.entry(queue.to_owned()).or_default() += 1;
    }

    /// A result for the attempt arrived (stale attempts change nothing).
    pub(crate) fn answered(&self, run_id: &str, step: &str, item: Option<u32>, attempt: u32) {
        let mut inner = self.lock();
        let Some(steps) = inner.runs.get_mut(run_id) else {
            return;
        };
        let key = (step.to_owned(), item);
        if steps.get(&key).is_some_and(|(a, _)| *a == attempt)
            && let Some((_, queue)) = steps.remove(&key)
        {
            if steps.is_empty() {
                inner.runs.remove(run_id);
            }
            inner.release(&queue);
        }
    }

    /// The run left memory (finished or cancelled): nothing of it is waited for any more.
    pub(crate) fn run_ended(&self, run_id: &str) {
        let mut inner = self.lock();
        if let Some(steps) = inner.runs.remove(run_id) {
            for (_, queue) in steps.into_values() {
                inner.release(&queue);
            }
        }
    }

    /// Tasks of `queue` in flight.
    pub(crate) fn in_flight(&self, queue: &str) -> usize {
        self.lock().per_queue.get(queue).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_unanswered_attempts_per_queue() {
        let backlog = Backlog::default();
        backlog.dispatched("r1", "a", None, 1, "web");
        backlog.dispatched("r1", "b", Some(0), 1, "web");
        backlog.dispatched("r2", "a", None, 1, "default");
        // Counted at admission and again by the actor: the same attempt counts once.
        backlog.dispatched("r2", "a", None, 1, "default");
        assert_eq!(backlog.in_flight("web"), 2);
        assert_eq!(backlog.in_flight("default"), 1);
        // A stale result changes nothing; the current attempt's result releases.
        backlog.answered("r1", "a", None, 7);
        assert_eq!(backlog.in_flight("web"), 2);
        backlog.answered("r1", "a", None, 1);
        assert_eq!(backlog.in_flight("web"), 1);
        // A retry replaces the attempt rather than adding one.
        backlog.dispatched("r1", "b", Some(0), 2, "web");
        assert_eq!(backlog.in_flight("web"), 1);
        backlog.answered("r1", "b", Some(0), 1);
        assert_eq!(
            backlog.in_flight("web"),
            1,
            "attempt 1 is no longer awaited"
        );
        backlog.run_ended("r1");
        backlog.run_ended("r2");
        assert_eq!(backlog.in_flight("web"), 0);
        assert_eq!(backlog.in_flight("default"), 0);
    }
}
