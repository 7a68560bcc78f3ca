//! Logging and trace export shared by every rpaflow binary.
//!
//! Logs go to standard error, as text or JSON lines, filtered by `RUST_LOG` or the configured
//! level. Traces go over OTLP/gRPC to a collector when an endpoint is configured
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `[telemetry] otlp_endpoint`), and nowhere otherwise.
//!
//! # Layout
//! - this file: [`TelemetryConfig`], how the standard `OTEL_*` variables and the file combine
//!   ([`TraceSettings`]), [`init_telemetry`] and its [`TelemetryGuard`].
//! - [`export`]: the span queue and its exporter task on a tokio runtime of its own.
//! - [`messaging`]: Kafka's `send` and `process` spans.
//! - [`run_trace`]: a run's trace (its id comes from the run id), the spans the orchestrator
//!   records in it, and W3C `traceparent` parsing.

mod export;
pub mod messaging;
pub mod run_trace;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The instrumentation scope of every rpaflow span.
pub const TRACER_NAME: &str = "rpaflow";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// A `tracing` filter such as `info` or `rpaflow_orchestrator=debug,info`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Where OTLP/gRPC traces go (`http://collector:4317`); none: no traces.
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` wins over it.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the spans; none: the binary's own (`rpaflow-worker`, ...).
    /// `OTEL_SERVICE_NAME` wins over it.
    pub service_name: Option<String>,
    /// The share of runs traced, 0.0 to 1.0 (decided by trace id, so by run: a run is traced
    /// by every service or by none). `OTEL_TRACES_SAMPLER` wins over it.
    pub sample_ratio: f64,
    /// Spans waiting for export at most; more are dropped (and counted).
    pub max_queue_spans: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: "text".into(),
            otlp_endpoint: None,
            service_name: None,
            sample_ratio: 1.0,
            max_queue_spans: 8192,
        }
    }
}

impl TelemetryConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "telemetry.sample_ratio must be between 0 and 1, not {}",
                self.sample_ratio
            ));
        }
        if self.max_queue_spans == 0 {
            return Err("telemetry.max_queue_spans must be at least 1".into());
        }
        Ok(())
    }
}

/// Where traces go and which, once the environment and the file are combined.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub endpoint: String,
    pub service_name: String,
    pub sampler: SamplerChoice,
    pub max_queue_spans: usize,
}

/// The samplers of `OTEL_TRACES_SAMPLER` that rpaflow honours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    /// By trace id: since a run's trace id is derived from the run id, every service makes the
    /// same decision for a run.
    Ratio(f64),
    /// A span with a parent follows the parent's decision; a root one is decided by ratio.
    ParentBasedRatio(f64),
}

impl SamplerChoice {
    fn sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

impl TraceSettings {
    /// The settings from `env` (a lookup of environment variables) over `cfg`; none when no
    /// endpoint is set in either. The standard variables win over the file, as `RPAFLOW_*` ones
    /// do: they are what a deployment sets for every service at once.
    pub fn resolve(
        cfg: &TelemetryConfig,
        default_service: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let Some(endpoint) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .or_else(|| cfg.otlp_endpoint.clone().filter(|e| !e.trim().is_empty()))
        else {
            return Ok(None);
        };
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let service_name = env("OTEL_SERVICE_NAME")
            .or_else(|| cfg.service_name.clone())
            .unwrap_or_else(|| default_service.to_owned());
        let sampler = match env("OTEL_TRACES_SAMPLER") {
            None => SamplerChoice::Ratio(cfg.sample_ratio),
            Some(name) => {
                let ratio = || -> Result<f64, String> {
                    match env("OTEL_TRACES_SAMPLER_ARG") {
                        None => Ok(1.0),
                        Some(arg) => arg
                            .trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|r| (0.0..=1.0).contains(r))
                            .ok_or_else(|| {
                                format!("OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, not `{arg}`")
                            }),
                    }
                };
                match name.trim() {
                    "always_on" | "parentbased_always_on" => SamplerChoice::AlwaysOn,
                    "always_off" | "parentbased_always_off" => SamplerChoice::AlwaysOff,
                    "traceidratio" => SamplerChoice::Ratio(ratio()?),
                    "parentbased_traceidratio" => SamplerChoice::ParentBasedRatio(ratio()?),
                    other => {
                        return Err(format!(
                            "OTEL_TRACES_SAMPLER `{other}` is not supported (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
                        ));
                    }
                }
            }
        };
        Ok(Some(Self {
            endpoint,
            service_name,
            sampler,
            max_queue_spans: cfg.max_queue_spans.max(1),
        }))
    }
}

/// Flushes and shuts trace export down when dropped (a bounded wait: a collector that does
/// not answer costs a stopping service at most a few seconds).
#[derive(Debug)]
pub struct TelemetryGuard {
    traces: Option<Traces>,
}

#[derive(Debug)]
struct Traces {
    provider: SdkTracerProvider,
    stats: std::sync::Arc<export::ExportStats>,
}

impl TelemetryGuard {
    /// Spans dropped so far: a full queue, or a collector that refused or did not answer.
    pub fn dropped_spans(&self) -> u64 {
        self.traces.as_ref().map_or(0, |t| t.stats.dropped())
    }

    /// A handle on the export's counts, for metrics (zeros while traces are off).
    pub fn span_stats(&self) -> SpanStats {
        SpanStats(self.traces.as_ref().map(|t| t.stats.clone()))
    }
}

/// How many spans trace export has sent and dropped; cheap to clone. The default counts
/// nothing (traces off).
#[derive(Debug, Clone, Default)]
pub struct SpanStats(Option<std::sync::Arc<export::ExportStats>>);

impl SpanStats {
    pub fn exported(&self) -> u64 {
        self.0.as_ref().map_or(0, |s| s.exported())
    }

    pub fn dropped(&self) -> u64 {
        self.0.as_ref().map_or(0, |s| s.dropped())
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let Some(traces) = self.traces.take() else {
            return;
        };
        if let Err(err) = traces.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %err, "trace export did not shut down cleanly");
        }
        let (exported, dropped) = (traces.stats.exported(), traces.stats.dropped());
        if dropped > 0 {
            tracing::warn!(
                exported,
                dropped,
                "spans were dropped: the collector was unreachable or too slow"
            );
        } else {
            tracing::info!(exported, "trace export stopped");
        }
    }
}

/// How long stopping waits for the last spans to leave.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the global subscriber, and trace export when an endpoint is configured.
/// `RUST_LOG`, when set, wins over the configured level. `default_service` names the spans'
/// service unless `OTEL_SERVICE_NAME` or `telemetry.service_name` does.
pub fn init_telemetry(cfg: &TelemetryConfig, default_service: &str) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if cfg.log_format == "json" {
        fmt.json().boxed()
    } else {
        fmt.compact().boxed()
    };
    let settings = TraceSettings::resolve(cfg, default_service, |name| std::env::var(name).ok());
    let (traces, otel_layer) = match settings {
        Ok(Some(settings)) => match start_traces(&settings) {
            Ok(traces) => {
                let tracer = traces.provider.tracer(TRACER_NAME);
                // Only rpaflow's own spans become trace spans, whatever the log level.
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_tracked_inactivity(false)
                    .with_threads(false)
                    .with_filter(Targets::new().with_target("rpaflow", LevelFilter::INFO));
                (Some((traces, settings)), Some(layer))
            }
            Err(err) => {
                eprintln!("warning: traces are off: {err}");
                (None, None)
            }
        },
        Ok(None) => (None, None),
        Err(err) => {
            eprintln!("warning: traces are off: {err}");
            (None, None)
        }
    };
    // A second initialisation (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel_layer)
        .try_init();
    let traces = traces.map(|(traces, settings)| {
        tracing::info!(
            endpoint = %settings.endpoint,
            service = %settings.service_name,
            sampler = ?settings.sampler,
            "exporting traces over otlp"
        );
        opentelemetry::global::set_tracer_provider(traces.provider.clone());
        run_trace::set_enabled();
        traces
    });
    TelemetryGuard { traces }
}

fn start_traces(settings: &TraceSettings) -> Result<Traces, String> {
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .build();
    let (processor, stats) = export::QueueProcessor::start(settings, &resource)?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(settings.sampler.sampler())
        .with_id_generator(run_trace::RunIdGenerator::default())
        .with_resource(resource)
        .build();
    Ok(Traces { provider, stats })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(
        cfg: &TelemetryConfig,
        env: &[(&str, &str)],
    ) -> Result<Option<TraceSettings>, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TraceSettings::resolve(cfg, "rpaflow-worker", |name| env.get(name).cloned())
    }

    #[test]
    fn traces_are_off_without_an_endpoint() {
        assert_eq!(resolve(&TelemetryConfig::default(), &[]), Ok(None));
        assert_eq!(
            resolve(
                &TelemetryConfig::default(),
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", " "),
                    ("OTEL_SERVICE_NAME", "x")
                ]
            ),
            Ok(None)
        );
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let cfg = TelemetryConfig {
            otlp_endpoint: Some("http://file:4317".into()),
            service_name: Some("from-file".into()),
            sample_ratio: 0.5,
            ..TelemetryConfig::default()
        };
        let from_file = resolve(&cfg, &[]).unwrap().unwrap();
        assert_eq!(from_file.endpoint, "http://file:4317");
        assert_eq!(from_file.service_name, "from-file");
        assert_eq!(from_file.sampler, SamplerChoice::Ratio(0.5));

        let from_env = resolve(
            &cfg,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
                ("OTEL_SERVICE_NAME", "from-env"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(from_env.endpoint, "http://env:4317");
        assert_eq!(from_env.service_name, "from-env");
        assert_eq!(from_env.sampler, SamplerChoice::AlwaysOff);

        let traces_endpoint = resolve(
            &cfg,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(traces_endpoint.endpoint, "http://traces:4317");
    }

    #[test]
    fn the_binary_names_the_service_by_default() {
        let s = resolve(
            &TelemetryConfig::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.service_name, "rpaflow-worker");
        assert_eq!(s.sampler, SamplerChoice::Ratio(1.0));
    }

    #[test]
    fn samplers_are_parsed_and_bad_ones_refused() {
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")];
        let with = |sampler: &str, arg: Option<&str>| {
            let mut env = on.to_vec();
            env.push(("OTEL_TRACES_SAMPLER", sampler));
            if let Some(arg) = arg {
                env.push(("OTEL_TRACES_SAMPLER_ARG", arg));
            }
            resolve(&TelemetryConfig::default(), &env).map(|s| s.map(|s| s.sampler))
        };
        assert_eq!(
            with("traceidratio", Some("0.25")),
            Ok(Some(SamplerChoice::Ratio(0.25)))
        );
        assert_eq!(
            with("parentbased_traceidratio", None),
            Ok(Some(SamplerChoice::ParentBasedRatio(1.0)))
        );
        assert_eq!(
            with("parentbased_always_on", None),
            Ok(Some(SamplerChoice::AlwaysOn))
        );
        assert!(with("traceidratio", Some("2")).is_err());
        assert!(with("traceidratio", Some("half")).is_err());
        assert!(with("jaeger_remote", None).is_err());
    }

    #[test]
    fn a_ratio_outside_zero_to_one_is_refused() {
        let cfg = TelemetryConfig {
            sample_ratio: 1.5,
            ..TelemetryConfig::default()
        };
        assert!(cfg.validate().is_err());
        assert!(TelemetryConfig::default().validate().is_ok());
    }
}
