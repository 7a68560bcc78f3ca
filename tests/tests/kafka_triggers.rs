//! Kafka triggers over real Apache Kafka: every message on a flow's trigger topic starts
//! exactly one run, also when the orchestrator is killed (SIGKILL) half-way and restarted, and a
//! message that cannot start a run goes to `rpaflow.dlq` instead.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rpaflow_tests::kafka::Broker;
use rpaflow_tests::{Dev, WorkerProcess};
use serde_json::{Value as Json, json};

const TOPIC: &str = "shop.orders";
const PARTITIONS: i32 = 4;
const ENV: &[(&str, &str)] = &[("RPAFLOW_KAFKA__PARTITIONS", "4")];
const MESSAGES: usize = 1000;

/// One run per order message; the message's `order` becomes the run's inputs.
const FLOW: &str = r#"
name: order-events
inputs:
  id: { type: integer }
  customer: { type: string }
triggers:
  - id: orders
    kafka:
      topic: shop.orders
      input: "{{ message.order }}"
steps:
  - { id: note, uses: echo, with: { order: "{{ inputs.id }}" } }
outputs:
  order: "{{ steps.note.output.order }}"
"#;

/// Waits until `flow` has at least `n` runs; returns how many it has then.
async fn wait_runs(dev: &Dev, flow: &str, n: usize, timeout: Duration) -> usize {
    let started = Instant::now();
    loop {
        let count = dev.list_runs(flow, "").await.len();
        if count >= n {
            return count;
        }
        if started.elapsed() > timeout {
            dev.fail(&format!(
                "{count} runs of `{flow}` within {timeout:?}, expected {n}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces order messages `range`; returns the idempotency key each run must carry.
async fn produce_orders(broker: &Broker, range: std::ops::Range<usize>) -> Vec<String> {
    let mut keys = Vec::with_capacity(range.len());
    for i in range {
        let message = json!({"order": {"id": i, "customer": format!("c{i}")}, "source": "shop"});
        let (partition, offset) = broker
            .produce_raw(TOPIC, &format!("order-{i}"), message.to_string().as_bytes())
            .await;
        keys.push(format!("kafka:{TOPIC}:{partition}:{offset}"));
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_start_a_thousand_runs_across_a_kill() {
    let broker = Broker::start().await.expect("cannot start the broker");
    broker.create_topic(TOPIC, PARTITIONS).await;
    let mut orchestrator = Dev::orchestrator(&broker.brokers(), &[], ENV).await;
    let worker = WorkerProcess::start(&broker.brokers(), "w1", &["--concurrency", "64"], ENV).await;

    // Two messages that cannot start a run: not JSON, and JSON without an `order` object.
    let (bad_partition, bad_offset) = broker.produce_raw(TOPIC, "junk", b"{not json").await;
    broker.produce_raw(TOPIC, "junk", b"42").await;
    // Half the messages wait on the topic before the flow exists: its trigger's new group
    // reads them from the beginning, as a backlog.
    let mut expected = produce_orders(&broker, 0..MESSAGES / 2).await;
    orchestrator.register(FLOW).await;
    // Kill the orchestrator while it works through them: some runs are started and their
    // offsets not yet committed, some messages not yet read.
    let at_kill = wait_runs(
        &orchestrator,
        "order-events",
        MESSAGES / 8,
        Duration::from_secs(120),
    )
    .await;
    orchestrator.kill9();
    eprintln!("{at_kill} runs when the orchestrator was killed");
    expected.extend(produce_orders(&broker, MESSAGES / 2..MESSAGES).await);
    orchestrator.restart().await;

    wait_runs(
        &orchestrator,
        "order-events",
        MESSAGES,
        Duration::from_secs(180),
    )
    .await;
    let again = orchestrator
        .output()
        .matches("delivered again; its run already exists")
        .count();
    eprintln!("{again} messages were delivered again after the restart and started nothing");
    // Anything delivered again after the restart has had time to (not) start a run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = orchestrator.list_runs("order-events", "").await;
    let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for run in &runs {
        *per_key.entry(run.idempotency_key.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "messages that started more than one run: {twice:?}"
    );
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    let got: BTreeSet<&str> = per_key.keys().copied().collect();
    assert_eq!(
        runs.len(),
        MESSAGES,
        "{} runs for {MESSAGES} messages ({at_kill} before the kill); missing: {:?}",
        runs.len(),
        expected.difference(&got).take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        got, expected,
        "one run per produced message, keyed by its offset"
    );

    // Spot checks: the inputs are the message's `order`, the run names its trigger, and it ran.
    for run in runs.iter().step_by(97) {
        let run = orchestrator
            .wait_succeeded(&run.run_id, Duration::from_secs(120))
            .await;
        let inputs: Json = serde_json::from_str(&run.inputs_json).expect("inputs are JSON");
        let id = inputs["id"].as_u64().expect("an integer id");
        assert_eq!(inputs, json!({"id": id, "customer": format!("c{id}")}));
        assert_eq!(run.trigger, "kafka:orders");
    }

    // The two bad messages are dead letters, with the reason and where they came from.
    let dlq = broker
        .read_all("rpaflow.dlq", Duration::from_secs(30))
        .await;
    let header = |m: &rpaflow_tests::kafka::RawMessage, name: &str| {
        m.header(name).unwrap_or_default().to_owned()
    };
    let from_topic: Vec<_> = dlq
        .iter()
        .filter(|m| header(m, "rpaflow-dlq-topic") == TOPIC)
        .collect();
    let not_json = from_topic
        .iter()
        .find(|m| m.payload == b"{not json")
        .unwrap_or_else(|| {
            orchestrator.fail(&format!("no dead letter for the non-JSON message: {dlq:?}"))
        });
    assert!(header(not_json, "rpaflow-dlq-reason").contains("not JSON"));
    assert_eq!(
        header(not_json, "rpaflow-dlq-partition"),
        bad_partition.to_string()
    );
    assert_eq!(
        header(not_json, "rpaflow-dlq-offset"),
        bad_offset.to_string()
    );
    let no_object = from_topic
        .iter()
        .find(|m| m.payload == b"42")
        .unwrap_or_else(|| orchestrator.fail(&format!("no dead letter for `42`: {dlq:?}")));
    assert!(
        header(no_object, "rpaflow-dlq-reason").contains("must give an object"),
        "{no_object:?}"
    );

    // Every offset is committed once its run is durable (or its message a dead letter).
    let group = "rpaflow-trigger-order-events-orders";
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for key in &expected {
        let mut parts = key.rsplitn(3, ':');
        let offset: i64 = parts
            .next()
            .and_then(|o| o.parse().ok())
            .expect("an offset");
        let partition: i32 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a partition");
        let end = ends.entry(partition).or_default();
        *end = (*end).max(offset + 1);
    }
    let started = Instant::now();
    for (partition, end) in ends {
        loop {
            let committed = broker.committed(group, TOPIC, partition).await;
            if committed.is_some_and(|c| c >= end) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                orchestrator.fail(&format!(
                    "{TOPIC}/{partition}: committed {committed:?}, expected {end}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    drop(worker);
}
