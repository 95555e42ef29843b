//! The status page at `/` and its assets at `/assets/<name>`, called by
//! [`super::routes`] (which adds the request gate, the security headers and
//! the 404 answer).
//!
//! The page is one server-rendered document that is complete without
//! JavaScript: host summary, every configured probe with its status (colour,
//! symbol and word), latency, reason, uptime (per window and per day) and a
//! sparkline of the recent values held in memory, and the recent events. `page.js` refreshes the parts marked `data-live` every
//! 10 s without a reload and draws the history chart from `/api/v1/query`.
//! The Content-Security-Policy allows no inline script or style, so bars and
//! sparklines are SVG attributes and colours are classes.
//!
//! Markup is written with maud, which escapes every interpolated value:
//! probe reasons come from the services watched and may hold any text.
//! Assets live in a fixed table compiled into the binary; a URL never names
//! a file, so no path can leave it.
//!
//! The rendered page is kept for a second in `Shared::page_cache`; rendering
//! (history reads included) runs on the blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use maud::{DOCTYPE, Markup, html};
use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::api::{self, ProbeBody};
use super::{State, blocking, rfc3339};
use crate::analysis::{self, Forecast, ForecastInput};
use crate::live::Live;
use crate::sample::{SeriesKey, Status, Ts, Unit, now_ms};
use crate::store::Reader;
use crate::store::reader::{EventRow, SeriesInfo};

/// How long a rendered page is served again.
const PAGE_CACHE: Duration = Duration::from_secs(1);
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Daily uptime bars per probe.
const DAYS: i64 = 30;
/// Recent events listed.
const EVENTS: usize = 20;
/// History behind a disk's "full in N days".
const FORECAST_WINDOW_MS: i64 = 7 * DAY_MS;

/// A file served at `/assets/<name>`.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// Every asset. The chart library is uPlot 1.6.32 from the npm package
/// `uplot` (MIT, `uPlot.LICENSE`), its `dist/uPlot.iife.min.js` and
/// `dist/uPlot.min.css` unchanged.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "page.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("assets/page.css"),
    },
    Asset {
        name: "page.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/page.js"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("assets/uPlot.min.css"),
    },
    Asset {
        name: "uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("assets/uPlot.LICENSE"),
    },
    Asset {
        name: "icon-healthy.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("assets/icon-healthy.svg"),
    },
    Asset {
        name: "icon-degraded.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("assets/icon-degraded.svg"),
    },
    Asset {
        name: "icon-unhealthy.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("assets/icon-unhealthy.svg"),
    },
    Asset {
        name: "icon-unknown.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("assets/icon-unknown.svg"),
    },
];

pub fn find_asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

pub fn routes(state: State) -> BoxedFilter<(Response,)> {
    let page = warp::path::end()
        .and(warp::get())
        .then(move || page(state.clone()));
    let assets = warp::path("assets")
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::get())
        .and_then(|name: String| async move {
            find_asset(&name)
                .map(asset_response)
                .ok_or_else(warp::reject::not_found)
        });
    page.or(assets).unify().boxed()
}

fn asset_response(a: &'static Asset) -> Response {
    let mut r = Response::new(a.bytes.into());
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static(a.content_type));
    // URLs carry `?v=<version>`, so an upgrade is never hidden by this.
    h.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

fn html_response(body: bytes::Bytes) -> Response {
    let mut r = Response::new(body.into());
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// The page, rendered at most once per [`PAGE_CACHE`]. The request that
/// finds it stale re-stamps the old page and renders; the others are served
/// the old page meanwhile instead of rendering it again.
async fn page(state: State) -> Response {
    let stale = {
        let mut cache = state.page_cache.lock().expect("page cache lock");
        if let Some(body) = cache.fresh(PAGE_CACHE) {
            return html_response(body);
        }
        let stale = cache.fresh(Duration::MAX);
        if let Some(b) = &stale {
            cache.put(b.clone());
        }
        stale
    };
    let s = state.clone();
    match blocking(move || Ok(render(&s, now_ms()))).await {
        Ok(body) => {
            state
                .page_cache
                .lock()
                .expect("page cache lock")
                .put(body.clone());
            html_response(body)
        }
        Err(e) => match stale {
            Some(body) => html_response(body),
            None => e.into_response(),
        },
    }
}

/// Renders the page from the live state and, where it opens, history.
pub fn render(s: &State, now: Ts) -> bytes::Bytes {
    let view = gather(s, now);
    bytes::Bytes::from(markup(&view).into_string())
}

// ---------------------------------------------------------------------------
// What the page shows, gathered before any markup is written.

struct View {
    hostname: String,
    version: &'static str,
    now: Ts,
    started: Ts,
    overall: Status,
    summary: String,
    host: Option<Host>,
    probes: Vec<ProbeView>,
    events: Vec<EventRow>,
    /// Chartable series, grouped by probe.
    series: BTreeMap<String, Vec<SeriesInfo>>,
    chart_key: Option<String>,
    /// Why history (uptime, events, charts) is missing, when it is.
    history_error: Option<String>,
}

struct Host {
    cpu: Option<f64>,
    cores: usize,
    cpu_spark: Spark,
    memory: Option<(f64, f64)>,
    swap: Option<(f64, f64)>,
    disks: Vec<Disk>,
    net: Option<(f64, f64)>,
    interfaces: usize,
    load: Option<[f64; 3]>,
    uptime_seconds: Option<f64>,
}

struct Disk {
    mount: String,
    ratio_key: String,
    used: f64,
    total: f64,
    full_in_days: Option<f64>,
}

struct ProbeView {
    body: ProbeBody,
    /// Seconds: the kind's own latency reading, else how long the check took.
    latency: Option<f64>,
    spark: Spark,
    days: Vec<Day>,
}

/// The last hour of one series, for a sparkline.
struct Spark {
    key: String,
    unit: Unit,
    interval_ms: i64,
    points: Vec<(Ts, f64)>,
}

impl Spark {
    /// The time the sparkline spans: what the in-memory ring holds (an hour
    /// at most, less at short intervals), at least 5 minutes so that a fresh
    /// agent's first seconds are not stretched across the whole width.
    fn window(&self, now: Ts) -> i64 {
        let held = self.points.first().map_or(0, |p| now - p.0);
        let minutes = (held + 59_999) / 60_000;
        (minutes * 60_000).clamp(5 * 60_000, HOUR_MS)
    }

    fn span_text(&self, now: Ts) -> String {
        match self.window(now) {
            HOUR_MS => "last hour".into(),
            w => format!("last {} min", w / 60_000),
        }
    }
}

struct Day {
    start: Ts,
    uptime: Option<f64>,
    coverage: f64,
}

/// The series that stands for a probe of each kind in its sparkline.
fn main_metric(kind: &str) -> &'static str {
    match kind {
        "host" => "cpu_used_ratio",
        "tcp" => "connect_seconds",
        "postgres" => "query_seconds",
        "redis" => "ping_seconds",
        "http" => "response_seconds",
        "access_log" => "requests_per_second",
        "worker" => "processes",
        _ => "",
    }
}

/// The reading that says how long a check of each kind took, in seconds
/// (as in the health document).
fn latency_metric(kind: &str) -> Option<&'static str> {
    match kind {
        "tcp" => Some("connect_seconds"),
        "postgres" => Some("query_seconds"),
        "redis" => Some("ping_seconds"),
        "http" => Some("response_seconds"),
        "access_log" => Some("latency_p50_seconds"),
        _ => None,
    }
}

fn gather(s: &State, now: Ts) -> View {
    let (reader, mut history_error) = match Reader::open(&s.info.data_dir) {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let (started, mut host, mut sparks) = {
        let live = s.live.read().expect("live lock");
        let sparks: HashMap<String, Spark> = live
            .configured
            .iter()
            .map(|m| {
                let key = SeriesKey::new(&m.name, main_metric(m.kind), &[]).to_string();
                let spark = spark(&live, key, m.interval_ms as i64, now);
                (m.name.clone(), spark)
            })
            .collect();
        (live.started_ms, host(&live, now), sparks)
    };
    let bodies = match api::probe_bodies(s, reader.as_ref(), now) {
        Ok(b) => b,
        Err(e) => {
            history_error.get_or_insert(e.message);
            api::probe_bodies(s, None, now).unwrap_or_default()
        }
    };
    let mut days = HashMap::new();
    let mut events = Vec::new();
    let mut series: BTreeMap<String, Vec<SeriesInfo>> = BTreeMap::new();
    if let Some(r) = &reader {
        let names: Vec<&str> = bodies.iter().map(|b| b.name.as_str()).collect();
        let read = (|| {
            days = daily(r, &names, now)?;
            events = r.events(None, now - 365 * DAY_MS, now + 1, EVENTS)?;
            for i in r.series()? {
                series.entry(i.probe.clone()).or_default().push(i);
            }
            if let Some(h) = &mut host {
                for d in &mut h.disks {
                    d.full_in_days = full_in_days(r, &d.ratio_key, now);
                }
            }
            Ok::<(), crate::store::StoreError>(())
        })();
        if let Err(e) = read {
            history_error.get_or_insert(e.to_string());
        }
    }
    let has = |k: &str| series.values().flatten().any(|i| i.key == k);
    let chart_key = ["host.cpu_used_ratio".to_string()]
        .into_iter()
        .chain(sparks.values().map(|sp| sp.key.clone()))
        .find(|k| has(k))
        .or_else(|| series.values().flatten().next().map(|i| i.key.clone()));
    let (overall, summary) = overall(&bodies);
    let probes = bodies
        .into_iter()
        .map(|body| {
            let latency = match latency_metric(body.kind) {
                Some(m) => body.last.as_ref().and_then(|l| {
                    l.readings
                        .iter()
                        .find(|r| r.metric == m && r.labels.is_empty())
                        .map(|r| r.value)
                }),
                None => body.last.as_ref().map(|l| l.took_seconds),
            };
            ProbeView {
                spark: sparks.remove(&body.name).unwrap_or(Spark {
                    key: String::new(),
                    unit: Unit::None,
                    interval_ms: 0,
                    points: Vec::new(),
                }),
                days: days.remove(&body.name).unwrap_or_default(),
                latency,
                body,
            }
        })
        .collect();
    View {
        hostname: s.info.hostname.clone(),
        version: s.info.version,
        now,
        started,
        overall,
        summary,
        host,
        probes,
        events,
        series,
        chart_key,
        history_error,
    }
}

fn spark(live: &Live, key: String, interval_ms: i64, now: Ts) -> Spark {
    let unit = live.rings.get(&key).map_or(Unit::None, |r| r.unit);
    let points = live
        .recent(&key)
        .into_iter()
        .filter(|(ts, v)| *ts >= now - HOUR_MS && v.is_finite())
        .collect();
    Spark {
        key,
        unit,
        interval_ms,
        points,
    }
}

/// The host figures of the host probe's last tick; `None` before it has one.
fn host(live: &Live, now: Ts) -> Option<Host> {
    let readings = live.latest_of("host");
    if readings.is_empty() {
        return None;
    }
    let get = |m: &str| live.latest("host", m, &[]);
    let pair = |a: Option<f64>, b: Option<f64>| a.zip(b);
    let sum = |m: &str| {
        let v: Vec<f64> = readings
            .iter()
            .filter(|(k, _)| k.metric == m)
            .map(|(_, v)| *v)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>())
    };
    let disks = readings
        .iter()
        .filter(|(k, _)| k.metric == "disk_used_bytes")
        .filter_map(|(k, used)| {
            let mount = k.label("mount")?;
            let total = live.latest("host", "disk_total_bytes", &[("mount", mount)])?;
            Some(Disk {
                mount: mount.to_string(),
                ratio_key: format!("host.disk_used_ratio{}", k.labels_text()),
                used: *used,
                total,
                full_in_days: None,
            })
        })
        .collect();
    let interval = live
        .configured
        .iter()
        .find(|m| m.name == "host")
        .map_or(0, |m| m.interval_ms as i64);
    let load = match (get("load1"), get("load5"), get("load15")) {
        (Some(a), Some(b), Some(c)) => Some([a, b, c]),
        _ => None,
    };
    Some(Host {
        cpu: get("cpu_used_ratio"),
        cores: readings
            .iter()
            .filter(|(k, _)| k.metric == "cpu_core_used_ratio")
            .count(),
        cpu_spark: spark(live, "host.cpu_used_ratio".into(), interval, now),
        memory: pair(get("memory_used_bytes"), get("memory_total_bytes")),
        swap: pair(get("swap_used_bytes"), get("swap_total_bytes")),
        disks,
        net: pair(
            sum("net_rx_bytes_per_second"),
            sum("net_tx_bytes_per_second"),
        ),
        interfaces: readings
            .iter()
            .filter(|(k, _)| k.metric == "net_rx_bytes_per_second")
            .count(),
        load,
        uptime_seconds: get("uptime_seconds"),
    })
}

/// Days until a disk is full, only when the forecast is confident.
fn full_in_days(r: &Reader, key: &str, now: Ts) -> Option<f64> {
    let a = r
        .query(key, now - FORECAST_WINDOW_MS, now, None, now, 1000)
        .ok()??;
    match analysis::forecast(
        &a.averages(),
        ForecastInput {
            threshold: 1.0,
            now,
        },
    ) {
        Forecast::Reaches { eta_seconds, .. } => Some(eta_seconds / 86_400.0),
        _ => None,
    }
}

/// Uptime per UTC day over the last [`DAYS`] days (today so far last), per
/// probe.
fn daily(
    r: &Reader,
    names: &[&str],
    now: Ts,
) -> Result<HashMap<String, Vec<Day>>, crate::store::StoreError> {
    let today = now.div_euclid(DAY_MS) * DAY_MS;
    let first = today - (DAYS - 1) * DAY_MS;
    let runs = r.runs(first, now)?;
    let ids: Vec<i64> = runs.iter().map(|(id, _)| *id).collect();
    let intervals: Vec<_> = runs.iter().map(|(_, i)| *i).collect();
    let mut out = HashMap::new();
    for name in names {
        let transitions = r.transitions(name, &ids)?;
        let days = (0..DAYS)
            .map(|i| {
                let start = first + i * DAY_MS;
                let u =
                    analysis::uptime(&intervals, &transitions, start, (start + DAY_MS).min(now));
                Day {
                    start,
                    uptime: u.uptime_ratio,
                    coverage: u.coverage_ratio,
                }
            })
            .collect();
        out.insert(name.to_string(), days);
    }
    Ok(out)
}

/// The worst known status of the probes, and a sentence counting them.
fn overall(probes: &[ProbeBody]) -> (Status, String) {
    let n = probes.len();
    if n == 0 {
        return (Status::Unknown, "no probes configured".into());
    }
    let count = |s: Status| probes.iter().filter(|p| p.status == s).count();
    let worst = probes
        .iter()
        .map(|p| p.status)
        .filter(|s| *s != Status::Unknown)
        .max_by_key(|s| s.severity())
        .unwrap_or(Status::Unknown);
    let plural = if n == 1 { "probe" } else { "probes" };
    if count(Status::Healthy) == n {
        let all = if n == 1 { "" } else { "all " };
        return (Status::Healthy, format!("{all}{n} {plural} healthy"));
    }
    let parts: Vec<String> = [
        (Status::Unhealthy, "unhealthy"),
        (Status::Degraded, "degraded"),
        (Status::Unknown, "not checked yet"),
        (Status::Healthy, "healthy"),
    ]
    .iter()
    .filter(|(s, _)| count(*s) > 0)
    .map(|(s, word)| format!("{} {word}", count(*s)))
    .collect();
    (worst, format!("{} of {n} {plural}", parts.join(", ")))
}

// ---------------------------------------------------------------------------
// Figures as people read them.

fn symbol(s: Status) -> &'static str {
    match s {
        Status::Healthy => "✓",
        Status::Degraded => "!",
        Status::Unhealthy => "✕",
        Status::Unknown => "?",
    }
}

fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if p > 0.0 && p < 0.1 {
        "<0.1%".into()
    } else if p != 0.0 && p.abs() < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// Uptime never rounds up to 100%: 99.996% shows as 99.99%.
fn uptime_percent(ratio: f64) -> String {
    if ratio >= 1.0 {
        "100%".into()
    } else if ratio <= 0.0 {
        "0%".into()
    } else {
        format!("{:.2}%", (ratio * 10_000.0).floor() / 100.0)
    }
}

fn bytes(v: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let (mut v, mut i) = (v, 0);
    while v.abs() >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    match (i, v.abs() < 10.0) {
        (0, _) => format!("{v:.0} B"),
        (_, true) => format!("{v:.1} {}", UNITS[i]),
        _ => format!("{v:.0} {}", UNITS[i]),
    }
}

fn seconds(s: f64) -> String {
    let ms = s * 1000.0;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{s:.2} s")
    }
}

fn value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Ratio => percent(v),
        Unit::Bytes => bytes(v),
        Unit::BytesPerSecond => format!("{}/s", bytes(v)),
        Unit::PerSecond => format!("{v:.1}/s"),
        Unit::Seconds => seconds(v),
        Unit::Count => format!("{v:.0}"),
        Unit::None => format!("{v:.2}"),
    }
}

/// When a disk will be full: hours under two days, else days.
fn full_in(days: f64) -> String {
    if days < 2.0 {
        format!("full in {:.0} h", (days * 24.0).max(1.0))
    } else {
        format!("full in {days:.0} days")
    }
}

/// A span of time, in its two largest units: `3 h 5 min`.
fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min")
    } else {
        format!("{s} s")
    }
}

/// `2026-11-28 10:00:00 UTC` inside a `<time>` the script shows in local time.
fn time(ts: Ts) -> Markup {
    time_of(&rfc3339(ts))
}

fn time_of(rfc: &str) -> Markup {
    let text = rfc.get(..19).unwrap_or(rfc).replace('T', " ");
    html! { time datetime=(rfc) { (text) " UTC" } }
}

fn level(ratio: f64) -> &'static str {
    if ratio >= 0.9 {
        "bad"
    } else if ratio >= 0.75 {
        "warn"
    } else {
        "ok"
    }
}

// ---------------------------------------------------------------------------
// Markup.

fn asset(name: &str, version: &str) -> String {
    format!("/assets/{name}?v={version}")
}

fn markup(v: &View) -> Markup {
    let title = page_title(v);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) }
                link rel="icon" type="image/svg+xml" id="icon"
                    href=(asset(&format!("icon-{}.svg", v.overall), v.version));
                link rel="stylesheet" href=(asset("uPlot.min.css", v.version));
                link rel="stylesheet" href=(asset("page.css", v.version));
                script src=(asset("uPlot.iife.min.js", v.version)) defer {}
                script src=(asset("page.js", v.version)) defer {}
            }
            body {
                (header(v))
                p #conn .conn hidden role="status" {}
                main {
                    (host_section(v))
                    (probes_section(v))
                    (chart_section(v))
                    (events_section(v))
                }
                footer {
                    "upkeep " (v.version) " · JSON: "
                    a href="/api/v1/health" { "health" } " · "
                    a href="/api/v1/probes" { "probes" } " · "
                    a href="/api/v1/events" { "events" } " · "
                    a href="/metrics" { "metrics" }
                    " · charts by "
                    a href=(asset("uPlot.LICENSE", v.version)) { "uPlot" }
                }
            }
        }
    }
}

/// `✕ unhealthy · db1 · upkeep`: the status first, readable in a tab.
fn page_title(v: &View) -> String {
    format!(
        "{} {} · {} · upkeep",
        symbol(v.overall),
        v.overall,
        v.hostname
    )
}

fn header(v: &View) -> Markup {
    let st = v.overall.as_str();
    html! {
        // The script takes the title and icon of a refreshed page from here.
        header #head .top data-live data-title=(page_title(v)) data-status=(st) {
            div .brand {
                span .app { "upkeep" }
                h1 { (v.hostname) }
            }
            div class={ "overall s-" (st) } {
                span .sym aria-hidden="true" { (symbol(v.overall)) }
                strong { (st) }
                span .count { (v.summary) }
            }
            p .meta {
                "version " (v.version)
                " · agent started " (time(v.started)) " (" (span(v.now - v.started)) " ago)"
                " · updated " (time(v.now))
            }
        }
    }
}

/// A horizontal bar of `ratio` (0..=1), coloured by level.
fn bar(ratio: f64) -> Markup {
    let w = (ratio.clamp(0.0, 1.0) * 100.0 * 10.0).round() / 10.0;
    html! {
        svg .bar viewBox="0 0 100 4" preserveAspectRatio="none" aria-hidden="true" {
            rect .track width="100" height="4" rx="1" {}
            rect class={ "fill " (level(ratio)) } width=(w) height="4" rx="1" {}
        }
    }
}

fn host_section(v: &View) -> Markup {
    html! {
        section #host .host data-live aria-labelledby="host-h" {
            h2 #host-h { "Host" }
            @match &v.host {
                None => p .empty { "No host figures yet: the host probe has not reported." },
                Some(h) => div .cards {
                    div .card {
                        h3 { "CPU" }
                        @if let Some(c) = h.cpu {
                            p .big { (percent(c)) }
                            (bar(c))
                        } @else {
                            p .big .na { "—" }
                        }
                        p .sub {
                            @if h.cores > 0 { (h.cores) " cores · " }
                            (h.cpu_spark.span_text(v.now))
                        }
                        (sparkline(&h.cpu_spark, v.now))
                    }
                    div .card {
                        h3 { "Memory" }
                        @if let Some((used, total)) = h.memory {
                            p .big { (percent(used / total.max(1.0))) }
                            (bar(used / total.max(1.0)))
                            p .sub { (bytes(used)) " of " (bytes(total)) }
                        } @else { p .big .na { "—" } }
                    }
                    div .card {
                        h3 { "Swap" }
                        @match h.swap {
                            Some((used, total)) if total > 0.0 => {
                                p .big { (percent(used / total)) }
                                (bar(used / total))
                                p .sub { (bytes(used)) " of " (bytes(total)) }
                            }
                            Some(_) => { p .big .na { "none" } p .sub { "no swap configured" } }
                            None => { p .big .na { "—" } }
                        }
                    }
                    @for d in &h.disks {
                        div .card {
                            h3 { "Disk " code { (d.mount) } }
                            p .big { (percent(d.used / d.total.max(1.0))) }
                            (bar(d.used / d.total.max(1.0)))
                            p .sub { (bytes(d.used)) " of " (bytes(d.total)) }
                            @if let Some(days) = d.full_in_days {
                                p class={ "forecast " @if days < 7.0 { "bad" } @else if days < 30.0 { "warn" } } {
                                    (full_in(days))
                                }
                            }
                        }
                    }
                    div .card {
                        h3 { "Network" }
                        @if let Some((rx, tx)) = h.net {
                            p .big .pair {
                                span title="received" { "↓ " (bytes(rx)) "/s" }
                                span title="sent" { "↑ " (bytes(tx)) "/s" }
                            }
                            p .sub { "received / sent · " (h.interfaces) " interface" @if h.interfaces != 1 { "s" } }
                        } @else { p .big .na { "—" } }
                    }
                    div .card {
                        h3 { "Load" }
                        @if let Some([l1, l5, l15]) = h.load {
                            p .big { (format!("{l1:.2}")) }
                            p .sub { "5 m " (format!("{l5:.2}")) " · 15 m " (format!("{l15:.2}")) }
                        } @else { p .big .na { "—" } }
                        @if let Some(u) = h.uptime_seconds {
                            p .sub { "host up " (span((u * 1000.0) as i64)) }
                        }
                    }
                }
            }
        }
    }
}

fn probes_section(v: &View) -> Markup {
    html! {
        section #probes .probes data-live aria-labelledby="probes-h" {
            h2 #probes-h { "Probes" }
            @if v.probes.is_empty() {
                p .empty { "No probes configured." }
            }
            @for p in &v.probes {
                (probe(v, p))
            }
            @if let Some(e) = &v.history_error {
                p .notice { "History is unavailable, so uptime and events are not shown: " (e) }
            }
        }
    }
}

fn probe(v: &View, p: &ProbeView) -> Markup {
    let b = &p.body;
    let st = b.status.as_str();
    let chart = format!("/?series={}&range=1h#history", encode(&p.spark.key));
    html! {
        article class={ "probe s-" (st) } data-probe=(b.name) {
            div .state {
                span .sym aria-hidden="true" { (symbol(b.status)) }
                span .word { (st) }
            }
            div .name {
                h3 { (b.name) }
                span .kind { (b.kind) " · every " (format!("{}", b.interval_seconds)) " s" }
            }
            div .latency title="latency of the last check" {
                @match p.latency {
                    Some(s) => { (seconds(s)) }
                    None => span .na { "—" },
                }
                @if let Some(last) = &b.last {
                    span .ago { (time_of(&last.at)) }
                }
            }
            a .sparklink href=(chart) data-series=(p.spark.key) title="open in the history chart" {
                (sparkline(&p.spark, v.now))
            }
            div .uptime {
                @if b.uptime.is_empty() {
                    span .na { "uptime: no history" }
                }
                @for u in &b.uptime {
                    span .win title=(format!("observed {} of the last {}", percent(u.coverage_ratio), u.window)) {
                        span .wl { (u.window) }
                        @match u.uptime_ratio {
                            Some(r) => span class={ "wv " (uptime_class(r)) } { (uptime_percent(r)) },
                            None => span .wv .na { "no data" },
                        }
                        @if u.coverage_ratio < 0.995 {
                            span .cov { "obs. " (percent(u.coverage_ratio)) }
                        }
                    }
                }
            }
            (day_bars(&p.days))
            @if let Some(reason) = &b.reason {
                p .reason { (reason) }
            } @else if let Some(err) = b.last.as_ref().and_then(|l| l.error.as_ref()) {
                p .reason { (err) }
            }
            @if let Some(since) = &b.status_since {
                p .since { (st) " since " (time_of(since)) }
            }
        }
    }
}

fn uptime_class(r: f64) -> &'static str {
    if r >= 0.999 {
        "ok"
    } else if r >= 0.99 {
        "warn"
    } else {
        "bad"
    }
}

/// Percent-encodes a query value (series keys hold `{`, `"` and `=`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The last hour of a series as an SVG line, broken where ticks are missing.
fn sparkline(s: &Spark, now: Ts) -> Markup {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    if s.points.is_empty() {
        return html! { span .spark .nodata { "no data in the last hour" } };
    }
    let window = s.window(now);
    let from = now - window;
    let (lo, hi) = s
        .points
        .iter()
        .fold((0.0f64, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let x = |t: Ts| ((t - from).max(0) as f64 / window as f64 * W * 10.0).round() / 10.0;
    let y = |v: f64| ((H - 1.0 - (v - lo) / (hi - lo) * (H - 2.0)) * 10.0).round() / 10.0;
    let gap = (s.interval_ms * 3).max(10_000);
    let mut d = String::new();
    let mut prev: Option<Ts> = None;
    for &(t, v) in &s.points {
        let cmd = match prev {
            Some(p) if t - p <= gap => 'L',
            _ => 'M',
        };
        d.push_str(&format!("{cmd}{} {}", x(t), y(v)));
        if cmd == 'M' {
            // A lone point still shows: a short level stroke.
            d.push_str("h0.8");
        }
        prev = Some(t);
    }
    let values = s.points.iter().map(|p| p.1);
    let min = values.clone().fold(f64::INFINITY, f64::min);
    let max = values.fold(f64::NEG_INFINITY, f64::max);
    let last = s.points.last().map_or(0.0, |p| p.1);
    let label = format!(
        "{}: now {}, min {}, max {}",
        s.span_text(now),
        value(last, s.unit),
        value(min, s.unit),
        value(max, s.unit)
    );
    html! {
        svg .spark viewBox=(format!("0 0 {W} {H}")) preserveAspectRatio="none" role="img" aria-label=(label) {
            title { (label) }
            path d=(d) vector-effect="non-scaling-stroke" {}
        }
    }
}

/// One bar per day: coloured by uptime, a short grey dash where nothing
/// was observed.
fn day_bars(days: &[Day]) -> Markup {
    if days.is_empty() {
        return html! {};
    }
    let known: Vec<f64> = days.iter().filter_map(|d| d.uptime).collect();
    let label = format!(
        "uptime per day, last {} days; {} with data",
        days.len(),
        known.len()
    );
    html! {
        div .days {
            svg viewBox=(format!("0 0 {} 16", days.len() * 5 - 1)) preserveAspectRatio="none" role="img" aria-label=(label) {
                @for (i, d) in days.iter().enumerate() {
                    @let date = rfc3339(d.start);
                    @let date = &date[..10];
                    @match d.uptime {
                        Some(u) => rect class=(uptime_class(u)) x=(i * 5) y="0" width="4" height="16" rx="0.8" {
                            title { (date) ": " (uptime_percent(u)) " up, " (percent(d.coverage)) " observed" }
                        },
                        None => rect .nodata x=(i * 5) y="6" width="4" height="4" rx="0.8" {
                            title { (date) ": no data" }
                        },
                    }
                }
            }
            span .dl { (days.len()) " days" }
            span .dr { "today" }
        }
    }
}

fn chart_section(v: &View) -> Markup {
    const RANGES: [&str; 5] = ["1h", "24h", "7d", "30d", "1y"];
    html! {
        section #history .history aria-labelledby="history-h" {
            h2 #history-h { "History" }
            // Without series the form is empty; the script fills it from
            // `/api/v1/series` once history has some.
            form #chart-form .chart-controls method="get" action="/" {
                label for="series" .visually-hidden { "Series" }
                select #series name="series" {
                    @for (probe, list) in &v.series {
                        optgroup label=(probe) {
                            @for i in list {
                                option value=(i.key) selected[v.chart_key.as_deref() == Some(i.key.as_str())] {
                                    (i.key.strip_prefix(&format!("{probe}.")).unwrap_or(&i.key))
                                }
                            }
                        }
                    }
                }
                div .ranges role="group" aria-label="Range" {
                    @for r in RANGES {
                        button type="submit" name="range" value=(r) aria-pressed=(if r == "1h" { "true" } else { "false" }) { (r) }
                    }
                }
            }
            div #chart .chart data-points="0" {}
            p #chart-note .note {
                @if v.series.is_empty() { "No series in history yet." } @else { "min–max band and average" }
            }
            noscript { p .note { "The chart needs JavaScript; the figures are at " code { "/api/v1/query?key=…&since=24h" } "." } }
        }
    }
}

fn events_section(v: &View) -> Markup {
    html! {
        section #events .events data-live aria-labelledby="events-h" {
            h2 #events-h { "Recent events" }
            @if v.events.is_empty() {
                p .empty {
                    @if v.history_error.is_some() { "History is unavailable." } @else { "No events yet." }
                }
            } @else {
                ol {
                    @for e in &v.events {
                        @let st = e.to_status.as_deref().and_then(Status::parse);
                        li class=(match st { Some(s) => format!("s-{s}"), None => "agent".into() }) {
                            (time(e.ts_ms))
                            span .sym aria-hidden="true" { (st.map_or("•", symbol)) }
                            span .msg { (e.message) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use super::*;
    use crate::config::ApiConfig;
    use crate::live::{ProbeMeta, ProbeState};
    use crate::web::{Info, Shared};

    const HOSTILE: &str = "<script>alert(1)</script>\"'&";

    fn state(live: Live) -> State {
        Arc::new(Shared::new(
            Info {
                version: "0.0.0-test",
                hostname: "web<b>host".into(),
                config_path: None,
                data_dir: std::env::temp_dir().join("upkeep-page-test-no-such-dir"),
            },
            Arc::new(RwLock::new(live)),
            Default::default(),
            &ApiConfig::default(),
            None,
            None,
        ))
    }

    fn hostile_live() -> Live {
        let mut live = Live {
            started_ms: 1_700_000_000_000,
            ..Live::default()
        };
        let name = "<img src=x onerror=alert(2)>";
        live.configured.push(ProbeMeta {
            name: name.into(),
            kind: "tcp",
            interval_ms: 1000,
            timeout_ms: 1000,
        });
        live.probes.insert(
            name.into(),
            ProbeState {
                kind: "tcp",
                status: Status::Unhealthy,
                since_ms: 1_700_000_000_000,
                reason: Some(HOSTILE.into()),
                last_ts_ms: 1_700_000_001_000,
                last_took_ms: 3.0,
                last_error: None,
            },
        );
        live.push(
            &SeriesKey::new(name, "connect_seconds", &[("label", HOSTILE)]),
            Unit::Seconds,
            1_700_000_001_000,
            0.002,
        );
        live
    }

    async fn get(s: &State, path: &str) -> warp::http::Response<bytes::Bytes> {
        warp::test::request()
            .method("GET")
            .path(path)
            .header("host", "127.0.0.1")
            .reply(&crate::web::routes(s.clone()))
            .await
    }

    #[test]
    fn hostile_names_and_reasons_are_escaped() {
        let s = state(hostile_live());
        let html = String::from_utf8(render(&s, 1_700_000_002_000).to_vec()).unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(!html.contains("web<b>host"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"));
        assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
        // The page says history is missing rather than showing zeros.
        assert!(html.contains("History is unavailable"));
        // Status is written out and has a symbol, not only a colour.
        assert!(html.contains("<span class=\"word\">unhealthy</span>"));
    }

    #[test]
    fn the_script_tags_are_only_the_embedded_ones() {
        let s = state(hostile_live());
        let html = String::from_utf8(render(&s, 1_700_000_002_000).to_vec()).unwrap();
        assert_eq!(html.matches("<script").count(), 2);
        assert!(!html.contains("style="), "inline styles break the CSP");
        assert!(!html.contains("<style"));
    }

    #[tokio::test]
    async fn every_referenced_asset_is_served_with_a_cache_header() {
        let s = state(hostile_live());
        let html = String::from_utf8(render(&s, 1_700_000_002_000).to_vec()).unwrap();
        let refs: Vec<&str> = html
            .split("\"/assets/")
            .skip(1)
            .map(|rest| rest.split(['"', '?']).next().unwrap())
            .collect();
        assert!(refs.len() >= 5, "{refs:?}");
        for name in refs {
            assert!(find_asset(name).is_some(), "{name} is not in the table");
            let r = get(&s, &format!("/assets/{name}")).await;
            assert_eq!(r.status(), 200, "{name}");
            assert_eq!(r.headers()["cache-control"], "public, max-age=3600");
            assert!(!r.body().is_empty());
        }
        // The script itself references assets by name too: the icons.
        let js = std::str::from_utf8(find_asset("page.js").unwrap().bytes).unwrap();
        for st in ["healthy", "degraded", "unhealthy", "unknown"] {
            assert!(find_asset(&format!("icon-{st}.svg")).is_some());
        }
        assert!(js.contains("icon-"));
    }

    #[tokio::test]
    async fn unknown_assets_and_traversal_are_404_json() {
        let s = state(Live::default());
        for path in [
            "/assets/nope.js",
            "/assets/",
            "/assets/../../etc/passwd",
            "/assets/..%2f..%2fetc%2fpasswd",
            "/assets/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "/assets/%252e%252e%252fetc%252fpasswd",
            "/assets/page.css/../../../etc/passwd",
            "/assets/%2e%2e/page.css",
            "/assets/page.css%00",
            "/assets/PAGE.CSS",
        ] {
            let r = get(&s, path).await;
            assert_eq!(r.status(), 404, "{path}");
            assert_eq!(r.headers()["content-type"], "application/json", "{path}");
            let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
            assert!(v["error"].is_string(), "{path}");
        }
    }

    #[tokio::test]
    async fn the_page_is_html_and_served_again_from_the_cache() {
        let s = state(hostile_live());
        let a = get(&s, "/").await;
        assert_eq!(a.status(), 200);
        assert_eq!(a.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(a.headers()["cache-control"], "no-store");
        assert!(
            a.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let b = get(&s, "/?series=x&range=7d").await;
        assert_eq!(a.body(), b.body(), "a second request within 1 s is cached");
    }

    /// A history file of three hours at one sample a minute: `/data`
    /// filling steadily, `/` flat, and `svc` unhealthy for the last 30 min.
    fn with_history(dir: &std::path::Path, now: Ts) -> State {
        use crate::config::HistoryConfig;
        use crate::store::Event;
        use crate::store::writer::{RunInfo, Sample, Writer};
        const MIN: i64 = 60_000;
        let start = now - 180 * MIN;
        let run = RunInfo {
            version: "test".into(),
            hostname: "test".into(),
            pid: 1,
        };
        let (mut w, _) = Writer::open(dir, &HistoryConfig::default(), start, &run).unwrap();
        let filling = SeriesKey::new("host", "disk_used_ratio", &[("mount", "/data")]);
        let flat = SeriesKey::new("host", "disk_used_ratio", &[("mount", "/")]);
        let filling_id = w.series_id(&filling, Unit::Ratio, start).unwrap().unwrap();
        let flat_id = w.series_id(&flat, Unit::Ratio, start).unwrap().unwrap();
        let status = |ts, from: &str, to: &str| Event {
            ts_ms: ts,
            probe: Some("svc".into()),
            kind: "status".into(),
            from_status: Some(from.into()),
            to_status: Some(to.into()),
            message: format!("svc is {to}"),
        };
        for i in 0..=180 {
            let ts = start + i * MIN;
            let events = match i {
                0 => vec![status(ts, "unknown", "healthy")],
                150 => vec![status(ts, "healthy", "unhealthy")],
                _ => vec![],
            };
            let samples = [
                Sample {
                    series: filling_id,
                    ts,
                    value: 0.5 + i as f64 * 0.001,
                },
                Sample {
                    series: flat_id,
                    ts,
                    value: 0.3,
                },
            ];
            w.write(&samples, &events, ts).unwrap();
        }
        let mut live = Live {
            started_ms: start,
            ..Live::default()
        };
        for (name, kind, st) in [
            ("host", "host", Status::Healthy),
            ("svc", "tcp", Status::Unhealthy),
        ] {
            live.configured.push(ProbeMeta {
                name: name.into(),
                kind,
                interval_ms: 60_000,
                timeout_ms: 1000,
            });
            live.probes.insert(
                name.into(),
                ProbeState {
                    kind,
                    status: st,
                    since_ms: start,
                    reason: None,
                    last_ts_ms: now,
                    last_took_ms: 1.0,
                    last_error: None,
                },
            );
        }
        for (mount, used) in [("/data", 68.0), ("/", 30.0)] {
            let l = [("mount", mount)];
            live.push(
                &SeriesKey::new("host", "disk_used_bytes", &l),
                Unit::Bytes,
                now,
                used * 1e9,
            );
            live.push(
                &SeriesKey::new("host", "disk_total_bytes", &l),
                Unit::Bytes,
                now,
                100e9,
            );
        }
        let s = state(live);
        let mut info = s.info.clone();
        info.data_dir = dir.to_path_buf();
        Arc::new(Shared::new(
            info,
            s.live.clone(),
            Default::default(),
            &ApiConfig::default(),
            None,
            None,
        ))
    }

    #[test]
    fn history_gives_day_bars_events_and_only_confident_forecasts() {
        let dir = tempfile::tempdir().unwrap();
        // Noon UTC yesterday: the three hours fall in one day.
        let now = now_ms().div_euclid(DAY_MS) * DAY_MS - DAY_MS / 2;
        let s = with_history(dir.path(), now);
        let html = String::from_utf8(render(&s, now).to_vec()).unwrap();
        assert!(!html.contains("History is unavailable"), "{html}");
        // `/data` fills at 0.1 % a minute from 68 %: full in about 5 h; the
        // flat `/` gets no forecast at all.
        assert_eq!(html.matches("full in ").count(), 1, "{html}");
        let card = &html[html.find("<code>/data</code>").unwrap()..];
        let forecast = &card[card.find("full in ").unwrap()..];
        assert!(forecast.starts_with("full in 5 h"), "{forecast}");
        // 30 day bars per probe: `svc` was observed today only, and was
        // down for a sixth of it; the host probe has no transitions.
        let svc = &html[html.find("data-probe=\"svc\"").unwrap()..];
        let bars = &svc[..svc.find("</svg><span class=\"dl\">").unwrap()];
        let bars = &bars[bars.find("class=\"days\"").unwrap()..];
        assert_eq!(bars.matches("<rect").count(), 30);
        assert_eq!(bars.matches("class=\"nodata\"").count(), 29);
        assert!(bars.contains("<rect class=\"bad\""), "{bars}");
        assert!(svc.contains("83.33%"), "three hours, 30 minutes down");
        // Events newest first, and the chart offers the recorded series.
        let events = &html[html.find("id=\"events\"").unwrap()..];
        assert!(events.find("svc is unhealthy").unwrap() < events.find("svc is healthy").unwrap());
        assert!(html.contains("<option value=\"host.disk_used_ratio{mount=&quot;/data&quot;}\""));
    }

    #[test]
    fn overall_counts_the_probes() {
        let body = |status| ProbeBody {
            name: "p".into(),
            kind: "tcp",
            interval_seconds: 1.0,
            timeout_seconds: 1.0,
            status,
            status_since: None,
            reason: None,
            last: None,
            uptime: Vec::new(),
        };
        assert_eq!(overall(&[]).0, Status::Unknown);
        assert_eq!(
            overall(&[body(Status::Healthy), body(Status::Healthy)]),
            (Status::Healthy, "all 2 probes healthy".into())
        );
        assert_eq!(
            overall(&[
                body(Status::Healthy),
                body(Status::Unhealthy),
                body(Status::Unknown)
            ]),
            (
                Status::Unhealthy,
                "1 unhealthy, 1 not checked yet, 1 healthy of 3 probes".into()
            )
        );
        assert_eq!(overall(&[body(Status::Unknown)]).0, Status::Unknown);
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(uptime_percent(0.99996), "99.99%");
        assert_eq!(uptime_percent(1.0), "100%");
        assert_eq!(percent(0.0123), "1.2%");
        assert_eq!(percent(0.456), "46%");
        assert_eq!(percent(0.00001), "<0.1%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(seconds(0.00042), "0.42 ms");
        assert_eq!(seconds(2.5), "2.50 s");
        assert_eq!(span(3 * 3_600_000 + 5 * 60_000), "3 h 5 min");
        assert_eq!(encode("a.b{m=\"/\"}"), "a.b%7Bm%3D%22%2F%22%7D");
    }
}
