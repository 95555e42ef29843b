//! The pure half of the postgres probe: query results (as plain values)
//! into readings, counters into rates. Called by `postgres.rs` on every
//! tick; unit-tested here without a server. Errors become one-line reasons
//! in `crate::clients::postgres`.

use std::time::Instant;

use crate::sample::{Reading, Unit};

/// Connection states always reported, 0 when no session is in them.
const STATES: [&str; 4] = [
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
];

/// `pg_stat_database` counters of one tick, for rates.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counters {
    pub at: Instant,
    /// `stats_reset` as unix seconds (0 = never reset): a change means the
    /// counters restarted even if they grew past the old values since.
    pub reset: f64,
    pub commits: i64,
    pub rollbacks: i64,
    pub hit: i64,
    pub read: i64,
}

pub(super) fn count(metric: &str, n: i64) -> Reading {
    Reading::new(metric, n as f64, Unit::Count)
}

pub(super) fn seconds(metric: &str, s: f64) -> Reading {
    Reading::new(metric, s, Unit::Seconds)
}

/// Commit and rollback totals and rates and the cache hit ratio from two ticks'
/// counters. No rates on the first tick or across a stats reset; the hit
/// ratio is then the cumulative one. With no block read between ticks there
/// is no ratio to give.
pub(super) fn counter_readings(prev: Option<&Counters>, cur: &Counters) -> Vec<Reading> {
    // The running totals themselves, for Prometheus' rate().
    let mut out = vec![
        Reading::new("commits_total", cur.commits as f64, Unit::Total),
        Reading::new("rollbacks_total", cur.rollbacks as f64, Unit::Total),
    ];
    let prev = prev.filter(|p| {
        p.reset == cur.reset
            && cur.commits >= p.commits
            && cur.rollbacks >= p.rollbacks
            && cur.hit >= p.hit
            && cur.read >= p.read
    });
    let (hit, read) = match prev {
        Some(p) => {
            let secs = cur.at.duration_since(p.at).as_secs_f64();
            if secs > 0.0 {
                let rate = |a: i64, b: i64| (a - b) as f64 / secs;
                out.push(Reading::new(
                    "commits_per_second",
                    rate(cur.commits, p.commits),
                    Unit::PerSecond,
                ));
                out.push(Reading::new(
                    "rollbacks_per_second",
                    rate(cur.rollbacks, p.rollbacks),
                    Unit::PerSecond,
                ));
            }
            (cur.hit - p.hit, cur.read - p.read)
        }
        None => (cur.hit, cur.read),
    };
    if hit + read > 0 {
        let ratio = hit as f64 / (hit + read) as f64;
        out.push(Reading::new("cache_hit_ratio", ratio, Unit::Ratio));
    }
    out
}

/// Rows of (state, sessions, age of the group's oldest transaction) into
/// connections by state, their ratio to `max_connections` and the oldest
/// open transaction: 0 when none is open, absent when some sessions' state
/// is hidden from this role (their transactions cannot be seen).
pub(super) fn activity_readings(rows: &[(String, i64, Option<f64>)], max: i64) -> Vec<Reading> {
    let mut out = Vec::new();
    let mut states: Vec<(&str, i64)> = STATES.iter().map(|s| (*s, 0)).collect();
    let mut oldest = Some(0.0f64);
    for (state, n, age) in rows {
        if state == "unknown" {
            oldest = None;
        }
        oldest = oldest.map(|o| o.max(age.unwrap_or(0.0)));
        match states.iter_mut().find(|(s, _)| s == state) {
            Some(entry) => entry.1 += n,
            None => states.push((state, *n)),
        }
    }
    let total: i64 = states.iter().map(|(_, n)| n).sum();
    for (state, n) in &states {
        out.push(count("connections", *n).with_label("state", state));
    }
    if max > 0 {
        let ratio = total as f64 / max as f64;
        out.push(Reading::new("connections_used_ratio", ratio, Unit::Ratio));
    }
    if let Some(o) = oldest {
        out.push(seconds("oldest_transaction_seconds", o.max(0.0)));
    }
    out
}

/// Per configured table, rows of (dead, live, seconds since last analyze),
/// NULLs when the name is not a table. Returns the readings and the names
/// not found.
pub(super) fn table_readings<'a>(
    names: &'a [String],
    rows: &[(Option<i64>, Option<i64>, Option<f64>)],
) -> (Vec<Reading>, Vec<&'a str>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (name, (dead, live, age)) in names.iter().zip(rows) {
        let (Some(dead), Some(live)) = (dead, live) else {
            missing.push(name.as_str());
            continue;
        };
        out.push(count("table_dead_tuples", *dead).with_label("table", name));
        out.push(count("table_live_tuples", *live).with_label("table", name));
        if let Some(age) = age {
            let r = seconds("table_last_analyze_age_seconds", age.max(0.0));
            out.push(r.with_label("table", name));
        }
    }
    (out, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn counters(at: Instant, reset: f64, c: [i64; 4]) -> Counters {
        let [commits, rollbacks, hit, read] = c;
        Counters {
            at,
            reset,
            commits,
            rollbacks,
            hit,
            read,
        }
    }

    fn value(rs: &[Reading], metric: &str) -> Option<f64> {
        rs.iter().find(|r| r.metric == metric).map(|r| r.value)
    }

    #[test]
    fn rates_need_two_ticks_and_skip_resets() {
        let t0 = Instant::now();
        let first = counters(t0, 0.0, [100, 10, 900, 100]);
        let rs = counter_readings(None, &first);
        assert_eq!(value(&rs, "commits_per_second"), None);
        // No delta yet: the cumulative ratio.
        assert_eq!(value(&rs, "cache_hit_ratio"), Some(0.9));

        let second = counters(t0 + Duration::from_secs(2), 0.0, [140, 12, 1099, 101]);
        let rs = counter_readings(Some(&first), &second);
        assert_eq!(value(&rs, "commits_per_second"), Some(20.0));
        assert_eq!(value(&rs, "rollbacks_per_second"), Some(1.0));
        // The totals as they are, for a Prometheus counter.
        assert_eq!(value(&rs, "commits_total"), Some(140.0));
        assert_eq!(value(&rs, "rollbacks_total"), Some(12.0));
        assert_eq!(value(&rs, "cache_hit_ratio"), Some(199.0 / 200.0));

        // pg_stat_reset(): counters fell, or stats_reset moved.
        let fell = counters(t0 + Duration::from_secs(4), 0.0, [5, 0, 10, 0]);
        assert_eq!(
            value(
                &counter_readings(Some(&second), &fell),
                "commits_per_second"
            ),
            None
        );
        let moved = counters(t0 + Duration::from_secs(4), 1.7e9, [500, 20, 2000, 200]);
        let rs = counter_readings(Some(&second), &moved);
        assert_eq!(value(&rs, "commits_per_second"), None);
        assert_eq!(value(&rs, "cache_hit_ratio"), Some(2000.0 / 2200.0));

        // No block touched between ticks: no ratio rather than a made-up one.
        let idle = counters(t0 + Duration::from_secs(4), 0.0, [140, 12, 1099, 101]);
        assert_eq!(
            value(&counter_readings(Some(&second), &idle), "cache_hit_ratio"),
            None
        );
    }

    #[test]
    fn every_usual_state_is_reported_and_hidden_sessions_hide_the_oldest() {
        let rows = vec![
            ("active".to_string(), 2, Some(0.5)),
            ("idle in transaction".to_string(), 1, Some(42.0)),
            ("idle".to_string(), 7, None),
        ];
        let rs = activity_readings(&rows, 100);
        let state = |s: &str| {
            rs.iter()
                .find(|r| r.metric == "connections" && r.labels[0].1 == s)
                .map(|r| r.value)
        };
        assert_eq!(state("idle"), Some(7.0));
        assert_eq!(state("idle in transaction (aborted)"), Some(0.0));
        assert_eq!(value(&rs, "connections_used_ratio"), Some(0.1));
        assert_eq!(value(&rs, "oldest_transaction_seconds"), Some(42.0));

        // Nothing open: a true zero.
        let rs = activity_readings(&[("idle".to_string(), 3, None)], 100);
        assert_eq!(value(&rs, "oldest_transaction_seconds"), Some(0.0));

        let mut hidden = rows.clone();
        hidden.push(("unknown".to_string(), 4, None));
        let rs = activity_readings(&hidden, 100);
        assert_eq!(value(&rs, "oldest_transaction_seconds"), None);
        assert_eq!(value(&rs, "connections_used_ratio"), Some(0.14));
    }

    #[test]
    fn missing_tables_and_never_analyzed_ones_give_no_value() {
        let names = vec![
            "audit_log".to_string(),
            "app.gone".to_string(),
            "fresh".to_string(),
        ];
        let rows = vec![
            (Some(5), Some(100), Some(60.0)),
            (None, None, None),
            (Some(0), Some(0), None),
        ];
        let (rs, missing) = table_readings(&names, &rows);
        assert_eq!(missing, ["app.gone"]);
        let metrics: Vec<(&str, &str)> = rs
            .iter()
            .map(|r| (r.metric.as_str(), r.labels[0].1.as_str()))
            .collect();
        assert_eq!(
            metrics,
            [
                ("table_dead_tuples", "audit_log"),
                ("table_live_tuples", "audit_log"),
                ("table_last_analyze_age_seconds", "audit_log"),
                ("table_dead_tuples", "fresh"),
                ("table_live_tuples", "fresh"),
            ]
        );
    }
}
