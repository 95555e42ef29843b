//! `kind = "http"`: does a URL answer as expected, and how fast? One GET or
//! HEAD per tick, redirects followed (at most 5 hops), the body read up to
//! 1 MiB and checked for a substring or a JSON value. Built by
//! `probes::build`; the wire (connections, TLS, certificate expiry) is in
//! `http/wire.rs`.
//!
//! The runner's timeout bounds the whole tick, body included: a server that
//! trickles bytes forever times out like one that never answers.

mod expect;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use url::Url;

use super::config::{ConfiguredKind, KindFacts, Threshold};
use super::{AnyProbe, BuildContext, Probe, ProbeError};
use crate::probe_config;
use crate::sample::{Reading, Unit};

pub use expect::ExpectStatus;

/// Redirects followed at most; one more is "too many".
pub const MAX_REDIRECTS: usize = 5;
/// Bytes of a body read at most; a longer body is read (and counted) up to
/// here, and the body checks see only this much.
pub const BODY_LIMIT: usize = 1 << 20;

/// Headers that carry credentials: they would sit in plain text in
/// agent.toml, so they are refused.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Head,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

fn yes() -> bool {
    true
}

probe_config! {
    /// `[probe.NAME] kind = "http"`.
    pub struct HttpConfig {
        /// `http://` or `https://` URL, without credentials.
        pub url: String,
        #[serde(default)]
        pub method: Method,
        /// Codes (200) and classes ("2xx"), one or a list; default "2xx".
        #[serde(default)]
        pub expect_status: ExpectStatus,
        /// A substring the body must contain.
        #[serde(default)]
        pub body_contains: Option<String>,
        /// RFC 6901 pointer into a JSON body, e.g. "/status"...
        #[serde(default)]
        pub json_pointer: Option<String>,
        /// ...and the JSON value it must equal (numbers compare by value).
        #[serde(default)]
        pub json_equals: Option<serde_json::Value>,
        #[serde(default = "yes")]
        pub follow_redirects: bool,
        /// Extra request headers. Plain text: no credentials.
        #[serde(default)]
        pub headers: BTreeMap<String, String>,
        /// PEM file of CA certificates trusted besides the built-in roots
        /// (an internal CA).
        #[serde(default)]
        pub ca_file: Option<PathBuf>,
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = parse_url(&self.url) {
            out.push(("url", e));
        }
        let body_checked = self.body_contains.is_some() || self.json_pointer.is_some();
        if self.method == Method::Head && body_checked {
            out.push(("method", "HEAD has no body to check".into()));
        }
        if self.body_contains.as_deref() == Some("") {
            out.push(("body_contains", "must not be empty".into()));
        }
        match (&self.json_pointer, &self.json_equals) {
            (Some(p), Some(_)) if !(p.is_empty() || p.starts_with('/')) => out.push((
                "json_pointer",
                format!("`{p}` is not a JSON pointer such as \"/status\""),
            )),
            (Some(_), None) => out.push(("json_pointer", "needs json_equals".into())),
            (None, Some(_)) => out.push(("json_equals", "needs json_pointer".into())),
            _ => {}
        }
        for msg in header_problems(&self.headers) {
            out.push(("headers", msg));
        }
        out
    }
}

/// What is wrong with extra request headers: credentials (plain text in
/// agent.toml) and names or values HTTP does not allow. Shared with the
/// cache_warmup task.
pub fn header_problems(headers: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value) in headers {
        if SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            out.push(format!(
                "`{name}` carries credentials, which do not belong in agent.toml"
            ));
        } else if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            out.push(format!("`{name}` is not a header name"));
        } else if hyper::header::HeaderValue::from_str(value).is_err() {
            out.push(format!("`{name}`: value is not a header value"));
        }
    }
    out
}

/// A URL the probe can request: http or https, a host, no credentials.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}`: scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{}` holds credentials, which do not belong in agent.toml",
            url.host_str().unwrap_or_default()
        ));
    }
    Ok(url)
}

/// Response time above 0.5 s (the seed's limit for a healthy API) is
/// degraded, above 2 s unhealthy; a certificate expiring within 14 days is
/// degraded, within 3 days unhealthy.
pub fn default_thresholds() -> Vec<Threshold> {
    vec![
        Threshold::above("response_seconds", 0.5, 2.0),
        Threshold::below("tls_cert_expiry_days", 14.0, 3.0),
    ]
}

pub struct HttpProbe {
    /// Parsed once; an error (config not validated) fails every tick.
    url: Result<Url, String>,
    method: Method,
    expect: ExpectStatus,
    body_contains: Option<String>,
    json: Option<(String, serde_json::Value)>,
    follow_redirects: bool,
    client: wire::Client,
}

impl HttpProbe {
    /// Never connects and never reads `ca_file`: both happen on a tick.
    pub fn new(config: &HttpConfig) -> HttpProbe {
        HttpProbe {
            url: parse_url(&config.url),
            method: config.method,
            expect: config.expect_status.clone(),
            body_contains: config.body_contains.clone(),
            json: config.json_pointer.clone().zip(config.json_equals.clone()),
            follow_redirects: config.follow_redirects,
            client: wire::Client::new(config.headers.clone(), config.ca_file.clone()),
        }
    }
}

impl KindFacts for HttpConfig {
    const HEADLINE: &'static str = "response_seconds";
    const LATENCY: Option<&'static str> = Some("response_seconds");
}

impl ConfiguredKind for HttpConfig {
    fn default_thresholds() -> Vec<Threshold> {
        default_thresholds()
    }

    fn build(&self, _name: &str, _timeout: Duration, _ctx: &BuildContext) -> AnyProbe {
        Box::new(HttpProbe::new(self))
    }
}

impl Probe for HttpProbe {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        let started = Instant::now();
        let mut url = self.url.clone().map_err(ProbeError::Failed)?;
        let method = self.method.as_str();
        let mut visited = vec![url.clone()];
        // The soonest expiry of any certificate met on the way: any of them
        // expiring breaks the request.
        let mut cert_days: Option<f64> = None;
        let fail = |url: &Url, why: String| ProbeError::Failed(format!("{method} {url}: {why}"));
        let (status, body) = loop {
            let resp = self
                .client
                .send(self.method, &url)
                .await
                .map_err(|e| ProbeError::caused_by(format!("{method} {url}: {e}"), &e))?;
            if let Some(d) = resp.cert_days {
                cert_days = Some(cert_days.map_or(d, |c: f64| c.min(d)));
            }
            let next = match resp.location() {
                Some(loc) if self.follow_redirects => url
                    .join(loc)
                    .map_err(|e| fail(&url, format!("bad redirect to `{loc}`: {e}")))?,
                _ => {
                    break (
                        resp.status,
                        resp.body(BODY_LIMIT).await.map_err(|e| fail(&url, e))?,
                    );
                }
            };
            if visited.contains(&next) {
                visited.push(next);
                let hops: Vec<String> = visited.iter().map(Url::to_string).collect();
                return Err(fail(
                    &visited[0],
                    format!("redirect loop: {}", hops.join(" -> ")),
                ));
            }
            if visited.len() > MAX_REDIRECTS {
                let why = format!("too many redirects after {MAX_REDIRECTS} hops (last to {next})");
                return Err(fail(&visited[0], why));
            }
            visited.push(next.clone());
            url = next;
        };
        let took = started.elapsed();
        if !self.expect.matches(status) {
            return Err(fail(
                &url,
                format!("status {status} (expected {})", self.expect),
            ));
        }
        self.check_body(&body).map_err(|why| fail(&url, why))?;
        let mut out = vec![
            Reading::new("response_seconds", took.as_secs_f64(), Unit::Seconds),
            Reading::new("status_code", f64::from(status), Unit::Count),
            Reading::new("body_bytes", body.len() as f64, Unit::Bytes),
        ];
        if let Some(days) = cert_days {
            out.push(Reading::new("tls_cert_expiry_days", days, Unit::None));
        }
        Ok(out)
    }
}

impl HttpProbe {
    /// Why the body is not what the config expects, if it is not.
    fn check_body(&self, body: &[u8]) -> Result<(), String> {
        let cut = if body.len() >= BODY_LIMIT {
            " (in the first 1 MiB)"
        } else {
            ""
        };
        if let Some(want) = &self.body_contains
            && !contains(body, want.as_bytes())
        {
            return Err(format!("body does not contain `{want}`{cut}"));
        }
        if let Some((pointer, want)) = &self.json {
            let doc: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("body is not JSON{cut}: {e}"))?;
            match doc.pointer(pointer) {
                None => return Err(format!("json_pointer `{pointer}` not found in body")),
                Some(got) if !json_equal(got, want) => {
                    return Err(format!(
                        "json_pointer `{pointer}` is {got} (expected {want})"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// JSON equality where numbers compare by value (TOML 1 equals JSON 1.0).
fn json_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table as `[probe.api] kind = "http"` holds it, checked by the
    /// kind's own `validate`.
    fn parse(body: &str) -> Result<HttpConfig, String> {
        let c: HttpConfig = toml::from_str(body).map_err(|e| e.to_string())?;
        let problems: Vec<String> = c
            .validate()
            .into_iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect();
        if problems.is_empty() {
            Ok(c)
        } else {
            Err(problems.join("\n"))
        }
    }

    #[test]
    fn defaults_are_get_any_2xx_and_follow_redirects() {
        let c = parse("url = \"http://127.0.0.1:8080/health\"\n").unwrap();
        assert_eq!(c.method, Method::Get);
        assert!(c.follow_redirects && c.headers.is_empty() && c.ca_file.is_none());
        assert_eq!(c.expect_status.to_string(), "2xx");
    }

    #[test]
    fn bad_options_are_named() {
        let cases = [
            ("url = \"ftp://x/\"", "scheme must be http or https"),
            ("url = \"http://u:pw@x/\"", "holds credentials"),
            ("url = \"not a url\"", "is not a URL"),
            (
                "url = \"http://x/\"\nmethod = \"HEAD\"\nbody_contains = \"ok\"",
                "HEAD has no body",
            ),
            (
                "url = \"http://x/\"\njson_pointer = \"/a\"",
                "needs json_equals",
            ),
            (
                "url = \"http://x/\"\njson_pointer = \"a\"\njson_equals = 1",
                "is not a JSON pointer",
            ),
            (
                "url = \"http://x/\"\nheaders = { Authorization = \"Bearer x\" }",
                "carries credentials",
            ),
            (
                "url = \"http://x/\"\nmethod = \"POST\"",
                "unknown variant `POST`",
            ),
        ];
        for (body, want) in cases {
            let err = parse(body).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }

    fn probe(body_contains: Option<&str>, json: Option<(&str, serde_json::Value)>) -> HttpProbe {
        let mut c = parse("url = \"http://127.0.0.1:1/\"\n").unwrap();
        c.body_contains = body_contains.map(String::from);
        (c.json_pointer, c.json_equals) = json.map(|(p, v)| (p.to_string(), v)).unzip();
        HttpProbe::new(&c)
    }

    #[test]
    fn body_checks_say_what_was_found() {
        let p = probe(Some("ok"), None);
        assert!(p.check_body(b"all ok").is_ok());
        assert_eq!(
            p.check_body(b"down").unwrap_err(),
            "body does not contain `ok`"
        );
        let p = probe(None, Some(("/status", serde_json::json!("ok"))));
        assert!(p.check_body(br#"{"status":"ok"}"#).is_ok());
        let err = p.check_body(br#"{"status":"degraded"}"#).unwrap_err();
        assert_eq!(
            err,
            r#"json_pointer `/status` is "degraded" (expected "ok")"#
        );
        let err = p.check_body(br#"{"state":"ok"}"#).unwrap_err();
        assert_eq!(err, "json_pointer `/status` not found in body");
        assert!(
            p.check_body(b"<html>")
                .unwrap_err()
                .starts_with("body is not JSON: ")
        );
        let p = probe(None, Some(("/n", serde_json::json!(1))));
        assert!(p.check_body(br#"{"n":1.0}"#).is_ok());
    }
}
