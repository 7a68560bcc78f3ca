//! Secrets: a step uses one, and its value appears nowhere a person or a program can read it
//! back: not in run records, events, CLI or API output, nor in the logs.

use std::time::Duration;

use rpaflow_tests::{Dev, HttpServer, pb, rpaflow};
use serde_json::json;

const SECRET: &str = "s3cr3t-Zq81-do-not-leak";
const TIMEOUT: Duration = Duration::from_secs(30);

const FLOW: &str = r#"
name: uses-secret
inputs:
  api: { type: string }
steps:
  - id: call
    uses: http
    with:
      url: "{{ inputs.api }}/echo/{{ secrets.API_TOKEN }}"
      headers: { Authorization: "Bearer {{ secrets.API_TOKEN }}" }
  - id: show
    uses: log
    needs: call
    with: { message: "the API answered for {{ steps.call.output.body.path }}" }
outputs:
  path: "{{ steps.call.output.body.path }}"
"#;

const MISSING: &str = r#"
name: missing-secret
steps:
  - id: call
    uses: echo
    with: { token: "{{ secrets.NOT_SET }}" }
"#;

#[tokio::test]
async fn a_secret_reaches_the_api_and_nothing_else() {
    let api = HttpServer::start();
    let dev = Dev::launch().await;
    let url = dev.url();
    rpaflow(
        &[
            "secret",
            "set",
            "API_TOKEN",
            "--value",
            SECRET,
            "--server",
            &url,
        ],
        TIMEOUT,
    )
    .await
    .expect_success();
    dev.register(FLOW).await;
    let id = dev.run("uses-secret", json!({"api": api.url()})).await;
    let run = dev.wait_finished(&id, TIMEOUT).await;
    assert_eq!(
        run.status(),
        pb::RunStatus::Succeeded,
        "{}",
        rpaflow_tests::describe_run(&run)
    );

    // The API got the real value, in the header and in the path.
    let seen = api.requests_to("/echo/");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, format!("/echo/{SECRET}"));
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {SECRET}").as_str())
    );

    // What came back (the API echoed the path) is masked.
    let outputs: serde_json::Value =
        serde_json::from_str(&run.outputs_json).expect("outputs are JSON");
    assert_eq!(outputs, json!({"path": "/echo/***"}));

    // Nowhere to be read back: the run record, its events, the CLI, the secret list, the logs.
    let mut places = vec![
        ("GetRun", format!("{run:?}")),
        ("WatchRun", format!("{:?}", dev.events(&id).await.0)),
    ];
    for args in [
        vec!["run", "get", id.as_str(), "--output", "json"],
        vec!["run", "get", id.as_str()],
        vec!["run", "watch", id.as_str(), "--output", "json"],
        vec!["run", "list", "--output", "json"],
        vec!["secret", "list", "--output", "json"],
        vec!["flow", "show", "uses-secret", "--output", "json"],
    ] {
        let mut full = args.clone();
        full.extend(["--server", url.as_str()]);
        let out = rpaflow(&full, TIMEOUT).await;
        out.expect_success();
        places.push(("CLI", out.to_string()));
    }
    let listed = rpaflow(&["secret", "list", "--server", &url], TIMEOUT).await;
    assert!(listed.stdout.contains("API_TOKEN"), "{listed}");
    places.push(("rpaflow dev output", dev.output()));
    for (place, text) in &places {
        assert!(
            !text.contains(SECRET),
            "the secret's value appears in {place}:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_missing_secret_fails_the_step_naming_it() {
    let dev = Dev::launch().await;
    dev.register(MISSING).await;
    let id = dev.run("missing-secret", json!({})).await;
    let error = dev.wait_failed_error(&id, TIMEOUT).await;
    assert_eq!(error.code, "secret_missing", "{error:?}");
    assert!(error.message.contains("NOT_SET"), "{error:?}");
}

/// Sets `API_TOKEN` on a running `rpaflow dev`.
async fn set_token(dev: &Dev, value: &str) {
    rpaflow(
        &[
            "secret",
            "set",
            "API_TOKEN",
            "--value",
            value,
            "--server",
            &dev.url(),
        ],
        TIMEOUT,
    )
    .await
    .expect_success();
}

/// Forms of the secret a program could derive; none may appear anywhere.
fn derived_forms(secret: &str) -> Vec<String> {
    vec![
        secret.to_owned(),
        secret.to_uppercase(),
        secret.chars().rev().collect(),
        secret.replace('-', ""),
    ]
}

/// Steps that have no reason to hold a secret's value never get it: a transform that would
/// reverse, upper-case or split it, a `log` step at `warn`, an `echo`. They see `***`.
const NO_LEAK: &str = r#"
name: no-leak
steps:
  - id: reshape
    uses: transform
    with:
      data: [{ t: "{{ secrets.API_TOKEN }}" }]
      ops:
        - map: { backwards: "t | reverse", loud: "t | upper", parts: "t | split('-') | list", joined: "t | replace('-', '')" }
  - id: shout
    uses: log
    with: { level: warn, message: "token is {{ secrets.API_TOKEN }} / {{ secrets.API_TOKEN | upper }}" }
  - id: mirror
    uses: echo
    with: { token: "{{ secrets.API_TOKEN }}" }
"#;

#[tokio::test]
async fn steps_that_send_nothing_anywhere_never_see_a_secret() {
    let dev = Dev::launch().await;
    set_token(&dev, SECRET).await;
    dev.register(NO_LEAK).await;
    let id = dev.run("no-leak", json!({})).await;
    let run = dev.wait_succeeded(&id, TIMEOUT).await;
    let reshape = run
        .steps
        .iter()
        .find(|s| s.step_id == "reshape")
        .expect("the reshape step");
    let output: serde_json::Value = serde_json::from_str(&reshape.output_json).unwrap();
    assert_eq!(output["data"][0]["t"], json!("***"), "{output}");
    assert_eq!(output["data"][0]["backwards"], json!("***"), "{output}");
    let places = [
        format!("{run:?}"),
        format!("{:?}", dev.events(&id).await.0),
        dev.output(),
    ];
    for place in &places {
        for form in derived_forms(SECRET) {
            assert!(!place.contains(&form), "`{form}` leaked:\n{place}");
        }
    }
    assert!(dev.output().contains("token is ***"), "{}", dev.output());
}

/// A run's input that holds a secret marker, copied from another run's events (where step
/// inputs show them) or written by hand, gets no secret: the step fails and the API never sees
/// the value, although the same step legitimately sends it in a header.
const ECHO_PATH: &str = r#"
name: echo-path
inputs:
  api: { type: string }
  path: { type: string, default: plain }
steps:
  - id: call
    uses: http
    with:
      url: "{{ inputs.api }}/echo/{{ inputs.path }}"
      headers: { Authorization: "Bearer {{ secrets.API_TOKEN }}" }
"#;

#[tokio::test]
async fn a_secret_marker_in_run_inputs_gets_no_secret() {
    let api = HttpServer::start();
    let dev = Dev::launch().await;
    set_token(&dev, SECRET).await;
    dev.register(ECHO_PATH).await;
    // A first run, as an attacker who may read runs would: its events show the marker.
    let first = dev.run("echo-path", json!({"api": api.url()})).await;
    dev.wait_succeeded(&first, TIMEOUT).await;
    let events = format!("{:?}", dev.events(&first).await.0);
    let start = events
        .find("⟦secret:")
        .expect("the step input shows a marker");
    let end = start + events[start..].find('⟧').expect("a whole marker") + '⟧'.len_utf8();
    let copied = events[start..end].to_owned();
    assert!(copied.starts_with("⟦secret:API_TOKEN:"), "{copied}");

    for forged in [copied.clone(), "⟦secret:API_TOKEN⟧".to_owned()] {
        let id = dev
            .run("echo-path", json!({"api": api.url(), "path": forged}))
            .await;
        let error = dev.wait_failed_error(&id, TIMEOUT).await;
        assert_eq!(error.code, "secret_refused", "{error:?}");
        assert!(error.message.contains("API_TOKEN"), "{error:?}");
    }
    for seen in api.requests_to("/echo/") {
        assert!(
            !seen.path.contains(SECRET),
            "the secret reached the API in {}",
            seen.path
        );
    }
    assert_eq!(
        api.requests_to("/echo/").len(),
        1,
        "only the honest run called the API"
    );
}

#[tokio::test]
async fn the_data_directory_holds_no_secret_in_clear_and_only_its_owner_may_read_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let api = HttpServer::start();
    let mut dev = Dev::launch().await;
    set_token(&dev, SECRET).await;
    dev.register(ECHO_PATH).await;
    let id = dev.run("echo-path", json!({"api": api.url()})).await;
    dev.wait_succeeded(&id, TIMEOUT).await;
    // After a restart the value is opened again from the sealed copy.
    dev.restart().await;
    let again = dev.run("echo-path", json!({"api": api.url()})).await;
    dev.wait_succeeded(&again, TIMEOUT).await;
    let seen = api.requests_to("/echo/");
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {SECRET}").as_str())
    );

    let root = dev.data_dir().to_path_buf();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700, "{}", root.display());
    let mut todo = vec![root];
    let mut files = 0;
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                todo.push(path);
                continue;
            }
            files += 1;
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            let bytes = std::fs::read(&path).unwrap();
            for form in derived_forms(SECRET) {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                    "`{form}` is in {}",
                    path.display()
                );
            }
        }
    }
    assert!(files > 3, "the data directory has its files");
}
