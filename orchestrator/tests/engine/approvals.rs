//! Approval steps: answered, and left unanswered past their deadline.

use std::time::Duration;

use rpaflow_orchestrator::orchestrator::Answer;
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

fn waiting(run: &rpaflow_orchestrator::state::RunState) -> bool {
    run.steps[0].status == StepStatus::WaitingApproval
}

#[test]
fn an_approved_step_lets_the_run_go_on() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start(dir.path(), succeed_all()).await;
        engine.register(REFUND).await;
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
        let engine = Engine::start(dir.path(), succeed_all()).await;
        engine.register(REFUND).await;
        let id = engine.start_run("refund", json!({})).await;
        let run = engine.finished(&id).await;

        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(
            run.steps[0].error.as_ref().map(|e| e.code.as_str()),
            Some("approval_timeout")
        );
        assert!(engine.taken_for(&id).is_empty(), "`pay` never ran");
        let events = engine.events(&id).await;
        let (requested, failed) = (
            events
                .iter()
                .find(|(n, _)| n == "approval_requested")
                .unwrap()
                .1,
            events.iter().find(|(n, _)| n == "run_failed").unwrap().1,
        );
        let waited = failed - requested;
        assert!(
            (600_000..600_100).contains(&waited),
            "failed {waited} ms after the request"
        );
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
