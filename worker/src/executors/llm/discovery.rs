//! Which nodes there are: every configured endpoint is a name (or an address) and a port; each
//! name is resolved again every `refresh` (a Kubernetes headless Service resolves to one address
//! per ready pod), nodes that appear are watched and those that disappear are dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::balancer::Balancer;
use super::node::{Node, Timings};

/// A configured endpoint: `http://host:port`, `host:port` or `[v6]:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Reads `endpoint`, saying what is wrong with it.
    pub fn parse(endpoint: &str) -> Result<Self, String> {
        let trimmed = endpoint.trim();
        let rest = match trimmed.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "`{trimmed}`: the scheme must be http (or none), not {scheme}"
                ));
            }
            None => trimmed,
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(format!("`{trimmed}`: no path is allowed, only host:port"));
        }
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("`{trimmed}`: a port is required (host:port)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{trimmed}`: `{port}` is not a port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(format!("`{trimmed}`: a host and a port are required"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Keeps the balancer's nodes in step with what the targets resolve to.
#[derive(Debug)]
pub(super) struct Discovery {
    pub targets: Vec<Target>,
    pub refresh: Duration,
    pub timings: Timings,
    pub balancer: Arc<Balancer>,
    /// What each target resolved to last: kept when a lookup fails, so that a DNS hiccup does
    /// not take nodes away.
    last: BTreeMap<Target, BTreeSet<SocketAddr>>,
}

impl Discovery {
    pub fn new(
        targets: Vec<Target>,
        refresh: Duration,
        timings: Timings,
        balancer: Arc<Balancer>,
    ) -> Self {
        Self {
            targets,
            refresh,
            timings,
            balancer,
            last: BTreeMap::new(),
        }
    }

    /// Resolves every target once and updates the nodes: new ones are watched (until `stop`).
    pub async fn resolve(&mut self, stop: &CancellationToken) {
        for target in &self.targets {
            match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
                Ok(addrs) => {
                    self.last.insert(target.clone(), addrs.collect());
                }
                Err(e) => {
                    warn!(target = %target, error = %e, "cannot resolve an inference endpoint; keeping its nodes");
                }
            }
        }
        let addrs: BTreeSet<SocketAddr> = self.last.values().flatten().copied().collect();
        let timings = self.timings;
        let (added, removed) = self.balancer.update(&addrs, |a| Node::new(a, timings));
        for node in removed {
            info!(node = %node.addr, "inference node gone from the endpoints");
            node.stop();
        }
        for node in added {
            info!(node = %node.addr, "inference node found");
            let stop = stop.clone();
            tokio::spawn(async move {
                let watch = node.clone().watch();
                tokio::select! {
                    () = stop.cancelled() => node.stop(),
                    () = watch => {}
                }
            });
        }
    }

    /// Resolves again every `refresh` until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.refresh) => {}
            }
            self.resolve(&stop).await;
        }
        for node in self.balancer.nodes() {
            node.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_with_or_without_a_scheme() {
        let t = Target::parse("http://inference.ml.svc:50061").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("inference.ml.svc", 50061));
        let t = Target::parse(" 127.0.0.1:9 ").unwrap();
        assert_eq!(t.to_string(), "127.0.0.1:9");
        let t = Target::parse("http://[::1]:7/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.to_string()),
            ("::1", "[::1]:7".to_owned())
        );
        for bad in ["https://a:1", "a", "a:x", "http://a:1/path", ":5", "a:0"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
