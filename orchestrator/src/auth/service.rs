//! `rpaflow.v1.AuthService`: namespaces, tokens, who am I, the audit log.
//!
//! An admin manages the tokens and reads the audit log of its own namespace; an admin of
//! `default` creates namespaces and manages every namespace's tokens. A token, a namespace or an
//! audit entry of another namespace is, to anyone else, not there.

use rpaflow_proto::v1 as pb;
use rpaflow_proto::v1::auth_service_server::AuthService;
use tonic::{Request, Response, Status};

use super::{Authenticator, Identity, Role};
use crate::error::Error;
use crate::store::{NamespaceRecord, TokenRecord};

/// The service, over the [`Authenticator`] of the API.
#[derive(Debug, Clone)]
pub struct AuthApi {
    auth: Authenticator,
}

impl AuthApi {
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

/// The caller, as the auth layer found it.
fn caller<T>(request: &Request<T>) -> Identity {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or_else(Identity::anonymous)
}

fn info(record: TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: record.id,
        name: record.name,
        namespace: record.namespace,
        role: record.role,
        created_at_ms: record.created_at_ms,
        expires_at_ms: record.expires_at_ms.unwrap_or(0),
        revoked_at_ms: record.revoked_at_ms.unwrap_or(0),
        created_by: record.created_by,
    }
}

fn namespace_info(record: NamespaceRecord) -> pb::Namespace {
    pb::Namespace {
        name: record.name,
        created_at_ms: record.created_at_ms,
        created_by: record.created_by,
    }
}

/// Whether `who` may see and manage what belongs to `namespace`.
fn reaches(who: &Identity, namespace: &str) -> bool {
    who.namespace == namespace || who.manages_namespaces()
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        let by = caller(&request);
        let name = request.into_inner().name;
        if let Some(reason) = rpaflow_core::namespace::invalid_reason(&name) {
            return Err(Status::invalid_argument(reason));
        }
        let record = NamespaceRecord {
            name: name.clone(),
            created_at_ms: rpaflow_core::time::now_ms(),
            created_by: by.name,
        };
        let created = name != rpaflow_core::namespace::DEFAULT
            && self
                .auth
                .store
                .create_namespace(&record)
                .await
                .map_err(Status::from)?;
        if !created {
            return Err(Status::from(Error::AlreadyExists(format!(
                "namespace `{name}` exists already"
            ))));
        }
        Ok(Response::new(namespace_info(record)))
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let who = caller(&request);
        let default = NamespaceRecord {
            name: rpaflow_core::namespace::DEFAULT.to_owned(),
            created_at_ms: 0,
            created_by: String::new(),
        };
        let mut all = vec![default];
        all.extend(self.auth.store.namespaces().map_err(Status::from)?);
        all.retain(|ns| reaches(&who, &ns.name));
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: all.into_iter().map(namespace_info).collect(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let by = caller(&request);
        let req = request.into_inner();
        let role = Role::parse(&req.role).ok_or_else(|| {
            Status::invalid_argument(format!(
                "`{}` is not a role (admin, developer, operator, approver, viewer)",
                req.role
            ))
        })?;
        let expires_in = match req.expires_in.trim() {
            "" => None,
            text => Some(humantime::parse_duration(text).map_err(|e| {
                Status::invalid_argument(format!("expires_in `{text}` is not a duration: {e}"))
            })?),
        };
        let namespace = match req.namespace.trim() {
            "" => by.namespace.clone(),
            namespace => namespace.to_owned(),
        };
        if !reaches(&by, &namespace) {
            return Err(Status::permission_denied(format!(
                "an admin of namespace `{}` may not make tokens of namespace `{namespace}`",
                by.namespace
            )));
        }
        let (record, token) = self
            .auth
            .create_token(&req.name, &namespace, role, expires_in, &by.name)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::CreateTokenResponse {
            info: Some(info(record)),
            token,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let who = caller(&request);
        let mut tokens = self.auth.store.tokens().map_err(Status::from)?;
        tokens.retain(|t| reaches(&who, &t.namespace));
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let who = caller(&request);
        let id = request.into_inner().id;
        let mut record = self
            .auth
            .store
            .token(&id)
            .map_err(Status::from)?
            .filter(|t| reaches(&who, &t.namespace))
            .ok_or_else(|| Status::from(Error::NotFound(format!("no token `{id}`"))))?;
        if record.revoked_at_ms.is_none() {
            record.revoked_at_ms = Some(rpaflow_core::time::now_ms());
            self.auth
                .store
                .put_token(&record)
                .await
                .map_err(Status::from)?;
        }
        Ok(Response::new(info(record)))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let who = caller(&request);
        if !who.is_api_token() {
            return Ok(Response::new(pb::TokenInfo {
                name: who.name,
                namespace: who.namespace,
                role: who.role.name().into(),
                ..pb::TokenInfo::default()
            }));
        }
        let record = self
            .auth
            .store
            .token(&who.token_id)
            .map_err(Status::from)?
            .ok_or_else(|| Status::unauthenticated("the token is gone"))?;
        Ok(Response::new(info(record)))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let who = caller(&request);
        let limit = match request.into_inner().limit {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let entries = self
            .auth
            .store
            .audit(limit, |e| reaches(&who, &e.namespace))
            .map_err(Status::from)?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    at_ms: e.at_ms,
                    actor: e.actor,
                    actor_token_id: e.actor_token_id,
                    method: e.method,
                    outcome: e.outcome,
                    namespace: e.namespace,
                })
                .collect(),
        }))
    }
}
