//! `notify` by e-mail: one plain-text message through an SMTP relay.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use sha2::{Digest, Sha256};

use super::codes;
use crate::egress::Egress;
use crate::executors::Input;
use crate::executors::input::wrong_type;
use crate::{StepError, TaskContext};

const FIELDS: [&str; 6] = ["channel", "smtp", "from", "to", "subject", "body"];
const SMTP_FIELDS: [&str; 4] = ["host", "port", "username", "password"];
/// How long a conversation with the relay may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// An SMTP relay: plain SMTP, no TLS.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// 25 by default.
    #[serde(default = "default_port")]
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

fn default_port() -> u16 {
    25
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl SmtpConfig {
    /// Reads the step's `smtp` mapping.
    fn parse(fields: &Map<String, Json>) -> Result<Self, StepError> {
        if let Some(unknown) = fields.keys().find(|k| !SMTP_FIELDS.contains(&k.as_str())) {
            return Err(StepError::invalid_input(format!(
                "unknown field `smtp.{unknown}` (expected one of: {})",
                SMTP_FIELDS.join(", ")
            )));
        }
        let text = |name: &str| -> Result<Option<String>, StepError> {
            match fields.get(name) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(wrong_type(&format!("smtp.{name}"), "a string", other)),
            }
        };
        let host = text("host")?
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| StepError::invalid_input("`smtp.host` is required"))?;
        let port = match fields.get("port") {
            None | Some(Json::Null) => default_port(),
            Some(value) => value
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    StepError::invalid_input(format!(
                        "`smtp.port` must be a port number, not {value}"
                    ))
                })?,
        };
        Ok(Self {
            host: host.trim().to_owned(),
            port,
            username: text("username")?,
            password: text("password")?,
        })
    }
}

fn mailbox(field: &str, text: &str) -> Result<Mailbox, StepError> {
    text.trim().parse().map_err(|_| {
        StepError::invalid_input(format!(
            "`{field}` is not an e-mail address such as `ada@example.com` or \
             `Ada <ada@example.com>`: `{text}`"
        ))
    })
}

/// A `Message-ID` that is the same for every delivery of one attempt.
fn message_id(ctx: &TaskContext) -> String {
    let digest = Sha256::digest(ctx.idempotency_key().as_bytes());
    format!("<{}@rpaflow>", hex::encode(&digest[..16]))
}

pub(super) async fn send(
    default_smtp: Option<&SmtpConfig>,
    egress: &Egress,
    ctx: &TaskContext,
    input: &Input<'_>,
) -> Result<Json, StepError> {
    input.deny_unknown(&FIELDS)?;
    let smtp = match input.object("smtp")? {
        Some(fields) => SmtpConfig::parse(fields)?,
        None => default_smtp.cloned().ok_or_else(|| {
            StepError::invalid_input("`smtp` is required (this worker has no default relay)")
        })?,
    };
    let from = mailbox("from", input.required_str("from")?)?;
    let to: Vec<Mailbox> = match input.required("to")? {
        Json::String(one) => vec![mailbox("to", one)?],
        Json::Array(many) if !many.is_empty() => many
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let field = format!("to[{i}]");
                let text = item
                    .as_str()
                    .ok_or_else(|| wrong_type(&field, "a string", item))?;
                mailbox(&field, text)
            })
            .collect::<Result<_, _>>()?,
        Json::Array(_) => {
            return Err(StepError::invalid_input(
                "`to` must name at least one recipient",
            ));
        }
        other => return Err(wrong_type("to", "an address or a list of them", other)),
    };
    let subject = input.required_str("subject")?;
    let body = input
        .str("body")?
        .ok_or_else(|| StepError::invalid_input("`body` is required"))?;

    let id = message_id(ctx);
    let mut builder = Message::builder()
        .from(from)
        .subject(subject)
        .message_id(Some(id.clone()))
        .header(ContentType::TEXT_PLAIN);
    for recipient in &to {
        builder = builder.to(recipient.clone());
    }
    let message = builder
        .body(body.to_owned())
        .map_err(|e| StepError::invalid_input(format!("the message cannot be built: {e}")))?;

    let relay = format!("smtp://{}:{}", smtp.host, smtp.port);
    // The relay is resolved and checked here, and lettre connects to the checked address (plain
    // SMTP: no TLS name to keep). Only the first one is tried: a message must not go twice.
    let addrs = egress
        .resolve(&smtp.host, smtp.port)
        .await
        .map_err(|e| e.into_step_error(codes::NOTIFY_FAILED))?;
    let Some(addr) = addrs.first() else {
        return Err(unreachable(&smtp));
    };
    let mut transport =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
            .port(smtp.port)
            .timeout(Some(SMTP_TIMEOUT));
    if let Some(username) = &smtp.username {
        transport = transport.credentials(Credentials::new(
            username.clone(),
            smtp.password.clone().unwrap_or_default(),
        ));
    }
    let transport = transport.build();
    transport.send(message).await.map_err(|e| {
        // However the relay could not be reached (refused, timed out, reset), it reads the same.
        if !(e.is_permanent() || e.is_transient() || e.is_response() || e.is_client()) {
            return unreachable(&smtp);
        }
        // Transient (4xx) replies may pass later.
        let retryable = !(e.is_permanent() || e.is_client() || e.is_response());
        let mut message = format!("{relay} did not take the message: {e}");
        if let Some(password) = smtp.password.as_deref().filter(|p| !p.is_empty()) {
            message = message.replace(password, "***");
        }
        StepError::new(codes::NOTIFY_FAILED, message, retryable)
    })?;
    let accepted: Vec<String> = to.iter().map(|m| m.email.to_string()).collect();
    Ok(json!({"message_id": id, "accepted": accepted}))
}

/// The relay could not be reached: retryable, and the same message however it failed.
fn unreachable(smtp: &SmtpConfig) -> StepError {
    StepError::retryable(
        codes::NOTIFY_FAILED,
        format!(
            "cannot connect to smtp://{}",
            crate::egress::resolve::destination(&smtp.host, Some(smtp.port))
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::Executor;
    use crate::executors::notify::NotifyExecutor;

    /// What a sink received: envelope recipients and the message data.
    #[derive(Debug, Default)]
    struct Received {
        recipients: Vec<String>,
        data: String,
    }

    /// A one-connection SMTP sink; `rcpt_reply` answers every `RCPT TO`.
    async fn sink(rcpt_reply: &'static str) -> (u16, Arc<Mutex<Received>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Received::default()));
        let log = received.clone();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"220 sink ready\r\n").await.unwrap();
            while let Some(line) = lines.next_line().await.unwrap() {
                let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                let reply = match verb.as_str() {
                    "EHLO" | "HELO" | "MAIL" | "RSET" | "NOOP" => "250 ok",
                    "RCPT" => {
                        log.lock().unwrap().recipients.push(line[8..].to_owned());
                        rcpt_reply
                    }
                    "DATA" => {
                        write.write_all(b"354 go on\r\n").await.unwrap();
                        while let Some(data) = lines.next_line().await.unwrap() {
                            if data == "." {
                                break;
                            }
                            let mut log = log.lock().unwrap();
                            log.data.push_str(&data);
                            log.data.push('\n');
                        }
                        "250 2.0.0 queued"
                    }
                    "QUIT" => {
                        write.write_all(b"221 bye\r\n").await.unwrap();
                        break;
                    }
                    _ => "502 not implemented",
                };
                write
                    .write_all(format!("{reply}\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        (port, received)
    }

    fn ctx() -> TaskContext {
        TaskContext::new("run-3", "mail")
    }

    #[tokio::test]
    async fn delivers_to_the_relay() {
        let (port, received) = sink("250 ok").await;
        let executor = NotifyExecutor::with_default_client(Egress::permissive()).unwrap();
        let out = executor
            .execute(
                &ctx(),
                json!({"channel": "email", "smtp": {"host": "127.0.0.1", "port": port},
                       "from": "Robot <robot@example.com>",
                       "to": ["ada@example.com", "Grace <grace@example.com>"],
                       "subject": "Your refund", "body": "Hello Ada,\nyour refund is on its way."}),
            )
            .await
            .unwrap();
        assert_eq!(
            out["accepted"],
            json!(["ada@example.com", "grace@example.com"])
        );
        assert_eq!(out["message_id"], message_id(&ctx()));
        let received = received.lock().unwrap();
        assert_eq!(
            received.recipients,
            ["<ada@example.com>", "<grace@example.com>"]
        );
        assert!(
            received.data.contains("Subject: Your refund\n"),
            "{}",
            received.data
        );
        assert!(
            received
                .data
                .contains("Hello Ada,\nyour refund is on its way."),
            "{}",
            received.data
        );
        assert!(
            received
                .data
                .contains(&format!("Message-ID: {}", message_id(&ctx())))
        );
    }

    #[tokio::test]
    async fn refusals_say_whether_to_retry() {
        let send = |port: u16| async move {
            NotifyExecutor::with_default_client(Egress::permissive())
                .unwrap()
                .with_smtp(SmtpConfig {
                    host: "127.0.0.1".into(),
                    port,
                    username: None,
                    password: None,
                })
                .execute(
                    &ctx(),
                    json!({"channel": "email", "from": "robot@example.com",
                           "to": "ada@example.com", "subject": "s", "body": "b"}),
                )
                .await
                .unwrap_err()
        };
        let (port, _) = sink("451 4.3.0 try again later").await;
        let err = send(port).await;
        assert_eq!(err.code, "notify_failed");
        assert!(err.retryable, "{err}");
        assert!(err.message.contains("try again later"), "{}", err.message);
        let (port, _) = sink("550 5.1.1 no such user").await;
        let err = send(port).await;
        assert_eq!(err.code, "notify_failed");
        assert!(!err.retryable, "{err}");
    }

    #[test]
    fn bad_addresses_name_the_field() {
        let smtp = json!({"host": "h", "port": 70000});
        let err = SmtpConfig::parse(smtp.as_object().unwrap()).unwrap_err();
        assert_eq!(err.message, "`smtp.port` must be a port number, not 70000");
        let err = mailbox("to[1]", "not an address").unwrap_err();
        assert!(err.message.starts_with("`to[1]` is not an e-mail address"));
        let config = SmtpConfig {
            host: "h".into(),
            port: 25,
            username: Some("u".into()),
            password: Some("pw".into()),
        };
        assert!(!format!("{config:?}").contains("pw"));
    }

    #[tokio::test]
    async fn relays_outside_the_egress_policy_are_refused_alike() {
        let (open, received) = sink("250 ok").await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let send = |egress: Egress, host: &'static str, port: u16| async move {
            NotifyExecutor::with_default_client(egress)
                .unwrap()
                .execute(
                    &ctx(),
                    json!({"channel": "email", "smtp": {"host": host, "port": port},
                           "from": "robot@example.com", "to": "ada@example.com",
                           "subject": "s", "body": "b"}),
                )
                .await
                .unwrap_err()
        };
        for port in [open, closed] {
            for host in ["127.0.0.1", "localhost"] {
                let err = send(Egress::default(), host, port).await;
                assert_eq!(err.code, "egress_denied");
                assert_eq!(
                    err.message,
                    format!(
                        "egress to {host}:{port} is denied by the worker's egress policy \
                         (worker.egress)"
                    )
                );
            }
        }
        assert!(received.lock().unwrap().recipients.is_empty());
        // Allowed but closed: the uniform connection failure.
        let err = send(Egress::permissive(), "127.0.0.1", closed).await;
        assert_eq!(err.code, "notify_failed");
        assert!(err.retryable);
        assert_eq!(
            err.message,
            format!("cannot connect to smtp://127.0.0.1:{closed}")
        );
    }
}
