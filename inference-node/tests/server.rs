//! The node as a server: cancellation, the queue, validation, health, reflection, devices.

mod common;

use std::time::Duration;

use common::{client, greedy, node, request, setup, wait_for_stats};
use futures::StreamExt;
use rpaflow_inference_node::Device;
use rpaflow_proto::v1 as pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_frees_its_slot() {
    // One slot: while the long request holds it, nothing else runs.
    let node = node(1, 8).await;
    let mut c = client(&node).await;
    let mut stream = c
        .generate_stream(request("Hello, world!", greedy(240)))
        .await
        .unwrap_or_else(|e| panic!("generate_stream: {e}"))
        .into_inner();
    let first = stream.next().await;
    assert!(matches!(first, Some(Ok(_))), "first chunk: {first:?}");
    drop(stream);

    let stats = wait_for_stats(&mut c, "the cancelled request to leave", |s| {
        s.requests_cancelled == 1 && s.running == 0
    })
    .await;
    assert_eq!(
        stats.requests_finished, 0,
        "the request ran to its end instead of being cancelled"
    );
    assert!(
        stats.generated_tokens < 240,
        "generated {} tokens after the client left",
        stats.generated_tokens
    );

    // The slot is free: the next request is admitted at once and finishes.
    let next = c
        .generate(request("Next", greedy(5)))
        .await
        .unwrap_or_else(|e| panic!("generate: {e}"))
        .into_inner();
    assert_eq!(next.generated_tokens, 5);
    let queue_ms = next.timings.map(|t| t.queue_ms).unwrap_or(f64::MAX);
    assert!(queue_ms < 1000.0, "waited {queue_ms} ms for the slot");
    node.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted() {
    let node = node(1, 1).await;
    let mut c = client(&node).await;
    // The running request...
    let mut running = c
        .generate_stream(request("Hello", greedy(200)))
        .await
        .unwrap_or_else(|e| panic!("first: {e}"))
        .into_inner();
    assert!(matches!(running.next().await, Some(Ok(_))));
    // ...one waiting (the queue holds one)...
    let waiting = c
        .generate_stream(request("Waiting", greedy(5)))
        .await
        .unwrap_or_else(|e| panic!("second: {e}"))
        .into_inner();
    // ...and one too many.
    let refused = c.generate(request("One too many", greedy(5))).await;
    let status = refused
        .err()
        .unwrap_or_else(|| panic!("a third request was accepted"));
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("queue is full"),
        "{}",
        status.message()
    );

    // Once the running one goes, the waiting one runs to its end.
    drop(running);
    let chunks: Vec<_> = waiting.collect().await;
    assert_eq!(chunks.len(), 5);
    assert!(chunks.iter().all(|c| c.is_ok()));
    node.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_parameters_answer_invalid_argument_naming_them() {
    let node = node(4, 8).await;
    let mut c = client(&node).await;
    let p = pb::GenerationParams::default;
    let cases = [
        (
            "Hi",
            pb::GenerationParams {
                temperature: Some(-0.5),
                ..p()
            },
            "temperature",
        ),
        (
            "Hi",
            pb::GenerationParams {
                top_p: Some(1.5),
                ..p()
            },
            "top_p",
        ),
        (
            "Hi",
            pb::GenerationParams {
                max_new_tokens: Some(0),
                ..p()
            },
            "max_new_tokens",
        ),
        (
            "Hi",
            pb::GenerationParams {
                max_new_tokens: Some(1000),
                ..p()
            },
            "max_new_tokens",
        ),
        (
            "Hi",
            pb::GenerationParams {
                repetition_penalty: Some(-1.0),
                ..p()
            },
            "repetition_penalty",
        ),
        (
            "Hi",
            pb::GenerationParams {
                stop: vec![String::new()],
                ..p()
            },
            "stop",
        ),
        ("", p(), "prompt"),
        // Longer than the context: the prompt is named, not max_new_tokens.
        (
            &*"word ".repeat(4000),
            pb::GenerationParams {
                max_new_tokens: Some(1),
                ..p()
            },
            "prompt",
        ),
    ];
    for (prompt, params, name) in cases {
        for stream in [false, true] {
            let status = if stream {
                c.generate_stream(request(prompt, params.clone()))
                    .await
                    .err()
            } else {
                c.generate(request(prompt, params.clone())).await.err()
            };
            let status = status.unwrap_or_else(|| panic!("{name}: accepted {params:?}"));
            assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
            assert!(
                status.message().contains(&format!("`{name}`")),
                "{name}: {}",
                status.message()
            );
        }
    }
    node.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_model_info() {
    let node = node(4, 8).await;
    assert_ne!(node.addr().port(), 0, "port 0 gives the real port");
    let channel = tonic::transport::Endpoint::from_shared(node.url())
        .unwrap_or_else(|e| panic!("endpoint: {e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "rpaflow.v1.Inference".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("health: {e}"))
        .into_inner();
    assert_eq!(
        check.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([ask]))
        .await
        .unwrap_or_else(|e| panic!("reflection: {e}"))
        .into_inner();
    let answer = answers
        .next()
        .await
        .and_then(|a| a.ok())
        .and_then(|a| a.message_response);
    let Some(MessageResponse::ListServicesResponse(list)) = answer else {
        panic!("reflection answered {answer:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"rpaflow.v1.Inference"), "{names:?}");

    let info = pb::inference_client::InferenceClient::new(channel)
        .model_info(pb::ModelInfoRequest {})
        .await
        .unwrap_or_else(|e| panic!("model info: {e}"))
        .into_inner();
    assert_eq!(
        (info.layers, info.heads, info.hidden_size, info.vocab_size),
        (2, 4, 64, 50257)
    );
    assert_eq!((info.max_positions, info.eos_token_id), (256, 50256));
    assert_eq!(
        (info.kv_dtype.as_str(), info.device.as_str()),
        ("float32", "cpu")
    );
    node.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_runs_on_the_gpu_when_the_runtime_has_it_and_on_the_cpu_otherwise() {
    // With the CPU wheel (no CUDA provider) the node says so and serves on the CPU; with a CUDA
    // build of ONNX Runtime in ORT_DYLIB_PATH (scripts/gpu-check.sh) it serves on the GPU.
    let cuda = rpaflow_inference_node::model::cuda_available(Some(&setup().onnxruntime))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut config = common::engine_config(&setup().model, 4, 8);
    config.device = Device::Cuda(0);
    let node = common::node_with(config).await;
    let mut c = client(&node).await;
    let info = c
        .model_info(pb::ModelInfoRequest {})
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(info.device, if cuda { "cuda:0" } else { "cpu" });
    let got = c
        .generate(request("Hi", greedy(3)))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(got.generated_tokens, 3);
    node.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_is_not_a_model_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = common::engine_config(dir.path(), 4, 8);
    let err = rpaflow_inference_node::start(rpaflow_inference_node::NodeConfig {
        engine: config,
        listen: "127.0.0.1:0".into(),
    })
    .await
    .err()
    .unwrap_or_else(|| panic!("an empty directory loaded"));
    assert!(err.to_string().contains("config.json"), "{err}");
    // A shutdown node refuses new work.
    let node = node(1, 1).await;
    let engine = node.engine().clone();
    node.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
    let refused = engine.submit(
        "Hi",
        rpaflow_inference_node::GenerationParams::greedy(2),
        rpaflow_inference_node::engine::Delivery::Whole,
    );
    assert!(matches!(
        refused,
        Err(rpaflow_inference_node::Error::NotRunning)
    ));
    tokio::time::sleep(Duration::from_millis(1)).await;
}
