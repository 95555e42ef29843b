//! Drives runs of a task, for the agent's schedule, the CLI and the API
//! alike: the task's lock, the ledger row, then the steps of `drive.rs`
//! (gate, plan, backup, batches, validate, with one abort path); the guard
//! and pacing between batches are `guard.rs` and `pacing.rs`. Every step
//! goes to the ledger as it happens. Also rollback on demand, from the
//! backup a run recorded, or from a backup dir alone (`run_file`: the copy
//! of the run's ledger row kept beside its backup), and `settle`: runs left
//! `running` by a process that died become `interrupted` once their task's
//! lock is free.

mod drive;
mod guard;
pub mod pacing;
pub mod run_file;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::ledger::{self, Doc, Ledger, RunStatus, Step, Trigger};
use super::lock::TaskLock;
use super::schedule::{AutoChoice, Schedule};
use super::{AnyTask, Backup, Cx, Plan, TaskConfig};
use crate::config::Config;
use crate::sample::now_ms;
use crate::store::StoreError;
pub use pacing::{MAX_PAUSE, MIN_SHARE};

/// How often a degraded guard is checked again while a run pauses.
pub const GUARD_RECHECK: Duration = Duration::from_secs(2);
/// Free space kept beyond the backup's own size.
pub const DISK_MARGIN_BYTES: u64 = 64 * 1024 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct Request {
    pub task: String,
    pub trigger: Trigger,
    pub dry_run: bool,
    /// Run even outside the window (asked for explicitly on the CLI).
    pub ignore_window: bool,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub run_id: i64,
    pub status: RunStatus,
    pub error: Option<String>,
    /// The seed's `MaintenanceResult` document of the run.
    pub document: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no maintenance task `{0}` is configured")]
    NoSuchTask(String),
    /// Another run holds the task's lock.
    #[error("{0}")]
    Busy(String),
    #[error("no maintenance run {0} in the ledger")]
    NoSuchRun(i64),
    #[error("{0}")]
    Refused(String),
    #[error("maintenance ledger: {0}")]
    Ledger(#[from] StoreError),
}

/// The ledger behind a lock, written off the async workers.
#[derive(Clone)]
struct Book(Arc<Mutex<Ledger>>);

impl Book {
    /// The seed's result document of run `run_id` as the ledger has it.
    async fn document(&self, run_id: i64) -> Result<Value, StoreError> {
        self.with(move |l| {
            let row = l.run_row(run_id)?.expect("the run is in the ledger");
            Ok(ledger::result_document(&row))
        })
        .await
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Ledger) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let l = self.0.clone();
        tokio::task::spawn_blocking(move || f(&l.lock().expect("ledger lock")))
            .await
            .expect("ledger write panicked")
    }

    async fn step(
        &self,
        run: i64,
        step: Step,
        rows: Option<u64>,
        took: Option<Duration>,
        detail: String,
    ) -> Result<(), StoreError> {
        let ms = took.map(|d| d.as_millis() as u64);
        self.with(move |l| l.step(run, now_ms(), step, rows, ms, &detail))
            .await
    }

    async fn set(&self, run: i64, doc: Doc, v: Value) -> Result<(), StoreError> {
        self.with(move |l| l.set(run, doc, &v)).await
    }
}

/// Runs maintenance for one agent or one CLI invocation.
pub struct Runner {
    pub config: Arc<Config>,
    pub data_dir: PathBuf,
    /// Cancelled when the agent stops: a run stops at its next safe point.
    pub stop: CancellationToken,
}

impl Runner {
    fn task_config(&self, name: &str) -> Result<&TaskConfig, RunError> {
        self.config
            .maintenance
            .get(name)
            .ok_or_else(|| RunError::NoSuchTask(name.to_string()))
    }

    fn build(&self, name: &str) -> Result<AnyTask, RunError> {
        super::build(name, &self.config).ok_or_else(|| RunError::NoSuchTask(name.to_string()))
    }

    fn cx(&self, name: &str, run_id: i64) -> Cx {
        Cx {
            name: name.to_string(),
            run_id,
            backup_dir: self
                .data_dir
                .join("backups")
                .join(name)
                .join(run_id.to_string()),
            quarantine_dir: quarantine_dir(&self.data_dir, name, run_id),
            data_dir: self.data_dir.clone(),
            cancel: self.stop.child_token(),
        }
    }

    /// The plan alone: no lock, no ledger, no change.
    pub async fn plan(&self, name: &str) -> Result<Plan, RunError> {
        self.task_config(name)?;
        let mut task = self.build(name)?;
        let cx = self.cx(name, 0);
        task.plan_boxed(&cx)
            .await
            .map_err(|e| RunError::Refused(format!("{name}: plan: {e}")))
    }

    /// One run. `started` hears the run's ledger id as soon as it has one.
    pub async fn run(
        &self,
        req: Request,
        auto: Option<&AutoChoice>,
        started: Option<tokio::sync::oneshot::Sender<i64>>,
    ) -> Result<Finished, RunError> {
        let tc = self.task_config(&req.task)?.clone();
        let schedule = Schedule::parse(&tc.common())
            .map_err(|e| RunError::Refused(format!("{}: {}: {}", req.task, e[0].0, e[0].1)))?;
        let lock =
            TaskLock::try_take(&self.data_dir, &req.task, req.trigger).map_err(RunError::Busy)?;
        let data_dir = self.data_dir.clone();
        let book = Book(Arc::new(Mutex::new(
            tokio::task::spawn_blocking(move || Ledger::open(&data_dir))
                .await
                .expect("opening the ledger panicked")?,
        )));
        let (name, kind, trigger, dry) = (req.task.clone(), tc.kind(), req.trigger, req.dry_run);
        let run_id = book
            .with(move |l| {
                settle_held(l, &name)?;
                l.start_run(&name, kind, trigger, dry, now_ms())
            })
            .await?;
        if let Some(tx) = started {
            let _ = tx.send(run_id);
        }
        let started_at = Instant::now();
        let drive = drive::Drive {
            runner: self,
            req: &req,
            tc: &tc,
            run_id,
            book: &book,
            cx: self.cx(&req.task, run_id),
            deadline: started_at + tc.timeout(),
        };
        let (status, error) = match drive.run(&schedule, auto).await {
            Ok(status) => (status, None),
            Err(stop) => (stop.status, Some(stop.why)),
        };
        if let Some(e) = &error {
            let _ = book
                .step(
                    run_id,
                    Step::End,
                    None,
                    Some(started_at.elapsed()),
                    e.clone(),
                )
                .await;
        }
        let err = error.clone();
        let dir = drive.cx.backup_dir.clone();
        book.with(move |l| {
            l.finish(run_id, now_ms(), status, err.as_deref())?;
            refresh_run_file(l, run_id, &dir);
            Ok(())
        })
        .await?;
        drop(lock);
        let document = book.document(run_id).await?;
        match &error {
            Some(e) => {
                tracing::warn!(task = %req.task, run_id, status = %status, "maintenance run ended: {e}")
            }
            None => {
                tracing::info!(task = %req.task, run_id, status = %status, "maintenance run ended")
            }
        }
        if status == RunStatus::Succeeded && !req.dry_run {
            self.run_followers(&req).await;
        }
        Ok(Finished {
            run_id,
            status,
            error,
            document,
        })
    }

    /// Runs, one after the other, the tasks whose `after` names the task
    /// of `req`, which has just succeeded (their own runs may chain on).
    /// Each is a run of its own in the ledger; how it ends is logged.
    fn run_followers<'a>(
        &'a self,
        req: &'a Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let followers: Vec<String> = self
                .config
                .maintenance
                .iter()
                .filter(|(_, t)| t.after() == Some(req.task.as_str()))
                .map(|(n, _)| n.clone())
                .collect();
            for task in followers {
                let next = Request {
                    task: task.clone(),
                    trigger: req.trigger,
                    dry_run: false,
                    ignore_window: req.ignore_window,
                };
                match self.run(next, None, None).await {
                    Ok(f) => {
                        tracing::info!(task = %task, after = %req.task, run_id = f.run_id, status = %f.status, "chained maintenance run ended")
                    }
                    Err(e) => {
                        tracing::warn!(task = %task, after = %req.task, "chained maintenance run not started: {e}")
                    }
                }
            }
        })
    }

    /// Puts back what run `run_id` changed, from its backup in the ledger.
    pub async fn rollback(&self, run_id: i64, trigger: Trigger) -> Result<Finished, RunError> {
        self.rollback_forced(run_id, trigger, false).await
    }

    /// [`Runner::rollback`]; `force`: what was written since the run is
    /// replaced where the kind would otherwise leave it alone.
    pub async fn rollback_forced(
        &self,
        run_id: i64,
        trigger: Trigger,
        force: bool,
    ) -> Result<Finished, RunError> {
        let data_dir = self.data_dir.clone();
        let ledger = tokio::task::spawn_blocking(move || Ledger::open(&data_dir))
            .await
            .expect("opening the ledger panicked")?;
        let read = |l: &Ledger| l.run_row(run_id)?.ok_or(RunError::NoSuchRun(run_id));
        let name = read(&ledger)?.task;
        self.task_config(&name)?;
        let lock = TaskLock::try_take(&self.data_dir, &name, trigger).map_err(RunError::Busy)?;
        // With the lock held, a run still `running` is one whose process
        // is gone: it is interrupted, and its backup can be put back.
        settle_held(&ledger, &name)?;
        let row = read(&ledger)?;
        let backup: Backup = row
            .backup
            .clone()
            .and_then(|b| serde_json::from_value(b).ok())
            .ok_or_else(|| {
                RunError::Refused(format!("run {run_id} of `{name}` has no backup to restore"))
            })?;
        if row.status == RunStatus::RolledBack {
            return Err(RunError::Refused(format!(
                "run {run_id} of `{name}` is already rolled back"
            )));
        }
        if let Some(when) = row.backup_pruned_ms {
            return Err(RunError::Refused(format!(
                "run {run_id} of `{name}` cannot be rolled back: its backup was pruned at {} (maintenance.keep_backups / max_backup_bytes)",
                crate::fmt::rfc3339(when)
            )));
        }
        let book = Book(Arc::new(Mutex::new(ledger)));
        let mut task = self.build(&name)?;
        task.set_force_dyn(force);
        let cx = self.cx(&name, run_id);
        let t = Instant::now();
        let result = task.rollback_boxed(&cx, &backup).await;
        let (status, error) = match result {
            Ok(v) if v.ok => {
                book.step(
                    run_id,
                    Step::Rollback,
                    Some(backup.rows),
                    Some(t.elapsed()),
                    format!("on demand ({}): {}", trigger.as_str(), v.detail),
                )
                .await?;
                let (id, dir) = (run_id, cx.backup_dir.clone());
                book.with(move |l| {
                    l.set_rolled_back(id, now_ms())?;
                    refresh_run_file(l, id, &dir);
                    Ok(())
                })
                .await?;
                (RunStatus::RolledBack, None)
            }
            Ok(v) => {
                let why = format!("rollback incomplete: {}", v.detail);
                book.step(run_id, Step::Rollback, None, Some(t.elapsed()), why.clone())
                    .await?;
                (row.status, Some(why))
            }
            Err(e) => {
                let why = format!("rollback failed: {e}");
                book.step(run_id, Step::Rollback, None, Some(t.elapsed()), why.clone())
                    .await?;
                (row.status, Some(why))
            }
        };
        drop(lock);
        let document = book.document(run_id).await?;
        Ok(Finished {
            run_id,
            status,
            error,
            document,
        })
    }

    /// Puts back what a run changed from its backup dir alone: `run.json`
    /// there says which run, of which task, with which plan and backup.
    /// Works when the run's ledger row, or the whole history file, is gone.
    /// The rollback is recorded on the run's row when the ledger still has
    /// it, else on a fresh row when the history file can be opened, and in
    /// `run.json` in any case.
    pub async fn rollback_from_backup(
        &self,
        dir: &Path,
        trigger: Trigger,
    ) -> Result<Finished, RunError> {
        self.rollback_from_backup_forced(dir, trigger, false).await
    }

    /// [`Runner::rollback_from_backup`] with `force` as in
    /// [`Runner::rollback_forced`].
    pub async fn rollback_from_backup_forced(
        &self,
        dir: &Path,
        trigger: Trigger,
        force: bool,
    ) -> Result<Finished, RunError> {
        let file = run_file::read(dir).map_err(RunError::Refused)?;
        let mut row = file.run;
        let (name, run_id) = (row.task.clone(), row.id);
        if self.config.maintenance.get(&name).is_none() {
            return Err(RunError::Refused(format!(
                "{}: the backup is of run {run_id} of task `{name}`, which is not configured (a rollback needs the task's settings)",
                dir.display()
            )));
        }
        let mut backup: Backup = row
            .backup
            .clone()
            .and_then(|b| serde_json::from_value(b).ok())
            .ok_or_else(|| {
                RunError::Refused(format!(
                    "{}: run {run_id} of `{name}` has no backup to restore",
                    dir.display()
                ))
            })?;
        backup.location = run_file::relocate(&backup.location, &file.backup_dir, dir);
        let lock = TaskLock::try_take(&self.data_dir, &name, trigger).map_err(RunError::Busy)?;
        let data_dir = self.data_dir.clone();
        let ledger = match tokio::task::spawn_blocking(move || Ledger::open(&data_dir))
            .await
            .expect("opening the ledger panicked")
        {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(task = %name, run_id, "the rollback from {} is not recorded in the ledger: {e}", dir.display());
                None
            }
        };
        // The same run (same id, task and start) when the ledger still has it.
        let same = ledger.as_ref().and_then(|l| {
            ledger::run_only(l.conn(), run_id)
                .ok()
                .flatten()
                .filter(|r| r.task == row.task && r.started_ms == row.started_ms)
        });
        let known = same.as_ref().unwrap_or(&row);
        if known.status == RunStatus::RolledBack {
            return Err(RunError::Refused(format!(
                "run {run_id} of `{name}` is already rolled back"
            )));
        }
        if let Some(when) = known.backup_pruned_ms {
            return Err(RunError::Refused(format!(
                "run {run_id} of `{name}` cannot be rolled back: its backup was pruned at {}",
                crate::fmt::rfc3339(when)
            )));
        }
        let mut task = self.build(&name)?;
        task.set_force_dyn(force);
        let cx = Cx {
            name: name.clone(),
            run_id,
            backup_dir: dir.to_path_buf(),
            quarantine_dir: quarantine_dir(&self.data_dir, &name, run_id),
            data_dir: self.data_dir.clone(),
            cancel: self.stop.child_token(),
        };
        let t = Instant::now();
        let (rows, error) = match task.rollback_boxed(&cx, &backup).await {
            Ok(v) if v.ok => (Some(backup.rows), Ok(v.detail)),
            Ok(v) => (None, Err(format!("rollback incomplete: {}", v.detail))),
            Err(e) => (None, Err(format!("rollback failed: {e}"))),
        };
        let took = t.elapsed().as_millis() as u64;
        let now = now_ms();
        let from = format!("from {} ({})", dir.display(), trigger.as_str());
        let detail = match &error {
            Ok(d) => format!("on demand {from}: {d}"),
            Err(why) => format!("{from}: {why}"),
        };
        // The ledger row the rollback is recorded on, if any.
        let recorded: Option<i64> = match (&ledger, &same) {
            (Some(l), Some(_)) => {
                l.step(run_id, now, Step::Rollback, rows, Some(took), &detail)?;
                if error.is_ok() {
                    l.set_rolled_back(run_id, now)?;
                }
                Some(run_id)
            }
            (Some(l), None) => {
                // The run's row is gone: a fresh one holds the run's plan
                // and backup as `run.json` kept them, and the rollback.
                let id = l.start_run(&name, &row.kind, trigger, false, now)?;
                for (doc, v) in [(Doc::Plan, &row.plan), (Doc::Backup, &row.backup)] {
                    if let Some(v) = v {
                        l.set(id, doc, v)?;
                    }
                }
                // Which run comes first: a step's detail is capped.
                let what = match &error {
                    Ok(d) => d,
                    Err(why) => why,
                };
                let note = format!(
                    "on demand {from}, the backup of run {run_id} (started {}) whose ledger row is gone: {what}",
                    crate::fmt::rfc3339(row.started_ms)
                );
                l.step(id, now, Step::Rollback, rows, Some(took), &note)?;
                match &error {
                    Ok(_) => {
                        l.finish(id, now, row.status, None)?;
                        l.set_rolled_back(id, now)?;
                    }
                    Err(why) => l.finish(id, now, RunStatus::Failed, Some(why))?,
                }
                Some(id)
            }
            (None, _) => None,
        };
        drop(lock);
        if error.is_ok() {
            row.outcome = row.outcome.or(Some(row.status));
            row.status = RunStatus::RolledBack;
            row.ended_ms = row.ended_ms.or(Some(now));
            if let Err(e) = run_file::write(dir, &row) {
                tracing::warn!(task = %name, run_id, "run.json not updated: {e}");
            }
        }
        let document = match (&ledger, recorded) {
            (Some(l), Some(id)) => {
                let r = l.run_row(id)?.expect("the run just written");
                ledger::result_document(&r)
            }
            _ => ledger::result_document(&row),
        };
        let (status, error) = match error {
            Ok(_) => (RunStatus::RolledBack, None),
            Err(why) => (row.status, Some(why)),
        };
        Ok(Finished {
            run_id: recorded.unwrap_or(run_id),
            status,
            error,
            document,
        })
    }
}

/// Brings the run's `run.json` up to date with its ledger row, when the
/// backup dir has one; a failure is only logged (the ledger has it all).
fn refresh_run_file(l: &Ledger, run_id: i64, dir: &Path) {
    if let Err(e) = run_file::save(l, run_id, dir, true) {
        tracing::warn!(run_id, "run.json not updated: {e}");
    }
}

/// Marks `task`'s runs left `running` as interrupted; the caller holds the
/// task's lock, so their process is gone.
fn settle_held(l: &Ledger, task: &str) -> Result<(), StoreError> {
    for id in l.mark_interrupted(task, now_ms())? {
        tracing::warn!(
            task,
            run_id = id,
            "maintenance run marked interrupted: the process running it stopped before the run ended"
        );
    }
    Ok(())
}

/// Marks the runs of `task` left `running` as interrupted when the task's
/// lock is free (its holder is gone: the kernel dropped the lock with it).
/// `Err(Busy)` when a live process holds the lock: the run is going on.
pub fn settle(l: &Ledger, data_dir: &Path, task: &str, trigger: Trigger) -> Result<(), RunError> {
    let lock = TaskLock::try_take(data_dir, task, trigger).map_err(RunError::Busy)?;
    settle_held(l, task)?;
    drop(lock);
    Ok(())
}

/// Every run left `running` whose task lock is free becomes interrupted,
/// and every ended run without an end gets one: the agent calls this at
/// start and after runs, so that a killed run's row never says `running`
/// for ever. A task whose lock is held is left to its holder.
pub fn settle_all(data_dir: &Path) -> Result<(), StoreError> {
    let l = Ledger::open(data_dir)?;
    l.fill_missing_ends()?;
    for task in l.running_tasks()? {
        match settle(&l, data_dir, &task, Trigger::Schedule) {
            Ok(()) | Err(RunError::Busy(_)) => {}
            Err(RunError::Ledger(e)) => return Err(e),
            Err(e) => tracing::warn!(task, "maintenance runs not settled: {e}"),
        }
    }
    Ok(())
}

/// Where run `run_id` of `task` keeps the files it removed.
pub fn quarantine_dir(data_dir: &Path, task: &str, run_id: i64) -> PathBuf {
    data_dir
        .join("quarantine")
        .join(task)
        .join(run_id.to_string())
}

/// Free bytes for an unprivileged writer on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(l: &Ledger, id: i64) -> (RunStatus, Option<i64>, Vec<Step>) {
        let (r, steps) = ledger::run(l.conn(), id).unwrap().unwrap();
        (r.status, r.ended_ms, steps.iter().map(|s| s.step).collect())
    }

    #[test]
    fn runs_left_running_end_at_their_last_step_unless_their_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        let t0 = 1_700_000_000_000;
        let stepped = l
            .start_run("a", "scratch", Trigger::Api, false, t0)
            .unwrap();
        l.step(
            stepped,
            t0 + 5_000,
            Step::Batch,
            Some(10),
            Some(3),
            "batch 1",
        )
        .unwrap();
        let bare = l
            .start_run("b", "scratch", Trigger::Cli, false, t0)
            .unwrap();
        // Rolled back on demand by a version that recorded no end.
        let old = l
            .start_run("c", "scratch", Trigger::Cli, false, t0)
            .unwrap();
        l.step(old, t0 + 9_000, Step::Rollback, Some(1), None, "on demand")
            .unwrap();
        l.conn()
            .execute(
                "UPDATE maintenance_runs SET status = 'rolled_back' WHERE id = ?1",
                [old],
            )
            .unwrap();

        let held = TaskLock::try_take(dir.path(), "b", Trigger::Cli).unwrap();
        settle_all(dir.path()).unwrap();
        assert_eq!(
            row(&l, stepped),
            (
                RunStatus::Interrupted,
                Some(t0 + 5_000),
                vec![Step::Batch, Step::End]
            )
        );
        assert_eq!(row(&l, bare), (RunStatus::Running, None, vec![]));
        assert_eq!(row(&l, old).1, Some(t0 + 9_000));

        drop(held);
        settle_all(dir.path()).unwrap();
        assert_eq!(
            row(&l, bare),
            (RunStatus::Interrupted, Some(t0), vec![Step::End])
        );
        // Settled runs are not settled again.
        settle_all(dir.path()).unwrap();
        assert_eq!(row(&l, stepped).2, vec![Step::Batch, Step::End]);
    }
}
