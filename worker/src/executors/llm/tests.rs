//! The executor against stand-in nodes on loopback: gRPC inference and health services whose
//! answers each test sets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rpaflow_proto::v1 as pb;
use rpaflow_proto::v1::inference_server::{Inference, InferenceServer};
use serde_json::json;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::*;

/// How a stand-in node answers `GenerateStream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Echoes the prompt and parameters.
    Echo,
    /// Refuses: its queue is full.
    Busy,
    /// Refuses: draining.
    Draining,
    /// Takes the request, then says it was never started (dropped from its queue on SIGTERM).
    DroppedFromQueue,
    /// Takes the request, sends a token, then fails.
    FailsAfterStart,
}

struct Fake {
    calls: Arc<AtomicUsize>,
    mode: Mode,
    model: &'static str,
    /// How long a generation takes.
    delay: Duration,
}

type Chunks = tokio_stream::wrappers::ReceiverStream<Result<pb::GenerateChunk, Status>>;

#[tonic::async_trait]
impl Inference for Fake {
    async fn generate(
        &self,
        _: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        Err(Status::unimplemented("workers stream"))
    }

    type GenerateStreamStream = Chunks;

    async fn generate_stream(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<Chunks>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let req = req.into_inner();
        let params = req.params.unwrap_or_default();
        match self.mode {
            Mode::Busy => return Err(Status::resource_exhausted("queue full")),
            Mode::Draining => return Err(Status::unavailable("shutting down")),
            _ => {}
        }
        if params.temperature.is_some_and(|t| t < 0.0) {
            return Err(Status::invalid_argument("temperature must be at least 0"));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (mode, delay, model) = (self.mode, self.delay, self.model);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let chunk = |text: String, finished: bool| pb::GenerateChunk {
                token_id: 1,
                text,
                finish_reason: finished.then_some(pb::FinishReason::Length as i32),
                summary: finished.then(|| pb::GenerateSummary {
                    prompt_tokens: 3,
                    generated_tokens: params.max_new_tokens.unwrap_or(2),
                    seed: params.seed.unwrap_or(7),
                    timings: None,
                }),
            };
            match mode {
                Mode::DroppedFromQueue => {
                    let mut status = Status::unavailable("not started");
                    status.metadata_mut().insert(
                        rpaflow_proto::NOT_STARTED_METADATA,
                        tonic::metadata::MetadataValue::from_static("true"),
                    );
                    let _ = tx.send(Err(status)).await;
                }
                Mode::FailsAfterStart => {
                    let _ = tx.send(Ok(chunk("Dear".into(), false))).await;
                    let _ = tx.send(Err(Status::unavailable("connection reset"))).await;
                }
                _ => {
                    let _ = tx.send(Ok(chunk(req.prompt, false))).await;
                    let rest =
                        format!(" [{model} top_k={:?} stop={:?}]", params.top_k, params.stop);
                    let _ = tx.send(Ok(chunk(rest, true))).await;
                }
            }
        });
        Ok(Response::new(Chunks::new(rx)))
    }

    async fn model_info(
        &self,
        _: Request<pb::ModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfoResponse>, Status> {
        Ok(Response::new(pb::ModelInfoResponse {
            model_dir: format!("/models/{}", self.model),
            device: "cpu".into(),
            ..Default::default()
        }))
    }
}

/// A stand-in node serving on loopback.
struct FakeNode {
    url: String,
    calls: Arc<AtomicUsize>,
    health: HealthReporter,
}

impl FakeNode {
    async fn start(mode: Mode, model: &'static str) -> Self {
        Self::start_slow(mode, model, Duration::ZERO).await
    }

    async fn start_slow(mode: Mode, model: &'static str, delay: Duration) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<InferenceServer<Fake>>().await;
        let fake = Fake {
            calls: calls.clone(),
            mode,
            model,
            delay,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(InferenceServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Self {
            url: format!("http://{addr}"),
            calls,
            health,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn set(&self, status: ServingStatus) {
        self.health
            .set_service_status(node::INFERENCE_SERVICE, status)
            .await;
    }
}

fn executor(nodes: &[&FakeNode]) -> LlmExecutor {
    let endpoints: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    LlmExecutor::new(&endpoints, DEFAULT_REFRESH).unwrap()
}

fn ctx() -> TaskContext {
    let mut ctx = TaskContext::new("r", "s");
    ctx.timeout = Duration::from_secs(4);
    ctx
}

/// Waits until the executor's nodes have all been seen serving or not, as `serving` says.
async fn wait_healthy(llm: &LlmExecutor, serving: usize) {
    let cluster = llm.cluster.as_ref().unwrap();
    cluster.start().await;
    for _ in 0..200 {
        let nodes = cluster.balancer.nodes();
        if nodes.iter().filter(|n| n.is_healthy()).count() == serving {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the nodes did not reach {serving} serving");
}

#[tokio::test]
async fn generates_and_passes_parameters_on() {
    let node = FakeNode::start(Mode::Echo, "gpt2").await;
    let llm = executor(&[&node]);
    let input =
        json!({"prompt": "Dear Ada,", "max_new_tokens": 5, "top_k": 40, "stop": "\n", "seed": 1});
    let out = llm.execute(&ctx(), input).await.unwrap();
    assert_eq!(
        out["text"],
        json!("Dear Ada, [gpt2 top_k=Some(40) stop=[\"\\n\"]]")
    );
    assert_eq!(out["finish_reason"], json!("length"));
    assert_eq!(out["generated_tokens"], json!(5));
    assert_eq!(out["seed"], json!(1));
}

#[tokio::test]
async fn the_least_outstanding_node_takes_the_next_request() {
    let slow = Duration::from_millis(300);
    let a = FakeNode::start_slow(Mode::Echo, "m", slow).await;
    let b = FakeNode::start_slow(Mode::Echo, "m", slow).await;
    let c = FakeNode::start_slow(Mode::Echo, "m", slow).await;
    let llm = executor(&[&a, &b, &c]);
    wait_healthy(&llm, 3).await;
    // Six at once: two on each node, whatever the ties.
    let runs = (0..6).map(|i| {
        let llm = llm.clone();
        tokio::spawn(async move {
            llm.execute(&ctx(), json!({"prompt": format!("p{i}")}))
                .await
        })
    });
    for run in futures::future::join_all(runs).await {
        run.unwrap().unwrap();
    }
    assert_eq!([a.calls(), b.calls(), c.calls()], [2, 2, 2]);
}

#[tokio::test]
async fn a_node_not_serving_is_skipped_until_it_serves_again() {
    let a = FakeNode::start(Mode::Echo, "m").await;
    let b = FakeNode::start(Mode::Echo, "m").await;
    let llm = executor(&[&a, &b]);
    wait_healthy(&llm, 2).await;
    a.set(ServingStatus::NotServing).await;
    wait_healthy(&llm, 1).await;
    for _ in 0..6 {
        llm.execute(&ctx(), json!({"prompt": "x"})).await.unwrap();
    }
    assert_eq!((a.calls(), b.calls()), (0, 6));
    a.set(ServingStatus::Serving).await;
    wait_healthy(&llm, 2).await;
    for _ in 0..6 {
        llm.execute(&ctx(), json!({"prompt": "x"})).await.unwrap();
    }
    assert!(a.calls() >= 2, "back in the rotation: {}", a.calls());
}

#[tokio::test]
async fn a_request_refused_before_it_started_goes_to_another_node() {
    for mode in [Mode::Busy, Mode::Draining, Mode::DroppedFromQueue] {
        let refusing = FakeNode::start(mode, "m").await;
        let good = FakeNode::start(Mode::Echo, "m").await;
        let llm = executor(&[&refusing, &good]);
        wait_healthy(&llm, 2).await;
        for _ in 0..4 {
            let out = llm.execute(&ctx(), json!({"prompt": "hi"})).await.unwrap();
            assert_eq!(out["text"], json!("hi [m top_k=None stop=[]]"), "{mode:?}");
        }
        assert_eq!(good.calls(), 4, "{mode:?}");
        assert!(
            refusing.calls() >= 1,
            "{mode:?}: the refusing node was tried"
        );
    }
}

#[tokio::test]
async fn a_request_that_failed_after_it_started_is_not_sent_again() {
    let a = FakeNode::start(Mode::FailsAfterStart, "m").await;
    let b = FakeNode::start(Mode::FailsAfterStart, "m").await;
    let llm = executor(&[&a, &b]);
    wait_healthy(&llm, 2).await;
    let err = llm
        .execute(&ctx(), json!({"prompt": "hi"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, codes::INTERRUPTED);
    assert!(err.retryable, "the flow's retry decides");
    assert!(err.message.contains("partly generated"), "{}", err.message);
    assert!(err.message.contains("1 tokens received"), "{}", err.message);
    assert_eq!(a.calls() + b.calls(), 1, "tried on one node only");
}

#[tokio::test]
async fn all_nodes_busy_fails_retryably_after_trying_again() {
    let a = FakeNode::start(Mode::Busy, "m").await;
    let llm = executor(&[&a]);
    let mut ctx = ctx();
    ctx.timeout = Duration::from_secs(1);
    let err = llm
        .execute(&ctx, json!({"prompt": "hi"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, codes::BUSY);
    assert!(err.retryable);
    assert!(a.calls() >= 2, "tried again after a pause: {}", a.calls());
}

#[tokio::test]
async fn a_step_may_ask_for_a_model_by_name() {
    let small = FakeNode::start(Mode::Echo, "gpt2-small").await;
    let large = FakeNode::start(Mode::Echo, "gpt2-large").await;
    let llm = executor(&[&small, &large]);
    wait_healthy(&llm, 2).await;
    for _ in 0..3 {
        let out = llm
            .execute(&ctx(), json!({"prompt": "x", "model": "gpt2-large"}))
            .await
            .unwrap();
        assert_eq!(out["text"], json!("x [gpt2-large top_k=None stop=[]]"));
    }
    assert_eq!((small.calls(), large.calls()), (0, 3));
    let err = llm
        .execute(&ctx(), json!({"prompt": "x", "model": "gpt2-xl"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, codes::UNKNOWN_MODEL);
    assert!(!err.retryable);
    assert!(
        err.message.contains("`gpt2-xl`") && err.message.contains("gpt2-large, gpt2-small"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn bad_parameters_name_the_field() {
    let node = FakeNode::start(Mode::Echo, "m").await;
    let llm = executor(&[&node]);
    let ctx = ctx();
    let err = llm
        .execute(&ctx, json!({"prompt": "x", "top_k": -1}))
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_input");
    assert!(err.message.contains("top_k"), "{}", err.message);
    let err = llm
        .execute(&ctx, json!({"prompt": "x", "temprature": 1}))
        .await
        .unwrap_err();
    assert!(err.message.contains("temprature"), "{}", err.message);
    let err = llm
        .execute(&ctx, json!({"prompt": "x", "temperature": -1.0}))
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_input");
    assert!(err.message.contains("temperature"), "{}", err.message);
    let err = llm
        .execute(&ctx, json!({"prompt": "x", "model": 3}))
        .await
        .unwrap_err();
    assert!(err.message.contains("model"), "{}", err.message);
}

#[tokio::test]
async fn without_a_node_steps_fail_saying_so() {
    let err = LlmExecutor::unconfigured()
        .execute(&TaskContext::new("r", "s"), json!({"prompt": "x"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, codes::UNAVAILABLE);
    assert!(!err.retryable);
    assert!(
        err.message.contains("inference_endpoint"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn an_unreachable_node_fails_retryably() {
    let llm = LlmExecutor::new(&["127.0.0.1:1".to_owned()], DEFAULT_REFRESH).unwrap();
    let mut ctx = TaskContext::new("r", "s");
    ctx.timeout = Duration::from_secs(1);
    let err = llm.execute(&ctx, json!({"prompt": "x"})).await.unwrap_err();
    assert_eq!(err.code, codes::UNAVAILABLE);
    assert!(err.retryable);
    assert!(err.message.contains("127.0.0.1:1"), "{}", err.message);
}

#[test]
fn endpoints_are_checked_when_the_worker_is_configured() {
    let err = LlmExecutor::new(&["https://a:1".to_owned()], DEFAULT_REFRESH).unwrap_err();
    assert!(err.to_string().contains("inference_endpoint"), "{err}");
    assert!(LlmExecutor::new(&[], DEFAULT_REFRESH).is_err());
}

#[test]
fn the_worker_takes_a_comma_separated_endpoint_and_a_list() {
    let config = crate::WorkerConfig {
        inference_endpoint: Some("a:1, http://b:2,".into()),
        inference_endpoints: vec!["c:3".into()],
        ..Default::default()
    };
    assert_eq!(config.inference_endpoints(), ["a:1", "http://b:2", "c:3"]);
    config.validate().unwrap();
    let bad = crate::WorkerConfig {
        inference_endpoints: vec!["c".into()],
        ..Default::default()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(
        err.contains("inference_endpoint") && err.contains("port"),
        "{err}"
    );
}

#[tokio::test]
async fn a_name_resolves_to_the_nodes_behind_it() {
    let node = FakeNode::start(Mode::Echo, "m").await;
    let port = node.url.rsplit(':').next().unwrap().to_owned();
    // `localhost` resolves to 127.0.0.1 (and ::1 where there is one, a node that is never
    // healthy here): the requests go to the one that serves.
    let llm = LlmExecutor::new(&[format!("localhost:{port}")], Duration::from_secs(1)).unwrap();
    wait_healthy(&llm, 1).await;
    let cluster = llm.cluster.as_ref().unwrap();
    let addrs: Vec<_> = cluster.balancer.nodes().iter().map(|n| n.addr).collect();
    assert!(
        addrs
            .iter()
            .any(|a| a.to_string() == format!("127.0.0.1:{port}")),
        "{addrs:?}"
    );
    for _ in 0..3 {
        llm.execute(&ctx(), json!({"prompt": "x"})).await.unwrap();
    }
    assert_eq!(node.calls(), 3);
}
