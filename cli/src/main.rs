//! `rpaflow`: the command line of the rpaflow orchestrator.
//!
//! `rpaflow dev` runs the orchestrator and a worker pool in one process (in-process step bus or
//! Kafka, durable storage); `rpaflow orchestrator` and `rpaflow worker` are the same parts as
//! separate services on Kafka; the other commands are gRPC clients of a running orchestrator.
//!
//! # Layout
//! - `dev`: `rpaflow dev`, everything embedded.
//! - `admin`: the admin HTTP listener of the services: `/metrics`, `/healthz`, `/readyz`.
//! - `config`: the layered configuration (defaults, file, `RPAFLOW_*`, flags).
//! - `client`: `rpaflow flow ...` and `rpaflow run ...` against `--server`.
//! - `output`: human-readable and JSON rendering of flows, runs and events.
//! - `services`: `rpaflow orchestrator` and `rpaflow worker`, the services on Kafka.
//! - `bench`: `rpaflow bench`.
//! - The inference commands (`inference`, `generate`, `bench-inference`) live in
//!   `rpaflow_inference_node::cli`.

/// mimalloc instead of the system allocator: a step allocates and frees many small buffers on
/// several threads, and glibc's malloc spent a fifth of the orchestrator's CPU on them
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod bench;
mod client;
mod config;
mod dev;
mod output;
mod services;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rpaflow",
    version,
    about = "rpaflow: an actor-based RPA orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the orchestrator and a worker pool in one process; with a flow file, run it once.
    Dev(dev::DevArgs),
    /// Run the orchestrator service: gRPC API, durable runs, steps over Kafka.
    Orchestrator(services::OrchestratorArgs),
    /// Run a worker: join the pools of some queues on Kafka and run their steps.
    Worker(services::WorkerArgs),
    /// Register, inspect, validate and draw flows.
    #[command(subcommand)]
    Flow(client::FlowCommand),
    /// Start, inspect, watch, cancel, retry and answer runs.
    #[command(subcommand)]
    Run(client::RunCommand),
    /// Approval steps waiting for a person.
    #[command(subcommand)]
    Approvals(client::ApprovalsCommand),
    /// Secrets that flows read as `{{ secrets.NAME }}`.
    #[command(subcommand)]
    Secret(client::SecretCommand),
    /// The flows' schedule triggers: list, pause, resume, fire now.
    #[command(subcommand)]
    Schedule(client::ScheduleCommand),
    /// API tokens: create, list, revoke, whoami (with `[auth] enabled`).
    #[command(subcommand)]
    Token(client::TokenCommand),
    /// Namespaces: create, list. Flows, runs, schedules, approvals and secrets belong to one.
    #[command(subcommand)]
    Namespace(client::NamespaceCommand),
    /// Changes made through the API: who, which call, when, with what outcome.
    Audit(client::AuditCommand),
    /// Measure the embedded orchestrator: N runs of K no-op steps, C at a time.
    Bench(bench::BenchArgs),
    /// Serve a GPT-2 model (ONNX, Hugging Face Optimum layout) over gRPC.
    Inference(InferenceCommand),
    /// Generate text on an inference node, for a person at a terminal.
    Generate(rpaflow_inference_node::cli::GenerateArgs),
    /// Measure an inference node: C concurrent requests against the same requests one at a time.
    BenchInference(rpaflow_inference_node::cli::BenchInferenceArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => {
                private_files();
                dev::run(args).await
            }
            Command::Orchestrator(args) => {
                private_files();
                services::orchestrator(args).await
            }
            Command::Worker(args) => services::worker(args).await,
            Command::Flow(cmd) => client::flow(cmd).await,
            Command::Run(cmd) => client::run(cmd).await,
            Command::Approvals(cmd) => client::approvals(cmd).await,
            Command::Secret(cmd) => client::secret(cmd).await,
            Command::Token(cmd) => client::token(cmd).await,
            Command::Namespace(cmd) => client::namespace(cmd).await,
            Command::Audit(cmd) => client::audit(cmd).await,
            Command::Schedule(cmd) => client::schedule(cmd).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Inference(args) => inference(args).await,
            Command::Generate(args) => rpaflow_inference_node::cli::generate(args)
                .await
                .map(|()| ExitCode::SUCCESS)
                .map_err(Into::into),
            Command::BenchInference(args) => rpaflow_inference_node::cli::bench_inference(args)
                .await
                .map(|()| ExitCode::SUCCESS)
                .map_err(Into::into),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `rpaflow inference`: the node's own flags, and the admin listener.
#[derive(Debug, clap::Args)]
struct InferenceCommand {
    #[command(flatten)]
    settings: config::ConfigArgs,
    #[command(flatten)]
    node: rpaflow_inference_node::cli::InferenceArgs,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (`admin.listen`).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<std::net::SocketAddr>,
    /// A file holding the bearer token `/metrics` requires (`admin.metrics_token_file`; none:
    /// open).
    #[arg(long, value_name = "FILE")]
    admin_metrics_token_file: Option<std::path::PathBuf>,
}

async fn inference(cmd: InferenceCommand) -> anyhow::Result<ExitCode> {
    use config::Flag as _;
    let overrides = figment::Figment::new()
        .merge(figment::providers::Serialized::default(
            "inference",
            cmd.node.overrides(),
        ))
        .flag("admin.listen", cmd.admin_listen)
        .flag(
            "admin.metrics_token_file",
            cmd.admin_metrics_token_file.as_ref(),
        );
    let Some(config) = cmd
        .settings
        .load::<config::InferenceServiceConfig>(overrides)?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let telemetry = rpaflow_core::telemetry::init_telemetry(&config.telemetry, "rpaflow-inference");
    let token = config.admin.metrics_token()?;
    let node = rpaflow_inference_node::server::start(config.inference.node_config()?).await?;
    let draining = tokio_util::sync::CancellationToken::new();
    let admin = match config.admin.listen {
        Some(addr) => {
            let admin = admin::Admin::new(draining.clone())
                .metrics_token(token)
                .trace_export(telemetry.span_stats())
                .inference(node.engine());
            Some(admin::serve(addr, admin, "inference").await?)
        }
        None => None,
    };
    rpaflow_inference_node::cli::serving(&node);
    dev::wait_for_signal().await;
    // NOT_SERVING (gRPC health, /readyz) while still generating for `admin.drain_delay`, so that
    // workers stop sending here before the node refuses; then the drain.
    node.announce_drain().await;
    config.admin.start_draining(&draining).await;
    tracing::info!("inference node shutting down");
    let stopped = node.shutdown().await;
    if let Some(admin) = admin {
        admin.stop().await;
    }
    stopped?;
    Ok(ExitCode::SUCCESS)
}

/// Parses `--input key=value`: the value is JSON when it parses as JSON, a string otherwise.
pub fn parse_inputs(
    pairs: &[String],
    json: Option<&str>,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut map = match json {
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => anyhow::bail!("--inputs-json must be a JSON object"),
            Err(e) => anyhow::bail!("--inputs-json is not valid JSON: {e}"),
        },
        None => serde_json::Map::new(),
    };
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            anyhow::bail!("--input `{pair}` must be KEY=VALUE");
        };
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        map.insert(key.trim().to_owned(), value);
    }
    Ok(map)
}

/// Files the services create (the data directory's, the secrets key) are their owner's only:
/// the orchestrator also makes its existing data files so when it starts.
fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_json_when_they_parse_as_json() {
        let map = parse_inputs(
            &[
                "n=5".into(),
                "name=Ada".into(),
                "list=[1,2]".into(),
                "s=\"5\"".into(),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            serde_json::Value::Object(map),
            serde_json::json!({"n": 5, "name": "Ada", "list": [1, 2], "s": "5"})
        );
        assert!(parse_inputs(&["oops".into()], None).is_err());
    }
}
