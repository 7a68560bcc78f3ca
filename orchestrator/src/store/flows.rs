//! Flows: every version of every flow, by `full name \0 version`.

use serde::{Deserialize, Serialize};

use super::{Store, decode, encode, storage};
use crate::error::{Error, Result};

/// A stored flow version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRecord {
    /// The flow's full name ([`rpaflow_core::namespace`]).
    pub name: String,
    pub version: u32,
    pub source: String,
    pub file_name: String,
    pub created_at_ms: i64,
}

fn flow_key(name: &str, version: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 5);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

impl Store {
    pub async fn put_flow(&self, record: &FlowRecord) -> Result<()> {
        self.inner
            .flows
            .insert(flow_key(&record.name, record.version), encode(record)?)
            .map_err(storage("put flow"))?;
        self.commit().await
    }

    pub fn flow(&self, name: &str, version: u32) -> Result<Option<FlowRecord>> {
        match self
            .inner
            .flows
            .get(flow_key(name, version))
            .map_err(storage("get flow"))?
        {
            Some(bytes) => decode(&bytes, "flow").map(Some),
            None => Ok(None),
        }
    }

    /// Every version of a flow, oldest first.
    pub fn flow_versions(&self, name: &str) -> Result<Vec<u32>> {
        let prefix = [name.as_bytes(), &[0]].concat();
        self.inner
            .flows
            .scan_prefix(prefix)
            .keys()
            .map(|k| {
                let k = k.map_err(storage("scan flows"))?;
                let tail: [u8; 4] = k[k.len() - 4..]
                    .try_into()
                    .map_err(|_| Error::Internal("corrupt flow key".into()))?;
                Ok(u32::from_be_bytes(tail))
            })
            .collect()
    }

    /// The latest version of every flow, by name.
    pub fn latest_flows(&self) -> Result<Vec<FlowRecord>> {
        let mut out: Vec<FlowRecord> = Vec::new();
        for entry in self.inner.flows.iter() {
            let (_, value) = entry.map_err(storage("scan flows"))?;
            let record: FlowRecord = decode(&value, "flow")?;
            match out.last_mut() {
                Some(last) if last.name == record.name => *last = record,
                _ => out.push(record),
            }
        }
        Ok(out)
    }
}
