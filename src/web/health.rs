//! The health document of `GET /api/v1/health` and `upkeep status --json`:
//! the seed's `SystemHealthMetrics` interface as written, field by field, so
//! that a client written against it works unchanged, every value measured.
//!
//! - `services.database`, `.redis`, `.api`: the probe with that `role`, else
//!   the first probe (in name order) of kind postgres, redis, http, else a
//!   probe named `database`, `redis` or `api`; always present. `services.workers`: the probes of kind worker or role worker.
//!   `status` is one of the seed's three words: a probe not yet judged
//!   (`unknown`) and a slot no probe fills are `unhealthy` (the seed's own
//!   answer when a check cannot be made), with the agent's own status in
//!   `details.state` and why in `details.reason`. Every other probe is also
//!   under `services` by its name (unless the name is one of the four).
//! - `resources.cpu`: percent of all cores (`current` = `percentage`,
//!   `max` = 100); `resources.memory` in MB and `resources.disk` (the root
//!   filesystem, else the fullest) in GB, both of 2^20 and 2^30 bytes, used
//!   as df counts it; `trend` always `increasing`, `stable` or
//!   `decreasing` (from the last 24 h of history; `stable` with
//!   `trend_reason` while there is too little).
//! - `performance.response_time` in milliseconds, `throughput` in requests
//!   per hour, `error_rate` a fraction 0–1 (5xx among requests), `uptime` in
//!   percent (30 days of the API's probe).
//!
//! Richer figures are added fields, which TypeScript clients ignore: bytes
//! beside MB and GB, per disk (`disks`), per interface (`interfaces`),
//! forecasts, load. A value that is not measured is `null`, never 0.
//! `throughput`, `error_rate` and the access-log `response_time` cover the
//! last minute of ticks; everything else the last tick.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::analysis::{self, Forecast, ForecastInput, TrendClass};
use crate::fmt::rfc3339;
use crate::live::Live;
use crate::sample::{Status, Ts};
use crate::store::Reader;

const DAY_MS: i64 = 86_400_000;
/// Window of the access-log figures in `performance`.
const WINDOW_MS: i64 = 60_000;

/// Bytes in the seed's MB and GB.
const MB: f64 = 1024.0 * 1024.0;
const GB: f64 = MB * 1024.0;

/// The seed's `ServiceHealth`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    pub name: String,
    /// `healthy`, `degraded` or `unhealthy` only (see the module doc).
    pub status: &'static str,
    /// Milliseconds; the kind's own latency reading, else the check's
    /// duration. Left out when there is none (the seed's optional field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_time: Option<f64>,
    pub last_check: String,
    pub details: Value,
}

/// The seed's three words for a status: what the agent cannot vouch for
/// is unhealthy.
fn seed_status(s: Status) -> &'static str {
    match s {
        Status::Healthy => "healthy",
        Status::Degraded => "degraded",
        Status::Unhealthy | Status::Unknown => "unhealthy",
    }
}

/// The seed's `ResourceUsage`, with its unit and why the trend is
/// `stable` by default, as added fields.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceUsage {
    pub current: f64,
    pub max: f64,
    pub percentage: f64,
    pub trend: TrendClass,
    /// Set when `trend` is `stable` for want of history, not by the rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trend_reason: Option<String>,
    /// `percent`, `MB` or `GB`.
    pub unit: &'static str,
}

/// The series that says how long a check of each kind took, in seconds:
/// the kind's own `KindFacts::LATENCY`.
fn latency_metric(kind: &str) -> Option<&'static str> {
    crate::probes::ProbeKind::from_name(kind).and_then(crate::probes::ProbeKind::latency_metric)
}

fn service(live: &Live, name: &str) -> ServiceHealth {
    let Some(p) = live.probes.get(name) else {
        // Configured, not yet ticked.
        return ServiceHealth {
            name: name.to_string(),
            status: seed_status(Status::Unknown),
            response_time: None,
            last_check: rfc3339(live.started_ms),
            details: json!({
                "state": Status::Unknown,
                "reason": "not checked yet",
            }),
        };
    };
    let mut readings = Map::new();
    for (key, v) in live.latest_of(name) {
        readings.insert(format!("{}{}", key.metric, key.labels_text()), json!(v));
    }
    // Kinds without a latency of their own report how long the check took.
    let response_time = match latency_metric(p.kind) {
        Some(m) => live.latest(name, m, &[]).map(|s| s * 1000.0),
        None => Some(p.last_took_ms),
    };
    ServiceHealth {
        name: name.to_string(),
        status: seed_status(p.status),
        response_time,
        last_check: rfc3339(p.last_ts_ms),
        details: json!({
            "state": p.status,
            "role": live.roles.get(name),
            "kind": p.kind,
            "reason": p.reason,
            "error": p.last_error,
            "since": rfc3339(p.since_ms),
            "check_duration_ms": p.last_took_ms,
            "readings": readings,
        }),
    }
}

/// Trend class of one series over the last day, from history: `stable`
/// with the reason when there is too little to classify.
fn trend_of(reader: Option<&Reader>, key: &str, now: Ts) -> (TrendClass, Option<String>) {
    let Some(reader) = reader else {
        return (TrendClass::Stable, Some("no history file to read".into()));
    };
    let pts = match reader.query(key, now - DAY_MS, now, None, now, 500) {
        Ok(Some(a)) => a.averages(),
        Ok(None) => Vec::new(),
        Err(e) => return (TrendClass::Stable, Some(format!("history unreadable: {e}"))),
    };
    match analysis::trend(&pts) {
        Some(t) => (t.class, None),
        None => (
            TrendClass::Stable,
            Some(format!(
                "too little history: {} points in the last 24 h, 3 over a time span needed",
                pts.len()
            )),
        ),
    }
}

fn usage(
    current: f64,
    max: f64,
    (trend, trend_reason): (TrendClass, Option<String>),
    unit: &'static str,
) -> ResourceUsage {
    let percentage = if max > 0.0 {
        current / max * 100.0
    } else {
        0.0
    };
    ResourceUsage {
        current,
        max,
        percentage,
        trend,
        trend_reason,
        unit,
    }
}

/// A `ResourceUsage` in MB or GB (`scale` bytes), with the bytes beside.
fn usage_bytes(
    used: f64,
    total: f64,
    trend: (TrendClass, Option<String>),
    scale: f64,
    unit: &'static str,
) -> Value {
    let mut v = json!(usage(used / scale, total / scale, trend, unit));
    v["current_bytes"] = json!(used);
    v["max_bytes"] = json!(total);
    v
}

/// The seed's service slots and the probe kind that fills each when no
/// probe has the role.
const SLOTS: [(&str, &str); 3] = [
    ("database", "postgres"),
    ("redis", "redis"),
    ("api", "http"),
];

/// The probe that fills a slot: the one with the role, else the first of
/// the kind, else one named as the slot.
fn slot_probe<'a>(live: &'a Live, role: &str, kind: &str) -> Option<&'a str> {
    let by_role = live
        .configured
        .iter()
        .find(|m| live.roles.get(&m.name).is_some_and(|r| *r == role));
    by_role
        .or_else(|| live.configured.iter().find(|m| m.kind == kind))
        .or_else(|| {
            live.configured
                .iter()
                .find(|m| m.name == role && m.kind != "worker")
        })
        .map(|m| m.name.as_str())
}

/// A slot no probe fills: unhealthy (nothing vouches for it), saying how
/// to fill it.
fn empty_slot(role: &str, kind: &str, now: Ts) -> ServiceHealth {
    ServiceHealth {
        name: role.to_string(),
        status: seed_status(Status::Unknown),
        response_time: None,
        last_check: rfc3339(now),
        details: json!({
            "state": Status::Unknown,
            "configured": false,
            "reason": format!(
                "no probe for this service: set role = \"{role}\" on a probe, or configure a probe of kind {kind}"
            ),
        }),
    }
}

/// The document, from the live state and (for trends and uptime) history.
pub fn document(live: &Live, reader: Option<&Reader>, now: Ts) -> Value {
    let mut services = Map::new();
    let mut workers = Vec::new();
    for m in &live.configured {
        let worker = m.kind == "worker" || live.roles.get(&m.name) == Some(&"worker");
        if worker {
            workers.push(service(live, &m.name));
        } else if m.kind != "host" && !SLOTS.iter().any(|(r, _)| *r == m.name) {
            services.insert(m.name.clone(), json!(service(live, &m.name)));
        }
    }
    for (role, kind) in SLOTS {
        let s = match slot_probe(live, role, kind) {
            Some(name) => service(live, name),
            None => empty_slot(role, kind, now),
        };
        services.insert(role.into(), json!(s));
    }
    services.insert("workers".into(), json!(workers));
    json!({
        "timestamp": rfc3339(now),
        "services": services,
        "resources": resources(live, reader, now),
        "performance": performance(live, reader, now),
    })
}

fn resources(live: &Live, reader: Option<&Reader>, now: Ts) -> Value {
    let host = live.latest_of("host");
    let get = |metric: &str| live.latest("host", metric, &[]);
    let cores = host
        .iter()
        .filter(|(k, _)| k.metric == "cpu_core_used_ratio")
        .count()
        .max(1) as f64;
    let cpu = get("cpu_used_ratio").map(|r| {
        let mut v = json!(usage(
            r * 100.0,
            100.0,
            trend_of(reader, "host.cpu_used_ratio", now),
            "percent",
        ));
        v["cores"] = json!(cores);
        v
    });
    let memory = match (get("memory_total_bytes"), get("memory_available_bytes")) {
        (Some(total), Some(avail)) => Some(usage_bytes(
            total - avail,
            total,
            trend_of(reader, "host.memory_used_ratio", now),
            MB,
            "MB",
        )),
        _ => None,
    };
    let mut disks = Vec::new();
    for (key, used) in host.iter().filter(|(k, _)| k.metric == "disk_used_bytes") {
        let Some(mount) = key.label("mount") else {
            continue;
        };
        let Some(avail) = live.latest("host", "disk_available_bytes", &[("mount", mount)]) else {
            continue;
        };
        let ratio_key = format!("host.disk_used_ratio{}", key.labels_text());
        let max = used + avail;
        let forecast = disk_forecast(reader, &ratio_key, now);
        disks.push(json!({
            "mount": mount,
            "usage": usage_bytes(*used, max, trend_of(reader, &ratio_key, now), GB, "GB"),
            "full_in_days": forecast,
        }));
    }
    // The seed's one disk: the root filesystem, else the fullest.
    let disk = disks
        .iter()
        .find(|d| d["mount"] == "/")
        .or_else(|| {
            disks.iter().max_by(|a, b| {
                a["usage"]["percentage"]
                    .as_f64()
                    .partial_cmp(&b["usage"]["percentage"].as_f64())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
        })
        .map(|d| {
            let mut u = d["usage"].clone();
            u["mount"] = d["mount"].clone();
            u
        });
    let sum = |metric: &str| -> Option<f64> {
        let v: Vec<f64> = host
            .iter()
            .filter(|(k, _)| k.metric == metric)
            .map(|(_, v)| *v)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };
    let interfaces: Vec<Value> = host
        .iter()
        .filter(|(k, _)| k.metric == "net_rx_bytes_per_second")
        .filter_map(|(k, rx)| {
            let name = k.label("interface")?;
            let l = [("interface", name)];
            Some(json!({
                "interface": name,
                "bytes_in": rx,
                "bytes_out": live.latest("host", "net_tx_bytes_per_second", &l),
                "packets_in": live.latest("host", "net_rx_packets_per_second", &l),
                "packets_out": live.latest("host", "net_tx_packets_per_second", &l),
                "errors_in": live.latest("host", "net_rx_errors_per_second", &l),
                "errors_out": live.latest("host", "net_tx_errors_per_second", &l),
            }))
        })
        .collect();
    json!({
        "cpu": cpu,
        "memory": memory,
        "disk": disk,
        "network": {
            "bytes_in": sum("net_rx_bytes_per_second"),
            "bytes_out": sum("net_tx_bytes_per_second"),
            "packets_in": sum("net_rx_packets_per_second"),
            "packets_out": sum("net_tx_packets_per_second"),
        },
        "load": {"load1": get("load1"), "load5": get("load5"), "load15": get("load15")},
        "disks": disks,
        "interfaces": interfaces,
    })
}

/// Days until a disk is full, only when the forecast is confident.
fn disk_forecast(reader: Option<&Reader>, key: &str, now: Ts) -> Option<f64> {
    let a = reader?
        .query(key, now - 7 * DAY_MS, now, None, now, 1000)
        .ok()??;
    let pts = a.averages();
    match analysis::forecast(
        &pts,
        ForecastInput {
            threshold: 1.0,
            now,
        },
    ) {
        Forecast::Reaches { eta_seconds, .. } => Some(eta_seconds / 86_400.0),
        Forecast::Reached { .. } => Some(0.0),
        _ => None,
    }
}

fn performance(live: &Live, reader: Option<&Reader>, now: Ts) -> Value {
    let of_kind = |kind: &str| -> Vec<&String> {
        live.probes
            .iter()
            .filter(|(_, p)| p.kind == kind)
            .map(|(n, _)| n)
            .collect()
    };
    let (https, logs) = (of_kind("http"), of_kind("access_log"));
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    // Access-log figures over the last minute of ticks, so that a quiet
    // tick does not blank them.
    let since = now - WINDOW_MS;
    let response_time = mean(
        https
            .iter()
            .filter_map(|n| live.latest(n, "response_seconds", &[]))
            .map(|s| s * 1000.0)
            .collect(),
    )
    .or_else(|| {
        mean(
            logs.iter()
                .filter_map(|n| {
                    live.since(n, "latency_p50_seconds", since)
                        .last()
                        .map(|&(_, s)| s * 1000.0)
                })
                .collect(),
        )
    });
    let rates: Vec<f64> = logs
        .iter()
        .filter_map(|n| {
            mean(
                live.since(n, "requests_per_second", since)
                    .iter()
                    .map(|&(_, r)| r)
                    .collect(),
            )
        })
        .collect();
    // The seed's unit: requests per hour.
    let throughput = (!rates.is_empty()).then(|| rates.iter().sum::<f64>() * 3600.0);
    // 5xx share over all logs and ticks, weighted by requests.
    let (mut errors, mut total) = (0.0, 0.0);
    for n in &logs {
        let ratios = live.since(n, "status_5xx_ratio", since);
        for (ts, req) in live.since(n, "requests", since) {
            if let Some((_, r)) = ratios.iter().find(|(t, _)| *t == ts) {
                errors += req * r;
                total += req;
            }
        }
    }
    let error_rate = (total > 0.0).then(|| errors / total);
    // 30-day uptime of the API: the http probes, else the access logs.
    let api: Vec<&String> = if https.is_empty() { logs } else { https };
    let uptime = reader.and_then(|r| {
        let runs = r.runs(now - 30 * DAY_MS, now).ok()?;
        let ids: Vec<i64> = runs.iter().map(|(id, _)| *id).collect();
        let intervals: Vec<_> = runs.iter().map(|(_, i)| *i).collect();
        api.iter()
            .filter_map(|n| {
                let t = r.transitions(n, &ids).ok()?;
                analysis::uptime(&intervals, &t, now - 30 * DAY_MS, now).uptime_ratio
            })
            .reduce(f64::min)
            .map(|u| u * 100.0)
    });
    json!({
        "response_time": response_time,
        "throughput": throughput,
        "error_rate": error_rate,
        "uptime": uptime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::ProbeMeta;

    fn meta(name: &str, kind: &'static str) -> ProbeMeta {
        ProbeMeta {
            name: name.into(),
            kind,
            interval_ms: 1000,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn every_seed_slot_is_present_with_one_of_three_words() {
        let mut live = Live {
            started_ms: 1_700_000_000_000,
            ..Live::default()
        };
        // Not yet ticked: fills the redis slot by kind, unhealthy, state unknown.
        live.configured.push(meta("cache", "redis"));
        // A role wins over the kind.
        live.configured.push(meta("pg-a", "postgres"));
        live.configured.push(meta("pg-b", "postgres"));
        live.roles.insert("pg-b".into(), "database");
        let v = document(&live, None, 1_700_000_001_000);
        let s = &v["services"];
        let db = &s["database"];
        assert_eq!(db["name"], "pg-b");
        assert_eq!(db["status"], "unhealthy");
        assert_eq!(db["details"]["state"], "unknown");
        assert_eq!(s["redis"]["name"], "cache");
        assert_eq!(s["pg-a"]["name"], "pg-a", "the others by name: {s}");
        let api = &s["api"];
        assert_eq!(api["name"], "api");
        assert_eq!(api["status"], "unhealthy");
        assert_eq!(api["details"]["configured"], false);
        assert!(
            api["details"]["reason"]
                .as_str()
                .unwrap()
                .contains("role = \"api\""),
            "{api}"
        );
        assert!(
            api.get("response_time").is_none(),
            "optional, left out: {api}"
        );
        assert_eq!(s["workers"], json!([]));
        assert_eq!(v["performance"]["throughput"], Value::Null);
    }

    #[test]
    fn too_little_history_is_a_stable_trend_with_a_reason() {
        let (class, why) = trend_of(None, "host.cpu_used_ratio", 0);
        assert_eq!(class, TrendClass::Stable);
        assert!(why.is_some());
        let u = json!(usage(512.0, 2048.0, (TrendClass::Stable, why), "MB"));
        assert_eq!(u["percentage"], 25.0);
        assert_eq!(u["trend"], "stable");
        assert!(u["trend_reason"].is_string());
    }
}
