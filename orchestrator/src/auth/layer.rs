//! [`AuthLayer`]: checks every gRPC call before it reaches a service, and records changes in the
//! audit log after they are answered.
//!
//! The client certificate of an mTLS connection is read here, from the connection information
//! tonic puts in every request's extensions ([`TlsConnectInfo`]; the gRPC listener's connections
//! are `tokio_rustls` streams over TCP, see `crate::tls`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{Authenticator, Identity, Permission, required};
use crate::store::AuditRecord;

/// The tower layer in front of the gRPC services.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Authenticator) -> Self {
        Self {
            auth: Arc::new(auth),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthCheck {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct AuthCheck<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower_service::Service<http::Request<B>> for AuthCheck<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let client_certificates = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        // The leaf comes first; the TLS handshake verified it against `tls.client_ca_file`.
        let leaf = client_certificates
            .as_deref()
            .and_then(|chain| chain.first())
            .map(|der| der.as_ref());
        match self.auth.check(&path, request.headers(), leaf) {
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
            Ok(None) => Box::pin(self.inner.call(request)),
            Ok(Some(identity)) => {
                let audited = required(&path).is_some_and(|p| p != Permission::Read);
                request.extensions_mut().insert(identity.clone());
                let answer = self.inner.call(request);
                if !audited {
                    return Box::pin(answer);
                }
                let auth = self.auth.clone();
                Box::pin(async move {
                    let response = answer.await?;
                    audit(&auth, &identity, &path, &response);
                    Ok(response)
                })
            }
        }
    }
}

/// Records a change: who, which call, when, and how it was answered (unary answers carry an
/// error's status in their headers; a success's comes in the trailers, after the body).
fn audit(
    auth: &Authenticator,
    identity: &Identity,
    path: &str,
    response: &http::Response<tonic::body::Body>,
) {
    let outcome = match response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    {
        Some(code) => format!("{:?}", tonic::Code::from_i32(code)),
        None => "Ok".to_owned(),
    };
    let record = AuditRecord {
        at_ms: rpaflow_core::time::now_ms(),
        actor: identity.name.clone(),
        actor_token_id: identity.token_id.clone(),
        method: path.to_owned(),
        outcome,
        namespace: identity.namespace.clone(),
    };
    if let Err(err) = auth.store.append_audit(&record) {
        tracing::error!(error = %err, method = %path, "cannot write the audit log");
    }
}
