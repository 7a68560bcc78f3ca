//! What every rpaflow service shares: the flow language, the expression engine, the step-bus
//! contract and the telemetry set-up.
//!
//! # Layout
//! - [`flow`]: flow definitions: the model, parsing with positioned diagnostics, Mermaid.
//! - [`expr`]: the expression language (MiniJinja) for templates, conditions and transforms.
//! - [`bus`]: the [`bus::StepBus`] / [`bus::TaskSource`] contract and the in-process bus.
//! - [`kafka`]: the step bus over Kafka (`rdkafka`).
//! - [`secrets`]: secret markers in step inputs, revealing and masking them.
//! - [`signature`]: the HMAC signature of webhooks, sent and checked.
//! - [`telemetry`]: logging set-up.
//! - [`time`]: wall-clock helpers.

pub mod bus;
pub mod expr;
pub mod flow;
pub mod kafka;
pub mod secrets;
pub mod signature;
pub mod telemetry;

pub mod time {
    //! Wall-clock helpers: rpaflow stores times as Unix milliseconds.

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}
