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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::chunk;
use super::tiers::{self, Agg, MAX_KEY_BYTES, MAX_MESSAGE_BYTES, Tier};
use super::{Event, FILE_NAME, StoreError, migrate, move_aside, open_rw, sql_err};
use crate::config::HistoryConfig;
use crate::sample::{SeriesKey, Ts, Unit};

/// Refused series keys remembered for counting; beyond this, no more counted.
const REFUSED_REMEMBERED: usize = 10_000;

/// The writer's page cache, per series: a flush touches about one leaf page
/// per series in each tier it writes, and a trim as many again; with these
/// and their parents in memory a flush reads nothing back from the file.
const CACHE_KIB_PER_SERIES: i64 = 32;
/// The page cache of a writer with few series.
const CACHE_KIB_MIN: i64 = 512;

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
}

impl Writer {
    /// Opens (creating if needed) the history file in `dir`, moving a corrupt
    /// one aside, and starts a new agent run. Returns the events that opening
    /// produced (already recorded), such as a corrupt file moved aside.
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
        let conn = match open_checked(&path) {
            Ok(c) => c,
            Err(e) if e.is_corrupt() => {
                let aside = move_aside(&path, now)?;
                let msg = format!(
                    "history file was corrupt ({e}); moved aside to {} and started a fresh one",
                    aside.display()
                );
                tracing::error!("{msg}");
                events.push(Event::agent(now, "history", msg));
                open_checked(&path)?
            }
            Err(e) => return Err(e),
        };
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
        };
        events.extend(w.sync_tiers(now)?);
        w.load_series()?;
        w.size_cache();
        w.recover()?;
        events.extend(w.start_run(now, run)?);
        w.write(&[], &events, now)?;
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

    /// Creates the configured tier tables, drops tiers no longer configured,
    /// and reads the watermarks.
    fn sync_tiers(&mut self, now: Ts) -> Result<Vec<Event>, StoreError> {
        let err = sql_err(&self.path);
        let mut events = Vec::new();
        let existing: HashMap<String, Ts> = {
            let mut st = self
                .conn
                .prepare("SELECT tbl, watermark_ms FROM tiers")
                .map_err(&err)?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(&err)?
                .collect::<Result<_, _>>()
                .map_err(&err)?
        };
        let tx = self.conn.transaction().map_err(&err)?;
        for table in existing.keys() {
            if !self.tiers.iter().any(|t| &t.table == table) {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS \"{table}\""))
                    .map_err(&err)?;
                tx.execute("DELETE FROM tiers WHERE tbl = ?1", [table])
                    .map_err(&err)?;
                let msg = format!("tier {table} is no longer configured; its rows were dropped");
                tracing::warn!("{msg}");
                events.push(Event::agent(now, "history", msg));
            }
        }
        let mut watermarks: Vec<Ts> = Vec::new();
        for (i, t) in self.tiers.iter().enumerate() {
            tx.execute_batch(&tier_table_sql(&t.table)).map_err(&err)?;
            // A tier's watermark never passes the one below it.
            let below = if i == 0 {
                t.bucket(now)
            } else {
                t.bucket(watermarks[i - 1])
            };
            let w = existing
                .get(&t.table)
                .copied()
                .map_or(below, |w| w.min(if i == 0 { w } else { watermarks[i - 1] }));
            tx.execute(
                "INSERT INTO tiers (tbl, step_ms, span_ms, watermark_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tbl) DO UPDATE SET span_ms = excluded.span_ms, watermark_ms = excluded.watermark_ms",
                params![t.table, t.step_ms, t.span_ms, w],
            )
            .map_err(&err)?;
            watermarks.push(w);
        }
        tx.commit().map_err(&err)?;
        self.watermarks = watermarks;
        self.next_trim = vec![Ts::MIN; self.tiers.len()];
        Ok(events)
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

    fn load_series(&mut self) -> Result<(), StoreError> {
        let err = sql_err(&self.path);
        let mut st = self
            .conn
            .prepare("SELECT key, id FROM series")
            .map_err(&err)?;
        self.series = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        Ok(())
    }

    /// Rebuilds the accumulators and watermarks from what is committed. Used
    /// at open and after a failed write (whose transaction rolled back).
    fn recover(&mut self) -> Result<(), StoreError> {
        let err = sql_err(&self.path);
        let mut st = self
            .conn
            .prepare("SELECT tbl, watermark_ms FROM tiers")
            .map_err(&err)?;
        let stored: HashMap<String, Ts> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        drop(st);
        self.watermarks = self
            .tiers
            .iter()
            .map(|t| stored.get(&t.table).copied().unwrap_or(0))
            .collect();
        self.acc = vec![Acc::new(); self.tiers.len()];
        if self.tiers.is_empty() {
            return Ok(());
        }
        // First tier: the journal.
        let mut st = self
            .conn
            .prepare("SELECT ts_ms, data FROM journal WHERE ts_ms >= ?1")
            .map_err(&err)?;
        let mut rows = st.query([self.watermarks[0]]).map_err(&err)?;
        while let Some(r) = rows.next().map_err(&err)? {
            let ts: Ts = r.get(0).map_err(&err)?;
            let data: Vec<u8> = r.get(1).map_err(&err)?;
            let bucket = self.tiers[0].bucket(ts);
            for (series, value) in decode(&data) {
                add(&mut self.acc[0], bucket, series, &Agg::one(ts, value));
            }
        }
        drop(rows);
        drop(st);
        // Higher tiers: rows of the tier below that are past this tier's
        // watermark but not past the lower one's.
        let ids: Vec<i64> = self.series.values().copied().collect();
        for k in 1..self.tiers.len() {
            let (from, to) = (self.watermarks[k], self.watermarks[k - 1]);
            if from >= to {
                continue;
            }
            let lower = &self.tiers[k - 1];
            let mut st = self
                .conn
                .prepare(&self.chunk_sql[k - 1].range)
                .map_err(&err)?;
            for &id in &ids {
                let mut rows = st
                    .query(params![id, from - lower.chunk_span_ms(), to])
                    .map_err(&err)?;
                while let Some(r) = rows.next().map_err(&err)? {
                    for (bucket, agg) in
                        chunk::row_buckets(r, lower.step_ms, from, to).map_err(&err)?
                    {
                        add(&mut self.acc[k], self.tiers[k].bucket(bucket), id, &agg);
                    }
                }
            }
        }
        Ok(())
    }

    fn start_run(&mut self, now: Ts, run: &RunInfo) -> Result<Vec<Event>, StoreError> {
        let err = sql_err(&self.path);
        let mut events = Vec::new();
        let unclean: Vec<(i64, Ts)> = {
            let mut st = self
                .conn
                // Each start reports its predecessor only, so a crash is told once.
                .prepare(
                    "SELECT id, last_seen_ms FROM agent_runs
                     WHERE stopped_ms IS NULL AND id = (SELECT max(id) FROM agent_runs)",
                )
                .map_err(&err)?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(&err)?
                .collect::<Result<_, _>>()
                .map_err(&err)?
        };
        for (id, last_seen) in unclean {
            events.push(Event::agent(
                last_seen,
                "agent",
                format!("agent run {id} ended without a clean stop; no data from its last sign of life until this start"),
            ));
        }
        self.conn
            .execute(
                "INSERT INTO agent_runs (started_ms, last_seen_ms, version, hostname, pid) VALUES (?1, ?1, ?2, ?3, ?4)",
                params![now, run.version, run.hostname, run.pid],
            )
            .map_err(&err)?;
        self.run_id = self.conn.last_insert_rowid();
        events.push(Event::agent(
            now,
            "agent",
            format!("agent started (version {}, pid {})", run.version, run.pid),
        ));
        Ok(events)
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
        let text = key.to_string();
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
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(self.err())?;
        match self.write_in_tx(samples, events, now) {
            Ok(stats) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(stats),
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
        // Events beyond the cap would be trimmed at once: only the newest are
        // inserted, so the file never holds more than twice the cap.
        let keep = events.len().saturating_sub(self.max_events as usize);
        for e in &events[keep..] {
            let message = truncate(&e.message, MAX_MESSAGE_BYTES as usize);
            st.execute(params![
                e.ts_ms,
                self.run_id,
                e.probe,
                e.kind,
                e.from_status,
                e.to_status,
                message
            ])
            .map_err(&err)?;
        }
        drop(st);
        if !events.is_empty() {
            // Trimmed in the same transaction: a burst never outgrows the bound.
            self.conn
                .prepare_cached("DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?1")
                .map_err(&err)?
                .execute([self.max_events])
                .map_err(&err)?;
        }
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

    /// A sample for a bucket whose tier rows are written: merge it into every
    /// tier that has passed it, and into the accumulator of the first that
    /// has not.
    fn write_late(&mut self, s: &Sample) -> Result<(), StoreError> {
        let one = Agg::one(s.ts, s.value);
        for k in 0..self.tiers.len() {
            if s.ts >= self.watermarks[k] {
                add(&mut self.acc[k], self.tiers[k].bucket(s.ts), s.series, &one);
                return Ok(());
            }
            let bucket = self.tiers[k].bucket(s.ts);
            self.merge_chunk(k, s.series, &[(bucket, one)])?;
        }
        Ok(())
    }

    /// Merges buckets of one series, all in one chunk, into tier `k`'s row
    /// of that chunk.
    fn merge_chunk(
        &mut self,
        k: usize,
        series: i64,
        buckets: &[(Ts, Agg)],
    ) -> Result<(), StoreError> {
        let Some(&(first, _)) = buckets.first() else {
            return Ok(());
        };
        let err = sql_err(&self.path);
        let step = self.tiers[k].step_ms;
        let chunk_ms = chunk::start(step, first);
        let mut data: Vec<u8> = self
            .conn
            .prepare_cached(&self.chunk_sql[k].get)
            .map_err(&err)?
            .query_row(params![series, chunk_ms], |r| r.get(0))
            .optional()
            .map_err(&err)?
            .unwrap_or_default();
        for (bucket, agg) in buckets {
            chunk::merge(&mut data, chunk_ms, step, *bucket, agg);
        }
        self.conn
            .prepare_cached(&self.chunk_sql[k].put)
            .map_err(&err)?
            .execute(params![series, chunk_ms, data])
            .map_err(&err)?;
        Ok(())
    }

    /// Writes every bucket that has closed, tier by tier, feeding each into
    /// the tier above; advances the watermarks and trims the journal.
    fn flush(&mut self, now: Ts) -> Result<usize, StoreError> {
        let err = sql_err(&self.path);
        let mut rows = 0;
        for k in 0..self.tiers.len() {
            let mut new_w = tiers::closes_at(&self.tiers, k, now);
            if k > 0 {
                new_w = new_w.min(self.watermarks[k - 1]);
            }
            if new_w <= self.watermarks[k] {
                continue;
            }
            let open = self.acc[k].split_off(&new_w);
            let closed = std::mem::replace(&mut self.acc[k], open);
            // In key order: the buckets of a series share a leaf page, and
            // the series follow each other through the table.
            let mut written: Vec<(i64, Ts, Agg)> = closed
                .into_iter()
                .flat_map(|(bucket, by_series)| {
                    by_series
                        .into_iter()
                        .map(move |(series, agg)| (series, bucket, agg))
                })
                .collect();
            written.sort_unstable_by_key(|&(series, bucket, _)| (series, bucket));
            // One read and one write per chunk row of each series.
            let step = self.tiers[k].step_ms;
            let mut i = 0;
            let mut buckets: Vec<(Ts, Agg)> = Vec::new();
            while i < written.len() {
                let (series, first, _) = written[i];
                let chunk_ms = chunk::start(step, first);
                buckets.clear();
                while let Some(&(s, b, agg)) = written.get(i)
                    && s == series
                    && chunk::start(step, b) == chunk_ms
                {
                    buckets.push((b, agg));
                    i += 1;
                }
                self.merge_chunk(k, series, &buckets)?;
            }
            rows += written.len();
            if let Some(next) = self.tiers.get(k + 1) {
                for (series, bucket, agg) in &written {
                    add(&mut self.acc[k + 1], next.bucket(*bucket), *series, agg);
                }
            }
            self.watermarks[k] = new_w;
            self.conn
                .prepare_cached("UPDATE tiers SET watermark_ms = ?1 WHERE tbl = ?2")
                .map_err(&err)?
                .execute(params![new_w, self.tiers[k].table])
                .map_err(&err)?;
            if k == 0 {
                self.conn
                    .prepare_cached("DELETE FROM journal WHERE ts_ms < ?1")
                    .map_err(&err)?
                    .execute([new_w])
                    .map_err(&err)?;
            }
        }
        Ok(rows)
    }

    /// Retention: per series, drop buckets older than the span, and in any
    /// case all but the newest `capacity` buckets (so that the bound holds
    /// whatever the clock does). Events and runs are kept to their maximum.
    fn trim(&mut self, now: Ts) -> Result<(), StoreError> {
        let err = sql_err(&self.path);
        let ids: Vec<i64> = self.series.values().copied().collect();
        for k in 0..self.tiers.len() {
            let every = self.tiers[k].trim_every_ms();
            // A clock stepped back leaves next_trim far ahead: trim now.
            if now < self.next_trim[k] && self.next_trim[k] - now <= every {
                continue;
            }
            self.next_trim[k] = now + every;
            let t = &self.tiers[k];
            let cutoff = t.bucket(now) - t.span_ms + t.step_ms;
            // A chunk goes when every bucket in it is older than the cutoff,
            // or than (span - step) before the newest chunk's start: buckets
            // are aligned to the step, so at most `capacity` are newer than
            // that, whatever the clock did. max() is one seek.
            let mut st = self
                .conn
                .prepare_cached(&self.chunk_sql[k].trim)
                .map_err(&err)?;
            for &id in &ids {
                st.execute(params![
                    id,
                    cutoff,
                    t.span_ms - t.step_ms,
                    t.chunk_span_ms()
                ])
                .map_err(&err)?;
            }
            if k == 0 {
                self.conn
                    .execute(
                        "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?1",
                        [self.max_events],
                    )
                    .map_err(&err)?;
                self.conn
                    .execute(
                        "DELETE FROM agent_runs WHERE id <= (SELECT max(id) FROM agent_runs) - ?1",
                        [self.max_runs],
                    )
                    .map_err(&err)?;
            }
        }
        Ok(())
    }

    /// Copies the write-ahead log into the main file and truncates it; used
    /// when the disk is full. Failure is expected then and ignored.
    pub fn checkpoint(&self) {
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
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

fn quick_check(conn: &Connection) -> Result<Option<String>, rusqlite::Error> {
    let verdict: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
    Ok(if verdict == "ok" { None } else { Some(verdict) })
}

/// Opens, migrates and checks the file; a failed check reads as corruption.
fn open_checked(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = open_rw(path)?;
    if migrate(&mut conn, path)? {
        // The converted tables left the old rows' pages free: give them
        // back, so that the file is within its bound again. Without room
        // for the copy VACUUM makes, the file keeps its size (free pages
        // are used before it grows) and says so.
        tracing::info!(path = %path.display(), "history converted to chunk rows; compacting the file");
        if let Err(e) = conn.execute_batch("VACUUM") {
            tracing::warn!(path = %path.display(), "compacting the converted history file failed ({e}); it keeps its size until its free pages are used");
        }
    }
    if let Some(problem) = quick_check(&conn).map_err(sql_err(path))? {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            message: format!("integrity check failed: {problem}"),
        });
    }
    // The journal must exist and be readable: a file whose pages were
    // damaged but not in a way quick_check sees still fails here.
    conn.query_row("SELECT count(*) FROM journal", [], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(sql_err(path))?;
    Ok(conn)
}

fn add(acc: &mut Acc, bucket: Ts, series: i64, agg: &Agg) {
    acc.entry(bucket)
        .or_default()
        .entry(series)
        .and_modify(|a| a.merge(agg))
        .or_insert(*agg);
}

/// The table of one tier: a row per series and chunk of buckets
/// (`chunk`). The rows are ordered by rowid; the index finds a series'
/// chunks in time order.
pub(crate) fn tier_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS \"{table}\" (
            series   INTEGER NOT NULL,
            chunk_ms INTEGER NOT NULL,
            data     BLOB NOT NULL,
            UNIQUE (series, chunk_ms)
        )"
    )
}

/// The statements on one tier's chunk rows.
struct ChunkSql {
    /// `(series, chunk_ms)` → data.
    get: String,
    /// Inserts or replaces the data of `(series, chunk_ms)`.
    put: String,
    /// `(series, after, before)` → `(chunk_ms, data)` with `after < chunk_ms < before`.
    range: String,
    /// `(series, cutoff, span - step, chunk span)`: retention.
    trim: String,
}

impl ChunkSql {
    fn new(table: &str) -> ChunkSql {
        ChunkSql {
            get: format!("SELECT data FROM \"{table}\" WHERE series = ?1 AND chunk_ms = ?2"),
            put: format!(
                "INSERT INTO \"{table}\" (series, chunk_ms, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (series, chunk_ms) DO UPDATE SET data = excluded.data"
            ),
            range: chunk::range_sql(table),
            trim: format!(
                "DELETE FROM \"{table}\" WHERE series = ?1 AND chunk_ms <= max(?2, coalesce(
                    (SELECT max(chunk_ms) FROM \"{table}\" WHERE series = ?1) - ?3, ?2)) - ?4"
            ),
        }
    }
}

/// Journal blobs are `(series: u32 LE, value: f64 LE)` pairs.
pub(crate) fn decode(data: &[u8]) -> impl Iterator<Item = (i64, f64)> + '_ {
    data.chunks_exact(12).map(|c| {
        let series = u32::from_le_bytes(c[..4].try_into().expect("4 bytes")) as i64;
        let value = f64::from_le_bytes(c[4..].try_into().expect("8 bytes"));
        (series, value)
    })
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
