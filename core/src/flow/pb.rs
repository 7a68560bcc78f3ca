//! Conversions between the flow model and its proto form (`rpaflow.v1.FlowDefinition`).

use rpaflow_proto::v1 as pb;

use super::model::{Backoff, Flow};

impl From<&Flow> for pb::FlowDefinition {
    fn from(flow: &Flow) -> Self {
        Self {
            name: crate::namespace::local(&flow.name).to_owned(),
            description: flow.description.clone(),
            inputs: flow
                .inputs
                .iter()
                .map(|i| pb::FlowInput {
                    name: i.name.clone(),
                    r#type: i.ty.name().to_owned(),
                    required: i.default.is_none(),
                    default_json: i.default.as_ref().map(ToString::to_string),
                    description: i.description.clone(),
                })
                .collect(),
            steps: flow
                .steps
                .iter()
                .map(|s| pb::Step {
                    id: s.id.clone(),
                    name: s.name.clone().unwrap_or_default(),
                    uses: s.uses.clone(),
                    with_json: s.with.to_string(),
                    needs: s.needs.clone(),
                    r#if: s.condition.clone().unwrap_or_default(),
                    for_each: s
                        .for_each
                        .as_ref()
                        .map(|f| f.items.clone())
                        .unwrap_or_default(),
                    concurrency: s.for_each.as_ref().map_or(0, |f| f.concurrency),
                    queue: s.queue.clone(),
                    timeout_ms: millis(s.timeout),
                    retry: Some(pb::RetryPolicy {
                        max_attempts: s.retry.max_attempts,
                        backoff: match s.retry.backoff {
                            Backoff::Fixed => "fixed",
                            Backoff::Exponential => "exponential",
                        }
                        .to_owned(),
                        delay_ms: millis(s.retry.delay),
                        max_delay_ms: millis(s.retry.max_delay),
                        on: s.retry.on.clone(),
                    }),
                    until: s.until.clone().unwrap_or_default(),
                    on_failure: s.on_failure.to_string(),
                    compensation: s.compensation,
                })
                .collect(),
            outputs_json: serde_json::to_string(&flow.outputs).unwrap_or_default(),
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
