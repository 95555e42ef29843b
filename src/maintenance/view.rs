//! The typed view of the configured tasks and their runs that
//! `GET /api/v1/maintenance` serves and the status page shows: built once
//! by `agent::Maintenance::tasks`, serialized by the API, read as is by
//! the page (no JSON round trip between them).

use serde::{Deserialize, Serialize};

use super::ledger::{RunRow, RunStatus, Trigger};
use super::schedule::{AutoChoice, day_name};
use crate::fmt::rfc3339;

/// `GET /api/v1/maintenance`.
#[derive(Debug, Clone, Serialize)]
pub struct TasksDocument {
    pub tasks: Vec<TaskView>,
}

/// One configured task: its schedule, window and last run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub name: String,
    pub kind: String,
    /// The schedule in words: "manual only", "cron `0 3 * * *` (UTC)", …
    pub schedule: String,
    /// RFC 3339 UTC.
    pub next_start: Option<String>,
    pub window_open: bool,
    pub window_closes: Option<String>,
    /// Why the window is closed.
    pub window_note: Option<String>,
    pub auto: Option<AutoView>,
    pub guards: Vec<String>,
    #[serde(default)]
    pub last_run: Option<RunSummary>,
}

/// The `window = "auto"` choice, or why there is none yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AutoView {
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
}

impl AutoView {
    pub fn of(choice: &Result<AutoChoice, String>) -> AutoView {
        match choice {
            Ok(c) => AutoView::Chosen {
                series: c.series.clone(),
                weekday: day_name(c.weekday).to_string(),
                hour: c.hour,
                mean: c.mean,
                overall_mean: c.overall_mean,
                hours_with_data: c.hours_with_data,
                days_of_history: c.days_of_history,
            },
            Err(why) => AutoView::Pending {
                pending: why.clone(),
            },
        }
    }
}

/// A run as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: i64,
    pub task: String,
    pub kind: String,
    pub trigger: Trigger,
    pub dry_run: bool,
    pub status: RunStatus,
    /// How a rolled-back run had ended before its rollback, when known.
    pub outcome: Option<RunStatus>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub rows_changed: i64,
    pub batches: i64,
    pub error: Option<String>,
}

impl RunSummary {
    pub fn of(r: &RunRow) -> RunSummary {
        RunSummary {
            id: r.id,
            task: r.task.clone(),
            kind: r.kind.clone(),
            trigger: r.trigger,
            dry_run: r.dry_run,
            status: r.status,
            outcome: r.outcome,
            started_at: rfc3339(r.started_ms),
            ended_at: r.ended_ms.map(rfc3339),
            duration_ms: r.ended_ms.map(|e| e - r.started_ms),
            rows_changed: r.rows_changed,
            batches: r.batches,
            error: r.error.clone(),
        }
    }
}
