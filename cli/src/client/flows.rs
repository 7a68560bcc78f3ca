//! `rpaflow flow ...`: register, list, show, validate and graph flows.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use rpaflow_proto::v1 as pb;

use super::{ClientOpts, OutputFormat, connect, status_error};
use crate::output;

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
    Validate {
        files: Vec<PathBuf>,
        /// Steps a flow may have (the orchestrator's `max_flow_steps`).
        #[arg(long, default_value_t = rpaflow_core::flow::DEFAULT_MAX_FLOW_STEPS)]
        max_steps: usize,
        /// How deeply mappings and sequences may nest (the orchestrator's `max_flow_nesting`).
        #[arg(long, default_value_t = rpaflow_core::flow::DEFAULT_MAX_FLOW_NESTING)]
        max_nesting: usize,
    },
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

pub async fn flow(cmd: FlowCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FlowCommand::Validate {
            files,
            max_steps,
            max_nesting,
        } => {
            anyhow::ensure!(!files.is_empty(), "name at least one flow file");
            let limits = rpaflow_core::flow::FlowLimits {
                max_steps,
                max_nesting,
            };
            let mut ok = true;
            for file in files {
                let source = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                match rpaflow_core::flow::parse_with(&file.display().to_string(), &source, &limits)
                {
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
                let mut client = connect(&opts).await?;
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
            let mut client = connect(&opts).await?;
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
            let mut client = connect(&opts).await?;
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
            let mut client = connect(&opts).await?;
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
