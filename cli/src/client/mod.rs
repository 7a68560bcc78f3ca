//! Client commands: `rpaflow flow ...`, `rpaflow run ...`, `rpaflow schedule ...` and the others
//! against a running orchestrator.
//!
//! # Layout
//! - `flows`: `rpaflow flow ...` ([`FlowCommand`]).
//! - `runs`: `rpaflow run ...` ([`RunCommand`]); `watch`: following a run until it ends.
//! - `approvals`: `rpaflow approvals ...` ([`ApprovalsCommand`]).
//! - `secrets`: `rpaflow secret ...` ([`SecretCommand`]).
//! - `schedules`: `rpaflow schedule ...` ([`ScheduleCommand`]).
//! - `tls`: `https://` servers, `--ca-cert`, and client certificates.

mod approvals;
mod flows;
mod runs;
mod schedules;
mod secrets;
mod tls;
mod watch;

pub use self::approvals::{ApprovalsCommand, approvals};
pub use self::flows::{FlowCommand, flow};
pub use self::runs::{RunCommand, run};
pub use self::schedules::{ScheduleCommand, schedule};
pub use self::secrets::{SecretCommand, secret};

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
    #[command(flatten)]
    pub tls: tls::TlsOpts,
}

async fn connect(opts: &ClientOpts) -> anyhow::Result<FlowServiceClient<Channel>> {
    let endpoint = tls::endpoint(&opts.server, &opts.tls)?;
    let uri = endpoint.uri().clone();
    let channel = endpoint.connect().await.map_err(|err| {
        let hint = tls::hint(&err)
            .unwrap_or("is `rpaflow dev` running? set --server")
            .to_owned();
        anyhow::Error::new(err).context(format!("cannot reach the orchestrator at {uri} ({hint})"))
    })?;
    Ok(FlowServiceClient::new(channel))
}

/// A gRPC error as a person should read it.
fn status_error(status: tonic::Status) -> anyhow::Error {
    match tls::status_hint(&status) {
        Some(hint) => anyhow::anyhow!("{} ({:?}): {hint}", status.message(), status.code()),
        None => anyhow::anyhow!("{} ({:?})", status.message(), status.code()),
    }
}

fn print_run(run: &pb::Run, format: OutputFormat) {
    match format {
        OutputFormat::Text => println!("{}", output::run_text(run)),
        OutputFormat::Json => println!("{}", output::run_json(run)),
    }
}
