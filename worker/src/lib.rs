//! The rpaflow worker: a stateless step executor. It pulls tasks from the step bus, runs each one
//! with the executor its `kind` names, and publishes one result per task before acknowledging it.
//!
//! Everything a step needs arrives in its task, so workers can be added, removed and restarted
//! freely; deliveries are at least once, and executors with side effects pass the task's
//! idempotency key on (see [`TaskContext::idempotency_key`]).
//!
//! # Layout
//! - [`worker`]: the [`Worker`] component: the pull loop, bounded concurrency, timeouts,
//!   cancellation, payload limits and graceful shutdown.
//! - [`executor`]: the [`Executor`] trait, the [`TaskContext`] an executor runs in, [`StepError`]
//!   and the [`Registry`] of executors by kind (and by namespace, for an egress policy of its own).
//! - [`executors`]: the built-in executors (`http`, `transform`, `sleep`, `log`, `echo`) and the
//!   [`executors::Input`] helper for reading step inputs with precise error messages.
//! - [`egress`]: the egress policies of steps that reach the network (`worker.egress`, and
//!   `worker.egress_namespaces` per namespace) and the resolver, redirect policy and browser
//!   proxy that enforce them.
//! - [`error`]: the crate's [`Error`] type.
//! - [`metrics`]: the worker's Prometheus metrics (tasks, their duration, slots).

pub mod egress;
pub mod error;
pub mod executor;
pub mod executors;
pub mod metrics;
pub mod worker;

mod duration;

pub use error::{Error, Result};
pub use executor::{Executor, Registry, StepError, TaskContext, codes};
pub use worker::{Worker, WorkerConfig, WorkerHandle, WorkerStats, default_worker_id};
