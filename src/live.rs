//! In-memory state of the running agent, written by the recorder and read by
//! the API: each probe's health and last outcome, a ring of recent values per
//! series (the recent window, served without touching disk), and the health
//! of the history file itself.

use std::collections::{BTreeMap, HashMap};

use circular_buffer::HeapCircularBuffer;
use serde::Serialize;

use crate::sample::{Status, Ts, Unit};

/// Recent values kept in memory per series: an hour at a 5 s interval.
pub const RING_LEN: usize = 720;

pub type Ring = HeapCircularBuffer<(Ts, f64)>;

#[derive(Debug, Clone, Serialize)]
pub struct ProbeState {
    pub kind: &'static str,
    pub status: Status,
    /// When the probe entered its current status.
    pub since_ms: Ts,
    pub reason: Option<String>,
    pub last_ts_ms: Ts,
    pub last_took_ms: f64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreHealth {
    pub open: bool,
    pub last_error: Option<String>,
    pub samples_written: u64,
    pub write_errors: u64,
    /// Samples waiting for the history file to accept writes again.
    pub pending_samples: usize,
    /// Samples given up because the pending buffer was full.
    pub dropped_samples: u64,
    pub refused_series: u64,
    pub file_bytes: u64,
    pub bound_bytes: u64,
}

pub struct SeriesRing {
    pub unit: Unit,
    pub values: Ring,
}

#[derive(Default)]
pub struct Live {
    pub started_ms: Ts,
    pub probes: BTreeMap<String, ProbeState>,
    pub rings: HashMap<String, SeriesRing>,
    pub store: StoreHealth,
    pub ready: bool,
}

impl Live {
    pub fn push(&mut self, key: String, unit: Unit, ts: Ts, value: f64) {
        let ring = self.rings.entry(key).or_insert_with(|| SeriesRing {
            unit,
            values: Ring::with_capacity(RING_LEN),
        });
        ring.values.push_back((ts, value));
    }

    /// Recent values of one series, oldest first.
    pub fn recent(&self, key: &str) -> Vec<(Ts, f64)> {
        self.rings
            .get(key)
            .map(|r| r.values.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_only_the_recent_window() {
        let mut live = Live::default();
        for i in 0..(RING_LEN as i64 + 10) {
            live.push("host.load1".into(), Unit::None, i, i as f64);
        }
        let recent = live.recent("host.load1");
        assert_eq!(recent.len(), RING_LEN);
        assert_eq!(recent[0], (10, 10.0));
        assert!(live.recent("nope").is_empty());
    }
}
