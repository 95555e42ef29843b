//! The history file: one SQLite database in WAL mode with a single writer
//! (`Writer`, owned by the recorder) and any number of read-only readers
//! (`Reader`, used by the CLI and the API). This file opens it, applies the
//! schema migrations (`PRAGMA user_version`), and moves a corrupt file aside.
//!
//! Layout (documented for `sqlite3` users in README):
//! - `series`: the registry of series keys;
//! - `tiers`: the configured tiers, their tables and watermarks;
//! - `tier_<step>s`: one table per tier, `(series, bucket_ms)` ordered;
//! - `journal`: samples not yet consolidated into the first tier;
//! - `events`: status transitions and agent/history events;
//! - `agent_runs`: when the agent was running, so downtime reads as no data.

pub mod reader;
pub mod tiers;
pub mod writer;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags};

pub use reader::Reader;
pub use writer::Writer;

/// Name of the history file inside the data dir.
pub const FILE_NAME: &str = "history.db";

/// Current schema version (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("history file {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("history file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// Written by a newer upkeep: left untouched, never moved aside.
    #[error("history file {path}: {message}")]
    Newer { path: PathBuf, message: String },
    #[error("data dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    fn code(&self) -> Option<ErrorCode> {
        match self {
            StoreError::Sqlite { source, .. } => source.sqlite_error_code(),
            _ => None,
        }
    }

    /// The disk (or a file size limit) is full: writes may succeed later.
    pub fn is_full(&self) -> bool {
        self.code() == Some(ErrorCode::DiskFull)
            || matches!(self, StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) || source.raw_os_error() == Some(libc::EFBIG))
            || self.to_string().contains("disk I/O error")
    }

    /// The file is not a usable database.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self.code(),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        ) || matches!(self, StoreError::Invalid { .. })
    }
}

pub(crate) fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
    let path = path.to_path_buf();
    move |source| StoreError::Sqlite {
        path: path.clone(),
        source,
    }
}

/// Opens the database for writing with the agent's pragmas.
pub(crate) fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    let err = sql_err(path);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(&err)?;
    // WAL: readers never block the writer; NORMAL: a commit survives a
    // process crash (kill -9); only a power loss may take the last commits.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(&err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(&err)?;
    // Checkpoint every ~40 MiB of log rather than 4: the last page of each
    // series is rewritten by every flush, and a rarer checkpoint copies it
    // once instead of many times.
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)
        .map_err(&err)?;
    conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES as i64)
        .map_err(&err)?;
    conn.pragma_update(None, "foreign_keys", "OFF")
        .map_err(&err)?;
    Ok(conn)
}

/// The write-ahead log is truncated back to this size after a checkpoint.
pub const WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// Opens the database read-only. Works while the agent writes (WAL) and when
/// it is stopped.
pub(crate) fn open_ro(path: &Path) -> Result<Connection, StoreError> {
    let err = sql_err(path);
    if !path.exists() {
        return Err(StoreError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no history file here (has the agent run with this data dir?)",
            ),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(&err)?;
    Ok(conn)
}

/// Brings the schema to `SCHEMA_VERSION`, one migration per version, each in
/// its own transaction.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let err = sql_err(path);
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Newer {
            path: path.to_path_buf(),
            message: format!(
                "schema version {version} is newer than this upkeep understands ({SCHEMA_VERSION}); refusing to touch it"
            ),
        });
    }
    for v in version + 1..=SCHEMA_VERSION {
        let tx = conn.transaction().map_err(&err)?;
        tx.execute_batch(MIGRATIONS[(v - 1) as usize])
            .map_err(&err)?;
        tx.pragma_update(None, "user_version", v).map_err(&err)?;
        tx.commit().map_err(&err)?;
    }
    Ok(())
}

/// `MIGRATIONS[i]` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE series (
    id         INTEGER PRIMARY KEY,
    key        TEXT NOT NULL UNIQUE,
    probe      TEXT NOT NULL,
    metric     TEXT NOT NULL,
    labels     TEXT NOT NULL,
    unit       TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE tiers (
    tbl          TEXT PRIMARY KEY,
    step_ms      INTEGER NOT NULL,
    span_ms      INTEGER NOT NULL,
    watermark_ms INTEGER NOT NULL
);
CREATE TABLE journal (
    ts_ms INTEGER NOT NULL,
    data  BLOB NOT NULL
);
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    ts_ms       INTEGER NOT NULL,
    run_id      INTEGER,
    probe       TEXT,
    kind        TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    message     TEXT NOT NULL
);
CREATE INDEX events_by_probe ON events (probe, ts_ms);
CREATE TABLE agent_runs (
    id           INTEGER PRIMARY KEY,
    started_ms   INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    stopped_ms   INTEGER,
    version      TEXT NOT NULL,
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE maintenance_runs (
    id           INTEGER PRIMARY KEY,
    task         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    trigger      TEXT NOT NULL,
    dry_run      INTEGER NOT NULL,
    started_ms   INTEGER NOT NULL,
    ended_ms     INTEGER,
    status       TEXT NOT NULL,
    rows_changed INTEGER NOT NULL DEFAULT 0,
    batches      INTEGER NOT NULL DEFAULT 0,
    plan         TEXT,
    backup       TEXT,
    verdict      TEXT,
    before       TEXT,
    after        TEXT,
    error        TEXT
);
CREATE INDEX maintenance_runs_by_task ON maintenance_runs (task, id);
CREATE TABLE maintenance_steps (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL,
    ts_ms       INTEGER NOT NULL,
    step        TEXT NOT NULL,
    rows        INTEGER,
    duration_ms INTEGER,
    detail      TEXT NOT NULL
);
CREATE INDEX maintenance_steps_by_run ON maintenance_steps (run_id, id);
-- A status change seen while a maintenance run was changing things.
ALTER TABLE events ADD COLUMN maintenance_run INTEGER;
"#,
];

/// Moves a corrupt history file (and its WAL and shared-memory files) aside
/// under a timestamped name; returns the new name of the main file.
pub(crate) fn move_aside(path: &Path, now: crate::sample::Ts) -> Result<PathBuf, StoreError> {
    let stamp = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.max(0) as u64),
    )
    .to_string()
    .replace(':', "-");
    let mut aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = PathBuf::from(format!("{}.corrupt-{stamp}-{n}", path.display()));
    }
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to).map_err(|source| StoreError::Io {
                path: from.clone(),
                source,
            })?;
        }
    }
    Ok(aside)
}

/// A probe status transition or an agent/history event.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    pub ts_ms: crate::sample::Ts,
    pub probe: Option<String>,
    /// `status` for probe transitions; `agent` and `history` for the agent's own.
    pub kind: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub message: String,
}

impl Event {
    pub fn agent(ts_ms: crate::sample::Ts, kind: &str, message: impl Into<String>) -> Event {
        Event {
            ts_ms,
            probe: None,
            kind: kind.to_string(),
            from_status: None,
            to_status: None,
            message: message.into(),
        }
    }
}
