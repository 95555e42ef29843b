//! The alerts' config: `[alerts]` (reminders, delivery bounds),
//! `[notify.NAME]` (where notifications go: webhook, alertmanager,
//! command, email) and `[alert.NAME]` (when an alert fires: probe,
//! threshold, forecast, maintenance, agent). Each kind's table is read
//! straight into its struct (`deserialize_kind`), so problems keep their
//! place; `validate` checks each table and the references between rules,
//! notifiers, probes and tasks, offline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::ValueDeserializer;

/// `[alerts]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// A firing alert is notified again this often; `"0s"`: never.
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    /// Notify when an alert resolves.
    pub resolve_notify: bool,
    /// Notifications waiting per notifier at most; past it the oldest are
    /// dropped (and counted). Counted in the history size bound.
    pub max_outbox: usize,
    /// Longest wait between two delivery attempts of a notification (the
    /// backoff doubles from 1 s up to here, with jitter).
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            repeat_interval: Duration::from_secs(4 * 3600),
            resolve_notify: true,
            max_outbox: 1000,
            retry_max: Duration::from_secs(300),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Declares a notifier kind's struct with the fields every kind has.
macro_rules! notify_config {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// One delivery attempt at most this long.
            #[serde(default = "default_timeout", with = "humantime_serde")]
            pub timeout: Duration,
            /// A notification not delivered within this long is given up
            /// (an event, a counter and an `agent` alert say so).
            #[serde(default = "default_max_age", with = "humantime_serde")]
            pub max_age: Duration,
            $($(#[$fm])* pub $f: $t,)*
        }
    };
}

notify_config! {
    /// `kind = "webhook"`: the notification as JSON, POSTed.
    pub struct WebhookConfig {
        pub url: String,
        /// A file holding the HMAC-SHA256 key; the body's signature goes in
        /// `X-Upkeep-Signature: sha256=HEX`.
        #[serde(default)]
        pub secret_file: Option<PathBuf>,
        /// Extra request headers. Plain text: no credentials.
        #[serde(default)]
        pub headers: BTreeMap<String, String>,
    }
}

notify_config! {
    /// `kind = "alertmanager"`: POST /api/v2/alerts, resent while firing.
    pub struct AlertmanagerConfig {
        /// Alertmanager's base URL, such as `http://127.0.0.1:9093`.
        pub url: String,
        #[serde(default)]
        pub headers: BTreeMap<String, String>,
    }
}

notify_config! {
    /// `kind = "command"`: argv (no shell), the notification as JSON on
    /// stdin, `UPKEEP_ALERT_*` in the environment; exit 0 = accepted.
    pub struct CommandConfig {
        pub command: Vec<String>,
    }
}

notify_config! {
    /// `kind = "email"`: SMTP (`smtp://` with STARTTLS, `smtps://` TLS).
    pub struct EmailConfig {
        /// `smtp://HOST:PORT` (STARTTLS when offered; `?tls=required` to
        /// insist), `smtps://HOST:PORT` (TLS from the start).
        pub smtp: String,
        pub from: String,
        pub to: Vec<String>,
        #[serde(default)]
        pub username: Option<String>,
        /// A file holding the SMTP password (mode 0640 or stricter).
        #[serde(default)]
        pub password_file: Option<PathBuf>,
    }
}

/// `[notify.NAME]`, told apart by `kind`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NotifyConfig {
    Webhook(WebhookConfig),
    Alertmanager(AlertmanagerConfig),
    Command(CommandConfig),
    Email(EmailConfig),
}

impl NotifyConfig {
    pub const KINDS: &[&str] = &["webhook", "alertmanager", "command", "email"];

    pub fn kind(&self) -> &'static str {
        match self {
            NotifyConfig::Webhook(_) => "webhook",
            NotifyConfig::Alertmanager(_) => "alertmanager",
            NotifyConfig::Command(_) => "command",
            NotifyConfig::Email(_) => "email",
        }
    }

    pub fn timeout(&self) -> Duration {
        match self {
            NotifyConfig::Webhook(c) => c.timeout,
            NotifyConfig::Alertmanager(c) => c.timeout,
            NotifyConfig::Command(c) => c.timeout,
            NotifyConfig::Email(c) => c.timeout,
        }
    }

    pub fn max_age(&self) -> Duration {
        match self {
            NotifyConfig::Webhook(c) => c.max_age,
            NotifyConfig::Alertmanager(c) => c.max_age,
            NotifyConfig::Command(c) => c.max_age,
            NotifyConfig::Email(c) => c.max_age,
        }
    }

    /// A table whose `kind` was `kind`, read straight into that kind's
    /// struct; `None` for a kind that does not exist.
    pub fn deserialize_kind(
        kind: &str,
        rest: ValueDeserializer<'_>,
    ) -> Option<Result<NotifyConfig, toml::de::Error>> {
        Some(match kind {
            "webhook" => WebhookConfig::deserialize(rest).map(NotifyConfig::Webhook),
            "alertmanager" => AlertmanagerConfig::deserialize(rest).map(NotifyConfig::Alertmanager),
            "command" => CommandConfig::deserialize(rest).map(NotifyConfig::Command),
            "email" => EmailConfig::deserialize(rest).map(NotifyConfig::Email),
            _ => return None,
        })
    }

    /// This table's own problems: `(field, message)`.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match self {
            NotifyConfig::Webhook(c) => {
                if let Err(e) = http_url(&c.url) {
                    out.push(("url", e));
                }
                headers_ok(&c.headers, &mut out);
            }
            NotifyConfig::Alertmanager(c) => {
                if let Err(e) = http_url(&c.url) {
                    out.push(("url", e));
                }
                headers_ok(&c.headers, &mut out);
            }
            NotifyConfig::Command(c) => match c.command.first() {
                None => out.push(("command", "must name a program".into())),
                Some(p) if !PathBuf::from(p).is_absolute() => out.push((
                    "command",
                    format!("`{p}` must be an absolute path (no shell, no PATH search)"),
                )),
                Some(_) => {}
            },
            NotifyConfig::Email(c) => {
                if let Err(e) = smtp_url(&c.smtp) {
                    out.push(("smtp", e));
                }
                if !c.from.contains('@') {
                    out.push(("from", format!("`{}` is not a mail address", c.from)));
                }
                if c.to.is_empty() {
                    out.push(("to", "at least one address is needed".into()));
                }
                for t in c.to.iter().filter(|t| !t.contains('@')) {
                    out.push(("to", format!("`{t}` is not a mail address")));
                }
                if c.username.is_some() != c.password_file.is_some() {
                    out.push((
                        "password_file",
                        "username and password_file go together".into(),
                    ));
                }
            }
        }
        let (timeout, max_age) = (self.timeout(), self.max_age());
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(300) {
            out.push(("timeout", "must be between 100ms and 5m".into()));
        }
        if max_age < Duration::from_secs(1) {
            out.push(("max_age", "must be at least 1s".into()));
        }
        out
    }
}

/// Headers as the http probe checks them: no credentials (they would sit
/// in plain text in agent.toml), valid names and values.
fn headers_ok(headers: &BTreeMap<String, String>, out: &mut Vec<(&'static str, String)>) {
    for problem in crate::probes::http::header_problems(headers) {
        out.push(("headers", problem));
    }
}

/// A receiver URL: http or https, a host, no credentials (as the http
/// probe's).
pub fn http_url(text: &str) -> Result<url::Url, String> {
    crate::probes::http::parse_url(text)
}

/// An SMTP URL: smtp or smtps, a host, no credentials.
pub fn smtp_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "smtp" | "smtps") {
        return Err(format!("`{text}`: scheme must be smtp or smtps"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{}` holds credentials, which belong in username and password_file",
            url.host_str().unwrap_or_default()
        ));
    }
    Ok(url)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Critical, Severity::Warning, Severity::Info];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What a rule does while a maintenance run changes things on a probe it
/// watches.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DuringMaintenance {
    /// Notify as usual, without a note.
    Notify,
    /// Notify, saying "during maintenance run N" with a link.
    #[default]
    Annotate,
    /// Track the alert but do not notify while the run lasts.
    Mute,
}

/// The probe status a `when = "probe"` rule fires on.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StatusLevel {
    /// Degraded or worse.
    Degraded,
    #[default]
    Unhealthy,
}

/// The agent's own troubles a `when = "agent"` rule fires on.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AgentCondition {
    /// History cannot be written (or read): full disk, read-only
    /// filesystem, data dir not writable, I/O errors.
    HistoryUnwritable,
    /// Samples were dropped in the last 10 minutes.
    SamplesDropped,
    /// A notification was given up in the last hour.
    NotificationsGivenUp,
}

impl AgentCondition {
    pub const ALL: [AgentCondition; 3] = [
        AgentCondition::HistoryUnwritable,
        AgentCondition::SamplesDropped,
        AgentCondition::NotificationsGivenUp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentCondition::HistoryUnwritable => "history_unwritable",
            AgentCondition::SamplesDropped => "samples_dropped",
            AgentCondition::NotificationsGivenUp => "notifications_given_up",
        }
    }
}

/// Declares a rule kind's struct with the fields every rule has.
macro_rules! rule_config {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// The condition must hold this long before the alert fires.
            #[serde(default, rename = "for", with = "humantime_serde")]
            pub for_: Duration,
            #[serde(default)]
            pub severity: Severity,
            /// Names of `[notify.NAME]` tables.
            #[serde(default)]
            pub notify: Vec<String>,
            #[serde(default)]
            pub during_maintenance: DuringMaintenance,
            $($(#[$fm])* pub $f: $t,)*
        }
    };
}

rule_config! {
    /// `when = "probe"`: a probe's believed status (flap damping applied).
    pub struct ProbeRule {
        /// Probe names; empty: every probe, `host` included.
        #[serde(default)]
        pub probes: Vec<String>,
        #[serde(default)]
        pub status: StatusLevel,
    }
}

rule_config! {
    /// `when = "threshold"`: a series' latest value past a level, until it
    /// is back past `clear` (hysteresis).
    pub struct ThresholdRule {
        pub series: String,
        #[serde(default)]
        pub above: Option<f64>,
        #[serde(default)]
        pub below: Option<f64>,
        /// The level the value must be back past to resolve; unset: the
        /// firing level itself.
        #[serde(default)]
        pub clear: Option<f64>,
    }
}

rule_config! {
    /// `when = "forecast"`: the series reaches a level within a time, by a
    /// confident forecast only (the trend rule: r² ≥ 0.8, ≥ 12 points over
    /// ≥ 1 h).
    pub struct ForecastRule {
        pub series: String,
        pub reaches: f64,
        #[serde(with = "humantime_serde")]
        pub within: Duration,
    }
}

rule_config! {
    /// `when = "maintenance"`: a run ended in one of `on`, or no run
    /// succeeded for `not_succeeded_for`.
    pub struct MaintenanceRule {
        /// Task names; empty: every task.
        #[serde(default)]
        pub tasks: Vec<String>,
        /// Run outcomes that fire: failed, aborted, rolled_back, interrupted,
        /// refused. Resolved by the task's next successful run.
        #[serde(default)]
        pub on: Vec<String>,
        #[serde(default, with = "humantime_serde")]
        pub not_succeeded_for: Option<Duration>,
    }
}

rule_config! {
    /// `when = "agent"`: the agent's own troubles.
    pub struct AgentRule {
        /// Empty: every condition.
        #[serde(default)]
        pub conditions: Vec<AgentCondition>,
    }
}

/// `[alert.NAME]`, told apart by `when`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "when", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleConfig {
    Probe(ProbeRule),
    Threshold(ThresholdRule),
    Forecast(ForecastRule),
    Maintenance(MaintenanceRule),
    Agent(AgentRule),
}

/// The run outcomes a maintenance rule may fire on.
pub const RUN_OUTCOMES: &[&str] = &["failed", "aborted", "rolled_back", "interrupted", "refused"];

/// The fields every rule has.
pub struct RuleCommon<'a> {
    pub for_: Duration,
    pub severity: Severity,
    pub notify: &'a [String],
    pub during_maintenance: DuringMaintenance,
}

impl RuleConfig {
    pub fn when(&self) -> &'static str {
        match self {
            RuleConfig::Probe(_) => "probe",
            RuleConfig::Threshold(_) => "threshold",
            RuleConfig::Forecast(_) => "forecast",
            RuleConfig::Maintenance(_) => "maintenance",
            RuleConfig::Agent(_) => "agent",
        }
    }

    pub fn common(&self) -> RuleCommon<'_> {
        macro_rules! c {
            ($r:expr) => {
                RuleCommon {
                    for_: $r.for_,
                    severity: $r.severity,
                    notify: &$r.notify,
                    during_maintenance: $r.during_maintenance,
                }
            };
        }
        match self {
            RuleConfig::Probe(r) => c!(r),
            RuleConfig::Threshold(r) => c!(r),
            RuleConfig::Forecast(r) => c!(r),
            RuleConfig::Maintenance(r) => c!(r),
            RuleConfig::Agent(r) => c!(r),
        }
    }

    pub fn deserialize_kind(
        when: &str,
        rest: ValueDeserializer<'_>,
    ) -> Option<Result<RuleConfig, toml::de::Error>> {
        Some(match when {
            "probe" => ProbeRule::deserialize(rest).map(RuleConfig::Probe),
            "threshold" => ThresholdRule::deserialize(rest).map(RuleConfig::Threshold),
            "forecast" => ForecastRule::deserialize(rest).map(RuleConfig::Forecast),
            "maintenance" => MaintenanceRule::deserialize(rest).map(RuleConfig::Maintenance),
            "agent" => AgentRule::deserialize(rest).map(RuleConfig::Agent),
            _ => return None,
        })
    }

    /// This rule's problems, `(field, message)`, given the names of the
    /// configured notifiers, probes (`host` included) and tasks.
    pub fn validate(
        &self,
        notifiers: &[&str],
        probes: &[&str],
        tasks: &[&str],
    ) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let common = self.common();
        if common.notify.is_empty() {
            out.push(("notify", "name at least one [notify.NAME]".into()));
        }
        for n in common.notify {
            if !notifiers.contains(&n.as_str()) {
                out.push((
                    "notify",
                    format!("no notifier `{n}` is configured ([notify.{n}])"),
                ));
            }
        }
        match self {
            RuleConfig::Probe(r) => {
                for p in r.probes.iter().filter(|p| !probes.contains(&p.as_str())) {
                    out.push(("probes", format!("no probe `{p}` is configured")));
                }
            }
            RuleConfig::Threshold(r) => {
                series_ok(&r.series, probes, &mut out);
                match (r.above, r.below) {
                    (Some(_), Some(_)) | (None, None) => {
                        out.push(("above", "set exactly one of above and below".into()))
                    }
                    (Some(a), None) if r.clear.is_some_and(|c| c > a) => out.push((
                        "clear",
                        "must not be above `above` (it is the level to fall back under)".into(),
                    )),
                    (None, Some(b)) if r.clear.is_some_and(|c| c < b) => out.push((
                        "clear",
                        "must not be below `below` (it is the level to climb back over)".into(),
                    )),
                    _ => {}
                }
            }
            RuleConfig::Forecast(r) => {
                series_ok(&r.series, probes, &mut out);
                if !r.reaches.is_finite() {
                    out.push(("reaches", "must be a number".into()));
                }
                if r.within.is_zero() {
                    out.push(("within", "must be greater than 0".into()));
                }
            }
            RuleConfig::Maintenance(r) => {
                for t in r.tasks.iter().filter(|t| !tasks.contains(&t.as_str())) {
                    out.push(("tasks", format!("no task `{t}` is configured")));
                }
                for o in r.on.iter().filter(|o| !RUN_OUTCOMES.contains(&o.as_str())) {
                    out.push((
                        "on",
                        format!("`{o}` is not one of {}", RUN_OUTCOMES.join(", ")),
                    ));
                }
                if r.on.is_empty() && r.not_succeeded_for.is_none() {
                    out.push(("on", "set on, not_succeeded_for, or both".into()));
                }
            }
            RuleConfig::Agent(_) => {}
        }
        out
    }
}

/// A series key `probe.metric{labels}` whose probe is configured.
fn series_ok(series: &str, probes: &[&str], out: &mut Vec<(&'static str, String)>) {
    let Some((probe, rest)) = series.split_once('.') else {
        out.push((
            "series",
            format!("`{series}` is not PROBE.METRIC{{LABELS}}"),
        ));
        return;
    };
    if !probes.contains(&probe) {
        out.push(("series", format!("no probe `{probe}` is configured")));
    }
    let labels = rest.split_once('{').map(|(_, l)| format!("{{{l}"));
    if let Some(l) = labels
        && crate::sample::SeriesKey::parse_labels(&l).is_none()
    {
        out.push(("series", format!("`{series}`: labels do not read")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every notifier kind and every rule kind has a block in
    /// agent.toml.example, and the example's blocks read as config.
    #[test]
    fn agent_toml_example_has_a_block_for_every_notifier_and_rule_kind() {
        let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/agent.toml.example"));
        for k in NotifyConfig::KINDS {
            assert!(
                text.contains(&format!("# kind = \"{k}\"")),
                "no [notify] block of kind {k}"
            );
        }
        for w in ["probe", "threshold", "forecast", "maintenance", "agent"] {
            assert!(
                text.contains(&format!("# when = \"{w}\"")),
                "no [alert] block with when = {w}"
            );
        }
        // The alerts part of the example, uncommented, is a valid config
        // once its probes and tasks exist.
        let start = text.find("# [alerts]").expect("an [alerts] block");
        let mut uncommented = String::from(
            "[probe.database]\nkind = \"tcp\"\naddress = \"127.0.0.1:5432\"\n\n\
             [probe.api]\nkind = \"tcp\"\naddress = \"127.0.0.1:80\"\n\n",
        );
        for line in text[start..].lines() {
            let Some(l) = line.strip_prefix("# ") else {
                continue;
            };
            // A table header or a `key = value` line that reads as TOML
            // alone; prose ("kind = \"webhook\": the ...") does not.
            let setting = l.starts_with('[')
                || (l.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                }) && l.parse::<toml::Table>().is_ok());
            if setting && !l.starts_with("[maintenance") {
                uncommented.push_str(l);
                uncommented.push('\n');
            }
        }
        let uncommented = uncommented.replace("tasks = [\"audit-log\"]\n", "");
        let parsed = crate::config::Config::parse("example", &uncommented);
        assert!(parsed.is_ok(), "{uncommented}\n{}", parsed.unwrap_err());
        let c = parsed.unwrap();
        assert_eq!(c.alerts, AlertsSection::default());
        assert_eq!(c.notify.len(), 4);
        assert_eq!(c.alert.len(), 5);
    }
}
