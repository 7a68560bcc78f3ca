//! Webhooks: `POST /hooks/{namespace}/{flow}` starts a run of the latest version of `flow` from
//! one of its `webhook` triggers, on an HTTP address of its own (`hooks_listen`).
//!
//! A delivery is checked in this order, and the first failure answers:
//! 1. Authentication ([`auth`]): the namespace, the flow (of that namespace), its webhook
//!    trigger (`?trigger=ID` picks one when the flow declares several), and every credential the
//!    trigger names, against rpaflow secrets: `signature_secret` keys `X-Rpaflow-Signature:
//!    t=<unix seconds>,v1=<hex>` over the timestamp, `X-Rpaflow-Delivery` and the raw body
//!    ([`rpaflow_core::signature`]), dated within [`HooksConfig::signature_tolerance`] of this
//!    clock; `token_secret` must equal `Authorization: Bearer <token>`. Any failure, including
//!    a target that does not exist, answers the same `401 {"error":"unauthorized"}`; the reason
//!    is logged, and nothing is started.
//! 2. The body must be JSON: 400 with the parser's message (line and column).
//! 3. The run's inputs: the trigger's `input` template rendered with `body` and `headers` in
//!    scope (`Authorization` left out), or the body itself; either must be an object, and the
//!    flow's input declarations must accept it: 422 otherwise.
//! 4. `X-Rpaflow-Delivery: <id>` makes the delivery idempotent: the run's idempotency key is
//!    `webhook:<flow>:<trigger>:<id>`, and a repeat answers 200 with the run it started
//!    (`"created": false`), so a sender's retry learns its delivery took. Signed deliveries
//!    must carry it (it is signed); with a bearer token alone it is optional, and without it
//!    every delivery starts a run. A malformed id of an authenticated delivery answers 400.
//!
//! A new run answers 201 `{"run_id", "created": true, "flow", "version", "status"}` (`status` is
//! `queued` when the flow's concurrency policy has it wait). StartRun refused for
//! load answers 429 with `Retry-After`, refused by the flow's concurrency policy 409, and an
//! orchestrator that is stopping 503.
//!
//! # Layout
//! - [`auth`]: finding the trigger and checking its credentials, with one answer for failures.
//! - `tests`: what a delivery is answered, on a fake [`RunStarter`].

mod auth;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rpaflow_core::signature;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use self::auth::{Admitted, Delivery, Denied};
use crate::error::Error;
use crate::orchestrator::{OrchestratorHandle, StartRun};
use crate::tls::ServerTls;
use crate::triggers::{RunStarter, trigger_inputs};

/// The webhook route, as `http.route` names it.
pub(crate) const ROUTE: &str = "/hooks/{namespace}/{flow}";

pub const SIGNATURE_HEADER: &str = signature::HEADER;
pub const DELIVERY_HEADER: &str = signature::DELIVERY_HEADER;
/// What a 429 asks the sender to wait, in seconds.
const RETRY_AFTER_S: &str = "1";
/// The one answer to a delivery that did not authenticate.
const UNAUTHORIZED: &str = "unauthorized";

/// Settings of the webhook endpoint (`[hooks]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// How far the timestamp of a signed delivery may be from this server's clock, in either
    /// direction (`"5m"`): older deliveries are refused as possible replays, and senders'
    /// clocks may be this far off.
    #[serde(with = "rpaflow_core::time::human")]
    pub signature_tolerance: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            signature_tolerance: signature::DEFAULT_TOLERANCE,
        }
    }
}

impl HooksConfig {
    /// The narrowest tolerance accepted: clocks of sender and receiver are never exact.
    pub const MIN_TOLERANCE: Duration = Duration::from_secs(1);
    /// The widest tolerance accepted: past it a captured delivery stays usable too long.
    pub const MAX_TOLERANCE: Duration = Duration::from_secs(60 * 60);

    /// Refuses settings the endpoint cannot serve with.
    pub fn validate(&self) -> crate::error::Result<()> {
        let tolerance = self.signature_tolerance;
        if !(Self::MIN_TOLERANCE..=Self::MAX_TOLERANCE).contains(&tolerance) {
            return Err(Error::InvalidArgument(format!(
                "hooks.signature_tolerance must be between 1s and 1h, not {tolerance:?}"
            )));
        }
        Ok(())
    }
}

/// What the webhook handlers share: the handle finds the trigger and its secrets
/// ([`auth`]); runs start through it as a [`RunStarter`].
#[derive(Clone)]
struct Hooks {
    handle: OrchestratorHandle,
    config: HooksConfig,
}

/// Binds `addr` (port 0 picks a free port) and returns the listener with its real address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    crate::api::bind(addr).await
}

/// Serves the webhook endpoint on `listener` until `shutdown` resolves; over TLS when `tls` is
/// given.
pub async fn serve(
    handle: OrchestratorHandle,
    config: HooksConfig,
    listener: TcpListener,
    tls: Option<&ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(handle, config);
    match tls {
        Some(tls) => {
            axum::serve(tls.hooks(listener), router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// The webhook routes over an orchestrator.
pub fn router(handle: OrchestratorHandle, config: HooksConfig) -> Router {
    Router::new()
        .route(ROUTE, post(deliver))
        .with_state(Hooks { handle, config })
}

/// A refusal: its status and a JSON body `{"error": ...}` (plus details).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    body: Json,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }

    /// The answer to every delivery that did not authenticate, whatever the reason.
    fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, UNAUTHORIZED)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        response
    }
}

/// How an orchestrator error answers an authenticated webhook.
impl From<Error> for Refusal {
    fn from(err: Error) -> Self {
        let status = match &err {
            Error::FlowNotFound(_) | Error::FlowVersionNotFound { .. } => StatusCode::NOT_FOUND,
            // The inputs: too large, or refused by the flow's declarations.
            Error::InvalidArgument(_) | Error::InvalidFlow(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            // Refused by the flow's concurrency policy (`skip`).
            Error::FailedPrecondition(_) => StatusCode::CONFLICT,
            Error::NotRunning(_) | Error::Bus(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, err.to_string())
    }
}

async fn deliver(
    State(hooks): State<Hooks>,
    Path((namespace, flow)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delivery = Delivery {
        namespace: &namespace,
        flow: &flow,
        query: query.as_deref(),
        headers: &headers,
        body: &body,
    };
    let admitted = match auth::admit(&hooks.handle, hooks.config.signature_tolerance, &delivery) {
        Ok(admitted) => admitted,
        Err(denied) => {
            log_denied(&delivery, &denied);
            return Refusal::unauthorized().into_response();
        }
    };
    match accept(&hooks.handle, &flow, admitted, &headers, &body).await {
        Ok(response) => response,
        Err(refusal) => {
            info!(
                namespace = %namespace, flow = %flow, status = refusal.status.as_u16(),
                error = %refusal.body["error"], "webhook refused"
            );
            refusal.into_response()
        }
    }
}

/// Says why a delivery was not let in, without secrets or credentials: at debug for targets that
/// do not exist (anyone can knock), at info for a failed check of a real trigger, and as a
/// warning when the trigger cannot authenticate anyone (an operator must act).
fn log_denied(delivery: &Delivery<'_>, denied: &Denied) {
    let delivery_id = delivery.headers.get(DELIVERY_HEADER).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(64)
            .collect::<String>()
    });
    let (namespace, flow, query) = (delivery.namespace, delivery.flow, delivery.query);
    let delivery_id = delivery_id.as_deref().unwrap_or("");
    match denied {
        Denied::SecretNotSet(_) | Denied::NoCredentials | Denied::Lookup(_) => warn!(
            namespace = %namespace, flow = %flow, query = ?query, delivery = %delivery_id,
            reason = %denied, "webhook delivery refused: the trigger cannot authenticate deliveries"
        ),
        _ if denied.reached_a_trigger() => info!(
            namespace = %namespace, flow = %flow, query = ?query, delivery = %delivery_id,
            reason = %denied, "webhook delivery refused: unauthorized"
        ),
        _ => debug!(
            namespace = %namespace, flow = %flow, query = ?query, delivery = %delivery_id,
            reason = %denied, "webhook delivery refused: no such target"
        ),
    }
}

/// Starts the run of an authenticated delivery.
async fn accept(
    starter: &impl RunStarter,
    flow_name: &str,
    admitted: Admitted,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let arrived = std::time::SystemTime::now();
    let Admitted {
        view,
        trigger_id,
        trigger,
        delivery,
    } = admitted;
    let body: Json = serde_json::from_slice(body).map_err(|e| Refusal {
        status: StatusCode::BAD_REQUEST,
        body: json!({
            "error": format!("the body is not JSON: {e}"),
            "line": e.line(),
            "column": e.column(),
        }),
    })?;
    let idempotency_key = match delivery {
        None => String::new(),
        Some(id) if signature::is_delivery_id(&id) => {
            format!("webhook:{flow_name}:{trigger_id}:{id}")
        }
        Some(_) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "X-Rpaflow-Delivery must be 1 to {} visible ASCII characters without `.`",
                    signature::MAX_DELIVERY_ID
                ),
            ));
        }
    };
    let headers_value = headers_json(headers);
    let template = trigger.input.clone();
    let inputs = starter
        .evaluate(move || {
            let scope = [("body", &body), ("headers", &headers_value)];
            trigger_inputs(template.as_deref(), &scope, &body, "the body")
        })
        .await?
        .map_err(|message| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, message))?;

    let req = StartRun {
        flow: view.record.name.clone(),
        version: view.record.version,
        inputs,
        idempotency_key,
        trigger: format!("webhook:{trigger_id}"),
        ..StartRun::default()
    };
    // On its own task: a sender hanging up must not cut a run's start in half.
    let starter = starter.clone();
    let (run, created) = tokio::spawn(async move { starter.start_run(req).await })
        .await
        .map_err(|e| Error::Internal(format!("starting the run panicked: {e}")))??;
    info!(
        flow = %flow_name, trigger = %trigger_id, run_id = %run.run_id, created,
        "webhook delivery accepted"
    );
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    crate::spans::run_started(
        &run.run_id,
        crate::spans::Entry::Webhook {
            status: status.as_u16(),
        },
        arrived,
        headers
            .get(rpaflow_core::trace_context::TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok()),
        created,
    );
    let answer = json!({
        "run_id": run.run_id,
        "created": created,
        "flow": flow_name,
        "version": run.flow_version,
        "status": run.status.name(),
    });
    Ok((status, axum::Json(answer)).into_response())
}

/// Request headers for the `input` template: lower-case names, text values (repeated headers
/// joined by `, `), without `Authorization`.
fn headers_json(headers: &HeaderMap) -> Json {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        if name == header::AUTHORIZATION {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    json!(out)
}

#[cfg(test)]
mod tests;
