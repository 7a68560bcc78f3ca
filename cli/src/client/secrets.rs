//! `rpaflow secret ...`: set, list and delete secrets.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use rpaflow_proto::v1 as pb;

use super::{ClientOpts, OutputFormat, connect, status_error};
use crate::output;

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
    /// Write a new secrets key to FILE (mode 0600), for `secrets.key_file`. To rotate: point
    /// `secrets.key_file` at the new file and list the old one in `secrets.previous_key_files`
    /// (orchestrator and workers), restart the orchestrator, which seals every stored secret
    /// under the new key as it starts; drop the old key once workers have restarted too.
    GenerateKey {
        /// Where to write the key; an existing file is never replaced.
        file: std::path::PathBuf,
    },
}

pub async fn secret(cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::GenerateKey { file } => {
            rpaflow_core::secrets::write_key_file(
                &file,
                &rpaflow_core::secrets::generate_key_text(),
            )?;
            println!("wrote a new secrets key to {}", file.display());
        }
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
            let mut client = connect(&opts).await?;
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
            let mut client = connect(&opts).await?;
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
            let mut client = connect(&opts).await?;
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
