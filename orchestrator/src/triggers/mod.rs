//! Triggers: what starts runs besides a StartRun call, each through one port, [`RunStarter`]
//! (the orchestrator's handle in service: the same admission, idempotency and "durable, then
//! act" as StartRun; a fake in the triggers' unit tests).
//!
//! # Layout
//! - [`schedule`]: the scheduler, which fires the flows' `schedule` triggers (cron, timezones,
//!   missed-fire policies) on a clock it is given.
//! - [`webhook`]: `POST /hooks/{namespace}/{flow}`, authenticated deliveries of `webhook`
//!   triggers.
//! - [`kafka`]: one consumer per `kafka` trigger, one run per message.
//! - `run_starter`: [`RunStarter`] for [`crate::orchestrator::OrchestratorHandle`].
//! - `testing`: a fake [`RunStarter`] for the triggers' unit tests.
//! - this file: [`RunStarter`], and how a trigger's `input` template turns what arrived into the
//!   run's inputs.

pub mod kafka;
mod run_starter;
pub mod schedule;
#[cfg(test)]
mod testing;
pub mod webhook;

use std::future::Future;

use rpaflow_core::expr;
use serde_json::{Map, Value as Json, json};

use crate::error::Result;
use crate::orchestrator::{FlowView, StartRun};
use crate::state::RunState;

/// The port through which every trigger starts runs, and learns which flows have triggers.
pub trait RunStarter: Clone + Send + Sync + 'static {
    /// Starts a run, or finds the run its idempotency key already named (then `false`);
    /// resolves once the run is durable.
    fn start_run(&self, req: StartRun) -> impl Future<Output = Result<(RunState, bool)>> + Send;

    /// The latest version of every registered flow, of every namespace: their triggers are the
    /// ones to serve.
    fn latest_flows(&self) -> Result<Vec<FlowView>>;

    /// Changes whenever a flow version is registered: the triggers to serve may have changed.
    fn registrations(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Runs `work` (rendering a trigger's `input` template: untrusted, possibly slow) off the
    /// caller's thread.
    fn evaluate<T, F>(&self, work: F) -> impl Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static;
}

/// A trigger's run inputs: its `input` template rendered over `scope`, or `default` (the body, the
/// message) when it has none. Either must be a JSON object; `what` names the default in errors.
pub(crate) fn trigger_inputs(
    input: Option<&str>,
    scope: &[(&str, &Json)],
    default: &Json,
    what: &str,
) -> Result<Map<String, Json>, String> {
    let value = match input {
        Some(template) => {
            let ctx = expr::Context::new(&json!({})).with(scope);
            let value = expr::render(&Json::String(template.to_owned()), &ctx)
                .map_err(|e| format!("the trigger's `input` failed: {e}"))?;
            match value {
                Json::Object(map) => return Ok(map),
                other => {
                    return Err(format!(
                        "the trigger's `input` must give an object (the run's inputs), not {}",
                        kind(&other)
                    ));
                }
            }
        }
        None => default,
    };
    match value {
        Json::Object(map) => Ok(map.clone()),
        other => Err(format!(
            "{what} must be a JSON object (the run's inputs), not {}; or give the trigger an `input`",
            kind(other)
        )),
    }
}

fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_come_from_the_template_or_the_value_itself() {
        let body = json!({"customer": {"name": "Ada", "tier": 2}, "n": [1, 2]});
        let headers = json!({"x-source": "crm"});
        let scope = [("body", &body), ("headers", &headers)];
        let mapped = trigger_inputs(Some("{{ body.customer }}"), &scope, &body, "the body");
        assert_eq!(
            Json::Object(mapped.unwrap()),
            json!({"name": "Ada", "tier": 2})
        );
        let err = trigger_inputs(Some("{{ body.n }}"), &scope, &body, "the body").unwrap_err();
        assert!(err.contains("not an array"), "{err}");
        let err = trigger_inputs(Some("{{ body.n | nope }}"), &scope, &body, "the body");
        assert!(err.unwrap_err().contains("`input` failed"));
        assert_eq!(
            Json::Object(trigger_inputs(None, &scope, &body, "the body").unwrap()),
            body
        );
        let err = trigger_inputs(None, &[], &json!(42), "the message").unwrap_err();
        assert!(
            err.starts_with("the message must be a JSON object"),
            "{err}"
        );
    }
}
