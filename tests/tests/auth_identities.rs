//! Client certificates and OIDC tokens as identities (issue 13): `rpaflow dev` with
//! authentication on, TLS with a client CA, `[[auth.client_certificates]]` entries and
//! `[auth.oidc]` with a JWKS file, all from a configuration file.
//!
//! - a mapped certificate calls what its role allows and is refused the rest;
//! - a certificate the CA signed but no entry names is UNAUTHENTICATED;
//! - a valid JWT names its caller (over a connection with that unmapped certificate: the bearer
//!   wins), an expired one or one of another issuer is UNAUTHENTICATED;
//! - a key added to the JWKS file is taken without a restart;
//! - the audit log names who made a change, and where the identity came from.
//!
//! Certificates come from `rcgen`; the issuer's ES256 keys and tokens from `ring`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rpaflow_tests::{Dev, pb};
use serde_json::{Value as Json, json};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TIMEOUT: Duration = Duration::from_secs(30);
const ISSUER: &str = "https://idp.example.test";
const AUDIENCE: &str = "rpaflow-e2e";

struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
}

/// A certificate's PEM files.
struct Issued {
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rpaflow-identities-")
            .tempdir()
            .expect("a temporary directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "identities test ca");
        let key = KeyPair::generate().expect("a ca key");
        let cert = params.self_signed(&key).expect("a ca certificate");
        Self {
            dir,
            ca_pem: cert.pem(),
            ca: Issuer::new(params, key),
        }
    }

    fn issue(&self, cn: &str) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.ca).expect("a certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a file");
        path
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// An OIDC issuer's ES256 signing key.
struct SigningKey {
    kid: String,
    key: EcdsaKeyPair,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("an ES256 key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("the key parses");
        Self {
            kid: kid.to_owned(),
            key,
        }
    }

    fn jwk(&self) -> Json {
        let point = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
               "x": b64(&point[1..33]), "y": b64(&point[33..])})
    }

    fn token(&self, claims: &Json) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), message.as_bytes())
            .expect("signing works");
        format!("{message}.{}", b64(signature.as_ref()))
    }
}

fn claims(sub: &str, role: &str) -> Json {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 600,
        "rpaflow_namespace": "default", "rpaflow_role": role, "email": format!("{sub}@example.test"),
    })
}

/// A gRPC connection to `dev` presenting `client`'s certificate.
async fn connect(dev: &Dev, pki: &Pki, client: &Issued) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .identity(Identity::from_pem(&client.cert_pem, &client.key_pem))
        .domain_name("localhost");
    Channel::from_shared(format!("https://localhost:{}", dev.addr().port()))
        .expect("a valid URI")
        .tls_config(tls)
        .expect("the client tls settings")
        .connect()
        .await
        .unwrap_or_else(|e| dev.fail(&format!("cannot connect over mTLS: {e:?}")))
}

fn request<T>(message: T, bearer: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = bearer {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ASCII"),
        );
    }
    request
}

/// ListRuns and StartRun (of a flow that does not exist: past authentication and authorization
/// that answers NOT_FOUND), as `bearer` on `channel`: their status codes.
async fn list_and_start(channel: &Channel, bearer: Option<&str>) -> (Code, Code) {
    let mut flows = pb::flow_service_client::FlowServiceClient::new(channel.clone());
    let list = flows
        .list_runs(request(pb::ListRunsRequest::default(), bearer))
        .await
        .map_or_else(|s| s.code(), |_| Code::Ok);
    let start = flows
        .start_run(request(
            pb::StartRunRequest {
                flow: "no-such-flow".into(),
                inputs_json: "{}".into(),
                ..pb::StartRunRequest::default()
            },
            bearer,
        ))
        .await
        .map_or_else(|s| s.code(), |_| Code::Ok);
    (list, start)
}

async fn who_am_i(channel: &Channel, bearer: Option<&str>) -> Result<pb::TokenInfo, tonic::Status> {
    pb::auth_service_client::AuthServiceClient::new(channel.clone())
        .who_am_i(request(pb::WhoAmIRequest::default(), bearer))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_and_oidc_tokens_name_callers_and_their_roles_hold() {
    let pki = Pki::new();
    let server = pki.issue("orchestrator");
    let viewer = pki.issue("ci-viewer");
    let operator = pki.issue("ci-operator");
    let admin = pki.issue("ops-admin");
    let unmapped = pki.issue("nobody-mapped-me");

    let first_key = SigningKey::new("key-1");
    let jwks_file = pki.write("jwks.json", &json!({"keys": [first_key.jwk()]}).to_string());
    let config = pki.write(
        "rpaflow.toml",
        &format!(
            r#"
[tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"

[[auth.client_certificates]]
subject_cn = "ci-viewer"
role = "viewer"

[[auth.client_certificates]]
subject_cn = "ci-operator"
namespace = "default"
role = "operator"
name = "ci operator bot"

[[auth.client_certificates]]
subject_cn = "ops-admin"
role = "admin"

[auth.oidc]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = "{jwks}"
name_claim = "email"
"#,
            cert = path(&pki.write("server.pem", &server.cert_pem)),
            key = path(&pki.write("server.key", &server.key_pem)),
            ca = path(&pki.write("ca.pem", &pki.ca_pem)),
            jwks = path(&jwks_file),
        ),
    );
    let dev = Dev::launch_env(
        &["--config", path(&config)],
        &[("RPAFLOW_AUTH__ENABLED", "true")],
    )
    .await;

    // A viewer's certificate reads and may not start runs; an operator's may.
    let as_viewer = connect(&dev, &pki, &viewer).await;
    assert_eq!(
        list_and_start(&as_viewer, None).await,
        (Code::Ok, Code::PermissionDenied)
    );
    let me = who_am_i(&as_viewer, None)
        .await
        .expect("who am i, as a viewer");
    assert_eq!(
        (me.name.as_str(), me.role.as_str(), me.namespace.as_str()),
        ("ci-viewer", "viewer", "default")
    );
    let as_operator = connect(&dev, &pki, &operator).await;
    assert_eq!(
        list_and_start(&as_operator, None).await,
        (Code::Ok, Code::NotFound)
    );

    // A certificate the CA signed that no entry names: refused like a bad token.
    let as_unmapped = connect(&dev, &pki, &unmapped).await;
    let refused = who_am_i(&as_unmapped, None)
        .await
        .expect_err("an unmapped certificate is refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let bad_token = who_am_i(&as_unmapped, Some("rpf_000000000000_nope"))
        .await
        .expect_err("a bad token is refused");
    assert_eq!(refused.message(), bad_token.message());
    assert_eq!(
        list_and_start(&as_unmapped, None).await,
        (Code::Unauthenticated, Code::Unauthenticated)
    );

    // An OIDC token names its caller, over the unmapped certificate's connection: the bearer
    // wins. Its role holds.
    let viewer_jwt = first_key.token(&claims("u-1", "viewer"));
    assert_eq!(
        list_and_start(&as_unmapped, Some(&viewer_jwt)).await,
        (Code::Ok, Code::PermissionDenied)
    );
    let operator_jwt = first_key.token(&claims("u-2", "operator"));
    assert_eq!(
        list_and_start(&as_unmapped, Some(&operator_jwt)).await,
        (Code::Ok, Code::NotFound)
    );
    let me = who_am_i(&as_unmapped, Some(&operator_jwt))
        .await
        .expect("who am i, with a JWT");
    assert_eq!(
        (me.name.as_str(), me.role.as_str()),
        ("u-2@example.test", "operator")
    );
    // A mapped certificate with a JWT: the token's role, not the certificate's.
    assert_eq!(
        list_and_start(&as_viewer, Some(&operator_jwt)).await,
        (Code::Ok, Code::NotFound)
    );

    // Expired, of another issuer or audience, without a role, of a namespace that does not
    // exist, tampered, or signed by a key the JWKS does not have: refused.
    let expired = first_key.token(&json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "u-3", "exp": now() - 3600,
        "rpaflow_namespace": "default", "rpaflow_role": "admin", "email": "u-3@example.test",
    }));
    let mut other_issuer = claims("u-4", "admin");
    other_issuer["iss"] = json!("https://evil.example.test");
    let mut other_audience = claims("u-5", "admin");
    other_audience["aud"] = json!("someone-else");
    let mut homeless = claims("u-9", "admin");
    homeless["rpaflow_namespace"] = json!("no-such-team");
    let mut no_role = claims("u-6", "admin");
    no_role
        .as_object_mut()
        .expect("an object")
        .remove("rpaflow_role");
    let (head, rest) = viewer_jwt.split_once('.').expect("a JWT");
    let (_, signature) = rest.split_once('.').expect("a JWT");
    let tampered = format!(
        "{head}.{}.{signature}",
        b64(claims("u-1", "admin").to_string().as_bytes())
    );
    for (what, token) in [
        ("expired", expired),
        ("other issuer", first_key.token(&other_issuer)),
        ("other audience", first_key.token(&other_audience)),
        ("no role", first_key.token(&no_role)),
        ("namespace that does not exist", first_key.token(&homeless)),
        ("tampered", tampered),
        (
            "unknown key",
            SigningKey::new("key-2").token(&claims("u-7", "admin")),
        ),
    ] {
        let err = who_am_i(&as_viewer, Some(&token)).await.expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        assert_eq!(err.message(), refused.message(), "{what}");
    }

    // The issuer adds a key: tokens signed with it are taken without a restart.
    let second_key = SigningKey::new("key-2");
    std::fs::write(
        &jwks_file,
        json!({"keys": [first_key.jwk(), second_key.jwk()]}).to_string(),
    )
    .expect("write the new jwks");
    let rotated = second_key.token(&claims("u-8", "viewer"));
    let deadline = Instant::now() + TIMEOUT;
    while who_am_i(&as_unmapped, Some(&rotated)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new key was never taken:\n{}",
            dev.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Changes are audited with who made them and where the identity came from (refused calls
    // change nothing and are not).
    let as_admin = connect(&dev, &pki, &admin).await;
    let audit = pb::auth_service_client::AuthServiceClient::new(as_admin)
        .list_audit(request(pb::ListAuditRequest::default(), None))
        .await
        .unwrap_or_else(|s| dev.fail(&format!("the admin certificate reads the audit log: {s:?}")))
        .into_inner();
    let starts: Vec<(&str, &str)> = audit
        .entries
        .iter()
        .filter(|e| e.method.ends_with("/StartRun"))
        .map(|e| (e.actor.as_str(), e.actor_token_id.as_str()))
        .collect();
    for expected in [
        ("ci operator bot", "cert:ci-operator"),
        ("u-2@example.test", "jwt:u-2"),
    ] {
        assert!(starts.contains(&expected), "{expected:?} not in {starts:?}");
    }
}

#[tokio::test]
async fn certificate_entries_without_a_client_ca_stop_the_start() {
    let pki = Pki::new();
    let server = pki.issue("orchestrator");
    let config = pki.write(
        "rpaflow.toml",
        &format!(
            r#"
[tls]
cert_file = "{cert}"
key_file = "{key}"

[[auth.client_certificates]]
subject_cn = "ci-viewer"
role = "viewer"
"#,
            cert = path(&pki.write("server.pem", &server.cert_pem)),
            key = path(&pki.write("server.key", &server.key_pem)),
        ),
    );
    let data = tempfile::tempdir().expect("a data directory");
    let out = rpaflow_tests::rpaflow_with_env(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--data",
            path(data.path()),
            "--keep-running",
            "--config",
            path(&config),
        ],
        &[("RPAFLOW_AUTH__ENABLED", "true")],
        TIMEOUT,
    )
    .await;
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("tls.client_ca_file"), "{out}");
}
