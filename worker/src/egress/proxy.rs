//! The browser's only way out: an HTTP proxy on loopback, one per browsing context, that Chromium
//! sends every request through (`--proxy-server`, loopback included). For each request it
//! resolves the destination through the [`Egress`] policy and connects to a checked address, or
//! refuses with `403` and records the denial for the step to report.
//!
//! - `CONNECT host:port` (HTTPS, `wss:`): tunnelled after the check, bytes copied both ways.
//! - `GET http://host/path` and other absolute-form requests (plain HTTP): sent on to the
//!   checked address with `Connection: close`, so that every request, and so every redirect hop,
//!   comes back through the proxy and is checked again.
//!
//! Chromium resolves no names itself when it uses a proxy, so DNS answers cannot bypass the check.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Egress, EgressDenied, ResolveError};

/// The largest request head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;
/// How long a connection to a destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers meant for the proxy, not passed on.
const HOP_HEADERS: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
];

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct EgressProxy {
    addr: SocketAddr,
    denials: Arc<Mutex<Vec<EgressDenied>>>,
    _stop: DropGuard,
}

impl EgressProxy {
    /// Listens on a free loopback port.
    pub async fn start(egress: Egress) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let denials = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, egress, Arc::clone(&denials), stop.clone()));
        Ok(Self {
            addr,
            denials,
            _stop: stop.drop_guard(),
        })
    }

    /// Where it listens: `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The first destination denied since the last call, if any; forgets the others.
    pub fn take_denial(&self) -> Option<EgressDenied> {
        let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        let first = denials.first().cloned();
        denials.clear();
        first
    }
}

async fn serve(
    listener: TcpListener,
    egress: Egress,
    denials: Arc<Mutex<Vec<EgressDenied>>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        let (egress, denials, stop) = (egress.clone(), Arc::clone(&denials), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                result = handle(client, &egress, &denials) => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "browser proxy connection ended");
                    }
                }
            }
        });
    }
}

/// One client connection: one request (plain HTTP) or one tunnel (`CONNECT`).
async fn handle(
    mut client: TcpStream,
    egress: &Egress,
    denials: &Mutex<Vec<EgressDenied>>,
) -> io::Result<()> {
    let buf = read_head(&mut client).await?;
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return respond(&mut client, "400 Bad Request", "malformed request").await,
    };
    let method = request.method.unwrap_or_default().to_owned();
    let target = request.path.unwrap_or_default().to_owned();

    if method.eq_ignore_ascii_case("CONNECT") {
        let Some((host, port)) = split_authority(&target) else {
            return respond(&mut client, "400 Bad Request", "bad CONNECT target").await;
        };
        let Some(mut upstream) = open(&mut client, egress, denials, &host, port).await? else {
            return Ok(());
        };
        client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
        upstream.write_all(&buf[head_len..]).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }

    let Ok(url) = reqwest::Url::parse(&target) else {
        return respond(&mut client, "400 Bad Request", "not a proxy request").await;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return respond(&mut client, "400 Bad Request", "no host").await;
    };
    if url.scheme() != "http" {
        return respond(&mut client, "400 Bad Request", "only http goes unencrypted").await;
    }
    let host = host.to_owned();
    let Some(mut upstream) = open(&mut client, egress, denials, &host, port).await? else {
        return Ok(());
    };
    let mut path = url.path().to_owned();
    if let Some(query) = url.query() {
        path.push('?');
        path.push_str(query);
    }
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for header in request.headers.iter() {
        if HOP_HEADERS
            .iter()
            .any(|h| header.name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        head.push_str(header.name);
        head.push_str(": ");
        head.push_str(&String::from_utf8_lossy(header.value));
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    upstream.write_all(head.as_bytes()).await?;
    upstream.write_all(&buf[head_len..]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// A connection to a checked address of `host:port`, or `None` once the client has been told
/// why not (`403` for a denial, recorded; `502` for a destination that does not answer).
async fn open(
    client: &mut TcpStream,
    egress: &Egress,
    denials: &Mutex<Vec<EgressDenied>>,
    host: &str,
    port: u16,
) -> io::Result<Option<TcpStream>> {
    let addrs = match egress.resolve(host, port).await {
        Ok(addrs) => addrs,
        Err(ResolveError::Denied(denied)) => {
            tracing::debug!(destination = %denied, "browser request denied");
            let message = denied.to_string();
            denials
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(denied);
            respond(client, "403 Forbidden", &message).await?;
            return Ok(None);
        }
        Err(lookup) => {
            respond(client, "502 Bad Gateway", &lookup.to_string()).await?;
            return Ok(None);
        }
    };
    for addr in addrs {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
        {
            return Ok(Some(stream));
        }
    }
    let message = format!(
        "cannot connect to {}",
        super::resolve::destination(host, Some(port))
    );
    respond(client, "502 Bad Gateway", &message).await?;
    Ok(None)
}

/// Reads until the end of the request head (`\r\n\r\n`); what follows it may be there too.
async fn read_head(client: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

async fn respond(client: &mut TcpStream, status: &str, message: &str) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{message}",
        message.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

/// `host:port` or `[v6]:port` as host and port.
fn split_authority(authority: &str) -> Option<(String, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::EgressPolicy;

    async fn send(proxy: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// An HTTP server that answers every request with the request line it got.
    async fn origin() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let head = read_head(&mut socket).await.unwrap();
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let close = head.contains("Connection: close");
                    let body = format!("{line} close={close}");
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    socket.write_all(response.as_bytes()).await.unwrap();
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn allowed_requests_pass_and_denied_ones_are_refused_and_recorded() {
        let origin = origin().await;
        let open = EgressProxy::start(Egress::permissive()).await.unwrap();
        let response = send(
            open.addr(),
            &format!("GET http://{origin}/page?q=1 HTTP/1.1\r\nHost: {origin}\r\nProxy-Connection: keep-alive\r\n\r\n"),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(
            response.ends_with("GET /page?q=1 HTTP/1.1 close=true"),
            "{response}"
        );
        assert_eq!(open.take_denial(), None);

        let closed = EgressProxy::start(Egress::new(EgressPolicy::default()))
            .await
            .unwrap();
        let response = send(
            closed.addr(),
            &format!("GET http://{origin}/page HTTP/1.1\r\nHost: {origin}\r\n\r\n"),
        )
        .await;
        let message =
            format!("egress to {origin} is denied by the worker's egress policy (worker.egress)");
        assert!(response.starts_with("HTTP/1.1 403 Forbidden"), "{response}");
        assert!(response.ends_with(&message), "{response}");
        let response = send(
            closed.addr(),
            &format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n"),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 403 Forbidden"), "{response}");
        assert_eq!(closed.take_denial().map(|d| d.to_string()), Some(message));
        assert_eq!(closed.take_denial(), None);
    }

    #[tokio::test]
    async fn tunnels_carry_bytes_both_ways() {
        let origin = origin().await;
        let proxy = EgressProxy::start(Egress::permissive()).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        stream
            .write_all(format!("CONNECT {origin} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut established = [0u8; 39];
        stream.read_exact(&mut established).await.unwrap();
        assert_eq!(&established, b"HTTP/1.1 200 Connection Established\r\n\r\n");
        stream.write_all(b"GET /t HTTP/1.1\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(
            response.ends_with("GET /t HTTP/1.1 close=false"),
            "{response}"
        );
    }
}
