//! What every rpaflow service shares: the flow language, the expression engine, the step-bus
//! contract and the telemetry set-up.
//!
//! # Layout
//! - [`flow`]: flow definitions: the model, parsing with positioned diagnostics, Mermaid.
//! - [`expr`]: the expression language (MiniJinja) for templates, conditions and transforms.
//! - [`bus`]: the [`bus::StepBus`] / [`bus::TaskSource`] contract and the in-process bus.
//! - [`kafka`]: the step bus over Kafka (`rdkafka`); the default `kafka` feature.
//! - [`namespace`]: namespaces, and the full names flows and secrets are kept under.
//! - [`secrets`]: secret markers in step inputs, revealing and masking them.
//! - [`signature`]: the HMAC signature of webhooks, sent and checked.
//! - [`telemetry`]: logging and OTLP trace export; a run's trace.
//! - [`trace_context`]: the W3C `traceparent` a step carries.
//! - [`time`]: wall-clock helpers.

pub mod bus;
pub mod expr;
pub mod flow;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod namespace;
pub mod secrets;
pub mod signature;
pub mod telemetry;
pub mod trace_context;

pub mod time {
    //! Wall-clock helpers: rpaflow stores times as Unix milliseconds.

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// Now, in seconds since the Unix epoch.
    pub fn now_s() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Serde for durations written the human way in configuration (`"5m"`, `"500ms"`):
    /// `#[serde(with = "rpaflow_core::time::human")]`.
    pub mod human {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            value: &Duration,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serializer.serialize_str(&humantime::format_duration(*value).to_string())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Duration, D::Error> {
            let text = String::deserialize(deserializer)?;
            humantime::parse_duration(text.trim()).map_err(serde::de::Error::custom)
        }
    }
}
