//! The rpaflow orchestrator: the gRPC API, the flow registry, one actor per active run around a
//! pure state machine, durable storage in sled, and dispatch over a [`rpaflow_core::bus::StepBus`].
//!
//! # Layout
//! - [`orchestrator`]: the component ([`Orchestrator`]) and its handle ([`OrchestratorHandle`]).
//! - [`state`]: the run state machine (events, decisions), pure and unit-tested.
//! - `actors`: the actix actors that run it and perform its actions through `effects`, their one
//!   port to storage, the bus and the other runs.
//! - [`store`]: sled storage with grouped flushes.
//! - [`registry`]: flow versions.
//! - [`triggers`]: what else starts runs: schedules, webhooks (`POST /hooks/{namespace}/{flow}`)
//!   and Kafka topics, each through one port ([`triggers::RunStarter`]).
//! - `subflow`: steps that run another flow and wait for it.
//! - `spans`: the spans of a run's trace that the orchestrator records (run, dispatch).
//! - [`api`]: the gRPC service, health and reflection; `convert`: proto conversions.
//! - `console`: the web console's assets (`web/dist`, embedded), served on the gRPC port.
//! - [`tls`]: TLS on the gRPC and webhook listeners, with certificate reload and mTLS.
//! - [`metrics`]: the Prometheus metrics of runs, steps and dispatch.
//! - [`error`]: the crate's error and its mapping to gRPC codes.

mod actors;
pub use actors::Published;
pub mod api;
pub mod auth;
mod console;
mod convert;
mod effects;
pub mod error;
mod evaluation;
pub mod metrics;
pub mod orchestrator;
pub mod registry;
mod spans;
pub mod state;
pub mod store;
mod subflow;
pub mod tls;
pub mod triggers;

pub use convert::{event as event_to_pb, run as run_to_pb};
pub use error::{Error, Result};
pub use orchestrator::{FlowView, Orchestrator, OrchestratorConfig, OrchestratorHandle, StartRun};
