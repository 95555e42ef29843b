//! The history file: one SQLite database in WAL mode with a single writer
//! (`Writer`, owned by the recorder) and any number of read-only readers
//! (`Reader`, used by the CLI and the API). This file opens it, applies the
//! schema migrations (`PRAGMA user_version`), and moves a corrupt file aside
//! once `salvage.rs` has copied what reads back of it into a fresh file.
//!
//! Layout (documented for `sqlite3` users in README):
//! - `series`: the registry of series keys;
//! - `tiers`: the configured tiers, their tables and watermarks;
//! - `tier_<step>s`: one table per tier, a row per series and chunk of
//!   buckets (`chunk.rs`);
//! - `journal`: samples not yet consolidated into the first tier;
//! - `events`: status transitions and agent/history events, their bytes
//!   counted in `event_bytes` (`events.rs`);
//! - `agent_runs`: when the agent was running, so downtime reads as no data;
//! - `maintenance_runs`, `maintenance_steps`: the maintenance ledger
//!   (`ledger.rs`);
//! - `alerts`, `outbox`, `silences`: the alerts' state, the notifications
//!   not yet delivered, and silences (`alerts.rs`).
//!
//! `config.rs` holds `[history]`, the store's own settings.

pub mod alerts;
pub mod chunk;
pub mod config;
pub mod events;
pub mod ledger;
pub mod reader;
pub mod salvage;
pub mod tiers;
pub mod writer;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::sample::Ts;

pub use reader::Reader;
pub use writer::Writer;

/// Name of the history file inside the data dir.
pub const FILE_NAME: &str = "history.db";

/// Current schema version (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 6;
/// Oldest schema the read-only reader still reads: version 3 lacks only
/// the ledger's `outcome` and `backup_pruned_ms` columns, read as NULL;
/// versions 3 and 4 lack the alerts' tables, read as empty.
pub const MIN_READ_VERSION: i64 = 3;

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

    /// What kind of trouble this is, as readiness names it.
    pub fn fault_kind(&self) -> &'static str {
        let os = match self {
            StoreError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        };
        if self.code() == Some(ErrorCode::DiskFull)
            || matches!(os, Some(libc::ENOSPC | libc::EFBIG))
        {
            "disk full"
        } else if self.code() == Some(ErrorCode::ReadOnly) || os == Some(libc::EROFS) {
            "read-only filesystem"
        } else if matches!(
            self.code(),
            Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen)
        ) || os.is_some()
        {
            "I/O error"
        } else if self.is_corrupt() {
            "corrupt file"
        } else {
            "error"
        }
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
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
    // WAL: readers never block the writer; NORMAL: a commit survives a
    // process crash (kill -9); only a power loss may take the last commits.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(&err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(&err)?;
    // The agent's writer checkpoints on its own budget (`Writer::write`);
    // the automatic one, at about the same size, is the backstop for a
    // large transaction and for the CLI's writers.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_LIMIT_BYTES / 4096)
        .map_err(&err)?;
    conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES as i64)
        .map_err(&err)?;
    conn.pragma_update(None, "foreign_keys", "OFF")
        .map_err(&err)?;
    set_conn_cache(&conn).map_err(&err)?;
    Ok(conn)
}

/// The page cache of every connection to the history file but the
/// recorder's writer (which sizes its own to the series it stores), in KiB.
/// SQLite's default is 2 MiB per connection, filled as pages are read and
/// kept until the connection closes: the long-lived ones (the alerts') can
/// grow with the file up to that, and each API request's reader can take
/// as much again from the heap. A reader scans its rows once, so a small
/// cache costs it no reads; the file's pages stay in the kernel's page
/// cache.
pub const CONN_CACHE_KIB: i64 = 256;

fn set_conn_cache(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "cache_size", -CONN_CACHE_KIB)
}

/// How long a statement waits for a lock another connection holds.
pub(crate) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The write-ahead log's budget: past it the writer checkpoints and
/// truncates it, and it is truncated back to it after any checkpoint.
pub const WAL_LIMIT_BYTES: u64 = 4 * 1024 * 1024;

/// Opens the database read-only. Works while the agent writes (WAL) and when
/// it is stopped.
pub(crate) fn open_ro(path: &Path) -> Result<Connection, StoreError> {
    let err = sql_err(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(StoreError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such directory (has the agent run with this data dir?)",
            ),
        });
    }
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
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
    set_conn_cache(&conn).map_err(&err)?;
    Ok(conn)
}

/// The file's schema version, through a cached statement: the alert engine
/// and the ledger reads ask it several times a second, and `PRAGMA` parsed
/// afresh each time was most of their cost.
pub(crate) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA user_version")?
        .query_row([], |r| r.get(0))
}

/// Brings the schema to `SCHEMA_VERSION`, one migration per version, each in
/// its own transaction. Returns whether the tier tables were converted (the
/// caller compacts the file then).
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<bool, StoreError> {
    migrate_to(conn, path, SCHEMA_VERSION)
}

fn migrate_to(conn: &mut Connection, path: &Path, target: i64) -> Result<bool, StoreError> {
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
    let mut converted = false;
    for v in version + 1..=target {
        let tx = conn.transaction().map_err(&err)?;
        match MIGRATIONS[(v - 1) as usize] {
            Migration::Sql(sql) => tx.execute_batch(sql).map_err(&err)?,
            Migration::Code(f) => {
                converted |= f(&tx).map_err(&err)?;
            }
        }
        tx.pragma_update(None, "user_version", v).map_err(&err)?;
        tx.commit().map_err(&err)?;
    }
    Ok(converted)
}

enum Migration {
    Sql(&'static str),
    /// Returns whether it rewrote tier data.
    Code(fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<bool>),
}

/// Version 3: tier tables hold a row per chunk of buckets (`chunk`) instead
/// of a row per bucket. Each table is converted series by series, the old
/// rows deleted as they are copied so that their pages are reused.
fn tiers_to_chunks(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<bool> {
    let tiers: Vec<(String, i64)> = tx
        .prepare("SELECT tbl, step_ms FROM tiers")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut converted = false;
    for (table, step) in tiers {
        let exists: bool = tx.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [&table],
            |r| r.get(0),
        )?;
        if !exists {
            continue;
        }
        let old = format!("{table}_v2");
        tx.execute_batch(&format!(
            "ALTER TABLE \"{table}\" RENAME TO \"{old}\"; {}",
            chunk::tier_table_sql(&table)
        ))?;
        let series: Vec<i64> = tx
            .prepare(&format!("SELECT DISTINCT series FROM \"{old}\""))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut read = tx.prepare(&format!(
            "SELECT bucket_ms, avg, min, max, count, last, last_ms FROM \"{old}\"
             WHERE series = ?1 ORDER BY bucket_ms"
        ))?;
        let mut put = tx.prepare(&format!(
            "INSERT INTO \"{table}\" (series, chunk_ms, data) VALUES (?1, ?2, ?3)"
        ))?;
        let mut delete = tx.prepare(&format!("DELETE FROM \"{old}\" WHERE series = ?1"))?;
        for id in series {
            let mut current: Option<(Ts, Vec<u8>)> = None;
            let mut rows = read.query([id])?;
            while let Some(r) = rows.next()? {
                let bucket: Ts = r.get(0)?;
                let agg = tiers::Agg::from_row(
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                );
                let chunk_ms = chunk::start(step, bucket);
                if current.as_ref().is_some_and(|(c, _)| *c != chunk_ms) {
                    let (c, data) = current.take().expect("checked");
                    put.execute(rusqlite::params![id, c, data])?;
                }
                let (_, data) = current.get_or_insert_with(|| (chunk_ms, Vec::new()));
                chunk::merge(data, chunk_ms, step, bucket, &agg);
            }
            if let Some((c, data)) = current {
                put.execute(rusqlite::params![id, c, data])?;
            }
            delete.execute([id])?;
        }
        drop((read, put, delete));
        tx.execute_batch(&format!("DROP TABLE \"{old}\""))?;
        converted = true;
    }
    Ok(converted)
}

/// `MIGRATIONS[i]` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(
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
    ),
    Migration::Sql(
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
    ),
    Migration::Code(tiers_to_chunks),
    Migration::Sql(
        r#"
-- How a rolled-back run had ended before its rollback, and when the backup
-- budget removed its backup.
ALTER TABLE maintenance_runs ADD COLUMN outcome TEXT;
ALTER TABLE maintenance_runs ADD COLUMN backup_pruned_ms INTEGER;
"#,
    ),
    Migration::Sql(alerts::MIGRATION_SQL),
    Migration::Sql(events::MIGRATION_SQL),
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

#[cfg(test)]
mod tests {
    use super::config::HistoryConfig;
    use super::*;
    use crate::store::writer::{RunInfo, Writer};

    const MIN: Ts = 60_000;
    /// A minute boundary.
    const NOW: Ts = 1_700_000_040_000;

    fn cache_kib(conn: &Connection) -> i64 {
        -conn
            .pragma_query_value(None, "cache_size", |r| r.get::<_, i64>(0))
            .unwrap()
    }

    /// Every connection to the history file but the recorder's writer has
    /// the small page cache: the long-lived ones (alerts, ledger) and the
    /// readers opened per request alike.
    #[test]
    fn every_connection_but_the_writers_has_the_small_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let run = RunInfo {
            version: "test".into(),
            hostname: "test".into(),
            pid: 1,
        };
        let (w, _) = Writer::open(dir.path(), &HistoryConfig::default(), NOW, &run).unwrap();
        // The writer sizes its own: 512 KiB for a writer with no series yet.
        assert_eq!(w.cache_kib(), 512);
        assert_eq!(cache_kib(&open_rw(&path).unwrap()), CONN_CACHE_KIB);
        assert_eq!(cache_kib(&open_ro(&path).unwrap()), CONN_CACHE_KIB);
        let reader = Reader::open(dir.path()).unwrap();
        assert_eq!(cache_kib(reader.conn()), CONN_CACHE_KIB);
        let ledger = ledger::Ledger::open(dir.path()).unwrap();
        assert_eq!(cache_kib(ledger.conn()), CONN_CACHE_KIB);
        let ledger = ledger::Ledger::open_ro(dir.path()).unwrap();
        assert_eq!(cache_kib(ledger.conn()), CONN_CACHE_KIB);
        let alerts = alerts::AlertStore::open(dir.path()).unwrap();
        assert_eq!(cache_kib(alerts.conn()), CONN_CACHE_KIB);
        // SQLite's own default is larger: the setting is what made it so.
        let plain = Connection::open(&path).unwrap();
        assert!(cache_kib(&plain) > CONN_CACHE_KIB, "{}", cache_kib(&plain));
    }

    /// The writer's page cache is emptied by the first commit after its
    /// interval, and a commit before that keeps it: between the two it
    /// holds what the writes since touched, not the whole file.
    #[test]
    fn the_writers_page_cache_is_emptied_once_an_interval() {
        use crate::sample::{SeriesKey, Unit};
        use crate::store::writer::Sample;
        let dir = tempfile::tempdir().unwrap();
        let run = RunInfo {
            version: "test".into(),
            hostname: "test".into(),
            pid: 1,
        };
        let (mut w, _) = Writer::open(dir.path(), &HistoryConfig::default(), NOW, &run).unwrap();
        let ids: Vec<i64> = (0..200)
            .map(|i| {
                let key = SeriesKey::new("p", "m", &[("n", &i.to_string())]);
                w.series_id(&key, Unit::Count, NOW).unwrap().unwrap()
            })
            .collect();
        // Ten minutes at 10 s: tier rows flushed for every series.
        let tick = |w: &mut Writer, ts: Ts| {
            let samples: Vec<Sample> = ids
                .iter()
                .map(|&series| Sample {
                    series,
                    ts,
                    value: (ts / 1000 % 97) as f64,
                })
                .collect();
            w.write(&samples, &[], ts).unwrap();
        };
        for i in 0..60 {
            tick(&mut w, NOW + i * 10_000);
        }
        let full = w.cache_used_bytes();
        assert!(full > 256 * 1024, "the cache held only {full} bytes");
        // Not yet due: the next commit keeps what the cache holds.
        tick(&mut w, NOW + 60 * 10_000);
        assert!(w.cache_used_bytes() >= full, "emptied before its time");
        w.shrink_due();
        tick(&mut w, NOW + 61 * 10_000);
        let after = w.cache_used_bytes();
        assert!(
            after < full / 4,
            "the cache held {after} bytes after emptying, {full} before"
        );
        // Still a working writer: the next ticks read their pages back.
        for i in 62..70 {
            tick(&mut w, NOW + i * 10_000);
        }
    }

    /// The values of the row-per-bucket tier table of a version 2 file.
    fn v2_row(series: i64, i: i64) -> (Ts, f64, f64, f64, i64, f64, Ts) {
        let bucket = NOW - 200 * MIN + i * MIN;
        let x = (series * 1000 + i) as f64 / 8.0;
        (bucket, x, x - 1.0, x + 2.5, 6, x + 0.25, bucket + 50_000)
    }

    /// A ledger as 0.1.0 wrote it (schema 3): read as it is by the
    /// read-only reader, then migrated by the writing side with every run
    /// and step intact.
    #[test]
    fn a_version_3_ledger_reads_before_and_after_its_migration() {
        use super::ledger::{self, Ledger, RunStatus, Step, Trigger};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let mut conn = open_rw(&path).unwrap();
            migrate_to(&mut conn, &path, 3).unwrap();
            conn.execute_batch(
                "INSERT INTO maintenance_runs (id, task, kind, trigger, dry_run, started_ms, ended_ms, status, rows_changed, batches, error)
                   VALUES (7, 'trim', 'postgres_retention', 'api', 0, 1000, 2000, 'rolled_back', 12, 3, NULL),
                          (8, 'trim', 'postgres_retention', 'schedule', 0, 3000, NULL, 'interrupted', 0, 0, 'gone');
                 INSERT INTO maintenance_steps (run_id, ts_ms, step, rows, duration_ms, detail)
                   VALUES (7, 1500, 'batch', 12, 40, 'batch 1'), (7, 1900, 'rollback', 12, 9, 'put back');",
            )
            .unwrap();
        }
        let check = |conn: &Connection| {
            let (run, steps) = ledger::run(conn, 7).unwrap().unwrap();
            assert_eq!(
                (run.status, run.trigger, run.outcome, run.backup_pruned_ms),
                (RunStatus::RolledBack, Trigger::Api, None, None)
            );
            let steps: Vec<Step> = steps.iter().map(|s| s.step).collect();
            assert_eq!(steps, [Step::Batch, Step::Rollback]);
            let last = ledger::last_runs(conn).unwrap();
            assert_eq!(last[0].status, RunStatus::Interrupted);
        };
        let reader = Reader::open(dir.path()).expect("a version 3 file reads");
        let runs = reader.maintenance_runs(None, 10).unwrap();
        assert_eq!(runs.len(), 2);
        check(&open_ro(&path).unwrap());
        drop(reader);

        let l = Ledger::open(dir.path()).unwrap();
        let version: i64 = l
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        check(l.conn());
    }

    #[test]
    fn a_version_2_file_is_converted_to_chunk_rows_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let watermark = NOW - 10 * MIN;
        {
            let mut conn = open_rw(&path).unwrap();
            migrate_to(&mut conn, &path, 2).unwrap();
            conn.execute_batch(
                "CREATE TABLE tier_60s (
                    series INTEGER NOT NULL, bucket_ms INTEGER NOT NULL,
                    avg REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
                    count INTEGER NOT NULL, last REAL NOT NULL, last_ms INTEGER NOT NULL,
                    PRIMARY KEY (series, bucket_ms)) WITHOUT ROWID;
                 INSERT INTO series (id, key, probe, metric, labels, unit, created_ms) VALUES
                    (1, 'a.m', 'a', 'm', '', 'count', 0), (2, 'b.m', 'b', 'm', '', 'count', 0);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO tiers (tbl, step_ms, span_ms, watermark_ms) VALUES ('tier_60s', 60000, ?1, ?2)",
                rusqlite::params![7 * 86_400_000i64, watermark],
            )
            .unwrap();
            let tx = conn.transaction().unwrap();
            for series in [1, 2] {
                // 190 minutes with a gap of 20 (the agent was down).
                for i in (0..190).filter(|i| !(100..120).contains(i)) {
                    let (b, avg, min, max, count, last, last_ms) = v2_row(series, i);
                    tx.execute(
                        "INSERT INTO tier_60s VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        rusqlite::params![series, b, avg, min, max, count, last, last_ms],
                    )
                    .unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let run = RunInfo {
            version: "test".into(),
            hostname: "test".into(),
            pid: 1,
        };
        let (w, _) = Writer::open(dir.path(), &HistoryConfig::default(), NOW, &run).unwrap();
        drop(w);

        let conn = open_ro(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let old_tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name LIKE '%_v2'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_tables, 0, "the old table is gone");
        let free: i64 = conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(free, 0, "the file was compacted");
        // 190 minutes over chunks of 96 minutes aligned to the epoch.
        let chunks: i64 = conn
            .query_row("SELECT count(*) FROM tier_60s WHERE series = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        let first = chunk::start(MIN, NOW - 200 * MIN);
        let last = chunk::start(MIN, NOW - 11 * MIN);
        assert_eq!(chunks, (last - first) / chunk::span_ms(MIN) + 1);

        let reader = Reader::open(dir.path()).unwrap();
        for (series, key) in [(1, "a.m"), (2, "b.m")] {
            let answer = reader
                .query(key, NOW - 200 * MIN, watermark, Some(MIN), NOW, 10_000)
                .unwrap()
                .unwrap();
            assert_eq!(answer.tier, "tier_60s");
            let want: Vec<reader::Point> = (0..190)
                .filter(|i| !(100..120).contains(i))
                .map(|i| {
                    let (ts_ms, avg, min, max, count, last, _) = v2_row(series, i);
                    reader::Point {
                        ts_ms,
                        avg,
                        min,
                        max,
                        count,
                        last,
                    }
                })
                .collect();
            assert_eq!(answer.points, want, "{key}");
        }
    }
}
