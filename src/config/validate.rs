//! `Config::validate`: every problem of a parsed config at once, each with
//! the key path it is about, in one named step per section. Offline: it
//! never opens a connection or the history file. `Config::parse` calls it
//! and turns the paths into line and column.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Config, TierConfig};

/// Where a step reports a problem: the key path it is about, and what is
/// wrong.
type Bad<'a> = dyn FnMut(&[&str], String) + 'a;

/// Each API connection may hold a few descriptors; more than this many
/// connections is a typo, not a plan.
const MAX_API_CONNECTIONS: usize = 65_536;
/// `history.max_event_bytes`: room for a few hundred of the largest events
/// at least, and no more than a bound anyone would mean.
const MIN_EVENT_BYTES: u64 = 64 * 1024;
const MAX_EVENT_BYTES: u64 = 1024 * 1024 * 1024;

impl Config {
    /// Every problem of the config, each with the key path it is about.
    /// Offline: never touches the network or the history file.
    pub fn validate(&self) -> Vec<(Vec<String>, String)> {
        let mut out: Vec<(Vec<String>, String)> = Vec::new();
        let mut bad = |path: &[&str], msg: String| {
            out.push((path.iter().map(|s| s.to_string()).collect(), msg));
        };
        self.validate_agent(&mut bad);
        self.validate_api(&mut bad);
        self.validate_history(&mut bad);
        self.validate_host(&mut bad);
        self.validate_probes(&mut bad);
        self.validate_maintenance(&mut bad);
        self.validate_alerts(&mut bad);
        out
    }

    fn validate_agent(&self, bad: &mut Bad<'_>) {
        self.interval_ok(bad, &["agent", "interval"], self.agent.interval);
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
    }

    fn validate_api(&self, bad: &mut Bad<'_>) {
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
        if !(1..=MAX_API_CONNECTIONS).contains(&self.api.max_connections) {
            bad(
                &["api", "max_connections"],
                format!("must be between 1 and {MAX_API_CONNECTIONS}"),
            );
        }
        for (key, d) in [
            ("header_read_timeout", self.api.header_read_timeout),
            ("idle_timeout", self.api.idle_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                bad(&["api", key], "must be between 100ms and 1h".into());
            }
        }
    }

    fn validate_history(&self, bad: &mut Bad<'_>) {
        let tiers = &self.history.tiers;
        if tiers.is_empty() {
            bad(&["history", "tiers"], "at least one tier is needed".into());
        }
        if tiers.len() > 8 {
            bad(&["history", "tiers"], "at most 8 tiers".into());
        }
        for (i, t) in tiers.iter().enumerate() {
            validate_tier(bad, i, t, tiers.get(i + 1));
        }
        if self.history.max_series == 0 {
            bad(&["history", "max_series"], "must be at least 1".into());
        }
        let event_bytes = MIN_EVENT_BYTES..=MAX_EVENT_BYTES;
        if !event_bytes.contains(&self.history.max_event_bytes) {
            bad(
                &["history", "max_event_bytes"],
                format!(
                    "{} is out of range: must be between {} (64 KiB) and {} (1 GiB)",
                    self.history.max_event_bytes, MIN_EVENT_BYTES, MAX_EVENT_BYTES
                ),
            );
        }
        if self.history.min_interval < Duration::from_millis(100) {
            bad(
                &["history", "min_interval"],
                "must be at least 100ms".into(),
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600))
            .contains(&self.history.checkpoint_interval)
        {
            bad(
                &["history", "checkpoint_interval"],
                "must be between 1s and 1h".into(),
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

    fn validate_host(&self, bad: &mut Bad<'_>) {
        let h = &self.host;
        let host_interval = h.interval.unwrap_or(self.agent.interval);
        if let Some(i) = h.interval {
            self.interval_ok(bad, &["host", "interval"], i);
        }
        if let Some(t) = h.timeout {
            timeout_ok(bad, &["host", "timeout"], t, host_interval);
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
    }

    fn validate_probes(&self, bad: &mut Bad<'_>) {
        // A service slot of the health document names one probe.
        let mut roles = std::collections::BTreeMap::new();
        for (name, p) in &self.probe {
            let Some(role) = p
                .common()
                .role
                .filter(|r| *r != crate::probes::Role::Worker)
            else {
                continue;
            };
            let first = *roles.entry(role).or_insert(name);
            if first != name {
                bad(
                    &["probe", name, "role"],
                    format!(
                        "role `{}` is already the role of probe `{first}`; one probe per role (but any number of workers)",
                        role.as_str()
                    ),
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
                self.interval_ok(bad, &["probe", n, "interval"], i);
            }
            if let Some(t) = p.timeout {
                timeout_ok(bad, &["probe", n, "timeout"], t, interval);
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
    }

    fn validate_maintenance(&self, bad: &mut Bad<'_>) {
        for (path, msg) in self.maintenance.validate_budget() {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            bad(&path, msg);
        }
        for (name, m) in &self.maintenance {
            let n = name.as_str();
            if !valid_name(name) {
                bad(
                    &["maintenance", n],
                    "task names are 1-64 characters of a-z, 0-9, '-' and '_'".into(),
                );
            }
            for (field, msg) in m.validate_kind(&self.probe, &self.maintenance.tasks) {
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
            if let Some(a) = m.after() {
                // The chain from this task back through `after` must end.
                let (mut at, mut seen) = (a, vec![n]);
                let problem = loop {
                    if seen.contains(&at) {
                        break Some(format!(
                            "`{a}` leads back to `{n}`: a chain of `after` must end"
                        ));
                    }
                    match self.maintenance.get(at) {
                        None if at == a => {
                            break Some(format!("no maintenance task `{a}` is configured"));
                        }
                        None => break None,
                        Some(t) => match t.after() {
                            Some(next) => {
                                seen.push(at);
                                at = next;
                            }
                            None => break None,
                        },
                    }
                };
                if let Some(msg) = problem {
                    bad(&["maintenance", n, "after"], msg);
                }
            }
            for (field, msg) in m.common().validate_pacing() {
                bad(&["maintenance", n, field], msg);
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

    fn validate_alerts(&self, bad: &mut Bad<'_>) {
        let a = &self.alerts;
        if a.max_outbox == 0 || a.max_outbox > 1_000_000 {
            bad(
                &["alerts", "max_outbox"],
                "must be between 1 and 1000000".into(),
            );
        }
        if a.retry_max < Duration::from_secs(1) {
            bad(&["alerts", "retry_max"], "must be at least 1s".into());
        }
        if !a.repeat_interval.is_zero() && a.repeat_interval < Duration::from_secs(60) {
            bad(
                &["alerts", "repeat_interval"],
                "must be 0s (never) or at least 1m".into(),
            );
        }
        for (name, n) in &self.notify {
            if !valid_name(name) {
                bad(
                    &["notify", name],
                    "notifier names are 1-64 characters of a-z, 0-9, '-' and '_'".into(),
                );
            }
            for (field, msg) in n.validate() {
                bad(&["notify", name, field], msg);
            }
        }
        let notifiers: Vec<&str> = self.notify.keys().map(String::as_str).collect();
        let mut probes: Vec<&str> = self.probe.keys().map(String::as_str).collect();
        probes.push("host");
        let tasks: Vec<&str> = self.maintenance.tasks.keys().map(String::as_str).collect();
        for (name, r) in &self.alert {
            if !valid_name(name) {
                bad(
                    &["alert", name],
                    "rule names are 1-64 characters of a-z, 0-9, '-' and '_'".into(),
                );
            }
            for (field, msg) in r.validate(&notifiers, &probes, &tasks) {
                bad(&["alert", name, field], msg);
            }
        }
    }

    /// Every interval is bounded below by `history.min_interval`: the
    /// history size bound assumes no probe samples faster.
    fn interval_ok(&self, bad: &mut Bad<'_>, path: &[&str], d: Duration) {
        let min = self.history.min_interval;
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
    }
}

/// Tier `i` (0-based) on its own and against the tier after it, if any.
fn validate_tier(bad: &mut Bad<'_>, i: usize, t: &TierConfig, next: Option<&TierConfig>) {
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    if t.step < Duration::from_secs(1) || t.step.subsec_nanos() != 0 {
        bad(
            &["history", "tiers"],
            format!("tier {}: step must be whole seconds, at least 1s", i + 1),
        );
        return;
    }
    if t.step.as_millis() > crate::store::chunk::MAX_STEP_MS as u128 {
        bad(
            &["history", "tiers"],
            format!("tier {}: step must be at most 49d", i + 1),
        );
        return;
    }
    if t.span < t.step * 2 || !t.span.as_secs().is_multiple_of(t.step.as_secs()) {
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
    if let Some(next) = next {
        if next.step <= t.step || !next.step.as_secs().is_multiple_of(t.step.as_secs()) {
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

fn timeout_ok(bad: &mut Bad<'_>, path: &[&str], timeout: Duration, interval: Duration) {
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
    fn api_connection_limits_are_checked_by_name() {
        let ok = Config::parse(
            "a.toml",
            "[api]\nmax_connections = 8\nheader_read_timeout = \"2s\"\nidle_timeout = \"1m\"\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
        let err = Config::parse(
            "a.toml",
            "[api]\nmax_connections = 0\nheader_read_timeout = \"0s\"\nidle_timeout = \"2h\"\n",
        )
        .unwrap_err()
        .to_string();
        for key in ["max_connections", "header_read_timeout", "idle_timeout"] {
            assert!(err.contains(&format!("api.{key}")), "{key}: {err}");
        }
    }

    #[test]
    fn a_checkpoint_interval_outside_1s_to_1h_is_refused_naming_the_field() {
        let text = |v: &str| format!("[history]\ncheckpoint_interval = \"{v}\"\n");
        for v in ["1s", "60s", "1h"] {
            let ok = Config::parse("a.toml", &text(v));
            assert!(ok.is_ok(), "{v}: {ok:?}");
        }
        for v in ["500ms", "2h"] {
            let err = Config::parse("a.toml", &text(v)).unwrap_err().to_string();
            assert!(
                err.contains("history.checkpoint_interval") && err.contains("between 1s and 1h"),
                "{v}: {err}"
            );
        }
    }

    #[test]
    fn max_event_bytes_outside_64_kib_to_1_gib_is_refused_naming_the_field_and_value() {
        let text = |v: u64| format!("[history]\nmax_event_bytes = {v}\n");
        for v in [65_536, 16_777_216, 1_073_741_824] {
            let ok = Config::parse("a.toml", &text(v));
            assert!(ok.is_ok(), "{v}: {ok:?}");
        }
        for v in [0, 65_535, 1_073_741_825] {
            let err = Config::parse("a.toml", &text(v)).unwrap_err().to_string();
            assert!(
                err.contains("history.max_event_bytes")
                    && err.contains(&format!("{v} is out of range")),
                "{v}: {err}"
            );
        }
    }
}
