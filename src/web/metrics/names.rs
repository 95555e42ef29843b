//! Probe metric and label names as Prometheus wants them (see the rules in
//! [`super`]'s doc), used by [`super::collect()`] for every reading.

/// A name lowered to `[a-z0-9_]` (upper case would fail promtool's
/// snake_case lint; `:` is reserved for recording rules).
fn sanitize(s: &str, out: &mut String) {
    out.extend(s.chars().map(|c| match c {
        'a'..='z' | '0'..='9' | '_' => c,
        'A'..='Z' => c.to_ascii_lowercase(),
        _ => '_',
    }));
}

/// Non-base time units a metric name may end in, and their size in seconds.
const TIME_UNITS: [(&str, f64); 11] = [
    ("weeks", 604_800.0),
    ("days", 86_400.0),
    ("hours", 3_600.0),
    ("minutes", 60.0),
    ("milliseconds", 1e-3),
    ("microseconds", 1e-6),
    ("nanoseconds", 1e-9),
    ("ms", 1e-3),
    ("us", 1e-6),
    ("ns", 1e-9),
    ("sec", 1.0),
];

/// Suffixes Prometheus reserves for counters, histograms and summaries.
const RESERVED_SUFFIXES: [&str; 4] = ["_total", "_count", "_sum", "_bucket"];

/// The family name of a probe metric and the factor its values are
/// multiplied by (see the module doc).
pub fn exported_name(kind: &str, metric: &str) -> (String, f64) {
    let mut m = String::with_capacity(metric.len() + 8);
    sanitize(metric, &mut m);
    while let Some(stem) = RESERVED_SUFFIXES.iter().find_map(|s| m.strip_suffix(s)) {
        m.truncate(stem.len());
    }
    let mut scale = 1.0;
    for (unit, secs) in TIME_UNITS {
        if let Some(stem) = m.strip_suffix(unit)
            && (stem.is_empty() || stem.ends_with('_'))
        {
            m = format!("{stem}seconds");
            scale = secs;
            break;
        }
    }
    let mut name = String::with_capacity(kind.len() + m.len() + 8);
    name.push_str("upkeep_");
    sanitize(kind, &mut name);
    if !m.is_empty() {
        name.push('_');
        name.push_str(&m);
    }
    (name, scale)
}

/// The family name of a probe's running total (`Unit::Total`): the
/// reading's own name, sanitized, ending in `_total` as counters do. Not
/// renamed by unit, since a total counts things, not time.
pub fn counter_name(kind: &str, metric: &str) -> String {
    let mut name = String::with_capacity(kind.len() + metric.len() + 16);
    name.push_str("upkeep_");
    sanitize(kind, &mut name);
    name.push('_');
    sanitize(metric, &mut name);
    if !name.ends_with("_total") {
        name.push_str("_total");
    }
    name
}

/// A label name of a series: sanitized, never `probe` (the exporter's own
/// label) nor `__…` (reserved), never starting with a digit.
pub fn label_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 1);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        s.push('_');
    }
    sanitize(name, &mut s);
    if s == "probe" || s.starts_with("__") {
        s.insert_str(0, "exported_");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_names_follow_prometheus_conventions() {
        assert_eq!(
            exported_name("http", "tls_cert_expiry_days"),
            ("upkeep_http_tls_cert_expiry_seconds".to_string(), 86_400.0)
        );
        assert_eq!(
            exported_name("host", "disk_inodes_total"),
            ("upkeep_host_disk_inodes".to_string(), 1.0)
        );
        assert_eq!(
            exported_name("x", "wait_ms_count"),
            ("upkeep_x_wait_seconds".to_string(), 1e-3)
        );
        assert_eq!(
            exported_name("x", "items"),
            ("upkeep_x_items".to_string(), 1.0)
        );
        assert_eq!(
            exported_name("host", "net_rx_bytes_per_second"),
            ("upkeep_host_net_rx_bytes_per_second".to_string(), 1.0)
        );
        assert_eq!(label_name(""), "_");
        assert_eq!(
            counter_name("host", "net_rx_bytes_total"),
            "upkeep_host_net_rx_bytes_total"
        );
        assert_eq!(counter_name("x", "Hits"), "upkeep_x_hits_total");
    }
}
