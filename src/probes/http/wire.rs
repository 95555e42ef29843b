//! One HTTP/1.1 exchange for the http probe: a fresh TCP connection per
//! request (connect time is part of what the probe measures), TLS through
//! rustls with the built-in web PKI roots plus `ca_file`, and the leaf
//! certificate's expiry read from the same TLS session, with no second
//! connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HOST, HeaderName, HeaderValue, LOCATION, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::{Host, Url};

use super::Method;
use crate::clients::Failure;

const AGENT: &str = concat!("upkeep/", env!("CARGO_PKG_VERSION"));

/// What every request of one probe shares: its headers and, once built, the
/// TLS settings (built on the first https request, kept after success).
pub struct Client {
    headers: Vec<(String, String)>,
    ca_file: Option<PathBuf>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A response whose body has not been read yet. Dropping it closes the
/// connection.
pub struct Response {
    pub status: u16,
    location: Option<String>,
    body: Incoming,
    /// Days until the leaf certificate's notAfter, for https.
    pub cert_days: Option<f64>,
    _conn: AbortOnDrop,
}

/// The task driving a connection ends with the exchange, however it ends
/// (a timed-out tick drops everything mid-read).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Response {
    /// Where a 3xx points, when it is a redirect with a Location.
    pub fn location(&self) -> Option<&str> {
        let redirect = matches!(self.status, 301 | 302 | 303 | 307 | 308);
        self.location.as_deref().filter(|_| redirect)
    }

    /// The body, read up to `limit` bytes; the rest is left unread.
    pub async fn body(mut self, limit: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(frame) = self.body.frame().await else {
                break;
            };
            let frame = frame.map_err(|e| format!("reading body: {}", chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                let take = data.len().min(limit - out.len());
                out.extend_from_slice(&data[..take]);
            }
        }
        Ok(out)
    }
}

impl Client {
    pub fn new(
        headers: impl IntoIterator<Item = (String, String)>,
        ca_file: Option<PathBuf>,
    ) -> Client {
        Client {
            headers: headers.into_iter().collect(),
            ca_file,
            tls: None,
        }
    }

    /// Sends one request to `url` and returns once the response head is in.
    /// A failure to connect or to read `ca_file` keeps its `io::Error` as
    /// the cause: the caller tells the agent's own faults from the server's.
    pub async fn send(&mut self, method: Method, url: &Url) -> Result<Response, Failure> {
        let host = url.host().ok_or("no host")?;
        let port = url.port_or_known_default().ok_or("no port")?;
        let host_str = url.host_str().unwrap_or_default();
        let tcp = TcpStream::connect((host_str.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| Failure::caused_by(format!("connect: {e}"), e))?;
        let _ = tcp.set_nodelay(true);
        let authority = match url.port() {
            Some(p) => format!("{host_str}:{p}"),
            None => host_str.to_string(),
        };
        let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
        if url.scheme() == "https" {
            let connector = tokio_rustls::TlsConnector::from(self.tls_config()?);
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
                .map_err(|e| format!("tls: {}", chain(&e)))?;
            let days = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|leaf| days_left(leaf))
                .transpose()?;
            let mut resp = self.exchange(tls, method, &authority, target).await?;
            resp.cert_days = days;
            Ok(resp)
        } else {
            Ok(self.exchange(tcp, method, &authority, target).await?)
        }
    }

    async fn exchange<T>(
        &self,
        io: T,
        method: Method,
        authority: &str,
        target: &str,
    ) -> Result<Response, String>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| chain(&e))?;
        let conn = AbortOnDrop(tokio::spawn(conn).abort_handle());
        let mut req = hyper::Request::builder()
            .method(method.as_str())
            .uri(target)
            .header(USER_AGENT, AGENT);
        if !self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"))
        {
            req = req.header(HOST, authority);
        }
        for (k, v) in &self.headers {
            // Checked by validation; a bad one is skipped rather than fatal.
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                req = req.header(k, v);
            }
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| chain(&e))?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        Ok(Response {
            status: resp.status().as_u16(),
            location,
            body: resp.into_body(),
            cert_days: None,
            _conn: conn,
        })
    }

    fn tls_config(&mut self) -> Result<Arc<rustls::ClientConfig>, Failure> {
        if let Some(c) = &self.tls {
            return Ok(Arc::clone(c));
        }
        let mut roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.ca_file {
            let fail = |e: &dyn std::fmt::Display| format!("ca_file {}: {e}", path.display());
            let pem = std::fs::read(path).map_err(|e| Failure::caused_by(fail(&e), e))?;
            let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| fail(&e))?;
            if certs.is_empty() {
                return Err(fail(&"no PEM certificates in it").into());
            }
            for cert in certs {
                roots.add(cert).map_err(|e| fail(&e))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        self.tls = Some(Arc::clone(&config));
        Ok(config)
    }
}

/// Days from now until the certificate's notAfter (fractional).
fn days_left(der: &CertificateDer<'_>) -> Result<f64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("tls: reading the server certificate: {e}"))?;
    let not_after = cert.validity().not_after.timestamp() as f64;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Ok((not_after - now) / 86_400.0)
}

/// An error with its causes, as hyper and rustls nest the useful part.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}
