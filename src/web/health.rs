//! The health document of `GET /api/v1/health` and `upkeep status --json`:
//! the seed's `SystemHealthMetrics` shape (`timestamp`, `services` with one
//! key per non-worker probe and a `workers` array, `resources`,
//! `performance`), every value measured. Extra detail (per disk, per
//! interface) sits beside the seed's fields.
//!
//! Units follow the seed: `response_time` in milliseconds, `percentage`,
//! `error_rate` and `uptime` in percent, `throughput` in requests per second,
//! network figures per second. A value that is not measured is `null`, never 0.
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

/// The seed's `ServiceHealth`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    pub name: String,
    pub status: Status,
    /// Milliseconds; the kind's own latency reading, else the check's duration.
    pub response_time: Option<f64>,
    pub last_check: String,
    pub details: Value,
}

/// The seed's `ResourceUsage`.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceUsage {
    pub current: f64,
    pub max: f64,
    pub percentage: f64,
    /// From the last 24 h of history; `null` while there is too little.
    pub trend: Option<TrendClass>,
}

/// The series that says how long a check of each kind took, in seconds:
/// the kind's own `KindFacts::LATENCY`.
fn latency_metric(kind: &str) -> Option<&'static str> {
    crate::probes::ProbeKind::from_name(kind).and_then(crate::probes::ProbeKind::latency_metric)
}

fn service(live: &Live, name: &str) -> ServiceHealth {
    let p = &live.probes[name];
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
        status: p.status,
        response_time,
        last_check: rfc3339(p.last_ts_ms),
        details: json!({
            "kind": p.kind,
            "reason": p.reason,
            "error": p.last_error,
            "since": rfc3339(p.since_ms),
            "check_duration_ms": p.last_took_ms,
            "readings": readings,
        }),
    }
}

/// Trend class of one series over the last day, from history.
fn trend_of(reader: Option<&Reader>, key: &str, now: Ts) -> Option<TrendClass> {
    let a = reader?
        .query(key, now - DAY_MS, now, None, now, 500)
        .ok()??;
    let pts = a.averages();
    analysis::trend(&pts).map(|t| t.class)
}

fn usage(current: f64, max: f64, trend: Option<TrendClass>) -> ResourceUsage {
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
    }
}

/// The document, from the live state and (for trends and uptime) history.
pub fn document(live: &Live, reader: Option<&Reader>, now: Ts) -> Value {
    let mut services = Map::new();
    let mut workers = Vec::new();
    for (name, p) in &live.probes {
        match p.kind {
            "host" => {}
            "worker" => workers.push(service(live, name)),
            _ => {
                services.insert(name.clone(), json!(service(live, name)));
            }
        }
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
        usage(
            r * cores,
            cores,
            trend_of(reader, "host.cpu_used_ratio", now),
        )
    });
    let memory = match (get("memory_total_bytes"), get("memory_available_bytes")) {
        (Some(total), Some(avail)) => Some(usage(
            total - avail,
            total,
            trend_of(reader, "host.memory_used_ratio", now),
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
            "usage": usage(*used, max, trend_of(reader, &ratio_key, now)),
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
        .map(|d| d["usage"].clone());
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
    let throughput = (!rates.is_empty()).then(|| rates.iter().sum::<f64>());
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
    let error_rate = (total > 0.0).then(|| errors / total * 100.0);
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
