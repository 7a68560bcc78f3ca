//! An int8 model: the test GPT-2 quantized by `scripts/quantize-int8.py` (ONNX Runtime's dynamic
//! int8 quantization with the settings of Optimum's `AutoQuantizationConfig.avx512_vnni`), served by
//! `rpaflow inference` next to the float32 model it came from.
//!
//! What is asserted is what was measured to hold on this random-weight model (see
//! docs/benchmarks.md, "int8"): the node serves the quantized file exactly as a plain onnxruntime
//! loop runs it, and its greedy output agrees with the float32 model's on the first token of most
//! prompts. Longer agreement is printed, not asserted: on random weights near-ties between tokens
//! are common, and one flipped token sends the rest of the text elsewhere.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;

use rpaflow_tests::{InferenceNode, pb, setup_script, workspace_root};

/// Greedy tokens per prompt.
const NEW_TOKENS: u32 = 16;
/// Prompts taken from `scripts/int8-quality/prompts.txt`.
const PROMPTS: usize = 12;
/// One thread per node: the two nodes share the machine's cores.
const NODE_ARGS: &[&str] = &["--threads", "1"];
const LOG: &[(&str, &str)] = &[("RUST_LOG", "info"), ("NO_COLOR", "1")];

type Client = pb::inference_client::InferenceClient<tonic::transport::Channel>;

async fn client(node: &InferenceNode) -> Client {
    Client::connect(format!("http://{}", node.grpc()))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", node.grpc()))
}

async fn greedy(client: &mut Client, prompt: &str) -> Vec<u32> {
    let request = pb::GenerateRequest {
        prompt: prompt.into(),
        params: Some(pb::GenerationParams {
            max_new_tokens: Some(NEW_TOKENS),
            greedy: true,
            ..Default::default()
        }),
    };
    let response = client
        .generate(request)
        .await
        .unwrap_or_else(|e| panic!("generate {prompt:?}: {e}"))
        .into_inner();
    assert_eq!(
        response.generated_tokens, NEW_TOKENS,
        "{prompt:?}: {response:?}"
    );
    response.token_ids
}

/// Greedy token ids of `inference-node/tests/reference.py` (a plain onnxruntime loop, one prompt
/// at a time) on `model`.
fn reference(python: &str, model: &Path, prompts: &[String]) -> Vec<Vec<u32>> {
    let input = serde_json::json!({
        "model": model,
        "prompts": prompts
            .iter()
            .map(|p| serde_json::json!({"prompt": p, "max_new_tokens": NEW_TOKENS}))
            .collect::<Vec<_>>(),
    });
    let mut child = std::process::Command::new(python)
        .arg(workspace_root().join("inference-node/tests/reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run reference.py");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write to reference.py");
    let out = child.wait_with_output().expect("reference.py");
    assert!(out.status.success(), "reference.py failed");
    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("reference.py writes JSON");
    results
        .iter()
        .map(|r| serde_json::from_value(r["token_ids"].clone()).expect("token ids"))
        .collect()
}

fn agreeing_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_int8_model_is_served_and_agrees_with_float32_on_first_tokens() {
    let env = setup_script("setup-inference.sh");
    let python = env["RPAFLOW_PYTHON"].as_str();
    let float32 = env["RPAFLOW_TEST_MODEL"].as_str();
    let dir = tempfile::tempdir().expect("a temp dir");
    let int8 = dir.path().join("gpt2-test-int8");

    let out = std::process::Command::new(python)
        .arg(workspace_root().join("scripts/quantize-int8.py"))
        .args(["--model", float32, "--out"])
        .arg(&int8)
        .output()
        .expect("cannot run quantize-int8.py");
    assert!(
        out.status.success(),
        "quantize-int8.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(int8.join("model_quantized.onnx").is_file());
    assert!(!int8.join("model.onnx").exists(), "Optimum's layout");
    let int8_size = std::fs::metadata(int8.join("model_quantized.onnx")).map(|m| m.len());
    let float32_size = std::fs::metadata(Path::new(float32).join("model.onnx")).map(|m| m.len());
    let (Ok(int8_size), Ok(float32_size)) = (int8_size, float32_size) else {
        panic!("model files");
    };
    assert!(
        int8_size * 3 < float32_size,
        "int8 weights: {int8_size} bytes against {float32_size}"
    );

    let int8_dir = int8.to_str().expect("a UTF-8 path");
    let (fp32_node, int8_node) = tokio::join!(
        InferenceNode::start(NODE_ARGS, LOG),
        InferenceNode::start_with_model(int8_dir, NODE_ARGS, LOG),
    );
    let log = int8_node.log();
    assert!(
        log.contains("model_quantized.onnx") && log.contains("int8_matmuls=13"),
        "the node says it loaded the int8 file, 13 int8 matrix products (2 layers x 6 + LM head):\n{log}"
    );
    assert!(
        log.contains("logits of the last position only"),
        "the graph edit recognises the int8 LM head:\n{log}"
    );
    assert!(
        log.contains("keys_untransposed=2"),
        "the attention scores of both layers no longer transpose the key cache:\n{log}"
    );
    let (mut fp32, mut q) = (client(&fp32_node).await, client(&int8_node).await);
    let info = q
        .model_info(pb::ModelInfoRequest {})
        .await
        .expect("model info")
        .into_inner();
    assert!(info.model_dir.ends_with("gpt2-test-int8"), "{info:?}");
    assert_eq!((info.layers, info.kv_dtype.as_str()), (2, "float32"));

    let prompts: Vec<String> =
        std::fs::read_to_string(workspace_root().join("scripts/int8-quality/prompts.txt"))
            .expect("the prompt set")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(PROMPTS)
            .map(str::to_owned)
            .collect();
    let mut alone = Vec::new();
    let mut prefixes = Vec::new();
    for prompt in &prompts {
        let a = greedy(&mut fp32, prompt).await;
        let b = greedy(&mut q, prompt).await;
        prefixes.push(agreeing_prefix(&a, &b));
        alone.push(b);
    }

    // The node runs the quantized file as onnxruntime does, token for token.
    let expected = reference(python, &int8, &prompts);
    for ((prompt, got), want) in prompts.iter().zip(&alone).zip(&expected) {
        assert_eq!(got, want, "int8 node against reference.py: {prompt:?}");
    }

    let first = prefixes.iter().filter(|&&p| p >= 1).count();
    let full = prefixes
        .iter()
        .filter(|&&p| p == NEW_TOKENS as usize)
        .count();
    let mean = prefixes.iter().sum::<usize>() as f64 / prefixes.len() as f64;
    eprintln!(
        "int8 against float32, {} prompts x {NEW_TOKENS} greedy tokens: first token {first}, \
         all tokens {full}, mean agreeing prefix {mean:.1}, per prompt {prefixes:?}",
        prompts.len()
    );
    assert!(
        first * 4 >= prompts.len() * 3,
        "the first greedy token agrees on {first} of {} prompts: {prefixes:?}",
        prompts.len()
    );
    assert!(
        full >= 1,
        "no prompt agrees on all {NEW_TOKENS} tokens: {prefixes:?}"
    );

    // All at once: batched, every request still generates. Dynamic quantization scales each
    // activation tensor by its largest value over the whole batch, so a row's output may depend
    // on the others (float32 output does not): counted, not asserted.
    let calls: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let (mut q, prompt) = (q.clone(), prompt.clone());
            tokio::spawn(async move { greedy(&mut q, &prompt).await })
        })
        .collect();
    let mut same = 0;
    for (call, want) in calls.into_iter().zip(&alone) {
        let got = call.await.expect("a request task");
        same += usize::from(&got == want);
    }
    eprintln!(
        "int8 batched ({} at once) against alone: {same} identical",
        prompts.len()
    );
}
