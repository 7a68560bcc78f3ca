//! The flows' `concurrency` policies: `queue`, `skip` and `cancel_oldest`.

use std::sync::Arc;
use std::time::Duration;

use rpaflow_orchestrator::Error;
use rpaflow_orchestrator::state::RunStatus;
use serde_json::json;

use crate::harness::{Engine, Reply, Script, is, paused};

/// A flow of one step that the worker takes 10 s to do, at most one run at a time.
fn one_at_a_time(name: &str, policy: &str) -> String {
    format!(
        r#"
name: {name}
concurrency: {{ max_runs: 1, policy: {policy} }}
steps:
  - {{ id: work, uses: http, with: {{ url: "http://example.invalid" }} }}
"#
    )
}

fn ten_seconds_each() -> Script {
    Arc::new(|_| {
        Reply::After(
            Duration::from_secs(10),
            Box::new(Reply::Output(json!({"done": true}))),
        )
    })
}

#[test]
fn queued_runs_start_one_after_the_other_in_order() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start(dir.path(), ten_seconds_each()).await;
        engine.register(&one_at_a_time("q", "queue")).await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(engine.start_run("q", json!({})).await);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(engine.run(&ids[0]).await.status, RunStatus::Running);
        assert_eq!(engine.run(&ids[1]).await.status, RunStatus::Queued);
        assert_eq!(engine.run(&ids[2]).await.status, RunStatus::Queued);

        for id in &ids {
            assert_eq!(engine.finished(id).await.status, RunStatus::Succeeded);
        }
        let names = engine.event_names(&ids[1]).await;
        assert_eq!(
            names[..3],
            ["run_queued", "run_dequeued", "task_dispatched"]
        );
        // Each run's task was taken only once the run before it had finished.
        let taken = engine.taken.lock().unwrap().clone();
        let order: Vec<&str> = taken.iter().map(|t| t.run_id.as_str()).collect();
        assert_eq!(order, [&ids[0], &ids[1], &ids[2]]);
        for pair in taken.windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!(gap >= Duration::from_secs(10), "overlapping runs: {gap:?}");
        }
        engine.stop().await;
    });
}

#[test]
fn skip_refuses_a_run_while_one_is_active() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start(dir.path(), ten_seconds_each()).await;
        engine.register(&one_at_a_time("s", "skip")).await;
        let first = engine.start_run("s", json!({})).await;
        let refused = engine.try_start("s", json!({})).await.unwrap_err();
        assert!(
            matches!(&refused, Error::FailedPrecondition(m) if m.contains("concurrency.max_runs")),
            "{refused}"
        );
        assert_eq!(
            engine.runs_of("s"),
            std::slice::from_ref(&first),
            "nothing recorded"
        );

        engine.finished(&first).await;
        let second = engine.start_run("s", json!({})).await;
        assert_eq!(engine.finished(&second).await.status, RunStatus::Succeeded);
        engine.stop().await;
    });
}

#[test]
fn cancel_oldest_cancels_the_running_run_for_the_new_one() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start(dir.path(), ten_seconds_each()).await;
        engine.register(&one_at_a_time("c", "cancel_oldest")).await;
        let first = engine.start_run("c", json!({})).await;
        engine
            .wait_until(&first, |_| !engine.taken_for(&first).is_empty())
            .await;
        let second = engine.start_run("c", json!({})).await;

        let old = engine.wait_until(&first, is(RunStatus::Cancelled)).await;
        assert!(old.status.is_finished());
        assert_eq!(engine.finished(&second).await.status, RunStatus::Succeeded);
        assert_eq!(
            engine.event_names(&first).await.last().map(String::as_str),
            Some("run_cancelled")
        );
        engine.stop().await;
    });
}
