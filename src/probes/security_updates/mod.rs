//! `kind = "security_updates"`: pending package updates, those from a
//! security archive, how long the oldest has waited, and whether the host
//! waits for a reboot. Debian and Ubuntu: `apt-get --simulate
//! dist-upgrade` (`apt.rs`); Fedora and RHEL: `dnf check-update`, `dnf
//! updateinfo list --security` and `needs-restarting -r` (`dnf.rs`).
//!
//! Nothing is read but apt's and dpkg's files (locks, package lists,
//! `reboot-required`). `apt-get update` runs only with `refresh = true`.
//! The probe never waits on a lock: a held dpkg lock makes the tick
//! unhealthy ("apt is locked by pid N"), and every command is killed at
//! the tick's deadline.
//!
//! How long an update has been pending is the older of two lower bounds:
//! the date of the security list that offers it, and when this probe first
//! saw it (kept in `DATA_DIR/security_updates/NAME.json`, so a restart does
//! not reset the clock).

pub mod apt;
mod command;
pub mod dnf;
mod judge;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use self::command::{apt_output, failed, run};
pub use self::judge::judge;
use super::config::{ConfiguredKind, KindFacts, Threshold};
use super::{AnyProbe, BuildContext, Findings, Probe, ProbeError, write_atomic};
use crate::probe_config;
use crate::sample::{Reading, now_ms};

const DAY: u64 = 86_400;

fn week() -> Duration {
    Duration::from_secs(7 * DAY)
}
fn month() -> Duration {
    Duration::from_secs(30 * DAY)
}
fn day() -> Duration {
    Duration::from_secs(DAY)
}
fn slash() -> PathBuf {
    PathBuf::from("/")
}

probe_config! {
    /// `[probe.NAME] kind = "security_updates"`.
    pub struct SecurityUpdatesConfig {
        /// Run `apt-get update` before each check (default: use the lists
        /// as the host's own timers left them).
        #[serde(default)]
        pub refresh: bool,
        /// Degraded once a security update has waited this long.
        #[serde(default = "week", with = "humantime_serde")]
        pub security_grace: Duration,
        /// Unhealthy once a security update has waited this long.
        #[serde(default = "month", with = "humantime_serde")]
        pub security_max: Duration,
        /// Degraded once a required reboot has waited this long.
        #[serde(default = "day", with = "humantime_serde")]
        pub reboot_grace: Duration,
        /// The root the host's files are read under (a container's, or a
        /// test's); apt is pointed at it with `-o Dir=`.
        #[serde(default = "slash")]
        pub root: PathBuf,
    }
}

impl SecurityUpdatesConfig {
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.security_grace > self.security_max {
            out.push((
                "security_grace",
                format!(
                    "{} is longer than security_max {}",
                    span(self.security_grace),
                    span(self.security_max)
                ),
            ));
        }
        if !self.root.is_absolute() {
            out.push((
                "root",
                format!("`{}` is not an absolute path", self.root.display()),
            ));
        }
        out
    }
}

impl KindFacts for SecurityUpdatesConfig {
    const HEADLINE: &'static str = "security_updates_pending";
    /// The check's cost is apt's or dnf's: the tick's own duration stands in.
    const LATENCY: Option<&'static str> = None;
}

impl ConfiguredKind for SecurityUpdatesConfig {
    const DEFAULT_INTERVAL: Option<Duration> = Some(Duration::from_secs(3600));
    /// `apt-get update` over a slow mirror takes minutes.
    const DEFAULT_TIMEOUT: Option<Duration> = Some(Duration::from_secs(300));

    fn default_thresholds() -> Vec<Threshold> {
        Vec::new()
    }

    fn build(&self, name: &str, timeout: Duration, ctx: &BuildContext) -> AnyProbe {
        Box::new(SecurityUpdatesProbe::new(
            self,
            name,
            timeout,
            &ctx.data_dir,
        ))
    }
}

/// Which package manager the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tool {
    Apt(PathBuf),
    Dnf(PathBuf),
}

/// What one check found, before judging.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Check {
    pub updates: usize,
    /// Security updates by `package=version`, with the date (unix s) of
    /// the list or advisory offering each, where known.
    pub security: BTreeMap<String, Option<i64>>,
    pub reboot_required: bool,
    /// When the reboot became required (unix s), where known.
    pub reboot_since: Option<i64>,
}

pub struct SecurityUpdatesProbe {
    config: SecurityUpdatesConfig,
    /// Each command must end well inside the tick's timeout.
    deadline: Duration,
    state_file: PathBuf,
    /// `package=version` → first seen (unix ms); `None` until loaded.
    first_seen: Option<BTreeMap<String, i64>>,
    findings: Findings,
}

impl SecurityUpdatesProbe {
    pub fn new(
        config: &SecurityUpdatesConfig,
        name: &str,
        timeout: Duration,
        data_dir: &Path,
    ) -> SecurityUpdatesProbe {
        SecurityUpdatesProbe {
            config: config.clone(),
            deadline: timeout.mul_f64(0.9),
            state_file: data_dir
                .join("security_updates")
                .join(format!("{name}.json")),
            first_seen: None,
            findings: Findings::default(),
        }
    }

    fn tool(&self) -> Option<Tool> {
        let root = &self.config.root;
        let find = |name: &str| {
            ["usr/bin", "bin", "usr/sbin"]
                .iter()
                .map(|d| root.join(d).join(name))
                .find(|p| p.is_file())
        };
        // A host that has both is a Debian host with dnf installed: apt rules.
        if let Some(p) = find("apt-get") {
            return Some(Tool::Apt(p));
        }
        find("dnf").map(Tool::Dnf)
    }

    async fn check_apt(&self, apt_get: &Path) -> Result<Check, ProbeError> {
        let root = &self.config.root;
        let mut locks = vec!["var/lib/dpkg/lock-frontend", "var/lib/dpkg/lock"];
        if self.config.refresh {
            locks.push("var/lib/apt/lists/lock");
        }
        for l in locks {
            if let Some(pid) = apt::holder(&root.join(l)) {
                return Err(ProbeError::Failed(format!("apt is locked by pid {pid}")));
            }
        }
        let mut base: Vec<OsString> = Vec::new();
        if root != Path::new("/") {
            // With the trailing slash apt joins its relative paths
            // (var/lib/apt/...) onto the root as a directory.
            let mut dir = OsString::from("Dir=");
            dir.push(root.as_os_str());
            dir.push("/");
            base.extend(["-o".into(), dir]);
        }
        if self.config.refresh {
            let mut args = base.clone();
            args.extend(["-q".into(), "update".into()]);
            apt_output(run(apt_get, &args, self.deadline).await?, "apt-get update")?;
        }
        let mut args = base;
        args.extend(["--simulate".into(), "dist-upgrade".into()]);
        let out = apt_output(
            run(apt_get, &args, self.deadline).await?,
            "apt-get --simulate dist-upgrade",
        )?;
        let pending = apt::parse_simulate(&String::from_utf8_lossy(&out.stdout));
        let releases = apt::releases(root);
        let (reboot_required, reboot_since) = reboot_file(root);
        Ok(Check {
            updates: pending.len(),
            security: pending
                .iter()
                .filter(|p| p.is_security())
                .map(|p| {
                    (
                        format!("{}={}", p.package, p.version),
                        apt::list_date(p, &releases),
                    )
                })
                .collect(),
            reboot_required,
            reboot_since,
        })
    }

    async fn check_dnf(&self, dnf_bin: &Path) -> Result<Check, ProbeError> {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let updates = run(dnf_bin, &args(&["-q", "check-update"]), self.deadline).await?;
        if !matches!(updates.status.code(), Some(0 | 100)) {
            return Err(failed("dnf check-update", &updates));
        }
        let security = run(
            dnf_bin,
            &args(&["-q", "updateinfo", "list", "--security"]),
            self.deadline,
        )
        .await?;
        if !security.status.success() {
            return Err(failed("dnf updateinfo list --security", &security));
        }
        let names = dnf::parse_check_update(&String::from_utf8_lossy(&updates.stdout));
        let advisories = dnf::parse_updateinfo(&String::from_utf8_lossy(&security.stdout));
        let restarting = self.config.root.join("usr/bin/needs-restarting");
        let reboot = if restarting.is_file() {
            let r = run(&restarting, &args(&["-r"]), self.deadline).await?;
            dnf::reboot_needed(r.status.code()).unwrap_or(false)
        } else {
            false
        };
        Ok(Check {
            updates: names.len(),
            security: advisories,
            reboot_required: reboot,
            reboot_since: None,
        })
    }

    /// The first-seen times, read once from the state file.
    fn first_seen(&mut self) -> &mut BTreeMap<String, i64> {
        let file = &self.state_file;
        self.first_seen.get_or_insert_with(|| {
            std::fs::read(file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        })
    }

    /// Records first-seen times and returns the events of what changed:
    /// security updates newly pending, and those no longer pending
    /// (installed, or withdrawn). The very first check (no state file yet)
    /// is a baseline and says nothing.
    fn remember(&mut self, check: &Check, now: i64) -> Vec<String> {
        let baseline = self.first_seen.is_none() && !self.state_file.exists();
        let seen = self.first_seen();
        let before = seen.clone();
        seen.retain(|k, _| check.security.contains_key(k));
        for k in check.security.keys() {
            seen.entry(k.clone()).or_insert(now);
        }
        if *seen == before {
            return Vec::new();
        }
        let seen = seen.clone();
        let text = serde_json::to_vec(&seen).expect("a map of numbers serializes");
        if let Err(e) = write_atomic(&self.state_file, &text) {
            tracing::warn!(
                "security updates: keeping first-seen times in {}: {e}",
                self.state_file.display()
            );
        }
        if baseline {
            return Vec::new();
        }
        let names = |keys: Vec<&String>| -> (usize, String) {
            let n = keys.len();
            let mut s = keys
                .iter()
                .take(5)
                .map(|k| k.replacen('=', " ", 1))
                .collect::<Vec<_>>()
                .join(", ");
            if n > 5 {
                s.push_str(&format!(" and {} more", n - 5));
            }
            (n, s)
        };
        let mut events = Vec::new();
        let new: Vec<&String> = seen.keys().filter(|k| !before.contains_key(*k)).collect();
        if !new.is_empty() {
            let (n, list) = names(new);
            events.push(format!(
                "{n} security update{} newly pending: {list}",
                if n == 1 { "" } else { "s" }
            ));
        }
        let gone: Vec<&String> = before.keys().filter(|k| !seen.contains_key(*k)).collect();
        if !gone.is_empty() {
            let (n, list) = names(gone);
            events.push(format!(
                "{n} security update{} no longer pending (installed or withdrawn): {list}",
                if n == 1 { "" } else { "s" }
            ));
        }
        events
    }
}

/// Whether `reboot-required` exists under `root`, and since when.
fn reboot_file(root: &Path) -> (bool, Option<i64>) {
    for p in ["run/reboot-required", "var/run/reboot-required"] {
        if let Ok(m) = std::fs::symlink_metadata(root.join(p)) {
            let since = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
            return (true, since);
        }
    }
    (false, None)
}

/// A configured span as it was likely written: `40d` rather than
/// humantime's months.
fn span(d: Duration) -> String {
    if d.as_secs().is_multiple_of(DAY) && !d.is_zero() {
        format!("{}d", d.as_secs() / DAY)
    } else {
        humantime::format_duration(d).to_string()
    }
}

impl Probe for SecurityUpdatesProbe {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        self.findings = Findings::default();
        let check = match self.tool() {
            Some(Tool::Apt(p)) => self.check_apt(&p).await?,
            Some(Tool::Dnf(p)) => self.check_dnf(&p).await?,
            None => return Err(ProbeError::Failed("no apt-get or dnf found".into())),
        };
        let now = now_ms();
        let events = self.remember(&check, now);
        let first_seen = self.first_seen().clone();
        let (readings, verdict) = judge(&check, &first_seen, &self.config, now);
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

    pub fn config(root: &Path) -> SecurityUpdatesConfig {
        toml::from_str(&format!("root = {:?}", root.display().to_string())).unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let c = config(Path::new("/"));
        assert!(!c.refresh);
        assert_eq!(c.security_grace, week());
        assert_eq!(c.security_max, month());
        assert!(c.validate().is_empty());
        let bad: SecurityUpdatesConfig =
            toml::from_str("security_grace = \"40d\"\nroot = \"rel\"").unwrap();
        let fields: Vec<&str> = bad.validate().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, vec!["security_grace", "root"]);
    }

    #[test]
    fn new_and_gone_security_updates_are_events_after_the_baseline() {
        let data = tempfile::tempdir().unwrap();
        let c = config(Path::new("/"));
        let mut p = SecurityUpdatesProbe::new(&c, "u", Duration::from_secs(10), data.path());
        let check = |keys: &[&str]| Check {
            security: keys.iter().map(|k| (k.to_string(), None)).collect(),
            ..Check::default()
        };
        assert!(
            p.remember(&check(&["openssl=3.0.15"]), 1).is_empty(),
            "the baseline"
        );
        assert_eq!(
            p.remember(&check(&["openssl=3.0.15", "libc6=2.36"]), 2),
            vec!["1 security update newly pending: libc6 2.36"]
        );
        assert!(
            p.remember(&check(&["openssl=3.0.15", "libc6=2.36"]), 3)
                .is_empty()
        );
        // A restart reads the state: nothing is new again.
        let mut p = SecurityUpdatesProbe::new(&c, "u", Duration::from_secs(10), data.path());
        assert_eq!(
            p.remember(&check(&[]), 4),
            vec![
                "2 security updates no longer pending (installed or withdrawn): libc6 2.36, openssl 3.0.15"
            ]
        );
    }
}
