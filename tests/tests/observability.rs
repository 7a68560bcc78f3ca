//! Metrics and health: `rpaflow dev` with an admin listener (`[admin] listen`) serves
//! `/metrics`, `/healthz` and `/readyz`; after some runs the counters moved by exactly what
//! happened, the text passes Debian's `promtool check metrics`, a real Prometheus scrapes it, and
//! on SIGTERM the service says NOT_SERVING (gRPC health and `/readyz`) before it drains.
//!
//! Needs Debian's `prometheus` package (`scripts/setup-prometheus.sh`, which `scripts/test.sh`
//! runs): without `promtool` and `prometheus` these tests fail.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rpaflow_tests::kafka::Broker;
use rpaflow_tests::{
    Dev, InferenceNode, WorkerProcess, http_get as get, http_get_with as get_with, pb,
};
use serde_json::{Value as Json, json};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Three steps of `echo` (one a fan-out of three items), a check, and a `log`; the check's
/// `until` fails the run when `n` is not positive.
const FLOW: &str = r#"
name: metered
inputs:
  n: { type: integer, default: 1 }
steps:
  - { id: first, uses: echo, with: { n: "{{ inputs.n }}" } }
  - id: each
    uses: echo
    needs: first
    for_each: { items: "range(1, 4)" }
    with: { i: "{{ item }}" }
  - id: check
    uses: echo
    needs: each
    with: { n: "{{ inputs.n }}" }
    until: "output.n > 0"
    retry: { max_attempts: 1 }
  - { id: note, uses: log, needs: check, with: { message: "n is {{ inputs.n }}" } }
"#;

/// One step that sleeps, to have work in flight when the process is told to stop.
const SLOW: &str = r#"
name: slow
steps:
  - { id: nap, uses: sleep, with: { duration: 4s } }
"#;

/// The samples of a Prometheus text scrape, by `name{labels}` as printed.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// What `series` reads in `scrape`; a series that is not there reads 0.
fn value(scrape: &BTreeMap<String, f64>, series: &str) -> f64 {
    scrape.get(series).copied().unwrap_or(0.0)
}

async fn scrape(admin: &str) -> (String, BTreeMap<String, f64>) {
    let (status, text) = get(&format!("{admin}/metrics")).await;
    assert_eq!(status, 200, "{text}");
    let parsed = samples(&text);
    (text, parsed)
}

/// Runs `promtool check metrics` on `text`; panics with what it said when it refuses it.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is not installed: run scripts/setup-prometheus.sh");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics refused the scrape:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_move_by_what_the_runs_did_and_prometheus_scrapes_them() {
    let dev = Dev::launch_env(
        &["--concurrency", "4"],
        &[("RPAFLOW_ADMIN__LISTEN", "127.0.0.1:0")],
    )
    .await;
    let admin = dev.admin_url();
    assert_eq!(get(&format!("{admin}/healthz")).await, (200, "ok\n".into()));
    let (status, body) = get(&format!("{admin}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Json>(&body).expect("JSON"),
        json!({"ready": true})
    );

    let (_, before) = scrape(&dev.admin_url()).await;
    let runs = start_runs(&dev).await;
    let (text, after) = scrape(&dev.admin_url()).await;
    assert_moved(&before, &after, &text, &before, &after, &text);
    // No run id in any label.
    for run in &runs {
        assert!(
            !text.contains(run.as_str()),
            "a run id in the metrics:\n{text}"
        );
    }
    assert_eq!(value(&after, "rpaflow_worker_free_slots"), 4.0);

    promtool_check(&text);
    prometheus_scrapes(&[dev.admin_url()]).await;
}

/// The runs of [`start_runs`] moved the orchestrator's counters (`orch_*`) and the worker's
/// (`work_*`, the same scrape for `rpaflow dev`) by exactly what they did.
fn assert_moved(
    orch_before: &BTreeMap<String, f64>,
    orch_after: &BTreeMap<String, f64>,
    text: &str,
    work_before: &BTreeMap<String, f64>,
    work_after: &BTreeMap<String, f64>,
    work_text: &str,
) {
    let moved = |series: &str| value(orch_after, series) - value(orch_before, series);
    let worker_moved = |series: &str| value(work_after, series) - value(work_before, series);
    let flow = r#"namespace="default",flow="metered""#;
    assert_eq!(
        moved(&format!("rpaflow_runs_started_total{{{flow}}}")),
        3.0,
        "{text}"
    );
    for (outcome, n) in [("succeeded", 2.0), ("failed", 1.0), ("cancelled", 0.0)] {
        let labels = format!(r#"{{{flow},outcome="{outcome}"}}"#);
        assert_eq!(
            moved(&format!("rpaflow_runs_finished_total{labels}")),
            n,
            "{outcome}\n{text}"
        );
        assert_eq!(
            moved(&format!("rpaflow_run_duration_seconds_count{labels}")),
            n,
            "{outcome}"
        );
    }
    // Steps, each counted once (a fan-out is one step): `first`, `each` and `check` are echo
    // steps, `note` runs only when `check` passed.
    for (kind, outcome, n) in [
        ("echo", "succeeded", 8.0),
        ("echo", "failed", 1.0),
        ("log", "succeeded", 2.0),
        ("log", "failed", 0.0),
    ] {
        let labels = format!(r#"{{kind="{kind}",outcome="{outcome}"}}"#);
        assert_eq!(
            moved(&format!("rpaflow_steps_finished_total{labels}")),
            n,
            "{kind} {outcome}\n{text}"
        );
        assert_eq!(
            moved(&format!("rpaflow_step_duration_seconds_count{labels}")),
            n,
            "{kind} {outcome}"
        );
    }
    // Every task's result said when the worker started it: 17 tasks (below).
    assert_eq!(
        moved(r#"rpaflow_step_schedule_to_start_seconds_count{queue="default"}"#),
        17.0,
        "{text}"
    );
    // Nothing left in flight.
    assert_eq!(
        value(orch_after, r#"rpaflow_dispatch_backlog{queue="default"}"#),
        0.0
    );
    let active = format!("rpaflow_runs_active{{{flow}}}");
    assert_eq!(orch_after.get(&active), Some(&0.0), "{text}");

    // Tasks the worker ran: 5 echo tasks a run (1 + 3 items + the check, whose output the
    // orchestrator judges with `until`: the task itself succeeded), and `note` twice.
    for (kind, outcome, n) in [
        ("echo", "succeeded", 15.0),
        ("echo", "failed", 0.0),
        ("log", "succeeded", 2.0),
    ] {
        let labels = format!(r#"{{kind="{kind}",outcome="{outcome}"}}"#);
        assert_eq!(
            worker_moved(&format!("rpaflow_worker_tasks_total{labels}")),
            n,
            "{kind} {outcome}\n{work_text}"
        );
        assert_eq!(
            worker_moved(&format!(
                "rpaflow_worker_task_duration_seconds_count{labels}"
            )),
            n,
            "{kind} {outcome}"
        );
    }
    assert_eq!(value(work_after, "rpaflow_worker_tasks_in_flight"), 0.0);
}

/// Registers [`FLOW`] and runs it three times: twice to success, once to failure; returns the
/// run ids.
async fn start_runs(dev: &Dev) -> Vec<String> {
    dev.register(FLOW).await;
    let ok = [
        dev.run("metered", json!({"n": 1})).await,
        dev.run("metered", json!({"n": 2})).await,
    ];
    let failed = dev.run("metered", json!({"n": -1})).await;
    for run in &ok {
        dev.wait_succeeded(run, TIMEOUT).await;
    }
    dev.wait_failed(&failed, TIMEOUT).await;
    vec![ok[0].clone(), ok[1].clone(), failed]
}

/// A real Prometheus (Debian's) scraping `targets` (admin URLs) sees them all up and the runs
/// of [`start_runs`].
async fn prometheus_scrapes(targets: &[String]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let listed = targets
        .iter()
        .map(|t| format!("'{}'", t.trim_start_matches("http://")))
        .collect::<Vec<_>>()
        .join(", ");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: rpaflow\n    \
             static_configs:\n      - targets: [{listed}]\n"
        ),
    )
    .expect("write the Prometheus configuration");
    let port = rpaflow_tests::closed_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("a log file");
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().expect("the log file"))
        .stderr(log)
        .spawn()
        .expect("prometheus is not installed: run scripts/setup-prometheus.sh");
    let api = format!("http://127.0.0.1:{port}/api/v1/query?query=");
    let value_of = |body: &str| -> Option<String> {
        let answer: Json = serde_json::from_str(body).ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_owned)
    };
    let up_wanted = targets.len().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let mut seen = false;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            // `sum(up)`: how many targets the last scrapes reached.
            let (_, up) = get(&format!("{api}sum(up)")).await;
            let (_, runs) = get(&format!(
                "{api}sum(rpaflow_runs_started_total%7Bflow%3D%22metered%22%7D)"
            ))
            .await;
            last = format!("up: {up}\nruns: {runs}");
            if value_of(&up).as_deref() == Some(up_wanted.as_str())
                && value_of(&runs).as_deref() == Some("3")
            {
                seen = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(
        seen,
        "Prometheus did not see {up_wanted} targets up with 3 runs started; last answers:\n\
         {last}\n--- prometheus log ---\n{}",
        rpaflow_tests::tail(&log, 40)
    );
}

/// The distributed services on Kafka and an inference node, each with its admin listener: all
/// ready, every scrape passes promtool, the counters of the orchestrator and the worker moved by
/// what each did (the node's: `the_inference_node_serves_its_metrics`), and one Prometheus
/// scrapes all three.
#[tokio::test(flavor = "multi_thread")]
async fn the_orchestrator_and_worker_services_serve_their_own_metrics() {
    let node = InferenceNode::start(&[], &[]).await;
    let broker = Broker::start().await.expect("cannot start the broker");
    let admin_flag = ["--admin-listen", "127.0.0.1:0"];
    let orchestrator = Dev::orchestrator(&broker.brokers(), &admin_flag, &[]).await;
    let worker = WorkerProcess::start(&broker.brokers(), "w1", &admin_flag, &[]).await;
    let worker_admin = worker
        .output()
        .lines()
        .find_map(|line| {
            line.split_once("rpaflow worker: admin on ")
                .map(|(_, url)| url.trim().to_owned())
        })
        .unwrap_or_else(|| worker.fail("the worker printed no `admin on ADDR` line"));
    let orchestrator_admin = orchestrator.admin_url();
    let node_admin = node.admin_url().to_owned();
    for admin in [&orchestrator_admin, &worker_admin, &node_admin] {
        let (status, body) = get(&format!("{admin}/readyz")).await;
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"ready":true}"#),
            "{admin}"
        );
    }

    let (_, orch_before) = scrape(&orchestrator_admin).await;
    let (_, work_before) = scrape(&worker_admin).await;
    start_runs(&orchestrator).await;
    let (text, orch_after) = scrape(&orchestrator_admin).await;
    let (work_text, work_after) = scrape(&worker_admin).await;
    assert_moved(
        &orch_before,
        &orch_after,
        &text,
        &work_before,
        &work_after,
        &work_text,
    );
    // Each service shows its own part only.
    assert!(!text.contains("rpaflow_worker_"), "{text}");
    assert!(!work_text.contains("rpaflow_runs_"), "{work_text}");
    assert_eq!(value(&work_after, "rpaflow_worker_free_slots"), 16.0);
    promtool_check(&text);
    promtool_check(&work_text);

    // A result that cannot be decoded goes to the dead-letter topic, and is counted.
    let dead_before = value(&orch_after, "rpaflow_dead_letters_total");
    broker
        .produce_raw("rpaflow.results", "junk", b"not a TaskResult")
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, now) = scrape(&orchestrator_admin).await;
        let dead = value(&now, "rpaflow_dead_letters_total");
        if dead == dead_before + 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rpaflow_dead_letters_total is {dead}, not {}",
            dead_before + 1.0
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    promtool_check(&scrape(&node_admin).await.0);
    prometheus_scrapes(&[orchestrator_admin, worker_admin, node_admin]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_says_not_serving_before_the_drain() {
    let mut dev = Dev::launch_env(
        &[],
        &[
            ("RPAFLOW_ADMIN__LISTEN", "127.0.0.1:0"),
            ("RPAFLOW_ADMIN__DRAIN_DELAY", "2s"),
        ],
    )
    .await;
    let admin = dev.admin_url();
    let mut health = tonic_health::pb::health_client::HealthClient::new(dev.channel().await);
    let serving = |status: i32| {
        tonic_health::pb::health_check_response::ServingStatus::try_from(status)
            .expect("a known status")
    };
    let check = tonic_health::pb::HealthCheckRequest::default();
    let status = health
        .check(check.clone())
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        serving(status.status),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    dev.register(SLOW).await;
    let run = dev.run("slow", json!({})).await;
    dev.wait_step(&run, "nap", pb::StepStatus::Running, TIMEOUT)
        .await;

    dev.terminate();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut readyz = (0, String::new());
    while Instant::now() < deadline {
        readyz = get(&format!("{admin}/readyz")).await;
        if readyz.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(readyz.0, 503, "{readyz:?}");
    assert_eq!(
        serde_json::from_str::<Json>(&readyz.1).expect("JSON"),
        json!({"ready": false, "reason": "draining"})
    );
    // Alive, and still answering calls, while gRPC health says NOT_SERVING.
    assert_eq!(get(&format!("{admin}/healthz")).await.0, 200);
    let status = health.check(check).await.expect("health").into_inner();
    assert_eq!(
        serving(status.status),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    // Then it drains and exits cleanly.
    let exit = dev.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}\n{}", dev.output());
}

/// `rpaflow inference --admin-listen` serves the node's metrics: after two generations the
/// request, token and latency series moved by what the node did, and promtool accepts them.
#[tokio::test(flavor = "multi_thread")]
async fn the_inference_node_serves_its_metrics() {
    let mut node = InferenceNode::start(&[], &[]).await;
    let (admin, grpc) = (node.admin_url().to_owned(), node.grpc().to_owned());
    let (status, body) = get(&format!("{admin}/readyz")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));

    let (_, before) = scrape(&admin).await;
    let mut generated_tokens = 0.0;
    for prompt in ["Hello there", "Our reply:"] {
        let out = rpaflow_tests::rpaflow(
            &[
                "generate",
                "--server",
                &grpc,
                "--max-new-tokens",
                "6",
                "--greedy",
                prompt,
            ],
            TIMEOUT,
        )
        .await;
        out.expect_success();
        // Its summary: `finish: ..., prompt tokens: N, generated tokens: N, ...`.
        let (_, rest) = out
            .stderr
            .split_once("generated tokens: ")
            .unwrap_or_else(|| panic!("no summary from generate:\n{out}"));
        let n: f64 = rest
            .split(',')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no token count in the summary:\n{out}"));
        generated_tokens += n;
    }
    let (text, after) = scrape(&admin).await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        moved(r#"rpaflow_inference_requests_total{outcome="finished"}"#),
        2.0,
        "{text}"
    );
    assert_eq!(
        moved("rpaflow_inference_generated_tokens_total"),
        generated_tokens
    );
    assert_eq!(
        moved("rpaflow_inference_time_to_first_token_seconds_count"),
        2.0
    );
    assert_eq!(moved("rpaflow_inference_queue_duration_seconds_count"), 2.0);
    assert!(
        moved("rpaflow_inference_prompt_tokens_total") >= 4.0,
        "{text}"
    );
    assert!(
        moved(r#"rpaflow_inference_forward_duration_seconds_count{method="prefill"}"#) >= 1.0,
        "{text}"
    );
    assert_eq!(value(&after, "rpaflow_inference_queue_size"), 0.0);
    assert_eq!(value(&after, "rpaflow_inference_batch_current_size"), 0.0);
    promtool_check(&text);
    let _ = node.kill().await;
}

/// With `admin.metrics_token_file`, `/metrics` (which names every namespace's flows) answers
/// only the bearer token; the probes stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_when_one_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.token");
    std::fs::write(&file, "scrape-me-7f1\n").unwrap();
    let dev = Dev::launch_env(
        &[],
        &[
            ("RPAFLOW_ADMIN__LISTEN", "127.0.0.1:0"),
            ("RPAFLOW_ADMIN__METRICS_TOKEN_FILE", file.to_str().unwrap()),
        ],
    )
    .await;
    let metrics = format!("{}/metrics", dev.admin_url());
    let (status, body) = get(&metrics).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("rpaflow_"), "{body}");
    let (status, _) = get_with(&metrics, "Authorization: Bearer wrong\r\n").await;
    assert_eq!(status, 401);
    let (status, body) = get_with(&metrics, "Authorization: Bearer scrape-me-7f1\r\n").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("# TYPE rpaflow_dead_letters_total counter"),
        "{body}"
    );
    assert_eq!(get(&format!("{}/healthz", dev.admin_url())).await.0, 200);
    assert_eq!(get(&format!("{}/readyz", dev.admin_url())).await.0, 200);
}
