//! Resolving a destination through the policy: the addresses a step connects to are the ones
//! that were checked, so a name cannot resolve to a public address for the check and to a
//! private one for the connection.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;

use super::policy::EgressPolicy;
use crate::{StepError, codes};

/// Looks host names up (the system resolver; tests give a table).
#[async_trait]
pub trait Lookup: Send + Sync {
    /// The addresses of `host`, which is a name, never an address.
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The system resolver (`getaddrinfo`, on a blocking thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

#[async_trait]
impl Lookup for SystemLookup {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let addrs = tokio::net::lookup_host((host, 0)).await?;
        Ok(addrs.map(|addr| addr.ip()).collect())
    }
}

/// A step tried to reach a destination the policy denies. The message is the same whether
/// anything listens there or not; it names the setting of the policy that applied, so that an
/// operator knows which one to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress to {} is denied by the worker's egress policy ({setting})", destination(.host, *.port))]
pub struct EgressDenied {
    /// The host as the step gave it.
    pub host: String,
    /// The port, where the denial knows it (a reqwest resolver does not).
    pub port: Option<u16>,
    /// The policy's setting: `worker.egress` or `worker.egress_namespaces.<namespace>`.
    pub setting: String,
}

impl EgressDenied {
    /// The step error: `egress_denied`, not retryable.
    pub fn into_step_error(self) -> StepError {
        StepError::permanent(codes::EGRESS_DENIED, self.to_string())
    }
}

/// `host:port`, with IPv6 addresses in brackets.
pub(crate) fn destination(host: &str, port: Option<u16>) -> String {
    let bracketed = host.contains(':') && !host.starts_with('[');
    match (bracketed, port) {
        (true, Some(port)) => format!("[{host}]:{port}"),
        (false, Some(port)) => format!("{host}:{port}"),
        (_, None) => host.to_owned(),
    }
}

/// Why a destination has no address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The policy denies it.
    #[error(transparent)]
    Denied(#[from] EgressDenied),
    /// The name could not be resolved. Shown to steps as a connection failure, like any other.
    #[error("cannot connect to {}", destination(.host, Some(*.port)))]
    Lookup {
        host: String,
        port: u16,
        #[source]
        source: io::Error,
    },
}

impl ResolveError {
    /// The step error: `egress_denied`, or `code` (retryable) for a name that did not resolve.
    pub fn into_step_error(self, code: &str) -> StepError {
        match self {
            Self::Denied(denied) => denied.into_step_error(),
            lookup @ Self::Lookup { .. } => StepError::retryable(code, lookup.to_string()),
        }
    }
}

/// The worker's egress: its policy and the resolver that answers through it. Cheap to clone;
/// every executor that reaches the network holds one.
#[derive(Clone)]
pub struct Egress {
    policy: Arc<EgressPolicy>,
    lookup: Arc<dyn Lookup>,
}

impl fmt::Debug for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Egress")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Default for Egress {
    /// The production default policy with the system resolver.
    fn default() -> Self {
        Self::new(EgressPolicy::default())
    }
}

impl Egress {
    /// `policy` with the system resolver.
    pub fn new(policy: EgressPolicy) -> Self {
        Self::with_lookup(policy, Arc::new(SystemLookup))
    }

    /// `policy` with another resolver.
    pub fn with_lookup(policy: EgressPolicy, lookup: Arc<dyn Lookup>) -> Self {
        Self {
            policy: Arc::new(policy),
            lookup,
        }
    }

    /// What `rpaflow dev` uses: [`EgressPolicy::permissive`] with the system resolver.
    pub fn permissive() -> Self {
        Self::new(EgressPolicy::permissive())
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// The addresses a step may connect to for `host:port`: an address literal is checked as it
    /// is, a name is looked up and its addresses checked. Connect to these and no others.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let ips = self.resolve_ips(host).await.map_err(|err| match err {
            LookupFailed::Denied => self.denied(host, Some(port)).into(),
            LookupFailed::Io(source) => ResolveError::Lookup {
                host: host.to_owned(),
                port,
                source,
            },
        })?;
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// Checks an address literal (`10.0.0.5`, `[::1]`) without a lookup; `None` for a name.
    pub fn check_literal(&self, host: &str, port: u16) -> Option<Result<IpAddr, EgressDenied>> {
        let ip = parse_literal(host)?;
        Some(
            self.policy
                .check(host, &[ip])
                .map(|_| ip)
                .map_err(|_| self.denied(host, Some(port))),
        )
    }

    /// The denial of `host` (and `port`) by this policy.
    pub fn denied(&self, host: &str, port: Option<u16>) -> EgressDenied {
        EgressDenied {
            host: host.to_owned(),
            port,
            setting: self.policy.setting().to_owned(),
        }
    }

    async fn resolve_ips(&self, host: &str) -> Result<Vec<IpAddr>, LookupFailed> {
        let ips = match parse_literal(host) {
            Some(ip) => vec![ip],
            None => {
                // Host names are checked before they are looked up too: a denied name is not
                // even sent to DNS.
                if self.policy.denies_host(host) {
                    return Err(LookupFailed::Denied);
                }
                let ips = self.lookup.lookup(host).await.map_err(LookupFailed::Io)?;
                if ips.is_empty() {
                    return Err(LookupFailed::Io(io::Error::new(
                        io::ErrorKind::NotFound,
                        "the name has no address",
                    )));
                }
                ips
            }
        };
        self.policy
            .check(host, &ips)
            .map_err(|_| LookupFailed::Denied)
    }
}

enum LookupFailed {
    Denied,
    Io(io::Error),
}

/// An IP address literal, with or without IPv6 brackets.
fn parse_literal(host: &str) -> Option<IpAddr> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// The reqwest side: the `http` executor and `notify` webhooks resolve through the policy, so
/// hyper connects only to checked addresses. reqwest does not resolve address literals; those
/// are checked by [`Egress::check_url`] before a request and at every redirect.
impl reqwest::dns::Resolve for Egress {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.clone();
        Box::pin(async move {
            let host = name.as_str();
            match egress.resolve_ips(host).await {
                Ok(ips) => {
                    let addrs: reqwest::dns::Addrs =
                        Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
                    Ok(addrs)
                }
                Err(LookupFailed::Denied) => {
                    Err(Box::new(egress.denied(host, None))
                        as Box<dyn std::error::Error + Send + Sync>)
                }
                Err(LookupFailed::Io(err)) => Err(Box::new(err) as _),
            }
        })
    }
}

impl Egress {
    /// Checks a URL's host when it is an address literal (reqwest connects to those without
    /// asking the resolver); names are checked when they are resolved.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), EgressDenied> {
        let port = url.port_or_known_default().unwrap_or(0);
        match url.host_str() {
            Some(host) => self
                .check_literal(host, port)
                .map_or(Ok(()), |r| r.map(drop)),
            None => Ok(()),
        }
    }

    /// A redirect policy that follows at most `max` redirects and refuses any hop to a denied
    /// address literal (hops to names are checked by the resolver when they connect).
    pub fn redirect_policy(&self, max: usize) -> reqwest::redirect::Policy {
        let egress = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if let Err(denied) = egress.check_url(attempt.url()) {
                return attempt.error(denied);
            }
            if attempt.previous().len() >= max {
                return attempt.error(format!("too many redirects (more than {max})"));
            }
            attempt.follow()
        })
    }

    /// The [`EgressDenied`] somewhere in `err`'s causes, with the port of `url` when the
    /// resolver that denied did not know it.
    pub fn denied_in(
        err: &(dyn std::error::Error + 'static),
        url: Option<&reqwest::Url>,
    ) -> Option<EgressDenied> {
        let mut cause = Some(err);
        while let Some(current) = cause {
            if let Some(denied) = current.downcast_ref::<EgressDenied>() {
                let mut denied = denied.clone();
                if denied.port.is_none()
                    && let Some(url) = url
                    && url.host_str() == Some(denied.host.as_str())
                {
                    denied.port = url.port_or_known_default();
                }
                return Some(denied);
            }
            cause = current.source();
        }
        None
    }
}
