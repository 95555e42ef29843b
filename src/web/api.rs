//! The JSON API under `/api/v1`: snake_case keys, units in key names, times
//! in RFC 3339 UTC, errors as `{"error": "..."}`. Every route is described
//! in `openapi.json` (served at `/api/v1/openapi.json`).
//!
//! Reads of the history file run on the blocking pool, each on its own
//! read-only connection; the live state is read under its lock and
//! released before any history read.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{ApiError, State, blocking, json_or_error};
use crate::analysis::{self, ForecastInput};
use crate::fmt::rfc3339;
use crate::sample::{SeriesKey, Ts, now_ms};
use crate::store::{Reader, StoreError};

/// The OpenAPI 3 document of every route.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Uptime windows reported per probe.
pub const UPTIME_WINDOWS: [(&str, i64); 4] = [
    ("1h", 3_600_000),
    ("24h", 86_400_000),
    ("7d", 7 * 86_400_000),
    ("30d", 30 * 86_400_000),
];

/// Most points a query answers with, and the default.
pub const MAX_POINTS: usize = 10_000;
pub const DEFAULT_POINTS: usize = 1_000;
/// Most events one request lists, and the default.
pub const MAX_EVENTS: usize = 1_000;
pub const DEFAULT_EVENTS: usize = 100;
/// How long a computed health document is served again.
const HEALTH_CACHE: Duration = Duration::from_secs(1);

fn open_reader(state: &State) -> Result<Reader, ApiError> {
    Reader::open(&state.info.data_dir)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("history: {e}")))
}

fn store_err(e: StoreError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("history: {e}"))
}

/// Query parameters, each name at most once, only the known ones.
struct Params(BTreeMap<String, String>);

impl Params {
    fn parse(pairs: Vec<(String, String)>, known: &[&str]) -> Result<Params, ApiError> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if !known.contains(&k.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{}`; this route takes {}",
                    k.chars().take(64).collect::<String>(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(ApiError::bad_request(format!(
                    "query parameter `{k}` given more than once"
                )));
            }
        }
        Ok(Params(map))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn time(&self, k: &str, default: Ts, now: Ts) -> Result<Ts, ApiError> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => crate::fmt::parse_time(v, now)
                .map_err(|e| ApiError::bad_request(format!("`{k}`: {e}"))),
        }
    }

    fn duration(&self, k: &str) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(k) else {
            return Ok(None);
        };
        let d = humantime::parse_duration(v.trim()).map_err(|e| {
            ApiError::bad_request(format!("`{k}`: `{v}` is not a duration such as 5m: {e}"))
        })?;
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if ms <= 0 {
            return Err(ApiError::bad_request(format!(
                "`{k}`: must be at least 1ms"
            )));
        }
        Ok(Some(ms))
    }

    fn count(&self, k: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(format!(
                    "`{k}`: `{v}` is not a whole number from 1 to {max}"
                ))),
            },
        }
    }
}

type Query = Vec<(String, String)>;

/// The query parameters of a route that takes `known`, each at most once.
pub(super) fn check_params(q: Query, known: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    Params::parse(q, known).map(|p| p.0)
}

fn query_params() -> BoxedFilter<(Query,)> {
    warp::query::<Query>().boxed()
}

/// `/api/v1/NAME` and nothing below it.
fn path(name: &'static str) -> BoxedFilter<()> {
    warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path(name))
        .and(warp::path::end())
        .boxed()
}

/// `GET /api/v1/NAME` with its query string, answered by `handler` with
/// the shared state.
fn get<H, F>(name: &'static str, state: &State, handler: H) -> BoxedFilter<(Response,)>
where
    H: Fn(State, Query) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let state = state.clone();
    path(name)
        .and(super::get())
        .and(query_params())
        .then(move |q: Query| handler(state.clone(), q))
        .boxed()
}

/// A GET whose JSON answer reads the history file, on the blocking pool.
fn get_json(
    name: &'static str,
    state: &State,
    answer: fn(&State, Query) -> Result<serde_json::Value, ApiError>,
) -> BoxedFilter<(Response,)> {
    get(name, state, move |s, q| async move {
        json_or_error(blocking(move || answer(&s, q)).await)
    })
}

pub fn routes(state: State) -> BoxedFilter<(Response,)> {
    let info = get("info", &state, |s, q| async move {
        json_or_error(Params::parse(q, &[]).map(|_| info_body(&s)))
    });
    let health = get("health", &state, |s, q| async move {
        if let Err(e) = Params::parse(q, &[]) {
            return e.into_response();
        }
        health(s).await
    });
    let probes = get_json("probes", &state, probes);
    let series = get_json("series", &state, series);
    let query = get_json("query", &state, query);
    let trends = get_json("trends", &state, trends);
    let events = get_json("events", &state, events);
    let openapi = path("openapi.json")
        .and(super::get())
        .and(super::params(&[]))
        .map(|_| {
            warp::reply::with_header(OPENAPI, "content-type", "application/json").into_response()
        });
    let s = state;
    let reload = path("reload")
        .and(warp::post())
        .and(super::params(&[]))
        .and(warp::header::optional::<String>("authorization"))
        .and(super::body())
        .then(move |_, auth: Option<String>, _body: bytes::Bytes| {
            let s = s.clone();
            async move { reload(&s, auth.as_deref()).await }
        });
    info.or(health)
        .unify()
        .or(probes)
        .unify()
        .or(series)
        .unify()
        .or(query)
        .unify()
        .or(trends)
        .unify()
        .or(events)
        .unify()
        .or(openapi)
        .unify()
        .or(reload)
        .unify()
        .boxed()
}

#[derive(Serialize)]
struct InfoBody<'a> {
    #[serde(flatten)]
    info: &'a super::Info,
    started_at: String,
    /// The history file and its write-ahead log together: what the data
    /// dir holds; the two parts follow.
    history_bytes: u64,
    history_file_bytes: u64,
    history_wal_bytes: u64,
    history_bound_bytes: u64,
    history: crate::live::StoreHealth,
    last_reload: Option<ReloadBody>,
}

#[derive(Serialize)]
struct ReloadBody {
    at: String,
    ok: bool,
    message: String,
}

fn info_body(s: &State) -> serde_json::Value {
    let live = s.live.read().expect("live lock");
    serde_json::to_value(InfoBody {
        info: &s.info,
        started_at: rfc3339(live.started_ms),
        history_bytes: live.store.file_bytes + live.store.wal_bytes,
        history_file_bytes: live.store.file_bytes,
        history_wal_bytes: live.store.wal_bytes,
        history_bound_bytes: live.store.bound_bytes,
        history: crate::live::StoreHealth {
            fault: live.store.fault_at(crate::sample::now_ms()),
            ..live.store.clone()
        },
        last_reload: live.last_reload.as_ref().map(|r| ReloadBody {
            at: rfc3339(r.ts_ms),
            ok: r.ok,
            message: r.message.clone(),
        }),
    })
    .expect("serializable")
}

/// The health document, computed at most once per [`HEALTH_CACHE`].
async fn health(s: State) -> Response {
    if let Some(body) = s
        .health_cache
        .lock()
        .expect("cache lock")
        .fresh(HEALTH_CACHE)
    {
        return json_bytes(body);
    }
    let s2 = s.clone();
    let body = blocking(move || {
        let reader = Reader::open(&s2.info.data_dir).ok();
        let live = s2.live.read().expect("live lock");
        let doc = super::health::document(&live, reader.as_ref(), now_ms());
        drop(live);
        Ok(bytes::Bytes::from(
            serde_json::to_vec(&doc).expect("serializable"),
        ))
    })
    .await;
    match body {
        Ok(b) => {
            s.health_cache.lock().expect("cache lock").put(b.clone());
            json_bytes(b)
        }
        Err(e) => e.into_response(),
    }
}

fn json_bytes(b: bytes::Bytes) -> Response {
    warp::reply::with_header(b.to_vec(), "content-type", "application/json").into_response()
}

/// A rendered answer kept for a short while.
#[derive(Default)]
pub struct Cached(Option<(Instant, bytes::Bytes)>);

impl Cached {
    pub fn fresh(&self, ttl: Duration) -> Option<bytes::Bytes> {
        self.0
            .as_ref()
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, b)| b.clone())
    }

    pub fn put(&mut self, b: bytes::Bytes) {
        self.0 = Some((Instant::now(), b));
    }
}

#[derive(Serialize)]
pub struct ReadingBody {
    pub key: String,
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub unit: String,
}

#[derive(Serialize)]
pub struct LastOutcome {
    pub at: String,
    pub took_seconds: f64,
    pub error: Option<String>,
    pub readings: Vec<ReadingBody>,
}

#[derive(Serialize)]
pub struct UptimeBody {
    pub window: &'static str,
    pub window_seconds: i64,
    /// Healthy + degraded time over observed time; `None` with no data.
    pub uptime_ratio: Option<f64>,
    pub coverage_ratio: f64,
    pub healthy_seconds: f64,
    pub degraded_seconds: f64,
    pub unhealthy_seconds: f64,
}

#[derive(Serialize)]
pub struct ProbeBody {
    pub name: String,
    pub kind: &'static str,
    pub interval_seconds: f64,
    pub timeout_seconds: f64,
    pub status: crate::sample::Status,
    pub status_since: Option<String>,
    pub reason: Option<String>,
    pub last: Option<LastOutcome>,
    pub uptime: Vec<UptimeBody>,
}

/// Every configured probe with its state, last outcome and uptime.
pub fn probe_bodies(
    s: &State,
    reader: Option<&Reader>,
    now: Ts,
) -> Result<Vec<ProbeBody>, ApiError> {
    let mut out: Vec<ProbeBody> = {
        let live = s.live.read().expect("live lock");
        live.configured
            .iter()
            .map(|meta| {
                let state = live.probes.get(&meta.name);
                let last = state.map(|p| LastOutcome {
                    at: rfc3339(p.last_ts_ms),
                    took_seconds: p.last_took_ms / 1000.0,
                    error: p.last_error.clone(),
                    readings: live
                        .latest_of(&meta.name)
                        .into_iter()
                        .map(|(k, v)| ReadingBody {
                            key: k.to_string(),
                            metric: k.metric.clone(),
                            labels: k
                                .labels
                                .iter()
                                .map(|(a, b)| (a.clone(), b.clone()))
                                .collect(),
                            value: v,
                            unit: live
                                .rings
                                .get(&k.to_string())
                                .map(|r| r.unit.as_str().to_string())
                                .unwrap_or_default(),
                        })
                        .collect(),
                });
                ProbeBody {
                    name: meta.name.clone(),
                    kind: meta.kind,
                    interval_seconds: meta.interval_ms as f64 / 1000.0,
                    timeout_seconds: meta.timeout_ms as f64 / 1000.0,
                    status: state.map_or(crate::sample::Status::Unknown, |p| p.status),
                    status_since: state.map(|p| rfc3339(p.since_ms)),
                    reason: state.and_then(|p| p.reason.clone()),
                    last,
                    uptime: Vec::new(),
                }
            })
            .collect()
    };
    if let Some(reader) = reader {
        let longest = UPTIME_WINDOWS.iter().map(|w| w.1).max().unwrap_or(0);
        let runs = reader.runs(now - longest, now).map_err(store_err)?;
        let ids: Vec<i64> = runs.iter().map(|(id, _)| *id).collect();
        let intervals: Vec<_> = runs.iter().map(|(_, i)| *i).collect();
        for p in &mut out {
            let transitions = reader.transitions(&p.name, &ids).map_err(store_err)?;
            p.uptime = UPTIME_WINDOWS
                .iter()
                .map(|&(window, ms)| {
                    let u = analysis::uptime(&intervals, &transitions, now - ms, now);
                    UptimeBody {
                        window,
                        window_seconds: ms / 1000,
                        uptime_ratio: u.uptime_ratio,
                        coverage_ratio: u.coverage_ratio,
                        healthy_seconds: u.healthy_ms as f64 / 1000.0,
                        degraded_seconds: u.degraded_ms as f64 / 1000.0,
                        unhealthy_seconds: u.unhealthy_ms as f64 / 1000.0,
                    }
                })
                .collect();
        }
    }
    Ok(out)
}

fn probes(s: &State, q: Query) -> Result<serde_json::Value, ApiError> {
    Params::parse(q, &[])?;
    let now = now_ms();
    // Without history the live part still answers; uptime is then empty.
    let reader = Reader::open(&s.info.data_dir).ok();
    let probes = probe_bodies(s, reader.as_ref(), now)?;
    Ok(serde_json::json!({ "probes": probes }))
}

fn series(s: &State, q: Query) -> Result<serde_json::Value, ApiError> {
    let p = Params::parse(q, &["prefix"])?;
    let reader = open_reader(s)?;
    let prefix = p.get("prefix").unwrap_or("");
    let list: Vec<serde_json::Value> = reader
        .series()
        .map_err(store_err)?
        .into_iter()
        .filter(|i| i.key.starts_with(prefix))
        .map(|i| {
            serde_json::json!({
                "key": i.key,
                "probe": i.probe,
                "metric": i.metric,
                "labels": labels_of(&i.labels),
                "unit": i.unit,
            })
        })
        .collect();
    Ok(serde_json::json!({ "series": list }))
}

fn labels_of(text: &str) -> BTreeMap<String, String> {
    SeriesKey::parse_labels(text)
        .map(|l| l.into_iter().collect())
        .unwrap_or_default()
}

#[derive(Serialize)]
struct PointBody {
    time: String,
    avg: f64,
    min: f64,
    max: f64,
    count: i64,
    last: f64,
}

fn query(s: &State, q: Query) -> Result<serde_json::Value, ApiError> {
    let p = Params::parse(q, &["key", "since", "until", "step", "max_points"])?;
    let now = now_ms();
    let key = p.get("key").filter(|k| !k.is_empty()).ok_or_else(|| {
        ApiError::bad_request("`key` is required (GET /api/v1/series lists them)")
    })?;
    let since = p.time("since", now - 3_600_000, now)?;
    let until = p.time("until", now, now)?;
    if since >= until {
        return Err(ApiError::bad_request(format!(
            "`since` ({}) must be before `until` ({})",
            rfc3339(since),
            rfc3339(until)
        )));
    }
    let step = p.duration("step")?;
    let max_points = p.count("max_points", DEFAULT_POINTS, MAX_POINTS)?;
    let reader = open_reader(s)?;
    let answer = reader
        .query(key, since, until, step, now, max_points)
        .map_err(store_err)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no series `{}` in history (GET /api/v1/series lists them)",
                key.chars().take(200).collect::<String>()
            ))
        })?;
    let points: Vec<PointBody> = answer
        .points
        .iter()
        .map(|pt| PointBody {
            time: rfc3339(pt.ts_ms),
            avg: pt.avg,
            min: pt.min,
            max: pt.max,
            count: pt.count,
            last: pt.last,
        })
        .collect();
    Ok(serde_json::json!({
        "key": answer.series.key,
        "unit": answer.series.unit,
        "tier": answer.tier,
        "step_seconds": answer.step_ms as f64 / 1000.0,
        "since": rfc3339(answer.since_ms),
        "until": rfc3339(answer.until_ms),
        "points": points,
    }))
}

/// Host metrics the trends route reports on, and whether each is a ratio
/// with a forecast toward 1.0.
const RESOURCES: [&str; 6] = [
    "cpu_used_ratio",
    "memory_used_ratio",
    "swap_used_ratio",
    "disk_used_ratio",
    "net_rx_bytes_per_second",
    "net_tx_bytes_per_second",
];

fn trends(s: &State, q: Query) -> Result<serde_json::Value, ApiError> {
    let p = Params::parse(q, &["window"])?;
    let window = p.duration("window")?.unwrap_or(86_400_000);
    let now = now_ms();
    let reader = open_reader(s)?;
    let mut out = Vec::new();
    for info in reader.series().map_err(store_err)? {
        if info.probe != "host" || !RESOURCES.contains(&info.metric.as_str()) {
            continue;
        }
        let Some(answer) = reader
            .query(&info.key, now - window, now, None, now, 500)
            .map_err(store_err)?
        else {
            continue;
        };
        let points = answer.averages();
        let trend = analysis::trend(&points);
        let forecast = (info.unit == "ratio").then(|| {
            analysis::forecast(
                &points,
                ForecastInput {
                    threshold: 1.0,
                    now,
                },
            )
        });
        out.push(serde_json::json!({
            "key": info.key,
            "metric": info.metric,
            "labels": labels_of(&info.labels),
            "unit": info.unit,
            "window_seconds": window / 1000,
            "points": points.len(),
            "current": points.last().map(|p| p.value),
            "slope_per_day": trend.as_ref().map(|t| t.slope_per_day),
            "class": trend.as_ref().map(|t| t.class),
            "r_squared": trend.as_ref().map(|t| t.r_squared),
            "forecast": forecast.map(forecast_body),
        }));
    }
    Ok(serde_json::json!({ "rule": analysis::trend::TREND_RULE, "trends": out }))
}

/// A forecast with RFC 3339 times and a sentence for people.
fn forecast_body(f: analysis::Forecast) -> serde_json::Value {
    use analysis::Forecast::*;
    match f {
        Reaches {
            eta_seconds,
            eta_low_seconds,
            eta_high_seconds,
            at,
            r_squared,
            ..
        } => serde_json::json!({
            "status": "reaches",
            "threshold": 1.0,
            "at": rfc3339(at),
            "eta_seconds": eta_seconds,
            "eta_low_seconds": eta_low_seconds,
            "eta_high_seconds": eta_high_seconds,
            "r_squared": r_squared,
        }),
        Reached { value } => {
            serde_json::json!({"status": "reached", "threshold": 1.0, "value": value})
        }
        NotApproaching { r_squared, .. } => {
            serde_json::json!({"status": "not_approaching", "threshold": 1.0, "r_squared": r_squared})
        }
        InsufficientSignal { reason } => {
            serde_json::json!({"status": "insufficient_signal", "threshold": 1.0, "reason": reason})
        }
    }
}

fn events(s: &State, q: Query) -> Result<serde_json::Value, ApiError> {
    let p = Params::parse(q, &["since", "until", "probe", "limit"])?;
    let now = now_ms();
    let since = p.time("since", now - 7 * 86_400_000, now)?;
    let until = p.time("until", now, now)?;
    if since >= until {
        return Err(ApiError::bad_request(
            "`since` must be before `until`".to_string(),
        ));
    }
    let limit = p.count("limit", DEFAULT_EVENTS, MAX_EVENTS)?;
    let reader = open_reader(s)?;
    let rows = reader
        .events(p.get("probe"), since, until.saturating_add(1), limit)
        .map_err(store_err)?;
    let list: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "id": e.id,
                "at": rfc3339(e.ts_ms),
                "probe": e.probe,
                "kind": e.kind,
                "from_status": e.from_status,
                "to_status": e.to_status,
                "message": e.message,
                "maintenance_run_id": e.maintenance_run,
            })
        })
        .collect();
    Ok(serde_json::json!({ "events": list }))
}

async fn reload(s: &State, auth: Option<&str>) -> Response {
    if let Err(e) = s.authorized(auth) {
        return e.into_response();
    }
    let Some(tx) = &s.reloads else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "reload is not available")
            .into_response();
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if tx.send(reply).await.is_err() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping")
            .into_response();
    }
    match answer.await {
        Ok(Ok(())) => warp::reply::json(&serde_json::json!({"reloaded": true})).into_response(),
        Ok(Err(e)) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e).into_response(),
        Err(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping").into_response()
        }
    }
}
