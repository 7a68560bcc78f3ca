//! Retries, back-off and attempt timeouts.

use std::sync::Arc;
use std::time::Duration;

use rpaflow_orchestrator::state::{RunStatus, StepStatus};
use serde_json::json;

use crate::harness::{Engine, Reply, paused};

const FLAKY: &str = r#"
name: flaky
steps:
  - id: fetch
    uses: http
    with: { url: "http://example.invalid" }
    retry: { max_attempts: 3, backoff: fixed, delay: 10s }
outputs:
  got: "{{ steps.fetch.output }}"
"#;

#[test]
fn a_failing_step_is_retried_after_its_delay_until_it_succeeds() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let script = Arc::new(|task: &rpaflow_proto::v1::Task| match task.attempt {
            1 | 2 => Reply::Fail {
                code: "http_status",
                retryable: true,
            },
            n => Reply::Output(json!({"attempt": n})),
        });
        let engine = Engine::start(dir.path(), script).await;
        engine.register(FLAKY).await;
        let id = engine.start_run("flaky", json!({})).await;
        let run = engine.finished(&id).await;

        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(run.outputs, Some(json!({"got": {"attempt": 3}})));
        assert_eq!(run.steps[0].units[0].attempt, 3);
        assert_eq!(
            engine.taken_for(&id),
            [
                ("fetch".to_owned(), 1),
                ("fetch".to_owned(), 2),
                ("fetch".to_owned(), 3)
            ]
        );
        let events = engine.events(&id).await;
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "run_started",
                "task_dispatched",
                "task_failed",
                "retry_scheduled",
                "task_dispatched",
                "task_failed",
                "retry_scheduled",
                "task_dispatched",
                "task_succeeded",
                "step_finished",
                "run_succeeded"
            ]
        );
        // Each retry waits its 10 s delay after the failure, on the engine's clock.
        for (failed, redispatched) in [(2, 4), (5, 7)] {
            let waited = events[redispatched].1 - events[failed].1;
            assert!((10_000..10_100).contains(&waited), "waited {waited} ms");
        }
        engine.stop().await;
    });
}

#[test]
fn when_the_attempts_run_out_the_run_fails_with_the_last_error() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let script = Arc::new(|_: &rpaflow_proto::v1::Task| Reply::Fail {
            code: "http_status",
            retryable: true,
        });
        let engine = Engine::start(dir.path(), script).await;
        engine.register(FLAKY).await;
        let id = engine.start_run("flaky", json!({})).await;
        let run = engine.finished(&id).await;

        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(run.failed_step.as_deref(), Some("fetch"));
        assert_eq!(run.steps[0].status, StepStatus::Failed);
        assert_eq!(
            run.error.as_ref().map(|e| e.code.as_str()),
            Some("http_status")
        );
        assert_eq!(engine.taken_for(&id).len(), 3);
        engine.stop().await;
    });
}

const SLOW: &str = r#"
name: slow
steps:
  - id: call
    uses: http
    with: { url: "http://example.invalid" }
    timeout: 5s
    retry: { max_attempts: 2, backoff: fixed, delay: 1s }
"#;

#[test]
fn an_attempt_without_a_result_times_out_and_its_late_result_is_ignored() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        // The first attempt answers after a minute, long after its 5 s timeout.
        let script = Arc::new(|task: &rpaflow_proto::v1::Task| {
            let output = Reply::Output(json!({"attempt": task.attempt}));
            match task.attempt {
                1 => Reply::After(Duration::from_secs(60), Box::new(output)),
                _ => output,
            }
        });
        let engine = Engine::start(dir.path(), script).await;
        engine.register(SLOW).await;
        let id = engine.start_run("slow", json!({})).await;
        let run = engine.finished(&id).await;
        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(run.steps[0].output, Some(json!({"attempt": 2})));

        let events = engine.events(&id).await;
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "run_started",
                "task_dispatched",
                "task_failed",
                "retry_scheduled",
                "task_dispatched",
                "task_succeeded",
                "step_finished",
                "run_succeeded"
            ]
        );
        let timed_out = events[2].1 - events[1].1;
        assert!(
            (5_000..5_100).contains(&timed_out),
            "timed out after {timed_out} ms"
        );

        // The first attempt's result arrives later and changes nothing.
        tokio::time::sleep(Duration::from_secs(120)).await;
        let after = engine.run(&id).await;
        assert_eq!(after.steps[0].output, Some(json!({"attempt": 2})));
        assert_eq!(engine.events(&id).await.len(), events.len());
        engine.stop().await;
    });
}
