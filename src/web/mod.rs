//! The local HTTP server (warp), bound by the agent itself so that a taken
//! port is a clear startup error.
//!
//! Every request passes the same gate before any route sees it: the Host
//! header (exactly one) and an absolute-form request target must name this
//! host and its listen port (a DNS-rebinding guard), and a body larger than
//! [`BODY_LIMIT`] is refused with 413, whether it announces its length or
//! comes chunked ([`body`]). Every GET route answers HEAD too ([`get`]) and
//! refuses query parameters it does not take ([`params`]). Every response
//! carries the security headers of [`secure`]. Routes:
//!
//! - `/-/healthy`, `/-/ready`: liveness and readiness;
//! - `/api/v1/...`: the JSON API ([`api`]), described by
//!   `/api/v1/openapi.json`; mutating routes need the bearer token;
//! - `/metrics`: Prometheus text format ([`metrics`]);
//! - `/` and `/assets/...`: the status page ([`page`]).
//!
//! Errors are `{"error": "..."}` with the matching status code.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::host::Authority;
use warp::http::header::{CONTENT_LENGTH, HOST};
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::config::ApiConfig;
use crate::live::Live;
use crate::probes::runner::RunnerStats;
use crate::secret::Secret;

pub mod access;
pub mod alerts;
pub mod api;
pub mod conn;
pub mod health;
pub mod maintenance;
pub mod metrics;
pub mod own_names;
pub mod page;

/// A reload asked for over the API (`POST /api/v1/reload`), answered once
/// the agent has reloaded. The agent holds the receiving end.
pub type ReloadReply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Largest request body accepted by any route.
pub const BODY_LIMIT: u64 = 64 * 1024;
/// How much of a chunked body over the limit is read and dropped before
/// the 413 is sent.
const DRAIN_LIMIT: u64 = 4 * BODY_LIMIT;

/// What `/api/v1/info` reports besides the live state.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub version: &'static str,
    pub hostname: String,
    pub config_path: Option<PathBuf>,
    pub data_dir: PathBuf,
}

/// Everything the routes read: shared by every request.
pub struct Shared {
    pub info: Info,
    pub live: Arc<RwLock<Live>>,
    pub stats: Arc<RunnerStats>,
    /// Bearer token of the mutating routes; `None` disables them.
    token: Option<Secret>,
    /// Lower-case host names (without port) the Host header may name.
    allowed_hosts: Vec<String>,
    /// Listening on a wildcard address: this host's own names and
    /// addresses are allowed too (see `own_names`).
    own_names: Option<own_names::OwnNames>,
    /// The port the API listens on, which the Host header must name (or
    /// leave out when it is 80, as clients do for the default port).
    port: u16,
    /// Where `POST /api/v1/reload` asks the agent to reload.
    reloads: Option<tokio::sync::mpsc::Sender<ReloadReply>>,
    /// The health document, served again for a second.
    health_cache: std::sync::Mutex<api::Cached>,
    /// The agent's maintenance (schedulers and runs); `None` in tests that
    /// build the routes alone.
    pub maintenance: Option<Arc<crate::maintenance::agent::Maintenance>>,
    /// The agent's alerts (engine view, counters); `None` in tests that
    /// build the routes alone.
    pub alerts: Option<Arc<crate::alerts::AlertsShared>>,
    /// The rendered status page, served again for a second.
    pub page_cache: std::sync::Mutex<api::Cached>,
    /// `/metrics`' forecasts, computed again once a minute.
    pub forecast_cache: std::sync::Mutex<metrics::forecast::Cache>,
}

pub type State = Arc<Shared>;

impl Shared {
    pub fn new(
        info: Info,
        live: Arc<RwLock<Live>>,
        stats: Arc<RunnerStats>,
        api: &ApiConfig,
        token: Option<Secret>,
        reloads: Option<tokio::sync::mpsc::Sender<ReloadReply>>,
    ) -> Shared {
        let mut allowed_hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(String::from)
            .collect();
        let listen = api.listen.parse::<SocketAddr>().ok();
        if let Some(a) = listen
            && !a.ip().is_unspecified()
        {
            allowed_hosts.push(match a {
                SocketAddr::V4(v4) => v4.ip().to_string(),
                SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
            });
        }
        allowed_hosts.extend(api.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()));
        Shared {
            info,
            live,
            stats,
            token,
            allowed_hosts,
            own_names: listen
                .is_some_and(|a| a.ip().is_unspecified())
                .then(own_names::OwnNames::default),
            port: listen.map_or(0, |a| a.port()),
            reloads,
            maintenance: None,
            alerts: None,
            health_cache: Default::default(),
            forecast_cache: Default::default(),
            page_cache: Default::default(),
        }
    }

    /// The agent's maintenance, for its routes.
    pub fn with_maintenance(mut self, m: Arc<crate::maintenance::agent::Maintenance>) -> Shared {
        self.maintenance = Some(m);
        self
    }

    /// The agent's alerts, for their routes, the page and `/metrics`.
    pub fn with_alerts(mut self, a: Arc<crate::alerts::AlertsShared>) -> Shared {
        self.alerts = Some(a);
        self
    }

    /// The address actually bound, whose port the Host header must name
    /// (it differs from `api.listen` when that asks for any port, `:0`).
    pub fn listening_on(mut self, addr: Option<SocketAddr>) -> Shared {
        if let Some(a) = addr {
            self.port = a.port();
        }
        self
    }

    /// Whether a Host header value (`name[:port]`) names this agent: an
    /// allowed name and the listen port. Without a port it names port 80,
    /// as a browser leaves the port out only for the scheme's default.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        // Split off a port: after `]` for IPv6 literals, else after the only `:`.
        let (name, port) = if host.starts_with('[') {
            match host.find(']') {
                Some(end) => (&host[..=end], &host[end + 1..]),
                None => return false,
            }
        } else {
            match host.find(':') {
                Some(i) if !host[i + 1..].contains(':') => (&host[..i], &host[i..]),
                Some(_) => return false,
                None => (host.as_str(), ""),
            }
        };
        let port = match port {
            "" => 80,
            p => match port_of(p) {
                Some(p) => p,
                None => return false,
            },
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        port == self.port
            && (self.allowed_hosts.iter().any(|h| h == name)
                || self.own_names.as_ref().is_some_and(|o| o.contains(name)))
    }

    /// Checks `Authorization: Bearer <token>` in constant time. The scheme
    /// name is case-insensitive (RFC 9110 11.1) and the token is trimmed,
    /// as the token file's is.
    pub fn authorized(&self, header: Option<&str>) -> Result<(), ApiError> {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.token else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "mutating routes are disabled: set api.token_file to enable them",
            ));
        };
        /// The credentials of `Bearer <token>`: scheme name in any case,
        /// then spaces or tabs, then the token, trimmed; none when empty.
        fn bearer_token(header: &str) -> Option<&str> {
            let (scheme, rest) = header.trim_start().split_once([' ', '\t'])?;
            let token = rest.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
        }
        let given = header.and_then(bearer_token).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this route needs an Authorization: Bearer <token> header",
            )
        })?;
        if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "wrong bearer token",
            ))
        }
    }
}

/// The port of a `:port` suffix: one to five digits.
fn port_of(rest: &str) -> Option<u16> {
    rest.strip_prefix(':')
        .filter(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse().ok())
}

/// An error answer: `{"error": message}` with `status`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status, &self.message)
    }
}

pub fn error_response(status: StatusCode, message: &str) -> Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message })),
        status,
    )
    .into_response()
}

/// A JSON answer, or the error.
pub fn json_or_error<T: Serialize>(r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => warp::reply::json(&v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// How long a request waits for a history read before it is answered 503.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// History reads running at once at most. A read past its deadline keeps
/// its slot until it returns, so a hung disk ties up at most this many
/// threads of the blocking pool; further requests are answered 503.
pub const MAX_READS: usize = 16;

static READS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(MAX_READS)));

/// Runs blocking work (history reads) off the async workers, within
/// [`READ_DEADLINE`] and at most [`MAX_READS`] at once.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    within(&READS, READ_DEADLINE, f).await
}

/// [`blocking`] with its slots and deadline given: waiting for a slot
/// counts against the deadline too.
async fn within<T: Send + 'static>(
    slots: &Arc<Semaphore>,
    deadline: Duration,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let not_answering = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("history is not answering (no answer within {deadline:?})"),
        )
    };
    let give_up = tokio::time::Instant::now() + deadline;
    let Ok(Ok(slot)) = tokio::time::timeout_at(give_up, slots.clone().acquire_owned()).await else {
        return Err(not_answering());
    };
    let task = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        f()
    });
    match tokio::time::timeout_at(give_up, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("request handler failed: {e}"),
        )),
        Err(_) => Err(not_answering()),
    }
}

/// Rejections of the gate, turned into answers by [`recover`].
#[derive(Debug)]
struct ForeignHost(String);
impl warp::reject::Reject for ForeignHost {}

/// An absolute-form request target whose authority is not the Host header's.
#[derive(Debug)]
struct ForeignTarget;
impl warp::reject::Reject for ForeignTarget {}

#[derive(Debug)]
struct DuplicateHost;
impl warp::reject::Reject for DuplicateHost {}

/// A body over [`BODY_LIMIT`]: its announced length, or `None` when it came
/// chunked and was read that far.
#[derive(Debug)]
struct BodyTooLarge(Option<u64>);
impl warp::reject::Reject for BodyTooLarge {}

/// A request a route refuses with this answer before its handler runs
/// (an unknown query parameter, a body that cannot be read).
#[derive(Debug)]
struct Refused(ApiError);
impl warp::reject::Reject for Refused {}

/// The gate every request passes: exactly one Host header, naming this
/// agent and its port; an absolute-form target naming the same; body not
/// announced as too large.
fn gate(state: State) -> BoxedFilter<()> {
    // The request target's authority where it agrees with the Host header;
    // warp rejects a disagreement, kept here as `Err` to be answered below.
    let target = warp::host::optional()
        .map(Ok)
        .or(warp::any().map(|| Err(())))
        .unify();
    warp::header::headers_cloned()
        .and(target)
        .and_then(
            move |headers: HeaderMap, target: Result<Option<Authority>, ()>| {
                let state = state.clone();
                async move {
                    let mut hosts = headers.get_all(HOST).iter();
                    let host = hosts.next();
                    if hosts.next().is_some() {
                        return Err(warp::reject::custom(DuplicateHost));
                    }
                    match (host, target) {
                        (Some(h), target) => {
                            let h = String::from_utf8_lossy(h.as_bytes()).into_owned();
                            if !state.host_allowed(&h) {
                                return Err(warp::reject::custom(ForeignHost(h)));
                            }
                            if target.is_err() {
                                return Err(warp::reject::custom(ForeignTarget));
                            }
                        }
                        // No Host header (HTTP/1.0): an absolute-form target
                        // stands in for it.
                        (None, Ok(Some(a))) if state.host_allowed(a.as_str()) => {}
                        (None, Ok(Some(a))) => {
                            return Err(warp::reject::custom(ForeignHost(a.to_string())));
                        }
                        (None, _) => return Err(warp::reject::custom(ForeignHost(String::new()))),
                    }
                    let len = headers
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    match len {
                        Some(n) if n > BODY_LIMIT => {
                            Err(warp::reject::custom(BodyTooLarge(Some(n))))
                        }
                        _ => Ok(()),
                    }
                }
            },
        )
        .untuple_one()
        .boxed()
}

/// GET, and HEAD answered alike: same status and headers, and the server
/// leaves the body out.
pub fn get() -> BoxedFilter<()> {
    warp::get().or(warp::head()).unify().boxed()
}

/// The query parameters of a route that takes `known`, each at most once;
/// any other is refused with 400 naming it.
pub fn params(known: &'static [&'static str]) -> BoxedFilter<(BTreeMap<String, String>,)> {
    warp::query::<Vec<(String, String)>>()
        .and_then(move |q: Vec<(String, String)>| async move {
            api::check_params(q, known).map_err(|e| warp::reject::custom(Refused(e)))
        })
        .boxed()
}

/// The request body, at most [`BODY_LIMIT`] bytes. A length announced over
/// the limit is refused by the gate; a chunked body is read until it passes
/// the limit and then refused with 413 too, so no client has to send a
/// Content-Length.
pub fn body() -> BoxedFilter<(bytes::Bytes,)> {
    warp::body::stream().and_then(read_limited).boxed()
}

async fn read_limited<B: bytes::Buf>(
    stream: impl futures_core::Stream<Item = Result<B, warp::Error>>,
) -> Result<bytes::Bytes, Rejection> {
    use bytes::BufMut;
    let mut stream = std::pin::pin!(stream);
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        let chunk = chunk.map_err(|e| {
            warp::reject::custom(Refused(ApiError::bad_request(format!(
                "reading the request body: {e}"
            ))))
        })?;
        if (out.len() + chunk.remaining()) as u64 > BODY_LIMIT {
            // Read on a little, discarding, so that the 413 reaches a
            // client still sending: a socket closed with unread data is
            // reset, and the reset can overtake the answer.
            let mut read = out.len() as u64 + chunk.remaining() as u64;
            while read < DRAIN_LIMIT {
                match std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
                    Some(Ok(c)) => read += c.remaining() as u64,
                    _ => break,
                }
            }
            return Err(warp::reject::custom(BodyTooLarge(None)));
        }
        out.put(chunk);
    }
    Ok(out.freeze())
}

/// Adds the security headers to every answer.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut warp::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cross-origin-resource-policy", "same-origin");
    if !h.contains_key("cache-control") {
        set(h, "cache-control", "no-store");
    }
    r
}

pub fn routes(state: State) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let healthy = warp::path!("-" / "healthy")
        .and(get())
        .and(params(&[]))
        .map(|_| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response());
    let s = state.clone();
    let ready = warp::path!("-" / "ready")
        .and(get())
        .and(params(&[]))
        .map(move |_| {
            let live = s.live.read().expect("live lock");
            let fault = live.store.fault_at(crate::sample::now_ms());
            let ready = live.ready && fault.is_none();
            let reason = match fault {
                Some(f) => Some(f),
                None if !live.ready => Some("probes have not started yet".to_string()),
                None => None,
            };
            let body = serde_json::json!({
                "ready": ready,
                "history_open": live.store.open,
                "probes_started": live.ready,
                "reason": reason,
            });
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            warp::reply::with_status(warp::reply::json(&body), code).into_response()
        });
    let routed = gate(state.clone())
        .and(
            healthy
                .or(ready)
                .unify()
                .or(api::routes(state.clone()))
                .unify()
                .or(maintenance::routes(state.clone()))
                .unify()
                .or(access::routes(state.clone()))
                .unify()
                .or(alerts::routes(state.clone()))
                .unify()
                .or(metrics::routes(state.clone()))
                .unify()
                .or(page::routes(state)),
        )
        .unify()
        .recover(recover)
        .unify();
    warp::path::full()
        .and(routed)
        .map(|path: warp::path::FullPath, mut r: Response| {
            if r.status() == StatusCode::METHOD_NOT_ALLOWED {
                r.headers_mut().insert(
                    "allow",
                    HeaderValue::from_static(allowed_methods(path.as_str())),
                );
            }
            secure(r)
        })
}

/// The methods a path answers, for the `Allow` header of a 405.
fn allowed_methods(path: &str) -> &'static str {
    let post = path == "/api/v1/reload"
        || path == "/api/v1/access/ack"
        || path.starts_with("/api/v1/silences/") && path.ends_with("/expire")
        || (path.starts_with("/api/v1/maintenance/")
            && (path.ends_with("/run") || path.ends_with("/rollback")));
    if path == "/api/v1/silences" {
        return "GET, HEAD, POST";
    }
    if post { "POST" } else { "GET, HEAD" }
}

async fn recover(r: Rejection) -> Result<Response, Infallible> {
    let (code, msg) = if let Some(ForeignHost(h)) = r.find() {
        (
            StatusCode::FORBIDDEN,
            if h.is_empty() {
                "a Host header is required".to_string()
            } else {
                format!(
                    "Host `{}` is not this agent: use localhost or a name in api.allowed_hosts, \
                     with the port the API listens on",
                    h.chars().take(100).collect::<String>()
                )
            },
        )
    } else if r.find::<ForeignTarget>().is_some() {
        (
            StatusCode::FORBIDDEN,
            "the request target names another host than the Host header".to_string(),
        )
    } else if r.find::<DuplicateHost>().is_some() {
        (
            StatusCode::BAD_REQUEST,
            "more than one Host header".to_string(),
        )
    } else if let Some(BodyTooLarge(n)) = r.find() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            match n {
                Some(n) => {
                    format!("request body of {n} bytes is over the limit of {BODY_LIMIT} bytes")
                }
                None => format!("request body is over the limit of {BODY_LIMIT} bytes"),
            },
        )
    } else if let Some(Refused(e)) = r.find() {
        (e.status, e.message.clone())
    } else if r.is_not_found() {
        (StatusCode::NOT_FOUND, "no such route".to_string())
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        (StatusCode::BAD_REQUEST, format!("bad query string: {e}"))
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_string(),
        )
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, format!("{e}"))
    } else {
        (StatusCode::BAD_REQUEST, format!("bad request: {r:?}"))
    };
    Ok(error_response(code, &msg))
}

/// Binds `listen`; the error names the address.
pub async fn bind(listen: &str) -> Result<TcpListener, String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("api.listen `{listen}`: {e}"))?;
    conn::listen(addr).map_err(|e| format!("api.listen {addr}: cannot bind: {e}"))
}

/// Serves until `shutdown` is cancelled, then finishes open requests, with
/// the default connection limits.
pub async fn serve(listener: TcpListener, state: State, shutdown: CancellationToken) {
    serve_with(listener, state, conn::Limits::default(), shutdown).await;
}

/// Serves until `shutdown` is cancelled, then finishes open requests; the
/// connections are bounded by `limits` ([`conn`]).
pub async fn serve_with(
    listener: TcpListener,
    state: State,
    limits: conn::Limits,
    shutdown: CancellationToken,
) {
    let service = hyper_util::service::TowerToHyperService::new(warp::service(routes(state)));
    conn::serve(listener, service, limits, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    /// A read that does not return (a frozen disk) is answered 503 at its
    /// deadline; it keeps its slot until it does return, so hung reads
    /// cannot pile up: with every slot taken, the next request is answered
    /// 503 without running. Once the read returns, reads run again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_past_its_deadline_answers_503_and_hung_reads_do_not_pile_up() {
        let slots = Arc::new(Semaphore::new(1));
        let deadline = Duration::from_millis(300);
        let (release, hung) = std::sync::mpsc::channel::<()>();
        let started = Instant::now();
        let e = within(&slots, deadline, move || {
            let _ = hung.recv();
            Ok(())
        })
        .await
        .expect_err("a hung read is not awaited for ever");
        let took = started.elapsed();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            e.message.contains("history is not answering"),
            "{}",
            e.message
        );
        assert!(
            took >= deadline && took < deadline * 3,
            "answered after {took:?}, deadline {deadline:?}"
        );

        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let e = within(&slots, deadline, move || {
            r.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await
        .expect_err("no slot while the hung read holds it");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            !ran.load(Ordering::SeqCst),
            "the read waited for a slot, never ran"
        );

        release.send(()).unwrap();
        let answer = within(&slots, deadline, || Ok(42)).await;
        assert_eq!(answer.map_err(|e| e.message), Ok(42));
    }
}
