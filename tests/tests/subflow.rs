//! `subflow` steps: a step runs another registered flow and waits for its outcome, once per
//! attempt, also across a SIGKILL of the orchestrator.

use std::time::Duration;

use rpaflow_tests::{Dev, describe_run, pb};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(40);

const CHILD: &str = r#"
name: greet-one
inputs:
  name: { type: string }
  pause: { type: string, default: 10ms }
steps:
  - { id: wait, uses: sleep, with: { duration: "{{ inputs.pause }}" } }
  - { id: greet, uses: echo, needs: wait, with: { greeting: "Hello, {{ inputs.name }}" } }
outputs:
  greeting: "{{ steps.greet.output.greeting }}"
"#;

const PARENT: &str = r#"
name: greet-all
inputs:
  names: { type: array, default: [Ada, Grace, Edsger] }
  pause: { type: string, default: 10ms }
  child: { type: string, default: greet-one }
steps:
  - id: each
    uses: subflow
    for_each: { items: inputs.names, concurrency: 3 }
    with:
      flow: "{{ inputs.child }}"
      inputs: { name: "{{ item }}", pause: "{{ inputs.pause }}" }
outputs:
  greetings: "{{ steps.each.output | map(attribute='greeting') | list }}"
"#;

async fn child_runs(dev: &Dev, status: &str) -> Vec<pb::Run> {
    dev.list_runs("greet-one", status).await
}

/// Waits until three child runs have `status`, failing with `what` and the process output.
async fn wait_children(dev: &Dev, status: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while child_runs(dev, status).await.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}:\n{}",
            dev.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_subflow_per_item_returns_the_child_outputs() {
    let dev = Dev::launch().await;
    dev.register(CHILD).await;
    dev.register(PARENT).await;
    let id = dev.run("greet-all", json!({})).await;
    let run = dev.wait_finished(&id, TIMEOUT).await;
    assert_eq!(
        run.status(),
        pb::RunStatus::Succeeded,
        "{}",
        describe_run(&run)
    );
    let outputs: serde_json::Value = serde_json::from_str(&run.outputs_json).expect("JSON outputs");
    assert_eq!(
        outputs,
        json!({"greetings": ["Hello, Ada", "Hello, Grace", "Hello, Edsger"]})
    );
    assert_eq!(child_runs(&dev, "succeeded").await.len(), 3);
}

#[tokio::test]
async fn a_failing_or_missing_subflow_fails_the_step() {
    let dev = Dev::launch().await;
    dev.register(PARENT).await;
    let id = dev
        .run(
            "greet-all",
            json!({"child": "no-such-flow", "names": ["x"]}),
        )
        .await;
    let run = dev.wait_finished(&id, TIMEOUT).await;
    assert_eq!(
        run.status(),
        pb::RunStatus::Failed,
        "{}",
        describe_run(&run)
    );
    let error = run.error.expect("an error");
    assert_eq!(error.code, "subflow_failed", "{error:?}");
    assert!(error.message.contains("no-such-flow"), "{error:?}");
}

#[tokio::test]
async fn subflows_survive_a_sigkill_and_run_once_per_item() {
    let mut dev = Dev::launch().await;
    dev.register(CHILD).await;
    dev.register(PARENT).await;
    let id = dev.run("greet-all", json!({"pause": "2s"})).await;
    // Wait until the children are running, then kill the whole process.
    wait_children(&dev, "running", "the children never started").await;
    dev.kill9();
    dev.restart().await;
    let run = dev.wait_finished(&id, TIMEOUT).await;
    assert_eq!(
        run.status(),
        pb::RunStatus::Succeeded,
        "{}",
        describe_run(&run)
    );
    let outputs: serde_json::Value = serde_json::from_str(&run.outputs_json).expect("JSON outputs");
    assert_eq!(
        outputs,
        json!({"greetings": ["Hello, Ada", "Hello, Grace", "Hello, Edsger"]})
    );
    let all = dev.list_runs("greet-one", "").await;
    assert_eq!(all.len(), 3, "one child per item, not more: {all:?}");
    assert!(
        all.iter().all(|r| r.status() == pb::RunStatus::Succeeded),
        "{all:?}"
    );
}

#[tokio::test]
async fn cancelling_the_parent_cancels_its_children() {
    let dev = Dev::launch().await;
    dev.register(CHILD).await;
    dev.register(PARENT).await;
    let id = dev.run("greet-all", json!({"pause": "30s"})).await;
    wait_children(&dev, "running", "the children never started").await;
    let mut client = dev.client().await;
    client
        .cancel_run(pb::CancelRunRequest {
            run_id: id.clone(),
            reason: "test".into(),
        })
        .await
        .expect("cancel");
    wait_children(&dev, "cancelled", "the children were not cancelled").await;
}
