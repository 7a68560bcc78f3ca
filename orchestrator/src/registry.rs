//! The flow registry: validates definitions, assigns versions, and keeps parsed flows at hand.
//!
//! A registered flow's `name` is its full name ([`rpaflow_core::namespace::qualify`]), so that
//! everything keyed by flow downstream (runs, schedules, idempotency keys, queues) is keyed by
//! namespace too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rpaflow_core::flow::{self, Flow, FlowLimits};
use rpaflow_core::namespace;

use crate::error::{Error, Result};
use crate::store::{FlowRecord, Store};

/// Parsed flows by (name, version).
type FlowCache = Arc<RwLock<HashMap<(String, u32), Arc<Flow>>>>;

/// Parsed flows by (name, version), backed by the store.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
    cache: FlowCache,
    /// Registrations of one name are serialised so versions are assigned once each.
    register_lock: Arc<tokio::sync::Mutex<()>>,
    /// What a flow may hold (`orchestrator.max_flow_*`).
    limits: FlowLimits,
}

/// A registered flow version.
#[derive(Debug, Clone)]
pub struct Registered {
    pub record: FlowRecord,
    pub flow: Arc<Flow>,
    /// False when the same definition was already the latest version.
    pub created: bool,
}

impl Registry {
    pub fn new(store: Store, limits: FlowLimits) -> Self {
        Self {
            store,
            cache: Arc::default(),
            register_lock: Arc::default(),
            limits,
        }
    }

    /// Parses and validates a flow within this orchestrator's limits.
    pub fn parse(&self, file_name: &str, source: &str) -> Result<Flow, flow::Diagnostics> {
        flow::parse_with(file_name, source, &self.limits)
    }

    /// Validates and stores `source` as the flow's next version (or the version it declares) in
    /// `namespace`.
    pub async fn register(
        &self,
        namespace: &str,
        file_name: &str,
        source: &str,
    ) -> Result<Registered> {
        let mut parsed = self.parse(file_name, source)?;
        parsed.name = namespace::qualify(namespace, &parsed.name);
        let _guard = self.register_lock.lock().await;
        let versions = self.store.flow_versions(&parsed.name)?;
        let latest = versions.last().copied();
        if let Some(latest) = latest {
            let record = self.record(&parsed.name, latest)?;
            if record.source == source && parsed.version.is_none_or(|v| v == latest) {
                let flow = self.get(&parsed.name, latest)?;
                return Ok(Registered {
                    record,
                    flow,
                    created: false,
                });
            }
        }
        let version = match (parsed.version, latest) {
            (Some(v), Some(latest)) if v <= latest => {
                return Err(Error::FailedPrecondition(format!(
                    "flow `{}` already has version {latest}; a new definition needs a higher `version` (or none, to take {})",
                    namespace::local(&parsed.name),
                    latest + 1
                )));
            }
            (Some(v), _) => v,
            (None, latest) => latest.unwrap_or(0) + 1,
        };
        let record = FlowRecord {
            name: parsed.name.clone(),
            version,
            source: source.to_owned(),
            file_name: file_name.to_owned(),
            created_at_ms: rpaflow_core::time::now_ms(),
        };
        self.store.put_flow(&record).await?;
        let flow = Arc::new(parsed);
        self.cache_put(&record.name, version, flow.clone());
        Ok(Registered {
            record,
            flow,
            created: true,
        })
    }

    fn record(&self, name: &str, version: u32) -> Result<FlowRecord> {
        self.store
            .flow(name, version)?
            .ok_or_else(|| Error::FlowVersionNotFound {
                name: name.to_owned(),
                version,
            })
    }

    fn cache_put(&self, name: &str, version: u32, flow: Arc<Flow>) {
        if let Ok(mut cache) = self.cache.write() {
            cache.insert((name.to_owned(), version), flow);
        }
    }

    /// The latest version number of a flow.
    pub fn latest_version(&self, name: &str) -> Result<u32> {
        self.store
            .flow_versions(name)?
            .last()
            .copied()
            .ok_or_else(|| Error::FlowNotFound(name.to_owned()))
    }

    /// A flow version (0 means the latest), parsed.
    pub fn get(&self, name: &str, version: u32) -> Result<Arc<Flow>> {
        let version = if version == 0 {
            self.latest_version(name)?
        } else {
            version
        };
        if let Some(flow) = self
            .cache
            .read()
            .ok()
            .and_then(|c| c.get(&(name.to_owned(), version)).cloned())
        {
            return Ok(flow);
        }
        let record = self.record(name, version)?;
        let mut flow = self.parse(&record.file_name, &record.source).map_err(|e| {
            Error::Internal(format!(
                "stored flow {name} v{version} no longer parses: {e}"
            ))
        })?;
        flow.name = record.name;
        let flow = Arc::new(flow);
        self.cache_put(name, version, flow.clone());
        Ok(flow)
    }

    /// The stored record of a flow version (0 means the latest).
    pub fn get_record(&self, name: &str, version: u32) -> Result<FlowRecord> {
        let version = if version == 0 {
            self.latest_version(name)?
        } else {
            version
        };
        self.record(name, version)
    }

    pub fn versions(&self, name: &str) -> Result<Vec<u32>> {
        self.store.flow_versions(name)
    }

    /// The latest version of every flow of every namespace.
    pub fn latest(&self) -> Result<Vec<FlowRecord>> {
        self.store.latest_flows()
    }

    /// The latest version of every flow of `namespace`.
    pub fn latest_in(&self, namespace: &str) -> Result<Vec<FlowRecord>> {
        let mut flows = self.store.latest_flows()?;
        flows.retain(|record| namespace::contains(namespace, &record.name));
        Ok(flows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_grow_and_identical_definitions_are_not_stored_twice() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(Store::open(dir.path()).unwrap(), FlowLimits::default());
        let v1 = reg
            .register(
                namespace::DEFAULT,
                "f.yaml",
                "name: f\nsteps: [{ id: a, uses: log }]\n",
            )
            .await
            .unwrap();
        assert_eq!((v1.record.version, v1.created), (1, true));
        let again = reg
            .register(
                namespace::DEFAULT,
                "f.yaml",
                "name: f\nsteps: [{ id: a, uses: log }]\n",
            )
            .await
            .unwrap();
        assert_eq!((again.record.version, again.created), (1, false));
        let v2 = reg
            .register(
                namespace::DEFAULT,
                "f.yaml",
                "name: f\nsteps: [{ id: b, uses: log }]\n",
            )
            .await
            .unwrap();
        assert_eq!(v2.record.version, 2);
        assert_eq!(reg.get("f", 1).unwrap().steps[0].id, "a");
        assert_eq!(reg.get("f", 0).unwrap().steps[0].id, "b");
        let stale = reg
            .register(
                namespace::DEFAULT,
                "f.yaml",
                "name: f\nversion: 2\nsteps: [{ id: c, uses: log }]\n",
            )
            .await
            .unwrap_err();
        assert!(
            stale.to_string().contains("already has version 2"),
            "{stale}"
        );
        assert!(matches!(reg.get("nope", 0), Err(Error::FlowNotFound(_))));
    }

    #[tokio::test]
    async fn a_flow_name_is_separate_in_each_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let reg = Registry::new(store.clone(), FlowLimits::default());
        let source = "name: f\nsteps: [{ id: a, uses: log }]\n";
        let plain = reg
            .register(namespace::DEFAULT, "f.yaml", source)
            .await
            .unwrap();
        let team = reg.register("team-a", "f.yaml", source).await.unwrap();
        assert_eq!((plain.record.version, plain.created), (1, true));
        // The same definition in another namespace is a new flow, not the same version again.
        assert_eq!((team.record.version, team.created), (1, true));
        assert_eq!(team.record.name, "team-a/f");
        assert_eq!(team.flow.name, "team-a/f");
        let other = reg
            .register(
                "team-a",
                "f.yaml",
                "name: f\nsteps: [{ id: b, uses: log }]\n",
            )
            .await
            .unwrap();
        assert_eq!(other.record.version, 2);
        assert_eq!(reg.latest_version("f").unwrap(), 1);
        let names = |ns| {
            reg.latest_in(ns)
                .unwrap()
                .into_iter()
                .map(|r| (r.name, r.version))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(namespace::DEFAULT), [("f".to_owned(), 1)]);
        assert_eq!(names("team-a"), [("team-a/f".to_owned(), 2)]);
        assert!(names("team-b").is_empty());
        // Parsed again from storage (a new registry), the flow keeps its full name.
        let again = Registry::new(store, FlowLimits::default());
        assert_eq!(again.get("team-a/f", 1).unwrap().name, "team-a/f");
    }
}
