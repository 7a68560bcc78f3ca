//! Tests of the run state machine: behaviour, and replay equivalence as a property.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use rpaflow_core::flow::{self, Flow};
use serde_json::{Value as Json, json};

use super::*;

/// The events after a round trip through their stored form (JSON), as recovery reads them.
fn stored(events: &[RunEvent]) -> Vec<RunEvent> {
    events
        .iter()
        .map(|e| {
            let json = serde_json::to_vec(e).unwrap();
            serde_json::from_slice(&json).unwrap_or_else(|err| {
                panic!(
                    "event does not read back ({err}): {}",
                    String::from_utf8_lossy(&json)
                )
            })
        })
        .collect()
}

fn flow(src: &str) -> Arc<Flow> {
    Arc::new(flow::parse("test.yaml", src).unwrap_or_else(|e| panic!("{e}")))
}

/// A run under test: the live state, every event so far, and the actions still to perform.
struct Sim {
    state: RunState,
    events: Vec<RunEvent>,
    actions: Vec<Action>,
    now: i64,
}

impl Sim {
    fn start(flow: Arc<Flow>, inputs: Json) -> Self {
        Self::start_as(flow, inputs, None)
    }

    /// A run started with the key `key-1`, queued for `queued` when it is set.
    fn start_as(flow: Arc<Flow>, inputs: Json, queued: Option<&str>) -> Self {
        let mut state = RunState::new("run-1", flow, 1);
        let events = state.start(
            inputs,
            "key-1".into(),
            None,
            queued.map(str::to_owned),
            1_000,
        );
        let actions = state.actions_for(&events);
        let sim = Self {
            state,
            events,
            actions,
            now: 1_000,
        };
        sim.check_replay();
        sim
    }

    fn handle(&mut self, input: Input) -> Result<Vec<RunEvent>, Rejection> {
        let events = self.state.handle(input, self.now)?;
        self.actions.extend(self.state.actions_for(&events));
        self.events.extend(events.iter().cloned());
        self.check_replay();
        Ok(events)
    }

    fn check_replay(&self) {
        let rebuilt = RunState::replay(
            &self.state.run_id,
            self.state.flow.clone(),
            1,
            &stored(&self.events),
        );
        assert_eq!(
            rebuilt, self.state,
            "replayed state differs from the live one"
        );
    }

    /// Dispatches handed out and not yet answered here, oldest first.
    fn take_dispatches(&mut self) -> Vec<TaskSpec> {
        let mut out = Vec::new();
        self.actions.retain(|a| match a {
            Action::Dispatch(spec) | Action::StartChild(spec) => {
                out.push(spec.clone());
                false
            }
            _ => true,
        });
        out
    }

    fn succeed(&mut self, spec: &TaskSpec, output: Json) {
        self.handle(Input::Result {
            step: spec.step.clone(),
            item: spec.item,
            attempt: spec.attempt,
            outcome: Ok(output),
        })
        .unwrap();
    }

    fn fail(&mut self, spec: &TaskSpec, code: &str, retryable: bool) {
        let outcome = Err(ErrorInfo::new(code, "it broke", retryable));
        self.handle(Input::Result {
            step: spec.step.clone(),
            item: spec.item,
            attempt: spec.attempt,
            outcome,
        })
        .unwrap();
    }

    /// Advances the clock to the earliest timer and fires it.
    fn fire_next_timer(&mut self) -> bool {
        let next = self
            .actions
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Action::SetTimer { at_ms, .. } => Some((*at_ms, i)),
                _ => None,
            })
            .min();
        let Some((at, i)) = next else { return false };
        let Action::SetTimer { timer, .. } = self.actions.remove(i) else {
            return false;
        };
        self.now = self.now.max(at);
        self.handle(Input::Timer(timer)).unwrap();
        true
    }

    fn finished(&self) -> Option<RunStatus> {
        self.actions.iter().find_map(|a| match a {
            Action::Finished(s) => Some(*s),
            _ => None,
        })
    }

    /// The run after a crash now: rebuilt from its stored events and recovered as the
    /// orchestrator recovers it (redispatches, then the timers it re-arms).
    fn recover(&self) -> Self {
        let mut state = RunState::replay(
            &self.state.run_id,
            self.state.flow.clone(),
            1,
            &stored(&self.events),
        );
        let recovered = state.handle(Input::Recover, self.now).unwrap_or_default();
        let mut actions = state.actions_for(&recovered);
        actions.extend(state.pending_timers());
        let mut events = self.events.clone();
        events.extend(recovered);
        Self {
            state,
            events,
            actions,
            now: self.now,
        }
    }

    /// The attempts the state has out with workers.
    fn in_flight(&self) -> BTreeSet<Attempt> {
        let mut out = BTreeSet::new();
        for (def, st) in self.state.flow.steps.iter().zip(&self.state.steps) {
            for (i, unit) in st.units.iter().enumerate() {
                if matches!(unit.status, UnitStatus::Dispatched { .. }) {
                    let item = st.items.as_ref().map(|_| i as u32);
                    out.insert((def.id.clone(), item, unit.attempt));
                }
            }
        }
        out
    }

    /// The dispatches waiting in `actions`.
    fn dispatching(&self) -> BTreeSet<Attempt> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Dispatch(spec) | Action::StartChild(spec) => {
                    Some((spec.step.clone(), spec.item, spec.attempt))
                }
                _ => None,
            })
            .collect()
    }

    /// The retry timers armed and not fired.
    fn retry_timers(&self) -> BTreeSet<(i64, Attempt)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::SetTimer {
                    at_ms,
                    timer:
                        Timer::RetryDue {
                            step,
                            item,
                            attempt,
                        },
                } => Some((*at_ms, (step.clone(), *item, *attempt))),
                _ => None,
            })
            .collect()
    }

    /// Every attempt ever handed to a worker.
    fn ever_dispatched(&self) -> BTreeSet<Attempt> {
        self.events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::TaskDispatched {
                    step,
                    item,
                    attempt,
                    ..
                } => Some((step.clone(), *item, *attempt)),
                _ => None,
            })
            .collect()
    }

    /// Answers every dispatch with success and fires every timer until the run ends.
    fn run_to_end(&mut self) {
        let mut out = self.take_dispatches();
        for _ in 0..500 {
            out.extend(self.take_dispatches());
            if let Some(spec) = out.pop() {
                self.succeed(&spec, json!("ok"));
            } else if !self.fire_next_timer() {
                break;
            }
        }
    }
}

/// A step attempt: step, item, attempt.
type Attempt = (String, Option<u32>, u32);

/// A run that starts queued: nothing is dispatched until `Dequeue`.
fn start_queued(src: &str) -> Sim {
    Sim::start_as(flow(src), json!({}), Some("2 runs active"))
}

#[test]
fn a_queued_run_waits_for_its_place_then_runs() {
    let src = "name: t\nsteps:\n  - { id: a, uses: echo }\n  - { id: b, uses: approval }\n";
    let mut sim = start_queued(src);
    assert_eq!(sim.state.status, RunStatus::Queued);
    assert_eq!(sim.state.idempotency_key, "key-1");
    assert!(sim.actions.is_empty(), "{:?}", sim.actions);
    assert!(!sim.state.status.is_finished());
    // Nothing of a queued run answers people or recovery yet.
    assert_eq!(
        sim.handle(Input::Signal {
            step: "b".into(),
            approve: true,
            comment: String::new(),
            by: String::new(),
            role: String::new(),
        }),
        Err(Rejection::NotRunning("queued"))
    );
    assert_eq!(sim.handle(Input::Recover), Ok(Vec::new()));
    assert!(sim.take_dispatches().is_empty());

    sim.now = 4_000;
    let events = sim.handle(Input::Dequeue).unwrap();
    assert_eq!(events[0].kind, EventKind::RunDequeued { waited_ms: 3_000 });
    assert_eq!(sim.state.status, RunStatus::Running);
    let dispatched = sim.take_dispatches();
    assert_eq!(dispatched.len(), 1);
    assert_eq!(dispatched[0].step, "a");
    assert_eq!(
        sim.handle(Input::Dequeue),
        Err(Rejection::NotQueued("running"))
    );
}

#[test]
fn first_events_keep_their_stored_form() {
    // Written by earlier versions: must still read back.
    let stored = r#"{"seq":1,"at_ms":5,"type":"run_started","flow":"f","version":2,"inputs":{"a":1},"idempotency_key":"k","trigger":"webhook:w"}"#;
    let event: RunEvent = serde_json::from_str(stored).unwrap();
    let EventKind::RunStarted(start) = &event.kind else {
        panic!("{event:?}")
    };
    assert_eq!((start.flow.as_str(), start.version), ("f", 2));
    assert_eq!(start.inputs, json!({"a": 1}));
    assert_eq!(start.trigger, "webhook:w");
    assert_eq!(serde_json::to_string(&event).unwrap(), stored);
    let queued = r#"{"seq":1,"at_ms":5,"type":"run_queued","flow":"f","version":2,"inputs":{},"idempotency_key":"","reason":"2 runs active"}"#;
    let event: RunEvent = serde_json::from_str(queued).unwrap();
    assert!(
        matches!(&event.kind, EventKind::RunQueued { start, reason } if start.flow == "f" && reason == "2 runs active"),
        "{event:?}"
    );
    assert_eq!(serde_json::to_string(&event).unwrap(), queued);
}

#[test]
fn a_queued_run_can_be_cancelled() {
    let mut sim = start_queued("name: t\nsteps: [{ id: a, uses: echo }]\n");
    sim.handle(Input::Cancel {
        reason: "not needed".into(),
    })
    .unwrap();
    assert_eq!(sim.state.status, RunStatus::Cancelled);
    assert_eq!(sim.finished(), Some(RunStatus::Cancelled));
    assert!(sim.take_dispatches().is_empty());
    assert_eq!(
        sim.handle(Input::Dequeue),
        Err(Rejection::NotQueued("cancelled"))
    );
}

#[test]
fn steps_run_in_order_and_templates_see_earlier_outputs() {
    let f = flow(
        "name: t
inputs: { who: { type: string, default: world } }
steps:
  - { id: a, uses: echo, with: { greeting: 'hello {{ inputs.who }}' } }
  - { id: b, uses: echo, needs: a, with: { got: '{{ steps.a.output.greeting }}', n: '{{ 1 + 1 }}' } }
outputs: { final: '{{ steps.b.output }}' }
",
    );
    let mut sim = Sim::start(f, json!({"who": "Ada"}));
    let first = sim.take_dispatches();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].input, json!({"greeting": "hello Ada"}));
    sim.succeed(&first[0], first[0].input.clone());
    let second = sim.take_dispatches();
    assert_eq!(second[0].step, "b");
    assert_eq!(second[0].input, json!({"got": "hello Ada", "n": 2}));
    sim.succeed(&second[0], json!({"ok": true}));
    assert_eq!(sim.finished(), Some(RunStatus::Succeeded));
    assert_eq!(sim.state.outputs, Some(json!({"final": {"ok": true}})));
}

#[test]
fn duplicate_and_stale_results_are_ignored() {
    let f = flow(
        "name: t\nsteps:\n  - { id: a, uses: echo, retry: { max_attempts: 3, delay: 1s } }\n  - { id: b, uses: echo, needs: a }\n",
    );
    let mut sim = Sim::start(f, json!({}));
    let a1 = sim.take_dispatches().remove(0);
    sim.fail(&a1, "boom", true);
    // The failed attempt answers again: stale.
    assert!(
        sim.handle(Input::Result {
            step: "a".into(),
            item: None,
            attempt: 1,
            outcome: Ok(json!(1))
        })
        .unwrap()
        .is_empty()
    );
    assert!(sim.fire_next_timer());
    let a2 = sim.take_dispatches().remove(0);
    assert_eq!(a2.attempt, 2);
    sim.succeed(&a2, json!("first"));
    // The same attempt answers twice: the second is a duplicate.
    let dup = sim
        .handle(Input::Result {
            step: "a".into(),
            item: None,
            attempt: 2,
            outcome: Ok(json!("second")),
        })
        .unwrap();
    assert!(dup.is_empty());
    assert_eq!(
        sim.state.step_state("a").unwrap().output,
        Some(json!("first"))
    );
    assert_eq!(sim.take_dispatches().len(), 1, "b dispatched exactly once");
}

#[test]
fn retries_wait_for_their_backoff_and_give_up_after_max_attempts() {
    let f = flow(
        "name: t\nsteps:\n  - { id: a, uses: http, retry: { max_attempts: 3, delay: 2s, backoff: exponential } }\n",
    );
    let mut sim = Sim::start(f, json!({}));
    let a1 = sim.take_dispatches().remove(0);
    sim.fail(&a1, "http_status", true);
    let retry_at = sim.actions.iter().find_map(|a| match a {
        Action::SetTimer {
            at_ms,
            timer: Timer::RetryDue { .. },
        } => Some(*at_ms),
        _ => None,
    });
    assert_eq!(retry_at, Some(sim.now + 2_000));
    // A retry timer that fires early does nothing.
    let early = sim
        .handle(Input::Timer(Timer::RetryDue {
            step: "a".into(),
            item: None,
            attempt: 1,
        }))
        .unwrap();
    assert!(early.is_empty());
    assert!(sim.fire_next_timer());
    let a2 = sim.take_dispatches().remove(0);
    sim.fail(&a2, "http_status", true);
    let retry_at = sim.actions.iter().find_map(|a| match a {
        Action::SetTimer {
            at_ms,
            timer: Timer::RetryDue { attempt: 2, .. },
        } => Some(*at_ms),
        _ => None,
    });
    assert_eq!(
        retry_at,
        Some(sim.now + 4_000),
        "exponential backoff doubles"
    );
    while sim.take_dispatches().is_empty() && sim.fire_next_timer() {}
    let a3 = sim.state.step_state("a").unwrap().attempt();
    assert_eq!(a3, 3);
    sim.fail(
        &TaskSpec {
            step: "a".into(),
            item: None,
            attempt: 3,
            kind: "http".into(),
            queue: "default".into(),
            input: json!({}),
            timeout: Duration::from_secs(1),
        },
        "http_status",
        true,
    );
    assert_eq!(sim.finished(), Some(RunStatus::Failed));
    assert_eq!(sim.state.error.as_ref().unwrap().code, "http_status");
}

use std::time::Duration;

#[test]
fn a_step_without_result_times_out_and_is_retried() {
    let f = flow(
        "name: t\nsteps:\n  - { id: a, uses: sleep, timeout: 5s, retry: { max_attempts: 2, delay: 1s, on: [timeout] } }\n",
    );
    let mut sim = Sim::start(f, json!({}));
    let a1 = sim.take_dispatches().remove(0);
    assert!(sim.fire_next_timer()); // the deadline
    assert_eq!(sim.now, 1_000 + 5_000);
    assert!(sim.fire_next_timer()); // the retry
    let a2 = sim.take_dispatches().remove(0);
    assert_eq!(a2.attempt, 2);
    // The first attempt's late answer is ignored.
    sim.succeed(&a1, json!("late"));
    assert_eq!(sim.finished(), None);
    sim.succeed(&a2, json!("on time"));
    assert_eq!(sim.finished(), Some(RunStatus::Succeeded));
}

#[test]
fn for_each_respects_concurrency_and_keeps_item_order() {
    let f = flow(
        "name: t\nsteps:\n  - id: each\n    uses: echo\n    for_each: { items: '[10, 20, 30, 40, 50]', concurrency: 2 }\n    with: { n: '{{ item * 2 }}', i: '{{ index }}' }\n",
    );
    let mut sim = Sim::start(f, json!({}));
    let first = sim.take_dispatches();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].input, json!({"n": 20, "i": 0}));
    // Answer out of order.
    sim.succeed(&first[1], json!(1));
    let next = sim.take_dispatches();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].item, Some(2));
    sim.succeed(&first[0], json!(0));
    let mut pending = sim.take_dispatches();
    pending.extend(next);
    while let Some(spec) = pending.pop() {
        let i = spec.item.unwrap();
        sim.succeed(&spec, json!(i));
        pending.extend(sim.take_dispatches());
    }
    assert_eq!(sim.finished(), Some(RunStatus::Succeeded));
    assert_eq!(
        sim.state.step_state("each").unwrap().output,
        Some(json!([0, 1, 2, 3, 4]))
    );
}

#[test]
fn a_false_if_skips_the_step_and_dependents_still_run() {
    let f = flow(
        "name: t\ninputs: { big: { type: boolean, default: false } }\nsteps:\n  - { id: check, uses: echo, if: inputs.big }\n  - { id: after, uses: echo, needs: check, with: { s: '{{ steps.check.status }}' } }\n",
    );
    let mut sim = Sim::start(f, json!({"big": false}));
    assert_eq!(
        sim.state.step_state("check").unwrap().status,
        StepStatus::Skipped
    );
    let after = sim.take_dispatches().remove(0);
    assert_eq!(after.input, json!({"s": "skipped"}));
}

/// The outcome events a run recorded.
fn outcomes(sim: &Sim) -> Vec<&'static str> {
    sim.events
        .iter()
        .filter(|e| e.kind.is_outcome())
        .map(|e| e.kind.name())
        .collect()
}

#[test]
fn a_failing_for_each_on_a_last_step_fails_the_run_once() {
    let f = flow(
        "name: t\ninputs: { n: { type: integer, default: 0 } }\nsteps:\n  - { id: first, uses: echo }\n  - { id: fan, uses: echo, needs: first, for_each: { items: 'range(10 // inputs.n)' } }\n",
    );
    let mut sim = Sim::start(f, json!({"n": 0}));
    let first = sim.take_dispatches().remove(0);
    sim.succeed(&first, json!({}));
    assert_eq!(outcomes(&sim), ["run_failed"]);
    assert_eq!(sim.state.status, RunStatus::Failed);
    assert_eq!(sim.state.failed_step.as_deref(), Some("fan"));
    let finished: Vec<_> = sim
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Finished(_)))
        .collect();
    assert_eq!(finished, [&Action::Finished(RunStatus::Failed)]);
}

#[test]
fn a_failing_if_on_the_only_step_fails_the_run_once() {
    let f = flow("name: t\nsteps:\n  - { id: only, uses: echo, if: '[1, 2][7] > 0' }\n");
    let sim = Sim::start(f, json!({}));
    assert_eq!(outcomes(&sim), ["run_failed"]);
    assert_eq!(sim.finished(), Some(RunStatus::Failed));
}

#[test]
fn a_failing_with_template_on_a_leaf_step_fails_the_run_once() {
    let f = flow(
        "name: t\nsteps:\n  - { id: a, uses: echo }\n  - { id: leaf, uses: echo, needs: a, with: { x: '{{ 7 // steps.a.output.zero }}' } }\n  - { id: other, uses: echo, needs: a }\n",
    );
    let mut sim = Sim::start(f, json!({}));
    let a = sim.take_dispatches().remove(0);
    sim.succeed(&a, json!({"zero": 0}));
    let other = sim.take_dispatches();
    for spec in &other {
        sim.succeed(spec, json!({}));
    }
    assert_eq!(outcomes(&sim), ["run_failed"]);
    assert_eq!(sim.state.failed_step.as_deref(), Some("leaf"));
}

#[test]
fn a_failing_if_under_continue_lets_the_run_succeed_once() {
    let f = flow(
        "name: t\nsteps:\n  - { id: a, uses: echo }\n  - { id: b, uses: echo, needs: a, if: '(3 // 0) > 1', on_failure: continue }\n",
    );
    let mut sim = Sim::start(f, json!({}));
    let a = sim.take_dispatches().remove(0);
    sim.succeed(&a, json!({}));
    assert_eq!(outcomes(&sim), ["run_succeeded"]);
    assert_eq!(
        sim.state.step_state("b").unwrap().status,
        StepStatus::Failed
    );
}

#[test]
fn a_finished_run_takes_no_second_outcome() {
    let f = flow("name: t\nsteps:\n  - { id: a, uses: echo }\n");
    let mut sim = Sim::start(f, json!({}));
    let a = sim.take_dispatches().remove(0);
    sim.fail(&a, "boom", false);
    assert_eq!(outcomes(&sim), ["run_failed"]);
    // A late duplicate, a stale timer and a cancel change nothing.
    sim.succeed(&a, json!({}));
    while sim.fire_next_timer() {}
    assert!(
        sim.handle(Input::Cancel {
            reason: "late".into()
        })
        .is_err()
    );
    assert_eq!(outcomes(&sim), ["run_failed"]);
    // A retry reopens it; the retried run ends once more.
    sim.handle(Input::Retry).unwrap();
    let a = sim.take_dispatches().remove(0);
    sim.succeed(&a, json!({}));
    assert_eq!(outcomes(&sim), ["run_failed", "run_succeeded"]);
}

#[test]
fn on_failure_continue_and_compensate() {
    let f = flow(
        "name: t\nsteps:\n  - { id: soft, uses: http, on_failure: continue }\n  - { id: hard, uses: http, needs: soft, on_failure: { compensate: undo } }\n  - { id: undo, uses: log, with: { m: 'undo {{ steps.hard.error.code }}' } }\n",
    );
    let mut sim = Sim::start(f, json!({}));
    let soft = sim.take_dispatches().remove(0);
    sim.fail(&soft, "http_status", false);
    assert_eq!(sim.state.status, RunStatus::Running);
    let hard = sim.take_dispatches().remove(0);
    assert_eq!(hard.step, "hard");
    sim.fail(&hard, "http_status", false);
    let undo = sim.take_dispatches().remove(0);
    assert_eq!(undo.input, json!({"m": "undo http_status"}));
    assert_eq!(sim.finished(), None, "the run waits for its compensation");
    sim.succeed(&undo, json!({}));
    assert_eq!(sim.finished(), Some(RunStatus::Failed));
    assert_eq!(sim.state.failed_step.as_deref(), Some("hard"));
}

#[test]
fn approvals_wait_for_a_person() {
    let f = flow(
        "name: t\nsteps:\n  - { id: ok, uses: approval, with: { message: 'refund {{ inputs.amount }}?' } }\n  - { id: pay, uses: echo, needs: ok, if: steps.ok.output.approved }\ninputs: { amount: 500 }\n",
    );
    let mut sim = Sim::start(f, json!({"amount": 500}));
    assert_eq!(
        sim.state.step_state("ok").unwrap().status,
        StepStatus::WaitingApproval
    );
    assert!(sim.take_dispatches().is_empty());
    let wrong = sim.handle(Input::Signal {
        step: "pay".into(),
        approve: true,
        comment: String::new(),
        by: "x".into(),
        role: String::new(),
    });
    assert!(matches!(wrong, Err(Rejection::NotWaiting { .. })));
    sim.handle(Input::Signal {
        step: "ok".into(),
        approve: true,
        comment: "fine".into(),
        by: "ann".into(),
        role: String::new(),
    })
    .unwrap();
    let pay = sim.take_dispatches();
    assert_eq!(pay.len(), 1);
    assert!(
        matches!(&sim.events[1].kind, EventKind::ApprovalRequested { message, deadline_ms: None, .. } if message == "refund 500?")
    );
}

#[test]
fn an_approval_with_approvers_takes_an_answer_only_from_them() {
    let f = flow(
        "name: t\nsteps:\n  - id: ok\n    uses: approval\n    with: { message: 'go?', approvers: { roles: [approver], names: [carol] } }\n",
    );
    let mut sim = Sim::start(f, json!({}));
    let answer = |by: &str, role: &str| Input::Signal {
        step: "ok".into(),
        approve: true,
        comment: String::new(),
        by: by.into(),
        role: role.into(),
    };
    // Neither the role nor the name: refused, saying who may answer; admins are no exception.
    for (by, role) in [
        ("mallory", "admin"),
        ("dave", "operator"),
        ("anonymous", ""),
    ] {
        match sim.handle(answer(by, role)) {
            Err(Rejection::NotAnApprover { step, allowed }) => {
                assert_eq!(step, "ok");
                assert_eq!(allowed, "roles approver; names carol");
            }
            other => panic!("{by} as {role:?}: {other:?}"),
        }
        assert_eq!(
            sim.state.step_state("ok").unwrap().status,
            StepStatus::WaitingApproval
        );
    }
    // A listed name answers whatever its role, and is recorded.
    sim.handle(answer("carol", "viewer")).unwrap();
    assert!(
        sim.events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::ApprovalAnswered { by, .. } if by == "carol"))
    );
    assert_eq!(sim.finished(), Some(RunStatus::Succeeded));

    // A listed role answers under any name.
    let f = flow(
        "name: t\nsteps:\n  - { id: ok, uses: approval, with: { approvers: { roles: [approver] } } }\n",
    );
    let mut sim = Sim::start(f, json!({}));
    sim.handle(answer("alice", "approver")).unwrap();
    assert_eq!(sim.finished(), Some(RunStatus::Succeeded));
}

#[test]
fn cancelled_runs_dispatch_nothing_more() {
    let f =
        flow("name: t\nsteps:\n  - { id: a, uses: echo }\n  - { id: b, uses: echo, needs: a }\n");
    let mut sim = Sim::start(f, json!({}));
    let a = sim.take_dispatches().remove(0);
    sim.handle(Input::Cancel {
        reason: "no longer needed".into(),
    })
    .unwrap();
    assert_eq!(sim.finished(), Some(RunStatus::Cancelled));
    assert!(sim.actions.contains(&Action::CancelWorkers));
    sim.succeed(&a, json!(1));
    assert!(sim.take_dispatches().is_empty());
    assert!(matches!(
        sim.handle(Input::Cancel {
            reason: String::new()
        }),
        Err(Rejection::NotRunning("cancelled"))
    ));
}

#[test]
fn failed_runs_retry_from_the_failed_step_with_new_attempt_numbers() {
    let f =
        flow("name: t\nsteps:\n  - { id: a, uses: echo }\n  - { id: b, uses: http, needs: a }\n");
    let mut sim = Sim::start(f, json!({}));
    let a = sim.take_dispatches().remove(0);
    sim.succeed(&a, json!("kept"));
    let b = sim.take_dispatches().remove(0);
    sim.fail(&b, "http_status", false);
    assert_eq!(sim.state.status, RunStatus::Failed);
    sim.actions.clear();
    sim.handle(Input::Retry).unwrap();
    let again = sim.take_dispatches();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].step, "b");
    assert_eq!(again[0].attempt, 2);
    sim.succeed(&again[0], json!("done"));
    assert_eq!(sim.finished(), Some(RunStatus::Succeeded));
    assert_eq!(
        sim.state.step_state("a").unwrap().output,
        Some(json!("kept"))
    );
}

#[test]
fn recovery_hands_out_unanswered_attempts_again() {
    let f = flow(
        "name: t\nsteps:\n  - id: each\n    uses: echo\n    for_each: { items: '[1, 2, 3]', concurrency: 3 }\n",
    );
    let mut sim = Sim::start(f.clone(), json!({}));
    let first = sim.take_dispatches();
    sim.succeed(&first[0], json!("one"));
    // Crash: rebuild from the events only.
    let mut rebuilt = RunState::replay("run-1", f, 1, &stored(&sim.events));
    let events = rebuilt.handle(Input::Recover, 9_000).unwrap();
    let actions = rebuilt.actions_for(&events);
    let again: Vec<(Option<u32>, u32)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Dispatch(s) => Some((s.item, s.attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(again, vec![(Some(1), 1), (Some(2), 1)]);
}

#[test]
fn until_false_counts_as_a_retryable_failure() {
    let f = flow(
        "name: t\nsteps:\n  - { id: poll, uses: http, until: 'output.done', retry: { max_attempts: 5, delay: 1s, backoff: fixed } }\n",
    );
    let mut sim = Sim::start(f, json!({}));
    let p1 = sim.take_dispatches().remove(0);
    sim.succeed(&p1, json!({"done": false}));
    assert_eq!(
        sim.state.steps[0].units[0].error.as_ref().unwrap().code,
        "until"
    );
    assert!(sim.fire_next_timer());
    let p2 = sim.take_dispatches().remove(0);
    sim.succeed(&p2, json!({"done": true}));
    assert_eq!(sim.finished(), Some(RunStatus::Succeeded));
}

#[test]
fn oversized_inputs_fail_the_step_with_a_clear_error() {
    let f = flow(
        "name: t\ninputs: { blob: { type: string } }\nsteps:\n  - { id: a, uses: echo, with: { b: '{{ inputs.blob }}' } }\n",
    );
    let mut state = RunState::new("r", f, 1);
    state.max_payload_bytes = 100;
    state.start(
        json!({"blob": "x".repeat(200)}),
        String::new(),
        None,
        None,
        0,
    );
    assert_eq!(state.status, RunStatus::Failed);
    let err = state.error.unwrap();
    assert_eq!(err.code, "payload_too_large");
    assert!(
        err.message.contains("over the limit of 100 bytes"),
        "{}",
        err.message
    );
}

// ---- property test: random flows, random event orders, replay at every point ----

#[derive(Debug, Clone)]
struct StepGen {
    needs: Vec<usize>,
    items: Option<u8>,
    attempts: u32,
    continue_on_failure: bool,
    /// 0: none; 1: an `if` that fails; 2: a `for_each` that fails; 3: a `with` that fails;
    /// 4: a false `if`.
    broken: u8,
}

fn flow_strategy() -> impl Strategy<Value = Vec<StepGen>> {
    prop::collection::vec(
        (
            prop::collection::vec(any::<prop::sample::Index>(), 0..3),
            prop::option::of(0u8..4),
            1u32..4,
            any::<bool>(),
            prop_oneof![4 => Just(0u8), 1 => 1u8..5],
        ),
        1..6,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (needs, items, attempts, cont, broken))| StepGen {
                needs: if i == 0 {
                    vec![]
                } else {
                    needs.iter().map(|ix| ix.index(i)).collect()
                },
                items,
                attempts,
                continue_on_failure: cont,
                broken,
            })
            .collect()
    })
}

fn yaml_for(steps: &[StepGen]) -> String {
    let mut y = String::from("name: prop\nsteps:\n");
    for (i, s) in steps.iter().enumerate() {
        y.push_str(&format!("  - id: s{i}\n    uses: echo\n    timeout: 10s\n"));
        let mut needs: Vec<String> = s.needs.iter().map(|n| format!("s{n}")).collect();
        needs.sort();
        needs.dedup();
        if !needs.is_empty() {
            y.push_str(&format!("    needs: [{}]\n", needs.join(", ")));
        }
        match (s.broken, s.items) {
            (2, _) => y.push_str("    for_each: { items: 'range(5 // 0)' }\n"),
            (3, _) => y.push_str("    with: { x: '{{ 1 // 0 }}' }\n"),
            (_, Some(n)) => y.push_str(&format!("    for_each: {{ items: 'range({n})', concurrency: 2 }}\n    with: {{ x: '{{{{ item }}}}' }}\n")),
            _ => {}
        }
        match s.broken {
            1 => y.push_str("    if: '(1 // 0) > 0'\n"),
            4 => y.push_str("    if: '1 > 2'\n"),
            _ => {}
        }
        y.push_str(&format!(
            "    retry: {{ max_attempts: {}, delay: 1s, backoff: fixed }}\n",
            s.attempts
        ));
        if s.continue_on_failure {
            y.push_str("    on_failure: continue\n");
        }
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn replaying_the_events_rebuilds_the_live_state(
        steps in flow_strategy(),
        choices in prop::collection::vec((0u8..10, any::<prop::sample::Index>()), 0..120),
    ) {
        let f = flow(&yaml_for(&steps));
        let mut sim = Sim::start(f, json!({}));
        let mut out: Vec<TaskSpec> = sim.take_dispatches();
        let mut answered: Vec<TaskSpec> = Vec::new();
        for (what, pick) in choices {
            out.extend(sim.take_dispatches());
            match what {
                0..=4 if !out.is_empty() => {
                    let spec = out.remove(pick.index(out.len()));
                    sim.succeed(&spec, json!({"step": spec.step, "item": spec.item}));
                    answered.push(spec);
                }
                5..=6 if !out.is_empty() => {
                    let spec = out.remove(pick.index(out.len()));
                    sim.fail(&spec, "flaky", true);
                    answered.push(spec);
                }
                7 if !answered.is_empty() => {
                    // A duplicate delivery of an earlier answer.
                    let spec = answered[pick.index(answered.len())].clone();
                    sim.succeed(&spec, json!("duplicate"));
                }
                8 => { sim.fire_next_timer(); }
                9 if pick.index(20) == 0 => { let _ = sim.handle(Input::Cancel { reason: "test".into() }); }
                _ => {}
            }
            // A crash at this point: recovery from the stored events alone rebuilds the live
            // state (and `Sim::handle` checked that after every step too)...
            let rebuilt = RunState::replay("run-1", sim.state.flow.clone(), 1, &stored(&sim.events));
            prop_assert_eq!(&rebuilt, &sim.state);
            // ...hands out again exactly the attempts that were out, none it never dispatched,
            // re-arms only retries the live run had armed, and runs to one end from there.
            if pick.index(3) == 0 {
                let mut recovered = sim.recover();
                let redispatched = recovered.dispatching();
                prop_assert_eq!(&redispatched, &sim.in_flight());
                prop_assert!(redispatched.is_subset(&sim.ever_dispatched()));
                let rearmed = recovered.retry_timers();
                prop_assert!(
                    rearmed.is_subset(&sim.retry_timers()),
                    "re-armed {rearmed:?}, armed live {:?}", sim.retry_timers()
                );
                recovered.run_to_end();
                prop_assert!(recovered.state.status.is_finished(), "recovered run left hanging: {:?}", recovered.state.status);
                let terminal = recovered.events.iter().filter(|e| e.kind.is_outcome()).count();
                prop_assert_eq!(terminal, 1, "a recovered run finishes exactly once");
            }
        }
        // Drive to the end: answer everything, fire every timer.
        for _ in 0..500 {
            out.extend(sim.take_dispatches());
            if let Some(spec) = out.pop() {
                sim.succeed(&spec, json!("ok"));
            } else if !sim.fire_next_timer() {
                break;
            }
        }
        prop_assert!(sim.state.status.is_finished(), "run left hanging: {:?}", sim.state.status);
        let terminal = sim.events.iter().filter(|e| e.kind.is_outcome()).count();
        prop_assert_eq!(terminal, 1, "a run finishes exactly once");
        // Every unit has at most one accepted result per attempt.
        let mut seen = std::collections::HashSet::new();
        for e in &sim.events {
            if let EventKind::TaskSucceeded { step, item, attempt, .. } | EventKind::TaskFailed { step, item, attempt, .. } = &e.kind {
                prop_assert!(seen.insert((step.clone(), *item, *attempt)), "two results accepted for {step}/{item:?}/{attempt}");
            }
        }
    }
}

#[test]
fn a_for_each_over_the_item_limit_fails_the_step_and_the_run_once() {
    let f = flow(
        "name: t\ninputs: { n: { type: integer } }\nsteps:\n  - { id: fan, uses: echo, for_each: { items: 'range(inputs.n)' } }\n",
    );
    let mut state = RunState::new("r", f.clone(), 1);
    state.max_for_each_items = 25;
    let events = state.start(json!({"n": 26}), String::new(), None, None, 0);
    assert_eq!(state.status, RunStatus::Failed);
    assert_eq!(events.iter().filter(|e| e.kind.is_outcome()).count(), 1);
    let err = state.error.unwrap();
    assert_eq!(err.code, "limit");
    assert!(
        err.message.contains(
            "`for_each` gave 26 items, over the limit of 25 (orchestrator.max_for_each_items)"
        ),
        "{}",
        err.message
    );
    // At the limit it fans out.
    let mut state = RunState::new("r", f, 1);
    state.max_for_each_items = 25;
    state.start(json!({"n": 25}), String::new(), None, None, 0);
    assert_eq!(state.status, RunStatus::Running);
    assert_eq!(state.step_state("fan").unwrap().units.len(), 25);
}

#[test]
fn for_each_concurrency_is_capped_by_the_orchestrator() {
    let f = flow(
        "name: t\nsteps:\n  - { id: fan, uses: echo, for_each: { items: 'range(10)', concurrency: 50 } }\n",
    );
    let mut state = RunState::new("r", f, 1);
    state.max_for_each_concurrency = 3;
    let events = state.start(json!({}), String::new(), None, None, 0);
    let dispatched = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TaskDispatched { .. }))
        .count();
    assert_eq!(dispatched, 3, "only three items in flight at once");
}

#[test]
fn outputs_over_the_run_budget_fail_the_step_with_a_clear_error() {
    let f =
        flow("name: t\nsteps:\n  - { id: a, uses: echo }\n  - { id: b, uses: echo, needs: a }\n");
    let mut state = RunState::new("r", f, 1);
    state.max_output_memory_bytes = 20_000;
    let events = state.start(json!({}), String::new(), None, None, 0);
    let actions = state.actions_for(&events);
    let Some(Action::Dispatch(a)) = actions.first() else {
        panic!("{actions:?}")
    };
    // 20 one-key objects: ~13 KB in memory, within the budget.
    let small = Json::Array((0..20).map(|i| json!({ "k": i })).collect());
    let events = state
        .handle(
            Input::Result {
                step: a.step.clone(),
                item: None,
                attempt: a.attempt,
                outcome: Ok(small),
            },
            1,
        )
        .unwrap();
    let actions = state.actions_for(&events);
    let b = actions
        .iter()
        .find_map(|a| match a {
            Action::Dispatch(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    // 20 more would pass the budget.
    let more = Json::Array((0..20).map(|i| json!({ "k": i })).collect());
    state
        .handle(
            Input::Result {
                step: b.step.clone(),
                item: None,
                attempt: b.attempt,
                outcome: Ok(more),
            },
            2,
        )
        .unwrap();
    assert_eq!(state.status, RunStatus::Failed);
    let err = state.error.clone().unwrap();
    assert_eq!(err.code, "limit");
    assert!(
        err.message
            .contains("over the limit of 20000 bytes (orchestrator.max_run_output_memory_bytes)"),
        "{}",
        err.message
    );
    assert_eq!(state.failed_step.as_deref(), Some("b"));
}
