//! A GPT-2 model directory in the Hugging Face Optimum layout, opened on ONNX Runtime: the session
//! (its graph edited for what the engine reads, see `graph`), its tensors bound by name, and the
//! tokenizer.

mod graph;
mod kv;
mod runtime;
mod spec;

use std::{path::Path, sync::Arc};

use half::f16;
use ort::{
    memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType},
    session::{IoBinding, Session},
    value::{DynTensor, DynTensorValueType, Tensor, TensorElementType},
};
use tokenizers::Tokenizer;
use tracing::{info, warn};

pub use self::{
    kv::{KvCache, KvLayout, Pick},
    runtime::{Threads, cuda_available, environment},
    spec::{Device, GptConfig, KvDtype, ModelSpec},
};
use crate::error::{Error, Result};

/// The inputs of one forward pass over a batch of `batch` rows of `seq` new tokens each.
#[derive(Debug)]
pub struct StepInput {
    pub batch: usize,
    pub seq: usize,
    /// `[batch, seq]`.
    pub input_ids: Vec<i64>,
    /// `[batch, past + seq]`.
    pub attention_mask: Vec<i64>,
    /// `[batch, seq]`.
    pub position_ids: Vec<i64>,
}

/// The logits of one forward pass, `[batch, seq, vocab]`, in the model's float type: `seq` is 1
/// when the graph computes the last position only (see `graph`), else the pass's `seq`.
#[derive(Debug)]
pub struct Logits {
    value: DynTensor,
    seq: usize,
    vocab: usize,
    dtype: KvDtype,
}

impl Logits {
    /// The logits of every row's last position, read out of the tensor once per step.
    pub fn last_positions(&self) -> Result<LastPositions<'_>> {
        let data = match self.dtype {
            KvDtype::F32 => LogitsData::F32(
                self.value
                    .try_extract_tensor::<f32>()
                    .map_err(Error::ort("read the logits"))?
                    .1,
            ),
            KvDtype::F16 => LogitsData::F16(
                self.value
                    .try_extract_tensor::<f16>()
                    .map_err(Error::ort("read the logits"))?
                    .1,
            ),
        };
        Ok(LastPositions {
            data,
            seq: self.seq,
            vocab: self.vocab,
        })
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }
}

/// A view of [`Logits`]: the last position of each row.
#[derive(Debug)]
pub struct LastPositions<'a> {
    data: LogitsData<'a>,
    seq: usize,
    vocab: usize,
}

#[derive(Debug)]
enum LogitsData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl LastPositions<'_> {
    /// The logits of the last position of row `row`, as `f32` (converted into `scratch` when the
    /// model computes in float16).
    pub fn row<'s>(&'s self, row: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        let start = (row * self.seq + self.seq - 1) * self.vocab;
        match self.data {
            LogitsData::F32(data) => &data[start..start + self.vocab],
            LogitsData::F16(data) => {
                scratch.clear();
                scratch.extend(data[start..start + self.vocab].iter().map(|x| x.to_f32()));
                scratch
            }
        }
    }
}

/// The model files a directory may hold, in order of preference: Optimum's export writes
/// `model.onnx`, its ONNX Runtime quantizer (and `scripts/quantize-int8.py`) `model_quantized.onnx`.
const MODEL_FILES: [&str; 2] = ["model.onnx", "model_quantized.onnx"];

/// The model file of `dir`: the first of [`MODEL_FILES`] that it holds. A directory holding both
/// serves `model.onnx`, and the log says so: serve an int8 model from a directory of its own.
fn model_file(dir: &Path) -> Option<std::path::PathBuf> {
    let mut found = MODEL_FILES
        .iter()
        .map(|name| dir.join(name))
        .filter(|p| p.is_file());
    let first = found.next()?;
    if let Some(other) = found.next() {
        warn!(
            dir = %dir.display(),
            serving = %first.display(),
            ignored = %other.display(),
            "the model directory holds more than one model file"
        );
    }
    Some(first)
}

/// An opened model. Owned by the engine thread; every ONNX Runtime call happens there.
pub struct Model {
    session: Session,
    binding: IoBinding,
    tokenizer: Arc<Tokenizer>,
    spec: ModelSpec,
    has_position_ids: bool,
    past_names: Vec<String>,
    present_names: Vec<String>,
    kv_memory: MemoryInfo<'static>,
    host_memory: MemoryInfo<'static>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("spec", &self.spec).finish()
    }
}

impl Model {
    /// Opens the model directory `dir` (`model.onnx` or `model_quantized.onnx`, `config.json`,
    /// `tokenizer.json`).
    /// `library` is the ONNX Runtime library (default: `ORT_DYLIB_PATH`).
    pub fn load(
        dir: &Path,
        library: Option<&Path>,
        device: Device,
        threads: Threads,
    ) -> Result<Model> {
        let bad = |reason: String| Error::Model {
            dir: dir.to_path_buf(),
            reason,
        };
        let config = GptConfig::load(dir)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| Error::Tokenizer {
            path: tokenizer_path.clone(),
            reason: e.to_string(),
        })?;
        let model_path =
            model_file(dir).ok_or_else(|| bad(format!("no {}", MODEL_FILES.join(" or "))))?;
        let (session, device) = runtime::open_session(&model_path, library, device, threads)?;
        let file = model_path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());

        let input = |name: &str| session.inputs().iter().find(|o| o.name() == name);
        let output = |name: &str| session.outputs().iter().any(|o| o.name() == name);
        for name in ["input_ids", "attention_mask"] {
            if input(name).is_none() {
                return Err(bad(format!("{file} has no input `{name}`")));
            }
        }
        if !output("logits") {
            return Err(bad(format!("{file} has no output `logits`")));
        }
        let heads = config.n_head;
        let head_dim = config.n_embd / config.n_head;
        let mut past_names = Vec::new();
        let mut present_names = Vec::new();
        let mut kv_dtype = None;
        for layer in 0..config.n_layer {
            for kind in ["key", "value"] {
                let past = format!("past_key_values.{layer}.{kind}");
                let present = format!("present.{layer}.{kind}");
                let outlet = input(&past).ok_or_else(|| {
                    bad(format!(
                        "{file} has no input `{past}` (n_layer is {})",
                        config.n_layer
                    ))
                })?;
                if !output(&present) {
                    return Err(bad(format!("{file} has no output `{present}`")));
                }
                let dtype = match outlet.dtype().tensor_type() {
                    Some(TensorElementType::Float32) => KvDtype::F32,
                    Some(TensorElementType::Float16) => KvDtype::F16,
                    other => {
                        return Err(bad(format!(
                            "`{past}` has element type {other:?}, not float32 or float16"
                        )));
                    }
                };
                if *kv_dtype.get_or_insert(dtype) != dtype {
                    return Err(bad("past key/values mix float32 and float16".into()));
                }
                if let Some(shape) = outlet.dtype().tensor_shape() {
                    let dims: &[i64] = shape;
                    let fits = dims.len() == 4
                        && (dims[1] < 0 || dims[1] as usize == heads)
                        && (dims[3] < 0 || dims[3] as usize == head_dim);
                    if !fits {
                        return Err(bad(format!(
                            "`{past}` has shape {dims:?}, config.json says [batch, {heads}, past, {head_dim}]"
                        )));
                    }
                }
                past_names.push(past);
                present_names.push(present);
            }
        }
        let kv_dtype = kv_dtype.ok_or_else(|| bad("config.json says n_layer 0".into()))?;
        let has_position_ids = input("position_ids").is_some();
        let host_memory = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(Error::ort("describe host memory"))?;
        let kv_memory = match device {
            Device::Cpu => host_memory.clone(),
            Device::Cuda(id) => MemoryInfo::new(
                AllocationDevice::CUDA,
                id,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(Error::ort("describe device memory"))?,
        };
        let binding = session
            .create_binding()
            .map_err(Error::ort("create an io binding"))?;
        let spec = ModelSpec {
            dir: dir.to_path_buf(),
            layers: config.n_layer,
            heads,
            head_dim,
            hidden: config.n_embd,
            vocab: config.vocab_size,
            max_positions: config.n_positions,
            eos: config.eos(),
            kv_dtype,
            device,
        };
        info!(
            dir = %dir.display(),
            %file,
            layers = spec.layers,
            heads = spec.heads,
            hidden = spec.hidden,
            kv_dtype = kv_dtype.as_str(),
            device = %device,
            "model loaded"
        );
        Ok(Model {
            session,
            binding,
            tokenizer: Arc::new(tokenizer),
            spec,
            has_position_ids,
            past_names,
            present_names,
            kv_memory,
            host_memory,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn tokenizer(&self) -> Arc<Tokenizer> {
        Arc::clone(&self.tokenizer)
    }

    pub fn kv_layout(&self) -> KvLayout {
        KvLayout {
            layers: self.spec.layers,
            heads: self.spec.heads,
            head_dim: self.spec.head_dim,
            dtype: self.spec.kv_dtype,
            device: self.spec.device,
        }
    }

    /// One forward pass: the new tokens of every row, on top of `past`. Returns the logits and the
    /// cache grown by `seq` positions (kept where the model runs: on the GPU under CUDA).
    pub fn forward(&mut self, input: StepInput, past: &KvCache) -> Result<(Logits, KvCache)> {
        let (b, s) = (input.batch, input.seq);
        debug_assert_eq!(past.batch, b);
        debug_assert_eq!(input.attention_mask.len(), b * (past.len + s));
        let tensor = |shape: [usize; 2], data: Vec<i64>| {
            Tensor::from_array((shape, data)).map_err(Error::ort("create an input tensor"))
        };
        let binding = &mut self.binding;
        binding.clear();
        let bind = Error::ort("bind a tensor");
        binding
            .bind_input("input_ids", &tensor([b, s], input.input_ids)?)
            .map_err(bind)?;
        binding
            .bind_input(
                "attention_mask",
                &tensor([b, past.len + s], input.attention_mask)?,
            )
            .map_err(Error::ort("bind a tensor"))?;
        if self.has_position_ids {
            binding
                .bind_input("position_ids", &tensor([b, s], input.position_ids)?)
                .map_err(Error::ort("bind a tensor"))?;
        }
        for (name, value) in self.past_names.iter().zip(&past.tensors) {
            binding
                .bind_input(name.as_str(), value)
                .map_err(Error::ort("bind a tensor"))?;
        }
        binding
            .bind_output_to_device("logits", &self.host_memory)
            .map_err(Error::ort("bind a tensor"))?;
        for name in &self.present_names {
            binding
                .bind_output_to_device(name.as_str(), &self.kv_memory)
                .map_err(Error::ort("bind a tensor"))?;
        }
        let mut outputs = self
            .session
            .run_binding(&self.binding)
            .map_err(Error::ort("run the model"))?;
        let take =
            |outputs: &mut ort::session::SessionOutputs<'_>, name: &str| -> Result<DynTensor> {
                outputs
                    .remove(name)
                    .ok_or_else(|| Error::Model {
                        dir: self.spec.dir.clone(),
                        reason: format!("the model gave no `{name}`"),
                    })?
                    .downcast::<DynTensorValueType>()
                    .map_err(Error::ort("read an output"))
            };
        let logits = take(&mut outputs, "logits")?;
        // `[batch, 1, vocab]` where the graph was edited to compute the last position only.
        let (seq, vocab) = match logits.shape()[..] {
            [_, seq, vocab] => (seq as usize, vocab as usize),
            _ => {
                return Err(Error::Model {
                    dir: self.spec.dir.clone(),
                    reason: format!("logits of shape {:?}", logits.shape()),
                });
            }
        };
        let mut tensors = Vec::with_capacity(self.present_names.len());
        for name in &self.present_names {
            tensors.push(take(&mut outputs, name)?);
        }
        drop(outputs);
        let logits = Logits {
            value: logits,
            seq,
            vocab,
            dtype: self.spec.kv_dtype,
        };
        let kv = KvCache {
            tensors,
            batch: b,
            len: past.len + s,
        };
        Ok((logits, kv))
    }
}
