//! Converting an evaluation's result to JSON under a byte limit and a depth limit.
//!
//! A result can be far larger than what the evaluation paid for: values read from the context are
//! shared, so `[inputs.text] * 1000` costs a thousand list slots but converts to a thousand copies
//! of the text, and a lazy `range` is only walked here. So the conversion counts the JSON bytes it
//! produces and stops at the limit, before allocating past it.

use minijinja::value::{Value, ValueKind};
use serde_json::Value as Json;

use super::limits::MAX_RESULT_DEPTH;

/// Why a result could not be converted.
#[derive(Debug)]
pub(super) enum ConvertError {
    /// More than the given number of JSON bytes.
    TooLarge,
    /// Lists or mappings nested deeper than [`MAX_RESULT_DEPTH`].
    TooDeep,
    /// Not representable in JSON (a map key that is not a string, a failing value).
    NotJson(String),
}

/// Converts `value` to JSON of at most `max_bytes` bytes (as `serde_json` would write it, about),
/// and says how many bytes it counted.
pub(super) fn to_json(value: &Value, max_bytes: usize) -> Result<(Json, usize), ConvertError> {
    let mut budget = Budget { left: max_bytes };
    let json = convert(value, 0, &mut budget)?;
    Ok((json, max_bytes - budget.left))
}

struct Budget {
    left: usize,
}

impl Budget {
    fn spend(&mut self, bytes: usize) -> Result<(), ConvertError> {
        self.left = self.left.checked_sub(bytes).ok_or(ConvertError::TooLarge)?;
        Ok(())
    }
}

// Recursion is bounded by MAX_RESULT_DEPTH, so the stack it uses is too.
fn convert(value: &Value, depth: usize, budget: &mut Budget) -> Result<Json, ConvertError> {
    if depth > MAX_RESULT_DEPTH {
        return Err(ConvertError::TooDeep);
    }
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => {
            budget.spend(4)?;
            Ok(Json::Null)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            budget.spend(2)?;
            let iter = value
                .try_iter()
                .map_err(|e| ConvertError::NotJson(e.to_string()))?;
            let mut items = Vec::new();
            for item in iter {
                budget.spend(1)?;
                items.push(convert(&item, depth + 1, budget)?);
            }
            Ok(Json::Array(items))
        }
        ValueKind::Map => {
            budget.spend(2)?;
            let keys = value
                .try_iter()
                .map_err(|e| ConvertError::NotJson(e.to_string()))?;
            let mut map = serde_json::Map::new();
            for key in keys {
                let name = match key.as_str() {
                    Some(s) => s.to_owned(),
                    None if key.is_number() => key.to_string(),
                    None => {
                        return Err(ConvertError::NotJson(format!(
                            "a mapping key must be a string, not {}",
                            key.kind()
                        )));
                    }
                };
                budget.spend(name.len() + 4)?;
                let item = value
                    .get_item(&key)
                    .map_err(|e| ConvertError::NotJson(e.to_string()))?;
                let item = convert(&item, depth + 1, budget)?;
                map.insert(name, item);
            }
            Ok(Json::Object(map))
        }
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            budget.spend(s.len() + 2)?;
            Ok(Json::String(s.to_owned()))
        }
        ValueKind::Bytes => {
            let bytes = value.as_bytes().unwrap_or_default();
            budget.spend(bytes.len().saturating_mul(4) + 2)?;
            Ok(Json::Array(bytes.iter().map(|b| Json::from(*b)).collect()))
        }
        ValueKind::Invalid => Err(ConvertError::NotJson(value.to_string())),
        // Booleans, numbers and plain objects (their text): small, converted by serde.
        _ => {
            let json =
                serde_json::to_value(value).map_err(|e| ConvertError::NotJson(e.to_string()))?;
            let size = match &json {
                Json::String(s) => s.len() + 2,
                _ => 24,
            };
            budget.spend(size)?;
            Ok(json)
        }
    }
}
