//! `notify` by webhook: a JSON POST, signed when the step gives a secret.

use std::error::Error as _;

use reqwest::header::CONTENT_TYPE;
use reqwest::{StatusCode, Url};
use rpaflow_core::signature;
use serde_json::{Value as Json, json};

use super::codes;
use crate::egress::{Egress, EgressDenied};
use crate::executors::Input;
use crate::{StepError, TaskContext};

const FIELDS: [&str; 4] = ["channel", "url", "body", "secret"];
pub(super) const SIGNATURE: &str = signature::HEADER;
pub(super) const DELIVERY: &str = signature::DELIVERY_HEADER;
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How much of a refusing response's body goes into the error message.
const SNIPPET_CHARS: usize = 300;

pub(super) async fn send(
    client: &reqwest::Client,
    egress: &Egress,
    ctx: &TaskContext,
    input: &Input<'_>,
) -> Result<Json, StepError> {
    input.deny_unknown(&FIELDS)?;
    let url = Url::parse(input.required_str("url")?.trim())
        .map_err(|e| StepError::invalid_input(format!("`url` is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(StepError::invalid_input(format!(
            "`url` must be http or https, not `{}`",
            url.scheme()
        )));
    }
    // Names are checked as the client resolves them; an address literal is not resolved.
    egress
        .check_url(&url)
        .map_err(EgressDenied::into_step_error)?;
    let request_url = url.clone();
    let target = target(&url);
    let body = serde_json::to_vec(input.required("body")?)
        .map_err(|e| StepError::internal(format!("could not serialize `body`: {e}")))?;
    // The attempt's key is the delivery id too: a redelivered task is the same delivery.
    let delivery = ctx.idempotency_key();
    let mut request = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header(IDEMPOTENCY_KEY, &delivery)
        .header(DELIVERY, &delivery);
    if let Some(secret) = input.str("secret")? {
        let now = rpaflow_core::time::now_s();
        let signed = signature::sign(secret.as_bytes(), now, &delivery, &body);
        request = request.header(SIGNATURE, signed);
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| transport_error(e, &target, &request_url))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let text = text.trim();
        let mut message = format!("{target} answered {status}");
        if !text.is_empty() {
            let snippet: String = text.chars().take(SNIPPET_CHARS).collect();
            message.push_str(&format!(": {snippet}"));
        }
        let retryable = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
        return Err(StepError::new(codes::NOTIFY_FAILED, message, retryable));
    }
    Ok(json!({"status": status.as_u16()}))
}

/// A request that could not be sent: `egress_denied`, `cannot connect to HOST:PORT`, or the
/// error with its causes, never with the URL's query (it may hold secrets).
fn transport_error(err: reqwest::Error, target: &str, url: &Url) -> StepError {
    if let Some(failure) = crate::egress::reqwest_failure(&err, url, codes::NOTIFY_FAILED) {
        return failure;
    }
    let err = err.without_url();
    let mut detail = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    StepError::retryable(codes::NOTIFY_FAILED, format!("{target} failed: {detail}"))
}

/// The webhook as messages name it: `POST` and the URL without query or credentials.
fn target(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    // Both only fail for URLs that cannot have credentials, which then have none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    format!("POST {url}")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode as AxumStatus};
    use axum::routing::post;

    use super::*;
    use crate::Executor;
    use crate::executors::notify::NotifyExecutor;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::Sha256;

    /// What the receiver saw: headers and the raw body bytes.
    type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

    async fn receiver() -> (String, Seen) {
        let seen: Seen = Arc::default();
        async fn hook(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> AxumStatus {
            seen.lock().unwrap().push((headers, body));
            AxumStatus::NO_CONTENT
        }
        async fn broken() -> (AxumStatus, &'static str) {
            (AxumStatus::INTERNAL_SERVER_ERROR, "database is down")
        }
        async fn gone() -> AxumStatus {
            AxumStatus::GONE
        }
        let app = Router::new()
            .route("/hook", post(hook))
            .route("/broken", post(broken))
            .route("/gone", post(gone))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn ctx() -> TaskContext {
        let mut ctx = TaskContext::new("run-9", "tell");
        ctx.attempt = 2;
        ctx
    }

    #[tokio::test]
    async fn signs_the_exact_body_and_sends_the_idempotency_key() {
        let (base, seen) = receiver().await;
        let executor = NotifyExecutor::with_default_client(Egress::permissive()).unwrap();
        let out = executor
            .execute(
                &ctx(),
                json!({"channel": "webhook", "url": format!("{base}/hook?token=t"),
                       "body": {"ticket": 42, "text": "Grüße, \"quoted\""}, "secret": "s3cret"}),
            )
            .await
            .unwrap();
        assert_eq!(out, json!({"status": 204}));
        let seen = seen.lock().unwrap();
        let (headers, body) = &seen[0];
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        // The receiver's check: HMAC-SHA256 of "{t}.{delivery}.{raw body}" under the secret.
        let signed = header(SIGNATURE);
        let (t, tag) = signed
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .unwrap();
        let t: u64 = t.parse().unwrap();
        assert!(t > 1_700_000_000);
        assert_eq!(header(DELIVERY), "run-9/tell/2");
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"s3cret").unwrap();
        mac.update(format!("{t}.run-9/tell/2.").as_bytes());
        mac.update(body);
        assert_eq!(tag, hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            signature::verify(
                b"s3cret",
                signed.as_bytes(),
                "run-9/tell/2",
                body,
                t,
                signature::DEFAULT_TOLERANCE
            ),
            Ok(t)
        );
        assert_eq!(header("idempotency-key"), "run-9/tell/2");
        assert_eq!(header("content-type"), "application/json");
        let sent: Json = serde_json::from_slice(body).unwrap();
        assert_eq!(sent, json!({"ticket": 42, "text": "Grüße, \"quoted\""}));
    }

    #[tokio::test]
    async fn unsigned_without_a_secret() {
        let (base, seen) = receiver().await;
        let executor = NotifyExecutor::with_default_client(Egress::permissive()).unwrap();
        executor
            .execute(
                &ctx(),
                json!({"channel": "webhook", "url": format!("{base}/hook"), "body": [1]}),
            )
            .await
            .unwrap();
        let seen = seen.lock().unwrap();
        assert!(seen[0].0.get(SIGNATURE).is_none());
        assert_eq!(seen[0].0.get(DELIVERY).unwrap(), "run-9/tell/2");
        assert_eq!(&seen[0].1[..], b"[1]");
    }

    #[tokio::test]
    async fn refusals_fail_and_say_whether_to_retry() {
        let (base, _) = receiver().await;
        let executor = NotifyExecutor::with_default_client(Egress::permissive()).unwrap();
        let ctx = ctx();
        let call = |path: &str| {
            executor.execute(
                &ctx,
                json!({"channel": "webhook", "url": format!("{base}{path}?key=hidden"),
                       "body": {}, "secret": "s3cret"}),
            )
        };
        let err = call("/broken").await.unwrap_err();
        assert_eq!(err.code, "notify_failed");
        assert!(err.retryable);
        assert!(err.message.contains("500"), "{}", err.message);
        assert!(err.message.contains("database is down"), "{}", err.message);
        assert!(!err.message.contains("hidden") && !err.message.contains("s3cret"));
        let err = call("/gone").await.unwrap_err();
        assert_eq!(err.code, "notify_failed");
        assert!(!err.retryable);
    }

    #[tokio::test]
    async fn the_egress_policy_is_checked_before_anything_is_sent() {
        let (base, seen) = receiver().await;
        let executor = NotifyExecutor::with_default_client(Egress::default()).unwrap();
        let port = base.rsplit(':').next().unwrap();
        for url in [
            format!("{base}/hook"),
            format!("http://localhost:{port}/hook"),
        ] {
            let err = executor
                .execute(
                    &ctx(),
                    json!({"channel": "webhook", "url": url, "body": {}}),
                )
                .await
                .unwrap_err();
            assert_eq!(err.code, "egress_denied", "{url}: {err}");
            assert!(!err.retryable);
            assert!(
                err.message.ends_with(&format!(
                    ":{port} is denied by the worker's egress policy (worker.egress)"
                )),
                "{}",
                err.message
            );
        }
        assert!(seen.lock().unwrap().is_empty());
    }
}
