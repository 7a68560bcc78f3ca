//! Configuration of `rpaflow dev`, layered: defaults, then a TOML file (`--config`), then
//! `RPAFLOW_*` environment variables (`RPAFLOW_ORCHESTRATOR__DATA_DIR=/var/lib/rpaflow`), then
//! flags. `--print-config` shows the result.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use rpaflow_core::telemetry::TelemetryConfig;
use rpaflow_orchestrator::OrchestratorConfig;
use rpaflow_worker::WorkerConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevConfig {
    /// Where the gRPC API listens (port 0 picks a free port).
    pub listen: SocketAddr,
    pub orchestrator: OrchestratorConfig,
    pub worker: WorkerConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for DevConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            orchestrator: OrchestratorConfig::default(),
            worker: WorkerConfig::default(),
            telemetry: TelemetryConfig {
                log_level: "warn".into(),
                ..TelemetryConfig::default()
            },
        }
    }
}

impl DevConfig {
    /// Defaults, then the file, then the environment, then `overrides` (from flags).
    pub fn load(file: Option<&Path>, overrides: Figment) -> anyhow::Result<Self> {
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
            ["listen", "orchestrator", "worker", "telemetry"]
                .iter()
                .any(|s| s.eq_ignore_ascii_case(top))
        });
        figment = figment.merge(env);
        let config: Self = figment
            .merge(overrides)
            .extract()
            .context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.orchestrator.arbiters >= 1,
            "orchestrator.arbiters must be at least 1"
        );
        anyhow::ensure!(
            self.orchestrator.max_payload_bytes >= 1024,
            "orchestrator.max_payload_bytes must be at least 1024"
        );
        anyhow::ensure!(
            matches!(self.telemetry.log_format.as_str(), "text" | "json"),
            "telemetry.log_format must be `text` or `json`"
        );
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "rpaflow.toml",
                "listen = \"127.0.0.1:6000\"\n[orchestrator]\narbiters = 3\n",
            )?;
            jail.set_env("RPAFLOW_ORCHESTRATOR__ARBITERS", "4");
            jail.set_env("RPAFLOW_CACHE", "/somewhere");
            let overrides = Figment::from(Serialized::default("orchestrator.data_dir", "/tmp/x"));
            let cfg = DevConfig::load(Some(Path::new("rpaflow.toml")), overrides)
                .map_err(|e| e.to_string())?;
            assert_eq!(cfg.listen.port(), 6000);
            assert_eq!(cfg.orchestrator.arbiters, 4);
            assert_eq!(
                cfg.orchestrator.data_dir,
                std::path::PathBuf::from("/tmp/x")
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
}
