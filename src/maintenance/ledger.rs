//! The maintenance ledger in the history file: `maintenance_runs` (one row
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

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use crate::sample::Ts;
use crate::store::{FILE_NAME, StoreError};

/// Runs kept in the ledger (older ones are deleted with their steps).
pub const MAX_RUNS: i64 = 200;
/// Steps kept per run.
pub const MAX_STEPS: i64 = 500;
/// Places at the end of a run's steps kept for validation, rollback and
/// the end.
const CLOSING_STEPS: i64 = 8;
/// Longest detail text of a step, and error text of a run, in bytes.
pub const MAX_DETAIL_BYTES: usize = 256;
/// Longest JSON document kept in a run's column, in bytes.
pub const MAX_JSON_BYTES: usize = 4096;

/// Bytes the ledger can take in the history file at most (for the size
/// bound printed by `check-config`).
pub const fn bound_bytes() -> u64 {
    let run = 5 * MAX_JSON_BYTES as u64 + 2 * MAX_DETAIL_BYTES as u64 + 256;
    let step = MAX_DETAIL_BYTES as u64 + 96;
    MAX_RUNS as u64 * (run + MAX_STEPS as u64 * step)
}

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Schedule,
    Cli,
    Api,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Cli => "cli",
            Trigger::Api => "api",
        }
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

/// One run as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub task: String,
    pub kind: String,
    pub trigger: String,
    pub dry_run: bool,
    pub started_ms: Ts,
    pub ended_ms: Option<Ts>,
    /// running, succeeded, failed, aborted, rolled_back, interrupted
    pub status: String,
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
    pub step: String,
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
        step: &str,
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
        // The last few places are kept for the steps that end a run.
        let closing = matches!(step, "validate" | "rollback" | "end" | "error");
        if n >= MAX_STEPS - CLOSING_STEPS && !closing {
            let note = "further steps not itemized (the ledger keeps at most 500 per run)";
            let last: Option<String> = self
                .conn
                .query_row(
                    "SELECT detail FROM maintenance_steps WHERE run_id = ?1 ORDER BY id DESC LIMIT 1",
                    [run_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err())?;
            if last.as_deref() != Some(note) {
                self.insert_step(run_id, ts, "note", None, None, note)?;
            }
            return Ok(());
        }
        self.insert_step(run_id, ts, step, rows, duration_ms, detail)
    }

    fn insert_step(
        &self,
        run_id: i64,
        ts: Ts,
        step: &str,
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
        status: &str,
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

    /// Sets the status of a finished run (after an on-demand rollback).
    pub fn set_status(&self, run_id: i64, status: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE maintenance_runs SET status = ?1 WHERE id = ?2",
                params![status, run_id],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Runs of `task` left `running` by a process that is gone: the caller
    /// holds the task's lock, so nothing else can be running it.
    pub fn mark_interrupted(&self, task: &str, now: Ts) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "UPDATE maintenance_runs SET status = 'interrupted', ended_ms = ?1,
                 error = coalesce(error, 'the process running it stopped before the run ended')
                 WHERE task = ?2 AND status = 'running'",
                params![now, task],
            )
            .map_err(self.err())
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
    })
}

const RUN_COLUMNS: &str = "id, task, kind, trigger, dry_run, started_ms, ended_ms, status, rows_changed, plan, backup, verdict, before, after, error, batches";

/// Runs, newest first, optionally of one task.
pub fn runs(conn: &Connection, task: Option<&str>, limit: usize) -> rusqlite::Result<Vec<RunRow>> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM maintenance_runs WHERE (?1 IS NULL OR task = ?1) ORDER BY id DESC LIMIT ?2"
    );
    let mut st = conn.prepare_cached(&sql)?;
    st.query_map(params![task, limit as i64], run_row)?
        .collect()
}

/// One run with its steps.
pub fn run(conn: &Connection, id: i64) -> rusqlite::Result<Option<(RunRow, Vec<StepRow>)>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM maintenance_runs WHERE id = ?1");
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
        "SELECT {RUN_COLUMNS} FROM maintenance_runs WHERE id IN
         (SELECT max(id) FROM maintenance_runs GROUP BY task) ORDER BY task"
    );
    let mut st = conn.prepare_cached(&sql)?;
    st.query_map([], run_row)?.collect()
}

/// The seed's `MaintenanceResult` document of one run:
/// `{timestamp, tasks: [{name, success, duration_ms, details, error}], success, errors}`.
pub fn result_document(run: &RunRow) -> Value {
    let success = run.status == "succeeded";
    let duration_ms = run.ended_ms.map(|e| e - run.started_ms);
    let details = serde_json::json!({
        "run_id": run.id,
        "kind": run.kind,
        "trigger": run.trigger,
        "dry_run": run.dry_run,
        "status": run.status,
        "rows_changed": run.rows_changed,
        "batches": run.batches,
        "plan": run.plan,
        "backup": run.backup,
        "verdict": run.verdict,
        "before": run.before,
        "after": run.after,
    });
    let errors: Vec<&str> = run.error.as_deref().into_iter().collect();
    serde_json::json!({
        "timestamp": crate::fmt::rfc3339(run.started_ms),
        "tasks": [{
            "name": run.task,
            "success": success,
            "duration_ms": duration_ms,
            "details": details,
            "error": run.error,
        }],
        "success": success,
        "errors": errors,
    })
}
