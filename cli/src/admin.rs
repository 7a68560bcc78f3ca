//! The admin HTTP listener every service can serve (`[admin] listen`, `RPAFLOW_ADMIN__LISTEN`):
//!
//! - `GET /metrics`: the process's Prometheus metrics, in the Prometheus text format (0.0.4), or
//!   OpenMetrics when the scraper asks for it (`Accept: application/openmetrics-text`), as
//!   Prometheus does.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when the service can do its work (storage open and the broker reachable
//!   for the orchestrator, the bus reachable for a worker), else 503 with `{"ready": false,
//!   "reason": "..."}`; 503 from the moment the service starts draining.
//!
//! Off unless `[admin] listen` is set. Shared by `rpaflow orchestrator`, `rpaflow worker` and
//! `rpaflow dev` (which serves both parts' metrics on one listener).
//!
//! With `[admin] metrics_token_file`, `/metrics` answers only `Authorization: Bearer <token>`
//! (401 otherwise): metrics name every namespace's flows. The probes stay open, as gRPC health
//! does.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use rpaflow_orchestrator::OrchestratorHandle;
use rpaflow_worker::WorkerHandle;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `[admin]`: the admin listener, and how a service leaves its load balancers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served (port 0 picks a free port); none
    /// (the default): no admin listener.
    pub listen: Option<SocketAddr>,
    /// On SIGTERM, how long the service keeps working while it says NOT_SERVING (gRPC health)
    /// and 503 (`/readyz`) before it drains (`"5s"`), so load balancers stop sending it calls
    /// first. Default: none.
    #[serde(with = "rpaflow_core::time::human")]
    pub drain_delay: std::time::Duration,
    /// A file holding the bearer token a scraper must send for `/metrics` (Prometheus:
    /// `authorization: { credentials_file: ... }`); none: `/metrics` is open to whoever reaches
    /// the listener.
    pub metrics_token_file: Option<std::path::PathBuf>,
}

impl AdminConfig {
    /// The longest `drain_delay` (a drain must fit in Kubernetes' grace period).
    pub const MAX_DRAIN_DELAY: std::time::Duration = std::time::Duration::from_secs(300);

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.drain_delay <= Self::MAX_DRAIN_DELAY,
            "admin.drain_delay must be at most 5m"
        );
        Ok(())
    }

    /// The token `/metrics` requires, read from `metrics_token_file`.
    pub fn metrics_token(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.metrics_token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("admin.metrics_token_file: cannot read {}", path.display()))?
            .trim()
            .to_owned();
        anyhow::ensure!(
            !token.is_empty(),
            "admin.metrics_token_file: {} is empty",
            path.display()
        );
        Ok(Some(token))
    }

    /// Says NOT_SERVING (cancels `draining`) and waits `drain_delay`.
    pub async fn start_draining(&self, draining: &CancellationToken) {
        draining.cancel();
        if !self.drain_delay.is_zero() {
            tracing::info!(delay = ?self.drain_delay, "not serving; draining after the delay");
            tokio::time::sleep(self.drain_delay).await;
        }
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the admin endpoints of one process show: a registry with the metrics of the parts it
/// runs, what refreshes their gauges before a scrape, and the readiness checks.
pub struct Admin {
    registry: Registry,
    refresh: Vec<Box<dyn Fn() + Send + Sync>>,
    checks: Vec<Check>,
    /// Cancelled when the service starts draining: not ready any more.
    draining: CancellationToken,
    /// What `/metrics` requires as a bearer token, if anything.
    metrics_token: Option<String>,
}

impl Admin {
    pub fn new(draining: CancellationToken) -> Self {
        Self {
            registry: Registry::default(),
            refresh: Vec::new(),
            checks: Vec::new(),
            draining,
            metrics_token: None,
        }
    }

    /// Makes `/metrics` require `Authorization: Bearer <token>` ([`AdminConfig::metrics_token`]).
    pub fn metrics_token(mut self, token: Option<String>) -> Self {
        self.metrics_token = token;
        self
    }

    /// The process's trace export counts, `rpaflow_trace_spans_exported_total` and
    /// `rpaflow_trace_spans_dropped_total` (dropped: a full queue, or a collector that refused or
    /// did not answer); they stay 0 while traces are off.
    pub fn trace_export(mut self, stats: rpaflow_core::telemetry::SpanStats) -> Self {
        use prometheus_client::metrics::counter::Counter;
        let exported = Counter::<u64>::default();
        let dropped = Counter::<u64>::default();
        self.registry.register(
            "rpaflow_trace_spans_exported",
            "Spans sent to the OTLP collector",
            exported.clone(),
        );
        self.registry.register(
            "rpaflow_trace_spans_dropped",
            "Spans dropped: the export queue was full, or the collector refused or did not answer",
            dropped.clone(),
        );
        self.refresh.push(Box::new(move || {
            // The counters follow the export's own counts, which only grow.
            exported.inc_by(stats.exported().saturating_sub(exported.get()));
            dropped.inc_by(stats.dropped().saturating_sub(dropped.get()));
        }));
        self
    }

    /// Whether a scrape with these headers may read the metrics.
    fn may_scrape(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.metrics_token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| {
                rpaflow_core::signature::same_secret(given.trim().as_bytes(), token.as_bytes())
            })
    }

    /// The orchestrator's metrics; ready while the broker answers (`on_kafka`). Its storage is
    /// open from the start of the orchestrator to its end, and this listener serves in between.
    pub fn orchestrator(mut self, handle: &OrchestratorHandle, on_kafka: bool) -> Self {
        handle.register_metrics(&mut self.registry);
        let handle = handle.clone();
        self.refresh
            .push(Box::new(move || handle.refresh_metrics()));
        if on_kafka {
            self.checks.push(Box::new(kafka_reachable));
        }
        self
    }

    /// A worker's metrics; ready while its loop runs and the bus answers (`on_kafka`).
    pub fn worker(mut self, handle: &WorkerHandle, on_kafka: bool) -> Self {
        handle.register_metrics(&mut self.registry);
        let refreshed = handle.clone();
        self.refresh
            .push(Box::new(move || refreshed.refresh_metrics()));
        let running = handle.clone();
        self.checks.push(Box::new(move || {
            if running.stats().running {
                Ok(())
            } else {
                Err("the worker is not running".into())
            }
        }));
        if on_kafka {
            self.checks.push(Box::new(kafka_reachable));
        }
        self
    }

    /// An inference node's metrics; ready while its engine takes requests (the model is loaded
    /// once the node runs).
    pub fn inference(mut self, engine: &rpaflow_inference_node::engine::EngineHandle) -> Self {
        engine.register_metrics(&mut self.registry);
        let refreshed = engine.clone();
        self.refresh
            .push(Box::new(move || refreshed.refresh_metrics()));
        let serving = engine.clone();
        self.checks.push(Box::new(move || {
            if serving.is_serving() {
                Ok(())
            } else {
                Err("the inference engine is shutting down".into())
            }
        }));
        self
    }

    fn metrics_text(&self) -> String {
        for refresh in &self.refresh {
            refresh();
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    fn readiness(&self) -> Result<(), String> {
        if self.draining.is_cancelled() {
            return Err("draining".into());
        }
        self.checks.iter().try_for_each(|check| check())
    }
}

fn kafka_reachable() -> Result<(), String> {
    if rpaflow_core::kafka::connectivity().is_down() {
        Err("kafka unreachable: no broker answers".into())
    } else {
        Ok(())
    }
}

/// A running admin listener; it serves until [`AdminServer::stop`], after the service's drain.
pub struct AdminServer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Binds `addr`, prints `rpaflow WHO: admin on http://ADDR` and serves.
pub async fn serve(addr: SocketAddr, admin: Admin, who: &str) -> anyhow::Result<AdminServer> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for the admin endpoints on {addr}"))?;
    let local = listener.local_addr()?;
    println!("rpaflow {who}: admin on http://{local}");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(admin));
    let stop = CancellationToken::new();
    let stopped = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %err, "admin server stopped with an error");
        }
    });
    Ok(AdminServer { stop, task })
}

async fn metrics(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if !admin.may_scrape(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required (admin.metrics_token_file)\n",
        )
            .into_response();
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let text = admin.metrics_text();
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            prometheus_text(&text),
        )
            .into_response()
    }
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    match admin.readiness() {
        Ok(()) => axum::Json(serde_json::json!({"ready": true})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4 reads it: a counter's family is named
/// like its samples (`x_total`), and the `# UNIT` and `# EOF` lines go.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples_in_the_prometheus_format() {
        let openmetrics = "# HELP a_runs Runs.\n# TYPE a_runs counter\na_runs_total{flow=\"x\"} 2\n\
                           # HELP a_seconds Time.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
                           a_seconds_sum 0.5\na_seconds_count 1\na_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP a_runs_total Runs.\n# TYPE a_runs_total counter\na_runs_total{flow=\"x\"} 2\n\
             # HELP a_seconds Time.\n# TYPE a_seconds histogram\n\
             a_seconds_sum 0.5\na_seconds_count 1\na_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }

    #[test]
    fn trace_export_counts_are_served_even_with_traces_off() {
        let admin = Admin::new(CancellationToken::new())
            .trace_export(rpaflow_core::telemetry::SpanStats::default());
        let text = prometheus_text(&admin.metrics_text());
        assert!(
            text.contains("rpaflow_trace_spans_dropped_total 0"),
            "{text}"
        );
        assert!(
            text.contains("rpaflow_trace_spans_exported_total 0"),
            "{text}"
        );
    }

    #[test]
    fn a_metrics_token_is_required_when_one_is_set() {
        let open = Admin::new(CancellationToken::new());
        assert!(open.may_scrape(&HeaderMap::new()));
        let closed = Admin::new(CancellationToken::new()).metrics_token(Some("s3cret".into()));
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(!closed.may_scrape(&HeaderMap::new()));
        assert!(!closed.may_scrape(&with("Bearer wrong")));
        assert!(!closed.may_scrape(&with("s3cret")));
        assert!(closed.may_scrape(&with("Bearer s3cret")));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let config = AdminConfig {
            metrics_token_file: Some(file.clone()),
            ..AdminConfig::default()
        };
        assert_eq!(config.metrics_token().unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(
            config
                .metrics_token()
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
    }

    #[test]
    fn a_draining_service_is_not_ready() {
        let draining = CancellationToken::new();
        let mut admin = Admin::new(draining.clone());
        assert_eq!(admin.readiness(), Ok(()));
        admin
            .checks
            .push(Box::new(|| Err("kafka unreachable".into())));
        assert_eq!(admin.readiness(), Err("kafka unreachable".into()));
        admin.checks.clear();
        draining.cancel();
        assert_eq!(admin.readiness(), Err("draining".into()));
    }
}
