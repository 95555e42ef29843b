//! `kind = "restore_drill"`: proves that the newest backup of another task
//! restores. The plan picks the newest complete backup and fails when it
//! is older than `max_age` (the RPO check); the one batch restores it:
//! for a `postgres_backup` into a scratch database `upkeep_drill_TASK_RUN`
//! (`postgres.rs`), for a `config_backup` into a temporary directory
//! under the data dir (`files.rs`). Validation passes on the batch's
//! result, whose figures (restore seconds: the measured RTO; backup age:
//! the RPO; tables, rows or files) the ledger keeps and the status page
//! shows. A drill changes nothing it keeps: nothing to roll back.

mod files;
mod postgres;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::config::{Probes, TaskConfig, TaskKind, Tasks};
use super::{AnyTask, Backup, Batch, Cx, Plan, Task, TaskError, Verdict};

pub use postgres::drop_leftovers;

crate::task_config! {
    /// `[maintenance.NAME] kind = "restore_drill"`.
    pub struct DrillConfig {
        /// The `postgres_backup` or `config_backup` task whose newest backup is restored.
        pub backup: String,
        /// The newest backup must be younger than this, else the drill fails
        /// (the RPO check); unset: any age.
        #[serde(default, with = "humantime_serde")]
        pub max_age: Option<Duration>,
        /// SQL queries run in the restored database, each with the value its
        /// first column must have in its first row (postgres_backup only).
        #[serde(default)]
        pub checks: Vec<Check>,
        /// Compare each table's row count with the live database's
        /// (postgres_backup only).
        #[serde(default = "yes")]
        pub compare_counts: bool,
        /// How far a restored count may differ from the live one, as a
        /// fraction of the larger (the live database moved on since the dump).
        #[serde(default = "default_tolerance")]
        pub tolerance: f64,
        /// Server for the scratch database (libpq string with a `dbname` to
        /// connect to, such as `postgres`); unset: the backup's server.
        #[serde(default)]
        pub conninfo: Option<String>,
        /// Role that creates (needs CREATEDB) and drops the scratch database;
        /// unset: the backup probe's user.
        #[serde(default)]
        pub user: Option<String>,
        /// Password file for `user` / `conninfo`; unset: the backup probe's.
        #[serde(default)]
        pub password_file: Option<PathBuf>,
        /// Parallel pg_restore workers.
        #[serde(default = "one")]
        pub jobs: u32,
    }
}

/// One check: `sql` run in the restored database, `expect` the value of
/// its first column in its first row.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub sql: String,
    pub expect: Value,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

fn default_tolerance() -> f64 {
    0.05
}

impl DrillConfig {
    fn own_problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(0.0..=1.0).contains(&self.tolerance) {
            out.push((
                "tolerance",
                "must be a fraction from 0 to 1 (0.05 is 5 %)".into(),
            ));
        }
        if !(1..=64).contains(&self.jobs) {
            out.push(("jobs", "must be 1 to 64".into()));
        }
        if self
            .password_file
            .as_deref()
            .is_some_and(|p| !p.is_absolute())
        {
            out.push(("password_file", "must be an absolute path".into()));
        }
        for c in &self.checks {
            if c.sql.trim().is_empty() {
                out.push(("checks", "a check's sql is empty".into()));
            }
            if !matches!(
                c.expect,
                Value::Bool(_) | Value::Number(_) | Value::String(_)
            ) {
                out.push((
                    "checks",
                    format!(
                        "expect of `{}` must be a boolean, a number or a string",
                        c.sql
                    ),
                ));
            }
        }
        out
    }
}

impl TaskKind for DrillConfig {
    fn probe(&self) -> Option<&str> {
        None
    }
    fn validate(&self, _probes: &Probes) -> Vec<(&'static str, String)> {
        self.own_problems()
    }
    fn validate_with_tasks(&self, _probes: &Probes, tasks: &Tasks) -> Vec<(&'static str, String)> {
        let mut out = self.own_problems();
        match tasks.get(&self.backup) {
            Some(TaskConfig::PostgresBackup(_)) => {}
            Some(TaskConfig::ConfigBackup(_)) => {
                if !self.checks.is_empty() || self.conninfo.is_some() || self.user.is_some() {
                    out.push((
                        "backup",
                        format!(
                            "`{}` is a config_backup: checks, conninfo and user apply to a postgres_backup only",
                            self.backup
                        ),
                    ));
                }
            }
            Some(other) => out.push((
                "backup",
                format!(
                    "`{}` is a {} task; a restore drill tests a postgres_backup or config_backup task",
                    self.backup,
                    other.kind()
                ),
            )),
            None => out.push((
                "backup",
                format!(
                    "no maintenance task `{}` is configured ([maintenance.{}])",
                    self.backup, self.backup
                ),
            )),
        }
        out
    }
    /// A drill is built with the task it tests (`build_with_tasks`).
    fn build(&self, _name: &str, _probes: &Probes) -> Option<AnyTask> {
        None
    }
    fn build_with_tasks(&self, name: &str, probes: &Probes, tasks: &Tasks) -> Option<AnyTask> {
        let target = match tasks.get(&self.backup)? {
            TaskConfig::PostgresBackup(b) => {
                let pg = super::config::postgres_probe(probes, &b.probe)?;
                Target::Postgres(Box::new(postgres::PgTarget::new(
                    name,
                    &self.backup,
                    self,
                    b,
                    pg,
                )))
            }
            TaskConfig::ConfigBackup(_) => Target::Files(files::FilesTarget::new(&self.backup)),
            _ => return None,
        };
        Some(Box::new(DrillTask {
            config: self.clone(),
            target,
            result: None,
        }))
    }
}

enum Target {
    Postgres(Box<postgres::PgTarget>),
    Files(files::FilesTarget),
}

/// What a drill found, the run's verdict figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillResult {
    /// The backup restored: its run and where it is.
    pub backup_run: i64,
    pub backup_path: String,
    /// Seconds from the backup's end to the drill's start: the RPO.
    pub backup_age_seconds: f64,
    /// Seconds the restore took (scratch database created and restored,
    /// or files written and hashed): the measured RTO.
    pub rto_seconds: f64,
    /// Tables restored (postgres) and their rows, or files restored.
    pub tables: u64,
    pub rows: u64,
    pub files: u64,
    /// Checks run, all passed.
    pub checks: u64,
    /// Tables whose counts were compared with the live database.
    pub counts_compared: u64,
    /// Where it was restored (removed at the end).
    pub scratch: String,
}

pub struct DrillTask {
    config: DrillConfig,
    target: Target,
    result: Option<DrillResult>,
}

/// Words for an age: "9 days", "5 hours", "40 s".
pub fn age_words(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} s"),
    }
}

/// The RPO check: `Err` names the backup's age and the limit.
pub fn check_age(age: Duration, max_age: Option<Duration>) -> Result<(), String> {
    match max_age {
        Some(max) if age > max => Err(format!(
            "newest backup is {} old (max_age {})",
            age_words(age),
            humantime::format_duration(max)
        )),
        _ => Ok(()),
    }
}

impl Task for DrillTask {
    async fn figures(&mut self) -> Result<Value, TaskError> {
        Ok(match &self.result {
            Some(r) => serde_json::to_value(r).expect("serializable"),
            None => json!({}),
        })
    }

    async fn plan(&mut self, cx: &Cx) -> Result<Plan, TaskError> {
        let max_age = self.config.max_age;
        match &mut self.target {
            Target::Postgres(t) => t.plan(cx, max_age).await,
            Target::Files(t) => t.plan(cx, max_age),
        }
    }

    fn backup_bytes(&self, _plan: &Plan) -> u64 {
        0
    }

    async fn backup(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Backup, TaskError> {
        Ok(Backup {
            location: String::new(),
            rows: 0,
            bytes: 0,
            details: json!({ "note": "a drill changes nothing it keeps: its scratch copy is removed at its end" }),
        })
    }

    async fn apply_batch(&mut self, cx: &Cx, plan: &Plan, _size: u64) -> Result<Batch, TaskError> {
        let r = match &mut self.target {
            Target::Postgres(t) => t.drill(cx, plan).await?,
            Target::Files(t) => t.drill(cx, plan).await?,
        };
        let what = if matches!(self.target, Target::Files(_)) {
            format!("{} files", r.files)
        } else {
            format!("{} tables, {} rows", r.tables, r.rows)
        };
        let detail = format!(
            "restored {what} in {:.1} s (RTO); backup of run {} was {} old (RPO); {} checks passed, {} counts compared; {} removed",
            r.rto_seconds,
            r.backup_run,
            age_words(Duration::from_secs_f64(r.backup_age_seconds.max(0.0))),
            r.checks,
            r.counts_compared,
            r.scratch
        );
        let rows = r.rows.max(r.files);
        self.result = Some(r);
        Ok(Batch {
            rows,
            archived: 0,
            detail,
            done: true,
        })
    }

    fn backup_state(&self) -> Option<Backup> {
        None
    }

    async fn validate(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Verdict, TaskError> {
        Ok(match &self.result {
            Some(r) => Verdict {
                ok: true,
                detail: format!(
                    "the backup of run {} restores: RTO {:.1} s, RPO {:.0} s",
                    r.backup_run, r.rto_seconds, r.backup_age_seconds
                ),
                figures: serde_json::to_value(r).expect("serializable"),
            },
            None => Verdict {
                ok: false,
                detail: "the drill did not run".into(),
                figures: json!({}),
            },
        })
    }

    async fn rollback(&mut self, _cx: &Cx, _backup: &Backup) -> Result<Verdict, TaskError> {
        Err(TaskError::failed(
            "a restore drill changes nothing it keeps: there is nothing to roll back",
        ))
    }

    fn reversible(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rpo_check_names_the_age_and_the_limit() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            check_age(9 * day, Some(7 * day)).unwrap_err(),
            "newest backup is 9 days old (max_age 7days)"
        );
        assert!(check_age(6 * day, Some(7 * day)).is_ok());
        assert!(check_age(90 * day, None).is_ok());
    }

    #[test]
    fn a_drill_must_name_a_backup_task() {
        let err = crate::config::Config::parse(
            "t.toml",
            "[maintenance.drill]\nkind = \"restore_drill\"\nbackup = \"nope\"\ntolerance = 2.0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("maintenance.drill.backup: no maintenance task `nope` is configured"),
            "{err}"
        );
        assert!(err.contains("maintenance.drill.tolerance"), "{err}");
    }
}
