//! Subflows: the parent waits for its child and gets its outputs; cancelling the parent
//! cancels the child.

use std::sync::Arc;

use rpaflow_orchestrator::state::{RunStatus, StepStatus};
use serde_json::json;

use crate::harness::{Engine, NS, Reply, is, paused, succeed_all};

const CHILD: &str = r#"
name: child
inputs:
  who: { type: string }
steps:
  - { id: greet, uses: http, with: { url: "http://example.invalid/{{ inputs.who }}" } }
outputs:
  greeted: "{{ inputs.who }}"
  attempt: "{{ steps.greet.output.attempt }}"
"#;

const PARENT: &str = r#"
name: parent
steps:
  - id: call
    uses: subflow
    with: { flow: child, inputs: { who: ada } }
  - { id: after, uses: http, needs: call, with: { url: "http://example.invalid" } }
outputs:
  child: "{{ steps.call.output }}"
"#;

#[test]
fn a_parent_waits_for_its_child_and_gets_its_outputs() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start(dir.path(), succeed_all()).await;
        engine.register(CHILD).await;
        engine.register(PARENT).await;
        let parent = engine.start_run("parent", json!({})).await;
        let run = engine.finished(&parent).await;

        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(
            run.outputs,
            Some(json!({"child": {"greeted": "ada", "attempt": 1}}))
        );
        let children = engine.runs_of("child");
        assert_eq!(children.len(), 1, "one child per attempt");
        let child = engine.run(&children[0]).await;
        assert_eq!(child.status, RunStatus::Succeeded);
        assert_eq!(
            child.parent.as_ref().map(|p| p.run_id.as_str()),
            Some(parent.as_str())
        );
        // The parent's next step ran only after the child's.
        let taken: Vec<String> = engine
            .taken
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.step.clone())
            .collect();
        assert_eq!(taken, ["greet", "after"]);
        engine.stop().await;
    });
}

#[test]
fn cancelling_the_parent_cancels_the_child() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        // The child's step never answers.
        let engine = Engine::start(dir.path(), Arc::new(|_| Reply::Silent)).await;
        engine.register(CHILD).await;
        engine.register(PARENT).await;
        let parent = engine.start_run("parent", json!({})).await;
        let child = loop {
            if let Some(child) = engine.runs_of("child").pop()
                && !engine.taken_for(&child).is_empty()
            {
                break child;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        engine
            .handle
            .cancel_run(NS, &parent, "not needed")
            .await
            .unwrap();

        let run = engine.wait_until(&parent, is(RunStatus::Cancelled)).await;
        assert_eq!(run.steps[0].status, StepStatus::Cancelled);
        let child = engine.wait_until(&child, is(RunStatus::Cancelled)).await;
        assert_eq!(child.steps[0].status, StepStatus::Cancelled);
        engine.stop().await;
    });
}
