//! What a flow or a caller sends cannot crash, stall or fool the orchestrator (issue 12; the
//! limits are described in `docs/limits.md`). Each scenario checks the clear error, that the
//! server keeps answering, and that an unrelated run keeps going while it happens.
//!
//! # Layout
//! - this file: shared helpers, admission under concurrent starts.

use std::time::Duration;

use rpaflow_tests::{Dev, describe_run, pb};
use serde_json::json;

/// How long a short run may take to finish.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A flow whose runs wait for a person, so they stay active.
const WAITS: &str = "name: waits\nsteps:\n  - { id: ok, uses: approval }\n";

/// A flow that finishes on its own.
const QUICK: &str = "name: quick\nsteps:\n  - { id: hi, uses: log, with: { message: hi } }\n";

/// Starts a run of `waits` that waits for approval; answer it with [`approve`].
async fn waiting_run(dev: &Dev) -> String {
    let id = dev.run("waits", json!({})).await;
    dev.wait_step(&id, "ok", pb::StepStatus::WaitingApproval, RUN_TIMEOUT)
        .await;
    id
}

/// Approves the waiting step of a `waits` run and checks that the run succeeds.
async fn approve(dev: &Dev, run_id: &str) {
    dev.client()
        .await
        .signal_run(pb::SignalRunRequest {
            run_id: run_id.to_owned(),
            step_id: "ok".into(),
            approve: true,
            comment: String::new(),
            by: "test".into(),
        })
        .await
        .unwrap_or_else(|s| dev.fail(&format!("SignalRun failed: {s:?}")));
    dev.wait_succeeded(run_id, RUN_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_never_pass_the_active_run_limit() {
    const LIMIT: usize = 40;
    const CALLS: usize = 400;
    let dev = Dev::launch_env(&[], &[("RPAFLOW_ORCHESTRATOR__MAX_ACTIVE_RUNS", "40")]).await;
    dev.register(WAITS).await;
    dev.register(QUICK).await;
    // An unrelated run, started before the rush, holds one of the places.
    let unrelated = waiting_run(&dev).await;

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..CALLS {
        let mut client = dev.client().await;
        calls.spawn(async move {
            client
                .start_run(pb::StartRunRequest {
                    flow: "waits".into(),
                    version: 0,
                    inputs_json: "{}".into(),
                    idempotency_key: String::new(),
                })
                .await
        });
    }
    let (mut accepted, mut refused) = (0, 0);
    while let Some(answer) = calls.join_next().await {
        match answer.expect("the call task ran") {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(
                    status
                        .message()
                        .contains("the limit is 40 (orchestrator.max_active_runs)"),
                    "{status:?}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(
        accepted,
        LIMIT - 1,
        "accepted {accepted} runs and refused {refused}; one place was taken before"
    );

    // The server still answers, and the run that was there before finishes.
    let listed = dev.list_runs("waits", "").await;
    assert_eq!(listed.len(), LIMIT, "runs listed: {}", listed.len());
    approve(&dev, &unrelated).await;
    // Its place is free again: exactly one more run is admitted.
    let quick = dev.run("quick", json!({})).await;
    let run = dev.wait_succeeded(&quick, RUN_TIMEOUT).await;
    assert_eq!(
        run.status(),
        pb::RunStatus::Succeeded,
        "{}",
        describe_run(&run)
    );
}
