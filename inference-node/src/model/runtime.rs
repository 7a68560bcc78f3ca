//! ONNX Runtime itself: the library loaded once per process from `ORT_DYLIB_PATH`, and sessions
//! placed on the CPU or on a CUDA device.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use ort::{
    environment::Environment,
    ep::ExecutionProvider,
    session::{Session, builder::GraphOptimizationLevel},
};
use tracing::{info, warn};

use super::{graph, spec::Device};
use crate::error::{Error, Result};

static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// The process-wide ONNX Runtime environment, loading the library the first time: `library`, or
/// else the one named by `ORT_DYLIB_PATH`. A process loads one library; later paths are ignored.
pub fn environment(library: Option<&Path>) -> Result<Environment> {
    let mut slot = ENVIRONMENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = slot.as_ref() {
        return Ok(env.clone());
    }
    let path = library
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .ok_or(Error::RuntimeNotConfigured)?;
    if !path.is_file() {
        return Err(Error::RuntimeLoad {
            path,
            reason: "no such file".into(),
        });
    }
    let builder = ort::init_from(&path).map_err(|e| Error::RuntimeLoad {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let env = builder
        .with_name("rpaflow-inference")
        .build()
        .map_err(Error::ort("create the environment"))?;
    info!(library = %path.display(), "onnx runtime loaded");
    *slot = Some(env.clone());
    Ok(env)
}

/// Whether the ONNX Runtime library (`library`, or `ORT_DYLIB_PATH`) has a usable CUDA execution
/// provider: where `--device cuda:N` really runs on the GPU.
pub fn cuda_available(library: Option<&Path>) -> Result<bool> {
    environment(library)?;
    Ok(ort::ep::CUDA::is_available().unwrap_or(false))
}

/// ONNX Runtime's intra-op thread pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    /// Threads (0: one per core).
    pub intra_op: usize,
    /// Whether the pool's threads spin for a while after their part of an operator, waiting for
    /// the next, instead of sleeping at once.
    pub spinning: bool,
}

/// Opens the model file `model` on `device`, falling back to the CPU (and saying so) when CUDA cannot be
/// used. Returns the session and the device it really runs on.
pub fn open_session(
    model: &Path,
    library: Option<&Path>,
    device: Device,
    threads: Threads,
) -> Result<(Session, Device)> {
    let env = environment(library)?;
    let mut builder = Session::builder(&env)
        .map_err(Error::ort("create a session builder"))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| Error::ort("set the optimization level")(e.into()))?;
    // A forward pass runs hundreds of operators, each split over the pool: threads that sleep
    // between two of them are woken hundreds of times a step. Spinning was measured faster on the
    // 2-core machine, batched and one at a time (docs/benchmarks.md, int8); it costs CPU time
    // between steps, which `spinning = false` gives back to whatever shares the cores.
    builder = builder
        .with_intra_op_spinning(threads.spinning)
        .map_err(|e| Error::ort("set spinning")(e.into()))?;
    if threads.intra_op > 0 {
        builder = builder
            .with_intra_threads(threads.intra_op)
            .map_err(|e| Error::ort("set the thread count")(e.into()))?;
    }
    let device = match device {
        Device::Cpu => {
            info!("running on CPU (the CPU execution provider; pass --device cuda:N for a GPU)");
            Device::Cpu
        }
        Device::Cuda(id) => {
            let available = ort::ep::CUDA::is_available().unwrap_or(false);
            let cuda = ort::ep::CUDA::default()
                .with_device_id(id)
                .build()
                .error_on_failure();
            if !available {
                warn!(
                    device = %device,
                    "this ONNX Runtime library has no CUDA execution provider: running on CPU instead"
                );
                Device::Cpu
            } else {
                match builder.with_execution_providers([cuda]) {
                    Ok(with_cuda) => {
                        builder = with_cuda;
                        info!(device = %device, "running on the CUDA execution provider");
                        device
                    }
                    Err(e) => {
                        warn!(device = %device, error = %e, "cannot use CUDA: running on CPU instead");
                        builder = e.recover();
                        Device::Cpu
                    }
                }
            }
        }
    };
    let bytes = std::fs::read(model).map_err(|source| Error::Io {
        path: model.to_path_buf(),
        source,
    })?;
    // The decoded model shares its weights with this buffer, freed when `edit` returns.
    let edited = graph::edit(bytes.into());
    let session = match edited {
        Ok((edited, edits)) => {
            match &edits.last_position {
                Ok(()) => info!(
                    copies_dropped = edits.copies_dropped,
                    int8_matmuls = edits.int8_matmuls,
                    keys_untransposed = edits.keys_untransposed,
                    "graph edited: logits of the last position only"
                ),
                Err(reason) => info!(
                    %reason,
                    copies_dropped = edits.copies_dropped,
                    int8_matmuls = edits.int8_matmuls,
                    keys_untransposed = edits.keys_untransposed,
                    "graph edited, but logits for every position"
                ),
            }
            builder.commit_from_memory(&edited)
        }
        Err(reason) => {
            info!(%reason, "model left as it is: logits for every position");
            builder.commit_from_file(model)
        }
    }
    .map_err(Error::ort("load the model"))?;
    Ok((session, device))
}
