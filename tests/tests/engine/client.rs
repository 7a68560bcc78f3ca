//! The CLI client commands against a running server, and gRPC health and reflection.

use std::time::Duration;

use rpaflow_tests::{Dev, closed_port, rpaflow};
use serde_json::{Value as Json, json};

use crate::{CLI_TIMEOUT, temp_dir, write};

const CLI_FLOW: &str = r#"name: cli-demo
description: Squares a number
inputs:
  n: { type: integer, default: 3 }
steps:
  - id: square
    uses: echo
    with: { value: "{{ inputs.n * inputs.n }}" }
  - id: say
    uses: log
    needs: square
    with: { message: "square is {{ steps.square.output.value }}" }
outputs:
  square: "{{ steps.square.output.value }}"
"#;

#[tokio::test]
async fn cli_client_commands_work_against_a_running_server() {
    let dev = Dev::launch().await;
    let url = dev.url();
    let dir = temp_dir();
    let file = write(dir.path(), "cli-demo.yaml", CLI_FLOW);
    let file = file.to_str().expect("UTF-8");
    let cli = |args: Vec<&str>| {
        let mut all: Vec<String> = args.into_iter().map(str::to_owned).collect();
        all.extend(["--server".to_owned(), url.clone()]);
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            rpaflow(&all, CLI_TIMEOUT).await
        }
    };

    let out = cli(vec!["flow", "register", file]).await;
    out.expect_success();
    assert!(out.stdout.contains("flow cli-demo v1 registered"), "{out}");
    let out = cli(vec!["flow", "register", file]).await;
    out.expect_success();
    assert!(
        out.stdout.contains("flow cli-demo v1 unchanged"),
        "registering the same text again:\n{out}"
    );
    let bad = write(
        dir.path(),
        "bad.yaml",
        "name: bad\nsteps:\n  - id: a\n    uses: echo\n    timeout: soon\n",
    );
    let bad = bad.to_str().expect("UTF-8");
    let out = cli(vec!["flow", "register", bad]).await;
    out.expect_code(1);
    assert!(
        out.stderr
            .contains(&format!("{bad}:5:14: bad duration `soon`")),
        "{out}"
    );

    let out = cli(vec!["flow", "list"]).await;
    out.expect_success();
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("cli-demo "))
        .unwrap_or_else(|| panic!("no cli-demo row:\n{out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cols[..3],
        ["cli-demo", "1", "2"],
        "NAME VERSION STEPS:\n{out}"
    );
    assert!(
        !out.stdout.contains("bad "),
        "a refused flow is listed:\n{out}"
    );

    let out = cli(vec!["flow", "show", "cli-demo"]).await;
    out.expect_success();
    for want in [
        "flow cli-demo v1",
        "Squares a number",
        "input n: integer = 3",
        "step square",
        "step say",
        "needs square",
    ] {
        assert!(out.stdout.contains(want), "`{want}` missing:\n{out}");
    }

    let out = cli(vec![
        "run", "start", "cli-demo", "--input", "n=7", "--watch",
    ])
    .await;
    out.expect_success();
    let run_id = out
        .stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("run ")
                .and_then(|r| r.strip_suffix(" started"))
        })
        .unwrap_or_else(|| panic!("no `run ID started` line:\n{out}"))
        .to_owned();
    assert!(
        out.stdout.contains("run succeeded") && out.stdout.contains("SUCCEEDED"),
        "{out}"
    );

    let out = cli(vec!["run", "get", &run_id, "--output", "json"]).await;
    out.expect_success();
    let got: Json = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("`run get --output json` is not JSON ({e}):\n{out}"));
    assert_eq!(got["run_id"], json!(run_id), "{got:#}");
    assert_eq!(got["flow"], json!("cli-demo"), "{got:#}");
    assert_eq!(got["flow_version"], json!(1), "{got:#}");
    assert_eq!(got["status"], json!("succeeded"), "{got:#}");
    assert_eq!(got["inputs"], json!({"n": 7}), "{got:#}");
    assert_eq!(got["outputs"], json!({"square": 49}), "{got:#}");
    assert_eq!(got["error"], Json::Null, "{got:#}");
    let steps: Vec<(&str, &str)> = got["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| {
                    (
                        s["step_id"].as_str().unwrap_or(""),
                        s["status"].as_str().unwrap_or(""),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        steps,
        vec![("square", "succeeded"), ("say", "succeeded")],
        "{got:#}"
    );
    assert_eq!(got["steps"][0]["output"], json!({"value": 49}), "{got:#}");
    assert!(
        got["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "created_at is RFC 3339: {got:#}"
    );

    // Inputs the flow refuses: no run, an error naming the input, a non-zero exit.
    let out = cli(vec![
        "run",
        "start",
        "cli-demo",
        "--input",
        "n=\"seven\"",
        "--watch",
    ])
    .await;
    out.expect_code(1);
    assert!(out.stderr.contains("input `n` must be an integer"), "{out}");
    // A run that fails: `run start --watch` follows it to the end and exits 1.
    let down = write(
        dir.path(),
        "down.yaml",
        &format!(
            "name: down\nsteps:\n  - {{ id: call, uses: http, with: {{ url: 'http://127.0.0.1:{}/' }} }}\n",
            closed_port()
        ),
    );
    cli(vec!["flow", "register", down.to_str().expect("UTF-8")])
        .await
        .expect_success();
    let out = cli(vec!["run", "start", "down", "--watch"]).await;
    out.expect_code(1);
    assert!(
        out.stdout.contains("run failed")
            && out.stdout.contains("FAILED")
            && out.stdout.contains("http_connect"),
        "{out}"
    );

    let out = cli(vec!["run", "list", "--status", "succeeded"]).await;
    out.expect_success();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&run_id) && l.contains("succeeded") && l.contains("cli-demo")),
        "{out}"
    );
    let out = cli(vec!["run", "list", "--status", "failed"]).await;
    out.expect_success();
    assert!(
        !out.stdout.contains(&run_id),
        "a succeeded run listed as failed:\n{out}"
    );
    let out = cli(vec!["run", "list", "--status", "nonsense"]).await;
    assert_ne!(
        out.code(),
        Some(0),
        "an unknown status filter must be refused:\n{out}"
    );
}

// Health checking and reflection

#[tokio::test]
async fn health_and_reflection_answer() {
    use tokio_stream::StreamExt as _;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dev = Dev::launch().await;
    let channel = dev.channel().await;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "rpaflow.v1.FlowService"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| dev.fail(&format!("health check of `{service}` failed: {s:?}")));
        assert_eq!(
            resp.into_inner().status(),
            ServingStatus::Serving,
            "health of `{service}`"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_eq!(
        unknown.err().map(|s| s.code()),
        Some(tonic::Code::NotFound),
        "health of an unknown service"
    );

    let mut reflection = ServerReflectionClient::new(channel);
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "rpaflow.v1.FlowService".into(),
            )),
        },
    ];
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap_or_else(|s| dev.fail(&format!("reflection failed: {s:?}")))
        .into_inner();
    let mut services = Vec::new();
    let mut descriptors = Vec::new();
    while let Some(resp) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("reflection answers within 10s")
    {
        match resp
            .unwrap_or_else(|s| dev.fail(&format!("reflection stream failed: {s:?}")))
            .message_response
        {
            Some(MessageResponse::ListServicesResponse(list)) => {
                services.extend(list.service.into_iter().map(|s| s.name))
            }
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                descriptors.extend(files.file_descriptor_proto)
            }
            other => panic!("unexpected reflection answer: {other:?}"),
        }
    }
    for want in [
        "rpaflow.v1.FlowService",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            services.iter().any(|s| s == want),
            "reflection lists {services:?}, not {want}"
        );
    }
    assert!(
        !descriptors.is_empty(),
        "no file descriptor for rpaflow.v1.FlowService"
    );
    // The encoded FileDescriptorProto names its file and declares the service.
    let first = String::from_utf8_lossy(&descriptors[0]);
    assert!(
        first.contains("rpaflow/v1/flow.proto") && first.contains("FlowService"),
        "descriptor does not describe flow.proto"
    );
}
