//! Following a run's events until it ends (`rpaflow run watch`, `rpaflow run start --watch`).

use std::process::ExitCode;
use std::time::Instant;

use futures::StreamExt;
use rpaflow_proto::v1 as pb;

use super::{OutputFormat, status_error};
use crate::output;

pub(super) async fn watch_run(
    client: &mut super::Client,
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
