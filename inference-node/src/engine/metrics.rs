//! The inference node's Prometheus metrics (`docs/operations.md`), in the manner of TGI's
//! `tgi_*`: queue and batch sizes, queue time, time to first token, time per output token,
//! forward-pass durations and tokens in and out. Observed on the engine thread as it works; the
//! two gauges are read from the engine when scraped.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Pass {
    prefill,
    decode,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    pub method: Pass,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RequestOutcome {
    finished,
    cancelled,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub outcome: RequestOutcome,
}

/// Seconds, 1 ms to about 30 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The engine's metrics.
#[derive(Debug)]
pub struct NodeMetrics {
    requests: Family<RequestLabels, Counter>,
    queue_duration: Histogram,
    time_to_first_token: Histogram,
    time_per_output_token: Histogram,
    forward_duration: Family<PassLabels, Histogram, fn() -> Histogram>,
    batch_size: Histogram,
    prompt_tokens: Counter,
    generated_tokens: Counter,
    pub(super) queue_size: Gauge,
    pub(super) batch_current_size: Gauge,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            queue_duration: seconds(),
            time_to_first_token: seconds(),
            time_per_output_token: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            forward_duration: Family::new_with_constructor(seconds),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            queue_size: Gauge::default(),
            batch_current_size: Gauge::default(),
        }
    }
}

impl NodeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rpaflow_inference_requests",
            "Generation requests that ended, by outcome",
            self.requests.clone(),
        );
        registry.register(
            "rpaflow_inference_queue_duration_seconds",
            "Seconds a request waited before it joined the batch",
            self.queue_duration.clone(),
        );
        registry.register(
            "rpaflow_inference_time_to_first_token_seconds",
            "Seconds from a request's arrival to its first generated token",
            self.time_to_first_token.clone(),
        );
        registry.register(
            "rpaflow_inference_time_per_output_token_seconds",
            "Mean seconds per generated token after the first, per finished request",
            self.time_per_output_token.clone(),
        );
        registry.register(
            "rpaflow_inference_forward_duration_seconds",
            "Seconds of one forward pass of the model, by method (prefill, decode)",
            self.forward_duration.clone(),
        );
        registry.register(
            "rpaflow_inference_batch_size",
            "Sequences in each decode step",
            self.batch_size.clone(),
        );
        registry.register(
            "rpaflow_inference_prompt_tokens",
            "Prompt tokens of the requests admitted to the batch",
            self.prompt_tokens.clone(),
        );
        registry.register(
            "rpaflow_inference_generated_tokens",
            "Tokens generated",
            self.generated_tokens.clone(),
        );
        registry.register(
            "rpaflow_inference_queue_size",
            "Requests waiting to join the batch",
            self.queue_size.clone(),
        );
        registry.register(
            "rpaflow_inference_batch_current_size",
            "Sequences in the running batch",
            self.batch_current_size.clone(),
        );
    }

    pub(super) fn admitted(&self, queued: Duration, prompt_tokens: usize) {
        self.queue_duration.observe(queued.as_secs_f64());
        self.prompt_tokens.inc_by(prompt_tokens as u64);
    }

    pub(super) fn forward(&self, method: Pass, took: Duration) {
        self.forward_duration
            .get_or_create(&PassLabels { method })
            .observe(took.as_secs_f64());
    }

    pub(super) fn decoded(&self, batch: usize) {
        self.batch_size.observe(batch as f64);
    }

    /// A token was generated; `first_after` is set for a request's first one.
    pub(super) fn token(&self, first_after: Option<Duration>) {
        self.generated_tokens.inc();
        if let Some(after) = first_after {
            self.time_to_first_token.observe(after.as_secs_f64());
        }
    }

    /// A request finished with `generated` tokens, `decoding` after its first one.
    pub(super) fn finished(&self, generated: u32, decoding: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                outcome: RequestOutcome::finished,
            })
            .inc();
        if generated > 1 {
            self.time_per_output_token
                .observe(decoding.as_secs_f64() / f64::from(generated - 1));
        }
    }

    pub(super) fn cancelled(&self, n: u64) {
        self.requests
            .get_or_create(&RequestLabels {
                outcome: RequestOutcome::cancelled,
            })
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_per_output_token_leaves_out_the_first_token() {
        let metrics = NodeMetrics::default();
        metrics.finished(5, Duration::from_millis(400));
        // One token only: no time between tokens to speak of.
        metrics.finished(1, Duration::ZERO);
        assert_eq!(metrics.time_per_output_token.count(), 1);
        assert!((metrics.time_per_output_token.sum() - 0.1).abs() < 1e-9);
        let finished = RequestLabels {
            outcome: RequestOutcome::finished,
        };
        assert_eq!(metrics.requests.get_or_create(&finished).get(), 2);
    }
}
