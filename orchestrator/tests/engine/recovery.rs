//! Recovery: a fresh orchestrator on the store a previous one left finishes its runs.

use std::sync::Arc;
use std::time::Duration;

use rpaflow_orchestrator::orchestrator::Answer;
use rpaflow_orchestrator::state::{RunStatus, StepStatus};
use serde_json::json;

use crate::harness::{Engine, NS, Reply, paused, succeed_all};

const TWO_STEPS: &str = r#"
name: two
steps:
  - { id: first, uses: http, with: { url: "http://example.invalid/1" } }
  - { id: second, uses: http, needs: first, with: { url: "http://example.invalid/2" } }
"#;

const APPROVE: &str = r#"
name: approve
steps:
  - { id: ask, uses: approval, with: { message: "go?" }, timeout: 1h }
  - { id: act, uses: http, needs: ask, with: { url: "http://example.invalid" } }
"#;

#[test]
fn a_fresh_orchestrator_on_the_same_store_finishes_the_runs_of_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    // The previous instance: its worker does the first step of each run and then stops
    // answering; an approval waits. Then it stops.
    let (runs, waiting) = paused(async {
        let script = Arc::new(
            |task: &rpaflow_proto::v1::Task| match task.step_id.as_str() {
                "first" => Reply::Output(json!({"n": 1})),
                _ => Reply::Silent,
            },
        );
        let engine = Engine::start(dir.path(), script).await;
        engine.register(TWO_STEPS).await;
        engine.register(APPROVE).await;
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(engine.start_run("two", json!({})).await);
        }
        let waiting = engine.start_run("approve", json!({})).await;
        for id in &runs {
            engine
                .wait_until(id, |run| run.steps[1].status == StepStatus::Running)
                .await;
        }
        engine
            .wait_until(&waiting, |run| {
                run.steps[0].status == StepStatus::WaitingApproval
            })
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        engine.stop().await;
        (runs, waiting)
    });

    // The next instance, on another runtime (the previous one's actors are gone with it).
    paused(async {
        let engine = Engine::start(dir.path(), succeed_all()).await;
        for id in &runs {
            let run = engine.finished(id).await;
            assert_eq!(run.status, RunStatus::Succeeded);
            assert_eq!(
                run.steps[0].output,
                Some(json!({"n": 1})),
                "kept from before"
            );
            assert_eq!(
                engine.taken_for(id),
                [("second".to_owned(), 1)],
                "only what had no result is dispatched again"
            );
            let names = engine.event_names(id).await;
            assert!(names.contains(&"task_redispatched".to_owned()), "{names:?}");
            assert_eq!(names.last().map(String::as_str), Some("run_succeeded"));
        }

        let pending = engine.handle.list_approvals(NS, "approve").unwrap();
        assert_eq!(pending.len(), 1, "the approval still waits");
        let answer = Answer {
            step: "ask".into(),
            approve: true,
            by: "ada".into(),
            ..Answer::default()
        };
        engine
            .handle
            .signal_run(NS, &waiting, answer)
            .await
            .unwrap();
        assert_eq!(engine.finished(&waiting).await.status, RunStatus::Succeeded);
        engine.stop().await;
    });
}
