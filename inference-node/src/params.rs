//! Generation parameters: the domain type, and its validated conversion from the proto message.

use rpaflow_proto::v1 as pb;

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on a tie).
    Greedy,
    /// A draw from the distribution after temperature, top-k and top-p.
    Random {
        temperature: f32,
        /// 0 keeps every token.
        top_k: u32,
        /// 1 keeps every token.
        top_p: f32,
    },
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub max_new_tokens: u32,
    pub sampling: Sampling,
    /// 1 is off.
    pub repetition_penalty: f32,
    pub stop: Vec<String>,
    /// `None` draws one.
    pub seed: Option<u64>,
}

pub const DEFAULT_MAX_NEW_TOKENS: u32 = 64;
pub const MAX_STOP_SEQUENCES: usize = 8;
pub const MAX_STOP_BYTES: usize = 64;

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            sampling: Sampling::Random {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
            },
            repetition_penalty: 1.0,
            stop: Vec::new(),
            seed: None,
        }
    }
}

impl GenerationParams {
    pub fn greedy(max_new_tokens: u32) -> Self {
        Self {
            max_new_tokens,
            sampling: Sampling::Greedy,
            ..Self::default()
        }
    }
}

impl TryFrom<Option<pb::GenerationParams>> for GenerationParams {
    type Error = Error;

    /// Validates every field; an error names the parameter.
    fn try_from(params: Option<pb::GenerationParams>) -> Result<Self> {
        let p = params.unwrap_or_default();
        let max_new_tokens = p.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS);
        if max_new_tokens == 0 {
            return Err(Error::invalid("max_new_tokens", "must be at least 1"));
        }
        let temperature = p.temperature.unwrap_or(1.0);
        if !temperature.is_finite() || !(0.0..=100.0).contains(&temperature) {
            return Err(Error::invalid(
                "temperature",
                format!("must be in [0, 100], got {temperature}"),
            ));
        }
        let top_p = p.top_p.unwrap_or(1.0);
        if !top_p.is_finite() || top_p <= 0.0 || top_p > 1.0 {
            return Err(Error::invalid(
                "top_p",
                format!("must be in (0, 1], got {top_p}"),
            ));
        }
        let repetition_penalty = p.repetition_penalty.unwrap_or(1.0);
        if !repetition_penalty.is_finite() || repetition_penalty <= 0.0 || repetition_penalty > 10.0
        {
            return Err(Error::invalid(
                "repetition_penalty",
                format!("must be in (0, 10], got {repetition_penalty}"),
            ));
        }
        if p.stop.len() > MAX_STOP_SEQUENCES {
            return Err(Error::invalid(
                "stop",
                format!(
                    "at most {MAX_STOP_SEQUENCES} sequences, got {}",
                    p.stop.len()
                ),
            ));
        }
        if let Some(s) = p
            .stop
            .iter()
            .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(Error::invalid(
                "stop",
                format!("each sequence must have 1 to {MAX_STOP_BYTES} bytes, got {s:?}"),
            ));
        }
        let sampling = if p.greedy || temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Random {
                temperature,
                top_k: p.top_k.unwrap_or(0),
                top_p,
            }
        };
        Ok(Self {
            max_new_tokens,
            sampling,
            repetition_penalty,
            stop: p.stop,
            seed: p.seed,
        })
    }
}

impl From<&GenerationParams> for pb::GenerationParams {
    fn from(p: &GenerationParams) -> Self {
        let (greedy, temperature, top_k, top_p) = match p.sampling {
            Sampling::Greedy => (true, None, None, None),
            Sampling::Random {
                temperature,
                top_k,
                top_p,
            } => (false, Some(temperature), Some(top_k), Some(top_p)),
        };
        pb::GenerationParams {
            max_new_tokens: Some(p.max_new_tokens),
            greedy,
            temperature,
            top_k,
            top_p,
            repetition_penalty: Some(p.repetition_penalty),
            stop: p.stop.clone(),
            seed: p.seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter_of(p: pb::GenerationParams) -> Option<&'static str> {
        match GenerationParams::try_from(Some(p)) {
            Err(Error::InvalidArgument { parameter, .. }) => Some(parameter),
            _ => None,
        }
    }

    #[test]
    fn defaults_and_greedy() {
        let p = GenerationParams::try_from(None).ok();
        assert_eq!(p, Some(GenerationParams::default()));
        let zero = pb::GenerationParams {
            temperature: Some(0.0),
            ..Default::default()
        };
        let p = GenerationParams::try_from(Some(zero)).ok();
        assert_eq!(p.map(|p| p.sampling), Some(Sampling::Greedy));
    }

    #[test]
    fn invalid_parameters_are_named() {
        let p = pb::GenerationParams::default;
        let cases = [
            (
                pb::GenerationParams {
                    max_new_tokens: Some(0),
                    ..p()
                },
                "max_new_tokens",
            ),
            (
                pb::GenerationParams {
                    temperature: Some(-1.0),
                    ..p()
                },
                "temperature",
            ),
            (
                pb::GenerationParams {
                    temperature: Some(f32::NAN),
                    ..p()
                },
                "temperature",
            ),
            (
                pb::GenerationParams {
                    top_p: Some(0.0),
                    ..p()
                },
                "top_p",
            ),
            (
                pb::GenerationParams {
                    top_p: Some(1.5),
                    ..p()
                },
                "top_p",
            ),
            (
                pb::GenerationParams {
                    repetition_penalty: Some(0.0),
                    ..p()
                },
                "repetition_penalty",
            ),
            (
                pb::GenerationParams {
                    stop: vec![String::new()],
                    ..p()
                },
                "stop",
            ),
            (
                pb::GenerationParams {
                    stop: vec!["x".into(); 9],
                    ..p()
                },
                "stop",
            ),
        ];
        for (params, name) in cases {
            assert_eq!(parameter_of(params), Some(name));
        }
    }

    #[test]
    fn proto_round_trip() {
        let p = GenerationParams {
            max_new_tokens: 5,
            sampling: Sampling::Random {
                temperature: 0.7,
                top_k: 40,
                top_p: 0.9,
            },
            repetition_penalty: 1.2,
            stop: vec!["\n".into()],
            seed: Some(7),
        };
        let back = GenerationParams::try_from(Some(pb::GenerationParams::from(&p))).ok();
        assert_eq!(back, Some(p));
    }
}
