//! The executor contract: what a step kind implements, the context it runs in, how it fails, and
//! the registry that maps kinds (and, for the executors that reach the network, namespaces with
//! an egress policy of their own) to executors.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rpaflow_proto::v1 as pb;
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use crate::executors;

/// Runs one kind of step (the `uses` of a flow step).
///
/// An executor is shared by every task of its kind, so it holds only what those tasks share (an
/// HTTP connection pool, say); everything else arrives in the [`TaskContext`] and the input.
/// The worker enforces the step's timeout, cancellation and output size around `execute`; an
/// executor that waits on something long should still watch [`TaskContext::cancel`] so that it
/// can stop cleanly.
#[async_trait]
pub trait Executor: Send + Sync {
    /// The kind this executor serves, such as `http`.
    fn kind(&self) -> &'static str;

    /// Whether the step's secrets are put in its input: only for executors that hand them to
    /// another system (a header, a password). Others see `***` where a secret was, so nothing
    /// they log, compute or return can hold one.
    fn receives_secrets(&self) -> bool {
        false
    }

    /// Runs one attempt of a step with its rendered inputs and returns its output.
    async fn execute(&self, ctx: &TaskContext, input: Json) -> Result<Json, StepError>;

    /// Releases what the executor holds (a browser, say) once the worker has drained.
    async fn shutdown(&self) {}
}

/// Where an attempt runs: its identity, its budget and its cancellation signal.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub run_id: String,
    pub step_id: String,
    /// The item index inside a `for_each` step.
    pub item: Option<u32>,
    /// The attempt number, starting at 1.
    pub attempt: u32,
    /// The flow's name and version.
    pub flow: String,
    pub flow_version: u32,
    /// How long the attempt may take; the worker stops it after this.
    pub timeout: Duration,
    /// The largest output (serialized JSON, in bytes) the step may produce.
    pub max_output_bytes: usize,
    /// Cancelled when the run is cancelled.
    pub cancel: CancellationToken,
    /// Propagated headers from the task, such as the W3C `traceparent`.
    pub headers: BTreeMap<String, String>,
}

impl TaskContext {
    /// The default budget of a context made with [`TaskContext::new`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
    /// The default output limit of a context made with [`TaskContext::new`]: 1 MiB.
    pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

    /// A context for attempt 1 of a step, with the default budget; set the public fields for more.
    pub fn new(run_id: impl Into<String>, step_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            step_id: step_id.into(),
            item: None,
            attempt: 1,
            flow: String::new(),
            flow_version: 0,
            timeout: Self::DEFAULT_TIMEOUT,
            max_output_bytes: Self::DEFAULT_MAX_OUTPUT_BYTES,
            cancel: CancellationToken::new(),
            headers: BTreeMap::new(),
        }
    }

    /// The context of a task from the bus. `default_timeout` and `default_max_output_bytes` apply
    /// where the task leaves its own at zero.
    pub fn from_task(
        task: &pb::Task,
        default_timeout: Duration,
        default_max_output_bytes: usize,
        cancel: CancellationToken,
    ) -> Self {
        let timeout = match task.timeout_ms {
            0 => default_timeout,
            ms => Duration::from_millis(ms),
        };
        let max_output_bytes = match task.max_output_bytes {
            0 => default_max_output_bytes,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        Self {
            run_id: task.run_id.clone(),
            step_id: task.step_id.clone(),
            item: task.item,
            attempt: task.attempt,
            flow: task.flow.clone(),
            flow_version: task.flow_version,
            timeout,
            max_output_bytes,
            cancel,
            headers: task
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// A key that names this attempt: `run_id/step_id/attempt`, or `run_id/step_id/item/attempt`
    /// inside a `for_each`. A redelivered task has the same key, so a service that deduplicates
    /// on it (an `Idempotency-Key` header) does the work once.
    pub fn idempotency_key(&self) -> String {
        match self.item {
            Some(item) => format!("{}/{}/{item}/{}", self.run_id, self.step_id, self.attempt),
            None => format!("{}/{}/{}", self.run_id, self.step_id, self.attempt),
        }
    }

    /// True once the run has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// The error codes rpaflow's own executors and the worker use. Codes are short `snake_case`
/// words a flow's retry policy can name; other executors may add their own.
pub mod codes {
    /// The step did not finish within its timeout (retryable).
    pub const TIMEOUT: &str = "timeout";
    /// The run was cancelled while the step ran.
    pub const CANCELLED: &str = "cancelled";
    /// The step's input is missing a field, has a wrong type or a bad value.
    pub const INVALID_INPUT: &str = "invalid_input";
    /// No executor on this worker serves the task's kind.
    pub const UNKNOWN_KIND: &str = "unknown_kind";
    /// An output (or a response body) is larger than the task's limit.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// An expression failed to compile or to evaluate.
    pub const EXPR: &str = "expr";
    /// An HTTP response had a status the step does not expect.
    pub const HTTP_STATUS: &str = "http_status";
    /// An HTTP request could not be sent or its response not read (connection, TLS, transport).
    pub const HTTP_CONNECT: &str = "http_connect";
    /// The executor failed in a way that is a bug (a panic, for instance).
    pub const INTERNAL: &str = "internal";
    /// The input refers to a secret that is not set, or that this worker cannot open.
    pub const SECRET_MISSING: &str = "secret_missing";
    /// The input holds a secret marker its step's `with` did not make (it came from data).
    pub const SECRET_REFUSED: &str = "secret_refused";
    /// The egress policy of the step's namespace (`worker.egress`, or
    /// `worker.egress_namespaces.<namespace>`) denies the destination.
    pub const EGRESS_DENIED: &str = "egress_denied";
}

/// Why a step attempt failed: a short code, a message for people, and whether trying again may
/// help. Travels to the orchestrator as a `TaskError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StepError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl StepError {
    pub fn new(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable,
        }
    }

    /// A failure that may pass on another attempt.
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(code, message, true)
    }

    /// A failure that another attempt would repeat.
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(code, message, false)
    }

    /// A bad step input; the message names the field.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::permanent(codes::INVALID_INPUT, message)
    }

    /// The step ran past its timeout.
    pub fn timeout(after: Duration) -> Self {
        Self::retryable(
            codes::TIMEOUT,
            format!(
                "step did not finish within {}",
                humantime::format_duration(after)
            ),
        )
    }

    /// The run was cancelled.
    pub fn cancelled() -> Self {
        Self::permanent(codes::CANCELLED, "the run was cancelled")
    }

    /// No executor serves `kind`; `known` lists the kinds that are served.
    pub fn unknown_kind(kind: &str, known: &[&str]) -> Self {
        Self::permanent(
            codes::UNKNOWN_KIND,
            format!(
                "no executor for kind `{kind}` on this worker (it runs: {})",
                known.join(", ")
            ),
        )
    }

    /// `what` (such as "output") is `size` bytes, over `limit`.
    pub fn payload_too_large(what: &str, size: usize, limit: usize) -> Self {
        Self::permanent(
            codes::PAYLOAD_TOO_LARGE,
            format!("{what} is {size} bytes, over the limit of {limit} bytes"),
        )
    }

    /// An expression failed; `context` says which one (such as "op 2 (`filter`)").
    pub fn expr(context: impl fmt::Display, err: &rpaflow_core::expr::ExprError) -> Self {
        Self::permanent(codes::EXPR, format!("{context}: {err}"))
    }

    /// A bug in an executor.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::permanent(codes::INTERNAL, message)
    }
}

impl From<StepError> for pb::TaskError {
    fn from(err: StepError) -> Self {
        Self {
            code: err.code,
            message: err.message,
            retryable: err.retryable,
        }
    }
}

/// The executors a worker runs, by kind. Cheap to clone.
///
/// A namespace with an egress policy of its own (`worker.egress_namespaces`) has executors of its
/// own for the kinds that reach the network (`http`, `notify`, `sql`, `browser`), built under
/// that policy; its tasks of every other kind, and every task of the other namespaces, use the
/// default executors. [`Registry::get_for`] picks one for a task.
#[derive(Clone, Default)]
pub struct Registry {
    executors: HashMap<&'static str, Arc<dyn Executor>>,
    /// By namespace: the executors that replace default ones for its tasks.
    namespaces: HashMap<String, HashMap<&'static str, Arc<dyn Executor>>>,
}

impl Registry {
    /// A registry with no executors.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with every built-in executor, under the production default egress policy
    /// (public addresses only).
    pub fn builtin() -> crate::Result<Self> {
        Self::builtin_with(&crate::egress::Egress::default())
    }

    /// Every built-in executor, reaching the network under `egress`.
    pub fn builtin_with(egress: &crate::egress::Egress) -> crate::Result<Self> {
        let browser =
            executors::BrowserExecutor::new(executors::BrowserConfig::default(), egress.clone());
        Self::builtin_sharing(egress, &browser)
    }

    /// Every built-in executor, reaching the network under `egress`, with `browser` steps on
    /// `browser`'s `chromedriver`.
    fn builtin_sharing(
        egress: &crate::egress::Egress,
        browser: &executors::BrowserExecutor,
    ) -> crate::Result<Self> {
        let mut registry = Self::new();
        for executor in network_executors(egress, browser)? {
            registry.register_arc(executor);
        }
        registry
            .register(executors::TransformExecutor::default())
            .register(executors::SleepExecutor)
            .register(executors::LogExecutor)
            .register(executors::EchoExecutor)
            .register(executors::LlmExecutor::unconfigured());
        Ok(registry)
    }

    /// The built-in executors set up as `config` says: the egress policies (`egress`, and
    /// `egress_namespaces` with executors of their own for the namespaces it names), the inference
    /// node for `llm`.
    ///
    /// What a namespace's own executors duplicate: an HTTP client (connection pool) for `http`
    /// and one for `notify`, and the `sql` connection pools, so that no connection made under one
    /// policy serves a step under another. The `browser` executors share one `chromedriver`; the
    /// other kinds are shared. Nothing connects before a step needs it.
    pub fn for_config(config: &crate::WorkerConfig) -> crate::Result<Self> {
        use crate::egress::{Egress, EgressPolicies};
        let policies = EgressPolicies::new(&config.egress, &config.egress_namespaces)?;
        let egress = Egress::new(policies.default);
        let browser =
            executors::BrowserExecutor::new(executors::BrowserConfig::default(), egress.clone());
        let mut registry = Self::builtin_sharing(&egress, &browser)?;
        for (namespace, policy) in policies.namespaces {
            for executor in network_executors(&Egress::new(policy), &browser)? {
                registry.register_for(&namespace, executor);
            }
        }
        registry.register(executors::TransformExecutor::new(
            config.expr_limits(),
            config.transform_fuel,
        ));
        let endpoints = config.inference_endpoints();
        if !endpoints.is_empty() {
            registry.register(executors::LlmExecutor::new(
                &endpoints,
                config.inference_refresh,
            )?);
        }
        Ok(registry)
    }

    /// Shuts every executor down (after the worker has drained), namespaces' own included.
    pub async fn shutdown(&self) {
        let own = self.namespaces.values().flat_map(HashMap::values);
        for executor in self.executors.values().chain(own) {
            executor.shutdown().await;
        }
    }

    /// Adds an executor under its kind, replacing any default executor already registered for it
    /// (so a deployment can swap a built-in for a configured one). A namespace's own executor of
    /// that kind, if any, still serves that namespace.
    pub fn register(&mut self, executor: impl Executor + 'static) -> &mut Self {
        self.register_arc(Arc::new(executor))
    }

    /// Adds an executor that is already shared.
    pub fn register_arc(&mut self, executor: Arc<dyn Executor>) -> &mut Self {
        self.executors.insert(executor.kind(), executor);
        self
    }

    /// Adds an executor that serves the tasks of `namespace` only (empty for `default`), in place
    /// of the default one of its kind.
    pub fn register_for(&mut self, namespace: &str, executor: Arc<dyn Executor>) -> &mut Self {
        let namespace = crate::egress::policy::canonical_namespace(namespace);
        self.namespaces
            .entry(namespace.to_owned())
            .or_default()
            .insert(executor.kind(), executor);
        self
    }

    /// The default executor for `kind`.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Executor>> {
        self.executors.get(kind).cloned()
    }

    /// The executor for a task of `namespace` (empty for `default`) and `kind`: the namespace's
    /// own, or the default one. A namespace the worker knows nothing of gets the default.
    pub fn get_for(&self, namespace: &str, kind: &str) -> Option<Arc<dyn Executor>> {
        let namespace = crate::egress::policy::canonical_namespace(namespace);
        self.namespaces
            .get(namespace)
            .and_then(|own| own.get(kind))
            .or_else(|| self.executors.get(kind))
            .cloned()
    }

    /// The namespaces with executors of their own, sorted.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut namespaces: Vec<_> = self.namespaces.keys().map(String::as_str).collect();
        namespaces.sort_unstable();
        namespaces
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self.executors.keys().copied().collect();
        kinds.sort_unstable();
        kinds
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds())
            .field("namespaces", &self.namespaces())
            .finish()
    }
}

/// The built-in executors that reach the network, under `egress`; `browser` shares `browser`'s
/// `chromedriver`. One list, so that a namespace's own executors are the same kinds as the
/// default ones.
fn network_executors(
    egress: &crate::egress::Egress,
    browser: &executors::BrowserExecutor,
) -> crate::Result<[Arc<dyn Executor>; 4]> {
    Ok([
        Arc::new(executors::HttpExecutor::new(
            executors::HttpConfig::default(),
            egress.clone(),
        )?),
        Arc::new(executors::NotifyExecutor::with_default_client(
            egress.clone(),
        )?),
        Arc::new(executors::SqlExecutor::new(egress.clone())),
        Arc::new(browser.with_egress(egress.clone())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_names_the_attempt() {
        let mut ctx = TaskContext::new("run-1", "fetch");
        ctx.attempt = 2;
        assert_eq!(ctx.idempotency_key(), "run-1/fetch/2");
        ctx.item = Some(7);
        assert_eq!(ctx.idempotency_key(), "run-1/fetch/7/2");
    }

    #[test]
    fn task_defaults_apply_when_the_task_leaves_them_at_zero() {
        let task = pb::Task {
            run_id: "r".into(),
            step_id: "s".into(),
            attempt: 1,
            ..Default::default()
        };
        let ctx =
            TaskContext::from_task(&task, Duration::from_secs(5), 10, CancellationToken::new());
        assert_eq!(ctx.timeout, Duration::from_secs(5));
        assert_eq!(ctx.max_output_bytes, 10);
        let task = pb::Task {
            timeout_ms: 250,
            max_output_bytes: 99,
            ..task
        };
        let ctx =
            TaskContext::from_task(&task, Duration::from_secs(5), 10, CancellationToken::new());
        assert_eq!(ctx.timeout, Duration::from_millis(250));
        assert_eq!(ctx.max_output_bytes, 99);
    }

    #[test]
    fn builtin_registry_serves_every_builtin_kind() {
        let registry = Registry::builtin().unwrap();
        assert_eq!(
            registry.kinds(),
            [
                "browser",
                "echo",
                "http",
                "llm",
                "log",
                "notify",
                "sleep",
                "sql",
                "transform"
            ]
        );
        // The flow validator accepts exactly the kinds the workers ship.
        let mut validated = rpaflow_core::flow::WORKER_KINDS.to_vec();
        validated.sort_unstable();
        assert_eq!(registry.kinds(), validated);
        assert!(registry.get("http").is_some());
        assert!(registry.get("teleport").is_none());
    }

    #[test]
    fn a_namespace_with_its_own_egress_policy_has_its_own_network_executors() {
        let config = crate::WorkerConfig {
            egress_namespaces: [(
                "team-a".to_owned(),
                crate::egress::EgressConfig::permissive(),
            )]
            .into(),
            ..crate::WorkerConfig::default()
        };
        let registry = Registry::for_config(&config).unwrap();
        assert_eq!(registry.namespaces(), ["team-a"]);
        let same = |namespace: &str, kind: &str| {
            let own = registry.get_for(namespace, kind).unwrap();
            Arc::ptr_eq(&own, &registry.get(kind).unwrap())
        };
        for kind in ["http", "notify", "sql", "browser"] {
            assert!(!same("team-a", kind), "{kind}");
            assert!(
                same("team-b", kind),
                "{kind}: another namespace has the default"
            );
            assert!(same("", kind) && same("default", kind), "{kind}");
        }
        for kind in registry.kinds() {
            if !["http", "notify", "sql", "browser"].contains(&kind) {
                assert!(same("team-a", kind), "{kind} is shared");
            }
        }
        assert!(registry.get_for("team-a", "teleport").is_none());
    }

    #[test]
    fn step_errors_become_task_errors() {
        let err: pb::TaskError = StepError::timeout(Duration::from_millis(1500)).into();
        assert_eq!(err.code, "timeout");
        assert!(err.retryable);
        assert_eq!(err.message, "step did not finish within 1s 500ms");
        let err = StepError::unknown_kind("browser", &["echo", "http"]);
        assert!(!err.retryable);
        assert!(err.message.contains("`browser`"), "{}", err.message);
    }
}
