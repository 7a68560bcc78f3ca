//! The worker crate's error type.
//!
//! A failing *step* is not an [`Error`]: it is a [`StepError`](crate::StepError) that travels back
//! to the orchestrator in the task result. [`Error`] is for the worker itself: bad configuration or
//! a dependency that cannot be set up.

use std::borrow::Cow;

/// What can stop the worker from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid worker configuration: `{field}` {message}")]
    Config {
        /// The setting, relative to `[worker]`: `concurrency`, `egress_namespaces.team-a`.
        field: Cow<'static, str>,
        message: String,
    },
    /// The HTTP client of the `http` executor could not be built (TLS set-up, for instance).
    #[error("could not build the http client")]
    HttpClient {
        #[source]
        source: reqwest::Error,
    },
}

/// The worker crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
