//! The values that flow from probes to the recorder: series keys, readings,
//! timestamps and health statuses. Shared by every probe, the store and the
//! analysis functions.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Wall-clock time as unix milliseconds. Every timestamp in memory and in the
/// history file uses this unit (columns are named `*_ms`).
pub type Ts = i64;

/// The current wall-clock time in unix milliseconds.
pub fn now_ms() -> Ts {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Ts)
        // A clock before 1970 is a broken clock; 0 keeps arithmetic defined.
        .unwrap_or(0)
}

/// A duration in whole milliseconds, saturating.
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Health of a probe. Ordered from best to worst so that `max` gives the
/// worst of several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
    /// No outcome yet in this run of the agent, or the probe is not reporting.
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
            Status::Unknown => "unknown",
        }
    }

    /// Parses the text stored in the history file.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "healthy" => Status::Healthy,
            "degraded" => Status::Degraded,
            "unhealthy" => Status::Unhealthy,
            "unknown" => Status::Unknown,
            _ => return None,
        })
    }

    /// Severity rank for comparing known statuses (unknown is not a severity).
    pub fn severity(self) -> u8 {
        match self {
            Status::Healthy => 0,
            Status::Degraded => 1,
            Status::Unhealthy => 2,
            Status::Unknown => 0,
        }
    }

    /// Up means the service answers: healthy or degraded.
    pub fn is_up(self) -> bool {
        matches!(self, Status::Healthy | Status::Degraded)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of one time series: `probe.metric{label="value",...}`.
///
/// Labels are kept sorted by name so that the same series always renders to
/// the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub probe: String,
    pub metric: String,
    pub labels: Vec<(String, String)>,
}

impl SeriesKey {
    pub fn new(probe: &str, metric: &str, labels: &[(&str, &str)]) -> SeriesKey {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        SeriesKey {
            probe: probe.to_string(),
            metric: metric.to_string(),
            labels,
        }
    }

    /// The labels alone, rendered as `{a="b",c="d"}` (empty when none).
    pub fn labels_text(&self) -> String {
        let mut s = String::new();
        self.push_labels(&mut s);
        s
    }

    /// `{name="value",...}` appended to `s`; nothing without labels.
    fn push_labels(&self, s: &mut String) {
        if self.labels.is_empty() {
            return;
        }
        s.push('{');
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(k);
            s.push_str("=\"");
            for c in v.chars() {
                match c {
                    '"' => s.push_str("\\\""),
                    '\\' => s.push_str("\\\\"),
                    '\n' => s.push_str("\\n"),
                    c => s.push(c),
                }
            }
            s.push('"');
        }
        s.push('}');
    }

    /// The key as text, `probe.metric{labels}`: what `Display` writes, built
    /// in one allocation without the formatting machinery. The recorder and
    /// the history writer render every value's key at every tick, and
    /// `format!` made that a fifth of an idle agent's CPU.
    pub fn text(&self) -> String {
        let labels: usize = self.labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        let mut s = String::with_capacity(self.probe.len() + self.metric.len() + labels + 3);
        s.push_str(&self.probe);
        s.push('.');
        s.push_str(&self.metric);
        self.push_labels(&mut s);
        s
    }

    /// Parses what [`labels_text`](Self::labels_text) wrote; `None` when
    /// `text` is not in that form.
    pub fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
        if text.is_empty() {
            return Some(Vec::new());
        }
        let mut rest = text
            .strip_prefix('{')?
            .strip_suffix('}')?
            .chars()
            .peekable();
        let mut out = Vec::new();
        loop {
            let mut name = String::new();
            for c in rest.by_ref() {
                if c == '=' {
                    break;
                }
                name.push(c);
            }
            if name.is_empty() || rest.next()? != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match rest.next()? {
                    '"' => break,
                    '\\' => value.push(match rest.next()? {
                        'n' => '\n',
                        c => c,
                    }),
                    c => value.push(c),
                }
            }
            out.push((name, value));
            match rest.next() {
                None => return Some(out),
                Some(',') => {}
                Some(_) => return None,
            }
        }
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod label_tests {
    use super::SeriesKey;

    #[test]
    fn text_is_probe_dot_metric_and_the_labels() {
        let plain = SeriesKey::new("host", "load1", &[]);
        assert_eq!(plain.text(), "host.load1");
        let labelled = SeriesKey::new("host", "disk_used_ratio", &[("z", "a\"b"), ("mount", "/")]);
        assert_eq!(
            labelled.text(),
            "host.disk_used_ratio{mount=\"/\",z=\"a\\\"b\"}"
        );
        assert_eq!(labelled.to_string(), labelled.text());
        assert_eq!(
            labelled.text(),
            format!(
                "{}.{}{}",
                labelled.probe,
                labelled.metric,
                labelled.labels_text()
            )
        );
    }

    #[test]
    fn labels_text_parses_back() {
        for labels in [
            vec![],
            vec![("mount", "/")],
            vec![("a", "x\"y"), ("b", "back\\slash\nline"), ("c", "=,{}")],
        ] {
            let key = SeriesKey::new("p", "m", &labels);
            let back = SeriesKey::parse_labels(&key.labels_text()).unwrap();
            assert_eq!(back, key.labels, "{}", key.labels_text());
        }
        assert_eq!(SeriesKey::parse_labels("{a=b}"), None);
        assert_eq!(SeriesKey::parse_labels("{a=\"b\"x}"), None);
        assert_eq!(SeriesKey::parse_labels("a=\"b\""), None);
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// One measured value from one probe tick. The probe name is added by the
/// runner; a probe names only its metric and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub metric: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub unit: Unit,
}

impl Reading {
    pub fn new(metric: &str, value: f64, unit: Unit) -> Reading {
        Reading {
            metric: metric.to_string(),
            labels: Vec::new(),
            value,
            unit,
        }
    }

    pub fn with_label(mut self, name: &str, value: &str) -> Reading {
        self.labels.push((name.to_string(), value.to_string()));
        self.labels.sort();
        self
    }

    pub fn key(&self, probe: &str) -> SeriesKey {
        SeriesKey {
            probe: probe.to_string(),
            metric: self.metric.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// Unit of a series, stored beside it in the series registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A fraction in 0..=1 (CPU used, disk used).
    Ratio,
    Bytes,
    BytesPerSecond,
    PerSecond,
    Seconds,
    Count,
    /// Dimensionless (load average).
    None,
    /// A running total that only grows until its source restarts (bytes
    /// received, commits): `/metrics` exports it as a counter for
    /// `rate()`. Kept in the live state only, never written to history,
    /// which holds the per-second rates beside it.
    Total,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Ratio => "ratio",
            Unit::Bytes => "bytes",
            Unit::BytesPerSecond => "bytes_per_second",
            Unit::PerSecond => "per_second",
            Unit::Seconds => "seconds",
            Unit::Count => "count",
            Unit::None => "none",
            Unit::Total => "total",
        }
    }

    pub fn parse(s: &str) -> Unit {
        match s {
            "ratio" => Unit::Ratio,
            "bytes" => Unit::Bytes,
            "bytes_per_second" => Unit::BytesPerSecond,
            "per_second" => Unit::PerSecond,
            "seconds" => Unit::Seconds,
            "count" => Unit::Count,
            "total" => Unit::Total,
            _ => Unit::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_renders_sorted_escaped_labels() {
        let k = SeriesKey::new(
            "host",
            "disk_used_ratio",
            &[("mount", "/a\"b"), ("fs", "ext4")],
        );
        assert_eq!(
            k.to_string(),
            r#"host.disk_used_ratio{fs="ext4",mount="/a\"b"}"#
        );
        assert_eq!(
            SeriesKey::new("host", "load1", &[]).to_string(),
            "host.load1"
        );
    }

    #[test]
    fn worst_status_is_max() {
        let worst = [Status::Healthy, Status::Unhealthy, Status::Degraded]
            .into_iter()
            .max()
            .unwrap();
        assert_eq!(worst, Status::Unhealthy);
        assert_eq!(Status::parse("degraded"), Some(Status::Degraded));
        assert_eq!(Status::parse("bogus"), None);
    }
}
