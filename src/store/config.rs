//! `[history]`: the tiers of the history file and its other bounds, the
//! store's own settings (the root config composes them; their checks,
//! which need the whole config, are in `config::validate`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One RRD tier: buckets of `step`, kept for `span`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    #[serde(with = "humantime_serde")]
    pub step: Duration,
    #[serde(with = "humantime_serde")]
    pub span: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Finest first. Each step divides the next; each span holds at least two
    /// steps of the next tier (the next tier is rebuilt from it after a crash).
    pub tiers: Vec<TierConfig>,
    /// Series beyond this many are not stored (counted and logged once).
    pub max_series: u32,
    /// Status-transition events kept, newest first.
    pub max_events: u32,
    /// Bytes the kept events may take (`store::events::row_bytes`: their
    /// text plus a fixed cost per row); the oldest go past it, as past
    /// `max_events`.
    pub max_event_bytes: u64,
    /// Agent runs remembered (each start of the agent is one).
    pub max_runs: u32,
    /// Shortest probe interval the size bound assumes; shorter intervals are
    /// rejected by validation.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// How often the write-ahead log is copied into the main file and
    /// truncated (a checkpoint), so that the main file holds all but this
    /// last stretch of history.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        let t = |step: u64, span: u64| TierConfig {
            step: Duration::from_secs(step),
            span: Duration::from_secs(span),
        };
        const DAY: u64 = 86_400;
        HistoryConfig {
            tiers: vec![
                t(10, DAY),
                t(60, 7 * DAY),
                t(3600, 400 * DAY),
                t(DAY, 3650 * DAY),
            ],
            max_series: 500,
            max_events: 100_000,
            max_event_bytes: 16 * 1024 * 1024,
            max_runs: 10_000,
            min_interval: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}
