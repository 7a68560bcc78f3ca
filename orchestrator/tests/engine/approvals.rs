//! Approval steps: answered, and left unanswered past their deadline.

use std::time::Duration;

use rpaflow_orchestrator::orchestrator::{ActiveRuns, Answer};
use rpaflow_orchestrator::state::{RunStatus, StepStatus};
use serde_json::json;

use crate::harness::{Engine, NS, paused, succeed_all};

const REFUND: &str = r#"
name: refund
steps:
  - id: ask
    uses: approval
    with: { message: "Refund 900 EUR?" }
    timeout: 10m
  - id: pay
    uses: http
    needs: ask
    with: { url: "http://example.invalid" }
"#;

/// An orchestrator on `dir` with the `refund` flow registered.
async fn refund_engine(dir: &std::path::Path) -> Engine {
    let engine = Engine::start(dir, succeed_all()).await;
    engine.register(REFUND).await;
    engine
}

fn waiting(run: &rpaflow_orchestrator::state::RunState) -> bool {
    run.steps[0].status == StepStatus::WaitingApproval
}

#[test]
fn an_approved_step_lets_the_run_go_on() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = refund_engine(dir.path()).await;
        let id = engine.start_run("refund", json!({})).await;
        engine.wait_until(&id, waiting).await;
        let pending = engine.handle.list_approvals(NS, "refund").unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].message, "Refund 900 EUR?");
        assert!(
            engine.taken_for(&id).is_empty(),
            "nothing runs before the answer"
        );

        tokio::time::sleep(Duration::from_secs(60)).await;
        let answer = Answer {
            step: "ask".into(),
            approve: true,
            comment: "ok".into(),
            by: "ada".into(),
            role: String::new(),
        };
        engine.handle.signal_run(NS, &id, answer).await.unwrap();
        let run = engine.finished(&id).await;
        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(
            run.steps[0].output.as_ref().unwrap()["approved"],
            json!(true)
        );
        assert_eq!(run.steps[0].output.as_ref().unwrap()["by"], json!("ada"));
        assert_eq!(engine.taken_for(&id), [("pay".to_owned(), 1)]);
        assert!(
            engine
                .handle
                .list_approvals(NS, "refund")
                .unwrap()
                .is_empty()
        );
        engine.stop().await;
    });
}

#[test]
fn an_approval_unanswered_by_its_deadline_fails_the_run() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = refund_engine(dir.path()).await;
        let id = engine.start_run("refund", json!({})).await;
        let run = engine.finished(&id).await;

        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(
            run.steps[0].error.as_ref().map(|e| e.code.as_str()),
            Some("approval_timeout")
        );
        assert!(engine.taken_for(&id).is_empty(), "`pay` never ran");
        let events = engine.events(&id).await;
        assert_failed_at_the_deadline(&events);
        assert!(
            engine
                .handle
                .list_approvals(NS, "refund")
                .unwrap()
                .is_empty()
        );
        engine.stop().await;
    });
}

/// The run failed ten minutes (the step's timeout) after its approval was requested.
fn assert_failed_at_the_deadline(events: &[(String, i64)]) {
    let at = |name: &str| {
        events
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in {events:?}"))
            .1
    };
    let waited = at("run_failed") - at("approval_requested");
    assert!(
        (600_000..600_100).contains(&waited),
        "failed {waited} ms after the request"
    );
}

fn answer(approve: bool) -> Answer {
    Answer {
        step: "ask".into(),
        approve,
        comment: String::new(),
        by: "ada".into(),
        role: String::new(),
    }
}

fn resting(engine: &Engine) -> ActiveRuns {
    engine.handle.active_runs()
}

#[test]
fn a_run_waiting_for_a_person_leaves_memory_and_comes_back_for_the_answer() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = refund_engine(dir.path()).await;
        let id = engine.start_run("refund", json!({})).await;
        engine.wait_until(&id, waiting).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            resting(&engine),
            ActiveRuns {
                in_memory: 0,
                resting: 1
            }
        );
        // Asked for while it rests, the run is read from storage as it is.
        let run = engine.run(&id).await;
        assert_eq!(run.status, RunStatus::Running);
        assert!(waiting(&run));

        engine
            .handle
            .signal_run(NS, &id, answer(true))
            .await
            .unwrap();
        let run = engine.finished(&id).await;
        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(engine.taken_for(&id), [("pay".to_owned(), 1)]);
        assert_eq!(resting(&engine), ActiveRuns::default());
        engine.stop().await;
    });
}

#[test]
fn a_resting_run_is_cancelled_and_a_second_answer_is_refused() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = refund_engine(dir.path()).await;
        let cancelled = engine.start_run("refund", json!({})).await;
        let answered = engine.start_run("refund", json!({})).await;
        engine.wait_until(&cancelled, waiting).await;
        engine.wait_until(&answered, waiting).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(resting(&engine).resting, 2);

        let run = engine
            .handle
            .cancel_run(NS, &cancelled, "not needed")
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Cancelled);
        engine
            .handle
            .signal_run(NS, &answered, answer(false))
            .await
            .unwrap();
        let run = engine.finished(&answered).await;
        assert_eq!(
            run.steps[0].output.as_ref().unwrap()["approved"],
            json!(false)
        );
        let again = engine.handle.signal_run(NS, &answered, answer(true)).await;
        assert!(again.is_err(), "a finished run takes no second answer");
        assert!(engine.taken_for(&cancelled).is_empty());
        assert!(
            engine
                .handle
                .list_approvals(NS, "refund")
                .unwrap()
                .is_empty()
        );
        assert_eq!(resting(&engine), ActiveRuns::default());
        engine.stop().await;
    });
}

#[test]
fn runs_waiting_for_people_come_back_resting_after_a_restart_and_keep_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (answered, unanswered) = paused(async {
        let engine = refund_engine(dir.path()).await;
        let answered = engine.start_run("refund", json!({})).await;
        let unanswered = engine.start_run("refund", json!({})).await;
        engine.wait_until(&answered, waiting).await;
        engine.wait_until(&unanswered, waiting).await;
        engine.stop().await;
        (answered, unanswered)
    });
    paused(async {
        let engine = Engine::start(dir.path(), succeed_all()).await;
        assert_eq!(
            resting(&engine),
            ActiveRuns {
                in_memory: 0,
                resting: 2
            },
            "recovered without an actor"
        );
        engine
            .handle
            .signal_run(NS, &answered, answer(true))
            .await
            .unwrap();
        assert_eq!(
            engine.finished(&answered).await.status,
            RunStatus::Succeeded
        );
        let run = engine.finished(&unanswered).await;
        assert_eq!(
            run.steps[0].error.as_ref().map(|e| e.code.as_str()),
            Some("approval_timeout")
        );
        assert_eq!(resting(&engine), ActiveRuns::default());
        engine.stop().await;
    });
}

#[test]
fn an_approval_deadline_counts_the_time_that_passed_before_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = paused(async {
        let engine = refund_engine(dir.path()).await;
        let id = engine.start_run("refund", json!({})).await;
        engine.wait_until(&id, waiting).await;
        // Four of its ten minutes pass before the orchestrator stops.
        tokio::time::sleep(Duration::from_secs(240)).await;
        engine.stop().await;
        id
    });
    paused(async {
        let restarted = tokio::time::Instant::now();
        let engine = Engine::start(dir.path(), succeed_all()).await;
        let run = engine.finished(&id).await;
        assert_eq!(
            run.steps[0].error.as_ref().map(|e| e.code.as_str()),
            Some("approval_timeout")
        );
        let after = restarted.elapsed();
        assert!(
            (Duration::from_secs(359)..Duration::from_secs(361)).contains(&after),
            "the deadline came {after:?} after the restart, not the six minutes left"
        );
        let events = engine.events(&id).await;
        assert!(
            events.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "event times go back across the restart: {events:?}"
        );
        assert_failed_at_the_deadline(&events);
        engine.stop().await;
    });
}
