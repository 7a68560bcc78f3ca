//! Traces: `rpaflow dev` with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP/gRPC receiver in
//! this test (the collector's `TraceService/Export`). One run of a flow with an `http` step that
//! fails once and is retried, a `for_each` fan-out and an approval gives one trace whose id is
//! the run id: the orchestrator's `run` and `dispatch` spans, the worker's `step` spans and the
//! `http` executor's CLIENT spans, connected parent to child; the API called saw a `traceparent`
//! naming that CLIENT span; and after a kill -9 and a restart mid-run (the run waiting for its
//! approval) the spans of the new process are in the same trace.

//!
//! `distributed`: the same across the services on Kafka, into the inference node.

mod distributed;
mod receiver;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rpaflow_tests::{Dev, HttpServer, http_get, pb};
use serde_json::json;

use self::receiver::{Received, Receiver, SpanKind, TIMEOUT, count, describe};

const FLOW: &str = r#"
name: traced
inputs:
  api: { type: string }
steps:
  - id: fetch
    uses: http
    with: { url: "{{ inputs.api }}/fetch/{{ run.id }}" }
    retry: { max_attempts: 3, delay: 100ms, backoff: fixed }
  - id: items
    uses: sleep
    needs: fetch
    for_each: { items: "range(3)" }
    with: { duration: 10ms }
  - { id: gate, uses: approval, needs: items }
  - { id: after, uses: sleep, needs: gate, with: { duration: 10ms } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_across_retries_and_restarts() {
    let (receiver, endpoint) = Receiver::start().await;
    let api = HttpServer::start();
    api.fail_first("/fetch/", 1);
    let mut dev = Dev::launch_env(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await;
    dev.register(FLOW).await;
    let run_id = dev.run("traced", json!({ "api": api.url() })).await;
    let trace_id: String = run_id.chars().filter(char::is_ascii_hexdigit).collect();
    let trace_id = trace_id.to_ascii_lowercase();

    dev.wait_step(&run_id, "gate", pb::StepStatus::WaitingApproval, TIMEOUT)
        .await;
    // Spans leave in batches: wait for the first process's before killing it.
    let before = receiver
        .wait_until("spans of the steps before the gate", |spans| {
            count(spans, "step http") >= 2 && count(spans, "step sleep") >= 3
        })
        .await;
    dev.kill9();
    dev.restart().await;
    dev.approve(&run_id, "gate").await;
    dev.wait_succeeded(&run_id, TIMEOUT).await;
    let spans = receiver
        .wait_until("run span and the spans after the restart", |spans| {
            count(spans, "run traced") >= 1 && count(spans, "step sleep") >= 4
        })
        .await;
    let all = describe(&spans);

    // Everything about the run is in its trace, and nothing else is.
    let of_run: Vec<&Received> = spans
        .iter()
        .filter(|s| {
            s.attributes
                .get("run_id")
                .or(s.attributes.get("rpaflow.run.id"))
                == Some(&run_id)
        })
        .collect();
    assert!(!of_run.is_empty(), "no span names the run:\n{all}");
    for span in &of_run {
        assert_eq!(
            span.trace_id, trace_id,
            "a span of the run is in another trace:\n{all}"
        );
    }
    let trace: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    for span in &trace {
        assert_eq!(span.service, "rpaflow-dev", "service.name:\n{all}");
    }
    let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    let expect = |name: &str, n: usize| {
        assert_eq!(
            names.iter().filter(|x| **x == name).count(),
            n,
            "`{name}` spans in the trace:\n{all}"
        );
    };
    expect("run traced", 1);
    expect("rpaflow.v1.FlowService/StartRun", 1);
    expect("dispatch fetch", 2);
    expect("dispatch items", 3);
    expect("dispatch after", 1);
    expect("step http", 2);
    expect("step sleep", 4);
    expect("GET", 2);

    // Connected: one root (the run span); every other span's parent is in the trace.
    let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<&&Received> = trace.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root:\n{all}");
    assert_eq!(roots[0].name, "run traced");
    assert_eq!(
        roots[0]
            .attributes
            .get("rpaflow.run.outcome")
            .map(String::as_str),
        Some("succeeded")
    );
    for span in &trace {
        assert!(
            span.parent.is_empty() || ids.contains(span.parent.as_str()),
            "span `{}` has a parent outside the trace:\n{all}",
            span.name
        );
    }
    let by_id: BTreeMap<&str, &&Received> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_of = |span: &Received| by_id.get(span.parent.as_str()).map(|p| p.name.clone());
    for span in &trace {
        let expected_parent = match span.name.as_str() {
            n if n.starts_with("dispatch ") => Some("run traced".to_owned()),
            "rpaflow.v1.FlowService/StartRun" => Some("run traced".to_owned()),
            "step http" => Some("dispatch fetch".to_owned()),
            "GET" => Some("step http".to_owned()),
            _ => continue,
        };
        assert_eq!(
            parent_of(span),
            expected_parent,
            "parent of `{}`:\n{all}",
            span.name
        );
    }
    for span in trace.iter().filter(|s| s.name.starts_with("step ")) {
        assert_eq!(span.kind, SpanKind::Consumer, "{all}");
        assert!(
            parent_of(span).is_some_and(|p| p.starts_with("dispatch ")),
            "{all}"
        );
    }
    for span in trace.iter().filter(|s| s.name == "GET") {
        assert_eq!(span.kind, SpanKind::Client, "{all}");
    }
    for span in trace.iter().filter(|s| s.name.starts_with("dispatch ")) {
        assert_eq!(span.kind, SpanKind::Producer, "{all}");
    }
    for span in trace
        .iter()
        .filter(|s| s.name == "rpaflow.v1.FlowService/StartRun")
    {
        assert_eq!(span.kind, SpanKind::Server, "{all}");
        assert_eq!(
            span.attributes.get("rpc.method").map(String::as_str),
            Some("StartRun"),
            "{all}"
        );
    }

    // The retried step: its first attempt failed with the API's error, the second did not.
    let http_steps: Vec<&&Received> = trace.iter().filter(|s| s.name == "step http").collect();
    let failed: Vec<_> = http_steps
        .iter()
        .filter_map(|s| s.attributes.get("error.type"))
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "one failed attempt with error.type:\n{all}"
    );
    let statuses: BTreeSet<&str> = trace
        .iter()
        .filter(|s| s.name == "GET")
        .filter_map(|s| {
            s.attributes
                .get("http.response.status_code")
                .map(String::as_str)
        })
        .collect();
    assert_eq!(statuses, BTreeSet::from(["200", "503"]), "{all}");

    // The API saw the run's trace, with the CLIENT span as the parent.
    let client_spans: BTreeSet<String> = trace
        .iter()
        .filter(|s| s.name == "GET")
        .map(|s| s.span_id.clone())
        .collect();
    let requests = api.requests_to("/fetch/");
    assert_eq!(requests.len(), 2, "{requests:?}");
    for request in &requests {
        let traceparent = request
            .headers
            .get("traceparent")
            .unwrap_or_else(|| panic!("no traceparent on {request:?}"));
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(
            parts[1], trace_id,
            "the API's traceparent names another trace"
        );
        assert!(
            client_spans.contains(parts[2]),
            "the API's traceparent {traceparent} does not name a CLIENT span:\n{all}"
        );
    }

    // After the restart: the spans that only the new process could record are in the trace.
    let before_ids: BTreeSet<&str> = before.iter().map(|s| s.span_id.as_str()).collect();
    let after_restart: Vec<&&Received> = trace
        .iter()
        .filter(|s| !before_ids.contains(s.span_id.as_str()))
        .collect();
    let after_names: BTreeSet<&str> = after_restart.iter().map(|s| s.name.as_str()).collect();
    for name in ["run traced", "dispatch after", "step sleep"] {
        assert!(
            after_names.contains(name),
            "no `{name}` from the restarted process in the run's trace:\n{all}"
        );
    }
}

/// The `llm` step's CLIENT span carries the trace to the inference node as gRPC metadata: the
/// node's server span is its child, with the engine's `queue`, `prefill` and `decode` under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_step_is_traced_into_the_inference_node() {
    let env = rpaflow_tests::setup_script("setup-inference.sh");
    let model = env["RPAFLOW_TEST_MODEL"].as_str();
    let ort = env["ORT_DYLIB_PATH"].as_str();
    let (receiver, endpoint) = Receiver::start().await;
    let dev = Dev::launch_env(
        &["--model", model, "--onnxruntime", ort],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    )
    .await;
    let flow =
        std::fs::read_to_string(rpaflow_tests::workspace_root().join("examples/draft-reply.yaml"))
            .expect("examples/draft-reply.yaml");
    dev.register(&flow).await;
    let run_id = dev.run("draft-reply", json!({})).await;
    dev.wait_succeeded(&run_id, TIMEOUT).await;
    let trace_id: String = run_id.chars().filter(char::is_ascii_hexdigit).collect();
    let spans = receiver
        .wait_until("the run's spans down to the engine's phases", |spans| {
            count(spans, "run draft-reply") == 1 && count(spans, "decode") >= 1
        })
        .await;
    let all = describe(&spans);
    let trace: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let one = |pred: &dyn Fn(&Received) -> bool, what: &str| -> Received {
        let found: Vec<&&Received> = trace.iter().filter(|s| pred(s)).collect();
        assert_eq!(found.len(), 1, "one {what} in the run's trace:\n{all}");
        (*found[0]).clone()
    };
    let step = one(&|s| s.name == "step llm", "`step llm`");
    let client = one(
        &|s| s.name.starts_with("text_completion"),
        "`text_completion` span",
    );
    let model_name = std::path::Path::new(model)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert_eq!(
        client.name,
        format!("text_completion {model_name}"),
        "{all}"
    );
    assert_eq!(client.kind, SpanKind::Client, "{all}");
    assert_eq!(client.parent, step.span_id, "{all}");
    assert_eq!(
        client.attributes.get("gen_ai.request.model"),
        Some(&model_name),
        "{all}"
    );
    assert_eq!(
        client
            .attributes
            .get("gen_ai.request.max_tokens")
            .map(String::as_str),
        Some("24"),
        "{all}"
    );
    assert_eq!(
        client
            .attributes
            .get("gen_ai.usage.output_tokens")
            .map(String::as_str),
        Some("24"),
        "{all}"
    );
    assert!(
        client.attributes.contains_key("gen_ai.usage.input_tokens"),
        "{all}"
    );
    let server = one(
        &|s| s.name == "rpaflow.v1.Inference/GenerateStream",
        "server span",
    );
    assert_eq!(server.kind, SpanKind::Server, "{all}");
    assert_eq!(
        server.parent, client.span_id,
        "the node continues the step's trace:\n{all}"
    );
    for phase in ["queue", "prefill", "decode"] {
        let span = one(&|s| s.name == phase, phase);
        assert_eq!(span.parent, server.span_id, "{all}");
    }
}

/// A collector that is down (a closed port) costs runs nothing: they succeed as fast as they
/// would, and the service stops promptly, saying how many spans it dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_runs_nothing() {
    const RUNS: usize = 20;
    let api = HttpServer::start();
    let mut dev = Dev::launch_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("RPAFLOW_ADMIN__LISTEN", "127.0.0.1:0"),
        ],
    )
    .await;
    dev.register(FLOW).await;
    let started = Instant::now();
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(dev.run("traced", json!({ "api": api.url() })).await);
    }
    for run_id in &runs {
        dev.wait_step(run_id, "gate", pb::StepStatus::WaitingApproval, TIMEOUT)
            .await;
        dev.approve(run_id, "gate").await;
    }
    for run_id in &runs {
        dev.wait_succeeded(run_id, TIMEOUT).await;
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(15),
        "{RUNS} runs took {elapsed:?} with the collector down"
    );
    // Spans wait at most a batch delay, and the exports to the closed port fail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The drops are counted where operators look: the metrics.
    let (status, metrics) = http_get(&format!("{}/metrics", dev.admin_url())).await;
    assert_eq!(status, 200, "{metrics}");
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rpaflow_trace_spans_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no dropped-spans counter:\n{metrics}"));
    assert!(dropped > 0.0, "no span counted as dropped:\n{metrics}");
    let stopping = Instant::now();
    dev.terminate();
    let status = dev.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", dev.output());
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "stopping took {:?}",
        stopping.elapsed()
    );
    let output = dev.output();
    assert!(
        output.contains("spans were dropped"),
        "no count of dropped spans when stopping:\n{output}"
    );
}

/// A webhook delivery that carries a `traceparent` starts a run whose trace holds the delivery's
/// HTTP server span, linked to the sender's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_run_links_to_the_senders_trace() {
    const HOOK_FLOW: &str = r#"
name: traced-hook
inputs:
  n: { type: integer }
triggers:
  - id: raw
    webhook: { token_secret: HOOK_TOKEN }
steps:
  - { id: show, uses: echo, with: { n: "{{ inputs.n }}" } }
"#;
    const SENDER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (receiver, endpoint) = Receiver::start().await;
    let dev = Dev::launch_env(
        &["--hooks-listen", "127.0.0.1:0"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    )
    .await;
    dev.client()
        .await
        .set_secret(pb::SetSecretRequest {
            name: "HOOK_TOKEN".into(),
            value: "hook-token-5e1d".into(),
        })
        .await
        .expect("SetSecret");
    dev.register(HOOK_FLOW).await;
    let (status, body) = rpaflow_tests::http_post_with(
        &format!("{}/hooks/default/traced-hook", dev.hooks_url()),
        &format!("Authorization: Bearer hook-token-5e1d\r\ntraceparent: {SENDER}\r\n"),
        br#"{"n": 3}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("a JSON answer");
    let run_id = answer["run_id"].as_str().expect("a run id").to_owned();
    dev.wait_succeeded(&run_id, TIMEOUT).await;
    let route = "POST /hooks/{namespace}/{flow}";
    let spans = receiver
        .wait_until("the run span and the delivery's span", |spans| {
            count(spans, "run traced-hook") == 1 && count(spans, route) == 1
        })
        .await;
    let all = describe(&spans);
    let run = spans
        .iter()
        .find(|s| s.name == "run traced-hook")
        .expect("the run span");
    let delivery = spans.iter().find(|s| s.name == route).expect("the span");
    assert_eq!(delivery.trace_id, run.trace_id, "{all}");
    assert_eq!(delivery.parent, run.span_id, "{all}");
    assert_eq!(delivery.kind, SpanKind::Server, "{all}");
    assert_eq!(
        delivery
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("201"),
        "{all}"
    );
    assert_eq!(
        delivery.links,
        vec![(SENDER[3..35].to_owned(), SENDER[36..52].to_owned())],
        "the sender's trace is linked:\n{all}"
    );
}
