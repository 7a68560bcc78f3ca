//! Configuration of the rpaflow services, layered: defaults, then a TOML file (`--config`), then
//! `RPAFLOW_*` environment variables (`RPAFLOW_ORCHESTRATOR__DATA_DIR=/var/lib/rpaflow`,
//! `RPAFLOW_KAFKA__BROKERS=kafka:9092`), then flags. `--print-config` shows the result.
//!
//! - [`DevConfig`]: `rpaflow dev` and `rpaflow bench`, everything in one process.
//! - [`OrchestratorServiceConfig`]: `rpaflow orchestrator`.
//! - [`WorkerServiceConfig`]: `rpaflow worker`.
//! - [`InferenceServiceConfig`]: `rpaflow inference`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use rpaflow_core::kafka::KafkaConfig;
use rpaflow_core::secrets::SecretsConfig;
use rpaflow_core::telemetry::TelemetryConfig;
use rpaflow_orchestrator::OrchestratorConfig;
use rpaflow_orchestrator::auth::AuthConfig;
use rpaflow_orchestrator::tls::TlsConfig;
use rpaflow_orchestrator::triggers::webhook::HooksConfig;
use rpaflow_worker::WorkerConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::admin::AdminConfig;

/// `--config FILE` and `--print-config`, for every command that runs a service.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// A TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Print the effective configuration (as JSON) and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl ConfigArgs {
    /// The layered configuration, or `None` once `--print-config` printed it.
    pub fn load<T: Layered>(&self, flags: Figment) -> anyhow::Result<Option<T>> {
        let config = T::load(self.config.as_deref(), flags)?;
        if self.print_config {
            println!("{}", serde_json::to_string_pretty(&config)?);
            return Ok(None);
        }
        Ok(Some(config))
    }
}

/// Flags are the last layer: `Figment::new().flag("listen", args.listen)` sets a key only when the
/// flag was given.
pub trait Flag: Sized {
    fn flag<T: Serialize>(self, key: &str, value: Option<T>) -> Self;
}

impl Flag for Figment {
    fn flag<T: Serialize>(self, key: &str, value: Option<T>) -> Self {
        match value {
            Some(value) => self.merge(Serialized::default(key, value)),
            None => self,
        }
    }
}

const DEFAULT_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 50051);

/// A configuration that can be layered.
pub trait Layered: Default + Serialize + DeserializeOwned {
    /// Its top-level sections: only `RPAFLOW_<SECTION>...` variables are read.
    const SECTIONS: &'static [&'static str];

    fn validate(&self) -> anyhow::Result<()>;

    /// Defaults, then the file, then the environment, then `overrides` (from flags).
    fn load(file: Option<&Path>, overrides: Figment) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Self::default()));
        if let Some(file) = file {
            anyhow::ensure!(
                file.exists(),
                "config file {} does not exist",
                file.display()
            );
            figment = figment.merge(Toml::file(file));
        }
        // Only variables for this configuration's sections: others (RPAFLOW_SERVER for the
        // client commands, RPAFLOW_CACHE for scripts, ...) are not configuration errors.
        let env = Env::prefixed("RPAFLOW_").split("__").filter(|key| {
            // The key is `SECTION.FIELD` in the variable's case.
            let top = key.as_str().split('.').next().unwrap_or_default();
            Self::SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(top))
        });
        figment = figment.merge(env);
        let config: Self = figment
            .merge(overrides)
            .extract()
            .context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevConfig {
    /// Where the gRPC API listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where the webhook endpoint (`POST /hooks/{namespace}/{flow}`) listens; none: no webhooks.
    pub hooks_listen: Option<SocketAddr>,
    /// The webhook endpoint's settings (`[hooks]`).
    pub hooks: HooksConfig,
    pub orchestrator: OrchestratorConfig,
    pub worker: WorkerConfig,
    /// With `kafka.brokers` set, steps go through Kafka instead of in-process channels, and
    /// the embedded worker serves these queues (plus those of the flow given on the command line).
    pub queues: Vec<String>,
    pub kafka: KafkaConfig,
    pub telemetry: TelemetryConfig,
    /// The key that seals secrets (`[secrets]`, `docs/security.md`).
    pub secrets: SecretsConfig,
    /// TLS on the gRPC and webhook listeners (`[tls]`, `docs/security.md`); off by default.
    pub tls: TlsConfig,
    /// API tokens (`[auth]`): off by default for `rpaflow dev`.
    pub auth: AuthConfig,
    /// The admin listener (`[admin]`: `/metrics`, `/healthz`, `/readyz`); off by default.
    pub admin: AdminConfig,
}

impl Default for DevConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(DEFAULT_LISTEN),
            hooks_listen: None,
            hooks: HooksConfig::default(),
            orchestrator: OrchestratorConfig::default(),
            worker: WorkerConfig {
                // Zero-config: flows reach services on the developer's machine and network.
                // `rpaflow worker` keeps the production default (public addresses only), and so
                // does a namespace's own policy (`[worker.egress_namespaces.NAME]`) in both.
                egress: rpaflow_worker::egress::EgressConfig::permissive(),
                ..WorkerConfig::default()
            },
            queues: vec![rpaflow_core::flow::DEFAULT_QUEUE.to_owned()],
            kafka: KafkaConfig::default(),
            telemetry: TelemetryConfig {
                log_level: "warn".into(),
                ..TelemetryConfig::default()
            },
            secrets: SecretsConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig {
                enabled: false,
                ..AuthConfig::default()
            },
            admin: AdminConfig::default(),
        }
    }
}

impl Layered for DevConfig {
    const SECTIONS: &'static [&'static str] = &[
        "listen",
        "hooks_listen",
        "hooks",
        "orchestrator",
        "worker",
        "queues",
        "kafka",
        "telemetry",
        "secrets",
        "tls",
        "auth",
        "admin",
    ];

    fn validate(&self) -> anyhow::Result<()> {
        validate_orchestrator(&self.orchestrator)?;
        self.worker.validate()?;
        self.hooks.validate()?;
        self.tls.validate()?;
        self.auth.validate(&self.tls)?;
        validate_telemetry(&self.telemetry)?;
        self.admin.validate()?;
        if self.kafka.is_enabled() {
            self.kafka.validate()?;
        }
        Ok(())
    }
}

/// `rpaflow orchestrator`: the orchestrator and its gRPC API, on Kafka.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorServiceConfig {
    /// Where the gRPC API listens.
    pub listen: SocketAddr,
    /// Where the webhook endpoint (`POST /hooks/{namespace}/{flow}`) listens; none: no webhooks.
    pub hooks_listen: Option<SocketAddr>,
    /// The webhook endpoint's settings (`[hooks]`).
    pub hooks: HooksConfig,
    pub orchestrator: OrchestratorConfig,
    pub kafka: KafkaConfig,
    pub telemetry: TelemetryConfig,
    /// The key that seals secrets; workers need the same (`docs/security.md`).
    pub secrets: SecretsConfig,
    /// TLS on the gRPC and webhook listeners (`[tls]`, `docs/security.md`).
    pub tls: TlsConfig,
    /// API tokens (`[auth]`): on by default.
    pub auth: AuthConfig,
    /// The admin listener (`[admin]`: `/metrics`, `/healthz`, `/readyz`); off by default.
    pub admin: AdminConfig,
}

impl Default for OrchestratorServiceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(DEFAULT_LISTEN),
            hooks_listen: None,
            hooks: HooksConfig::default(),
            orchestrator: OrchestratorConfig::default(),
            kafka: KafkaConfig::default(),
            telemetry: TelemetryConfig::default(),
            secrets: SecretsConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

impl Layered for OrchestratorServiceConfig {
    const SECTIONS: &'static [&'static str] = &[
        "listen",
        "hooks_listen",
        "hooks",
        "orchestrator",
        "kafka",
        "telemetry",
        "secrets",
        "tls",
        "auth",
        "admin",
    ];

    fn validate(&self) -> anyhow::Result<()> {
        validate_orchestrator(&self.orchestrator)?;
        self.hooks.validate()?;
        self.tls.validate()?;
        self.auth.validate(&self.tls)?;
        validate_telemetry(&self.telemetry)?;
        self.admin.validate()?;
        self.kafka
            .validate()
            .context("the orchestrator service needs Kafka (--kafka BROKERS)")
    }
}

/// `rpaflow worker`: a member of the worker pools of some queues, on Kafka.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerServiceConfig {
    /// The queues whose pools this worker joins.
    pub queues: Vec<String>,
    pub worker: WorkerConfig,
    pub kafka: KafkaConfig,
    pub telemetry: TelemetryConfig,
    /// The orchestrator's secrets key, to open the secrets tasks carry (`docs/security.md`).
    pub secrets: SecretsConfig,
    /// The admin listener (`[admin]`: `/metrics`, `/healthz`, `/readyz`); off by default.
    pub admin: AdminConfig,
}

impl Default for WorkerServiceConfig {
    fn default() -> Self {
        Self {
            queues: vec![rpaflow_core::flow::DEFAULT_QUEUE.to_owned()],
            worker: WorkerConfig::default(),
            kafka: KafkaConfig::default(),
            telemetry: TelemetryConfig::default(),
            secrets: SecretsConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

impl Layered for WorkerServiceConfig {
    const SECTIONS: &'static [&'static str] =
        &["queues", "worker", "kafka", "telemetry", "secrets", "admin"];

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.queues.is_empty(), "queues: name at least one queue");
        for queue in &self.queues {
            anyhow::ensure!(
                !queue.is_empty()
                    && queue
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
                "queues: `{queue}` is not a queue name (letters, digits, `-`, `_`, `.`)"
            );
        }
        self.worker.validate()?;
        validate_telemetry(&self.telemetry)?;
        self.admin.validate()?;
        self.kafka
            .validate()
            .context("the worker service needs Kafka (--kafka BROKERS)")
    }
}

/// `rpaflow inference`: an inference node (`RPAFLOW_INFERENCE__MODEL=/models/gpt2`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceServiceConfig {
    pub inference: rpaflow_inference_node::InferenceConfig,
    pub telemetry: TelemetryConfig,
    /// The admin listener (`[admin]`: `/metrics`, `/healthz`, `/readyz`); off by default.
    pub admin: AdminConfig,
}

impl Layered for InferenceServiceConfig {
    const SECTIONS: &'static [&'static str] = &["inference", "telemetry", "admin"];

    fn validate(&self) -> anyhow::Result<()> {
        self.inference.validate()?;
        validate_telemetry(&self.telemetry)?;
        self.admin.validate()
    }
}

fn validate_orchestrator(orchestrator: &OrchestratorConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        orchestrator.max_payload_bytes >= 1024,
        "orchestrator.max_payload_bytes must be at least 1024"
    );
    for (name, value) in [
        ("max_flow_steps", orchestrator.max_flow_steps),
        ("max_flow_nesting", orchestrator.max_flow_nesting),
        (
            "max_input_memory_bytes",
            orchestrator.max_input_memory_bytes,
        ),
        ("max_for_each_items", orchestrator.max_for_each_items),
        ("max_held_input_bytes", orchestrator.max_held_input_bytes),
        (
            "max_run_output_memory_bytes",
            orchestrator.max_run_output_memory_bytes,
        ),
        (
            "max_for_each_concurrency",
            orchestrator.max_for_each_concurrency,
        ),
        ("max_active_runs", orchestrator.max_active_runs),
        ("expr_max_output_bytes", orchestrator.expr_max_output_bytes),
    ] {
        anyhow::ensure!(value >= 1, "orchestrator.{name} must be at least 1");
    }
    anyhow::ensure!(
        orchestrator.expr_fuel >= 100,
        "orchestrator.expr_fuel must be at least 100"
    );
    Ok(())
}

fn validate_telemetry(telemetry: &TelemetryConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(telemetry.log_format.as_str(), "text" | "json"),
        "telemetry.log_format must be `text` or `json`"
    );
    telemetry.validate().map_err(anyhow::Error::msg)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn api_tokens_are_on_for_the_orchestrator_service_and_off_for_dev() {
        assert!(OrchestratorServiceConfig::default().auth.enabled);
        assert!(!DevConfig::default().auth.enabled);
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "rpaflow.toml",
                "listen = \"127.0.0.1:6000\"\n[orchestrator]\narbiters = 3\n",
            )?;
            jail.set_env("RPAFLOW_ORCHESTRATOR__ARBITERS", "4");
            jail.set_env("RPAFLOW_HOOKS_LISTEN", "127.0.0.1:6001");
            jail.set_env("RPAFLOW_CACHE", "/somewhere");
            let overrides = Figment::from(Serialized::default("orchestrator.data_dir", "/tmp/x"));
            let cfg = DevConfig::load(Some(Path::new("rpaflow.toml")), overrides)
                .map_err(|e| e.to_string())?;
            assert_eq!(cfg.listen.port(), 6000);
            assert_eq!(cfg.orchestrator.arbiters, 4);
            assert_eq!(cfg.hooks_listen.map(|a| a.port()), Some(6001));
            assert_eq!(
                cfg.orchestrator.data_dir,
                std::path::PathBuf::from("/tmp/x")
            );
            Ok(())
        });
    }

    #[test]
    fn the_signature_tolerance_is_a_human_duration_within_bounds() {
        figment::Jail::expect_with(|jail| {
            let cfg = OrchestratorServiceConfig::load(
                None,
                Figment::from(Serialized::default("kafka.brokers", "k:9092")),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(
                cfg.hooks.signature_tolerance,
                std::time::Duration::from_secs(300)
            );
            jail.create_file("hooks.toml", "[hooks]\nsignature_tolerance = \"90s\"\n")?;
            let cfg = DevConfig::load(Some(Path::new("hooks.toml")), Figment::new())
                .map_err(|e| e.to_string())?;
            assert_eq!(
                cfg.hooks.signature_tolerance,
                std::time::Duration::from_secs(90)
            );
            jail.set_env("RPAFLOW_HOOKS__SIGNATURE_TOLERANCE", "2m 30s");
            let cfg = DevConfig::load(Some(Path::new("hooks.toml")), Figment::new())
                .map_err(|e| e.to_string())?;
            assert_eq!(
                cfg.hooks.signature_tolerance,
                std::time::Duration::from_secs(150)
            );
            for (value, expected) in [("2h", "between 1s and 1h"), ("soon", "signature_tolerance")]
            {
                jail.set_env("RPAFLOW_HOOKS__SIGNATURE_TOLERANCE", value);
                let err = DevConfig::load(None, Figment::new()).unwrap_err();
                assert!(
                    format!("{err:#}").to_lowercase().contains(expected),
                    "{value}: {err:#}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn the_admin_listener_is_off_by_default_and_set_by_file_or_environment() {
        figment::Jail::expect_with(|jail| {
            let kafka = || Figment::from(Serialized::default("kafka.brokers", "k:9092"));
            assert_eq!(
                DevConfig::load(None, Figment::new())
                    .map_err(|e| e.to_string())?
                    .admin
                    .listen,
                None
            );
            assert_eq!(
                OrchestratorServiceConfig::load(None, kafka())
                    .map_err(|e| e.to_string())?
                    .admin
                    .listen,
                None
            );
            jail.create_file("admin.toml", "[admin]\nlisten = \"127.0.0.1:9464\"\n")?;
            let worker = WorkerServiceConfig::load(Some(Path::new("admin.toml")), kafka())
                .map_err(|e| e.to_string())?;
            assert_eq!(worker.admin.listen.map(|a| a.port()), Some(9464));
            jail.set_env("RPAFLOW_ADMIN__LISTEN", "0.0.0.0:9465");
            let orchestrator =
                OrchestratorServiceConfig::load(Some(Path::new("admin.toml")), kafka())
                    .map_err(|e| e.to_string())?;
            assert_eq!(
                orchestrator.admin.listen,
                Some("0.0.0.0:9465".parse().expect("an address"))
            );
            Ok(())
        });
    }

    #[test]
    fn the_inference_node_is_configured_in_layers() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "node.toml",
                "[inference]\nmodel = \"/m/a\"\nmax_queue = 8\ndevice = \"cuda:0\"\n",
            )?;
            jail.set_env("RPAFLOW_INFERENCE__MAX_QUEUE", "9");
            jail.set_env("RPAFLOW_INFERENCE__LISTEN", "0.0.0.0:50061");
            // The model's old variable is a flag's (`--model`), not a section's.
            jail.set_env("RPAFLOW_INFERENCE_MODEL", "/m/old");
            let flags = rpaflow_inference_node::cli::InferenceArgs {
                max_batch_size: Some(4),
                ..Default::default()
            };
            let overrides = Figment::from(Serialized::default("inference", flags.overrides()));
            let cfg = InferenceServiceConfig::load(Some(Path::new("node.toml")), overrides)
                .map_err(|e| e.to_string())?;
            let node = &cfg.inference;
            assert_eq!(node.model.as_deref(), Some(Path::new("/m/a")));
            assert_eq!((node.max_queue, node.max_batch_size), (9, 4));
            assert_eq!(node.listen, "0.0.0.0:50061");
            assert_eq!(node.device.to_string(), "cuda:0");
            assert_eq!(node.max_total_tokens, 16384, "a default");
            let err = InferenceServiceConfig::load(None, Figment::new()).unwrap_err();
            assert!(format!("{err:#}").contains("inference.model"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn a_worker_takes_inference_endpoints_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("RPAFLOW_WORKER__INFERENCE_ENDPOINT", "a:1,b:2");
            jail.set_env("RPAFLOW_WORKER__INFERENCE_ENDPOINTS", "[\"c:3\", \"d:4\"]");
            jail.set_env("RPAFLOW_WORKER__INFERENCE_REFRESH", "10s");
            let kafka = Figment::from(Serialized::default("kafka.brokers", "k:9092"));
            let cfg = WorkerServiceConfig::load(None, kafka).map_err(|e| e.to_string())?;
            assert_eq!(
                cfg.worker.inference_endpoints(),
                ["a:1", "b:2", "c:3", "d:4"]
            );
            assert_eq!(
                cfg.worker.inference_refresh,
                std::time::Duration::from_secs(10)
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[orchestrator]\narbitres = 3\n")?;
            let err = DevConfig::load(Some(Path::new("bad.toml")), Figment::new()).unwrap_err();
            assert!(format!("{err:#}").contains("arbitres"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn kafka_settings_come_from_file_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "worker.toml",
                "queues = [\"web\"]\n[kafka]\nbrokers = \"k1:9092\"\n[kafka.client]\n\"security.protocol\" = \"SASL_SSL\"\n",
            )?;
            jail.set_env("RPAFLOW_KAFKA__BROKERS", "k2:9092");
            jail.set_env("RPAFLOW_KAFKA__PRODUCER__LINGER_MS", "10");
            let cfg = WorkerServiceConfig::load(Some(Path::new("worker.toml")), Figment::new())
                .map_err(|e| format!("{e:#}"))?;
            assert_eq!(cfg.queues, vec!["web".to_owned()]);
            assert_eq!(cfg.kafka.brokers, "k2:9092");
            assert_eq!(
                cfg.kafka
                    .client
                    .get("security.protocol")
                    .map(String::as_str),
                Some("SASL_SSL")
            );
            assert_eq!(
                cfg.kafka.producer.get("linger_ms").map(String::as_str),
                Some("10")
            );
            Ok(())
        });
    }

    #[test]
    fn services_without_kafka_say_so() {
        figment::Jail::expect_with(|_jail| {
            let err = OrchestratorServiceConfig::load(None, Figment::new()).unwrap_err();
            assert!(format!("{err:#}").contains("--kafka"), "{err:#}");
            let err = WorkerServiceConfig::load(
                None,
                Figment::from(Serialized::default("queues", vec!["bad queue"])),
            )
            .unwrap_err();
            assert!(format!("{err:#}").contains("bad queue"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn egress_is_open_in_dev_and_public_only_for_workers() {
        figment::Jail::expect_with(|jail| {
            let dev = DevConfig::load(None, Figment::new()).map_err(|e| e.to_string())?;
            assert!(dev.worker.egress.allow_private);
            let worker = WorkerServiceConfig::load(
                None,
                Figment::from(Serialized::default("kafka.brokers", "127.0.0.1:9092")),
            )
            .map_err(|e| e.to_string())?;
            assert!(!worker.worker.egress.allow_private);
            assert!(!worker.worker.egress.allow_unix_sockets);

            jail.set_env("RPAFLOW_WORKER__EGRESS__ALLOW_PRIVATE", "true");
            jail.set_env(
                "RPAFLOW_WORKER__EGRESS__ALLOW_CIDRS",
                "[10.1.0.0/16, \"fd00::/8\"]",
            );
            jail.set_env("RPAFLOW_WORKER__EGRESS__DENY_HOSTS", "[\"*.internal\"]");
            let worker = WorkerServiceConfig::load(
                None,
                Figment::from(Serialized::default("kafka.brokers", "127.0.0.1:9092")),
            )
            .map_err(|e| e.to_string())?;
            let egress = &worker.worker.egress;
            assert!(egress.allow_private);
            assert_eq!(egress.allow_cidrs.len(), 2);
            assert_eq!(egress.deny_hosts, ["*.internal"]);

            jail.set_env("RPAFLOW_WORKER__EGRESS__DENY_HOSTS", "[\"a.*.b\"]");
            let err = WorkerServiceConfig::load(
                None,
                Figment::from(Serialized::default("kafka.brokers", "127.0.0.1:9092")),
            )
            .unwrap_err();
            assert!(err.to_string().contains("egress.deny_hosts"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_namespace_egress_policy_is_complete_and_not_permissive_in_dev() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "rpaflow.toml",
                "[worker.egress_namespaces.team-a]\ndeny_hosts = [\"*.internal\"]\n",
            )?;
            let dev = DevConfig::load(Some(Path::new("rpaflow.toml")), Figment::new())
                .map_err(|e| e.to_string())?;
            assert!(dev.worker.egress.allow_private);
            let team_a = &dev.worker.egress_namespaces["team-a"];
            assert!(!team_a.allow_private && team_a.allow_public);
            assert_eq!(team_a.deny_hosts, ["*.internal"]);

            // A variable cannot spell `team-a`; the name it gives is refused, in dev too.
            jail.set_env(
                "RPAFLOW_WORKER__EGRESS_NAMESPACES__TEAM_A__ALLOW_PRIVATE",
                "true",
            );
            let err = DevConfig::load(None, Figment::new()).unwrap_err();
            assert!(
                err.to_string().contains("`egress_namespaces.team_a`"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn tls_settings_come_from_the_environment_and_half_a_key_pair_is_refused() {
        figment::Jail::expect_with(|jail| {
            let dev = DevConfig::load(None, Figment::new()).map_err(|e| e.to_string())?;
            assert!(!dev.tls.is_enabled());
            jail.set_env("RPAFLOW_TLS__CERT_FILE", "/etc/rpaflow/server.pem");
            let err = DevConfig::load(None, Figment::new()).unwrap_err();
            assert!(format!("{err:#}").contains("tls.key_file"), "{err:#}");
            jail.set_env("RPAFLOW_TLS__KEY_FILE", "/etc/rpaflow/server.key");
            jail.set_env("RPAFLOW_TLS__CLIENT_CA_FILE", "/etc/rpaflow/clients.pem");
            jail.set_env("RPAFLOW_TLS__RELOAD_INTERVAL", "30s");
            let cfg = OrchestratorServiceConfig::load(
                None,
                Figment::from(Serialized::default("kafka.brokers", "k:9092")),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(
                cfg.tls.key_file.as_deref(),
                Some(Path::new("/etc/rpaflow/server.key"))
            );
            assert_eq!(
                cfg.tls.client_ca_file.as_deref(),
                Some(Path::new("/etc/rpaflow/clients.pem"))
            );
            assert_eq!(cfg.tls.reload_interval, std::time::Duration::from_secs(30));
            Ok(())
        });
    }
}
