//! The single writer of the history file, owned by the recorder.
//!
//! Samples are consolidated on the way in. Every tier keeps, per series and
//! bucket, avg/min/max/count/last. A sample is appended to `journal` (one row
//! per timestamp, values packed in a blob: append-only, cheap) and added to an
//! in-memory accumulator of the first tier. When a bucket closes, its
//! aggregate is merged into the series' chunk row of its tier table (`chunk`:
//! a row holds 96 consecutive buckets) and added to the accumulator of the
//! next tier, and so on up. The first tier closes its buckets a group (a
//! minute) at a time and writes them in key order, so that each series' leaf
//! page is visited once per group. Each tier has a watermark: the tier table
//! holds every sample older than it. After a crash the accumulators are rebuilt
//! exactly from the journal (first tier) and from the rows of the tier below
//! between the two watermarks (higher tiers), so a committed sample is never
//! lost and never counted twice.
//!
//! This file holds the batch path (`Writer::write`: journal, events, runs);
//! opening and crash recovery are in `recovery`, writing closed buckets in
//! `flush`, retention in `trim`, and the chunk rows' format and statements
//! in `store::chunk`.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::sample::{SeriesKey, Ts, Unit};
use crate::store::chunk::ChunkSql;
use crate::store::config::HistoryConfig;
use crate::store::events;
use crate::store::tiers::{self, Agg, MAX_KEY_BYTES, Tier};
use crate::store::{BUSY_TIMEOUT, Event, FILE_NAME, StoreError, WAL_LIMIT_BYTES, sql_err};
use recovery::{open_or_salvage, quick_check};

mod flush;
mod recovery;
mod trim;

/// Refused series keys remembered for counting; beyond this, no more counted.
const REFUSED_REMEMBERED: usize = 10_000;

/// The writer's page cache, per series: a flush touches about one leaf page
/// per series in each tier it writes, and a trim as many again; with these
/// and their parents in memory a flush reads nothing back from the file.
const CACHE_KIB_PER_SERIES: i64 = 32;
/// The page cache of a writer with few series.
const CACHE_KIB_MIN: i64 = 512;
/// How long a truncating checkpoint waits for readers to leave the log.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(200);

/// One value of one registered series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub series: i64,
    pub ts: Ts,
    pub value: f64,
}

/// Who is writing: recorded in `agent_runs`.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub version: String,
    pub hostname: String,
    pub pid: u32,
}

/// What one committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriteStats {
    pub samples: usize,
    pub late_samples: usize,
    pub rows_flushed: usize,
}

/// Per tier: bucket start → series → aggregate not yet written to the tier.
type Acc = BTreeMap<Ts, HashMap<i64, Agg>>;

pub struct Writer {
    path: PathBuf,
    conn: Connection,
    tiers: Vec<Tier>,
    max_series: usize,
    max_events: i64,
    max_event_bytes: u64,
    max_runs: i64,
    series: HashMap<String, i64>,
    /// Page cache size set on the connection, KiB.
    cache_kib: i64,
    /// Per tier: the statements that read and write a chunk row.
    chunk_sql: Vec<ChunkSql>,
    acc: Vec<Acc>,
    watermarks: Vec<Ts>,
    next_trim: Vec<Ts>,
    run_id: i64,
    refused_series: u64,
    /// Keys refused so far, so each is counted once (bounded).
    refused: std::collections::HashSet<String>,
    /// How often a passive checkpoint runs (`history.checkpoint_interval`).
    checkpoint_every: Duration,
    last_checkpoint: Instant,
    /// A tier of a minute or coarser was flushed: checkpoint after this
    /// batch.
    truncate_due: bool,
    /// The inode of the write-ahead log this connection writes, to notice
    /// the log removed (or replaced by a reader's fresh one) under it.
    wal_ino: Option<u64>,
    /// When the page cache was last emptied ([`SHRINK_EVERY`]).
    last_shrink: Instant,
}

/// How often the writer's page cache is emptied after a commit. The cache
/// is sized for what a flush touches, but between flushes it also keeps
/// what retention and the late samples touched, and it fills up to its
/// size as the file grows: in an hour's soak the agent's memory grew with
/// the file. Emptied once a minute, it holds what one minute's writes
/// touch, whatever the file's size; the pages come back from the
/// operating system's cache (a few hundred reads a minute). Wall time, not
/// batches: a bench writing thousands of batches a second keeps its cache.
const SHRINK_EVERY: Duration = Duration::from_secs(60);

impl Writer {
    /// Opens (creating if needed) the history file in `dir`, salvaging a
    /// corrupt one into a fresh file and moving it aside, and starts a new
    /// agent run. Returns the events that opening produced (already
    /// recorded), such as what a salvage kept and lost.
    pub fn open(
        dir: &Path,
        history: &HistoryConfig,
        now: Ts,
        run: &RunInfo,
    ) -> Result<(Writer, Vec<Event>), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let mut events = Vec::new();
        let conn = open_or_salvage(&path, now, &mut events)?;
        // A flush, a trim and a batch use about 15 statements: all stay
        // prepared.
        conn.set_prepared_statement_cache_capacity(32);
        let tiers = tiers::from_config(history);
        let chunk_sql = tiers.iter().map(|t| ChunkSql::new(&t.table)).collect();
        let mut w = Writer {
            path,
            conn,
            tiers,
            max_series: history.max_series as usize,
            max_events: history.max_events as i64,
            max_event_bytes: history.max_event_bytes,
            max_runs: history.max_runs as i64,
            series: HashMap::new(),
            cache_kib: 0,
            chunk_sql,
            acc: Vec::new(),
            watermarks: Vec::new(),
            next_trim: Vec::new(),
            run_id: 0,
            refused_series: 0,
            refused: std::collections::HashSet::new(),
            checkpoint_every: history.checkpoint_interval,
            last_checkpoint: Instant::now(),
            truncate_due: false,
            wal_ino: None,
            last_shrink: Instant::now(),
        };
        events.extend(w.sync_tiers(now)?);
        w.load_series()?;
        w.size_cache();
        w.recover()?;
        events.extend(w.start_run(now, run)?);
        w.write(&[], &events, now)?;
        w.wal_ino = std::fs::metadata(w.wal_path()).ok().map(|m| m.ino());
        Ok((w, events))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// Series not stored because `max_series` was reached.
    pub fn refused_series(&self) -> u64 {
        self.refused_series
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
        sql_err(&self.path)
    }

    /// Sizes the page cache to the series stored: enough for the pages a
    /// flush touches, small for an agent with few series. Only speed depends
    /// on it: a refusal leaves the size it had.
    fn size_cache(&mut self) {
        let kib = (self.series.len() as i64 * CACHE_KIB_PER_SERIES).max(CACHE_KIB_MIN);
        if kib != self.cache_kib && self.conn.pragma_update(None, "cache_size", -kib).is_ok() {
            self.cache_kib = kib;
        }
    }

    /// Empties the page cache at most every [`SHRINK_EVERY`]. Only memory
    /// depends on it: a failure is left for the next time.
    fn shrink_on_schedule(&mut self) {
        if self.last_shrink.elapsed() >= SHRINK_EVERY {
            self.shrink_cache();
        }
    }

    fn shrink_cache(&mut self) {
        let _ = self.conn.execute_batch("PRAGMA shrink_memory");
        self.last_shrink = Instant::now();
    }

    /// Bytes of page cache the connection holds now.
    #[cfg(test)]
    pub(crate) fn cache_used_bytes(&self) -> i64 {
        let (mut cur, mut hi) = (0, 0);
        // SAFETY: a status read on this open connection's handle.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                self.conn.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED,
                &mut cur,
                &mut hi,
                0,
            )
        };
        assert_eq!(rc, 0, "sqlite3_db_status");
        cur.into()
    }

    /// Makes the next commit empty the page cache.
    #[cfg(test)]
    pub(crate) fn shrink_due(&mut self) {
        self.last_shrink = Instant::now() - SHRINK_EVERY;
    }

    /// The page cache size in force on the connection, KiB.
    #[cfg(test)]
    pub(crate) fn cache_kib(&self) -> i64 {
        -self
            .conn
            .pragma_query_value(None, "cache_size", |r| r.get::<_, i64>(0))
            .unwrap()
    }

    /// Marks the current run as cleanly stopped.
    pub fn end_run(&mut self, now: Ts) -> Result<(), StoreError> {
        let ev = Event::agent(now, "agent", "agent stopped");
        self.write(&[], &[ev], now)?;
        self.conn
            .execute(
                "UPDATE agent_runs SET stopped_ms = ?1, last_seen_ms = max(last_seen_ms, ?1) WHERE id = ?2",
                params![now, self.run_id],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The id of a series, registering it if new. `None` when `max_series`
    /// series exist already or the key is too long: the sample is not stored.
    pub fn series_id(
        &mut self,
        key: &SeriesKey,
        unit: Unit,
        now: Ts,
    ) -> Result<Option<i64>, StoreError> {
        let text = key.text();
        if let Some(&id) = self.series.get(&text) {
            return Ok(Some(id));
        }
        if self.series.len() >= self.max_series || text.len() as u64 > MAX_KEY_BYTES {
            if self.refused.len() < REFUSED_REMEMBERED && self.refused.insert(text.clone()) {
                if self.refused_series == 0 {
                    tracing::warn!(series = %text, max_series = self.max_series, "series not stored: history.max_series reached or key longer than {MAX_KEY_BYTES} bytes");
                }
                self.refused_series += 1;
            }
            return Ok(None);
        }
        self.conn
            .execute(
                "INSERT INTO series (key, probe, metric, labels, unit, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![text, key.probe, key.metric, key.labels_text(), unit.as_str(), now],
            )
            .map_err(self.err())?;
        let id = self.conn.last_insert_rowid();
        self.series.insert(text, id);
        self.size_cache();
        Ok(Some(id))
    }

    /// Writes one batch in one transaction: samples, events, flushes of
    /// closed buckets, retention. On failure nothing of the batch is kept and
    /// the in-memory state is rebuilt from the file, so the same batch can be
    /// offered again.
    pub fn write(
        &mut self,
        samples: &[Sample],
        events: &[Event],
        now: Ts,
    ) -> Result<WriteStats, StoreError> {
        // Cached statements: parsing BEGIN and COMMIT afresh at every write
        // was a tenth of the writer's work at a 1 s tick.
        self.conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut st| st.execute([]))
            .map_err(self.err())?;
        let commit = |conn: &Connection| {
            conn.prepare_cached("COMMIT")
                .and_then(|mut st| st.execute([]))
                .map(|_| ())
        };
        match self.write_in_tx(samples, events, now) {
            Ok(stats) => match commit(&self.conn) {
                Ok(()) => {
                    self.checkpoint_on_budget();
                    self.shrink_on_schedule();
                    Ok(stats)
                }
                Err(e) => Err(self.fail(e)),
            },
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                if let Err(again) = self.recover() {
                    tracing::error!("rebuilding history state after a failed write: {again}");
                }
                Err(e)
            }
        }
    }

    fn fail(&mut self, e: rusqlite::Error) -> StoreError {
        let _ = self.conn.execute_batch("ROLLBACK");
        if let Err(again) = self.recover() {
            tracing::error!("rebuilding history state after a failed commit: {again}");
        }
        sql_err(&self.path)(e)
    }

    fn write_in_tx(
        &mut self,
        samples: &[Sample],
        events: &[Event],
        now: Ts,
    ) -> Result<WriteStats, StoreError> {
        let err = sql_err(&self.path);
        let mut stats = WriteStats {
            samples: samples.len(),
            ..WriteStats::default()
        };
        if !self.tiers.is_empty() {
            // Journal rows: one per timestamp. Samples older than the first
            // watermark belong to buckets already written: merged directly.
            let mut by_ts: BTreeMap<Ts, Vec<u8>> = BTreeMap::new();
            for s in samples {
                if s.ts < self.watermarks[0] {
                    stats.late_samples += 1;
                    self.write_late(s)?;
                    continue;
                }
                let blob = by_ts.entry(s.ts).or_default();
                blob.extend_from_slice(&(s.series as u32).to_le_bytes());
                blob.extend_from_slice(&s.value.to_le_bytes());
                add(
                    &mut self.acc[0],
                    self.tiers[0].bucket(s.ts),
                    s.series,
                    &Agg::one(s.ts, s.value),
                );
            }
            let mut st = self
                .conn
                .prepare_cached("INSERT INTO journal (ts_ms, data) VALUES (?1, ?2)")
                .map_err(&err)?;
            for (ts, blob) in &by_ts {
                st.execute(params![ts, blob]).map_err(&err)?;
            }
            drop(st);
            stats.rows_flushed = self.flush(now)?;
            self.trim(now)?;
        }
        // The newest events that fit both bounds; room is made for them
        // first, so that the pages the oldest free are reused and the
        // table never passes its bound. Every batch checks the bytes: the
        // alerts' events come from another connection.
        let (first, bytes) =
            events::newest_that_fit(events, self.max_events as u64, self.max_event_bytes);
        let fresh = &events[first..];
        if !fresh.is_empty()
            || events::total_bytes(&self.conn).map_err(&err)? > self.max_event_bytes
        {
            events::trim(
                &self.conn,
                self.max_events as u64 - fresh.len() as u64,
                self.max_event_bytes - bytes,
            )
            .map_err(&err)?;
        }
        let mut st = self
            .conn
            .prepare_cached(
                // A status change during a maintenance run (of this agent
                // or of the CLI) is marked with the run.
                "INSERT INTO events (ts_ms, run_id, probe, kind, from_status, to_status, message, maintenance_run)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?4 = 'status' THEN
                   (SELECT max(id) FROM maintenance_runs WHERE status = 'running' AND dry_run = 0) END)",
            )
            .map_err(&err)?;
        for e in fresh {
            st.execute(params![
                e.ts_ms,
                self.run_id,
                e.probe,
                e.kind,
                e.from_status,
                e.to_status,
                events::stored_message(&e.message)
            ])
            .map_err(&err)?;
        }
        drop(st);
        if self.run_id != 0 {
            self.conn
                .prepare_cached(
                    "UPDATE agent_runs SET last_seen_ms = max(last_seen_ms, ?1) WHERE id = ?2",
                )
                .map_err(&err)?
                .execute(params![now, self.run_id])
                .map_err(&err)?;
        }
        Ok(stats)
    }

    /// Copies the write-ahead log into the main file and truncates it; used
    /// when the disk is full. Failure is expected then and ignored.
    pub fn checkpoint(&self) {
        let _ = self.checkpoint_now();
    }

    /// Keeps the log small and the main file current: a checkpoint every
    /// `checkpoint_interval`, once the log passes [`WAL_LIMIT_BYTES`], and
    /// after each flush of a tier of a minute or coarser. A lost log then
    /// loses at most that last stretch, and the log alone never fills a
    /// disk. Each checkpoint also truncates the log, so that the next
    /// commit grows the file again and a full disk shows at once rather
    /// than once the reused log has been written over.
    fn checkpoint_on_budget(&mut self) {
        if !(self.truncate_due
            || self.last_checkpoint.elapsed() >= self.checkpoint_every
            || self.wal_bytes() > WAL_LIMIT_BYTES)
        {
            return;
        }
        self.truncate_due = false;
        self.last_checkpoint = Instant::now();
        // A reader in the middle of a long query keeps its part of the log;
        // the next checkpoint copies it.
        if let Err(e) = self.checkpoint_now() {
            tracing::debug!("checkpoint of the history file: {e}");
        }
    }

    /// Copies the log into the main file and truncates it. It waits for
    /// readers to leave the log, but only briefly: the probes' samples wait
    /// behind it.
    fn checkpoint_now(&self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(CHECKPOINT_WAIT)?;
        let done = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        done
    }

    /// Bytes the write-ahead log takes now.
    pub fn wal_bytes(&self) -> u64 {
        std::fs::metadata(self.wal_path())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn wal_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push("-wal");
        p.into()
    }

    /// The write-ahead log was removed from the data dir while this writer
    /// had it open (a reader may have created an empty one in its place):
    /// new readers can no longer see what it holds. The cure is to
    /// checkpoint it (this connection still reads it) and reopen.
    pub fn wal_lost(&self) -> bool {
        match std::fs::metadata(self.wal_path()) {
            Ok(m) => self.wal_ino.is_some_and(|ino| ino != m.ino()),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// Bytes the history file takes now (pages in use and free).
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// A consistent copy of the history file (SQLite online backup).
    pub fn backup_to(&self, dest: &Path) -> Result<(), StoreError> {
        self.conn
            .backup(rusqlite::MAIN_DB, dest, None)
            .map_err(self.err())
    }

    /// Runs `PRAGMA quick_check`; `Ok(None)` when the file is sound.
    pub fn quick_check(&self) -> Result<Option<String>, StoreError> {
        quick_check(&self.conn).map_err(self.err())
    }
}

fn add(acc: &mut Acc, bucket: Ts, series: i64, agg: &Agg) {
    acc.entry(bucket)
        .or_default()
        .entry(series)
        .and_modify(|a| a.merge(agg))
        .or_insert(*agg);
}

/// Journal blobs are `(series: u32 LE, value: f64 LE)` pairs.
pub(crate) fn decode(data: &[u8]) -> impl Iterator<Item = (i64, f64)> + '_ {
    data.chunks_exact(12).map(|c| {
        let series = u32::from_le_bytes(c[..4].try_into().expect("4 bytes")) as i64;
        let value = f64::from_le_bytes(c[4..].try_into().expect("8 bytes"));
        (series, value)
    })
}
