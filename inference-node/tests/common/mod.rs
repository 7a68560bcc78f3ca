//! What the inference node's tests share: the ONNX Runtime library and test models (from the
//! environment, or made by `scripts/setup-inference.sh`), nodes started in-process on port 0, and
//! the Python reference.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use rpaflow_inference_node::{Device, EngineConfig, NodeConfig, RunningNode};
use rpaflow_proto::v1 as pb;
use serde::Deserialize;
use tonic::transport::Channel;

pub type Client = pb::inference_client::InferenceClient<Channel>;

/// Where the runtime, the models and the reference's Python are.
#[derive(Debug)]
pub struct Setup {
    pub onnxruntime: PathBuf,
    pub model: PathBuf,
    pub model_fp16: PathBuf,
    pub python: PathBuf,
}

const VARS: [&str; 4] = [
    "ORT_DYLIB_PATH",
    "RPAFLOW_TEST_MODEL",
    "RPAFLOW_TEST_MODEL_FP16",
    "RPAFLOW_PYTHON",
];

/// The test set-up: from the environment when it names everything, else from running
/// `scripts/setup-inference.sh` (cached, idempotent). Fails the test when neither works.
pub fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let mut vars: HashMap<String, String> = VARS
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        if vars.len() < VARS.len() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup-inference.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{} failed ({}); the inference tests need ONNX Runtime and a test model: set {} or fix the script",
                script.display(),
                out.status,
                VARS.join(", ")
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                    vars.insert(k.to_string(), v.to_string());
                }
            }
        }
        let get = |k: &str| -> PathBuf {
            let path = PathBuf::from(vars.get(k).unwrap_or_else(|| panic!("set-up gave no {k}")));
            assert!(path.exists(), "{k}={} does not exist", path.display());
            path
        };
        Setup {
            onnxruntime: get("ORT_DYLIB_PATH"),
            model: get("RPAFLOW_TEST_MODEL"),
            model_fp16: get("RPAFLOW_TEST_MODEL_FP16"),
            python: get("RPAFLOW_PYTHON"),
        }
    })
}

pub fn engine_config(model: &Path, max_batch_size: usize, max_queue: usize) -> EngineConfig {
    EngineConfig {
        model_dir: model.to_path_buf(),
        onnxruntime: Some(setup().onnxruntime.clone()),
        device: Device::Cpu,
        threads: 2,
        spinning: true,
        max_batch_size,
        max_total_tokens: 16384,
        max_queue,
        max_prefill_tokens: 256,
    }
}

/// A node on the float32 test model, on a free port.
pub async fn node(max_batch_size: usize, max_queue: usize) -> RunningNode {
    node_with(engine_config(&setup().model, max_batch_size, max_queue)).await
}

pub async fn node_with(engine: EngineConfig) -> RunningNode {
    let config = NodeConfig {
        engine,
        listen: "127.0.0.1:0".into(),
    };
    match rpaflow_inference_node::start(config).await {
        Ok(node) => node,
        Err(e) => panic!("cannot start the inference node: {e}"),
    }
}

pub async fn client(node: &RunningNode) -> Client {
    match Client::connect(node.url()).await {
        Ok(c) => c,
        Err(e) => panic!("cannot connect to {}: {e}", node.url()),
    }
}

pub fn greedy(max_new_tokens: u32) -> pb::GenerationParams {
    pb::GenerationParams {
        max_new_tokens: Some(max_new_tokens),
        greedy: true,
        ..Default::default()
    }
}

pub fn request(prompt: &str, params: pb::GenerationParams) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: prompt.into(),
        params: Some(params),
    }
}

/// What the Python reference generated for one prompt.
#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    pub prompt_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
}

/// Greedy generation by `tests/reference.py`: a plain onnxruntime loop, one prompt at a time.
pub fn reference(model: &Path, prompts: &[(&str, u32)]) -> Vec<Reference> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference.py");
    let input = serde_json::json!({
        "model": model,
        "prompts": prompts.iter().map(|(p, n)| serde_json::json!({"prompt": p, "max_new_tokens": n})).collect::<Vec<_>>(),
    });
    let mut child = Command::new(&setup().python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the reference {}: {e}", script.display()));
    child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(input.to_string().as_bytes()))
        .transpose()
        .unwrap_or_else(|e| panic!("cannot write to the reference: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("reference failed: {e}"));
    assert!(out.status.success(), "reference failed: {}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("reference output: {e}"))
}

/// Reads the engine's statistics until `done` holds (or fails after 10 s).
pub async fn wait_for_stats(
    client: &mut Client,
    what: &str,
    done: impl Fn(&pb::EngineStats) -> bool,
) -> pb::EngineStats {
    for _ in 0..200 {
        let info = client
            .model_info(pb::ModelInfoRequest {})
            .await
            .unwrap_or_else(|e| panic!("model info: {e}"))
            .into_inner();
        let stats = info.stats.unwrap_or_default();
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
