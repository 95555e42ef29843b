//! Retention of the history writer: drops the chunk rows a tier no longer
//! keeps, and the events and agent runs beyond their maximum. Called by
//! `Writer::write` inside its transaction, at most once per tier's trim
//! interval.

use rusqlite::params;

use super::Writer;
use crate::sample::Ts;
use crate::store::{StoreError, sql_err};

impl Writer {
    /// Retention: per series, drop buckets older than the span, and in any
    /// case all but the newest `capacity` buckets (so that the bound holds
    /// whatever the clock does). Events and runs are kept to their maximum.
    pub(super) fn trim(&mut self, now: Ts) -> Result<(), StoreError> {
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
                crate::store::events::trim(
                    &self.conn,
                    self.max_events as u64,
                    self.max_event_bytes,
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
}
