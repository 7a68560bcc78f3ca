//! TLS on the orchestrator's listeners (`[tls]`): the gRPC API and the webhook endpoint serve
//! the certificate of `cert_file`/`key_file` (PEM), re-read when the files change, and with
//! `client_ca_file` the gRPC API asks every client for a certificate signed by that CA (mTLS).
//!
//! - [`TlsConfig`]: the settings and their validation.
//! - [`ServerTls`]: the loaded configuration; [`ServerTls::grpc`] and [`ServerTls::hooks`] wrap a
//!   bound `TcpListener` in a [`TlsIncoming`], which tonic takes as a stream of connections and
//!   axum as a listener. Handshakes run on their own tasks, so a slow client holds up no one.
//! - Reload: a task polls the files' modification times every `reload_interval`; a change is
//!   loaded for new connections, and a file that does not load keeps the current certificate and
//!   is logged as an error. Open connections keep the certificate they were made with.
//! - The identity hook: a gRPC handler (or a layer in front of it) reads the verified client
//!   certificate with [`client_certificate`] (tonic's `Request::peer_certs`, filled in because
//!   the connections are `tokio_rustls` streams).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info, warn};

/// How long a client has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// `[tls]`: TLS on the gRPC API and the webhook endpoint. Without `cert_file` both speak
/// plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM, leaf first.
    pub cert_file: Option<PathBuf>,
    /// The private key of the certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates, PEM: when set, gRPC clients must present a certificate signed by one.
    pub client_ca_file: Option<PathBuf>,
    /// How often the certificate files are checked for changes (`"5s"`).
    #[serde(with = "rpaflow_core::time::human")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl TlsConfig {
    /// The shortest reload interval accepted.
    pub const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);

    /// Whether the listeners speak TLS.
    pub fn is_enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    /// Refuses settings that cannot serve: half a key pair, or a client CA without TLS.
    pub fn validate(&self) -> crate::error::Result<()> {
        let invalid = |m: &str| Err(crate::error::Error::InvalidArgument(m.to_owned()));
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return invalid("tls.cert_file is set but tls.key_file is not"),
            (None, Some(_)) => return invalid("tls.key_file is set but tls.cert_file is not"),
            _ => {}
        }
        if self.client_ca_file.is_some() && self.cert_file.is_none() {
            return invalid("tls.client_ca_file needs tls.cert_file and tls.key_file");
        }
        if self.reload_interval < Self::MIN_RELOAD_INTERVAL {
            return invalid("tls.reload_interval must be at least 100ms");
        }
        Ok(())
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what} from {}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in {}", path.display())]
    NoCertificate { path: PathBuf },
    #[error("the key in {} does not fit the certificate in {}", key.display(), cert.display())]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the client CA certificates in {} are not usable", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: ClientCaError,
    },
    #[error("cannot configure TLS")]
    Config(#[source] rustls::Error),
}

/// What is wrong with a client CA file.
#[derive(Debug, thiserror::Error)]
pub enum ClientCaError {
    #[error("not a CA certificate")]
    Certificate(#[source] rustls::Error),
    #[error("cannot verify clients with them")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The verified certificate a gRPC client presented (the leaf), when the API runs with
/// `tls.client_ca_file`: what an authentication layer maps to an identity.
pub fn client_certificate<T>(request: &tonic::Request<T>) -> Option<CertificateDer<'static>> {
    request.peer_certs()?.first().cloned()
}

/// TLS for the listeners, loaded from a [`TlsConfig`]; cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    grpc: TlsAcceptor,
    hooks: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate (and the client CAs), or `None` when TLS is off. Starts the task
    /// that reloads the certificate, which ends once every listener using it has stopped; call
    /// it inside a Tokio runtime.
    pub fn load(config: &TlsConfig) -> Result<Option<Self>> {
        let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = KeyPairFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        let seen = files.stamp();
        let resolver = Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(files.load(&provider)?)),
        });
        let client_verifier = match &config.client_ca_file {
            Some(path) => {
                let ca_error = |source| Error::ClientCa {
                    path: path.clone(),
                    source,
                };
                let mut roots = RootCertStore::empty();
                for cert in read_certificates(path, "client CA certificates")? {
                    roots
                        .add(cert)
                        .map_err(|e| ca_error(ClientCaError::Certificate(e)))?;
                }
                Some(
                    WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        Arc::clone(&provider),
                    )
                    .build()
                    .map_err(|e| ca_error(ClientCaError::Verifier(e)))?,
                )
            }
            None => None,
        };
        let server_config =
            |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
             alpn: &[u8]|
             -> Result<TlsAcceptor> {
                let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
                    .with_safe_default_protocol_versions()
                    .map_err(Error::Config)?;
                let builder = match verifier {
                    Some(verifier) => builder.with_client_cert_verifier(verifier),
                    None => builder.with_no_client_auth(),
                };
                let mut server = builder.with_cert_resolver(resolver.clone());
                server.alpn_protocols = vec![alpn.to_vec()];
                Ok(TlsAcceptor::from(Arc::new(server)))
            };
        // gRPC is HTTP/2; the webhook endpoint HTTP/1.1, and webhook senders authenticate by
        // signature or token, so they are not asked for a client certificate.
        let grpc = server_config(client_verifier, b"h2")?;
        let hooks = server_config(None, b"http/1.1")?;
        tokio::spawn(watch(
            Arc::downgrade(&resolver),
            files,
            provider,
            config.reload_interval,
            seen,
        ));
        info!(
            cert_file = %cert.display(),
            client_ca_file = ?config.client_ca_file,
            "tls enabled"
        );
        Ok(Some(Self { grpc, hooks }))
    }

    /// The gRPC API's connections on `listener` (client certificates required with
    /// `client_ca_file`).
    pub fn grpc(&self, listener: TcpListener) -> TlsIncoming {
        TlsIncoming::new(listener, self.grpc.clone())
    }

    /// The webhook endpoint's connections on `listener`.
    pub fn hooks(&self, listener: TcpListener) -> TlsIncoming {
        TlsIncoming::new(listener, self.hooks.clone())
    }
}

/// Connections that completed their TLS handshake: a `Stream` for tonic's
/// `serve_with_incoming_shutdown`, an [`axum::serve::Listener`] for axum. Dropping it stops
/// accepting.
pub struct TlsIncoming {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: Option<SocketAddr>,
}

impl TlsIncoming {
    fn new(listener: TcpListener, acceptor: TlsAcceptor) -> Self {
        let local = listener.local_addr().ok();
        let (tx, accepted) = mpsc::channel(ACCEPTED_BACKLOG);
        tokio::spawn(accept_loop(listener, acceptor, tx));
        Self { accepted, local }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Without TCP_NODELAY every streamed reply waits ~40 ms for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(err)) => debug!(peer = %peer, error = %err, "tls handshake failed"),
                Err(_) => debug!(peer = %peer, "tls handshake timed out"),
            }
        });
    }
}

impl futures::Stream for TlsIncoming {
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accepted
            .poll_recv(cx)
            .map(|next| next.map(|(stream, _)| Ok(stream)))
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop ends only when this side is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.local
            .ok_or_else(|| io::Error::other("the listener has no local address"))
    }
}

/// Serves the current certificate to every handshake.
#[derive(Debug)]
struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

#[derive(Debug, Clone)]
struct KeyPairFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// What tells a changed file: modification time and length, of the certificate and the key.
type Stamp = [Option<(SystemTime, u64)>; 2];

impl KeyPairFiles {
    fn stamp(&self) -> Stamp {
        let of = |path: &Path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        };
        [of(&self.cert), of(&self.key)]
    }

    fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey> {
        let chain = read_certificates(&self.cert, "the certificate")?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|source| Error::Pem {
            what: "a private key",
            path: self.key.clone(),
            source,
        })?;
        CertifiedKey::from_der(chain, key, provider).map_err(|source| Error::KeyPair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        })
    }
}

fn read_certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let pem_error = |source| Error::Pem {
        what,
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Polls the files every `interval` and loads them when they changed, until the resolver is
/// dropped.
async fn watch(
    resolver: Weak<ReloadingCert>,
    files: KeyPairFiles,
    provider: Arc<CryptoProvider>,
    interval: Duration,
    mut seen: Stamp,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if resolver.strong_count() == 0 {
            return;
        }
        let check = files.clone();
        let provider = Arc::clone(&provider);
        let loaded = tokio::task::spawn_blocking(move || {
            let stamp = check.stamp();
            if stamp == seen {
                return (stamp, None);
            }
            (stamp, Some(check.load(&provider)))
        })
        .await;
        let Ok((stamp, loaded)) = loaded else { return };
        seen = stamp;
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        match loaded {
            None => {}
            Some(Ok(key)) => {
                *resolver
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                info!(cert_file = %files.cert.display(), "tls certificate reloaded");
            }
            Some(Err(err)) => error!(
                cert_file = %files.cert.display(),
                error = %ErrorChain(&err),
                "cannot reload the tls certificate; new connections keep the current one"
            ),
        }
    }
}

/// An error with its causes, `a: b: c`, for a log line.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cert: Option<&str>, key: Option<&str>, ca: Option<&str>) -> TlsConfig {
        TlsConfig {
            cert_file: cert.map(PathBuf::from),
            key_file: key.map(PathBuf::from),
            client_ca_file: ca.map(PathBuf::from),
            ..TlsConfig::default()
        }
    }

    #[test]
    fn half_a_key_pair_names_the_missing_setting() {
        let err = config(Some("c.pem"), None, None).validate().unwrap_err();
        assert!(err.to_string().contains("tls.key_file"), "{err}");
        let err = config(None, Some("k.pem"), None).validate().unwrap_err();
        assert!(err.to_string().contains("tls.cert_file"), "{err}");
        let err = config(None, None, Some("ca.pem")).validate().unwrap_err();
        assert!(err.to_string().contains("tls.client_ca_file"), "{err}");
        assert!(config(None, None, None).validate().is_ok());
        assert!(!config(None, None, None).is_enabled());
        let full = config(Some("c.pem"), Some("k.pem"), Some("ca.pem"));
        assert!(full.validate().is_ok());
        assert!(full.is_enabled());
    }
}
