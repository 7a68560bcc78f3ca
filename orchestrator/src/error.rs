//! The orchestrator's errors, and the one place they become gRPC statuses.

use crate::state::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open storage at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("storage failed to {op}: {source}")]
    Storage {
        op: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("invalid flow:\n{0}")]
    InvalidFlow(#[from] rpaflow_core::flow::Diagnostics),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("flow `{name}` has no version {version}")]
    FlowVersionNotFound { name: String, version: u32 },
    #[error("no flow named `{0}`")]
    FlowNotFound(String),
    #[error("no run `{0}`")]
    RunNotFound(String),
    #[error("flow `{flow}` has no schedule trigger `{trigger}`")]
    ScheduleNotFound { flow: String, trigger: String },
    #[error("run {run_id}: {rejection}")]
    Rejected {
        run_id: String,
        #[source]
        rejection: Rejection,
    },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0} is not running")]
    NotRunning(&'static str),
    #[error("step bus: {0}")]
    Bus(#[from] rpaflow_core::bus::BusError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::InvalidFlow(_) | Error::InvalidArgument(_) => {
                tonic::Status::invalid_argument(message)
            }
            Error::FlowNotFound(_)
            | Error::FlowVersionNotFound { .. }
            | Error::RunNotFound(_)
            | Error::ScheduleNotFound { .. } => tonic::Status::not_found(message),
            Error::Rejected {
                rejection: Rejection::UnknownStep(_),
                ..
            } => tonic::Status::not_found(message),
            Error::Rejected { .. } | Error::FailedPrecondition(_) => {
                tonic::Status::failed_precondition(message)
            }
            Error::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            Error::NotRunning(_) | Error::Bus(_) => tonic::Status::unavailable(message),
            Error::Open { .. } | Error::Storage { .. } | Error::Internal(_) => {
                tonic::Status::internal(message)
            }
        }
    }
}
