//! The guard: the probes a task names (or its own probe), ticked by the
//! runner itself before and between batches, in the agent and the CLI
//! alike. Healthy goes on, degraded pauses and re-checks, unhealthy aborts.
//! Before a run the guard measures each probe's answer time three times;
//! the median is the baseline that pacing compares against.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::probes::{self, AnyProbe, Assessor, BuildContext, Probe, ProbeSpec};
use crate::sample::{Status, now_ms};

/// Checks before a run that make the latency baseline.
const BASELINE_CHECKS: usize = 3;

/// The probes guarding a task.
pub(super) struct Guard {
    probes: Vec<(ProbeSpec, AnyProbe, Assessor)>,
    /// Median tick time before the run, per probe.
    baseline: Vec<Duration>,
}

/// What one check of every guarded probe found.
pub(super) enum GuardState {
    /// `slowest_ratio`: the slowest probe's answer time over its baseline.
    Healthy {
        slowest_ratio: f64,
    },
    Degraded(String),
    Unhealthy(String),
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
            match self.check().await {
                (GuardState::Healthy { .. }, took) => {
                    for (b, t) in base.iter_mut().zip(took) {
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

    /// One tick of every guarded probe: the worst status, and how much
    /// slower than its baseline the slowest one answered.
    pub(super) async fn check(&mut self) -> (GuardState, Vec<Duration>) {
        let mut worst = GuardState::Healthy { slowest_ratio: 0.0 };
        let mut took = Vec::new();
        for (i, (spec, probe, assessor)) in self.probes.iter_mut().enumerate() {
            let started = Instant::now();
            let result = tokio::time::timeout(spec.timeout, probe.sample()).await;
            let t = started.elapsed();
            took.push(t);
            let (status, reason) = match result {
                Err(_) => (
                    Status::Unhealthy,
                    Some(format!("timed out after {:?}", spec.timeout)),
                ),
                Ok(Err(e)) => (Status::Unhealthy, Some(e.to_string())),
                Ok(Ok(readings)) => assessor.assess(&spec.thresholds, &readings, now_ms()),
            };
            let why = || format!("{}: {}", spec.name, reason.clone().unwrap_or_default());
            worst = match (status, worst) {
                (Status::Unhealthy, GuardState::Unhealthy(w)) => GuardState::Unhealthy(w),
                (Status::Unhealthy, _) => GuardState::Unhealthy(why()),
                (_, GuardState::Unhealthy(w)) => GuardState::Unhealthy(w),
                (Status::Degraded, GuardState::Degraded(w)) => GuardState::Degraded(w),
                (Status::Degraded, _) => GuardState::Degraded(why()),
                (_, GuardState::Degraded(w)) => GuardState::Degraded(w),
                (_, GuardState::Healthy { slowest_ratio }) => {
                    let base = self.baseline.get(i).copied().unwrap_or(t);
                    let ratio = t.as_secs_f64() / (base.as_secs_f64() + 0.002);
                    GuardState::Healthy {
                        slowest_ratio: slowest_ratio.max(ratio),
                    }
                }
            };
        }
        (worst, took)
    }
}
