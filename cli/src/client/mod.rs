//! Client commands: `rpaflow flow ...`, `rpaflow run ...`, `rpaflow schedule ...` and the others
//! against a running orchestrator.
//!
//! # Layout
//! - `flows`: `rpaflow flow ...` ([`FlowCommand`]).
//! - `runs`: `rpaflow run ...` ([`RunCommand`]); `watch`: following a run until it ends.
//! - `approvals`: `rpaflow approvals ...` ([`ApprovalsCommand`]).
//! - `secrets`: `rpaflow secret ...` ([`SecretCommand`]).
//! - `tokens`: `rpaflow token ...`, `rpaflow namespace ...` and `rpaflow audit`.
//! - `schedules`: `rpaflow schedule ...` ([`ScheduleCommand`]).
//! - `tls`: `https://` servers, `--ca-cert`, and client certificates.

mod approvals;
mod flows;
mod runs;
mod schedules;
mod secrets;
mod tls;
mod tokens;
mod watch;

pub use self::approvals::{ApprovalsCommand, approvals};
pub use self::flows::{FlowCommand, flow};
pub use self::runs::{RunCommand, run};
pub use self::schedules::{ScheduleCommand, schedule};
pub use self::secrets::{SecretCommand, secret};
pub use self::tokens::{AuditCommand, NamespaceCommand, TokenCommand, audit, namespace, token};

use clap::{Args, ValueEnum};
use rpaflow_proto::v1 as pb;
use rpaflow_proto::v1::auth_service_client::AuthServiceClient;
use rpaflow_proto::v1::flow_service_client::FlowServiceClient;
use tonic::service::interceptor::InterceptedService;
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
    /// The API token to call with (`rpaflow token create`; the first admin token is in the
    /// orchestrator's DATA_DIR/admin.token).
    #[arg(long, global = true, env = "RPAFLOW_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The namespace to act in, with authentication off (`default` without it); a token acts in
    /// its own namespace, and naming another is refused.
    #[arg(long = "ns", global = true, env = "RPAFLOW_NAMESPACE")]
    pub ns: Option<String>,
    #[command(flatten)]
    pub tls: tls::TlsOpts,
}

/// A FlowService client that says who calls.
pub type Client = FlowServiceClient<InterceptedService<Channel, Caller>>;

type Metadata = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// Adds `authorization: Bearer <token>` to every call when there is a token, and
/// `rpaflow-namespace` when a namespace was named.
#[derive(Debug, Clone)]
pub struct Caller {
    token: Option<Metadata>,
    namespace: Option<Metadata>,
}

impl tonic::service::Interceptor for Caller {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(value) = &self.namespace {
            request
                .metadata_mut()
                .insert("rpaflow-namespace", value.clone());
        }
        Ok(request)
    }
}

fn caller(opts: &ClientOpts) -> anyhow::Result<Caller> {
    let given = |value: &Option<String>| {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let token = match given(&opts.token) {
        None => None,
        Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
            anyhow::anyhow!("the token (--token, RPAFLOW_TOKEN) is not visible ASCII text")
        })?),
    };
    let namespace = match given(&opts.ns) {
        None => None,
        Some(namespace) => {
            if let Some(reason) = rpaflow_core::namespace::invalid_reason(&namespace) {
                anyhow::bail!("--ns (RPAFLOW_NAMESPACE): {reason}");
            }
            Some(namespace.parse().map_err(|_| {
                anyhow::anyhow!("--ns (RPAFLOW_NAMESPACE) is not visible ASCII text")
            })?)
        }
    };
    Ok(Caller { token, namespace })
}

async fn connect(opts: &ClientOpts) -> anyhow::Result<Client> {
    Ok(FlowServiceClient::with_interceptor(
        channel(opts).await?,
        caller(opts)?,
    ))
}

/// An AuthService client that says who calls.
async fn connect_auth(
    opts: &ClientOpts,
) -> anyhow::Result<AuthServiceClient<InterceptedService<Channel, Caller>>> {
    Ok(AuthServiceClient::with_interceptor(
        channel(opts).await?,
        caller(opts)?,
    ))
}

async fn channel(opts: &ClientOpts) -> anyhow::Result<Channel> {
    let endpoint = tls::endpoint(&opts.server, &opts.tls)?;
    let uri = endpoint.uri().clone();
    let channel = endpoint.connect().await.map_err(|err| {
        let hint = tls::hint(&err)
            .unwrap_or("is `rpaflow dev` running? set --server")
            .to_owned();
        anyhow::Error::new(err).context(format!("cannot reach the orchestrator at {uri} ({hint})"))
    })?;
    Ok(channel)
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
