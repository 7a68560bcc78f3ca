//! Tokens signed here with `ring` keys, checked against a JWKS file in a temporary directory.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::json;

use super::*;

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "rpaflow";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    rpaflow_core::time::now_ms() / 1000
}

/// A signing key of the test issuer and its JWK.
enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl Signer {
    fn ec() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Signer::Ec(
            EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
        )
    }

    fn rsa() -> Self {
        let der = base64::engine::general_purpose::STANDARD
            .decode(
                RSA_TEST_KEY
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        Signer::Rsa(RsaKeyPair::from_pkcs8(&der).unwrap())
    }

    fn jwk(&self, kid: &str) -> Json {
        match self {
            Signer::Ec(key) => {
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                       "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            Signer::Rsa(key) => {
                let public = sig::RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
                json!({"kty": "RSA", "kid": kid, "alg": "RS256",
                       "n": b64(&public.n), "e": b64(&public.e)})
            }
        }
    }

    fn sign(&self, kid: &str, claims: &Json) -> String {
        let alg = match self {
            Signer::Ec(_) => "ES256",
            Signer::Rsa(_) => "RS256",
        };
        let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match self {
            Signer::Ec(key) => key
                .sign(&rng, message.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            Signer::Rsa(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(&sig::RSA_PKCS1_SHA256, &rng, message.as_bytes(), &mut out)
                    .unwrap();
                out
            }
        };
        format!("{message}.{}", b64(&signature))
    }
}

fn claims() -> Json {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "u-42", "exp": now() + 600,
        "nbf": now() - 10, "rpaflow_namespace": "default", "rpaflow_role": "operator",
    })
}

fn with(mut claims: Json, key: &str, value: Json) -> Json {
    claims[key] = value;
    claims
}

fn without(mut claims: Json, key: &str) -> Json {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

struct Issuer {
    dir: tempfile::TempDir,
    verifier: OidcVerifier,
}

impl Issuer {
    fn new(jwks: &Json) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, jwks.to_string()).unwrap();
        let config = OidcConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks_file,
            namespace_claim: default_namespace_claim(),
            role_claim: default_role_claim(),
            name_claim: default_name_claim(),
            leeway: default_leeway(),
        };
        config.validate().unwrap();
        Self {
            dir,
            verifier: OidcVerifier::new(config),
        }
    }
}

#[test]
fn a_valid_token_names_its_caller_and_every_flaw_refuses_it() {
    let ec = Signer::ec();
    let rsa = Signer::rsa();
    let other = Signer::ec();
    let issuer = Issuer::new(&json!({"keys": [ec.jwk("ec-1"), rsa.jwk("rsa-1")]}));
    let verify = |token: &str| issuer.verifier.verify(token);

    for (signer, kid) in [(&ec, "ec-1"), (&rsa, "rsa-1")] {
        let who = verify(&signer.sign(kid, &claims())).unwrap();
        assert_eq!(who.name, "u-42");
        assert_eq!(who.token_id, "jwt:u-42");
        assert_eq!(who.namespace, "default");
        assert_eq!(who.role, Role::Operator);
    }
    // Audience as a list including ours.
    let listed = with(claims(), "aud", json!(["other", AUDIENCE]));
    assert!(verify(&ec.sign("ec-1", &listed)).is_ok());

    let refused = |token: String| verify(&token).unwrap_err();
    let invalid = |token: String| match refused(token) {
        TokenRefused::Invalid(err) => err.into_kind(),
        other => panic!("expected a failed verification, got {other:?}"),
    };
    use jsonwebtoken::errors::ErrorKind;
    // Expired beyond the leeway; within it is fine.
    let expired = with(claims(), "exp", json!(now() - 120));
    assert!(matches!(
        invalid(ec.sign("ec-1", &expired)),
        ErrorKind::ExpiredSignature
    ));
    assert!(verify(&ec.sign("ec-1", &with(claims(), "exp", json!(now() - 5)))).is_ok());
    // Not valid yet.
    let early = with(claims(), "nbf", json!(now() + 600));
    assert!(matches!(
        invalid(ec.sign("ec-1", &early)),
        ErrorKind::ImmatureSignature
    ));
    // A claim of the wrong type is not taken for an absent one.
    let string_nbf = with(claims(), "nbf", json!((now() + 600).to_string()));
    assert!(verify(&ec.sign("ec-1", &string_nbf)).is_err());
    let wrong_issuer = with(claims(), "iss", json!("https://evil.example"));
    assert!(matches!(
        invalid(ec.sign("ec-1", &wrong_issuer)),
        ErrorKind::InvalidIssuer
    ));
    let wrong_audience = with(claims(), "aud", json!("someone-else"));
    assert!(matches!(
        invalid(ec.sign("ec-1", &wrong_audience)),
        ErrorKind::InvalidAudience
    ));
    for claim in ["exp", "iss", "aud"] {
        let missing = without(claims(), claim);
        assert!(
            matches!(invalid(ec.sign("ec-1", &missing)), ErrorKind::MissingRequiredClaim(c) if c == claim),
            "{claim}"
        );
    }
    // A key the JWKS does not have, and a token naming none.
    assert!(matches!(
        refused(other.sign("other", &claims())),
        TokenRefused::UnknownKey { kid } if kid == "other"
    ));
    // Signed by another key under a known id.
    assert!(matches!(
        invalid(other.sign("ec-1", &claims())),
        ErrorKind::InvalidSignature
    ));
    // Tampered: the claims changed after signing.
    let token = ec.sign("ec-1", &claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64(with(claims(), "rpaflow_role", json!("admin"))
        .to_string()
        .as_bytes());
    parts[1] = &forged;
    assert!(matches!(
        invalid(parts.join(".")),
        ErrorKind::InvalidSignature
    ));
    // An RSA key used under the ES256 algorithm, and HMAC with the public key as secret.
    assert!(matches!(
        refused(ec.sign("rsa-1", &claims())),
        TokenRefused::Algorithm { .. }
    ));
    let header = b64(json!({"alg": "HS256", "kid": "rsa-1"})
        .to_string()
        .as_bytes());
    let body = b64(claims().to_string().as_bytes());
    assert!(matches!(
        refused(format!("{header}.{body}.c2ln")),
        TokenRefused::Algorithm { .. }
    ));
    let no_kid = b64(json!({"alg": "ES256"}).to_string().as_bytes());
    assert!(matches!(
        refused(format!("{no_kid}.{body}.c2ln")),
        TokenRefused::NoKeyId
    ));
    assert!(matches!(
        refused("rpf_nonsense".into()),
        TokenRefused::Malformed(_)
    ));
    // The claims that name the caller.
    let no_role = without(claims(), "rpaflow_role");
    assert!(matches!(
        refused(ec.sign("ec-1", &no_role)),
        TokenRefused::MissingClaim { claim } if claim == "rpaflow_role"
    ));
    let no_namespace = without(claims(), "rpaflow_namespace");
    assert!(matches!(
        refused(ec.sign("ec-1", &no_namespace)),
        TokenRefused::MissingClaim { claim } if claim == "rpaflow_namespace"
    ));
    let super_role = with(claims(), "rpaflow_role", json!("root"));
    assert!(matches!(
        refused(ec.sign("ec-1", &super_role)),
        TokenRefused::UnknownRole { role } if role == "root"
    ));
    let listed_role = with(claims(), "rpaflow_role", json!(["admin"]));
    assert!(matches!(
        refused(ec.sign("ec-1", &listed_role)),
        TokenRefused::MissingClaim { .. }
    ));
}

#[test]
fn the_claims_naming_the_caller_are_configurable() {
    let ec = Signer::ec();
    let mut issuer = Issuer::new(&json!({"keys": [ec.jwk("k")]}));
    issuer.verifier.config.name_claim = "email".into();
    issuer.verifier.config.role_claim = "groups_role".into();
    let token = ec.sign(
        "k",
        &with(
            with(claims(), "email", json!("ana@example.com")),
            "groups_role",
            json!("viewer"),
        ),
    );
    let who = issuer.verifier.verify(&token).unwrap();
    assert_eq!(
        (who.name.as_str(), who.token_id.as_str(), who.role),
        ("ana@example.com", "jwt:u-42", Role::Viewer)
    );
    // The default claim no longer counts.
    let token = ec.sign("k", &claims());
    assert!(matches!(
        issuer.verifier.verify(&token),
        Err(TokenRefused::MissingClaim { claim }) if claim == "email"
    ));
}

#[test]
fn a_new_key_in_the_file_is_taken_and_a_broken_file_keeps_the_old_ones() {
    let first = Signer::ec();
    let second = Signer::ec();
    let issuer = Issuer::new(&json!({"keys": [first.jwk("one")]}));
    let path = issuer.dir.path().join("jwks.json");
    assert!(
        issuer
            .verifier
            .verify(&first.sign("one", &claims()))
            .is_ok()
    );

    // The issuer rotates: a token with the new key is taken once the unknown-key interval
    // has passed.
    std::fs::write(
        &path,
        json!({"keys": [first.jwk("one"), second.jwk("two")]}).to_string(),
    )
    .unwrap();
    std::thread::sleep(UNKNOWN_KID_INTERVAL + Duration::from_millis(50));
    assert!(
        issuer
            .verifier
            .verify(&second.sign("two", &claims()))
            .is_ok()
    );

    // A broken file: the keys stay.
    std::fs::write(&path, "{ not json").unwrap();
    issuer.verifier.keys.lock().unwrap().checked_at = None;
    assert!(
        issuer
            .verifier
            .verify(&first.sign("one", &claims()))
            .is_ok()
    );
    assert!(
        issuer
            .verifier
            .verify(&second.sign("two", &claims()))
            .is_ok()
    );
}

#[test]
fn the_jwks_keeps_only_signing_keys_with_an_id() {
    let ec = Signer::ec();
    let mut encryption = ec.jwk("enc");
    encryption["use"] = json!("enc");
    let mut unnamed = ec.jwk("x");
    unnamed.as_object_mut().unwrap().remove("kid");
    let mut wrong_alg = ec.jwk("mislabelled");
    wrong_alg["alg"] = json!("RS256");
    let jwks = json!({"keys": [
        ec.jwk("sig"), encryption, unnamed, wrong_alg,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
    ]});
    let keys = parse(jwks.to_string().as_bytes()).unwrap();
    assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["sig"]);
    assert_eq!(keys["sig"].algorithms, vec![Algorithm::ES256]);
    assert!(parse(b"[]").is_err());
}

#[test]
fn settings_that_cannot_check_a_token_are_refused() {
    let good: OidcConfig = serde_json::from_value(json!({
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_file": "/etc/rpaflow/jwks.json",
        "leeway": "30s",
    }))
    .unwrap();
    assert!(good.validate().is_ok());
    assert_eq!(good.role_claim, "rpaflow_role");
    assert_eq!(good.name_claim, "sub");
    let empty = OidcConfig {
        audience: " ".into(),
        ..good.clone()
    };
    assert!(empty.validate().unwrap_err().contains("audience"));
    let lax = OidcConfig {
        leeway: Duration::from_secs(3600),
        ..good
    };
    assert!(lax.validate().unwrap_err().contains("leeway"));
}

/// A 2048-bit RSA key made for these tests with `openssl genpkey` (ring cannot make one).
const RSA_TEST_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCPBXPCHDZF5O2a
EpT4IaGz8FUBnV7aTdAQSrTT3mwsN1E/Bt/5+efGXTAMLXC/BwDxp+bJ/yUVogNT
zCWmNfZpjGd5Ds6dSG+00LfeaYNY9ahIn6QOtN2Irfotj2IKF7TIewidfKMAae41
/cb2dBMG7eTDYsoKfLZ1/9kVlzRT1FT4TfAIrGfyhV+11iA3wjtGOPZ5y1DG8x6I
G2xqP57Pa6cqZUCFcykzoN//DSQwodII/j+he1k3r2YuntGVPXEcXPMsYdK276Am
zFQstEqIMSI0QSfJRBvbD9oFdiUjJCLRXzLzslVBu/JaTkxJMuOwHvv35nmUmQk4
qaiHyTvRAgMBAAECggEACf/RlhKu4LgevJTsAWUojxIQf2pnRVAHafwvJFj6qyS6
83MhmbKVN9MwFsnehhyRPlQE2L6T8y0+mk89mp9PORXt7hLQ80IrPTMSh+RMoJ2c
RGeU6spOas3vHdxWeGor45Bmi8w5AUBmvTOfA4AeDG/5fIedpJoPj7RxkwbdS7cD
6QD136Ld1OLFZX0XWEJBJ8VRcHcXCbG4VVB4IsAclVPOvYc6E+M0/Y28g7gT8KtT
EmnlOFC9N/o1oNdBugppAJ/UH2zrUQFj6vWyT2P/ZCRCrytUQzSyiTZ+ghDwr75q
HcTfd8XD9t3ndTRCbDy4IzUn08xOOioIp3euJTkZuQKBgQDIU8g5it4GSKPNF38o
Apg5Cd8SjZEXBXpwgS7T6F+Cg8UyRIai6j68crtgcYfbonU+gpWUabOA++c67HOW
zW1/LoKD3T1ROyQpyKsJ3u3CYo/5Q6nZH0Xr1WtxQ5zwXzrVgpQCUJUpqqDEWT7j
emSoivSy9G5YmtwF3SFOyuyckwKBgQC2xKe+uhr0SEwL9JO13pY1E6aW1Up0tiSm
CR076sl21mlUh6xanFy26Ez3l/3CiRM5sw0sRIV/BhDvTmk26KgbU9OwRc9RNyVc
3v1ZqdVZiv+lrN/4l9ZPbStMAiF1+/Gwv1+8uZ3pSstELcXK46MwiKeZ+RHiQyNS
nDZalMnoiwKBgA/XyGr8l4iJsCKlLBI++kjwherStVnLvh4tqUVrCDqrLypFjxxN
SD7hF/6Nm//7vif+bdP59A9MXMIlNxMDFhjL1diV46aL9dU0IIq8TbNk1hwRhNo+
Beqby05+2WeNMHr4Q7pXIyTTcLl2kWmuIU3PB4EroZpyTNpN3bd8hu/vAoGAOKpK
E9EhkEFmCoLe1RFY4sXf7X3dosfiHvROcwg9RDH/4CxcXI+EE1V8n3spOwpCwq3n
1KS9+v8HexqFdne1vxtDU7ChMV32oI+mXwlP035L+rLZkfqJgICpXtx+QVVGvvTm
mt21vuHomY/Tdi8TpnWH+S4GxG7qYa97DqR44TcCgYA/CURTLrluUbykOiRYOKC9
3Wkyke1bmhn83iTYqJXhpcKkYaF+6qO0uVE7dDJWFl8xwe5T/UcbpZFsWIiFIhYh
XN2+rgxtr+mS3tX+wndm3UjwuqJXYsITREHgGRHJIHspZeW2hWpA6ZFwuv9H/uwQ
vwioGOP0xu8e2dR86EUj6Q==
-----END PRIVATE KEY-----";
