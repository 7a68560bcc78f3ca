//! Webhooks: `POST /hooks/{namespace}/{flow}` starts a run of the latest version of `flow` from
//! one of its `webhook` triggers, on an HTTP address of its own (`hooks_listen`).
//!
//! A delivery is checked in this order, and the first failure answers:
//! 1. The namespace (only `default` for now), the flow and its webhook trigger (`?trigger=ID`
//!    picks one when the flow declares several): 404, or 400 when the choice is ambiguous.
//! 2. Authentication, against rpaflow secrets named by the trigger: `X-Rpaflow-Signature:
//!    sha256=<hex HMAC-SHA256 of the raw body>` keyed by `signature_secret`, and `Authorization:
//!    Bearer <token>` equal to `token_secret`. Each one the trigger configures must pass (compared
//!    in constant time): 401 otherwise, and nothing is started.
//! 3. The body must be JSON: 400 with the parser's message (line and column).
//! 4. The run's inputs: the trigger's `input` template rendered with `body` and `headers` in
//!    scope (`Authorization` left out), or the body itself; either must be an object, and the
//!    flow's input declarations must accept it: 422 otherwise.
//! 5. `X-Rpaflow-Delivery: <id>` makes the delivery idempotent: the run's idempotency key is
//!    `webhook:<flow>:<trigger>:<id>`, and a repeat answers 200 with the run it started
//!    (`"created": false`). Without the header every delivery starts a run.
//!
//! A new run answers 201 `{"run_id", "created": true, "flow", "version", "status"}` (`status` is
//! `queued` when the flow's concurrency policy has it wait). StartRun refused for
//! load answers 429 with `Retry-After`, refused by the flow's concurrency policy 409, and an
//! orchestrator that is stopping 503.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rpaflow_core::expr;
use rpaflow_core::flow::{TriggerKind, WebhookTrigger};
use serde_json::{Map, Value as Json, json};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::error::Error;
use crate::orchestrator::{OrchestratorHandle, StartRun};

/// The only namespace there is for now.
pub const DEFAULT_NAMESPACE: &str = "default";
pub const SIGNATURE_HEADER: &str = rpaflow_core::signature::HEADER;
pub const DELIVERY_HEADER: &str = "x-rpaflow-delivery";
/// The longest delivery id accepted.
const MAX_DELIVERY_ID: usize = 200;
/// What a 429 asks the sender to wait, in seconds.
const RETRY_AFTER_S: &str = "1";

/// Binds `addr` (port 0 picks a free port) and returns the listener with its real address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    crate::api::bind(addr).await
}

/// Serves the webhook endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    handle: OrchestratorHandle,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(handle))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The webhook routes over an orchestrator.
pub fn router(handle: OrchestratorHandle) -> Router {
    Router::new()
        .route("/hooks/{namespace}/{flow}", post(deliver))
        .with_state(handle)
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

/// How an orchestrator error answers a webhook.
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
    State(handle): State<OrchestratorHandle>,
    Path((namespace, flow)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match accept(
        &handle,
        &namespace,
        &flow,
        query.as_deref(),
        &headers,
        &body,
    )
    .await
    {
        Ok(response) => response,
        Err(refusal) => {
            info!(flow = %flow, status = refusal.status.as_u16(), error = %refusal.body["error"], "webhook refused");
            refusal.into_response()
        }
    }
}

async fn accept(
    handle: &OrchestratorHandle,
    namespace: &str,
    flow_name: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    if namespace != DEFAULT_NAMESPACE {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no namespace `{namespace}` (there is only `{DEFAULT_NAMESPACE}`)"),
        ));
    }
    let view = handle.get_flow(flow_name, 0)?;
    let (trigger_id, trigger) = pick_trigger(&view.flow.triggers, flow_name, query)?;
    authenticate(handle, trigger, headers, body)?;

    let body: Json = serde_json::from_slice(body).map_err(|e| Refusal {
        status: StatusCode::BAD_REQUEST,
        body: json!({
            "error": format!("the body is not JSON: {e}"),
            "line": e.line(),
            "column": e.column(),
        }),
    })?;
    let headers_value = headers_json(headers);
    let template = trigger.input.clone();
    let inputs = handle
        .evaluate(move || {
            let scope = [("body", &body), ("headers", &headers_value)];
            trigger_inputs(template.as_deref(), &scope, &body, "the body")
        })
        .await?
        .map_err(|message| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, message))?;

    let idempotency_key = match headers.get(DELIVERY_HEADER) {
        None => String::new(),
        Some(value) => {
            let id = value.to_str().unwrap_or_default().trim();
            if id.is_empty() || id.len() > MAX_DELIVERY_ID {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "X-Rpaflow-Delivery must be visible text of 1 to {MAX_DELIVERY_ID} characters"
                    ),
                ));
            }
            format!("webhook:{flow_name}:{trigger_id}:{id}")
        }
    };
    let req = StartRun {
        flow: flow_name.to_owned(),
        version: view.record.version,
        inputs,
        idempotency_key,
        trigger: format!("webhook:{trigger_id}"),
        ..StartRun::default()
    };
    // On its own task: a sender hanging up must not cut a run's start in half.
    let starter = handle.clone();
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
    let answer = json!({
        "run_id": run.run_id,
        "created": created,
        "flow": flow_name,
        "version": run.flow_version,
        "status": run.status.name(),
    });
    Ok((status, axum::Json(answer)).into_response())
}

/// The webhook trigger a delivery is for: the one named by `?trigger=ID`, else the only one.
fn pick_trigger<'a>(
    triggers: &'a [rpaflow_core::flow::Trigger],
    flow: &str,
    query: Option<&str>,
) -> Result<(&'a str, &'a WebhookTrigger), Refusal> {
    let webhooks: Vec<(&str, &WebhookTrigger)> = triggers
        .iter()
        .filter_map(|t| match &t.kind {
            TriggerKind::Webhook(w) => Some((t.id.as_str(), w)),
            _ => None,
        })
        .collect();
    let wanted = query.and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("trigger="))
            .filter(|id| !id.is_empty())
    });
    match (wanted, webhooks.as_slice()) {
        (Some(id), _) => webhooks
            .iter()
            .find(|(tid, _)| *tid == id)
            .copied()
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::NOT_FOUND,
                    format!("flow `{flow}` has no webhook trigger `{id}`"),
                )
            }),
        (None, []) => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("flow `{flow}` has no webhook trigger"),
        )),
        (None, [only]) => Ok(*only),
        (None, several) => {
            let ids: Vec<&str> = several.iter().map(|(id, _)| *id).collect();
            Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "flow `{flow}` has several webhook triggers ({}): pick one with ?trigger=ID",
                    ids.join(", ")
                ),
            ))
        }
    }
}

/// Checks every credential the trigger configures.
fn authenticate(
    handle: &OrchestratorHandle,
    trigger: &WebhookTrigger,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Refusal> {
    let unauthorized = |message: &str| Refusal::new(StatusCode::UNAUTHORIZED, message);
    let secret = |name: &str| -> Result<String, Refusal> {
        match handle.store().secret(name)? {
            Some(value) => Ok(value),
            None => {
                warn!(secret = %name, "a webhook trigger's secret is not set (rpaflow secret set); deliveries are refused");
                Err(unauthorized(
                    "the webhook cannot authenticate deliveries: its secret is not set",
                ))
            }
        }
    };
    if trigger.signature_secret.is_none() && trigger.token_secret.is_none() {
        // The parser refuses such a trigger; never start runs for anyone all the same.
        return Err(unauthorized("the webhook names no credentials"));
    }
    if let Some(name) = &trigger.signature_secret {
        let key = secret(name)?;
        let given = headers
            .get(SIGNATURE_HEADER)
            .ok_or_else(|| unauthorized("missing X-Rpaflow-Signature header"))?;
        if !rpaflow_core::signature::verify(key.as_bytes(), body, given.as_bytes()) {
            return Err(unauthorized(
                "X-Rpaflow-Signature does not match the body (expected sha256=<hex HMAC-SHA256>)",
            ));
        }
    }
    if let Some(name) = &trigger.token_secret {
        let token = secret(name)?;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("missing Authorization: Bearer token"))?;
        if !rpaflow_core::signature::same_secret(given.trim().as_bytes(), token.as_bytes()) {
            return Err(unauthorized("the bearer token is not valid"));
        }
    }
    Ok(())
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

/// A trigger's run inputs: its `input` template rendered over `scope`, or `default` (the body, the
/// message) when it has none. Either must be a JSON object; `what` names the default in errors.
/// Shared by webhooks and Kafka triggers.
pub(crate) fn trigger_inputs(
    input: Option<&str>,
    scope: &[(&str, &Json)],
    default: &Json,
    what: &str,
) -> Result<Map<String, Json>, String> {
    let value = match input {
        Some(template) => {
            let ctx = expr::Context::new(&json!({})).with(scope);
            let value = expr::render(&Json::String(template.to_owned()), &ctx)
                .map_err(|e| format!("the trigger's `input` failed: {e}"))?;
            match value {
                Json::Object(map) => return Ok(map),
                other => {
                    return Err(format!(
                        "the trigger's `input` must give an object (the run's inputs), not {}",
                        kind(&other)
                    ));
                }
            }
        }
        None => default,
    };
    match value {
        Json::Object(map) => Ok(map.clone()),
        other => Err(format!(
            "{what} must be a JSON object (the run's inputs), not {}; or give the trigger an `input`",
            kind(other)
        )),
    }
}

fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_come_from_the_template_or_the_value_itself() {
        let body = json!({"customer": {"name": "Ada", "tier": 2}, "n": [1, 2]});
        let headers = json!({"x-source": "crm"});
        let scope = [("body", &body), ("headers", &headers)];
        let mapped = trigger_inputs(Some("{{ body.customer }}"), &scope, &body, "the body");
        assert_eq!(
            Json::Object(mapped.unwrap()),
            json!({"name": "Ada", "tier": 2})
        );
        let err = trigger_inputs(Some("{{ body.n }}"), &scope, &body, "the body").unwrap_err();
        assert!(err.contains("not an array"), "{err}");
        let err = trigger_inputs(Some("{{ body.n | nope }}"), &scope, &body, "the body");
        assert!(err.unwrap_err().contains("`input` failed"));
        assert_eq!(
            Json::Object(trigger_inputs(None, &scope, &body, "the body").unwrap()),
            body
        );
        let err = trigger_inputs(None, &[], &json!(42), "the message").unwrap_err();
        assert!(
            err.starts_with("the message must be a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn headers_in_scope_leave_out_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        headers.insert("x-source", HeaderValue::from_static("crm"));
        headers.append("x-tag", HeaderValue::from_static("a"));
        headers.append("x-tag", HeaderValue::from_static("b"));
        assert_eq!(
            headers_json(&headers),
            json!({"x-source": "crm", "x-tag": "a, b"})
        );
    }
}
