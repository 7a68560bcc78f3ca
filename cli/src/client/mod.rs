//! Client commands: `rpaflow flow ...`, `rpaflow run ...`, `rpaflow schedule ...` and the others
//! against a running orchestrator.
//!
//! # Layout
//! - `flows`: `rpaflow flow ...` ([`FlowCommand`]).
//! - `runs`: `rpaflow run ...` ([`RunCommand`]); `watch`: following a run until it ends.
//! - `approvals`: `rpaflow approvals ...` ([`ApprovalsCommand`]).
//! - `secrets`: `rpaflow secret ...` ([`SecretCommand`]).
//! - `schedules`: `rpaflow schedule ...` ([`ScheduleCommand`]).

mod approvals;
mod flows;
mod runs;
mod schedules;
mod secrets;
mod watch;

pub use self::approvals::{ApprovalsCommand, approvals};
pub use self::flows::{FlowCommand, flow};
pub use self::runs::{RunCommand, run};
pub use self::schedules::{ScheduleCommand, schedule};
pub use self::secrets::{SecretCommand, secret};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use rpaflow_proto::v1 as pb;
use rpaflow_proto::v1::flow_service_client::FlowServiceClient;
use tonic::transport::Channel;

use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// The orchestrator's gRPC address.
    #[arg(
        long,
        global = true,
        env = "RPAFLOW_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Human-readable text or JSON.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

async fn connect(server: &str) -> anyhow::Result<FlowServiceClient<Channel>> {
    let uri = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    FlowServiceClient::connect(uri.clone())
        .await
        .with_context(|| {
            format!(
                "cannot reach the orchestrator at {uri} (is `rpaflow dev` running? set --server)"
            )
        })
}

/// A gRPC error as a person should read it.
fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

fn print_run(run: &pb::Run, format: OutputFormat) {
    match format {
        OutputFormat::Text => println!("{}", output::run_text(run)),
        OutputFormat::Json => println!("{}", output::run_json(run)),
    }
}
