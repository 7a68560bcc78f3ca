//! OIDC bearer tokens (`[auth.oidc]`): a JWT signed by a configured issuer, checked against the
//! issuer's public keys in a JWKS file.
//!
//! A token is taken when its header names a key (`kid`) of the JWKS, its algorithm is one that
//! key may sign with (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA; never HMAC), its
//! signature verifies, `iss` and `aud` are the configured ones, `exp` has not passed and `nbf`
//! has (with [`OidcConfig::leeway`] either way). Its claims then name the caller: `sub` the
//! identity's id (`jwt:<sub>`), and the configured claims its name, namespace and role; a claim
//! that is missing, or a role rpaflow does not know, refuses the token.
//!
//! The JWKS file is read on the first token, then again when its modification time or length
//! changed, checked at most every [`CHECK_INTERVAL`], or sooner (at most every
//! [`UNKNOWN_KID_INTERVAL`]) when a token names a key it does not have: an issuer's new key is
//! taken without a restart. A file that does not load keeps the keys loaded before.
//!
//! # Layout
//! - this file: [`OidcConfig`], [`OidcVerifier`] and the JWKS it keeps.
//! - `crypto`: the signature checks, on `ring`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{Identity, Role};

mod crypto;

/// How often the JWKS file is checked for changes.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How often a token naming an unknown key may make the file be checked again.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(1);

/// `[auth.oidc]`: bearer tokens issued by an OpenID Connect provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// The `aud` tokens must carry (one of theirs, when they carry several).
    pub audience: String,
    /// The issuer's public keys, a JWKS (`{"keys": [...]}`) as its `jwks_uri` serves it.
    pub jwks_file: PathBuf,
    /// The claim naming the caller's namespace.
    #[serde(default = "default_namespace_claim")]
    pub namespace_claim: String,
    /// The claim naming the caller's role (`admin`, `developer`, `operator`, `approver`,
    /// `viewer`).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// The claim naming the caller (what the audit log and approvals record).
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// Clock difference allowed on `exp` and `nbf` (`"30s"`).
    #[serde(default = "default_leeway", with = "rpaflow_core::time::human")]
    pub leeway: Duration,
}

fn default_namespace_claim() -> String {
    "rpaflow_namespace".into()
}

fn default_role_claim() -> String {
    "rpaflow_role".into()
}

fn default_name_claim() -> String {
    "sub".into()
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

impl OidcConfig {
    /// The most clock difference accepted.
    pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

    /// Refuses settings that cannot check a token.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("issuer", &self.issuer),
            ("audience", &self.audience),
            ("namespace_claim", &self.namespace_claim),
            ("role_claim", &self.role_claim),
            ("name_claim", &self.name_claim),
        ] {
            if value.trim().is_empty() {
                return Err(format!("auth.oidc.{name} must not be empty"));
            }
        }
        if self.jwks_file.as_os_str().is_empty() {
            return Err("auth.oidc.jwks_file must not be empty".into());
        }
        if self.leeway > Self::MAX_LEEWAY {
            return Err("auth.oidc.leeway must be at most 5m".into());
        }
        Ok(())
    }
}

/// Why a token was refused; the caller learns none of it (see [`super::Authenticator`]).
#[derive(Debug, thiserror::Error)]
pub enum TokenRefused {
    #[error("not a JWT")]
    Malformed(#[source] jsonwebtoken::errors::Error),
    #[error("the token names no key (kid)")]
    NoKeyId,
    #[error("no key `{kid}` in the JWKS")]
    UnknownKey { kid: String },
    #[error("key `{kid}` does not sign with {algorithm:?}")]
    Algorithm { kid: String, algorithm: Algorithm },
    #[error("the token does not verify")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("the token has no `{claim}` claim (a non-empty string)")]
    MissingClaim { claim: String },
    #[error("unknown role `{role}`")]
    UnknownRole { role: String },
}

impl TokenRefused {
    /// The reason with its cause, for the debug log.
    pub fn describe(&self) -> String {
        match std::error::Error::source(self) {
            Some(cause) => format!("{self}: {cause}"),
            None => self.to_string(),
        }
    }
}

/// Checks OIDC tokens against the JWKS file; shared by every clone of the authenticator.
#[derive(Debug)]
pub struct OidcVerifier {
    config: OidcConfig,
    keys: Mutex<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    by_id: HashMap<String, Key>,
    /// The file the keys were loaded from, as it was then.
    loaded: Option<Stamp>,
    checked_at: Option<Instant>,
}

/// A modification time and a length.
type Stamp = (SystemTime, u64);

#[derive(Debug, Clone)]
struct Key {
    decoding: DecodingKey,
    /// What it may sign with: its `alg` when the JWKS says, else what its type allows.
    algorithms: Vec<Algorithm>,
}

impl OidcVerifier {
    /// A verifier for `config`; the JWKS file is read on the first token.
    pub fn new(config: OidcConfig) -> Self {
        crypto::install();
        Self {
            config,
            keys: Mutex::default(),
        }
    }

    /// The caller a token names.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenRefused> {
        let header = jsonwebtoken::decode_header(token).map_err(TokenRefused::Malformed)?;
        let kid = header.kid.ok_or(TokenRefused::NoKeyId)?;
        let key = self.key(&kid)?;
        if !key.algorithms.contains(&header.alg) {
            return Err(TokenRefused::Algorithm {
                kid,
                algorithm: header.alg,
            });
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Json>>(
            token,
            &key.decoding,
            &validation,
        )
        .map_err(TokenRefused::Invalid)?
        .claims;
        let claim = |name: &str| {
            claims
                .get(name)
                .and_then(Json::as_str)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| TokenRefused::MissingClaim {
                    claim: name.to_owned(),
                })
        };
        let subject = claim("sub")?;
        let name = claim(&self.config.name_claim)?;
        let namespace = claim(&self.config.namespace_claim)?;
        let role = claim(&self.config.role_claim)?;
        let role = Role::parse(role).ok_or_else(|| TokenRefused::UnknownRole {
            role: role.to_owned(),
        })?;
        Ok(Identity::external(
            name,
            &format!("jwt:{subject}"),
            namespace,
            role,
        ))
    }

    /// The key `kid`, reading the file again when it is due.
    fn key(&self, kid: &str) -> Result<Key, TokenRefused> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let since = keys.checked_at.map(|at| at.elapsed());
        let due = match since {
            None => true,
            Some(since) if keys.by_id.contains_key(kid) => since >= CHECK_INTERVAL,
            Some(since) => since >= UNKNOWN_KID_INTERVAL,
        };
        if due {
            self.refresh(&mut keys);
        }
        keys.by_id
            .get(kid)
            .cloned()
            .ok_or_else(|| TokenRefused::UnknownKey {
                kid: kid.to_owned(),
            })
    }

    /// Loads the file when it changed since the keys were loaded from it.
    fn refresh(&self, keys: &mut Keys) {
        keys.checked_at = Some(Instant::now());
        let path = &self.config.jwks_file;
        let stamp = stamp(path);
        if stamp.is_some() && stamp == keys.loaded {
            return;
        }
        match load(path) {
            Ok(loaded) => {
                tracing::info!(jwks_file = %path.display(), keys = loaded.len(), "jwks loaded");
                keys.by_id = loaded;
                keys.loaded = stamp;
            }
            // `loaded` stays as it was: the next check tries again.
            Err(err) => tracing::error!(
                jwks_file = %path.display(),
                error = %err,
                "cannot load the jwks file; keeping the keys loaded before"
            ),
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn load(path: &Path) -> Result<HashMap<String, Key>, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    parse(&text)
}

/// The signing keys of a JWKS by id; keys without an id, for encryption, HMAC or of an
/// unsupported type are left out.
fn parse(text: &[u8]) -> Result<HashMap<String, Key>, String> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family_algorithms: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                &[Algorithm::EdDSA]
            }
            _ => continue,
        };
        let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
            Some(named) => match Algorithm::try_from(named) {
                Ok(alg) if family_algorithms.contains(&alg) => vec![alg],
                _ => continue,
            },
            None => family_algorithms.to_vec(),
        };
        let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.insert(
            kid.clone(),
            Key {
                decoding,
                algorithms,
            },
        );
    }
    Ok(keys)
}

#[cfg(test)]
mod tests;
