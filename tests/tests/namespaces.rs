//! Namespaces (issue 13): two teams on one orchestrator. Every RPC of the served services, taken
//! from the compiled service definitions, is tried by each role of one namespace against what
//! belongs to the other: it is refused (PERMISSION_DENIED), or answers NOT_FOUND as for what does
//! not exist, or acts in the caller's own namespace only; afterwards the other namespace is as it
//! was. With the same flow and secret names in both, each run uses its own namespace's.

use std::time::Duration;

use rpaflow_proto::v1::auth_service_client::AuthServiceClient;
use rpaflow_proto::v1::flow_service_client::FlowServiceClient;
use rpaflow_tests::{Dev, HttpServer, pb, rpaflow, served_methods};
use serde_json::json;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const TIMEOUT: Duration = Duration::from_secs(30);
const ROLES: [&str; 5] = ["admin", "developer", "operator", "approver", "viewer"];

/// Team A's flow: an approval to wait on, and a schedule that never fires during the test.
const ALPHA_FLOW: &str = r#"
name: alpha-only
triggers:
  - { id: yearly, schedule: { cron: "0 0 1 1 *" } }
steps:
  - id: ok
    uses: approval
    with: { message: "alpha waits" }
"#;

/// Who a call is made as: a token, and the namespace header if any.
#[derive(Clone)]
struct As {
    token: Option<String>,
    namespace: Option<String>,
}

impl tonic::service::Interceptor for As {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ASCII"),
            );
        }
        if let Some(namespace) = &self.namespace {
            request
                .metadata_mut()
                .insert("rpaflow-namespace", namespace.parse().expect("ASCII"));
        }
        Ok(request)
    }
}

type Flows = FlowServiceClient<InterceptedService<Channel, As>>;
type Auth = AuthServiceClient<InterceptedService<Channel, As>>;

fn token(token: &str) -> As {
    As {
        token: Some(token.to_owned()),
        namespace: None,
    }
}

fn auth(ch: &Channel, who: &As) -> Auth {
    AuthServiceClient::with_interceptor(ch.clone(), who.clone())
}

/// Team A's things that team B aims at.
struct Alpha {
    run_id: String,
    token_id: String,
}

/// The answer to a call: its code, and for a success the answer's text (to look for A's names).
type Answer = (Code, String);

fn answer<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> Answer {
    match result {
        Ok(response) => (Code::Ok, format!("{:?}", response.into_inner())),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// Calls `method` as `who`, aimed at team A's things. Panics for an RPC this test does not know:
/// a new RPC must be added here, with what it may do across namespaces.
async fn attempt(ch: &Channel, who: &As, method: &str, alpha: &Alpha) -> Answer {
    let mut f = flows_client(ch, who);
    let mut a = auth(ch, who);
    let run = || alpha.run_id.clone();
    let schedule = || pb::ScheduleRef {
        flow: "alpha-only".into(),
        trigger: "yearly".into(),
    };
    match method {
        "rpaflow.v1.FlowService/RegisterFlow" => answer(
            f.register_flow(pb::RegisterFlowRequest {
                source: "name: beta-made\nsteps: [{ id: a, uses: log }]\n".into(),
                file_name: "b.yaml".into(),
            })
            .await,
        ),
        "rpaflow.v1.FlowService/ValidateFlow" => answer(
            f.validate_flow(pb::ValidateFlowRequest {
                source: "name: beta-checked\nsteps: [{ id: a, uses: log }]\n".into(),
                file_name: "a.yaml".into(),
            })
            .await,
        ),
        "rpaflow.v1.FlowService/GetFlow" => answer(
            f.get_flow(pb::GetFlowRequest {
                name: "alpha-only".into(),
                version: 0,
            })
            .await,
        ),
        "rpaflow.v1.FlowService/ListFlows" => answer(f.list_flows(pb::ListFlowsRequest {}).await),
        "rpaflow.v1.FlowService/StartRun" => answer(
            f.start_run(pb::StartRunRequest {
                flow: "alpha-only".into(),
                ..Default::default()
            })
            .await,
        ),
        "rpaflow.v1.FlowService/GetRun" => {
            answer(f.get_run(pb::GetRunRequest { run_id: run() }).await)
        }
        "rpaflow.v1.FlowService/ListRuns" => answer(
            f.list_runs(pb::ListRunsRequest {
                flow: "alpha-only".into(),
                ..Default::default()
            })
            .await,
        ),
        "rpaflow.v1.FlowService/CancelRun" => answer(
            f.cancel_run(pb::CancelRunRequest {
                run_id: run(),
                reason: "beta was here".into(),
            })
            .await,
        ),
        "rpaflow.v1.FlowService/RetryRun" => {
            answer(f.retry_run(pb::RetryRunRequest { run_id: run() }).await)
        }
        "rpaflow.v1.FlowService/SignalRun" => answer(
            f.signal_run(pb::SignalRunRequest {
                run_id: run(),
                step_id: "ok".into(),
                approve: false,
                comment: "beta says no".into(),
                by: "beta".into(),
            })
            .await,
        ),
        "rpaflow.v1.FlowService/ListApprovals" => {
            answer(f.list_approvals(pb::ListApprovalsRequest::default()).await)
        }
        "rpaflow.v1.FlowService/WatchRun" => match f
            .watch_run(pb::WatchRunRequest {
                run_id: run(),
                from_seq: 0,
            })
            .await
        {
            Ok(stream) => {
                // A stream may fail at its first message rather than at the call.
                let mut stream = stream.into_inner();
                match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                    Ok(Ok(Some(event))) => (Code::Ok, format!("{event:?}")),
                    Ok(Ok(None)) => (Code::Ok, String::new()),
                    Ok(Err(status)) => (status.code(), status.message().to_owned()),
                    Err(_) => (Code::Ok, String::new()),
                }
            }
            Err(status) => (status.code(), status.message().to_owned()),
        },
        "rpaflow.v1.FlowService/SetSecret" => answer(
            f.set_secret(pb::SetSecretRequest {
                name: "SHARED_KEY".into(),
                value: "beta-value".into(),
            })
            .await,
        ),
        "rpaflow.v1.FlowService/DeleteSecret" => answer(
            f.delete_secret(pb::DeleteSecretRequest {
                name: "SHARED_KEY".into(),
            })
            .await,
        ),
        "rpaflow.v1.FlowService/ListSecrets" => {
            answer(f.list_secrets(pb::ListSecretsRequest {}).await)
        }
        "rpaflow.v1.FlowService/ListSchedules" => {
            answer(f.list_schedules(pb::ListSchedulesRequest::default()).await)
        }
        "rpaflow.v1.FlowService/PauseSchedule" => answer(f.pause_schedule(schedule()).await),
        "rpaflow.v1.FlowService/ResumeSchedule" => answer(f.resume_schedule(schedule()).await),
        "rpaflow.v1.FlowService/TriggerSchedule" => answer(f.trigger_schedule(schedule()).await),
        "rpaflow.v1.AuthService/CreateNamespace" => answer(
            a.create_namespace(pb::CreateNamespaceRequest {
                name: "beta-extra".into(),
            })
            .await,
        ),
        "rpaflow.v1.AuthService/ListNamespaces" => {
            answer(a.list_namespaces(pb::ListNamespacesRequest {}).await)
        }
        "rpaflow.v1.AuthService/CreateToken" => answer(
            a.create_token(pb::CreateTokenRequest {
                name: "beta-in-alpha".into(),
                role: "admin".into(),
                namespace: "team-a".into(),
                ..Default::default()
            })
            .await,
        ),
        "rpaflow.v1.AuthService/ListTokens" => {
            answer(a.list_tokens(pb::ListTokensRequest {}).await)
        }
        "rpaflow.v1.AuthService/RevokeToken" => answer(
            a.revoke_token(pb::RevokeTokenRequest {
                id: alpha.token_id.clone(),
            })
            .await,
        ),
        "rpaflow.v1.AuthService/WhoAmI" => answer(a.who_am_i(pb::WhoAmIRequest {}).await),
        "rpaflow.v1.AuthService/ListAudit" => {
            answer(a.list_audit(pb::ListAuditRequest { limit: 1000 }).await)
        }
        other => panic!("{other} is new: say here what it may do across namespaces"),
    }
}

fn flows_client(ch: &Channel, who: &As) -> Flows {
    FlowServiceClient::with_interceptor(ch.clone(), who.clone())
}

/// What a caller with the permission for `method` gets when it aims at the other namespace:
/// `None` for a call that acts on (or lists) the caller's own namespace and must answer without
/// any of the other's things.
fn across(method: &str) -> Option<Code> {
    let name = method.rsplit('/').next().unwrap_or(method);
    match name {
        "GetFlow" | "StartRun" | "GetRun" | "CancelRun" | "RetryRun" | "SignalRun" | "WatchRun"
        | "PauseSchedule" | "ResumeSchedule" | "TriggerSchedule" | "RevokeToken" => {
            Some(Code::NotFound)
        }
        "CreateToken" | "CreateNamespace" => Some(Code::PermissionDenied),
        _ => None,
    }
}

/// Which roles may call a method at all (the role table, written here independently).
fn role_may(role: &str, method: &str) -> bool {
    let name = method.rsplit('/').next().unwrap_or(method);
    let need = match name {
        "GetFlow" | "ListFlows" | "ValidateFlow" | "GetRun" | "ListRuns" | "WatchRun"
        | "ListApprovals" | "ListSchedules" | "WhoAmI" | "ListNamespaces" => "read",
        "SignalRun" => "approve",
        "StartRun" | "CancelRun" | "RetryRun" | "PauseSchedule" | "ResumeSchedule"
        | "TriggerSchedule" => "operate",
        "RegisterFlow" => "develop",
        // Only an admin of `default` may; a team's admin is refused (checked via `across`).
        "CreateNamespace" => "admin",
        _ => "admin",
    };
    match role {
        "admin" => true,
        "developer" => matches!(need, "read" | "operate" | "develop"),
        "operator" => matches!(need, "read" | "operate"),
        "approver" => matches!(need, "read" | "approve"),
        "viewer" => need == "read",
        other => panic!("unknown role {other}"),
    }
}

/// Everything team A can see of itself, to compare before and after team B's attempts.
async fn alpha_view(ch: &Channel, admin: &str) -> String {
    let who = token(admin);
    let mut f = flows_client(ch, &who);
    let mut a = auth(ch, &who);
    let flows = f
        .list_flows(pb::ListFlowsRequest {})
        .await
        .expect("team A's admin reads its own namespace")
        .into_inner();
    let runs = f
        .list_runs(pb::ListRunsRequest::default())
        .await
        .expect("team A's admin reads its own namespace")
        .into_inner();
    let secrets = f
        .list_secrets(pb::ListSecretsRequest {})
        .await
        .expect("team A's admin reads its own namespace")
        .into_inner();
    let approvals = f
        .list_approvals(pb::ListApprovalsRequest::default())
        .await
        .expect("team A's admin reads its own namespace")
        .into_inner();
    let schedules = f
        .list_schedules(pb::ListSchedulesRequest::default())
        .await
        .expect("team A's admin reads its own namespace")
        .into_inner();
    let tokens = a
        .list_tokens(pb::ListTokensRequest {})
        .await
        .expect("team A's admin reads its own namespace")
        .into_inner();
    // Runs without their update times' noise: ids, flows, statuses.
    let runs: Vec<_> = runs
        .runs
        .iter()
        .map(|r| {
            (
                r.run_id.clone(),
                r.flow.clone(),
                r.status,
                r.namespace.clone(),
            )
        })
        .collect();
    format!("{flows:?}\n{runs:?}\n{secrets:?}\n{approvals:?}\n{schedules:?}\n{tokens:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_of_one_namespace_sees_and_changes_nothing_of_another() {
    let dev = Dev::launch_env(&[], &[("RPAFLOW_AUTH__ENABLED", "true")]).await;
    let root = std::fs::read_to_string(dev.data_dir().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    for ns in ["team-a", "team-b"] {
        let made = dev.cli_json(&root, &["namespace", "create", ns]).await;
        assert_eq!(made["name"], json!(ns));
    }
    // A second time, and a name that cannot be one, are refused with what is wrong.
    let url = dev.url();
    let again = rpaflow(
        &[
            "namespace",
            "create",
            "team-a",
            "--server",
            &url,
            "--token",
            &root,
        ],
        TIMEOUT,
    )
    .await;
    assert!(again.stderr.contains("exists already"), "{again}");
    let bad = rpaflow(
        &[
            "namespace",
            "create",
            "Team_A",
            "--server",
            &url,
            "--token",
            &root,
        ],
        TIMEOUT,
    )
    .await;
    assert!(bad.stderr.contains("lowercase"), "{bad}");

    // Each namespace gets a token of every role, made by the root admin.
    let mut team = std::collections::BTreeMap::new();
    for ns in ["team-a", "team-b"] {
        for role in ROLES {
            let made = dev
                .cli_json(
                    &root,
                    &[
                        "token",
                        "create",
                        "--namespace",
                        ns,
                        "--role",
                        role,
                        "--name",
                        &format!("{ns}-{role}"),
                    ],
                )
                .await;
            assert_eq!(made["namespace"], json!(ns));
            team.insert(
                (ns, role),
                (
                    made["token"].as_str().unwrap().to_owned(),
                    made["id"].as_str().unwrap().to_owned(),
                ),
            );
        }
    }
    let a_admin = team[&("team-a", "admin")].0.clone();
    let a_approver = team[&("team-a", "approver")].0.clone();
    let ch = dev.channel().await;

    // Team A: a flow with a waiting run and a schedule, a secret. Team B: a secret of the same
    // name.
    let mut fa = flows_client(&ch, &token(&a_admin));
    let registered = fa
        .register_flow(pb::RegisterFlowRequest {
            source: ALPHA_FLOW.into(),
            file_name: "a.yaml".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .flow
        .unwrap();
    assert_eq!(
        (registered.name.as_str(), registered.namespace.as_str()),
        ("alpha-only", "team-a")
    );
    let run = fa
        .start_run(pb::StartRunRequest {
            flow: "alpha-only".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.namespace, "team-a");
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let approvals = fa
            .list_approvals(pb::ListApprovalsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .approvals;
        if approvals.iter().any(|a| a.run_id == run.run_id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no approval in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fa.set_secret(pb::SetSecretRequest {
        name: "SHARED_KEY".into(),
        value: "alpha-value".into(),
    })
    .await
    .unwrap();
    let alpha = Alpha {
        run_id: run.run_id.clone(),
        token_id: team[&("team-a", "viewer")].1.clone(),
    };
    let before = alpha_view(&ch, &a_admin).await;
    assert!(
        before.contains(&run.run_id) && before.contains("SHARED_KEY"),
        "{before}"
    );

    // Team B tries everything, in every role; then once more, as B's admin, naming team A in
    // the namespace header.
    let methods: Vec<String> = served_methods()
        .into_iter()
        .map(|(path, _)| path.trim_start_matches('/').to_owned())
        .collect();
    assert!(methods.len() > 25, "{methods:?}");
    let alpha_marks = [run.run_id.as_str(), "alpha", "team-a"];
    for method in &methods {
        for role in ROLES {
            let who = token(&team[&("team-b", role)].0);
            let (code, text) = attempt(&ch, &who, method, &alpha).await;
            let case = format!("{method} as team-b {role}: {code:?} {text}");
            if !role_may(role, method) {
                assert_eq!(code, Code::PermissionDenied, "{case}");
                continue;
            }
            match across(method) {
                Some(expected) => assert_eq!(code, expected, "{case}"),
                None => {
                    assert!(
                        !matches!(
                            code,
                            Code::PermissionDenied | Code::Unauthenticated | Code::NotFound
                        ),
                        "{case}"
                    );
                    for mark in alpha_marks {
                        assert!(!text.contains(mark), "team A's `{mark}` shows: {case}");
                    }
                }
            }
        }
        let pretending = As {
            token: Some(team[&("team-b", "admin")].0.clone()),
            namespace: Some("team-a".into()),
        };
        let (code, text) = attempt(&ch, &pretending, method, &alpha).await;
        assert_eq!(
            code,
            Code::PermissionDenied,
            "{method} naming team-a: {text}"
        );
    }

    // Team A is as it was: its flow, run, approval, schedule, secret and tokens.
    let after = alpha_view(&ch, &a_admin).await;
    assert_eq!(before, after);
    // B's listings are B's own: what the audit log, tokens and namespaces show.
    let b_admin = token(&team[&("team-b", "admin")].0);
    let audit = auth(&ch, &b_admin)
        .list_audit(pb::ListAuditRequest { limit: 1000 })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(!audit.is_empty());
    assert!(audit.iter().all(|e| e.namespace == "team-b"), "{audit:?}");
    let namespaces = auth(&ch, &b_admin)
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .namespaces;
    assert_eq!(
        namespaces
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["team-b"]
    );
    // The root admin sees both teams' tokens and every namespace.
    let all = auth(&ch, &token(&root))
        .list_namespaces(pb::ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .namespaces;
    assert_eq!(
        all.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["default", "team-a", "team-b"]
    );

    // Team A's approver answers, recorded by name; the run ends as A wanted.
    flows_client(&ch, &token(&a_approver))
        .signal_run(pb::SignalRunRequest {
            run_id: run.run_id.clone(),
            step_id: "ok".into(),
            approve: true,
            comment: "alpha says yes".into(),
            by: String::new(),
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let got = fa
            .get_run(pb::GetRunRequest {
                run_id: run.run_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if got.status == pb::RunStatus::Succeeded as i32 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Same flow and secret names in two namespaces (authentication off, the namespace picked with
/// `--ns`): each run uses its own namespace's flow, subflow and secret; a subflow cannot name a
/// flow of another namespace; a webhook path names the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_names_in_two_namespaces_stay_apart_when_runs_execute() {
    let api = HttpServer::start();
    let dev = Dev::launch().await;
    let url = dev.url();
    let cli = |ns: &'static str, args: &[&str]| {
        let mut full: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        full.extend(["--server".into(), url.clone(), "--ns".into(), ns.into()]);
        async move {
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            rpaflow(&refs, TIMEOUT).await
        }
    };
    // A namespace must exist before it is used.
    let missing = cli("team-a", &["flow", "list"]).await;
    assert!(
        missing.stderr.contains("no namespace `team-a`"),
        "{missing}"
    );
    for ns in ["team-a", "team-b"] {
        cli("default", &["namespace", "create", ns])
            .await
            .expect_success();
    }
    let dir = tempfile::tempdir().unwrap();
    for ns in ["team-a", "team-b"] {
        cli(
            ns,
            &[
                "secret",
                "set",
                "KEY",
                "--value",
                &format!("{ns}-secret-value"),
            ],
        )
        .await
        .expect_success();
        let child = dir.path().join(format!("{ns}-child.yaml"));
        std::fs::write(
            &child,
            format!(
                "name: child\nsteps:\n  - id: call\n    uses: http\n    with:\n      url: \"{}/{ns}/{{{{ secrets.KEY }}}}\"\n",
                api.url()
            ),
        )
        .unwrap();
        let parent = dir.path().join(format!("{ns}-parent.yaml"));
        std::fs::write(
            &parent,
            "name: parent\ninputs:\n  target: { type: string, default: child }\nsteps:\n  - id: sub\n    uses: subflow\n    with: { flow: \"{{ inputs.target }}\" }\n",
        )
        .unwrap();
        for file in [&child, &parent] {
            cli(ns, &["flow", "register", file.to_str().unwrap()])
                .await
                .expect_success();
        }
    }
    // Only team-b has this one.
    let lonely = dir.path().join("lonely.yaml");
    std::fs::write(&lonely, "name: b-only\nsteps: [{ id: a, uses: log }]\n").unwrap();
    cli("team-b", &["flow", "register", lonely.to_str().unwrap()])
        .await
        .expect_success();

    for ns in ["team-a", "team-b"] {
        let out = cli(ns, &["run", "start", "parent", "--watch"]).await;
        out.expect_success();
    }
    let paths: Vec<String> = api.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.contains(&"/team-a/team-a-secret-value".to_owned())
            && paths.contains(&"/team-b/team-b-secret-value".to_owned()),
        "{paths:?}"
    );
    assert_eq!(paths.len(), 2, "{paths:?}");

    // From team-a, neither B's flow by its name nor by a full name is reachable.
    for target in ["b-only", "team-b/b-only", "team-b/child"] {
        let out = cli(
            "team-a",
            &[
                "run",
                "start",
                "parent",
                "--input",
                &format!("target={target}"),
                "--watch",
            ],
        )
        .await;
        assert_ne!(out.code(), Some(0), "{target}: {out}");
        assert!(out.to_string().contains("no flow named"), "{target}: {out}");
        let direct = cli("team-a", &["run", "start", target]).await;
        assert!(
            direct.stderr.contains("no flow named"),
            "{target}: {direct}"
        );
    }
    assert_eq!(api.requests().len(), 2, "no other call went out");

    // Listings are per namespace, with each flow's own name.
    let listed = cli("team-a", &["flow", "list", "--output", "json"]).await;
    listed.expect_success();
    assert!(!listed.stdout.contains("b-only"), "{listed}");
    assert!(listed.stdout.contains("\"parent\""), "{listed}");
    let default = cli("default", &["flow", "list", "--output", "json"]).await;
    assert!(!default.stdout.contains("parent"), "{default}");
}
