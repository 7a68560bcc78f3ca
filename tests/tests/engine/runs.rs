//! A run's life through the API: idempotent start, cancel, fail and retry, approval.

use std::time::{Duration, Instant};

use rpaflow_tests::{Dev, HttpServer, describe_run, pb, rpaflow};
use serde_json::json;

use crate::{CLI_TIMEOUT, RUN_TIMEOUT, outputs, step};

#[tokio::test]
async fn starting_twice_with_one_key_gives_one_run() {
    let dev = Dev::launch().await;
    dev.register("name: order\ninputs: { n: 1 }\nsteps:\n  - { id: a, uses: echo, with: { n: '{{ inputs.n }}' } }\n").await;
    let (first, created) = dev.start("order", json!({"n": 42}), "order-42").await;
    assert!(created, "the first start with a key creates a run");
    assert_eq!(first.idempotency_key, "order-42");
    let (second, created) = dev.start("order", json!({"n": 42}), "order-42").await;
    assert!(
        !created,
        "the second start with the same key must not create a run"
    );
    assert_eq!(
        second.run_id, first.run_id,
        "the same key must give the same run"
    );
    let (other, created) = dev.start("order", json!({"n": 43}), "order-43").await;
    assert!(
        created && other.run_id != first.run_id,
        "another key gives another run"
    );
    let (a, _) = dev.start("order", json!({}), "").await;
    let (b, _) = dev.start("order", json!({}), "").await;
    assert_ne!(a.run_id, b.run_id, "without a key every start is a new run");
    dev.wait_succeeded(&first.run_id, RUN_TIMEOUT).await;
    assert_eq!(
        dev.list_runs("order", "").await.len(),
        4,
        "four distinct runs"
    );
    // After the run finished, the key still names it.
    let (again, created) = dev.start("order", json!({"n": 42}), "order-42").await;
    assert!(
        !created && again.run_id == first.run_id && again.status() == pb::RunStatus::Succeeded,
        "{}",
        describe_run(&again)
    );
}

// Cancel, fail, retry

#[tokio::test]
async fn cancelling_mid_sleep_stops_the_run() {
    let dev = Dev::launch().await;
    dev.register("name: long\nsteps:\n  - { id: nap, uses: sleep, with: { duration: 30s } }\n  - { id: after, uses: echo, needs: nap, with: { x: 1 } }\n").await;
    let id = dev.run("long", json!({})).await;
    dev.wait_step(&id, "nap", pb::StepStatus::Running, RUN_TIMEOUT)
        .await;
    let cancelled_at = Instant::now();
    let run = match dev
        .client()
        .await
        .cancel_run(pb::CancelRunRequest {
            run_id: id.clone(),
            reason: "test".into(),
        })
        .await
    {
        Ok(run) => run.into_inner(),
        Err(s) => dev.fail(&format!(
            "CancelRun failed: {:?}: {}",
            s.code(),
            s.message()
        )),
    };
    assert_eq!(
        run.status(),
        pb::RunStatus::Cancelled,
        "{}",
        describe_run(&run)
    );
    // Give a stray dispatch the chance to show up, then look at everything that happened.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = dev.events(&id).await;
    let cancel = events
        .first("run_cancelled")
        .unwrap_or_else(|| dev.fail(&format!("no run_cancelled event:\n{events}")));
    let late: Vec<_> = events
        .iter()
        .filter(|e| {
            e.seq > cancel.seq && (e.kind.contains("dispatched") || e.kind == "retry_scheduled")
        })
        .collect();
    assert!(
        late.is_empty(),
        "work was dispatched after the cancellation:\n{events}"
    );
    assert_eq!(
        events.of_step("task_dispatched", "after").count(),
        0,
        "a step after the cancelled one ran:\n{events}"
    );
    assert_eq!(events.count("run_cancelled"), 1, "{events}");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(10),
        "cancelling took {:?}",
        cancelled_at.elapsed()
    );
    let run = dev.get(&id).await;
    assert_eq!(
        run.status(),
        pb::RunStatus::Cancelled,
        "{}",
        describe_run(&run)
    );
    assert_eq!(
        step(&run, "nap").status(),
        pb::StepStatus::Cancelled,
        "{}",
        describe_run(&run)
    );
    assert_eq!(
        step(&run, "after").status(),
        pb::StepStatus::Pending,
        "{}",
        describe_run(&run)
    );
    // A cancelled run cannot be cancelled again.
    let again = dev
        .client()
        .await
        .cancel_run(pb::CancelRunRequest {
            run_id: id.clone(),
            reason: String::new(),
        })
        .await;
    assert_eq!(
        again.err().map(|s| s.code()),
        Some(tonic::Code::FailedPrecondition),
        "cancelling a cancelled run"
    );
}

const FLAKY_FLOW: &str = r#"
name: flaky-call
inputs:
  api: { type: string }
steps:
  - id: prepare
    uses: echo
    with: { order: 7 }
  - id: call
    uses: http
    needs: prepare
    with:
      method: POST
      url: "{{ inputs.api }}/flaky/{{ run.id }}"
      body: { order: "{{ steps.prepare.output.order }}" }
  - id: finish
    uses: echo
    needs: call
    with: { status: "{{ steps.call.output.status }}" }
outputs:
  status: "{{ steps.finish.output.status }}"
"#;

#[tokio::test]
async fn a_failed_run_retries_from_its_failed_step() {
    let api = HttpServer::start();
    api.fail_first("/flaky/", u32::MAX);
    let dev = Dev::launch().await;
    dev.register(FLAKY_FLOW).await;
    let id = dev.run("flaky-call", json!({"api": api.url()})).await;
    let run = dev.wait_finished(&id, RUN_TIMEOUT).await;
    assert_eq!(
        run.status(),
        pb::RunStatus::Failed,
        "{}",
        describe_run(&run)
    );
    let call = step(&run, "call");
    assert_eq!(
        call.status(),
        pb::StepStatus::Failed,
        "{}",
        describe_run(&run)
    );
    assert_eq!(
        call.error.as_ref().map(|e| e.code.as_str()),
        Some("http_status"),
        "{}",
        describe_run(&run)
    );
    assert!(
        run.error.is_some(),
        "a failed run carries its error: {}",
        describe_run(&run)
    );

    // The API comes back; the run is retried and succeeds without redoing `prepare`.
    api.fail_first("/flaky/", 0);
    let retried = match dev
        .client()
        .await
        .retry_run(pb::RetryRunRequest { run_id: id.clone() })
        .await
    {
        Ok(run) => run.into_inner(),
        Err(s) => dev.fail(&format!("RetryRun failed: {:?}: {}", s.code(), s.message())),
    };
    assert_ne!(
        retried.status(),
        pb::RunStatus::Failed,
        "{}",
        describe_run(&retried)
    );
    let run = dev.wait_succeeded(&id, RUN_TIMEOUT).await;
    assert_eq!(
        outputs(&run),
        json!({"status": 200}),
        "{}",
        describe_run(&run)
    );

    let events = dev.events(&id).await;
    for kind in ["run_failed", "run_retried", "run_succeeded"] {
        assert_eq!(events.count(kind), 1, "{kind}:\n{events}");
    }
    assert_eq!(
        events.of_step("task_dispatched", "prepare").count(),
        1,
        "`prepare` ran again:\n{events}"
    );
    let failed: Vec<u32> = events
        .of_step("task_failed", "call")
        .map(|e| e.attempt)
        .collect();
    let succeeded: Vec<u32> = events
        .of_step("task_succeeded", "call")
        .map(|e| e.attempt)
        .collect();
    assert_eq!(
        (failed, succeeded),
        (vec![1], vec![2]),
        "attempts of `call` (numbers grow across retries):\n{events}"
    );
    let keys: Vec<(Option<String>, u16)> = api
        .requests_to("/flaky/")
        .into_iter()
        .map(|r| (r.idempotency_key, r.status))
        .collect();
    assert_eq!(
        keys,
        vec![
            (Some(format!("{id}/call/1")), 503),
            (Some(format!("{id}/call/2")), 200)
        ],
        "requests the API saw"
    );

    // Only failed runs can be retried.
    let again = dev
        .client()
        .await
        .retry_run(pb::RetryRunRequest { run_id: id.clone() })
        .await;
    assert_eq!(
        again.err().map(|s| s.code()),
        Some(tonic::Code::FailedPrecondition),
        "retrying a succeeded run"
    );
}

// Approval

const APPROVAL_FLOW: &str = r#"
name: needs-ok
steps:
  - id: draft
    uses: echo
    with: { text: "refund 20 EUR" }
  - id: ok
    uses: approval
    needs: draft
    with: { message: "send {{ steps.draft.output.text }}?" }
  - id: send
    uses: echo
    needs: ok
    with: { approved: "{{ steps.ok.output.approved }}", by: "{{ steps.ok.output.by }}" }
outputs:
  approved: "{{ steps.send.output.approved }}"
  by: "{{ steps.send.output.by }}"
"#;

#[tokio::test]
async fn an_approval_waits_for_a_person_answering_through_the_cli() {
    let dev = Dev::launch().await;
    dev.register(APPROVAL_FLOW).await;
    let id = dev.run("needs-ok", json!({})).await;
    let run = dev
        .wait_step(&id, "ok", pb::StepStatus::WaitingApproval, RUN_TIMEOUT)
        .await;
    assert_eq!(
        run.status(),
        pb::RunStatus::Running,
        "{}",
        describe_run(&run)
    );
    assert_eq!(
        step(&run, "send").status(),
        pb::StepStatus::Pending,
        "{}",
        describe_run(&run)
    );

    // Answering a step that is not waiting is refused, and changes nothing.
    let signal = |step: &str| pb::SignalRunRequest {
        run_id: id.clone(),
        step_id: step.into(),
        approve: true,
        comment: String::new(),
        by: "test".into(),
    };
    let err = dev
        .client()
        .await
        .signal_run(signal("send"))
        .await
        .expect_err("signalling a pending step must fail");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("not waiting for approval"),
        "{err:?}"
    );
    let err = dev
        .client()
        .await
        .signal_run(signal("nope"))
        .await
        .expect_err("signalling an unknown step must fail");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        dev.get(&id).await.status(),
        pb::RunStatus::Running,
        "a refused signal changed the run"
    );

    let url = dev.url();
    // The person sees what waits for them.
    let listed = rpaflow(
        &["approvals", "list", "--output", "json", "--server", &url],
        CLI_TIMEOUT,
    )
    .await;
    listed.expect_success();
    let pending: serde_json::Value = serde_json::from_str(listed.stdout.trim())
        .unwrap_or_else(|e| panic!("approvals list is not JSON ({e}):\n{listed}"));
    let mine: Vec<&serde_json::Value> = pending
        .as_array()
        .expect("a list")
        .iter()
        .filter(|a| a["run_id"] == json!(id))
        .collect();
    assert_eq!(mine.len(), 1, "{listed}");
    assert_eq!(mine[0]["step_id"], json!("ok"), "{listed}");
    assert_eq!(mine[0]["flow"], json!("needs-ok"), "{listed}");

    let out = rpaflow(
        &[
            "run",
            "signal",
            &id,
            "ok",
            "--approve",
            "--by",
            "ada",
            "--comment",
            "fine",
            "--server",
            &url,
        ],
        CLI_TIMEOUT,
    )
    .await;
    out.expect_success();
    let run = dev.wait_succeeded(&id, RUN_TIMEOUT).await;
    let listed = rpaflow(
        &["approvals", "list", "--output", "json", "--server", &url],
        CLI_TIMEOUT,
    )
    .await;
    assert!(
        !listed.stdout.contains(&id),
        "an answered approval is still listed:\n{listed}"
    );
    assert_eq!(
        outputs(&run),
        json!({"approved": true, "by": "ada"}),
        "{}",
        describe_run(&run)
    );
    let events = dev.events(&id).await;
    assert_eq!(events.count("approval_requested"), 1, "{events}");
    assert_eq!(events.count("approval_answered"), 1, "{events}");

    // The run is over: a late answer is refused.
    let out = rpaflow(
        &["run", "signal", &id, "ok", "--approve", "--server", &url],
        CLI_TIMEOUT,
    )
    .await;
    out.expect_code(1);
    assert!(out.stderr.contains("FailedPrecondition"), "{out}");
}

// Watching live runs

/// A client that stops reading a live run's events for a while (so the server's buffers fill up
/// while the run goes on) must still get every event, up to the final one, once it reads on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_gets_every_event_to_the_end() {
    use tokio_stream::StreamExt as _;

    const ITEMS: usize = 300;
    let dev = Dev::launch().await;
    dev.register(&format!(
        "name: many
steps:
  - {{ id: gate, uses: approval }}
  - id: each
    uses: echo
    needs: gate
    for_each: {{ items: 'range({ITEMS})', concurrency: 20 }}
    with: {{ n: '{{{{ item }}}}' }}
  - {{ id: last, uses: echo, needs: each, with: {{ done: true }} }}
"
    ))
    .await;
    let id = dev.run("many", json!({})).await;
    dev.wait_step(&id, "gate", pb::StepStatus::WaitingApproval, RUN_TIMEOUT)
        .await;

    // A small HTTP/2 window: the server must hold back early once this client stops reading.
    let endpoint = tonic::transport::Endpoint::from_shared(dev.url())
        .expect("a valid URI")
        .initial_stream_window_size(4096);
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => dev.fail(&format!("cannot connect: {e}")),
    };
    let mut watcher = pb::flow_service_client::FlowServiceClient::new(channel);
    let req = pb::WatchRunRequest {
        run_id: id.clone(),
        from_seq: 0,
    };
    let mut stream = match watcher.watch_run(req).await {
        Ok(resp) => resp.into_inner(),
        Err(s) => dev.fail(&format!("WatchRun failed: {s:?}")),
    };
    let mut live = Vec::new();
    match tokio::time::timeout(RUN_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(event))) => live.push(event),
        other => dev.fail(&format!("no first event from WatchRun: {other:?}")),
    }

    // Let the run go, and read nothing more until it is over.
    let approve = pb::SignalRunRequest {
        run_id: id.clone(),
        step_id: "gate".into(),
        approve: true,
        ..Default::default()
    };
    if let Err(s) = dev.client().await.signal_run(approve).await {
        dev.fail(&format!("SignalRun failed: {s:?}"));
    }
    let run = dev.wait_succeeded(&id, RUN_TIMEOUT).await;

    let read = async {
        while let Some(event) = stream.next().await {
            live.push(event.unwrap_or_else(|s| dev.fail(&format!("WatchRun broke off: {s:?}"))));
        }
    };
    if tokio::time::timeout(RUN_TIMEOUT, read).await.is_err() {
        dev.fail("WatchRun did not end after the run finished");
    }
    let stored = dev.events(&id).await;
    let last = live.last().map(|e| e.kind.clone());
    assert!(
        last.as_deref() == Some("run_succeeded") && live.len() == stored.len(),
        "the live stream ended after {} of {} events (last: {last:?}), while the run is {:?}; \
         WatchRun must send every event up to the run's final one",
        live.len(),
        stored.len(),
        run.status()
    );
    let seqs: Vec<u64> = live.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "live events in order, without gaps or repeats"
    );
}
