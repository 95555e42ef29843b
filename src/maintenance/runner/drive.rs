//! The steps of one run after its ledger row exists: gate → figures → plan
//! → (a dry run ends here) → room for the backup → backup → batches (guard,
//! pacing, window, timeout and shutdown checked between them) → validate →
//! rollback when validation fails. Each step either goes on or ends the
//! run through the one abort path, [`Drive::end`], which saves the backup
//! as it stands, records the step and says how the run ended. Each save of
//! the backup's state also refreshes the copy of the run's ledger row kept
//! in the backup dir (`run_file`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::guard::{Guard, GuardState, Waits};
use super::pacing::{Direction, Pacing};
use super::{Book, DISK_MARGIN_BYTES, GUARD_RECHECK, Request, Runner, free_bytes, run_file};
use crate::maintenance::ledger::{Doc, RunStatus, Step};
use crate::maintenance::schedule::{AutoChoice, Schedule};
use crate::maintenance::{AnyTask, Backup, Cx, Plan, TaskConfig, Verdict};
use crate::store::StoreError;

/// Batches between saves of the backup's state to the ledger.
const SAVE_EVERY: u64 = 10;

/// Why a run ends before it succeeds.
pub(super) struct Stop {
    pub status: RunStatus,
    /// The step recorded for it (none when it was already recorded).
    step: Option<(Step, Option<Duration>, String)>,
    /// Whether the backup as it stands is saved to the ledger first.
    save_backup: bool,
    /// The run's error.
    pub why: String,
}

impl Stop {
    fn refused(why: String) -> Stop {
        Stop {
            status: RunStatus::Refused,
            step: Some((Step::Gate, None, why.clone())),
            save_backup: false,
            why,
        }
    }

    fn failed(step: Step, took: Option<Duration>, why: String) -> Stop {
        Stop {
            status: RunStatus::Failed,
            step: Some((step, took, why.clone())),
            save_backup: false,
            why,
        }
    }

    /// Stopped at a safe point between batches.
    fn aborted(why: String) -> Stop {
        Stop {
            status: RunStatus::Aborted,
            step: Some((Step::Abort, None, why.clone())),
            save_backup: true,
            why: format!("stopped between batches: {why}"),
        }
    }

    /// A batch failed or ran out of time: what it changed is backed up.
    fn batch_failed(took: Duration, why: String) -> Stop {
        Stop {
            save_backup: true,
            ..Stop::failed(Step::Error, Some(took), why)
        }
    }

    /// Already recorded: only the run's status and error are left to say.
    fn recorded(status: RunStatus, why: String) -> Stop {
        Stop {
            status,
            step: None,
            save_backup: false,
            why,
        }
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        Stop::recorded(RunStatus::Failed, format!("maintenance ledger: {e}"))
    }
}

/// One run in progress.
pub(super) struct Drive<'a> {
    pub runner: &'a Runner,
    pub req: &'a Request,
    pub tc: &'a TaskConfig,
    pub run_id: i64,
    pub book: &'a Book,
    pub cx: Cx,
    pub deadline: Instant,
}

impl Drive<'_> {
    /// Every step; `Ok` is how a run that went to its end ended.
    pub async fn run(
        &self,
        schedule: &Schedule,
        auto: Option<&AutoChoice>,
    ) -> Result<RunStatus, Stop> {
        let (mut guard, window_close) = match self.gate(schedule, auto).await {
            Ok(g) => g,
            Err(stop) => return Err(self.end(None, stop).await),
        };
        let mut task = self
            .runner
            .build(&self.req.task)
            .map_err(|e| Stop::recorded(RunStatus::Failed, e.to_string()))?;
        let result = self.work(&mut task, &mut guard, window_close).await;
        match result {
            Ok(status) => Ok(status),
            Err(stop) => {
                let backup = task.backup_state_dyn();
                Err(self.end(backup, stop).await)
            }
        }
    }

    /// The one abort path: saves the backup as it stands when the stop
    /// asks for it, records the stop's step, and hands the stop back.
    async fn end(&self, backup: Option<Backup>, mut stop: Stop) -> Stop {
        if stop.save_backup
            && let Err(e) = self.save_backup(backup).await
        {
            return Stop::from(e);
        }
        if let Some((step, took, detail)) = stop.step.take()
            && let Err(e) = self.book.step(self.run_id, step, None, took, detail).await
        {
            return Stop::from(e);
        }
        stop
    }

    async fn work(
        &self,
        task: &mut AnyTask,
        guard: &mut Guard,
        window_close: Option<DateTime<Utc>>,
    ) -> Result<RunStatus, Stop> {
        match task.figures_boxed().await {
            Ok(f) => self.book.set(self.run_id, Doc::Before, f).await?,
            Err(e) => {
                self.book
                    .step(
                        self.run_id,
                        Step::Figures,
                        None,
                        None,
                        format!("before: {e}"),
                    )
                    .await?
            }
        }
        let plan = self.plan(task).await?;
        if self.req.dry_run {
            return Ok(RunStatus::Succeeded);
        }
        let backup = self.backup(task, &plan).await?;
        self.batches(task, &plan, guard, window_close).await?;
        self.save_backup(task.backup_state_dyn()).await?;
        self.validate(task, &plan, backup).await
    }

    /// The window, then the guarded probes. Returns the guard, measured,
    /// and when the window closes (none: the window was ignored on request
    /// or the task has none).
    async fn gate(
        &self,
        schedule: &Schedule,
        auto: Option<&AutoChoice>,
    ) -> Result<(Guard, Option<DateTime<Utc>>), Stop> {
        let window_close = if self.req.ignore_window {
            None
        } else {
            schedule
                .open_until(Utc::now(), auto)
                .map_err(Stop::refused)?
        };
        let guards = self.tc.guards();
        let mut guard = Guard::build(&self.runner.config, &self.runner.data_dir, &guards);
        if let Err(why) = guard.open().await {
            return Err(Stop::refused(format!("guarded probe not healthy: {why}")));
        }
        let guards = match guards.join(", ") {
            g if g.is_empty() => "no guard (the window alone gates this task)".to_string(),
            g => format!("guards healthy ({g})"),
        };
        let open = if self.req.ignore_window {
            "open (window ignored on request)"
        } else {
            "open"
        };
        self.book
            .step(
                self.run_id,
                Step::Gate,
                None,
                None,
                format!("{open}; {guards}"),
            )
            .await?;
        Ok((guard, window_close))
    }

    async fn plan(&self, task: &mut AnyTask) -> Result<Plan, Stop> {
        let t = Instant::now();
        let plan = task
            .plan_boxed(&self.cx)
            .await
            .map_err(|e| Stop::failed(Step::Plan, Some(t.elapsed()), format!("plan: {e}")))?;
        self.book
            .set(self.run_id, Doc::Plan, to_value(&plan))
            .await?;
        self.book
            .step(
                self.run_id,
                Step::Plan,
                Some(plan.rows),
                Some(t.elapsed()),
                plan.summary.clone(),
            )
            .await?;
        Ok(plan)
    }

    /// Checks the room for the backup, then makes it.
    async fn backup(&self, task: &mut AnyTask, plan: &Plan) -> Result<Backup, Stop> {
        let dir = &self.cx.backup_dir;
        let need = task.backup_bytes_dyn(plan);
        let io = |e: std::io::Error| {
            Stop::recorded(
                RunStatus::Failed,
                format!("backup dir {}: {e}", dir.display()),
            )
        };
        crate::maintenance::backup_files::create_dir(dir).map_err(io)?;
        let free = free_bytes(dir).map_err(io)?;
        if free < need.saturating_add(DISK_MARGIN_BYTES) {
            return Err(Stop::refused(format!(
                "not enough room for the backup in {}: {} MiB free, {} MiB needed plus a {} MiB margin",
                dir.display(),
                free >> 20,
                need >> 20,
                DISK_MARGIN_BYTES >> 20
            )));
        }
        for (at, need, what) in task.room_needed_dyn(plan) {
            let existing = at.ancestors().find(|p| p.exists()).unwrap_or(&at);
            let free = free_bytes(existing).map_err(io)?;
            if free < need {
                return Err(Stop::refused(format!(
                    "not enough room at {}: {} MiB free, {} MiB needed ({what})",
                    at.display(),
                    free >> 20,
                    need >> 20
                )));
            }
        }
        let t = Instant::now();
        let backup = task
            .backup_boxed(&self.cx, plan)
            .await
            .map_err(|e| Stop::failed(Step::Backup, Some(t.elapsed()), format!("backup: {e}")))?;
        self.book
            .set(self.run_id, Doc::Backup, to_value(&backup))
            .await?;
        self.keep_run_file().await;
        self.book
            .step(
                self.run_id,
                Step::Backup,
                None,
                Some(t.elapsed()),
                format!("backup at {}", backup.location),
            )
            .await?;
        Ok(backup)
    }

    /// Why the run must stop at this safe point, if it must.
    fn stop_reason(&self, window_close: Option<DateTime<Utc>>) -> Option<String> {
        if self.runner.stop.is_cancelled() {
            Some("the agent is stopping".to_string())
        } else if Instant::now() >= self.deadline {
            Some(format!("timeout {:?} reached", self.tc.timeout()))
        } else if window_close.is_some_and(|c| Utc::now() >= c) {
            Some("the window closed".to_string())
        } else {
            None
        }
    }

    /// Batches until the task says it is done, checking between batches.
    /// Each healthy check feeds pacing; each change it makes is a
    /// `pacing` step saying why.
    async fn batches(
        &self,
        task: &mut AnyTask,
        plan: &Plan,
        guard: &mut Guard,
        window_close: Option<DateTime<Utc>>,
    ) -> Result<(), Stop> {
        let mut pacing = Pacing::new(self.tc.pacing());
        let mut batch_no = 0u64;
        // Backends the guard saw waiting since the last batch step, and
        // over the run.
        let (mut waits, mut run_waits) = (Waits::new(), Waits::new());
        let (mut backs, mut recovers) = (0u32, 0u32);
        // The guard's check and the batch's ledger writes are part of the
        // pause: checked right after a batch, the signal also sees what the
        // batch left behind (WAL being written out), and the duty budget
        // counts the check.
        let mut paused_from: Option<Instant> = None;
        // Checks are on a timer, not per batch: a check costs the server
        // what an application transaction costs (a flushed commit with
        // `write_check`), and short batches come tens of times a second.
        let every = self.tc.guard_every();
        let mut checked: Option<Instant> = None;
        let mut checks = 0u64;
        loop {
            if let Some(why) = self.stop_reason(window_close) {
                return Err(Stop::aborted(why));
            }
            let due = checked.is_none_or(|t| t.elapsed() >= every);
            let state = if due {
                checked = Some(Instant::now());
                checks += 1;
                guard.check(&mut waits).await.0
            } else {
                GuardState::Healthy { signal: None }
            };
            match state {
                GuardState::Unhealthy(why) => {
                    return Err(Stop::aborted(format!("guarded probe unhealthy: {why}")));
                }
                GuardState::Degraded(why) => {
                    self.book
                        .step(
                            self.run_id,
                            Step::Pause,
                            None,
                            Some(GUARD_RECHECK),
                            format!("guarded probe degraded: {why}"),
                        )
                        .await?;
                    self.sleep(GUARD_RECHECK).await;
                    continue;
                }
                GuardState::Healthy {
                    signal: Some(signal),
                } => {
                    if let Some(change) = pacing.observe(signal) {
                        match change.direction {
                            Direction::BackOff => backs += 1,
                            Direction::Recover => recovers += 1,
                        }
                        self.book
                            .step(
                                self.run_id,
                                Step::Pacing,
                                None,
                                None,
                                format!("{change}; {}", waits_text(&waits)),
                            )
                            .await?;
                    }
                }
                GuardState::Healthy { signal: None } => {}
            }
            if let Some(from) = paused_from.take() {
                self.sleep(pacing.pause.saturating_sub(from.elapsed()))
                    .await;
                if let Some(why) = self.stop_reason(window_close) {
                    return Err(Stop::aborted(why));
                }
            }
            batch_no += 1;
            let started = Instant::now();
            let (done, units, took) = self
                .batch(task, plan, batch_no, &pacing, guard, &mut waits)
                .await?;
            pacing.batch_done(units, took);
            for (k, n) in std::mem::take(&mut waits) {
                *run_waits.entry(k).or_default() += n;
            }
            if done {
                let summary = format!(
                    "{batch_no} batches; {checks} guard checks (every {}ms at most); \
                     {backs} back-offs, {recovers} recoveries; \
                     at the end size {}, pause {:.1}ms, share {:.3}, a batch {}; over the run {}",
                    every.as_millis(),
                    pacing.size,
                    pacing.pause.as_secs_f64() * 1000.0,
                    pacing.share(),
                    pacing
                        .cost()
                        .map_or("not measured".to_string(), |c| c.to_string()),
                    waits_text(&run_waits)
                );
                self.book
                    .step(self.run_id, Step::Summary, None, None, summary)
                    .await?;
                return Ok(());
            }
            // The pause runs from the end of the batch's work: the ledger
            // writes after it are the agent's, not the server's, time.
            paused_from = Some(started + took);
        }
    }

    /// One batch, counted and recorded; whether the task is done, how
    /// many units it did and how long it took. While
    /// it runs, the guarded probes are watched: an unhealthy one (or the
    /// agent stopping) cancels `Cx::cancel`, which a kind with one long
    /// batch (a dump, a restore) obeys at once; its error then ends the
    /// run `aborted`.
    async fn batch(
        &self,
        task: &mut AnyTask,
        plan: &Plan,
        batch_no: u64,
        pacing: &Pacing,
        guard: &mut Guard,
        waits: &mut Waits,
    ) -> Result<(bool, u64, Duration), Stop> {
        let t = Instant::now();
        let left = self.deadline.saturating_duration_since(t);
        let size = pacing.size;
        let cx = Cx {
            cancel: self.runner.stop.child_token(),
            ..self.cx.clone()
        };
        let cancel = cx.cancel.clone();
        let mut cancelled_why: Option<String> = None;
        let result = {
            let work = tokio::time::timeout(left, task.apply_batch_boxed(&cx, plan, size));
            let watch = watch_guard(guard, &cancel, waits);
            tokio::pin!(work, watch);
            loop {
                tokio::select! {
                    r = &mut work => break r,
                    why = &mut watch, if cancelled_why.is_none() => {
                        cancel.cancel();
                        cancelled_why = Some(why);
                    }
                }
            }
        };
        if let (Some(why), Ok(Err(e))) = (&cancelled_why, &result) {
            return Err(Stop::aborted(format!(
                "{why}; batch {batch_no} cancelled: {e}"
            )));
        }
        let b = match result {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                return Err(Stop::batch_failed(
                    t.elapsed(),
                    format!("batch {batch_no}: {e}"),
                ));
            }
            Err(_) => {
                return Err(Stop::batch_failed(
                    t.elapsed(),
                    format!(
                        "batch {batch_no}: the run's timeout {:?} ran out",
                        self.tc.timeout()
                    ),
                ));
            }
        };
        let took = t.elapsed();
        let (run_id, rows) = (self.run_id, b.rows);
        self.book.with(move |l| l.add_batch(run_id, rows)).await?;
        self.book
            .step(
                run_id,
                Step::Batch,
                Some(b.rows),
                Some(took),
                format!(
                    "batch {batch_no} (size {size}, pause {:?}, share {:.3}; {}): {}",
                    pacing.pause,
                    pacing.share(),
                    waits_text(waits),
                    b.detail
                ),
            )
            .await?;
        if batch_no.is_multiple_of(SAVE_EVERY) {
            self.save_backup(task.backup_state_dyn()).await?;
        }
        Ok((b.done, b.rows, took))
    }

    /// Checks the result; rolls back when it is not what the plan said.
    async fn validate(
        &self,
        task: &mut AnyTask,
        plan: &Plan,
        backup: Backup,
    ) -> Result<RunStatus, Stop> {
        let t = Instant::now();
        let verdict = task
            .validate_boxed(&self.cx, plan)
            .await
            .unwrap_or_else(|e| Verdict {
                ok: false,
                detail: format!("validation could not run: {e}"),
                figures: Value::Null,
            });
        self.book
            .set(self.run_id, Doc::Verdict, to_value(&verdict))
            .await?;
        self.book
            .step(
                self.run_id,
                Step::Validate,
                None,
                Some(t.elapsed()),
                verdict.detail.clone(),
            )
            .await?;
        if let Ok(f) = task.figures_boxed().await {
            self.book.set(self.run_id, Doc::After, f).await?;
        }
        if verdict.ok {
            return Ok(RunStatus::Succeeded);
        }
        if !task.reversible_dyn() {
            return Err(Stop::recorded(
                RunStatus::Failed,
                format!("validation failed: {}", verdict.detail),
            ));
        }
        let backup = task.backup_state_dyn().unwrap_or(backup);
        let t = Instant::now();
        let (rows, detail, stop) = match task.rollback_boxed(&self.cx, &backup).await {
            Ok(v) if v.ok => {
                let run_id = self.run_id;
                self.book
                    .with(move |l| l.set_outcome(run_id, RunStatus::Failed))
                    .await?;
                (
                    Some(backup.rows),
                    v.detail,
                    Stop::recorded(
                        RunStatus::RolledBack,
                        format!("validation failed, rolled back: {}", verdict.detail),
                    ),
                )
            }
            Ok(v) => {
                let why = format!(
                    "validation failed ({}) and the rollback is incomplete: {}",
                    verdict.detail, v.detail
                );
                (None, v.detail, Stop::recorded(RunStatus::Failed, why))
            }
            Err(e) => {
                let why = format!(
                    "validation failed ({}) and the rollback failed: {e}",
                    verdict.detail
                );
                (None, why.clone(), Stop::recorded(RunStatus::Failed, why))
            }
        };
        self.book
            .step(self.run_id, Step::Rollback, rows, Some(t.elapsed()), detail)
            .await?;
        Err(stop)
    }

    async fn save_backup(&self, backup: Option<Backup>) -> Result<(), StoreError> {
        match backup {
            Some(b) => {
                self.book
                    .set(self.run_id, Doc::Backup, to_value(&b))
                    .await?;
                self.keep_run_file().await;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Copies the run's ledger row into its backup dir (`run.json`), so
    /// that the backup can be put back without the ledger. The run goes
    /// on without it: the ledger still has everything.
    async fn keep_run_file(&self) {
        let (run_id, dir) = (self.run_id, self.cx.backup_dir.clone());
        let why = match self
            .book
            .with(move |l| Ok(run_file::save(l, run_id, &dir, false)))
            .await
        {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        tracing::warn!(task = %self.req.task, run_id, "run.json not written: {why}");
    }

    /// Sleeps, waking early when the agent stops.
    async fn sleep(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        tokio::select! {
            _ = self.runner.stop.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }
}

/// Waits while the batch runs (the first check after `GUARD_RECHECK`, so
/// a short batch never sees one); returns why the batch must be cancelled:
/// a guarded probe unhealthy, or the process stopping.
async fn watch_guard(guard: &mut Guard, cancel: &CancellationToken, waits: &mut Waits) -> String {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return "the agent is stopping".to_string(),
            _ = tokio::time::sleep(GUARD_RECHECK) => {}
        }
        if let GuardState::Unhealthy(why) = guard.check(waits).await.0 {
            return format!("guarded probe unhealthy: {why}");
        }
    }
}

/// `waits Lock 2, LWLock 0, IO 5`: the backends the guard saw waiting,
/// by wait event type, over the checks since the last batch.
fn waits_text(waits: &Waits) -> String {
    if waits.is_empty() {
        return "no waits seen".to_string();
    }
    let parts: Vec<String> = waits.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("waits {}", parts.join(", "))
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("serializable")
}
