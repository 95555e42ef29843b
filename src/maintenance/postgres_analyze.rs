//! `kind = "postgres_analyze"`: ANALYZE (and, when asked, plain VACUUM —
//! never FULL) of the configured tables or the whole database, with dead
//! tuples and last analyze time before and after.

use crate::probes::postgres::PostgresConfig;

crate::task_config! {
    /// `[maintenance.NAME] kind = "postgres_analyze"`.
    pub struct AnalyzeConfig {
        /// The postgres probe whose connection settings the task uses.
        pub probe: String,
        /// `table` or `schema.table`; empty: every table of the database.
        #[serde(default)]
        pub tables: Vec<String>,
        /// Also VACUUM (plain, never FULL).
        #[serde(default)]
        pub vacuum: bool,
        /// `statement_timeout` of each ANALYZE / VACUUM.
        #[serde(default = "default_statement_timeout", with = "humantime_serde")]
        pub statement_timeout: std::time::Duration,
    }
}

fn default_statement_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(600)
}

impl AnalyzeConfig {
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for t in &self.tables {
            if let Err(e) = super::postgres_retention::qualified_name(t) {
                out.push(("tables", e));
            }
        }
        if self.statement_timeout < std::time::Duration::from_millis(1) {
            out.push(("statement_timeout", "must be at least 1ms".into()));
        }
        out
    }
}

use super::{Backup, Batch, Cx, Plan, Task, TaskError, Verdict};

pub struct AnalyzeTask {
    name: String,
    config: AnalyzeConfig,
    pg: PostgresConfig,
}

impl AnalyzeTask {
    pub fn new(name: &str, config: &AnalyzeConfig, pg: &PostgresConfig) -> AnalyzeTask {
        AnalyzeTask {
            name: name.to_string(),
            config: config.clone(),
            pg: pg.clone(),
        }
    }
}

impl Task for AnalyzeTask {
    async fn figures(&mut self) -> Result<serde_json::Value, TaskError> {
        Err(TaskError::failed(format!(
            "{}: {:?} {} not built yet",
            self.name, self.config.tables, self.pg.user
        )))
    }
    async fn plan(&mut self, _cx: &Cx) -> Result<Plan, TaskError> {
        Err(TaskError::failed("not built yet"))
    }
    fn backup_bytes(&self, _plan: &Plan) -> u64 {
        0
    }
    async fn backup(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Backup, TaskError> {
        Err(TaskError::failed("not built yet"))
    }
    async fn apply_batch(
        &mut self,
        _cx: &Cx,
        _plan: &Plan,
        _size: u64,
    ) -> Result<Batch, TaskError> {
        Err(TaskError::failed("not built yet"))
    }
    fn backup_state(&self) -> Option<Backup> {
        None
    }
    async fn validate(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Verdict, TaskError> {
        Err(TaskError::failed("not built yet"))
    }
    async fn rollback(&mut self, _cx: &Cx, _backup: &Backup) -> Result<Verdict, TaskError> {
        Err(TaskError::failed("not built yet"))
    }
    fn reversible(&self) -> bool {
        false
    }
}
