//! The page's Maintenance section: one row per configured task (kind,
//! schedule in words, next start, whether its window is open and why not,
//! the `window = "auto"` choice or why it is pending, guards, last run) and
//! the newest runs of the ledger. Gathered by [`super::view::gather`] on
//! the blocking pool; the ledger is read through the page's own [`Reader`].
//!
//! A task's settings, schedule and auto choice come from
//! [`Maintenance::tasks_document`], the document `GET /api/v1/maintenance`
//! serves, so the page and the API never disagree; runs (the last of each
//! task and the newest overall) are read from the ledger here. `markup`
//! writes the section.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::maintenance::agent::Maintenance;
use crate::maintenance::ledger::RunRow;
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
}

/// One task as the tasks document describes it.
#[derive(Debug, Deserialize)]
pub(super) struct Task {
    pub(super) name: String,
    pub(super) kind: String,
    /// The schedule in words: "manual only", "cron `0 3 * * *` (UTC)", …
    pub(super) schedule: String,
    pub(super) next_start: Option<String>,
    pub(super) window_open: bool,
    pub(super) window_closes: Option<String>,
    /// Why the window is closed.
    pub(super) window_note: Option<String>,
    pub(super) auto: Option<Auto>,
    pub(super) guards: Vec<String>,
    /// Its newest run, from the page's read of the ledger.
    #[serde(skip)]
    pub(super) last: Option<RunRow>,
}

/// The `window = "auto"` choice, or why there is none yet.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Auto {
    Chosen {
        series: String,
        weekday: String,
        hour: u32,
        mean: f64,
        overall_mean: f64,
        hours_with_data: usize,
        days_of_history: f64,
    },
    Pending {
        pending: String,
    },
    /// A shape this page does not know: the rest of the task still shows.
    Other(serde_json::Value),
}

#[derive(Deserialize)]
struct Document {
    tasks: Vec<Task>,
}

/// The tasks of `m` (none without maintenance in this process) with their
/// last runs, and the newest runs, read from `reader`.
pub(super) fn gather(m: Option<&Maintenance>, reader: Option<&Reader>) -> Section {
    let mut s = Section::default();
    if let Some(m) = m {
        match serde_json::from_value::<Document>(m.tasks_document(reader)) {
            Ok(d) => s.tasks = d.tasks,
            Err(e) => s.tasks_error = Some(e.to_string()),
        }
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
