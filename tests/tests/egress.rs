//! The worker's egress policy over real processes: an `rpaflow orchestrator` and an `rpaflow
//! worker` on Apache Kafka, the worker under the production default (`worker.egress`: public
//! addresses only). A flow that points an `http` step at the orchestrator's own gRPC port, at the
//! broker's port or at a closed port on the same machine fails with `egress_denied`, and the three
//! answers read alike: nothing tells an open port from a closed one.
//!
//! A namespace's own policy (`[worker.egress_namespaces.<namespace>]`, issue 13) over `rpaflow
//! dev`: the same flow reaches a local server from `default` and is denied in `team-a`.

use std::time::Duration;

use rpaflow_tests::kafka::Broker;
use rpaflow_tests::{
    Dev, EGRESS_ALLOW_PRIVATE, HttpServer, WorkerProcess, describe_run, pb, rpaflow,
};
use serde_json::{Value as Json, json};

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

/// `rpaflow dev` allows private addresses by default; its configuration file gives `team-a` a
/// policy of its own that does not (the production default, written out). The same flow, an
/// `http` step to a server on loopback, succeeds in `default` and fails with `egress_denied` in
/// `team-a`, whose request never reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_policy_replaces_the_default_for_its_steps() {
    const TIMEOUT: Duration = Duration::from_secs(60);
    let api = HttpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rpaflow.toml");
    std::fs::write(
        &config,
        "[worker.egress_namespaces.team-a]\nallow_private = false\n",
    )
    .unwrap();
    let flow = dir.path().join("probe.yaml");
    std::fs::write(&flow, PROBE).unwrap();
    let dev = Dev::launch_with(&["--config", config.to_str().unwrap()]).await;
    let server = dev.url();
    let cli = |ns: &str, args: &[&str]| {
        let mut full: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        full.extend(["--server".into(), server.clone(), "--ns".into(), ns.into()]);
        async move {
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            rpaflow(&refs, TIMEOUT).await
        }
    };
    cli("default", &["namespace", "create", "team-a"])
        .await
        .expect_success();

    let mut errors = Vec::new();
    for ns in ["default", "team-a"] {
        cli(ns, &["flow", "register", flow.to_str().unwrap()])
            .await
            .expect_success();
        let input = format!("url={}/{ns}", api.url());
        let started = cli(
            ns,
            &[
                "run", "start", "probe", "--input", &input, "--output", "json",
            ],
        )
        .await;
        started.expect_success();
        let started: Json = serde_json::from_str(&started.stdout).expect("JSON");
        let run_id = started["run"]["run_id"].as_str().expect("a run id");
        // `run watch` exits 0 only for a run that succeeds.
        let watched = cli(ns, &["run", "watch", run_id]).await;
        let got = cli(ns, &["run", "get", run_id, "--output", "json"]).await;
        got.expect_success();
        let run: Json = serde_json::from_str(&got.stdout).expect("JSON");
        let step = &run["steps"][0];
        match ns {
            "default" => {
                assert_eq!(watched.code(), Some(0), "{watched}");
                assert_eq!(run["status"], "succeeded", "{run}");
                assert_eq!(step["output"]["status"], 200, "{run}");
            }
            _ => {
                assert_ne!(watched.code(), Some(0), "{watched}");
                assert_eq!(run["status"], "failed", "{run}");
                assert_eq!(step["error"]["code"], "egress_denied", "{run}");
                errors.push(
                    step["error"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    }
    let port = api.url().rsplit(':').next().unwrap_or_default().to_owned();
    assert_eq!(
        errors,
        [format!(
            "egress to 127.0.0.1:{port} is denied by the worker's egress policy \
             (worker.egress_namespaces.team-a)"
        )]
    );
    let paths: Vec<String> = api.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/default"],
        "only the default namespace's request arrived"
    );
    drop(dev);
}
