//! The http probe over TLS: an internal CA and a leaf certificate made here
//! (rcgen) with a known notAfter, served by tokio-rustls on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use upkeep::sample::Status;

use super::{built, failed, hand_rolled, probe, run_for, tick, value};

/// An internal CA and a leaf for 127.0.0.1 and localhost signed by it,
/// the leaf expiring `days` from now; the CA written to `dir/ca.pem`.
fn internal_ca(
    dir: &std::path::Path,
    days: i64,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    leaf.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let leaf_cert = leaf.signed_by(&leaf_key, &Issuer::new(ca, ca_key)).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der());
    (vec![leaf_cert.der().clone()], key.into())
}

/// A TLS server answering every request with 200 "ok".
async fn tls_server(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    hand_rolled(move |s| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(s).await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = tls.read(&mut buf).await;
            let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    })
    .await
}

#[tokio::test]
async fn https_with_an_internal_ca_reports_days_until_the_leaf_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, key) = internal_ca(dir.path(), 30);
    let addr = tls_server(chain, key).await;
    let ca = dir.path().join("ca.pem");
    let ca_file = format!("ca_file = \"{}\"\nbody_contains = \"ok\"", ca.display());
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{}/health", addr.port());
        let rs = tick(&mut probe(&url, &ca_file)).await.unwrap();
        assert_eq!(value(&rs, "status_code"), 200.0);
        let days = value(&rs, "tls_cert_expiry_days");
        assert!((days - 30.0).abs() < 0.01, "{host}: {days} days");
    }
    // Without the CA the chain does not verify.
    let url = format!("https://127.0.0.1:{}/health", addr.port());
    let why = failed(tick(&mut probe(&url, "")).await);
    assert!(
        why.starts_with(&format!("GET {url}: tls: ")) && why.contains("UnknownIssuer"),
        "{why}"
    );
    // A CA file that is not there is named.
    let missing = format!("ca_file = \"{}\"", dir.path().join("nope.pem").display());
    let why = failed(tick(&mut probe(&url, &missing)).await);
    assert!(
        why.contains("ca_file ") && why.contains("nope.pem"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_within_3_days_is_unhealthy_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, key) = internal_ca(dir.path(), 2);
    let addr = tls_server(chain, key).await;
    let probes = built(&format!(
        "[probe.site]\nkind = \"http\"\nurl = \"https://127.0.0.1:{}/\"\nca_file = \"{}\"\ninterval = \"5s\"\n",
        addr.port(),
        dir.path().join("ca.pem").display()
    ));
    let outcomes = run_for(probes, Duration::from_millis(1500)).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let o = &outcomes[0];
    assert_eq!(o.raw_status, Status::Unhealthy);
    let why = o.reason.as_deref().unwrap_or_default();
    let days: f64 = why
        .strip_prefix("tls_cert_expiry_days is ")
        .and_then(|rest| rest.strip_suffix(" (at or below 3)"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{why}"));
    assert!((days - 2.0).abs() < 0.01, "{why}");
}
