//! Secrets, by name, sealed under the secrets key (`rpaflow_core::secrets::SecretsKey`): the
//! data directory never holds a value in clear.

use rpaflow_core::secrets::SecretsKey;
use serde::{Deserialize, Serialize};

use super::{Store, decode, encode, storage};
use crate::error::{Error, Result};

/// A secret as the API shows it: no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at_ms: i64,
}

/// A secret as stored: `value` is sealed (stores written before sealing held it in clear;
/// [`Store::reseal_secrets`] seals those).
#[derive(Serialize, Deserialize)]
struct StoredSecret {
    value: String,
    updated_at_ms: i64,
}

/// Where the key that tags secret markers is kept, in the `meta` tree.
const MARKER_KEY: &[u8] = b"secret-marker-key";

impl Store {
    /// Sets the key that seals and opens secret values; the first call wins.
    pub fn use_secrets_key(&self, key: SecretsKey) {
        let _ = self.inner.secrets_key.set(key);
    }

    /// The key set by [`Store::use_secrets_key`].
    pub fn secrets_key_cloned(&self) -> Option<SecretsKey> {
        self.inner.secrets_key.get().cloned()
    }

    fn secrets_key(&self) -> Result<&SecretsKey> {
        self.inner
            .secrets_key
            .get()
            .ok_or_else(|| Error::Internal("the store has no secrets key".into()))
    }

    /// Stores a secret's value, sealed, durably.
    pub async fn put_secret(&self, name: &str, value: &str) -> Result<SecretInfo> {
        let info = SecretInfo {
            name: name.to_owned(),
            updated_at_ms: rpaflow_core::time::now_ms(),
        };
        let record = StoredSecret {
            value: self.secrets_key()?.seal(name, value),
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

    /// A secret's value as stored: sealed, for a task to carry to a worker.
    pub fn sealed_secret(&self, name: &str) -> Result<Option<String>> {
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

    /// A secret's value, opened (the orchestrator's own uses: webhook credentials).
    pub fn secret(&self, name: &str) -> Result<Option<String>> {
        let Some(sealed) = self.sealed_secret(name)? else {
            return Ok(None);
        };
        self.secrets_key()?
            .open(name, &sealed)
            .map(Some)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Seals under the current key every value that is in clear (an older store) or sealed
    /// under a key rotated out; returns how many were sealed anew. Values that no configured key
    /// opens are left as they are and named in the error.
    pub async fn reseal_secrets(&self) -> Result<usize> {
        let key = self.secrets_key()?.clone();
        let mut resealed = 0;
        let mut unopened = Vec::new();
        for entry in self.inner.secrets.iter() {
            let (name_bytes, bytes) = entry.map_err(storage("scan secrets"))?;
            let name = String::from_utf8_lossy(&name_bytes).into_owned();
            let mut stored: StoredSecret = decode(&bytes, "secret")?;
            if key.is_current(&stored.value) {
                continue;
            }
            let clear = if SecretsKey::is_sealed(&stored.value) {
                match key.open(&name, &stored.value) {
                    Ok(clear) => clear,
                    Err(err) => {
                        unopened.push(err.to_string());
                        continue;
                    }
                }
            } else {
                std::mem::take(&mut stored.value)
            };
            stored.value = key.seal(&name, &clear);
            self.inner
                .secrets
                .insert(name_bytes, encode(&stored)?)
                .map_err(storage("reseal secret"))?;
            resealed += 1;
        }
        if resealed > 0 {
            self.commit().await?;
        }
        if !unopened.is_empty() {
            return Err(Error::FailedPrecondition(unopened.join("; ")));
        }
        Ok(resealed)
    }

    /// The key secret markers are tagged with, made on first use and kept with the data, so
    /// markers in stored step inputs stay valid across restarts.
    pub async fn marker_key(&self) -> Result<[u8; 32]> {
        if let Some(bytes) = self
            .inner
            .meta
            .get(MARKER_KEY)
            .map_err(storage("get meta"))?
            && let Ok(key) = <[u8; 32]>::try_from(bytes.as_ref())
        {
            return Ok(key);
        }
        let fresh = rpaflow_core::secrets::SecretsKey::random_bytes();
        self.inner
            .meta
            .insert(MARKER_KEY, fresh.as_slice())
            .map_err(storage("put meta"))?;
        self.commit().await?;
        Ok(fresh)
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
