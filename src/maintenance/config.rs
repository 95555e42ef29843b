//! `[maintenance.NAME]` tables: `kind = "..."` picks the task kind
//! (`TaskConfig`, THE registry), and every kind carries the fields of
//! [`task_config!`] that the runner reads: when it may run (cron schedule,
//! window, days, time zone, or `window = "auto"`), which probes guard it,
//! and how long it may take.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::probes::{ProbeConfig, ProbeKind};

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
            /// This task's backups are pruned past this age; unset: `[maintenance] keep_backups`.
            #[serde(default, with = "humantime_serde")]
            pub keep_backups: Option<std::time::Duration>,
            /// Bytes this task's backups may take; unset: `[maintenance] max_backup_bytes`.
            #[serde(default)]
            pub max_backup_bytes: Option<u64>,
            /// How long one batch should take; the batch size follows the
            /// measured cost of a batch (a fixed part plus a part per
            /// unit). 1ms to 1s.
            #[serde(default, with = "humantime_serde")]
            pub batch_target: Option<std::time::Duration>,
            /// The most of wall time batches may take (0 < x <= 1); the
            /// pause follows from it.
            #[serde(default)]
            pub max_duty: Option<f64>,
            /// How often the guarded probes are checked between batches
            /// (each check costs the server a query, or a flushed commit
            /// with `write_check`); between checks batches go on at the
            /// pacing in force. 10ms to 1m.
            #[serde(default, with = "humantime_serde")]
            pub guard_every: Option<std::time::Duration>,
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
                    keep_backups: self.keep_backups,
                    max_backup_bytes: self.max_backup_bytes,
                    batch_target: self.batch_target,
                    max_duty: self.max_duty,
                    guard_every: self.guard_every,
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
    pub keep_backups: Option<Duration>,
    pub max_backup_bytes: Option<u64>,
    pub batch_target: Option<Duration>,
    pub max_duty: Option<f64>,
    pub guard_every: Option<Duration>,
}

/// Default longest run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Default `batch_target`: short enough that an application transaction
/// caught behind a batch waits a few milliseconds at most.
pub const DEFAULT_BATCH_TARGET: Duration = Duration::from_millis(5);
/// Default `max_duty`: batches take at most a fifth of wall time.
pub const DEFAULT_MAX_DUTY: f64 = 0.2;
/// Default `guard_every`: four checks a second. Checked before every
/// batch, a retention run's write checks (a flushed commit each, and a
/// read of `pg_stat_activity`) came tens of times a second and competed
/// with the application's commits; a quarter of a second still sees a
/// slowdown within a second (`pacing::MIN_TICKS` ticks).
pub const DEFAULT_GUARD_EVERY: Duration = Duration::from_millis(250);
/// The range of `guard_every`.
pub const GUARD_EVERY_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(60));
/// The range of `batch_target`: under 1ms a batch is mostly its fixed
/// costs; over 1s it is the long transaction batching exists to avoid.
pub const BATCH_TARGET_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(1));

impl TaskCommon<'_> {
    /// Problems of `batch_target`, `guard_every` and `max_duty`, as (field,
    /// message).
    pub fn validate_pacing(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let checks = [
            (
                "batch_target",
                self.batch_target,
                BATCH_TARGET_RANGE,
                "1ms to 1s",
            ),
            (
                "guard_every",
                self.guard_every,
                GUARD_EVERY_RANGE,
                "10ms to 1m",
            ),
        ];
        for (field, value, (lo, hi), bounds) in checks {
            if let Some(t) = value
                && !(lo..=hi).contains(&t)
            {
                out.push((
                    field,
                    format!(
                        "{} is out of range: must be from {bounds}",
                        humantime::format_duration(t)
                    ),
                ));
            }
        }
        if let Some(d) = self.max_duty
            && !(d > 0.0 && d <= 1.0)
        {
            out.push((
                "max_duty",
                format!("{d} is out of range: must be greater than 0 and at most 1"),
            ));
        }
        out
    }
}

/// The probe configs a task may refer to, by name.
pub type Probes = BTreeMap<String, ProbeConfig>;

/// The task configs a task may refer to, by name.
pub type Tasks = BTreeMap<String, TaskConfig>;

/// What every task kind's config says about itself beyond its name (the
/// registry below) and its runner fields ([`task_config!`]). Each kind
/// implements it next to its config struct; [`TaskConfig`] dispatches with
/// an exhaustive match, so a kind that lacks a fact does not compile.
pub trait TaskKind {
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
    /// `validate` for a kind that refers to another task (a restore drill
    /// names the backup task it tests); the default is `validate`.
    fn validate_with_tasks(&self, probes: &Probes, _tasks: &Tasks) -> Vec<(&'static str, String)> {
        self.validate(probes)
    }
    /// `build` for a kind that refers to another task; the default is `build`.
    fn build_with_tasks(
        &self,
        name: &str,
        probes: &Probes,
        _tasks: &Tasks,
    ) -> Option<super::AnyTask> {
        self.build(name, probes)
    }
    /// Units (rows, keys, files) per batch the run starts with.
    fn batch_size(&self) -> u64 {
        1
    }
    /// Pause between batches the run starts with.
    fn pause(&self) -> Duration {
        Duration::ZERO
    }
    /// `disk_pressure`: the used ratio past which the task also runs
    /// outside its schedule and window, and the directories whose
    /// filesystems are watched. `None`: the kind has no such trigger, or
    /// it is not set.
    fn disk_pressure(&self) -> Option<(f64, Vec<std::path::PathBuf>)> {
        None
    }
    /// The task after whose successful run this one starts (`after`).
    fn after(&self) -> Option<&str> {
        None
    }
}

/// The check of a kind that needs a probe of one kind: the message says
/// which probe is missing or of the wrong kind.
pub fn need_probe<'a>(
    probes: &'a Probes,
    name: &str,
    probe_kind: ProbeKind,
    task_kind: &str,
) -> Result<&'a ProbeConfig, String> {
    match probes.get(name) {
        Some(p) if p.probe_kind() == probe_kind => Ok(p),
        Some(other) => Err(format!(
            "`{name}` is a {} probe; a {task_kind} task needs a {} probe",
            other.kind(),
            probe_kind.name()
        )),
        None => Err(format!("no probe `{name}` is configured ([probe.{name}])")),
    }
}

/// A kind's own problems plus, when its `probe` is missing or of another
/// kind than `probe_kind`, that one on the `probe` field.
pub fn with_probe_check(
    mut own: Vec<(&'static str, String)>,
    probes: &Probes,
    name: &str,
    probe_kind: ProbeKind,
    task_kind: &str,
) -> Vec<(&'static str, String)> {
    if let Err(e) = need_probe(probes, name, probe_kind, task_kind) {
        own.push(("probe", e));
    }
    own
}

/// The postgres probe `name`, whose connection settings a task uses.
pub fn postgres_probe<'a>(
    probes: &'a Probes,
    name: &str,
) -> Option<&'a crate::probes::postgres::PostgresConfig> {
    match probes.get(name)? {
        ProbeConfig::Postgres(pg) => Some(pg),
        _ => None,
    }
}

/// The redis probe `name`, whose connection settings a task uses.
pub fn redis_probe<'a>(
    probes: &'a Probes,
    name: &str,
) -> Option<&'a crate::probes::redis::RedisConfig> {
    match probes.get(name)? {
        ProbeConfig::Redis(r) => Some(r),
        _ => None,
    }
}

/// Declares THE registry of task kinds from one list: the `TaskConfig`
/// enum (`[maintenance.NAME]` with `kind = "..."`), `TaskConfig::KINDS`
/// and the dispatch to each kind's [`TaskKind`] facts. Kinds under
/// `test_only` exist in unit tests alone.
macro_rules! task_kinds {
    (
        kinds { $($v:ident = $name:literal => $ty:ty,)* }
        test_only { $($tv:ident = $tname:literal => $tty:ty,)* }
    ) => {
        /// `[maintenance.NAME]` with `kind = "..."`: one variant per kind.
        #[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
        #[serde(tag = "kind")]
        pub enum TaskConfig {
            $(#[serde(rename = $name)] $v($ty),)*
            $(#[cfg(test)] #[serde(rename = $tname)] $tv($tty),)*
        }

        impl TaskConfig {
            /// Every kind's `kind = "..."` name (checked against serde and
            /// `agent.toml.example` in tests).
            pub const KINDS: &'static [&'static str] = &[$($name,)*];

            /// Reads the table of kind `kind` with its `kind` key taken
            /// out, straight into that kind's struct, so that errors keep
            /// their place in the file (see `ProbeConfig::deserialize_kind`).
            /// `None`: no such kind.
            pub fn deserialize_kind<'de, D: serde::Deserializer<'de>>(
                kind: &str,
                d: D,
            ) -> Option<Result<TaskConfig, D::Error>> {
                match kind {
                    $($name => Some(<$ty as Deserialize>::deserialize(d).map(TaskConfig::$v)),)*
                    $(#[cfg(test)] $tname => Some(<$tty as Deserialize>::deserialize(d).map(TaskConfig::$tv)),)*
                    _ => None,
                }
            }

            pub fn kind(&self) -> &'static str {
                match self {
                    $(TaskConfig::$v(_) => $name,)*
                    $(#[cfg(test)] TaskConfig::$tv(_) => $tname,)*
                }
            }

            pub fn common(&self) -> TaskCommon<'_> {
                match self {
                    $(TaskConfig::$v(c) => c.common(),)*
                    $(#[cfg(test)] TaskConfig::$tv(c) => c.common(),)*
                }
            }

            fn facts(&self) -> &dyn TaskKind {
                match self {
                    $(TaskConfig::$v(c) => c,)*
                    $(#[cfg(test)] TaskConfig::$tv(c) => c,)*
                }
            }
        }
    };
}

task_kinds! {
    kinds {
        PostgresRetention = "postgres_retention" => super::postgres_retention::RetentionConfig,
        PostgresAnalyze = "postgres_analyze" => super::postgres_analyze::AnalyzeConfig,
        FileCleanup = "file_cleanup" => super::file_cleanup::FileCleanupConfig,
        LogRotate = "log_rotate" => super::log_rotate::LogRotateConfig,
        RedisCleanup = "redis_cleanup" => super::redis_cleanup::CleanupConfig,
        CacheWarmup = "cache_warmup" => super::cache_warmup::WarmupConfig,
        ConfigBackup = "config_backup" => super::config_backup::ConfigBackupConfig,
        PostgresBackup = "postgres_backup" => super::postgres_backup::PgBackupConfig,
        RestoreDrill = "restore_drill" => super::restore_drill::DrillConfig,
    }
    test_only {
        Scratch = "scratch" => super::scratch::ScratchConfig,
    }
}

/// Alias: the table under `[maintenance]` is a task config.
pub type MaintenanceConfig = TaskConfig;

impl TaskConfig {
    /// The probe whose connection settings the task uses, if its kind needs one.
    pub fn probe(&self) -> Option<&str> {
        self.facts().probe()
    }

    /// The probes that guard a run: the task's own probe, if its kind has
    /// one, plus those `guard` names; none at all leaves the window alone
    /// to gate the run.
    pub fn guards(&self) -> Vec<String> {
        let mut out: Vec<String> = self.probe().map(str::to_string).into_iter().collect();
        for g in self.common().guard.unwrap_or_default() {
            if !out.contains(g) {
                out.push(g.clone());
            }
        }
        out
    }

    /// Units (rows, tables) per batch the run starts with.
    pub fn batch_size(&self) -> u64 {
        self.facts().batch_size()
    }

    /// Pause between batches the run starts with.
    pub fn pause(&self) -> Duration {
        self.facts().pause()
    }

    /// What the run's pacing starts from: the kind's batch size (the
    /// most) and pause (the least), the task's target and duty budget.
    pub fn pacing(&self) -> crate::maintenance::runner::pacing::Settings {
        let c = self.common();
        crate::maintenance::runner::pacing::Settings {
            max_size: self.batch_size(),
            min_pause: self.pause(),
            batch_target: c.batch_target.unwrap_or(DEFAULT_BATCH_TARGET),
            max_duty: c.max_duty.unwrap_or(DEFAULT_MAX_DUTY),
        }
    }

    /// The `disk_pressure` trigger: ratio and watched directories.
    pub fn disk_pressure(&self) -> Option<(f64, Vec<std::path::PathBuf>)> {
        self.facts().disk_pressure()
    }

    pub fn timeout(&self) -> Duration {
        self.common().timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// How often the guarded probes are checked between batches.
    pub fn guard_every(&self) -> Duration {
        self.common().guard_every.unwrap_or(DEFAULT_GUARD_EVERY)
    }

    /// The task after whose successful run this one starts.
    pub fn after(&self) -> Option<&str> {
        self.facts().after()
    }

    /// Problems of the kind's own fields and needs, as (field, message).
    pub fn validate_kind(&self, probes: &Probes, tasks: &Tasks) -> Vec<(&'static str, String)> {
        self.facts().validate_with_tasks(probes, tasks)
    }

    /// Builds the task `name`; `None` when its probe (or the task it
    /// refers to) is missing.
    pub fn build(&self, name: &str, probes: &Probes, tasks: &Tasks) -> Option<super::AnyTask> {
        self.facts().build_with_tasks(name, probes, tasks)
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
    fn the_task_s_own_probe_always_guards_and_guard_adds_to_it() {
        let task = |extra: &str| {
            toml::from_str::<TaskConfig>(&format!(
                "kind = \"redis_cleanup\"\nprobe = \"cache\"\nmatch = \"tmp:*\"\n{extra}"
            ))
            .unwrap()
        };
        assert_eq!(task("").guards(), ["cache"]);
        assert_eq!(
            task("guard = [\"api\", \"cache\", \"db\"]").guards(),
            ["cache", "api", "db"]
        );
        assert_eq!(task("guard = []").guards(), ["cache"]);
        let files = toml::from_str::<TaskConfig>(
            "kind = \"file_cleanup\"\npaths = [\"/srv/tmp\"]\nolder_than = \"7d\"\n",
        )
        .unwrap();
        assert_eq!(files.guards(), Vec::<String>::new());
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

/// Default of `[maintenance] keep_backups`.
pub const DEFAULT_KEEP_BACKUPS: Duration = Duration::from_secs(30 * 86_400);
/// Default of `[maintenance] max_backup_bytes`: 4 GiB.
pub const DEFAULT_MAX_BACKUP_BYTES: u64 = 4 << 30;

/// The `[maintenance]` table: the backup budget beside the
/// `[maintenance.NAME]` task tables. Reads as the map of tasks (`get`,
/// `keys`, `iter`), so that the task names stay keys of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceSection {
    /// Backups of runs older than this are pruned (a task may set its own).
    pub keep_backups: Duration,
    /// Bytes all tasks' backups may take together; the oldest are pruned
    /// past it (a task may set a budget of its own too).
    pub max_backup_bytes: u64,
    pub tasks: BTreeMap<String, TaskConfig>,
}

/// Keys of `[maintenance]` that are settings, not task names.
pub const SECTION_SETTINGS: &[&str] = &["keep_backups", "max_backup_bytes"];

impl Default for MaintenanceSection {
    fn default() -> Self {
        MaintenanceSection {
            keep_backups: DEFAULT_KEEP_BACKUPS,
            max_backup_bytes: DEFAULT_MAX_BACKUP_BYTES,
            tasks: BTreeMap::new(),
        }
    }
}

impl std::ops::Deref for MaintenanceSection {
    type Target = BTreeMap<String, TaskConfig>;
    fn deref(&self) -> &Self::Target {
        &self.tasks
    }
}

impl<'a> IntoIterator for &'a MaintenanceSection {
    type Item = (&'a String, &'a TaskConfig);
    type IntoIter = std::collections::btree_map::Iter<'a, String, TaskConfig>;
    fn into_iter(self) -> Self::IntoIter {
        self.tasks.iter()
    }
}

impl MaintenanceSection {
    /// How long backups of task `name` are kept.
    pub fn keep_backups_of(&self, name: &str) -> Duration {
        self.tasks
            .get(name)
            .and_then(|t| t.common().keep_backups)
            .unwrap_or(self.keep_backups)
    }

    /// The bytes task `name`'s backups may take (never more than the total).
    pub fn max_backup_bytes_of(&self, name: &str) -> u64 {
        self.tasks
            .get(name)
            .and_then(|t| t.common().max_backup_bytes)
            .unwrap_or(self.max_backup_bytes)
            .min(self.max_backup_bytes)
    }
}

/// Shortest `keep_backups`: a rollback needs its backup for longer than
/// the run takes to be noticed.
const MIN_KEEP_BACKUPS: Duration = Duration::from_secs(3600);
/// Smallest `max_backup_bytes`.
const MIN_BACKUP_BYTES: u64 = 1 << 20;

impl MaintenanceSection {
    /// Problems of the backup budget, the section's and each task's, as
    /// (key path, message).
    pub fn validate_budget(&self) -> Vec<(Vec<String>, String)> {
        let mut out = Vec::new();
        let mut check = |path: Vec<String>, keep: Option<Duration>, max: Option<u64>| {
            if keep.is_some_and(|k| k < MIN_KEEP_BACKUPS) {
                let mut p = path.clone();
                p.push("keep_backups".into());
                out.push((p, "must be at least 1h".into()));
            }
            if max.is_some_and(|m| m < MIN_BACKUP_BYTES) {
                let mut p = path;
                p.push("max_backup_bytes".into());
                out.push((p, "must be at least 1 MiB (1048576)".into()));
            }
        };
        let root = vec!["maintenance".to_string()];
        check(
            root.clone(),
            Some(self.keep_backups),
            Some(self.max_backup_bytes),
        );
        for (name, t) in &self.tasks {
            let c = t.common();
            let mut path = root.clone();
            path.push(name.clone());
            check(path, c.keep_backups, c.max_backup_bytes);
        }
        out
    }
}

impl Serialize for MaintenanceSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2 + self.tasks.len()))?;
        m.serialize_entry(
            "keep_backups",
            &humantime::format_duration(self.keep_backups).to_string(),
        )?;
        m.serialize_entry("max_backup_bytes", &self.max_backup_bytes)?;
        for (name, task) in &self.tasks {
            m.serialize_entry(name, task)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for MaintenanceSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Section;
        impl<'de> serde::de::Visitor<'de> for Section {
            type Value = MaintenanceSection;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the backup budget and [maintenance.NAME] task tables")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<MaintenanceSection, A::Error> {
                let mut out = MaintenanceSection::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "keep_backups" => {
                            out.keep_backups = map
                                .next_value::<humantime_serde::Serde<Duration>>()?
                                .into_inner()
                        }
                        "max_backup_bytes" => out.max_backup_bytes = map.next_value()?,
                        _ => {
                            let task = map.next_value::<TaskConfig>()?;
                            out.tasks.insert(key, task);
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Section)
    }
}
