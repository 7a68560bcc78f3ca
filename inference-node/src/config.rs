//! [`InferenceConfig`]: the `[inference]` section of `rpaflow inference`'s configuration, layered
//! by the binary like every service's (defaults, a TOML file, `RPAFLOW_INFERENCE__*` variables,
//! then flags; `--print-config` shows the result).

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    engine::EngineConfig,
    error::{Error, Result},
    model::Device,
    server::NodeConfig,
};

/// How a node serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// The model directory: `model.onnx` (Optimum's text-generation-with-past export) or
    /// `model_quantized.onnx` (its int8 quantization, `scripts/quantize-int8.sh`), `config.json`,
    /// `tokenizer.json`. Required. Its name is the model's name for `llm` steps.
    pub model: Option<PathBuf>,
    /// `cpu` or `cuda:N`. Without a usable CUDA provider the node says so and runs on the CPU.
    #[serde(serialize_with = "device_out", deserialize_with = "device_in")]
    pub device: Device,
    /// The gRPC address to serve on; port 0 picks a free port (printed once bound).
    pub listen: String,
    /// The ONNX Runtime library (`libonnxruntime.so`); none: `ORT_DYLIB_PATH`.
    pub onnxruntime: Option<PathBuf>,
    /// ONNX Runtime threads (0: one per core).
    pub threads: usize,
    /// Whether ONNX Runtime's threads spin between operators rather than sleep: faster, for some
    /// CPU time between steps; `false` where the node shares its cores.
    pub spinning: bool,
    /// Sequences decoded together at most.
    pub max_batch_size: usize,
    /// Prompt plus max new tokens of the running sequences, added up, at most.
    pub max_total_tokens: usize,
    /// Requests waiting at most; more are refused with RESOURCE_EXHAUSTED.
    pub max_queue: usize,
    /// Tokens (padding included) in one prefill pass at most.
    pub max_prefill_tokens: usize,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            model: None,
            device: Device::Cpu,
            listen: "127.0.0.1:50061".into(),
            onnxruntime: None,
            threads: 0,
            spinning: true,
            max_batch_size: 64,
            max_total_tokens: 16384,
            max_queue: 256,
            max_prefill_tokens: 256,
        }
    }
}

fn device_out<S: Serializer>(
    device: &Device,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(&device.to_string())
}

fn device_in<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Device, D::Error> {
    String::deserialize(deserializer)?
        .trim()
        .parse()
        .map_err(serde::de::Error::custom)
}

impl InferenceConfig {
    /// Checks the values before anything starts.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: &str| Err(Error::Config(format!("inference.{message}")));
        if self.model.as_ref().is_none_or(|m| m.as_os_str().is_empty()) {
            return fail(
                "model is required: --model DIR, RPAFLOW_INFERENCE__MODEL, or `model` in [inference]",
            );
        }
        if self.listen.trim().is_empty() {
            return fail("listen must not be empty");
        }
        for (name, value) in [
            ("max_batch_size", self.max_batch_size),
            ("max_total_tokens", self.max_total_tokens),
            ("max_queue", self.max_queue),
            ("max_prefill_tokens", self.max_prefill_tokens),
        ] {
            if value == 0 {
                return fail(&format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }

    /// What [`crate::start`] takes.
    pub fn node_config(&self) -> Result<NodeConfig> {
        self.validate()?;
        Ok(NodeConfig {
            engine: EngineConfig {
                model_dir: self.model.clone().unwrap_or_default(),
                onnxruntime: self.onnxruntime.clone(),
                device: self.device,
                threads: self.threads,
                spinning: self.spinning,
                max_batch_size: self.max_batch_size,
                max_total_tokens: self.max_total_tokens,
                max_queue: self.max_queue,
                max_prefill_tokens: self.max_prefill_tokens,
            },
            listen: self.listen.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_reads_and_writes_as_text_and_the_model_is_required() {
        let config: InferenceConfig =
            serde_json::from_str(r#"{"model": "/m/gpt2", "device": "cuda:1", "max_queue": 8}"#)
                .unwrap();
        assert_eq!(config.device, Device::Cuda(1));
        assert_eq!((config.max_queue, config.max_batch_size), (8, 64));
        let text = serde_json::to_value(&config).unwrap();
        assert_eq!(text["device"], "cuda:1");
        let node = config.node_config().unwrap();
        assert_eq!(node.engine.model_dir, PathBuf::from("/m/gpt2"));
        assert_eq!(node.listen, "127.0.0.1:50061");
        assert!(node.engine.spinning, "spinning by default");
        let quiet: InferenceConfig =
            serde_json::from_str(r#"{"model": "/m/gpt2", "spinning": false}"#).unwrap();
        assert!(!quiet.node_config().unwrap().engine.spinning);

        let err = InferenceConfig::default()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("inference.model is required"), "{err}");
        assert!(serde_json::from_str::<InferenceConfig>(r#"{"device": "gpu"}"#).is_err());
        assert!(serde_json::from_str::<InferenceConfig>(r#"{"max_qeue": 1}"#).is_err());
        let zero = InferenceConfig {
            max_queue: 0,
            ..config
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("max_queue")
        );
    }
}
