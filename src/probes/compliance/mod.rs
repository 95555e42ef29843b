//! `kind = "compliance"`: a small, named security baseline (`checks.rs`).
//! Each check passes, fails or is unknown, always with its reason. A
//! failed check listed in `unhealthy_on` makes the probe unhealthy, any
//! other failure degraded; an unknown check changes nothing but is named
//! in the reason. Every change of a check's result is an event.

pub mod checks;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::config::{ConfiguredKind, KindFacts, Threshold};
use super::{AnyProbe, BuildContext, Findings, Probe, ProbeError};
use crate::probe_config;
use crate::sample::{Reading, Status, Unit};
pub use checks::{CHECKS, Verdict};

fn slash() -> PathBuf {
    PathBuf::from("/")
}
fn default_paths() -> Vec<PathBuf> {
    [
        "/etc",
        "/usr/local/bin",
        "/usr/local/sbin",
        "/usr/bin",
        "/usr/sbin",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}
fn all_checks() -> Vec<String> {
    CHECKS.iter().map(|c| c.id.to_string()).collect()
}
fn default_max_files() -> u64 {
    200_000
}

probe_config! {
    /// `[probe.NAME] kind = "compliance"`.
    pub struct ComplianceConfig {
        /// The checks to run, by id; default: all.
        #[serde(default = "all_checks")]
        pub checks: Vec<String>,
        /// Check ids whose failure is unhealthy; other failures are degraded.
        #[serde(default)]
        pub unhealthy_on: Vec<String>,
        /// Where `world-writable` looks (recursively, links not followed).
        #[serde(default = "default_paths")]
        pub world_writable_paths: Vec<PathBuf>,
        /// Entries `world-writable` visits at most; past it the check is unknown.
        #[serde(default = "default_max_files")]
        pub max_files: u64,
        /// The root the host's files are read under (a container's, or a test's).
        #[serde(default = "slash")]
        pub root: PathBuf,
    }
}

impl ComplianceConfig {
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let known = |id: &String| CHECKS.iter().any(|c| c.id == id);
        let ids: Vec<&str> = CHECKS.iter().map(|c| c.id).collect();
        for id in self.checks.iter().filter(|id| !known(id)) {
            out.push((
                "checks",
                format!("no check named `{id}` (known: {})", ids.join(", ")),
            ));
        }
        for id in self.unhealthy_on.iter().filter(|id| !known(id)) {
            out.push((
                "unhealthy_on",
                format!("no check named `{id}` (known: {})", ids.join(", ")),
            ));
        }
        if self.checks.is_empty() {
            out.push((
                "checks",
                "an empty list runs nothing: leave it out to run all".into(),
            ));
        }
        if !self.root.is_absolute() {
            out.push((
                "root",
                format!("`{}` is not an absolute path", self.root.display()),
            ));
        }
        if self.max_files == 0 {
            out.push(("max_files", "must be at least 1".into()));
        }
        out
    }

    /// The selected check ids, in the baseline's order.
    pub fn selected(&self) -> Vec<&'static str> {
        CHECKS
            .iter()
            .map(|c| c.id)
            .filter(|id| self.checks.iter().any(|x| x == id))
            .collect()
    }
}

impl KindFacts for ComplianceConfig {
    const HEADLINE: &'static str = "checks_failed";
    const LATENCY: Option<&'static str> = None;
}

impl ConfiguredKind for ComplianceConfig {
    const DEFAULT_INTERVAL: Option<Duration> = Some(Duration::from_secs(600));
    /// Walking /usr/bin on a slow disk takes a while.
    const DEFAULT_TIMEOUT: Option<Duration> = Some(Duration::from_secs(60));

    fn default_thresholds() -> Vec<Threshold> {
        Vec::new()
    }

    fn build(&self, _name: &str, _timeout: Duration, ctx: &BuildContext) -> AnyProbe {
        Box::new(ComplianceProbe {
            config: self.clone(),
            secret_files: ctx.secret_files.clone(),
            last: BTreeMap::new(),
            findings: Findings::default(),
        })
    }
}

pub struct ComplianceProbe {
    config: ComplianceConfig,
    secret_files: Vec<PathBuf>,
    /// Each check's last result, to report changes.
    last: BTreeMap<&'static str, Verdict>,
    findings: Findings,
}

/// Runs the selected checks.
pub fn run_all(
    config: &ComplianceConfig,
    secret_files: &[PathBuf],
) -> Vec<(&'static str, Verdict)> {
    let inputs = checks::Inputs {
        root: &config.root,
        world_writable_paths: &config.world_writable_paths,
        max_files: config.max_files,
        secret_files,
    };
    config
        .selected()
        .into_iter()
        .map(|id| (id, checks::run(id, &inputs)))
        .collect()
}

/// The status, reason and change events of one round of results.
pub fn judge(
    config: &ComplianceConfig,
    results: &[(&'static str, Verdict)],
    last: &BTreeMap<&'static str, Verdict>,
) -> (Option<(Status, String)>, Vec<String>) {
    let mut status = Status::Healthy;
    let mut failed = Vec::new();
    let mut unknown = Vec::new();
    let mut events = Vec::new();
    for (id, v) in results {
        match v {
            Verdict::Fail(why) => {
                let s = if config.unhealthy_on.iter().any(|u| u == id) {
                    Status::Unhealthy
                } else {
                    Status::Degraded
                };
                status = status.max(s);
                failed.push(format!("{id} failed: {why}"));
            }
            Verdict::Unknown(why) => unknown.push(format!("{id} unknown: {why}")),
            Verdict::Pass(_) => {}
        }
        let changed = match last.get(id) {
            None => !matches!(v, Verdict::Pass(_)),
            Some(old) => std::mem::discriminant(old) != std::mem::discriminant(v),
        };
        if changed {
            events.push(format!(
                "compliance check `{id}` {}: {}",
                v.word(),
                v.reason()
            ));
        }
    }
    let mut reason = failed;
    reason.extend(unknown);
    let verdict = (status != Status::Healthy).then(|| (status, reason.join("; ")));
    (verdict, events)
}

impl Probe for ComplianceProbe {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        self.findings = Findings::default();
        let config = self.config.clone();
        let secrets = self.secret_files.clone();
        let results = tokio::task::spawn_blocking(move || run_all(&config, &secrets))
            .await
            .map_err(|e| ProbeError::Failed(format!("compliance checks failed: {e}")))?;
        let (verdict, events) = judge(&self.config, &results, &self.last);
        let count = |f: fn(&Verdict) -> bool| results.iter().filter(|(_, v)| f(v)).count() as f64;
        let readings = vec![
            Reading::new(
                "checks_failed",
                count(|v| matches!(v, Verdict::Fail(_))),
                Unit::Count,
            ),
            Reading::new(
                "checks_unknown",
                count(|v| matches!(v, Verdict::Unknown(_))),
                Unit::Count,
            ),
            Reading::new(
                "checks_passed",
                count(|v| matches!(v, Verdict::Pass(_))),
                Unit::Count,
            ),
        ];
        self.last = results.into_iter().collect();
        self.findings = Findings {
            status: verdict,
            events,
        };
        Ok(readings)
    }

    fn findings(&mut self) -> Findings {
        std::mem::take(&mut self.findings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_and_validation() {
        let c: ComplianceConfig =
            toml::from_str("checks = [\"firewall\", \"time-sync\"]\nunhealthy_on = [\"firewall\"]")
                .unwrap();
        assert!(c.validate().is_empty());
        assert_eq!(c.selected(), vec!["firewall", "time-sync"]);
        let all: ComplianceConfig = toml::from_str("").unwrap();
        assert_eq!(all.selected().len(), 7);
        let bad: ComplianceConfig =
            toml::from_str("checks = [\"nope\"]\nunhealthy_on = [\"ssh\"]").unwrap();
        let fields: Vec<&str> = bad.validate().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, vec!["checks", "unhealthy_on"]);
    }

    #[test]
    fn unhealthy_on_and_change_events() {
        let c: ComplianceConfig = toml::from_str("unhealthy_on = [\"firewall\"]").unwrap();
        let r = vec![
            ("time-sync", Verdict::Fail("none running".into())),
            ("ssh-root-login", Verdict::Unknown("no sshd".into())),
        ];
        let (v, ev) = judge(&c, &r, &BTreeMap::new());
        assert_eq!(
            v,
            Some((
                Status::Degraded,
                "time-sync failed: none running; ssh-root-login unknown: no sshd".into()
            ))
        );
        assert_eq!(ev.len(), 2);
        let last: BTreeMap<_, _> = r.iter().cloned().collect();
        let r2 = vec![
            ("time-sync", Verdict::Fail("none running".into())),
            ("firewall", Verdict::Fail("no rules".into())),
        ];
        let (v, ev) = judge(&c, &r2, &last);
        assert_eq!(v.unwrap().0, Status::Unhealthy);
        assert_eq!(ev, vec!["compliance check `firewall` fails: no rules"]);
    }
}
