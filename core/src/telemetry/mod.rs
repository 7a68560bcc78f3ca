//! Logging set-up shared by every rpaflow binary.
//!
//! Logs go to standard error, as text or JSON lines, filtered by `RUST_LOG` or the configured
//! level. OpenTelemetry export (OTLP traces and metrics) is not built yet.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// A `tracing` filter such as `info` or `rpaflow_orchestrator=debug,info`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: "text".into(),
        }
    }
}

/// Flushes what telemetry holds when dropped.
#[derive(Debug)]
pub struct TelemetryGuard(());

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured level.
pub fn init_telemetry(cfg: &TelemetryConfig) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = if cfg.log_format == "json" {
        builder.json().try_init()
    } else {
        builder.compact().try_init()
    };
    TelemetryGuard(())
}
