//! The inference node's one error type, and its mapping to gRPC status codes.

use std::path::PathBuf;

/// Everything that can go wrong in the inference node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A generation parameter (or the prompt) is out of range.
    #[error("invalid parameter `{parameter}`: {reason}")]
    InvalidArgument {
        parameter: &'static str,
        reason: String,
    },
    /// The request queue holds as many requests as it may.
    #[error("request queue is full ({capacity} requests waiting)")]
    QueueFull { capacity: usize },
    /// The engine thread has stopped (shut down, or failed).
    #[error("inference engine is not running")]
    NotRunning,
    /// The node began to drain while the request still waited in the queue: it was not started.
    #[error("inference node is shutting down; the request was not started")]
    Drained,
    /// `ORT_DYLIB_PATH` does not name the ONNX Runtime library.
    #[error(
        "ORT_DYLIB_PATH is not set: point it at libonnxruntime.so (scripts/setup-inference.sh prints it)"
    )]
    RuntimeNotConfigured,
    #[error("cannot load the ONNX Runtime library `{path}`: {reason}")]
    RuntimeLoad { path: PathBuf, reason: String },
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The model directory is not a GPT-2 model in the Optimum layout.
    #[error("invalid model in `{dir}`: {reason}")]
    Model { dir: PathBuf, reason: String },
    #[error("cannot load the tokenizer `{path}`: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("tokenizer failed to {operation}: {reason}")]
    Tokenize {
        operation: &'static str,
        reason: String,
    },
    /// An ONNX Runtime call failed.
    #[error("onnx runtime failed to {operation}: {source}")]
    Ort {
        operation: &'static str,
        #[source]
        source: ort::Error,
    },
    /// A generation failed inside the engine.
    #[error("generation failed: {reason}")]
    Generation { reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    /// A call to another inference node failed (client side).
    #[error("rpc to {server} failed: {status}")]
    Rpc {
        server: String,
        status: Box<tonic::Status>,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("grpc transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A client could not connect to an inference node.
    #[error("cannot reach the inference node at {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn ort(operation: &'static str) -> impl FnOnce(ort::Error) -> Error {
        move |source| Error::Ort { operation, source }
    }

    pub(crate) fn invalid(parameter: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            parameter,
            reason: reason.into(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::Rpc { status, .. } => *status,
            Error::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
            Error::QueueFull { .. } => tonic::Status::resource_exhausted(message),
            Error::NotRunning => tonic::Status::unavailable(message),
            // Says so in metadata, so that a client can send the request to another node.
            Error::Drained => {
                let mut status = tonic::Status::unavailable(message);
                status.metadata_mut().insert(
                    rpaflow_proto::NOT_STARTED_METADATA,
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                status
            }
            Error::Tokenize { .. } => tonic::Status::invalid_argument(message),
            Error::RuntimeNotConfigured
            | Error::RuntimeLoad { .. }
            | Error::Io { .. }
            | Error::Model { .. }
            | Error::Tokenizer { .. }
            | Error::Config(_) => tonic::Status::failed_precondition(message),
            Error::Ort { .. }
            | Error::Generation { .. }
            | Error::Reflection(_)
            | Error::Bind { .. }
            | Error::Transport(_) => tonic::Status::internal(message),
            Error::Connect { .. } => tonic::Status::unavailable(message),
        }
    }
}
