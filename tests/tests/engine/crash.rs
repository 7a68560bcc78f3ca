//! Crash safety: SIGKILL mid-flight, restart on the same data directory; nothing is lost and
//! nothing is done twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rpaflow_tests::{Dev, EventLog, Events, HttpServer, describe_run, pb};
use serde_json::{Value as Json, json};

use crate::{outputs, step};

const CRASH_FLOW: &str = r#"
name: crash-safety
inputs:
  api: { type: string }
steps:
  - id: warmup
    uses: sleep
    with: { duration: 1500ms }
  - id: charge
    uses: http
    with:
      method: POST
      url: "{{ inputs.api }}/charge/{{ run.id }}"
      body: { run: "{{ run.id }}" }
    retry: { max_attempts: 5, delay: 1s, backoff: fixed }
  - id: items
    uses: sleep
    for_each: { items: "range(10)", concurrency: 2 }
    with: { duration: "{{ 300 + item * 10 }}" }
  - id: total
    uses: transform
    needs: items
    with:
      data: "{{ steps.items.output }}"
      expr: "data | sum(attribute='slept_ms')"
  - id: settle
    uses: sleep
    needs: [warmup, charge, total]
    with: { duration: 1s }
outputs:
  total: "{{ steps.total.output.data }}"
  charged: "{{ steps.charge.output.body.ok }}"
  charge_key: "{{ steps.charge.output.body.key }}"
"#;

const CRASH_RUNS: usize = 6;
const ITEMS: u32 = 10;
/// The sum of `300 + 10 * i` for i in 0..10: what `total` must compute.
const EXPECTED_TOTAL: u64 = 3450;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_sigkill_and_finish_exactly_once() {
    let api = HttpServer::start();
    api.fail_first("/charge/", 2);
    let mut dev = Dev::launch().await;
    dev.register(CRASH_FLOW).await;

    let mut run_ids = Vec::new();
    let mut logs: Vec<EventLog> = Vec::new();
    for _ in 0..CRASH_RUNS {
        let id = dev.run("crash-safety", json!({"api": api.url()})).await;
        logs.push(dev.watch(&id).await);
        run_ids.push(id);
    }

    // Wait until every run is mid-flight: tasks out, a retry pending, the for_each partly done.
    let started = Instant::now();
    loop {
        let snaps: Vec<Events> = logs.iter().map(EventLog::snapshot).collect();
        let describe = || {
            run_ids
                .iter()
                .zip(&snaps)
                .map(|(id, ev)| format!("run {id}:\n{ev}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        if let Some((i, why)) = logs
            .iter()
            .enumerate()
            .find_map(|(i, l)| l.end().map(|why| (i, why)))
        {
            dev.fail(&format!(
                "WatchRun of run {} stopped before the crash: {why}\n{}",
                run_ids[i],
                describe()
            ));
        }
        if let Some(i) = snaps
            .iter()
            .position(|e| e.count("run_succeeded") + e.count("run_failed") > 0)
        {
            dev.fail(&format!(
                "run {} ended before the crash; the scenario needs slower steps\n{}",
                run_ids[i],
                describe()
            ));
        }
        let items_done: Vec<usize> = snaps
            .iter()
            .map(|e| e.of_step("task_succeeded", "items").count())
            .collect();
        let all_dispatched = snaps.iter().all(|e| e.count("task_dispatched") >= 3);
        let retry_pending = snaps.iter().any(|e| e.count("retry_scheduled") >= 1);
        let partly_done =
            items_done.iter().any(|&n| n >= 4) && items_done.iter().all(|&n| n < ITEMS as usize);
        if all_dispatched && retry_pending && partly_done {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            dev.fail(&format!(
                "the runs never got mid-flight (items done per run: {items_done:?})\n{}",
                describe()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    dev.kill9();
    // Let the watchers notice the broken streams; what they hold is what clients saw before.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before: Vec<Events> = logs.iter().map(EventLog::snapshot).collect();
    drop(logs);
    let requests_before = api.requests_to("/charge/").len();

    // Crash again while the first recovery is under way (redispatched sleeps in flight).
    dev.restart().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unfinished = dev.list_runs("crash-safety", "running").await.len();
    dev.kill9();
    dev.restart().await;
    eprintln!(
        "crash-safety: killed mid-flight; {unfinished} of {CRASH_RUNS} runs were still running at the second kill"
    );

    // Every run succeeds, all within one deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut finished = Vec::new();
    for id in &run_ids {
        let left = deadline.saturating_duration_since(Instant::now());
        finished.push(dev.wait_succeeded(id, left).await);
    }

    let requests = api.requests_to("/charge/");
    let mut redispatched = 0;
    for ((id, run), seen_before) in run_ids.iter().zip(&finished).zip(&before) {
        let events = dev.events(id).await;
        let context = || format!("run {id}:\n{}\nevents:\n{events}\n", describe_run(run));
        redispatched += events.count("task_redispatched");

        // Every event a client saw before the crash is still there, unchanged.
        for e in &seen_before.0 {
            let stored = events.iter().find(|s| s.seq == e.seq);
            assert!(
                stored.is_some_and(|s| (s.kind.as_str(), s.step_id.as_str(), s.item, s.attempt)
                    == (e.kind.as_str(), e.step_id.as_str(), e.item, e.attempt)),
                "event #{} ({} {}) seen before the crash is lost or changed\n{}",
                e.seq,
                e.kind,
                e.step_id,
                context()
            );
        }

        // The run ended once, and last.
        assert_eq!(events.count("run_succeeded"), 1, "{}", context());
        assert_eq!(
            events.last().map(|e| e.kind.as_str()),
            Some("run_succeeded"),
            "{}",
            context()
        );
        assert_eq!(events.count("run_failed"), 0, "{}", context());

        // Each step and each item has exactly one accepted success, and no attempt two results.
        let mut want: BTreeMap<(String, Option<u32>), usize> = BTreeMap::new();
        for s in ["warmup", "charge", "total", "settle"] {
            want.insert((s.to_owned(), None), 1);
        }
        for i in 0..ITEMS {
            want.insert(("items".to_owned(), Some(i)), 1);
        }
        assert_eq!(
            events.per_unit("task_succeeded"),
            want,
            "task_succeeded per (step, item)\n{}",
            context()
        );
        for (attempt, n) in events.results_per_attempt() {
            assert_eq!(n, 1, "attempt {attempt:?} has {n} results\n{}", context());
        }

        // The http step failed twice (503) and succeeded on its third attempt.
        let failed: Vec<u32> = events
            .of_step("task_failed", "charge")
            .map(|e| e.attempt)
            .collect();
        assert_eq!(
            failed,
            vec![1, 2],
            "charge's failed attempts\n{}",
            context()
        );
        let succeeded: Vec<u32> = events
            .of_step("task_succeeded", "charge")
            .map(|e| e.attempt)
            .collect();
        assert_eq!(
            succeeded,
            vec![3],
            "charge's succeeded attempt\n{}",
            context()
        );
        assert_eq!(step(run, "charge").attempt, 3, "{}", context());
        assert_eq!(step(run, "items").items_done, ITEMS, "{}", context());

        // The aggregate is right.
        let out = outputs(run);
        assert_eq!(
            out["total"],
            json!(EXPECTED_TOTAL),
            "outputs {out}\n{}",
            context()
        );
        assert_eq!(out["charged"], json!(true), "outputs {out}\n{}", context());
        assert_eq!(
            out["charge_key"],
            json!(format!("{id}/charge/3")),
            "outputs {out}\n{}",
            context()
        );

        // The API saw every attempt under its own key, naming the attempt; one effect only.
        let mine: Vec<_> = requests
            .iter()
            .filter(|r| r.path == format!("/charge/{id}"))
            .collect();
        let keys: BTreeSet<String> = mine
            .iter()
            .map(|r| {
                r.idempotency_key
                    .clone()
                    .unwrap_or_else(|| panic!("a request without Idempotency-Key: {r:?}"))
            })
            .collect();
        let want_keys: BTreeSet<String> = (1..=3).map(|a| format!("{id}/charge/{a}")).collect();
        assert_eq!(
            keys, want_keys,
            "Idempotency-Keys the API saw for run {id}: {mine:#?}"
        );
        for key in &keys {
            let first = mine
                .iter()
                .find(|r| r.idempotency_key.as_deref() == Some(key.as_str()))
                .expect("a key the server saw");
            let expected_status = if key.ends_with("/3") { 200 } else { 503 };
            assert_eq!(first.status, expected_status, "first answer for {key}");
            assert_eq!(first.method, "POST");
            assert_eq!(
                serde_json::from_str::<Json>(&first.body).ok(),
                Some(json!({"run": id})),
                "body of {key}"
            );
        }
        let effects = mine
            .iter()
            .filter(|r| r.status == 200 && !r.replayed)
            .count();
        assert_eq!(
            effects, 1,
            "the charge took effect {effects} times for run {id}: {mine:#?}"
        );
    }
    eprintln!(
        "crash-safety: {redispatched} tasks redispatched after restarts, {} requests to the API ({requests_before} before the first kill)",
        requests.len()
    );
    assert!(
        redispatched >= 1,
        "no task was redispatched after the restart: the kill did not catch work in flight (requests before the kill: {requests_before})"
    );

    let running = dev.list_runs("", "running").await;
    assert!(
        running.is_empty(),
        "runs still running after every run succeeded: {:?}",
        running.iter().map(|r| &r.run_id).collect::<Vec<_>>()
    );
    let all = dev.list_runs("crash-safety", "").await;
    assert_eq!(all.len(), CRASH_RUNS, "ListRuns for the flow");
    assert!(
        all.iter().all(|r| r.status() == pb::RunStatus::Succeeded),
        "ListRuns statuses: {:?}",
        all.iter().map(|r| r.status()).collect::<Vec<_>>()
    );
}
