//! Webhooks: `rpaflow dev --hooks-listen` serves `POST /hooks/{namespace}/{flow}`; a signed (or
//! token-carrying) JSON delivery starts a run of the flow, a delivery id makes it idempotent, and
//! anything unauthenticated or malformed is refused with nothing started.

use std::time::Duration;

use rpaflow_tests::{Dev, pb};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TIMEOUT: Duration = Duration::from_secs(30);
const KEY: &str = "hook-key-9f3a";
const TOKEN: &str = "hook-token-7c21";

/// A webhook signed with HOOK_KEY whose body's `customer` becomes the run's inputs.
const SIGNED: &str = r#"
name: order-hook
inputs:
  name: { type: string }
  tier: { type: integer, default: 1 }
triggers:
  - id: inbound
    webhook:
      signature_secret: HOOK_KEY
      input: "{{ body.customer }}"
steps:
  - { id: greet, uses: echo, with: { hello: "{{ inputs.name }}", tier: "{{ inputs.tier }}" } }
outputs:
  hello: "{{ steps.greet.output.hello }}"
"#;

/// A webhook with a bearer token whose whole body is the run's inputs.
const TOKEN_FLOW: &str = r#"
name: token-hook
inputs:
  n: { type: integer }
triggers:
  - id: raw
    webhook: { token_secret: HOOK_TOKEN }
steps:
  - { id: show, uses: echo, with: { n: "{{ inputs.n }}" } }
"#;

/// What an HTTP request got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Json,
    raw: String,
}

/// A webhook sandbox: `rpaflow dev` with webhooks, its secrets set and both flows registered.
async fn launch() -> Dev {
    let dev = Dev::launch_with(&["--hooks-listen", "127.0.0.1:0"]).await;
    for (name, value) in [("HOOK_KEY", KEY), ("HOOK_TOKEN", TOKEN)] {
        dev.client()
            .await
            .set_secret(pb::SetSecretRequest {
                name: name.into(),
                value: value.into(),
            })
            .await
            .unwrap_or_else(|s| dev.fail(&format!("SetSecret {name}: {s:?}")));
    }
    dev.register(SIGNED).await;
    dev.register(TOKEN_FLOW).await;
    dev
}

/// `body` to the order hook, signed with the trigger's key (by Python, not by rpaflow's code).
async fn post_signed(dev: &Dev, body: &[u8]) -> Answer {
    let signature = sign(KEY, body);
    post(
        dev,
        "/hooks/default/order-hook",
        &[("X-Rpaflow-Signature", signature.as_str())],
        body,
    )
    .await
}

/// POSTs `body` to `path` of the webhook endpoint (HTTP/1.1, one connection per request).
async fn post(dev: &Dev, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let url = dev.hooks_url();
    let host = url.strip_prefix("http://").unwrap_or(&url).to_owned();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&host).await?;
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(answer)) => String::from_utf8_lossy(&answer).into_owned(),
        Ok(Err(e)) => dev.fail(&format!("POST {url}{path} failed: {e}")),
        Err(_) => dev.fail(&format!("POST {url}{path}: no answer within {TIMEOUT:?}")),
    };
    let (head, text) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| dev.fail(&format!("not an HTTP answer:\n{answer}")));
    let body = serde_json::from_str(text).unwrap_or(Json::Null);
    Answer {
        status,
        body,
        raw: answer,
    }
}

/// `sha256=<hex HMAC-SHA256 of body keyed by key>`, computed by Python's standard library so that
/// the test does not share the implementation under test.
fn sign(key: &str, body: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib, hmac, sys; print(hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())",
            key,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run python3");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(body)
        .expect("cannot write to python3");
    let out = child.wait_with_output().expect("python3 failed");
    assert!(out.status.success(), "python3 could not sign");
    format!("sha256={}", String::from_utf8_lossy(&out.stdout).trim())
}

fn assert_status(dev: &Dev, answer: &Answer, status: u16, what: &str) {
    if answer.status != status {
        dev.fail(&format!(
            "{what}: expected HTTP {status}, got:\n{}",
            answer.raw
        ));
    }
}

#[tokio::test]
async fn a_delivery_twice_starts_one_run_with_the_mapped_inputs() {
    let dev = launch().await;
    let body = br#"{"customer": {"name": "Ada", "tier": 3}, "sent_by": "crm"}"#;
    let signature = sign(KEY, body);
    let headers = [
        ("X-Rpaflow-Signature", signature.as_str()),
        ("X-Rpaflow-Delivery", "delivery-1"),
    ];

    let first = post(&dev, "/hooks/default/order-hook", &headers, body).await;
    assert_status(&dev, &first, 201, "first delivery");
    assert_eq!(first.body["created"], json!(true), "{}", first.raw);
    let run_id = first.body["run_id"]
        .as_str()
        .unwrap_or_else(|| dev.fail(&format!("no run_id in {}", first.raw)))
        .to_owned();

    let again = post(&dev, "/hooks/default/order-hook", &headers, body).await;
    assert_status(&dev, &again, 200, "repeated delivery");
    assert_eq!(again.body["created"], json!(false), "{}", again.raw);
    assert_eq!(again.body["run_id"], json!(run_id), "{}", again.raw);

    let runs = dev.list_runs("order-hook", "").await;
    assert_eq!(runs.len(), 1, "one delivery, one run: {runs:?}");
    assert_eq!(
        runs[0].idempotency_key,
        "webhook:order-hook:inbound:delivery-1"
    );

    let run = dev.wait_succeeded(&run_id, TIMEOUT).await;
    let inputs: Json = serde_json::from_str(&run.inputs_json).expect("inputs are JSON");
    assert_eq!(inputs, json!({"name": "Ada", "tier": 3}));
    assert_eq!(run.trigger, "webhook:inbound");
    let outputs: Json = serde_json::from_str(&run.outputs_json).expect("outputs are JSON");
    assert_eq!(outputs, json!({"hello": "Ada"}));

    // Another delivery id is another run; no delivery id, a run per delivery.
    let other = [
        ("X-Rpaflow-Signature", signature.as_str()),
        ("X-Rpaflow-Delivery", "delivery-2"),
    ];
    let second = post(&dev, "/hooks/default/order-hook", &other, body).await;
    assert_status(&dev, &second, 201, "second delivery id");
    assert!(second.body["run_id"].is_string(), "{}", second.raw);
    assert_ne!(second.body["run_id"], json!(run_id));
    let unsigned_id = [("X-Rpaflow-Signature", signature.as_str())];
    for _ in 0..2 {
        let answer = post(&dev, "/hooks/default/order-hook", &unsigned_id, body).await;
        assert_status(&dev, &answer, 201, "delivery without an id");
    }
    assert_eq!(dev.list_runs("order-hook", "").await.len(), 4);
}

#[tokio::test]
async fn bad_credentials_get_401_and_start_nothing() {
    let dev = launch().await;
    let body = br#"{"customer": {"name": "Mallory"}}"#;
    let wrong_key = sign("not-the-key", body);
    let other_body = sign(KEY, br#"{"customer": {"name": "Ada"}}"#);
    for (what, headers) in [
        (
            "a signature by another key",
            vec![("X-Rpaflow-Signature", wrong_key.as_str())],
        ),
        (
            "a signature of another body",
            vec![("X-Rpaflow-Signature", other_body.as_str())],
        ),
        (
            "a signature that is not hex",
            vec![("X-Rpaflow-Signature", "sha256=xyz")],
        ),
        ("no signature", vec![]),
        (
            "the key itself as a token",
            vec![("Authorization", "Bearer hook-key-9f3a")],
        ),
    ] {
        let mut headers = headers;
        headers.push(("X-Rpaflow-Delivery", "evil-1"));
        let answer = post(&dev, "/hooks/default/order-hook", &headers, body).await;
        assert_status(&dev, &answer, 401, what);
        assert!(
            answer.body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: a 401 says why in JSON: {}",
            answer.raw
        );
    }
    assert!(
        dev.list_runs("order-hook", "").await.is_empty(),
        "nothing may start without a valid signature"
    );

    // A bearer token: wrong, then right.
    let body = br#"{"n": 7}"#;
    let wrong = post(
        &dev,
        "/hooks/default/token-hook",
        &[("Authorization", "Bearer hook-token-7c2")],
        body,
    )
    .await;
    assert_status(&dev, &wrong, 401, "a wrong bearer token");
    assert!(dev.list_runs("token-hook", "").await.is_empty());
    let bearer = format!("Bearer {TOKEN}");
    let right = post(
        &dev,
        "/hooks/default/token-hook",
        &[("Authorization", bearer.as_str())],
        body,
    )
    .await;
    assert_status(&dev, &right, 201, "the right bearer token");
    let run_id = right.body["run_id"].as_str().expect("a run id").to_owned();
    let run = dev.wait_succeeded(&run_id, TIMEOUT).await;
    assert_eq!(run.inputs_json.parse::<Json>().ok(), Some(json!({"n": 7})));
    assert_eq!(run.trigger, "webhook:raw");
}

#[tokio::test]
async fn malformed_or_unfitting_bodies_are_refused_with_the_reason() {
    let dev = launch().await;

    // Not JSON: 400 with serde_json's message, line and column.
    let body = b"{\"customer\": {\"name\": \"Ada\",}}";
    let answer = post_signed(&dev, body).await;
    assert_status(&dev, &answer, 400, "malformed JSON");
    let error = answer.body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not JSON") && error.contains("line 1 column"),
        "the parse error is named with its place: {}",
        answer.raw
    );
    assert_eq!(answer.body["line"], json!(1), "{}", answer.raw);
    assert!(
        answer.body["column"].as_u64().is_some_and(|c| c > 20),
        "{}",
        answer.raw
    );

    // JSON, but the mapping gives no object: 422.
    let body = br#"{"customer": "Ada"}"#;
    let answer = post_signed(&dev, body).await;
    assert_status(&dev, &answer, 422, "input mapping to a string");
    assert!(answer.raw.contains("must give an object"), "{}", answer.raw);

    // An object the flow's inputs refuse: 422 with the flow's message.
    let body = br#"{"customer": {"tier": "gold"}}"#;
    let answer = post_signed(&dev, body).await;
    assert_status(&dev, &answer, 422, "inputs the flow refuses");
    assert!(
        answer.raw.contains("input `name` is required"),
        "{}",
        answer.raw
    );

    // Without `input`, the body itself must be an object.
    let bearer = format!("Bearer {TOKEN}");
    let answer = post(
        &dev,
        "/hooks/default/token-hook",
        &[("Authorization", bearer.as_str())],
        b"[1, 2]",
    )
    .await;
    assert_status(&dev, &answer, 422, "an array body");
    assert!(
        answer.raw.contains("must be a JSON object"),
        "{}",
        answer.raw
    );

    // Unknown namespace, flow or trigger: 404.
    let body = br#"{"customer": {"name": "Ada"}}"#;
    let signature = sign(KEY, body);
    let headers = [("X-Rpaflow-Signature", signature.as_str())];
    for path in [
        "/hooks/prod/order-hook",
        "/hooks/default/no-such-flow",
        "/hooks/default/order-hook?trigger=nope",
    ] {
        let answer = post(&dev, path, &headers, body).await;
        assert_status(&dev, &answer, 404, path);
    }
    let answer = post(
        &dev,
        "/hooks/default/order-hook?trigger=inbound",
        &headers,
        body,
    )
    .await;
    assert_status(&dev, &answer, 201, "the trigger named in the query");

    assert_eq!(
        dev.list_runs("order-hook", "").await.len(),
        1,
        "only the last delivery started a run"
    );
    assert!(dev.list_runs("token-hook", "").await.is_empty());
}

#[tokio::test]
async fn deliveries_past_the_flows_concurrency_wait_or_get_409() {
    let dev = launch().await;
    dev.register(
        r#"
name: gate-hook
triggers:
  - id: raw
    webhook: { token_secret: HOOK_TOKEN }
concurrency: { max_runs: 1, max_queued: 1 }
steps:
  - { id: hold, uses: approval, with: { message: "hold" } }
"#,
    )
    .await;
    let bearer = format!("Bearer {TOKEN}");
    let deliver = |id: &'static str| {
        let bearer = bearer.clone();
        let dev = &dev;
        async move {
            let headers = [
                ("Authorization", bearer.as_str()),
                ("X-Rpaflow-Delivery", id),
            ];
            post(dev, "/hooks/default/gate-hook", &headers, b"{}").await
        }
    };
    let first = deliver("d1").await;
    assert_status(&dev, &first, 201, "first delivery");
    assert_eq!(first.body["status"], json!("running"), "{}", first.raw);
    let second = deliver("d2").await;
    assert_status(&dev, &second, 201, "second delivery, queued");
    assert_eq!(second.body["status"], json!("queued"), "{}", second.raw);
    // The repeat of a queued delivery names the same waiting run.
    let again = deliver("d2").await;
    assert_status(&dev, &again, 200, "repeated queued delivery");
    assert!(second.body["run_id"].is_string(), "{}", second.raw);
    assert_eq!(again.body["run_id"], second.body["run_id"], "{}", again.raw);
    assert_eq!(again.body["status"], json!("queued"), "{}", again.raw);
    // Past max_queued: 409 with the reason; nothing started.
    let third = deliver("d3").await;
    assert_status(&dev, &third, 409, "delivery past max_queued");
    assert!(
        third.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("concurrency.max_queued")),
        "{}",
        third.raw
    );
    assert_eq!(dev.list_runs("gate-hook", "").await.len(), 2);
}
