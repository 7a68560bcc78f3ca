//! [`HttpServer`]: a small HTTP API on `127.0.0.1:<free port>` for `http` steps to call. It
//! records every request and behaves like an idempotent API that is down for a while:
//!
//! - [`HttpServer::fail_first`] makes each path under a prefix answer `503` to its first N
//!   *attempts*, an attempt being a distinct `Idempotency-Key` (rpaflow's keys name the run, step,
//!   item and attempt); later attempts get `200` with a JSON body.
//! - A key the server has seen before gets the stored answer again without a new effect, as a
//!   real idempotent API would: a redelivered attempt changes nothing.
//!
//! The server runs on its own thread and runtime, so it keeps answering while a test blocks.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One request as the server saw it, with the answer it gave.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub body: String,
    pub status: u16,
    /// True when the answer was replayed for a key seen before (no new effect).
    pub replayed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    /// (path prefix, how many attempts per path fail); the last matching rule wins.
    rules: Vec<(String, u32)>,
    /// Attempts (distinct keys, or keyless requests) seen per path.
    attempts: HashMap<String, u32>,
    /// The answer given to each (path, key), replayed for repeats.
    answers: HashMap<(String, String), (u16, String)>,
    requests: Vec<Recorded>,
}

type Shared = Arc<Mutex<Inner>>;

/// A recording, scriptable HTTP server; stopped when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    inner: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl HttpServer {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("cannot bind an HTTP port on 127.0.0.1");
        listener
            .set_nonblocking(true)
            .expect("cannot make the listener non-blocking");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let inner: Shared = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = inner.clone();
        let thread = std::thread::Builder::new()
            .name(format!("http-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cannot build the HTTP server's runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("cannot adopt the listener");
                    let app = Router::new().fallback(handle).with_state(state);
                    // No graceful shutdown: a client holding a keep-alive connection must not
                    // keep the test waiting. Dropping the runtime ends every connection.
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("cannot start the HTTP server thread");
        Self {
            addr,
            inner,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every path starting with `prefix` answers 503 to its first `n` attempts from now on
    /// (counting attempts it has already seen); `n = 0` makes it succeed, `u32::MAX` fail for good.
    pub fn fail_first(&self, prefix: &str, n: u32) {
        self.lock().rules.push((prefix.to_owned(), n));
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let path = uri.path().to_owned();
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let key = headers.get("idempotency-key").cloned();
    let mut inner = state.lock().unwrap_or_else(|e| e.into_inner());
    let stored = key
        .as_ref()
        .and_then(|k| inner.answers.get(&(path.clone(), k.clone())).cloned());
    let replayed = stored.is_some();
    let (status, answer) = match stored {
        Some(answer) => answer,
        None => {
            let fail = inner
                .rules
                .iter()
                .rev()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map_or(0, |(_, n)| *n);
            let attempts = inner.attempts.entry(path.clone()).or_insert(0);
            *attempts += 1;
            let attempt = *attempts;
            let answer = if attempt <= fail {
                (
                    503,
                    json!({"error": "unavailable, try again", "attempt": attempt}).to_string(),
                )
            } else {
                (200, json!({"ok": true, "path": path, "key": key, "attempt": attempt, "method": method.as_str()}).to_string())
            };
            if let Some(k) = &key {
                inner
                    .answers
                    .insert((path.clone(), k.clone()), answer.clone());
            }
            answer
        }
    };
    inner.requests.push(Recorded {
        method: method.as_str().to_owned(),
        path,
        headers,
        idempotency_key: key,
        body: String::from_utf8_lossy(&body).into_owned(),
        status,
        replayed,
    });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json")], answer)
}

/// `GET url` over plain HTTP/1.1 (one connection, `Connection: close`): the status and the
/// body.
pub async fn get(url: &str) -> (u16, String) {
    get_with(url, "").await
}

/// [`get`] with extra header lines (each ending in `\r\n`).
pub async fn get_with(url: &str, headers: &str) -> (u16, String) {
    request("GET", url, headers, b"").await
}

/// `POST url` with `body` (JSON) and extra header lines (each ending in `\r\n`): the status and
/// the body of the answer.
pub async fn post_with(url: &str, headers: &str, body: &[u8]) -> (u16, String) {
    let headers = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n{headers}",
        body.len()
    );
    request("POST", url, &headers, body).await
}

async fn request(method: &str, url: &str, headers: &str, body: &[u8]) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {host}: {e}"));
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut raw),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {url} answered in time"))
    .expect("read");
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}
