//! The distributed services over real Apache Kafka: one `rpaflow orchestrator`, two or more
//! `rpaflow worker` processes, talking only through Kafka. Processes are killed mid-flight, the
//! broker is stopped and started again, garbage is put on a task topic, a worker joins under
//! load; every run must still succeed exactly once. `broker_failures` does the same to brokers
//! of a three-node cluster.
//!
//! The scenarios run one at a time (they share two cores), each on its own broker.

mod broker_failures;
mod cluster;

use std::time::Duration;

use cluster::{Cluster, ENV, FIVE_STEPS, SLOW, WORKER_ARGS, serial};
use rpaflow_tests::kafka::Broker;
use rpaflow_tests::{Dev, WorkerProcess, describe_run, pb};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_runs_of_five_steps_across_two_workers() {
    let cluster = Cluster::start(2).await;
    cluster.orchestrator.register(FIVE_STEPS).await;
    let ids = cluster.start_runs("five", 1000, "bulk").await;
    cluster
        .wait_all_succeeded("five", 1000, Duration::from_secs(240))
        .await;
    // Spot-check outputs and the exactly-once record on a sample.
    for id in ids.iter().step_by(50) {
        let run = cluster.orchestrator.get(id).await;
        let outputs: serde_json::Value =
            serde_json::from_str(&run.outputs_json).expect("outputs are JSON");
        assert_eq!(outputs, json!({"n": 5}), "{}", describe_run(&run));
    }
    cluster.assert_exactly_once(&ids[..100]).await;
    let per_worker: Vec<usize> = cluster
        .workers
        .iter()
        .map(WorkerProcess::steps_succeeded)
        .collect();
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "both workers must have run steps: {per_worker:?}"
    );
    assert!(
        per_worker.iter().sum::<usize>() >= 5000,
        "5,000 steps must have run: {per_worker:?}"
    );
}

/// A worker dies with steps in hand and nothing replaces it: Kafka hands its partitions to the
/// survivor after `session.timeout.ms`, and the dead worker's steps time out and are retried (or
/// redelivered from its uncommitted offsets) there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_of_a_killed_worker_are_retried_on_the_others() {
    let mut cluster = Cluster::start(2).await;
    cluster.orchestrator.register(SLOW).await;
    cluster.wait_balanced().await;
    let ids = cluster.start_runs("slow", 12, "slow").await;
    // Wait until both workers are in the middle of `hold` steps.
    cluster.wait_steps_started(0..2).await;
    cluster.workers[0].kill9();
    let killed = cluster.workers[0].output();
    let held: Vec<String> = ids
        .iter()
        .filter(|id| {
            let of_run = |what: &str| {
                killed
                    .lines()
                    .any(|l| l.contains(id.as_str()) && l.contains(what))
            };
            of_run("step started") && !of_run("step succeeded")
        })
        .cloned()
        .collect();
    assert!(!held.is_empty(), "w1 held no step when it was killed");

    cluster
        .wait_all_succeeded("slow", 12, Duration::from_secs(120))
        .await;
    cluster.assert_exactly_once(&ids).await;
    let survivors = cluster.workers[1].output();
    for id in &held {
        for step in ["hold", "after"] {
            assert!(
                survivors.lines().any(|l| l.contains(id.as_str())
                    && l.contains(&format!("step={step} "))
                    && l.contains("step succeeded")),
                "run {id}: step {step}, held by the killed worker, was not run by another"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_killed_mid_load_and_restarted_finishes_every_run_once() {
    let mut cluster = Cluster::start(2).await;
    cluster.orchestrator.register(FIVE_STEPS).await;
    let ids = cluster.start_runs("five", 300, "crash").await;
    // Kill it while runs are half-way.
    cluster.wait_progress(30, "before the kill").await;
    cluster.orchestrator.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.orchestrator.restart().await;
    cluster
        .wait_all_succeeded("five", 300, Duration::from_secs(180))
        .await;
    cluster.assert_exactly_once(&ids).await;
    // Starting again with the same keys starts nothing new.
    let (again, created) = cluster
        .orchestrator
        .start("five", json!({}), "crash-7")
        .await;
    assert!(!created);
    assert_eq!(again.run_id, ids[7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_and_restarted_mid_load_loses_nothing() {
    let mut cluster = Cluster::start(2).await;
    cluster.orchestrator.register(FIVE_STEPS).await;
    let ids = cluster.start_runs("five", 200, "outage").await;
    cluster.wait_progress(20, "before the outage").await;
    cluster.broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster
        .broker
        .restart()
        .await
        .expect("the broker restarts on its data");
    cluster
        .wait_all_succeeded("five", 200, Duration::from_secs(240))
        .await;
    cluster.assert_exactly_once(&ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_task_topic_goes_to_the_dead_letter_topic() {
    let cluster = Cluster::start(2).await;
    cluster.orchestrator.register(FIVE_STEPS).await;
    let (partition, offset) = cluster
        .broker
        .produce_raw("rpaflow.tasks.default", "junk-key", b"this is not protobuf")
        .await;
    let ids = cluster.start_runs("five", 20, "after-garbage").await;
    cluster
        .wait_all_succeeded("five", 20, Duration::from_secs(60))
        .await;
    let dead = cluster
        .broker
        .read_all("rpaflow.dlq", Duration::from_secs(30))
        .await;
    let letter = dead
        .iter()
        .find(|m| m.payload == b"this is not protobuf")
        .unwrap_or_else(|| cluster.fail(&format!("no dead letter; rpaflow.dlq has {dead:?}")));
    let header = |name: &str| {
        letter
            .header(name)
            .unwrap_or_else(|| panic!("dead letter without {name}: {letter:?}"))
    };
    assert!(
        header("rpaflow-dlq-reason").contains("rpaflow.v1.Task"),
        "{letter:?}"
    );
    assert_eq!(header("rpaflow-dlq-topic"), "rpaflow.tasks.default");
    assert_eq!(header("rpaflow-dlq-partition"), partition.to_string());
    assert_eq!(header("rpaflow-dlq-offset"), offset.to_string());
    assert_eq!(letter.key.as_deref(), Some("junk-key"));
    cluster.assert_exactly_once(&ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_worker_joining_under_load_takes_a_share_and_nothing_is_lost() {
    let mut cluster = Cluster::start(2).await;
    cluster.orchestrator.register(FIVE_STEPS).await;
    let ids = cluster.start_runs("five", 600, "join").await;
    cluster
        .wait_progress(50, "before the third worker joined")
        .await;
    let third = cluster.add_worker().await;
    let more = cluster.start_runs("five", 300, "join-more").await;
    cluster
        .wait_all_succeeded("five", 900, Duration::from_secs(240))
        .await;
    let w3 = &cluster.workers[third];
    assert!(
        w3.output().contains("partitions assigned"),
        "w3 was assigned no partition:\n{}",
        w3.output()
    );
    assert!(
        w3.steps_succeeded() > 0,
        "w3 ran no step after joining:\n{}",
        rpaflow_tests::tail(&w3.output(), 30)
    );
    cluster.assert_exactly_once(&ids).await;
    cluster.assert_exactly_once(&more).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_finishes_its_steps_and_leaves() {
    let mut cluster = Cluster::start(1).await;
    cluster.orchestrator.register(SLOW).await;
    cluster.wait_balanced().await;
    let ids = cluster.start_runs("slow", 3, "drain").await;
    // A graceful stop finishes the steps the worker started; one that was fetched but not yet
    // started would only be handed back when the worker leaves (see the README), so the test
    // stops the worker once all three are under way.
    cluster.wait_runs_started(0, &ids, "hold").await;
    let status = cluster.workers[0].terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "the worker exited with {status}");
    let output = cluster.workers[0].output();
    assert!(output.contains("rpaflow worker w1: stopped"), "{output}");
    // What it held was finished and published before it left: no retry was needed.
    let output = cluster.workers[0].output();
    for id in &ids {
        assert!(
            output.lines().any(|l| l.contains(id.as_str())
                && l.contains("step=hold ")
                && l.contains("step succeeded")),
            "w1 did not finish run {id}'s step before it left:\n{output}"
        );
    }
    cluster.add_worker().await;
    cluster
        .wait_all_succeeded("slow", 3, Duration::from_secs(60))
        .await;
    for id in &ids {
        let events = cluster.orchestrator.events(id).await;
        assert!(
            events.of("task_failed").next().is_none(),
            "run {id} needed a retry after a graceful stop:\n{events}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_run_is_refused_past_the_backlog_of_a_queue() {
    // No worker: tasks pile up on the queue.
    let config = tempfile::NamedTempFile::new().expect("a temporary config file");
    std::fs::write(
        config.path(),
        "[orchestrator]\nmax_in_flight_per_queue = 5\n",
    )
    .expect("write the config");
    let path = config.path().to_str().expect("a UTF-8 path").to_owned();
    let mut cluster = Cluster::start_with(0, &["--config", &path]).await;
    cluster.orchestrator.register(SLOW).await;
    // Back to back, as a burst of clients would: each start's first task counts at once.
    cluster.start_runs("slow", 5, "backlog").await;
    let refused = cluster
        .orchestrator
        .client()
        .await
        .start_run(pb::StartRunRequest {
            flow: "slow".into(),
            version: 0,
            inputs_json: "{}".into(),
            idempotency_key: "backlog-5".into(),
        })
        .await
        .map(|r| r.into_inner());
    let refused = match refused {
        Err(status) => status,
        Ok(accepted) => cluster.fail(&format!(
            "the sixth run was accepted over the backlog (run {:?})",
            accepted.run.map(|r| r.run_id)
        )),
    };
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("queue `default`")
            && refused.message().contains("max_in_flight_per_queue"),
        "{}",
        refused.message()
    );
    // Workers drain the backlog; new runs are accepted again.
    cluster.add_worker().await;
    cluster
        .wait_all_succeeded("slow", 5, Duration::from_secs(60))
        .await;
    cluster.start_runs("slow", 1, "after-backlog").await;
    cluster
        .wait_all_succeeded("slow", 6, Duration::from_secs(60))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_a_flow_over_kafka() {
    let _serial = serial().lock().await;
    let broker = Broker::start().await.expect("cannot start the broker");
    let data = tempfile::tempdir().expect("a temporary directory");
    let data_dir = data.path().to_str().expect("a UTF-8 path");
    let brokers = broker.brokers();
    let out = rpaflow_tests::rpaflow(
        &[
            "dev",
            "examples/hello.yaml",
            "--kafka",
            &brokers,
            "--listen",
            "127.0.0.1:0",
            "--data",
            data_dir,
        ],
        Duration::from_secs(120),
    )
    .await;
    out.expect_success();
    assert!(out.stdout.contains("SUCCEEDED"), "{out}");
    assert!(out.stdout.contains("log: Hello, world!"), "{out}");
}

/// A step longer than `max.poll.interval.ms` (10 s here, the lowest librdkafka allows with a
/// 10 s session): if it held up polling, librdkafka would leave the group mid-step and the task
/// would be delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_longer_than_the_poll_interval_keeps_its_partitions() {
    const LONG: &str = r#"
name: long
steps:
  - id: browse
    uses: sleep
    with: { duration: 14s }
    timeout: 60s
"#;
    let _serial = serial().lock().await;
    let broker = Broker::start().await.expect("cannot start the broker");
    let orchestrator = Dev::orchestrator(&broker.brokers(), &[], ENV).await;
    let env = [
        ("RPAFLOW_KAFKA__PARTITIONS", "4"),
        ("RPAFLOW_KAFKA__CONSUMER__MAX_POLL_INTERVAL_MS", "10000"),
    ];
    let worker = WorkerProcess::start(&broker.brokers(), "w1", WORKER_ARGS, &env).await;
    orchestrator.register(LONG).await;
    let id = orchestrator.run("long", json!({})).await;
    orchestrator
        .wait_succeeded(&id, Duration::from_secs(60))
        .await;
    let out = worker.output();
    let started = out
        .lines()
        .filter(|l| l.contains(id.as_str()) && l.contains("step started"))
        .count();
    assert_eq!(started, 1, "the step was delivered again:\n{out}");
    assert!(
        !out.contains("partitions revoked"),
        "the worker lost its partitions during the step:\n{out}"
    );
    let events = orchestrator.events(&id).await;
    assert_eq!(events.count("task_dispatched"), 1, "{events}");
}

/// An enterprise cluster wants credentials: the orchestrator and a worker reach a SASL_PLAINTEXT
/// listener with PLAIN users through `[kafka.client]` settings (here from variables) and run a
/// flow; a worker with a wrong password stops at once with an error naming the broker, the
/// mechanism and the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_authenticate_with_sasl_and_a_wrong_password_is_named() {
    let _serial = serial().lock().await;
    let broker = Broker::start_with(rpaflow_tests::kafka::BrokerOptions {
        nodes: 1,
        sasl_users: vec![("rpaflow".into(), "s3cret-pw".into())],
    })
    .await
    .expect("cannot start the broker");
    let sasl = broker.sasl_brokers().expect("a SASL listener");
    let credentials = |password: &'static str| {
        vec![
            ("RPAFLOW_KAFKA__PARTITIONS", "4"),
            ("RPAFLOW_KAFKA__CLIENT__SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("RPAFLOW_KAFKA__CLIENT__SASL_MECHANISMS", "PLAIN"),
            ("RPAFLOW_KAFKA__CLIENT__SASL_USERNAME", "rpaflow"),
            ("RPAFLOW_KAFKA__CLIENT__SASL_PASSWORD", password),
        ]
    };
    let orchestrator = Dev::orchestrator(&sasl, &[], &credentials("s3cret-pw")).await;
    let _worker = WorkerProcess::start(&sasl, "w1", WORKER_ARGS, &credentials("s3cret-pw")).await;
    orchestrator.register(FIVE_STEPS).await;
    let id = orchestrator.run("five", json!({})).await;
    orchestrator
        .wait_succeeded(&id, Duration::from_secs(60))
        .await;

    let refused = rpaflow_tests::rpaflow_with_env(
        &["worker", "--kafka", &sasl, "--id", "intruder"],
        &credentials("wrong-pw"),
        Duration::from_secs(60),
    )
    .await;
    assert_ne!(refused.code(), Some(0), "{refused}");
    let said = format!("{}{}", refused.stdout, refused.stderr);
    for needle in [
        sasl.as_str(),
        "refused the credentials",
        "SASL mechanism PLAIN",
        "user `rpaflow`",
        "Authentication failed",
    ] {
        assert!(said.contains(needle), "`{needle}` missing:\n{refused}");
    }
    assert!(
        !said.contains("wrong-pw"),
        "the password was printed:\n{refused}"
    );
}

/// Secrets cross Kafka sealed: the orchestrator and a worker share the secrets key (a file made
/// by `rpaflow secret generate-key`); the API gets the value; no message on any rpaflow topic
/// holds it; a worker without the key fails the step saying what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_cross_kafka_sealed_and_only_workers_with_the_key_open_them() {
    const SECRET: &str = "kafka-s3cr3t-Wm42-never-in-a-topic";
    const FLOW: &str = r#"
name: calls-api
inputs:
  api: { type: string }
steps:
  - id: call
    uses: http
    with:
      url: "{{ inputs.api }}/echo/x"
      headers: { Authorization: "Bearer {{ secrets.API_TOKEN }}" }
"#;
    let _serial = serial().lock().await;
    let broker = Broker::start().await.expect("cannot start the broker");
    let keys = tempfile::tempdir().expect("a temporary directory");
    let key_file = keys.path().join("secrets.key");
    let key = key_file.to_str().expect("a UTF-8 path");
    rpaflow_tests::rpaflow(&["secret", "generate-key", key], Duration::from_secs(30))
        .await
        .expect_success();
    let with_key = [("RPAFLOW_SECRETS__KEY_FILE", key), ENV[0]];
    let orchestrator = Dev::orchestrator(&broker.brokers(), &[], &with_key).await;
    let mut holder =
        WorkerProcess::start(&broker.brokers(), "holder", WORKER_ARGS, &with_key).await;
    let api = rpaflow_tests::HttpServer::start();
    rpaflow_tests::rpaflow(
        &[
            "secret",
            "set",
            "API_TOKEN",
            "--value",
            SECRET,
            "--server",
            &orchestrator.url(),
        ],
        Duration::from_secs(30),
    )
    .await
    .expect_success();
    orchestrator.register(FLOW).await;
    let id = orchestrator
        .run("calls-api", json!({"api": api.url()}))
        .await;
    orchestrator
        .wait_succeeded(&id, Duration::from_secs(60))
        .await;
    let seen = api.requests_to("/echo/");
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {SECRET}").as_str())
    );

    let tasks = broker
        .read_all("rpaflow.tasks.default", Duration::from_secs(30))
        .await;
    assert!(
        tasks
            .iter()
            .any(|m| String::from_utf8_lossy(&m.payload).contains("rpaflow-sealed:v1:")),
        "the task carries the value sealed"
    );
    for topic in ["rpaflow.tasks.default", "rpaflow.results", "rpaflow.dlq"] {
        for message in broker.read_all(topic, Duration::from_secs(30)).await {
            let text = String::from_utf8_lossy(&message.payload);
            assert!(!text.contains(SECRET), "{topic} holds the secret: {text}");
            for (name, value) in &message.headers {
                assert!(
                    !value.contains(SECRET),
                    "{topic} header {name} holds the secret"
                );
            }
        }
    }

    // A worker that was not given the key cannot open it.
    holder.kill9();
    let _keyless = WorkerProcess::start(&broker.brokers(), "keyless", WORKER_ARGS, ENV).await;
    let id = orchestrator
        .run("calls-api", json!({"api": api.url()}))
        .await;
    let run = orchestrator
        .wait_finished(&id, Duration::from_secs(90))
        .await;
    assert_eq!(
        run.status(),
        pb::RunStatus::Failed,
        "{}",
        describe_run(&run)
    );
    let error = run.error.expect("an error");
    assert_eq!(error.code, "secret_missing", "{error:?}");
    assert!(error.message.contains("no secrets key"), "{error:?}");
}
