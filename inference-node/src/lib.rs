//! The rpaflow inference node: GPT-2 text generation on ONNX Runtime with continuous batching,
//! served over gRPC (`rpaflow.v1.Inference`, health and reflection).
//!
//! A node opens a model directory in the Hugging Face Optimum layout (`model.onnx` with past
//! key/values, or the int8 `model_quantized.onnx` of Optimum's ONNX Runtime quantizer;
//! `config.json`, `tokenizer.json`), loads the ONNX Runtime library named by
//! `ORT_DYLIB_PATH`, and runs one engine thread that owns the session: new requests are prefilled
//! and join the running decode batch between steps, finished and cancelled ones leave it.
//!
//! # Layout
//! - [`cli`]: the `rpaflow inference`, `rpaflow generate` and `rpaflow bench-inference` commands.
//! - [`config`]: [`InferenceConfig`], the node's settings (`[inference]`).
//! - [`server`]: [`start`] a node in-process; the gRPC server.
//! - [`service`]: the gRPC service over the engine.
//! - [`engine`]: the engine thread, queue and budgets; continuous batching, sampling, text.
//! - [`model`]: the model directory on ONNX Runtime; the key/value cache.
//! - [`params`]: generation parameters and their validation.
//! - [`bench`]: the throughput benchmark.
//! - [`error`]: [`Error`] and its gRPC status codes.

pub mod bench;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod model;
pub mod params;
pub mod server;
pub mod service;

pub use self::{
    config::InferenceConfig,
    engine::{EngineConfig, EngineHandle},
    error::{Error, Result},
    model::Device,
    params::{GenerationParams, Sampling},
    server::{NodeConfig, RunningNode, start},
};
