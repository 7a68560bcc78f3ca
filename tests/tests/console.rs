//! The web console (issue 16) in a real headless Chromium, against `rpaflow dev` with API tokens
//! on: a signed-out visitor sees only the sign-in; an admin starts the customer-service example
//! from the flow's page, watches its diagram turn green step by step (live, without reloading),
//! approves the refund from the approvals inbox in another tab (signed in there too: the
//! session is kept per tab), and sees the run succeed; a user
//! of another namespace sees none of it. Every page is saved as a screenshot under
//! `target/console-screenshots/`.

use std::collections::HashMap;
use std::time::Duration;

use rpaflow_tests::{Browser, Dev, setup_script, workspace_root};
use serde_json::json;

/// The customer-service flow's steps, and the steps each needs.
const NEEDS: &[(&str, &[&str])] = &[
    ("collect", &[]),
    ("table", &[]),
    ("clean", &["collect"]),
    ("rows", &["clean"]),
    ("store", &["rows", "table"]),
    ("handle", &["clean", "store"]),
];

/// Where the run page's diagram and its step rows are on the page (not the viewport): the same
/// while a run updates.
const LAYOUT: &str = "const r = (e) => { const b = e.getBoundingClientRect(); \
     return [b.x + scrollX, b.y + scrollY, b.width, b.height]; }; \
     return [r(document.querySelector('svg.diagram')), \
     ...[...document.querySelectorAll('details.step summary')].map(r)];";

/// A flow with a schedule, for the schedules page.
const NIGHTLY: &str = r#"
name: nightly-report
description: A report every night
triggers:
  - { id: nightly, schedule: { cron: "0 2 * * *" } }
steps:
  - id: report
    uses: log
    with: { message: "nightly" }
"#;

/// The status of each step as the run page's diagram shows it.
async fn diagram(browser: &Browser) -> HashMap<String, String> {
    let shown = browser
        .eval(
            "return Object.fromEntries([...document.querySelectorAll('svg.diagram g.node')]\
             .map(g => [g.dataset.step, g.dataset.status]));",
        )
        .await;
    serde_json::from_value(shown).expect("a map of step to status")
}

/// Watches the diagram until step `until` is green, noting the order in which steps first turn
/// green and whether the diagram was ever partly green.
async fn watch(
    browser: &Browser,
    first_green: &mut Vec<String>,
    saw_partial: &mut bool,
    until: &str,
) {
    browser
        .until(&format!("step `{until}` to succeed"), async || {
            let shown = diagram(browser).await;
            for (step, _) in NEEDS {
                if shown.get(*step).map(String::as_str) == Some("succeeded")
                    && !first_green.iter().any(|s| s == step)
                {
                    first_green.push((*step).to_owned());
                }
            }
            let green = shown.values().filter(|s| *s == "succeeded").count();
            *saw_partial |= green > 0 && green < NEEDS.len();
            shown.get(until).map(String::as_str) == Some("succeeded")
        })
        .await;
}

/// Signs in through the sign-in page and waits for the console's navigation.
async fn sign_in(browser: &Browser, token: &str) {
    browser.type_into("#token", token).await;
    browser.click(".signin button[type=submit]").await;
    browser.find("header.top nav").await;
}

async fn sign_out(browser: &Browser) {
    browser.click("header.top .who button").await;
    browser.find("form.signin").await;
}

/// What a signed-out visitor sees: the sign-in form, no navigation, no data.
async fn only_sign_in(browser: &Browser, url: &str, secret: &str) {
    browser.goto(url).await;
    browser.find("form.signin").await;
    assert!(browser.all("header.top").await.is_empty(), "{url}");
    assert!(browser.all("table, svg.diagram").await.is_empty(), "{url}");
    let text = browser.page_text().await;
    assert!(!text.contains(secret), "{url} shows {secret}:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_runs_the_customer_process_with_an_approval_and_keeps_namespaces_apart() {
    let env = setup_script("setup-inference.sh");
    setup_script("setup-postgres.sh");
    let (mut api, base) = rpaflow_tests::customer_api().await;
    let dev = Dev::launch_env(
        &[
            "--model",
            &env["RPAFLOW_TEST_MODEL"],
            "--onnxruntime",
            &env["ORT_DYLIB_PATH"],
        ],
        &[("RPAFLOW_AUTH__ENABLED", "true")],
    )
    .await;
    assert!(
        dev.output()
            .contains(&format!("web console on http://{}/", dev.addr())),
        "rpaflow dev printed no console address:\n{}",
        dev.output()
    );
    let root = std::fs::read_to_string(dev.data_dir().join("admin.token"))
        .expect("the first admin token")
        .trim()
        .to_owned();
    for file in [
        "examples/customer-service/handle-message.yaml",
        "examples/customer-service.yaml",
    ] {
        let path = workspace_root().join(file);
        dev.cli_json(&root, &["flow", "register", &path.display().to_string()])
            .await;
    }
    let nightly = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(nightly.path(), NIGHTLY).expect("a writable file");
    dev.cli_json(
        &root,
        &["flow", "register", &nightly.path().display().to_string()],
    )
    .await;
    dev.cli_json(&root, &["namespace", "create", "team-b"])
        .await;
    let other = dev
        .cli_json(
            &root,
            &[
                "token",
                "create",
                "--namespace",
                "team-b",
                "--role",
                "admin",
                "--name",
                "team-b-admin",
            ],
        )
        .await["token"]
        .as_str()
        .expect("a token")
        .to_owned();

    let onlooker = dev
        .cli_json(
            &root,
            &["token", "create", "--role", "viewer", "--name", "onlooker"],
        )
        .await;
    let viewer = onlooker["token"].as_str().expect("a token").to_owned();
    let console = format!("http://{}", dev.addr());
    let browser = Browser::start(1280, 900).await;

    // Signed out: only the sign-in, whatever the address; a wrong token is refused.
    only_sign_in(&browser, &format!("{console}/runs"), "customer-service").await;
    browser.screenshot("signin").await;
    only_sign_in(&browser, &format!("{console}/approvals"), "Refund").await;
    // By keyboard: the token field, then Enter.
    browser
        .type_into("#token", "rpf_000000000000_wrong\u{E007}")
        .await;
    browser.wait_text("Not signed in").await;
    assert!(browser.all("header.top").await.is_empty());

    // The admin of `default` starts the example from its flow page.
    browser.goto(&format!("{console}/flows")).await;
    sign_in(&browser, &root).await;
    browser.find("tr[data-flow=customer-service]").await;
    browser.screenshot("flows").await;
    browser.click("tr[data-flow=customer-service] a").await;
    browser.find("svg.diagram").await;
    browser.screenshot("flow").await;
    browser
        .type_into("#run-inputs", &json!({ "api": base }).to_string())
        .await;
    browser.click("#start-run button[type=submit]").await;
    browser
        .until("the run's page", async || {
            browser.path().await.starts_with("/runs/")
        })
        .await;
    let run_id = browser.path().await["/runs/".len()..].to_owned();
    browser.find("svg.diagram g.node").await;
    // Set in the page: still there at the end means the page was never reloaded.
    browser
        .eval("window.__sameRunPage = true; return null;")
        .await;

    // The diagram turns green step by step, in an order its edges allow, up to the subflows
    // (one of which waits for a person).
    let mut first_green: Vec<String> = Vec::new();
    let mut saw_partial = false;
    watch(&browser, &mut first_green, &mut saw_partial, "store").await;
    let shown = diagram(&browser).await;
    assert_eq!(shown["handle"], "running", "{shown:?}");

    // The refund waits in the inbox, with what the approver needs; approved in another tab.
    let run_tab = browser.client().window().await.expect("the run's tab");
    let inbox = browser
        .client()
        .new_window(true)
        .await
        .expect("a new tab")
        .handle;
    browser
        .client()
        .switch_to_window(inbox.clone())
        .await
        .expect("the new tab");
    // sessionStorage is per tab: a new tab signs in again. A viewer may look, not answer.
    browser.goto(&format!("{console}/approvals")).await;
    sign_in(&browser, &viewer).await;
    browser
        .click("article.approval button[data-action=approve]")
        .await;
    browser.wait_text("the `viewer` role may not call").await;
    // Revoked meanwhile, the viewer's token gets UNAUTHENTICATED at the inbox's next refresh,
    // and the console shows the sign-in.
    dev.cli_json(
        &root,
        &["token", "revoke", onlooker["id"].as_str().expect("an id")],
    )
    .await;
    browser.find("form.signin").await;
    assert!(browser.all("article.approval").await.is_empty());
    sign_in(&browser, &root).await;
    browser.click("a[href='/approvals']").await;
    let card = browser.find("article.approval").await;
    let text = card.text().await.expect("the card's text");
    assert!(text.contains("Refund of 2400"), "{text}");
    assert!(text.contains("dave@example.com"), "{text}");
    assert!(text.contains("handle-message"), "{text}");
    assert_eq!(browser.all("article.approval").await.len(), 1);
    // Meanwhile the run's tab shows the other messages handled and one waiting.
    browser
        .client()
        .switch_to_window(run_tab.clone())
        .await
        .expect("the run's tab");
    browser
        .until("three of four messages handled", async || {
            diagram(&browser).await.len() == NEEDS.len()
                && browser
                    .page_text()
                    .await
                    .contains("subflow · running · 3/4")
        })
        .await;
    browser.screenshot("run-waiting").await;
    let layout_waiting = browser.eval(LAYOUT).await;
    // Keyboard focus on a step survives the updates to come.
    browser
        .eval("document.querySelector('details#step-handle summary').focus(); return null;")
        .await;
    browser
        .client()
        .switch_to_window(inbox.clone())
        .await
        .expect("the inbox's tab");
    let child = card
        .attr("data-run")
        .await
        .expect("an attribute")
        .expect("the approval's run");
    browser
        .type_into(
            "article.approval textarea",
            "refund checked against the order",
        )
        .await;
    browser.screenshot("approvals").await;
    browser
        .click("article.approval button[data-action=approve]")
        .await;
    browser.wait_text("Nothing waits for an answer.").await;

    // Back on the run's tab, not reloaded: the rest turns green and the run succeeds.
    browser
        .client()
        .switch_to_window(run_tab)
        .await
        .expect("the run's tab");
    watch(&browser, &mut first_green, &mut saw_partial, "handle").await;
    browser
        .until("the run to succeed", async || {
            browser
                .all("#run-status .badge[data-status=succeeded]")
                .await
                .len()
                == 1
        })
        .await;
    assert_eq!(
        browser.eval("return window.__sameRunPage === true;").await,
        json!(true),
        "the run page was reloaded"
    );
    assert!(
        saw_partial,
        "never saw the diagram partly green: {first_green:?}"
    );
    for (step, needs) in NEEDS {
        let at = |s: &str| first_green.iter().position(|g| g == s);
        let mine = at(step).unwrap_or_else(|| panic!("{step} never turned green"));
        for need in *needs {
            assert!(
                at(need).is_some_and(|n| n <= mine),
                "{step} turned green before {need}: {first_green:?}"
            );
        }
    }
    browser.wait_text("run succeeded").await;
    assert_eq!(
        browser.eval(LAYOUT).await,
        layout_waiting,
        "the run page moved while the run finished"
    );
    assert_eq!(
        browser
            .eval("return document.activeElement.closest('details')?.id ?? null;")
            .await,
        json!("step-handle"),
        "the updates took the keyboard focus away"
    );
    browser.screenshot("run-succeeded").await;

    // The answer is recorded with who gave it (the token's name), as the child run shows.
    browser.goto(&format!("{console}/runs/{child}")).await;
    let answered = browser
        .find("ol.timeline li[data-kind=approval_answered]")
        .await;
    let answered = answered.text().await.expect("the event's text");
    // The child links to its parent run, the step that started it.
    browser.find(&format!("a[href='/runs/{run_id}']")).await;
    browser.wait_text("Started by").await;
    assert!(
        answered.contains("approved by bootstrap-admin: refund checked against the order"),
        "{answered}"
    );

    // The other pages.
    browser.goto(&format!("{console}/runs")).await;
    browser
        .find(&format!(
            "tr[data-run='{run_id}'] .badge[data-status=succeeded]"
        ))
        .await;
    browser.screenshot("runs").await;
    browser.goto(&format!("{console}/schedules")).await;
    browser
        .click("tr[data-schedule='nightly-report/nightly'] button")
        .await;
    browser
        .find("tr[data-schedule='nightly-report/nightly'] .badge[data-status=paused]")
        .await;
    browser.screenshot("schedules").await;
    assert_eq!(
        browser
            .eval("return document.activeElement.textContent;")
            .await,
        json!("Resume"),
        "the focus left the schedule's row"
    );
    browser
        .click("tr[data-schedule='nightly-report/nightly'] button")
        .await;
    browser
        .find("tr[data-schedule='nightly-report/nightly'] .badge[data-status=active]")
        .await;
    browser.goto(&format!("{console}/secrets")).await;
    browser.type_into("#secret-name", "CRM_API_KEY").await;
    browser.type_into("#secret-value", "s3cr3t-value").await;
    browser.click("#set-secret button[type=submit]").await;
    browser.find("tr[data-secret=CRM_API_KEY]").await;
    assert!(!browser.page_text().await.contains("s3cr3t-value"));
    browser.screenshot("secrets").await;
    browser
        .click("tr[data-secret=CRM_API_KEY] button[aria-label='Delete CRM_API_KEY']")
        .await;
    browser
        .client()
        .accept_alert()
        .await
        .expect("the confirmation");
    browser.wait_text("No secrets.").await;

    // Signed out, the run's own address shows only the sign-in.
    sign_out(&browser).await;
    only_sign_in(&browser, &format!("{console}/runs/{run_id}"), &run_id).await;

    // A user of another namespace sees none of it.
    sign_in(&browser, &other).await;
    let ns = browser.find("header.top .ns").await;
    assert_eq!(ns.text().await.expect("text"), "team-b");
    browser.goto(&format!("{console}/runs")).await;
    browser.wait_text("No runs.").await;
    browser.screenshot("other-namespace-runs").await;
    for (page, empty) in [
        ("flows", "No flows."),
        ("approvals", "Nothing waits for an answer."),
        ("schedules", "No schedules"),
        ("secrets", "No secrets."),
    ] {
        browser.goto(&format!("{console}/{page}")).await;
        browser.wait_text(empty).await;
        let text = browser.page_text().await;
        for theirs in [
            "customer-service",
            "nightly-report",
            "CRM_API_KEY",
            "Refund",
        ] {
            assert!(
                !text.contains(theirs),
                "team-b's {page} shows {theirs}:\n{text}"
            );
        }
    }
    browser.goto(&format!("{console}/runs/{run_id}")).await;
    browser.wait_text("Run not found").await;
    assert!(browser.all("svg.diagram").await.is_empty());
    browser
        .goto(&format!("{console}/flows/customer-service"))
        .await;
    browser.find(".notice").await;
    assert!(browser.all("svg.diagram").await.is_empty());

    // A phone-sized screen: the run page in one column.
    sign_out(&browser).await;
    sign_in(&browser, &root).await;
    browser
        .client()
        .set_window_size(390, 844)
        .await
        .expect("a smaller window");
    browser.goto(&format!("{console}/runs/{run_id}")).await;
    browser
        .find("svg.diagram g.node[data-status=succeeded]")
        .await;
    browser.screenshot("phone-run").await;

    browser.close().await;
    let _ = api.kill().await;
}

/// One HTTP/1.1 request on a new connection (closed after the answer): the answer's head in
/// lower case and its body (chunked bodies as sent, chunk sizes included).
async fn http1(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the gRPC port accepts");
    let request = format!(
        "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    stream.write_all(body).await.expect("sent");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    (
        String::from_utf8_lossy(&answer[..split]).to_lowercase(),
        answer[split + 4..].to_vec(),
    )
}

/// The gRPC status of a gRPC-Web answer: in its head (an error without a body) or in its
/// trailer frame.
fn grpc_web_status(head: &str, body: &[u8]) -> u32 {
    let text = format!("{head}\n{}", String::from_utf8_lossy(body).to_lowercase());
    let at = text
        .find("grpc-status:")
        .unwrap_or_else(|| panic!("no grpc-status in\n{text}"));
    text[at + "grpc-status:".len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a status code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_port_serves_the_console_and_checks_grpc_web_calls_like_grpc_calls() {
    let dev = Dev::launch_env(&[], &[("RPAFLOW_AUTH__ENABLED", "true")]).await;
    let root = std::fs::read_to_string(dev.data_dir().join("admin.token"))
        .expect("the first admin token")
        .trim()
        .to_owned();
    let viewer = dev
        .cli_json(
            &root,
            &["token", "create", "--role", "viewer", "--name", "looker"],
        )
        .await["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let addr = dev.addr();

    // The console: index.html for its routes, hashed assets cached for good, 404 otherwise.
    let (head, page) = http1(addr, "GET /runs/some-run HTTP/1.1", b"").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    let page = String::from_utf8(page).expect("UTF-8");
    assert!(page.contains(r#"<div id="app">"#), "{page}");
    let script = page
        .split('"')
        .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
        .unwrap_or_else(|| panic!("no script in {page}"));
    let (head, js) = http1(addr, &format!("GET {script} HTTP/1.1"), b"").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(head.contains("immutable"), "{head}");
    assert!(js.len() > 10_000, "{} bytes", js.len());
    assert!(head.contains("vary: accept-encoding"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    let (head, gz) = http1(
        addr,
        &format!("GET {script} HTTP/1.1\r\nAccept-Encoding: gzip, deflate"),
        b"",
    )
    .await;
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(
        gz.starts_with(&[0x1f, 0x8b]) && gz.len() < js.len() / 2,
        "{} bytes gzipped of {}",
        gz.len(),
        js.len()
    );
    let (head, _) = http1(addr, "GET /assets/missing-123.js HTTP/1.1", b"").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");

    // gRPC-Web over HTTP/1.1, as the browser calls: the same authentication and roles.
    let call = async |method: &str, token: &str, message: &[u8]| {
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("\r\nAuthorization: Bearer {token}")
        };
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
        frame.extend_from_slice(message);
        let (head, body) = http1(
            addr,
            &format!(
                "POST /rpaflow.v1.FlowService/{method} HTTP/1.1\r\n\
                 Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1{auth}"
            ),
            &frame,
        )
        .await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains("content-type: application/grpc-web"),
            "{head}"
        );
        grpc_web_status(&head, &body)
    };
    const UNAUTHENTICATED: u32 = 16;
    const PERMISSION_DENIED: u32 = 7;
    assert_eq!(call("ListFlows", "", b"").await, UNAUTHENTICATED);
    assert_eq!(
        call("ListFlows", "rpf_000000000000_wrong", b"").await,
        UNAUTHENTICATED
    );
    assert_eq!(call("ListFlows", &viewer, b"").await, 0);
    // SetSecret { name: "K", value: "v" } needs the admin role.
    let set = [0x0a, 1, b'K', 0x12, 1, b'v'];
    assert_eq!(call("SetSecret", &viewer, &set).await, PERMISSION_DENIED);
    assert_eq!(call("SetSecret", &root, &set).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_off_the_console_opens_as_is_and_switches_namespaces() {
    // `rpaflow dev` as a newcomer runs it: tokens off, a flow run at start.
    let dev = Dev::launch_with(&[workspace_root()
        .join("examples/hello.yaml")
        .to_str()
        .expect("a UTF-8 path")])
    .await;
    let url = dev.url();
    rpaflow_tests::rpaflow(
        &["namespace", "create", "team-x", "--server", &url],
        Duration::from_secs(30),
    )
    .await
    .expect_success();
    let browser = Browser::start(1280, 900).await;
    browser.goto(&format!("{url}/runs")).await;
    browser
        .find("tr[data-run] .badge[data-status=succeeded]")
        .await;
    assert!(browser.all("form.signin").await.is_empty());
    browser.wait_text("authentication off").await;
    // The list refreshes every 3 s; a keyboard user's place in it stays.
    browser
        .eval("document.querySelector('tr[data-run] a').focus(); return null;")
        .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        browser
            .eval("return document.activeElement.closest('tr[data-run]') !== null;")
            .await,
        json!(true),
        "a refresh of the runs list took the focus away"
    );

    // Another namespace, chosen in the header: nothing of default's there.
    let switch = browser.find("header.top select.ns").await;
    switch
        .select_by_value("team-x")
        .await
        .expect("team-x is offered");
    browser
        .until("the console to act in team-x", async || {
            browser
                .all("header.top select.ns[data-namespace=team-x]")
                .await
                .len()
                == 1
        })
        .await;
    browser.wait_text("No runs.").await;
    browser.close().await;
}

/// A step that fails until its API recovers, and a run that waits for a person.
const FLAKY: &str = r#"
name: flaky
inputs:
  api: { type: string }
steps:
  - id: call
    uses: http
    retry: { max_attempts: 1 }
    with: { url: "{{ inputs.api }}/flaky" }
  - id: after
    uses: log
    needs: call
    with: { message: "called" }
"#;
const WAITS: &str = r#"
name: waits
steps:
  - id: ok
    uses: approval
    with: { message: "never answered" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_page_retries_a_failed_run_and_cancels_a_waiting_one() {
    let api = rpaflow_tests::HttpServer::start();
    api.fail_first("/flaky", u32::MAX);
    let dev = Dev::launch().await;
    dev.register(FLAKY).await;
    dev.register(WAITS).await;
    let failed = dev.run("flaky", json!({ "api": api.url() })).await;
    dev.wait_failed(&failed, Duration::from_secs(30)).await;
    let waiting = dev.run("waits", json!({})).await;

    let browser = Browser::start(1280, 900).await;
    let console = dev.url();
    browser.goto(&format!("{console}/runs/{failed}")).await;
    browser
        .find("svg.diagram g.node[data-step=call][data-status=failed]")
        .await;
    browser.find("#run-status .badge[data-status=failed]").await;
    browser.screenshot("run-failed").await;
    api.fail_first("/flaky", 0);
    browser.click("#retry-run").await;
    browser
        .find("#run-status .badge[data-status=succeeded]")
        .await;
    browser
        .find("svg.diagram g.node[data-step=after][data-status=succeeded]")
        .await;
    // Both attempts of the step, the failed one with its error.
    // Through the diagram: the step's node opens its details, on the same page.
    browser
        .eval("document.querySelector('main').dataset.mark = 'same'; return null;")
        .await;
    browser.click("svg.diagram a[href='#step-call']").await;
    let step = browser.find("details#step-call[open]").await;
    browser.find("main[data-mark=same]").await;
    let text = step.text().await.expect("the step's text");
    assert!(text.contains("Attempts (2)"), "{text}");
    assert!(text.contains("503"), "{text}");
    assert!(browser.all("#retry-run, #cancel-run").await.is_empty());

    browser.goto(&format!("{console}/runs/{waiting}")).await;
    browser
        .find("svg.diagram g.node[data-step=ok][data-status=waiting_approval]")
        .await;
    browser.click("#cancel-run").await;
    browser
        .client()
        .accept_alert()
        .await
        .expect("the confirmation");
    browser
        .find("#run-status .badge[data-status=cancelled]")
        .await;
    assert_eq!(
        dev.get(&waiting).await.status(),
        rpaflow_tests::pb::RunStatus::Cancelled
    );

    // The runs list: filters by status and flow, 20 runs a page.
    browser.goto(&format!("{console}/runs")).await;
    browser.find(&format!("tr[data-run='{failed}']")).await;
    browser
        .find("#filter-status")
        .await
        .select_by_value("cancelled")
        .await
        .expect("a status to filter by");
    browser
        .until("only the cancelled run", async || {
            let rows = browser.all("tr[data-run]").await;
            rows.len() == 1
                && rows[0].attr("data-run").await.ok().flatten() == Some(waiting.clone())
        })
        .await;
    dev.register("name: quick\nsteps: [{ id: a, uses: log, with: { message: hi } }]\n")
        .await;
    for _ in 0..23 {
        dev.run("quick", json!({})).await;
    }
    browser.goto(&format!("{console}/runs?flow=quick")).await;
    browser
        .until("a first page of 20 runs", async || {
            browser.all("tr[data-run]").await.len() == 20
        })
        .await;
    browser.click("a[rel=next]").await;
    browser
        .until("a second page of 3 runs", async || {
            browser.all("tr[data-run]").await.len() == 3
        })
        .await;
    assert!(browser.all("a[rel=next]").await.is_empty());
    browser.click("a[rel=prev]").await;
    browser
        .until("the first page again", async || {
            browser.all("tr[data-run]").await.len() == 20
        })
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_console_and_its_calls_share_the_grpc_port() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .expect("a self-signed certificate");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.cert.pem()).expect("written");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("written");
    let hello = workspace_root().join("examples/hello.yaml");
    let dev = Dev::launch_env(
        &[hello.to_str().expect("a UTF-8 path")],
        &[
            ("RPAFLOW_TLS__CERT_FILE", cert.to_str().expect("UTF-8")),
            ("RPAFLOW_TLS__KEY_FILE", key.to_str().expect("UTF-8")),
        ],
    )
    .await;
    let console = format!("https://{}", dev.addr());
    assert!(
        dev.output().contains(&format!("web console on {console}/")),
        "{}",
        dev.output()
    );
    // The test's certificate is its own; the browser is told to take it.
    let browser = Browser::start_with(1280, 900, &["--ignore-certificate-errors"]).await;
    browser.goto(&format!("{console}/runs")).await;
    let run = browser
        .find("tr[data-run] .badge[data-status=succeeded]")
        .await;
    assert_eq!(run.text().await.expect("text"), "succeeded");
    browser.close().await;
}

/// A TCP forwarder on a fixed port to whichever address `target` holds: the browser keeps one
/// origin while the orchestrator behind it restarts on a new port.
async fn forwarder(
    target: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = *target.lock().unwrap_or_else(|e| e.into_inner());
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_page_follows_the_run_across_an_orchestrator_restart() {
    let mut dev = Dev::launch().await;
    dev.register(WAITS).await;
    let run = dev.run("waits", json!({})).await;
    let target = std::sync::Arc::new(std::sync::Mutex::new(dev.addr()));
    let console = format!("http://{}", forwarder(target.clone()).await);

    let browser = Browser::start(1280, 900).await;
    browser.goto(&format!("{console}/runs/{run}")).await;
    browser
        .find("svg.diagram g.node[data-step=ok][data-status=waiting_approval]")
        .await;
    browser.eval("window.__samePage = true; return null;").await;

    // kill -9 and a new process on the same data: the page's stream breaks, and it reconnects.
    dev.restart().await;
    *target.lock().unwrap_or_else(|e| e.into_inner()) = dev.addr();
    dev.approve(&run, "ok").await;
    browser
        .find("svg.diagram g.node[data-step=ok][data-status=succeeded]")
        .await;
    browser
        .find("#run-status .badge[data-status=succeeded]")
        .await;
    browser.wait_text("run succeeded").await;
    assert_eq!(
        browser.eval("return window.__samePage === true;").await,
        json!(true),
        "the page was reloaded"
    );
    browser.close().await;
}
