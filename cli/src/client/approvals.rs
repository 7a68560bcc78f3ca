//! `rpaflow approvals ...`: approval steps waiting for a person.

use std::process::ExitCode;

use clap::Subcommand;
use rpaflow_proto::v1 as pb;

use super::{ClientOpts, OutputFormat, connect, status_error};
use crate::output;

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
    let mut client = connect(&opts).await?;
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
                let who: Vec<String> = a
                    .approver_roles
                    .iter()
                    .map(|r| format!("role {r}"))
                    .chain(a.approver_names.iter().cloned())
                    .collect();
                if !who.is_empty() {
                    println!("{:<38} answered only by: {}", "", who.join(", "));
                }
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
