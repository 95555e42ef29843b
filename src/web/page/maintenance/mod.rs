//! The page's Maintenance section: one row per configured task (kind,
//! schedule in words, next start, whether its window is open and why not,
//! the `window = "auto"` choice or why it is pending, guards, last run) and
//! the newest runs of the ledger. Gathered by [`super::view::gather`] on
//! the blocking pool; the ledger is read through the page's own [`Reader`].
//!
//! A task's settings, schedule and auto choice come from
//! [`Maintenance::tasks`], the typed view `GET /api/v1/maintenance`
//! serves, so the page and the API never disagree; runs (the last of each
//! task and the newest overall) are read from the ledger here. `markup`
//! writes the section.

use std::collections::BTreeMap;

use crate::maintenance::agent::Maintenance;
use crate::maintenance::ledger::RunRow;
pub(super) use crate::maintenance::view::AutoView as Auto;
use crate::maintenance::view::TaskView;
use crate::store::Reader;

mod markup;
#[cfg(test)]
mod tests;

pub(super) use markup::section;

/// Runs listed below the tasks.
const RUNS: usize = 10;

/// What the section shows.
#[derive(Default)]
pub(super) struct Section {
    pub(super) tasks: Vec<Task>,
    /// Newest first.
    pub(super) runs: Vec<RunRow>,
    /// Why the tasks could not be read, when they could not.
    pub(super) tasks_error: Option<String>,
    /// Why the ledger could not be read, when it could not.
    pub(super) ledger_error: Option<String>,
    /// The restore drills' measured RTO and RPO.
    pub(super) drills: Vec<Drill>,
}

/// A restore drill task: its last successful drill's figures, and its
/// last run when that one failed.
#[derive(Debug)]
pub(super) struct Drill {
    pub(super) task: String,
    /// The newest succeeded drill: (run, ended, RTO seconds, RPO seconds).
    pub(super) passed: Option<(i64, i64, f64, f64)>,
    /// The newest run, when it did not succeed.
    pub(super) failed: Option<RunRow>,
}

/// Runs of a drill searched for its newest success.
const DRILL_RUNS: usize = 50;

/// The drills' figures from the ledger: a drill's verdict holds
/// `rto_seconds` and `backup_age_seconds`.
fn drills(tasks: &[Task], r: &Reader) -> Vec<Drill> {
    tasks
        .iter()
        .filter(|t| t.kind == "restore_drill")
        .map(|t| {
            let runs = r
                .maintenance_runs(Some(&t.name), DRILL_RUNS)
                .unwrap_or_default();
            let passed = runs
                .iter()
                .find(|r| {
                    r.status == crate::maintenance::ledger::RunStatus::Succeeded && !r.dry_run
                })
                .and_then(|r| {
                    let f = &r.verdict.as_ref()?["figures"];
                    Some((
                        r.id,
                        r.ended_ms.unwrap_or(r.started_ms),
                        f["rto_seconds"].as_f64()?,
                        f["backup_age_seconds"].as_f64()?,
                    ))
                });
            let failed = runs
                .first()
                .filter(|r| {
                    r.status != crate::maintenance::ledger::RunStatus::Succeeded && r.status.ended()
                })
                .cloned();
            Drill {
                task: t.name.clone(),
                passed,
                failed,
            }
        })
        .collect()
}

/// One task as the agent describes it, with its newest run from the
/// page's own read of the ledger.
#[derive(Debug)]
pub(super) struct Task {
    pub(super) view: TaskView,
    pub(super) last: Option<RunRow>,
}

impl std::ops::Deref for Task {
    type Target = TaskView;
    fn deref(&self) -> &TaskView {
        &self.view
    }
}

/// The tasks of `m` (none without maintenance in this process) with their
/// last runs, and the newest runs, read from `reader`.
pub(super) fn gather(m: Option<&Maintenance>, reader: Option<&Reader>) -> Section {
    let mut s = Section::default();
    if let Some(m) = m {
        s.tasks = m
            .tasks(reader)
            .into_iter()
            .map(|view| Task { view, last: None })
            .collect();
    }
    let Some(r) = reader else {
        return s;
    };
    let read = r
        .maintenance_runs(None, RUNS)
        .and_then(|runs| Ok((runs, r.maintenance_last_runs()?)));
    match read {
        Ok((runs, last)) => {
            s.runs = runs;
            let mut last: BTreeMap<String, RunRow> =
                last.into_iter().map(|r| (r.task.clone(), r)).collect();
            for t in &mut s.tasks {
                t.last = last.remove(&t.name);
            }
            s.drills = drills(&s.tasks, r);
        }
        Err(e) => {
            s.ledger_error = Some(e.to_string());
        }
    }
    s
}

/// Where the page links a run: its row below when listed, else the API.
pub(super) fn run_link(s: &Section, id: i64) -> String {
    if s.runs.iter().any(|r| r.id == id) {
        format!("#maint-run-{id}")
    } else {
        format!("/api/v1/maintenance/runs/{id}")
    }
}
