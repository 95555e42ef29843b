//! The typed TOML schema of `agent.toml` and its defaults, composed of each
//! seam's own config types. Validation (`validate.rs`, every problem at
//! once) and reading a file with FILE:LINE:COL errors (`errors.rs`) sit
//! beside it. Nothing here opens a connection or touches the history file;
//! `App::start` builds the running agent from a validated `Config`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[history]`: the store's own settings.
pub use crate::store::config::{HistoryConfig, TierConfig};

mod errors;
mod validate;

pub use errors::{ConfigError, ConfigIssue, MAX_CONFIG_BYTES, escape, line_col};
pub use validate::valid_name;

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
    /// `[alerts]`: reminders and delivery bounds.
    #[serde(default)]
    pub alerts: crate::alerts::config::AlertsSection,
    /// `[notify.NAME]` tables: where notifications go.
    #[serde(default)]
    pub notify: BTreeMap<String, crate::alerts::config::NotifyConfig>,
    /// `[alert.NAME]` tables: the alert rules.
    #[serde(default)]
    pub alert: BTreeMap<String, crate::alerts::config::RuleConfig>,
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
    /// trimmed, not empty; mode 0640 or stricter; read by `secret::read_token`
    /// at start and by `check-config`). Unset: those routes are disabled.
    /// Required when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
    /// Host names, besides localhost, 127.0.0.1, [::1] and the listen
    /// address, that requests may name in their Host header (a guard
    /// against DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// API connections open at once; at the cap, the one idle the longest
    /// is closed to make room for a new one.
    pub max_connections: usize,
    /// Time a client has to send a request's head, from connecting or from
    /// the first byte of a request on a kept-alive connection.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: "127.0.0.1:8711".to_string(),
            token_file: None,
            allowed_hosts: Vec::new(),
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The hostname to report.
    pub fn hostname(&self) -> String {
        self.agent
            .hostname
            .clone()
            .or_else(sysinfo::System::host_name)
            .unwrap_or_else(|| "localhost".to_string())
    }

    /// The agent's own secret files (the API token, the probes' password
    /// files): the `compliance` probe checks their modes.
    pub fn secret_files(&self) -> Vec<std::path::PathBuf> {
        let mut out: Vec<std::path::PathBuf> = self.api.token_file.iter().cloned().collect();
        for p in self.probe.values() {
            let file = match p {
                ProbeConfig::Postgres(c) => c.password_file.as_ref(),
                ProbeConfig::Redis(c) => c.password_file.as_ref(),
                ProbeConfig::Worker(c) => c.heartbeat_redis_password_file.as_ref(),
                _ => None,
            };
            out.extend(file.cloned());
        }
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_default_config() {
        let c = Config::parse("a.toml", "").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.history.tiers.len(), 4);
        assert_eq!(c.api.listen, "127.0.0.1:8711");
    }

    #[test]
    fn a_role_names_one_probe_and_a_bad_role_is_named() {
        let probe = |name: &str, role: &str| {
            format!(
                "[probe.{name}]\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\nrole = \"{role}\"\n"
            )
        };
        let text = probe("a", "database")
            + &probe("b", "database")
            + &probe("w1", "worker")
            + &probe("w2", "worker");
        let e = Config::parse("a.toml", &text).unwrap_err().to_string();
        assert!(
            e.contains("a.toml:8")
                && e.contains("role `database` is already the role of probe `a`"),
            "{e}"
        );
        assert!(!e.contains("probe.w"), "any number of workers: {e}");
        let e = Config::parse("a.toml", &probe("a", "db"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.toml:4") && e.contains("database"), "{e}");
        let c = Config::parse("a.toml", &probe("a", "api")).unwrap();
        assert_eq!(c.probe["a"].common().role, Some(crate::probes::Role::Api));
    }
}
