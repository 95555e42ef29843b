//! Maintenance inside the running agent: one scheduler task per configured
//! task (sleeping until its next start, then running it), runs asked for
//! over the API, the `window = "auto"` choice, and a clean stop (runs end
//! at their next safe point).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ledger::{self, Ledger, RunStatus, Trigger};
use super::runner::{Request, RunError, Runner};
use super::schedule::{AUTO_LOOKBACK_DAYS, AutoChoice, Schedule, WindowSpec};
use super::view::{AutoView, RunSummary, TaskView, TasksDocument};
use crate::config::Config;
use crate::fmt::rfc3339;
use crate::probes::ProbeConfig;
use crate::sample::now_ms;
use crate::store::Reader;

/// How often a scheduler without a start (auto window not chosen yet)
/// looks again.
const RETRY: Duration = Duration::from_secs(3600);

pub struct Maintenance {
    data_dir: PathBuf,
    runner: RwLock<Arc<Runner>>,
    /// Scheduled and asked-for runs.
    runs: TaskTracker,
    /// Cancelled on stop: runs end at their next safe point.
    stop: CancellationToken,
    /// Cancelled on reload: the schedulers (not the runs) end.
    schedulers: Mutex<CancellationToken>,
    /// The latest `window = "auto"` choice (or why there is none) per task.
    auto: Mutex<std::collections::BTreeMap<String, Result<AutoChoice, String>>>,
    /// Wakes the backup pruner early: a run just ended.
    prune_now: Arc<tokio::sync::Notify>,
}

/// Least time between two disk-pressure runs of one task.
pub const DISK_PRESSURE_COOLDOWN: Duration = Duration::from_secs(300);

/// How often backups are pruned when no run wakes the pruner sooner.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl Maintenance {
    pub fn new(config: Arc<Config>, data_dir: PathBuf) -> Arc<Maintenance> {
        let stop = CancellationToken::new();
        Arc::new(Maintenance {
            runner: RwLock::new(Arc::new(Runner {
                config,
                data_dir: data_dir.clone(),
                stop: stop.clone(),
            })),
            data_dir,
            runs: TaskTracker::new(),
            stop,
            schedulers: Mutex::new(CancellationToken::new()),
            auto: Mutex::new(Default::default()),
            prune_now: Arc::new(tokio::sync::Notify::new()),
        })
    }

    fn runner(&self) -> Arc<Runner> {
        self.runner.read().expect("runner lock").clone()
    }

    /// Starts one scheduler per task of the current config, and the
    /// backup pruner.
    pub fn start(self: &Arc<Self>) {
        let token = self.schedulers.lock().expect("schedulers lock").clone();
        // Scratch databases a killed restore drill left behind.
        let config = self.runner().config.clone();
        let data_dir = self.data_dir.clone();
        self.runs.spawn(async move {
            super::restore_drill::drop_leftovers(&config, &data_dir).await;
        });
        let me = self.clone();
        let prune_token = token.clone();
        self.runs
            .spawn(async move { me.prune_loop(prune_token).await });
        let names: Vec<String> = self.runner().config.maintenance.keys().cloned().collect();
        for name in names {
            let me = self.clone();
            let t = token.clone();
            let watched = self.runner().config.maintenance[&name]
                .disk_pressure()
                .is_some();
            let n = name.clone();
            self.runs.spawn(async move { me.schedule(n, t).await });
            if watched {
                let me = self.clone();
                let t = token.clone();
                self.runs
                    .spawn(async move { me.watch_disk_pressure(name, t).await });
            }
        }
    }

    /// Runs task `name` outside its schedule and window whenever the
    /// filesystem holding its paths is fuller than its `disk_pressure`
    /// ratio, checked at the host probe's interval with the host probe's
    /// figure (`used / (used + available)`, as `df`): statvfs of the
    /// task's own directories, so a filesystem the host probe does not list
    /// (tmpfs) is watched too. After a run it waits
    /// [`DISK_PRESSURE_COOLDOWN`] before it may start another, so a run
    /// that cannot free enough does not loop.
    async fn watch_disk_pressure(self: Arc<Self>, name: String, token: CancellationToken) {
        loop {
            let runner = self.runner();
            let Some(tc) = runner.config.maintenance.get(&name) else {
                return;
            };
            let Some((ratio, dirs)) = tc.disk_pressure() else {
                return;
            };
            let every = runner
                .config
                .host
                .interval
                .unwrap_or(runner.config.agent.interval);
            let over = tokio::task::spawn_blocking(move || {
                dirs.iter().find_map(|d| match super::files::fs_usage(d) {
                    Ok((_, used)) if used > ratio => Some((d.clone(), used)),
                    _ => None,
                })
            })
            .await
            .ok()
            .flatten();
            let wait = match over {
                None => every,
                Some((dir, used)) => {
                    tracing::info!(task = %name, "disk pressure: {} is {:.1} % full, over {:.1} %: running now", dir.display(), used * 100.0, ratio * 100.0);
                    let req = Request {
                        task: name.clone(),
                        trigger: Trigger::DiskPressure,
                        dry_run: false,
                        ignore_window: true,
                    };
                    let result = runner.run(req, None, None).await;
                    self.prune_now.notify_one();
                    match result {
                        Ok(f) => {
                            tracing::info!(task = %name, run_id = f.run_id, status = %f.status, "disk-pressure maintenance run ended")
                        }
                        Err(e) => {
                            tracing::warn!(task = %name, "disk-pressure maintenance run not started: {e}")
                        }
                    }
                    DISK_PRESSURE_COOLDOWN.max(every)
                }
            };
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Swaps in a new config: schedulers restart; a run in progress goes on
    /// with the settings it started with.
    pub fn reload(self: &Arc<Self>, config: Arc<Config>) {
        let old = std::mem::replace(
            &mut *self.schedulers.lock().expect("schedulers lock"),
            CancellationToken::new(),
        );
        old.cancel();
        *self.runner.write().expect("runner lock") = Arc::new(Runner {
            config,
            data_dir: self.data_dir.clone(),
            stop: self.stop.clone(),
        });
        self.auto.lock().expect("auto lock").clear();
        self.start();
    }

    /// Ends schedulers and asks runs to stop at their next safe point;
    /// waits for them up to `grace`.
    pub async fn stop(&self, grace: Duration) {
        self.schedulers.lock().expect("schedulers lock").cancel();
        self.stop.cancel();
        self.runs.close();
        if tokio::time::timeout(grace, self.runs.wait()).await.is_err() {
            tracing::warn!(
                "a maintenance run did not reach a safe point within {grace:?}; its batch in flight is rolled back by the server, and the ledger marks the run interrupted at the next start"
            );
        }
    }

    /// Prunes backups now, hourly, and whenever a run ends, until `token`
    /// is cancelled (a reload starts a new loop with the new budget). Each
    /// pass first marks runs left `running` by a process that is gone as
    /// interrupted (so at start, a run the last agent was killed in).
    async fn prune_loop(self: Arc<Self>, token: CancellationToken) {
        loop {
            let runner = self.runner();
            let data_dir = self.data_dir.clone();
            let pass = tokio::task::spawn_blocking(move || {
                if let Err(e) = super::runner::settle_all(&data_dir) {
                    tracing::warn!("maintenance runs left running not settled: {e}");
                }
                super::prune::prune(&data_dir, &runner.config.maintenance, now_ms())
            })
            .await;
            match pass {
                Ok(Ok(report)) => {
                    if !report.pruned.is_empty() || !report.failed.is_empty() {
                        tracing::info!(
                            pruned = report.pruned.len(),
                            in_use = report.in_use.len(),
                            kept_bytes = report.kept_bytes,
                            "maintenance backups pruned{}",
                            if report.failed.is_empty() {
                                String::new()
                            } else {
                                format!("; not removed: {}", report.failed.join("; "))
                            }
                        );
                    }
                }
                Ok(Err(e)) => tracing::warn!("maintenance backups not pruned: {e}"),
                Err(e) => tracing::warn!("maintenance backup pruning panicked: {e}"),
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = self.prune_now.notified() => {}
                _ = tokio::time::sleep(PRUNE_EVERY) => {}
            }
        }
    }

    /// The auto window of `name`, chosen from history (at most hourly).
    fn auto_choice(&self, name: &str, schedule: &Schedule, config: &Config) -> Option<AutoChoice> {
        let choice = choose_auto_window(&self.data_dir, config, name, schedule)?;
        self.auto
            .lock()
            .expect("auto lock")
            .insert(name.to_string(), choice.clone());
        choice.ok()
    }

    async fn schedule(self: Arc<Self>, name: String, token: CancellationToken) {
        loop {
            let runner = self.runner();
            let Some(tc) = runner.config.maintenance.get(&name) else {
                return;
            };
            let Ok(schedule) = Schedule::parse(&tc.common()) else {
                return;
            };
            if schedule.manual_only() {
                return;
            }
            let auto = self.auto_choice(&name, &schedule, &runner.config);
            let wait = match schedule.next_start(Utc::now(), auto.as_ref()) {
                Some(t) => (t - Utc::now()).to_std().unwrap_or_default().min(RETRY),
                None => RETRY,
            };
            let due = schedule
                .next_start(Utc::now(), auto.as_ref())
                .is_some_and(|t| (t - Utc::now()).to_std().unwrap_or_default() <= RETRY);
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if !due || token.is_cancelled() {
                continue;
            }
            let req = Request {
                task: name.clone(),
                trigger: Trigger::Schedule,
                dry_run: false,
                ignore_window: false,
            };
            let result = runner.run(req, auto.as_ref(), None).await;
            self.prune_now.notify_one();
            match result {
                Ok(f) => {
                    tracing::info!(task = %name, run_id = f.run_id, status = %f.status, "scheduled maintenance run ended")
                }
                Err(e) => {
                    tracing::warn!(task = %name, "scheduled maintenance run not started: {e}")
                }
            }
            // Past this start: the next one is strictly later.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Starts a run of `name` in the background; returns its ledger id, or
    /// why it could not start (unknown task, already running).
    pub async fn start_run(
        self: &Arc<Self>,
        name: &str,
        trigger: Trigger,
    ) -> Result<i64, RunError> {
        let runner = self.runner();
        let tc = runner
            .config
            .maintenance
            .get(name)
            .ok_or_else(|| RunError::NoSuchTask(name.to_string()))?;
        let schedule = Schedule::parse(&tc.common())
            .map_err(|e| RunError::Refused(format!("{name}: {}: {}", e[0].0, e[0].1)))?;
        let auto = self.auto_choice(name, &schedule, &runner.config);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = Request {
            task: name.to_string(),
            trigger,
            dry_run: false,
            ignore_window: false,
        };
        let prune_now = self.prune_now.clone();
        let handle = self.runs.spawn(async move {
            let result = runner.run(req, auto.as_ref(), Some(tx)).await;
            prune_now.notify_one();
            result
        });
        match rx.await {
            Ok(id) => Ok(id),
            Err(_) => match handle.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(f)) => Ok(f.run_id),
                Err(e) => Err(RunError::Refused(format!("the run failed to start: {e}"))),
            },
        }
    }

    /// Starts the rollback of run `run_id` in the background, once the
    /// ledger says there is something to roll back; `force` as in
    /// `Runner::rollback_forced`.
    pub async fn start_rollback(
        self: &Arc<Self>,
        run_id: i64,
        trigger: Trigger,
        force: bool,
    ) -> Result<(), RunError> {
        let dir = self.data_dir.clone();
        let row = tokio::task::spawn_blocking(move || -> Result<_, RunError> {
            let l = Ledger::open(&dir)?;
            let read = || {
                ledger::run(l.conn(), run_id)
                    .map_err(crate::store::sql_err(&dir))?
                    .map(|(r, _)| r)
                    .ok_or(RunError::NoSuchRun(run_id))
            };
            let row = read()?;
            if row.status != RunStatus::Running {
                return Ok(row);
            }
            // A run whose process is gone is interrupted, not running: it
            // can be rolled back. One that holds its lock is still going.
            match super::runner::settle(&l, &dir, &row.task, trigger) {
                Ok(()) => read(),
                Err(RunError::Busy(_)) => Err(RunError::Busy(format!(
                    "run {run_id} of `{}` is still running",
                    row.task
                ))),
                Err(e) => Err(e),
            }
        })
        .await
        .expect("reading the ledger panicked")?;
        if row.backup.is_none() {
            return Err(RunError::Refused(format!(
                "run {run_id} of `{}` has no backup to restore",
                row.task
            )));
        }
        if row.status == RunStatus::RolledBack {
            return Err(RunError::Refused(format!(
                "run {run_id} of `{}` is already rolled back",
                row.task
            )));
        }
        let runner = self.runner();
        self.runs.spawn(async move {
            match runner.rollback_forced(run_id, trigger, force).await {
                Ok(f) => tracing::info!(run_id, status = %f.status, "maintenance rollback ended"),
                Err(e) => tracing::warn!(run_id, "maintenance rollback failed: {e}"),
            }
        });
        Ok(())
    }

    /// Every task: schedule, next start, window state, auto choice, last run.
    /// Last runs come from `reader` when the caller has one open, else from
    /// a reader opened here.
    pub fn tasks(&self, reader: Option<&Reader>) -> Vec<TaskView> {
        let runner = self.runner();
        let opened;
        let reader = match reader {
            Some(r) => Some(r),
            None => {
                opened = Reader::open(&self.data_dir).ok();
                opened.as_ref()
            }
        };
        let last = reader
            .and_then(|r| r.maintenance_last_runs().ok())
            .unwrap_or_default();
        let now = Utc::now();
        let auto = self.auto.lock().expect("auto lock").clone();
        runner
            .config
            .maintenance
            .iter()
            .map(|(name, tc)| task_view(name, tc, auto.get(name), &last, now))
            .collect()
    }

    /// `GET /api/v1/maintenance`.
    pub fn tasks_document(&self, reader: Option<&Reader>) -> TasksDocument {
        TasksDocument {
            tasks: self.tasks(reader),
        }
    }
}

/// One task as the API, the page and `upkeep maintenance list --format
/// json` show it: schedule in words, next start, window state, the auto
/// window's choice (`auto`), and its last run among `last`.
pub fn task_view(
    name: &str,
    tc: &super::TaskConfig,
    auto: Option<&Result<AutoChoice, String>>,
    last: &[super::ledger::RunRow],
    now: chrono::DateTime<Utc>,
) -> TaskView {
    let time = |t: chrono::DateTime<Utc>| rfc3339(t.timestamp_millis());
    let schedule = Schedule::parse(&tc.common()).ok();
    let choice = auto.and_then(|c| c.as_ref().ok());
    let (next, open, describe) = match &schedule {
        Some(s) => (
            s.next_start(now, choice).map(time),
            s.open_until(now, choice),
            s.describe(choice),
        ),
        None => (None, Err("invalid schedule".into()), "invalid".into()),
    };
    TaskView {
        name: name.to_string(),
        kind: tc.kind().to_string(),
        schedule: describe,
        next_start: next,
        window_open: open.is_ok(),
        window_closes: open.as_ref().ok().and_then(|c| c.map(time)),
        window_note: open.err(),
        auto: auto.map(AutoView::of),
        guards: tc.guards(),
        last_run: last.iter().find(|r| r.task == name).map(RunSummary::of),
    }
}

/// The quietest hour of the week for task `name` from the history in
/// `data_dir`: `None` when its window is not `auto`, `Err` says why no hour
/// is chosen yet.
pub fn choose_auto_window(
    data_dir: &std::path::Path,
    config: &Config,
    name: &str,
    schedule: &Schedule,
) -> Option<Result<AutoChoice, String>> {
    if !matches!(schedule.window, WindowSpec::Auto) {
        return None;
    }
    let series = auto_series(config, name);
    let now = now_ms();
    Some(
        Reader::open(data_dir)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                r.query(
                    &series,
                    now - AUTO_LOOKBACK_DAYS * 86_400_000,
                    now,
                    Some(3_600_000),
                    now,
                    2 * AUTO_LOOKBACK_DAYS as usize * 24,
                )
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no history of `{series}` yet"))
            })
            .and_then(|a| {
                let hourly: Vec<(i64, f64)> = a.points.iter().map(|p| (p.ts_ms, p.avg)).collect();
                schedule.choose_auto(&series, &hourly, now)
            }),
    )
}

/// One line for people: the auto choice and the figures behind it.
pub fn describe_auto(c: &Result<AutoChoice, String>) -> String {
    match c {
        Ok(c) => format!(
            "auto: {} {:02}:00-{:02}:00 is the quietest hour of the week for {} (mean {:.4} against {:.4} over {} hours with data, {:.1} days of history)",
            super::schedule::day_name(c.weekday),
            c.hour,
            (c.hour + 1) % 24,
            c.series,
            c.mean,
            c.overall_mean,
            c.hours_with_data,
            c.days_of_history
        ),
        Err(why) => format!("auto: not chosen yet: {why}"),
    }
}

/// The series `window = "auto"` reads: `auto_series`, else the first
/// access-log probe's request rate, else host CPU.
pub fn auto_series(config: &Config, task: &str) -> String {
    if let Some(s) = config
        .maintenance
        .get(task)
        .and_then(|t| t.common().auto_series)
    {
        return s.to_string();
    }
    config
        .probe
        .iter()
        .find(|(_, p)| matches!(p, ProbeConfig::AccessLog(_)))
        .map(|(n, _)| format!("{n}.requests_per_second"))
        .unwrap_or_else(|| "host.cpu_used_ratio".to_string())
}
