//! `kind = "postgres_retention"`: deletes rows older than `older_than` from
//! one table, a primary-key (or ctid) range per batch, each batch's rows
//! copied to a compressed archive and deleted in the same transaction.
//! Rollback puts the archived rows back.

use std::path::PathBuf;
use std::time::Duration;

use super::{Backup, Batch, Cx, Plan, Task, TaskError, Verdict};
use crate::probes::postgres::PostgresConfig;

crate::task_config! {
    /// `[maintenance.NAME] kind = "postgres_retention"`.
    pub struct RetentionConfig {
        /// The postgres probe whose connection settings the task uses.
        pub probe: String,
        /// `table` or `schema.table`: plain lower-case identifiers.
        pub table: String,
        /// A `timestamp`, `timestamptz` or `date` column of `table`.
        pub timestamp_column: String,
        /// Rows older than this (before now − older_than) are deleted.
        #[serde(with = "humantime_serde")]
        pub older_than: Duration,
        /// Rows per batch (each batch one transaction).
        #[serde(default = "default_batch_size")]
        pub batch_size: u64,
        /// Pause between batches.
        #[serde(default = "default_pause", with = "humantime_serde")]
        pub pause: Duration,
        /// Archive into this table (`table` or `schema.table`, created like
        /// `table`) instead of a compressed file under the data dir.
        #[serde(default)]
        pub archive_table: Option<String>,
        /// `lock_timeout` of every statement.
        #[serde(default = "default_lock_timeout", with = "humantime_serde")]
        pub lock_timeout: Duration,
        /// `statement_timeout` of every statement.
        #[serde(default = "default_statement_timeout", with = "humantime_serde")]
        pub statement_timeout: Duration,
    }
}

fn default_batch_size() -> u64 {
    5000
}
fn default_pause() -> Duration {
    Duration::from_millis(50)
}
fn default_lock_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Most rows one batch may hold.
pub const MAX_BATCH: u64 = 100_000;

impl RetentionConfig {
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = qualified_name(&self.table) {
            out.push(("table", e));
        }
        if let Err(e) = identifier(&self.timestamp_column) {
            out.push(("timestamp_column", e));
        }
        if let Some(a) = &self.archive_table {
            match qualified_name(a) {
                Err(e) => out.push(("archive_table", e)),
                Ok(_) if a == &self.table => {
                    out.push(("archive_table", "must not be the table itself".into()))
                }
                Ok(_) => {}
            }
        }
        if self.older_than < Duration::from_secs(3600) {
            out.push((
                "older_than",
                "must be at least 1h: a retention this short is more likely a typo".into(),
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            out.push(("batch_size", format!("must be 1 to {MAX_BATCH}")));
        }
        if self.pause > Duration::from_secs(60) {
            out.push(("pause", "must be at most 1m".into()));
        }
        for (field, d) in [
            ("lock_timeout", self.lock_timeout),
            ("statement_timeout", self.statement_timeout),
        ] {
            if d < Duration::from_millis(1) {
                out.push((field, "must be at least 1ms".into()));
            }
        }
        out
    }
}

/// PostgreSQL keeps the first 63 bytes of an identifier (NAMEDATALEN − 1).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// A plain identifier as it may appear in config: lower case (unquoted
/// identifiers fold to it), letters, digits, `_` and `$`, not starting with
/// a digit or `$`, at most 63 bytes. Quoted identifiers are refused rather
/// than guessed at.
pub fn identifier(s: &str) -> Result<&str, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.starts_with('"') || s.ends_with('"') {
        return Err(format!(
            "`{s}`: quoted identifiers are not supported; name a plain lower-case identifier"
        ));
    }
    if s.len() > MAX_IDENTIFIER_BYTES {
        let cut = s
            .char_indices()
            .take_while(|(i, c)| i + c.len_utf8() <= MAX_IDENTIFIER_BYTES)
            .map(|(i, c)| i + c.len_utf8())
            .last()
            .unwrap_or(0);
        return Err(format!(
            "`{s}` is {} bytes: PostgreSQL would truncate it to `{}`, which may name another object",
            s.len(),
            &s[..cut]
        ));
    }
    let first = s.as_bytes()[0];
    let ok = (first.is_ascii_lowercase() || first == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$');
    if !ok {
        return Err(format!(
            "`{s}` is not a plain identifier (lower-case letters, digits, `_`, `$`; not starting with a digit)"
        ));
    }
    Ok(s)
}

/// `table` or `schema.table`, each a plain identifier; returns (schema,
/// table) with the schema defaulting to `public`.
pub fn qualified_name(s: &str) -> Result<(String, String), String> {
    let parts: Vec<&str> = s.split('.').collect();
    match parts.as_slice() {
        [t] => Ok(("public".into(), identifier(t).map_err(|e| e)?.to_string())),
        [schema, t] => Ok((identifier(schema)?.to_string(), identifier(t)?.to_string())),
        _ => Err(format!("`{s}` is not `table` or `schema.table`")),
    }
}

/// A retention run: its settings and, during a run, its connection and
/// position in the key range.
pub struct RetentionTask {
    name: String,
    config: RetentionConfig,
    pg: PostgresConfig,
    archive: Option<Backup>,
    _dir: Option<PathBuf>,
}

impl RetentionTask {
    pub fn new(name: &str, config: &RetentionConfig, pg: &PostgresConfig) -> RetentionTask {
        RetentionTask {
            name: name.to_string(),
            config: config.clone(),
            pg: pg.clone(),
            archive: None,
            _dir: None,
        }
    }
}

impl Task for RetentionTask {
    async fn figures(&mut self) -> Result<serde_json::Value, TaskError> {
        Err(TaskError::failed(format!(
            "{}: {} {} not built yet",
            self.name, self.config.table, self.pg.user
        )))
    }
    async fn plan(&mut self, _cx: &Cx) -> Result<Plan, TaskError> {
        Err(TaskError::failed("not built yet"))
    }
    fn backup_bytes(&self, plan: &Plan) -> u64 {
        plan.bytes
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
        self.archive.clone()
    }
    async fn validate(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Verdict, TaskError> {
        Err(TaskError::failed("not built yet"))
    }
    async fn rollback(&mut self, _cx: &Cx, _backup: &Backup) -> Result<Verdict, TaskError> {
        Err(TaskError::failed("not built yet"))
    }
}
