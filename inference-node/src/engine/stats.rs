//! Running statistics of the engine: what `ModelInfo` reports and the benchmark reads.

use std::time::Duration;

use rpaflow_proto::v1 as pb;

/// Totals since the engine started. Means are derived when reported.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub requests_finished: u64,
    pub requests_cancelled: u64,
    pub generated_tokens: u64,
    pub decode_steps: u64,
    /// Sequences per decode step, added up over the steps.
    pub batch_rows: u64,
    pub prefill_steps: u64,
    /// Time spent in forward passes and sampling.
    pub busy: Duration,
    pub queue_time: Duration,
    pub time_to_first_token: Duration,
    /// Requests that got a first token.
    pub first_tokens: u64,
    pub admitted: u64,
    pub running: u32,
    pub queued: u32,
}

impl EngineStats {
    pub fn mean_batch_size(&self) -> f64 {
        ratio(self.batch_rows as f64, self.decode_steps as f64)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

impl From<&EngineStats> for pb::EngineStats {
    fn from(s: &EngineStats) -> Self {
        pb::EngineStats {
            requests_finished: s.requests_finished,
            requests_cancelled: s.requests_cancelled,
            generated_tokens: s.generated_tokens,
            decode_steps: s.decode_steps,
            mean_batch_size: s.mean_batch_size(),
            tokens_per_second: ratio(s.generated_tokens as f64, s.busy.as_secs_f64()),
            mean_queue_ms: ratio(s.queue_time.as_secs_f64() * 1e3, s.admitted as f64),
            mean_time_to_first_token_ms: ratio(
                s.time_to_first_token.as_secs_f64() * 1e3,
                s.first_tokens as f64,
            ),
            running: s.running,
            queued: s.queued,
            batch_rows: s.batch_rows,
        }
    }
}
