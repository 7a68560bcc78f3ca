//! `rpaflow token ...` (make, list, revoke API tokens), `rpaflow namespace ...` and
//! `rpaflow audit` (the change log).

use std::process::ExitCode;

use clap::Subcommand;
use rpaflow_proto::v1 as pb;

use super::{ClientOpts, OutputFormat, connect_auth, status_error};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed this once (`--output json`: `{"token": ...}`).
    Create {
        /// admin, developer, operator, approver or viewer.
        #[arg(long)]
        role: String,
        /// A name people recognise (default: the role and the time).
        #[arg(long)]
        name: Option<String>,
        /// How long it lives, as `30d` or `12h` (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
        /// The namespace the token acts in (default: the caller's own; another needs an admin
        /// of `default`).
        #[arg(long)]
        namespace: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// The tokens of the caller's namespace, or of every namespace for an admin of `default`
    /// (never the secrets).
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Revoke a token at once, by its id (from `token list`).
    Revoke {
        id: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// The token this command runs with.
    Whoami {
        #[command(flatten)]
        opts: ClientOpts,
    },
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Make a namespace (an admin of `default`): 1 to 63 lowercase letters, digits and `-`.
    Create {
        name: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// The namespaces the caller can see: every one for an admin of `default`, else its own.
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
}

#[derive(Debug, clap::Args)]
pub struct AuditCommand {
    /// At most this many entries, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub opts: ClientOpts,
}

fn info_json(info: &pb::TokenInfo) -> serde_json::Value {
    let time = |ms: i64| (ms > 0).then(|| output::ms_to_rfc3339(ms));
    serde_json::json!({
        "id": info.id,
        "name": info.name,
        "namespace": info.namespace,
        "role": info.role,
        "created_at": time(info.created_at_ms),
        "expires_at": time(info.expires_at_ms),
        "revoked_at": time(info.revoked_at_ms),
        "created_by": info.created_by,
    })
}

fn info_text(info: &pb::TokenInfo) -> String {
    let state = if info.revoked_at_ms > 0 {
        "revoked".to_owned()
    } else if info.expires_at_ms > 0 {
        format!("expires {}", output::ms_to_rfc3339(info.expires_at_ms))
    } else {
        "no expiry".to_owned()
    };
    format!(
        "{:<14} {:<24} {:<10} {:<10} {state}",
        info.id, info.name, info.namespace, info.role
    )
}

pub async fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            role,
            name,
            expires,
            namespace,
            opts,
        } => {
            let name = name.unwrap_or_else(|| {
                format!(
                    "{role}-{}",
                    output::ms_to_rfc3339(rpaflow_core::time::now_ms())
                )
            });
            let made = connect_auth(&opts)
                .await?
                .create_token(pb::CreateTokenRequest {
                    name,
                    role,
                    expires_in: expires.unwrap_or_default(),
                    namespace: namespace.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let info = made.info.unwrap_or_default();
            match opts.output {
                OutputFormat::Json => {
                    let mut value = info_json(&info);
                    value["token"] = serde_json::Value::String(made.token);
                    println!("{value}");
                }
                OutputFormat::Text => {
                    println!(
                        "token {} ({}, {} in namespace {}) made; it is shown this once:",
                        info.id, info.name, info.role, info.namespace
                    );
                    println!("{}", made.token);
                }
            }
        }
        TokenCommand::List { opts } => {
            let tokens = connect_auth(&opts)
                .await?
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .tokens;
            match opts.output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::Value::Array(tokens.iter().map(info_json).collect())
                ),
                OutputFormat::Text => tokens.iter().for_each(|t| println!("{}", info_text(t))),
            }
        }
        TokenCommand::Revoke { id, opts } => {
            let info = connect_auth(&opts)
                .await?
                .revoke_token(pb::RevokeTokenRequest { id })
                .await
                .map_err(status_error)?
                .into_inner();
            match opts.output {
                OutputFormat::Json => println!("{}", info_json(&info)),
                OutputFormat::Text => println!("token {} ({}) revoked", info.id, info.name),
            }
        }
        TokenCommand::Whoami { opts } => {
            let info = connect_auth(&opts)
                .await?
                .who_am_i(pb::WhoAmIRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            match opts.output {
                OutputFormat::Json => println!("{}", info_json(&info)),
                OutputFormat::Text => println!("{}", info_text(&info)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let entries = connect_auth(&cmd.opts)
        .await?
        .list_audit(pb::ListAuditRequest { limit: cmd.limit })
        .await
        .map_err(status_error)?
        .into_inner()
        .entries;
    for e in entries {
        match cmd.opts.output {
            OutputFormat::Json => println!(
                "{}",
                serde_json::json!({
                    "at": output::ms_to_rfc3339(e.at_ms),
                    "actor": e.actor,
                    "actor_token_id": e.actor_token_id,
                    "method": e.method,
                    "outcome": e.outcome,
                    "namespace": e.namespace,
                })
            ),
            OutputFormat::Text => println!(
                "{}  {:<12} {:<20} {:<45} {}",
                output::ms_to_rfc3339(e.at_ms),
                e.namespace,
                e.actor,
                e.method,
                e.outcome
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn namespace(cmd: NamespaceCommand) -> anyhow::Result<ExitCode> {
    let json = |ns: &pb::Namespace| {
        serde_json::json!({
            "name": ns.name,
            "created_at": (ns.created_at_ms > 0).then(|| output::ms_to_rfc3339(ns.created_at_ms)),
            "created_by": ns.created_by,
        })
    };
    match cmd {
        NamespaceCommand::Create { name, opts } => {
            let made = connect_auth(&opts)
                .await?
                .create_namespace(pb::CreateNamespaceRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            match opts.output {
                OutputFormat::Json => println!("{}", json(&made)),
                OutputFormat::Text => println!("namespace {} created", made.name),
            }
        }
        NamespaceCommand::List { opts } => {
            let namespaces = connect_auth(&opts)
                .await?
                .list_namespaces(pb::ListNamespacesRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .namespaces;
            match opts.output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::Value::Array(namespaces.iter().map(json).collect())
                ),
                OutputFormat::Text => {
                    for ns in &namespaces {
                        println!("{}", ns.name);
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
