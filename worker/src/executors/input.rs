//! Reading a step's input (a JSON mapping) field by field, with errors that name the field.
//!
//! A `null` field counts as absent, and a `null` input as an empty mapping, so a flow can pass
//! `{{ inputs.maybe }}` without special cases.

use std::time::Duration;

use serde_json::{Map, Value as Json};

use crate::StepError;

/// A step's input mapping.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    fields: Option<&'a Map<String, Json>>,
}

impl<'a> Input<'a> {
    /// The input as a mapping; `null` is an empty one, anything else is an `invalid_input` error.
    pub fn new(value: &'a Json) -> Result<Self, StepError> {
        match value {
            Json::Object(fields) => Ok(Self {
                fields: Some(fields),
            }),
            Json::Null => Ok(Self { fields: None }),
            other => Err(StepError::invalid_input(format!(
                "input must be a mapping of fields, not {}",
                type_name(other)
            ))),
        }
    }

    /// Fails on the first field not in `allowed` (catches typos such as `expected_status`).
    pub fn deny_unknown(&self, allowed: &[&str]) -> Result<(), StepError> {
        let Some(fields) = self.fields else {
            return Ok(());
        };
        match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => Err(StepError::invalid_input(format!(
                "unknown field `{unknown}` (expected one of: {})",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// A field's value; `None` when it is missing or `null`.
    pub fn get(&self, name: &str) -> Option<&'a Json> {
        self.fields?.get(name).filter(|v| !v.is_null())
    }

    /// A field that must be there.
    pub fn required(&self, name: &str) -> Result<&'a Json, StepError> {
        self.get(name)
            .ok_or_else(|| StepError::invalid_input(format!("`{name}` is required")))
    }

    /// An optional string field.
    pub fn str(&self, name: &str) -> Result<Option<&'a str>, StepError> {
        self.get(name)
            .map(|v| v.as_str().ok_or_else(|| wrong_type(name, "a string", v)))
            .transpose()
    }

    /// A string field that must be there and not be blank.
    pub fn required_str(&self, name: &str) -> Result<&'a str, StepError> {
        let value = self.required(name)?;
        let s = value
            .as_str()
            .ok_or_else(|| wrong_type(name, "a string", value))?;
        if s.trim().is_empty() {
            return Err(StepError::invalid_input(format!(
                "`{name}` must not be empty"
            )));
        }
        Ok(s)
    }

    /// An optional boolean field.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, StepError> {
        self.get(name)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| wrong_type(name, "true or false", v))
            })
            .transpose()
    }

    /// An optional mapping field.
    pub fn object(&self, name: &str) -> Result<Option<&'a Map<String, Json>>, StepError> {
        self.get(name)
            .map(|v| {
                v.as_object()
                    .ok_or_else(|| wrong_type(name, "a mapping", v))
            })
            .transpose()
    }

    /// An optional list field.
    pub fn array(&self, name: &str) -> Result<Option<&'a [Json]>, StepError> {
        self.get(name)
            .map(|v| {
                v.as_array()
                    .map(Vec::as_slice)
                    .ok_or_else(|| wrong_type(name, "a list", v))
            })
            .transpose()
    }

    /// An optional duration: a string such as `"500ms"` or `"2m 30s"`, or a number of milliseconds.
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, StepError> {
        self.get(name).map(|v| duration(name, v)).transpose()
    }
}

/// Reads a duration: a human string (`"1.5s"` is not accepted; `"1s 500ms"` is) or milliseconds.
pub fn duration(name: &str, value: &Json) -> Result<Duration, StepError> {
    match value {
        Json::String(s) => humantime::parse_duration(s.trim()).map_err(|e| {
            StepError::invalid_input(format!(
                "`{name}` is not a duration such as \"500ms\" or \"2s\": {e}"
            ))
        }),
        Json::Number(n) => n.as_u64().map(Duration::from_millis).ok_or_else(|| {
            StepError::invalid_input(format!(
                "`{name}` must be a whole, non-negative number of milliseconds"
            ))
        }),
        other => Err(wrong_type(name, "a duration such as \"500ms\"", other)),
    }
}

/// How a JSON value's type reads in a message: "a string", "a list".
pub fn type_name(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a mapping",
    }
}

/// "`name` must be {expected}, not {actual}".
pub fn wrong_type(name: &str, expected: &str, actual: &Json) -> StepError {
    StepError::invalid_input(format!(
        "`{name}` must be {expected}, not {}",
        type_name(actual)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_read_with_named_errors() {
        let value = json!({"url": "http://x", "n": 3, "empty": " ", "gone": null});
        let input = Input::new(&value).unwrap();
        assert_eq!(input.required_str("url").unwrap(), "http://x");
        assert_eq!(
            input.required_str("method").unwrap_err().message,
            "`method` is required"
        );
        assert_eq!(
            input.required_str("gone").unwrap_err().message,
            "`gone` is required"
        );
        assert_eq!(
            input.required_str("empty").unwrap_err().message,
            "`empty` must not be empty"
        );
        assert_eq!(
            input.str("n").unwrap_err().message,
            "`n` must be a string, not a number"
        );
        let err = input.deny_unknown(&["url", "n", "empty"]).unwrap_err();
        assert_eq!(err.code, "invalid_input");
        assert!(
            err.message.starts_with("unknown field `gone`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn null_input_is_empty_and_scalars_are_refused() {
        assert!(Input::new(&Json::Null).unwrap().get("x").is_none());
        let err = Input::new(&json!([1])).unwrap_err();
        assert_eq!(err.message, "input must be a mapping of fields, not a list");
    }

    #[test]
    fn durations_are_strings_or_milliseconds() {
        assert_eq!(duration("d", &json!("2s")).unwrap(), Duration::from_secs(2));
        assert_eq!(
            duration("d", &json!(250)).unwrap(),
            Duration::from_millis(250)
        );
        assert!(
            duration("d", &json!("soon"))
                .unwrap_err()
                .message
                .contains("`d`")
        );
        assert!(duration("d", &json!(-1)).is_err());
    }
}
