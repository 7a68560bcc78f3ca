//! API tokens and roles (issue 13): with `[auth] enabled`, every RPC of the orchestrator's
//! services, taken from the compiled service definitions, is tried with no token, a malformed
//! one, a revoked one, an expired one, and a token of every role; each answers as the role
//! table says and refused calls change nothing. A new RPC without an expectation here fails
//! the test.

use std::collections::BTreeMap;
use std::time::Duration;

use rpaflow_tests::{Dev, rpaflow, served_methods};
use serde_json::{Value as Json, json};
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(30);

/// What each RPC needs, written here independently of the server's table.
fn expectation(method: &str) -> Option<&'static str> {
    Some(match method {
        "/rpaflow.v1.FlowService/GetFlow"
        | "/rpaflow.v1.FlowService/ListFlows"
        | "/rpaflow.v1.FlowService/ValidateFlow"
        | "/rpaflow.v1.FlowService/GetRun"
        | "/rpaflow.v1.FlowService/ListRuns"
        | "/rpaflow.v1.FlowService/WatchRun"
        | "/rpaflow.v1.FlowService/ListApprovals"
        | "/rpaflow.v1.FlowService/ListSchedules"
        | "/rpaflow.v1.AuthService/WhoAmI"
        | "/rpaflow.v1.AuthService/ListNamespaces" => "read",
        "/rpaflow.v1.FlowService/SignalRun" => "approve",
        "/rpaflow.v1.FlowService/StartRun"
        | "/rpaflow.v1.FlowService/CancelRun"
        | "/rpaflow.v1.FlowService/RetryRun"
        | "/rpaflow.v1.FlowService/PauseSchedule"
        | "/rpaflow.v1.FlowService/ResumeSchedule"
        | "/rpaflow.v1.FlowService/TriggerSchedule" => "operate",
        "/rpaflow.v1.FlowService/RegisterFlow" => "develop",
        "/rpaflow.v1.FlowService/SetSecret"
        | "/rpaflow.v1.FlowService/DeleteSecret"
        | "/rpaflow.v1.FlowService/ListSecrets"
        | "/rpaflow.v1.AuthService/CreateToken"
        | "/rpaflow.v1.AuthService/ListTokens"
        | "/rpaflow.v1.AuthService/RevokeToken"
        | "/rpaflow.v1.AuthService/ListAudit"
        // An admin of `default` (every token here is of `default`); tests/tests/namespaces.rs
        // checks that a team's admin may not.
        | "/rpaflow.v1.AuthService/CreateNamespace" => "admin",
        _ => return None,
    })
}

fn allowed(role: &str, need: &str) -> bool {
    match role {
        "admin" => true,
        "developer" => matches!(need, "read" | "operate" | "develop"),
        "operator" => matches!(need, "read" | "operate"),
        "approver" => matches!(need, "read" | "approve"),
        "viewer" => need == "read",
        other => panic!("unknown role {other}"),
    }
}

/// Calls `path` with an empty message and `token`; the status code of the answer.
async fn call(dev: &Dev, path: &str, streaming: bool, token: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(dev.channel().await);
    grpc.ready().await.expect("the channel is ready");
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ASCII"),
        );
    }
    let codec = rpaflow_proto::codec::ProtoCodec::<(), ()>::default();
    let path = path.parse().expect("a path");
    let result = if streaming {
        grpc.server_streaming(request, path, codec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(request, path, codec).await.map(|_| ())
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_each_credential_as_the_role_table_says_and_refusals_change_nothing() {
    let dev = Dev::launch_env(&[], &[("RPAFLOW_AUTH__ENABLED", "true")]).await;
    // The first start made an admin token, shown once and kept in DATA_DIR/admin.token (0600).
    let admin_file = dev.data_dir().join("admin.token");
    let admin = std::fs::read_to_string(&admin_file)
        .expect("the first admin token is written to the data directory")
        .trim()
        .to_owned();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&admin_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        dev.output().contains(&admin),
        "the first admin token is shown once at start"
    );

    let mut tokens: BTreeMap<&str, String> = BTreeMap::new();
    for role in ["admin", "developer", "operator", "approver", "viewer"] {
        let made = dev
            .cli_json(
                &admin,
                &[
                    "token",
                    "create",
                    "--role",
                    role,
                    "--name",
                    &format!("e2e-{role}"),
                ],
            )
            .await;
        assert_eq!(made["role"], json!(role));
        tokens.insert(role, made["token"].as_str().expect("the token").to_owned());
    }
    let revoked = dev
        .cli_json(
            &admin,
            &["token", "create", "--role", "admin", "--name", "gone"],
        )
        .await;
    dev.cli_json(
        &admin,
        &["token", "revoke", revoked["id"].as_str().unwrap()],
    )
    .await;
    let expired = dev
        .cli_json(
            &admin,
            &[
                "token",
                "create",
                "--role",
                "admin",
                "--name",
                "brief",
                "--expires",
                "1ms",
            ],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before_tokens = dev.cli_json(&admin, &["token", "list"]).await;

    let methods = served_methods();
    assert!(methods.len() > 20, "{methods:?}");
    let mut unauthenticated = vec![
        None,
        Some("garbage".to_owned()),
        Some(format!("{}x", tokens["admin"])),
        Some(revoked["token"].as_str().unwrap().to_owned()),
        Some(expired["token"].as_str().unwrap().to_owned()),
    ];
    // A well-formed token of an id that does not exist.
    unauthenticated.push(Some(
        "rpf_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
    ));
    for (path, streaming) in &methods {
        let need = expectation(path)
            .unwrap_or_else(|| panic!("{path} is new: say here which permission it needs"));
        for token in &unauthenticated {
            let code = call(&dev, path, *streaming, token.as_deref()).await;
            assert_eq!(code, Code::Unauthenticated, "{path} with {token:?}");
        }
        for (role, token) in &tokens {
            let code = call(&dev, path, *streaming, Some(token)).await;
            if allowed(role, need) {
                assert!(
                    !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                    "{path} as {role}: {code:?}"
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{path} as {role}");
            }
        }
    }
    // Health checks need no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(dev.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health answers without a token");

    // Nothing was made by the refused calls (nor by the allowed ones with empty messages).
    let after_tokens = dev.cli_json(&admin, &["token", "list"]).await;
    assert_eq!(before_tokens, after_tokens);
    let url = dev.url();
    for listing in [
        vec!["flow", "list"],
        vec!["run", "list"],
        vec!["secret", "list"],
    ] {
        let mut full = listing.clone();
        full.extend(["--server", &url, "--token", &admin, "--output", "json"]);
        let out = rpaflow(&full, TIMEOUT).await;
        out.expect_success();
        let listed: Json = serde_json::from_str(out.stdout.trim()).unwrap_or(Json::Null);
        let items = listed.get("runs").unwrap_or(&listed);
        assert!(
            items.as_array().is_some_and(Vec::is_empty),
            "{listing:?} after the matrix: {out}"
        );
    }

    // The CLI says what is missing; with a token, the caller is named in the audit log.
    let out = rpaflow(&["run", "list", "--server", &url], TIMEOUT).await;
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(
        out.stderr.contains("a valid API token is required"),
        "{out}"
    );
    let who = dev.cli_json(&tokens["viewer"], &["token", "whoami"]).await;
    assert_eq!(
        (who["name"].clone(), who["role"].clone()),
        (json!("e2e-viewer"), json!("viewer"))
    );
    let audit = rpaflow(
        &[
            "audit", "--server", &url, "--token", &admin, "--output", "json", "--limit", "1000",
        ],
        TIMEOUT,
    )
    .await;
    audit.expect_success();
    let entries: Vec<Json> = audit
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON entry a line"))
        .collect();
    assert!(
        entries.iter().any(
            |e| e["method"] == json!("/rpaflow.v1.AuthService/CreateToken")
                && e["actor"] == json!("bootstrap-admin")
                && e["outcome"] == json!("Ok")
        ),
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["method"] == json!("/rpaflow.v1.FlowService/StartRun")
                && e["actor"] == json!("e2e-operator")),
        "{entries:?}"
    );
    // Refused calls never reached a service, so they are not changes; reads are not recorded.
    assert!(
        entries
            .iter()
            .all(|e| e["method"] != json!("/rpaflow.v1.FlowService/ListRuns")),
        "{entries:?}"
    );
}

/// A second start of the same data directory makes no new admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_token_is_made_once() {
    let mut dev = Dev::launch_env(&[], &[("RPAFLOW_AUTH__ENABLED", "true")]).await;
    let first = std::fs::read_to_string(dev.data_dir().join("admin.token")).unwrap();
    dev.restart().await;
    let again = std::fs::read_to_string(dev.data_dir().join("admin.token")).unwrap();
    assert_eq!(first, again);
    let tokens = dev.cli_json(first.trim(), &["token", "list"]).await;
    assert_eq!(tokens.as_array().map(Vec::len), Some(1), "{tokens}");
}

/// An approval answered with a token records the token's name, not what the caller claims; a
/// viewer may not answer at all, and a step's `approvers` keep out everyone else, admins too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_answer_records_the_token_that_gave_it() {
    let dev = Dev::launch_env(&[], &[("RPAFLOW_AUTH__ENABLED", "true")]).await;
    let admin = std::fs::read_to_string(dev.data_dir().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let approver = dev
        .cli_json(
            &admin,
            &["token", "create", "--role", "approver", "--name", "alice"],
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let viewer = dev
        .cli_json(
            &admin,
            &["token", "create", "--role", "viewer", "--name", "bob"],
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = dev.url();
    let flow = dev.data_dir().join("ask.yaml");
    std::fs::write(
        &flow,
        "name: ask\nsteps:\n  - { id: ok, uses: approval, with: { message: 'go?', approvers: { roles: [approver] } } }\n",
    )
    .unwrap();
    let flow = flow.to_str().unwrap();
    rpaflow(
        &[
            "flow", "register", flow, "--server", &url, "--token", &admin,
        ],
        TIMEOUT,
    )
    .await
    .expect_success();
    let run = dev.cli_json(&admin, &["run", "start", "ask"]).await;
    let run_id = run["run"]["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{run}"))
        .to_owned();
    // Wait for the approval step.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let got = dev.cli_json(&viewer, &["run", "get", &run_id]).await;
        if got.to_string().contains("waiting_approval")
            || got.to_string().contains("WAITING_APPROVAL")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = rpaflow(
        &[
            "run",
            "signal",
            &run_id,
            "ok",
            "--approve",
            "--server",
            &url,
            "--token",
            &viewer,
        ],
        TIMEOUT,
    )
    .await;
    assert_ne!(refused.code(), Some(0), "{refused}");
    assert!(refused.stderr.contains("PermissionDenied"), "{refused}");
    let admin_refused = rpaflow(
        &[
            "run",
            "signal",
            &run_id,
            "ok",
            "--approve",
            "--server",
            &url,
            "--token",
            &admin,
        ],
        TIMEOUT,
    )
    .await;
    assert_ne!(admin_refused.code(), Some(0), "{admin_refused}");
    assert!(
        admin_refused
            .stderr
            .contains("step `ok` may only be answered by roles approver")
            && admin_refused.stderr.contains("PermissionDenied"),
        "{admin_refused}"
    );
    // The inbox says who may answer.
    let inbox = dev.cli_json(&viewer, &["approvals", "list"]).await;
    assert_eq!(
        inbox[0]["approvers"]["roles"],
        json!(["approver"]),
        "{inbox}"
    );
    rpaflow(
        &[
            "run",
            "signal",
            &run_id,
            "ok",
            "--approve",
            "--by",
            "mallory",
            "--server",
            &url,
            "--token",
            &approver,
        ],
        TIMEOUT,
    )
    .await
    .expect_success();
    let done = dev.cli_json(&viewer, &["run", "get", &run_id]).await;
    let text = done.to_string();
    assert!(
        text.contains("alice") && !text.contains("mallory"),
        "{text}"
    );
}
