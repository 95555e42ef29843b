//! Probes: the `Probe` trait every kind implements, `build` (every
//! configured probe from a `ProbeSet`), and the assessment of readings into
//! a status with thresholds and flap damping. The registry of kinds
//! (`ProbeKind`, `ProbeConfig`) and the settings every kind shares are in
//! `config.rs`; the runner that drives a probe on its schedule lives in
//! `runner.rs`. Called by `App` and the maintenance runner (its guards).

pub mod access_log;
pub mod access_review;
pub mod compliance;
pub mod config;
pub mod host;
pub mod http;
pub mod postgres;
pub mod redis;
pub mod runner;
pub mod security_updates;
pub mod sshd_config;
pub mod tcp;
pub mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use crate::sample::{Reading, Status};

pub use config::{
    ConfiguredKind, KindFacts, ProbeCommon, ProbeConfig, ProbeKind, ProbeSet, Role, Threshold,
};

/// `dest` replaced whole, never half-written.
pub(crate) fn write_atomic(dest: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = dest.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dest)
}

/// Why one probe tick produced no readings. The text names the subject and
/// never contains a secret.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProbeError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
    /// The agent could not make the attempt: it is out of file descriptors.
    /// Says nothing about the target, so the tick is `unknown`, not
    /// `unhealthy`.
    #[error("agent out of file descriptors ({0})")]
    OutOfFds(String),
}

impl ProbeError {
    /// A failed I/O step named by `what`: the agent's own fault when the
    /// process or the host has no descriptor left (EMFILE, ENFILE), else a
    /// failure of the target.
    pub fn io(what: impl std::fmt::Display, e: &std::io::Error) -> ProbeError {
        ProbeError::caused_by(format!("{what}: {e}"), e)
    }

    /// A failure described by `message` whose cause is `cause`: the agent's
    /// own fault when anything in the cause's chain is out of descriptors
    /// (`out_of_fds`), else a failure of the target.
    pub fn caused_by(message: String, cause: &(dyn std::error::Error + 'static)) -> ProbeError {
        if out_of_fds(cause) {
            ProbeError::OutOfFds(message)
        } else {
            ProbeError::Failed(message)
        }
    }

    /// Whether the agent, not the target, failed the tick.
    pub fn is_agent_fault(&self) -> bool {
        matches!(self, ProbeError::OutOfFds(_))
    }
}

/// Whether `e`, or any error in its source chain, is the process or the
/// host having no descriptor left (EMFILE, ENFILE). Libraries nest the
/// `io::Error` differently: tokio-postgres and hyper give it as a source, an
/// `io::Error` of their own may wrap it (`get_ref`, which `source` skips),
/// and redis keeps it behind an `Arc`, whose `source` skips it too.
pub fn out_of_fds(e: &(dyn std::error::Error + 'static)) -> bool {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                return true;
            }
            if let Some(inner) = io.get_ref()
                && out_of_fds(inner)
            {
                return true;
            }
        }
        if let Some(inner) = e.downcast_ref::<Shared>()
            && out_of_fds(&**inner)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// What a probe judged of its last tick beyond its readings' thresholds:
/// kinds whose health is a set of named facts (a check failed, a change
/// nobody reviewed) say so here, and what changed becomes events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Findings {
    /// The tick's own status and why; the runner keeps the worse of this
    /// and the thresholds'. `Unknown` says the probe could not look.
    pub status: Option<(Status, String)>,
    /// One event per change seen on this tick, worded for people.
    pub events: Vec<String>,
}

/// A probe keeps state across ticks (`&mut self`): a long-lived handle, a
/// client, previous counters for rates. The runner owns name, interval,
/// timeout, thresholds and the clock.
pub trait Probe: Send + 'static {
    fn sample(&mut self) -> impl Future<Output = Result<Vec<Reading>, ProbeError>> + Send;

    /// Taken by the runner after each successful `sample`: most kinds have
    /// nothing to say beyond their readings.
    fn findings(&mut self) -> Findings {
        Findings::default()
    }
}

/// The object-safe form of `Probe`, so that probes of every kind can be held
/// and driven alike. Every `Probe` is one.
pub trait DynProbe: Send {
    fn sample_boxed(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Reading>, ProbeError>> + Send + '_>>;
    fn findings_boxed(&mut self) -> Findings;
}

impl<P: Probe> DynProbe for P {
    fn sample_boxed(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Reading>, ProbeError>> + Send + '_>> {
        Box::pin(self.sample())
    }

    fn findings_boxed(&mut self) -> Findings {
        self.findings()
    }
}

/// A probe of any kind, as built from config.
pub type AnyProbe = Box<dyn DynProbe>;

impl Probe for AnyProbe {
    fn sample(&mut self) -> impl Future<Output = Result<Vec<Reading>, ProbeError>> + Send {
        // The probe inside the box: a box of probes is itself a `DynProbe`
        // (through the blanket impl), so `self.sample_boxed()` would call
        // this very function and recurse until the stack overflows.
        (**self).sample_boxed()
    }

    fn findings(&mut self) -> Findings {
        (**self).findings_boxed()
    }
}

/// What building a probe may need besides its own config.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    /// The agent's data dir: probes that keep state across restarts (a log
    /// tail's offset) keep it here.
    pub data_dir: PathBuf,
    /// The agent's own password and token files (`compliance` checks
    /// their modes).
    pub secret_files: Vec<PathBuf>,
}

/// Everything the runner needs to drive one probe, apart from the probe.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub name: String,
    pub kind: &'static str,
    pub interval: Duration,
    pub timeout: Duration,
    pub thresholds: Vec<Threshold>,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

/// Builds every configured probe (`config` is a `ProbeSet`, or the agent's
/// `Config`). Building never connects to anything: a probe opens its
/// connections on its first tick.
pub fn build<'a>(
    config: impl Into<ProbeSet<'a>>,
    ctx: &BuildContext,
) -> Vec<(ProbeSpec, AnyProbe)> {
    let config: ProbeSet<'a> = config.into();
    let mut out = Vec::new();
    if config.host.enabled {
        let h = config.host;
        let interval = h.interval.unwrap_or(config.interval);
        let spec = ProbeSpec {
            name: "host".to_string(),
            kind: ProbeKind::Host.name(),
            interval,
            timeout: h.timeout.unwrap_or_else(|| default_timeout(interval)),
            thresholds: host::thresholds(h),
            failure_threshold: config.failure_threshold,
            success_threshold: config.success_threshold,
        };
        out.push((spec, Box::new(host::HostProbe::new(h)) as AnyProbe));
    }
    for (name, p) in config.probes {
        // The tick's timeout: a probe that bounds its own statements needs it.
        let common = p.common();
        let interval = common.interval.unwrap_or(config.interval);
        let timeout = common.timeout.unwrap_or_else(|| default_timeout(interval));
        let (probe, defaults) = p.build(name, timeout, ctx);
        let mut thresholds = defaults;
        for (metric, t) in common.thresholds {
            thresholds.retain(|d| &d.metric != metric);
            let mut t = t.clone();
            t.metric = metric.clone();
            thresholds.push(t);
        }
        let spec = ProbeSpec {
            name: name.clone(),
            kind: p.kind(),
            interval,
            timeout,
            thresholds,
            failure_threshold: common.failure_threshold.unwrap_or(config.failure_threshold),
            success_threshold: common.success_threshold.unwrap_or(config.success_threshold),
        };
        out.push((spec, probe));
    }
    out
}

/// Names of the probes a config defines, without building them.
pub fn names<'a>(config: impl Into<ProbeSet<'a>>) -> Vec<String> {
    let config: ProbeSet<'a> = config.into();
    let host = config.host.enabled.then(|| "host".to_string());
    host.into_iter()
        .chain(config.probes.keys().cloned())
        .collect()
}

/// Half the interval, at most 10 s: a probe must give up well before its next
/// tick is due.
pub fn default_timeout(interval: Duration) -> Duration {
    (interval / 2).min(Duration::from_secs(10))
}

/// A threshold (by index) and the labels of one reading it applies to.
type BreachKey = (usize, Vec<(String, String)>);

/// Evaluates thresholds on one tick's readings, remembering for how long each
/// threshold has been breached so that `sustained` can be honoured.
#[derive(Debug, Default)]
pub struct Assessor {
    /// Per threshold index and series labels: since when the reading has been
    /// at or beyond the degraded / unhealthy level.
    breached: std::collections::HashMap<BreachKey, (Option<i64>, Option<i64>)>,
}

impl Assessor {
    /// The instantaneous status of one tick and, when not healthy, why.
    pub fn assess(
        &mut self,
        thresholds: &[Threshold],
        readings: &[Reading],
        now: i64,
    ) -> (Status, Option<String>) {
        let mut worst = Status::Healthy;
        let mut reason = None;
        let mut seen = std::collections::HashSet::new();
        for (i, t) in thresholds.iter().enumerate() {
            for r in readings.iter().filter(|r| r.metric == t.metric) {
                let key = (i, r.labels.clone());
                seen.insert(key.clone());
                let entry = self.breached.entry(key).or_insert((None, None));
                let over = |level: f64| {
                    if t.below {
                        r.value <= level
                    } else {
                        r.value >= level
                    }
                };
                let sustained = crate::sample::ms(t.sustained);
                entry.0 = if over(t.degraded) {
                    entry.0.or(Some(now))
                } else {
                    None
                };
                entry.1 = if t.unhealthy.is_some_and(over) {
                    entry.1.or(Some(now))
                } else {
                    None
                };
                let held = |since: Option<i64>| since.is_some_and(|s| now - s >= sustained);
                let status = if held(entry.1) {
                    Status::Unhealthy
                } else if held(entry.0) {
                    Status::Degraded
                } else {
                    Status::Healthy
                };
                if status > worst {
                    worst = status;
                    let level = if status == Status::Unhealthy {
                        t.unhealthy.unwrap_or(t.degraded)
                    } else {
                        t.degraded
                    };
                    let label = if r.labels.is_empty() {
                        String::new()
                    } else {
                        let l: Vec<String> =
                            r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        format!("{{{}}}", l.join(","))
                    };
                    reason = Some(format!(
                        "{}{} is {} ({} {}{})",
                        r.metric,
                        label,
                        fmt_value(r.value),
                        if t.below {
                            "at or below"
                        } else {
                            "at or above"
                        },
                        fmt_value(level),
                        if t.sustained.is_zero() {
                            String::new()
                        } else {
                            format!(" for {}", humantime::format_duration(t.sustained))
                        }
                    ));
                }
            }
        }
        // A series that disappeared (a disk unmounted) forgets its breach.
        self.breached.retain(|k, _| seen.contains(k));
        (worst, reason)
    }
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// Flap damping: a status becomes the probe's status only after it has been
/// seen `failure_threshold` ticks in a row (for a worse status) or
/// `success_threshold` ticks in a row (for a better one).
#[derive(Debug, Clone)]
pub struct Damper {
    pub current: Status,
    candidate: Status,
    streak: u32,
}

impl Default for Damper {
    fn default() -> Self {
        Damper {
            current: Status::Unknown,
            candidate: Status::Unknown,
            streak: 0,
        }
    }
}

impl Damper {
    /// Feeds one tick's instantaneous status; returns the probe's status after it.
    pub fn step(&mut self, raw: Status, failure_threshold: u32, success_threshold: u32) -> Status {
        if self.current == Status::Unknown {
            // Nothing to protect yet: the first outcome of a run is believed.
            self.current = raw;
            self.streak = 0;
            return self.current;
        }
        if raw == self.current {
            self.streak = 0;
            return self.current;
        }
        if raw == self.candidate {
            self.streak += 1;
        } else {
            self.candidate = raw;
            self.streak = 1;
        }
        let needed = if raw > self.current {
            failure_threshold
        } else {
            success_threshold
        };
        if self.streak >= needed.max(1) {
            self.current = raw;
            self.streak = 0;
        }
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Unit;

    fn t(metric: &str, degraded: f64, unhealthy: f64, sustained: u64) -> Threshold {
        Threshold {
            metric: metric.into(),
            degraded,
            unhealthy: Some(unhealthy),
            sustained: Duration::from_secs(sustained),
            below: false,
        }
    }

    #[test]
    fn out_of_descriptors_is_the_agents_fault() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let e = ProbeError::io("connect to db:5432", &emfile);
        assert!(e.is_agent_fault(), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("agent out of file descriptors (connect to db:5432: ")
        );
        let enfile = std::io::Error::from_raw_os_error(libc::ENFILE);
        assert!(ProbeError::io("x", &enfile).is_agent_fault());
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert!(!ProbeError::io("x", &refused).is_agent_fault());
    }

    #[test]
    fn out_of_descriptors_is_found_however_deep() {
        #[derive(Debug, thiserror::Error)]
        #[error("connecting")]
        struct Outer(#[source] std::io::Error);
        let emfile = || std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(out_of_fds(&Outer(emfile())));
        let wrapped = std::io::Error::other(Outer(emfile()));
        assert!(out_of_fds(&wrapped));
        let shared: std::sync::Arc<dyn std::error::Error + Send + Sync> =
            std::sync::Arc::new(emfile());
        assert!(out_of_fds(&Outer(std::io::Error::other(shared))));
        assert!(!out_of_fds(&Outer(std::io::Error::from_raw_os_error(
            libc::ENOENT
        ))));
        let e = ProbeError::caused_by("postgres db:5432/app: connecting".into(), &Outer(emfile()));
        assert_eq!(
            e,
            ProbeError::OutOfFds("postgres db:5432/app: connecting".into())
        );
    }

    #[test]
    fn one_blip_does_not_flap() {
        let mut d = Damper::default();
        assert_eq!(d.step(Status::Healthy, 3, 2), Status::Healthy);
        assert_eq!(d.step(Status::Unhealthy, 3, 2), Status::Healthy);
        assert_eq!(d.step(Status::Healthy, 3, 2), Status::Healthy);
        assert_eq!(d.step(Status::Unhealthy, 3, 2), Status::Healthy);
        assert_eq!(d.step(Status::Unhealthy, 3, 2), Status::Healthy);
        assert_eq!(d.step(Status::Unhealthy, 3, 2), Status::Unhealthy);
        assert_eq!(d.step(Status::Healthy, 3, 2), Status::Unhealthy);
        assert_eq!(d.step(Status::Healthy, 3, 2), Status::Healthy);
    }

    #[test]
    fn sustained_threshold_waits() {
        let th = vec![t("cpu_used_ratio", 0.85, 0.95, 300)];
        let mut a = Assessor::default();
        let r = |v| vec![Reading::new("cpu_used_ratio", v, Unit::Ratio)];
        assert_eq!(a.assess(&th, &r(0.99), 0).0, Status::Healthy);
        assert_eq!(a.assess(&th, &r(0.99), 299_000).0, Status::Healthy);
        let (s, why) = a.assess(&th, &r(0.99), 300_000);
        assert_eq!(s, Status::Unhealthy);
        assert!(
            why.unwrap()
                .contains("cpu_used_ratio is 0.990 (at or above 0.950 for 5m)")
        );
        // Dropping below resets the clock.
        assert_eq!(a.assess(&th, &r(0.5), 301_000).0, Status::Healthy);
        assert_eq!(a.assess(&th, &r(0.99), 302_000).0, Status::Healthy);
    }

    #[test]
    fn worst_labelled_reading_wins() {
        let th = vec![t("disk_used_ratio", 0.8, 0.9, 0)];
        let mut a = Assessor::default();
        let rs = vec![
            Reading::new("disk_used_ratio", 0.5, Unit::Ratio).with_label("mount", "/"),
            Reading::new("disk_used_ratio", 0.85, Unit::Ratio).with_label("mount", "/var"),
        ];
        let (s, why) = a.assess(&th, &rs, 0);
        assert_eq!(s, Status::Degraded);
        assert!(
            why.unwrap()
                .starts_with("disk_used_ratio{mount=/var} is 0.850")
        );
    }

    #[tokio::test]
    async fn a_boxed_probe_samples_the_probe_inside() {
        struct One;
        impl Probe for One {
            async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
                Ok(vec![Reading::new("one", 1.0, Unit::Count)])
            }
        }
        let mut p: AnyProbe = Box::new(One);
        assert_eq!(p.sample().await.unwrap()[0].metric, "one");
    }

    #[test]
    fn below_thresholds_for_falling_metrics() {
        let th = vec![Threshold {
            metric: "free".into(),
            degraded: 10.0,
            unhealthy: Some(5.0),
            sustained: Duration::ZERO,
            below: true,
        }];
        let mut a = Assessor::default();
        assert_eq!(
            a.assess(&th, &[Reading::new("free", 4.0, Unit::Count)], 0)
                .0,
            Status::Unhealthy
        );
        assert_eq!(
            a.assess(&th, &[Reading::new("free", 50.0, Unit::Count)], 0)
                .0,
            Status::Healthy
        );
    }
}
