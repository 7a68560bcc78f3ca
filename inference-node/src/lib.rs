//! The rpaflow inference node: GPT-2 text generation on ONNX Runtime with continuous batching.
//!
//! Not built yet: see the README, "What is not built yet".
