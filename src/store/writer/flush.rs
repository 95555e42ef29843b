//! Flushing closed buckets into the tier tables: a tier's closed buckets
//! are written in key order, one read and one write per chunk row, and fed
//! to the tier above; a late sample is merged straight into the tiers that
//! have passed it. Called by `Writer::write` inside its transaction.

use rusqlite::{OptionalExtension, params};

use super::{Sample, Writer, add};
use crate::sample::Ts;
use crate::store::tiers::{self, Agg};
use crate::store::{StoreError, chunk, sql_err};

impl Writer {
    /// A sample for a bucket whose tier rows are written: merge it into every
    /// tier that has passed it, and into the accumulator of the first that
    /// has not.
    pub(super) fn write_late(&mut self, s: &Sample) -> Result<(), StoreError> {
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
    pub(super) fn flush(&mut self, now: Ts) -> Result<usize, StoreError> {
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
            self.truncate_due |= self.tiers[k].step_ms >= 60_000;
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
}
