//! What a model directory says about the model: `config.json`, and the devices it can run on.

use std::{fmt, path::Path, str::FromStr};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// The CUDA execution provider on this GPU.
    Cuda(i32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(id) => write!(f, "cuda:{id}"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|id| id.parse::<i32>().ok())
                .filter(|id| *id >= 0)
                .map(Device::Cuda)
                .ok_or_else(|| Error::Config(format!("unknown device `{s}` (cpu or cuda:N)"))),
        }
    }
}

/// The element type of the past key/value tensors (and of the logits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    F16,
}

impl KvDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            KvDtype::F32 => "float32",
            KvDtype::F16 => "float16",
        }
    }
}

/// The GPT-2 configuration as `config.json` holds it (Hugging Face names).
#[derive(Debug, Clone, Deserialize)]
pub struct GptConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub vocab_size: usize,
    pub n_positions: usize,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

impl GptConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let config: GptConfig = serde_json::from_str(&text).map_err(|e| Error::Model {
            dir: dir.to_path_buf(),
            reason: format!("config.json: {e}"),
        })?;
        if config.n_head == 0 || !config.n_embd.is_multiple_of(config.n_head) {
            return Err(Error::Model {
                dir: dir.to_path_buf(),
                reason: format!(
                    "config.json: n_embd {} is not a multiple of n_head {}",
                    config.n_embd, config.n_head
                ),
            });
        }
        Ok(config)
    }

    /// The end-of-sequence token: `eos_token_id` (a number, or the first of a list), else GPT-2's.
    pub fn eos(&self) -> u32 {
        const GPT2_EOS: u32 = 50256;
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map_or(GPT2_EOS, |n| n as u32),
            Some(serde_json::Value::Array(ids)) => ids
                .first()
                .and_then(|v| v.as_u64())
                .map_or(GPT2_EOS, |n| n as u32),
            _ => GPT2_EOS,
        }
    }
}

/// Everything the engine needs to know about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub dir: std::path::PathBuf,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub eos: u32,
    pub kv_dtype: KvDtype,
    /// Where the model actually runs (CPU when CUDA was asked for but could not be used).
    pub device: Device,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse::<Device>().ok(), Some(Device::Cpu));
        assert_eq!("cuda:1".parse::<Device>().ok(), Some(Device::Cuda(1)));
        assert_eq!(Device::Cuda(0).to_string(), "cuda:0");
        assert!("gpu".parse::<Device>().is_err());
        assert!("cuda:-1".parse::<Device>().is_err());
    }

    #[test]
    fn eos_comes_from_config() {
        let parse = |s: &str| serde_json::from_str::<GptConfig>(s).map(|c| c.eos()).ok();
        let base = r#""n_layer":1,"n_head":1,"n_embd":4,"vocab_size":10,"n_positions":8"#;
        assert_eq!(parse(&format!("{{{base},\"eos_token_id\":7}}")), Some(7));
        assert_eq!(
            parse(&format!("{{{base},\"eos_token_id\":[3,4]}}")),
            Some(3)
        );
        assert_eq!(parse(&format!("{{{base}}}")), Some(50256));
    }
}
