//! The mTLS hook: a gRPC server on [`ServerTls`] with `client_ca_file` hands every request the
//! certificate its client presented ([`tls::client_certificate`]), which an authentication layer
//! maps to an identity; a client without one never reaches a handler.
//!
//! In process: a health service behind an interceptor that records what the hook returns,
//! reached by tonic's own TLS client. Certificates come from `rcgen`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rpaflow_orchestrator::tls::{self, ServerTls, TlsConfig};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn issue(ca: &Issuer<'_, KeyPair>, cn: &str) -> Pair {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned()]).expect("certificate params");
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, ca).expect("a certificate");
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a pem file");
    path
}

#[tokio::test]
async fn handlers_see_the_verified_client_certificate() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "identity test ca");
    let ca_key = KeyPair::generate().expect("a ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("a ca certificate");
    let ca = Issuer::new(ca_params, ca_key);
    let server = issue(&ca, "orchestrator");
    let robot = issue(&ca, "robot-7");

    let config = TlsConfig {
        cert_file: Some(write(dir.path(), "server.pem", &server.cert_pem)),
        key_file: Some(write(dir.path(), "server.key", &server.key_pem)),
        client_ca_file: Some(write(dir.path(), "ca.pem", &ca_cert.pem())),
        ..TlsConfig::default()
    };
    let server_tls = ServerTls::load(&config)
        .expect("the tls settings load")
        .expect("tls is on");

    let seen: Arc<Mutex<Vec<Option<Vec<u8>>>>> = Arc::default();
    let record = Arc::clone(&seen);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let health = tonic::service::interceptor::InterceptedService::new(
        health,
        move |req: tonic::Request<()>| {
            let leaf = tls::client_certificate(&req).map(|der| der.to_vec());
            record.lock().unwrap_or_else(|e| e.into_inner()).push(leaf);
            Ok(req)
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let port = listener.local_addr().expect("its address").port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let serving = tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(server_tls.grpc(listener), stop.cancelled_owned()),
    );

    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_cert.pem()))
        .domain_name("localhost");
    let url = format!("https://localhost:{port}");

    // With the CA's certificate: the call is answered, and the handler saw that certificate.
    let channel = Channel::from_shared(url.clone())
        .expect("a url")
        .tls_config(
            client_tls
                .clone()
                .identity(Identity::from_pem(&robot.cert_pem, &robot.key_pem)),
        )
        .expect("a tls client")
        .connect()
        .await
        .expect("a connection with a client certificate");
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("an answer");
    assert_eq!(
        *seen.lock().unwrap_or_else(|e| e.into_inner()),
        vec![Some(robot.der.clone())]
    );

    // Without a certificate nothing reaches the handler.
    let anonymous = async {
        let channel = Channel::from_shared(url)
            .expect("a url")
            .tls_config(client_tls)
            .expect("a tls client")
            .connect()
            .await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(anyhow::Error::from)?;
        anyhow::Ok(())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), anonymous)
        .await
        .expect("an answer in time");
    assert!(outcome.is_err(), "a client without a certificate got in");
    assert_eq!(seen.lock().unwrap_or_else(|e| e.into_inner()).len(), 1);

    shutdown.cancel();
    serving
        .await
        .expect("the server task")
        .expect("the server stops cleanly");
}
