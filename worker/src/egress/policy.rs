//! The egress policy: which hosts and addresses steps may reach, as configured (`worker.egress`,
//! and `worker.egress_namespaces.<namespace>` for a namespace with a policy of its own).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The setting of the default policy, as messages name it.
pub const SETTING: &str = "worker.egress";
/// The setting that gives namespaces policies of their own, relative to `[worker]`.
pub const NAMESPACES_FIELD: &str = "egress_namespaces";

/// The egress policy as written in the worker's configuration (`[worker.egress]`,
/// `RPAFLOW_WORKER__EGRESS__ALLOW_PRIVATE=true`).
///
/// The default is safe for production: public addresses are reachable, private and special ones
/// (see [`is_private`]) and Unix sockets are not. `rpaflow dev` uses [`EgressConfig::permissive`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Reach private, loopback, link-local, unique-local, CGNAT, multicast and other non-public
    /// addresses (false by default).
    pub allow_private: bool,
    /// Reach public addresses that no allow entry names (true by default; false leaves only the
    /// allow lists).
    pub allow_public: bool,
    /// Host names steps may reach whatever they resolve to: `api.internal` or `*.corp.example`
    /// (any name under `corp.example`, not `corp.example` itself).
    pub allow_hosts: Vec<String>,
    /// Host names steps may never reach; these win over every allow entry.
    pub deny_hosts: Vec<String>,
    /// Address ranges steps may reach, private ones included (`10.1.2.0/24`, `fd00::/8`).
    pub allow_cidrs: Vec<IpNet>,
    /// Address ranges steps may never reach; these win over every allow entry.
    pub deny_cidrs: Vec<IpNet>,
    /// Let `sql` steps connect over Unix sockets (`host=/var/run/postgresql`); false by default.
    pub allow_unix_sockets: bool,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            allow_public: true,
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            allow_unix_sockets: false,
        }
    }
}

impl EgressConfig {
    /// What `rpaflow dev` uses: private addresses allowed too, so flows reach services on the
    /// developer's machine without configuration. Unix sockets stay refused.
    pub fn permissive() -> Self {
        Self {
            allow_private: true,
            ..Self::default()
        }
    }
}

/// A host name pattern: an exact name, or `*.suffix` for every name under `suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `.corp.example`.
    Under(String),
}

impl HostPattern {
    fn parse(field: &str, text: &str) -> Result<Self, Error> {
        let name = normalize_host(text);
        let invalid = |why: &str| Error::Config {
            field: field.to_owned().into(),
            message: format!("holds `{text}`, which {why}"),
        };
        let (pattern, rest) = match name.strip_prefix("*.") {
            Some(rest) => (Self::Under(format!(".{rest}")), rest),
            None => (Self::Exact(name.clone()), name.as_str()),
        };
        if rest.is_empty() {
            return Err(invalid("is empty"));
        }
        if rest.contains('*') {
            return Err(invalid(
                "is not a host name or `*.suffix` (a `*` may only start it)",
            ));
        }
        if rest
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | '@' | ':'))
        {
            return Err(invalid(
                "is not a host name (use the CIDR lists for addresses)",
            ));
        }
        Ok(pattern)
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => name == host,
            Self::Under(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

/// A host as patterns see it: lowercase, without a trailing dot or IPv6 brackets.
fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The checked form of [`EgressConfig`]: decides, for a host and each address it resolved to,
/// whether a step may connect.
///
/// Rules, in order, for a host `H` and an address `A` (an IPv4-mapped IPv6 address counts as its
/// IPv4 address):
/// 1. `H` matches `deny_hosts` or `A` is in `deny_cidrs`: denied.
/// 2. `H` matches `allow_hosts` or `A` is in `allow_cidrs`: allowed, private or not.
/// 3. `A` is private or special ([`is_private`]): allowed only with `allow_private`.
/// 4. Otherwise `A` is public: allowed unless `allow_public` is false.
///
/// A policy is plain data, cheap to share; each namespace with a policy of its own has another
/// value of it (see [`EgressPolicies`]).
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    /// Where it is configured, as messages name it: `worker.egress`, or
    /// `worker.egress_namespaces.<namespace>`.
    setting: String,
    allow_private: bool,
    allow_public: bool,
    allow_hosts: Vec<HostPattern>,
    deny_hosts: Vec<HostPattern>,
    allow_cidrs: Vec<IpNet>,
    deny_cidrs: Vec<IpNet>,
    allow_unix_sockets: bool,
}

impl Default for EgressPolicy {
    /// The production default: public addresses only.
    fn default() -> Self {
        Self::from_defaults(&EgressConfig::default())
    }
}

impl EgressPolicy {
    /// The default policy `config` describes (`worker.egress`); fails on a host pattern that is
    /// not one.
    pub fn new(config: &EgressConfig) -> Result<Self, Error> {
        Self::configured("egress".to_owned(), config)
    }

    /// The policy of `namespace` alone (`worker.egress_namespaces.<namespace>`); fails on a host
    /// pattern that is not one, or on a name that cannot be a namespace's.
    pub fn for_namespace(namespace: &str, config: &EgressConfig) -> Result<Self, Error> {
        let key = format!("{NAMESPACES_FIELD}.{namespace}");
        if !rpaflow_core::namespace::valid(namespace) {
            // Variables cannot spell `-` (`RPAFLOW_WORKER__EGRESS_NAMESPACES__TEAM_A__...` reads
            // as `team_a`): say where such a name can be written.
            let hint = if namespace.contains('_') {
                "; a name with `-` can only be written in the configuration file"
            } else {
                ""
            };
            return Err(Error::Config {
                field: key.into(),
                message: format!(
                    "does not name a namespace (1 to {} lowercase letters, digits and `-`, \
                     starting with a letter and not ending with `-`{hint})",
                    rpaflow_core::namespace::MAX_LEN
                ),
            });
        }
        Self::configured(key, config)
    }

    /// The policy `config` describes, configured at `[worker.<key>]`.
    fn configured(key: String, config: &EgressConfig) -> Result<Self, Error> {
        let patterns = |field: &str, list: &[String]| {
            let field = format!("{key}.{field}");
            list.iter()
                .map(|text| HostPattern::parse(&field, text))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            allow_hosts: patterns("allow_hosts", &config.allow_hosts)?,
            deny_hosts: patterns("deny_hosts", &config.deny_hosts)?,
            allow_cidrs: config.allow_cidrs.iter().map(canonical_net).collect(),
            deny_cidrs: config.deny_cidrs.iter().map(canonical_net).collect(),
            setting: format!("worker.{key}"),
            ..Self::from_defaults(config)
        })
    }

    /// A default policy of booleans only (host lists empty), which cannot fail.
    fn from_defaults(config: &EgressConfig) -> Self {
        Self {
            setting: SETTING.to_owned(),
            allow_private: config.allow_private,
            allow_public: config.allow_public,
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            allow_unix_sockets: config.allow_unix_sockets,
        }
    }

    /// The policy of `rpaflow dev`: see [`EgressConfig::permissive`].
    pub fn permissive() -> Self {
        Self::from_defaults(&EgressConfig::permissive())
    }

    /// The addresses of `addrs` that a step may connect to as `host`, in their order; a denial
    /// when none is left. `host` is the name the step gave (or the address, for a literal).
    pub fn check(&self, host: &str, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, Denied> {
        let host = normalize_host(host);
        let allowed: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|addr| self.allows(&host, *addr))
            .collect();
        if allowed.is_empty() {
            tracing::debug!(host = %host, addrs = ?addrs, "egress denied");
            return Err(Denied);
        }
        Ok(allowed)
    }

    /// Whether `host` is denied by name, whatever it resolves to (checked before a look-up).
    pub fn denies_host(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.deny_hosts.iter().any(|p| p.matches(&host))
    }

    /// Where the policy is configured, as messages name it: `worker.egress`, or
    /// `worker.egress_namespaces.<namespace>`.
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// Whether `sql` steps may use Unix sockets.
    pub fn allows_unix_sockets(&self) -> bool {
        self.allow_unix_sockets
    }

    fn allows(&self, host: &str, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        if self.deny_hosts.iter().any(|p| p.matches(host))
            || self.deny_cidrs.iter().any(|net| net.contains(&addr))
        {
            return false;
        }
        if self.allow_hosts.iter().any(|p| p.matches(host))
            || self.allow_cidrs.iter().any(|net| net.contains(&addr))
        {
            return true;
        }
        if is_private(addr) {
            self.allow_private
        } else {
            self.allow_public
        }
    }
}

/// The policy said no. Callers turn it into an [`EgressDenied`](super::EgressDenied) that names
/// the destination and the policy's setting; which rule decided is logged at debug level only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied;

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "denied by the worker's egress policy")
    }
}

/// Every policy of a worker, checked: the default one (`worker.egress`), which applies to each
/// namespace without a policy of its own, and those of the namespaces with one
/// (`worker.egress_namespaces.<namespace>`), each complete in itself: nothing of the default is
/// merged into it. [`Registry::get_for`](crate::Registry::get_for) applies them.
#[derive(Debug, Clone)]
pub struct EgressPolicies {
    pub default: EgressPolicy,
    /// By namespace name; the `default` namespace may be one of them.
    pub namespaces: BTreeMap<String, EgressPolicy>,
}

impl EgressPolicies {
    /// Checks every policy and namespace name; the error names the setting at fault.
    pub fn new(
        default: &EgressConfig,
        namespaces: &BTreeMap<String, EgressConfig>,
    ) -> Result<Self, Error> {
        Ok(Self {
            default: EgressPolicy::new(default)?,
            namespaces: namespaces
                .iter()
                .map(|(namespace, config)| {
                    Ok((
                        namespace.clone(),
                        EgressPolicy::for_namespace(namespace, config)?,
                    ))
                })
                .collect::<Result<_, Error>>()?,
        })
    }
}

/// A task's namespace as configuration names it: an empty one is `default`.
pub fn canonical_namespace(namespace: &str) -> &str {
    if namespace.is_empty() {
        rpaflow_core::namespace::DEFAULT
    } else {
        namespace
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) as its IPv4 address; others as they are.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A configured range in the same form: `::ffff:10.0.0.0/104` as `10.0.0.0/8`.
fn canonical_net(net: &IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(mapped) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(mapped);
    }
    *net
}

/// IPv4 ranges that are not the public internet.
const PRIVATE_V4: [(Ipv4Addr, u8); 14] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network", unspecified
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // shared address space (CGNAT)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, cloud metadata (169.254.169.254)
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation
    (Ipv4Addr::new(224, 0, 0, 0), 3),     // multicast, reserved, broadcast (224/4 and 240/4)
];

/// IPv6 ranges that are not the public internet (IPv4-mapped addresses are checked as IPv4).
const PRIVATE_V6: [(Ipv6Addr, u8); 10] = [
    (Ipv6Addr::UNSPECIFIED, 96), // unspecified, loopback, IPv4-compatible (deprecated)
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use NAT64
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard-only
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32), // Teredo
    (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48), // benchmarking
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// True for every address that is not a public unicast one: private (RFC 1918), loopback,
/// link-local (cloud metadata services live there), unique-local, unspecified, multicast,
/// broadcast, CGNAT, documentation, benchmarking and reserved ranges, in IPv4 and IPv6, and the
/// IPv6 forms that carry such an IPv4 address: IPv4-mapped (`::ffff:127.0.0.1`), NAT64
/// (`64:ff9b::7f00:1`) and 6to4 (`2002:7f00:1::`).
pub fn is_private(addr: IpAddr) -> bool {
    match canonical(addr) {
        IpAddr::V4(v4) => PRIVATE_V4.iter().any(|(net, len)| in_v4(v4, *net, *len)),
        IpAddr::V6(v6) => {
            if let Some(embedded) = embedded_v4(v6) {
                return is_private(IpAddr::V4(embedded));
            }
            PRIVATE_V6
                .iter()
                .any(|(net, len)| Ipv6Net::new(*net, *len).is_ok_and(|range| range.contains(&v6)))
        }
    }
}

fn in_v4(addr: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    Ipv4Net::new(net, len).is_ok_and(|range| range.contains(&addr))
}

/// The IPv4 address a NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address leads to.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let octets = v6.octets();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(
            octets[12], octets[13], octets[14], octets[15],
        ));
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn policy(config: EgressConfig) -> EgressPolicy {
        EgressPolicy::new(&config).unwrap()
    }

    fn allows(policy: &EgressPolicy, host: &str, addr: &str) -> bool {
        policy.check(host, &[ip(addr)]).is_ok()
    }

    #[test]
    fn the_default_denies_every_non_public_range() {
        let policy = EgressPolicy::default();
        for addr in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.5",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.7",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.5",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:5",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(is_private(ip(addr)), "{addr} counts as private");
            assert_eq!(
                policy.check("host.example", &[ip(addr)]),
                Err(Denied),
                "{addr} is denied by default"
            );
        }
    }

    #[test]
    fn the_default_allows_public_addresses() {
        let policy = EgressPolicy::default();
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!is_private(ip(addr)), "{addr} is public");
            assert!(allows(&policy, "host.example", addr), "{addr} is allowed");
        }
    }

    #[test]
    fn permissive_allows_private_ranges() {
        let policy = EgressPolicy::permissive();
        assert!(allows(&policy, "localhost", "127.0.0.1"));
        assert!(allows(&policy, "localhost", "::1"));
        assert!(allows(&policy, "db", "10.0.0.5"));
        assert!(!policy.allows_unix_sockets());
    }

    #[test]
    fn of_several_addresses_only_the_allowed_are_kept() {
        let policy = EgressPolicy::default();
        let kept = policy
            .check(
                "mixed.example",
                &[ip("127.0.0.1"), ip("8.8.8.8"), ip("10.1.1.1")],
            )
            .unwrap();
        assert_eq!(kept, [ip("8.8.8.8")]);
    }

    #[test]
    fn an_allow_entry_opens_a_private_range() {
        let policy = policy(EgressConfig {
            allow_hosts: vec!["billing.internal".into(), "*.corp.example".into()],
            allow_cidrs: vec!["10.1.2.0/24".parse().unwrap()],
            ..EgressConfig::default()
        });
        assert!(allows(&policy, "billing.internal", "10.9.9.9"));
        assert!(allows(&policy, "BILLING.internal.", "10.9.9.9"));
        assert!(allows(&policy, "crm.corp.example", "192.168.0.4"));
        assert!(allows(&policy, "a.b.corp.example", "127.0.0.1"));
        // `*.corp.example` is the names under it, not itself nor look-alikes.
        assert!(!allows(&policy, "corp.example", "192.168.0.4"));
        assert!(!allows(&policy, "evilcorp.example", "192.168.0.4"));
        assert!(allows(&policy, "anything", "10.1.2.3"));
        assert!(allows(&policy, "anything", "::ffff:10.1.2.3"));
        assert!(!allows(&policy, "anything", "10.1.3.1"));
        assert!(!allows(&policy, "billing.internal.evil", "10.9.9.9"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let policy = policy(EgressConfig {
            allow_private: true,
            allow_hosts: vec!["*.corp.example".into()],
            deny_hosts: vec!["secret.corp.example".into(), "*.blocked.example".into()],
            allow_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            deny_cidrs: vec![
                "10.0.0.0/24".parse().unwrap(),
                "93.184.216.0/24".parse().unwrap(),
                "::ffff:192.168.7.0/120".parse().unwrap(),
            ],
            ..EgressConfig::default()
        });
        assert!(allows(&policy, "crm.corp.example", "10.0.1.1"));
        assert!(!allows(&policy, "secret.corp.example", "10.0.1.1"));
        assert!(!allows(&policy, "crm.corp.example", "10.0.0.9"));
        assert!(!allows(&policy, "crm.corp.example", "::ffff:10.0.0.9"));
        assert!(!allows(&policy, "x.blocked.example", "8.8.8.8"));
        assert!(!allows(&policy, "public.example", "93.184.216.34"));
        assert!(!allows(&policy, "lan", "192.168.7.1"));
        assert!(allows(&policy, "lan", "192.168.8.1"));
    }

    #[test]
    fn without_public_egress_only_allow_entries_pass() {
        let policy = policy(EgressConfig {
            allow_public: false,
            allow_hosts: vec!["api.partner.example".into()],
            ..EgressConfig::default()
        });
        assert!(allows(&policy, "api.partner.example", "8.8.8.8"));
        assert!(!allows(&policy, "other.example", "8.8.8.8"));
        assert!(!allows(&policy, "other.example", "127.0.0.1"));
    }

    #[test]
    fn bad_host_patterns_are_configuration_errors() {
        for bad in [
            "",
            "*.",
            "a.*.example",
            "10.0.0.0/8",
            "user@host",
            "host:80",
        ] {
            let err = EgressPolicy::new(&EgressConfig {
                deny_hosts: vec![bad.into()],
                ..EgressConfig::default()
            })
            .unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("invalid worker configuration: `egress.deny_hosts`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_policy_names_its_setting_and_a_namespace_policy_its_namespace() {
        assert_eq!(EgressPolicy::default().setting(), "worker.egress");
        let config = EgressConfig::default();
        assert_eq!(
            EgressPolicy::new(&config).unwrap().setting(),
            "worker.egress"
        );
        let team_a = EgressPolicy::for_namespace("team-a", &config).unwrap();
        assert_eq!(team_a.setting(), "worker.egress_namespaces.team-a");
        let err = EgressPolicy::for_namespace(
            "team-a",
            &EgressConfig {
                deny_hosts: vec!["*".into()],
                ..EgressConfig::default()
            },
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid worker configuration: `egress_namespaces.team-a.deny_hosts`"),
            "{err}"
        );
        for bad in ["", "Team-A", "team-", "a/b", "team_a"] {
            let err = EgressPolicy::for_namespace(bad, &config).unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "`egress_namespaces.{bad}` does not name a namespace"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn the_configuration_reads_cidrs_and_names() {
        let config: EgressConfig = serde_json::from_value(serde_json::json!({
            "allow_cidrs": ["10.1.0.0/16", "fd00::/8"],
            "deny_hosts": ["metadata.google.internal"],
        }))
        .unwrap();
        assert!(!config.allow_private && config.allow_public && !config.allow_unix_sockets);
        assert_eq!(config.allow_cidrs.len(), 2);
        assert!(
            serde_json::from_value::<EgressConfig>(serde_json::json!({"allow_cidrs": ["10.1"]}))
                .is_err()
        );
    }
}
