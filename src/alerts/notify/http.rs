//! One HTTP/1.1 POST for the webhook and Alertmanager notifiers: a fresh
//! connection per notification (they are rare), TLS through rustls with
//! the built-in web PKI roots. Redirects are not followed: a receiver
//! that answers 3xx is refused, naming where it pointed (a redirect to
//! another host must not receive the alert).

use std::sync::{Arc, OnceLock};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue, LOCATION, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::{Host, Url};

const AGENT: &str = concat!("upkeep/", env!("CARGO_PKG_VERSION"));
/// Bytes of a receiver's answer quoted in an error at most.
const QUOTE_BYTES: usize = 200;

/// POSTs `body` as JSON to `url` with `headers`; `Ok` on a 2xx answer.
pub async fn post(url: &Url, headers: &[(String, String)], body: Vec<u8>) -> Result<u16, String> {
    let host = url.host().ok_or("no host")?;
    let port = url.port_or_known_default().ok_or("no port")?;
    let host_str = url.host_str().unwrap_or_default();
    let tcp = TcpStream::connect((host_str.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect {host_str}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let authority = match url.port() {
        Some(p) => format!("{host_str}:{p}"),
        None => host_str.to_string(),
    };
    let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
    if url.scheme() == "https" {
        let connector = tokio_rustls::TlsConnector::from(tls_config());
        let name = match host {
            Host::Domain(d) => {
                ServerName::try_from(d.to_string()).map_err(|e| format!("tls: {e}"))?
            }
            Host::Ipv4(ip) => ServerName::from(std::net::IpAddr::V4(ip)),
            Host::Ipv6(ip) => ServerName::from(std::net::IpAddr::V6(ip)),
        };
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        exchange(tls, &authority, target, headers, body).await
    } else {
        exchange(tcp, &authority, target, headers, body).await
    }
}

async fn exchange<T>(
    io: T,
    authority: &str,
    target: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<u16, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri(target)
        .header(USER_AGENT, AGENT)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        // Checked by validation; a bad one is skipped rather than fatal.
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            req = req.header(k, v);
        }
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(status);
        }
        if (300..400).contains(&status) {
            let to = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nowhere")
                .to_string();
            return Err(format!(
                "answered {status}, a redirect to {to}: refused (redirects are not followed)"
            ));
        }
        let text = match resp.into_body().collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        let mut quote: String = text.chars().filter(|c| !c.is_control()).collect();
        if quote.len() > QUOTE_BYTES {
            let mut end = QUOTE_BYTES;
            while !quote.is_char_boundary(end) {
                end -= 1;
            }
            quote.truncate(end);
            quote.push_str("...");
        }
        Err(format!("answered {status}: {quote}"))
    }
    .await;
    conn.abort();
    result
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}
