//! The row format of the tier tables: one row per series and chunk of
//! `CHUNK_BUCKETS` consecutive buckets, the buckets packed in a blob.
//!
//! A query of a week at one minute reads about a hundred rows instead of ten
//! thousand: SQLite's cost is per row and per column, and a bucket costs a
//! few nanoseconds to decode here. The writer rewrites the newest chunk of a
//! series when it flushes; a chunk fits in one page (no overflow pages).
//!
//! Chunks are aligned to the unix epoch at `CHUNK_BUCKETS × step`, like the
//! buckets. The blob holds one record per slot, from the chunk's first bucket
//! up to its newest stored one; a record whose count is 0 is a bucket without
//! samples. Each record is `RECORD_BYTES` little-endian bytes:
//!
//! | bytes | field |
//! |-------|-------|
//! | 0..4   | count (u32; 0 = no samples) |
//! | 4..8   | time of `last` after the bucket's start, ms (u32) |
//! | 8..16  | sum (f64) |
//! | 16..24 | min (f64) |
//! | 24..32 | max (f64) |
//! | 32..40 | last (f64) |
//!
//! The tier tables' schema and the statements on their rows (`ChunkSql`,
//! run by the writer; `range_sql`, also run by readers) are here too.

use super::tiers::Agg;
use crate::sample::Ts;

/// Buckets in one chunk row.
pub const CHUNK_BUCKETS: i64 = 96;
/// Bytes of one bucket's record in a chunk blob.
pub const RECORD_BYTES: usize = 40;
/// Largest chunk blob.
pub const MAX_CHUNK_BYTES: usize = CHUNK_BUCKETS as usize * RECORD_BYTES;
// SQLite keeps a row of a 4096-byte page in the page when its payload is at
// most 4061 bytes: the blob, two integers of at most 8 bytes, a header.
const _: () = assert!(MAX_CHUNK_BYTES + 32 <= 4061);

/// A tier step may not be longer than this: the time of `last` within a
/// bucket is kept in 32 bits of milliseconds.
pub const MAX_STEP_MS: i64 = u32::MAX as i64;

/// Span of one chunk of a tier with buckets of `step_ms`.
pub fn span_ms(step_ms: i64) -> i64 {
    step_ms * CHUNK_BUCKETS
}

/// Start of the chunk holding `bucket`.
pub fn start(step_ms: i64, bucket: Ts) -> Ts {
    let span = span_ms(step_ms);
    bucket.div_euclid(span) * span
}

/// The buckets of one chunk blob, oldest first: `(bucket start, aggregate)`.
/// A blob that is not a whole number of records (a damaged row) yields the
/// whole records it holds, and never more than a chunk's worth.
pub fn decode(chunk_ms: Ts, step_ms: i64, data: &[u8]) -> impl Iterator<Item = (Ts, Agg)> + '_ {
    data.chunks_exact(RECORD_BYTES)
        .take(CHUNK_BUCKETS as usize)
        .enumerate()
        .filter_map(move |(slot, r)| {
            let count = u32::from_le_bytes(r[0..4].try_into().expect("4 bytes"));
            if count == 0 {
                return None;
            }
            let bucket = chunk_ms + slot as i64 * step_ms;
            let f = |i: usize| f64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
            let last_off = u32::from_le_bytes(r[4..8].try_into().expect("4 bytes"));
            Some((
                bucket,
                Agg {
                    sum: f(8),
                    min: f(16),
                    max: f(24),
                    count: i64::from(count),
                    last: f(32),
                    last_ts: bucket + i64::from(last_off),
                },
            ))
        })
}

/// A query of `table` for one series' chunk rows that may hold buckets in
/// `[from, until)`: parameters `(series, from - span, until)`, rows
/// `(chunk_ms, data)` oldest first, read with `row_buckets`.
pub(crate) fn range_sql(table: &str) -> String {
    format!(
        "SELECT chunk_ms, data FROM \"{table}\"
         WHERE series = ?1 AND chunk_ms > ?2 AND chunk_ms < ?3 ORDER BY chunk_ms"
    )
}

/// The table of one tier: a row per series and chunk of buckets. The rows
/// are ordered by rowid; the index finds a series' chunks in time order.
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
pub(crate) struct ChunkSql {
    /// `(series, chunk_ms)` → data.
    pub(crate) get: String,
    /// Inserts or replaces the data of `(series, chunk_ms)`.
    pub(crate) put: String,
    /// `(series, after, before)` → `(chunk_ms, data)` with `after < chunk_ms < before`.
    pub(crate) range: String,
    /// `(series, cutoff, span - step, chunk span)`: retention.
    pub(crate) trim: String,
}

impl ChunkSql {
    pub(crate) fn new(table: &str) -> ChunkSql {
        ChunkSql {
            get: format!("SELECT data FROM \"{table}\" WHERE series = ?1 AND chunk_ms = ?2"),
            put: format!(
                "INSERT INTO \"{table}\" (series, chunk_ms, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (series, chunk_ms) DO UPDATE SET data = excluded.data"
            ),
            range: range_sql(table),
            trim: format!(
                "DELETE FROM \"{table}\" WHERE series = ?1 AND chunk_ms <= max(?2, coalesce(
                    (SELECT max(chunk_ms) FROM \"{table}\" WHERE series = ?1) - ?3, ?2)) - ?4"
            ),
        }
    }
}

/// The buckets in `[from, until)` of a row of `range_sql`.
pub(crate) fn row_buckets<'r>(
    r: &'r rusqlite::Row<'_>,
    step_ms: i64,
    from: Ts,
    until: Ts,
) -> rusqlite::Result<impl Iterator<Item = (Ts, Agg)> + 'r> {
    let chunk_ms: Ts = r.get(0)?;
    let data = r.get_ref(1)?.as_blob()?;
    Ok(decode(chunk_ms, step_ms, data).filter(move |&(b, _)| b >= from && b < until))
}

/// Merges `agg` into the bucket at `bucket` of the chunk blob `data` (which
/// starts at `chunk_ms`), growing the blob to that slot when needed.
pub fn merge(data: &mut Vec<u8>, chunk_ms: Ts, step_ms: i64, bucket: Ts, agg: &Agg) {
    let slot = ((bucket - chunk_ms) / step_ms) as usize;
    debug_assert!(slot < CHUNK_BUCKETS as usize, "bucket outside its chunk");
    // A damaged blob's partial record, or records past a chunk, are dropped.
    data.truncate((data.len() / RECORD_BYTES * RECORD_BYTES).min(MAX_CHUNK_BYTES));
    let at = slot * RECORD_BYTES;
    if data.len() < at + RECORD_BYTES {
        data.resize(at + RECORD_BYTES, 0);
    }
    let r = &mut data[at..at + RECORD_BYTES];
    let old = u32::from_le_bytes(r[0..4].try_into().expect("4 bytes"));
    let merged = if old == 0 {
        *agg
    } else {
        let (_, mut a) = decode(bucket, step_ms, r)
            .next()
            .expect("a record with a count decodes");
        a.merge(agg);
        a
    };
    write(r, bucket, &merged);
}

fn write(r: &mut [u8], bucket: Ts, a: &Agg) {
    let count = u32::try_from(a.count).unwrap_or(u32::MAX);
    let last_off = u32::try_from(a.last_ts - bucket).unwrap_or(0);
    r[0..4].copy_from_slice(&count.to_le_bytes());
    r[4..8].copy_from_slice(&last_off.to_le_bytes());
    r[8..16].copy_from_slice(&a.sum.to_le_bytes());
    r[16..24].copy_from_slice(&a.min.to_le_bytes());
    r[24..32].copy_from_slice(&a.max.to_le_bytes());
    r[32..40].copy_from_slice(&a.last.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: i64 = 60_000;

    #[test]
    fn chunks_align_to_the_epoch_at_96_buckets() {
        assert_eq!(span_ms(STEP), 5_760_000);
        assert_eq!(start(STEP, 5_760_000 * 3 + 60_000 * 7), 5_760_000 * 3);
        assert_eq!(start(STEP, -60_000), -5_760_000);
        assert_eq!(start(10_000, 0), 0);
    }

    #[test]
    fn merge_and_decode_round_trip_with_gaps() {
        let c = 5_760_000 * 10;
        let mut data = Vec::new();
        merge(
            &mut data,
            c,
            STEP,
            c + 3 * STEP,
            &Agg::one(c + 3 * STEP + 5, 1.5),
        );
        assert_eq!(data.len(), 4 * RECORD_BYTES, "slots 0..=3, 0..=2 empty");
        merge(&mut data, c, STEP, c, &Agg::one(c + 100, -2.0));
        merge(
            &mut data,
            c,
            STEP,
            c + 3 * STEP,
            &Agg::one(c + 3 * STEP + 9, 4.5),
        );
        // Out of order: the older sample does not replace `last`.
        merge(
            &mut data,
            c,
            STEP,
            c + 3 * STEP,
            &Agg::one(c + 3 * STEP + 1, 0.5),
        );
        let got: Vec<(Ts, Agg)> = decode(c, STEP, &data).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (c, Agg::one(c + 100, -2.0)));
        let (b, a) = got[1];
        assert_eq!(b, c + 3 * STEP);
        assert_eq!((a.count, a.sum, a.min, a.max), (3, 6.5, 0.5, 4.5));
        assert_eq!((a.last, a.last_ts), (4.5, c + 3 * STEP + 9));
    }

    #[test]
    fn a_full_chunk_fits_in_a_page_without_overflow() {
        let mut data = Vec::new();
        for slot in 0..CHUNK_BUCKETS {
            merge(
                &mut data,
                0,
                STEP,
                slot * STEP,
                &Agg::one(slot * STEP, slot as f64),
            );
        }
        assert_eq!(data.len(), MAX_CHUNK_BYTES);
        assert_eq!(decode(0, STEP, &data).count(), CHUNK_BUCKETS as usize);
        // Full chunks of large series ids and far-off times, in the tier
        // table as the writer makes it: no overflow page anywhere.
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(&super::tier_table_sql("t")).unwrap();
        for series in [1, i64::from(u32::MAX), i64::MAX] {
            conn.execute(
                "INSERT INTO t (series, chunk_ms, data) VALUES (?1, ?2, ?3)",
                rusqlite::params![series, i64::MIN + 1, data],
            )
            .unwrap();
        }
        let (pages, overflow): (i64, i64) = conn
            .query_row(
                "SELECT count(*), count(*) FILTER (WHERE pagetype = 'overflow') FROM dbstat WHERE name = 't'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(pages >= 3, "{pages} pages");
        assert_eq!(overflow, 0);
    }

    #[test]
    fn a_damaged_blob_yields_its_whole_records_only() {
        let mut data = Vec::new();
        merge(&mut data, 0, STEP, STEP, &Agg::one(STEP, 7.0));
        data.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode(0, STEP, &data).count(), 1);
        merge(&mut data, 0, STEP, 0, &Agg::one(0, 1.0));
        assert_eq!(data.len(), 2 * RECORD_BYTES);
        let too_long = vec![1u8; MAX_CHUNK_BYTES + RECORD_BYTES];
        assert_eq!(decode(0, STEP, &too_long).count(), CHUNK_BUCKETS as usize);
    }
}
