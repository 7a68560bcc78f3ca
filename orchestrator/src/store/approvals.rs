//! Pending approvals, by `run_id \0 step`.

use serde::{Deserialize, Serialize};

use super::{Store, decode, encode, storage};
use crate::error::Result;

/// An approval step waiting for a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    pub run_id: String,
    /// The flow's full name ([`rpaflow_core::namespace`]).
    pub flow: String,
    pub version: u32,
    pub step: String,
    pub message: String,
    pub requested_at_ms: i64,
    pub deadline_ms: Option<i64>,
    /// Who may answer (the step's `with.approvers`); both empty: anyone allowed to approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approver_roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approver_names: Vec<String>,
}

impl Store {
    /// Records a pending approval; durable with the next commit.
    pub fn put_approval(&self, approval: &PendingApproval) -> Result<()> {
        let key = [approval.run_id.as_bytes(), &[0], approval.step.as_bytes()].concat();
        self.inner
            .approvals
            .insert(key, encode(approval)?)
            .map_err(storage("put approval"))?;
        Ok(())
    }

    /// Forgets a pending approval; durable with the next commit.
    pub fn remove_approval(&self, run_id: &str, step: &str) -> Result<()> {
        let key = [run_id.as_bytes(), &[0], step.as_bytes()].concat();
        self.inner
            .approvals
            .remove(key)
            .map_err(storage("remove approval"))?;
        Ok(())
    }

    /// Pending approvals of a namespace, oldest run first, of one flow (its full name) or (with
    /// `""`) of all.
    pub fn approvals(&self, namespace: &str, flow: &str) -> Result<Vec<PendingApproval>> {
        let mut out = Vec::new();
        for entry in self.inner.approvals.iter() {
            let (_, value) = entry.map_err(storage("scan approvals"))?;
            let approval: PendingApproval = decode(&value, "approval")?;
            if rpaflow_core::namespace::contains(namespace, &approval.flow)
                && (flow.is_empty() || approval.flow == flow)
            {
                out.push(approval);
            }
        }
        Ok(out)
    }
}
