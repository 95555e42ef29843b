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

/// `[maintenance.NAME]` with `kind = "..."`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskConfig {
    PostgresRetention(super::postgres_retention::RetentionConfig),
    PostgresAnalyze(super::postgres_analyze::AnalyzeConfig),
}

/// Alias: the table under `[maintenance]` is a task config.
pub type MaintenanceConfig = TaskConfig;

impl TaskConfig {
    /// Every kind's `kind = "..."` name (checked against serde in a test).
    pub const KINDS: &'static [&'static str] = &["postgres_retention", "postgres_analyze"];

    pub fn kind(&self) -> &'static str {
        match self {
            TaskConfig::PostgresRetention(_) => "postgres_retention",
            TaskConfig::PostgresAnalyze(_) => "postgres_analyze",
        }
    }

    pub fn common(&self) -> TaskCommon<'_> {
        match self {
            TaskConfig::PostgresRetention(c) => c.common(),
            TaskConfig::PostgresAnalyze(c) => c.common(),
        }
    }

    /// The probe whose connection settings the task uses.
    pub fn probe(&self) -> &str {
        match self {
            TaskConfig::PostgresRetention(c) => &c.probe,
            TaskConfig::PostgresAnalyze(c) => &c.probe,
        }
    }

    /// The probes that guard a run: `guard`, else the task's own probe.
    pub fn guards(&self) -> Vec<String> {
        match self.common().guard {
            Some(g) => g.to_vec(),
            None => vec![self.probe().to_string()],
        }
    }

    /// Units (rows, tables) per batch the run starts with.
    pub fn batch_size(&self) -> u64 {
        match self {
            TaskConfig::PostgresRetention(c) => c.batch_size,
            TaskConfig::PostgresAnalyze(_) => 1,
        }
    }

    /// Pause between batches the run starts with.
    pub fn pause(&self) -> Duration {
        match self {
            TaskConfig::PostgresRetention(c) => c.pause,
            TaskConfig::PostgresAnalyze(_) => Duration::ZERO,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.common().timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Problems of the kind's own fields, as (field, message).
    pub fn validate_kind(&self) -> Vec<(&'static str, String)> {
        match self {
            TaskConfig::PostgresRetention(c) => c.validate(),
            TaskConfig::PostgresAnalyze(c) => c.validate(),
        }
    }
}
