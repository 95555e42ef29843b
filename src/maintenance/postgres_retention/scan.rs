//! Exact counts of old rows without one long statement: the plan's count
//! (with the rows' size and first and last position), the validation's
//! recount of the processed range and the figures' count after a run walk
//! the key (or ctid) range in chunks, each one statement sized from the
//! measured positions per millisecond to take about `batch_target` (at
//! most [`MAX_CHUNK`]), with a
//! pause after it that keeps the walk to `max_duty` of wall time, as the
//! batches are. One statement over a 4M-row table held a core for a second
//! or more, unpaced, before the first batch and again after the last;
//! chunked, the application shares the server as it does with the batches.
//! The counts stay exact: the chunks tile the range and each counts its
//! own rows (each chunk at its own snapshot; rows older than the cutoff do
//! not appear while a run goes, the batches are what remove them).

use std::time::{Duration, Instant};

use super::target::{TID_SHIFT, Target};
use crate::clients::postgres::Session;

/// Pacing of a walk: the task's `batch_target` and `max_duty`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    pub target: Duration,
    pub duty: f64,
}

/// What a walk found among the rows older than the cutoff.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Tally {
    pub rows: u64,
    /// `pg_column_size` of the rows (with `sizes` only).
    pub bytes: u64,
    pub first: Option<i64>,
    pub last: Option<i64>,
    pub chunks: u64,
    /// Time spent in the chunks' statements, pauses left out.
    pub busy: Duration,
    /// The longest chunk's statement.
    pub longest: Duration,
}

/// The longest a chunk aims at, whatever `batch_target`: a read has no
/// commit or archive fsync to spread over its rows, so short chunks cost
/// little more (a round trip and a plan each), and an application
/// transaction caught behind one waits less.
const MAX_CHUNK: Duration = Duration::from_millis(2);
/// The fewest keys a chunk covers (a ctid chunk: this many pages' worth
/// of items is [`MIN_PAGES`]). Without a floor the width followed the
/// measured positions per millisecond down to a single key: a chunk's
/// round trip and plan alone took longer than [`MAX_CHUNK`] on a server
/// at work, so every chunk looked slow, and a validation walked 2M
/// deleted keys one at a time (more than 20 minutes where the batches had
/// taken 100 s). A chunk of this many keys costs little more than its
/// round trip.
const MIN_KEYS: f64 = 256.0;
/// The fewest pages a ctid chunk covers.
const MIN_PAGES: u64 = 4;
/// Rows a first chunk aims at, before any chunk has been timed.
const FIRST_CHUNK_ROWS: f64 = 1000.0;
/// A chunk's width grows at most this many times over the last one's: a
/// stretch without rows (a gap in the keys) must not grow the width so far
/// that the next dense stretch becomes one long statement.
const MAX_GROWTH: f64 = 2.0;

/// The positions of every row of the table, `[lo, hi)`, and the table's
/// estimated row count: the key's smallest and largest value (two index
/// probes), or the pages the table has (rows appended after this are new
/// ones, not older than the cutoff).
pub(super) async fn table_range(s: &Session, t: &Target) -> Result<(i64, i64, u64), String> {
    let sql = match &t.key {
        Some(k) => format!(
            "SELECT min(t.{k})::int8, max(t.{k})::int8, \
             (SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::oid) FROM {} t",
            t.table.sql(),
            k = crate::clients::postgres::quote(k)
        ),
        None => "SELECT 0::int8, (pg_relation_size($1::oid) / current_setting('block_size')::int8 - 1)::int8, \
                 (SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::oid)"
            .to_string(),
    };
    let row = s.timed(s.client.query_one(&sql, &[&t.table.oid])).await?;
    let est = row.get::<_, Option<i64>>(2).unwrap_or(0).max(0) as u64;
    Ok(
        match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
            (Some(a), Some(b)) if b >= a => match &t.key {
                Some(_) => (a, b.saturating_add(1), est),
                // Pages 0..=b: every item of the last page included.
                None => (0, (b + 1) << TID_SHIFT, est),
            },
            _ => (0, 0, est),
        },
    )
}

/// [`table_range`] after a run that emptied `[first, next)` of its old
/// rows: the key's smallest value under `first` and largest from `next`
/// on, two index probes that stop at the processed range, which the range
/// then covers. A plain `min()` walks every entry the run deleted and no
/// vacuum has removed yet, visiting each row's page, in one unpaced
/// statement (12,800 buffers dirtied for 1M deleted rows of a
/// 2M-row table). Without a key, the same as [`table_range`] (the pages,
/// no probe).
pub(super) async fn table_range_around(
    s: &Session,
    t: &Target,
    (first, next): (i64, i64),
) -> Result<(i64, i64, u64), String> {
    let Some(k) = &t.key else {
        return table_range(s, t).await;
    };
    let sql = format!(
        "SELECT (SELECT min(t.{k})::int8 FROM {tab} t WHERE t.{k} < $2::int8), \
         (SELECT max(t.{k})::int8 FROM {tab} t WHERE t.{k} >= $3::int8), \
         (SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::oid)",
        tab = t.table.sql(),
        k = crate::clients::postgres::quote(k)
    );
    let row = s
        .timed(s.client.query_one(&sql, &[&t.table.oid, &first, &next]))
        .await?;
    let est = row.get::<_, Option<i64>>(2).unwrap_or(0).max(0) as u64;
    let (below, above) = (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1));
    let lo = below.map_or(first, |b| b.min(first));
    let hi = above.map_or(next, |a| a.saturating_add(1).max(next));
    Ok((lo, hi.max(lo), est))
}

/// Counts the rows older than `cutoff` in `[lo, hi)`, a chunk at a time;
/// with `sizes`, also their size and first and last position. `est_rows`:
/// about how many rows (old or not) the range holds, for the first
/// chunk's width.
pub(super) async fn tally(
    s: &Session,
    t: &Target,
    cutoff: &str,
    (lo, hi): (i64, i64),
    est_rows: u64,
    sizes: bool,
    pace: Pace,
) -> Result<Tally, String> {
    let sql = if sizes {
        t.plan_sql()
    } else {
        t.remaining_sql()
    };
    let mut out = Tally::default();
    if hi <= lo {
        return Ok(out);
    }
    // A ctid chunk is whole pages: less reads the same page again.
    let min_width: f64 = if t.key.is_some() {
        MIN_KEYS
    } else {
        (MIN_PAGES << TID_SHIFT) as f64
    };
    // One statement for the walk: a statement per chunk cost three round
    // trips (prepare, execute, close) and a plan each time.
    let stmt = s.timed(s.client.prepare(&sql)).await?;
    let span = (hi as i128 - lo as i128) as f64;
    let target_ms = pace.target.min(MAX_CHUNK).as_secs_f64() * 1000.0;
    let duty = pace.duty.clamp(0.01, 1.0);
    let mut width = (span * FIRST_CHUNK_ROWS / est_rows.max(1) as f64).max(min_width);
    // Positions per millisecond, smoothed: half the old, half the new.
    let mut rate: Option<f64> = None;
    let mut at = lo;
    while at < hi {
        let end = if (hi as i128 - at as i128) as f64 <= width {
            hi
        } else {
            at + width as i64
        };
        let started = Instant::now();
        let row = s
            .timed(s.client.query_one(&stmt, &[&at, &end, &cutoff]))
            .await?;
        let took = started.elapsed();
        out.rows += row.get::<_, i64>(0) as u64;
        if sizes {
            out.bytes += row.get::<_, i64>(1) as u64;
            if let Some(f) = row.get::<_, Option<i64>>(2) {
                out.first = Some(out.first.map_or(f, |x| x.min(f)));
            }
            if let Some(l) = row.get::<_, Option<i64>>(3) {
                out.last = Some(out.last.map_or(l, |x| x.max(l)));
            }
        }
        out.chunks += 1;
        out.busy += took;
        out.longest = out.longest.max(took);
        let took_ms = took.as_secs_f64() * 1000.0;
        let r = (end as i128 - at as i128) as f64 / took_ms.max(0.01);
        let smoothed = rate.map_or(r, |old| (old + r) / 2.0);
        rate = Some(smoothed);
        width = next_width(width, smoothed, target_ms, min_width);
        at = end;
        if at < hi {
            tokio::time::sleep(took.mul_f64(1.0 / duty - 1.0)).await;
        }
    }
    Ok(out)
}

/// The next chunk's width: the positions per millisecond times the target,
/// at most [`MAX_GROWTH`] times the last width, never under `floor`.
fn next_width(last: f64, rate: f64, target_ms: f64, floor: f64) -> f64 {
    (rate * target_ms).min(last * MAX_GROWTH).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks whose round trip alone takes longer than the target: the
    /// rate measured from them shrinks the width at every chunk, and it
    /// stops at the floor instead of walking a key at a time.
    #[test]
    fn a_slow_round_trip_does_not_shrink_chunks_below_the_floor() {
        let target_ms = MAX_CHUNK.as_secs_f64() * 1000.0;
        let took_ms = |width: f64| 3.0 + width * 0.0005;
        let (mut width, mut rate, mut at, mut chunks) = (1000.0, None::<f64>, 0.0, 0u64);
        while at < 2_000_000.0 {
            at += width;
            chunks += 1;
            let r = width / took_ms(width);
            let smoothed = rate.map_or(r, |old| (old + r) / 2.0);
            rate = Some(smoothed);
            width = next_width(width, smoothed, target_ms, MIN_KEYS);
            assert!(width >= MIN_KEYS, "width {width} after {chunks} chunks");
        }
        assert!(
            chunks <= (2_000_000.0 / MIN_KEYS) as u64 + 1,
            "{chunks} chunks"
        );
        // Cheap chunks grow the width, at most doubling per chunk.
        assert_eq!(next_width(1000.0, 10_000.0, target_ms, MIN_KEYS), 2000.0);
        assert_eq!(next_width(1000.0, 400.0, target_ms, MIN_KEYS), 800.0);
    }
}
