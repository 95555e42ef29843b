//! The pure half of the redis probe: `INFO` text into fields and keyspace
//! (`parse_info`), and one `INFO` (with the previous tick's counters) into
//! readings. Called by `redis.rs` on every tick; unit-tested here on the
//! shape of real output, and on a full capture in `tests/probe_redis.rs`.

use std::collections::HashMap;
use std::time::Instant;

use crate::sample::{Reading, Unit};

/// The parsed text of `INFO`: every `field:value` line, and the keyspace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    pub fields: HashMap<String, String>,
    /// `dbN:keys=K,...` lines as (N, K), in the server's order.
    pub keyspace: Vec<(u32, u64)>,
}

impl Info {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    pub fn u64(&self, field: &str) -> Option<u64> {
        self.get(field)?.parse().ok()
    }
}

/// Parses `INFO` output: `# Section` headers and blank lines are skipped,
/// lines end in CRLF or LF, a line without `:` is ignored.
pub fn parse_info(text: &str) -> Info {
    let mut info = Info::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') {
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        let db = field.strip_prefix("db").and_then(|n| n.parse::<u32>().ok());
        let keys = value
            .split(',')
            .find_map(|kv| kv.strip_prefix("keys="))
            .and_then(|k| k.parse::<u64>().ok());
        if let (Some(db), Some(keys)) = (db, keys) {
            info.keyspace.push((db, keys));
        }
        info.fields.insert(field.to_string(), value.to_string());
    }
    info
}

/// `INFO stats` counters of one tick, for rates.
#[derive(Debug, Clone)]
pub(super) struct Counters {
    at: Instant,
    /// Changes when the server restarts: counters started again.
    run_id: String,
    evicted: u64,
    expired: u64,
    hits: u64,
    misses: u64,
}

impl Counters {
    pub(super) fn of(info: &Info, at: Instant) -> Option<Counters> {
        Some(Counters {
            at,
            run_id: info.get("run_id").unwrap_or("").to_string(),
            evicted: info.u64("evicted_keys")?,
            expired: info.u64("expired_keys")?,
            hits: info.u64("keyspace_hits")?,
            misses: info.u64("keyspace_misses")?,
        })
    }
}

/// Readings from one `INFO`. `db` is the connected database, reported with
/// 0 keys when the keyspace does not list it (Redis omits empty databases).
/// Rates need two ticks on the same server run with counters that did not
/// fall (`CONFIG RESETSTAT`); the hit ratio is the cumulative one then, and
/// absent when no key was looked up between ticks.
pub(super) fn info_readings(
    info: &Info,
    db: u32,
    prev: Option<&Counters>,
    cur: Option<&Counters>,
) -> Vec<Reading> {
    let mut out = Vec::new();
    let used = info.u64("used_memory");
    if let Some(used) = used {
        out.push(Reading::new("used_memory_bytes", used as f64, Unit::Bytes));
    }
    if let Some(max) = info.u64("maxmemory").filter(|m| *m > 0) {
        out.push(Reading::new("maxmemory_bytes", max as f64, Unit::Bytes));
        if let Some(used) = used {
            out.push(Reading::new(
                "memory_used_ratio",
                used as f64 / max as f64,
                Unit::Ratio,
            ));
        }
    }
    if let Some(n) = info.u64("connected_clients") {
        out.push(Reading::new("connected_clients", n as f64, Unit::Count));
    }
    let mut keyspace = info.keyspace.clone();
    if !keyspace.iter().any(|(n, _)| *n == db) {
        keyspace.push((db, 0));
    }
    for (n, keys) in keyspace {
        out.push(Reading::new("keys", keys as f64, Unit::Count).with_label("db", &n.to_string()));
    }
    let Some(cur) = cur else { return out };
    // The running totals themselves, for Prometheus' rate().
    out.push(Reading::new(
        "evicted_keys_total",
        cur.evicted as f64,
        Unit::Total,
    ));
    out.push(Reading::new(
        "expired_keys_total",
        cur.expired as f64,
        Unit::Total,
    ));
    let prev = prev.filter(|p| {
        p.run_id == cur.run_id
            && cur.evicted >= p.evicted
            && cur.expired >= p.expired
            && cur.hits >= p.hits
            && cur.misses >= p.misses
    });
    let (hits, misses) = match prev {
        Some(p) => {
            let secs = cur.at.duration_since(p.at).as_secs_f64();
            if secs > 0.0 {
                let rate = |a: u64, b: u64| (a - b) as f64 / secs;
                let evicted = rate(cur.evicted, p.evicted);
                out.push(Reading::new(
                    "evicted_keys_per_second",
                    evicted,
                    Unit::PerSecond,
                ));
                let expired = rate(cur.expired, p.expired);
                out.push(Reading::new(
                    "expired_keys_per_second",
                    expired,
                    Unit::PerSecond,
                ));
            }
            (cur.hits - p.hits, cur.misses - p.misses)
        }
        None => (cur.hits, cur.misses),
    };
    if hits + misses > 0 {
        let ratio = hits as f64 / (hits + misses) as f64;
        out.push(Reading::new("hit_ratio", ratio, Unit::Ratio));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The shape of real `INFO` output (CRLF, section headers, keyspace);
    /// a full capture is parsed in `tests/probe_redis.rs`.
    const SAMPLE: &str = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\n\r\n# Clients\r\n\
        connected_clients:3\r\n\r\n# Memory\r\nused_memory:1000\r\nmaxmemory:4000\r\n\
        maxmemory_human:3.91K\r\n\r\n# Stats\r\nexpired_keys:10\r\nevicted_keys:2\r\n\
        keyspace_hits:30\r\nkeyspace_misses:10\r\n\r\n# Keyspace\r\n\
        db0:keys=12,expires=1,avg_ttl=0\r\ndb3:keys=4,expires=0,avg_ttl=0\r\n";

    fn value(rs: &[Reading], metric: &str) -> Option<f64> {
        rs.iter().find(|r| r.metric == metric).map(|r| r.value)
    }

    #[test]
    fn info_fields_and_keyspace_are_parsed() {
        let info = parse_info(SAMPLE);
        assert_eq!(info.get("redis_version"), Some("7.0.15"));
        assert_eq!(info.u64("used_memory"), Some(1000));
        assert_eq!(info.u64("maxmemory_human"), None);
        assert_eq!(info.keyspace, [(0, 12), (3, 4)]);
        assert_eq!(parse_info(""), Info::default());
        assert_eq!(parse_info("garbage\nno colon here\n").fields.len(), 0);
    }

    #[test]
    fn readings_of_one_info_and_rates_between_two() {
        let info = parse_info(SAMPLE);
        let t0 = Instant::now();
        let first = Counters::of(&info, t0);
        let rs = info_readings(&info, 5, None, first.as_ref());
        assert_eq!(value(&rs, "memory_used_ratio"), Some(0.25));
        assert_eq!(value(&rs, "evicted_keys_per_second"), None);
        assert_eq!(value(&rs, "hit_ratio"), Some(0.75));
        let keys: Vec<_> = rs.iter().filter(|r| r.metric == "keys").collect();
        let dbs: Vec<_> = keys
            .iter()
            .map(|r| (r.labels[0].1.as_str(), r.value))
            .collect();
        assert_eq!(dbs, [("0", 12.0), ("3", 4.0), ("5", 0.0)]);

        let later = parse_info(
            &SAMPLE
                .replace("evicted_keys:2", "evicted_keys:8")
                .replace("hits:30", "hits:40"),
        );
        let second = Counters::of(&later, t0 + Duration::from_secs(2));
        let rs = info_readings(&later, 0, first.as_ref(), second.as_ref());
        assert_eq!(value(&rs, "evicted_keys_per_second"), Some(3.0));
        assert_eq!(value(&rs, "evicted_keys_total"), Some(8.0));
        assert_eq!(value(&rs, "expired_keys_total"), Some(10.0));
        assert_eq!(value(&rs, "expired_keys_per_second"), Some(0.0));
        assert_eq!(value(&rs, "hit_ratio"), Some(1.0));

        // A restarted server (new run_id) gives no rates.
        let restarted = parse_info(&SAMPLE.replace("run_id:abc", "run_id:def"));
        let third = Counters::of(&restarted, t0 + Duration::from_secs(4));
        let rs = info_readings(&restarted, 0, second.as_ref(), third.as_ref());
        assert_eq!(value(&rs, "evicted_keys_per_second"), None);

        // Unlimited memory: no maxmemory and no ratio, rather than a zero.
        let unlimited = parse_info(&SAMPLE.replace("maxmemory:4000", "maxmemory:0"));
        let rs = info_readings(&unlimited, 0, None, None);
        assert_eq!(value(&rs, "maxmemory_bytes"), None);
        assert_eq!(value(&rs, "memory_used_ratio"), None);
    }
}
