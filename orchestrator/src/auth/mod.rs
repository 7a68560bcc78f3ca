//! Authentication and roles on the gRPC API.
//!
//! Every call names its caller with `authorization: Bearer <token>`. A token is
//! `rpf_<id>_<secret>`: the id finds its record, the secret is checked against the SHA-256 the
//! store keeps (the secret itself is shown once, when the token is made, and never stored).
//! A token has a role; every RPC needs a permission ([`required`]), and each role grants a set of
//! them ([`Role::grants`]). An RPC missing from that table is refused to every caller, so a new
//! RPC cannot be left open by forgetting it. Health checks and reflection need no token.
//!
//! With `[auth] enabled = false` (the `rpaflow dev` default) every call is the `anonymous`
//! admin. Changes (every call that needs more than `read`) are written to the audit log.
//!
//! # Layout
//! - this file: roles, permissions, the RPC table, tokens, [`Authenticator`].
//! - `layer`: the tower layer in front of the gRPC services.
//! - `certs`: client certificates as identities (`[[auth.client_certificates]]`).
//! - `jwt`: OIDC bearer tokens checked against a JWKS file (`[auth.oidc]`).
//! - `service`: `rpaflow.v1.AuthService` (tokens, who am I, the audit log).

mod certs;
mod jwt;
mod layer;
mod service;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tonic::Status;

pub use certs::CertificateMapping;
pub use jwt::OidcConfig;
pub use layer::AuthLayer;
pub use service::AuthApi;

use crate::error::{Error, Result};
use crate::store::{Store, TokenRecord};

/// The namespace that always exists; its admins manage every namespace.
pub const DEFAULT_NAMESPACE: &str = rpaflow_core::namespace::DEFAULT;

/// The request header that names the namespace a call acts in. With authentication off it
/// picks the namespace (`default` without it); with a token it may only repeat the token's.
pub const NAMESPACE_HEADER: &str = "rpaflow-namespace";

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether calls must carry a token (`RPAFLOW_AUTH__ENABLED`). On by default; `rpaflow dev`
    /// turns it off.
    pub enabled: bool,
    /// `[[auth.client_certificates]]`: identities of verified client certificates (mTLS,
    /// `tls.client_ca_file`), for calls without an `authorization` header.
    pub client_certificates: Vec<CertificateMapping>,
    /// `[auth.oidc]`: bearer tokens of an OpenID Connect issuer, besides API tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            client_certificates: Vec::new(),
            oidc: None,
        }
    }
}

impl AuthConfig {
    /// Refuses certificate entries and OIDC settings that cannot name a caller, and certificate
    /// entries without the client CA that makes clients present certificates.
    pub fn validate(&self, tls: &crate::tls::TlsConfig) -> Result<()> {
        if !self.client_certificates.is_empty() && tls.client_ca_file.is_none() {
            return Err(Error::InvalidArgument(
                "auth.client_certificates needs tls.client_ca_file".into(),
            ));
        }
        self.client_certificates
            .iter()
            .try_for_each(CertificateMapping::validate)
            .and_then(|()| self.oidc.as_ref().map_or(Ok(()), OidcConfig::validate))
            .map_err(Error::InvalidArgument)
    }
}

/// What a call may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read flows, runs, approvals, schedules.
    Read,
    /// Answer approvals.
    Approve,
    /// Start, cancel and retry runs; pause, resume and fire schedules.
    Operate,
    /// Register flows.
    Develop,
    /// Secrets, tokens, the audit log.
    Admin,
    /// Create namespaces and act across them: admins of the `default` namespace only.
    Namespaces,
}

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Developer,
    Operator,
    Approver,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Developer,
        Role::Operator,
        Role::Approver,
        Role::Viewer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether the role may do what `permission` covers.
    pub fn grants(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Developer => matches!(permission, Read | Operate | Develop),
            Role::Operator => matches!(permission, Read | Operate),
            Role::Approver => matches!(permission, Read | Approve),
            Role::Viewer => matches!(permission, Read),
        }
    }
}

/// The permission each RPC needs, by its path; `None` for a path that is not an rpaflow RPC
/// (refused to everyone) and for the health and reflection services (open to everyone: see
/// [`is_open`]).
pub fn required(path: &str) -> Option<Permission> {
    use Permission::*;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    Some(match (service, method) {
        (
            "rpaflow.v1.FlowService",
            "GetFlow" | "ListFlows" | "GetRun" | "ListRuns" | "WatchRun" | "ListApprovals"
            | "ListSchedules" | "ValidateFlow",
        ) => Read,
        ("rpaflow.v1.FlowService", "SignalRun") => Approve,
        (
            "rpaflow.v1.FlowService",
            "StartRun" | "CancelRun" | "RetryRun" | "PauseSchedule" | "ResumeSchedule"
            | "TriggerSchedule",
        ) => Operate,
        ("rpaflow.v1.FlowService", "RegisterFlow") => Develop,
        ("rpaflow.v1.FlowService", "SetSecret" | "DeleteSecret" | "ListSecrets") => Admin,
        ("rpaflow.v1.AuthService", "WhoAmI" | "ListNamespaces") => Read,
        ("rpaflow.v1.AuthService", "CreateNamespace") => Namespaces,
        ("rpaflow.v1.AuthService", "CreateToken" | "ListTokens" | "RevokeToken" | "ListAudit") => {
            Admin
        }
        _ => return None,
    })
}

/// Services any caller may use: health checks (probes) and reflection (the API's shape, no
/// data).
pub fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name (`anonymous` with authentication off).
    pub name: String,
    /// The token's id; empty with authentication off.
    pub token_id: String,
    pub namespace: String,
    pub role: Role,
}

impl Identity {
    /// A caller named by a client certificate or an OIDC token; `id` says which
    /// (`cert:<name>`, `jwt:<sub>`).
    pub fn external(name: &str, id: &str, namespace: &str, role: Role) -> Self {
        Self {
            name: name.to_owned(),
            token_id: id.to_owned(),
            namespace: namespace.to_owned(),
            role,
        }
    }

    /// Whether the caller is an API token of the store (not anonymous, a certificate or an
    /// OIDC token).
    pub fn is_api_token(&self) -> bool {
        !self.token_id.is_empty() && !self.token_id.contains(':')
    }

    /// The caller with authentication off: an admin of `default`.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            token_id: String::new(),
            namespace: DEFAULT_NAMESPACE.into(),
            role: Role::Admin,
        }
    }

    /// Whether this caller administers every namespace: an admin of `default`.
    pub fn manages_namespaces(&self) -> bool {
        self.role == Role::Admin && self.namespace == DEFAULT_NAMESPACE
    }

    /// Whether this caller may do what `permission` covers.
    pub fn may(&self, permission: Permission) -> bool {
        match permission {
            Permission::Namespaces => self.manages_namespaces(),
            permission => self.role.grants(permission),
        }
    }
}

const TOKEN_PREFIX: &str = "rpf_";

/// A new token: (its id, the whole token to hand out, the hash to store).
pub fn new_token() -> (String, String, String) {
    let id = hex::encode(&rpaflow_core::secrets::SecretsKey::random_bytes()[..6]);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(rpaflow_core::secrets::SecretsKey::random_bytes());
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    let hash = hash_secret(&secret);
    (id, token, hash)
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Checks API tokens against the store, client certificates against
/// `[[auth.client_certificates]]` and other bearer tokens against `[auth.oidc]`.
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: Store,
    enabled: bool,
    certificates: Arc<[CertificateMapping]>,
    oidc: Option<Arc<jwt::OidcVerifier>>,
}

impl Authenticator {
    pub fn new(store: Store, config: &AuthConfig) -> Self {
        Self {
            store,
            enabled: config.enabled,
            certificates: config.client_certificates.clone().into(),
            oidc: config
                .oidc
                .clone()
                .map(|oidc| Arc::new(jwt::OidcVerifier::new(oidc))),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The caller of a request to `path` with these headers, on a connection whose client
    /// presented `client_certificate` (DER, verified by TLS), or the status to answer.
    /// `Ok(None)`: an open service, no identity needed.
    pub fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        client_certificate: Option<&[u8]>,
    ) -> std::result::Result<Option<Identity>, Status> {
        if is_open(path) {
            return Ok(None);
        }
        let mut identity = if self.enabled {
            self.identify(headers, client_certificate)?
        } else {
            Identity::anonymous()
        };
        self.choose_namespace(&mut identity, headers)?;
        match required(path) {
            Some(permission) if identity.may(permission) => Ok(Some(identity)),
            Some(Permission::Namespaces) if identity.role == Role::Admin => {
                Err(Status::permission_denied(format!(
                    "only an admin of the `{DEFAULT_NAMESPACE}` namespace may call {path}"
                )))
            }
            Some(_) => Err(Status::permission_denied(format!(
                "the `{}` role may not call {path}",
                identity.role.name()
            ))),
            None => Err(Status::permission_denied(format!(
                "{path} is not an rpaflow API call"
            ))),
        }
    }

    /// Applies the [`NAMESPACE_HEADER`] of a call: with authentication off it picks the
    /// namespace, which must exist; with an identity from a token or a certificate it may only
    /// name the identity's own.
    fn choose_namespace(
        &self,
        identity: &mut Identity,
        headers: &http::HeaderMap,
    ) -> std::result::Result<(), Status> {
        let Some(wanted) = headers.get(NAMESPACE_HEADER) else {
            return Ok(());
        };
        let wanted = wanted.to_str().unwrap_or_default().trim();
        if wanted.is_empty() || wanted == identity.namespace {
            return Ok(());
        }
        if self.enabled {
            return Err(Status::permission_denied(format!(
                "this caller acts in namespace `{}`, not `{wanted}`",
                identity.namespace
            )));
        }
        let exists = rpaflow_core::namespace::valid(wanted)
            && self.store.namespace_exists(wanted).map_err(|err| {
                tracing::error!(error = %err, "cannot read namespaces");
                Status::unavailable("cannot check the namespace now")
            })?;
        if !exists {
            return Err(Status::not_found(format!(
                "no namespace `{wanted}` (rpaflow namespace create {wanted})"
            )));
        }
        identity.namespace = wanted.to_owned();
        Ok(())
    }

    /// The identity of a bearer token (an API token, or an OIDC token with `[auth.oidc]`), or
    /// without an `authorization` header of the client certificate; every failure reads the
    /// same to the caller (the reason is logged at debug).
    fn identify(
        &self,
        headers: &http::HeaderMap,
        client_certificate: Option<&[u8]>,
    ) -> std::result::Result<Identity, Status> {
        let refused = |reason: &str| {
            tracing::debug!(reason, "call refused: no valid token");
            Status::unauthenticated(
                "a valid API token is required (authorization: Bearer <token>; RPAFLOW_TOKEN for the CLI)",
            )
        };
        // Certificates and OIDC tokens name their namespace themselves: it must exist.
        let existing = |who: Identity| match self.store.namespace_exists(&who.namespace) {
            Ok(true) => Ok(who),
            Ok(false) => Err(refused(
                "the namespace of the certificate or token does not exist",
            )),
            Err(err) => {
                tracing::error!(error = %err, "cannot read namespaces");
                Err(Status::unavailable("cannot check the namespace now"))
            }
        };
        let Some(authorization) = headers.get(http::header::AUTHORIZATION) else {
            return match client_certificate {
                Some(der) => certs::identify(&self.certificates, der)
                    .map_err(|reason| refused(&reason.to_string()))
                    .and_then(existing),
                None => Err(refused("no bearer token")),
            };
        };
        let given = authorization
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| refused("no bearer token"))?;
        let Some(rest) = given.strip_prefix(TOKEN_PREFIX) else {
            return match &self.oidc {
                Some(oidc) => oidc
                    .verify(given)
                    .map_err(|reason| refused(&reason.describe()))
                    .and_then(existing),
                None => Err(refused("not an rpaflow token")),
            };
        };
        let (id, secret) = rest
            .split_once('_')
            .ok_or_else(|| refused("not an rpaflow token"))?;
        let record = match self.store.token(id) {
            Ok(Some(record)) => record,
            Ok(None) => return Err(refused("unknown token id")),
            Err(err) => {
                tracing::error!(error = %err, "cannot read tokens");
                return Err(Status::unavailable("cannot check the token now"));
            }
        };
        let hash = hash_secret(secret);
        if !rpaflow_core::signature::same_secret(hash.as_bytes(), record.hash.as_bytes()) {
            return Err(refused("wrong secret"));
        }
        let now = rpaflow_core::time::now_ms();
        if record.revoked_at_ms.is_some() {
            return Err(refused("revoked"));
        }
        if record.expires_at_ms.is_some_and(|at| at <= now) {
            return Err(refused("expired"));
        }
        let role = Role::parse(&record.role).ok_or_else(|| refused("unknown role"))?;
        Ok(Identity {
            name: record.name,
            token_id: record.id,
            namespace: record.namespace,
            role,
        })
    }

    /// Makes a token and stores its hash; returns the record and the token to hand out once.
    pub async fn create_token(
        &self,
        name: &str,
        namespace: &str,
        role: Role,
        expires_in: Option<Duration>,
        created_by: &str,
    ) -> Result<(TokenRecord, String)> {
        if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "a token's name must be 1 to 100 visible characters".into(),
            ));
        }
        if !self.store.namespace_exists(namespace)? {
            return Err(Error::NotFound(format!("no namespace `{namespace}`")));
        }
        let live = self.store.tokens()?;
        if live
            .iter()
            .any(|t| t.name == name && t.namespace == namespace && t.revoked_at_ms.is_none())
        {
            return Err(Error::AlreadyExists(format!(
                "a live token of namespace `{namespace}` is already named `{name}`"
            )));
        }
        let (id, token, hash) = new_token();
        let now = rpaflow_core::time::now_ms();
        let record = TokenRecord {
            id,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            role: role.name().into(),
            hash,
            created_at_ms: now,
            expires_at_ms: expires_in
                .map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
            revoked_at_ms: None,
            created_by: created_by.to_owned(),
        };
        self.store.put_token(&record).await?;
        Ok((record, token))
    }

    /// On the first start of a store with authentication on and no token: an admin token,
    /// returned to be shown once and written to `path` (mode 0600).
    pub async fn bootstrap(&self, path: &std::path::Path) -> Result<Option<String>> {
        if !self.enabled || !self.store.tokens()?.is_empty() {
            return Ok(None);
        }
        let (_, token) = self
            .create_token(
                "bootstrap-admin",
                DEFAULT_NAMESPACE,
                Role::Admin,
                None,
                "rpaflow",
            )
            .await?;
        rpaflow_core::secrets::write_key_file(path, &token)
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Every RPC of the services the orchestrator serves is in the table: a new RPC cannot be
    /// left open (or closed to everyone) by forgetting it.
    #[test]
    fn every_rpc_of_the_served_services_has_a_permission() {
        let set =
            prost_types::FileDescriptorSet::decode(rpaflow_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut seen = 0;
        for file in &set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                if !matches!(
                    full.as_str(),
                    "rpaflow.v1.FlowService" | "rpaflow.v1.AuthService"
                ) {
                    continue;
                }
                for method in &service.method {
                    let path = format!("/{full}/{}", method.name());
                    assert!(required(&path).is_some(), "{path} has no permission");
                    seen += 1;
                }
            }
        }
        assert!(seen > 20, "{seen}");
        assert_eq!(required("/rpaflow.v1.FlowService/Nope"), None);
        assert_eq!(required("/rpaflow.v1.InferenceService/Generate"), None);
    }

    #[test]
    fn roles_grant_what_docs_say() {
        use Permission::*;
        let table: [(Role, &[Permission]); 5] = [
            (Role::Admin, &[Read, Approve, Operate, Develop, Admin]),
            (Role::Developer, &[Read, Operate, Develop]),
            (Role::Operator, &[Read, Operate]),
            (Role::Approver, &[Read, Approve]),
            (Role::Viewer, &[Read]),
        ];
        for (role, granted) in table {
            for p in [Read, Approve, Operate, Develop, Admin] {
                assert_eq!(role.grants(p), granted.contains(&p), "{role:?} {p:?}");
            }
            assert_eq!(Role::parse(role.name()), Some(role));
        }
    }

    #[tokio::test]
    async fn tokens_are_checked_by_hash_expiry_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let auth = Authenticator::new(store.clone(), &AuthConfig::default());
        let path = "/rpaflow.v1.FlowService/StartRun";
        let headers = |token: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            h
        };
        let (record, token) = auth
            .create_token("ci", DEFAULT_NAMESPACE, Role::Operator, None, "test")
            .await
            .unwrap();
        assert!(!record.hash.contains(token.rsplit('_').next().unwrap()));
        let who = auth.check(path, &headers(&token), None).unwrap().unwrap();
        assert_eq!((who.name.as_str(), who.role), ("ci", Role::Operator));
        let denied = auth
            .check("/rpaflow.v1.FlowService/SetSecret", &headers(&token), None)
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let mut wrong = token.clone();
        wrong.push('x');
        for bad in [wrong.as_str(), "rpf_000000000000_abc", "nonsense", ""] {
            let err = auth.check(path, &headers(bad), None).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        assert_eq!(
            auth.check(path, &http::HeaderMap::new(), None)
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        // Open services need nothing.
        assert!(matches!(
            auth.check(
                "/grpc.health.v1.Health/Check",
                &http::HeaderMap::new(),
                None
            ),
            Ok(None)
        ));
        // Expired and revoked tokens are refused like unknown ones.
        let (_, short) = auth
            .create_token(
                "short",
                DEFAULT_NAMESPACE,
                Role::Viewer,
                Some(Duration::from_millis(1)),
                "test",
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let err = auth
            .check("/rpaflow.v1.FlowService/ListRuns", &headers(&short), None)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let mut revoked = record.clone();
        revoked.revoked_at_ms = Some(1);
        store.put_token(&revoked).await.unwrap();
        let err = auth.check(path, &headers(&token), None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        // Names of live tokens are unique.
        auth.create_token("ci", DEFAULT_NAMESPACE, Role::Viewer, None, "test")
            .await
            .unwrap();
        assert!(
            auth.create_token("ci", DEFAULT_NAMESPACE, Role::Viewer, None, "test")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_client_certificate_names_a_caller_without_a_token_and_a_token_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut config = AuthConfig {
            client_certificates: vec![CertificateMapping {
                subject_cn: Some("ci-bot".into()),
                dns_name: None,
                uri: None,
                namespace: DEFAULT_NAMESPACE.into(),
                role: "viewer".into(),
                name: None,
            }],
            ..AuthConfig::default()
        };
        config.client_certificates.push(CertificateMapping {
            subject_cn: Some("team-bot".into()),
            namespace: "team-a".into(),
            ..config.client_certificates[0].clone()
        });
        let auth = Authenticator::new(store.clone(), &config);
        let cert = |cn: &str| {
            let mut params = rcgen::CertificateParams::default();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let (bot, stranger, team) = (cert("ci-bot"), cert("stranger"), cert("team-bot"));
        let list = "/rpaflow.v1.FlowService/ListRuns";
        let start = "/rpaflow.v1.FlowService/StartRun";
        let no_headers = http::HeaderMap::new();

        let who = auth.check(list, &no_headers, Some(&bot)).unwrap().unwrap();
        assert_eq!(
            (who.name.as_str(), who.token_id.as_str(), who.role),
            ("ci-bot", "cert:ci-bot", Role::Viewer)
        );
        assert!(!who.is_api_token());
        let denied = auth.check(start, &no_headers, Some(&bot)).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        // A certificate no entry names reads like no token at all.
        let unmapped = auth.check(list, &no_headers, Some(&stranger)).unwrap_err();
        let anonymous = auth.check(list, &no_headers, None).unwrap_err();
        assert_eq!(unmapped.code(), tonic::Code::Unauthenticated);
        assert_eq!(unmapped.message(), anonymous.message());
        // A namespace that does not exist names no one, until it is made.
        let homeless = auth.check(list, &no_headers, Some(&team)).unwrap_err();
        assert_eq!(homeless.code(), tonic::Code::Unauthenticated);
        let record = crate::store::NamespaceRecord {
            name: "team-a".into(),
            created_at_ms: 0,
            created_by: "test".into(),
        };
        assert!(store.create_namespace(&record).await.unwrap());
        let who = auth.check(list, &no_headers, Some(&team)).unwrap().unwrap();
        assert_eq!(who.namespace, "team-a");

        // A bearer token wins over the certificate, and a bad one does not fall back to it.
        let (_, token) = auth
            .create_token("ci", DEFAULT_NAMESPACE, Role::Operator, None, "test")
            .await
            .unwrap();
        let bearer = |token: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            h
        };
        let who = auth
            .check(start, &bearer(&token), Some(&bot))
            .unwrap()
            .unwrap();
        assert_eq!((who.name.as_str(), who.role), ("ci", Role::Operator));
        assert!(who.is_api_token());
        for bad in ["rpf_000000000000_abc", "eyJhbGciOiJub25lIn0.e30.", ""] {
            let err = auth.check(list, &bearer(bad), Some(&bot)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad}");
        }
    }

    #[test]
    fn certificate_entries_need_a_client_ca_and_a_known_role() {
        let mut tls = crate::tls::TlsConfig::default();
        let entry = CertificateMapping {
            subject_cn: Some("ci-bot".into()),
            dns_name: None,
            uri: None,
            namespace: DEFAULT_NAMESPACE.into(),
            role: "viewer".into(),
            name: None,
        };
        let mut config = AuthConfig {
            client_certificates: vec![entry.clone()],
            ..AuthConfig::default()
        };
        let err = config.validate(&tls).unwrap_err();
        assert!(err.to_string().contains("tls.client_ca_file"), "{err}");
        tls.client_ca_file = Some("ca.pem".into());
        config.validate(&tls).unwrap();
        config.client_certificates.push(CertificateMapping {
            role: "root".into(),
            ..entry
        });
        assert!(config.validate(&tls).is_err());
        assert!(AuthConfig::default().validate(&tls).is_ok());
    }
}
