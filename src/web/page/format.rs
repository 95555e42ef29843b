//! Figures as people read them on the page: percentages, durations, times
//! as `<time>` and status symbols, shared by every part of the page's
//! markup. Bytes, counts and RFC 3339 come from `crate::fmt`.

use maud::{Markup, html};

use crate::fmt::{bytes, rfc3339};
use crate::sample::{Status, Ts, Unit};

pub(super) fn symbol(s: Status) -> &'static str {
    match s {
        Status::Healthy => "✓",
        Status::Degraded => "!",
        Status::Unhealthy => "✕",
        Status::Unknown => "?",
    }
}

pub(super) fn percent(ratio: f64) -> String {
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
pub(super) fn uptime_percent(ratio: f64) -> String {
    if ratio >= 1.0 {
        "100%".into()
    } else if ratio <= 0.0 {
        "0%".into()
    } else {
        format!("{:.2}%", (ratio * 10_000.0).floor() / 100.0)
    }
}

pub(super) fn seconds(s: f64) -> String {
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

pub(super) fn value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Ratio => percent(v),
        Unit::Bytes => bytes(v),
        Unit::BytesPerSecond => format!("{}/s", bytes(v)),
        Unit::PerSecond => format!("{v:.1}/s"),
        Unit::Seconds => seconds(v),
        Unit::Count | Unit::Total => format!("{v:.0}"),
        Unit::None => format!("{v:.2}"),
    }
}

/// When a disk will be full: hours under two days, else days.
pub(super) fn full_in(days: f64) -> String {
    if days < 2.0 {
        format!("full in {:.0} h", (days * 24.0).max(1.0))
    } else {
        format!("full in {days:.0} days")
    }
}

/// A span of time, in its two largest units: `3 h 5 min`.
pub(super) fn span(ms: i64) -> String {
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

/// How long something took: milliseconds under a second, tenths of a
/// second under a minute, else [`span`].
pub(super) fn took(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        span(ms)
    }
}

/// `2026-11-28 10:00:00 UTC` inside a `<time>` the script shows in local time.
pub(super) fn time(ts: Ts) -> Markup {
    time_of(&rfc3339(ts))
}

pub(super) fn time_of(rfc: &str) -> Markup {
    let text = rfc.get(..19).unwrap_or(rfc).replace('T', " ");
    html! { time datetime=(rfc) { (text) " UTC" } }
}

pub(super) fn level(ratio: f64) -> &'static str {
    if ratio >= 0.9 {
        "bad"
    } else if ratio >= 0.75 {
        "warn"
    } else {
        "ok"
    }
}

pub(super) fn uptime_class(r: f64) -> &'static str {
    if r >= 0.999 {
        "ok"
    } else if r >= 0.99 {
        "warn"
    } else {
        "bad"
    }
}

/// Percent-encodes a query value (series keys hold `{`, `"` and `=`).
pub(super) fn encode(s: &str) -> String {
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
