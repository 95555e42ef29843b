//! The maintenance ledger in the history file (the store owns every table
//! of the file; maintenance writes through this module): `maintenance_runs` (one row
//! per run: task, trigger, plan, backup, verdict, before/after figures,
//! status, error) and `maintenance_steps` (gate, plan, backup, each batch
//! with rows and duration, guard pauses and why, validation, rollback).
//!
//! Written from the process that runs the task — the agent or the CLI — on
//! its own connection, one short transaction per step, so that a run killed
//! at any point leaves every finished step on record. Bounded: the newest
//! [`MAX_RUNS`] runs are kept, each with at most [`MAX_STEPS`] steps
//! (further batches are summed into the run's totals), JSON columns and
//! details capped in size.

use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{FILE_NAME, StoreError};
use crate::sample::Ts;

/// Runs kept in the ledger (older ones are deleted with their steps).
pub const MAX_RUNS: i64 = 200;
/// Steps kept per run.
pub const MAX_STEPS: i64 = 500;
/// Places at the end of a run's steps kept for validation, rollback and
/// the end.
const CLOSING_STEPS: i64 = 8;
/// Places before those kept for pacing steps, so that a long run's last
/// pacing changes are itemized after its batches no longer are.
const PACING_STEPS: i64 = 2;
/// Longest detail text of a step, and error text of a run, in bytes.
pub const MAX_DETAIL_BYTES: usize = 256;
/// Longest JSON document kept in a run's column, in bytes.
pub const MAX_JSON_BYTES: usize = 4096;

/// Bytes the ledger can take in the history file at most (for the size
/// bound printed by `check-config`).
pub const fn bound_bytes() -> u64 {
    let run = 5 * MAX_JSON_BYTES as u64 + 2 * MAX_DETAIL_BYTES as u64 + 256;
    let step = MAX_DETAIL_BYTES as u64 + 96;
    // outcome and backup_pruned_ms are within the run's 256 spare bytes.
    MAX_RUNS as u64 * (run + MAX_STEPS as u64 * step)
}

/// Declares a ledger enum stored as its snake_case name, as 0.1.0 wrote it.
macro_rules! ledger_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $v,)* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

            /// The name kept in the ledger.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($s => Some($name::$v),)* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.as_str()
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                let s = v.as_str()?;
                $name::parse(s).ok_or_else(|| {
                    FromSqlError::Other(format!("unknown {} `{s}` in the ledger", stringify!($name)).into())
                })
            }
        }
    };
}

ledger_enum! {
    /// Why a run was started.
    pub enum Trigger {
        Schedule = "schedule",
        Cli = "cli",
        Api = "api",
        /// The filesystem holding a file task's paths was fuller than its
        /// `disk_pressure` ratio.
        DiskPressure = "disk_pressure",
    }
}

ledger_enum! {
    /// How a run stands or ended.
    pub enum RunStatus {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Stopped at a safe point: shutdown, timeout, window closed, guard.
        Aborted = "aborted",
        /// Put back, after a failed validation or on demand; the run's own
        /// outcome before that is in `RunRow::outcome`.
        RolledBack = "rolled_back",
        /// The process running it stopped before the run ended.
        Interrupted = "interrupted",
        /// The gate said no: window closed, guard unhealthy, no room.
        Refused = "refused",
    }
}

ledger_enum! {
    /// One step of a run, as the ledger names it.
    pub enum Step {
        Gate = "gate",
        Figures = "figures",
        Plan = "plan",
        Backup = "backup",
        Batch = "batch",
        /// The guard saw a degraded probe: the run waited.
        Pause = "pause",
        /// Stopped between batches.
        Abort = "abort",
        Error = "error",
        Validate = "validate",
        Rollback = "rollback",
        End = "end",
        /// Further steps were not itemized.
        Note = "note",
        /// The run's backup was removed by the backup budget.
        Prune = "prune",
        /// Pacing changed the batch size and pause, with the reason.
        Pacing = "pacing",
        /// What the batches came to: pacing changes, the last size and
        /// pause, the backends seen waiting.
        Summary = "summary",
    }
}

impl RunStatus {
    /// Whether the run is over.
    pub fn ended(self) -> bool {
        self != RunStatus::Running
    }
}

impl Step {
    /// Steps that end a run, kept even when the ledger's place for a run's
    /// steps is almost used up.
    fn closing(self) -> bool {
        matches!(
            self,
            Step::Validate | Step::Rollback | Step::End | Step::Error | Step::Prune | Step::Summary
        )
    }
}

/// The JSON columns of a run.
#[derive(Debug, Clone, Copy)]
pub enum Doc {
    Plan,
    Backup,
    Verdict,
    Before,
    After,
}

impl Doc {
    fn column(self) -> &'static str {
        match self {
            Doc::Plan => "plan",
            Doc::Backup => "backup",
            Doc::Verdict => "verdict",
            Doc::Before => "before",
            Doc::After => "after",
        }
    }
}

/// One run as recorded (also kept beside its backup: `run.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    pub id: i64,
    pub task: String,
    pub kind: String,
    pub trigger: Trigger,
    pub dry_run: bool,
    pub started_ms: Ts,
    pub ended_ms: Option<Ts>,
    pub status: RunStatus,
    /// For a rolled-back run: how it had ended before the rollback
    /// (`failed` when validation failed, `succeeded` for one rolled back on
    /// demand). `None` for other runs, and for runs written by 0.1.0.
    pub outcome: Option<RunStatus>,
    /// When the backup budget removed this run's backup.
    pub backup_pruned_ms: Option<Ts>,
    pub rows_changed: i64,
    /// Batches committed (every one, itemized in the steps or not).
    pub batches: i64,
    pub plan: Option<Value>,
    pub backup: Option<Value>,
    pub verdict: Option<Value>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub error: Option<String>,
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    pub id: i64,
    pub ts_ms: Ts,
    pub step: Step,
    pub rows: Option<i64>,
    pub duration_ms: Option<i64>,
    pub detail: String,
}

/// The writing side, on its own connection.
pub struct Ledger {
    path: PathBuf,
    conn: Connection,
}

fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn cap_json(v: &Value) -> String {
    let text = v.to_string();
    if text.len() <= MAX_JSON_BYTES {
        return text;
    }
    serde_json::json!({"truncated": true, "bytes": text.len(), "start": cap(&text, MAX_JSON_BYTES / 2)})
        .to_string()
}

impl Ledger {
    /// Opens (creating if need be) the history file in `data_dir` and
    /// brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Ledger, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let mut conn = crate::store::open_rw(&path)?;
        crate::store::migrate(&mut conn, &path)?;
        Ok(Ledger { path, conn })
    }

    /// Opens the history file in `data_dir` read-only, for the commands
    /// that only read the ledger: they create and migrate nothing, and a
    /// missing data dir or file is an error naming it.
    pub fn open_ro(data_dir: &Path) -> Result<Ledger, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let conn = crate::store::open_ro(&path)?;
        Ok(Ledger { path, conn })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
        crate::store::sql_err(&self.path)
    }

    /// Records the start of a run; returns its id. Trims old runs.
    pub fn start_run(
        &self,
        task: &str,
        kind: &str,
        trigger: Trigger,
        dry_run: bool,
        now: Ts,
    ) -> Result<i64, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(self.err())?;
        tx.execute(
            "INSERT INTO maintenance_runs (task, kind, trigger, dry_run, started_ms, status)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running')",
            params![task, kind, trigger.as_str(), dry_run, now],
        )
        .map_err(self.err())?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "DELETE FROM maintenance_steps WHERE run_id <= ?1",
            params![id - MAX_RUNS],
        )
        .map_err(self.err())?;
        tx.execute(
            "DELETE FROM maintenance_runs WHERE id <= ?1",
            params![id - MAX_RUNS],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(id)
    }

    /// Records one step; past [`MAX_STEPS`] steps of a run only the run's
    /// totals grow (the last step says how many were not itemized).
    pub fn step(
        &self,
        run_id: i64,
        ts: Ts,
        step: Step,
        rows: Option<u64>,
        duration_ms: Option<u64>,
        detail: &str,
    ) -> Result<(), StoreError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM maintenance_steps WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        if n >= MAX_STEPS {
            return Ok(());
        }
        // The last few places are kept for the steps that end a run, and
        // a couple before them for pacing.
        let room = match step {
            s if s.closing() => MAX_STEPS,
            Step::Pacing => MAX_STEPS - CLOSING_STEPS,
            _ => MAX_STEPS - CLOSING_STEPS - PACING_STEPS,
        };
        if n >= room {
            let note = "further steps not itemized (the ledger keeps at most 500 per run)";
            let noted: bool = self
                .conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM maintenance_steps WHERE run_id = ?1 AND detail = ?2)",
                    rusqlite::params![run_id, note],
                    |r| r.get(0),
                )
                .map_err(self.err())?;
            if !noted && n < MAX_STEPS - CLOSING_STEPS {
                self.insert_step(run_id, ts, Step::Note, None, None, note)?;
            }
            return Ok(());
        }
        self.insert_step(run_id, ts, step, rows, duration_ms, detail)
    }

    fn insert_step(
        &self,
        run_id: i64,
        ts: Ts,
        step: Step,
        rows: Option<u64>,
        duration_ms: Option<u64>,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO maintenance_steps (run_id, ts_ms, step, rows, duration_ms, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    run_id,
                    ts,
                    step,
                    rows.map(|r| r as i64),
                    duration_ms.map(|d| d as i64),
                    cap(detail, MAX_DETAIL_BYTES)
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Sets one JSON column of a run.
    pub fn set(&self, run_id: i64, doc: Doc, value: &Value) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE maintenance_runs SET {} = ?1 WHERE id = ?2",
            doc.column()
        );
        self.conn
            .execute(&sql, params![cap_json(value), run_id])
            .map_err(self.err())?;
        Ok(())
    }

    /// Counts one committed batch and the rows it changed.
    pub fn add_batch(&self, run_id: i64, rows: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE maintenance_runs SET rows_changed = rows_changed + ?1, batches = batches + 1 WHERE id = ?2",
                params![rows as i64, run_id],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Records the end of a run.
    pub fn finish(
        &self,
        run_id: i64,
        now: Ts,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE maintenance_runs SET ended_ms = ?1, status = ?2, error = ?3 WHERE id = ?4",
                params![now, status, error.map(|e| cap(e, MAX_DETAIL_BYTES)), run_id],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Marks a finished run rolled back (on demand), keeping how it had
    /// ended before in `outcome`. A run without an end (written before
    /// every end was recorded) ends `now`.
    pub fn set_rolled_back(&self, run_id: i64, now: Ts) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE maintenance_runs SET outcome = coalesce(outcome, status), status = ?1,
                 ended_ms = coalesce(ended_ms, ?2) WHERE id = ?3",
                params![RunStatus::RolledBack, now, run_id],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Records how a run had ended before a rollback it made itself
    /// (validation failed, then rolled back).
    pub fn set_outcome(&self, run_id: i64, outcome: RunStatus) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE maintenance_runs SET outcome = ?1 WHERE id = ?2",
                params![outcome, run_id],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Records that a run's backup was removed (by the backup budget), with
    /// a step saying why.
    pub fn set_backup_pruned(&self, run_id: i64, now: Ts, why: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE maintenance_runs SET backup_pruned_ms = ?1 WHERE id = ?2",
                params![now, run_id],
            )
            .map_err(self.err())?;
        self.step(run_id, now, Step::Prune, None, None, why)
    }

    /// Runs of `task` left `running` by a process that is gone become
    /// `interrupted`, ending at their last step (their start when they have
    /// none): the last moment anything is known of them. An `end` step
    /// says so. The caller holds the task's lock, so nothing else can be
    /// running it. Returns the runs marked.
    pub fn mark_interrupted(&self, task: &str, now: Ts) -> Result<Vec<i64>, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(self.err())?;
        let runs: Vec<(i64, Ts)> = {
            let mut st = tx
                .prepare(
                    "SELECT r.id, coalesce(max(s.ts_ms), r.started_ms) FROM maintenance_runs r
                     LEFT JOIN maintenance_steps s ON s.run_id = r.id
                     WHERE r.task = ?1 AND r.status = ?2 GROUP BY r.id ORDER BY r.id",
                )
                .map_err(self.err())?;
            st.query_map(params![task, RunStatus::Running], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(self.err())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.err())?
        };
        let why = "the process running it stopped before the run ended";
        for &(id, last) in &runs {
            tx.execute(
                "UPDATE maintenance_runs SET status = ?1, ended_ms = ?2,
                 error = coalesce(error, ?3) WHERE id = ?4",
                params![RunStatus::Interrupted, last, why, id],
            )
            .map_err(self.err())?;
            tx.execute(
                "INSERT INTO maintenance_steps (run_id, ts_ms, step, rows, duration_ms, detail)
                 SELECT ?1, ?2, ?3, NULL, NULL, ?4
                 WHERE (SELECT count(*) FROM maintenance_steps WHERE run_id = ?1) < ?5",
                params![
                    id,
                    last,
                    Step::End,
                    format!("interrupted: {why} (found at {})", crate::fmt::rfc3339(now)),
                    MAX_STEPS
                ],
            )
            .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())?;
        Ok(runs.into_iter().map(|(id, _)| id).collect())
    }

    /// Gives an end to runs that ended without one (rolled back on demand
    /// by a version that did not record it): the time of their last step.
    pub fn fill_missing_ends(&self) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "UPDATE maintenance_runs SET ended_ms = coalesce(
                   (SELECT max(ts_ms) FROM maintenance_steps s WHERE s.run_id = maintenance_runs.id),
                   started_ms)
                 WHERE ended_ms IS NULL AND status != ?1",
                params![RunStatus::Running],
            )
            .map_err(self.err())
    }

    /// Tasks with a run recorded as `running`.
    pub fn running_tasks(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT DISTINCT task FROM maintenance_runs WHERE status = ?1 ORDER BY task")
            .map_err(self.err())?;
        st.query_map([RunStatus::Running], |r| r.get(0))
            .map_err(self.err())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.err())
    }

    /// One run without its steps.
    pub fn run_row(&self, id: i64) -> Result<Option<RunRow>, StoreError> {
        run_only(&self.conn, id).map_err(self.err())
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    let json = |i: usize| -> rusqlite::Result<Option<Value>> {
        Ok(r.get::<_, Option<String>>(i)?
            .and_then(|s| serde_json::from_str(&s).ok()))
    };
    Ok(RunRow {
        id: r.get(0)?,
        task: r.get(1)?,
        kind: r.get(2)?,
        trigger: r.get(3)?,
        dry_run: r.get(4)?,
        started_ms: r.get(5)?,
        ended_ms: r.get(6)?,
        status: r.get(7)?,
        rows_changed: r.get(8)?,
        plan: json(9)?,
        backup: json(10)?,
        verdict: json(11)?,
        before: json(12)?,
        after: json(13)?,
        error: r.get(14)?,
        batches: r.get(15)?,
        outcome: r.get(16)?,
        backup_pruned_ms: r.get(17)?,
    })
}

/// The columns `run_row` reads. A version 3 file (written by 0.1.0, read
/// by the read-only reader) has no `outcome` nor `backup_pruned_ms`: NULL.
fn run_columns(conn: &Connection) -> rusqlite::Result<&'static str> {
    Ok(if super::user_version(conn)? >= 4 {
        "id, task, kind, trigger, dry_run, started_ms, ended_ms, status, rows_changed, plan, backup, verdict, before, after, error, batches, outcome, backup_pruned_ms"
    } else {
        "id, task, kind, trigger, dry_run, started_ms, ended_ms, status, rows_changed, plan, backup, verdict, before, after, error, batches, NULL, NULL"
    })
}

/// Runs, newest first, optionally of one task.
///
/// The limit is written into the SQL, not bound: SQLite plans with a bound
/// LIMIT's value and so prepares the statement again at every binding, which
/// made this read, every 2 s in the alert engine, its costliest step. Two
/// statements, not one `?1 IS NULL OR task = ?1`, so that a task's runs are
/// found through the index on task.
pub fn runs(conn: &Connection, task: Option<&str>, limit: usize) -> rusqlite::Result<Vec<RunRow>> {
    let columns = run_columns(conn)?;
    match task {
        Some(task) => {
            let sql = format!(
                "SELECT {columns} FROM maintenance_runs WHERE task = ?1 ORDER BY id DESC LIMIT {limit}"
            );
            let mut st = conn.prepare_cached(&sql)?;
            st.query_map([task], run_row)?.collect()
        }
        None => {
            let sql =
                format!("SELECT {columns} FROM maintenance_runs ORDER BY id DESC LIMIT {limit}");
            let mut st = conn.prepare_cached(&sql)?;
            st.query_map([], run_row)?.collect()
        }
    }
}

/// One run without its steps.
pub fn run_only(conn: &Connection, id: i64) -> rusqlite::Result<Option<RunRow>> {
    let sql = format!(
        "SELECT {} FROM maintenance_runs WHERE id = ?1",
        run_columns(conn)?
    );
    conn.query_row(&sql, [id], run_row).optional()
}

/// The newest run of `task` that changed something and succeeded.
pub fn newest_succeeded(conn: &Connection, task: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT max(id) FROM maintenance_runs WHERE task = ?1 AND status = ?2 AND NOT dry_run",
        params![task, RunStatus::Succeeded],
        |r| r.get(0),
    )
}

/// One run with its steps.
pub fn run(conn: &Connection, id: i64) -> rusqlite::Result<Option<(RunRow, Vec<StepRow>)>> {
    let sql = format!(
        "SELECT {} FROM maintenance_runs WHERE id = ?1",
        run_columns(conn)?
    );
    let Some(row) = conn.query_row(&sql, [id], run_row).optional()? else {
        return Ok(None);
    };
    let mut st = conn.prepare_cached(
        "SELECT id, ts_ms, step, rows, duration_ms, detail FROM maintenance_steps WHERE run_id = ?1 ORDER BY id",
    )?;
    let steps = st
        .query_map([id], |r| {
            Ok(StepRow {
                id: r.get(0)?,
                ts_ms: r.get(1)?,
                step: r.get(2)?,
                rows: r.get(3)?,
                duration_ms: r.get(4)?,
                detail: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some((row, steps)))
}

/// The newest finished (not dry-run) run of each task.
pub fn last_runs(conn: &Connection) -> rusqlite::Result<Vec<RunRow>> {
    let sql = format!(
        "SELECT {} FROM maintenance_runs WHERE id IN
         (SELECT max(id) FROM maintenance_runs GROUP BY task) ORDER BY task",
        run_columns(conn)?
    );
    let mut st = conn.prepare_cached(&sql)?;
    st.query_map([], run_row)?.collect()
}
