//! The guard: the probes a task names (or its own probe), ticked by the
//! runner itself before and between batches, in the agent and the CLI
//! alike. Healthy goes on, degraded pauses and re-checks, unhealthy aborts.
//! Before a run the guard measures each probe's pacing signal three times
//! (the reading its kind names in `KindFacts::PACING`, else its latency
//! reading, else how long the check took); the median is the baseline
//! that pacing compares against. Each check also counts the backends the
//! probes saw waiting (`backends_waiting`, by wait event type), which the
//! runner adds up per batch for the ledger.

use std::collections::BTreeMap;

use std::path::Path;
use std::time::{Duration, Instant};

use super::pacing::Signal;
use crate::config::Config;
use crate::probes::{self, AnyProbe, Assessor, BuildContext, Probe, ProbeKind, ProbeSpec};
use crate::sample::{Reading, Status, now_ms};

/// Checks before a run that make the latency baseline.
const BASELINE_CHECKS: usize = 3;

/// The probes guarding a task.
pub(super) struct Guard {
    probes: Vec<(ProbeSpec, AnyProbe, Assessor)>,
    /// Median signal before the run, per probe.
    baseline: Vec<Duration>,
}

/// What one check of every guarded probe found.
pub(super) enum GuardState {
    /// `signal`: the probe furthest above its baseline (none: no probe
    /// guards the task).
    Healthy {
        signal: Option<Signal>,
    },
    Degraded(String),
    Unhealthy(String),
}

/// Backends seen waiting, by wait event type (`Lock`, `LWLock`, `IO`...),
/// summed over checks.
pub(super) type Waits = BTreeMap<String, u64>;

/// The reading pacing reads from one check: the kind's first `PACING`
/// metric present, else its latency metric, else the check's duration.
fn signal_of(kind: &str, readings: &[Reading], took: Duration) -> (String, Duration) {
    let kind = ProbeKind::from_name(kind);
    let wanted = kind
        .map(|k| k.pacing_metrics().iter().copied().chain(k.latency_metric()))
        .into_iter()
        .flatten();
    for metric in wanted {
        if let Some(r) = readings
            .iter()
            .find(|r| r.metric == metric && r.labels.is_empty() && r.value.is_finite())
        {
            return (
                metric.to_string(),
                Duration::from_secs_f64(r.value.max(0.0)),
            );
        }
    }
    ("check".to_string(), took)
}

/// Adds the `backends_waiting` readings of one check to `waits`.
fn add_waits(waits: &mut Waits, readings: &[Reading]) {
    for r in readings.iter().filter(|r| r.metric == "backends_waiting") {
        if let Some((_, t)) = r.labels.iter().find(|(k, _)| k == "wait") {
            *waits.entry(t.clone()).or_default() += r.value.max(0.0) as u64;
        }
    }
}

impl Guard {
    /// The guard of the probes `names`; none: a guard that is always healthy.
    pub(super) fn build(config: &Config, data_dir: &Path, names: &[String]) -> Guard {
        let ctx = BuildContext {
            data_dir: data_dir.to_path_buf(),
            secret_files: config.secret_files(),
        };
        let probes = probes::build(config, &ctx)
            .into_iter()
            .filter(|(s, _)| names.contains(&s.name))
            .map(|(s, p)| (s, p, Assessor::default()))
            .collect();
        Guard {
            probes,
            baseline: Vec::new(),
        }
    }

    /// The gate's checks: every guarded probe healthy [`BASELINE_CHECKS`]
    /// times in a row, which also sets the latency baseline. `Err` says
    /// which probe was not healthy.
    pub(super) async fn open(&mut self) -> Result<(), String> {
        let mut base: Vec<Vec<Duration>> = vec![Vec::new(); self.probes.len()];
        for _ in 0..BASELINE_CHECKS {
            let mut waits = Waits::new();
            match self.check(&mut waits).await {
                (GuardState::Healthy { .. }, signals) => {
                    for (b, t) in base.iter_mut().zip(signals) {
                        b.push(t);
                    }
                }
                (GuardState::Degraded(why) | GuardState::Unhealthy(why), _) => return Err(why),
            }
        }
        self.baseline = base
            .into_iter()
            .map(|mut v| {
                v.sort();
                v.get(v.len() / 2).copied().unwrap_or_default()
            })
            .collect();
        Ok(())
    }

    /// One tick of every guarded probe: the worst status, and the signal
    /// of the probe furthest above its baseline; the backends they saw
    /// waiting are added to `waits`. Also returns each probe's signal.
    pub(super) async fn check(&mut self, waits: &mut Waits) -> (GuardState, Vec<Duration>) {
        let mut worst = GuardState::Healthy { signal: None };
        let mut signals = Vec::new();
        for (i, (spec, probe, assessor)) in self.probes.iter_mut().enumerate() {
            let started = Instant::now();
            let result = tokio::time::timeout(spec.timeout, probe.sample()).await;
            let took = started.elapsed();
            let (status, reason, (metric, t)) = match result {
                Err(_) => (
                    Status::Unhealthy,
                    Some(format!("timed out after {:?}", spec.timeout)),
                    ("check".to_string(), took),
                ),
                Ok(Err(e)) => (
                    Status::Unhealthy,
                    Some(e.to_string()),
                    ("check".to_string(), took),
                ),
                Ok(Ok(readings)) => {
                    add_waits(waits, &readings);
                    let (status, reason) = assessor.assess(&spec.thresholds, &readings, now_ms());
                    (status, reason, signal_of(spec.kind, &readings, took))
                }
            };
            signals.push(t);
            let why = || format!("{}: {}", spec.name, reason.clone().unwrap_or_default());
            worst = match (status, worst) {
                (Status::Unhealthy, GuardState::Unhealthy(w)) => GuardState::Unhealthy(w),
                (Status::Unhealthy, _) => GuardState::Unhealthy(why()),
                (_, GuardState::Unhealthy(w)) => GuardState::Unhealthy(w),
                (Status::Degraded, GuardState::Degraded(w)) => GuardState::Degraded(w),
                (Status::Degraded, _) => GuardState::Degraded(why()),
                (_, GuardState::Degraded(w)) => GuardState::Degraded(w),
                (_, GuardState::Healthy { signal }) => {
                    let this = Signal {
                        probe: spec.name.clone(),
                        metric,
                        value: t,
                        baseline: self.baseline.get(i).copied().unwrap_or(t),
                    };
                    let signal = match signal {
                        Some(s) if s.ratio() >= this.ratio() => Some(s),
                        _ => Some(this),
                    };
                    GuardState::Healthy { signal }
                }
            };
        }
        (worst, signals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Unit;

    fn secs(m: &str, v: f64) -> Reading {
        Reading::new(m, v, Unit::Seconds)
    }

    #[test]
    fn the_signal_is_the_kind_s_pacing_reading_else_its_latency_else_the_check() {
        let took = Duration::from_millis(7);
        let pg = [secs("query_seconds", 0.001), secs("commit_seconds", 0.004)];
        assert_eq!(
            signal_of("postgres", &pg, took),
            ("commit_seconds".into(), Duration::from_millis(4))
        );
        assert_eq!(
            signal_of("postgres", &pg[..1], took),
            ("query_seconds".into(), Duration::from_millis(1))
        );
        let log = [
            secs("latency_p50_seconds", 0.01),
            secs("latency_p99_seconds", 0.2),
        ];
        assert_eq!(
            signal_of("access_log", &log, took),
            ("latency_p99_seconds".into(), Duration::from_millis(200))
        );
        let http = [secs("response_seconds", 0.03)];
        assert_eq!(
            signal_of("http", &http, took),
            ("response_seconds".into(), Duration::from_millis(30))
        );
        assert_eq!(signal_of("host", &[], took), ("check".into(), took));
        // A labelled reading of the same name is not the signal.
        let labelled = [secs("commit_seconds", 0.5).with_label("db", "x")];
        assert_eq!(
            signal_of("postgres", &labelled, took),
            ("check".into(), took)
        );
    }

    #[test]
    fn waits_add_up_by_wait_event_type() {
        let mut w = Waits::new();
        let tick = |lock: f64, io: f64| {
            vec![
                Reading::new("backends_waiting", lock, Unit::Count).with_label("wait", "Lock"),
                Reading::new("backends_waiting", io, Unit::Count).with_label("wait", "IO"),
                Reading::new("connections", 9.0, Unit::Count).with_label("state", "active"),
            ]
        };
        add_waits(&mut w, &tick(2.0, 0.0));
        add_waits(&mut w, &tick(1.0, 3.0));
        assert_eq!(
            w.into_iter().collect::<Vec<_>>(),
            [("IO".to_string(), 3), ("Lock".to_string(), 3)]
        );
    }
}
