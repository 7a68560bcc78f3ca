//! One run across the distributed services: `rpaflow orchestrator` and `rpaflow worker` on a
//! real Kafka broker, and `rpaflow inference` serving the test model, each exporting to the
//! receiver. A flow with a retried `http` step, a `for_each` fan-out, an approval and an `llm`
//! step gives one trace, whose spans come from all three services and hang together parent to
//! child: the gRPC call that started the run (linked to the caller's own trace), the dispatches,
//! Kafka's `send` and `process` spans both ways, the worker's steps, the `llm` step's CLIENT span
//! and the node's server span with its phases. The orchestrator is killed (-9) while the run
//! waits for its approval, before it has committed the results it took; the new process takes
//! them again (Kafka delivers at least once) without a second step, and what it does lands in the
//! same trace.

use std::collections::{BTreeMap, BTreeSet};

use rpaflow_tests::kafka::Broker;
use rpaflow_tests::{Dev, HttpServer, InferenceNode, WorkerProcess, pb};
use serde_json::json;

use super::receiver::{Received, Receiver, SpanKind, TIMEOUT, count, describe};

const FLOW: &str = r#"
name: traced-dist
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
    for_each: { items: "range(2)" }
    with: { duration: 10ms }
  - { id: gate, uses: approval, needs: items }
  - id: draft
    uses: llm
    needs: gate
    timeout: 60s
    with: { prompt: "Our reply:", max_new_tokens: 4, greedy: true }
"#;

/// Started by messages of `traced.orders` that carry trace context.
const TRIGGERED: &str = r#"
name: traced-trigger
inputs:
  order: { type: integer }
triggers:
  - id: orders
    kafka: { topic: traced.orders }
steps:
  - { id: note, uses: echo, with: { order: "{{ inputs.order }}" } }
"#;

const TASKS: &str = "rpaflow.tasks.default";
const RESULTS: &str = "rpaflow.results";
/// The trace context of the program that calls StartRun.
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// The trace context of the program that produces the trigger's message.
const PRODUCER: &str = "00-5cf92f3577b34da6a3ce929d0e0e4737-10f067aa0ba902b8-01";

/// Whether every span of `trace_id` that names a parent has its parent among `spans`.
fn parents_arrived(spans: &[Received], trace_id: &str) -> bool {
    let ids: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .map(|s| s.span_id.as_str())
        .collect();
    spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .all(|s| s.parent.is_empty() || ids.contains(s.parent.as_str()))
}

fn trace_and_span(traceparent: &str) -> (String, String) {
    (
        traceparent[3..35].to_owned(),
        traceparent[36..52].to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_across_the_services_on_kafka() {
    let (receiver, otlp) = Receiver::start().await;
    let broker = Broker::start().await.expect("cannot start the broker");
    let otel = ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str());
    let node = InferenceNode::start(&[], &[otel]).await;
    // The orchestrator commits what it has taken only once a minute, so the kill below always
    // comes before the commit: every result taken before it is taken again by the new process.
    let seldom = ("RPAFLOW_KAFKA__COMMIT_INTERVAL_MS", "60000");
    let mut orchestrator = Dev::orchestrator(&broker.brokers(), &[], &[otel, seldom]).await;
    let _worker = WorkerProcess::start(
        &broker.brokers(),
        "w1",
        &[],
        &[otel, ("RPAFLOW_WORKER__INFERENCE_ENDPOINT", node.grpc())],
    )
    .await;
    let api = HttpServer::start();
    api.fail_first("/fetch/", 1);
    orchestrator.register(FLOW).await;

    // The caller has a trace of its own: the run links to it.
    let mut start = tonic::Request::new(pb::StartRunRequest {
        flow: "traced-dist".into(),
        inputs_json: json!({ "api": api.url() }).to_string(),
        ..Default::default()
    });
    start.metadata_mut().insert(
        "traceparent",
        CALLER.parse().expect("an ASCII metadata value"),
    );
    let run_id = orchestrator
        .client()
        .await
        .start_run(start)
        .await
        .expect("StartRun")
        .into_inner()
        .run
        .expect("a run")
        .run_id;
    let trace_id: String = run_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_ascii_lowercase();

    orchestrator
        .wait_step(&run_id, "gate", pb::StepStatus::WaitingApproval, TIMEOUT)
        .await;
    receiver
        .wait_until("the spans before the gate", |spans| {
            count(spans, "step http") >= 2
                && count(spans, "step sleep") >= 2
                && count(spans, &format!("process {RESULTS}")) >= 4
        })
        .await;
    orchestrator.kill9();
    orchestrator.restart().await;
    orchestrator.approve(&run_id, "gate").await;
    orchestrator.wait_succeeded(&run_id, TIMEOUT).await;
    let spans = receiver
        .wait_until(
            "the spans of the run's end, every parent among them",
            |spans| {
                // Each service exports in batches of its own: a child can arrive before its parent.
                count(spans, "run traced-dist") >= 1
                    && count(spans, "decode") >= 1
                    // Four results taken by both processes, `draft`'s by the new one.
                    && count(spans, &format!("process {RESULTS}")) >= 9
                    && parents_arrived(spans, &trace_id)
            },
        )
        .await;
    let all = describe(&spans);
    let trace: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace_id).collect();

    // From every service.
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    for service in [
        "rpaflow-orchestrator",
        "rpaflow-worker",
        "rpaflow-inference",
    ] {
        assert!(services.contains(service), "no span of {service}:\n{all}");
    }

    // Connected: the run span is the one root, every other parent is in the trace.
    let by_id: BTreeMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let roots: Vec<&&Received> = trace.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root:\n{all}");
    assert_eq!(roots[0].name, "run traced-dist", "{all}");
    for span in &trace {
        assert!(
            span.parent.is_empty() || by_id.contains_key(span.parent.as_str()),
            "`{}` ({}) has a parent outside the trace:\n{all}",
            span.name,
            span.service
        );
    }
    let parent = |span: &Received| -> &Received {
        by_id
            .get(span.parent.as_str())
            .copied()
            .unwrap_or_else(|| panic!("`{}` has no parent:\n{all}", span.name))
    };
    let named = |name: &str| -> Vec<&Received> {
        trace.iter().copied().filter(|s| s.name == name).collect()
    };
    let attr = |span: &Received, key: &str| span.attributes.get(key).cloned();

    // The call that started the run: a server span under the run, linked to the caller.
    let call = named("rpaflow.v1.FlowService/StartRun");
    assert_eq!(call.len(), 1, "{all}");
    assert_eq!(call[0].kind, SpanKind::Server);
    assert_eq!(parent(call[0]).name, "run traced-dist");
    assert_eq!(
        call[0].links,
        vec![trace_and_span(CALLER)],
        "the caller's trace is linked:\n{all}"
    );

    // Every step attempt: dispatch -> send (Kafka) -> process (worker) -> step -> send -> process
    // (orchestrator). fetch twice, items twice, draft once.
    let steps: Vec<&Received> = trace
        .iter()
        .copied()
        .filter(|s| s.name.starts_with("step "))
        .collect();
    assert_eq!(steps.len(), 5, "five step attempts:\n{all}");
    for step in &steps {
        assert_eq!(step.service, "rpaflow-worker");
        let process = parent(step);
        assert_eq!(process.name, format!("process {TASKS}"), "{all}");
        assert_eq!(process.kind, SpanKind::Consumer);
        assert_eq!(process.service, "rpaflow-worker");
        assert_eq!(attr(process, "messaging.system").as_deref(), Some("kafka"));
        assert_eq!(
            attr(process, "messaging.consumer.group.name").as_deref(),
            Some("rpaflow-workers-default"),
            "{all}"
        );
        assert!(attr(process, "messaging.kafka.offset").is_some(), "{all}");
        let send = parent(process);
        assert_eq!(send.name, format!("send {TASKS}"), "{all}");
        assert_eq!(send.kind, SpanKind::Producer);
        assert_eq!(send.service, "rpaflow-orchestrator");
        assert_eq!(
            attr(send, "messaging.destination.name").as_deref(),
            Some(TASKS)
        );
        assert!(attr(send, "messaging.kafka.offset").is_some(), "{all}");
        let dispatch = parent(send);
        assert!(dispatch.name.starts_with("dispatch "), "{all}");
        assert_eq!(parent(dispatch).name, "run traced-dist");

        // The result's way back.
        let back: Vec<&Received> = trace
            .iter()
            .copied()
            .filter(|s| s.name == format!("send {RESULTS}") && s.parent == step.span_id)
            .collect();
        assert_eq!(back.len(), 1, "the result of `{}`:\n{all}", step.name);
        let recorded: Vec<&Received> = named(&format!("process {RESULTS}"))
            .into_iter()
            .filter(|s| s.parent == back[0].span_id)
            .collect();
        // Kafka delivers at least once: a result from before the kill is taken by both
        // processes, and the second copy changes nothing (five step attempts, not more).
        let expected = if step.name == "step llm" { 1 } else { 2 };
        assert_eq!(
            recorded.len(),
            expected,
            "the result of `{}` recorded once per orchestrator that took it:\n{all}",
            step.name
        );
        for taken in &recorded {
            assert_eq!(taken.service, "rpaflow-orchestrator");
            assert_eq!(
                attr(taken, "messaging.consumer.group.name").as_deref(),
                Some("rpaflow-orchestrator")
            );
        }
    }

    // The retried step: the first attempt failed.
    let http: Vec<&Received> = named("step http");
    assert_eq!(http.len(), 2, "{all}");
    assert_eq!(
        http.iter()
            .filter(|s| s.attributes.contains_key("error.type"))
            .count(),
        1,
        "{all}"
    );

    // After the restart: the new orchestrator dispatched `draft`, and the llm call reached the
    // node in the same trace.
    assert_eq!(named("dispatch draft").len(), 1, "{all}");
    let client: Vec<&Received> = trace
        .iter()
        .copied()
        .filter(|s| s.name.starts_with("text_completion"))
        .collect();
    assert_eq!(client.len(), 1, "{all}");
    assert_eq!(parent(client[0]).name, "step llm");
    let server = named("rpaflow.v1.Inference/GenerateStream");
    assert_eq!(server.len(), 1, "{all}");
    assert_eq!(server[0].service, "rpaflow-inference");
    assert_eq!(server[0].parent, client[0].span_id, "{all}");
    for phase in ["queue", "prefill", "decode"] {
        let found = named(phase);
        assert_eq!(found.len(), 1, "{phase}:\n{all}");
        assert_eq!(found[0].parent, server[0].span_id, "{all}");
    }
}

/// A Kafka trigger's message with a `traceparent` header: its `process` span continues the
/// producer's trace, and the run it starts links to that span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_trigger_continues_the_producers_trace() {
    let (receiver, otlp) = Receiver::start().await;
    let broker = Broker::start().await.expect("cannot start the broker");
    let otel = ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str());
    let orchestrator = Dev::orchestrator(&broker.brokers(), &[], &[otel]).await;
    let _worker = WorkerProcess::start(&broker.brokers(), "w1", &[], &[]).await;
    orchestrator.register(TRIGGERED).await;
    broker
        .produce_with_headers(
            "traced.orders",
            "order-7",
            br#"{"order": 7}"#,
            &[("traceparent", PRODUCER)],
        )
        .await;
    let topic_span = "process traced.orders";
    let spans = receiver
        .wait_until("the trigger's spans and the run's", |spans| {
            count(spans, topic_span) == 2 && count(spans, "run traced-trigger") == 1
        })
        .await;
    let all = describe(&spans);
    let (producer_trace, producer_span) = trace_and_span(PRODUCER);
    let process: Vec<&Received> = spans.iter().filter(|s| s.name == topic_span).collect();
    // One in the producer's trace (the message processed), one in the run's (the run started).
    let consumed = process
        .iter()
        .find(|s| s.trace_id == producer_trace)
        .unwrap_or_else(|| panic!("no process span in the producer's trace:\n{all}"));
    assert_eq!(consumed.parent, producer_span, "{all}");
    assert_eq!(consumed.kind, SpanKind::Consumer);
    assert_eq!(
        consumed
            .attributes
            .get("messaging.consumer.group.name")
            .map(String::as_str),
        Some("rpaflow-trigger-traced-trigger-orders"),
        "{all}"
    );
    let run = spans
        .iter()
        .find(|s| s.name == "run traced-trigger")
        .expect("the run span");
    let started = process
        .iter()
        .find(|s| s.trace_id == run.trace_id)
        .unwrap_or_else(|| panic!("no start span in the run's trace:\n{all}"));
    assert_eq!(started.parent, run.span_id, "{all}");
    assert_eq!(
        started.links,
        vec![(consumed.trace_id.clone(), consumed.span_id.clone())],
        "the run links to the message's processing:\n{all}"
    );
}
