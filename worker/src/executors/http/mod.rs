//! `http`: calls an API.
//!
//! # Input
//! | field | meaning |
//! |---|---|
//! | `url` | required; `http` or `https` |
//! | `method` | `GET` (default), `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE` or `OPTIONS` |
//! | `headers` | mapping of header name to a string, number or boolean |
//! | `query` | mapping of parameter to a scalar or a list of scalars (repeated), added to the URL |
//! | `body` | any JSON; sent as JSON unless it is a string |
//! | `json` | force (`true`) or refuse (`false`) sending `body` as JSON; a string body with `json: false` or unset is sent as text |
//! | `expect_status` | a status code or a list of them; by default any 2xx |
//! | `timeout` | a limit for this request (`"10s"`); the step's own timeout applies anyway |
//!
//! Every request carries an `Idempotency-Key` header with the task's key (see
//! [`TaskContext::idempotency_key`]) unless `headers` sets one, and the task's W3C trace
//! context (`traceparent`, `tracestate`) when it has one.
//!
//! # Output
//! `{status, headers, body}`: the status code; the response headers (lowercase names, repeated
//! headers joined with `", "`); and the body, parsed when the response says it is JSON
//! (`application/json` or `*+json`) and valid, else as text (invalid UTF-8 replaced). An empty
//! JSON body is `null`.
//!
//! # Errors
//! - `egress_denied`: the egress policy of the step's namespace (`worker.egress`, or
//!   `worker.egress_namespaces.<namespace>`; see [`crate::egress`]) denies
//!   the URL's host or a redirect's; nothing was sent there. The message is the same whether
//!   anything listens there or not.
//! - `http_status`: the status is not expected. Retryable for 5xx, 429 and 408. The message holds
//!   the start of the response body, which is usually the API's explanation.
//! - `http_connect` (retryable): the request could not be sent or the response read. When no
//!   connection could be made the message is `cannot connect to HOST:PORT` however it failed
//!   (refused, timed out, no such name), with the detail of a TLS failure only. Too many
//!   redirects is the same code, not retryable.
//! - `timeout` (retryable): the request's own `timeout` passed.
//! - `payload_too_large`: the response body is over the task's output limit; it is read no further.
//! - `invalid_input`: a bad field, named in the message.
//!
//! Messages name the request as method, scheme, host and path: never the query string or user
//! information, which may hold credentials.

mod request;

use std::error::Error as _;
use std::sync::Once;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use tracing::Instrument as _;

use self::request::{Body, Expect, Request};
use crate::egress::{Egress, EgressDenied};
use crate::{Error, Executor, StepError, TaskContext, codes};

/// Settings shared by every request of the `http` executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// The `User-Agent` header.
    pub user_agent: String,
    /// How long to wait for a connection.
    #[serde(with = "crate::duration")]
    pub connect_timeout: Duration,
    /// How many redirects to follow.
    pub max_redirects: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            user_agent: concat!("rpaflow-worker/", env!("CARGO_PKG_VERSION")).to_owned(),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 10,
        }
    }
}

/// The `http` executor: one connection pool for every task, resolving through the worker's
/// egress policy.
#[derive(Debug, Clone)]
pub struct HttpExecutor {
    client: reqwest::Client,
    egress: Egress,
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The name of the CLIENT span of a request (shown as its method, per the conventions).
pub const HTTP_SPAN: &str = "http";
/// Trace-context headers passed on from the task.
const PROPAGATED: [&str; 2] = ["traceparent", "tracestate"];
/// How much of an unexpected response's body goes into the error message.
const SNIPPET_CHARS: usize = 300;

impl HttpExecutor {
    /// An executor whose requests, and every redirect they follow, go only where `egress`
    /// allows.
    pub fn new(config: HttpConfig, egress: Egress) -> crate::Result<Self> {
        install_crypto_provider();
        let client = egress
            .http_client_builder()
            .user_agent(config.user_agent)
            .connect_timeout(config.connect_timeout)
            .redirect(egress.redirect_policy(config.max_redirects))
            .build()
            .map_err(|source| Error::HttpClient { source })?;
        Ok(Self { client, egress })
    }
}

/// reqwest is built without a TLS crypto provider of its own; rustls's `ring` one is installed
/// once per process (unless the process installed another first).
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means a provider is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[async_trait]
impl Executor for HttpExecutor {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn receives_secrets(&self) -> bool {
        true
    }

    async fn execute(&self, ctx: &TaskContext, input: Json) -> Result<Json, StepError> {
        let request = Request::parse(&input)?;
        let target = request.target();
        // Names are checked as the client resolves them; an address literal is not resolved.
        self.egress
            .check_url(&request.url)
            .map_err(EgressDenied::into_step_error)?;
        let span = tracing::info_span!(
            HTTP_SPAN,
            otel.name = %request.method,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            http.request.method = %request.method,
            http.response.status_code = tracing::field::Empty,
            server.address = request.url.host_str().unwrap_or_default(),
            server.port = request.url.port_or_known_default(),
            url.scheme = request.url.scheme(),
        );
        let outcome = self
            .call(ctx, request, target, &span)
            .instrument(span.clone())
            .await;
        if let Err(err) = &outcome {
            rpaflow_core::telemetry::run_trace::record_error(&span, &err.code);
        }
        outcome
    }
}

impl HttpExecutor {
    /// Sends the request in `span` (the CLIENT span, whose context the request carries).
    async fn call(
        &self,
        ctx: &TaskContext,
        request: Request,
        target: String,
        span: &tracing::Span,
    ) -> Result<Json, StepError> {
        let url = request.url.clone();
        let mut builder = self
            .client
            .request(request.method.clone(), request.url)
            .headers(request.headers.clone());
        if !request.headers.contains_key(IDEMPOTENCY_KEY) {
            builder = builder.header(IDEMPOTENCY_KEY, ctx.idempotency_key());
        }
        // The request's parent is this CLIENT span when traces are exported, else the task's.
        let own = rpaflow_core::telemetry::run_trace::traceparent_of(span);
        for name in PROPAGATED {
            let value = match (name, &own) {
                ("traceparent", Some(own)) => Some(own),
                _ => ctx.headers.get(name),
            };
            if let Some(value) = value
                && !request.headers.contains_key(name)
            {
                builder = builder.header(name, value);
            }
        }
        match request.body {
            Some(Body::Json(value)) => builder = builder.json(&value),
            Some(Body::Text(text)) => {
                if !request.headers.contains_key(CONTENT_TYPE) {
                    builder = builder.header(CONTENT_TYPE, "text/plain; charset=utf-8");
                }
                builder = builder.body(text);
            }
            None => {}
        }
        if let Some(timeout) = request.timeout {
            builder = builder.timeout(timeout);
        }

        let mut response = builder
            .send()
            .await
            .map_err(|e| transport_error(e, &target, &url))?;
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if !request.expect.matches(status) {
            let (snippet, _) = read_capped(&mut response, SNIPPET_CHARS * 4, &target, &url).await?;
            return Err(status_error(status, &request.expect, &target, &snippet));
        }
        let limit = ctx.max_output_bytes;
        // A HEAD response announces the length of a body it does not send.
        if request.method != Method::HEAD
            && let Some(length) = response.content_length()
            && usize::try_from(length).map_or(true, |n| n > limit)
        {
            return Err(StepError::payload_too_large(
                "response body",
                usize::try_from(length).unwrap_or(usize::MAX),
                limit,
            ));
        }
        let headers = headers_json(response.headers());
        let is_json = is_json(response.headers());
        let (bytes, complete) = read_capped(&mut response, limit, &target, &url).await?;
        if !complete {
            return Err(StepError::permanent(
                codes::PAYLOAD_TOO_LARGE,
                format!("response body is over the limit of {limit} bytes"),
            ));
        }
        Ok(json!({
            "status": status.as_u16(),
            "headers": headers,
            "body": decode_body(&bytes, is_json),
        }))
    }
}

/// Reads at most `limit` bytes of the body; the flag is false when there was more.
async fn read_capped(
    response: &mut reqwest::Response,
    limit: usize,
    target: &str,
    url: &reqwest::Url,
) -> Result<(Vec<u8>, bool), StepError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(e, target, url))?
    {
        if body.len() + chunk.len() > limit {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

fn decode_body(bytes: &[u8], is_json: bool) -> Json {
    if is_json {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Json::Null;
        }
        if let Ok(value) = serde_json::from_slice(bytes) {
            return value;
        }
        tracing::debug!("response says it is JSON but does not parse; kept as text");
    }
    Json::String(String::from_utf8_lossy(bytes).into_owned())
}

fn headers_json(headers: &HeaderMap) -> Json {
    let mut map = Map::new();
    for (name, value) in headers {
        let text = String::from_utf8_lossy(value.as_bytes());
        match map.get_mut(name.as_str()) {
            Some(Json::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&text);
            }
            _ => {
                map.insert(name.as_str().to_owned(), Json::String(text.into_owned()));
            }
        }
    }
    Json::Object(map)
}

fn status_error(status: StatusCode, expect: &Expect, target: &str, body: &[u8]) -> StepError {
    let retryable = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut message = format!(
        "{target} answered {status} (expected {})",
        expect.describe()
    );
    if !text.is_empty() {
        let snippet: String = text.chars().take(SNIPPET_CHARS).collect();
        let more = if snippet.len() < text.len() {
            "…"
        } else {
            ""
        };
        message.push_str(&format!(": {snippet}{more}"));
    }
    StepError::new(codes::HTTP_STATUS, message, retryable)
}

/// A reqwest error as a step error: `egress_denied`, `cannot connect to HOST:PORT`, or the error
/// with its causes but without the URL's query (it may hold secrets).
fn transport_error(err: reqwest::Error, target: &str, url: &reqwest::Url) -> StepError {
    if let Some(failure) = crate::egress::reqwest_failure(&err, url, codes::HTTP_CONNECT) {
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
    if err.is_timeout() {
        StepError::retryable(codes::TIMEOUT, format!("{target} timed out: {detail}"))
    } else if err.is_redirect() {
        StepError::permanent(codes::HTTP_CONNECT, format!("{target}: {detail}"))
    } else if err.is_builder() {
        StepError::invalid_input(format!("{target} cannot be sent: {detail}"))
    } else {
        StepError::retryable(codes::HTTP_CONNECT, format!("{target} failed: {detail}"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::extract::{Path, RawQuery};
    use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};
    use axum::routing::{any, get};

    use super::*;

    /// An API to call: answers what it received, fixed statuses, text, large and slow bodies.
    async fn server() -> String {
        async fn echo(
            method: axum::http::Method,
            headers: AxumHeaders,
            RawQuery(query): RawQuery,
            body: String,
        ) -> axum::Json<Json> {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            axum::Json(json!({
                "method": method.as_str(),
                "idempotency_key": header("idempotency-key"),
                "content_type": header("content-type"),
                "api_key": header("x-api-key"),
                "query": query,
                "body": body,
            }))
        }
        async fn status(Path(code): Path<u16>) -> (AxumStatus, &'static str) {
            (
                AxumStatus::from_u16(code).unwrap(),
                "{\"error\": \"quota exceeded\"}",
            )
        }
        let app = Router::new()
            .route("/echo", any(echo))
            .route("/status/{code}", get(status))
            .route("/text", get(|| async { "plain words" }))
            .route("/big", get(|| async { "x".repeat(10_000) }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn executor() -> HttpExecutor {
        HttpExecutor::new(HttpConfig::default(), Egress::permissive()).unwrap()
    }

    fn ctx() -> TaskContext {
        let mut ctx = TaskContext::new("run-7", "notify");
        ctx.attempt = 3;
        ctx
    }

    #[tokio::test]
    async fn sends_the_idempotency_key_and_parses_json() {
        let base = server().await;
        let out = executor()
            .execute(&ctx(), json!({"url": format!("{base}/echo")}))
            .await
            .unwrap();
        assert_eq!(out["status"], 200);
        assert_eq!(out["headers"]["content-type"], "application/json");
        assert_eq!(out["body"]["method"], "GET");
        assert_eq!(out["body"]["idempotency_key"], "run-7/notify/3");
    }

    #[tokio::test]
    async fn posts_json_with_headers_and_query() {
        let base = server().await;
        let out = executor()
            .execute(
                &ctx(),
                json!({
                    "method": "post",
                    "url": format!("{base}/echo"),
                    "headers": {"X-Api-Key": "k1", "Idempotency-Key": "mine"},
                    "query": {"page": 2, "tag": ["a", "b"], "skip": null},
                    "body": {"name": "Ada"},
                }),
            )
            .await
            .unwrap();
        let body = &out["body"];
        assert_eq!(body["method"], "POST");
        assert_eq!(body["api_key"], "k1");
        assert_eq!(body["idempotency_key"], "mine");
        assert_eq!(body["content_type"], "application/json");
        assert_eq!(body["query"], "page=2&tag=a&tag=b");
        assert_eq!(body["body"], "{\"name\":\"Ada\"}");
    }

    #[tokio::test]
    async fn string_bodies_go_as_text_and_text_comes_back_as_text() {
        let base = server().await;
        let out = executor()
            .execute(
                &ctx(),
                json!({"method": "PUT", "url": format!("{base}/echo"), "body": "hello"}),
            )
            .await
            .unwrap();
        assert_eq!(out["body"]["body"], "hello");
        assert_eq!(out["body"]["content_type"], "text/plain; charset=utf-8");
        let out = executor()
            .execute(&ctx(), json!({"url": format!("{base}/text")}))
            .await
            .unwrap();
        assert_eq!(out["body"], "plain words");
    }

    #[tokio::test]
    async fn unexpected_statuses_fail_and_say_whether_to_retry() {
        let base = server().await;
        let call = |code: u16, expect: Json| {
            let base = base.clone();
            async move {
                executor()
                    .execute(
                        &ctx(),
                        json!({"url": format!("{base}/status/{code}?token=secret"), "expect_status": expect}),
                    )
                    .await
            }
        };
        let err = call(503, Json::Null).await.unwrap_err();
        assert_eq!(err.code, "http_status");
        assert!(err.retryable);
        assert!(
            err.message.contains("503 Service Unavailable"),
            "{}",
            err.message
        );
        assert!(err.message.contains("quota exceeded"), "{}", err.message);
        assert!(!err.message.contains("secret"), "{}", err.message);
        assert!(call(429, Json::Null).await.unwrap_err().retryable);
        assert!(call(408, Json::Null).await.unwrap_err().retryable);
        let err = call(404, Json::Null).await.unwrap_err();
        assert!(!err.retryable);
        assert!(err.message.contains("(expected 2xx)"), "{}", err.message);
        // An expected 404 is a success.
        let out = call(404, json!([200, 404])).await.unwrap();
        assert_eq!(out["status"], 404);
        assert_eq!(out["body"], "{\"error\": \"quota exceeded\"}");
        assert_eq!(call(201, json!(201)).await.unwrap()["status"], 201);
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let base = server().await;
        let mut ctx = ctx();
        ctx.max_output_bytes = 1_000;
        let err = executor()
            .execute(&ctx, json!({"url": format!("{base}/big")}))
            .await
            .unwrap_err();
        assert_eq!(err.code, "payload_too_large");
        assert!(!err.retryable);
        assert!(err.message.contains("1000 bytes"), "{}", err.message);
        ctx.max_output_bytes = 10_000;
        let out = executor()
            .execute(&ctx, json!({"url": format!("{base}/big")}))
            .await
            .unwrap();
        assert_eq!(out["body"].as_str().unwrap().len(), 10_000);
    }

    #[tokio::test]
    async fn connection_failures_and_timeouts_are_retryable() {
        // A port that was just free: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = executor()
            .execute(&ctx(), json!({"url": format!("http://{addr}/")}))
            .await
            .unwrap_err();
        assert_eq!(err.code, "http_connect");
        assert!(err.retryable);

        let base = server().await;
        let err = executor()
            .execute(
                &ctx(),
                json!({"url": format!("{base}/slow"), "timeout": "100ms"}),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code, "timeout");
        assert!(err.retryable);
    }

    /// Names the tests resolve: both lead to loopback; the policy allows `app.test` by name.
    struct TestNames;

    #[async_trait]
    impl crate::egress::Lookup for TestNames {
        async fn lookup(&self, host: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
            match host {
                "app.test" | "intranet.test" => Ok(vec![std::net::Ipv4Addr::LOCALHOST.into()]),
                "v6.test" => Ok(vec!["::ffff:10.0.0.5".parse().unwrap()]),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such name",
                )),
            }
        }
    }

    /// The production default, with `app.test` allowed by name and the test resolver.
    fn guarded() -> HttpExecutor {
        let policy = crate::egress::EgressPolicy::new(&crate::egress::EgressConfig {
            allow_hosts: vec!["app.test".into()],
            ..Default::default()
        })
        .unwrap();
        let egress = Egress::with_lookup(policy, std::sync::Arc::new(TestNames));
        HttpExecutor::new(HttpConfig::default(), egress).unwrap()
    }

    fn denied(destination: &str) -> String {
        format!("egress to {destination} is denied by the worker's egress policy (worker.egress)")
    }

    /// A server whose `/to?url=U` redirects to `U`.
    async fn redirector() -> u16 {
        async fn to(RawQuery(query): RawQuery) -> axum::response::Redirect {
            let url =
                reqwest::Url::parse(&format!("http://x/?{}", query.unwrap_or_default())).unwrap();
            let (_, to) = url.query_pairs().find(|(k, _)| k == "url").unwrap();
            axum::response::Redirect::temporary(&to)
        }
        let app = Router::new()
            .route("/to", get(to))
            .route("/ok", get(|| async { "reached" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    #[tokio::test]
    async fn loopback_is_denied_by_default() {
        let base = server().await;
        let addr = base.trim_start_matches("http://");
        let err = HttpExecutor::new(HttpConfig::default(), Egress::default())
            .unwrap()
            .execute(&ctx(), json!({"url": format!("{base}/echo")}))
            .await
            .unwrap_err();
        assert_eq!(err.code, "egress_denied");
        assert!(!err.retryable);
        assert_eq!(err.message, denied(addr));
        let port = addr.rsplit(':').next().unwrap();
        for (host, shown) in [
            ("[::1]", format!("[::1]:{port}")),
            ("[::ffff:127.0.0.1]", format!("[::ffff:7f00:1]:{port}")),
            ("169.254.169.254", format!("169.254.169.254:{port}")),
        ] {
            let err = guarded()
                .execute(&ctx(), json!({"url": format!("http://{host}:{port}/")}))
                .await
                .unwrap_err();
            assert_eq!(
                (err.code.as_str(), err.message),
                ("egress_denied", denied(&shown))
            );
        }
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_denied() {
        let port = redirector().await;
        // Allowed by name: reached, although it resolves to loopback.
        let out = guarded()
            .execute(&ctx(), json!({"url": format!("http://app.test:{port}/ok")}))
            .await
            .unwrap();
        assert_eq!(out["body"], "reached");
        for host in ["intranet.test", "v6.test"] {
            let err = guarded()
                .execute(&ctx(), json!({"url": format!("http://{host}:{port}/ok")}))
                .await
                .unwrap_err();
            assert_eq!(err.code, "egress_denied", "{host}: {err}");
            assert_eq!(err.message, denied(&format!("{host}:{port}")));
        }
    }

    #[tokio::test]
    async fn every_redirect_hop_is_checked() {
        let port = redirector().await;
        for (to, shown) in [
            (
                format!("http://127.0.0.1:{port}/ok"),
                format!("127.0.0.1:{port}"),
            ),
            // The resolver that refuses a redirect's name does not know its port.
            (
                format!("http://intranet.test:{port}/ok"),
                "intranet.test".to_owned(),
            ),
            (format!("http://[::1]:{port}/ok"), format!("[::1]:{port}")),
        ] {
            let url = reqwest::Url::parse_with_params(
                &format!("http://app.test:{port}/to"),
                [("url", to.as_str())],
            )
            .unwrap();
            let err = guarded()
                .execute(&ctx(), json!({"url": url.as_str()}))
                .await
                .unwrap_err();
            assert_eq!(err.code, "egress_denied", "{to}: {err}");
            assert!(!err.retryable);
            assert_eq!(err.message, denied(&shown));
        }
        // A hop that stays on the allowed name is followed.
        let url = reqwest::Url::parse_with_params(
            &format!("http://app.test:{port}/to"),
            [("url", format!("http://app.test:{port}/ok"))],
        )
        .unwrap();
        let out = guarded()
            .execute(&ctx(), json!({"url": url.as_str()}))
            .await
            .unwrap();
        assert_eq!(out["body"], "reached");
    }

    #[tokio::test]
    async fn open_and_closed_ports_read_alike() {
        let open = redirector().await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Denied: one message, whether anything listens.
        let mut messages = Vec::new();
        for port in [open, closed] {
            for host in ["127.0.0.1", "intranet.test"] {
                let err = guarded()
                    .execute(&ctx(), json!({"url": format!("http://{host}:{port}/ok")}))
                    .await
                    .unwrap_err();
                assert_eq!(err.code, "egress_denied");
                messages.push(err.message.replace(&port.to_string(), "PORT"));
            }
        }
        assert_eq!(messages[..2], messages[2..]);
        // Allowed but closed, or a name that does not resolve: the same words.
        let err = executor()
            .execute(
                &ctx(),
                json!({"url": format!("http://127.0.0.1:{closed}/")}),
            )
            .await
            .unwrap_err();
        assert_eq!(
            (err.code.as_str(), err.retryable, err.message),
            (
                "http_connect",
                true,
                format!("cannot connect to 127.0.0.1:{closed}")
            )
        );
        let err = guarded()
            .execute(&ctx(), json!({"url": "http://nowhere.test:8080/"}))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code.as_str(), err.message),
            (
                "http_connect",
                "cannot connect to nowhere.test:8080".to_owned()
            )
        );
    }
}
