//! `log`: writes a message to the worker's log.
//!
//! Input: `message` (a string; any other JSON value is written as JSON text) and `level`, one of
//! `debug`, `info` (the default), `warn` or `error`. Output: `{message}`.
//!
//! The event goes to the target `rpaflow::flow` with the run id, step, attempt and flow as fields,
//! so an operator can filter a flow's own log lines from the worker's.

use async_trait::async_trait;
use serde_json::{Value as Json, json};

use super::Input;
use crate::{Executor, StepError, TaskContext};

/// The `log` executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogExecutor;

const LEVELS: &str = "debug, info, warn, error";

#[async_trait]
impl Executor for LogExecutor {
    fn kind(&self) -> &'static str {
        "log"
    }

    async fn execute(&self, ctx: &TaskContext, input: Json) -> Result<Json, StepError> {
        let input = Input::new(&input)?;
        input.deny_unknown(&["message", "level"])?;
        let message = match input.required("message")? {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        let level = input.str("level")?.unwrap_or("info");
        macro_rules! emit {
            ($level:ident) => {
                tracing::$level!(
                    target: "rpaflow::flow",
                    run_id = %ctx.run_id,
                    step = %ctx.step_id,
                    item = ?ctx.item,
                    attempt = ctx.attempt,
                    flow = %ctx.flow,
                    "{message}"
                )
            };
        }
        match level.to_ascii_lowercase().as_str() {
            "debug" => emit!(debug),
            "info" => emit!(info),
            "warn" | "warning" => emit!(warn),
            "error" => emit!(error),
            other => {
                return Err(StepError::invalid_input(format!(
                    "`level` must be one of {LEVELS} (got `{other}`)"
                )));
            }
        }
        Ok(json!({ "message": message }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn logs_and_returns_the_message() {
        let ctx = TaskContext::new("r", "s");
        let out = LogExecutor
            .execute(
                &ctx,
                json!({"message": "3 records imported", "level": "warn"}),
            )
            .await
            .unwrap();
        assert_eq!(out, json!({"message": "3 records imported"}));
        let out = LogExecutor
            .execute(&ctx, json!({"message": {"n": 3}}))
            .await
            .unwrap();
        assert_eq!(out, json!({"message": "{\"n\":3}"}));
    }

    #[tokio::test]
    async fn bad_level_names_the_choices() {
        let ctx = TaskContext::new("r", "s");
        let err = LogExecutor
            .execute(&ctx, json!({"message": "x", "level": "loud"}))
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "`level` must be one of debug, info, warn, error (got `loud`)"
        );
        let err = LogExecutor.execute(&ctx, json!({})).await.unwrap_err();
        assert_eq!(err.message, "`message` is required");
    }
}
