//! `/metrics`: the live state in the Prometheus text exposition format
//! 0.0.4, for scrapers. [`routes`] is mounted by [`super::routes`]; the
//! rendering is pure ([`collect()`] then [`encode()`], or [`render`]) so that
//! it is tested without a server. [`Families`] passes between the two
//! halves:
//!
//! - `collect.rs`: the families of the live state and the runners' counters;
//! - `names.rs`: probe metrics and labels renamed to Prometheus conventions;
//! - `help.rs`: what each probe metric is, for its HELP line;
//! - `forecast.rs`: `upkeep_forecast_seconds_until{series}`, confident
//!   forecasts from history, computed at most once a minute;
//! - `encode.rs`: the text encoding, escapes and number formats.
//!
//! Every family is a gauge unless its name ends in `_total` (a counter) or
//! it is a histogram: a probe's running totals (readings of unit `Total`)
//! are counters named `upkeep_<kind>_<metric>` ending in `_total`, and
//! totals named `X_bucket{le}`, `X_sum` and `X_count` one histogram
//! `upkeep_<kind>_X` (the access log's request times):
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
//!   file, runner and config reload health (see [`collect()`]).
//! - Alerts, notifications and maintenance runs (`alerts.rs`).

mod alerts;
mod collect;
mod encode;
pub mod forecast;
mod help;
mod names;

use std::collections::BTreeMap;

use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::http::header::CONTENT_TYPE;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{Info, State};
use crate::live::Live;
use crate::probes::runner::RunnerStats;

pub use collect::collect;
pub use encode::{encode, push_value};
pub use names::{counter_name, exported_name, label_name};

/// The content type of text format 0.0.4.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label sets in the order they are written.
type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Gauge,
    Counter,
    /// Written as `_bucket`, `_sum` and `_count` lines from `Family::histograms`.
    Histogram,
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: Type,
    /// Keyed by label set: no duplicate series, stable order.
    samples: BTreeMap<Labels, f64>,
    /// A histogram's series, keyed by their labels without `le`.
    histograms: BTreeMap<Labels, Histogram>,
}

/// One histogram series: cumulative bucket counts by upper bound, sum and
/// count.
#[derive(Debug, Default)]
struct Histogram {
    /// (bound, the bound as the probe wrote it, cumulative count); `+Inf`
    /// included.
    buckets: Vec<(f64, String, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
}

/// Metric families by name, ready to encode; owns its strings so that the
/// live lock is not held while encoding.
#[derive(Debug, Default)]
pub struct Families(BTreeMap<String, Family>);

/// The whole exposition of the live state.
pub fn render(live: &Live, stats: &RunnerStats, info: &Info) -> String {
    encode(&collect(live, stats, info))
}

/// `GET /metrics` (and `HEAD`, whose body the server leaves out). The live
/// lock is held while the families are copied out, not while they are
/// encoded; forecasts come from history on the blocking pool, at most once
/// a minute, and are left out (never fail the scrape) when history does not
/// answer in time.
pub fn routes(state: State) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(super::get())
        .and(super::params(&[]))
        .then(move |_| {
            let state = state.clone();
            async move {
                let (mut families, keys) = {
                    let live = state.live.read().expect("live lock");
                    (
                        collect(&live, &state.stats, &state.info),
                        forecast::keys(&live),
                    )
                };
                families.forecasts(&forecasts(&state, keys).await);
                if let Some(a) = &state.alerts {
                    families.add_alerts(a);
                }
                let mut r = encode(&families).into_response();
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
                r
            }
        })
        .boxed()
}

/// The confident forecasts, from the cache or computed now.
async fn forecasts(state: &State, keys: Vec<String>) -> Vec<(String, f64)> {
    if let Some(v) = state.forecast_cache.lock().expect("cache lock").fresh() {
        return v;
    }
    let dir = state.info.data_dir.clone();
    let computed = super::blocking(move || {
        let Ok(reader) = crate::store::Reader::open(&dir) else {
            return Ok(Vec::new());
        };
        Ok(forecast::compute(&reader, &keys, crate::sample::now_ms()))
    })
    .await;
    match computed {
        Ok(v) => {
            state
                .forecast_cache
                .lock()
                .expect("cache lock")
                .put(v.clone());
            v
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::live::{ProbeMeta, ProbeState, Reload};
    use crate::sample::{SeriesKey, Status, Unit};

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
    fn running_totals_are_counters_and_buckets_a_histogram() {
        let mut live = live_with("web", "access_log", 1000, Status::Healthy);
        let push = |live: &mut Live, metric: &str, labels: &[(&str, &str)], v: f64| {
            live.push(&SeriesKey::new("web", metric, labels), Unit::Total, 1000, v);
        };
        push(&mut live, "requests_total", &[("class", "2xx")], 7.0);
        push(
            &mut live,
            "request_duration_seconds_bucket",
            &[("le", "+Inf")],
            5.0,
        );
        push(
            &mut live,
            "request_duration_seconds_bucket",
            &[("le", "0.5")],
            4.0,
        );
        push(
            &mut live,
            "request_duration_seconds_bucket",
            &[("le", "0.05")],
            1.0,
        );
        push(&mut live, "request_duration_seconds_sum", &[], 1.25);
        push(&mut live, "request_duration_seconds_count", &[], 5.0);
        let text = render(&live, &RunnerStats::default(), &info());
        assert!(
            text.contains(
                "# HELP upkeep_access_log_requests_total Requests logged since the agent started, by status class.\n\
                 # TYPE upkeep_access_log_requests_total counter\n\
                 upkeep_access_log_requests_total{probe=\"web\",class=\"2xx\"} 7\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE upkeep_access_log_request_duration_seconds histogram\n\
                 upkeep_access_log_request_duration_seconds_bucket{probe=\"web\",le=\"0.05\"} 1\n\
                 upkeep_access_log_request_duration_seconds_bucket{probe=\"web\",le=\"0.5\"} 4\n\
                 upkeep_access_log_request_duration_seconds_bucket{probe=\"web\",le=\"+Inf\"} 5\n\
                 upkeep_access_log_request_duration_seconds_sum{probe=\"web\"} 1.25\n\
                 upkeep_access_log_request_duration_seconds_count{probe=\"web\"} 5\n"
            ),
            "{text}"
        );
        assert!(!text.contains("Reading "), "{text}");
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
