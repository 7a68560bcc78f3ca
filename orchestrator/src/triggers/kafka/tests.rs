//! What a trigger consumer does with each message, with runs started on a fake [`RunStarter`] and
//! a fake dead-letter topic: no broker, and back-offs on paused time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rpaflow_core::bus::{Ack, BusError};
use serde_json::{Value as Json, json};

use super::*;
use crate::triggers::testing::{FakeStarter, flow};

const TOPIC: &str = "shop.orders";

/// A flow with a kafka trigger `shop` that takes each message whole, and one `picked` that takes
/// the message's `order`.
const ORDERS: &str = r#"
name: orders
inputs:
  id: { type: integer }
triggers:
  - id: shop
    kafka: { topic: shop.orders }
  - id: picked
    kafka: { topic: shop.picked, input: "{{ message.order }}" }
steps:
  - { id: hello, uses: log, with: { message: hi } }
"#;

/// The dead-letter topic in memory; its writes can be made to fail.
#[derive(Default)]
struct FakeDeadLetters {
    /// What was put there, with the reason, in order.
    letters: Mutex<Vec<(TriggerMessage, String)>>,
    failing: AtomicBool,
}

impl DeadLetters for FakeDeadLetters {
    async fn dead_letter(
        &self,
        message: &TriggerMessage,
        reason: &str,
    ) -> rpaflow_core::bus::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(BusError::Transport {
                topic: "rpaflow.dlq".into(),
                message: "broker unreachable".into(),
            });
        }
        let letter = (message.clone(), reason.to_owned());
        self.letters.lock().unwrap().push(letter);
        Ok(())
    }
}

/// One trigger consumer's surroundings: the starter, the dead-letter topic, and the
/// acknowledgements of its messages.
#[derive(Clone)]
struct Harness {
    starter: FakeStarter,
    dead_letters: Arc<FakeDeadLetters>,
    /// For each acknowledgement, in order: the offset acknowledged and how many starts had been
    /// asked for by then.
    acks: Arc<Mutex<Vec<(i64, usize)>>>,
    stop: CancellationToken,
}

impl Harness {
    /// The `orders` flow at version 3, registered.
    fn new() -> Self {
        let starter = FakeStarter::default();
        *starter.flows.lock().unwrap() = vec![flow(ORDERS, 3)];
        Self {
            starter,
            dead_letters: Arc::default(),
            acks: Arc::default(),
            stop: CancellationToken::new(),
        }
    }

    /// Consumes the message at `offset` of partition 2 for the trigger `trigger` (the topic
    /// `shop.orders` whatever the trigger: only the spec tells them apart here).
    async fn consume(&self, trigger: &str, offset: i64, value: Json) {
        let mut message = TriggerMessage::default();
        message.topic = TOPIC.into();
        message.partition = 2;
        message.offset = offset;
        message.value = value;
        let (acks, starts) = (Arc::clone(&self.acks), Arc::clone(&self.starter.starts));
        let ack = Ack::new(move || {
            let started = starts.lock().unwrap().len();
            acks.lock().unwrap().push((offset, started));
        });
        let spec = KafkaTriggers::new(self.starter.clone(), KafkaConfig::default())
            .wanted()
            .unwrap()
            .remove(&("orders".to_owned(), trigger.to_owned()))
            .unwrap();
        let delivery = TriggerDelivery { message, ack };
        let dead_letters = &*self.dead_letters;
        start(
            self.starter.clone(),
            dead_letters,
            spec,
            delivery,
            self.stop.clone(),
        )
        .await;
    }

    fn acks(&self) -> Vec<(i64, usize)> {
        self.acks.lock().unwrap().clone()
    }

    fn starts(&self) -> usize {
        self.starter.starts.lock().unwrap().len()
    }

    fn runs(&self) -> usize {
        self.starter.runs.lock().unwrap().len()
    }

    /// The reasons given for what went to the dead-letter topic, with the messages' offsets.
    fn dead_lettered(&self) -> Vec<(i64, String)> {
        let letters = self.dead_letters.letters.lock().unwrap();
        letters.iter().map(|(m, r)| (m.offset, r.clone())).collect()
    }

    /// The reason of the one message dead-lettered so far, which must be the one at `offset`.
    fn only_dead_letter(&self, offset: i64) -> String {
        let mut dead = self.dead_lettered();
        assert_eq!(dead.len(), 1, "{dead:?}");
        let (at, reason) = dead.remove(0);
        assert_eq!(at, offset);
        reason
    }

    fn refuse(&self, err: Error) {
        self.starter.refusals.lock().unwrap().push_back(err);
    }
}

#[tokio::test]
async fn a_message_starts_one_run_and_is_acknowledged_once_it_started() {
    let h = Harness::new();
    h.consume("shop", 41, json!({"id": 7})).await;

    let starts = h.starter.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].flow, "orders");
    assert_eq!(starts[0].version, 3);
    assert_eq!(Json::Object(starts[0].inputs.clone()), json!({"id": 7}));
    assert_eq!(starts[0].idempotency_key, "kafka:shop.orders:2:41");
    assert_eq!(starts[0].trigger, "kafka:shop");
    assert_eq!(h.runs(), 1);
    // Once, after the start.
    assert_eq!(h.acks(), vec![(41, 1)]);
    assert!(h.dead_lettered().is_empty());
}

#[tokio::test]
async fn a_message_delivered_again_is_acknowledged_without_a_second_run() {
    let h = Harness::new();
    h.consume("shop", 41, json!({"id": 7})).await;
    // After a crash before the commit: the same offset, so the same idempotency key.
    h.consume("shop", 41, json!({"id": 7})).await;

    assert_eq!(
        h.starter.keys(),
        ["kafka:shop.orders:2:41", "kafka:shop.orders:2:41"]
    );
    assert_eq!(h.runs(), 1);
    assert_eq!(h.acks(), vec![(41, 1), (41, 2)]);

    // The next message is a run of its own.
    h.consume("shop", 42, json!({"id": 8})).await;
    assert_eq!(h.runs(), 2);
}

#[tokio::test]
async fn the_input_template_maps_the_message_to_the_run_inputs() {
    let h = Harness::new();
    let message = json!({"order": {"id": 7}, "source": "shop"});
    h.consume("picked", 41, message).await;

    let starts = h.starter.starts.lock().unwrap().clone();
    assert_eq!(Json::Object(starts[0].inputs.clone()), json!({"id": 7}));
    assert_eq!(starts[0].trigger, "kafka:picked");
    assert_eq!(h.acks(), vec![(41, 1)]);

    // A message the template makes no object of can never start a run.
    h.consume("picked", 42, json!({"order": [7]})).await;
    let reason = h.only_dead_letter(42);
    assert!(reason.contains("`input` must give an object"), "{reason}");
    assert!(reason.contains("not an array"), "{reason}");
    assert_eq!(h.starts(), 1);
    assert_eq!(h.acks(), vec![(41, 1), (42, 1)]);
}

#[tokio::test]
async fn a_message_that_is_not_an_object_goes_to_the_dead_letter_topic_and_starts_nothing() {
    let h = Harness::new();
    h.consume("shop", 41, json!(42)).await;

    let reason = h.only_dead_letter(41);
    assert!(
        reason.starts_with("the message must be a JSON object"),
        "{reason}"
    );
    assert!(reason.contains("not a number"), "{reason}");
    assert_eq!(h.starts(), 0);
    assert_eq!(h.acks(), vec![(41, 0)]);
}

#[tokio::test]
async fn a_message_stays_unacknowledged_while_the_dead_letter_topic_cannot_take_it() {
    let h = Harness::new();
    h.dead_letters.failing.store(true, Ordering::SeqCst);
    h.consume("shop", 41, json!("not an object")).await;
    assert!(h.acks().is_empty());
    assert!(h.dead_lettered().is_empty());
    assert_eq!(h.starts(), 0);

    // Delivered again once the topic is back: dead-lettered and acknowledged then.
    h.dead_letters.failing.store(false, Ordering::SeqCst);
    h.consume("shop", 41, json!("not an object")).await;
    assert_eq!(h.dead_lettered().len(), 1);
    assert_eq!(h.acks(), vec![(41, 0)]);
}

#[tokio::test]
async fn a_message_the_flow_refuses_goes_to_the_dead_letter_topic() {
    let h = Harness::new();
    h.refuse(Error::InvalidArgument(
        "input `id` must be an integer".into(),
    ));
    h.consume("shop", 41, json!({"id": "seven"})).await;
    assert_eq!(
        h.dead_lettered(),
        vec![(41, "input `id` must be an integer".to_owned())]
    );
    assert_eq!(h.acks(), vec![(41, 1)]);

    // The flow was deleted since.
    h.refuse(Error::FlowNotFound("orders".into()));
    h.consume("shop", 42, json!({"id": 8})).await;
    assert_eq!(
        h.dead_lettered()[1],
        (42, "no flow named `orders`".to_owned())
    );
    assert_eq!(h.acks(), vec![(41, 1), (42, 2)]);
    assert_eq!(h.runs(), 0);
}

#[tokio::test]
async fn a_message_the_concurrency_policy_skips_is_acknowledged_without_a_run() {
    let h = Harness::new();
    h.refuse(Error::FailedPrecondition(
        "flow `orders` has 1 runs active".into(),
    ));
    h.consume("shop", 41, json!({"id": 7})).await;
    assert_eq!(h.acks(), vec![(41, 1)]);
    assert_eq!(h.runs(), 0);
    assert!(h.dead_lettered().is_empty());
}

#[tokio::test]
async fn a_message_whose_inputs_cannot_be_evaluated_now_stays_unacknowledged() {
    let h = Harness::new();
    h.starter.evaluator_stopped.store(true, Ordering::SeqCst);
    h.consume("picked", 41, json!({"order": {"id": 7}})).await;
    assert!(h.acks().is_empty());
    assert_eq!(h.starts(), 0);
    assert!(h.dead_lettered().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_start_refused_for_load_is_tried_again_after_100_then_200_ms() {
    let h = Harness::new();
    h.refuse(Error::ResourceExhausted("too many runs".into()));
    h.refuse(Error::ResourceExhausted("too many runs".into()));
    let consuming = tokio::spawn({
        let h = h.clone();
        async move { h.consume("shop", 41, json!({"id": 7})).await }
    });
    let at = |ms| tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_millis(ms));

    // Paused time moves to each wake-up; the checks fall between the retries.
    at(99).await;
    assert_eq!((h.starts(), h.acks().len()), (1, 0));
    at(2).await; // 101 ms
    assert_eq!((h.starts(), h.acks().len()), (2, 0));
    at(198).await; // 299 ms
    assert_eq!((h.starts(), h.acks().len()), (2, 0));
    at(2).await; // 301 ms
    assert_eq!(h.starts(), 3);
    assert_eq!(h.acks(), vec![(41, 3)]);
    assert_eq!(h.runs(), 1);
    consuming.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retries_double_up_to_5_s_whatever_the_error() {
    let h = Harness::new();
    for _ in 0..4 {
        h.refuse(Error::ResourceExhausted("too many runs".into()));
        h.refuse(Error::NotRunning("orchestrator"));
    }
    let began = tokio::time::Instant::now();
    h.consume("shop", 41, json!({"id": 7})).await;
    // 100 + 200 + 400 + 800 + 1600 + 3200 + 5000 + 5000 ms.
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(16_300) && waited < Duration::from_millis(16_310),
        "{waited:?}"
    );
    assert_eq!(h.starts(), 9);
    assert_eq!(h.acks(), vec![(41, 9)]);
}

#[tokio::test(start_paused = true)]
async fn stopping_during_a_back_off_leaves_the_message_unacknowledged() {
    let h = Harness::new();
    h.refuse(Error::ResourceExhausted("too many runs".into()));
    let consuming = tokio::spawn({
        let h = h.clone();
        async move { h.consume("shop", 41, json!({"id": 7})).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let began = tokio::time::Instant::now();
    h.stop.cancel();
    consuming.await.unwrap();
    // At once, not at the end of the wait.
    assert!(began.elapsed() < Duration::from_millis(50));
    assert_eq!(h.starts(), 1);
    assert!(h.acks().is_empty());
    assert_eq!(h.runs(), 0);
}

#[test]
fn the_kafka_triggers_of_the_latest_flows_are_consumed() {
    const MIXED: &str = r#"
name: mixed
triggers:
  - id: nightly
    schedule: { cron: "0 0 * * *" }
  - id: crm
    webhook: { token_secret: crm_token }
  - id: events
    kafka: { topic: mixed.events, input: "{{ message.body }}" }
steps:
  - { id: hello, uses: log, with: { message: hi } }
"#;
    const HOOKED: &str = r#"
name: hooked
triggers:
  - id: crm
    webhook: { token_secret: crm_token }
steps:
  - { id: hello, uses: log, with: { message: hi } }
"#;
    let starter = FakeStarter::default();
    // The registry shows the latest version of each flow: what it shows is what is consumed.
    *starter.flows.lock().unwrap() = vec![flow(ORDERS, 3), flow(MIXED, 5), flow(HOOKED, 1)];
    let triggers = KafkaTriggers::new(starter.clone(), KafkaConfig::default());
    let wanted = triggers.wanted().unwrap();

    let mut keys: Vec<_> = wanted.keys().cloned().collect();
    keys.sort();
    let key = |f: &str, t: &str| (f.to_owned(), t.to_owned());
    assert_eq!(
        keys,
        [
            key("mixed", "events"),
            key("orders", "picked"),
            key("orders", "shop")
        ]
    );
    assert_eq!(
        wanted[&key("mixed", "events")],
        Spec {
            flow: "mixed".into(),
            version: 5,
            trigger: "events".into(),
            topic: "mixed.events".into(),
            input: Some("{{ message.body }}".into()),
        }
    );
    let shop = &wanted[&key("orders", "shop")];
    assert_eq!((shop.version, shop.topic.as_str()), (3, TOPIC));
    assert_eq!(shop.input, None);

    // A new version without kafka triggers: nothing of that flow is consumed any more.
    let orders = HOOKED.replace("name: hooked", "name: orders");
    *starter.flows.lock().unwrap() = vec![flow(&orders, 4), flow(MIXED, 5), flow(HOOKED, 1)];
    let wanted = triggers.wanted().unwrap();
    assert_eq!(wanted.keys().collect::<Vec<_>>(), [&key("mixed", "events")]);
}
