//! Client commands: `rpaflow flow ...`, `rpaflow run ...`, `rpaflow schedule ...` and the others
//! against a running orchestrator.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
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

#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// Validate and store a flow file as a new version.
    Register {
        file: PathBuf,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// The latest version of every flow.
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// One flow version (the latest by default).
    Show {
        name: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Check flow files without a server; prints FILE:LINE:COL: message per problem, exits 1 on any.
    Validate { files: Vec<PathBuf> },
    /// Print a flow as a Mermaid flowchart (from a file, or a registered flow with --server).
    Graph {
        /// A flow file, or the name of a registered flow.
        flow: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

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
        /// running, succeeded, failed or cancelled.
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

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Approval steps waiting for a person, oldest first.
    List {
        /// Only this flow's approvals.
        #[arg(long, default_value = "")]
        flow: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

pub async fn approvals(cmd: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let ApprovalsCommand::List { flow, opts } = cmd;
    let mut client = connect(&opts.server).await?;
    let approvals = client
        .list_approvals(pb::ListApprovalsRequest { flow })
        .await
        .map_err(status_error)?
        .into_inner()
        .approvals;
    match opts.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::Value::Array(approvals.iter().map(output::approval_json).collect())
        ),
        OutputFormat::Text => {
            println!(
                "{:<38} {:<20} {:<16} {:<22} MESSAGE",
                "RUN", "FLOW", "STEP", "WAITING SINCE"
            );
            for a in &approvals {
                println!(
                    "{:<38} {:<20} {:<16} {:<22} {}",
                    a.run_id,
                    a.flow,
                    a.step_id,
                    output::ms_to_rfc3339(a.requested_at_ms),
                    a.message
                );
            }
            if !approvals.is_empty() {
                println!(
                    "answer with: rpaflow run signal RUN STEP --approve|--reject [--comment TEXT]"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret; flows read it as `{{ secrets.NAME }}` in a step's `with`.
    Set {
        name: String,
        /// The value; without it, the value is read from standard input (so it stays out of
        /// shell history and process listings).
        #[arg(long)]
        value: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Secret names and when they were set (never the values).
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Delete a secret.
    Delete {
        name: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

pub async fn secret(cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::Set { name, value, opts } => {
            let value = match value {
                Some(v) => v,
                None => {
                    let mut v = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut v)
                        .context("cannot read the value from standard input")?;
                    v.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let mut client = connect(&opts.server).await?;
            let secret = client
                .set_secret(pb::SetSecretRequest { name, value })
                .await
                .map_err(status_error)?
                .into_inner();
            match opts.output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"name": secret.name, "updated_at": output::ms_to_rfc3339(secret.updated_at_ms)})
                ),
                OutputFormat::Text => println!("secret {} set", secret.name),
            }
        }
        SecretCommand::List { opts } => {
            let mut client = connect(&opts.server).await?;
            let secrets = client
                .list_secrets(pb::ListSecretsRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .secrets;
            match opts.output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::Value::Array(
                        secrets
                            .iter()
                            .map(|s| serde_json::json!({"name": s.name, "updated_at": output::ms_to_rfc3339(s.updated_at_ms)}))
                            .collect()
                    )
                ),
                OutputFormat::Text => {
                    println!("{:<32} UPDATED", "NAME");
                    for s in &secrets {
                        println!("{:<32} {}", s.name, output::ms_to_rfc3339(s.updated_at_ms));
                    }
                }
            }
        }
        SecretCommand::Delete { name, opts } => {
            let mut client = connect(&opts.server).await?;
            let deleted = client
                .delete_secret(pb::DeleteSecretRequest { name: name.clone() })
                .await
                .map_err(status_error)?
                .into_inner()
                .deleted;
            if !deleted {
                eprintln!("no secret named {name}");
                return Ok(ExitCode::FAILURE);
            }
            println!("secret {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Schedule triggers of the latest flow versions, with their next five fire times.
    List {
        /// Only this flow's schedules.
        #[arg(long, default_value = "")]
        flow: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Pause a schedule: its fire times pass without runs until it is resumed.
    Pause {
        flow: String,
        trigger: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Resume a paused schedule from its next fire time.
    Resume {
        flow: String,
        trigger: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Start a run of a schedule now, outside its cron.
    Trigger {
        flow: String,
        trigger: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

fn print_schedules(schedules: &[pb::ScheduleInfo], format: OutputFormat) {
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::Value::Array(schedules.iter().map(output::schedule_json).collect())
        ),
        OutputFormat::Text => println!("{}", output::schedules_text(schedules)),
    }
}

pub async fn schedule(cmd: ScheduleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ScheduleCommand::List { flow, opts } => {
            let mut client = connect(&opts.server).await?;
            let schedules = client
                .list_schedules(pb::ListSchedulesRequest { flow })
                .await
                .map_err(status_error)?
                .into_inner()
                .schedules;
            print_schedules(&schedules, opts.output);
        }
        ScheduleCommand::Pause {
            flow,
            trigger,
            opts,
        } => set_paused(pb::ScheduleRef { flow, trigger }, &opts, true).await?,
        ScheduleCommand::Resume {
            flow,
            trigger,
            opts,
        } => set_paused(pb::ScheduleRef { flow, trigger }, &opts, false).await?,
        ScheduleCommand::Trigger {
            flow,
            trigger,
            opts,
        } => {
            let mut client = connect(&opts.server).await?;
            let answer = client
                .trigger_schedule(pb::ScheduleRef { flow, trigger })
                .await
                .map_err(status_error)?
                .into_inner();
            let run = answer.run.unwrap_or_default();
            print_run(&run, opts.output);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Pauses or resumes a schedule and prints it as it is now.
async fn set_paused(
    schedule: pb::ScheduleRef,
    opts: &ClientOpts,
    pause: bool,
) -> anyhow::Result<()> {
    let mut client = connect(&opts.server).await?;
    let answer = if pause {
        client.pause_schedule(schedule).await
    } else {
        client.resume_schedule(schedule).await
    };
    let schedule = answer.map_err(status_error)?.into_inner();
    print_schedules(std::slice::from_ref(&schedule), opts.output);
    Ok(())
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

/// Prints the run an RPC answered with.
fn answered_run(
    answer: Result<tonic::Response<pb::Run>, tonic::Status>,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let run = answer.map_err(status_error)?.into_inner();
    print_run(&run, format);
    Ok(ExitCode::SUCCESS)
}

fn print_run(run: &pb::Run, format: OutputFormat) {
    match format {
        OutputFormat::Text => println!("{}", output::run_text(run)),
        OutputFormat::Json => println!("{}", output::run_json(run)),
    }
}

pub async fn flow(cmd: FlowCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FlowCommand::Validate { files } => {
            anyhow::ensure!(!files.is_empty(), "name at least one flow file");
            let mut ok = true;
            for file in files {
                let source = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                match rpaflow_core::flow::parse(&file.display().to_string(), &source) {
                    Ok(flow) => println!(
                        "{}: ok ({} v{}, {} steps)",
                        file.display(),
                        flow.name,
                        flow.version.unwrap_or(0),
                        flow.steps.len()
                    ),
                    Err(diags) => {
                        ok = false;
                        println!("{diags}");
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        FlowCommand::Graph {
            flow,
            version,
            opts,
        } => {
            let path = PathBuf::from(&flow);
            let parsed = if path.exists() {
                let source = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                match rpaflow_core::flow::parse(&path.display().to_string(), &source) {
                    Ok(parsed) => parsed,
                    Err(diags) => {
                        eprintln!("{diags}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
            } else {
                let mut client = connect(&opts.server).await?;
                let stored = client
                    .get_flow(pb::GetFlowRequest {
                        name: flow,
                        version,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                rpaflow_core::flow::parse(
                    &format!("{} v{}", stored.name, stored.version),
                    &stored.source,
                )
                .map_err(|e| anyhow::anyhow!("stored flow does not parse: {e}"))?
            };
            print!("{}", rpaflow_core::flow::to_mermaid(&parsed));
            Ok(ExitCode::SUCCESS)
        }
        FlowCommand::Register { file, opts } => {
            let source = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let mut client = connect(&opts.server).await?;
            let req = pb::RegisterFlowRequest {
                source,
                file_name: file.display().to_string(),
            };
            let resp = match client.register_flow(req).await {
                Ok(resp) => resp.into_inner(),
                Err(status) if status.code() == tonic::Code::InvalidArgument => {
                    eprintln!("{}", status.message());
                    return Ok(ExitCode::FAILURE);
                }
                Err(status) => return Err(status_error(status)),
            };
            let flow = resp.flow.unwrap_or_default();
            match opts.output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"created": resp.created, "flow": output::flow_json(&flow)})
                ),
                OutputFormat::Text if resp.created => {
                    println!("flow {} v{} registered", flow.name, flow.version)
                }
                OutputFormat::Text => println!(
                    "flow {} v{} unchanged (already the latest version)",
                    flow.name, flow.version
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        FlowCommand::List { opts } => {
            let mut client = connect(&opts.server).await?;
            let flows = client
                .list_flows(pb::ListFlowsRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .flows;
            match opts.output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::Value::Array(flows.iter().map(output::flow_json).collect())
                ),
                OutputFormat::Text => {
                    println!(
                        "{:<32} {:>7} {:>6}  DESCRIPTION",
                        "NAME", "VERSION", "STEPS"
                    );
                    for f in &flows {
                        let def = f.definition.clone().unwrap_or_default();
                        println!(
                            "{:<32} {:>7} {:>6}  {}",
                            f.name,
                            f.version,
                            def.steps.len(),
                            def.description
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        FlowCommand::Show {
            name,
            version,
            opts,
        } => {
            let mut client = connect(&opts.server).await?;
            let flow = client
                .get_flow(pb::GetFlowRequest { name, version })
                .await
                .map_err(status_error)?
                .into_inner();
            match opts.output {
                OutputFormat::Json => println!("{}", output::flow_json(&flow)),
                OutputFormat::Text => println!("{}", output::flow_text(&flow)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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
            let mut client = connect(&opts.server).await?;
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
            let mut client = connect(&opts.server).await?;
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
            let mut client = connect(&opts.server).await?;
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
            let mut client = connect(&opts.server).await?;
            watch_run(&mut client, &run_id, opts.output).await
        }
        RunCommand::Cancel {
            run_id,
            reason,
            opts,
        } => {
            let mut client = connect(&opts.server).await?;
            answered_run(
                client
                    .cancel_run(pb::CancelRunRequest { run_id, reason })
                    .await,
                opts.output,
            )
        }
        RunCommand::Retry { run_id, opts } => {
            let mut client = connect(&opts.server).await?;
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
            let mut client = connect(&opts.server).await?;
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

async fn watch_run(
    client: &mut FlowServiceClient<Channel>,
    run_id: &str,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut stream = client
        .watch_run(pb::WatchRunRequest {
            run_id: run_id.to_owned(),
            from_seq: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut last = pb::RunStatus::Running;
    while let Some(event) = stream.next().await {
        let event = event.map_err(status_error)?;
        last = pb::RunStatus::try_from(event.run_status).unwrap_or(pb::RunStatus::Unspecified);
        match format {
            OutputFormat::Json => println!("{}", output::event_json(&event)),
            OutputFormat::Text => println!("{}", output::event_line(&event, started.elapsed())),
        }
    }
    if format == OutputFormat::Text {
        let run = client
            .get_run(pb::GetRunRequest {
                run_id: run_id.to_owned(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        println!("{}", output::run_text(&run));
    }
    Ok(if last == pb::RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
