//! `kind = "postgres_retention"`: deletes rows older than `older_than` from
//! one table, a batch at a time, and puts them back on rollback. A batch is
//! a range of the integer primary key (without one, of ctid) that ends
//! after `size` old rows. Its rows are deleted with RETURNING, written to
//! the archive file (a gzip member, fsynced) and only then committed; or
//! moved to an archive table in one statement. Every archived batch names
//! its transaction, so a rollback in any process knows which batches
//! committed. Config names reach SQL only through catalog lookups
//! (`target.rs`); a batch is in `run.rs`, the archive format in
//! `archive.rs`, rollback in `restore.rs`. The session, quoting and
//! catalog lookups it shares with the other PostgreSQL tasks are in
//! `crate::clients::postgres`.

mod archive;
mod restore;
mod run;
mod scan;
mod target;

use std::time::Duration;

use serde_json::json;

use super::{Backup, Batch, Cx, Plan, Task, TaskError, Verdict};
use crate::clients::postgres::{Session, identifier, millis, qualified_name, rfc3339_sql};
use crate::fmt::{bytes, count};
use crate::probes::ProbeKind;
use crate::probes::postgres::PostgresConfig;
use archive::ArchiveWriter;
use run::{BackupDetails, FORMAT_FILE, FORMAT_TABLE, PlanDetails, Run, recount, xact_status};
use target::Target;

crate::task_config! {
    /// `[maintenance.NAME] kind = "postgres_retention"`.
    pub struct RetentionConfig {
        /// The postgres probe whose connection settings the task uses.
        pub probe: String,
        /// `table` or `schema.table`: plain lower-case identifiers.
        pub table: String,
        /// A `timestamp`, `timestamptz` or `date` column of `table`.
        pub timestamp_column: String,
        /// Rows older than this (before now − older_than) are deleted.
        #[serde(with = "humantime_serde")]
        pub older_than: Duration,
        /// The most rows per batch (each batch one transaction); pacing
        /// sizes batches under it.
        #[serde(default = "default_batch_size")]
        pub batch_size: u64,
        /// The shortest pause between batches; pacing derives the pause
        /// from `max_duty`.
        #[serde(default = "default_pause", with = "humantime_serde")]
        pub pause: Duration,
        /// Archive into this table (`name`, in the table's schema, or
        /// `schema.name`) instead of a gzip file in the run's backup dir.
        /// Created when missing with the table's columns plus `upkeep_run`
        /// (the run that archived the row); each batch moves its rows
        /// there in one statement.
        #[serde(default)]
        pub archive_table: Option<String>,
        /// `lock_timeout` of every statement.
        #[serde(default = "default_lock_timeout", with = "humantime_serde")]
        pub lock_timeout: Duration,
        /// `statement_timeout` of every statement, and the session's
        /// `idle_in_transaction_session_timeout` (a batch is idle in its
        /// transaction only while its archive is written).
        #[serde(default = "default_statement_timeout", with = "humantime_serde")]
        pub statement_timeout: Duration,
    }
}

fn default_batch_size() -> u64 {
    5000
}
/// None: the pause follows from `max_duty`.
fn default_pause() -> Duration {
    Duration::ZERO
}
fn default_lock_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Most rows one batch may hold.
pub const MAX_BATCH: u64 = 100_000;

impl super::config::TaskKind for RetentionConfig {
    fn probe(&self) -> Option<&str> {
        Some(&self.probe)
    }
    fn validate(&self, probes: &super::config::Probes) -> Vec<(&'static str, String)> {
        let own = Self::validate(self);
        super::config::with_probe_check(
            own,
            probes,
            &self.probe,
            ProbeKind::Postgres,
            "postgres_retention",
        )
    }
    fn build(&self, name: &str, probes: &super::config::Probes) -> Option<super::AnyTask> {
        let pg = super::config::postgres_probe(probes, &self.probe)?;
        Some(Box::new(RetentionTask::new(name, self, pg)))
    }
    fn batch_size(&self) -> u64 {
        self.batch_size
    }
    fn pause(&self) -> Duration {
        self.pause
    }
}

impl RetentionConfig {
    /// Problems of the kind's own fields, as (field, message).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = qualified_name(&self.table) {
            out.push(("table", e));
        }
        if let Err(e) = identifier(&self.timestamp_column) {
            out.push(("timestamp_column", e));
        }
        if let Some(a) = &self.archive_table {
            let table_schema = qualified_name(&self.table).map(|(schema, _)| schema);
            match target::archive_name(a, table_schema.as_deref().unwrap_or("public")) {
                Err(e) => out.push(("archive_table", e)),
                Ok(name) if qualified_name(&self.table).is_ok_and(|t| t == name) => {
                    out.push(("archive_table", "must not be the table itself".into()))
                }
                Ok(_) => {}
            }
        }
        if self.older_than < Duration::from_secs(3600) {
            out.push((
                "older_than",
                "must be at least 1h: a retention this short is more likely a typo".into(),
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            out.push(("batch_size", format!("must be 1 to {MAX_BATCH}")));
        }
        if self.pause > Duration::from_secs(60) {
            out.push(("pause", "must be at most 1m".into()));
        }
        for (field, d) in [
            ("lock_timeout", self.lock_timeout),
            ("statement_timeout", self.statement_timeout),
        ] {
            if d < Duration::from_millis(1) {
                out.push((field, "must be at least 1ms".into()));
            }
        }
        out
    }
}

/// The column an archive table has besides the table's: the ledger id of
/// the run that archived the row, so that a rollback puts back its own
/// run's rows only.
pub const RUN_COLUMN: &str = "upkeep_run";

/// A retention task: its settings and, during a run, its session and
/// position in the key range.
pub struct RetentionTask {
    name: String,
    config: RetentionConfig,
    pg: PostgresConfig,
    /// Put back after each step that succeeded: a failed step never leaves
    /// a half-used session behind.
    session: Option<Session>,
    run: Option<Run>,
}

impl RetentionTask {
    pub fn new(name: &str, config: &RetentionConfig, pg: &PostgresConfig) -> RetentionTask {
        RetentionTask {
            name: name.to_string(),
            config: config.clone(),
            pg: pg.clone(),
            session: None,
            run: None,
        }
    }

    /// The pacing of the task's counts: its `batch_target` and `max_duty`.
    fn pace(&self) -> scan::Pace {
        let c = self.config.common();
        scan::Pace {
            target: c
                .batch_target
                .unwrap_or(super::config::DEFAULT_BATCH_TARGET),
            duty: c.max_duty.unwrap_or(super::config::DEFAULT_MAX_DUTY),
        }
    }

    /// The open session, or a new one with the task's timeouts.
    async fn take_session(&mut self) -> Result<Session, TaskError> {
        if let Some(s) = self.session.take()
            && !s.is_closed()
        {
            return Ok(s);
        }
        let c = &self.config;
        let session = Session::open(
            &self.pg.connection(),
            &self.name,
            &[
                ("lock_timeout", millis(c.lock_timeout)),
                ("statement_timeout", millis(c.statement_timeout)),
                (
                    "idle_in_transaction_session_timeout",
                    millis(c.statement_timeout),
                ),
            ],
            c.statement_timeout,
        )
        .await?;
        Ok(session)
    }

    /// The run `plan` describes: this task's own since `plan`, or, for a
    /// plan made elsewhere, rebuilt from its details.
    async fn ensure_run(&mut self, cx: &Cx, plan: &Plan) -> Result<(), TaskError> {
        let details: PlanDetails = serde_json::from_value(plan.details.clone())
            .map_err(|e| TaskError::failed(format!("not a retention plan: {e}")))?;
        if self.run.as_ref().is_some_and(|r| r.plan == details) {
            return Ok(());
        }
        let s = self.take_session().await?;
        let target = Target::resolve(&s, &self.config).await?;
        self.session = Some(s);
        if target.table.to_string() != details.table
            || target.key != details.key_column
            || target.ts != details.timestamp_column
        {
            return Err(TaskError::failed(format!(
                "{}: the table or its key changed since the plan was made",
                details.table
            )));
        }
        self.run = Some(Run::new(details, target, cx.run_id));
        Ok(())
    }

    async fn plan_with(&mut self, s: &Session, cx: &Cx) -> Result<Plan, TaskError> {
        let target = Target::resolve(s, &self.config).await?;
        let table = target.table.to_string();
        let fail = |what: &str, e: String| TaskError::failed(format!("{table}: {what}: {e}"));
        let older_ms = i64::try_from(self.config.older_than.as_millis()).unwrap_or(i64::MAX);
        let cutoff: String = s
            .timed(s.client.query_one(
                &format!(
                    "SELECT {}",
                    rfc3339_sql("now() - $1::int8 * interval '1 millisecond'")
                ),
                &[&older_ms],
            ))
            .await
            .map_err(|e| fail("computing the cutoff", e))?
            .get(0);
        let counting = async {
            let (lo, hi, est) = scan::table_range(s, &target).await?;
            scan::tally(s, &target, &cutoff, (lo, hi), est, true, self.pace()).await
        };
        let tally = counting
            .await
            .map_err(|e| fail("counting the rows older than the cutoff", e))?;
        let (rows, size) = (tally.rows, tally.bytes);
        let range = match (tally.first, tally.last) {
            (Some(a), Some(b)) => Some([a, b]),
            _ => None,
        };
        let batch_size = self.config.batch_size;
        let batches = rows.div_ceil(batch_size);
        let by = match &target.key {
            Some(k) => format!("{k} ranges"),
            None => "ctid page ranges".into(),
        };
        let to = match &target.archive {
            Some(a) => format!("moved to table {a}"),
            None => "archived to a gzip file".into(),
        };
        let older_than = human_span(self.config.older_than);
        let counted = format!(
            "counted exactly in {} chunks by {by}, {:.0}ms of queries (longest {:.1}ms)",
            tally.chunks,
            tally.busy.as_secs_f64() * 1000.0,
            tally.longest.as_secs_f64() * 1000.0
        );
        let summary = if rows == 0 {
            format!(
                "nothing to delete: no row of {table} has {} before {cutoff} (older than \
                 {older_than}); {counted}",
                target.ts
            )
        } else {
            format!(
                "delete {} rows (about {}) of {table} with {} before {cutoff} (older than \
                 {older_than}), in about {batches} batches of {batch_size} by {by}, {to}; \
                 {counted}",
                count(rows),
                bytes(size as f64),
                target.ts
            )
        };
        let details = PlanDetails {
            table,
            timestamp_column: target.ts.clone(),
            column_type: target.ts_type.into(),
            cutoff,
            older_than,
            key_column: target.key.clone(),
            range,
            rows,
            batches,
            batch_size,
            archive_table: target.archive.as_ref().map(|a| a.to_string()),
        };
        let plan = Plan {
            summary,
            rows,
            bytes: size,
            details: serde_json::to_value(&details).unwrap_or_default(),
        };
        self.run = Some(Run::new(details, target, cx.run_id));
        Ok(plan)
    }

    async fn backup_with(&mut self, s: &Session, cx: &Cx) -> Result<Backup, TaskError> {
        let Some(run) = self.run.as_mut() else {
            return Err(TaskError::failed("backup before plan"));
        };
        let table = run.table();
        match run.target.archive.clone() {
            Some(a) if !a.exists => {
                let sql = run.target.create_archive_sql(&a);
                s.timed(s.client.batch_execute(&sql)).await.map_err(|e| {
                    TaskError::failed(format!("{table}: creating the archive table {a}: {e}"))
                })?;
                if let Some(a) = run.target.archive.as_mut() {
                    a.exists = true;
                }
            }
            Some(_) => {}
            None if run.writer.is_none() => {
                let path = cx.backup_dir.join(archive::FILE_NAME);
                let p = path.clone();
                let writer = tokio::task::spawn_blocking(move || {
                    super::backup_files::create_dir(p.parent().unwrap_or(&p))?;
                    ArchiveWriter::create(&p)
                })
                .await
                .map_err(|e| TaskError::failed(format!("creating the archive: {e}")))?
                .map_err(|e| {
                    TaskError::failed(format!(
                        "{table}: creating the archive {}: {e}",
                        path.display()
                    ))
                })?;
                run.location = Some(path.display().to_string());
                run.writer = Some(writer);
            }
            None => {}
        }
        run.backup()
            .ok_or_else(|| TaskError::failed("the archive has no location"))
    }

    async fn validate_with(&mut self, s: &Session) -> Result<Verdict, TaskError> {
        let pace = self.pace();
        let Some(run) = self.run.as_mut() else {
            return Err(TaskError::failed("validate before plan"));
        };
        run.resolve_pending(s).await?;
        let table = run.table();
        let fail = |what: &str, e: String| TaskError::failed(format!("{table}: {what}: {e}"));
        let remaining = scan::tally(
            s,
            &run.target,
            &run.plan.cutoff,
            (run.first, run.next),
            run.deleted,
            false,
            pace,
        )
        .await
        .map_err(|e| fail("counting the rows left", e))?;
        let recounted = format!(
            "recounted in {} chunks, {:.0}ms of queries (longest {:.1}ms)",
            remaining.chunks,
            remaining.busy.as_secs_f64() * 1000.0,
            remaining.longest.as_secs_f64() * 1000.0
        );
        let remaining = remaining.rows;
        run.recounted = Some(remaining);
        let (in_archive, uncommitted, incomplete) = match &run.target.archive {
            Some(a) => {
                let n = s
                    .timed(
                        s.client
                            .query_one(&run.target.archived_count_sql(a), &[&run.run_id]),
                    )
                    .await
                    .map_err(|e| fail("counting the archived rows", e))?
                    .get::<_, i64>(0) as u64;
                (n, 0, None)
            }
            None => match &run.location {
                None => (0, 0, None),
                Some(path) => recount(s, path)
                    .await
                    .map_err(|e| fail("reading the archive", e))?,
            },
        };
        let processed = if run.next > run.first {
            run.range_text(run.first, run.next)
        } else {
            "no range".into()
        };
        let mut problems = Vec::new();
        if !run.done {
            problems.push(format!(
                "the run stopped before the end of its range, at {}",
                run.range_text(run.next, run.last + 1)
            ));
        }
        if remaining > 0 {
            problems.push(format!(
                "{} rows older than {} are still in {processed}",
                count(remaining),
                run.plan.cutoff
            ));
        }
        if in_archive != run.deleted {
            problems.push(format!(
                "{} rows deleted but {} archived",
                count(run.deleted),
                count(in_archive)
            ));
        }
        if let Some(e) = &incomplete {
            problems.push(format!("the archive ends in an unreadable batch: {e}"));
        }
        let detail = if problems.is_empty() {
            format!(
                "no row of {table} older than {} is left in {processed}; {} rows deleted, all of \
                 them archived; {recounted}",
                run.plan.cutoff,
                count(run.deleted)
            )
        } else {
            format!("{table}: {}; {recounted}", problems.join("; "))
        };
        Ok(Verdict {
            ok: problems.is_empty(),
            detail,
            figures: json!({
                "table": table,
                "cutoff": run.plan.cutoff,
                "planned_rows": run.plan.rows,
                "deleted_rows": run.deleted,
                "archived_rows": in_archive,
                "archived_uncommitted_rows": uncommitted,
                "old_rows_left": remaining,
                "batches": run.batch,
                "done": run.done,
            }),
        })
    }

    async fn figures_with(&mut self, s: &Session) -> Result<serde_json::Value, TaskError> {
        let target = Target::resolve(s, &self.config).await?;
        let table = target.table.to_string();
        let fail = |e: String| TaskError::failed(format!("{table}: reading its figures: {e}"));
        let row = s
            .timed(s.client.query_one(
                "SELECT pg_total_relation_size($1::oid)::int8, \
                 (SELECT n_live_tup FROM pg_stat_all_tables WHERE relid = $1::oid), \
                 (SELECT n_dead_tup FROM pg_stat_all_tables WHERE relid = $1::oid)",
                &[&target.table.oid],
            ))
            .await
            .map_err(fail)?;
        let mut out = json!({
            "table": table,
            "total_bytes": row.get::<_, i64>(0),
            "live_tuples": row.get::<_, Option<i64>>(1),
            "dead_tuples": row.get::<_, Option<i64>>(2),
        });
        if let Some(run) = &self.run {
            // Around what the run processed: its deleted rows stay in the
            // indexes until a vacuum, and walking them again (a page visit
            // for each) is what costs an application most after a run.
            // Validation has just recounted that range; the rest of the
            // table is walked here.
            let (lo, hi, est) = scan::table_range_around(s, &target, (run.first, run.next))
                .await
                .map_err(fail)?;
            let (parts, inside) = match run.recounted {
                Some(n) => (vec![(lo, run.first), (run.next, hi)], n),
                None => (vec![(lo, hi)], 0),
            };
            let span = (hi as i128 - lo as i128).max(1) as f64;
            let mut old = inside;
            for (a, b) in parts {
                let part = ((b as i128 - a as i128).max(0) as f64 / span * est as f64) as u64;
                old += scan::tally(
                    s,
                    &target,
                    &run.plan.cutoff,
                    (a, b),
                    part,
                    false,
                    self.pace(),
                )
                .await
                .map_err(fail)?
                .rows;
            }
            out["cutoff"] = json!(run.plan.cutoff);
            out["rows_older_than_cutoff"] = json!(old);
        }
        Ok(out)
    }

    /// Runs `f` on the session, putting it back only when `f` succeeds.
    async fn with_session<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Self, &mut Session) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        let mut s = self.take_session().await?;
        let out = f(self, &mut s).await;
        if out.is_ok() {
            self.session = Some(s);
        }
        out
    }
}

impl Task for RetentionTask {
    async fn figures(&mut self) -> Result<serde_json::Value, TaskError> {
        self.with_session(async |t, s| t.figures_with(s).await)
            .await
    }

    async fn plan(&mut self, cx: &Cx) -> Result<Plan, TaskError> {
        self.with_session(async |t, s| t.plan_with(s, cx).await)
            .await
    }

    fn backup_bytes(&self, plan: &Plan) -> u64 {
        // JSON lines compress to less than the rows' own size; an archive
        // table takes no room in the backup dir.
        match self.config.archive_table {
            Some(_) => 0,
            None => plan.bytes,
        }
    }

    async fn backup(&mut self, cx: &Cx, plan: &Plan) -> Result<Backup, TaskError> {
        self.ensure_run(cx, plan).await?;
        self.with_session(async |t, s| t.backup_with(s, cx).await)
            .await
    }

    async fn apply_batch(&mut self, cx: &Cx, plan: &Plan, size: u64) -> Result<Batch, TaskError> {
        self.ensure_run(cx, plan).await?;
        if self.session.as_ref().is_some_and(Session::is_closed) {
            self.session = None;
            return Err(TaskError::failed(format!(
                "{}: the connection to the server was lost after the last batch; this batch \
                 did nothing",
                self.config.table
            )));
        }
        self.with_session(async |t, s| match t.run.as_mut() {
            Some(run) => run.step(s, size).await,
            None => Err(TaskError::failed("apply_batch before plan")),
        })
        .await
    }

    fn backup_state(&self) -> Option<Backup> {
        self.run.as_ref().and_then(Run::backup)
    }

    async fn validate(&mut self, cx: &Cx, plan: &Plan) -> Result<Verdict, TaskError> {
        self.ensure_run(cx, plan).await?;
        self.with_session(async |t, s| t.validate_with(s).await)
            .await
    }

    async fn rollback(&mut self, _cx: &Cx, backup: &Backup) -> Result<Verdict, TaskError> {
        self.with_session(async |t, s| restore::rollback(s, &t.config, backup).await)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> RetentionConfig {
        let toml = format!(
            "probe = \"db\"\ntable = \"audit_log\"\ntimestamp_column = \"created_at\"\n\
             older_than = \"365d\"\n{extra}"
        );
        toml::from_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
    }

    fn fields(c: &RetentionConfig) -> Vec<&'static str> {
        c.validate().into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = config("");
        assert_eq!(c.batch_size, 5000);
        assert_eq!(c.pause, Duration::ZERO, "the pause follows from max_duty");
        assert_eq!(c.lock_timeout, Duration::from_secs(2));
        assert_eq!(c.statement_timeout, Duration::from_secs(30));
        assert_eq!(c.archive_table, None);
        assert_eq!(c.validate(), vec![]);
    }

    #[test]
    fn sql_in_a_name_is_refused() {
        let c = config("").clone();
        let c = RetentionConfig {
            table: "audit_log; DROP TABLE x".into(),
            timestamp_column: "created_at, 1".into(),
            ..c
        };
        assert_eq!(fields(&c), vec!["table", "timestamp_column"]);
    }

    #[test]
    fn quoted_names_are_refused_not_guessed_at() {
        let e = identifier("\"Audit\"").unwrap_err();
        assert!(e.contains("quoted identifiers are not supported"), "{e}");
        assert!(qualified_name("\"app\".audit_log").is_err());
        assert!(
            identifier("AuditLog").is_err(),
            "upper case would need quoting"
        );
    }

    #[test]
    fn a_name_postgres_would_truncate_is_refused() {
        let long = "a".repeat(64);
        let e = identifier(&long).unwrap_err();
        assert!(e.contains("64 bytes") && e.contains("truncate"), "{e}");
        assert!(identifier(&"a".repeat(63)).is_ok());
        let c = RetentionConfig {
            table: format!("app.{long}"),
            ..config("")
        };
        assert_eq!(fields(&c), vec!["table"]);
    }

    #[test]
    fn names_are_table_or_schema_dot_table() {
        assert_eq!(
            qualified_name("audit_log").unwrap(),
            ("public".into(), "audit_log".into())
        );
        assert_eq!(
            qualified_name("app.audit_log").unwrap(),
            ("app".into(), "audit_log".into())
        );
        for bad in ["", "a.b.c", ".t", "t.", "1abc", "a-b", "a b"] {
            assert!(qualified_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_archive_table_must_be_another_table() {
        let same = config("archive_table = \"audit_log\"");
        assert_eq!(fields(&same), vec!["archive_table"]);
        let same = config("archive_table = \"public.audit_log\"");
        assert_eq!(fields(&same), vec!["archive_table"]);
        assert_eq!(
            fields(&config("archive_table = \"audit_log_old\"")),
            Vec::<&str>::new()
        );
        assert_eq!(
            fields(&config("archive_table = \"x;y\"")),
            vec!["archive_table"]
        );
    }

    #[test]
    fn limits_catch_likely_typos() {
        let c = RetentionConfig {
            older_than: Duration::from_secs(60),
            batch_size: 0,
            pause: Duration::from_secs(120),
            lock_timeout: Duration::ZERO,
            ..config("")
        };
        assert_eq!(
            fields(&c),
            vec!["older_than", "batch_size", "pause", "lock_timeout"]
        );
        assert_eq!(
            fields(&RetentionConfig {
                batch_size: MAX_BATCH + 1,
                ..config("")
            }),
            vec!["batch_size"]
        );
    }

    #[test]
    fn a_misspelt_field_is_refused() {
        let e = toml::from_str::<RetentionConfig>(
            "probe = \"db\"\ntable = \"t\"\ntimestamp_column = \"c\"\nolder_then = \"1d\"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("older_then"), "{e}");
    }
}

/// A retention span as people write it: whole days as `365d` (humantime
/// would say "11months 30days 3h 50m 24s"), else humantime's form.
fn human_span(d: Duration) -> String {
    let secs = d.as_secs();
    if secs > 0 && secs.is_multiple_of(86_400) && d.subsec_nanos() == 0 {
        format!("{}d", secs / 86_400)
    } else {
        humantime::format_duration(d).to_string()
    }
}

#[cfg(test)]
mod span_tests {
    #[test]
    fn whole_days_read_as_days() {
        use std::time::Duration;
        assert_eq!(super::human_span(Duration::from_secs(365 * 86_400)), "365d");
        assert_eq!(super::human_span(Duration::from_secs(90 * 60)), "1h 30m");
    }
}
