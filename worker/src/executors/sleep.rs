//! `sleep`: waits for a while.
//!
//! Input: `duration`, a string such as `"500ms"`, `"2s"` or `"1m 30s"`, or a number of
//! milliseconds. Output: `{slept_ms}`. A cancelled run ends the wait at once with `cancelled`;
//! a duration longer than the step's timeout ends with `timeout`, as for any step.

use async_trait::async_trait;
use serde_json::{Value as Json, json};

use super::Input;
use crate::{Executor, StepError, TaskContext};

/// The `sleep` executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct SleepExecutor;

#[async_trait]
impl Executor for SleepExecutor {
    fn kind(&self) -> &'static str {
        "sleep"
    }

    async fn execute(&self, ctx: &TaskContext, input: Json) -> Result<Json, StepError> {
        let input = Input::new(&input)?;
        input.deny_unknown(&["duration"])?;
        let duration = input
            .duration("duration")?
            .ok_or_else(|| StepError::invalid_input("`duration` is required"))?;
        tokio::select! {
            () = ctx.cancel.cancelled() => Err(StepError::cancelled()),
            () = tokio::time::sleep(duration) => {
                let slept_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
                Ok(json!({ "slept_ms": slept_ms }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleeps_for_the_duration() {
        let ctx = TaskContext::new("r", "s");
        let start = tokio::time::Instant::now();
        let out = SleepExecutor
            .execute(&ctx, json!({"duration": "2s"}))
            .await
            .unwrap();
        assert_eq!(out, json!({"slept_ms": 2000}));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let out = SleepExecutor
            .execute(&ctx, json!({"duration": 250}))
            .await
            .unwrap();
        assert_eq!(out, json!({"slept_ms": 250}));
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_the_wait() {
        let ctx = TaskContext::new("r", "s");
        let cancel = ctx.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        });
        let start = tokio::time::Instant::now();
        let err = SleepExecutor
            .execute(&ctx, json!({"duration": "1h"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, "cancelled");
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn bad_input_names_the_field() {
        let ctx = TaskContext::new("r", "s");
        let err = SleepExecutor.execute(&ctx, json!({})).await.unwrap_err();
        assert_eq!(err.message, "`duration` is required");
        let err = SleepExecutor
            .execute(&ctx, json!({"duration": "a while"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, "invalid_input");
        assert!(
            err.message.starts_with("`duration` is not a duration"),
            "{}",
            err.message
        );
    }
}
