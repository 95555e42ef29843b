//! Maintenance's view of its ledger: the store owns the tables and their
//! SQL (`store::ledger`, re-exported here for the runner and the CLI); this
//! module adds the seed's `MaintenanceResult` document of a run, which the
//! runner returns, the API serves and `maintenance show --json` prints.

use serde::Serialize;
use serde_json::Value;

pub use crate::store::ledger::*;

/// The seed's `MaintenanceResult`: `{timestamp, tasks: [{name, success,
/// duration_ms, details, error}], success, errors}`, with real figures.
#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceResult<'a> {
    pub timestamp: String,
    pub tasks: [TaskResult<'a>; 1],
    pub success: bool,
    pub errors: Vec<&'a str>,
}

/// One task of a [`MaintenanceResult`].
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult<'a> {
    pub name: &'a str,
    pub success: bool,
    pub duration_ms: Option<i64>,
    pub details: RunDetails<'a>,
    pub error: Option<&'a str>,
}

/// The run behind a [`TaskResult`].
#[derive(Debug, Clone, Serialize)]
pub struct RunDetails<'a> {
    pub run_id: i64,
    pub kind: &'a str,
    pub trigger: Trigger,
    pub dry_run: bool,
    pub status: RunStatus,
    /// How a rolled-back run had ended before its rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RunStatus>,
    pub rows_changed: i64,
    pub batches: i64,
    pub plan: &'a Option<Value>,
    pub backup: &'a Option<Value>,
    /// When the backup budget removed the run's backup (RFC 3339 UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_pruned: Option<String>,
    pub verdict: &'a Option<Value>,
    pub before: &'a Option<Value>,
    pub after: &'a Option<Value>,
}

impl<'a> MaintenanceResult<'a> {
    pub fn of(run: &'a RunRow) -> MaintenanceResult<'a> {
        let success = run.status == RunStatus::Succeeded;
        MaintenanceResult {
            timestamp: crate::fmt::rfc3339(run.started_ms),
            tasks: [TaskResult {
                name: &run.task,
                success,
                duration_ms: run.ended_ms.map(|e| e - run.started_ms),
                details: RunDetails {
                    run_id: run.id,
                    kind: &run.kind,
                    trigger: run.trigger,
                    dry_run: run.dry_run,
                    status: run.status,
                    outcome: run.outcome,
                    rows_changed: run.rows_changed,
                    batches: run.batches,
                    plan: &run.plan,
                    backup: &run.backup,
                    backup_pruned: run.backup_pruned_ms.map(crate::fmt::rfc3339),
                    verdict: &run.verdict,
                    before: &run.before,
                    after: &run.after,
                },
                error: run.error.as_deref(),
            }],
            success,
            errors: run.error.as_deref().into_iter().collect(),
        }
    }
}

/// The result document as JSON (for callers that add to it).
pub fn result_document(run: &RunRow) -> Value {
    serde_json::to_value(MaintenanceResult::of(run)).expect("serializable")
}

/// "failed, then rolled back": a run's status in words, with how it had
/// ended before a rollback when the ledger knows.
pub fn status_words(run: &RunRow) -> String {
    let status = run.status.as_str().replace('_', " ");
    match run.outcome {
        Some(o) if run.status == RunStatus::RolledBack => format!("{o}, then {status}"),
        _ => status,
    }
}
