//! Tasks dispatched and not yet answered, counted per queue, for admission (which decides in
//! one place, `Engine::admit`).
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
    /// Per run: the unanswered attempt of each step/item, its queue and when it went out.
    runs: HashMap<String, HashMap<StepKey, Dispatched>>,
    per_queue: HashMap<String, usize>,
}

#[derive(Debug)]
struct Dispatched {
    attempt: u32,
    queue: String,
    at_ms: i64,
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
        let at_ms = rpaflow_core::time::now_ms();
        let mut inner = self.lock();
        let previous = inner.runs.entry(run_id.to_owned()).or_default().insert(
            (step.to_owned(), item),
            Dispatched {
                attempt,
                queue: queue.to_owned(),
                at_ms,
            },
        );
        if let Some(old) = previous {
            inner.release(&old.queue);
        }
        *inner.per_queue.entry(queue.to_owned()).or_default() += 1;
    }

    /// A result for the attempt arrived (stale attempts change nothing); returns the attempt's
    /// queue and when it was (last) dispatched.
    pub(crate) fn answered(
        &self,
        run_id: &str,
        step: &str,
        item: Option<u32>,
        attempt: u32,
    ) -> Option<(String, i64)> {
        let mut inner = self.lock();
        let steps = inner.runs.get_mut(run_id)?;
        let key = (step.to_owned(), item);
        if steps.get(&key).is_some_and(|d| d.attempt == attempt)
            && let Some(answered) = steps.remove(&key)
        {
            if steps.is_empty() {
                inner.runs.remove(run_id);
            }
            inner.release(&answered.queue);
            return Some((answered.queue, answered.at_ms));
        }
        None
    }

    /// The run left memory (finished or cancelled): nothing of it is waited for any more.
    pub(crate) fn run_ended(&self, run_id: &str) {
        let mut inner = self.lock();
        if let Some(steps) = inner.runs.remove(run_id) {
            for dispatched in steps.into_values() {
                inner.release(&dispatched.queue);
            }
        }
    }

    /// Tasks in flight per queue (queues seen since the start, with 0 once drained).
    pub(crate) fn per_queue(&self) -> Vec<(String, usize)> {
        let inner = self.lock();
        inner
            .per_queue
            .iter()
            .map(|(queue, n)| (queue.clone(), *n))
            .collect()
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
        assert_eq!(backlog.answered("r1", "a", None, 7), None);
        assert_eq!(backlog.in_flight("web"), 2);
        let (queue, at_ms) = backlog.answered("r1", "a", None, 1).expect("awaited");
        assert_eq!(queue, "web");
        assert!(at_ms > 0);
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
        let mut queues = backlog.per_queue();
        queues.sort();
        assert_eq!(queues, [("default".to_owned(), 0), ("web".to_owned(), 0)]);
        assert_eq!(backlog.in_flight("web"), 0);
        assert_eq!(backlog.in_flight("default"), 0);
    }
}
