//! Secrets, by name.

use serde::{Deserialize, Serialize};

use super::{Store, decode, encode, storage};
use crate::error::Result;

/// A secret as the API shows it: no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at_ms: i64,
}

/// A secret as stored. Values are kept in clear in the data directory (its file permissions are
/// the protection); encryption at rest is not built.
#[derive(Serialize, Deserialize)]
struct StoredSecret {
    value: String,
    updated_at_ms: i64,
}

impl Store {
    /// Stores a secret's value, durably.
    pub async fn put_secret(&self, name: &str, value: &str) -> Result<SecretInfo> {
        let info = SecretInfo {
            name: name.to_owned(),
            updated_at_ms: rpaflow_core::time::now_ms(),
        };
        let record = StoredSecret {
            value: value.to_owned(),
            updated_at_ms: info.updated_at_ms,
        };
        self.inner
            .secrets
            .insert(name.as_bytes(), encode(&record)?)
            .map_err(storage("put secret"))?;
        self.commit().await?;
        Ok(info)
    }

    /// Deletes a secret, durably; false when there was none.
    pub async fn delete_secret(&self, name: &str) -> Result<bool> {
        let existed = self
            .inner
            .secrets
            .remove(name.as_bytes())
            .map_err(storage("delete secret"))?
            .is_some();
        self.commit().await?;
        Ok(existed)
    }

    /// A secret's value.
    pub fn secret(&self, name: &str) -> Result<Option<String>> {
        match self
            .inner
            .secrets
            .get(name.as_bytes())
            .map_err(storage("get secret"))?
        {
            Some(bytes) => decode::<StoredSecret>(&bytes, "secret").map(|s| Some(s.value)),
            None => Ok(None),
        }
    }

    /// Every secret's name and update time, by name (never the values).
    pub fn secrets(&self) -> Result<Vec<SecretInfo>> {
        self.inner
            .secrets
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(storage("scan secrets"))?;
                let stored: StoredSecret = decode(&value, "secret")?;
                Ok(SecretInfo {
                    name: String::from_utf8_lossy(&key).into_owned(),
                    updated_at_ms: stored.updated_at_ms,
                })
            })
            .collect()
    }
}
