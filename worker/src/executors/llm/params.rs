//! The step's input read into a `GenerateRequest` (and the model it asks for), naming the field
//! of any problem; the node checks the values themselves.

use rpaflow_proto::v1 as pb;
use serde_json::Value as Json;

use crate::StepError;
use crate::executors::Input;
use crate::executors::input::wrong_type;

const FIELDS: &[&str] = &[
    "prompt",
    "model",
    "max_new_tokens",
    "greedy",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "stop",
    "seed",
];

/// What a step asks for: the request, and the model (by name) when it names one.
#[derive(Debug, Clone)]
pub(super) struct Ask {
    pub request: pb::GenerateRequest,
    pub model: Option<String>,
}

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

/// Reads the step's input, naming the field of any problem.
pub(super) fn ask(input: &Json) -> Result<Ask, StepError> {
    let input = Input::new(input)?;
    input.deny_unknown(FIELDS)?;
    let prompt = input.required_str("prompt")?.to_owned();
    let model = match input.get("model") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(other) => return Err(wrong_type("model", "a model's name", other)),
    };
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
    Ok(Ask {
        request: pb::GenerateRequest {
            prompt,
            params: Some(params),
        },
        model,
    })
}

pub(super) fn finish_reason(value: i32) -> &'static str {
    match pb::FinishReason::try_from(value).unwrap_or(pb::FinishReason::Unspecified) {
        pb::FinishReason::Length => "length",
        pb::FinishReason::Eos => "eos",
        pb::FinishReason::Stop => "stop",
        pb::FinishReason::Unspecified => "unknown",
    }
}
