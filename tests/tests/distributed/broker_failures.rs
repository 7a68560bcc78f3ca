//! Brokers fail under load, on a three-node Apache Kafka cluster (replication factor 3,
//! `min.insync.replicas=2`): one node is killed, the leader of `rpaflow.results` is killed and
//! comes back, and every node stops for 20 s. Each time every run must succeed exactly once
//! (one `run_succeeded`, one accepted result per attempt, one `step_finished` per step) with
//! nothing on the dead-letter topic.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::Cluster;

/// Ten chained steps, each adding one.
fn ten_steps() -> String {
    let mut flow = String::from("name: ten\nsteps:\n  - { id: s1, uses: echo, with: { n: 1 } }\n");
    for i in 2..=10 {
        flow.push_str(&format!(
            "  - {{ id: s{i}, uses: echo, needs: s{p}, with: {{ n: \"{{{{ steps.s{p}.output.n + 1 }}}}\" }} }}\n",
            p = i - 1
        ));
    }
    flow.push_str("outputs:\n  n: \"{{ steps.s10.output.n }}\"\n");
    flow
}

/// How many runs each scenario starts.
const RUNS: usize = 500;
/// How long the runs may take to finish after the failure.
const FINISH: Duration = Duration::from_secs(300);

/// Every run of `ids` ended with `n = 10`, spot-checked on a sample.
async fn assert_outputs(cluster: &Cluster, ids: &[String]) {
    for id in ids.iter().step_by(25) {
        let run = cluster.orchestrator.get(id).await;
        let outputs: serde_json::Value =
            serde_json::from_str(&run.outputs_json).expect("outputs are JSON");
        assert_eq!(outputs, json!({"n": 10}), "run {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broker_killed_under_load_loses_nothing_and_runs_nothing_twice() {
    let mut cluster = Cluster::on_three_nodes(2).await;
    // rpaflow made its topics with a replica on every node (min(3, brokers)).
    for topic in ["rpaflow.results", "rpaflow.tasks.default", "rpaflow.dlq"] {
        assert_eq!(cluster.broker.replicas(topic, 0).await, 3, "{topic}");
    }
    cluster.orchestrator.register(&ten_steps()).await;
    let ids = cluster.start_runs("ten", RUNS, "kill-one").await;
    cluster.wait_progress_of("ten", 20, "before the kill").await;
    // Not the first node: the clients were given all three, but node 1 is the one every
    // client met first.
    cluster.broker.kill(2);
    cluster.wait_all_succeeded("ten", RUNS, FINISH).await;
    cluster.assert_exactly_once(&ids).await;
    cluster.assert_no_dead_letters().await;
    assert_outputs(&cluster, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_results_leader_killed_and_restarted_under_load_loses_nothing() {
    let mut cluster = Cluster::on_three_nodes(2).await;
    cluster.orchestrator.register(&ten_steps()).await;
    let ids = cluster.start_runs("ten", RUNS, "leader").await;
    cluster
        .wait_progress_of("ten", 20, "before the leader was killed")
        .await;
    let leader = cluster.broker.leader("rpaflow.results", 0).await;
    cluster.broker.kill(leader);
    // The controller moves the leadership once the node's session ends (6 s).
    let killed = Instant::now();
    while cluster.broker.leader("rpaflow.results", 0).await == leader {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the leadership of rpaflow.results/0 did not move off the killed node {leader}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster
        .wait_progress_of("ten", 150, "with the results leader down")
        .await;
    cluster
        .broker
        .restart_node(leader)
        .await
        .expect("the killed leader restarts on its data");
    cluster.wait_all_succeeded("ten", RUNS, FINISH).await;
    cluster.assert_exactly_once(&ids).await;
    cluster.assert_no_dead_letters().await;
    assert_outputs(&cluster, &ids).await;
}

/// Every node goes down for 20 s. The services stay up, say so once each, keep accepting runs
/// (StartRun stores them durably and their steps go out when Kafka is back) and finish everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_down_for_twenty_seconds_then_everything_finishes() {
    const OUTAGE: Duration = Duration::from_secs(20);
    const DURING: usize = 20;
    let mut cluster = Cluster::on_three_nodes(2).await;
    cluster.orchestrator.register(&ten_steps()).await;
    let mut ids = cluster.start_runs("ten", 200, "outage").await;
    cluster
        .wait_progress_of("ten", 20, "before the outage")
        .await;
    let down = Instant::now();
    cluster.broker.stop();

    // Runs started while Kafka is away are accepted at once: stored, not dispatched yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..DURING {
        let asked = Instant::now();
        let (run, created) = cluster
            .orchestrator
            .start("ten", json!({}), &format!("during-{i}"))
            .await;
        assert!(created, "run {i} started during the outage was not new");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "StartRun took {:?} while Kafka was away",
            asked.elapsed()
        );
        ids.push(run.run_id);
    }
    if let Some(rest) = OUTAGE.checked_sub(down.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    // Each service noticed, once.
    let orchestrator_log = cluster.orchestrator.output();
    let outages = |log: &str| log.matches("kafka unreachable").count();
    assert_eq!(
        outages(&orchestrator_log),
        1,
        "the orchestrator should report the outage once:\n{}",
        rpaflow_tests::tail(&orchestrator_log, 60)
    );
    for worker in &cluster.workers {
        let log = worker.output();
        assert_eq!(
            outages(&log),
            1,
            "worker {} should report the outage once:\n{}",
            worker.id(),
            rpaflow_tests::tail(&log, 60)
        );
    }

    cluster
        .broker
        .restart()
        .await
        .expect("the cluster restarts on its data");
    cluster
        .wait_all_succeeded("ten", 200 + DURING, FINISH)
        .await;
    cluster.assert_exactly_once(&ids).await;
    cluster.assert_no_dead_letters().await;
    assert_outputs(&cluster, &ids).await;
    let orchestrator_log = cluster.orchestrator.output();
    assert!(
        orchestrator_log.contains("kafka reachable again"),
        "the orchestrator did not report the recovery:\n{}",
        rpaflow_tests::tail(&orchestrator_log, 60)
    );
    assert_eq!(outages(&orchestrator_log), 1, "one outage, one report");
    // The log says so once, not once per message: no flood of warnings while Kafka was away.
    let warnings = orchestrator_log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    assert!(
        warnings < 20,
        "{warnings} warnings and errors for one outage:\n{}",
        rpaflow_tests::tail(&orchestrator_log, 80)
    );
}
