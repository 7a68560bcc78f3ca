//! One try of a generation on one node, and what its failure means.
//!
//! # When a request goes to another node
//! The call is `GenerateStream`: the node answers with its response headers once it has queued
//! the request, so the worker knows whether the node took it.
//! - Before the node took it: `UNAVAILABLE` (no connection, the connection refused or reset, the
//!   node draining), `RESOURCE_EXHAUSTED` (its queue is full), and any failure of the transport
//!   itself (a status with a source error, whatever its code: the node never answered) are
//!   refusals, and the request goes to another node. Nothing was generated, or nothing that
//!   anyone will see: the call's connection is gone, and the node drops a request whose caller
//!   went away.
//! - After the node took it, an error status that carries `rpaflow-not-started` metadata is a
//!   refusal too: the node says the request was still queued when it began to drain.
//! - Any other failure after the node took it (the node died, the connection broke, an engine
//!   error) may come after tokens were generated and sent. That request is never sent again by
//!   this executor: the step fails with `llm_interrupted`, saying the text may have been partly
//!   generated, and the flow's `retry` decides (it is retryable, as a repeated generation has
//!   no effect outside the step).
//! - `INVALID_ARGUMENT` is the step's input (a parameter out of range, a prompt too long), from
//!   any node; other codes fail the step.

use rpaflow_proto::v1 as pb;
use rpaflow_proto::v1::inference_client::InferenceClient;
use serde_json::{Value as Json, json};

use super::codes;
use super::node::Node;
use super::params::finish_reason;
use crate::StepError;

/// How a try ended.
#[derive(Debug)]
pub(super) enum Tried {
    /// The node generated the text: the step's output.
    Generated(Json),
    /// The node did not take the request: try another. `unreachable` when the node could not be
    /// reached (it is then unhealthy until its health watch says otherwise).
    Refused {
        code: &'static str,
        message: String,
        unreachable: bool,
    },
    /// The step fails (and this request goes to no other node).
    Failed(StepError),
}

/// Sends `request` to `node` and reads the whole stream.
pub(super) async fn generate(
    node: &Node,
    request: tonic::Request<pb::GenerateRequest>,
    span: &tracing::Span,
) -> Tried {
    let mut client = InferenceClient::new(node.channel.clone());
    let mut chunks = match client.generate_stream(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return before_start(node, &status),
    };
    // The node took the request: from here on, a failure may follow generated tokens.
    let mut text = String::new();
    let mut tokens = 0u32;
    loop {
        match chunks.message().await {
            Ok(Some(chunk)) => {
                text.push_str(&chunk.text);
                tokens += 1;
                if let Some(reason) = chunk.finish_reason {
                    let summary = chunk.summary.unwrap_or_default();
                    let reason = finish_reason(reason);
                    span.record("gen_ai.usage.input_tokens", summary.prompt_tokens);
                    span.record("gen_ai.usage.output_tokens", summary.generated_tokens);
                    span.record("gen_ai.response.finish_reasons", reason);
                    return Tried::Generated(json!({
                        "text": text,
                        "finish_reason": reason,
                        "prompt_tokens": summary.prompt_tokens,
                        "generated_tokens": summary.generated_tokens,
                        "seed": summary.seed,
                    }));
                }
            }
            Ok(None) => {
                return Tried::Failed(interrupted(node, tokens, "the stream ended unfinished"));
            }
            Err(status) => return after_start(node, tokens, &status),
        }
    }
}

/// The node answered `status` instead of taking the request, or the call failed before the
/// node answered at all.
fn before_start(node: &Node, status: &tonic::Status) -> Tried {
    // A status with a source was made by this side's transport (the connection failed or
    // broke), not sent by the node: the node never answered, and nothing it may have done can
    // reach anyone now.
    let transport = std::error::Error::source(status).is_some();
    match status.code() {
        _ if transport => Tried::Refused {
            code: codes::UNAVAILABLE,
            message: format!("inference node {}: {}", node.addr, status.message()),
            unreachable: true,
        },
        tonic::Code::Unavailable => Tried::Refused {
            code: codes::UNAVAILABLE,
            message: format!("inference node {}: {}", node.addr, status.message()),
            unreachable: true,
        },
        tonic::Code::ResourceExhausted => Tried::Refused {
            code: codes::BUSY,
            message: format!("inference node {}: {}", node.addr, status.message()),
            unreachable: false,
        },
        tonic::Code::InvalidArgument => {
            Tried::Failed(StepError::invalid_input(status.message().to_owned()))
        }
        other => Tried::Failed(StepError::permanent(
            codes::FAILED,
            format!(
                "inference node {} answered {other:?}: {}",
                node.addr,
                status.message()
            ),
        )),
    }
}

/// The stream failed with `status` after the node took the request and sent `tokens` chunks.
fn after_start(node: &Node, tokens: u32, status: &tonic::Status) -> Tried {
    if tokens == 0
        && status
            .metadata()
            .contains_key(rpaflow_proto::NOT_STARTED_METADATA)
    {
        return Tried::Refused {
            code: codes::UNAVAILABLE,
            message: format!("inference node {}: {}", node.addr, status.message()),
            unreachable: false,
        };
    }
    if status.code() == tonic::Code::InvalidArgument {
        return Tried::Failed(StepError::invalid_input(status.message().to_owned()));
    }
    let cause = format!("{:?}: {}", status.code(), status.message());
    Tried::Failed(interrupted(node, tokens, &cause))
}

fn interrupted(node: &Node, tokens: u32, cause: &str) -> StepError {
    StepError::retryable(
        codes::INTERRUPTED,
        format!(
            "inference node {} failed after it had accepted the request ({tokens} tokens \
             received): the text may have been partly generated, so the request was not sent to \
             another node: {cause}",
            node.addr
        ),
    )
}
