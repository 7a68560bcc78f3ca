//! The `rpaflow.v1.Inference` gRPC service over an [`EngineHandle`].

use std::pin::Pin;

use futures::{Stream, StreamExt};
use rpaflow_proto::v1 as pb;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    engine::{Delivery, EngineHandle, Event, FinishReason, Finished, Timings},
    error::Error,
    params::GenerationParams,
};

#[derive(Debug, Clone)]
pub struct InferenceService {
    engine: EngineHandle,
}

impl InferenceService {
    pub fn new(engine: EngineHandle) -> Self {
        Self { engine }
    }
}

impl From<FinishReason> for pb::FinishReason {
    fn from(r: FinishReason) -> Self {
        match r {
            FinishReason::Length => pb::FinishReason::Length,
            FinishReason::Eos => pb::FinishReason::Eos,
            FinishReason::Stop => pb::FinishReason::Stop,
        }
    }
}

impl From<Timings> for pb::GenerationTimings {
    fn from(t: Timings) -> Self {
        pb::GenerationTimings {
            queue_ms: t.queue.as_secs_f64() * 1e3,
            time_to_first_token_ms: t.time_to_first_token.as_secs_f64() * 1e3,
            total_ms: t.total.as_secs_f64() * 1e3,
        }
    }
}

impl From<&Finished> for pb::GenerateSummary {
    fn from(f: &Finished) -> Self {
        pb::GenerateSummary {
            prompt_tokens: f.prompt_tokens,
            generated_tokens: f.generated_tokens,
            seed: f.seed,
            timings: Some(f.timings.into()),
        }
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::inference_server::Inference for InferenceService {
    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let span = server_span(&request, "Generate");
        let started = std::time::SystemTime::now();
        let answer = self
            .generate_whole(request.into_inner())
            .instrument(span.clone())
            .await;
        match &answer {
            Ok(response) => {
                let r = response.get_ref();
                record_generation(
                    &span,
                    started,
                    r.prompt_tokens,
                    r.generated_tokens,
                    r.timings,
                );
            }
            Err(status) => record_failure(&span, status),
        }
        answer
    }

    type GenerateStreamStream = ChunkStream;

    async fn generate_stream(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        // The span lives as long as the stream: it ends when the last chunk is sent or the
        // client goes away.
        let span = server_span(&request, "GenerateStream");
        let started = std::time::SystemTime::now();
        let request = request.into_inner();
        let submitted = span.in_scope(|| {
            let params = GenerationParams::try_from(request.params)?;
            self.engine
                .submit(&request.prompt, params, Delivery::Stream)
                .map_err(Status::from)
        });
        let events = match submitted {
            Ok((_, events)) => events,
            Err(status) => {
                record_failure(&span, &status);
                return Err(status);
            }
        };
        // When the client disconnects, tonic drops this stream and with it the receiver.
        let chunks = UnboundedReceiverStream::new(events).map(move |event| {
            let chunk = match event {
                Event::Token(token) => {
                    if let Some(f) = &token.finished {
                        let timings = Some(pb::GenerationTimings::from(f.timings));
                        record_generation(
                            &span,
                            started,
                            f.prompt_tokens,
                            f.generated_tokens,
                            timings,
                        );
                    }
                    Ok(pb::GenerateChunk {
                        token_id: token.token_id,
                        text: token.text,
                        finish_reason: token
                            .finished
                            .as_ref()
                            .map(|f| pb::FinishReason::from(f.reason).into()),
                        summary: token.finished.as_ref().map(pb::GenerateSummary::from),
                    })
                }
                Event::Failed(e) => Err(Status::from(e)),
                Event::Completed(_) => Err(Error::NotRunning.into()),
            };
            if let Err(status) = &chunk {
                record_failure(&span, status);
            }
            chunk
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn model_info(
        &self,
        _request: Request<pb::ModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfoResponse>, Status> {
        let spec = self.engine.spec();
        let config = self.engine.config();
        Ok(Response::new(pb::ModelInfoResponse {
            model_dir: spec.dir.display().to_string(),
            layers: spec.layers as u32,
            heads: spec.heads as u32,
            hidden_size: spec.hidden as u32,
            vocab_size: spec.vocab as u32,
            max_positions: spec.max_positions as u32,
            eos_token_id: spec.eos,
            kv_dtype: spec.kv_dtype.as_str().into(),
            device: spec.device.to_string(),
            max_batch_size: config.max_batch_size as u32,
            max_total_tokens: config.max_total_tokens as u32,
            max_queue: config.max_queue as u32,
            stats: Some((&self.engine.stats()).into()),
        }))
    }
}

/// The server span of a `Generate` call; its children `queue`, `prefill` and `decode` are
/// timed by the engine. A `GenerateStream` call's is `rpaflow.v1.Inference/GenerateStream`.
pub const GENERATE_SPAN: &str = "rpaflow.v1.Inference/Generate";

/// The server span of a call, continuing the caller's `traceparent` metadata (the `llm` step's
/// CLIENT span).
fn server_span<T>(request: &Request<T>, method: &'static str) -> tracing::Span {
    let span = tracing::info_span!(
        GENERATE_SPAN,
        otel.name = %format_args!("rpaflow.v1.Inference/{method}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = "rpaflow.v1.Inference",
        rpc.method = method,
        gen_ai.operation.name = "text_completion",
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
    );
    rpaflow_core::telemetry::run_trace::continue_trace(
        &span,
        request
            .metadata()
            .get(rpaflow_core::trace_context::TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok()),
    );
    span
}

/// A failed call: its gRPC code as `error.type`.
fn record_failure(span: &tracing::Span, status: &Status) {
    rpaflow_core::telemetry::run_trace::record_error(span, &format!("{:?}", status.code()));
}

impl InferenceService {
    async fn generate_whole(
        &self,
        request: pb::GenerateRequest,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let params = GenerationParams::try_from(request.params)?;
        let (_, mut events) = self
            .engine
            .submit(&request.prompt, params, Delivery::Whole)?;
        // Dropping `events` (the client went away, the future is dropped) cancels the request.
        match events.recv().await {
            Some(Event::Completed(c)) => Ok(Response::new(pb::GenerateResponse {
                text: c.text,
                finish_reason: pb::FinishReason::from(c.finished.reason).into(),
                prompt_tokens: c.finished.prompt_tokens,
                generated_tokens: c.finished.generated_tokens,
                token_ids: c.token_ids,
                seed: c.finished.seed,
                timings: Some(c.finished.timings.into()),
            })),
            Some(Event::Failed(e)) => Err(e.into()),
            Some(Event::Token(_)) | None => Err(Error::NotRunning.into()),
        }
    }
}

/// Usage on the server span, and the engine's phases as its children.
fn record_generation(
    span: &tracing::Span,
    started: std::time::SystemTime,
    prompt_tokens: u32,
    generated_tokens: u32,
    timings: Option<pb::GenerationTimings>,
) {
    span.record("gen_ai.usage.input_tokens", prompt_tokens);
    span.record("gen_ai.usage.output_tokens", generated_tokens);
    if let Some(t) = timings {
        let ms = |v: f64| std::time::Duration::from_secs_f64(v.max(0.0) / 1e3);
        let (queue, first, total) = (ms(t.queue_ms), ms(t.time_to_first_token_ms), ms(t.total_ms));
        rpaflow_core::telemetry::run_trace::record_phases(
            span,
            started,
            &[
                ("queue", queue),
                ("prefill", first.saturating_sub(queue)),
                ("decode", total.saturating_sub(first)),
            ],
        );
    }
}
