//! `[maintenance.NAME]` tables: `kind = "..."` picks the task kind
//! (`TaskConfig`, THE registry), and every kind carries the fields of
//! [`task_config!`] that the runner reads: when it may run (cron schedule,
//! window, days, time zone, or `window = "auto"`), which probes guard it,
//! and how long it may take.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Adds the runner's fields to a task kind's config struct, so that
/// `deny_unknown_fields` covers both (serde cannot flatten into a struct
/// that denies unknown fields).
#[macro_export]
macro_rules! task_config {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// 5-field cron expression (as in crontab) of the starts.
            #[serde(default)]
            pub schedule: Option<String>,
            /// `"HH:MM-HH:MM"` (may wrap past midnight) or `"auto"`.
            #[serde(default)]
            pub window: Option<String>,
            /// Days the window is open (`mon` … `sun`); empty: every day.
            #[serde(default)]
            pub days: Vec<String>,
            /// `"local"` (default), `"UTC"` or an IANA zone: the clock of schedule and window.
            #[serde(default)]
            pub timezone: Option<String>,
            /// For `window = "auto"`: the series whose quietest hour is chosen.
            #[serde(default)]
            pub auto_series: Option<String>,
            /// Probes that must be healthy to start and stay healthy between
            /// batches; unset: the probe the task uses.
            #[serde(default)]
            pub guard: Option<Vec<String>>,
            /// Longest a run may take, guard pauses included.
            #[serde(default, with = "humantime_serde")]
            pub timeout: Option<std::time::Duration>,
            $($(#[$fm])* pub $f: $t,)*
        }
        impl $name {
            pub fn common(&self) -> $crate::maintenance::config::TaskCommon<'_> {
                $crate::maintenance::config::TaskCommon {
                    schedule: self.schedule.as_deref(),
                    window: self.window.as_deref(),
                    days: &self.days,
                    timezone: self.timezone.as_deref(),
                    auto_series: self.auto_series.as_deref(),
                    guard: self.guard.as_deref(),
                    timeout: self.timeout,
                }
            }
        }
    };
}

/// The runner's fields of any kind.
#[derive(Debug, Clone, Copy)]
pub struct TaskCommon<'a> {
    pub schedule: Option<&'a str>,
    pub window: Option<&'a str>,
    pub days: &'a [String],
    pub timezone: Option<&'a str>,
    pub auto_series: Option<&'a str>,
    pub guard: Option<&'a [String]>,
    pub timeout: Option<Duration>,
}

/// Default longest run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The probe configs a task may refer to, by name.
pub type Probes = std::collections::BTreeMap<String, crate::config::ProbeConfig>;

/// What every task kind's config says about itself. Each kind implements
/// it next to its config struct; [`TaskConfig`] dispatches with an
/// exhaustive match, so a kind that lacks a fact does not compile.
pub trait TaskKind {
    /// Its `kind = "..."` name.
    fn kind(&self) -> &'static str;
    /// The runner's fields (from [`task_config!`]).
    fn common(&self) -> TaskCommon<'_>;
    /// The probe whose connection settings the task uses: `None` for a kind
    /// that needs no probe (files, logs), which is then guarded by its
    /// `guard` list alone, or gated by its window alone.
    fn probe(&self) -> Option<&str>;
    /// Problems of the kind's own fields and of what it needs from the rest
    /// of the config (its probe's kind), as (field, message). Offline.
    fn validate(&self, probes: &Probes) -> Vec<(&'static str, String)>;
    /// Builds the task; `None` when what it needs is not configured (which
    /// `validate` reports). Never connects.
    fn build(&self, name: &str, probes: &Probes) -> Option<super::AnyTask>;
    /// Units (rows, keys, files) per batch the run starts with.
    fn batch_size(&self) -> u64 {
        1
    }
    /// Pause between batches the run starts with.
    fn pause(&self) -> Duration {
        Duration::ZERO
    }
}

/// The check of a kind that needs a probe of one kind: the message says
/// which probe is missing or of the wrong kind.
pub fn need_probe<'a>(
    probes: &'a Probes,
    name: &str,
    probe_kind: &str,
    task_kind: &str,
) -> Result<&'a crate::config::ProbeConfig, String> {
    match probes.get(name) {
        Some(p) if p.kind() == probe_kind => Ok(p),
        Some(other) => Err(format!(
            "`{name}` is a {} probe; a {task_kind} task needs a {probe_kind} probe",
            other.kind()
        )),
        None => Err(format!("no probe `{name}` is configured ([probe.{name}])")),
    }
}

/// `[maintenance.NAME]` with `kind = "..."`: THE registry of task kinds.
/// A new kind is one variant here, one `KINDS` entry (a test checks the
/// two agree) and one commented block in `agent.toml.example`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskConfig {
    PostgresRetention(super::postgres_retention::RetentionConfig),
    PostgresAnalyze(super::postgres_analyze::AnalyzeConfig),
    /// A kind that needs no probe, for the runner's own tests.
    #[cfg(test)]
    Scratch(super::scratch::ScratchConfig),
}

/// Alias: the table under `[maintenance]` is a task config.
pub type MaintenanceConfig = TaskConfig;

impl TaskConfig {
    /// Every kind's `kind = "..."` name (checked against serde in a test).
    pub const KINDS: &'static [&'static str] = &["postgres_retention", "postgres_analyze"];

    fn facts(&self) -> &dyn TaskKind {
        match self {
            TaskConfig::PostgresRetention(c) => c,
            TaskConfig::PostgresAnalyze(c) => c,
            #[cfg(test)]
            TaskConfig::Scratch(c) => c,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.facts().kind()
    }

    pub fn common(&self) -> TaskCommon<'_> {
        self.facts().common()
    }

    /// The probe whose connection settings the task uses, if its kind needs one.
    pub fn probe(&self) -> Option<&str> {
        self.facts().probe()
    }

    /// The probes that guard a run: `guard`, else the task's own probe,
    /// else none (the window alone gates the run).
    pub fn guards(&self) -> Vec<String> {
        match self.common().guard {
            Some(g) => g.to_vec(),
            None => self.probe().map(str::to_string).into_iter().collect(),
        }
    }

    /// Units (rows, tables) per batch the run starts with.
    pub fn batch_size(&self) -> u64 {
        self.facts().batch_size()
    }

    /// Pause between batches the run starts with.
    pub fn pause(&self) -> Duration {
        self.facts().pause()
    }

    pub fn timeout(&self) -> Duration {
        self.common().timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Problems of the kind's own fields and needs, as (field, message).
    pub fn validate_kind(&self, probes: &Probes) -> Vec<(&'static str, String)> {
        self.facts().validate(probes)
    }

    /// Builds the task `name`; `None` when its probe is missing.
    pub fn build(&self, name: &str, probes: &Probes) -> Option<super::AnyTask> {
        self.facts().build(name, probes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_knows_exactly_the_listed_kinds() {
        let err = toml::from_str::<TaskConfig>("kind = \"nope\"")
            .unwrap_err()
            .to_string();
        let mut known: Vec<&str> = err
            .rsplit("expected ")
            .next()
            .unwrap()
            .trim()
            .trim_start_matches("one of ")
            .split(", ")
            .flat_map(|k| k.split(" or "))
            .map(|k| k.trim().trim_matches('`'))
            .collect();
        // The test-only kind is compiled into unit tests alone.
        known.retain(|k| *k != "scratch");
        assert_eq!(known, TaskConfig::KINDS, "{err}");
    }

    #[test]
    fn every_kind_has_an_example_block() {
        let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/agent.toml.example"));
        for kind in TaskConfig::KINDS {
            assert!(
                text.contains(&format!("kind = \"{kind}\"")),
                "task kind {kind} has no block in agent.toml.example"
            );
        }
    }
}
