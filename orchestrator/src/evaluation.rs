//! Expression and template evaluation away from the threads that must stay responsive.
//!
//! Deciding what a run does next may evaluate `if`, `for_each`, `until`, `with` and `outputs`.
//! Every evaluation has a fuel budget (`docs/limits.md`), but a budgeted one can still take a
//! good part of a second over large data. Run actors share a few arbiter threads and gRPC
//! handlers share the tokio workers, so such work runs here: on tokio's blocking threads, at
//! most `orchestrator.eval_threads` at once, while the caller awaits its result.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::state::RunState;

/// The fuel a decision may use on the caller's thread, all its evaluations together: a
/// millisecond or two of work (`docs/limits.md`).
pub(crate) const INLINE_FUEL: u64 = 4_000;

/// The data a run (its inputs, its outputs and the input being decided) may hold for its
/// decisions to be tried on the caller's thread: operations that MiniJinja charges per item
/// rather than per byte (comparing and sorting strings) cost more with large values.
pub(crate) const INLINE_DATA_BYTES: usize = 64 << 10;

/// A bounded share of tokio's blocking threads for evaluations.
#[derive(Debug, Clone)]
pub(crate) struct Evaluator {
    permits: Arc<Semaphore>,
}

impl Evaluator {
    /// At most `threads` evaluations at once (0: one per CPU).
    pub(crate) fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, usize::from)
        } else {
            threads
        };
        Self {
            permits: Arc::new(Semaphore::new(threads)),
        }
    }

    /// Runs `work` on a blocking thread once one of the permits is free. Callable from any
    /// tokio runtime, the actix arbiters' included.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("the evaluation pool is closed".into()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::Internal(format!("an evaluation failed: {e}")))
    }

    /// Applies `decide` to a run's state: at once when its flow evaluates no expression or
    /// when [`Evaluator::try_here`] manages, else on the pool, the state travelling there and
    /// back. `extra_bytes`: what the data the decision reads besides the state takes in memory.
    pub(crate) async fn decide<T, F>(
        &self,
        mut state: RunState,
        extra_bytes: usize,
        decide: F,
    ) -> Result<(RunState, T)>
    where
        T: Send + 'static,
        F: Fn(&mut RunState) -> T + Send + 'static,
    {
        if let Some(decided) = Self::try_here(&mut state, extra_bytes, &decide) {
            return Ok((state, decided));
        }
        self.run(move || {
            let decided = decide(&mut state);
            (state, decided)
        })
        .await
    }

    /// Applies `decide` on this thread when that is sure to be quick: always when the run's
    /// flow evaluates no expression; when it does, only for a run whose data (inputs, outputs
    /// and `extra_bytes`) is within [`INLINE_DATA_BYTES`], and only when its evaluations fit
    /// in [`INLINE_FUEL`]. Otherwise the state is left as it was and the answer is `None`.
    pub(crate) fn try_here<T>(
        state: &mut RunState,
        extra_bytes: usize,
        decide: impl FnOnce(&mut RunState) -> T,
    ) -> Option<T> {
        if !state.evaluates_expressions {
            return Some(decide(state));
        }
        let held = state
            .input_memory_bytes
            .saturating_add(state.output_memory_bytes)
            .saturating_add(extra_bytes);
        if held > INLINE_DATA_BYTES {
            return None;
        }
        let backup = state.clone();
        let (decided, exceeded) = rpaflow_core::expr::with_allowance(INLINE_FUEL, || decide(state));
        if exceeded {
            *state = backup;
            return None;
        }
        Some(decided)
    }
}

#[cfg(test)]
mod tests {
    use rpaflow_core::flow;
    use serde_json::json;

    use super::*;

    fn started(src: &str, inputs: serde_json::Value) -> RunState {
        let flow = Arc::new(flow::parse("test.yaml", src).unwrap_or_else(|e| panic!("{e}")));
        let inputs = flow
            .resolve_inputs(&inputs.as_object().cloned().unwrap_or_default())
            .unwrap();
        let mut state = RunState::new("run-1", flow, 1);
        let events = state.start(inputs, String::new(), None, None, 0);
        assert!(!events.is_empty());
        state
    }

    const TWO_STEPS: &str = "name: t\ninputs:\n  n: { type: integer, default: 1 }\n  text: { type: string, default: x }\nsteps:\n  - { id: a, uses: echo }\n  - { id: b, uses: echo, needs: a, with: { v: \"WITH\" } }\n";

    fn result_of_a() -> crate::state::Input {
        crate::state::Input::Result {
            step: "a".into(),
            item: None,
            attempt: 1,
            outcome: Ok(json!({"ok": true})),
        }
    }

    #[test]
    fn a_cheap_decision_of_a_small_run_is_made_here() {
        let mut state = started(&TWO_STEPS.replace("WITH", "{{ inputs.n + 1 }}"), json!({}));
        let events = Evaluator::try_here(&mut state, 0, |s| s.handle(result_of_a(), 1))
            .expect("decided here")
            .unwrap();
        assert!(events.len() >= 2, "{events:?}");
    }

    #[test]
    fn a_costly_decision_is_not_made_here_and_leaves_the_state_as_it_was() {
        let slow = "{% for a in range(300) %}{% for b in range(300) %}{% endfor %}{% endfor %}";
        let mut state = started(&TWO_STEPS.replace("WITH", slow), json!({}));
        let before = state.clone();
        assert!(Evaluator::try_here(&mut state, 0, |s| s.handle(result_of_a(), 1)).is_none());
        assert_eq!(state, before);
    }

    #[test]
    fn a_run_with_much_data_is_never_decided_here() {
        let text = "x".repeat(INLINE_DATA_BYTES);
        let mut state = started(
            &TWO_STEPS.replace("WITH", "{{ inputs.n }}"),
            json!({ "text": text }),
        );
        assert!(Evaluator::try_here(&mut state, 0, |s| s.handle(result_of_a(), 1)).is_none());
        let mut small = started(&TWO_STEPS.replace("WITH", "{{ inputs.n }}"), json!({}));
        assert!(
            Evaluator::try_here(&mut small, INLINE_DATA_BYTES + 1, |s| s
                .handle(result_of_a(), 1))
            .is_none()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn slow_work_leaves_the_calling_thread_free() {
        let evaluator = Evaluator::new(1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let slow = tokio::spawn({
            let evaluator = evaluator.clone();
            async move { evaluator.run(move || rx.recv().is_ok()).await }
        });
        // The current-thread runtime still runs other tasks while the work waits.
        let answered = tokio::spawn(async { 42 }).await.unwrap();
        assert_eq!(answered, 42);
        tx.send(()).unwrap();
        assert!(slow.await.unwrap().unwrap());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn at_most_the_permitted_evaluations_run_at_once() {
        let evaluator = Evaluator::new(2);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let jobs = (0..8).map(|_| {
            let (running, most) = (running.clone(), most.clone());
            evaluator.run(move || {
                use std::sync::atomic::Ordering::SeqCst;
                let now = running.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                running.fetch_sub(1, SeqCst);
            })
        });
        for outcome in futures::future::join_all(jobs).await {
            outcome.unwrap();
        }
        assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    }
}
