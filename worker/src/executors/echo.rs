//! `echo`: returns its input unchanged.
//!
//! A step that does nothing but compute a value from templates (`with: {total: "{{ ... }}"}`), and
//! the cheapest step there is, for benchmarks of the orchestrator and the bus.

use async_trait::async_trait;
use serde_json::Value as Json;

use crate::{Executor, StepError, TaskContext};

/// The `echo` executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoExecutor;

#[async_trait]
impl Executor for EchoExecutor {
    fn kind(&self) -> &'static str {
        "echo"
    }

    async fn execute(&self, _ctx: &TaskContext, input: Json) -> Result<Json, StepError> {
        Ok(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn returns_its_input() {
        let ctx = TaskContext::new("r", "s");
        let input = json!({"a": [1, 2, {"b": null}]});
        assert_eq!(
            EchoExecutor.execute(&ctx, input.clone()).await.unwrap(),
            input
        );
    }
}
