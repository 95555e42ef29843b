//! Opening and crash recovery of the history writer: the file is checked
//! (what reads back of a corrupt one is salvaged into a fresh file, and the
//! damaged one moved aside: `store::salvage`), the tier tables are
//! matched to the config, and the accumulators and watermarks are rebuilt
//! exactly from what is committed, at open and after a failed write. The
//! start of a run reports a predecessor that never stopped cleanly.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Acc, RunInfo, Writer, add, decode};
use crate::sample::Ts;
use crate::store::chunk::{self, tier_table_sql};
use crate::store::tiers::Agg;
use crate::store::{Event, StoreError, migrate, open_rw, salvage, sql_err};

impl Writer {
    /// Creates the configured tier tables, drops tiers no longer configured,
    /// and reads the watermarks.
    pub(super) fn sync_tiers(&mut self, now: Ts) -> Result<Vec<Event>, StoreError> {
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

    pub(super) fn load_series(&mut self) -> Result<(), StoreError> {
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
    pub(super) fn recover(&mut self) -> Result<(), StoreError> {
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

    pub(super) fn start_run(&mut self, now: Ts, run: &RunInfo) -> Result<Vec<Event>, StoreError> {
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
}

pub(super) fn quick_check(conn: &Connection) -> Result<Option<String>, rusqlite::Error> {
    let verdict: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
    Ok(if verdict == "ok" { None } else { Some(verdict) })
}

/// Opens, migrates and checks the file; a failed check reads as corruption.
pub(super) fn open_checked(path: &Path) -> Result<Connection, StoreError> {
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

/// Opens the checked file; a corrupt one is salvaged first (what reads back
/// is copied into a fresh file, the damaged file moved aside), with an
/// event saying what was kept and lost.
pub(super) fn open_or_salvage(
    path: &Path,
    now: Ts,
    events: &mut Vec<Event>,
) -> Result<Connection, StoreError> {
    match open_checked(path) {
        Ok(c) => Ok(c),
        Err(e) if e.is_corrupt() => {
            let saved = salvage::salvage(path, now)?;
            // What was lost comes first: an event's message is capped.
            let msg = format!(
                "history file was corrupt and was salvaged into a fresh file; lost: {}; the damaged file was moved aside to {}; kept {}; the check said: {e}",
                saved.lost(),
                saved.aside.display(),
                saved.kept()
            );
            tracing::error!("{msg}");
            events.push(Event::agent(now, "history", msg));
            open_checked(path)
        }
        Err(e) => Err(e),
    }
}
