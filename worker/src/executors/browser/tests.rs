//! The `browser` executor against the real Chromium and ChromeDriver (installed by
//! `scripts/setup-browser.sh` when missing) and a small web application served on a free port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::{Value as Json, json};

use super::*;

/// The forms the application received, as (field, value) pairs.
type Submissions = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// The default configuration, after installing the browser if it is missing.
fn config() -> BrowserConfig {
    let config = BrowserConfig::default();
    if !config.chromium.is_file() || !config.chromedriver.is_file() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup-browser.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .stdout(Stdio::null())
            .status()
            .expect("scripts/setup-browser.sh runs");
        assert!(status.success(), "{} failed", script.display());
    }
    for path in [&config.chromium, &config.chromedriver] {
        assert!(path.is_file(), "{} is missing after setup", path.display());
    }
    config
}

/// Starts the application: a login page, an order form behind it, a confirmation page.
async fn serve() -> (String, Submissions) {
    let submissions = Submissions::default();
    let app = Router::new()
        .route("/login", get(login_page).post(login))
        .route("/form", get(form_page).post(submit))
        .with_state(submissions.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), submissions)
}

async fn login_page() -> Html<&'static str> {
    Html(
        r#"<!doctype html><html><head><title>Sign in</title></head><body>
        <form method="post" action="/login">
          <input id="username" name="username">
          <input id="password" name="password" type="password">
          <button id="login" type="submit">Sign in</button>
        </form></body></html>"#,
    )
}

async fn login(body: String) -> Response {
    let form = parse_form(&body);
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if field("username") == Some("clerk") && field("password") == Some("s3cret") {
        let headers = [
            (header::LOCATION, "/form"),
            (header::SET_COOKIE, "session=clerk; Path=/"),
        ];
        (StatusCode::SEE_OTHER, headers).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Html("<p id=\"error\">wrong password</p>"),
        )
            .into_response()
    }
}

fn signed_in(headers: &HeaderMap) -> bool {
    headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("session=clerk"))
}

async fn form_page(headers: HeaderMap) -> Response {
    if !signed_in(&headers) {
        return Redirect::to("/login").into_response();
    }
    Html(
        r#"<!doctype html><html><head><title>New order</title></head><body>
        <form method="post" action="/form">
          <input id="customer" name="customer">
          <select id="plan" name="plan">
            <option value="basic">Basic</option>
            <option value="pro">Pro</option>
            <option value="enterprise">Enterprise</option>
          </select>
          <a id="help" href="/help">Help</a>
          <button id="submit" type="submit">Submit</button>
        </form></body></html>"#,
    )
    .into_response()
}

/// Records the form and answers with a table at once and the confirmation a moment later.
async fn submit(
    State(submissions): State<Submissions>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if !signed_in(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let form = parse_form(&body);
    let field = |name: &str| {
        let value = form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        value
            .unwrap_or_default()
            .replace('&', "&amp;")
            .replace('<', "&lt;")
    };
    let page = format!(
        r#"<!doctype html><html><head><title>Confirmation</title></head><body>
        <table id="orders">
          <thead><tr><th>Order</th><th>Customer</th><th>Plan</th></tr></thead>
          <tbody>
            <tr><td>ABC-123</td><td>{}</td><td>{}</td></tr>
            <tr><td>ABC-122</td><td>Grace Hopper</td><td>basic</td></tr>
          </tbody>
        </table>
        <script>
          setTimeout(() => {{
            const p = document.createElement('p');
            p.id = 'confirmation';
            p.textContent = 'Confirmation number: ABC-123';
            document.body.appendChild(p);
          }}, 300);
        </script></body></html>"#,
        field("customer"),
        field("plan"),
    );
    submissions.lock().expect("lock").push(form);
    Html(page).into_response()
}

/// `application/x-www-form-urlencoded` into pairs.
fn parse_form(body: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
}

/// The process ids in a process group (read from `/proc`), with their state letter.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(state, group)| group == pgid && state != 'Z'))
        .collect()
}

/// A process's state letter and process group, or `None` once it is gone.
fn stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ..."; comm may hold spaces, so split after the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    Some((state, fields.next()?.parse().ok()?))
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// Waits until the driver's group holds a browser (the driver and at least one Chromium) and
/// returns the group's members.
async fn browser_processes(executor: &BrowserExecutor) -> (u32, Vec<u32>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(driver) = executor.driver_pid().await {
            let members = group_members(driver);
            if members.len() > 2 {
                return (driver, members);
            }
        }
        assert!(Instant::now() < deadline, "no chromium started within 20s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn all_gone(pids: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_clerk_logs_in_fills_the_form_and_reads_the_confirmation() {
    let started = Instant::now();
    let (base, submissions) = serve().await;
    let shots = tempfile::tempdir().expect("tempdir");
    let executor = BrowserExecutor::new(config(), Egress::permissive());
    let ctx = TaskContext::new("run-1", "order");
    let input = json!({
        "screenshots_dir": shots.path(),
        "actions": [
            {"open": format!("{base}/login")},
            {"fill": {"selector": "#username", "value": "clerk"}},
            {"fill": {"selector": "#password", "value": "s3cret"}},
            {"click": "#login"},
            {"wait_for": "#customer"},
            {"fill": {"selector": "#customer", "value": "Ada Lovelace"}},
            {"select": {"selector": "#plan", "value": "pro"}},
            {"read_attribute": {"selector": "#help", "attribute": "href", "as": "help"}},
            {"read_attribute": {"selector": "#help", "attribute": "data-none", "as": "none"}},
            {"click": "#submit"},
            {"wait_for": {"selector": "#confirmation", "timeout": "5s"}},
            {"read_text": {"selector": "#confirmation", "as": "confirmation"}},
            {"read_table": {"selector": "#orders", "as": "orders"}},
            {"screenshot": {"as": "confirmation"}},
        ]
    });
    let output = executor.execute(&ctx, input).await;
    executor.shutdown().await;
    let output = output.unwrap_or_else(|e| panic!("{e}"));

    let values = &output["values"];
    assert_eq!(values["confirmation"], "Confirmation number: ABC-123");
    assert_eq!(
        values["orders"],
        json!([
            {"Order": "ABC-123", "Customer": "Ada Lovelace", "Plan": "pro"},
            {"Order": "ABC-122", "Customer": "Grace Hopper", "Plan": "basic"},
        ])
    );
    let help = values["help"].as_str().unwrap_or_default();
    assert!(help.ends_with("/help"), "{help}");
    assert_eq!(values["none"], Json::Null);
    assert_eq!(output["title"], "Confirmation");
    assert_eq!(output["url"], format!("{base}/form"));

    let submitted = submissions.lock().expect("lock").clone();
    let expected = [("customer", "Ada Lovelace"), ("plan", "pro")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec();
    assert_eq!(submitted, [expected]);

    let shot = PathBuf::from(
        output["screenshots"]["confirmation"]
            .as_str()
            .unwrap_or_default(),
    );
    assert!(shot.starts_with(shots.path()), "{}", shot.display());
    assert_png(&shot);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_failing_action_names_its_index_and_selector_and_keeps_a_screenshot() {
    let (base, _) = serve().await;
    let shots = tempfile::tempdir().expect("tempdir");
    let executor = BrowserExecutor::new(config(), Egress::permissive());
    let ctx = TaskContext::new("run-2", "order");
    let missing_button = json!({
        "screenshots_dir": shots.path(),
        "actions": [
            {"open": format!("{base}/login")},
            {"wait_for": "#username"},
            {"click": "#does-not-exist", "timeout": "500ms"},
        ]
    });
    let err = executor.execute(&ctx, missing_button).await.unwrap_err();
    assert_eq!(err.code, codes::BROWSER_ACTION, "{err}");
    assert!(!err.retryable);
    assert!(
        err.message
            .starts_with("actions[2] click `#does-not-exist`: no element matches"),
        "{}",
        err.message
    );
    let (_, shot) = err
        .message
        .split_once("; screenshot: ")
        .expect("a screenshot path");
    assert!(Path::new(shot).starts_with(shots.path()), "{shot}");
    assert_png(Path::new(shot));
    let first_driver = executor.driver_pid().await;

    // An element that never appears is a timeout, worth another attempt; same driver.
    let slow_page = json!({
        "screenshots_dir": shots.path(),
        "default_timeout": "300ms",
        "actions": [
            {"open": format!("{base}/login")},
            {"wait_for": "#confirmation"},
        ]
    });
    let err = executor.execute(&ctx, slow_page).await.unwrap_err();
    assert_eq!(err.code, codes::BROWSER_TIMEOUT, "{err}");
    assert!(err.retryable);
    assert!(
        err.message
            .starts_with("actions[1] wait_for `#confirmation`"),
        "{}",
        err.message
    );
    assert!(err.message.contains("; screenshot: "), "{}", err.message);
    assert_eq!(executor.driver_pid().await, first_driver);
    executor.shutdown().await;
}

#[tokio::test]
async fn shutdown_leaves_no_browser_process_behind() {
    let (base, _) = serve().await;
    let executor = Arc::new(BrowserExecutor::new(config(), Egress::permissive()));
    let step = tokio::spawn({
        let executor = executor.clone();
        let input = json!({"actions": [
            {"open": format!("{base}/login")},
            {"wait_for": {"selector": "#never", "timeout": "60s"}},
        ]});
        async move {
            let ctx = TaskContext::new("run-3", "wait");
            executor.execute(&ctx, input).await
        }
    });
    let (driver, processes) = browser_processes(&executor).await;
    assert!(processes.contains(&driver));

    executor.shutdown().await;
    let err = step.await.expect("step task").unwrap_err();
    assert_eq!(err.code, codes::BROWSER_UNAVAILABLE, "{err}");
    assert_eq!(
        all_gone(&processes).await,
        Vec::<u32>::new(),
        "still running"
    );
    assert_eq!(executor.driver_pid().await, None);

    let later = json!({"actions": [{"open": format!("{base}/login")}]});
    let err = executor
        .execute(&TaskContext::new("run-3", "later"), later)
        .await
        .unwrap_err();
    assert_eq!(err.code, codes::BROWSER_UNAVAILABLE);
    assert!(err.message.contains("shut down"), "{}", err.message);
}

#[tokio::test]
async fn cancelling_the_run_closes_the_browsing_context() {
    let (base, _) = serve().await;
    let executor = Arc::new(BrowserExecutor::new(config(), Egress::permissive()));
    let ctx = TaskContext::new("run-4", "wait");
    let cancel = ctx.cancel.clone();
    let step = tokio::spawn({
        let executor = executor.clone();
        let input = json!({"actions": [
            {"open": format!("{base}/login")},
            {"wait_for": {"selector": "#never", "timeout": "60s"}},
        ]});
        async move { executor.execute(&ctx, input).await }
    });
    let (driver, processes) = browser_processes(&executor).await;
    let browser: Vec<u32> = processes.into_iter().filter(|p| *p != driver).collect();

    cancel.cancel();
    let err = tokio::time::timeout(Duration::from_secs(10), step)
        .await
        .expect("the step stops when cancelled")
        .expect("step task")
        .unwrap_err();
    assert_eq!(err.code, crate::codes::CANCELLED, "{err}");
    // The context's Chromium is gone; the shared driver stays for the next step.
    assert_eq!(all_gone(&browser).await, Vec::<u32>::new(), "still running");
    assert!(alive(driver));
    executor.shutdown().await;
    assert!(!alive(driver));
}

#[tokio::test]
async fn a_missing_browser_is_unavailable_and_bad_input_starts_nothing() {
    let executor = BrowserExecutor::new(
        BrowserConfig {
            chromedriver: PathBuf::from("/nonexistent/chromedriver"),
            ..BrowserConfig::default()
        },
        Egress::permissive(),
    );
    let ctx = TaskContext::new("run-5", "open");
    let err = executor
        .execute(&ctx, json!({"actions": [{"open": "http://127.0.0.1:9/"}]}))
        .await
        .unwrap_err();
    assert_eq!(err.code, codes::BROWSER_UNAVAILABLE);
    assert!(err.retryable);
    assert!(
        err.message
            .starts_with("chromedriver not found at /nonexistent/chromedriver"),
        "{}",
        err.message
    );

    let executor = BrowserExecutor::new(config(), Egress::permissive());
    let err = executor
        .execute(&ctx, json!({"actions": [{"click": {"selector": "#a"}}]}))
        .await
        .unwrap_err();
    assert_eq!(err.code, crate::codes::INVALID_INPUT);
    assert_eq!(executor.driver_pid().await, None);
}

/// Names the tests resolve: `app.test` is the loopback application, allowed by name.
struct TestNames;

#[async_trait]
impl crate::egress::Lookup for TestNames {
    async fn lookup(&self, host: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
        match host {
            "app.test" | "internal.test" => Ok(vec![std::net::Ipv4Addr::LOCALHOST.into()]),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such name",
            )),
        }
    }
}

#[tokio::test]
async fn pages_reach_only_what_the_egress_policy_allows() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route(
            "/",
            get(|| async { Html("<!doctype html><title>Home</title><p id=ok>home</p>") }),
        )
        .route(
            "/to-loopback",
            get(move || async move { Redirect::temporary(&format!("http://127.0.0.1:{port}/")) }),
        )
        .route(
            "/pixel",
            get(move || async move {
                Html(format!(
                    "<!doctype html><title>Pixel</title><img src='http://internal.test:{port}/'>\
                     <p id=ok>pixel</p>"
                ))
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let policy = crate::egress::EgressPolicy::new(&crate::egress::EgressConfig {
        allow_hosts: vec!["app.test".into()],
        ..Default::default()
    })
    .unwrap();
    let executor = BrowserExecutor::new(config(), Egress::with_lookup(policy, Arc::new(TestNames)));
    let ctx = TaskContext::new("run-egress", "browse");
    let step = |path: &str| json!({"actions": [{"open": path}, {"read_text": {"selector": "#ok", "as": "text"}}]});

    let out = executor
        .execute(&ctx, step(&format!("http://app.test:{port}/")))
        .await
        .unwrap();
    assert_eq!(out["values"]["text"], "home");

    let denied = |host: &str| {
        format!("egress to {host}:{port} is denied by the worker's egress policy (worker.egress)")
    };
    for (url, host) in [
        (format!("http://127.0.0.1:{port}/"), "127.0.0.1"),
        (format!("http://app.test:{port}/to-loopback"), "127.0.0.1"),
        (format!("http://app.test:{port}/pixel"), "internal.test"),
    ] {
        let err = executor.execute(&ctx, step(&url)).await.unwrap_err();
        assert_eq!(err.code, "egress_denied", "{url}: {err}");
        assert!(!err.retryable);
        assert!(
            err.message
                .starts_with(&format!("actions[0] open `{url}`: {}", denied(host))),
            "{url}: {}",
            err.message
        );
    }
    executor.shutdown().await;
}

#[tokio::test]
async fn executors_under_two_policies_share_one_chromedriver() {
    let (url, _) = serve().await;
    let open = BrowserExecutor::new(config(), Egress::permissive());
    let team_a = crate::egress::EgressPolicy::for_namespace("team-a", &Default::default()).unwrap();
    let closed = open.with_egress(Egress::new(team_a));
    let ctx = TaskContext::new("run-ns", "browse");
    let step = json!({"actions": [{"open": format!("{url}/login")}]});

    open.execute(&ctx, step.clone()).await.unwrap();
    let driver = open.driver_pid().await;
    assert!(driver.is_some());
    let err = closed.execute(&ctx, step.clone()).await.unwrap_err();
    assert_eq!(err.code, "egress_denied", "{err}");
    assert!(
        err.message
            .contains("is denied by the worker's egress policy (worker.egress_namespaces.team-a);"),
        "{}",
        err.message
    );
    assert_eq!(
        closed.driver_pid().await,
        driver,
        "one chromedriver for both"
    );

    // Shutting one down stops the driver for both.
    closed.shutdown().await;
    assert_eq!(open.driver_pid().await, None);
    assert!(!alive(driver.unwrap()));
    let err = open.execute(&ctx, step).await.unwrap_err();
    assert_eq!(err.code, codes::BROWSER_UNAVAILABLE);
}
