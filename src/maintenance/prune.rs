//! Backups are kept for a time, then pruned. Every run that changes
//! something keeps its backup under `DATA_DIR/backups/NAME/RUN_ID`; this
//! module removes the ones past `keep_backups` (the task's, else
//! `[maintenance]`'s), then the oldest while a task is over its
//! `max_backup_bytes`, then the oldest of all while every task's backups
//! together are over `[maintenance] max_backup_bytes`.
//!
//! Never removed: the backup of each task's newest successful run (the one
//! an operator most likely rolls back), and the backup of a run still
//! running. Each removal is recorded first (the run's `backup_pruned_ms`
//! and a `prune` step saying why), then the directory goes: a crash in
//! between leaves a run marked pruned whose files the next pass removes,
//! never a run whose ledger promises a backup that is gone. A task whose
//! lock is held (a run or a rollback in progress) is left for the next
//! pass, and so is a backup in use (`backup_files::hold`: a restore drill
//! reading the dump in it). `plan` is pure; `prune` reads the disk and the ledger around it.
//! The agent prunes at start, hourly, and after each run it makes. A file
//! task's quarantine (`DATA_DIR/quarantine/NAME/RUN_ID`) belongs to its
//! run's backup: counted in its bytes and removed with it (first, so a
//! crash between leaves a backup dir the next pass finds).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::MaintenanceSection;
use super::ledger::{self, Ledger, RunStatus, Trigger};
use super::lock::TaskLock;
use crate::config::valid_name;
use crate::fmt::bytes;
use crate::sample::Ts;
use crate::store::StoreError;

/// One run's backup directory as found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub task: String,
    pub run_id: i64,
    pub path: PathBuf,
    /// Bytes of the files under it.
    pub bytes: u64,
    /// When the run ended (started, while it has not), or the directory's
    /// modification time when the ledger no longer has the run.
    pub at_ms: Ts,
    /// The run as the ledger has it; `None` once the ledger trimmed it.
    pub run: Option<RunFacts>,
}

/// What pruning needs to know of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunFacts {
    pub status: RunStatus,
    /// Already marked pruned (a pass that stopped before the removal).
    pub pruned: bool,
}

/// A task's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub keep: Duration,
    pub max_bytes: u64,
}

/// Why a backup goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// Marked pruned by an earlier pass that did not finish.
    Marked,
    Age {
        age: Duration,
        keep: Duration,
    },
    /// The task's backups took `bytes`, over its budget.
    TaskBudget {
        bytes: u64,
        max: u64,
    },
    /// Every task's backups took `bytes`, over the total budget.
    TotalBudget {
        bytes: u64,
        max: u64,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ages in whole days (or hours, under a day): what the budget is set in.
        let days = |d: Duration| match d.as_secs() {
            s if s >= 86_400 => format!("{} days", (s as f64 / 86_400.0).round()),
            s if s >= 3600 => format!("{} hours", (s as f64 / 3600.0).round()),
            s => format!("{s} s"),
        };
        match self {
            Reason::Marked => write!(f, "marked pruned by an earlier pass"),
            Reason::Age { age, keep } => {
                write!(f, "{} old, past keep_backups {}", days(*age), days(*keep))
            }
            Reason::TaskBudget { bytes: b, max } => write!(
                f,
                "the task's backups took {}, over its max_backup_bytes {}",
                bytes(*b as f64),
                bytes(*max as f64)
            ),
            Reason::TotalBudget { bytes: b, max } => write!(
                f,
                "all backups took {}, over maintenance.max_backup_bytes {}",
                bytes(*b as f64),
                bytes(*max as f64)
            ),
        }
    }
}

/// The backups to remove, as indexes into `held` with why, oldest first
/// within each reason. `newest_ok` maps a task to its newest successful
/// run, whose backup is kept whatever the budget says.
pub fn plan(
    held: &[Held],
    newest_ok: &BTreeMap<String, i64>,
    budget: impl Fn(&str) -> Budget,
    total_max: u64,
    now: Ts,
) -> Vec<(usize, Reason)> {
    let protected = |h: &Held| {
        newest_ok.get(&h.task) == Some(&h.run_id)
            || h.run.is_some_and(|r| r.status == RunStatus::Running)
    };
    let mut out: Vec<(usize, Reason)> = Vec::new();
    let mut gone = vec![false; held.len()];
    let mut order: Vec<usize> = (0..held.len()).collect();
    order.sort_by_key(|&i| (held[i].at_ms, held[i].run_id));

    for &i in &order {
        let h = &held[i];
        if protected(h) {
            continue;
        }
        let keep = budget(&h.task).keep;
        let age = Duration::from_millis(now.saturating_sub(h.at_ms).max(0) as u64);
        let reason = if h.run.is_some_and(|r| r.pruned) {
            Reason::Marked
        } else if age > keep {
            Reason::Age { age, keep }
        } else {
            continue;
        };
        gone[i] = true;
        out.push((i, reason));
    }

    let mut per_task: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, h) in held.iter().enumerate() {
        if !gone[i] {
            *per_task.entry(&h.task).or_default() += h.bytes;
        }
    }
    for &i in &order {
        let h = &held[i];
        let max = budget(&h.task).max_bytes;
        let used = per_task[h.task.as_str()];
        if gone[i] || protected(h) || used <= max {
            continue;
        }
        gone[i] = true;
        *per_task.get_mut(h.task.as_str()).expect("counted") -= h.bytes;
        out.push((i, Reason::TaskBudget { bytes: used, max }));
    }

    let mut total: u64 = per_task.values().sum();
    for &i in &order {
        let h = &held[i];
        if total <= total_max {
            break;
        }
        if gone[i] || protected(h) {
            continue;
        }
        gone[i] = true;
        out.push((
            i,
            Reason::TotalBudget {
                bytes: total,
                max: total_max,
            },
        ));
        total -= h.bytes;
    }
    out
}

/// Bytes of the regular files under `path`; symbolic links are counted as
/// themselves and never followed.
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| size_of(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Every run's backup directory under `data_dir/backups`: `NAME/RUN_ID`
/// with a task name and a numeric id; anything else there is left alone.
pub fn scan(data_dir: &Path) -> std::io::Result<Vec<(String, i64, PathBuf)>> {
    let root = data_dir.join("backups");
    let mut out = Vec::new();
    let tasks = match std::fs::read_dir(&root) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for task in tasks {
        let task = task?;
        let name = task.file_name().to_string_lossy().into_owned();
        if !valid_name(&name) || !task.file_type()?.is_dir() {
            continue;
        }
        for run in std::fs::read_dir(task.path())? {
            let run = run?;
            let id = run.file_name().to_string_lossy().parse::<i64>();
            if let Ok(id) = id
                && id > 0
                && run.file_type()?.is_dir()
            {
                out.push((name.clone(), id, run.path()));
            }
        }
    }
    out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    Ok(out)
}

/// One backup removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Pruned {
    pub task: String,
    pub run_id: i64,
    pub bytes: u64,
    pub reason: Reason,
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct Report {
    pub pruned: Vec<Pruned>,
    /// Tasks left for the next pass because a run held their lock.
    pub busy: Vec<String>,
    /// Backups left for the next pass because they were in use (a drill
    /// restoring them).
    pub in_use: Vec<PathBuf>,
    /// Backups that could not be removed, with why.
    pub failed: Vec<String>,
    /// Bytes every task's backups take after the pass.
    pub kept_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("backups dir: {0}")]
    Io(#[from] std::io::Error),
    #[error("maintenance ledger: {0}")]
    Ledger(#[from] StoreError),
}

/// One pass over `data_dir/backups` with the budget of `section`.
pub fn prune(data_dir: &Path, section: &MaintenanceSection, now: Ts) -> Result<Report, PruneError> {
    let found = scan(data_dir)?;
    let mut report = Report::default();
    if found.is_empty() {
        return Ok(report);
    }
    let l = Ledger::open(data_dir)?;
    let sql = crate::store::sql_err(&data_dir.join(crate::store::FILE_NAME));
    let mut held = Vec::with_capacity(found.len());
    let mut newest_ok = BTreeMap::new();
    for (task, run_id, path) in found {
        if !newest_ok.contains_key(&task)
            && let Some(id) = ledger::newest_succeeded(l.conn(), &task).map_err(&sql)?
        {
            newest_ok.insert(task.clone(), id);
        }
        let row = ledger::run_only(l.conn(), run_id).map_err(&sql)?;
        // A row of another task under this id: the ledger was replaced;
        // the directory is an orphan of the old one.
        let row = row.filter(|r| r.task == task);
        let mtime = std::fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(now, |d| d.as_millis() as Ts);
        let quarantine = super::runner::quarantine_dir(data_dir, &task, run_id);
        held.push(Held {
            // A file task's quarantine is part of its run's backup.
            bytes: size_of(&path) + size_of(&quarantine),
            at_ms: row
                .as_ref()
                .map_or(mtime, |r| r.ended_ms.unwrap_or(r.started_ms)),
            run: row.as_ref().map(|r| RunFacts {
                status: r.status,
                pruned: r.backup_pruned_ms.is_some(),
            }),
            task,
            run_id,
            path,
        });
    }
    let plan = plan(
        &held,
        &newest_ok,
        |task| Budget {
            keep: section.keep_backups_of(task),
            max_bytes: section.max_backup_bytes_of(task),
        },
        section.max_backup_bytes,
        now,
    );
    let mut removed = vec![false; held.len()];
    let mut locks: BTreeMap<String, Option<TaskLock>> = BTreeMap::new();
    for (i, reason) in plan {
        let h = &held[i];
        let lock = locks
            .entry(h.task.clone())
            .or_insert_with(|| TaskLock::try_take(data_dir, &h.task, Trigger::Schedule).ok());
        if lock.is_none() {
            if !report.busy.contains(&h.task) {
                report.busy.push(h.task.clone());
            }
            continue;
        }
        // A backup in use (a drill restoring the dump in it) waits for a
        // later pass, like a task whose lock is held.
        let claim = match super::backup_files::try_claim(&h.path) {
            Ok(Some(c)) => Some(c),
            Ok(None) => {
                if !report.in_use.contains(&h.path) {
                    report.in_use.push(h.path.clone());
                }
                continue;
            }
            Err(_) => None,
        };
        if h.run.is_some() && reason != Reason::Marked {
            l.set_backup_pruned(
                h.run_id,
                now,
                &format!("backup removed ({}): {reason}", bytes(h.bytes as f64)),
            )?;
        }
        let quarantine = super::runner::quarantine_dir(data_dir, &h.task, h.run_id);
        let gone = match std::fs::remove_dir_all(&quarantine) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::remove_dir_all(&h.path),
        };
        drop(claim);
        match gone {
            Ok(()) => {
                removed[i] = true;
                tracing::info!(task = %h.task, run_id = h.run_id, "maintenance backup pruned: {reason}");
                report.pruned.push(Pruned {
                    task: h.task.clone(),
                    run_id: h.run_id,
                    bytes: h.bytes,
                    reason,
                });
            }
            Err(e) => report
                .failed
                .push(format!("{}: cannot remove: {e}", h.path.display())),
        }
    }
    report.kept_bytes = held
        .iter()
        .zip(&removed)
        .filter(|(_, r)| !**r)
        .map(|(h, _)| h.bytes)
        .sum();
    Ok(report)
}

#[cfg(test)]
mod tests;
