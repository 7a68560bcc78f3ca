//! The scheduler's decisions on a fake clock, a fake store and a fake [`RunStarter`] that
//! records every start: nothing waits on wall time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use rpaflow_core::flow::schedule::parse_instant;
use serde_json::json;

use super::*;
use crate::orchestrator::FlowView;
use crate::triggers::testing::{FakeStarter, flow};

fn ms(instant: &str) -> i64 {
    parse_instant(instant).unwrap()
}

/// A flow `name` with one schedule trigger `tick` given as the inside of `schedule: { ... }`.
fn scheduled(name: &str, schedule: &str) -> String {
    format!(
        "name: {name}\ntriggers:\n  - id: tick\n    schedule: {{ {schedule} }}\nsteps:\n  - {{ id: hello, uses: log, with: {{ message: hi }} }}\n"
    )
}

/// The schedules' state in memory; the next writes can be made to fail.
#[derive(Clone, Default)]
struct FakeStore {
    records: Arc<Mutex<BTreeMap<(String, String), ScheduleRecord>>>,
    failing_puts: Arc<Mutex<usize>>,
}

impl ScheduleStore for FakeStore {
    fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        Ok(self.records.lock().unwrap().values().cloned().collect())
    }

    async fn put_schedule(&self, record: &ScheduleRecord) -> Result<()> {
        let mut failing = self.failing_puts.lock().unwrap();
        if *failing > 0 {
            *failing -= 1;
            return Err(Error::NotRunning("storage flusher"));
        }
        let key = (record.flow.clone(), record.trigger.clone());
        self.records.lock().unwrap().insert(key, record.clone());
        Ok(())
    }

    async fn remove_schedule(&self, flow: &str, trigger: &str) -> Result<()> {
        let key = (flow.to_owned(), trigger.to_owned());
        self.records.lock().unwrap().remove(&key);
        Ok(())
    }
}

/// A scheduler on a clock the test sets, with the fakes it fires through.
struct Harness {
    scheduler: Scheduler,
    now: Arc<AtomicI64>,
    starter: FakeStarter,
    store: FakeStore,
}

impl Harness {
    /// A scheduler that starts at `now` with these flows and an empty store.
    async fn new(now: &str, flows: Vec<FlowView>) -> Self {
        let starter = FakeStarter::default();
        *starter.flows.lock().unwrap() = flows;
        Self::restarted(now, starter, FakeStore::default()).await
    }

    /// A fresh scheduler on what an earlier one left: as after a restart of the orchestrator.
    async fn restarted(now: &str, starter: FakeStarter, store: FakeStore) -> Self {
        let now = Arc::new(AtomicI64::new(ms(now)));
        let mut scheduler = Scheduler::new(Clock::Manual(Arc::clone(&now)));
        let at = now.load(Ordering::SeqCst);
        scheduler.reload(&starter, &store, at).await.unwrap();
        Self {
            scheduler,
            now,
            starter,
            store,
        }
    }

    /// Moves the clock to `instant` and lets the scheduler look at it once.
    async fn at(&mut self, instant: &str) {
        self.at_ms(ms(instant)).await;
    }

    async fn at_ms(&mut self, now: i64) {
        self.now.store(now, Ordering::SeqCst);
        self.scheduler.tick(&self.starter, &self.store, now).await;
    }

    /// The idempotency keys of the starts asked for so far, and forgets them.
    fn take_keys(&self) -> Vec<String> {
        let mut starts = self.starter.starts.lock().unwrap();
        starts.drain(..).map(|s| s.idempotency_key).collect()
    }

    fn record(&self, flow: &str) -> ScheduleRecord {
        let key = (flow.to_owned(), "tick".to_owned());
        self.store.records.lock().unwrap()[&key].clone()
    }

    async fn command<T>(&mut self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> T {
        let (reply, answer) = oneshot::channel();
        let command = command(reply);
        self.scheduler
            .command(&self.starter, &self.store, command)
            .await;
        answer.await.unwrap()
    }

    async fn list(&mut self) -> Vec<ScheduleView> {
        let flow = String::new();
        self.command(|reply| Command::List { flow, reply })
            .await
            .unwrap()
    }

    async fn set_paused(&mut self, flow: &str, paused: bool) -> Result<ScheduleView> {
        let (flow, trigger) = (flow.to_owned(), "tick".to_owned());
        self.command(|reply| Command::SetPaused {
            flow,
            trigger,
            paused,
            reply,
        })
        .await
    }

    async fn fire_now(&mut self, flow: &str, trigger: &str) -> Result<(RunState, bool)> {
        let (flow, trigger) = (flow.to_owned(), trigger.to_owned());
        self.command(|reply| Command::FireNow {
            flow,
            trigger,
            reply,
        })
        .await
    }

    /// Gives the scheduler new flow versions, as a registration does.
    async fn flows_changed(&mut self, flows: Vec<FlowView>) {
        *self.starter.flows.lock().unwrap() = flows;
        self.command(|reply| Command::FlowsChanged { reply: Some(reply) })
            .await
            .unwrap();
    }
}

fn key(flow: &str, instant: &str) -> String {
    format!("schedule:{flow}:tick:{}", ms(instant))
}

#[tokio::test]
async fn a_schedule_fires_once_at_each_fire_time_with_its_inputs() {
    let source = scheduled("hourly", r#"cron: "0 * * * *", inputs: { region: eu }"#)
        + "inputs:\n  region: { type: string, default: us }\n";
    let mut h = Harness::new("2026-06-01T09:30:00Z", vec![flow(&source, 1)]).await;
    let view = &h.list().await[0];
    assert_eq!(
        view.next_fire_ms[..2],
        [ms("2026-06-01T10:00:00Z"), ms("2026-06-01T11:00:00Z")]
    );

    h.at("2026-06-01T09:59:59.999Z").await;
    assert!(h.take_keys().is_empty(), "nothing before the fire time");
    h.at("2026-06-01T10:00:00Z").await;
    let starts = h.starter.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].flow, "hourly");
    assert_eq!(starts[0].trigger, "schedule:tick");
    assert_eq!(starts[0].inputs["region"], json!("eu"));
    assert_eq!(h.take_keys(), [key("hourly", "2026-06-01T10:00:00Z")]);
    h.at("2026-06-01T10:00:00.100Z").await;
    h.at("2026-06-01T10:59:00Z").await;
    assert!(h.take_keys().is_empty(), "one run per fire time");
    h.at("2026-06-01T11:00:00.100Z").await;
    assert_eq!(h.take_keys(), [key("hourly", "2026-06-01T11:00:00Z")]);

    let record = h.record("hourly");
    assert_eq!(record.next_ms, Some(ms("2026-06-01T12:00:00Z")));
    assert_eq!(record.last_fire_ms, Some(ms("2026-06-01T11:00:00Z")));
}

#[tokio::test]
async fn fire_times_missed_while_down_follow_the_missed_fire_policy() {
    let flows = vec![
        flow(&scheduled("skip", r#"cron: "0 * * * *", missed: skip"#), 1),
        flow(&scheduled("once", r#"cron: "0 * * * *""#), 1),
        flow(
            &scheduled(
                "catch",
                r#"cron: "0 * * * *", missed: catch_up, max_catch_up: 2"#,
            ),
            1,
        ),
    ];
    let before = Harness::new("2026-06-01T00:00:30Z", flows).await;
    let (starter, store) = (before.starter.clone(), before.store.clone());
    drop(before);

    // Down from 00:00:30 to 05:30: 01:00 to 05:00 passed; none is on time.
    let mut h = Harness::restarted("2026-06-01T05:30:00Z", starter, store).await;
    h.at("2026-06-01T05:30:00Z").await;
    let mut keys = h.take_keys();
    keys.sort();
    let mut want = vec![
        key("catch", "2026-06-01T04:00:00Z"),
        key("catch", "2026-06-01T05:00:00Z"),
        key("once", "2026-06-01T05:00:00Z"),
    ];
    want.sort();
    assert_eq!(keys, want);
    for name in ["skip", "once", "catch"] {
        assert_eq!(
            h.record(name).next_ms,
            Some(ms("2026-06-01T06:00:00Z")),
            "{name}"
        );
    }

    // A fire less than a minute late is on time, whatever the policy.
    let before = Harness::new(
        "2026-06-01T00:00:30Z",
        vec![flow(
            &scheduled("skip", r#"cron: "0 * * * *", missed: skip"#),
            1,
        )],
    )
    .await;
    let (starter, store) = (before.starter.clone(), before.store.clone());
    let mut h = Harness::restarted("2026-06-01T05:00:45Z", starter, store).await;
    h.at("2026-06-01T05:00:45Z").await;
    assert_eq!(h.take_keys(), [key("skip", "2026-06-01T05:00:00Z")]);
}

#[tokio::test]
async fn jitter_delays_each_fire_within_its_bound_the_same_after_a_restart() {
    let source = scheduled("jittery", r#"cron: "* * * * *", jitter: 30s"#);
    let mut h = Harness::new("2026-06-01T09:59:30Z", vec![flow(&source, 1)]).await;
    let first = ms("2026-06-01T10:00:00Z");
    let mut delays = Vec::new();
    let mut now = first;
    for minute in 0..10 {
        let nominal = first + minute * 60_000;
        // Step the clock 100 ms at a time until the fire happens.
        let fired_at = loop {
            h.at_ms(now).await;
            let keys = h.take_keys();
            if !keys.is_empty() {
                assert_eq!(keys, [format!("schedule:jittery:tick:{nominal}")]);
                break now;
            }
            now += 100;
            assert!(
                now <= nominal + 30_100,
                "fire {minute} later than its jitter"
            );
        };
        let delay = fired_at - nominal;
        assert!((0..=30_100).contains(&delay), "delay {delay} ms");
        delays.push(delay);
        now = nominal + 60_000;
    }
    delays.dedup();
    assert!(
        delays.len() > 1,
        "jitter varies between fire times: {delays:?}"
    );

    // A restarted scheduler delays the same fire time by the same amount.
    let (starter, store) = (h.starter.clone(), h.store.clone());
    let nominal = first + 10 * 60_000;
    let mut again = Harness::restarted("2026-06-01T10:09:59Z", starter, store).await;
    let mut now = nominal;
    let fired_at = loop {
        again.at_ms(now).await;
        if !again.take_keys().is_empty() {
            break now;
        }
        now += 100;
        assert!(now <= nominal + 30_100);
    };
    let mut h = Harness::new("2026-06-01T10:09:59Z", vec![flow(&source, 1)]).await;
    let mut now = nominal;
    loop {
        h.at_ms(now).await;
        if !h.take_keys().is_empty() {
            break;
        }
        now += 100;
        assert!(now <= nominal + 30_100);
    }
    assert_eq!(now, fired_at);
}

#[tokio::test]
async fn a_paused_schedule_lets_fire_times_pass_and_resumes_from_the_present() {
    let source = scheduled("hourly", r#"cron: "0 * * * *""#);
    let mut h = Harness::new("2026-06-01T09:30:00Z", vec![flow(&source, 1)]).await;
    let view = h.set_paused("hourly", true).await.unwrap();
    assert!(view.paused);
    assert!(h.record("hourly").paused, "the pause is stored");

    h.at("2026-06-01T10:00:00Z").await;
    h.at("2026-06-01T11:00:00Z").await;
    assert!(h.take_keys().is_empty(), "no run while paused");

    h.now.store(ms("2026-06-01T11:30:00Z"), Ordering::SeqCst);
    let view = h.set_paused("hourly", false).await.unwrap();
    assert!(!view.paused);
    assert_eq!(view.next_fire_ms[0], ms("2026-06-01T12:00:00Z"));
    h.at("2026-06-01T11:30:00Z").await;
    assert!(h.take_keys().is_empty(), "passed fire times do not run");
    h.at("2026-06-01T12:00:00Z").await;
    assert_eq!(h.take_keys(), [key("hourly", "2026-06-01T12:00:00Z")]);

    // Resumed before the scheduler looked at the clock again: what passed meanwhile does not
    // run either.
    h.set_paused("hourly", true).await.unwrap();
    h.now.store(ms("2026-06-01T13:30:00Z"), Ordering::SeqCst);
    let view = h.set_paused("hourly", false).await.unwrap();
    assert_eq!(view.next_fire_ms[0], ms("2026-06-01T14:00:00Z"));
    h.at("2026-06-01T13:30:00Z").await;
    assert!(h.take_keys().is_empty(), "13:00 passed while paused");

    let err = h.set_paused("nope", true).await.unwrap_err();
    assert!(matches!(err, Error::ScheduleNotFound { .. }), "{err}");
}

#[tokio::test]
async fn fire_now_starts_a_run_at_once_even_when_paused() {
    let source = scheduled("hourly", r#"cron: "0 * * * *""#);
    let mut h = Harness::new("2026-06-01T09:30:00Z", vec![flow(&source, 1)]).await;
    h.set_paused("hourly", true).await.unwrap();
    let (first, created) = h.fire_now("hourly", "tick").await.unwrap();
    assert!(created);
    let (second, created) = h.fire_now("hourly", "tick").await.unwrap();
    assert!(created);
    assert_ne!(
        first.run_id, second.run_id,
        "each fire-now is a run of its own"
    );
    let keys = h.take_keys();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter()
            .all(|k| k.starts_with("schedule:hourly:tick:now:"))
    );
    assert_eq!(
        h.record("hourly").next_ms,
        Some(ms("2026-06-01T10:00:00Z")),
        "the schedule itself is unchanged"
    );
    let err = h.fire_now("hourly", "other").await.unwrap_err();
    assert!(matches!(err, Error::ScheduleNotFound { .. }), "{err}");
}

#[tokio::test]
async fn a_start_refused_for_a_passing_reason_is_tried_again_with_the_same_key() {
    let source = scheduled("hourly", r#"cron: "0 * * * *""#);
    let mut h = Harness::new("2026-06-01T09:30:00Z", vec![flow(&source, 1)]).await;
    h.starter
        .refusals
        .lock()
        .unwrap()
        .push_back(Error::ResourceExhausted("too many runs".into()));
    h.at("2026-06-01T10:00:00Z").await;
    assert_eq!(h.take_keys(), [key("hourly", "2026-06-01T10:00:00Z")]);
    assert_eq!(
        h.record("hourly").next_ms,
        Some(ms("2026-06-01T10:00:00Z")),
        "not moved on: a crash now fires it again"
    );
    h.at("2026-06-01T10:00:00.500Z").await;
    assert!(h.take_keys().is_empty(), "waits before trying again");
    h.at("2026-06-01T10:00:01Z").await;
    assert_eq!(h.take_keys(), [key("hourly", "2026-06-01T10:00:00Z")]);
    assert_eq!(h.starter.runs.lock().unwrap().len(), 1);
    assert_eq!(h.record("hourly").next_ms, Some(ms("2026-06-01T11:00:00Z")));

    // Refused for good (the flow's concurrency policy): skipped, not tried again.
    h.starter
        .refusals
        .lock()
        .unwrap()
        .push_back(Error::FailedPrecondition("a run is active".into()));
    h.at("2026-06-01T11:00:00Z").await;
    h.at("2026-06-01T11:00:05Z").await;
    assert_eq!(h.take_keys(), [key("hourly", "2026-06-01T11:00:00Z")]);
    assert_eq!(h.record("hourly").next_ms, Some(ms("2026-06-01T12:00:00Z")));
}

#[tokio::test]
async fn a_fire_time_started_again_after_a_crash_is_still_one_run() {
    let source = scheduled("hourly", r#"cron: "0 * * * *""#);
    let mut h = Harness::new("2026-06-01T09:30:00Z", vec![flow(&source, 1)]).await;
    // The run starts, then storing the schedule's progress fails: the store still says the
    // fire time is to come, as it would after a crash in between.
    *h.store.failing_puts.lock().unwrap() = 1;
    h.at("2026-06-01T10:00:00Z").await;
    assert_eq!(h.take_keys(), [key("hourly", "2026-06-01T10:00:00Z")]);
    assert_eq!(h.record("hourly").next_ms, Some(ms("2026-06-01T10:00:00Z")));

    let (starter, store) = (h.starter.clone(), h.store.clone());
    let mut h = Harness::restarted("2026-06-01T10:00:30Z", starter, store).await;
    h.at("2026-06-01T10:00:30Z").await;
    assert_eq!(h.take_keys(), [key("hourly", "2026-06-01T10:00:00Z")]);
    assert_eq!(
        h.starter.runs.lock().unwrap().len(),
        1,
        "the key makes the second start the same run"
    );
    assert_eq!(h.record("hourly").next_ms, Some(ms("2026-06-01T11:00:00Z")));
}

#[tokio::test]
async fn new_flow_versions_reload_the_schedules() {
    let v1 = scheduled("report", r#"cron: "0 * * * *""#);
    let mut h = Harness::new("2026-06-01T09:30:00Z", vec![flow(&v1, 1)]).await;
    h.set_paused("report", true).await.unwrap();

    // The same schedule in a new version keeps its state (paused, next fire time).
    let v2 = v1.replace("message: hi", "message: hello");
    h.flows_changed(vec![flow(&v2, 2)]).await;
    let record = h.record("report");
    assert!(record.paused);
    assert_eq!(record.next_ms, Some(ms("2026-06-01T10:00:00Z")));

    // Another cron starts afresh from the present, still paused.
    h.now.store(ms("2026-06-01T09:40:00Z"), Ordering::SeqCst);
    let v3 = scheduled("report", r#"cron: "45 * * * *""#);
    h.flows_changed(vec![flow(&v3, 3)]).await;
    let record = h.record("report");
    assert!(record.paused);
    assert_eq!(record.next_ms, Some(ms("2026-06-01T09:45:00Z")));
    assert_eq!(h.list().await[0].cron, "45 * * * *");

    // A new flow's schedule appears; a trigger gone from its flow is forgotten.
    let other = scheduled("other", r#"cron: "0 12 * * *""#);
    let v4 = "name: report\nsteps:\n  - { id: hello, uses: log, with: { message: hi } }\n";
    h.flows_changed(vec![flow(v4, 4), flow(&other, 1)]).await;
    let listed: Vec<String> = h.list().await.into_iter().map(|v| v.flow).collect();
    assert_eq!(listed, ["other"]);
    let stored: Vec<String> = h
        .store
        .records
        .lock()
        .unwrap()
        .keys()
        .map(|(f, _)| f.clone())
        .collect();
    assert_eq!(stored, ["other"]);
    h.at("2026-06-01T12:00:00Z").await;
    assert_eq!(h.take_keys(), [key("other", "2026-06-01T12:00:00Z")]);
}

#[tokio::test(start_paused = true)]
async fn a_running_scheduler_answers_its_handle_and_fires_on_its_ticks() {
    let source = scheduled("hourly", r#"cron: "0 * * * *""#);
    let starter = FakeStarter::default();
    *starter.flows.lock().unwrap() = vec![flow(&source, 1)];
    let store = FakeStore::default();
    let now = Arc::new(AtomicI64::new(ms("2026-06-01T09:59:00Z")));
    let scheduler = Scheduler::new(Clock::Manual(Arc::clone(&now)));
    let handle = scheduler.handle();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(scheduler.run(starter.clone(), store.clone(), shutdown.clone()));

    let views = handle.list("").await.unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].next_fire_ms[0], ms("2026-06-01T10:00:00Z"));
    now.store(ms("2026-06-01T10:00:00Z"), Ordering::SeqCst);
    // A tick or two of (paused) time.
    tokio::time::sleep(TICK * 2).await;
    assert_eq!(starter.keys(), [key("hourly", "2026-06-01T10:00:00Z")]);

    let view = handle.set_paused("hourly", "tick", true).await.unwrap();
    assert!(view.paused);
    let (_, created) = handle.fire_now("hourly", "tick").await.unwrap();
    assert!(created);
    handle.schedules_registered().await.unwrap();

    shutdown.cancel();
    running.await.unwrap();
    assert!(matches!(
        handle.list("").await,
        Err(Error::NotRunning("scheduler"))
    ));
}
