//! The read commands of the CLI — `series`, `query`, `uptime`, `trend` —
//! rendered from a read-only `Reader`. Kept out of `main.rs` so that they can
//! be tested on a real history file without a process in between.

use std::fmt::Write as _;
use std::time::Duration;

use super::table::{self, Table};
use crate::analysis::{self, Forecast, ForecastInput};
use crate::fmt::{parse_time, rfc3339};
use crate::sample::{Ts, Unit};
use crate::store::StoreError;
use crate::store::reader::{QueryAnswer, Reader};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Usage(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Every series key and its unit, optionally only the keys starting with
/// `prefix`.
pub fn series(
    reader: &Reader,
    prefix: Option<&str>,
    format: Format,
) -> Result<String, ReportError> {
    let rows: Vec<_> = reader
        .series()?
        .into_iter()
        .filter(|s| prefix.is_none_or(|p| s.key.starts_with(p)))
        .collect();
    Ok(match format {
        Format::Json => table::json(
            &rows
                .iter()
                .map(|s| serde_json::json!({"key": s.key, "unit": s.unit}))
                .collect::<Vec<_>>(),
        ),
        Format::Csv => {
            let mut out = String::from("key,unit\n");
            for s in &rows {
                let _ = writeln!(out, "{},{}", csv_field(&s.key), s.unit);
            }
            out
        }
        Format::Table => {
            let mut t = Table::new(&["series", "unit"]);
            for s in &rows {
                t.row([s.key.as_str(), s.unit.as_str()]);
            }
            t.render()
        }
    })
}

/// A CSV field, quoted when it holds a comma, a quote or a line break
/// (series keys hold quoted label values).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// What `upkeep query` asks for.
#[derive(Debug, Clone, Copy)]
pub struct QuerySpec<'a> {
    pub key: &'a str,
    pub since: Ts,
    pub until: Ts,
    pub step_ms: Option<i64>,
    pub max_points: usize,
}

/// One series over a range.
pub fn query(
    reader: &Reader,
    q: QuerySpec<'_>,
    now: Ts,
    format: Format,
) -> Result<String, ReportError> {
    let QuerySpec {
        key,
        since,
        until,
        step_ms,
        max_points,
    } = q;
    if until <= since {
        return Err(ReportError::Usage(format!(
            "--until ({}) must be after --since ({})",
            rfc3339(until),
            rfc3339(since)
        )));
    }
    let answer = reader
        .query(key, since, until, step_ms, now, max_points)?
        .ok_or_else(|| {
            ReportError::NotFound(format!(
                "no series `{key}` in the history file (`upkeep series` lists them)"
            ))
        })?;
    Ok(render_query(&answer, format))
}

fn render_query(a: &QueryAnswer, format: Format) -> String {
    let mut out = String::new();
    match format {
        Format::Json => {
            out = serde_json::to_string_pretty(a).expect("serializable");
            out.push('\n');
        }
        Format::Csv => {
            out.push_str("time,ts_ms,avg,min,max,count,last\n");
            out.reserve(a.points.len() * 80);
            let mut f = ryu::Buffer::new();
            let mut i = itoa::Buffer::new();
            for p in &a.points {
                let _ = write!(out, "{},", rfc3339(p.ts_ms));
                out.push_str(i.format(p.ts_ms));
                for v in [p.avg, p.min, p.max] {
                    out.push(',');
                    push_f64(&mut out, &mut f, &mut i, v);
                }
                out.push(',');
                out.push_str(i.format(p.count));
                out.push(',');
                push_f64(&mut out, &mut f, &mut i, p.last);
                out.push('\n');
            }
        }
        Format::Table => {
            let _ = writeln!(
                out,
                "# {} ({}) from {}, step {}, {} points",
                a.series.key,
                a.series.unit,
                a.tier,
                table::duration(a.step_ms),
                a.points.len()
            );
            let unit = Unit::parse(&a.series.unit);
            let mut t =
                Table::new(&["time", "avg", "min", "max", "count", "last"]).right(&[1, 2, 3, 4, 5]);
            for p in &a.points {
                t.row([
                    rfc3339(p.ts_ms),
                    table::value(p.avg, unit),
                    table::value(p.min, unit),
                    table::value(p.max, unit),
                    crate::fmt::count(p.count),
                    table::value(p.last, unit),
                ]);
            }
            out.push_str(&t.render());
        }
    }
    out
}

/// Uptime of one probe or every probe over the window ending now.
pub fn uptime(
    reader: &Reader,
    probe: Option<&str>,
    window_ms: i64,
    now: Ts,
    format: Format,
) -> Result<String, ReportError> {
    let since = now - window_ms;
    let probes = match probe {
        Some(p) => vec![p.to_string()],
        None => reader.probes()?,
    };
    let runs = reader.runs(since, now)?;
    let run_ids: Vec<i64> = runs.iter().map(|(id, _)| *id).collect();
    let intervals: Vec<_> = runs.iter().map(|(_, i)| *i).collect();
    let mut rows = Vec::new();
    for p in &probes {
        let transitions = reader.transitions(p, &run_ids)?;
        if probe.is_some() && transitions.is_empty() && !reader.probes()?.contains(p) {
            return Err(ReportError::NotFound(format!(
                "no probe `{p}` has recorded a status"
            )));
        }
        rows.push((
            p.clone(),
            analysis::uptime(&intervals, &transitions, since, now),
        ));
    }
    let mut out = String::new();
    match format {
        Format::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|(p, u)| serde_json::json!({"probe": p, "uptime": u}))
                .collect();
            out = serde_json::to_string_pretty(&v).expect("serializable");
            out.push('\n');
        }
        Format::Csv => {
            out.push_str("probe,uptime_ratio,coverage_ratio,healthy_ms,degraded_ms,unhealthy_ms,observed_ms\n");
            for (p, u) in &rows {
                let up = u.uptime_ratio.map_or(String::new(), |r| r.to_string());
                let _ = writeln!(
                    out,
                    "{p},{up},{},{},{},{},{}",
                    u.coverage_ratio, u.healthy_ms, u.degraded_ms, u.unhealthy_ms, u.observed_ms
                );
            }
        }
        Format::Table => {
            let _ = writeln!(
                out,
                "# window {} ending {}",
                table::duration(window_ms),
                rfc3339(now)
            );
            let mut t = Table::new(&[
                "probe",
                "uptime",
                "coverage",
                "healthy",
                "degraded",
                "unhealthy",
            ])
            .right(&[1, 2, 3, 4, 5]);
            for (p, u) in &rows {
                t.row([
                    p.clone(),
                    u.uptime_ratio.map_or("no data".to_string(), table::percent),
                    table::percent(u.coverage_ratio),
                    table::duration(u.healthy_ms),
                    table::duration(u.degraded_ms),
                    table::duration(u.unhealthy_ms),
                ]);
            }
            out.push_str(&t.render());
        }
    }
    Ok(out)
}

/// What `upkeep trend` asks for.
#[derive(Debug, Clone, Copy)]
pub struct TrendSpec<'a> {
    pub key: &'a str,
    pub window_ms: i64,
    /// The value to forecast the arrival at (default 1.0 for ratios).
    pub threshold: Option<f64>,
    /// Also print the rule that classifies the trend.
    pub explain: bool,
}

/// Trend of one series over the window ending now, and for ratios (or with
/// a threshold) a forecast of when it reaches the threshold. The rule
/// behind the class is printed with `explain` (always in JSON).
pub fn trend(
    reader: &Reader,
    spec: TrendSpec<'_>,
    now: Ts,
    format: Format,
) -> Result<String, ReportError> {
    let TrendSpec {
        key,
        window_ms,
        threshold,
        explain,
    } = spec;
    let answer = reader
        .query(key, now - window_ms, now, None, now, 500)?
        .ok_or_else(|| {
            ReportError::NotFound(format!(
                "no series `{key}` in the history file (`upkeep series` lists them)"
            ))
        })?;
    let points = answer.averages();
    let trend = analysis::trend(&points);
    let threshold = threshold.or((answer.series.unit == "ratio").then_some(1.0));
    let forecast =
        threshold.map(|t| analysis::forecast(&points, ForecastInput { threshold: t, now }));
    if format == Format::Json {
        let v = serde_json::json!({"key": key, "window_ms": window_ms, "tier": answer.tier, "step_ms": answer.step_ms,
            "points": points.len(), "trend": trend, "threshold": threshold, "forecast": forecast});
        return Ok(table::json(&v));
    }
    let unit = Unit::parse(&answer.series.unit);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{key} over {} ({} points from {})",
        table::duration(window_ms),
        points.len(),
        answer.tier
    );
    match &trend {
        Some(t) => {
            let _ = writeln!(
                out,
                "trend: {} ({}/day, {} over the window, r² {:.2})",
                t.class.as_str(),
                signed(t.slope_per_day, unit),
                signed(t.change_over_window, unit),
                t.r_squared
            );
            if explain {
                let _ = writeln!(out, "rule: {}", t.rule);
            }
        }
        None => {
            let _ = writeln!(out, "trend: insufficient data ({} points)", points.len());
        }
    }
    if let (Some(th), Some(f)) = (threshold, &forecast) {
        let th = table::value(th, unit);
        let secs = |s: f64| table::duration((s * 1000.0) as i64);
        let line = match f {
            Forecast::Reaches {
                eta_seconds,
                eta_low_seconds,
                eta_high_seconds,
                ..
            } => format!(
                "reaches {th} in {} (range {} to {})",
                secs(*eta_seconds),
                secs(*eta_low_seconds),
                eta_high_seconds.map_or("unbounded".to_string(), secs)
            ),
            Forecast::Reached { value } => {
                format!("already at {} (threshold {th})", table::value(*value, unit))
            }
            Forecast::NotApproaching { .. } => format!("not approaching {th}"),
            Forecast::InsufficientSignal { reason } => reason.clone(),
        };
        let _ = writeln!(out, "forecast: {line}");
    }
    Ok(out)
}

/// A change in a series' unit with its sign: `+1.2%`, `-3.0 MiB`. A ratio's
/// change is in percentage points.
fn signed(v: f64, unit: Unit) -> String {
    let sign = if v < 0.0 { "-" } else { "+" };
    format!("{sign}{}", table::value(v.abs(), unit))
}

/// GETs `path` from the running agent's API at `listen` (a wildcard address
/// is reached on loopback). Plain HTTP/1.1 over a socket: the agent's own
/// API on this host, nothing else.
pub fn agent_get(listen: &str, path: &str) -> Result<String, ReportError> {
    use std::io::{Read, Write};
    let mut addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| ReportError::Usage(format!("api.listen `{listen}`: {e}")))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let unreachable = |e: std::io::Error| {
        ReportError::NotFound(format!(
            "the agent's API at {addr} does not answer ({e}); is `upkeep run` running?"
        ))
    };
    let timeout = Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    s.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    // The Host names the address and port, as the API's Host guard wants.
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n").map_err(unreachable)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(unreachable)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head.split(' ').nth(1).unwrap_or("");
    if code != "200" {
        return Err(ReportError::NotFound(format!(
            "the agent's API at {addr} answered {path} with status {code}"
        )));
    }
    // The API never sends chunked bodies for these routes (warp sets a length).
    Ok(body.to_string())
}

/// The worst probe status `upkeep status` saw; it picks the exit code.
/// Ordered best to worst, so that `max` is the worst. A probe not yet
/// judged (`unknown`) counts as healthy: it says nothing against the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Worst {
    Healthy,
    Degraded,
    Unhealthy,
}

/// The `upkeep status` table: one row per probe (probe, status, latency,
/// since, reason); also the worst status among the probes.
pub fn status_table(
    probes: &serde_json::Value,
    health: &serde_json::Value,
    now: Ts,
) -> (String, Worst) {
    let mut t = Table::new(&["probe", "status", "latency", "since", "reason"])
        .right(&[2, 3])
        .wrap(&[4]);
    let mut worst = Worst::Healthy;
    let services = &health["services"];
    let empty = Vec::new();
    for p in probes["probes"].as_array().unwrap_or(&empty) {
        let name = p["name"].as_str().unwrap_or("?");
        let status = p["status"].as_str().unwrap_or("unknown");
        worst = worst.max(match status {
            "unhealthy" => Worst::Unhealthy,
            "degraded" => Worst::Degraded,
            _ => Worst::Healthy,
        });
        // A service slot (`database`, …) may hold another probe.
        let service = services
            .get(name)
            .filter(|s| s["name"] == name)
            .or_else(|| {
                services["workers"]
                    .as_array()
                    .and_then(|w| w.iter().find(|s| s["name"] == name))
            });
        let latency_ms = service
            .and_then(|s| s["response_time"].as_f64())
            .or(p["last"]["took_seconds"].as_f64().map(|s| s * 1000.0));
        // The host probe reads the kernel's figures: its check times nothing.
        let latency = match latency_ms {
            Some(ms) if p["kind"] != "host" => format!("{ms:.1} ms"),
            _ => "-".to_string(),
        };
        let since = p["status_since"]
            .as_str()
            .and_then(|s| parse_time(s, now).ok())
            .map_or("-".to_string(), |s| table::duration(now - s));
        let reason = p["reason"].as_str().unwrap_or("");
        t.row([name, status, &latency, &since, reason]);
    }
    (t.render(), worst)
}

/// `v` as `{}` would print it, faster: integral values as integers, others
/// in the shortest form that reads back exactly.
fn push_f64(out: &mut String, f: &mut ryu::Buffer, i: &mut itoa::Buffer, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        out.push_str(i.format(v as i64));
    } else {
        out.push_str(f.format(v));
    }
}
