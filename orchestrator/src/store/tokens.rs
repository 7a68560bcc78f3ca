//! Namespaces, API tokens (their hashes) and the audit log.

use serde::{Deserialize, Serialize};

use super::{Store, decode, encode, storage};
use crate::error::Result;

/// A token as stored: the SHA-256 of its secret part, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub role: String,
    /// Hex SHA-256 of the token's secret part.
    pub hash: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub created_by: String,
}

/// One change made through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at_ms: i64,
    pub actor: String,
    pub actor_token_id: String,
    pub method: String,
    pub outcome: String,
    /// The namespace the call acted in.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

fn default_namespace() -> String {
    rpaflow_core::namespace::DEFAULT.to_owned()
}

/// A namespace other than `default` (which always exists and is not stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    pub created_at_ms: i64,
    pub created_by: String,
}

impl Store {
    /// Creates a namespace, durably; `false` when it existed already (nothing changes then).
    pub async fn create_namespace(&self, record: &NamespaceRecord) -> Result<bool> {
        let created = self
            .inner
            .namespaces
            .compare_and_swap(
                record.name.as_bytes(),
                None as Option<&[u8]>,
                Some(encode(record)?),
            )
            .map_err(storage("create namespace"))?
            .is_ok();
        self.commit().await?;
        Ok(created)
    }

    /// Whether a namespace exists (`default` always does).
    pub fn namespace_exists(&self, name: &str) -> Result<bool> {
        if name == rpaflow_core::namespace::DEFAULT {
            return Ok(true);
        }
        self.inner
            .namespaces
            .contains_key(name.as_bytes())
            .map_err(storage("get namespace"))
    }

    /// Every namespace but `default`, by name.
    pub fn namespaces(&self) -> Result<Vec<NamespaceRecord>> {
        self.inner
            .namespaces
            .iter()
            .map(|entry| {
                let (_, bytes) = entry.map_err(storage("scan namespaces"))?;
                decode(&bytes, "namespace")
            })
            .collect()
    }

    /// Stores a token, durably.
    pub async fn put_token(&self, token: &TokenRecord) -> Result<()> {
        self.inner
            .tokens
            .insert(token.id.as_bytes(), encode(token)?)
            .map_err(storage("put token"))?;
        self.commit().await
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        match self
            .inner
            .tokens
            .get(id.as_bytes())
            .map_err(storage("get token"))?
        {
            Some(bytes) => decode(&bytes, "token").map(Some),
            None => Ok(None),
        }
    }

    /// Every token, by id.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.inner
            .tokens
            .iter()
            .map(|entry| {
                let (_, bytes) = entry.map_err(storage("scan tokens"))?;
                decode(&bytes, "token")
            })
            .collect()
    }

    /// Appends to the audit log (made durable with the next commit; an entry is written after
    /// the change it records).
    pub fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        // Time-ordered and unique (UUIDv7: milliseconds, then random bits).
        let key = uuid::Uuid::now_v7().into_bytes();
        self.inner
            .audit
            .insert(key, encode(record)?)
            .map_err(storage("append audit"))?;
        Ok(())
    }

    /// The newest `limit` audit entries that `wanted` keeps, newest first.
    pub fn audit(
        &self,
        limit: usize,
        wanted: impl Fn(&AuditRecord) -> bool,
    ) -> Result<Vec<AuditRecord>> {
        let mut out = Vec::new();
        for entry in self.inner.audit.iter().rev() {
            let (_, bytes) = entry.map_err(storage("scan audit"))?;
            let record: AuditRecord = decode(&bytes, "audit entry")?;
            if wanted(&record) {
                out.push(record);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
