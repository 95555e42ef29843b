//! In-memory state of the running agent, written by the recorder and read by
//! the API: each probe's health and last outcome, a ring of recent values per
//! series (the recent window, served without touching disk), and the health
//! of the history file itself.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::sample::{SeriesKey, Status, Ts, Unit};

mod ring;
pub use ring::Ring;

/// Recent values kept in memory per series: an hour at a 5 s interval.
pub const RING_LEN: usize = 720;

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

/// A history write or read check that has not returned for this long
/// makes the agent unready: the disk is frozen or hung.
pub const HISTORY_BLOCKED_AFTER_MS: Ts = 10_000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreHealth {
    pub open: bool,
    /// The error of the current outage; `None` once history works again.
    pub last_error: Option<String>,
    /// When `last_error` was seen last.
    pub last_error_ms: Option<Ts>,
    /// Why history cannot be written or read now (full disk, read-only
    /// filesystem, I/O error, a blocked write); `None` while it works.
    /// The API computes it with [`StoreHealth::fault_at`].
    pub fault: Option<String>,
    pub samples_written: u64,
    pub write_errors: u64,
    /// Failed read checks of the history file since the agent started.
    pub read_errors: u64,
    /// When the recorder's history write (or read check) in progress began:
    /// it is blocked once this is older than [`HISTORY_BLOCKED_AFTER_MS`].
    #[serde(skip)]
    pub busy_since_ms: Option<Ts>,
    /// Samples waiting for the history file to accept writes again.
    pub pending_samples: usize,
    /// Samples given up because the pending buffer was full.
    pub dropped_samples: u64,
    pub refused_series: u64,
    /// The history file alone, as of the last write.
    pub file_bytes: u64,
    /// Its write-ahead log, as of the last write: committed data not yet
    /// checkpointed into the file, up to the WAL budget and beyond it
    /// while a checkpoint cannot run.
    pub wal_bytes: u64,
    pub bound_bytes: u64,
}

impl StoreHealth {
    /// Why history cannot be written or read at `now`: the recorder's last
    /// failure, or a write that has not returned for too long (which the
    /// blocked recorder cannot report itself).
    pub fn fault_at(&self, now: Ts) -> Option<String> {
        if let Some(since) = self.busy_since_ms
            && now - since > HISTORY_BLOCKED_AFTER_MS
        {
            return Some(format!(
                "a history write has been blocked for {} s",
                (now - since) / 1000
            ));
        }
        if !self.open {
            return Some(match &self.last_error {
                Some(e) => format!("history is not open: {e}"),
                None => "history is not open yet".into(),
            });
        }
        self.fault.clone()
    }
}

/// A probe as configured (it may not have ticked yet).
#[derive(Debug, Clone, Serialize)]
pub struct ProbeMeta {
    pub name: String,
    pub kind: &'static str,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

/// The outcome of the latest config reload (SIGHUP or the API).
#[derive(Debug, Clone, Serialize)]
pub struct Reload {
    pub ts_ms: Ts,
    pub ok: bool,
    pub message: String,
}

pub struct SeriesRing {
    pub key: SeriesKey,
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
    /// The probes of the running config, in name order.
    pub configured: Vec<ProbeMeta>,
    /// The `role` of each probe that sets one (`database`, `redis`, `api`,
    /// `worker`), by probe name: the health document's service slots.
    pub roles: BTreeMap<String, &'static str>,
    pub last_reload: Option<Reload>,
}

impl Live {
    pub fn push(&mut self, key: &SeriesKey, unit: Unit, ts: Ts, value: f64) {
        let ring = self.rings.entry(key.text()).or_insert_with(|| SeriesRing {
            key: key.clone(),
            unit,
            values: Ring::new(RING_LEN),
        });
        ring.values.push_back((ts, value));
    }

    /// When the probe last reported, if it has.
    fn last_tick(&self, probe: &str) -> Option<Ts> {
        self.probes.get(probe).map(|p| p.last_ts_ms)
    }

    /// The values of every series of one probe from its last tick (a series
    /// that tick did not report is left out, never shown stale).
    pub fn latest_of(&self, probe: &str) -> Vec<(&SeriesKey, f64)> {
        let tick = self.last_tick(probe);
        let mut out: Vec<(&SeriesKey, f64)> = self
            .rings
            .values()
            .filter(|r| r.key.probe == probe)
            .filter_map(|r| {
                r.values
                    .back()
                    .filter(|(ts, _)| Some(*ts) == tick)
                    .map(|(_, v)| (&r.key, v))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// The value of one series from its probe's last tick.
    pub fn latest(&self, probe: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = SeriesKey::new(probe, metric, labels).to_string();
        let tick = self.last_tick(probe);
        self.rings
            .get(&key)?
            .values
            .back()
            .filter(|(ts, _)| Some(*ts) == tick)
            .map(|(_, v)| v)
    }

    /// Values of one series (no labels) since `since`, oldest first.
    pub fn since(&self, probe: &str, metric: &str, since: Ts) -> Vec<(Ts, f64)> {
        let key = SeriesKey::new(probe, metric, &[]).to_string();
        self.rings
            .get(&key)
            .map(|r| r.values.iter().filter(|(ts, _)| *ts >= since).collect())
            .unwrap_or_default()
    }

    /// Recent values of one series, oldest first.
    pub fn recent(&self, key: &str) -> Vec<(Ts, f64)> {
        self.rings
            .get(key)
            .map(|r| r.values.iter().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that has not returned for more than the limit is a fault
    /// the blocked recorder cannot report itself: readiness computes it.
    #[test]
    fn a_history_write_blocked_past_the_limit_is_a_fault() {
        let mut s = StoreHealth {
            open: true,
            busy_since_ms: Some(1_000),
            ..StoreHealth::default()
        };
        assert_eq!(s.fault_at(1_000 + HISTORY_BLOCKED_AFTER_MS), None);
        let f = s.fault_at(1_000 + HISTORY_BLOCKED_AFTER_MS + 2_000);
        assert_eq!(
            f.as_deref(),
            Some("a history write has been blocked for 12 s")
        );
        s.busy_since_ms = None;
        s.fault = Some("history cannot be written (disk full): ...".into());
        assert_eq!(s.fault_at(i64::MAX / 2), s.fault);
        s.open = false;
        s.last_error = Some("no room".into());
        assert_eq!(
            s.fault_at(0).as_deref(),
            Some("history is not open: no room")
        );
    }

    #[test]
    fn ring_keeps_only_the_recent_window() {
        let mut live = Live::default();
        for i in 0..(RING_LEN as i64 + 10) {
            live.push(
                &SeriesKey::new("host", "load1", &[]),
                Unit::None,
                i,
                i as f64,
            );
        }
        let recent = live.recent("host.load1");
        assert_eq!(recent.len(), RING_LEN);
        assert_eq!(recent[0], (10, 10.0));
        assert!(live.recent("nope").is_empty());
        // Nothing is "latest" until the probe has a last tick to match.
        assert_eq!(live.latest("host", "load1", &[]), None);
        live.probes.insert(
            "host".into(),
            ProbeState {
                kind: "host",
                status: Status::Healthy,
                since_ms: 0,
                reason: None,
                last_ts_ms: RING_LEN as i64 + 9,
                last_took_ms: 1.0,
                last_error: None,
            },
        );
        assert_eq!(
            live.latest("host", "load1", &[]),
            Some((RING_LEN as i64 + 9) as f64)
        );
        assert_eq!(live.latest_of("host").len(), 1);
        assert_eq!(live.since("host", "load1", RING_LEN as i64 + 8).len(), 2);
    }
}
