//! The command-line face of the inference node, for the `rpaflow` binary to mount:
//! `rpaflow inference` ([`InferenceArgs`], [`serve`]), `rpaflow generate` ([`GenerateArgs`],
//! [`generate`]) and `rpaflow bench-inference` ([`BenchInferenceArgs`], [`bench_inference`]).

use std::{future::Future, io::Write, path::PathBuf};

use futures::StreamExt;
use rpaflow_proto::v1 as pb;
use tonic::transport::Channel;

use crate::{
    config::InferenceConfig,
    engine::EngineConfig,
    error::{Error, Result},
    model::Device,
    server,
};

fn parse_device(s: &str) -> std::result::Result<Device, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// Serve a GPT-2 model over gRPC. Every flag is also a setting of `[inference]` (in the file
/// `--config` names, or `RPAFLOW_INFERENCE__<NAME>`); a flag given wins.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InferenceArgs {
    /// The model directory: model.onnx (Optimum's text-generation-with-past export) or
    /// model_quantized.onnx (its int8 quantization), config.json, tokenizer.json. Required (here or
    /// in the configuration).
    #[arg(long, env = "RPAFLOW_INFERENCE_MODEL")]
    pub model: Option<PathBuf>,
    /// `cpu` (the default) or `cuda:N`. Without a usable CUDA provider the node says so and runs
    /// on the CPU.
    #[arg(long, value_parser = parse_device)]
    pub device: Option<Device>,
    /// The address to serve on (default 127.0.0.1:50061); port 0 picks a free port (printed
    /// once bound).
    #[arg(long)]
    pub listen: Option<String>,
    /// Sequences decoded together at most (default 64).
    #[arg(long)]
    pub max_batch_size: Option<usize>,
    /// Prompt plus max new tokens of the running sequences, added up, at most (default 16384).
    #[arg(long)]
    pub max_total_tokens: Option<usize>,
    /// Requests waiting at most; more are refused with RESOURCE_EXHAUSTED (default 256).
    #[arg(long)]
    pub max_queue: Option<usize>,
    /// Tokens (padding included) in one prefill pass at most (default 256).
    #[arg(long)]
    pub max_prefill_tokens: Option<usize>,
    /// The ONNX Runtime library (libonnxruntime.so), e.g. from the PyPI wheel onnxruntime.
    #[arg(long = "onnxruntime", env = "ORT_DYLIB_PATH")]
    pub onnxruntime: Option<PathBuf>,
    /// ONNX Runtime threads (0, the default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Whether ONNX Runtime's threads spin between operators rather than sleep (default true;
    /// false where the node shares its cores).
    #[arg(long, value_name = "BOOL")]
    pub spinning: Option<bool>,
}

impl InferenceArgs {
    /// The flags given, as `[inference]` settings: the last layer of the configuration.
    pub fn overrides(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        let mut set = |key: &str, value: Option<serde_json::Value>| {
            if let Some(value) = value {
                map.insert(key.to_owned(), value);
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string().into());
        set("model", path(&self.model));
        set("device", self.device.map(|d| d.to_string().into()));
        set("listen", self.listen.clone().map(Into::into));
        set("max_batch_size", self.max_batch_size.map(Into::into));
        set("max_total_tokens", self.max_total_tokens.map(Into::into));
        set("max_queue", self.max_queue.map(Into::into));
        set(
            "max_prefill_tokens",
            self.max_prefill_tokens.map(Into::into),
        );
        set("onnxruntime", path(&self.onnxruntime));
        set("threads", self.threads.map(Into::into));
        set("spinning", self.spinning.map(Into::into));
        map
    }

    /// `base` with the flags given set over it (for callers without a layered configuration).
    pub fn apply(&self, base: &InferenceConfig) -> Result<InferenceConfig> {
        let mut value = serde_json::to_value(base).map_err(|e| Error::Config(e.to_string()))?;
        if let Some(fields) = value.as_object_mut() {
            fields.extend(self.overrides());
        }
        serde_json::from_value(value).map_err(|e| Error::Config(e.to_string()))
    }
}

/// The engine: its ONNX Runtime library, threads and budgets.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 64)]
    pub max_batch_size: usize,
    /// Prompt plus max new tokens of the running sequences, added up, at most.
    #[arg(long, default_value_t = 16384)]
    pub max_total_tokens: usize,
    /// Requests waiting at most; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Tokens (padding included) in one prefill pass at most: padding costs a pass through the
    /// layers per position (and logits per position too, where the graph could not be edited to
    /// compute the last position only).
    #[arg(long, default_value_t = 256)]
    pub max_prefill_tokens: usize,
    /// The ONNX Runtime library (libonnxruntime.so), e.g. from the PyPI wheel onnxruntime.
    #[arg(long = "onnxruntime", env = "ORT_DYLIB_PATH")]
    pub onnxruntime: Option<PathBuf>,
    /// ONNX Runtime threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Whether ONNX Runtime's threads spin between operators rather than sleep.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub spinning: bool,
}

impl EngineArgs {
    pub fn engine_config(&self, model: PathBuf, device: Device) -> EngineConfig {
        EngineConfig {
            model_dir: model,
            onnxruntime: self.onnxruntime.clone(),
            device,
            threads: self.threads,
            spinning: self.spinning,
            max_batch_size: self.max_batch_size,
            max_total_tokens: self.max_total_tokens,
            max_queue: self.max_queue,
            max_prefill_tokens: self.max_prefill_tokens,
        }
    }
}

/// Serves until `shutdown` completes, then drains. Prints `rpaflow inference: serving gRPC on
/// ADDR` once bound.
pub async fn serve(config: &InferenceConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let node = server::start(config.node_config()?).await?;
    serving(&node);
    shutdown.await;
    tracing::info!("inference node shutting down");
    node.shutdown().await
}

/// Prints `rpaflow inference: serving gRPC on ADDR`, the line that says the node takes requests.
pub fn serving(node: &server::RunningNode) {
    println!("rpaflow inference: serving gRPC on {}", node.addr());
    let _ = std::io::stdout().flush();
}

/// Generation parameters as flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ParamArgs {
    #[arg(long)]
    pub max_new_tokens: Option<u32>,
    /// Always take the most likely token.
    #[arg(long)]
    pub greedy: bool,
    /// 0 is greedy. Values are checked by the node, which names what is wrong (so a negative
    /// number reaches it rather than reading as a flag).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<u32>,
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    #[arg(long, allow_negative_numbers = true)]
    pub repetition_penalty: Option<f32>,
    /// Stop when the text contains this (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long)]
    pub seed: Option<u64>,
}

impl From<&ParamArgs> for pb::GenerationParams {
    fn from(a: &ParamArgs) -> Self {
        pb::GenerationParams {
            max_new_tokens: a.max_new_tokens,
            greedy: a.greedy,
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            repetition_penalty: a.repetition_penalty,
            stop: a.stop.clone(),
            seed: a.seed,
        }
    }
}

/// Generate text on an inference node.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// The node's address (`host:port` or a URL).
    #[arg(
        long,
        default_value = "127.0.0.1:50061",
        env = "RPAFLOW_INFERENCE_SERVER"
    )]
    pub server: String,
    /// The prompt.
    pub prompt: String,
    #[command(flatten)]
    pub params: ParamArgs,
    /// Print tokens as they come.
    #[arg(long)]
    pub stream: bool,
}

/// Connects to an inference node; `host:port` means `http://host:port`.
pub async fn connect(server: &str) -> Result<pb::inference_client::InferenceClient<Channel>> {
    let url = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    pb::inference_client::InferenceClient::connect(url.clone())
        .await
        .map_err(|source| Error::Connect {
            server: url,
            source,
        })
}

pub(crate) fn rpc_error(server: &str) -> impl Fn(tonic::Status) -> Error + '_ {
    move |status| Error::Rpc {
        server: server.to_string(),
        status: Box::new(status),
    }
}

fn finish_name(reason: i32) -> &'static str {
    match pb::FinishReason::try_from(reason) {
        Ok(pb::FinishReason::Length) => "length",
        Ok(pb::FinishReason::Eos) => "eos",
        Ok(pb::FinishReason::Stop) => "stop",
        _ => "unspecified",
    }
}

/// Prints the completion of `args.prompt` on standard output (as it comes with `--stream`), and
/// a summary on standard error.
pub async fn generate(args: GenerateArgs) -> Result<()> {
    let mut client = connect(&args.server).await?;
    let request = pb::GenerateRequest {
        prompt: args.prompt.clone(),
        params: Some((&args.params).into()),
    };
    let mut out = std::io::stdout();
    if args.stream {
        let mut chunks = client
            .generate_stream(request)
            .await
            .map_err(rpc_error(&args.server))?
            .into_inner();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(rpc_error(&args.server))?;
            let _ = write!(out, "{}", chunk.text);
            let _ = out.flush();
            if let (Some(reason), Some(s)) = (chunk.finish_reason, chunk.summary) {
                let _ = writeln!(out);
                let ttft = s.timings.map_or(0.0, |t| t.time_to_first_token_ms);
                eprintln!(
                    "finish: {}, prompt tokens: {}, generated tokens: {}, seed: {}, first token: {ttft:.1} ms",
                    finish_name(reason),
                    s.prompt_tokens,
                    s.generated_tokens,
                    s.seed
                );
            }
        }
    } else {
        let r = client
            .generate(request)
            .await
            .map_err(rpc_error(&args.server))?
            .into_inner();
        let _ = writeln!(out, "{}", r.text);
        let total = r.timings.map_or(0.0, |t| t.total_ms);
        eprintln!(
            "finish: {}, prompt tokens: {}, generated tokens: {}, seed: {}, total: {total:.1} ms",
            finish_name(r.finish_reason),
            r.prompt_tokens,
            r.generated_tokens,
            r.seed
        );
    }
    Ok(())
}

/// Measure throughput: C concurrent requests against one at a time.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchInferenceArgs {
    /// A running node to measure.
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    pub server: Option<String>,
    /// Start a node on this model directory in-process and measure it.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// With --model: `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Concurrency levels to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub concurrency: Vec<usize>,
    /// Requests per level (the same requests at every level and one at a time).
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: u32,
    /// Stream every request (one gRPC message per token) and time the first token at the client.
    #[arg(long)]
    pub stream: bool,
}

/// Runs the benchmark and prints a table, then one `BENCH_INFERENCE {json}` line per level.
pub async fn bench_inference(args: BenchInferenceArgs) -> Result<()> {
    crate::bench::run(args).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        node: InferenceArgs,
    }

    #[derive(Debug, Parser)]
    struct Bench {
        #[command(flatten)]
        engine: EngineArgs,
    }

    #[test]
    fn spinning_is_on_unless_turned_off() {
        let serve = Serve::try_parse_from(["node"]).unwrap();
        assert!(!serve.node.overrides().contains_key("spinning"), "not set");
        let serve = Serve::try_parse_from(["node", "--spinning", "false"]).unwrap();
        assert_eq!(serve.node.overrides()["spinning"], false);
        assert!(Serve::try_parse_from(["node", "--spinning", "maybe"]).is_err());
        assert!(Bench::try_parse_from(["bench"]).unwrap().engine.spinning);
        let bench = Bench::try_parse_from(["bench", "--spinning", "false"]).unwrap();
        assert!(!bench.engine.spinning);
    }
}
