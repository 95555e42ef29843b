//! The typed TOML schema of `agent.toml`, its defaults, and `validate()`,
//! which collects every problem at once. Nothing here opens a connection or
//! touches the history file; `App::start` builds the running agent from a
//! validated `Config`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

// Each seam keeps its config types in its own folder; these names are the
// ones the rest of the crate (and the tests) have always used.
pub use crate::probes::config::{ProbeCommon, ProbeConfig, ProbeSet, Threshold};
pub use crate::probes::host::{HostConfig, Levels};

/// A parsed and validated configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub history: HistoryConfig,
    #[serde(default)]
    pub host: HostConfig,
    /// `[probe.NAME]` tables: keyed, so names are unique by construction.
    #[serde(default)]
    pub probe: BTreeMap<String, ProbeConfig>,
    /// `[maintenance]`: the backup budget, and `[maintenance.NAME]` tables,
    /// the maintenance tasks.
    #[serde(default)]
    pub maintenance: crate::maintenance::config::MaintenanceSection,
}

impl<'a> From<&'a Config> for ProbeSet<'a> {
    fn from(c: &'a Config) -> ProbeSet<'a> {
        ProbeSet {
            host: &c.host,
            probes: &c.probe,
            interval: c.agent.interval,
            failure_threshold: c.agent.failure_threshold,
            success_threshold: c.agent.success_threshold,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Default probe interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Where the history file lives; resolved at start when unset.
    pub data_dir: Option<PathBuf>,
    /// Name of this host in API output; the system host name when unset.
    pub hostname: Option<String>,
    /// Ticks in a row before a worse status is believed.
    pub failure_threshold: u32,
    /// Ticks in a row before a better status is believed.
    pub success_threshold: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            interval: Duration::from_secs(10),
            data_dir: None,
            hostname: None,
            failure_threshold: 3,
            success_threshold: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub enabled: bool,
    /// Address the API binds to; loopback by default.
    pub listen: String,
    /// File holding the bearer token of the mutating routes (first line,
    /// mode 0640 or stricter). Unset: those routes are disabled. Required
    /// when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
    /// Host names, besides localhost, 127.0.0.1, [::1] and the listen
    /// address, that requests may name in their Host header (a guard
    /// against DNS rebinding).
    pub allowed_hosts: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: "127.0.0.1:8711".to_string(),
            token_file: None,
            allowed_hosts: Vec::new(),
        }
    }
}

/// One RRD tier: buckets of `step`, kept for `span`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    #[serde(with = "humantime_serde")]
    pub step: Duration,
    #[serde(with = "humantime_serde")]
    pub span: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Finest first. Each step divides the next; each span holds at least two
    /// steps of the next tier (the next tier is rebuilt from it after a crash).
    pub tiers: Vec<TierConfig>,
    /// Series beyond this many are not stored (counted and logged once).
    pub max_series: u32,
    /// Status-transition events kept, newest first.
    pub max_events: u32,
    /// Agent runs remembered (each start of the agent is one).
    pub max_runs: u32,
    /// Shortest probe interval the size bound assumes; shorter intervals are
    /// rejected by validation.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        let t = |step: u64, span: u64| TierConfig {
            step: Duration::from_secs(step),
            span: Duration::from_secs(span),
        };
        const DAY: u64 = 86_400;
        HistoryConfig {
            tiers: vec![
                t(10, DAY),
                t(60, 7 * DAY),
                t(3600, 400 * DAY),
                t(DAY, 3650 * DAY),
            ],
            max_series: 500,
            max_events: 100_000,
            max_runs: 10_000,
            min_interval: Duration::from_secs(1),
        }
    }
}

/// One problem found in a config file, with where it is when known.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    pub file: String,
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.col) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.file, l, c, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem of a config file; the whole file is rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            issues: vec![ConfigIssue {
                file: file.clone(),
                line: None,
                col: None,
                message: format!("cannot read config file: {e}"),
            }],
        })?;
        Config::parse(&file, &text)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|s| line_col(text, s.start))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            ConfigError {
                issues: vec![ConfigIssue {
                    file: file.to_string(),
                    line,
                    col,
                    message: e.message().trim().to_string(),
                }],
            }
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        let doc = toml::de::DeTable::parse(text).ok();
        let mut issues: Vec<ConfigIssue> = problems
            .into_iter()
            .map(|(path, message)| {
                let pos = doc
                    .as_ref()
                    .and_then(|d| span_of(d.get_ref(), &path))
                    .map(|start| line_col(text, start));
                ConfigIssue {
                    file: file.to_string(),
                    line: pos.map(|p| p.0),
                    col: pos.map(|p| p.1),
                    message: format!("{}: {}", path.join("."), message),
                }
            })
            .collect();
        issues.sort_by_key(|i| (i.line, i.col));
        Err(ConfigError { issues })
    }

    /// Every problem of the config, each with the key path it is about.
    /// Offline: never touches the network or the history file.
    pub fn validate(&self) -> Vec<(Vec<String>, String)> {
        let mut out: Vec<(Vec<String>, String)> = Vec::new();
        let mut bad = |path: &[&str], msg: String| {
            out.push((path.iter().map(|s| s.to_string()).collect(), msg));
        };
        let min = self.history.min_interval;
        let interval_ok = |bad: &mut dyn FnMut(&[&str], String), path: &[&str], d: Duration| {
            if d.is_zero() {
                bad(path, "interval must be greater than 0".into());
            } else if d < min {
                bad(
                    path,
                    format!(
                        "interval {} is shorter than history.min_interval {}",
                        humantime::format_duration(d),
                        humantime::format_duration(min)
                    ),
                );
            }
        };
        interval_ok(&mut bad, &["agent", "interval"], self.agent.interval);
        if self.agent.failure_threshold == 0 {
            bad(&["agent", "failure_threshold"], "must be at least 1".into());
        }
        if self.agent.success_threshold == 0 {
            bad(&["agent", "success_threshold"], "must be at least 1".into());
        }
        if self
            .agent
            .hostname
            .as_ref()
            .is_some_and(|h| h.trim().is_empty())
        {
            bad(&["agent", "hostname"], "must not be empty".into());
        }
        match self.api.listen.parse::<SocketAddr>() {
            Err(_) => bad(
                &["api", "listen"],
                format!(
                    "`{}` is not an address:port such as 127.0.0.1:8711",
                    self.api.listen
                ),
            ),
            Ok(a) if self.api.enabled && !a.ip().is_loopback() && self.api.token_file.is_none() => {
                bad(
                    &["api", "listen"],
                    format!(
                        "{a} is not a loopback address: set api.token_file too, or listen on 127.0.0.1"
                    ),
                )
            }
            Ok(_) => {}
        }
        for h in &self.api.allowed_hosts {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !ok {
                bad(
                    &["api", "allowed_hosts"],
                    format!("`{h}` is not a host name"),
                );
            }
        }
        self.validate_history(&mut bad);

        let h = &self.host;
        let host_interval = h.interval.unwrap_or(self.agent.interval);
        if let Some(i) = h.interval {
            interval_ok(&mut bad, &["host", "interval"], i);
        }
        if let Some(t) = h.timeout {
            timeout_ok(&mut bad, &["host", "timeout"], t, host_interval);
        }
        for (name, l) in [("cpu", &h.cpu), ("memory", &h.memory), ("disk", &h.disk)] {
            for (field, v) in [("degraded", l.degraded), ("unhealthy", l.unhealthy)] {
                if !(0.0..=1.0).contains(&v) {
                    bad(
                        &["host", name, field],
                        format!("{v} is not a ratio between 0 and 1"),
                    );
                }
            }
            if l.degraded > l.unhealthy {
                bad(
                    &["host", name],
                    "degraded must not be above unhealthy".into(),
                );
            }
        }

        for (name, p) in &self.probe {
            let n = name.as_str();
            if name == "host" || !valid_name(name) {
                bad(
                    &["probe", n],
                    "probe names are 1-64 characters of a-z, 0-9, '-' and '_', and `host` is reserved".into(),
                );
            }
            let p_kind = p;
            let p = p.common();
            let interval = p.interval.unwrap_or(self.agent.interval);
            if let Some(i) = p.interval {
                interval_ok(&mut bad, &["probe", n, "interval"], i);
            }
            if let Some(t) = p.timeout {
                timeout_ok(&mut bad, &["probe", n, "timeout"], t, interval);
            }
            if p.failure_threshold == Some(0) {
                bad(
                    &["probe", n, "failure_threshold"],
                    "must be at least 1".into(),
                );
            }
            if p.success_threshold == Some(0) {
                bad(
                    &["probe", n, "success_threshold"],
                    "must be at least 1".into(),
                );
            }
            for (metric, t) in p.thresholds {
                if let Some(u) = t.unhealthy {
                    let wrong = if t.below {
                        u > t.degraded
                    } else {
                        u < t.degraded
                    };
                    if wrong {
                        bad(
                            &["probe", n, "thresholds", metric],
                            "unhealthy level is on the healthy side of degraded".into(),
                        );
                    }
                }
            }
            for (field, msg) in p_kind.validate_kind() {
                bad(&["probe", n, field], msg);
            }
        }
        self.validate_maintenance(&mut bad);
        out
    }

    fn validate_maintenance(&self, bad: &mut dyn FnMut(&[&str], String)) {
        for (name, m) in &self.maintenance {
            let n = name.as_str();
            if !valid_name(name) {
                bad(
                    &["maintenance", n],
                    "task names are 1-64 characters of a-z, 0-9, '-' and '_'".into(),
                );
            }
            for (field, msg) in m.validate_kind(&self.probe) {
                bad(&["maintenance", n, field], msg);
            }
            for g in m.guards() {
                if g != "host" && !self.probe.contains_key(&g) {
                    bad(
                        &["maintenance", n, "guard"],
                        format!("no probe `{g}` is configured"),
                    );
                }
            }
            for (field, msg) in crate::maintenance::schedule::validate(&m.common()) {
                bad(&["maintenance", n, field], msg);
            }
            if m.common()
                .timeout
                .is_some_and(|t| t < Duration::from_secs(1))
            {
                bad(&["maintenance", n, "timeout"], "must be at least 1s".into());
            }
        }
    }

    fn validate_history(&self, bad: &mut dyn FnMut(&[&str], String)) {
        let tiers = &self.history.tiers;
        if tiers.is_empty() {
            bad(&["history", "tiers"], "at least one tier is needed".into());
        }
        if tiers.len() > 8 {
            bad(&["history", "tiers"], "at most 8 tiers".into());
        }
        for (i, t) in tiers.iter().enumerate() {
            let fmt = |d: Duration| humantime::format_duration(d).to_string();
            if t.step < Duration::from_secs(1) || t.step.subsec_nanos() != 0 {
                bad(
                    &["history", "tiers"],
                    format!("tier {}: step must be whole seconds, at least 1s", i + 1),
                );
                continue;
            }
            if t.step.as_millis() > crate::store::chunk::MAX_STEP_MS as u128 {
                bad(
                    &["history", "tiers"],
                    format!("tier {}: step must be at most 49d", i + 1),
                );
                continue;
            }
            if t.span < t.step * 2 || t.span.as_secs() % t.step.as_secs() != 0 {
                bad(
                    &["history", "tiers"],
                    format!(
                        "tier {}: span {} must be a multiple of its step {}, at least two steps",
                        i + 1,
                        fmt(t.span),
                        fmt(t.step)
                    ),
                );
            }
            if let Some(next) = tiers.get(i + 1) {
                if next.step <= t.step || next.step.as_secs() % t.step.as_secs() != 0 {
                    bad(
                        &["history", "tiers"],
                        format!(
                            "tier {}: step {} must be a larger multiple of tier {}'s step {}",
                            i + 2,
                            fmt(next.step),
                            i + 1,
                            fmt(t.step)
                        ),
                    );
                } else if t.span < next.step * 2 + Duration::from_secs(10) {
                    // The next tier's open buckets are rebuilt from this one
                    // after a crash: it must still hold them.
                    bad(
                        &["history", "tiers"],
                        format!(
                            "tier {}: span {} must hold at least two steps of tier {} plus 10s ({})",
                            i + 1,
                            fmt(t.span),
                            i + 2,
                            fmt(next.step * 2 + Duration::from_secs(10))
                        ),
                    );
                }
                if next.span < t.span {
                    bad(
                        &["history", "tiers"],
                        format!(
                            "tier {}: span must not be shorter than tier {}'s",
                            i + 2,
                            i + 1
                        ),
                    );
                }
            }
        }
        if self.history.max_series == 0 {
            bad(&["history", "max_series"], "must be at least 1".into());
        }
        if self.history.min_interval < Duration::from_millis(100) {
            bad(
                &["history", "min_interval"],
                "must be at least 100ms".into(),
            );
        }
        if tiers
            .first()
            .is_some_and(|first| self.history.min_interval > first.step)
        {
            bad(
                &["history", "min_interval"],
                "must not be longer than the first tier's step".into(),
            );
        }
    }

    /// The hostname to report.
    pub fn hostname(&self) -> String {
        self.agent
            .hostname
            .clone()
            .or_else(sysinfo::System::host_name)
            .unwrap_or_else(|| "localhost".to_string())
    }
}

fn timeout_ok(
    bad: &mut dyn FnMut(&[&str], String),
    path: &[&str],
    timeout: Duration,
    interval: Duration,
) {
    if timeout.is_zero() {
        bad(path, "timeout must be greater than 0".into());
    } else if timeout >= interval {
        bad(
            path,
            format!(
                "timeout {} must be shorter than the interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
}

/// Probe names end up in series keys, file names and URLs: keep them plain.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Start offset of the value (or, failing that, the nearest table) at `path`.
fn span_of(table: &toml::de::DeTable<'_>, path: &[String]) -> Option<usize> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.get_key_value(first.as_str())?;
    if rest.is_empty() {
        // A table is pointed at by its name, a value by itself.
        return Some(match value.get_ref() {
            toml::de::DeValue::Table(_) => key.span().start,
            _ => value.span().start,
        });
    }
    match value.get_ref() {
        toml::de::DeValue::Table(t) => span_of(t, rest).or(Some(key.span().start)),
        _ => Some(value.span().start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_step_past_49_days_is_refused() {
        let text = |step: &str, span: &str| {
            format!(
                "[history]\ntiers = [{{ step = \"10s\", span = \"200d\" }}, {{ step = \"{step}\", span = \"{span}\" }}]\n"
            )
        };
        let ok = Config::parse("a.toml", &text("49d", "3626d"));
        assert!(ok.is_ok(), "{ok:?}");
        let err = Config::parse("a.toml", &text("50d", "3650d"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tier 2: step must be at most 49d"), "{err}");
    }

    #[test]
    fn empty_text_is_the_default_config() {
        let c = Config::parse("a.toml", "").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.history.tiers.len(), 4);
        assert_eq!(c.api.listen, "127.0.0.1:8711");
    }
}
