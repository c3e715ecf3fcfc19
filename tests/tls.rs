//! HTTPS and basic auth on /metrics, checked with a real TLS client (rustls) against the daemon.
mod common;

use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// A self-signed certificate for 127.0.0.1, written as PEM files into `dir`.
fn cert(dir: &std::path::Path) -> (rustls::pki_types::CertificateDer<'static>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let extra = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string()
    );
    (cert.der().clone(), extra)
}

/// One HTTPS request with a rustls client trusting `ca`; returns the raw response.
async fn https(
    addr: std::net::SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    path: &str,
    auth: Option<&str>,
) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let auth = auth.map(|a| {
        use base64::Engine as _;
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(a)
        )
    });
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{}\r\n",
        auth.unwrap_or_default()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = cert(dir.path());
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let cfg = config_text(1, "").replace(
        "enable_lifecycle = true\n",
        &format!("enable_lifecycle = true\n{tls}[http.basic_auth_users]\nprom = \"{hash}\"\n"),
    );
    let t = TestDaemon::start(&cfg).await;
    t.send(b"secure.hits:3|c");

    // Health stays open for probes; /metrics needs the right password.
    let r = https(t.http, &ca, "/-/healthy", None).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = https(t.http, &ca, "/metrics", None).await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert!(
        r.contains("www-authenticate: Basic realm=\"tallyd\""),
        "{r}"
    );
    let r = https(t.http, &ca, "/metrics", Some("prom:wrong")).await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = https(t.http, &ca, "/metrics", Some("nobody:s3cret")).await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let start = std::time::Instant::now();
    loop {
        let r = https(t.http, &ca, "/metrics", Some("prom:s3cret")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        if r.lines().any(|l| l == "secure_hits_total 3") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "counter never appeared:\n{r}");
    }
    // Plain HTTP on the TLS port gets no answer.
    let plain = tokio::task::spawn_blocking({
        let a = t.http;
        move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(a).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        }
    })
    .await
    .unwrap();
    assert!(!plain.contains("secure_hits_total"), "{plain}");
    t.stop().await;
}

#[test]
fn plain_passwords_and_half_tls_are_refused() {
    use tallyd::config::Config;
    let e = Config::from_toml("[http.basic_auth_users]\nprom = \"hunter2\"\n").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(
        e.message.contains("bcrypt") && e.key.as_deref() == Some("http.basic_auth_users"),
        "{e}"
    );
    let e = Config::from_toml("[http]\ntls_cert_file = \"/x.pem\"\n").unwrap_err();
    assert!(e.message.contains("go together"), "{e}");
}
