//! The local HTTP server (warp), bound by the agent itself so that a taken
//! port is a clear startup error. Serves the liveness and readiness checks
//! and a first JSON API over the live state: `/api/v1/info` and
//! `/api/v1/probes`. Unknown routes answer 404 with a JSON error.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::live::Live;
use crate::sample::Ts;

pub mod health;

/// What `/api/v1/info` reports besides the live state.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub version: &'static str,
    pub hostname: String,
    pub config_path: Option<PathBuf>,
    pub data_dir: PathBuf,
}

#[derive(Serialize)]
struct InfoBody<'a> {
    #[serde(flatten)]
    info: &'a Info,
    started_at: String,
    history_bytes: u64,
    history_bound_bytes: u64,
    history: &'a crate::live::StoreHealth,
}

fn rfc3339(ts: Ts) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts.max(0) as u64),
    )
    .to_string()
}

/// Binds `listen`; the error names the address.
pub async fn bind(listen: &str) -> Result<TcpListener, String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("api.listen `{listen}`: {e}"))?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("api.listen {addr}: cannot bind: {e}"))
}

pub fn routes(
    info: Arc<Info>,
    live: Arc<RwLock<Live>>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let healthy = warp::path!("-" / "healthy")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})));
    let l = live.clone();
    let ready = warp::path!("-" / "ready").and(warp::get()).map(move || {
        let live = l.read().expect("live lock");
        let ready = live.ready && live.store.open;
        let body = serde_json::json!({"ready": ready, "history_open": live.store.open, "probes_started": live.ready});
        let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        warp::reply::with_status(warp::reply::json(&body), code)
    });
    let (l, info_for_route) = (live.clone(), info.clone());
    let info_route = warp::path!("api" / "v1" / "info")
        .and(warp::get())
        .map(move || {
            let live = l.read().expect("live lock");
            warp::reply::json(&InfoBody {
                info: &info_for_route,
                started_at: rfc3339(live.started_ms),
                history_bytes: live.store.file_bytes,
                history_bound_bytes: live.store.bound_bytes,
                history: &live.store,
            })
        });
    let l = live.clone();
    let probes = warp::path!("api" / "v1" / "probes")
        .and(warp::get())
        .map(move || {
            let live = l.read().expect("live lock");
            warp::reply::json(&serde_json::json!({ "probes": &live.probes }))
        });
    let (l, i) = (live, info);
    let health = warp::path!("api" / "v1" / "health")
        .and(warp::get())
        .map(move || {
            // History gives trends and uptime; the live state everything else.
            let reader = crate::store::Reader::open(&i.data_dir).ok();
            let live = l.read().expect("live lock");
            warp::reply::json(&health::document(
                &live,
                reader.as_ref(),
                crate::sample::now_ms(),
            ))
        });
    healthy
        .or(ready)
        .or(info_route)
        .or(probes)
        .or(health)
        .recover(recover)
}

async fn recover(r: Rejection) -> Result<impl Reply, Infallible> {
    let (code, msg) = if r.is_not_found() {
        (StatusCode::NOT_FOUND, "no such route".to_string())
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_string(),
        )
    } else {
        (StatusCode::BAD_REQUEST, format!("{r:?}"))
    };
    Ok(warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": msg })),
        code,
    ))
}

/// Serves until `shutdown` is cancelled, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    info: Arc<Info>,
    live: Arc<RwLock<Live>>,
    shutdown: CancellationToken,
) {
    warp::serve(routes(info, live))
        .incoming(listener)
        .graceful(shutdown.cancelled_owned())
        .run()
        .await;
}
