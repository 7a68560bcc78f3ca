//! Schedules with time under control: `orchestrator.clock_file` makes the scheduler read "now"
//! from a file the test rewrites, so a day passes in a line. Every run a schedule starts has the
//! idempotency key `schedule:<flow>:<trigger>:<nominal fire ms>` and the trigger
//! `schedule:<trigger>`, which is what the assertions look at.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rpaflow_tests::{Dev, rpaflow};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(15);
/// How long "nothing more happens" is watched: many scheduler ticks (100 ms each).
const QUIET: Duration = Duration::from_millis(1500);

/// The clock file and the config that points the orchestrator at it.
struct TestClock {
    dir: TempDir,
}

impl TestClock {
    fn new(start: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rpaflow-clock-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let clock = Self { dir };
        clock.set(start);
        let config = format!(
            "[orchestrator]\nclock_file = {:?}\n",
            clock.file().display().to_string()
        );
        std::fs::write(clock.config(), config).expect("cannot write the config");
        clock
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("now")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("rpaflow.toml")
    }

    /// Moves "now" to an RFC 3339 time (written whole, then renamed into place).
    fn set(&self, now: &str) {
        let tmp = self.dir.path().join("now.tmp");
        std::fs::write(&tmp, now).expect("cannot write the clock");
        std::fs::rename(&tmp, self.file()).expect("cannot move the clock");
    }

    async fn launch(&self) -> Dev {
        let config = self.config();
        Dev::launch_with(&["--config", path_str(&config)]).await
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// Unix milliseconds of an RFC 3339 UTC time `YYYY-MM-DDTHH:MM:SSZ`.
fn ms(text: &str) -> i64 {
    let (date, time) = text
        .trim_end_matches('Z')
        .split_once('T')
        .expect("YYYY-MM-DDTHH:MM:SSZ");
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().expect("a number"))
        .collect();
    let t: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().expect("a number"))
        .collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000
}

/// The idempotency keys of the flow's runs, oldest first; checks every run's trigger.
async fn keys(dev: &Dev, flow: &str, trigger: &str) -> Vec<String> {
    let mut runs = dev.list_runs(flow, "").await;
    runs.sort_by_key(|r| (r.created_at_ms, r.run_id.clone()));
    for run in &runs {
        assert_eq!(
            run.trigger,
            format!("schedule:{trigger}"),
            "run {} of {flow}",
            run.run_id
        );
    }
    runs.into_iter().map(|r| r.idempotency_key).collect()
}

fn key(flow: &str, trigger: &str, fire: &str) -> String {
    format!("schedule:{flow}:{trigger}:{}", ms(fire))
}

/// Waits until the flow has exactly `fires` runs (by nominal fire time), then makes sure no
/// more come.
async fn expect_runs(dev: &Dev, flow: &str, trigger: &str, fires: &[&str]) {
    let mut want: Vec<String> = fires.iter().map(|f| key(flow, trigger, f)).collect();
    want.sort();
    let started = Instant::now();
    loop {
        let mut got = keys(dev, flow, trigger).await;
        got.sort();
        if got.len() >= want.len() {
            assert_eq!(got, want, "runs of {flow}");
            break;
        }
        if started.elapsed() > TIMEOUT {
            dev.fail(&format!(
                "{flow}: runs for {want:?} expected within {TIMEOUT:?}, got {got:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(QUIET).await;
    let mut got = keys(dev, flow, trigger).await;
    got.sort();
    assert_eq!(got, want, "{flow}: no more runs");
}

const BERLIN: &str = r#"
name: berlin
triggers:
  - id: nightly
    schedule: { cron: "30 2 * * *", timezone: Europe/Berlin, missed: skip }
steps:
  - { id: hello, uses: log, with: { message: "good night" } }
"#;

#[tokio::test]
async fn a_schedule_fires_at_the_right_instants_across_daylight_saving_changes() {
    let clock = TestClock::new("2026-03-28T00:00:00Z");
    let dev = clock.launch().await;
    dev.register(BERLIN).await;

    // The next five fire times, 02:30 Berlin time: CET, then the skipped hour's end, then CEST.
    let listed = rpaflow(
        &[
            "schedule",
            "list",
            "--flow",
            "berlin",
            "--output",
            "json",
            "--server",
            &dev.url(),
        ],
        TIMEOUT,
    )
    .await;
    listed.expect_success();
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).expect("JSON");
    let next: Vec<&str> = listed[0]["next_fires"]
        .as_array()
        .expect("next_fires")
        .iter()
        .map(|v| v.as_str().expect("a time"))
        .collect();
    assert_eq!(
        next,
        [
            "2026-03-28T01:30:00.000Z",
            "2026-03-29T01:00:00.000Z",
            "2026-03-30T00:30:00.000Z",
            "2026-03-31T00:30:00.000Z",
            "2026-04-01T00:30:00.000Z",
        ],
        "{listed}"
    );

    // Spring forward (29 March, 02:00 CET -> 03:00 CEST): 02:30 does not exist and fires at
    // 03:00 CEST, 01:00 UTC.
    let mut fired = vec![];
    for (now, fires) in [
        ("2026-03-28T01:29:59Z", None),
        ("2026-03-28T01:30:00Z", Some("2026-03-28T01:30:00Z")), // 02:30 CET
        ("2026-03-29T00:59:00Z", None),
        ("2026-03-29T01:00:00Z", Some("2026-03-29T01:00:00Z")), // 03:00 CEST
        ("2026-03-29T23:00:00Z", None),
        ("2026-03-30T00:30:00Z", Some("2026-03-30T00:30:00Z")), // 02:30 CEST
    ] {
        clock.set(now);
        fired.extend(fires);
        expect_runs(&dev, "berlin", "nightly", &fired).await;
    }

    // Fall back (25 October, 03:00 CEST -> 02:00 CET): 02:30 happens twice and fires once, the
    // first time. The months in between pass in one step, and `missed: skip` runs none of them.
    for (now, fires) in [
        ("2026-10-24T12:00:00Z", None),
        ("2026-10-25T00:30:00Z", Some("2026-10-25T00:30:00Z")), // 02:30 CEST
        ("2026-10-25T01:30:00Z", None),                         // 02:30 CET, again
        ("2026-10-26T01:30:00Z", Some("2026-10-26T01:30:00Z")), // 02:30 CET
    ] {
        clock.set(now);
        fired.extend(fires);
        expect_runs(&dev, "berlin", "nightly", &fired).await;
    }

    // The runs ran, and GetRun shows what started them.
    let runs = dev.list_runs("berlin", "").await;
    let run = dev.wait_succeeded(&runs[0].run_id, TIMEOUT).await;
    assert_eq!(run.trigger, "schedule:nightly");
}

const HOURLY: &str = r#"
name: hourly
triggers:
  - id: tick
    schedule: { cron: "0 * * * *" }
steps:
  - { id: hello, uses: log, with: { message: "on the hour" } }
"#;

#[tokio::test]
async fn killing_and_restarting_around_a_fire_time_starts_exactly_one_run() {
    let clock = TestClock::new("2026-06-01T09:59:50Z");
    let mut dev = clock.launch().await;
    dev.register(HOURLY).await;
    expect_runs(&dev, "hourly", "tick", &[]).await;

    // Down across the fire time, back 5 s after it: the fire is late, not lost.
    dev.kill9();
    clock.set("2026-06-01T10:00:05Z");
    dev.restart().await;
    expect_runs(&dev, "hourly", "tick", &["2026-06-01T10:00:00Z"]).await;

    // Killed as soon as the run exists, restarted at the same time: no second run.
    clock.set("2026-06-01T11:00:00Z");
    let started = Instant::now();
    while keys(&dev, "hourly", "tick").await.len() < 2 {
        assert!(started.elapsed() < TIMEOUT, "no run for 11:00");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dev.kill9();
    dev.restart().await;
    let both = ["2026-06-01T10:00:00Z", "2026-06-01T11:00:00Z"];
    expect_runs(&dev, "hourly", "tick", &both).await;
    dev.kill9();
    clock.set("2026-06-01T11:00:30Z");
    dev.restart().await;
    expect_runs(&dev, "hourly", "tick", &both).await;
}

fn missed_flow(name: &str, missed: &str) -> String {
    let missed = if missed.is_empty() {
        String::new()
    } else {
        format!(", {missed}")
    };
    format!(
        r#"
name: {name}
triggers:
  - id: hourly
    schedule: {{ cron: "0 * * * *"{missed} }}
steps:
  - {{ id: hello, uses: log, with: {{ message: "hello" }} }}
"#
    )
}

#[tokio::test]
async fn missed_fire_policies_after_a_downtime() {
    let clock = TestClock::new("2026-06-01T00:00:30Z");
    let mut dev = clock.launch().await;
    dev.register(&missed_flow("skipper", "missed: skip")).await;
    dev.register(&missed_flow("once", "missed: run_once")).await;
    dev.register(&missed_flow("default", "")).await;
    dev.register(&missed_flow("catcher", "missed: catch_up, max_catch_up: 3"))
        .await;

    // Down from 00:00:30 to 06:30: the fires of 01:00 to 06:00 are missed.
    dev.kill9();
    clock.set("2026-06-01T06:30:00Z");
    dev.restart().await;
    expect_runs(&dev, "skipper", "hourly", &[]).await;
    expect_runs(&dev, "once", "hourly", &["2026-06-01T06:00:00Z"]).await;
    expect_runs(&dev, "default", "hourly", &["2026-06-01T06:00:00Z"]).await;
    let caught = [
        "2026-06-01T04:00:00Z",
        "2026-06-01T05:00:00Z",
        "2026-06-01T06:00:00Z",
    ];
    expect_runs(&dev, "catcher", "hourly", &caught).await;

    // Then each carries on from where it is.
    clock.set("2026-06-01T07:00:00Z");
    expect_runs(&dev, "skipper", "hourly", &["2026-06-01T07:00:00Z"]).await;
    expect_runs(
        &dev,
        "once",
        "hourly",
        &["2026-06-01T06:00:00Z", "2026-06-01T07:00:00Z"],
    )
    .await;
    let mut caught = caught.to_vec();
    caught.push("2026-06-01T07:00:00Z");
    expect_runs(&dev, "catcher", "hourly", &caught).await;
}

#[tokio::test]
async fn schedules_are_paused_resumed_and_fired_from_the_cli() {
    let clock = TestClock::new("2026-06-01T09:30:00Z");
    let dev = clock.launch().await;
    dev.register(HOURLY).await;
    let url = dev.url();
    let cli = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--server".to_owned(), url.clone()]);
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            let out = rpaflow(&args, TIMEOUT).await;
            out.expect_success();
            out.stdout
        }
    };

    let paused = cli(&["schedule", "pause", "hourly", "tick"]).await;
    assert!(paused.contains("paused"), "{paused}");
    clock.set("2026-06-01T10:00:00Z");
    expect_runs(&dev, "hourly", "tick", &[]).await;

    let resumed = cli(&["schedule", "resume", "hourly", "tick"]).await;
    assert!(
        resumed.contains("active") && resumed.contains("2026-06-01T11:00:00"),
        "{resumed}"
    );
    clock.set("2026-06-01T11:00:00Z");
    expect_runs(&dev, "hourly", "tick", &["2026-06-01T11:00:00Z"]).await;

    let fired = cli(&["schedule", "trigger", "hourly", "tick", "--output", "json"]).await;
    let run: serde_json::Value = serde_json::from_str(&fired).expect("JSON");
    assert_eq!(run["trigger"], "schedule:tick", "{run}");
    let key = run["idempotency_key"].as_str().expect("a key");
    assert!(key.starts_with("schedule:hourly:tick:now:"), "{key}");
    assert_eq!(dev.list_runs("hourly", "").await.len(), 2);

    let listed = cli(&["schedule", "list"]).await;
    assert!(
        listed.contains("hourly") && listed.contains("tick") && listed.contains("0 * * * *"),
        "{listed}"
    );
    let missing = rpaflow(
        &["schedule", "pause", "hourly", "nope", "--server", &url],
        TIMEOUT,
    )
    .await;
    missing.expect_code(1);
    assert!(
        missing.stderr.contains("has no schedule trigger `nope`"),
        "{}",
        missing.stderr
    );
}

fn limited(name: &str, policy: &str) -> String {
    format!(
        r#"
name: {name}
concurrency: {{ max_runs: 2, policy: {policy} }}
steps:
  - {{ id: wait, uses: approval, with: {{ message: "hold" }} }}
"#
    )
}

#[tokio::test]
async fn concurrency_policies_skip_and_cancel_oldest() {
    let dev = Dev::launch().await;
    dev.register(&limited("skipping", "skip")).await;
    dev.register(&limited("cancelling", "cancel_oldest")).await;

    // skip: a third run while two wait is refused, for the API as for triggers.
    dev.run("skipping", serde_json::json!({})).await;
    dev.run("skipping", serde_json::json!({})).await;
    let refused = dev
        .client()
        .await
        .start_run(rpaflow_tests::pb::StartRunRequest {
            flow: "skipping".into(),
            ..Default::default()
        })
        .await
        .expect_err("a third run is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "flow skipping has 2 runs active (concurrency.max_runs)"
    );

    // cancel_oldest: the third run cancels the first.
    let first = dev.run("cancelling", serde_json::json!({})).await;
    let second = dev.run("cancelling", serde_json::json!({})).await;
    let third = dev.run("cancelling", serde_json::json!({})).await;
    let run = dev.wait_finished(&first, TIMEOUT).await;
    assert_eq!(run.status(), rpaflow_tests::pb::RunStatus::Cancelled);
    for id in [&second, &third] {
        assert_eq!(
            dev.get(id).await.status(),
            rpaflow_tests::pb::RunStatus::Running
        );
    }
}

/// Approves the `wait` step of a run of a [`limited`] flow.
async fn approve(dev: &Dev, run_id: &str) {
    dev.wait_step(
        run_id,
        "wait",
        rpaflow_tests::pb::StepStatus::WaitingApproval,
        TIMEOUT,
    )
    .await;
    dev.approve(run_id, "wait").await;
}

async fn statuses(dev: &Dev, runs: &[String]) -> Vec<rpaflow_tests::pb::RunStatus> {
    let mut out = Vec::new();
    for id in runs {
        out.push(dev.get(id).await.status());
    }
    out
}

#[tokio::test]
async fn concurrency_policy_queue_runs_the_waiting_runs_in_order() {
    use rpaflow_tests::pb::RunStatus::{Cancelled, Queued, Running, Succeeded};
    let mut dev = Dev::launch().await;
    // No policy: `queue` is the default.
    dev.register(
        r#"
name: waiting
concurrency: { max_runs: 2, max_queued: 3 }
steps:
  - { id: wait, uses: approval, with: { message: "hold" } }
"#,
    )
    .await;
    let mut runs = Vec::new();
    for i in 0..5 {
        runs.push(dev.run("waiting", serde_json::json!({})).await);
        if i < 2 {
            // Created in this order (run ids are time-ordered, the queue is too).
            dev.wait_for(&runs[i], TIMEOUT, "running", |r| r.status() == Running)
                .await;
        }
    }
    assert_eq!(
        statuses(&dev, &runs).await,
        [Running, Running, Queued, Queued, Queued]
    );
    let queued = dev.get(&runs[2]).await;
    assert!(
        queued
            .steps
            .iter()
            .all(|s| s.status() == rpaflow_tests::pb::StepStatus::Pending),
        "a queued run runs nothing: {}",
        rpaflow_tests::describe_run(&queued)
    );
    // Past max_queued: refused, saying why.
    let refused = dev
        .client()
        .await
        .start_run(rpaflow_tests::pb::StartRunRequest {
            flow: "waiting".into(),
            ..Default::default()
        })
        .await
        .expect_err("a fourth waiting run is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "flow waiting has 2 runs active and 3 queued, the limit is 3 (concurrency.max_queued)"
    );
    assert_eq!(dev.list_runs("waiting", "queued").await.len(), 3);

    // The first run ends: the oldest queued one starts, the others still wait.
    approve(&dev, &runs[0]).await;
    dev.wait_succeeded(&runs[0], TIMEOUT).await;
    dev.wait_for(&runs[2], TIMEOUT, "running", |r| r.status() == Running)
        .await;
    assert_eq!(
        statuses(&dev, &runs[3..]).await,
        [Queued, Queued],
        "one place freed, one run started"
    );

    // A queued run can be cancelled; it never runs.
    dev.client()
        .await
        .cancel_run(rpaflow_tests::pb::CancelRunRequest {
            run_id: runs[3].clone(),
            reason: "not needed".into(),
        })
        .await
        .expect("cancelling a queued run");
    assert_eq!(dev.get(&runs[3]).await.status(), Cancelled);

    // The queue survives a crash: after kill -9, runs 1 and 2 still hold the places and run 4
    // waits; when run 1 ends, run 4 starts.
    dev.restart().await;
    assert_eq!(
        statuses(&dev, &runs).await,
        [Succeeded, Running, Running, Cancelled, Queued]
    );
    approve(&dev, &runs[1]).await;
    dev.wait_for(&runs[4], TIMEOUT, "running", |r| r.status() == Running)
        .await;
    approve(&dev, &runs[2]).await;
    approve(&dev, &runs[4]).await;
    for id in [&runs[2], &runs[4]] {
        dev.wait_succeeded(id, TIMEOUT).await;
    }

    // From the events: never more than two runs at once, and each queued run says how long
    // it waited.
    let mut spans = Vec::new();
    for id in [&runs[0], &runs[1], &runs[2], &runs[4]] {
        let events = dev.events(id).await;
        let began = events
            .of("run_started")
            .chain(events.of("run_dequeued"))
            .map(|e| e.at_ms)
            .next()
            .unwrap_or_else(|| panic!("run {id} never started:\n{events}"));
        let ended = events.last().map(|e| e.at_ms).unwrap();
        spans.push((began, ended));
    }
    for &(at, _) in &spans {
        let running = spans.iter().filter(|(b, e)| *b <= at && at < *e).count();
        assert!(running <= 2, "{running} runs at once at {at}: {spans:?}");
    }
    let events = dev.events(&runs[2]).await;
    assert_eq!(events.count("run_queued"), 1, "{events}");
    assert_eq!(events.count("run_dequeued"), 1, "{events}");
    assert_eq!(events.count("run_started"), 0, "{events}");
    let cancelled = dev.events(&runs[3]).await;
    assert_eq!(cancelled.count("task_dispatched"), 0, "{cancelled}");
}
