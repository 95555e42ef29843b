//! Drives one run of a task, for the agent's schedule, the CLI and the API
//! alike: lock → gate (window open, guarded probes healthy) → figures →
//! plan → (dry run ends here) → gate (room for the backup) → backup →
//! batches, with the guard, pacing, window, timeout and shutdown checked
//! between batches → validate → rollback when validation fails → figures.
//! Every step goes to the ledger as it happens.
//!
//! The guard ticks the guarded probes itself between batches (in the agent
//! and in the CLI alike): healthy goes on, degraded pauses and re-checks,
//! unhealthy aborts. Pacing follows the guard's latency: a batch is halved
//! and the pause lengthened while a guarded probe answers more than twice
//! as slowly as before the run, and grown back while it answers near its
//! baseline.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::ledger::{self, Doc, Ledger, Trigger};
use super::lock::TaskLock;
use super::schedule::{AutoChoice, Schedule};
use super::{AnyTask, Backup, Cx, Plan, TaskConfig, TaskError};
use crate::config::Config;
use crate::probes::{self, AnyProbe, Assessor, BuildContext, Probe, ProbeSpec};
use crate::sample::{Status, now_ms};
use crate::store::StoreError;

/// How often a degraded guard is checked again while a run pauses.
pub const GUARD_RECHECK: Duration = Duration::from_secs(2);
/// Smallest batch pacing shrinks to.
pub const MIN_BATCH: u64 = 100;
/// Longest pause pacing grows to.
pub const MAX_PAUSE: Duration = Duration::from_secs(2);
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
    /// succeeded, failed, aborted, rolled_back, refused
    pub status: String,
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
        step: &'static str,
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

/// The probes guarding a task, ticked by the runner itself.
struct Guard {
    probes: Vec<(ProbeSpec, AnyProbe, Assessor)>,
    /// Median tick time before the run, per probe.
    baseline: Vec<Duration>,
}

enum GuardState {
    Healthy { slowest_ratio: f64 },
    Degraded(String),
    Unhealthy(String),
}

impl Guard {
    fn build(config: &Config, data_dir: &Path, names: &[String]) -> Guard {
        let ctx = BuildContext {
            data_dir: data_dir.to_path_buf(),
        };
        let probes = probes::build(config, &ctx)
            .into_iter()
            .filter(|(s, _)| names.contains(&s.name))
            .map(|(s, p)| (s, p, Assessor::default()))
            .collect();
        Guard {
            probes,
            baseline: Vec::new(),
        }
    }

    /// One tick of every guarded probe: the worst status, and how much
    /// slower than its baseline the slowest one answered.
    async fn check(&mut self) -> (GuardState, Vec<Duration>) {
        let mut worst = GuardState::Healthy { slowest_ratio: 0.0 };
        let mut took = Vec::new();
        for (i, (spec, probe, assessor)) in self.probes.iter_mut().enumerate() {
            let started = Instant::now();
            let result = tokio::time::timeout(spec.timeout, probe.sample()).await;
            let t = started.elapsed();
            took.push(t);
            let (status, reason) = match result {
                Err(_) => (
                    Status::Unhealthy,
                    Some(format!("timed out after {:?}", spec.timeout)),
                ),
                Ok(Err(e)) => (Status::Unhealthy, Some(e.to_string())),
                Ok(Ok(readings)) => assessor.assess(&spec.thresholds, &readings, now_ms()),
            };
            let why = || format!("{}: {}", spec.name, reason.clone().unwrap_or_default());
            worst = match (status, worst) {
                (Status::Unhealthy, GuardState::Unhealthy(w)) => GuardState::Unhealthy(w),
                (Status::Unhealthy, _) => GuardState::Unhealthy(why()),
                (_, GuardState::Unhealthy(w)) => GuardState::Unhealthy(w),
                (Status::Degraded, GuardState::Degraded(w)) => GuardState::Degraded(w),
                (Status::Degraded, _) => GuardState::Degraded(why()),
                (_, GuardState::Degraded(w)) => GuardState::Degraded(w),
                (_, GuardState::Healthy { slowest_ratio }) => {
                    let base = self.baseline.get(i).copied().unwrap_or(t);
                    let ratio = t.as_secs_f64() / (base.as_secs_f64() + 0.002);
                    GuardState::Healthy {
                        slowest_ratio: slowest_ratio.max(ratio),
                    }
                }
            };
        }
        (worst, took)
    }
}

fn task_err(e: TaskError) -> String {
    e.to_string()
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
                l.mark_interrupted(&name, now_ms())?;
                l.start_run(&name, kind, trigger, dry, now_ms())
            })
            .await?;
        if let Some(tx) = started {
            let _ = tx.send(run_id);
        }
        let started_at = Instant::now();
        let result = self.drive(&req, &tc, &schedule, auto, run_id, &book).await;
        let (status, error) = match result {
            Ok(status) => (status, None),
            Err((status, e)) => (status, Some(e)),
        };
        if let Some(e) = &error {
            let _ = book
                .step(run_id, "end", None, Some(started_at.elapsed()), e.clone())
                .await;
        }
        let (st, err) = (status.clone(), error.clone());
        book.with(move |l| l.finish(run_id, now_ms(), &st, err.as_deref()))
            .await?;
        drop(lock);
        let document = book
            .with(move |l| {
                let (row, _) = ledger::run(l.conn(), run_id)
                    .map_err(crate::store::sql_err(Path::new("history.db")))?
                    .expect("the run just written");
                Ok(ledger::result_document(&row))
            })
            .await?;
        match &error {
            Some(e) => {
                tracing::warn!(task = %req.task, run_id, status = %status, "maintenance run ended: {e}")
            }
            None => {
                tracing::info!(task = %req.task, run_id, status = %status, "maintenance run ended")
            }
        }
        Ok(Finished {
            run_id,
            status,
            error,
            document,
        })
    }

    /// The steps of a run after its ledger row exists. `Ok(status)` or
    /// `Err((status, why))`.
    async fn drive(
        &self,
        req: &Request,
        tc: &TaskConfig,
        schedule: &Schedule,
        auto: Option<&AutoChoice>,
        run_id: i64,
        book: &Book,
    ) -> Result<String, (String, String)> {
        let ledger_err = |e: StoreError| ("failed".to_string(), format!("maintenance ledger: {e}"));
        let refused = |why: String| ("refused".to_string(), why);
        let failed = |why: String| ("failed".to_string(), why);
        let name = req.task.as_str();
        let cx = self.cx(name, run_id);
        let started = Instant::now();
        let deadline = started + tc.timeout();

        // Gate: window, then the guarded probes.
        let window_close = if req.ignore_window {
            None
        } else {
            match schedule.open_until(Utc::now(), auto) {
                Ok(close) => close,
                Err(why) => {
                    book.step(run_id, "gate", None, None, why.clone())
                        .await
                        .map_err(ledger_err)?;
                    return Err(refused(why));
                }
            }
        };
        let mut guard = Guard::build(&self.config, &self.data_dir, &tc.guards());
        let mut base: Vec<Vec<Duration>> = vec![Vec::new(); guard.probes.len()];
        for _ in 0..3 {
            match guard.check().await {
                (GuardState::Healthy { .. }, took) => {
                    for (b, t) in base.iter_mut().zip(took) {
                        b.push(t);
                    }
                }
                (GuardState::Degraded(why) | GuardState::Unhealthy(why), _) => {
                    let why = format!("guarded probe not healthy: {why}");
                    book.step(run_id, "gate", None, None, why.clone())
                        .await
                        .map_err(ledger_err)?;
                    return Err(refused(why));
                }
            }
        }
        guard.baseline = base
            .into_iter()
            .map(|mut v| {
                v.sort();
                v.get(v.len() / 2).copied().unwrap_or_default()
            })
            .collect();
        let guards = match tc.guards().join(", ") {
            g if g.is_empty() => "no guard (the window alone gates this task)".to_string(),
            g => format!("guards healthy ({g})"),
        };
        book.step(
            run_id,
            "gate",
            None,
            None,
            format!(
                "open{}; {guards}",
                if req.ignore_window {
                    " (window ignored on request)"
                } else {
                    ""
                }
            ),
        )
        .await
        .map_err(ledger_err)?;

        let mut task = self.build(name).map_err(|e| failed(e.to_string()))?;
        match task.figures_boxed().await {
            Ok(f) => book.set(run_id, Doc::Before, f).await.map_err(ledger_err)?,
            Err(e) => {
                book.step(run_id, "figures", None, None, format!("before: {e}"))
                    .await
                    .map_err(ledger_err)?;
            }
        }
        let t = Instant::now();
        let plan = match task.plan_boxed(&cx).await {
            Ok(p) => p,
            Err(e) => {
                let why = format!("plan: {}", task_err(e));
                book.step(run_id, "plan", None, Some(t.elapsed()), why.clone())
                    .await
                    .map_err(ledger_err)?;
                return Err(failed(why));
            }
        };
        book.set(
            run_id,
            Doc::Plan,
            serde_json::to_value(&plan).expect("serializable"),
        )
        .await
        .map_err(ledger_err)?;
        book.step(
            run_id,
            "plan",
            Some(plan.rows),
            Some(t.elapsed()),
            plan.summary.clone(),
        )
        .await
        .map_err(ledger_err)?;
        if req.dry_run {
            return Ok("succeeded".into());
        }

        // Room for the backup.
        let need = task.backup_bytes_dyn(&plan);
        std::fs::create_dir_all(&cx.backup_dir)
            .map_err(|e| failed(format!("backup dir {}: {e}", cx.backup_dir.display())))?;
        let free = free_bytes(&cx.backup_dir)
            .map_err(|e| failed(format!("backup dir {}: {e}", cx.backup_dir.display())))?;
        if free < need.saturating_add(DISK_MARGIN_BYTES) {
            let why = format!(
                "not enough room for the backup in {}: {} MiB free, {} MiB needed plus a {} MiB margin",
                cx.backup_dir.display(),
                free >> 20,
                need >> 20,
                DISK_MARGIN_BYTES >> 20
            );
            book.step(run_id, "gate", None, None, why.clone())
                .await
                .map_err(ledger_err)?;
            return Err(refused(why));
        }
        let t = Instant::now();
        let backup = match task.backup_boxed(&cx, &plan).await {
            Ok(b) => b,
            Err(e) => {
                let why = format!("backup: {}", task_err(e));
                book.step(run_id, "backup", None, Some(t.elapsed()), why.clone())
                    .await
                    .map_err(ledger_err)?;
                return Err(failed(why));
            }
        };
        book.set(
            run_id,
            Doc::Backup,
            serde_json::to_value(&backup).expect("serializable"),
        )
        .await
        .map_err(ledger_err)?;
        book.step(
            run_id,
            "backup",
            None,
            Some(t.elapsed()),
            format!("backup at {}", backup.location),
        )
        .await
        .map_err(ledger_err)?;

        // Batches.
        let (full, base_pause) = (tc.batch_size(), tc.pause());
        let (mut size, mut pause) = (full, base_pause);
        let mut batch_no = 0u64;
        loop {
            // Safe point: between batches.
            let stop_why = if self.stop.is_cancelled() {
                Some("the agent is stopping".to_string())
            } else if Instant::now() >= deadline {
                Some(format!("timeout {:?} reached", tc.timeout()))
            } else if window_close.is_some_and(|c| Utc::now() >= c) {
                Some("the window closed".to_string())
            } else {
                None
            };
            if let Some(why) = stop_why {
                self.save_backup(task.backup_state_dyn(), run_id, book)
                    .await
                    .map_err(ledger_err)?;
                book.step(run_id, "abort", None, None, why.clone())
                    .await
                    .map_err(ledger_err)?;
                return Err(("aborted".into(), format!("stopped between batches: {why}")));
            }
            match guard.check().await.0 {
                GuardState::Unhealthy(why) => {
                    self.save_backup(task.backup_state_dyn(), run_id, book)
                        .await
                        .map_err(ledger_err)?;
                    let why = format!("guarded probe unhealthy: {why}");
                    book.step(run_id, "abort", None, None, why.clone())
                        .await
                        .map_err(ledger_err)?;
                    return Err(("aborted".into(), format!("stopped between batches: {why}")));
                }
                GuardState::Degraded(why) => {
                    book.step(
                        run_id,
                        "pause",
                        None,
                        Some(GUARD_RECHECK),
                        format!("guarded probe degraded: {why}"),
                    )
                    .await
                    .map_err(ledger_err)?;
                    tokio::select! {
                        _ = self.stop.cancelled() => {}
                        _ = tokio::time::sleep(GUARD_RECHECK) => {}
                    }
                    continue;
                }
                GuardState::Healthy { slowest_ratio } => {
                    // Pacing: back off while the guarded service is slow.
                    if slowest_ratio > 2.0 && size > MIN_BATCH {
                        size = (size / 2).max(MIN_BATCH);
                        pause = (pause * 2 + Duration::from_millis(10)).min(MAX_PAUSE);
                    } else if slowest_ratio < 1.2 && (size < full || pause > base_pause) {
                        size = (size + size / 4 + 1).min(full);
                        pause = (pause * 3 / 4).max(base_pause);
                    }
                }
            }
            let t = Instant::now();
            let left = deadline.saturating_duration_since(t);
            let batch = tokio::time::timeout(left, task.apply_batch_boxed(&cx, &plan, size)).await;
            batch_no += 1;
            match batch {
                Ok(Ok(b)) => {
                    book.with({
                        let rows = b.rows;
                        move |l| l.add_batch(run_id, rows)
                    })
                    .await
                    .map_err(ledger_err)?;
                    book.step(
                        run_id,
                        "batch",
                        Some(b.rows),
                        Some(t.elapsed()),
                        format!(
                            "batch {batch_no} (size {size}, pause {pause:?}): {}",
                            b.detail
                        ),
                    )
                    .await
                    .map_err(ledger_err)?;
                    if batch_no.is_multiple_of(10) {
                        self.save_backup(task.backup_state_dyn(), run_id, book)
                            .await
                            .map_err(ledger_err)?;
                    }
                    if b.done {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    self.save_backup(task.backup_state_dyn(), run_id, book)
                        .await
                        .map_err(ledger_err)?;
                    let why = format!("batch {batch_no}: {}", task_err(e));
                    book.step(run_id, "error", None, Some(t.elapsed()), why.clone())
                        .await
                        .map_err(ledger_err)?;
                    return Err(failed(why));
                }
                Err(_) => {
                    self.save_backup(task.backup_state_dyn(), run_id, book)
                        .await
                        .map_err(ledger_err)?;
                    let why = format!(
                        "batch {batch_no}: the run's timeout {:?} ran out",
                        tc.timeout()
                    );
                    book.step(run_id, "error", None, Some(t.elapsed()), why.clone())
                        .await
                        .map_err(ledger_err)?;
                    return Err(failed(why));
                }
            }
            if !pause.is_zero() {
                tokio::select! {
                    _ = self.stop.cancelled() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        self.save_backup(task.backup_state_dyn(), run_id, book)
            .await
            .map_err(ledger_err)?;

        // Validate; roll back when the result is not what the plan said.
        let t = Instant::now();
        let verdict = task.validate_boxed(&cx, &plan).await;
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => super::Verdict {
                ok: false,
                detail: format!("validation could not run: {e}"),
                figures: Value::Null,
            },
        };
        book.set(
            run_id,
            Doc::Verdict,
            serde_json::to_value(&verdict).expect("serializable"),
        )
        .await
        .map_err(ledger_err)?;
        book.step(
            run_id,
            "validate",
            None,
            Some(t.elapsed()),
            verdict.detail.clone(),
        )
        .await
        .map_err(ledger_err)?;
        if let Ok(f) = task.figures_boxed().await {
            book.set(run_id, Doc::After, f).await.map_err(ledger_err)?;
        }
        if verdict.ok {
            return Ok("succeeded".into());
        }
        if !task.reversible_dyn() {
            return Err(failed(format!("validation failed: {}", verdict.detail)));
        }
        let backup = task.backup_state_dyn().unwrap_or(backup);
        let t = Instant::now();
        match task.rollback_boxed(&cx, &backup).await {
            Ok(v) if v.ok => {
                book.step(
                    run_id,
                    "rollback",
                    Some(backup.rows),
                    Some(t.elapsed()),
                    v.detail,
                )
                .await
                .map_err(ledger_err)?;
                Err((
                    "rolled_back".into(),
                    format!("validation failed, rolled back: {}", verdict.detail),
                ))
            }
            Ok(v) => {
                book.step(
                    run_id,
                    "rollback",
                    None,
                    Some(t.elapsed()),
                    v.detail.clone(),
                )
                .await
                .map_err(ledger_err)?;
                Err(failed(format!(
                    "validation failed ({}) and the rollback is incomplete: {}",
                    verdict.detail, v.detail
                )))
            }
            Err(e) => {
                let why = format!(
                    "validation failed ({}) and the rollback failed: {e}",
                    verdict.detail
                );
                book.step(run_id, "rollback", None, Some(t.elapsed()), why.clone())
                    .await
                    .map_err(ledger_err)?;
                Err(failed(why))
            }
        }
    }

    async fn save_backup(
        &self,
        backup: Option<Backup>,
        run_id: i64,
        book: &Book,
    ) -> Result<(), StoreError> {
        match backup {
            Some(b) => {
                book.set(
                    run_id,
                    Doc::Backup,
                    serde_json::to_value(&b).expect("serializable"),
                )
                .await
            }
            None => Ok(()),
        }
    }

    /// Puts back what run `run_id` changed, from its backup in the ledger.
    pub async fn rollback(&self, run_id: i64, trigger: Trigger) -> Result<Finished, RunError> {
        let data_dir = self.data_dir.clone();
        let ledger = tokio::task::spawn_blocking(move || Ledger::open(&data_dir))
            .await
            .expect("opening the ledger panicked")?;
        let (row, _) = ledger::run(ledger.conn(), run_id)
            .map_err(crate::store::sql_err(Path::new("history.db")))?
            .ok_or(RunError::NoSuchRun(run_id))?;
        let name = row.task.clone();
        self.task_config(&name)?;
        let backup: Backup = row
            .backup
            .clone()
            .and_then(|b| serde_json::from_value(b).ok())
            .ok_or_else(|| {
                RunError::Refused(format!("run {run_id} of `{name}` has no backup to restore"))
            })?;
        if row.status == "rolled_back" {
            return Err(RunError::Refused(format!(
                "run {run_id} of `{name}` is already rolled back"
            )));
        }
        let lock = TaskLock::try_take(&self.data_dir, &name, trigger).map_err(RunError::Busy)?;
        let book = Book(Arc::new(Mutex::new(ledger)));
        let mut task = self.build(&name)?;
        let cx = self.cx(&name, run_id);
        let t = Instant::now();
        let result = task.rollback_boxed(&cx, &backup).await;
        let (status, error) = match result {
            Ok(v) if v.ok => {
                book.step(
                    run_id,
                    "rollback",
                    Some(backup.rows),
                    Some(t.elapsed()),
                    format!("on demand ({}): {}", trigger.as_str(), v.detail),
                )
                .await?;
                let id = run_id;
                book.with(move |l| l.set_status(id, "rolled_back")).await?;
                ("rolled_back".to_string(), None)
            }
            Ok(v) => {
                let why = format!("rollback incomplete: {}", v.detail);
                book.step(run_id, "rollback", None, Some(t.elapsed()), why.clone())
                    .await?;
                (row.status.clone(), Some(why))
            }
            Err(e) => {
                let why = format!("rollback failed: {e}");
                book.step(run_id, "rollback", None, Some(t.elapsed()), why.clone())
                    .await?;
                (row.status.clone(), Some(why))
            }
        };
        drop(lock);
        let document = book
            .with(move |l| {
                let (row, _) = ledger::run(l.conn(), run_id)
                    .map_err(crate::store::sql_err(Path::new("history.db")))?
                    .expect("the run exists");
                Ok(ledger::result_document(&row))
            })
            .await?;
        Ok(Finished {
            run_id,
            status,
            error,
            document,
        })
    }
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
