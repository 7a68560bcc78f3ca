//! The Kafka harness itself: an Apache Kafka [`Broker`] keeps messages and committed consumer-group
//! offsets across a restart, as the orchestrator and worker scenarios rely on.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use rpaflow_tests::kafka::{Broker, RawMessage};

const TOPIC: &str = "rpaflow.harness";
const GROUP: &str = "rpaflow-harness";
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A member of `GROUP` subscribed to `TOPIC`, committing by hand.
fn group_member(broker: &Broker) -> StreamConsumer {
    broker
        .client_config()
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap_or_else(|e| broker.fail(&format!("cannot create a group member: {e}")))
}

/// The next message of a group member, within 30 s (joining the group included).
async fn next(broker: &Broker, consumer: &StreamConsumer) -> RawMessage {
    match tokio::time::timeout(READ_TIMEOUT, consumer.recv()).await {
        Ok(Ok(m)) => RawMessage::from_message(&m),
        Ok(Err(e)) => broker.fail(&format!("the group member failed: {e}")),
        Err(_) => broker.fail(&format!(
            "the group member got nothing within {READ_TIMEOUT:?}"
        )),
    }
}

#[tokio::test]
async fn messages_and_committed_offsets_survive_a_restart() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut broker = Broker::start().await?;
    eprintln!(
        "broker up on {} after {:?}",
        broker.brokers(),
        started.elapsed()
    );

    broker.create_topic(TOPIC, 1).await;
    for i in 0..5 {
        let at = broker
            .produce_raw(
                TOPIC,
                &format!("run-{i}"),
                format!("payload {i}").as_bytes(),
            )
            .await;
        assert_eq!(at, (0, i), "message {i} landed elsewhere");
    }
    let before = broker.read_all(TOPIC, READ_TIMEOUT).await;
    let keys: Vec<_> = before
        .iter()
        .map(|m| m.key.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        ["run-0", "run-1", "run-2", "run-3", "run-4"],
        "{before:?}"
    );
    assert_eq!(before[4].payload, b"payload 4");
    assert_eq!(before[4].offset, 4);

    // A group member reads three messages and commits that it is done with them.
    let joined = Instant::now();
    let member = group_member(&broker);
    member.subscribe(&[TOPIC])?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&broker, &member).await);
    }
    eprintln!(
        "group member read 3 messages {:?} after subscribing",
        joined.elapsed()
    );
    assert_eq!(seen, before[..3]);
    let mut done = TopicPartitionList::new();
    done.add_partition_offset(TOPIC, 0, Offset::Offset(3))?;
    member.commit(&done, CommitMode::Sync)?;
    assert_eq!(broker.committed(GROUP, TOPIC, 0).await, Some(3));
    drop(member);

    let restarted = Instant::now();
    broker.restart().await?;
    eprintln!("broker restarted in {:?}", restarted.elapsed());

    // The SQLite file kept the messages, the high watermark and the group's offset.
    assert_eq!(broker.read_all(TOPIC, READ_TIMEOUT).await, before);
    assert_eq!(broker.committed(GROUP, TOPIC, 0).await, Some(3));
    assert_eq!(
        broker.produce_raw(TOPIC, "run-5", b"payload 5").await,
        (0, 5)
    );

    // A new member of the group resumes after the committed offset.
    let joined = Instant::now();
    let member = group_member(&broker);
    member.subscribe(&[TOPIC])?;
    let resumed = next(&broker, &member).await;
    eprintln!(
        "group member resumed {:?} after subscribing",
        joined.elapsed()
    );
    assert_eq!(resumed, before[3]);
    assert_eq!(next(&broker, &member).await, before[4]);
    assert_eq!(next(&broker, &member).await.key.as_deref(), Some("run-5"));
    Ok(())
}

#[tokio::test]
async fn read_all_reads_every_partition() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    broker.create_topic("rpaflow.spread", 3).await;
    // Creating it again is harmless.
    broker.create_topic("rpaflow.spread", 3).await;
    let mut partitions = std::collections::BTreeSet::new();
    for i in 0..12 {
        let (partition, _) = broker
            .produce_raw("rpaflow.spread", &format!("run-{i}"), b"x")
            .await;
        partitions.insert(partition);
    }
    let all = broker.read_all("rpaflow.spread", READ_TIMEOUT).await;
    assert_eq!(all.len(), 12, "{all:?}");
    let read: std::collections::BTreeSet<_> = all.iter().map(|m| m.partition).collect();
    assert_eq!(read, partitions);
    Ok(())
}

/// What rpaflow's producers need of the broker: idempotence with `acks=all`, and headers (W3C
/// trace context travels in them).
#[tokio::test]
async fn idempotent_producer_with_headers() -> anyhow::Result<()> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let broker = Broker::start().await?;
    broker.create_topic("rpaflow.headers", 1).await;
    let producer: FutureProducer = broker
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "15000")
        .create()?;
    for i in 0..3 {
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(&format!("00-{i:032x}-{i:016x}-01")),
        });
        let record = FutureRecord::to("rpaflow.headers")
            .key("run-1")
            .payload("step")
            .headers(headers);
        if let Err((e, _)) = producer.send(record, Duration::from_secs(15)).await {
            broker.fail(&format!("idempotent produce failed: {e}"));
        }
    }
    let all = broker.read_all("rpaflow.headers", READ_TIMEOUT).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(
        all[2].headers,
        [(
            "traceparent".to_owned(),
            format!("00-{:032x}-{:016x}-01", 2, 2)
        )]
    );
    Ok(())
}

/// The orchestrator's results reader hands each result straight to the engine, which
/// acknowledges it once it is durable. While 512 are unacknowledged the reader pauses, so a
/// backlog on `rpaflow.results` (an orchestrator back after an outage) is not read into memory
/// all at once; as the engine catches up, reading resumes and every result arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_results_reader_pauses_while_the_engine_is_behind() -> anyhow::Result<()> {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use prost::Message as _;
    use rpaflow_core::bus::{ResultDelivery, StepBus as _};
    use rpaflow_core::kafka::{KafkaConfig, KafkaStepBus};
    use rpaflow_proto::v1 as pb;

    const RESULTS: usize = 2000;
    let broker = Broker::start().await?;
    let bus = KafkaStepBus::connect(KafkaConfig {
        brokers: broker.brokers(),
        ..KafkaConfig::default()
    })
    .await?;
    let payloads: Vec<Vec<u8>> = (0..RESULTS)
        .map(|n| {
            pb::TaskResult {
                run_id: format!("run-{n}"),
                step_id: "s".into(),
                attempt: 1,
                ..Default::default()
            }
            .encode_to_vec()
        })
        .collect();
    let keys: Vec<String> = (0..RESULTS).map(|n| format!("run-{n}")).collect();
    futures::future::join_all(
        keys.iter()
            .zip(&payloads)
            .map(|(key, payload)| broker.produce_raw("rpaflow.results", key, payload)),
    )
    .await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ResultDelivery>();
    bus.deliver_results(Arc::new(tx))?;
    // An engine that makes nothing durable: the reader stops at its backlog.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut held = Vec::new();
    while let Ok(delivery) = rx.try_recv() {
        held.push(delivery);
    }
    assert!(
        (512..600).contains(&held.len()),
        "{} of {RESULTS} results taken while none was acknowledged",
        held.len()
    );

    // The engine catches up: everything arrives, each result once.
    let mut runs: BTreeSet<String> = held.iter().map(|d| d.result.run_id.clone()).collect();
    let mut taken = held.len();
    for delivery in held {
        delivery.ack.ack();
    }
    while taken < RESULTS {
        let delivery = tokio::time::timeout(READ_TIMEOUT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{taken} of {RESULTS} results, then nothing"))
            .expect("the reader is running");
        runs.insert(delivery.result.run_id.clone());
        delivery.ack.ack();
        taken += 1;
    }
    assert_eq!(runs.len(), RESULTS, "every result, once");
    bus.close().await;
    Ok(())
}
