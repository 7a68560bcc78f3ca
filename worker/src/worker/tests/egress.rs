//! Egress policies per namespace through the worker: the policy of a task's namespace decides
//! where its `http` step may go, and a namespace without one of its own has the default.

use std::collections::BTreeMap;

use axum::Router;
use axum::routing::get;

use super::*;
use crate::egress::EgressConfig;

/// A local HTTP server that counts the requests it answers; its URL.
async fn counting_server() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let app = Router::new().route(
        "/",
        get(move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/"), hits)
}

/// A worker whose registry is built from `egress` (the default policy) and `namespaces`.
fn start_worker(egress: EgressConfig, namespaces: &[(&str, EgressConfig)]) -> Harness {
    let config = WorkerConfig {
        egress,
        egress_namespaces: namespaces
            .iter()
            .map(|(ns, config)| ((*ns).to_owned(), config.clone()))
            .collect(),
        ..WorkerConfig::default()
    };
    config.validate().unwrap();
    Harness::start(Registry::for_config(&config).unwrap(), 4)
}

/// The result of an `http` step to `url` in `namespace`.
async fn call(worker: &Harness, namespace: &str, url: &str) -> pb::TaskResult {
    let mut task = task("run-1", "call", "http", json!({"url": url}));
    task.namespace = namespace.to_owned();
    worker.dispatch(task).await;
    worker.result().await
}

fn denied(url: &str, setting: &str) -> String {
    let port = url.trim_end_matches('/').rsplit(':').next().unwrap();
    format!("egress to 127.0.0.1:{port} is denied by the worker's egress policy ({setting})")
}

#[tokio::test]
async fn a_namespace_policy_denies_what_the_default_allows() {
    let (url, hits) = counting_server().await;
    // The default allows private addresses (as `rpaflow dev`); team-a has the production
    // default, and denies loopback by range too.
    let team_a = EgressConfig {
        deny_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        ..EgressConfig::default()
    };
    let worker = start_worker(EgressConfig::permissive(), &[("team-a", team_a)]);

    for namespace in ["", "default"] {
        let result = call(&worker, namespace, &url).await;
        assert_eq!(output(&result)["status"], 200, "{namespace:?}");
        assert_eq!(result.namespace, namespace);
    }
    let result = call(&worker, "team-a", &url).await;
    let err = error(&result);
    assert_eq!(err.code, "egress_denied", "{}", err.message);
    assert!(!err.retryable);
    assert_eq!(err.message, denied(&url, "worker.egress_namespaces.team-a"));
    assert_eq!(result.namespace, "team-a");
    // Only the default namespace's two requests arrived.
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Other kinds are the default's: team-a runs them as everyone does.
    let mut echo = task("run-1", "echo", "echo", json!({"a": 1}));
    echo.namespace = "team-a".into();
    worker.dispatch(echo).await;
    assert_eq!(output(&worker.result().await), json!({"a": 1}));
    worker.stop().await;
}

#[tokio::test]
async fn a_namespace_policy_allows_a_range_the_default_denies() {
    let (url, hits) = counting_server().await;
    let team_b = EgressConfig {
        allow_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        ..EgressConfig::default()
    };
    let worker = start_worker(EgressConfig::default(), &[("team-b", team_b)]);

    let result = call(&worker, "team-b", &url).await;
    assert_eq!(output(&result)["status"], 200);
    let result = call(&worker, "default", &url).await;
    assert_eq!(error(&result).code, "egress_denied");
    assert_eq!(error(&result).message, denied(&url, "worker.egress"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    worker.stop().await;
}

#[tokio::test]
async fn an_unknown_namespace_has_the_default_policy() {
    let (url, hits) = counting_server().await;
    let closed = EgressConfig {
        allow_public: false,
        ..EgressConfig::default()
    };
    // Permissive default: a namespace without a policy reaches the server.
    let worker = start_worker(EgressConfig::permissive(), &[("team-a", closed.clone())]);
    let result = call(&worker, "team-z", &url).await;
    assert_eq!(output(&result)["status"], 200);
    worker.stop().await;
    // Strict default: the same namespace is denied, as `worker.egress` says.
    let worker = start_worker(
        EgressConfig::default(),
        &[("team-b", EgressConfig::permissive())],
    );
    let result = call(&worker, "team-z", &url).await;
    assert_eq!(error(&result).message, denied(&url, "worker.egress"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    worker.stop().await;
}

#[test]
fn namespace_policies_are_checked_with_the_worker_config() {
    let with = |namespace: &str, config: EgressConfig| WorkerConfig {
        egress_namespaces: BTreeMap::from([(namespace.to_owned(), config)]),
        ..WorkerConfig::default()
    };
    let err = with(
        "team-a",
        EgressConfig {
            allow_hosts: vec!["a.*.example".into()],
            ..EgressConfig::default()
        },
    )
    .validate()
    .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "invalid worker configuration: `egress_namespaces.team-a.allow_hosts` holds `a.*.example`"
        ),
        "{err}"
    );
    // What `RPAFLOW_WORKER__EGRESS_NAMESPACES__TEAM_A__...` gives: the name cannot have a `-`.
    let err = with("team_a", EgressConfig::default())
        .validate()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid worker configuration: `egress_namespaces.team_a` does not name a namespace \
         (1 to 63 lowercase letters, digits and `-`, starting with a letter and not ending with \
         `-`; a name with `-` can only be written in the configuration file)"
    );
    assert!(with("Team", EgressConfig::default()).validate().is_err());
    assert!(Registry::for_config(&with("Team", EgressConfig::default())).is_err());
    assert!(with("default", EgressConfig::default()).validate().is_ok());

    // Read as the TOML table `[worker.egress_namespaces.team-a]` is: a complete policy, whose
    // unset fields are the production defaults, not the default policy's.
    let config: WorkerConfig = serde_json::from_value(json!({
        "egress": {"allow_private": true},
        "egress_namespaces": {"team-a": {"deny_hosts": ["*.internal"]}},
    }))
    .unwrap();
    let team_a = &config.egress_namespaces["team-a"];
    assert!(!team_a.allow_private && team_a.allow_public);
    assert_eq!(team_a.deny_hosts, ["*.internal"]);
    assert!(config.validate().is_ok());
}
