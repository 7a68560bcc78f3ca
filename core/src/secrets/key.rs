//! The secrets key: what seals secret values at rest (in the orchestrator's store) and on the
//! way to workers (in tasks on the bus).
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per sealing and the secret's name as
//! associated data, so a sealed value cannot be moved to another name. A sealed value is text:
//! `rpaflow-sealed:v1:<key id>:<base64 of nonce and ciphertext>`, where the key id (8 hex
//! digits of a hash of the key) says which key opens it, so a key can be rotated: the new key
//! seals, the previous ones still open (see `docs/security.md`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PREFIX: &str = "rpaflow-sealed:v1:";
const NONCE_BYTES: usize = 24;
/// The key file a data directory keeps when no key is configured.
pub const DATA_DIR_KEY_FILE: &str = "secrets.key";

/// What can go wrong with keys and sealed values.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the secrets key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the secrets key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the secrets key {what} is not a key: {reason} (expected 32 bytes in base64, as `rpaflow secret generate-key` writes)"
    )]
    Malformed { what: String, reason: String },
    #[error(
        "secret `{name}` is sealed under key {key_id}, which is neither the current secrets key nor one of `secrets.previous_key_files`"
    )]
    UnknownKey { name: String, key_id: String },
    #[error("secret `{name}` cannot be opened: {reason}")]
    Corrupt { name: String, reason: String },
}

/// `[secrets]`: where the key comes from. Services that hold secrets (the orchestrator) or open
/// them (workers) must be given the same key; see `docs/security.md`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// A file holding the key (32 bytes in base64). Without it (and without `key`), the
    /// orchestrator keeps one in its data directory, and a worker can open no secret.
    pub key_file: Option<PathBuf>,
    /// The key itself, in base64 (`RPAFLOW_SECRETS__KEY`); never printed.
    #[serde(skip_serializing)]
    pub key: Option<String>,
    /// Keys rotated out: they still open values sealed under them, never seal.
    pub previous_key_files: Vec<PathBuf>,
}

impl SecretsConfig {
    /// The configured key; without one, `data_dir`'s own (created on first use, mode 0600), or
    /// none when there is no data directory (a worker).
    pub fn load(&self, data_dir: Option<&Path>) -> Result<Option<SecretsKey>, KeyError> {
        let current = match (&self.key, &self.key_file, data_dir) {
            (Some(text), _, _) => parse_key(text, "in RPAFLOW_SECRETS__KEY")?,
            (None, Some(path), _) => read_key(path)?,
            (None, None, Some(dir)) => data_dir_key(dir)?,
            (None, None, None) => return Ok(None),
        };
        let previous = self
            .previous_key_files
            .iter()
            .map(|p| read_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(SecretsKey::new(current, previous)))
    }
}

/// A new random key.
pub(crate) fn random_key() -> [u8; 32] {
    XChaCha20Poly1305::generate_key(&mut OsRng).into()
}

/// A new key as the text a key file holds.
pub fn generate_key_text() -> String {
    BASE64.encode(random_key())
}

/// Writes `text` to `path` readable by its owner only (0600), refusing to replace a file.
pub fn write_key_file(path: &Path, text: &str) -> Result<(), KeyError> {
    use std::io::Write as _;
    let write = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(write)?;
    file.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write)
}

fn parse_key(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let malformed = |reason: String| KeyError::Malformed {
        what: what.to_owned(),
        reason,
    };
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| malformed(format!("not base64 ({e})")))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| malformed(format!("{} bytes, not 32", bytes.len())))
}

fn read_key(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_key(&text, &path.display().to_string())
}

/// The data directory's own key, created (0600) when it has none.
fn data_dir_key(dir: &Path) -> Result<[u8; 32], KeyError> {
    let path = dir.join(DATA_DIR_KEY_FILE);
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| KeyError::Write {
        path: dir.to_owned(),
        source,
    })?;
    match write_key_file(&path, &generate_key_text()) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a secrets key in the data directory; set secrets.key_file to keep it elsewhere");
        }
        Err(KeyError::Write { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    read_key(&path)
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(bytes: [u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"rpaflow secrets key id\0")
            .chain_update(bytes)
            .finalize();
        Self {
            id: hex::encode(&digest[..4]),
            cipher: XChaCha20Poly1305::new(&bytes.into()),
        }
    }
}

/// The current key (seals and opens) and the keys rotated out (open only).
#[derive(Clone)]
pub struct SecretsKey {
    keys: Arc<Vec<Key>>,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey")
            .field("current", &self.keys[0].id)
            .field("previous", &self.keys.len().saturating_sub(1))
            .finish()
    }
}

/// Keys are equal when they seal alike and open the same keys.
impl PartialEq for SecretsKey {
    fn eq(&self, other: &Self) -> bool {
        self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(other.keys.iter())
                .all(|(a, b)| a.id == b.id)
    }
}

impl Eq for SecretsKey {}

impl SecretsKey {
    pub fn new(current: [u8; 32], previous: Vec<[u8; 32]>) -> Self {
        let keys = std::iter::once(current)
            .chain(previous)
            .map(Key::new)
            .collect();
        Self {
            keys: Arc::new(keys),
        }
    }

    /// A key of its own, for tests and for processes that seal and open alone.
    pub fn random() -> Self {
        Self::new(random_key(), Vec::new())
    }

    /// 32 random bytes from the operating system, for keys of other uses.
    pub fn random_bytes() -> [u8; 32] {
        random_key()
    }

    /// The id of the key that seals (8 hex digits).
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// `value` sealed under the current key, bound to `name`.
    pub fn seal(&self, name: &str, value: &str) -> String {
        let key = &self.keys[0];
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .unwrap_or_else(|_| unreachable!("sealing in memory cannot fail"));
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", key.id, BASE64.encode(bytes))
    }

    /// Whether `text` is a sealed value (of any key).
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(PREFIX)
    }

    /// Whether `sealed` is sealed under the current key.
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(id, _)| id == self.keys[0].id)
    }

    /// The value `sealed` holds for `name`.
    pub fn open(&self, name: &str, sealed: &str) -> Result<String, KeyError> {
        let corrupt = |reason: &str| KeyError::Corrupt {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let (id, body) = sealed
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(|| corrupt("not a sealed value"))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyError::UnknownKey {
                name: name.to_owned(),
                key_id: id.to_owned(),
            })?;
        let bytes = BASE64.decode(body).map_err(|_| corrupt("not base64"))?;
        if bytes.len() < NONCE_BYTES {
            return Err(corrupt("too short"));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| {
                corrupt("it does not authenticate (altered, or sealed for another name)")
            })?;
        String::from_utf8(plain).map_err(|_| corrupt("not text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_name_and_key() {
        let key = SecretsKey::random();
        let sealed = key.seal("TOKEN", "s3cr3t");
        assert!(SecretsKey::is_sealed(&sealed));
        assert!(!sealed.contains("s3cr3t"));
        assert_ne!(
            sealed,
            key.seal("TOKEN", "s3cr3t"),
            "a fresh nonce each time"
        );
        assert_eq!(key.open("TOKEN", &sealed).unwrap(), "s3cr3t");
        assert!(matches!(
            key.open("OTHER", &sealed),
            Err(KeyError::Corrupt { .. })
        ));
        let stranger = SecretsKey::random();
        assert!(matches!(
            stranger.open("TOKEN", &sealed),
            Err(KeyError::UnknownKey { .. })
        ));
        let mut altered = sealed.clone();
        altered.pop();
        altered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(key.open("TOKEN", &altered).is_err());
    }

    #[test]
    fn a_rotated_key_still_opens_and_never_seals() {
        let (old, new) = (random_key(), random_key());
        let before = SecretsKey::new(old, Vec::new());
        let sealed = before.seal("TOKEN", "v");
        let after = SecretsKey::new(new, vec![old]);
        assert_eq!(after.open("TOKEN", &sealed).unwrap(), "v");
        assert!(!after.is_current(&sealed));
        assert!(after.is_current(&after.seal("TOKEN", "v")));
    }

    #[test]
    fn keys_come_from_config_or_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let none = SecretsConfig::default();
        assert!(none.load(None).unwrap().is_none());
        let first = none.load(Some(dir.path())).unwrap().unwrap();
        let again = none.load(Some(dir.path())).unwrap().unwrap();
        assert_eq!(first.current_id(), again.current_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(DATA_DIR_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let bad = SecretsConfig {
            key: Some("short".into()),
            ..SecretsConfig::default()
        };
        let err = bad.load(None).unwrap_err().to_string();
        assert!(err.contains("is not a key"), "{err}");
        let text = generate_key_text();
        let given = SecretsConfig {
            key: Some(text.clone()),
            ..SecretsConfig::default()
        };
        let key = given.load(None).unwrap().unwrap();
        assert_eq!(key.open("A", &key.seal("A", "x")).unwrap(), "x");
    }
}
