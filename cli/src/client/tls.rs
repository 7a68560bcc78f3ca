//! How client commands reach the orchestrator: plaintext for `http://` addresses, TLS for
//! `https://` ones, verified against `--ca-cert` (or the system's roots), with a client
//! certificate (`--client-cert`, `--client-key`) for a server that asks for one.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// TLS settings of the client commands.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsOpts {
    /// CA certificates (PEM) that an `https://` server's certificate must chain to
    /// (default: the system's roots).
    #[arg(long, global = true, env = "RPAFLOW_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) for a server that requires one (mTLS); with --client-key.
    #[arg(
        long,
        global = true,
        env = "RPAFLOW_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(
        long,
        global = true,
        env = "RPAFLOW_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

/// The endpoint for `server` (`host:port` means `http://host:port`), with TLS for `https://`.
pub fn endpoint(server: &str, tls: &TlsOpts) -> anyhow::Result<Endpoint> {
    let uri = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let endpoint = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("--server {server} is not a valid address"))?;
    if !uri.starts_with("https://") {
        return Ok(endpoint);
    }
    endpoint
        .tls_config(tls.client_config()?)
        .context("cannot set up tls")
}

impl TlsOpts {
    fn client_config(&self) -> anyhow::Result<ClientTlsConfig> {
        let config = ClientTlsConfig::new();
        let mut config = match &self.ca_cert {
            Some(path) => config.ca_certificate(Certificate::from_pem(read(path, "--ca-cert")?)),
            None => config.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            config = config.identity(Identity::from_pem(
                read(cert, "--client-cert")?,
                read(key, "--client-key")?,
            ));
        }
        Ok(config)
    }
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

/// A hint for a failed call whose connection the server closed: with TLS 1.3 a server that
/// requires client certificates refuses one without a certificate only after the client finished
/// its part of the handshake, so the refusal reaches the client as a closed connection.
pub fn status_hint(status: &tonic::Status) -> Option<&'static str> {
    let mut next = std::error::Error::source(status);
    while let Some(cause) = next {
        if let Some(hint) = hint(cause) {
            return Some(hint);
        }
        if cause.to_string().contains("connection closed") {
            return Some(
                "the server closed the connection; if it requires client certificates, \
                 give --client-cert and --client-key",
            );
        }
        next = cause.source();
    }
    // The same refusal, when the connection dropped while the call was in flight: the client
    // sees the call cancelled, or a bare transport error, with no cause that says more.
    let dropped = status.code() == tonic::Code::Cancelled
        || (status.code() == tonic::Code::Unknown && status.message() == "transport error");
    if dropped {
        return Some(
            "the server closed the connection; if it requires client certificates, \
             give --client-cert and --client-key",
        );
    }
    None
}

/// A hint for a connection error that a person can act on, when its cause is TLS.
pub fn hint(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut chain = String::new();
    let mut next = Some(err);
    while let Some(cause) = next {
        chain.push_str(&cause.to_string().to_lowercase());
        chain.push('\n');
        next = cause.source();
    }
    if chain.contains("certificate") && chain.contains("unknownissuer") {
        Some("the server's certificate is not signed by a trusted CA: give its CA with --ca-cert")
    } else if chain.contains("certificaterequired") {
        Some("the server requires a client certificate: give --client-cert and --client-key")
    } else if chain.contains("notvalidforname") {
        Some("the server's certificate is not for this host name: check --server")
    } else {
        None
    }
}
