//! The customer-service process end to end, on the real parts: the customer API (the example's
//! own server), PostgreSQL, an inference node with an ONNX GPT-2, a person approving a refund.

use std::time::Duration;

use rpaflow_tests::{Dev, describe_run, get_json, pb, psql, setup_script, workspace_root};
use serde_json::{Value as Json, json};

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn messages_are_collected_stored_drafted_approved_answered_and_recorded() {
    let env = setup_script("setup-inference.sh");
    setup_script("setup-postgres.sh");

    let (mut api, base) = rpaflow_tests::customer_api().await;

    let dev = Dev::launch_with(&[
        "--model",
        &env["RPAFLOW_TEST_MODEL"],
        "--onnxruntime",
        &env["ORT_DYLIB_PATH"],
    ])
    .await;
    for file in [
        "examples/customer-service/handle-message.yaml",
        "examples/customer-service.yaml",
    ] {
        let source =
            std::fs::read_to_string(workspace_root().join(file)).expect("the example exists");
        dev.register(&source).await;
    }
    let id = dev.run("customer-service", json!({"api": base})).await;

    // The large refund (2,400) waits for a person; the others go out on their own.
    let mut client = dev.client().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let approval = loop {
        let pending = client
            .list_approvals(pb::ListApprovalsRequest {
                flow: "handle-message".into(),
            })
            .await
            .expect("ListApprovals")
            .into_inner()
            .approvals;
        if let Some(a) = pending.into_iter().next() {
            break a;
        }
        let now = dev.get(&id).await;
        assert_eq!(
            now.status(),
            pb::RunStatus::Running,
            "{}\n{}",
            describe_run(&now),
            dev.output()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no approval was requested:\n{}",
            dev.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(approval.message.contains("Refund of 2400"), "{approval:?}");
    assert!(
        approval.message.contains("dave@example.com"),
        "{approval:?}"
    );
    client
        .signal_run(pb::SignalRunRequest {
            run_id: approval.run_id.clone(),
            step_id: approval.step_id.clone(),
            approve: true,
            comment: "ok".into(),
            by: "manager".into(),
        })
        .await
        .expect("SignalRun");

    let run = dev.wait_finished(&id, TIMEOUT).await;
    assert_eq!(
        run.status(),
        pb::RunStatus::Succeeded,
        "{}\n{}",
        describe_run(&run),
        dev.output()
    );
    let outputs: Json = serde_json::from_str(&run.outputs_json).expect("JSON outputs");
    assert_eq!(outputs, json!({"collected": 7, "cleaned": 4, "sent": 4}));

    // PostgreSQL holds the cleaned messages with their outcome and the drafted reply.
    let rows = psql(&format!(
        "SELECT message_id, email, outcome, length(reply) > 0 FROM customer_messages WHERE batch = '{id}' ORDER BY message_id"
    ));
    assert_eq!(
        rows,
        "1|ada@example.com|sent|t\n4|carol@example.com|sent|t\n5|dave@example.com|sent|t\n7|erin@example.com|sent|t",
        "{}",
        dev.output()
    );
    // The API received one reply per message, each the model's draft.
    let replies = get_json(&format!("{base}/replies"));
    let replies = replies["replies"].as_array().expect("a list");
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert!(
        replies
            .iter()
            .all(|r| r["text"].as_str().is_some_and(|t| !t.is_empty())),
        "{replies:?}"
    );
    let _ = api.kill().await;
}
