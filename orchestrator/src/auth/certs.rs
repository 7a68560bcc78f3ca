//! Client certificates as identities (`[[auth.client_certificates]]`): with `tls.client_ca_file`
//! every gRPC client presents a certificate the CA signed; a call without an `authorization`
//! header is the identity the first matching entry gives that certificate.
//!
//! An entry matches on exactly one name of the certificate: the subject's common name
//! (`subject_cn`; a subject with several CNs matches none), a DNS name (`dns_name`, any case) or
//! a URI (`uri`, e.g. a SPIFFE ID) among its subject alternative names. A certificate no entry
//! matches is refused like a bad token.

use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;

use super::{DEFAULT_NAMESPACE, Identity, Role};

/// One `[[auth.client_certificates]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateMapping {
    /// Matches the certificate whose subject's common name is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_cn: Option<String>,
    /// Matches a certificate with this DNS subject alternative name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// Matches a certificate with this URI subject alternative name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The identity's namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The identity's role.
    pub role: String,
    /// The identity's name (audit log, approvals); the matched name when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.into()
}

impl CertificateMapping {
    /// Refuses an entry that matches nothing or several ways, or grants an unknown role.
    pub fn validate(&self) -> Result<(), String> {
        let names = [&self.subject_cn, &self.dns_name, &self.uri];
        if names.iter().filter(|n| n.is_some()).count() != 1 {
            return Err(
                "each auth.client_certificates entry needs exactly one of subject_cn, dns_name, uri"
                    .into(),
            );
        }
        if names
            .iter()
            .flat_map(|n| n.as_deref())
            .any(|n| n.trim().is_empty())
        {
            return Err("an auth.client_certificates name must not be empty".into());
        }
        if Role::parse(&self.role).is_none() {
            return Err(format!(
                "auth.client_certificates: unknown role `{}`",
                self.role
            ));
        }
        if !rpaflow_core::namespace::valid(&self.namespace) {
            return Err(format!(
                "auth.client_certificates: `{}` is not a namespace name",
                self.namespace
            ));
        }
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err("auth.client_certificates: a name must not be empty".into());
        }
        Ok(())
    }

    /// The name of `cert` this entry matches, if any.
    fn matched<'a>(&self, cert: &Names<'a>) -> Option<&'a str> {
        if let Some(cn) = &self.subject_cn {
            return cert.common_name.filter(|c| c == cn);
        }
        if let Some(dns) = &self.dns_name {
            return cert
                .dns_names
                .iter()
                .copied()
                .find(|d| d.eq_ignore_ascii_case(dns));
        }
        if let Some(uri) = &self.uri {
            return cert.uris.iter().copied().find(|u| u == uri);
        }
        None
    }
}

/// Why a certificate names no one; the caller learns none of it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateRefused {
    #[error("the client certificate cannot be read")]
    Unreadable,
    #[error("no auth.client_certificates entry matches the client certificate")]
    NoMatch,
    #[error("unknown role `{role}`")]
    UnknownRole { role: String },
}

/// The names a certificate carries.
#[derive(Debug, Default)]
struct Names<'a> {
    /// The subject's common name, when it has exactly one.
    common_name: Option<&'a str>,
    dns_names: Vec<&'a str>,
    uris: Vec<&'a str>,
}

/// The identity of the certificate `der` (verified by the TLS layer), by the first entry of
/// `mappings` that matches it.
pub fn identify(
    mappings: &[CertificateMapping],
    der: &[u8],
) -> Result<Identity, CertificateRefused> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| CertificateRefused::Unreadable)?;
    let mut names = Names::default();
    let mut cns = cert.subject().iter_common_name();
    if let (Some(cn), None) = (cns.next(), cns.next()) {
        names.common_name = cn.as_str().ok();
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.dns_names.push(dns),
                GeneralName::URI(uri) => names.uris.push(uri),
                _ => {}
            }
        }
    }
    let (mapping, matched) = mappings
        .iter()
        .find_map(|m| m.matched(&names).map(|n| (m, n)))
        .ok_or(CertificateRefused::NoMatch)?;
    let role = Role::parse(&mapping.role).ok_or_else(|| CertificateRefused::UnknownRole {
        role: mapping.role.clone(),
    })?;
    Ok(Identity::external(
        mapping.name.as_deref().unwrap_or(matched),
        &format!("cert:{matched}"),
        &mapping.namespace,
        role,
    ))
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    fn cert(cns: &[&str], sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        for cn in cns {
            params.distinguished_name.push(DnType::CommonName, *cn);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn entry(toml_like: serde_json::Value) -> CertificateMapping {
        let entry: CertificateMapping = serde_json::from_value(toml_like).unwrap();
        entry.validate().unwrap();
        entry
    }

    #[test]
    fn certificates_map_by_common_name_dns_name_or_uri() {
        let mappings = [
            entry(
                serde_json::json!({"subject_cn": "ci-bot", "namespace": "team-a", "role": "operator"}),
            ),
            entry(
                serde_json::json!({"dns_name": "robot.example", "role": "viewer", "name": "robots"}),
            ),
            entry(serde_json::json!({"uri": "spiffe://rpaflow/worker", "role": "approver"})),
        ];
        let who = identify(&mappings, &cert(&["ci-bot"], vec![])).unwrap();
        assert_eq!(
            (
                who.name.as_str(),
                who.token_id.as_str(),
                who.namespace.as_str(),
                who.role
            ),
            ("ci-bot", "cert:ci-bot", "team-a", Role::Operator)
        );
        let dns = SanType::DnsName("Robot.Example".try_into().unwrap());
        let who = identify(&mappings, &cert(&["anything"], vec![dns])).unwrap();
        assert_eq!(
            (
                who.name.as_str(),
                who.token_id.as_str(),
                who.namespace.as_str(),
                who.role
            ),
            ("robots", "cert:Robot.Example", "default", Role::Viewer)
        );
        let uri = SanType::URI("spiffe://rpaflow/worker".try_into().unwrap());
        let who = identify(&mappings, &cert(&[], vec![uri])).unwrap();
        assert_eq!(who.role, Role::Approver);
        assert_eq!(who.token_id, "cert:spiffe://rpaflow/worker");
    }

    #[test]
    fn a_certificate_no_entry_names_is_refused() {
        let mappings = [entry(
            serde_json::json!({"subject_cn": "ci-bot", "role": "admin"}),
        )];
        for der in [
            cert(&["ci-bot-2"], vec![]),
            cert(&["CI-BOT"], vec![]),
            // A DNS name equal to the CN does not match a CN entry.
            cert(
                &["other"],
                vec![SanType::DnsName("ci-bot".try_into().unwrap())],
            ),
            // Two common names: which one counts is not guessed.
            cert(&["ci-bot", "admin"], vec![]),
        ] {
            assert_eq!(
                identify(&mappings, &der).unwrap_err(),
                CertificateRefused::NoMatch
            );
        }
        assert_eq!(
            identify(&[], &cert(&["ci-bot"], vec![])).unwrap_err(),
            CertificateRefused::NoMatch
        );
        assert_eq!(
            identify(&mappings, b"not a certificate").unwrap_err(),
            CertificateRefused::Unreadable
        );
    }

    #[test]
    fn entries_that_match_nothing_or_grant_an_unknown_role_are_refused() {
        let bad = [
            serde_json::json!({"role": "admin"}),
            serde_json::json!({"subject_cn": "a", "uri": "spiffe://x", "role": "admin"}),
            serde_json::json!({"subject_cn": " ", "role": "admin"}),
            serde_json::json!({"subject_cn": "a", "role": "root"}),
            serde_json::json!({"subject_cn": "a", "role": "admin", "namespace": ""}),
            serde_json::json!({"subject_cn": "a", "role": "admin", "namespace": "Team A"}),
            serde_json::json!({"subject_cn": "a", "role": "admin", "name": " "}),
        ];
        for entry in bad {
            let parsed: CertificateMapping = serde_json::from_value(entry.clone()).unwrap();
            assert!(parsed.validate().is_err(), "{entry}");
        }
        let unknown_field = serde_json::from_value::<CertificateMapping>(
            serde_json::json!({"cn": "a", "role": "admin"}),
        );
        assert!(unknown_field.is_err());
    }
}
