//! TLS: `rpaflow dev` with `[tls]` serves its gRPC API and its webhook endpoint over TLS with the
//! configured certificate; the CLI reaches it with `--server https://...` and `--ca-cert`, and
//! nothing reaches it without trusting the CA or in plaintext. With `tls.client_ca_file` the API
//! takes only clients with a certificate signed by that CA. Replacing the certificate files
//! changes the certificate new connections see, without a restart; a broken file changes
//! nothing.
//!
//! Certificates are made here with `rcgen`; a raw `tokio-rustls` client reads the certificate the
//! server presents and sends webhook deliveries over HTTPS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rpaflow_tests::{CliOutput, Dev, rpaflow, rpaflow_with_env};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(30);
/// How often the server checks the certificate files in these tests.
const RELOAD_INTERVAL: &str = "200ms";
const TOKEN: &str = "tls-hook-token-5d2e";

const FLOW: &str = r#"
name: over-tls
inputs:
  who: { type: string, default: nobody }
steps:
  - { id: greet, uses: echo, with: { hello: "{{ inputs.who }}" } }
outputs:
  hello: "{{ steps.greet.output.hello }}"
"#;

/// A webhook with a bearer token whose whole body is the run's inputs.
const HOOK_FLOW: &str = r#"
name: tls-hook
inputs:
  n: { type: integer }
triggers:
  - id: raw
    webhook: { token_secret: HOOK_TOKEN }
steps:
  - { id: show, uses: echo, with: { n: "{{ inputs.n }}" } }
"#;

/// A certificate authority that signs server and client certificates into a directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
}

/// A certificate made by [`Pki`], its files and its DER form.
struct Issued {
    cert_file: PathBuf,
    key_file: PathBuf,
    der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rpaflow-tls-")
            .tempdir()
            .expect("a temporary directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test ca"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a ca key");
        let cert = params.self_signed(&key).expect("a ca certificate");
        std::fs::write(dir.path().join(format!("{name}-ca.pem")), cert.pem()).expect("write ca");
        Self {
            ca_der: cert.der().clone(),
            ca: Issuer::new(params, key),
            dir,
        }
    }

    fn ca_file(&self) -> PathBuf {
        let mut files = std::fs::read_dir(self.dir.path())
            .expect("the pki directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with("-ca.pem"));
        files.next().expect("the ca file")
    }

    /// A certificate for `localhost` and 127.0.0.1 named `cn`, written to `stem.pem` and
    /// `stem.key`.
    fn issue(&self, stem: &str, cn: &str, serial: u64) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.ca).expect("a certificate");
        let issued = Issued {
            cert_file: self.dir.path().join(format!("{stem}.pem")),
            key_file: self.dir.path().join(format!("{stem}.key")),
            der: cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        };
        std::fs::write(&issued.key_file, key.serialize_pem()).expect("write key");
        std::fs::write(&issued.cert_file, cert.pem()).expect("write certificate");
        issued
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// `rpaflow dev` serving TLS with `server`'s files, webhooks on, plus `env`.
async fn launch(server: &Issued, env: &[(&str, &str)]) -> Dev {
    let mut all = vec![
        ("RPAFLOW_TLS__CERT_FILE", path(&server.cert_file)),
        ("RPAFLOW_TLS__KEY_FILE", path(&server.key_file)),
        ("RPAFLOW_TLS__RELOAD_INTERVAL", RELOAD_INTERVAL),
    ];
    all.extend_from_slice(env);
    Dev::launch_env(&["--hooks-listen", "127.0.0.1:0"], &all).await
}

fn https(dev: &Dev) -> String {
    format!("https://localhost:{}", dev.addr().port())
}

/// `rpaflow ARGS --server URL EXTRA...`.
async fn cli(args: &[&str], server: &str, extra: &[&str]) -> CliOutput {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--server", server]);
    all.extend_from_slice(extra);
    rpaflow(&all, TIMEOUT).await
}

fn tls_client(
    ca: &CertificateDer<'static>,
    identity: Option<&Issued>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("the ca is a valid root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("default protocol versions")
    .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(vec![id.der.clone()], id.key_der.clone_key())
            .expect("a client identity"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

async fn tls_connect(
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").expect("a server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The certificate a new connection to `port` is shown.
async fn presented(port: u16, ca: &CertificateDer<'static>) -> CertificateDer<'static> {
    let stream = tls_connect(port, tls_client(ca, None))
        .await
        .expect("a tls connection to the server");
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .expect("the server presents a certificate")
        .clone()
        .into_owned()
}

/// POSTs `body` to `url_path` on the HTTPS server at `port`; the status and the body.
async fn https_post(
    port: u16,
    ca: &CertificateDer<'static>,
    url_path: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = tls_connect(port, tls_client(ca, None))
        .await
        .expect("a tls connection to the webhook endpoint");
    let request = format!(
        "POST {url_path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut raw = Vec::new();
    // A peer that closes without close_notify is fine here: the answer is complete.
    let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw)).await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn assert_failed_with(out: &CliOutput, needle: &str) {
    assert_ne!(out.code(), Some(0), "expected a failure:\n{out}");
    assert!(
        out.stderr.to_lowercase().contains(needle),
        "expected `{needle}` in stderr:\n{out}"
    );
}

#[tokio::test]
async fn the_cli_and_webhooks_work_over_tls_and_nothing_unverified_gets_in() {
    let pki = Pki::new("main");
    let server = pki.issue("server", "server-one", 1);
    let dev = launch(&server, &[]).await;
    let url = https(&dev);
    let ca = pki.ca_file();
    let ca_flag = ["--ca-cert", path(&ca)];

    // The CLI, trusting the CA: register a flow and run it to its end.
    let flow_file = pki.path("flow.yaml");
    std::fs::write(&flow_file, FLOW).expect("write the flow");
    cli(&["flow", "register", path(&flow_file)], &url, &ca_flag)
        .await
        .expect_success();
    let run = cli(
        &["run", "start", "over-tls", "--input", "who=tls", "--watch"],
        &url,
        &ca_flag,
    )
    .await;
    run.expect_success();
    assert!(run.stdout.contains("succeeded"), "{run}");
    // The same through the environment.
    let listed = rpaflow_with_env(
        &["flow", "list", "--server", &url],
        &[("RPAFLOW_CA_CERT", path(&ca))],
        TIMEOUT,
    )
    .await;
    listed.expect_success();
    assert!(listed.stdout.contains("over-tls"), "{listed}");

    // Without the CA the server's certificate is not trusted, and the CLI says why.
    let untrusted = cli(&["flow", "list"], &url, &[]).await;
    assert_failed_with(&untrusted, "certificate");
    assert!(untrusted.stderr.contains("--ca-cert"), "{untrusted}");

    // A plaintext client gets nothing.
    let plain = cli(&["flow", "list"], &format!("http://{}", dev.addr()), &[]).await;
    assert_ne!(plain.code(), Some(0), "plaintext must fail:\n{plain}");
    assert!(!plain.stdout.contains("over-tls"), "{plain}");

    // Webhooks are served over HTTPS with the same certificate.
    cli(
        &["secret", "set", "HOOK_TOKEN", "--value", TOKEN],
        &url,
        &ca_flag,
    )
    .await
    .expect_success();
    let hook_file = pki.path("hook.yaml");
    std::fs::write(&hook_file, HOOK_FLOW).expect("write the hook flow");
    cli(&["flow", "register", path(&hook_file)], &url, &ca_flag)
        .await
        .expect_success();
    let hooks_url = dev.hooks_url();
    let hooks_port: u16 = hooks_url
        .strip_prefix("https://")
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("webhooks are not on https: {hooks_url}"));
    let (status, body) = https_post(
        hooks_port,
        &pki.ca_der,
        "/hooks/default/tls-hook",
        r#"{"n": 7}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("\"created\":true"), "{body}");
    assert_eq!(presented(hooks_port, &pki.ca_der).await, server.der);
}

#[tokio::test]
async fn new_connections_see_a_replaced_certificate_and_a_broken_one_changes_nothing() {
    let pki = Pki::new("reload");
    let first = pki.issue("server", "server-one", 1);
    let dev = launch(&first, &[]).await;
    let port = dev.addr().port();
    assert_eq!(presented(port, &pki.ca_der).await, first.der);

    // A certificate file that is not PEM: the server keeps its certificate and says so.
    let good_pem = std::fs::read(&first.cert_file).expect("read the certificate");
    std::fs::write(&first.cert_file, "-----BEGIN CERTIFICATE-----\nbroken\n").expect("write");
    let deadline = Instant::now() + TIMEOUT;
    while !dev.output().contains("cannot reload the tls certificate") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged:\n{}",
            dev.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dev.output().contains("server.pem"),
        "the log names the file:\n{}",
        dev.output()
    );
    assert_eq!(presented(port, &pki.ca_der).await, first.der);
    std::fs::write(&first.cert_file, good_pem).expect("restore the certificate");

    // A new key pair, written over the old files: new connections see it, with no restart.
    let second = pki.issue("server", "server-number-two", 2);
    assert_ne!(first.der, second.der);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if presented(port, &pki.ca_der).await == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served:\n{}",
            dev.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dev.output().contains("tls certificate reloaded"),
        "{}",
        dev.output()
    );
    // And the CLI keeps working against the same process.
    cli(
        &["flow", "list"],
        &https(&dev),
        &["--ca-cert", path(&pki.ca_file())],
    )
    .await
    .expect_success();
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
    let pki = Pki::new("mtls");
    let server = pki.issue("server", "server-one", 1);
    let client = pki.issue("client", "robot-7", 10);
    let stranger_pki = Pki::new("stranger");
    let stranger = stranger_pki.issue("client", "stranger", 11);
    let ca = pki.ca_file();
    let dev = launch(&server, &[("RPAFLOW_TLS__CLIENT_CA_FILE", path(&ca))]).await;
    let url = https(&dev);

    let anonymous = cli(&["flow", "list"], &url, &["--ca-cert", path(&ca)]).await;
    assert_failed_with(&anonymous, "--client-cert");

    let foreign = cli(
        &["flow", "list"],
        &url,
        &[
            "--ca-cert",
            path(&ca),
            "--client-cert",
            path(&stranger.cert_file),
            "--client-key",
            path(&stranger.key_file),
        ],
    )
    .await;
    assert_ne!(
        foreign.code(),
        Some(0),
        "a certificate of another CA must fail:\n{foreign}"
    );

    let flow_file = pki.path("flow.yaml");
    std::fs::write(&flow_file, FLOW).expect("write the flow");
    let admitted = cli(
        &["flow", "register", path(&flow_file)],
        &url,
        &[
            "--ca-cert",
            path(&ca),
            "--client-cert",
            path(&client.cert_file),
            "--client-key",
            path(&client.key_file),
        ],
    )
    .await;
    admitted.expect_success();

    // Webhook senders authenticate by signature or token: no client certificate asked.
    let hooks_url = dev.hooks_url();
    let hooks_port: u16 = hooks_url
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("a webhook port");
    assert_eq!(presented(hooks_port, &pki.ca_der).await, server.der);
}

#[tokio::test]
async fn bad_tls_settings_stop_the_start_and_name_the_setting_or_file() {
    let pki = Pki::new("bad");
    let server = pki.issue("server", "server-one", 1);
    let data = tempfile::tempdir().expect("a data directory");
    let dev = |env: Vec<(&'static str, String)>| {
        let data = data.path().to_owned();
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            rpaflow_with_env(
                &[
                    "dev",
                    "--listen",
                    "127.0.0.1:0",
                    "--data",
                    path(&data),
                    "--keep-running",
                ],
                &env,
                TIMEOUT,
            )
            .await
        }
    };
    let cert = path(&server.cert_file).to_owned();
    let key = path(&server.key_file).to_owned();

    let out = dev(vec![("RPAFLOW_TLS__CERT_FILE", cert.clone())]).await;
    assert_failed_with(&out, "tls.key_file");

    let missing = pki.path("missing.pem");
    let out = dev(vec![
        ("RPAFLOW_TLS__CERT_FILE", path(&missing).to_owned()),
        ("RPAFLOW_TLS__KEY_FILE", key.clone()),
    ])
    .await;
    assert_failed_with(&out, "missing.pem");

    // The key of another certificate.
    let other = pki.issue("other", "other", 3);
    let out = dev(vec![
        ("RPAFLOW_TLS__CERT_FILE", cert),
        ("RPAFLOW_TLS__KEY_FILE", path(&other.key_file).to_owned()),
    ])
    .await;
    assert_failed_with(&out, "does not fit");
}
