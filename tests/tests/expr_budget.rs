//! User code runs on a budget (issue 12, classes 2 and 3; `docs/limits.md`, "Expressions and
//! templates"): a template that would loop for hours, or an expression that would allocate
//! gigabytes, fails its step with an error naming the step and the limit, while StartRun and
//! GetRun keep answering and unrelated runs keep finishing.

use std::time::{Duration, Instant};

use rpaflow_tests::{Dev, describe_run, pb};
use serde_json::json;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A run that waits for a person, so it stays active through the whole scenario.
const WAITS: &str = "name: waits\nsteps:\n  - { id: ok, uses: approval }\n";

/// A flow that finishes on its own.
const QUICK: &str = "name: quick\nsteps:\n  - { id: hi, uses: log, with: { message: hi } }\n";

/// Nested loops over 20,000 x 20,000 in a step's `with`: 400 million iterations unbudgeted.
const SPIN: &str = r#"name: spin
steps:
  - id: warm
    uses: log
    with: { message: warm }
  - id: churn
    uses: log
    needs: warm
    with:
      message: "{% for a in range(20000) %}{% for b in range(20000) %}{{ a + b }}{% endfor %}{% endfor %}"
"#;

/// Memory bombs, one per step kind of evaluation: an `if` that repeats a string to 2 GB, a
/// `for_each` over a list that repeats the run's input 3 million times, and a transform (on the
/// embedded worker) whose chained `replace` grows a record's text past a gigabyte. Each step
/// continues on failure, so that all three run.
const BOMBS: &str = r#"name: bombs
inputs:
  text: { type: string, default: "0123456789abcdef" }
steps:
  - id: gate
    uses: log
    on_failure: continue
    if: "('xy' * 1000000000) | length > 3"
    with: { message: never }
  - id: fan
    uses: log
    on_failure: continue
    for_each: { items: "[inputs.text] * 3000000" }
    with: { message: "{{ item }}" }
  - id: clean
    uses: transform
    on_failure: continue
    with:
      data: [{ t: "{{ inputs.text }}" }]
      ops:
        - map: { t: "t | replace('0', t * 64) | replace('1', t * 64) | replace('2', t * 64) | replace('3', t * 64)" }
"#;

/// The step's error message, or the run's when the step has none.
fn step_error(run: &pb::Run, step: &str) -> String {
    run.steps
        .iter()
        .find(|s| s.step_id == step)
        .and_then(|s| s.error.as_ref())
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

async fn approve(dev: &Dev, run_id: &str) {
    dev.approve(run_id, "ok").await;
    dev.wait_succeeded(run_id, RUN_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endless_templates_fail_on_their_budget_and_other_runs_go_on() {
    let dev = Dev::launch().await;
    dev.register(WAITS).await;
    dev.register(QUICK).await;
    dev.register(SPIN).await;
    let unrelated = dev.run("waits", json!({})).await;
    dev.wait_step(
        &unrelated,
        "ok",
        pb::StepStatus::WaitingApproval,
        RUN_TIMEOUT,
    )
    .await;

    // More hostile runs than the orchestrator has actor threads (4 by default).
    let mut hostile = Vec::new();
    for _ in 0..12 {
        let asked = Instant::now();
        hostile.push(dev.run("spin", json!({})).await);
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "StartRun took {:?}",
            asked.elapsed()
        );
    }
    // While they run, other runs start and finish, and GetRun answers.
    for _ in 0..3 {
        let quick = dev.run("quick", json!({})).await;
        dev.wait_succeeded(&quick, RUN_TIMEOUT).await;
    }
    for id in &hostile {
        let run = dev.wait_finished(id, RUN_TIMEOUT).await;
        assert_eq!(
            run.status(),
            pb::RunStatus::Failed,
            "{}",
            describe_run(&run)
        );
        let message = step_error(&run, "churn");
        assert!(
            message
                .starts_with("step `churn`: template in `with.message`: used more than 50000 fuel"),
            "{}",
            describe_run(&run)
        );
        assert!(message.contains("(orchestrator.expr_fuel)"), "{message}");
    }
    approve(&dev, &unrelated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_bombs_fail_on_their_budget_and_the_process_lives() {
    let dev = Dev::launch().await;
    dev.register(WAITS).await;
    dev.register(QUICK).await;
    dev.register(BOMBS).await;
    let unrelated = dev.run("waits", json!({})).await;
    dev.wait_step(
        &unrelated,
        "ok",
        pb::StepStatus::WaitingApproval,
        RUN_TIMEOUT,
    )
    .await;

    let bombs: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(dev.run("bombs", json!({})).await);
        }
        ids
    };
    let quick = dev.run("quick", json!({})).await;
    dev.wait_succeeded(&quick, RUN_TIMEOUT).await;
    for id in &bombs {
        // Each step continues on failure, so the run's outcome is not the point here.
        let run = dev.wait_finished(id, RUN_TIMEOUT).await;
        let gate = step_error(&run, "gate");
        assert!(
            gate.starts_with("step `gate`: `if` failed: used more than 50000 fuel")
                && gate.contains("(orchestrator.expr_fuel)"),
            "{}",
            describe_run(&run)
        );
        let fan = step_error(&run, "fan");
        assert!(
            fan.starts_with("step `fan`: `for_each` failed: result is larger than 1048576 bytes")
                && fan.contains("(orchestrator.expr_max_output_bytes)"),
            "{}",
            describe_run(&run)
        );
        let clean = step_error(&run, "clean");
        assert!(
            clean.contains("(worker.expr_fuel)"),
            "{}",
            describe_run(&run)
        );
    }
    // The process that ran the bombs (orchestrator and embedded worker) still answers.
    let quick = dev.run("quick", json!({})).await;
    dev.wait_succeeded(&quick, RUN_TIMEOUT).await;
    approve(&dev, &unrelated).await;
}

/// Nested loops that stay inside a generous budget but take seconds: 16 million iterations.
const SLOW_LOOP: &str =
    "{% for a in range(4000) %}{% for b in range(4000) %}{% endfor %}{% endfor %}done";

/// A flow whose second step's input takes seconds to render.
fn slow_second_step() -> String {
    format!(
        "name: slow\nsteps:\n  - {{ id: warm, uses: log, with: {{ message: slow-run-warmed-up }} }}\n  - {{ id: churn, uses: log, needs: warm, with: {{ message: \"{SLOW_LOOP}\" }} }}\n"
    )
}

/// A flow whose first step's input takes seconds to render (at StartRun).
fn slow_first_step() -> String {
    format!(
        "name: slow-start\nsteps:\n  - {{ id: churn, uses: log, with: {{ message: \"{SLOW_LOOP}\" }} }}\n"
    )
}

/// Evaluation is never done on the threads that run actors or answer gRPC: with one actor
/// thread and one evaluation thread, runs that evaluate nothing start and finish while another
/// run's slow (and allowed) template is being rendered, whether at StartRun or after a step,
/// and GetRun answers for the busy run meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_evaluation_holds_up_no_other_run() {
    let dev = Dev::launch_env(
        &[],
        &[
            ("RPAFLOW_ORCHESTRATOR__ARBITERS", "1"),
            ("RPAFLOW_ORCHESTRATOR__EVAL_THREADS", "1"),
            ("RPAFLOW_ORCHESTRATOR__EXPR_FUEL", "100000000000"),
        ],
    )
    .await;
    dev.register(QUICK).await;
    dev.register(&slow_second_step()).await;
    dev.register(&slow_first_step()).await;

    // After a step: `warm` has run, so its result is being decided on, which renders `churn`.
    let slow = dev.run("slow", json!({})).await;
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !dev.output().contains("slow-run-warmed-up") {
        assert!(Instant::now() < deadline, "`warm` never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let quick = dev.run("quick", json!({})).await;
        dev.wait_succeeded(&quick, RUN_TIMEOUT).await;
    }
    let asked = Instant::now();
    let meanwhile = dev.get(&slow).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "GetRun took {:?}",
        asked.elapsed()
    );
    assert_eq!(
        meanwhile.status(),
        pb::RunStatus::Running,
        "the slow template was rendered before three quick runs finished: {}",
        describe_run(&meanwhile)
    );
    dev.wait_succeeded(&slow, RUN_TIMEOUT).await;

    // At StartRun: the call itself takes as long as the rendering, other calls do not.
    let starting = tokio::spawn({
        let client = dev.client().await;
        async move {
            let mut client = client;
            client
                .start_run(pb::StartRunRequest {
                    flow: "slow-start".into(),
                    ..Default::default()
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let quick = dev.run("quick", json!({})).await;
        dev.wait_succeeded(&quick, RUN_TIMEOUT).await;
    }
    assert!(
        !starting.is_finished(),
        "the slow StartRun answered before three quick runs finished"
    );
    let started = starting.await.unwrap().expect("StartRun of slow-start");
    let run_id = started.into_inner().run.expect("a run").run_id;
    dev.wait_succeeded(&run_id, RUN_TIMEOUT).await;
}
