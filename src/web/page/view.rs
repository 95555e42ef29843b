//! What the page shows, gathered before any markup is written: the live
//! state (host figures, probe statuses, the sparklines' rings) and, when the
//! history file opens, uptime per day, recent events, the chartable series
//! and disk forecasts, and the maintenance tasks with their runs. Called by [`super::render`] on the blocking pool.

use std::collections::{BTreeMap, HashMap};

use super::maintenance;
use crate::analysis::{self, Forecast, ForecastInput};
use crate::live::Live;
use crate::sample::{SeriesKey, Status, Ts, Unit};
use crate::store::Reader;
use crate::store::reader::{EventRow, SeriesInfo};
use crate::web::State;
use crate::web::api::{self, ProbeBody};

pub(super) const HOUR_MS: i64 = 3_600_000;
pub(super) const DAY_MS: i64 = 86_400_000;
/// Daily uptime bars per probe.
const DAYS: i64 = 30;
/// Recent events listed.
const EVENTS: usize = 20;
/// History behind a disk's "full in N days".
const FORECAST_WINDOW_MS: i64 = 7 * DAY_MS;

pub(super) struct View {
    pub(super) hostname: String,
    pub(super) version: &'static str,
    pub(super) now: Ts,
    pub(super) started: Ts,
    pub(super) overall: Status,
    pub(super) summary: String,
    pub(super) host: Option<Host>,
    pub(super) probes: Vec<ProbeView>,
    pub(super) events: Vec<EventRow>,
    /// Chartable series, grouped by probe.
    pub(super) series: BTreeMap<String, Vec<SeriesInfo>>,
    pub(super) chart_key: Option<String>,
    /// Why history (uptime, events, charts) is missing, when it is.
    pub(super) history_error: Option<String>,
    pub(super) maintenance: maintenance::Section,
    /// The alert engine's last evaluation; `None` without alerts.
    pub(super) alerts: Option<crate::alerts::AlertsSnapshot>,
}

pub(super) struct Host {
    pub(super) cpu: Option<f64>,
    pub(super) cores: usize,
    pub(super) cpu_spark: Spark,
    pub(super) memory: Option<(f64, f64)>,
    pub(super) swap: Option<(f64, f64)>,
    pub(super) disks: Vec<Disk>,
    pub(super) net: Option<(f64, f64)>,
    pub(super) interfaces: usize,
    pub(super) load: Option<[f64; 3]>,
    pub(super) uptime_seconds: Option<f64>,
}

/// One filesystem's card. Its use is df's, used / (used + available), as in
/// the API, `/metrics` and the thresholds.
pub(super) struct Disk {
    pub(super) mount: String,
    pub(super) ratio_key: String,
    pub(super) used: f64,
    /// What users can still write: blocks reserved for root do not count.
    pub(super) available: f64,
    pub(super) full_in_days: Option<f64>,
}

pub(super) struct ProbeView {
    pub(super) body: ProbeBody,
    /// The probe's series the row's chart link opens: its headline and its
    /// latency reading, those history holds.
    pub(super) chart_keys: Vec<String>,
    /// Seconds: the kind's own latency reading, else how long the check took.
    pub(super) latency: Option<f64>,
    pub(super) spark: Spark,
    pub(super) days: Vec<Day>,
}

/// The last hour of one series, for a sparkline.
pub(super) struct Spark {
    pub(super) key: String,
    pub(super) unit: Unit,
    pub(super) interval_ms: i64,
    pub(super) points: Vec<(Ts, f64)>,
}

impl Spark {
    /// The time the sparkline spans: what the in-memory ring holds (an hour
    /// at most, less at short intervals), at least 5 minutes so that a fresh
    /// agent's first seconds are not stretched across the whole width.
    pub(super) fn window(&self, now: Ts) -> i64 {
        let held = self.points.first().map_or(0, |p| now - p.0);
        let minutes = (held + 59_999) / 60_000;
        (minutes * 60_000).clamp(5 * 60_000, HOUR_MS)
    }

    pub(super) fn span_text(&self, now: Ts) -> String {
        match self.window(now) {
            HOUR_MS => "last hour".into(),
            w => format!("last {} min", w / 60_000),
        }
    }
}

pub(super) struct Day {
    pub(super) start: Ts,
    pub(super) uptime: Option<f64>,
    pub(super) coverage: f64,
}

/// The series that stands for a probe of each kind in its sparkline: the
/// kind's own `KindFacts::HEADLINE`; none for a kind the registry does not
/// know (a test's).
fn main_metric(kind: &str) -> &'static str {
    crate::probes::ProbeKind::from_name(kind).map_or("", crate::probes::ProbeKind::headline_metric)
}

/// The reading that says how long a check of each kind took, in seconds
/// (as in the health document): the kind's own `KindFacts::LATENCY`.
fn latency_metric(kind: &str) -> Option<&'static str> {
    crate::probes::ProbeKind::from_name(kind).and_then(crate::probes::ProbeKind::latency_metric)
}

/// The probes' order on the page: what needs attention first (unhealthy,
/// degraded, not yet judged, healthy); by name within a status (a stable
/// sort keeps the API's name order).
pub(super) fn worst_first(status: Status) -> u8 {
    match status {
        Status::Unhealthy => 0,
        Status::Degraded => 1,
        Status::Unknown => 2,
        Status::Healthy => 3,
    }
}

pub(super) fn gather(s: &State, now: Ts) -> View {
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
    let mut maintenance = maintenance::gather(s.maintenance.as_deref(), reader.as_ref());
    if reader.is_none() && !maintenance.tasks.is_empty() {
        maintenance.ledger_error = history_error.clone();
    }
    let has = |k: &str| series.values().flatten().any(|i| i.key == k);
    let chart_key = ["host.cpu_used_ratio".to_string()]
        .into_iter()
        .chain(sparks.values().map(|sp| sp.key.clone()))
        .find(|k| has(k))
        .or_else(|| series.values().flatten().next().map(|i| i.key.clone()));
    let (overall, summary) = overall(&bodies);
    let mut bodies = bodies;
    bodies.sort_by_key(|b| worst_first(b.status));
    let probes = bodies
        .into_iter()
        .map(|body| {
            let latency = match latency_metric(body.kind) {
                // The host probe reads the kernel's figures: how long that
                // took says nothing about any service.
                _ if body.kind == crate::probes::ProbeKind::Host.name() => None,
                Some(m) => body.last.as_ref().and_then(|l| {
                    l.readings
                        .iter()
                        .find(|r| r.metric == m && r.labels.is_empty())
                        .map(|r| r.value)
                }),
                None => body.last.as_ref().map(|l| l.took_seconds),
            };
            let chart_keys = [Some(main_metric(body.kind)), latency_metric(body.kind)]
                .into_iter()
                .flatten()
                .filter(|m| !m.is_empty())
                .map(|m| SeriesKey::new(&body.name, m, &[]).to_string())
                .filter(|k| has(k))
                .fold(Vec::new(), |mut v, k| {
                    if !v.contains(&k) {
                        v.push(k);
                    }
                    v
                });
            ProbeView {
                chart_keys,
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
        maintenance,
        alerts: s
            .alerts
            .as_ref()
            .map(|a| a.view.read().expect("alerts view lock").clone()),
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
            let available = live.latest("host", "disk_available_bytes", &[("mount", mount)])?;
            Some(Disk {
                mount: mount.to_string(),
                ratio_key: format!("host.disk_used_ratio{}", k.labels_text()),
                used: *used,
                available,
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
pub(super) fn overall(probes: &[ProbeBody]) -> (Status, String) {
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
