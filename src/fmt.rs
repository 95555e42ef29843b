//! Times, bytes and counts as people and clients read them: the one home of
//! these formats, so that the API, the page, the CLI and the maintenance
//! ledger print a time or a size the same way.
//!
//! Neutral: depends on `sample` only, and every layer may use it.

use std::time::{Duration, UNIX_EPOCH};

use crate::sample::Ts;

/// A time as RFC 3339 in UTC, to the millisecond: `2026-11-28T10:00:00.000Z`.
///
/// One precision everywhere: timestamps are kept in milliseconds, so this
/// loses nothing, and the API has always answered to the millisecond.
pub fn rfc3339(ts: Ts) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ts.max(0) as u64))
        .to_string()
}

/// `now`, a duration ago (`24h`, `90m`), or an RFC 3339 time
/// (`2026-11-28T10:00:00Z`; without a zone, UTC).
pub fn parse_time(s: &str, now: Ts) -> Result<Ts, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now - crate::sample::ms(d));
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
        format!("`{s}` is neither a duration such as 24h nor a time such as 2026-11-28T10:00:00Z")
    })?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Ts)
        .unwrap_or(0))
}

/// Bytes in binary units to about three figures: `512 B`, `1.5 KiB`,
/// `12.3 MiB`, `812 GiB`. The status page's chart axes (`page.js`) follow
/// the same rule.
pub fn bytes(v: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let (mut v, mut i) = (v, 0);
    while v.abs() >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    match (i, v.abs() < 100.0) {
        (0, _) => format!("{v:.0} B"),
        (_, true) => format!("{v:.1} {}", UNITS[i]),
        _ => format!("{v:.0} {}", UNITS[i]),
    }
}

/// A whole number with thousands separated: `12,345`. Takes any integer
/// (row counts are `u64` from PostgreSQL, `i64` from SQLite).
pub fn count(n: impl Into<i128>) -> String {
    let n = n.into();
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_to_the_millisecond_in_utc() {
        assert_eq!(rfc3339(1_795_860_000_000), "2026-11-28T10:00:00.000Z");
        assert_eq!(rfc3339(1_795_860_000_042), "2026-11-28T10:00:00.042Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        let now = 1_795_860_000_042;
        assert_eq!(parse_time(&rfc3339(now), 0), Ok(now));
    }

    #[test]
    fn times_parse_as_durations_or_rfc3339() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("24h", now), Ok(now - 86_400_000));
        assert_eq!(
            parse_time("2026-11-28T10:00:00Z", now),
            Ok(1_795_860_000_000)
        );
        assert!(
            parse_time("yesterday-ish", now)
                .unwrap_err()
                .contains("`yesterday-ish`")
        );
    }

    #[test]
    fn bytes_read_to_three_figures() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(812.0), "812 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(12_900_000.0), "12.3 MiB");
        assert_eq!(bytes(871_878_959_104.0), "812 GiB");
    }

    #[test]
    fn counts_group_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999u64), "999");
        assert_eq!(count(1_000i64), "1,000");
        assert_eq!(count(1_234_567u64), "1,234,567");
        assert_eq!(count(-1_234_567), "-1,234,567");
    }
}
