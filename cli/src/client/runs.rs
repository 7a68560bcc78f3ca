//! `rpaflow run ...`: start, get, list, watch, cancel, retry and signal runs.

use std::process::ExitCode;

use clap::Subcommand;
use rpaflow_proto::v1 as pb;

use super::watch::watch_run;
use super::{ClientOpts, OutputFormat, connect, print_run, status_error};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run of a registered flow.
    Start {
        flow: String,
        /// An input, KEY=VALUE (VALUE is JSON when it parses as JSON).
        #[arg(long = "input", short = 'i', value_name = "KEY=VALUE")]
        inputs: Vec<String>,
        /// All inputs as one JSON object (--input values are added to it).
        #[arg(long, value_name = "JSON")]
        inputs_json: Option<String>,
        /// Starting twice with the same key returns the first run.
        #[arg(long, value_name = "KEY", default_value = "")]
        idempotency_key: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
        /// Follow the run until it ends; exit 0 only when it succeeds.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// One run with its steps.
    Get {
        run_id: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Runs, newest first.
    List {
        #[arg(long, default_value = "")]
        flow: String,
        /// queued, running, succeeded, failed or cancelled.
        #[arg(long, default_value = "")]
        status: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, default_value = "")]
        page_token: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Follow a run's events until it ends; exit 0 only when it succeeds.
    Watch {
        run_id: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Cancel a run.
    Cancel {
        run_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Restart a failed run from its failed steps.
    Retry {
        run_id: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Answer an approval step.
    Signal {
        run_id: String,
        step: String,
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        approve: bool,
        #[arg(long)]
        reject: bool,
        #[arg(long, default_value = "")]
        comment: String,
        /// Who answers (default: $USER).
        #[arg(long, env = "USER", default_value = "")]
        by: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// Prints the run an RPC answered with.
fn answered_run(
    answer: Result<tonic::Response<pb::Run>, tonic::Status>,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let run = answer.map_err(status_error)?.into_inner();
    print_run(&run, format);
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cmd: RunCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RunCommand::Start {
            flow,
            inputs,
            inputs_json,
            idempotency_key,
            version,
            watch,
            opts,
        } => {
            let inputs = crate::parse_inputs(&inputs, inputs_json.as_deref())?;
            let mut client = connect(&opts).await?;
            let req = pb::StartRunRequest {
                flow,
                version,
                inputs_json: serde_json::Value::Object(inputs).to_string(),
                idempotency_key,
            };
            let resp = client
                .start_run(req)
                .await
                .map_err(status_error)?
                .into_inner();
            let run = resp.run.unwrap_or_default();
            if watch {
                if opts.output == OutputFormat::Text {
                    println!(
                        "run {} {}",
                        run.run_id,
                        if resp.created {
                            "started"
                        } else {
                            "already exists for this key"
                        }
                    );
                }
                return watch_run(&mut client, &run.run_id, opts.output).await;
            }
            match opts.output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"created": resp.created, "run": output::run_json(&run)})
                ),
                OutputFormat::Text if resp.created => println!("run {} started", run.run_id),
                OutputFormat::Text => println!(
                    "run {} already exists for this idempotency key ({})",
                    run.run_id,
                    output::run_status_name(run.status)
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Get { run_id, opts } => {
            let mut client = connect(&opts).await?;
            answered_run(
                client.get_run(pb::GetRunRequest { run_id }).await,
                opts.output,
            )
        }
        RunCommand::List {
            flow,
            status,
            limit,
            page_token,
            opts,
        } => {
            let mut client = connect(&opts).await?;
            let req = pb::ListRunsRequest {
                flow,
                status,
                page_size: limit,
                page_token,
            };
            let resp = client
                .list_runs(req)
                .await
                .map_err(status_error)?
                .into_inner();
            match opts.output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"runs": resp.runs.iter().map(output::run_json).collect::<Vec<_>>(), "next_page_token": resp.next_page_token})
                ),
                OutputFormat::Text => {
                    println!(
                        "{:<38} {:<24} {:>4}  {:<10} ERROR",
                        "RUN", "FLOW", "VER", "STATUS"
                    );
                    for r in &resp.runs {
                        let err = r
                            .error
                            .as_ref()
                            .map(|e| e.message.clone())
                            .unwrap_or_default();
                        println!(
                            "{:<38} {:<24} {:>4}  {:<10} {}",
                            r.run_id,
                            r.flow,
                            r.flow_version,
                            output::run_status_name(r.status),
                            err
                        );
                    }
                    if !resp.next_page_token.is_empty() {
                        println!("more: --page-token {}", resp.next_page_token);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Watch { run_id, opts } => {
            let mut client = connect(&opts).await?;
            watch_run(&mut client, &run_id, opts.output).await
        }
        RunCommand::Cancel {
            run_id,
            reason,
            opts,
        } => {
            let mut client = connect(&opts).await?;
            answered_run(
                client
                    .cancel_run(pb::CancelRunRequest { run_id, reason })
                    .await,
                opts.output,
            )
        }
        RunCommand::Retry { run_id, opts } => {
            let mut client = connect(&opts).await?;
            answered_run(
                client.retry_run(pb::RetryRunRequest { run_id }).await,
                opts.output,
            )
        }
        RunCommand::Signal {
            run_id,
            step,
            approve,
            reject: _,
            comment,
            by,
            opts,
        } => {
            let mut client = connect(&opts).await?;
            let req = pb::SignalRunRequest {
                run_id,
                step_id: step,
                approve,
                comment,
                by,
            };
            answered_run(client.signal_run(req).await, opts.output)
        }
    }
}
