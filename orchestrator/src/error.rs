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
    // Flow names are full names ([`rpaflow_core::namespace`]); a caller sees its own names.
    #[error(
        "flow `{}` has no version {version}",
        rpaflow_core::namespace::local(name)
    )]
    FlowVersionNotFound { name: String, version: u32 },
    #[error("no flow named `{}`", rpaflow_core::namespace::local(.0))]
    FlowNotFound(String),
    #[error("no run `{0}`")]
    RunNotFound(String),
    #[error(
        "flow `{}` has no schedule trigger `{trigger}`",
        rpaflow_core::namespace::local(flow)
    )]
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
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
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

/// Diagnostics a status message lists; ValidateFlow answers with all of them.
const MAX_STATUS_DIAGNOSTICS: usize = 20;
/// The longest status message, in bytes. It travels percent-encoded in the `grpc-message`
/// trailer, and gRPC clients refuse metadata over 8 KiB (grpc-core's default) with
/// RESOURCE_EXHAUSTED, hiding the answer; even fully encoded (3 bytes a byte) this fits.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 2_048;

/// The message of `err` as a status carries it: at most [`MAX_STATUS_DIAGNOSTICS`]
/// diagnostics and [`MAX_STATUS_MESSAGE_BYTES`] bytes, saying what was left out.
fn status_message(err: &Error) -> String {
    let Error::InvalidFlow(diags) = err else {
        return truncate(err.to_string(), MAX_STATUS_MESSAGE_BYTES);
    };
    // Room for the last line, which says how many were left out.
    let budget = MAX_STATUS_MESSAGE_BYTES - 100;
    let mut message = String::from("invalid flow:");
    let mut listed = 0;
    for d in diags.0.iter().take(MAX_STATUS_DIAGNOSTICS) {
        let line = truncate(d.to_string(), budget / 4);
        if message.len() + 1 + line.len() > budget {
            break;
        }
        message.push('\n');
        message.push_str(&line);
        listed += 1;
    }
    if listed < diags.0.len() {
        message.push_str(&format!(
            "\n... and {} more problems (ValidateFlow lists them all)",
            diags.0.len() - listed
        ));
    }
    message
}

/// `message` cut to at most `max` bytes on a character boundary, saying so.
fn truncate(mut message: String, max: usize) -> String {
    const CUT: &str = " ... (message cut)";
    if message.len() <= max {
        return message;
    }
    let mut end = max - CUT.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(CUT);
    message
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let message = status_message(&err);
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
            Error::Rejected {
                rejection: Rejection::NotAnApprover { .. },
                ..
            } => tonic::Status::permission_denied(message),
            Error::Rejected { .. } | Error::FailedPrecondition(_) => {
                tonic::Status::failed_precondition(message)
            }
            Error::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            Error::AlreadyExists(_) => tonic::Status::already_exists(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::NotRunning(_) | Error::Bus(_) => tonic::Status::unavailable(message),
            Error::Open { .. } | Error::Storage { .. } | Error::Internal(_) => {
                tonic::Status::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rpaflow_core::flow::{Diagnostic, Diagnostics};

    use super::*;

    #[test]
    fn thousands_of_diagnostics_make_a_short_invalid_argument() {
        let diags = (0..5_000)
            .map(|i| Diagnostic {
                file: "big.yaml".into(),
                line: i + 1,
                column: 3,
                message: format!(
                    "step `s{i}` needs unknown step `ghost-{i}` ({})",
                    "é".repeat(40)
                ),
            })
            .collect();
        let status = tonic::Status::from(Error::InvalidFlow(Diagnostics(diags)));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let m = status.message();
        assert!(m.len() <= MAX_STATUS_MESSAGE_BYTES, "{} bytes", m.len());
        assert!(
            m.starts_with("invalid flow:\nbig.yaml:1:3: step `s0`"),
            "{m}"
        );
        assert!(
            m.ends_with("more problems (ValidateFlow lists them all)"),
            "{m}"
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let cut = truncate("ü".repeat(5_000), 100);
        assert!(cut.len() <= 100 && cut.ends_with("(message cut)"), "{cut}");
        assert_eq!(truncate("short".into(), 100), "short");
    }
}
