//! The local HTTP server (warp), bound by the agent itself so that a taken
//! port is a clear startup error.
//!
//! Every request passes the same gate before any route sees it: the Host
//! header must name this host (a DNS-rebinding guard), and a body larger
//! than [`BODY_LIMIT`] is refused with 413. Every response carries the
//! security headers of [`secure`]. Routes:
//!
//! - `/-/healthy`, `/-/ready`: liveness and readiness;
//! - `/api/v1/...`: the JSON API ([`api`]), described by
//!   `/api/v1/openapi.json`; mutating routes need the bearer token;
//! - `/metrics`: Prometheus text format ([`metrics`]);
//! - `/` and `/assets/...`: the status page ([`page`]).
//!
//! Errors are `{"error": "..."}` with the matching status code.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::config::ApiConfig;
use crate::live::Live;
use crate::probes::runner::RunnerStats;
use crate::secret::Secret;

pub mod api;
pub mod conn;
pub mod health;
pub mod maintenance;
pub mod metrics;
pub mod page;

/// A reload asked for over the API (`POST /api/v1/reload`), answered once
/// the agent has reloaded. The agent holds the receiving end.
pub type ReloadReply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Largest request body accepted by any route.
pub const BODY_LIMIT: u64 = 64 * 1024;

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
    /// Where `POST /api/v1/reload` asks the agent to reload.
    reloads: Option<tokio::sync::mpsc::Sender<ReloadReply>>,
    /// The health document, served again for a second.
    health_cache: std::sync::Mutex<api::Cached>,
    /// The agent's maintenance (schedulers and runs); `None` in tests that
    /// build the routes alone.
    pub maintenance: Option<Arc<crate::maintenance::agent::Maintenance>>,
    /// The rendered status page, served again for a second.
    pub page_cache: std::sync::Mutex<api::Cached>,
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
        if let Ok(a) = api.listen.parse::<SocketAddr>()
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
            reloads,
            maintenance: None,
            health_cache: Default::default(),
            page_cache: Default::default(),
        }
    }

    /// The agent's maintenance, for its routes.
    pub fn with_maintenance(mut self, m: Arc<crate::maintenance::agent::Maintenance>) -> Shared {
        self.maintenance = Some(m);
        self
    }

    /// Whether a Host header value (`name[:port]`) names this agent.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        // Strip a port: after `]` for IPv6 literals, else after the only `:`.
        let name = if host.starts_with('[') {
            match host.find(']') {
                Some(end) => {
                    let rest = &host[end + 1..];
                    if !(rest.is_empty() || port_ok(rest)) {
                        return false;
                    }
                    &host[..=end]
                }
                None => return false,
            }
        } else {
            match host.rsplit_once(':') {
                Some((n, p)) if !n.contains(':') => {
                    if !port_ok(&format!(":{p}")) {
                        return false;
                    }
                    n
                }
                Some(_) => return false,
                None => &host,
            }
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        self.allowed_hosts.iter().any(|h| h == name)
    }

    /// Checks `Authorization: Bearer <token>` in constant time.
    pub fn authorized(&self, header: Option<&str>) -> Result<(), ApiError> {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.token else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "mutating routes are disabled: set api.token_file to enable them",
            ));
        };
        let given = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
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

fn port_ok(rest: &str) -> bool {
    rest.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
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

/// Runs blocking work (history reads) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("request handler failed: {e}"),
        ))
    })
}

/// Rejections of the gate, turned into answers by [`recover`].
#[derive(Debug)]
struct ForeignHost(String);
impl warp::reject::Reject for ForeignHost {}

#[derive(Debug)]
struct BodyTooLarge(u64);
impl warp::reject::Reject for BodyTooLarge {}

/// The gate every request passes: Host names this agent, body not too large.
fn gate(state: State) -> BoxedFilter<()> {
    warp::header::optional::<String>("host")
        .and(warp::header::optional::<u64>("content-length"))
        .and_then(move |host: Option<String>, len: Option<u64>| {
            let state = state.clone();
            async move {
                match host {
                    Some(h) if state.host_allowed(&h) => {}
                    Some(h) => return Err(warp::reject::custom(ForeignHost(h))),
                    None => return Err(warp::reject::custom(ForeignHost(String::new()))),
                }
                match len {
                    Some(n) if n > BODY_LIMIT => Err(warp::reject::custom(BodyTooLarge(n))),
                    _ => Ok(()),
                }
            }
        })
        .untuple_one()
        .boxed()
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
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response());
    let s = state.clone();
    let ready = warp::path!("-" / "ready").and(warp::get()).map(move || {
        let live = s.live.read().expect("live lock");
        let ready = live.ready && live.store.open;
        let body = serde_json::json!({"ready": ready, "history_open": live.store.open, "probes_started": live.ready});
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
        || (path.starts_with("/api/v1/maintenance/")
            && (path.ends_with("/run") || path.ends_with("/rollback")));
    if post { "POST" } else { "GET" }
}

async fn recover(r: Rejection) -> Result<Response, Infallible> {
    let (code, msg) = if let Some(ForeignHost(h)) = r.find() {
        (
            StatusCode::FORBIDDEN,
            if h.is_empty() {
                "a Host header is required".to_string()
            } else {
                format!(
                    "Host `{}` is not this agent: use localhost or a name in api.allowed_hosts",
                    h.chars().take(100).collect::<String>()
                )
            },
        )
    } else if let Some(BodyTooLarge(n)) = r.find() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {n} bytes is over the limit of {BODY_LIMIT} bytes"),
        )
    } else if r.is_not_found() {
        (StatusCode::NOT_FOUND, "no such route".to_string())
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        (StatusCode::BAD_REQUEST, format!("bad query string: {e}"))
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the limit of {BODY_LIMIT} bytes"),
        )
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required".to_string(),
        )
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
