//! Webhooks: `rpaflow dev --hooks-listen` serves `POST /hooks/{namespace}/{flow}`; a signed (or
//! token-carrying) JSON delivery starts a run of the flow, a delivery id makes it idempotent, and
//! anything unauthenticated, replayed or malformed is refused with nothing started. Before
//! authentication every refusal is the same bare 401, whatever the reason.
//!
//! Deliveries are signed here by Python's standard library, following the scheme as documented
//! (`t=<unix seconds>,v1=<hex HMAC-SHA256 of "{t}.{delivery}.{body}">`), so that the tests do not
//! share the implementation under test.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rpaflow_tests::{Dev, pb};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TIMEOUT: Duration = Duration::from_secs(30);
const KEY: &str = "hook-key-9f3a";
const TOKEN: &str = "hook-token-7c21";
const ORDER_HOOK: &str = "/hooks/default/order-hook";
/// The body of every 401.
const UNAUTHORIZED: &str = r#"{"error":"unauthorized"}"#;

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
    launch_env(&[]).await
}

/// [`launch`] with environment variables for `rpaflow dev`.
async fn launch_env(env: &[(&str, &str)]) -> Dev {
    let dev = Dev::launch_env(&["--hooks-listen", "127.0.0.1:0"], env).await;
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

/// Now, in Unix seconds, by the test's clock (the same machine's as the server's).
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs()
}

/// `body` to the order hook as delivery `delivery`, signed now with the trigger's key.
async fn post_signed(dev: &Dev, delivery: &str, body: &[u8]) -> Answer {
    let signature = sign(&[KEY], now(), delivery, body);
    post(dev, ORDER_HOOK, &signed(&signature, delivery), body).await
}

/// The two headers of a signed delivery.
fn signed<'a>(signature: &'a str, delivery: &'a str) -> [(&'static str, &'a str); 2] {
    [
        ("X-Rpaflow-Signature", signature),
        ("X-Rpaflow-Delivery", delivery),
    ]
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

/// `t=<t>,v1=<hex>[,v1=<hex>...]`, one `v1` per key: the HMAC-SHA256 of `"{t}.{delivery}."`
/// followed by the body, computed by Python's standard library.
fn sign(keys: &[&str], t: u64, delivery: &str, body: &[u8]) -> String {
    use std::io::Write as _;
    const SCRIPT: &str = "\
import hashlib, hmac, sys
t, delivery, keys = sys.argv[1], sys.argv[2], sys.argv[3:]
signed = f'{t}.{delivery}.'.encode() + sys.stdin.buffer.read()
tags = [hmac.new(k.encode(), signed, hashlib.sha256).hexdigest() for k in keys]
print(','.join([f't={t}'] + [f'v1={tag}' for tag in tags]))
";
    let t = t.to_string();
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT, &t, delivery])
        .args(keys)
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
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A refused delivery: what it shows, its headers and its body.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a [u8]);

/// The answer without its `Date` header, the one part that may differ between two requests.
fn without_date(raw: &str) -> String {
    raw.split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Asserts the bare 401 every unauthenticated delivery gets.
fn assert_unauthorized(dev: &Dev, answer: &Answer, what: &str) {
    assert_status(dev, answer, 401, what);
    let (_, body) = answer.raw.split_once("\r\n\r\n").unwrap_or_default();
    assert_eq!(body, UNAUTHORIZED, "{what}: {}", answer.raw);
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
async fn a_signed_delivery_starts_one_run_however_often_it_is_replayed() {
    let dev = launch().await;
    let body = br#"{"customer": {"name": "Ada", "tier": 3}, "sent_by": "crm"}"#;
    let signature = sign(&[KEY], now(), "delivery-1", body);
    let headers = signed(&signature, "delivery-1");

    let first = post(&dev, ORDER_HOOK, &headers, body).await;
    assert_status(&dev, &first, 201, "first delivery");
    assert_eq!(first.body["created"], json!(true), "{}", first.raw);
    let run_id = first.body["run_id"]
        .as_str()
        .unwrap_or_else(|| dev.fail(&format!("no run_id in {}", first.raw)))
        .to_owned();

    // The same request again, byte for byte (a sender's retry, or a replay inside the window):
    // the run it started, and no other.
    let again = post(&dev, ORDER_HOOK, &headers, body).await;
    assert_status(&dev, &again, 200, "repeated delivery");
    assert_eq!(again.body["created"], json!(false), "{}", again.raw);
    assert_eq!(again.body["run_id"], json!(run_id), "{}", again.raw);

    // The same signature under a new delivery id: the id is signed, so this is a forgery.
    for id in ["delivery-2", "delivery-1x", "Delivery-1"] {
        let replay = post(&dev, ORDER_HOOK, &signed(&signature, id), body).await;
        assert_unauthorized(&dev, &replay, &format!("replay as delivery {id}"));
    }

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

    // A new delivery, signed as such, is a new run.
    let second = post_signed(&dev, "delivery-2", body).await;
    assert_status(&dev, &second, 201, "second delivery");
    assert_ne!(second.body["run_id"], json!(run_id), "{}", second.raw);
    assert_eq!(dev.list_runs("order-hook", "").await.len(), 2);
}

#[tokio::test]
async fn replays_and_forgeries_get_the_bare_401_and_start_nothing() {
    let dev = launch_env(&[("RPAFLOW_TELEMETRY__LOG_LEVEL", "rpaflow_orchestrator=debug")]).await;
    let body = br#"{"customer": {"name": "Mallory"}}"#;
    let now = now();
    let id = "evil-1";
    // The body with one byte changed: `Mallory` becomes `Mallorz`.
    let mut changed = body.to_vec();
    let at = changed.len() - 4;
    changed[at] = b'z';
    let good = sign(&[KEY], now, id, body);
    let cases: Vec<Case> = vec![
        (
            "a signature by another key",
            vec![("X-Rpaflow-Signature", sign(&["not-the-key"], now, id, body))],
            body,
        ),
        (
            "a body changed by one byte",
            vec![("X-Rpaflow-Signature", good.clone())],
            &changed,
        ),
        (
            "a timestamp a minute past the 5 minute window",
            vec![("X-Rpaflow-Signature", sign(&[KEY], now - 360, id, body))],
            body,
        ),
        (
            "a timestamp an hour old",
            vec![("X-Rpaflow-Signature", sign(&[KEY], now - 3600, id, body))],
            body,
        ),
        (
            "a timestamp a minute ahead of the window",
            vec![("X-Rpaflow-Signature", sign(&[KEY], now + 360, id, body))],
            body,
        ),
        (
            "a good tag under a moved timestamp",
            vec![(
                "X-Rpaflow-Signature",
                good.replacen(&format!("t={now}"), &format!("t={}", now + 1), 1),
            )],
            body,
        ),
        (
            "a signature of the body alone, the old scheme",
            vec![(
                "X-Rpaflow-Signature",
                format!("sha256={}", good.rsplit_once("v1=").unwrap().1),
            )],
            body,
        ),
        (
            "a signature that is not hex",
            vec![("X-Rpaflow-Signature", format!("t={now},v1=xyz"))],
            body,
        ),
        (
            "a signature without a timestamp",
            vec![(
                "X-Rpaflow-Signature",
                good.split_once(',').unwrap().1.to_owned(),
            )],
            body,
        ),
        ("no signature", vec![], body),
        (
            "the key itself as a token",
            vec![("Authorization", format!("Bearer {KEY}"))],
            body,
        ),
    ];
    for (what, headers, body) in &cases {
        let mut headers: Vec<(&str, &str)> =
            headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        headers.push(("X-Rpaflow-Delivery", id));
        let answer = post(&dev, ORDER_HOOK, &headers, body).await;
        assert_unauthorized(&dev, &answer, what);
    }
    // A good signature without its delivery id, or with an id that cannot have been signed.
    for (what, headers) in [
        (
            "no delivery id",
            vec![("X-Rpaflow-Signature", good.as_str())],
        ),
        (
            "an empty delivery id",
            vec![
                ("X-Rpaflow-Signature", good.as_str()),
                ("X-Rpaflow-Delivery", ""),
            ],
        ),
    ] {
        let answer = post(&dev, ORDER_HOOK, &headers, body).await;
        assert_unauthorized(&dev, &answer, what);
    }
    assert!(
        dev.list_runs("order-hook", "").await.is_empty(),
        "nothing may start without a valid signature"
    );
    // The reasons are the operator's to read, not the caller's; the key never shows.
    let log = dev.output();
    for reason in [
        "s old, past the tolerance of 300 s",
        "ahead of this clock",
        "no signature matches",
        "no X-Rpaflow-Delivery header",
    ] {
        assert!(
            log.contains(reason),
            "the log names the reason `{reason}`:\n{log}"
        );
    }
    assert!(!log.contains(KEY), "the log shows the key:\n{log}");

    // The good signature was never spent: it still starts its run.
    let answer = post(&dev, ORDER_HOOK, &signed(&good, id), body).await;
    assert_status(&dev, &answer, 201, "the genuine delivery");
}

#[tokio::test]
async fn a_sender_rotating_its_secret_signs_with_both() {
    let dev = launch().await;
    let body = br#"{"customer": {"name": "Grace"}}"#;
    let now = now();
    // Old key first or new key first: either matches the trigger's.
    let both = sign(&["retired-key", KEY], now, "r-1", body);
    let answer = post(&dev, ORDER_HOOK, &signed(&both, "r-1"), body).await;
    assert_status(
        &dev,
        &answer,
        201,
        "signed with the old and the current key",
    );
    let both = sign(&[KEY, "next-key"], now, "r-2", body);
    let answer = post(&dev, ORDER_HOOK, &signed(&both, "r-2"), body).await;
    assert_status(
        &dev,
        &answer,
        201,
        "signed with the current and the next key",
    );
    let neither = sign(&["retired-key", "next-key"], now, "r-3", body);
    let answer = post(&dev, ORDER_HOOK, &signed(&neither, "r-3"), body).await;
    assert_unauthorized(&dev, &answer, "signed with two keys, neither the trigger's");
    assert_eq!(dev.list_runs("order-hook", "").await.len(), 2);
}

#[tokio::test]
async fn the_signature_tolerance_is_configurable() {
    let dev = launch_env(&[("RPAFLOW_HOOKS__SIGNATURE_TOLERANCE", "30s")]).await;
    let body = br#"{"customer": {"name": "Ada"}}"#;
    let minute_ago = sign(&[KEY], now() - 60, "late-1", body);
    let answer = post(&dev, ORDER_HOOK, &signed(&minute_ago, "late-1"), body).await;
    assert_unauthorized(&dev, &answer, "a minute old with a 30 s tolerance");
    let recent = sign(&[KEY], now() - 10, "late-2", body);
    let answer = post(&dev, ORDER_HOOK, &signed(&recent, "late-2"), body).await;
    assert_status(&dev, &answer, 201, "ten seconds old with a 30 s tolerance");
    assert_eq!(dev.list_runs("order-hook", "").await.len(), 1);
}

#[tokio::test]
async fn whatever_is_missing_or_wrong_the_answer_is_the_same() {
    let dev = launch().await;
    // A flow without a webhook, one with two, and one whose secret is not set.
    dev.register("name: no-hook\nsteps:\n  - { id: a, uses: echo }\n")
        .await;
    dev.register(
        r#"
name: two-hooks
triggers:
  - { id: crm, webhook: { signature_secret: HOOK_KEY } }
  - { id: shop, webhook: { signature_secret: HOOK_KEY } }
steps:
  - { id: a, uses: echo }
"#,
    )
    .await;
    dev.register(
        r#"
name: unset-hook
triggers:
  - { id: in, webhook: { signature_secret: NEVER_SET } }
steps:
  - { id: a, uses: echo }
"#,
    )
    .await;
    let body = br#"{"customer": {"name": "Ada"}}"#;
    let signature = sign(&[KEY], now(), "same-1", body);
    let good = signed(&signature, "same-1");
    let forged = signed("t=1,v1=00", "same-1");
    let mut answers = Vec::new();
    for (what, path, headers) in [
        ("an unknown namespace", "/hooks/prod/order-hook", &good),
        ("an unknown flow", "/hooks/default/no-such-flow", &good),
        ("a flow without a webhook", "/hooks/default/no-hook", &good),
        (
            "an unknown trigger id",
            "/hooks/default/order-hook?trigger=nope",
            &good,
        ),
        (
            "another flow's trigger id",
            "/hooks/default/order-hook?trigger=raw",
            &good,
        ),
        (
            "two webhooks and none named",
            "/hooks/default/two-hooks",
            &good,
        ),
        (
            "a secret that is not set",
            "/hooks/default/unset-hook",
            &good,
        ),
        ("a bad signature", ORDER_HOOK, &forged),
        (
            "no credentials at all",
            ORDER_HOOK,
            &[("X-Rpaflow-Delivery", "same-1"); 2],
        ),
        (
            "a signature where a token is due",
            "/hooks/default/token-hook",
            &good,
        ),
    ] {
        let answer = post(&dev, path, headers, body).await;
        assert_unauthorized(&dev, &answer, what);
        answers.push((what, without_date(&answer.raw)));
    }
    let (first_what, first) = &answers[0];
    for (what, raw) in &answers[1..] {
        assert_eq!(
            raw, first,
            "`{what}` and `{first_what}` must be answered alike, status, headers and body"
        );
    }
    // What was right all along: the trigger named, then the only one.
    let empty = sign(&[KEY], now(), "same-2", b"{}");
    let answer = post(
        &dev,
        "/hooks/default/two-hooks?trigger=shop",
        &signed(&empty, "same-2"),
        b"{}",
    )
    .await;
    assert_status(&dev, &answer, 201, "the trigger named in the query");
    let answer = post(
        &dev,
        "/hooks/default/order-hook?trigger=inbound",
        &good,
        body,
    )
    .await;
    assert_status(&dev, &answer, 201, "the only trigger, named");
    assert_eq!(dev.list_runs("order-hook", "").await.len(), 1);
    assert_eq!(dev.list_runs("two-hooks", "").await.len(), 1);
    assert!(dev.list_runs("unset-hook", "").await.is_empty());
}

#[tokio::test]
async fn bearer_tokens_authenticate_without_a_delivery_id() {
    let dev = launch().await;
    let body = br#"{"n": 7}"#;
    let wrong = post(
        &dev,
        "/hooks/default/token-hook",
        &[("Authorization", "Bearer hook-token-7c2")],
        body,
    )
    .await;
    assert_unauthorized(&dev, &wrong, "a wrong bearer token");
    // A wrong token with a malformed delivery id: still the bare 401, not the id's 400.
    let wrong = post(
        &dev,
        "/hooks/default/token-hook",
        &[
            ("Authorization", "Bearer hook-token-7c2"),
            ("X-Rpaflow-Delivery", "has.a.dot"),
        ],
        body,
    )
    .await;
    assert_unauthorized(&dev, &wrong, "a wrong bearer token and a bad delivery id");
    assert!(dev.list_runs("token-hook", "").await.is_empty());

    let bearer = format!("Bearer {TOKEN}");
    let right = [("Authorization", bearer.as_str())];
    let first = post(&dev, "/hooks/default/token-hook", &right, body).await;
    assert_status(&dev, &first, 201, "the right bearer token");
    let run_id = first.body["run_id"].as_str().expect("a run id").to_owned();
    let run = dev.wait_succeeded(&run_id, TIMEOUT).await;
    assert_eq!(run.inputs_json.parse::<Json>().ok(), Some(json!({"n": 7})));
    assert_eq!(run.trigger, "webhook:raw");
    // Without a delivery id every delivery is a run; with one, a repeat is the same run.
    let second = post(&dev, "/hooks/default/token-hook", &right, body).await;
    assert_status(&dev, &second, 201, "the same body again, without an id");
    let with_id = [
        ("Authorization", bearer.as_str()),
        ("X-Rpaflow-Delivery", "t-1"),
    ];
    let third = post(&dev, "/hooks/default/token-hook", &with_id, body).await;
    assert_status(&dev, &third, 201, "with a delivery id");
    let again = post(&dev, "/hooks/default/token-hook", &with_id, body).await;
    assert_status(&dev, &again, 200, "the same delivery id again");
    assert_eq!(again.body["run_id"], third.body["run_id"], "{}", again.raw);
    // Authenticated, a malformed id is the caller's to fix: 400 with the rule.
    let dotted = [
        ("Authorization", bearer.as_str()),
        ("X-Rpaflow-Delivery", "has.a.dot"),
    ];
    let answer = post(&dev, "/hooks/default/token-hook", &dotted, body).await;
    assert_status(&dev, &answer, 400, "a delivery id with dots");
    assert!(answer.raw.contains("without `.`"), "{}", answer.raw);
    assert_eq!(dev.list_runs("token-hook", "").await.len(), 3);
}

#[tokio::test]
async fn malformed_or_unfitting_bodies_are_refused_with_the_reason() {
    let dev = launch().await;

    // Not JSON: 400 with serde_json's message, line and column.
    let body = b"{\"customer\": {\"name\": \"Ada\",}}";
    let answer = post_signed(&dev, "m-1", body).await;
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
    let answer = post_signed(&dev, "m-2", body).await;
    assert_status(&dev, &answer, 422, "input mapping to a string");
    assert!(answer.raw.contains("must give an object"), "{}", answer.raw);

    // An object the flow's inputs refuse: 422 with the flow's message.
    let body = br#"{"customer": {"tier": "gold"}}"#;
    let answer = post_signed(&dev, "m-3", body).await;
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

    // But a malformed body that is not authenticated learns nothing of its shape.
    let answer = post(
        &dev,
        ORDER_HOOK,
        &signed("t=1,v1=00", "m-4"),
        b"{\"customer\":",
    )
    .await;
    assert_unauthorized(&dev, &answer, "malformed JSON, unsigned");

    assert!(dev.list_runs("order-hook", "").await.is_empty());
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

/// A webhook runs the flow of the namespace its path names, checked with that namespace's
/// secret: the same flow name and secret name in `default` (the sandbox) and `team-a`, with
/// different keys. Each key starts only its own namespace's run; an unknown namespace, or a
/// namespace without the flow, is the same 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_runs_in_the_namespace_its_path_names_with_that_namespaces_secret() {
    let dev = launch().await;
    let url = dev.url();
    let cli = |args: &[&str]| {
        let mut full: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        full.extend(["--server".into(), url.clone()]);
        async move {
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            rpaflow_tests::rpaflow(&refs, TIMEOUT).await
        }
    };
    cli(&["namespace", "create", "team-a"])
        .await
        .expect_success();
    cli(&["namespace", "create", "team-b"])
        .await
        .expect_success();
    const TEAM_KEY: &str = "team-a-hook-key-71c2";
    cli(&[
        "secret", "set", "HOOK_KEY", "--value", TEAM_KEY, "--ns", "team-a",
    ])
    .await
    .expect_success();
    let file = dev.data_dir().join("team-order-hook.yaml");
    std::fs::write(&file, SIGNED).unwrap();
    cli(&["flow", "register", file.to_str().unwrap(), "--ns", "team-a"])
        .await
        .expect_success();

    let body = br#"{"customer": {"name": "Ada"}}"#;
    let deliver = |path: &'static str, key: &'static str, delivery: &'static str| {
        let dev = &dev;
        async move {
            let signature = sign(&[key], now(), delivery, body);
            post(dev, path, &signed(&signature, delivery), body).await
        }
    };
    const TEAM_HOOK: &str = "/hooks/team-a/order-hook";
    // Each namespace's key opens only its own namespace's hook.
    let wrong = deliver(TEAM_HOOK, KEY, "d-1").await;
    assert_eq!(
        (wrong.status, wrong.raw.ends_with(UNAUTHORIZED)),
        (401, true),
        "{}",
        wrong.raw
    );
    let wrong = deliver(ORDER_HOOK, TEAM_KEY, "d-2").await;
    assert_eq!(wrong.status, 401, "{}", wrong.raw);
    // Unknown namespace, and a namespace without the flow: the same 401, nothing learned.
    for path in ["/hooks/nobody/order-hook", "/hooks/team-b/order-hook"] {
        let answer = deliver(path, TEAM_KEY, "d-3").await;
        assert_eq!(answer.status, 401, "{path}: {}", answer.raw);
        assert!(answer.raw.ends_with(UNAUTHORIZED), "{path}: {}", answer.raw);
    }
    let accepted = deliver(TEAM_HOOK, TEAM_KEY, "d-4").await;
    assert_eq!(accepted.status, 201, "{}", accepted.raw);
    let run_id = accepted.body["run_id"].as_str().unwrap().to_owned();

    // The run is team-a's: listed there, not found from `default`.
    let got = cli(&["run", "get", &run_id, "--ns", "team-a", "--output", "json"]).await;
    got.expect_success();
    assert!(got.stdout.contains("\"namespace\":\"team-a\""), "{got}");
    let hidden = cli(&["run", "get", &run_id]).await;
    assert!(hidden.stderr.contains("NotFound"), "{hidden}");
    let in_default = dev.list_runs("order-hook", "").await;
    assert!(
        in_default.iter().all(|r| r.run_id != run_id),
        "{in_default:?}"
    );
}
