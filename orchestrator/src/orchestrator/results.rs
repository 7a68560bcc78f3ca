//! Results from workers, routed to their runs' actors on the bus's own task (a worker's, or the
//! Kafka consumer's), as they arrive: [`ResultRouter`] is the orchestrator's
//! [`ResultSink`].

use std::sync::Weak;

use actix::dev::SendError;
use rpaflow_core::bus::{ResultDelivery, ResultSink};
use rpaflow_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Engine;
use crate::actors::Deliver;
use crate::state::{ErrorInfo, Input};

pub(super) struct ResultRouter {
    /// Weak: the bus that holds the router belongs to the engine.
    engine: Weak<Engine>,
    /// Once the orchestrator stops, results are left unacknowledged: the bus delivers them
    /// again to the next instance (for the in-process bus, the run's recovery dispatches the
    /// attempt again).
    stopped: CancellationToken,
}

impl ResultRouter {
    pub(super) fn new(engine: Weak<Engine>, stopped: CancellationToken) -> Self {
        Self { engine, stopped }
    }
}

impl ResultSink for ResultRouter {
    fn deliver(&self, delivery: ResultDelivery) {
        if self.stopped.is_cancelled() {
            return;
        }
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let ResultDelivery { result, ack } = delivery;
        if let Some((queue, dispatched_at_ms)) =
            engine
                .backlog
                .answered(&result.run_id, &result.step_id, result.item, result.attempt)
        {
            engine
                .metrics
                .task_started(&queue, dispatched_at_ms, result.started_at_ms);
        }
        let Some(addr) = engine.actor(&result.run_id) else {
            // A finished or unknown run: nothing to record.
            ack.ack();
            return;
        };
        if !engine.result_namespace_matches(&result) {
            // A result must come back for the namespace its task went out for; one that does
            // not is dropped (the attempt times out and is retried as if lost).
            warn!(
                run_id = %result.run_id, step = %result.step_id, namespace = %result.namespace,
                worker = %result.worker_id, "result names another namespace than its run's; dropped"
            );
            ack.ack();
            return;
        }
        let input = Input::Result {
            step: result.step_id,
            item: result.item,
            attempt: result.attempt,
            outcome: outcome(result.outcome),
        };
        let delivery = Deliver {
            input,
            ack: Some(ack),
        };
        match addr.try_send(delivery) {
            Ok(()) => {}
            Err(SendError::Full(delivery)) => addr.do_send(delivery),
            // The actor left meanwhile (its run ended, or rests with nothing out): the result
            // is late; acknowledged, so the bus does not hold it forever.
            Err(SendError::Closed(delivery)) => {
                if let Some(ack) = delivery.ack {
                    ack.ack();
                }
            }
        }
    }
}

/// What the worker says its attempt came to.
fn outcome(outcome: Option<pb::task_result::Outcome>) -> Result<serde_json::Value, ErrorInfo> {
    match outcome {
        Some(pb::task_result::Outcome::OutputJson(text)) => {
            serde_json::from_str(&text).map_err(|e| {
                ErrorInfo::new(
                    "invalid_output",
                    format!("worker sent output that is not JSON: {e}"),
                    false,
                )
            })
        }
        Some(pb::task_result::Outcome::Error(e)) => Err(ErrorInfo {
            code: e.code,
            message: e.message,
            retryable: e.retryable,
        }),
        None => Err(ErrorInfo::new(
            "invalid_output",
            "worker sent a result with neither output nor error",
            false,
        )),
    }
}
