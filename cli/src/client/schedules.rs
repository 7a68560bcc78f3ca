//! `rpaflow schedule ...`: list, pause, resume and trigger the flows' schedules.

use std::process::ExitCode;

use clap::Subcommand;
use rpaflow_proto::v1 as pb;

use super::{ClientOpts, OutputFormat, connect, print_run, status_error};
use crate::output;

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
            let mut client = connect(&opts).await?;
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
            let mut client = connect(&opts).await?;
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
    let mut client = connect(opts).await?;
    let answer = if pause {
        client.pause_schedule(schedule).await
    } else {
        client.resume_schedule(schedule).await
    };
    let schedule = answer.map_err(status_error)?.into_inner();
    print_schedules(std::slice::from_ref(&schedule), opts.output);
    Ok(())
}
