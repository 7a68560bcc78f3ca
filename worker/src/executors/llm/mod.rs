//! `llm`: generates text on an inference node (`rpaflow.v1.Inference`), e.g. to draft a reply.
//!
//! # Input
//! - `prompt` (required): the text to continue; the step's `with` templates it over the run.
//! - `model`: the model to use, by name (the node's model directory's name, from its
//!   `ModelInfo`), when nodes serve different ones; any node's model otherwise.
//! - `max_new_tokens`, `greedy` (bool), `temperature`, `top_k`, `top_p`, `repetition_penalty`,
//!   `stop` (a string or a list of strings), `seed`: passed on as they are; the node checks them
//!   and an invalid one fails the step with `invalid_input` naming it.
//!
//! # Output
//! `{text, finish_reason, prompt_tokens, generated_tokens, seed}`; `finish_reason` is `length`,
//! `eos` or `stop`.
//!
//! # Several nodes
//! The worker is given node addresses, or names that resolve to several (a Kubernetes headless
//! Service), resolved again every `worker.inference_refresh`. Each request goes to the healthy
//! node serving the model with the fewest requests outstanding from this worker
//! ([`balancer`]); a node is healthy while its gRPC health service says SERVING ([`node`]). A
//! request a node refused before starting it goes to another node; one that failed after the
//! node took it is never sent again by the executor ([`call`] has the rule).
//!
//! # Errors
//! - `llm_unavailable`, `llm_busy` (retryable): no node took the request (none healthy, or all
//!   refused it as unreachable, draining or with a full queue), tried again with a short back-off
//!   for a quarter of the step's timeout.
//! - `llm_interrupted` (retryable): the node failed after it had accepted the request; the text
//!   may have been partly generated. The flow's `retry` decides whether to generate again.
//! - `llm_unknown_model` (permanent): no node serves the model asked for; the message lists the
//!   models served.
//! - `llm_failed` (permanent): any other answer of a node.
//!
//! # Layout
//! - [`params`]: the step's input read into a request.
//! - [`discovery`]: the configured endpoints resolved, again and again, into nodes.
//! - [`node`]: one node: its channel, health watch and model.
//! - [`balancer`]: which node takes a request.
//! - [`call`]: one try on one node, and what its failure means.

mod balancer;
mod call;
mod discovery;
mod node;
mod params;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use self::balancer::{Balancer, Lease, NoNode};
use self::call::Tried;
use self::discovery::{Discovery, Target};
use crate::{Executor, StepError, TaskContext};

/// Error codes of this executor.
pub mod codes {
    pub const UNAVAILABLE: &str = "llm_unavailable";
    pub const BUSY: &str = "llm_busy";
    pub const INTERRUPTED: &str = "llm_interrupted";
    pub const UNKNOWN_MODEL: &str = "llm_unknown_model";
    pub const FAILED: &str = "llm_failed";
}

/// How often endpoint names are resolved again by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

/// The name of the CLIENT span of a generation: `text_completion {model}`.
pub const LLM_SPAN: &str = "text_completion";

/// The `llm` executor, balancing over the inference nodes its endpoints name.
#[derive(Debug, Clone)]
pub struct LlmExecutor {
    /// None when no inference node is configured: every step fails saying so.
    cluster: Option<Arc<Cluster>>,
}

/// The nodes and what keeps them current; its background tasks end when it is dropped.
#[derive(Debug)]
struct Cluster {
    /// The endpoints as configured, for messages.
    endpoints: String,
    balancer: Arc<Balancer>,
    /// Set up on the first step: nothing connects before a step needs it.
    discovery: tokio::sync::Mutex<Option<Discovery>>,
    started: tokio::sync::OnceCell<()>,
    stop: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl LlmExecutor {
    /// An executor for workers without an inference node: `llm` steps fail with a clear error.
    pub fn unconfigured() -> Self {
        Self { cluster: None }
    }

    /// An executor for the nodes `endpoints` name (`http://host:port` or `host:port`; a name may
    /// resolve to several addresses), resolved again every `refresh`. Connects lazily.
    pub fn new(endpoints: &[String], refresh: Duration) -> crate::Result<Self> {
        let config_error = |message: String| crate::Error::Config {
            field: "inference_endpoint".into(),
            message,
        };
        let targets = endpoints
            .iter()
            .map(|e| Target::parse(e).map_err(config_error))
            .collect::<crate::Result<Vec<_>>>()?;
        if targets.is_empty() {
            return Err(config_error("no endpoint given".into()));
        }
        let balancer = Arc::new(Balancer::default());
        let endpoints = targets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let discovery = Discovery::new(targets, refresh, Default::default(), balancer.clone());
        Ok(Self {
            cluster: Some(Arc::new(Cluster {
                endpoints,
                balancer,
                discovery: tokio::sync::Mutex::new(Some(discovery)),
                started: tokio::sync::OnceCell::new(),
                stop: CancellationToken::new(),
            })),
        })
    }
}

impl Cluster {
    /// Resolves the endpoints once and starts watching the nodes (once).
    async fn start(&self) {
        self.started
            .get_or_init(|| async {
                let Some(mut discovery) = self.discovery.lock().await.take() else {
                    return;
                };
                discovery.resolve(&self.stop).await;
                tokio::spawn(discovery.run(self.stop.clone()));
            })
            .await;
    }

    /// A node for the request: waits (50 ms, doubling to 2 s) while none is ready or all have
    /// refused it, for at most a quarter of the step's timeout.
    async fn lease(
        &self,
        ctx: &TaskContext,
        model: Option<&str>,
        tries: &mut Tries,
    ) -> Result<Lease, StepError> {
        loop {
            let (nodes, healthy) = match self.balancer.pick(model, &tries.refused) {
                Ok(lease) => return Ok(lease),
                Err(NoNode::UnknownModel { available }) => {
                    return Err(StepError::permanent(
                        codes::UNKNOWN_MODEL,
                        format!(
                            "no inference node serves model `{}`; the nodes ({}) serve: {}",
                            model.unwrap_or_default(),
                            self.endpoints,
                            available.join(", ")
                        ),
                    ));
                }
                Err(NoNode::NoneReady { nodes, healthy }) => (nodes, healthy),
            };
            // Every node refused it, or none is ready: wait, then try them all again.
            if tries.waited + tries.backoff > ctx.timeout / 4 {
                let (code, message) = tries.last_refusal.take().unwrap_or_else(|| {
                    let which = model.map_or(String::new(), |m| format!(" for model `{m}`"));
                    (
                        codes::UNAVAILABLE,
                        format!(
                            "no inference node is ready{which} ({nodes} found at {}, {healthy} serving)",
                            self.endpoints
                        ),
                    )
                });
                return Err(StepError::retryable(code, message));
            }
            tokio::select! {
                () = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
                () = tokio::time::sleep(tries.backoff) => {}
            }
            tries.waited += tries.backoff;
            tries.backoff = (tries.backoff * 2).min(Duration::from_secs(2));
            tries.refused.clear();
        }
    }

    /// Sends the request to the node of `lease`, and to others while nodes refuse it before
    /// starting it, in `span`, whose context the call carries.
    async fn generate(
        &self,
        ctx: &TaskContext,
        ask: &params::Ask,
        mut lease: Lease,
        mut tries: Tries,
        span: &tracing::Span,
    ) -> Result<Json, StepError> {
        let traceparent = rpaflow_core::telemetry::run_trace::traceparent_of(span)
            .and_then(|tp| tonic::metadata::MetadataValue::try_from(tp).ok());
        loop {
            let node = lease.node();
            span.record("server.address", tracing::field::display(node.addr));
            let mut call = tonic::Request::new(ask.request.clone());
            if let Some(traceparent) = &traceparent {
                call.metadata_mut().insert(
                    rpaflow_core::trace_context::TRACEPARENT_HEADER,
                    traceparent.clone(),
                );
            }
            let tried = tokio::select! {
                () = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
                tried = call::generate(node, call, span) => tried,
            };
            match tried {
                Tried::Generated(output) => return Ok(output),
                Tried::Failed(err) => return Err(err),
                Tried::Refused {
                    code,
                    message,
                    unreachable,
                } => {
                    if unreachable {
                        node.unreachable();
                    }
                    tracing::debug!(run_id = %ctx.run_id, step = %ctx.step_id, node = %node.addr, code, "inference node refused the request; trying another");
                    tries.refused.insert(node.addr);
                    tries.last_refusal = Some((code, message));
                }
            }
            lease = self.lease(ctx, ask.model.as_deref(), &mut tries).await?;
        }
    }
}

/// The tries of one request so far.
#[derive(Debug)]
struct Tries {
    /// The nodes that refused it since the last pause.
    refused: BTreeSet<std::net::SocketAddr>,
    /// The last refusal, for the step's error when no node takes the request.
    last_refusal: Option<(&'static str, String)>,
    backoff: Duration,
    waited: Duration,
}

impl Default for Tries {
    fn default() -> Self {
        Self {
            refused: BTreeSet::new(),
            last_refusal: None,
            backoff: Duration::from_millis(50),
            waited: Duration::ZERO,
        }
    }
}

#[async_trait]
impl Executor for LlmExecutor {
    fn kind(&self) -> &'static str {
        "llm"
    }

    async fn execute(&self, ctx: &TaskContext, input: Json) -> Result<Json, StepError> {
        let ask = params::ask(&input)?;
        let Some(cluster) = &self.cluster else {
            return Err(StepError::permanent(
                codes::UNAVAILABLE,
                "no inference node is configured for this worker (set worker.inference_endpoint, \
                 RPAFLOW_WORKER__INFERENCE_ENDPOINT, or run `rpaflow dev --model DIR`)",
            ));
        };
        cluster.start().await;
        // The first node is chosen before the span starts, so that the span is named after the
        // model that answers (`text_completion gpt2`).
        let mut tries = Tries::default();
        let first = cluster.lease(ctx, ask.model.as_deref(), &mut tries).await;
        let model = match &first {
            Ok(lease) => lease.node().model().unwrap_or_default(),
            Err(_) => ask.model.clone().unwrap_or_default(),
        };
        let params = ask.request.params.clone().unwrap_or_default();
        let span = tracing::info_span!(
            LLM_SPAN,
            otel.name = %format_args!("{LLM_SPAN} {model}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            gen_ai.operation.name = LLM_SPAN,
            gen_ai.provider.name = "rpaflow",
            gen_ai.request.model = %model,
            gen_ai.request.max_tokens = params.max_new_tokens,
            gen_ai.request.temperature = params.temperature,
            gen_ai.request.top_k = params.top_k,
            gen_ai.request.top_p = params.top_p,
            gen_ai.request.seed = params.seed,
            gen_ai.response.finish_reasons = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            server.address = tracing::field::Empty,
        );
        let outcome = match first {
            Ok(lease) => {
                cluster
                    .generate(ctx, &ask, lease, tries, &span)
                    .instrument(span.clone())
                    .await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = &outcome {
            rpaflow_core::telemetry::run_trace::record_error(&span, &err.code);
        }
        outcome
    }
}
