//! Maintenance: the `Task` trait every kind implements, the registry of
//! kinds (`TaskConfig`, in `config.rs`), and the types a run passes between
//! its steps. The runner (`runner/`) owns everything around a task — gate, schedule and
//! window, the cross-process lock, the health guard between batches,
//! pacing, timeouts and the ledger — so that a task only says what it would
//! change, saves it, changes it a batch at a time, checks the result and
//! puts it back.
//!
//! A run: gate → plan → backup → batches (guard between) → validate →
//! rollback when validation fails; every step goes to the ledger
//! (`maintenance_runs`, `maintenance_steps` in the history file, whose SQL
//! is the store's: `store::ledger`). `prune.rs` keeps the runs' backups
//! within their budget.

pub mod agent;
pub mod backup_files;
pub mod cache_warmup;
pub mod config;
pub mod config_backup;
pub mod dumps;
pub mod file_cleanup;
pub mod files;
pub mod ledger;
pub mod lock;
pub mod log_rotate;
pub mod postgres_analyze;
pub mod postgres_backup;
pub mod postgres_retention;
pub mod prune;
pub mod redis_cleanup;
pub mod restore_drill;
pub mod runner;
pub mod schedule;
#[cfg(test)]
mod scratch;
pub mod snapshots;
pub mod view;
pub mod zone;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use config::{MaintenanceConfig, TaskConfig};

/// Why a step of a task failed. The text names the subject (table, column,
/// server) and never contains a secret.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum TaskError {
    /// The task's settings do not fit what it found (a table that is not
    /// there, a column that is not a timestamp): names the config field.
    #[error("{field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Failed(String),
}

impl TaskError {
    pub fn failed(message: impl Into<String>) -> TaskError {
        TaskError::Failed(message.into())
    }
}

/// The PostgreSQL client's errors keep their field: a task's `?` on a
/// session or a catalog lookup needs nothing more.
impl From<crate::clients::postgres::Error> for TaskError {
    fn from(e: crate::clients::postgres::Error) -> TaskError {
        use crate::clients::postgres::Error;
        match e {
            Error::Setting { field, message } => TaskError::Config { field, message },
            Error::Failed(message) => TaskError::Failed(message),
        }
    }
}

/// What a run of a task is given besides its own config.
#[derive(Debug, Clone)]
pub struct Cx {
    /// The task's name (`[maintenance.NAME]`).
    pub name: String,
    /// The ledger id of this run.
    pub run_id: i64,
    /// Where this run keeps its backup: `data_dir/backups/NAME/RUN_ID`,
    /// created by the runner before `backup` is called.
    pub backup_dir: PathBuf,
    /// Where files a run removes wait until its backup is pruned:
    /// `data_dir/quarantine/NAME/RUN_ID` (made by the kinds that use it).
    pub quarantine_dir: PathBuf,
    /// The agent's data dir (the history file, `backups/`, locks).
    pub data_dir: PathBuf,
    /// Cancelled while a batch runs when the run must stop now rather than
    /// at the next safe point: a guarded probe turned unhealthy, or the
    /// process is stopping. Only a kind whose one batch is long (a dump, a
    /// restore) watches it, and then cleans up before returning its error.
    pub cancel: tokio_util::sync::CancellationToken,
}

/// What a run would change: the dry run. `rows` and `bytes` are the
/// task's own estimate of the change; `details` says exactly what (the
/// cutoff, the tables, the key range) in the task's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// One line for people: "delete 12,345 rows of public.audit_log older
    /// than 2025-11-28T02:00:00Z".
    pub summary: String,
    pub rows: u64,
    pub bytes: u64,
    pub details: Value,
}

/// Where a run's backup is, as the ledger keeps it: enough for `rollback`
/// in a later process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    /// A file or directory under the run's backup dir, or a table name.
    pub location: String,
    /// What the backup holds so far (rows archived, bytes written).
    pub rows: u64,
    pub bytes: u64,
    pub details: Value,
}

/// The result of one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Rows (or keys, files) changed by this batch.
    pub rows: u64,
    /// Rows written to the backup by this batch.
    pub archived: u64,
    /// One line for the ledger.
    pub detail: String,
    /// Nothing is left to do after this batch.
    pub done: bool,
}

/// Whether the change is what the plan said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub ok: bool,
    /// What was checked and what was found.
    pub detail: String,
    pub figures: Value,
}

/// A maintenance task of one kind. `&mut self`: a task keeps its state
/// (connection, position in the key range, archive file) across the steps
/// of one run. Every method stops at a safe point: when it returns, the
/// target is consistent and the backup holds everything changed so far.
pub trait Task: Send + 'static {
    /// Figures worth recording before and after a run (table size, dead
    /// tuples, last analyze, disk free): free-form, for the ledger.
    fn figures(&mut self) -> impl Future<Output = Result<Value, TaskError>> + Send;

    /// What a run would change. Changes nothing.
    fn plan(&mut self, cx: &Cx) -> impl Future<Output = Result<Plan, TaskError>> + Send;

    /// Bytes the backup will need on disk at most (the runner checks the
    /// free space of the backup dir against it before starting).
    fn backup_bytes(&self, plan: &Plan) -> u64;

    /// Room a run needs outside its backup dir (a dump's destination): each
    /// as (directory, bytes, what the bytes are), checked by the runner's
    /// gate against the free space of the directory's filesystem (of its
    /// nearest existing parent while it does not exist yet).
    fn room_needed(&self, _plan: &Plan) -> Vec<(PathBuf, u64, String)> {
        Vec::new()
    }

    /// Prepares the backup of what `plan` will change. A task that archives
    /// inside each batch (rows copied and deleted in one transaction) only
    /// opens its archive here.
    fn backup(
        &mut self,
        cx: &Cx,
        plan: &Plan,
    ) -> impl Future<Output = Result<Backup, TaskError>> + Send;

    /// One atomic batch of at most `size` rows (keys, files). Returns when
    /// the batch is committed (or not at all: an error leaves the target as
    /// it was before the batch, or with the batch both applied and backed
    /// up).
    fn apply_batch(
        &mut self,
        cx: &Cx,
        plan: &Plan,
        size: u64,
    ) -> impl Future<Output = Result<Batch, TaskError>> + Send;

    /// The backup as it stands now (after the last batch).
    fn backup_state(&self) -> Option<Backup>;

    /// Checks the result against the plan and the backup.
    fn validate(
        &mut self,
        cx: &Cx,
        plan: &Plan,
    ) -> impl Future<Output = Result<Verdict, TaskError>> + Send;

    /// Puts back what `backup` holds; may run in another process than the
    /// run that made it. The verdict says whether everything is back.
    fn rollback(
        &mut self,
        cx: &Cx,
        backup: &Backup,
    ) -> impl Future<Output = Result<Verdict, TaskError>> + Send;

    /// Whether this kind changes anything that can be rolled back.
    fn reversible(&self) -> bool {
        true
    }

    /// A rollback asked for with `--force`: a kind that would otherwise
    /// leave alone what was written since the run replaces it.
    fn set_force(&mut self, _force: bool) {}
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, TaskError>> + Send + 'a>>;

/// The object-safe form of `Task`, so that tasks of every kind can be held
/// and driven alike. Every `Task` is one.
pub trait DynTask: Send {
    fn figures_boxed(&mut self) -> Fut<'_, Value>;
    fn plan_boxed<'a>(&'a mut self, cx: &'a Cx) -> Fut<'a, Plan>;
    fn backup_bytes_dyn(&self, plan: &Plan) -> u64;
    fn room_needed_dyn(&self, plan: &Plan) -> Vec<(PathBuf, u64, String)>;
    fn backup_boxed<'a>(&'a mut self, cx: &'a Cx, plan: &'a Plan) -> Fut<'a, Backup>;
    fn apply_batch_boxed<'a>(&'a mut self, cx: &'a Cx, plan: &'a Plan, size: u64)
    -> Fut<'a, Batch>;
    fn backup_state_dyn(&self) -> Option<Backup>;
    fn validate_boxed<'a>(&'a mut self, cx: &'a Cx, plan: &'a Plan) -> Fut<'a, Verdict>;
    fn rollback_boxed<'a>(&'a mut self, cx: &'a Cx, backup: &'a Backup) -> Fut<'a, Verdict>;
    fn reversible_dyn(&self) -> bool;
    fn set_force_dyn(&mut self, force: bool);
}

impl<T: Task> DynTask for T {
    fn figures_boxed(&mut self) -> Fut<'_, Value> {
        Box::pin(self.figures())
    }
    fn plan_boxed<'a>(&'a mut self, cx: &'a Cx) -> Fut<'a, Plan> {
        Box::pin(self.plan(cx))
    }
    fn backup_bytes_dyn(&self, plan: &Plan) -> u64 {
        self.backup_bytes(plan)
    }
    fn room_needed_dyn(&self, plan: &Plan) -> Vec<(PathBuf, u64, String)> {
        self.room_needed(plan)
    }
    fn backup_boxed<'a>(&'a mut self, cx: &'a Cx, plan: &'a Plan) -> Fut<'a, Backup> {
        Box::pin(self.backup(cx, plan))
    }
    fn apply_batch_boxed<'a>(
        &'a mut self,
        cx: &'a Cx,
        plan: &'a Plan,
        size: u64,
    ) -> Fut<'a, Batch> {
        Box::pin(self.apply_batch(cx, plan, size))
    }
    fn backup_state_dyn(&self) -> Option<Backup> {
        self.backup_state()
    }
    fn validate_boxed<'a>(&'a mut self, cx: &'a Cx, plan: &'a Plan) -> Fut<'a, Verdict> {
        Box::pin(self.validate(cx, plan))
    }
    fn rollback_boxed<'a>(&'a mut self, cx: &'a Cx, backup: &'a Backup) -> Fut<'a, Verdict> {
        Box::pin(self.rollback(cx, backup))
    }
    fn reversible_dyn(&self) -> bool {
        self.reversible()
    }
    fn set_force_dyn(&mut self, force: bool) {
        self.set_force(force)
    }
}

/// A task of any kind, as built from config.
pub type AnyTask = Box<dyn DynTask>;

/// Builds the task `name` of `config`. Never connects: a task connects in
/// its first step.
pub fn build(name: &str, config: &crate::config::Config) -> Option<AnyTask> {
    config
        .maintenance
        .get(name)?
        .build(name, &config.probe, &config.maintenance.tasks)
}
