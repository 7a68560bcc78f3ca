//! What a flow or a caller sends cannot crash, stall or fool the orchestrator (issue 12; the
//! limits are described in `docs/limits.md`). Each scenario checks the clear error, that the
//! server keeps answering, and that an unrelated run keeps going while it happens.
//!
//! # Layout
//! - this file, in the order of the classes: one outcome per run, costly inputs and
//!   fan-outs, deep and long graphs, admission under concurrent starts. (Undecodable requests
//!   and status sizes are checked from Python, in `python_client.rs`.)

use std::time::Duration;

use rpaflow_tests::{Dev, describe_run, pb, rpaflow};
use serde_json::{Value as Json, json};

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
    dev.approve(run_id, "ok").await;
    dev.wait_succeeded(run_id, RUN_TIMEOUT).await;
}

/// Registers `source`, expecting INVALID_ARGUMENT whose message contains `expected`.
async fn refused_flow(dev: &Dev, source: String, expected: &str) {
    let err = dev
        .client()
        .await
        .register_flow(pb::RegisterFlowRequest {
            source,
            file_name: "limits.yaml".into(),
        })
        .await
        .expect_err("the flow must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(expected), "{}", err.message());
}

/// Starts a run of `flow` with `inputs`, expecting INVALID_ARGUMENT containing `expected`.
async fn refused_start(dev: &Dev, flow: &str, inputs_json: String, expected: &str) {
    let err = dev
        .client()
        .await
        .start_run(pb::StartRunRequest {
            flow: flow.into(),
            version: 0,
            inputs_json,
            idempotency_key: String::new(),
        })
        .await
        .expect_err("the start must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(expected), "{}", err.message());
}

/// `n` steps, each needing the next one and the last the first: a cycle through all of them.
fn cycle(n: usize) -> String {
    let mut y = String::from("name: cycle\nsteps:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  - {{ id: c{i}, uses: log, needs: c{} }}\n",
            (i + 1) % n
        ));
    }
    y
}

#[tokio::test]
async fn a_failing_for_each_on_a_leaf_step_makes_rpaflow_dev_exit_non_zero() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("leaf.yaml");
    std::fs::write(
        &path,
        "name: leaf\nsteps:\n  - { id: a, uses: log, with: { message: a } }\n  - { id: b, uses: log, needs: a, for_each: { items: 'range(4 // 0)' }, with: { message: '{{ item }}' } }\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = rpaflow(
        &[
            "dev",
            path.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        RUN_TIMEOUT,
    )
    .await;
    assert_ne!(out.code(), Some(0), "{out}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(!text.contains("run succeeded"), "{out}");
    assert!(text.contains("`for_each` failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn costly_inputs_and_fan_outs_are_refused_and_the_server_goes_on() {
    let dev = Dev::launch().await;
    dev.register(WAITS).await;
    dev.register(QUICK).await;
    dev.register(
        "name: fan\ninputs: { n: { type: integer } }\nsteps:\n  - { id: each, uses: log, for_each: { items: 'range(inputs.n)', concurrency: 1000 }, with: { message: '{{ item }}' } }\n",
    )
    .await;
    dev.register("name: takes\ninputs: { rows: { type: array } }\nsteps:\n  - { id: a, uses: log, with: { message: ok } }\n")
        .await;
    let unrelated = waiting_run(&dev).await;

    // 30,000 two-key objects: 0.9 MB of JSON, inside max_payload_bytes, ~25 MB held in memory.
    let rows: Vec<Json> = (0..30_000).map(|i| json!({ "n": i, "t": "x" })).collect();
    let inputs = json!({ "rows": rows }).to_string();
    assert!(inputs.len() < 1 << 20, "{} bytes", inputs.len());
    refused_start(
        &dev,
        "takes",
        inputs,
        "over the limit of 8388608 bytes (orchestrator.max_input_memory_bytes)",
    )
    .await;
    // Nested deeper than JSON parsing allows.
    let deep = format!("{{\"rows\": {}1{}}}", "[".repeat(5_000), "]".repeat(5_000));
    refused_start(&dev, "takes", deep, "inputs_json is not valid JSON").await;

    // A fan-out over the limit fails the run with the limit named; at the limit it finishes,
    // and GetRun answers quickly meanwhile.
    let over = dev.run("fan", json!({ "n": 1_001 })).await;
    let message = dev.wait_failed(&over, RUN_TIMEOUT).await;
    assert!(
        message.contains("over the limit of 1000 (orchestrator.max_for_each_items)"),
        "{message}"
    );
    let at = dev.run("fan", json!({ "n": 1_000 })).await;
    let started = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    loop {
        let asked = std::time::Instant::now();
        let run = dev.get(&at).await;
        slowest = slowest.max(asked.elapsed());
        if !matches!(run.status(), pb::RunStatus::Running) {
            assert_eq!(
                run.status(),
                pb::RunStatus::Succeeded,
                "{}",
                describe_run(&run)
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the fan-out of 1,000 did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        slowest < Duration::from_secs(5),
        "GetRun took {slowest:?} during the fan-out"
    );

    approve(&dev, &unrelated).await;
    let quick = dev.run("quick", json!({})).await;
    dev.wait_succeeded(&quick, RUN_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_cycles_deep_files_and_big_flows_are_refused_and_the_server_goes_on() {
    let dev = Dev::launch().await;
    dev.register(WAITS).await;
    let unrelated = waiting_run(&dev).await;

    // A cycle through 1,000 steps (the most a flow may have): refused, the server lives.
    refused_flow(&dev, cycle(1_000), "`needs` form a cycle: c0 -> c1 -> c2").await;
    // More steps than allowed: refused where `steps` starts.
    refused_flow(
        &dev,
        cycle(5_000),
        "limits.yaml:3:3: the flow has 5000 steps, over the limit of 1000 (`max_flow_steps`)",
    )
    .await;
    // Block sequences nested 100,000 deep in a step's `with`.
    let deep = format!(
        "name: deep\nsteps:\n  - id: a\n    uses: log\n    with:\n      message:\n        {}1\n",
        "- ".repeat(100_000)
    );
    refused_flow(
        &dev,
        deep,
        "nest deeper than the limit of 64 levels (`max_flow_nesting`)",
    )
    .await;
    // A flow that starts itself: runs nest until the depth limit, then the innermost fails
    // and so does every run above it.
    dev.register("name: again\nsteps:\n  - { id: inner, uses: subflow, with: { flow: again } }\n")
        .await;
    let top = dev.run("again", json!({})).await;
    let message = dev.wait_failed(&top, RUN_TIMEOUT).await;
    assert!(
        message
            .contains("subflows nest deeper than the limit of 8 (orchestrator.max_subflow_depth)"),
        "{message}"
    );
    assert_eq!(
        dev.list_runs("again", "").await.len(),
        9,
        "the top run and eight levels of subflows below it"
    );

    approve(&dev, &unrelated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_in_memory_hold_at_most_max_held_input_bytes_of_inputs() {
    let dev = Dev::launch_env(
        &[],
        &[("RPAFLOW_ORCHESTRATOR__MAX_HELD_INPUT_BYTES", "2500000")],
    )
    .await;
    dev.register(
        "name: holds\ninputs: { rows: { type: array } }\nsteps:\n  - { id: ok, uses: approval }\n",
    )
    .await;
    dev.register(QUICK).await;
    // 1,400 one-key objects: about 1 MB each in memory (0.99 MB estimated), 20 KB of JSON: two
    // fit under 2.5 MB, a third does not.
    let rows: Vec<Json> = (0..1_400).map(|i| json!({ "k": i })).collect();
    let inputs = json!({ "rows": rows });
    let first = dev.run("holds", inputs.clone()).await;
    dev.run("holds", inputs.clone()).await;
    let err = dev
        .client()
        .await
        .start_run(pb::StartRunRequest {
            flow: "holds".into(),
            version: 0,
            inputs_json: inputs.to_string(),
            idempotency_key: String::new(),
        })
        .await
        .expect_err("a third run would hold too much");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("would pass the limit of 2500000 bytes (orchestrator.max_held_input_bytes)"),
        "{}",
        err.message()
    );
    // A run with small inputs still fits and finishes.
    let quick = dev.run("quick", json!({})).await;
    dev.wait_succeeded(&quick, RUN_TIMEOUT).await;
    // Once a holding run ends, its inputs leave memory and another is admitted.
    dev.client()
        .await
        .signal_run(pb::SignalRunRequest {
            run_id: first.clone(),
            step_id: "ok".into(),
            approve: true,
            comment: String::new(),
            by: "test".into(),
        })
        .await
        .unwrap_or_else(|s| dev.fail(&format!("SignalRun failed: {s:?}")));
    dev.wait_succeeded(&first, RUN_TIMEOUT).await;
    let mut admitted = false;
    for _ in 0..50 {
        let answer = dev
            .client()
            .await
            .start_run(pb::StartRunRequest {
                flow: "holds".into(),
                version: 0,
                inputs_json: inputs.to_string(),
                idempotency_key: String::new(),
            })
            .await;
        if answer.is_ok() {
            admitted = true;
            break;
        }
        // The finished run's actor leaves memory a moment after its last event.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "no run admitted after one ended");
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
