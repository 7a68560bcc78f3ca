//! The worker's egress policy over real processes: an `rpaflow orchestrator` and an `rpaflow
//! worker` on Apache Kafka, the worker under the production default (`worker.egress`: public
//! addresses only). A flow that points an `http` step at the orchestrator's own gRPC port, at the
//! broker's port or at a closed port on the same machine fails with `egress_denied`, and the three
//! answers read alike: nothing tells an open port from a closed one.

use std::time::Duration;

use rpaflow_tests::kafka::Broker;
use rpaflow_tests::{Dev, EGRESS_ALLOW_PRIVATE, WorkerProcess, describe_run, pb};
use serde_json::json;

const PROBE: &str = r#"
name: probe
inputs:
  url: { type: string }
steps:
  - { id: call, uses: http, with: { url: "{{ inputs.url }}" } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_steps_that_reach_internal_ports() {
    let broker = Broker::start().await.expect("cannot start the broker");
    let brokers = broker.brokers();
    let orchestrator = Dev::orchestrator(&brokers, &[], &[]).await;
    // The harness opens private ranges for the other scenarios; this worker keeps the default.
    let worker =
        WorkerProcess::start(&brokers, "guarded", &[], &[(EGRESS_ALLOW_PRIVATE, "false")]).await;
    orchestrator.register(PROBE).await;

    let grpc = orchestrator.addr().port();
    let kafka: u16 = brokers
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("brokers end with a port");
    let closed = rpaflow_tests::closed_port();
    let mut answers = Vec::new();
    for (what, url) in [
        (
            "the orchestrator's gRPC port",
            format!("http://127.0.0.1:{grpc}/"),
        ),
        ("the broker's port", format!("http://127.0.0.1:{kafka}/")),
        ("a closed port", format!("http://127.0.0.1:{closed}/")),
        ("a name for loopback", format!("http://localhost:{grpc}/")),
    ] {
        let run_id = orchestrator.run("probe", json!({"url": url})).await;
        orchestrator
            .wait_failed(&run_id, Duration::from_secs(60))
            .await;
        let run = orchestrator.get(&run_id).await;
        let step = run
            .steps
            .iter()
            .find(|s| s.step_id == "call")
            .unwrap_or_else(|| panic!("{what}: no step `call`: {}", describe_run(&run)));
        assert_eq!(step.status(), pb::StepStatus::Failed, "{what}");
        let error = step
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no step error: {}", describe_run(&run)));
        assert_eq!(error.code, "egress_denied", "{what}: {}", error.message);
        // Not retryable: one attempt only.
        assert_eq!(step.attempt, 1, "{what}: {}", describe_run(&run));
        answers.push(error.message.clone());
    }
    let expected = |host: &str, port: u16| {
        format!("egress to {host}:{port} is denied by the worker's egress policy (worker.egress)")
    };
    assert_eq!(answers[0], expected("127.0.0.1", grpc));
    assert_eq!(answers[1], expected("127.0.0.1", kafka));
    assert_eq!(answers[2], expected("127.0.0.1", closed));
    assert_eq!(answers[3], expected("localhost", grpc));
    // The worker ran no step to success, and said why in its log.
    assert_eq!(worker.steps_succeeded(), 0);
    assert!(
        worker.output().contains("egress_denied"),
        "{}",
        rpaflow_tests::tail(&worker.output(), 40)
    );
}
