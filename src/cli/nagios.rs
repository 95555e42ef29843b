//! `upkeep status --format nagios`: one line a monitoring system (Nagios,
//! Icinga, Sensu, Zabbix) shows as the check's output, with performance
//! data after `|` in the plugin guidelines' form
//! (`'label'=value[unit];warn;crit;min;max`). The exit code is the same as
//! for the table; [`super::read::status`] decides it. Pure, unit-tested.

use std::fmt::Write as _;

use super::report::Worst;

/// The plugin guidelines' word for each exit code.
fn state_word(worst: Option<Worst>) -> &'static str {
    match worst {
        Some(Worst::Healthy) => "OK",
        Some(Worst::Degraded) => "WARNING",
        Some(Worst::Unhealthy) => "CRITICAL",
        None => "UNKNOWN",
    }
}

/// Text that goes in the output part: no `|` (it starts the performance
/// data) and no line breaks (the line would end there).
fn plain(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '|' => '/',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect()
}

/// A performance-data label: quoted, a `'` doubled, `=` (which ends the
/// label) and `|` replaced.
fn label(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '=' | '|' => out.push('_'),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Milliseconds as seconds to the microsecond, without trailing zeros.
fn seconds(ms: f64) -> String {
    let s = format!("{:.6}", ms / 1000.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() { "0".into() } else { s.into() }
}

/// The line for the agent's probe list (`/api/v1/probes`) and health
/// document, and the worst status, which picks the exit code. Probes are
/// named worst first in the text; the performance data counts probes by
/// status and gives each probe's latency in seconds.
pub fn line(probes: &serde_json::Value, health: &serde_json::Value) -> (String, Worst) {
    let empty = Vec::new();
    let list = probes["probes"].as_array().unwrap_or(&empty);
    let mut counts = [0usize; 4];
    let mut bad: Vec<(Worst, String)> = Vec::new();
    let mut perf = String::new();
    let mut worst = Worst::Healthy;
    let services = &health["services"];
    for p in list {
        let name = p["name"].as_str().unwrap_or("?");
        let status = p["status"].as_str().unwrap_or("unknown");
        let (i, w) = match status {
            "healthy" => (0, None),
            "degraded" => (1, Some(Worst::Degraded)),
            "unhealthy" => (2, Some(Worst::Unhealthy)),
            _ => (3, None),
        };
        counts[i] += 1;
        if let Some(w) = w {
            worst = worst.max(w);
            let reason = p["reason"].as_str().unwrap_or("");
            let text = if reason.is_empty() {
                format!("{} {status}", plain(name))
            } else {
                format!("{} {status} ({})", plain(name), plain(reason))
            };
            bad.push((w, text));
        }
        let latency_ms = services
            .get(name)
            .filter(|s| s["name"] == name)
            .and_then(|s| s["response_time"].as_f64())
            .or_else(|| p["last"]["took_seconds"].as_f64().map(|s| s * 1000.0));
        if let Some(ms) = latency_ms {
            let _ = write!(
                perf,
                " {}={}s;;;0",
                label(&format!("{name} latency")),
                seconds(ms)
            );
        }
    }
    bad.sort_by_key(|b| std::cmp::Reverse(b.0));
    let n = list.len();
    let mut out = format!("UPKEEP {} - ", state_word(Some(worst)));
    if bad.is_empty() {
        let _ = write!(out, "{n} probes, {} healthy", counts[0]);
        if counts[3] > 0 {
            let _ = write!(out, ", {} not yet checked", counts[3]);
        }
    } else {
        let texts: Vec<&str> = bad.iter().map(|(_, t)| t.as_str()).collect();
        let _ = write!(
            out,
            "{} of {n} probes not healthy: {}",
            bad.len(),
            texts.join("; ")
        );
    }
    out.push_str(" |");
    for (word, c) in ["healthy", "degraded", "unhealthy", "unknown"]
        .iter()
        .zip(counts)
    {
        let _ = write!(out, " {word}={c};;;0;{n}");
    }
    out.push_str(&perf);
    out.push('\n');
    (out, worst)
}

/// The line when the agent cannot be asked (exit code 3).
pub fn unreachable(why: &str) -> String {
    format!("UPKEEP {} - {}\n", state_word(None), plain(why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probes(list: serde_json::Value) -> serde_json::Value {
        json!({ "probes": list })
    }

    #[test]
    fn all_healthy_is_ok_with_counts_and_latencies() {
        let p = probes(json!([
            {"name": "host", "status": "healthy", "last": {"took_seconds": 0.002}},
            {"name": "db", "status": "healthy"},
        ]));
        let h = json!({"services": {"db": {"name": "db", "response_time": 1.5}}});
        let (text, worst) = line(&p, &h);
        assert_eq!(worst, Worst::Healthy);
        assert_eq!(
            text,
            "UPKEEP OK - 2 probes, 2 healthy | healthy=2;;;0;2 degraded=0;;;0;2 \
             unhealthy=0;;;0;2 unknown=0;;;0;2 'host latency'=0.002s;;;0 'db latency'=0.0015s;;;0\n"
        );
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn the_worst_leads_and_hostile_text_cannot_break_the_line() {
        let p = probes(json!([
            {"name": "slow", "status": "degraded", "reason": "p95 0.7 s"},
            {"name": "it's=a|b", "status": "unhealthy", "reason": "refused | gone\nnext"},
            {"name": "new", "status": "unknown"},
        ]));
        let (text, worst) = line(&p, &json!({}));
        assert_eq!(worst, Worst::Unhealthy);
        let (output, perf) = text.trim_end().split_once(" | ").unwrap();
        assert_eq!(
            output,
            "UPKEEP CRITICAL - 2 of 3 probes not healthy: it's=a/b unhealthy (refused / gone next); \
             slow degraded (p95 0.7 s)"
        );
        assert_eq!(
            perf,
            "healthy=0;;;0;3 degraded=1;;;0;3 unhealthy=1;;;0;3 unknown=1;;;0;3"
        );
        assert_eq!(text.lines().count(), 1);
        assert_eq!(label("it's=a|b"), "'it''s_a_b'");
        assert_eq!(seconds(50.014999999), "0.050015");
        assert_eq!(seconds(0.0), "0");
    }

    #[test]
    fn degraded_is_warning_and_unreachable_is_unknown() {
        let p = probes(json!([{"name": "a", "status": "degraded"}]));
        let (text, worst) = line(&p, &json!({}));
        assert_eq!(worst, Worst::Degraded);
        assert!(text.starts_with("UPKEEP WARNING - 1 of 1 probes not healthy: a degraded |"));
        assert_eq!(
            unreachable("the agent at 127.0.0.1:1 does not answer | x"),
            "UPKEEP UNKNOWN - the agent at 127.0.0.1:1 does not answer / x\n"
        );
    }
}
