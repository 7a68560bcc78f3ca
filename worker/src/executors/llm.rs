//! `llm`: generates text on an inference node (`rpaflow.v1.Inference`), e.g. to draft a reply.
//!
//! # Input
//! - `prompt` (required): the text to continue; the step's `with` templates it over the run.
//! - `max_new_tokens`, `greedy` (bool), `temperature`, `top_k`, `top_p`, `repetition_penalty`,
//!   `stop` (a string or a list of strings), `seed`: passed on as they are; the node checks them
//!   and an invalid one fails the step with `invalid_input` naming it.
//!
//! # Output
//! `{text, finish_reason, prompt_tokens, generated_tokens, seed}`; `finish_reason` is `length`,
//! `eos` or `stop`.
//!
//! # Errors
//! An unreachable node (`UNAVAILABLE`) or a full queue (`RESOURCE_EXHAUSTED`) is retried here
//! with a short back-off while the step's time allows, then fails with `llm_unavailable` or
//! `llm_busy`, both retryable, so the flow's `retry` can go on.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rpaflow_proto::v1 as pb;
use rpaflow_proto::v1::inference_client::InferenceClient;
use serde_json::{Value as Json, json};
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument as _;

use super::Input;
use super::input::wrong_type;
use crate::{Executor, StepError, TaskContext};

/// Error codes of this executor.
pub mod codes {
    pub const UNAVAILABLE: &str = "llm_unavailable";
    pub const BUSY: &str = "llm_busy";
    pub const FAILED: &str = "llm_failed";
}

const FIELDS: &[&str] = &[
    "prompt",
    "max_new_tokens",
    "greedy",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "stop",
    "seed",
];

/// The `llm` executor, talking to one inference node (or a load balancer in front of several).
#[derive(Debug, Clone)]
pub struct LlmExecutor {
    endpoint: String,
    /// None when no inference node is configured: every step fails saying so.
    channel: Option<Channel>,
    /// The node's model (its directory's name), asked once for the spans' `gen_ai.request.model`.
    model: Arc<tokio::sync::OnceCell<String>>,
}

impl LlmExecutor {
    /// An executor for workers without an inference node: `llm` steps fail with a clear error.
    pub fn unconfigured() -> Self {
        Self {
            endpoint: String::new(),
            channel: None,
            model: Arc::default(),
        }
    }

    /// Connects lazily to `endpoint` (`http://host:port`, or `host:port`).
    pub fn new(endpoint: &str) -> crate::Result<Self> {
        let endpoint = if endpoint.contains("://") {
            endpoint.to_owned()
        } else {
            format!("http://{endpoint}")
        };
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| crate::Error::Config {
                field: "inference_endpoint".into(),
                message: format!("`{endpoint}`: {e}"),
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Self {
            endpoint,
            channel: Some(channel),
            model: Arc::default(),
        })
    }

    /// The model's name, from the node's `ModelInfo` (asked again after a failure).
    async fn model(&self, channel: Channel) -> String {
        let ask = || async move {
            let info = InferenceClient::new(channel)
                .model_info(pb::ModelInfoRequest {})
                .await?
                .into_inner();
            let name = std::path::Path::new(&info.model_dir)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(info.model_dir);
            Ok::<_, tonic::Status>(name)
        };
        self.model
            .get_or_try_init(ask)
            .await
            .cloned()
            .unwrap_or_default()
    }
}

/// The name of the CLIENT span of a generation: `text_completion {model}`.
pub const LLM_SPAN: &str = "text_completion";

fn number(input: &Input<'_>, name: &str) -> Result<Option<f64>, StepError> {
    match input.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(wrong_type(name, "a number", other)),
    }
}

fn whole(input: &Input<'_>, name: &str) -> Result<Option<u64>, StepError> {
    match input.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            StepError::invalid_input(format!(
                "`{name}` must be a whole number of at least 0, got {n}"
            ))
        }),
        Some(other) => Err(wrong_type(name, "a whole number", other)),
    }
}

fn small(input: &Input<'_>, name: &str) -> Result<Option<u32>, StepError> {
    whole(input, name)?
        .map(|v| {
            u32::try_from(v)
                .map_err(|_| StepError::invalid_input(format!("`{name}` is too large: {v}")))
        })
        .transpose()
}

/// Reads the step's input into a request, naming the field of any problem.
fn request(input: &Json) -> Result<pb::GenerateRequest, StepError> {
    let input = Input::new(input)?;
    input.deny_unknown(FIELDS)?;
    let prompt = input.required_str("prompt")?.to_owned();
    let stop = match input.get("stop") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| wrong_type("stop[]", "a string", v))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong_type("stop", "a string or a list of strings", other)),
    };
    let params = pb::GenerationParams {
        max_new_tokens: small(&input, "max_new_tokens")?,
        greedy: input.bool("greedy")?.unwrap_or(false),
        temperature: number(&input, "temperature")?.map(|v| v as f32),
        top_k: small(&input, "top_k")?,
        top_p: number(&input, "top_p")?.map(|v| v as f32),
        repetition_penalty: number(&input, "repetition_penalty")?.map(|v| v as f32),
        stop,
        seed: whole(&input, "seed")?,
    };
    Ok(pb::GenerateRequest {
        prompt,
        params: Some(params),
    })
}

fn finish_reason(value: i32) -> &'static str {
    match pb::FinishReason::try_from(value).unwrap_or(pb::FinishReason::Unspecified) {
        pb::FinishReason::Length => "length",
        pb::FinishReason::Eos => "eos",
        pb::FinishReason::Stop => "stop",
        pb::FinishReason::Unspecified => "unknown",
    }
}

#[async_trait]
impl Executor for LlmExecutor {
    fn kind(&self) -> &'static str {
        "llm"
    }

    async fn execute(&self, ctx: &TaskContext, input: Json) -> Result<Json, StepError> {
        let request = request(&input)?;
        let Some(channel) = self.channel.clone() else {
            return Err(StepError::permanent(
                codes::UNAVAILABLE,
                "no inference node is configured for this worker (set worker.inference_endpoint, \
                 RPAFLOW_WORKER__INFERENCE_ENDPOINT, or run `rpaflow dev --model DIR`)",
            ));
        };
        let model = if rpaflow_core::telemetry::run_trace::enabled() {
            self.model(channel.clone()).await
        } else {
            String::new()
        };
        let params = request.params.clone().unwrap_or_default();
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
            server.address = %self.endpoint,
        );
        let outcome = self
            .generate(ctx, channel, request, &span)
            .instrument(span.clone())
            .await;
        if let Err(err) = &outcome {
            rpaflow_core::telemetry::run_trace::record_error(&span, &err.code);
        }
        outcome
    }
}

impl LlmExecutor {
    /// Calls the node, retrying while it is busy or not ready, in `span` (whose context the
    /// call carries as `traceparent` metadata).
    async fn generate(
        &self,
        ctx: &TaskContext,
        channel: Channel,
        request: pb::GenerateRequest,
        span: &tracing::Span,
    ) -> Result<Json, StepError> {
        let traceparent = rpaflow_core::telemetry::run_trace::traceparent_of(span)
            .and_then(|tp| tonic::metadata::MetadataValue::try_from(tp).ok());
        let mut client = InferenceClient::new(channel);
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut call = tonic::Request::new(request.clone());
            if let Some(traceparent) = &traceparent {
                call.metadata_mut()
                    .insert(rpaflow_core::kafka::TRACEPARENT_HEADER, traceparent.clone());
            }
            let call = client.generate(call);
            let status = tokio::select! {
                () = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
                result = call => match result {
                    Ok(response) => {
                        let r = response.into_inner();
                        span.record("gen_ai.usage.input_tokens", r.prompt_tokens);
                        span.record("gen_ai.usage.output_tokens", r.generated_tokens);
                        span.record("gen_ai.response.finish_reasons", finish_reason(r.finish_reason));
                        return Ok(json!({
                            "text": r.text,
                            "finish_reason": finish_reason(r.finish_reason),
                            "prompt_tokens": r.prompt_tokens,
                            "generated_tokens": r.generated_tokens,
                            "seed": r.seed,
                        }));
                    }
                    Err(status) => status,
                },
            };
            let code = match status.code() {
                tonic::Code::Unavailable => codes::UNAVAILABLE,
                tonic::Code::ResourceExhausted => codes::BUSY,
                tonic::Code::InvalidArgument => {
                    return Err(StepError::invalid_input(status.message().to_owned()));
                }
                other => {
                    let message = format!(
                        "inference node {} answered {other:?}: {}",
                        self.endpoint,
                        status.message()
                    );
                    return Err(StepError::permanent(codes::FAILED, message));
                }
            };
            // Retried here while the step has time; the step's timeout bounds the whole loop.
            tracing::debug!(run_id = %ctx.run_id, step = %ctx.step_id, code, "inference node not ready; retrying");
            if backoff > ctx.timeout / 4 {
                let message = format!("inference node {}: {}", self.endpoint, status.message());
                return Err(StepError::retryable(code, message));
            }
            tokio::select! {
                () = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rpaflow_proto::v1::inference_server::{Inference, InferenceServer};
    use tonic::{Request, Response, Status};

    use super::*;

    /// A stand-in inference node: busy for the first `busy` calls, then echoes the prompt.
    struct Fake {
        calls: Arc<AtomicUsize>,
        busy: usize,
    }

    #[tonic::async_trait]
    impl Inference for Fake {
        async fn generate(
            &self,
            req: Request<pb::GenerateRequest>,
        ) -> Result<Response<pb::GenerateResponse>, Status> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.busy {
                return Err(Status::resource_exhausted("queue full"));
            }
            let req = req.into_inner();
            let params = req.params.unwrap_or_default();
            if params.temperature.is_some_and(|t| t < 0.0) {
                return Err(Status::invalid_argument("temperature must be at least 0"));
            }
            Ok(Response::new(pb::GenerateResponse {
                text: format!(
                    "{} [top_k={:?} stop={:?}]",
                    req.prompt, params.top_k, params.stop
                ),
                finish_reason: pb::FinishReason::Length as i32,
                prompt_tokens: 3,
                generated_tokens: params.max_new_tokens.unwrap_or(0),
                seed: params.seed.unwrap_or(7),
                ..Default::default()
            }))
        }

        type GenerateStreamStream =
            tokio_stream::wrappers::ReceiverStream<Result<pb::GenerateChunk, Status>>;

        async fn generate_stream(
            &self,
            _: Request<pb::GenerateRequest>,
        ) -> Result<Response<Self::GenerateStreamStream>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }

        async fn model_info(
            &self,
            _: Request<pb::ModelInfoRequest>,
        ) -> Result<Response<pb::ModelInfoResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
    }

    async fn serve(busy: usize) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Fake {
            calls: calls.clone(),
            busy,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(InferenceServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (format!("http://{addr}"), calls)
    }

    #[tokio::test]
    async fn generates_and_passes_parameters_on() {
        let (endpoint, _) = serve(0).await;
        let llm = LlmExecutor::new(&endpoint).unwrap();
        let input = json!({"prompt": "Dear Ada,", "max_new_tokens": 5, "top_k": 40, "stop": "\n", "seed": 1});
        let out = llm
            .execute(&TaskContext::new("r", "s"), input)
            .await
            .unwrap();
        assert_eq!(
            out["text"],
            json!("Dear Ada, [top_k=Some(40) stop=[\"\\n\"]]")
        );
        assert_eq!(out["finish_reason"], json!("length"));
        assert_eq!(out["generated_tokens"], json!(5));
        assert_eq!(out["seed"], json!(1));
    }

    #[tokio::test]
    async fn a_busy_node_is_retried() {
        let (endpoint, calls) = serve(2).await;
        let llm = LlmExecutor::new(&endpoint).unwrap();
        let out = llm
            .execute(&TaskContext::new("r", "s"), json!({"prompt": "hi"}))
            .await
            .unwrap();
        assert_eq!(out["text"], json!("hi [top_k=None stop=[]]"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn bad_parameters_name_the_field() {
        let (endpoint, _) = serve(0).await;
        let llm = LlmExecutor::new(&endpoint).unwrap();
        let ctx = TaskContext::new("r", "s");
        let err = llm
            .execute(&ctx, json!({"prompt": "x", "top_k": -1}))
            .await
            .unwrap_err();
        assert_eq!(err.code, "invalid_input");
        assert!(err.message.contains("top_k"), "{}", err.message);
        let err = llm
            .execute(&ctx, json!({"prompt": "x", "temprature": 1}))
            .await
            .unwrap_err();
        assert!(err.message.contains("temprature"), "{}", err.message);
        let err = llm
            .execute(&ctx, json!({"prompt": "x", "temperature": -1.0}))
            .await
            .unwrap_err();
        assert_eq!(err.code, "invalid_input");
        assert!(err.message.contains("temperature"), "{}", err.message);
    }

    #[tokio::test]
    async fn without_a_node_steps_fail_saying_so() {
        let err = LlmExecutor::unconfigured()
            .execute(&TaskContext::new("r", "s"), json!({"prompt": "x"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, codes::UNAVAILABLE);
        assert!(!err.retryable);
        assert!(
            err.message.contains("inference_endpoint"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn an_unreachable_node_fails_retryably() {
        let llm = LlmExecutor::new("127.0.0.1:1").unwrap();
        let mut ctx = TaskContext::new("r", "s");
        ctx.timeout = Duration::from_secs(1);
        let err = llm.execute(&ctx, json!({"prompt": "x"})).await.unwrap_err();
        assert_eq!(err.code, codes::UNAVAILABLE);
        assert!(err.retryable);
    }
}
