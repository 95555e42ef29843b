//! The families of `/metrics`, read from the live state and the runners'
//! counters under the live lock ([`super::routes`] encodes them after it is
//! released): the agent itself, every configured probe's status and its
//! last tick's readings, and the history file's health.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::help::{fallback_help, probe_help};
use super::names::{counter_name, exported_name, label_name};
use super::{Families, Family, Histogram, Info, Labels, Type};
use crate::live::Live;
use crate::probes::runner::RunnerStats;
use crate::sample::{SeriesKey, Status, Unit};

impl Families {
    /// Adds one sample; the first of a label set wins, and the type and help
    /// are those of the family's first sample.
    pub(super) fn add(
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
                histograms: BTreeMap::new(),
            }),
        };
        family.samples.entry(labels).or_insert(v);
    }

    /// The histogram series of family `name` with `labels` (without `le`),
    /// made a histogram family when it is new.
    fn histogram(
        &mut self,
        name: &str,
        help: impl FnOnce() -> String,
        labels: Labels,
    ) -> Option<&mut Histogram> {
        let family = self.0.entry(name.to_string()).or_insert_with(|| Family {
            help: help(),
            kind: Type::Histogram,
            samples: BTreeMap::new(),
            histograms: BTreeMap::new(),
        });
        // A gauge or counter of the same name came first: it stays.
        (family.kind == Type::Histogram).then(|| family.histograms.entry(labels).or_default())
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
            let unit = live
                .rings
                .get(&key.to_string())
                .map_or(Unit::None, |r| r.unit);
            if unit == Unit::Total {
                total_sample(f, meta.kind, key, value);
                continue;
            }
            let (name, scale) = exported_name(meta.kind, &key.metric);
            let labels = series_labels(&meta.name, key, None);
            let help = || match probe_help(meta.kind, &key.metric) {
                Some(h) => h.to_string(),
                None => fallback_help(
                    meta.kind,
                    &key.metric,
                    if scale != 1.0 {
                        "seconds"
                    } else {
                        unit.as_str()
                    },
                ),
            };
            f.add(&name, Type::Gauge, help, labels, value * scale);
        }
    }
}

impl Families {
    /// `upkeep_forecast_seconds_until{series}` of each confident forecast.
    pub fn forecasts(&mut self, etas: &[(String, f64)]) {
        for (series, eta) in etas {
            self.gauge(
                "upkeep_forecast_seconds_until",
                "Time until the series (a host's used ratio) reaches 1 at its trend of the last day, in seconds; present only while the forecast is confident.",
                &[("series", series)],
                *eta,
            );
        }
    }
}

/// `probe` first, then the series' own labels sanitized and sorted; `skip`
/// is a label left out (a histogram's `le`).
fn series_labels(probe: &str, key: &SeriesKey, skip: Option<&str>) -> Labels {
    let mut labels: Labels = Vec::with_capacity(key.labels.len() + 1);
    labels.push(("probe".to_string(), probe.to_string()));
    for (k, v) in &key.labels {
        if skip == Some(k.as_str()) {
            continue;
        }
        let k = label_name(k);
        // Two names that sanitize alike would make a sample that does not
        // parse; the first (in name order) stays.
        if !labels.iter().any(|(n, _)| *n == k) {
            labels.push((k, v.clone()));
        }
    }
    labels[1..].sort();
    labels
}

/// A running total (`Unit::Total`): a counter, or a part of a histogram
/// when named `X_bucket` (with `le`), `X_sum` or `X_count`.
fn total_sample(f: &mut Families, kind: &str, key: &SeriesKey, value: f64) {
    let part = ["_bucket", "_sum", "_count"]
        .into_iter()
        .find_map(|suffix| Some((key.metric.strip_suffix(suffix)?, suffix)));
    let le = key.label("le");
    let histogram = match part {
        Some((base, "_bucket")) if le.is_some() => Some((base, "_bucket")),
        Some((base, suffix)) if suffix != "_bucket" => Some((base, suffix)),
        _ => None,
    };
    let Some((base, suffix)) = histogram else {
        let name = counter_name(kind, &key.metric);
        let help = || {
            probe_help(kind, &key.metric).map_or_else(
                || fallback_help(kind, &key.metric, "a running total"),
                str::to_string,
            )
        };
        let labels = series_labels(&key.probe, key, None);
        f.add(&name, Type::Counter, help, labels, value);
        return;
    };
    let (name, _) = exported_name(kind, base);
    let help = || {
        probe_help(kind, base)
            .map_or_else(|| fallback_help(kind, base, "a histogram"), str::to_string)
    };
    let labels = series_labels(&key.probe, key, Some("le"));
    let Some(h) = f.histogram(&name, help, labels) else {
        return;
    };
    match (suffix, le) {
        ("_bucket", Some(le)) => {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            if !bound.is_nan() {
                h.buckets.push((bound, le.to_string(), value));
            }
        }
        ("_sum", _) => h.sum = Some(value),
        _ => h.count = Some(value),
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
    f.counter(
        "upkeep_history_read_errors_total",
        "Failed read checks of the history file since the agent started.",
        s.read_errors,
    );
    f.gauge(
        "upkeep_history_ok",
        "Whether the history file can be written and read now (0: /-/ready says why).",
        &[],
        bool_value(s.fault_at(crate::sample::now_ms()).is_none()),
    );
    if let Some(ts) = s.last_error_ms {
        f.gauge(
            "upkeep_history_last_error_timestamp_seconds",
            "When the history file last failed, in unix seconds.",
            &[],
            seconds(ts),
        );
    }
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
