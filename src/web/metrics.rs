//! `/metrics`: the live state in the Prometheus text exposition format
//! 0.0.4, for scrapers. [`routes`] is mounted by [`super::routes`]; the
//! rendering is pure ([`collect`] then [`encode`], or [`render`]) so that it
//! is tested without a server.
//!
//! Every family is a gauge unless its name ends in `_total` (a counter):
//!
//! - `upkeep_<kind>_<metric>{probe, <the series' labels>}`: every reading of
//!   a probe's last tick (a series that tick did not report is left out,
//!   never shown stale). Names are lowered to `[a-z0-9_]`; a label named
//!   `probe` or starting with `__` becomes `exported_<name>`. Two fixes keep
//!   the names within Prometheus conventions while history keeps the probes'
//!   own names: a trailing non-base time unit becomes `_seconds` with the
//!   value converted (`tls_cert_expiry_days` is exported as
//!   `tls_cert_expiry_seconds`), and a suffix reserved for counters and
//!   histograms (`_total`, `_count`, `_sum`, `_bucket`) is dropped
//!   (`disk_inodes_total` is exported as `disk_inodes`).
//! - Per configured probe, labels `probe` and `kind`: `upkeep_probe_status`
//!   (one sample per `status`, 1 for the current one), `upkeep_probe_up`,
//!   `upkeep_probe_interval_seconds`, and after its first tick
//!   `upkeep_probe_duration_seconds` and
//!   `upkeep_probe_last_tick_timestamp_seconds`.
//! - The agent itself: `upkeep_build_info{version}`, start time, history
//!   file, runner and config reload health (see [`collect`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::http::header::CONTENT_TYPE;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{Info, State};
use crate::live::Live;
use crate::probes::runner::RunnerStats;
use crate::sample::Status;

/// The content type of text format 0.0.4.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label sets in the order they are written.
type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Gauge,
    Counter,
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: Type,
    /// Keyed by label set: no duplicate series, stable order.
    samples: BTreeMap<Labels, f64>,
}

/// Metric families by name, ready to encode; owns its strings so that the
/// live lock is not held while encoding.
#[derive(Debug, Default)]
pub struct Families(BTreeMap<String, Family>);

impl Families {
    /// Adds one sample; the first of a label set wins, and the type and help
    /// are those of the family's first sample.
    fn add(
        &mut self,
        name: &str,
        kind: Type,
        help: impl FnOnce() -> String,
        labels: Labels,
        v: f64,
    ) {
        let family = match self.0.get_mut(name) {
            Some(f) => f,
            None => self.0.entry(name.to_string()).or_insert(Family {
                help: help(),
                kind,
                samples: BTreeMap::new(),
            }),
        };
        family.samples.entry(labels).or_insert(v);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.add(name, Type::Gauge, || help.to_string(), owned(labels), v);
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.add(
            name,
            Type::Counter,
            || help.to_string(),
            Vec::new(),
            v as f64,
        );
    }
}

fn owned(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Unix milliseconds as the seconds Prometheus timestamps are in.
fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

const STATUSES: [Status; 4] = [
    Status::Healthy,
    Status::Degraded,
    Status::Unhealthy,
    Status::Unknown,
];

/// Every family of the exposition, read from the live state.
///
/// `upkeep_config_last_reload_successful` is 1 and
/// `upkeep_config_last_reload_timestamp_seconds` is the start time until the
/// first reload: the config loaded at startup counts as the last load, so
/// both series exist from the first scrape (as Prometheus does for itself).
pub fn collect(live: &Live, stats: &RunnerStats, info: &Info) -> Families {
    let mut f = Families::default();
    f.gauge(
        "upkeep_build_info",
        "Version of the running agent; always 1.",
        &[("version", info.version)],
        1.0,
    );
    f.gauge(
        "upkeep_start_time_seconds",
        "When the agent started, in unix seconds.",
        &[],
        seconds(live.started_ms),
    );
    probe_families(&mut f, live);
    store_families(&mut f, live);
    f.counter(
        "upkeep_runner_ticks_total",
        "Probe ticks started by every probe since the agent started.",
        stats.ticks.load(Ordering::Relaxed),
    );
    f.counter(
        "upkeep_runner_dropped_outcomes_total",
        "Tick outcomes dropped because the recorder was behind.",
        stats.dropped_outcomes.load(Ordering::Relaxed),
    );
    f.gauge(
        "upkeep_runner_max_tick_delay_seconds",
        "Largest delay of a tick behind its schedule since the agent started.",
        &[],
        stats.max_tick_delay_us.load(Ordering::Relaxed) as f64 / 1e6,
    );
    let (ok, at) = match &live.last_reload {
        Some(r) => (r.ok, r.ts_ms),
        None => (true, live.started_ms),
    };
    f.gauge(
        "upkeep_config_last_reload_successful",
        "Whether the last config load succeeded (1 until the first reload).",
        &[],
        bool_value(ok),
    );
    f.gauge(
        "upkeep_config_last_reload_timestamp_seconds",
        "When the config was last loaded or a reload was tried, in unix seconds.",
        &[],
        seconds(at),
    );
    f
}

/// Status families and the last tick's readings of every configured probe.
fn probe_families(f: &mut Families, live: &Live) {
    for meta in &live.configured {
        let pk = [("probe", meta.name.as_str()), ("kind", meta.kind)];
        let state = live.probes.get(&meta.name);
        let status = state.map_or(Status::Unknown, |s| s.status);
        for s in STATUSES {
            f.gauge(
                "upkeep_probe_status",
                "Probe status as a state set: 1 for the current status, 0 for the others.",
                &[pk[0], pk[1], ("status", s.as_str())],
                bool_value(s == status),
            );
        }
        f.gauge(
            "upkeep_probe_up",
            "Whether the probe is healthy or degraded (0 before its first tick).",
            &pk,
            bool_value(status.is_up()),
        );
        f.gauge(
            "upkeep_probe_interval_seconds",
            "Configured interval between the probe's ticks.",
            &pk,
            meta.interval_ms as f64 / 1000.0,
        );
        if let Some(s) = state {
            f.gauge(
                "upkeep_probe_duration_seconds",
                "How long the probe's last tick took.",
                &pk,
                s.last_took_ms / 1000.0,
            );
            f.gauge(
                "upkeep_probe_last_tick_timestamp_seconds",
                "When the probe's last tick started, in unix seconds.",
                &pk,
                seconds(s.last_ts_ms),
            );
        }
        for (key, value) in live.latest_of(&meta.name) {
            let (name, scale) = exported_name(meta.kind, &key.metric);
            let mut labels: Labels = Vec::with_capacity(key.labels.len() + 1);
            labels.push(("probe".to_string(), meta.name.clone()));
            for (k, v) in &key.labels {
                let k = label_name(k);
                // Two names that sanitize alike would make a sample that
                // does not parse; the first (in name order) stays.
                if !labels.iter().any(|(n, _)| *n == k) {
                    labels.push((k, v.clone()));
                }
            }
            labels[1..].sort();
            let help = || {
                let mut h = format!(
                    "Reading {} of {} probes at their last tick",
                    key.metric, meta.kind
                );
                if scale != 1.0 {
                    h.push_str(", in seconds");
                }
                h.push('.');
                h
            };
            f.add(&name, Type::Gauge, help, labels, value * scale);
        }
    }
}

fn store_families(f: &mut Families, live: &Live) {
    let s = &live.store;
    f.gauge(
        "upkeep_history_open",
        "Whether the history file is open for writes.",
        &[],
        bool_value(s.open),
    );
    f.counter(
        "upkeep_history_samples_written_total",
        "Samples written to the history file since the agent started.",
        s.samples_written,
    );
    f.counter(
        "upkeep_history_write_errors_total",
        "Failed writes to the history file since the agent started.",
        s.write_errors,
    );
    f.gauge(
        "upkeep_history_pending_samples",
        "Samples waiting in memory for the history file to accept writes.",
        &[],
        s.pending_samples as f64,
    );
    f.counter(
        "upkeep_history_dropped_samples_total",
        "Samples lost because the in-memory pending buffer was full.",
        s.dropped_samples,
    );
    f.counter(
        "upkeep_history_refused_series_total",
        "New series the history file refused because it holds its most series.",
        s.refused_series,
    );
    f.gauge(
        "upkeep_history_size_bytes",
        "Size of the history file.",
        &[],
        s.file_bytes as f64,
    );
    f.gauge(
        "upkeep_history_size_bound_bytes",
        "Most the history file can grow to under its configured tiers.",
        &[],
        s.bound_bytes as f64,
    );
}

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

/// Writes a label value with `\`, `"` and newline escaped.
fn push_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes HELP text with `\` and newline escaped.
fn push_help(out: &mut String, h: &str) {
    for c in h.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes a sample value: integers without a fraction, other finite values
/// in shortest round-trip form, and `NaN`, `+Inf`, `-Inf`.
pub fn push_value(out: &mut String, v: f64) {
    // Below 2^53 every integer is exact in an f64, so `as` loses nothing.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() <= EXACT {
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        out.push_str(ryu::Buffer::new().format_finite(v));
    }
}

/// The exposition text of `families`, sorted by family name.
pub fn encode(families: &Families) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for (name, family) in &families.0 {
        if family.samples.is_empty() {
            continue;
        }
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        push_help(&mut out, &family.help);
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push_str(match family.kind {
            Type::Gauge => " gauge\n",
            Type::Counter => " counter\n",
        });
        for (labels, v) in &family.samples {
            out.push_str(name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(k);
                    out.push_str("=\"");
                    push_label_value(&mut out, v);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            push_value(&mut out, *v);
            out.push('\n');
        }
    }
    out
}

/// The whole exposition of the live state.
pub fn render(live: &Live, stats: &RunnerStats, info: &Info) -> String {
    encode(&collect(live, stats, info))
}

/// `GET /metrics` (and `HEAD`, whose body the server leaves out). The live
/// lock is held while the families are copied out, not while they are
/// encoded.
pub fn routes(state: State) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get().or(warp::head()).unify())
        .map(move || {
            let families = {
                let live = state.live.read().expect("live lock");
                collect(&live, &state.stats, &state.info)
            };
            let mut r = encode(&families).into_response();
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
            r
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{ProbeMeta, ProbeState, Reload};
    use crate::sample::{SeriesKey, Unit};

    fn info() -> Info {
        Info {
            version: "1.2.3",
            hostname: "h".into(),
            config_path: None,
            data_dir: "d".into(),
        }
    }

    /// A live state with one probe `name` of `kind` that last ticked at
    /// `tick` with `status`.
    fn live_with(name: &str, kind: &'static str, tick: i64, status: Status) -> Live {
        let mut live = Live {
            started_ms: 1_700_000_000_000,
            ..Live::default()
        };
        live.configured.push(ProbeMeta {
            name: name.into(),
            kind,
            interval_ms: 5000,
            timeout_ms: 1000,
        });
        live.probes.insert(
            name.into(),
            ProbeState {
                kind,
                status,
                since_ms: tick,
                reason: None,
                last_ts_ms: tick,
                last_took_ms: 12.5,
                last_error: None,
            },
        );
        live
    }

    fn lines_of<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| {
                l.strip_prefix(family)
                    .is_some_and(|r| r.starts_with(['{', ' ']))
            })
            .collect()
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let mut live = live_with("web", "host", 1000, Status::Healthy);
        let hostile = "a\"b\\c\nd},e=\"f\"";
        let key = SeriesKey::new("web", "disk_used_ratio", &[("mount", hostile)]);
        live.push(&key, Unit::Ratio, 1000, 0.5);
        let text = render(&live, &RunnerStats::default(), &info());
        assert_eq!(
            lines_of(&text, "upkeep_host_disk_used_ratio"),
            [r#"upkeep_host_disk_used_ratio{probe="web",mount="a\"b\\c\nd},e=\"f\""} 0.5"#]
        );
    }

    #[test]
    fn names_that_need_it_are_sanitized() {
        let mut live = live_with("db-1", "host", 1000, Status::Healthy);
        let labels = [
            ("Mount-Point", "/"),
            ("probe", "theirs"),
            ("__name__", "x"),
            ("9lives", "y"),
            ("mount_point", "dropped: sanitizes like Mount-Point"),
        ];
        live.push(
            &SeriesKey::new("db-1", "disk.free:Bytes", &labels),
            Unit::Bytes,
            1000,
            7.0,
        );
        let text = render(&live, &RunnerStats::default(), &info());
        assert_eq!(
            lines_of(&text, "upkeep_host_disk_free_bytes"),
            [
                r#"upkeep_host_disk_free_bytes{probe="db-1",_9lives="y",exported___name__="x",exported_probe="theirs",mount_point="/"} 7"#
            ]
        );
        assert!(
            text.contains(r#"upkeep_probe_up{probe="db-1",kind="host"} 1"#),
            "{text}"
        );
    }

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
    }

    #[test]
    fn values_are_shortest_round_trip() {
        let cases = [
            (1.0, "1"),
            (-3.0, "-3"),
            (0.0, "0"),
            (0.5, "0.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e-7, "1e-7"),
            (1e300, "1e300"),
            (9_007_199_254_740_992.0, "9007199254740992"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            push_value(&mut s, v);
            assert_eq!(s, want, "{v:?}");
            if v.is_finite() {
                assert_eq!(s.parse::<f64>().unwrap(), v);
            }
        }
    }

    #[test]
    fn only_the_last_tick_is_shown() {
        let mut live = live_with("svc", "tcp", 2000, Status::Degraded);
        live.push(
            &SeriesKey::new("svc", "connect_seconds", &[]),
            Unit::Seconds,
            2000,
            0.25,
        );
        // Reported by an earlier tick only: stale, left out.
        live.push(
            &SeriesKey::new("svc", "gone_seconds", &[]),
            Unit::Seconds,
            1000,
            9.0,
        );
        let text = render(&live, &RunnerStats::default(), &info());
        assert_eq!(
            lines_of(&text, "upkeep_tcp_connect_seconds"),
            [r#"upkeep_tcp_connect_seconds{probe="svc"} 0.25"#]
        );
        assert!(!text.contains("gone_seconds"), "{text}");
        assert_eq!(
            lines_of(&text, "upkeep_probe_status"),
            [
                r#"upkeep_probe_status{probe="svc",kind="tcp",status="degraded"} 1"#,
                r#"upkeep_probe_status{probe="svc",kind="tcp",status="healthy"} 0"#,
                r#"upkeep_probe_status{probe="svc",kind="tcp",status="unhealthy"} 0"#,
                r#"upkeep_probe_status{probe="svc",kind="tcp",status="unknown"} 0"#,
            ]
        );
        assert!(
            text.contains("upkeep_probe_duration_seconds{probe=\"svc\",kind=\"tcp\"} 0.0125\n")
        );
        assert!(
            text.contains(
                "upkeep_probe_last_tick_timestamp_seconds{probe=\"svc\",kind=\"tcp\"} 2\n"
            )
        );
        assert!(text.contains("upkeep_probe_interval_seconds{probe=\"svc\",kind=\"tcp\"} 5\n"));
    }

    #[test]
    fn a_probe_that_never_ticked_is_unknown_and_down() {
        let mut live = live_with("svc", "tcp", 0, Status::Healthy);
        live.probes.clear();
        let text = render(&live, &RunnerStats::default(), &info());
        assert!(
            text.contains("upkeep_probe_status{probe=\"svc\",kind=\"tcp\",status=\"unknown\"} 1\n")
        );
        assert!(text.contains("upkeep_probe_up{probe=\"svc\",kind=\"tcp\"} 0\n"));
        assert!(!text.contains("upkeep_probe_duration_seconds"), "{text}");
    }

    #[test]
    fn each_family_has_one_help_and_type_and_the_agent_reports_itself() {
        let mut live = live_with("a", "tcp", 1000, Status::Healthy);
        live.configured.push(ProbeMeta {
            name: "b".into(),
            kind: "tcp",
            interval_ms: 1000,
            timeout_ms: 1000,
        });
        live.store.samples_written = 42;
        let stats = RunnerStats::default();
        stats.max_tick_delay_us.store(1500, Ordering::Relaxed);
        let text = render(&live, &stats, &info());
        for family in ["upkeep_probe_status", "upkeep_probe_up"] {
            assert_eq!(text.matches(&format!("# TYPE {family} gauge\n")).count(), 1);
        }
        for line in [
            "upkeep_build_info{version=\"1.2.3\"} 1",
            "upkeep_start_time_seconds 1700000000",
            "# TYPE upkeep_history_samples_written_total counter",
            "upkeep_history_samples_written_total 42",
            "upkeep_runner_max_tick_delay_seconds 0.0015",
            "upkeep_config_last_reload_successful 1",
            "upkeep_config_last_reload_timestamp_seconds 1700000000",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let mut sorted = families.clone();
        sorted.sort();
        assert_eq!(families, sorted);

        live.last_reload = Some(Reload {
            ts_ms: 1_700_000_100_500,
            ok: false,
            message: "bad".into(),
        });
        let text = render(&live, &stats, &info());
        assert!(text.contains("upkeep_config_last_reload_successful 0\n"));
        assert!(text.contains("upkeep_config_last_reload_timestamp_seconds 1700000100.5\n"));
    }
}
