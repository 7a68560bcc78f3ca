//! An `llm` step on a real inference node (ONNX Runtime, an ONNX GPT-2 in the Optimum layout),
//! started by `rpaflow dev --model`, checked against `rpaflow generate` on a separate node.

use std::process::Stdio;
use std::time::Duration;

use rpaflow_tests::{printed_outputs, rpaflow, rpaflow_bin, setup_script};
use tokio::io::{AsyncBufReadExt, BufReader};

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn an_llm_step_drafts_on_the_inference_node_started_by_dev() {
    let env = setup_script("setup-inference.sh");
    let model = env["RPAFLOW_TEST_MODEL"].as_str();
    let ort = env["ORT_DYLIB_PATH"].as_str();
    let data = tempfile::tempdir().expect("a temp dir");
    let data = data.path().to_str().expect("a UTF-8 path");
    let args = [
        "dev",
        "examples/draft-reply.yaml",
        "--input",
        "customer=Ada",
        "--model",
        model,
        "--onnxruntime",
        ort,
        "--data",
        data,
        "--listen",
        "127.0.0.1:0",
    ];
    let out = rpaflow(&args, TIMEOUT).await;
    out.expect_success();
    assert!(
        out.stdout.contains("rpaflow dev: inference node for"),
        "{out}"
    );
    let outputs = printed_outputs(&out.stdout);
    assert_eq!(outputs["tokens"], serde_json::json!(24), "{out}");
    let draft = outputs["draft"]
        .as_str()
        .unwrap_or_else(|| panic!("no draft text:\n{out}"));
    assert!(!draft.trim().is_empty(), "{out}");

    // The same prompt, greedy, on a node of its own: the step's draft is exactly the node's text.
    let mut node = tokio::process::Command::new(rpaflow_bin());
    node.args([
        "inference",
        "--model",
        model,
        "--onnxruntime",
        ort,
        "--listen",
        "127.0.0.1:0",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    let mut node = node.spawn().expect("cannot start rpaflow inference");
    let mut lines = BufReader::new(node.stdout.take().expect("piped stdout")).lines();
    let addr = tokio::time::timeout(TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("rpaflow inference: serving gRPC on ") {
                return addr.trim().to_owned();
            }
        }
        panic!("rpaflow inference ended without serving");
    })
    .await
    .expect("rpaflow inference did not start in time");
    let prompt = "Customer Ada wrote: \"My order arrived broken.\"\nOur reply:\n";
    let generated = rpaflow(
        &[
            "generate",
            "--server",
            &addr,
            "--max-new-tokens",
            "24",
            "--greedy",
            "--stop",
            "\n\n",
            prompt,
        ],
        TIMEOUT,
    )
    .await;
    generated.expect_success();
    assert!(
        generated.stdout.contains(draft),
        "the flow's draft is not what the node generates for the same prompt:\ndraft: {draft:?}\n{generated}"
    );
    let _ = node.kill().await;
}
