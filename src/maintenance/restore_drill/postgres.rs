//! The drill of a `postgres_backup`: the newest complete dump, held in
//! use from the plan to the drill's end (`backup_files::hold`: a backup
//! run pruning past `keep` leaves it for its next run), its sha256
//! checked against its `dump.json` (a mismatch fails before anything is
//! restored), a scratch database `upkeep_drill_TASK_RUN` created on the
//! backup's server (or the drill's own `conninfo`/`user`), `pg_restore
//! --exit-on-error` into it, the checks and the row counts, then the
//! scratch database dropped whatever happened (failure, cancellation on
//! SIGTERM or an unhealthy guard). Scratch databases a killed drill left
//! behind are dropped by the task's next run and at the agent's start
//! ([`drop_leftovers`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{DrillConfig, DrillResult, check_age};
use crate::clients::postgres::priority::Priority;
use crate::clients::postgres::tools::{self, Ended};
use crate::clients::postgres::{Session, millis, quote};
use crate::maintenance::backup_files::InUse;
use crate::maintenance::config::TaskConfig;
use crate::maintenance::dumps::{self, DumpMeta};
use crate::maintenance::postgres_backup::PgBackupConfig;
use crate::maintenance::{Cx, Plan, TaskError};
use crate::probes::postgres::PostgresConfig;
use crate::sample::now_ms;

/// Longest statement of the drill's sessions (a count of a big table).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(1800);
/// Characters of the task's name kept in a scratch database's name (an
/// identifier has at most 63 bytes).
const NAME_CHARS: usize = 40;

pub struct PgTarget {
    name: String,
    backup_name: String,
    config: DrillConfig,
    backup: PgBackupConfig,
    /// The live database (the backup's probe).
    live: PostgresConfig,
    /// Where the scratch database is made: the live server, or the
    /// drill's own conninfo / user.
    admin: PostgresConfig,
    /// The dump the plan chose, held in use from the plan to the drill's
    /// end so that no pruning removes it while it is read.
    held: Option<(PathBuf, InUse)>,
}

/// What the plan chose.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Chosen {
    dir: PathBuf,
    meta: DumpMeta,
    age_seconds: f64,
    scratch: String,
}

/// The scratch database's name of run `run_id` of drill `task`.
pub fn scratch_name(task: &str, run_id: i64) -> String {
    let t: String = task.chars().take(NAME_CHARS).collect();
    format!("upkeep_drill_{t}_{run_id}")
}

/// A regular expression matching the scratch databases of drill `task`
/// (task names are `[a-z0-9_-]`: nothing in them is special).
fn scratch_pattern(task: &str) -> String {
    let t: String = task.chars().take(NAME_CHARS).collect();
    format!("^upkeep_drill_{t}_[0-9]+$")
}

/// The connection settings the drill administers its scratch database
/// with.
fn admin_settings(config: &DrillConfig, live: &PostgresConfig) -> PostgresConfig {
    let mut a = live.clone();
    if let Some(c) = &config.conninfo {
        a.conninfo = c.clone();
        a.dbname = None;
    }
    if let Some(u) = &config.user {
        a.user = u.clone();
    }
    if config.password_file.is_some() {
        a.password_file = config.password_file.clone();
    }
    a
}

impl PgTarget {
    pub fn new(
        name: &str,
        backup_name: &str,
        config: &DrillConfig,
        backup: &PgBackupConfig,
        live: &PostgresConfig,
    ) -> PgTarget {
        PgTarget {
            name: name.to_string(),
            backup_name: backup_name.to_string(),
            config: config.clone(),
            backup: backup.clone(),
            live: live.clone(),
            admin: admin_settings(config, live),
            held: None,
        }
    }

    pub async fn plan(&mut self, cx: &Cx, max_age: Option<Duration>) -> Result<Plan, TaskError> {
        let dest = dumps::dest(self.backup.dest.as_deref(), &cx.data_dir, &self.backup_name);
        let d = dest.clone();
        // Held until the drill ends: a backup run pruning past `keep`
        // meanwhile leaves this dump alone.
        self.held = None;
        let (dir, meta, held) = tokio::task::spawn_blocking(move || dumps::hold_newest(&d))
            .await
            .expect("listing dumps panicked")
            .map_err(|e| TaskError::failed(format!("{}: {e}", dest.display())))?
            .ok_or_else(|| {
                TaskError::failed(format!(
                    "no complete backup of `{}` in {} yet",
                    self.backup_name,
                    dest.display()
                ))
            })?;
        self.held = Some((dir.clone(), held));
        let age = Duration::from_millis((now_ms() - meta.finished_ms).max(0) as u64);
        check_age(age, max_age).map_err(TaskError::failed)?;
        let chosen = Chosen {
            dir: dir.clone(),
            meta: meta.clone(),
            age_seconds: age.as_secs_f64(),
            scratch: scratch_name(&cx.name, cx.run_id),
        };
        Ok(Plan {
            summary: format!(
                "restore the dump of run {} of `{}` ({}, {} old) into scratch database {}, check it, drop it",
                meta.run_id,
                self.backup_name,
                crate::fmt::bytes(meta.bytes as f64),
                super::age_words(age),
                chosen.scratch
            ),
            rows: 0,
            bytes: meta.bytes,
            details: serde_json::to_value(&chosen).expect("serializable"),
        })
    }

    async fn session(
        &self,
        pg: &PostgresConfig,
        dbname: Option<&str>,
    ) -> Result<Session, TaskError> {
        let mut pg = pg.clone();
        if let Some(db) = dbname {
            pg.conninfo = strip_dbname(&pg.conninfo);
            pg.dbname = Some(db.to_string());
        }
        Ok(Session::open(
            &pg.connection(),
            &self.name,
            &[("statement_timeout", millis(STATEMENT_TIMEOUT))],
            STATEMENT_TIMEOUT,
        )
        .await?)
    }

    /// The drill: restore, check, count, and the scratch database dropped
    /// in every case.
    pub async fn drill(&mut self, cx: &Cx, plan: &Plan) -> Result<DrillResult, TaskError> {
        let chosen: Chosen = serde_json::from_value(plan.details.clone())
            .map_err(|e| TaskError::failed(format!("the plan's details: {e}")))?;
        let held = self.held.take();
        if held.as_ref().is_none_or(|(dir, _)| *dir != chosen.dir) {
            return Err(TaskError::failed(format!(
                "the dump of run {} is not held in use by this drill's plan; not restored",
                chosen.meta.run_id
            )));
        }
        let out = self.drill_held(cx, &chosen).await;
        drop(held);
        out
    }

    async fn drill_held(&mut self, cx: &Cx, chosen: &Chosen) -> Result<DrillResult, TaskError> {
        let chosen = chosen.clone();
        let file = chosen.dir.join(&chosen.meta.file);
        let f = file.clone();
        let sha = tokio::task::spawn_blocking(move || dumps::sha256(&f))
            .await
            .expect("hashing panicked")
            .map_err(|e| TaskError::failed(format!("{}: {e}", file.display())))?;
        if sha != chosen.meta.sha256 {
            return Err(TaskError::failed(format!(
                "checksum mismatch: {} has sha256 {sha}, its dump.json says {}; not restored",
                file.display(),
                chosen.meta.sha256
            )));
        }
        let admin = self.session(&self.admin, None).await?;
        drop_matching(&admin, &cx.name).await?;
        let t = Instant::now();
        let create = format!("CREATE DATABASE {}", quote(&chosen.scratch));
        admin
            .timed(admin.client.batch_execute(&create))
            .await
            .map_err(|e| TaskError::failed(format!("creating {}: {e}", chosen.scratch)))?;
        // Cancelled (SIGTERM, an unhealthy guard): pg_restore is killed
        // and the sessions closed as the future is dropped, then the
        // scratch database goes like after any other end.
        let out = tokio::select! {
            r = self.restore_and_check(cx, &chosen, &file, t) => r,
            _ = cx.cancel.cancelled() => Err(TaskError::failed(
                "the drill was cancelled; pg_restore and the checks are stopped",
            )),
        };
        let dropped = drop_database(&admin, &chosen.scratch).await;
        let mut r = out?;
        dropped.map_err(|e| {
            TaskError::failed(format!(
                "the drill passed but dropping {} failed: {e}",
                chosen.scratch
            ))
        })?;
        r.backup_age_seconds = chosen.age_seconds;
        Ok(r)
    }

    async fn restore_and_check(
        &self,
        cx: &Cx,
        chosen: &Chosen,
        file: &Path,
        t: Instant,
    ) -> Result<DrillResult, TaskError> {
        let pg_restore = self.pg_restore().await?;
        let pass =
            tools::task_passfile(&cx.data_dir, &cx.name, self.admin.password_file.as_deref())
                .map_err(TaskError::failed)?;
        let conninfo = tools::conninfo(
            &PostgresConfig {
                conninfo: strip_dbname(&self.admin.conninfo),
                ..self.admin.clone()
            }
            .connection(),
            Some(&chosen.scratch),
            &format!("upkeep maintenance {}", self.name),
        )
        .map_err(TaskError::failed)?;
        let mut args = vec![
            "--exit-on-error".to_string(),
            "--no-owner".to_string(),
            "--no-privileges".to_string(),
            "--no-password".to_string(),
            format!("--dbname={conninfo}"),
        ];
        if self.config.jobs > 1 {
            args.push(format!("--jobs={}", self.config.jobs));
        }
        args.push(file.display().to_string());
        let ended = tools::run(
            &pg_restore,
            &args,
            pass.as_ref().map(|p| p.path()),
            Priority::SAME,
            &cx.cancel,
        )
        .await
        .map_err(TaskError::failed)?;
        drop(pass);
        match ended {
            Ended::Ok => {}
            Ended::Cancelled => {
                return Err(TaskError::failed(
                    "pg_restore killed: the drill was cancelled",
                ));
            }
            Ended::Failed(why) => return Err(TaskError::failed(why)),
        }
        let rto = t.elapsed().as_secs_f64();
        let scratch = self.session(&self.admin, Some(&chosen.scratch)).await?;
        for (i, c) in self.config.checks.iter().enumerate() {
            let got = check_value(&scratch, &c.sql)
                .await
                .map_err(|e| TaskError::failed(format!("check {} (`{}`): {e}", i + 1, c.sql)))?;
            if !same(&got, &c.expect) {
                return Err(TaskError::failed(format!(
                    "check {} (`{}`): expected {}, got {got}",
                    i + 1,
                    c.sql,
                    c.expect
                )));
            }
        }
        let restored = counts(&scratch).await?;
        let mut compared = 0;
        if self.config.compare_counts {
            let live = self.session(&self.live, None).await?;
            let mut off = Vec::new();
            for (table, n) in &restored {
                let now = count(&live, table).await?;
                compared += 1;
                let (a, b) = (*n as f64, now as f64);
                if (a - b).abs() > self.config.tolerance * a.max(b) {
                    off.push(format!("{table}: {n} rows restored, {now} live"));
                }
            }
            if !off.is_empty() {
                return Err(TaskError::failed(format!(
                    "row counts differ beyond the tolerance of {} %: {}",
                    self.config.tolerance * 100.0,
                    off.join("; ")
                )));
            }
        }
        Ok(DrillResult {
            backup_run: chosen.meta.run_id,
            backup_path: file.display().to_string(),
            backup_age_seconds: chosen.age_seconds,
            rto_seconds: rto,
            tables: restored.len() as u64,
            rows: restored.iter().map(|(_, n)| *n).sum(),
            files: 0,
            checks: self.config.checks.len() as u64,
            counts_compared: compared,
            scratch: chosen.scratch.clone(),
        })
    }

    /// The pg_restore for the scratch server: the backup's pg_dump's
    /// sibling when it is set, else found for the scratch server's version.
    async fn pg_restore(&self) -> Result<PathBuf, TaskError> {
        let s = self.session(&self.admin, None).await?;
        let row = s
            .timed(
                s.client
                    .query_one("SELECT current_setting('server_version_num')::int", &[]),
            )
            .await
            .map_err(|e| TaskError::failed(format!("reading the server's version: {e}")))?;
        let major = tools::server_major(row.get::<_, i32>(0));
        let configured = self.backup.pg_dump.clone();
        tokio::task::spawn_blocking(move || {
            let dump = tools::find(configured.as_deref(), "pg_dump", major)?;
            tools::sibling(&dump.path, "pg_restore")
        })
        .await
        .expect("finding pg_restore panicked")
        .map_err(|message| TaskError::Config {
            field: "backup",
            message,
        })
    }
}

/// `conninfo` without a `dbname` (the scratch database replaces it).
fn strip_dbname(conninfo: &str) -> String {
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        return match url::Url::parse(conninfo) {
            Ok(mut u) => {
                u.set_path("");
                u.to_string()
            }
            Err(_) => conninfo.to_string(),
        };
    }
    conninfo
        .split_whitespace()
        .filter(|kv| !kv.starts_with("dbname="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first column of the first row of `sql`, as JSON.
async fn check_value(s: &Session, sql: &str) -> Result<Value, String> {
    let wrapped = format!("SELECT (to_jsonb(q))::text FROM ({sql}) AS q LIMIT 1");
    let rows = s.timed(s.client.query(&wrapped, &[])).await?;
    let Some(row) = rows.first() else {
        return Ok(Value::Null);
    };
    let text: String = row.get(0);
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(match v {
        Value::Object(m) => m.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null),
        other => other,
    })
}

/// Whether a check's value is the expected one (numbers compared as
/// numbers: a count is 3 whether it comes back as 3 or 3.0).
fn same(got: &Value, expect: &Value) -> bool {
    match (got, expect) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// Every user table with rows (`schema.table`, quoted) and its exact count.
async fn counts(s: &Session) -> Result<Vec<(String, u64)>, TaskError> {
    let rows = s
        .timed(s.client.query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1, 2",
            &[],
        ))
        .await
        .map_err(|e| TaskError::failed(format!("listing the restored tables: {e}")))?;
    let mut out = Vec::new();
    for r in rows {
        let table = format!("{}.{}", quote(r.get(0)), quote(r.get(1)));
        let n = count(s, &table).await?;
        out.push((table, n));
    }
    Ok(out)
}

async fn count(s: &Session, table: &str) -> Result<u64, TaskError> {
    let row = s
        .timed(
            s.client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[]),
        )
        .await
        .map_err(|e| TaskError::failed(format!("counting {table}: {e}")))?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

async fn drop_database(s: &Session, name: &str) -> Result<(), String> {
    s.timed(s.client.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote(name)
    )))
    .await
}

/// Drops every scratch database of drill `task` on the server of `s`:
/// the caller holds the task's lock, so no drill of it is running.
async fn drop_matching(s: &Session, task: &str) -> Result<Vec<String>, TaskError> {
    let rows = s
        .timed(s.client.query(
            "SELECT datname::text FROM pg_database WHERE datname ~ $1",
            &[&scratch_pattern(task)],
        ))
        .await
        .map_err(|e| TaskError::failed(format!("listing scratch databases: {e}")))?;
    let mut dropped = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        drop_database(s, &name)
            .await
            .map_err(|e| TaskError::failed(format!("dropping the leftover {name}: {e}")))?;
        tracing::warn!(
            task,
            "dropped scratch database {name}, left by an interrupted drill"
        );
        dropped.push(name);
    }
    Ok(dropped)
}

/// At the agent's start: for each restore drill of a postgres_backup whose
/// lock is free (no drill of it running in any process), drops the scratch
/// databases an interrupted drill left. Returns the ones dropped; a
/// server that cannot be reached is logged and left for the drill's next
/// run, which drops them too.
pub async fn drop_leftovers(config: &crate::config::Config, data_dir: &Path) -> Vec<String> {
    let mut dropped = Vec::new();
    for (name, task) in &config.maintenance {
        let TaskConfig::RestoreDrill(d) = task else {
            continue;
        };
        let Some(TaskConfig::PostgresBackup(b)) = config.maintenance.get(&d.backup) else {
            continue;
        };
        let Some(live) = crate::maintenance::config::postgres_probe(&config.probe, &b.probe) else {
            continue;
        };
        let Ok(lock) = crate::maintenance::lock::TaskLock::try_take(
            data_dir,
            name,
            crate::maintenance::ledger::Trigger::Schedule,
        ) else {
            continue;
        };
        let target = PgTarget::new(name, &d.backup, d, b, live);
        let result = async {
            let s = target.session(&target.admin, None).await?;
            drop_matching(&s, name).await
        }
        .await;
        drop(lock);
        match result {
            Ok(names) => dropped.extend(names),
            Err(e) => tracing::warn!(task = %name, "scratch databases not checked: {e}"),
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scratch_names_fit_an_identifier_and_match_their_pattern() {
        let long = "a".repeat(64);
        let n = scratch_name(&long, 1234567);
        assert!(n.len() <= 63, "{n}");
        let re = scratch_pattern(&long);
        assert!(re.starts_with("^upkeep_drill_aaaa"));
        assert_eq!(
            scratch_name("nightly-drill", 7),
            "upkeep_drill_nightly-drill_7"
        );
    }

    #[test]
    fn dbname_is_stripped_from_both_forms() {
        assert_eq!(strip_dbname("host=h dbname=shop port=1"), "host=h port=1");
        assert_eq!(strip_dbname("postgres://h:5432/shop"), "postgres://h:5432");
    }

    #[test]
    fn numbers_compare_as_numbers() {
        assert!(same(&json!(3), &json!(3.0)));
        assert!(same(&json!(true), &json!(true)));
        assert!(!same(&json!("3"), &json!(3)));
    }
}
