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
    let run = dev.wait_finished(&id, TIMEOUT).await;
    assert_eq!(
        run.status(),
        pb::RunStatus::Failed,
        "{}",
        rpaflow_tests::describe_run(&run)
    );
    let error = run.error.expect("a failed run has an error");
    assert_eq!(error.code, "secret_missing", "{error:?}");
    assert!(error.message.contains("NOT_SET"), "{error:?}");
}
