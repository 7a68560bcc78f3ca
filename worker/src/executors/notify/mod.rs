//! `notify`: tells someone: a signed webhook or an e-mail.
//!
//! # Input
//! | field | meaning |
//! |---|---|
//! | `channel` | required; `webhook` or `email` |
//!
//! With `channel: webhook`:
//! | field | meaning |
//! |---|---|
//! | `url` | required; `http` or `https` |
//! | `body` | required; any JSON, sent as `application/json` |
//! | `secret` | optional; signs the body |
//!
//! The POST carries the task's idempotency key (see [`TaskContext::idempotency_key`]) twice, as
//! `Idempotency-Key` and as `X-Rpaflow-Delivery`. With a `secret`, it also carries
//! `X-Rpaflow-Signature: t=<unix seconds>,v1=<hex>`, the HMAC-SHA256 under the secret of
//! `"{t}.{delivery id}.{exact body bytes}"` ([`rpaflow_core::signature`], the scheme rpaflow's own
//! webhook triggers check); a receiver recomputes it over the raw body it read, before parsing,
//! and refuses timestamps far from its clock.
//! With the executor's own client ([`NotifyExecutor::with_default_client`]) redirects are not
//! followed: a 3xx answer is a failure. The webhook's host and the SMTP relay must be allowed by
//! the worker's egress policy ([`crate::egress`]).
//!
//! With `channel: email`:
//! | field | meaning |
//! |---|---|
//! | `smtp` | `{host, port, username?, password?}`; required unless the executor has a default relay |
//! | `from` | required; `ada@example.com` or `Ada <ada@example.com>` |
//! | `to` | required; one address or a list |
//! | `subject` | required |
//! | `body` | required; plain text |
//!
//! Subject and body arrive rendered like any step input, so flows template them with `{{ … }}`.
//! Mail goes over plain SMTP (port 25 by default) without TLS, which suits a local relay or a
//! trusted network; credentials, when given, are sent with `AUTH PLAIN`/`LOGIN` over that
//! connection. The `Message-ID` is derived from the task's idempotency key, so a redelivered task
//! sends a message with the same id.
//!
//! # Output
//! - webhook: `{status}`.
//! - email: `{message_id, accepted}`: the message's id and the recipients the relay accepted
//!   (all of them: a refused recipient fails the step).
//!
//! # Errors
//! - `egress_denied`: the egress policy of the step's namespace (`worker.egress`, or
//!   `worker.egress_namespaces.<namespace>`) denies the webhook's host or the relay.
//! - `notify_failed`: the webhook answered other than 2xx (retryable for 5xx and 429) or could not
//!   be reached (retryable); the SMTP relay refused the message (retryable for 4xx replies) or
//!   could not be reached (retryable).
//! - `cancelled`: the run was cancelled.
//! - `invalid_input`: a bad field, named in the message.
//!
//! Messages never hold the secret, the SMTP password or a webhook URL's query string.

mod email;
mod webhook;

use async_trait::async_trait;
use serde_json::Value as Json;

pub use self::email::SmtpConfig;
use crate::egress::Egress;
use crate::executors::Input;
use crate::{Error, Executor, StepError, TaskContext};

/// The error codes of the `notify` executor.
pub mod codes {
    /// The notification was not delivered.
    pub const NOTIFY_FAILED: &str = "notify_failed";
}

/// The `notify` executor: an HTTP client for webhooks and, optionally, a default SMTP relay.
#[derive(Clone)]
pub struct NotifyExecutor {
    client: reqwest::Client,
    egress: Egress,
    smtp: Option<SmtpConfig>,
}

impl std::fmt::Debug for NotifyExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyExecutor")
            .field("smtp", &self.smtp.as_ref().map(|s| (&s.host, s.port)))
            .finish_non_exhaustive()
    }
}

impl NotifyExecutor {
    /// An executor that posts webhooks with `client` and reaches relays under `egress`;
    /// `client` must resolve through the same policy (build it from
    /// [`Egress::http_client_builder`]).
    pub fn new(client: reqwest::Client, egress: Egress) -> Self {
        Self {
            client,
            egress,
            smtp: None,
        }
    }

    /// An executor with a client of its own, under `egress`.
    pub fn with_default_client(egress: Egress) -> crate::Result<Self> {
        // reqwest is built without a TLS crypto provider; install rustls's `ring` one (an error
        // means one is installed already, which is as good).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = egress
            .http_client_builder()
            .user_agent(concat!("rpaflow-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| Error::HttpClient { source })?;
        Ok(Self::new(client, egress))
    }

    /// The relay used by e-mail steps that give no `smtp` of their own.
    pub fn with_smtp(mut self, smtp: SmtpConfig) -> Self {
        self.smtp = Some(smtp);
        self
    }
}

#[async_trait]
impl Executor for NotifyExecutor {
    fn kind(&self) -> &'static str {
        "notify"
    }

    fn receives_secrets(&self) -> bool {
        true
    }

    async fn execute(&self, ctx: &TaskContext, input: Json) -> Result<Json, StepError> {
        let fields = Input::new(&input)?;
        let work = async {
            match fields.required_str("channel")?.trim() {
                "webhook" => webhook::send(&self.client, &self.egress, ctx, &fields).await,
                "email" => email::send(self.smtp.as_ref(), &self.egress, ctx, &fields).await,
                other => Err(StepError::invalid_input(format!(
                    "`channel` must be `webhook` or `email`, not `{other}`"
                ))),
            }
        };
        tokio::select! {
            result = work => result,
            () = ctx.cancel.cancelled() => Err(StepError::cancelled()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn the_channel_is_required_and_checked() {
        let executor = NotifyExecutor::with_default_client(Egress::permissive()).unwrap();
        let ctx = TaskContext::new("run-1", "tell");
        let err = executor.execute(&ctx, json!({})).await.unwrap_err();
        assert_eq!(err.message, "`channel` is required");
        let err = executor
            .execute(&ctx, json!({"channel": "pigeon"}))
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "`channel` must be `webhook` or `email`, not `pigeon`"
        );
    }
}
