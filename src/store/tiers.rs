//! Tier definitions: bucket alignment, consolidation (`Agg`), the choice of a
//! tier for a query, and the size bound of the history file that follows from
//! the config.

use super::chunk::CHUNK_BUCKETS;
use super::config::HistoryConfig;
use crate::sample::Ts;

/// One RRD tier: buckets of `step_ms` kept for `span_ms`, in table `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub step_ms: i64,
    pub span_ms: i64,
    pub table: String,
}

impl Tier {
    pub fn new(step_ms: i64, span_ms: i64) -> Tier {
        Tier {
            step_ms,
            span_ms,
            table: format!("tier_{}s", step_ms / 1000),
        }
    }

    /// Start of the bucket holding `ts`. Buckets are aligned to the unix
    /// epoch, so the buckets of every series line up.
    pub fn bucket(&self, ts: Ts) -> Ts {
        ts.div_euclid(self.step_ms) * self.step_ms
    }

    /// Span of one chunk row of this tier (`chunk`).
    pub fn chunk_span_ms(&self) -> i64 {
        super::chunk::span_ms(self.step_ms)
    }

    /// Buckets a series may hold in this tier.
    pub fn capacity(&self) -> i64 {
        self.span_ms / self.step_ms
    }

    /// How much of this tier is written at once when it is the first tier:
    /// whole buckets, at least `FIRST_TIER_GROUP_MS`. Every bucket of a group
    /// closes together, so that a flush visits each series' leaf page once
    /// per group rather than once per bucket. Higher tiers close bucket by
    /// bucket (less than this), so that the tier below them still holds
    /// their open buckets after a crash.
    pub fn group_ms(&self) -> i64 {
        ceil_div(FIRST_TIER_GROUP_MS, self.step_ms) * self.step_ms
    }

    /// How often retention runs on this tier: every `TRIM_EVERY_MS`, but at
    /// most once per step, and at least 16 times per span so that a short
    /// tier does not outgrow its capacity much between two runs.
    pub fn trim_every_ms(&self) -> i64 {
        (self.span_ms / 16).min(TRIM_EVERY_MS).max(self.step_ms)
    }
}

pub fn from_config(history: &HistoryConfig) -> Vec<Tier> {
    history
        .tiers
        .iter()
        .map(|t| Tier::new(t.step.as_millis() as i64, t.span.as_millis() as i64))
        .collect()
}

/// Consolidated values of one bucket: what every tier row keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub count: i64,
    pub last: f64,
    /// Time of `last`, so that merging out of order keeps the newest.
    pub last_ts: Ts,
}

impl Agg {
    pub fn one(ts: Ts, value: f64) -> Agg {
        Agg {
            sum: value,
            min: value,
            max: value,
            count: 1,
            last: value,
            last_ts: ts,
        }
    }

    /// A stored row, as an aggregate whose newest value is at `last_ts`.
    pub fn from_row(avg: f64, min: f64, max: f64, count: i64, last: f64, last_ts: Ts) -> Agg {
        Agg {
            sum: avg * count as f64,
            min,
            max,
            count,
            last,
            last_ts,
        }
    }

    pub fn avg(&self) -> f64 {
        self.sum / self.count as f64
    }

    pub fn merge(&mut self, other: &Agg) {
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.count += other.count;
        if other.last_ts >= self.last_ts {
            self.last = other.last;
            self.last_ts = other.last_ts;
        }
    }
}

/// Which tier serves a query for `[since, until]` at about `step_ms`
/// resolution, given the time `now`: among the tiers whose span reaches back
/// to `since`, the coarsest whose step is not coarser than asked; if every
/// covering tier is coarser, the finest of them; if none reaches back that
/// far, the one that reaches back furthest.
pub fn choose(tiers: &[Tier], since: Ts, now: Ts, step_ms: i64) -> usize {
    let covering: Vec<usize> = (0..tiers.len())
        .filter(|&i| now - tiers[i].span_ms <= since)
        .collect();
    if covering.is_empty() {
        return tiers
            .iter()
            .enumerate()
            .max_by_key(|(_, t)| t.span_ms)
            .map_or(0, |(i, _)| i);
    }
    covering
        .iter()
        .copied()
        .filter(|&i| tiers[i].step_ms <= step_ms)
        .max_by_key(|&i| tiers[i].step_ms)
        .unwrap_or_else(|| {
            *covering
                .iter()
                .min_by_key(|&&i| tiers[i].step_ms)
                .expect("covering is not empty")
        })
}

/// B-tree pages holding small entries (the tier tables' index and interior
/// pages) are assumed no less than half full; SQLite's balancing keeps them
/// fuller, so this over-estimates.
pub const FILL_FACTOR: u64 = 2;
/// Worst-case bytes one chunk row of a tier table costs: a leaf page of its
/// own (a chunk never spills to overflow pages, and a leaf holds at least one
/// row), its `(series, chunk_ms)` index entry (cell pointer, sizes, header,
/// two integers and the rowid: ≤ 32 bytes, ≤ 16 more for its share of the
/// index's interior pages) and its share of the table's interior pages
/// (child pointer, rowid, cell pointer: ≤ 16 bytes), those at least half full.
pub const CHUNK_ROW_BYTES: u64 = PAGE_SIZE + FILL_FACTOR * (32 + 16 + 16);
pub const PAGE_SIZE: u64 = 4096;
/// Longest series key accepted (longer keys are refused at registration).
pub const MAX_KEY_BYTES: u64 = 256;
/// Retention runs on a tier no more often than this (see
/// `Tier::trim_every_ms`): each run costs a seek per series, whether it
/// deletes anything or not.
pub const TRIM_EVERY_MS: i64 = 600_000;
/// Buckets stay open this long past their end, so that a sample from a probe
/// that took a while still lands in memory rather than on the slow path.
pub const FLUSH_GRACE_MS: i64 = 5_000;
/// The first tier is written in groups of at least this much time (see
/// `Tier::group_ms`); the journal holds a group of samples and the grace.
pub const FIRST_TIER_GROUP_MS: i64 = 60_000;

/// Where tier `k` closes at `now`, before the tier below bounds it: the start
/// of the first bucket (of the first tier: of the first group) that is still
/// open. Groups are aligned to the unix epoch like buckets.
pub fn closes_at(tiers: &[Tier], k: usize, now: Ts) -> Ts {
    let t = &tiers[k];
    let unit = if k == 0 { t.group_ms() } else { t.step_ms };
    (now - FLUSH_GRACE_MS).div_euclid(unit) * unit
}

/// `a / b` rounded up, for positive `a` and `b`.
pub fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// The largest size the history file can reach under a config, by part.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeBound {
    pub tiers: Vec<(String, u64)>,
    pub journal: u64,
    pub series: u64,
    pub events: u64,
    pub runs: u64,
    /// The maintenance ledger (`store::ledger`).
    pub maintenance: u64,
    /// The alerts' tables (`store::alerts`): outbox, silences, alerts;
    /// added by [`SizeBound::with_alerts`], which knows the notifiers.
    pub alerts: u64,
    pub fixed: u64,
    pub total: u64,
}

impl SizeBound {
    /// The bound with the alerts' tables for `notifiers` notifiers of at
    /// most `max_outbox` waiting notifications each.
    pub fn with_alerts(mut self, notifiers: usize, max_outbox: usize) -> SizeBound {
        let pages = |bytes: u64| (bytes * FILL_FACTOR).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // The engine's events (a notification given up) are trimmed by the
        // writer's next batch: at most every waiting notification's between two.
        let given_up = (notifiers * max_outbox) as u64 * super::events::MAX_ROW_BYTES;
        let alerts = pages(super::alerts::bound_bytes(notifiers, max_outbox) + given_up);
        self.total = self.total - self.alerts + alerts;
        self.alerts = alerts;
        self
    }
}

/// Buckets a series can hold in a tier between two trims. A trim leaves at
/// most `capacity` buckets after the oldest chunk it keeps; until the next
/// one, the watermark advances by the time between trims plus what it lagged
/// behind at the trim, at most a group (`group_ms` bounds every tier: higher
/// tiers close bucket by bucket).
pub fn buckets_bound(tier: &Tier) -> u64 {
    let between_trims = ceil_div(tier.trim_every_ms(), tier.step_ms);
    let group = ceil_div(tier.group_ms(), tier.step_ms);
    (tier.capacity() + between_trims + group + 2) as u64
}

/// Chunk rows a series can hold in a tier: the chunks that `buckets_bound`
/// consecutive buckets touch, and the partly expired chunk a trim keeps.
pub fn chunks_bound(tier: &Tier) -> u64 {
    ceil_div(buckets_bound(tier) as i64, CHUNK_BUCKETS) as u64 + 2
}

pub fn size_bound(history: &HistoryConfig) -> SizeBound {
    let tiers = from_config(history);
    let pages = |bytes: u64| (bytes * FILL_FACTOR).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let series_n = history.max_series as u64;
    let tier_bytes: Vec<(String, u64)> = tiers
        .iter()
        .map(|t| {
            (
                t.table.clone(),
                series_n * chunks_bound(t) * CHUNK_ROW_BYTES,
            )
        })
        .collect();
    // The journal holds the samples of the first tier's open group: at most
    // a group plus the grace (and a step to spare) at the shortest interval.
    // Each sample is 12 bytes; probes tick at their own moments, so each
    // may have a row of its own: one row header (≤ 32 bytes) per sample.
    let (first, group) = tiers
        .first()
        .map_or((10_000, FIRST_TIER_GROUP_MS), |t| (t.step_ms, t.group_ms()));
    let min_interval = (history.min_interval.as_millis() as i64).max(1);
    let stamps = ((group + first + FLUSH_GRACE_MS) / min_interval + 2) as u64;
    let journal = pages(stamps * series_n * (12 + 32));
    // Key text twice (table and unique index), plus probe, metric, labels.
    let series = pages(series_n * (MAX_KEY_BYTES * 4 + 64));
    // A batch makes room before it inserts (`store::events::trim`), so the
    // events' bytes never pass the smaller of their two bounds.
    let events = pages(
        (history.max_events as u64 * super::events::MAX_ROW_BYTES).min(history.max_event_bytes),
    );
    let runs = pages(history.max_runs as u64 * 160);
    let maintenance = pages(super::ledger::bound_bytes());
    // Schema, meta, tiers list, and one root page per table and index.
    let fixed = 64 * PAGE_SIZE;
    let total = tier_bytes.iter().map(|(_, b)| b).sum::<u64>()
        + journal
        + series
        + events
        + runs
        + maintenance
        + fixed;
    SizeBound {
        tiers: tier_bytes,
        journal,
        series,
        events,
        runs,
        maintenance,
        alerts: 0,
        fixed,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_tiers() -> Vec<Tier> {
        from_config(&HistoryConfig::default())
    }

    #[test]
    fn buckets_align_to_epoch_even_before_it() {
        let t = Tier::new(10_000, 86_400_000);
        assert_eq!(t.bucket(12_345), 10_000);
        assert_eq!(t.bucket(-1), -10_000);
        assert_eq!(t.table, "tier_10s");
        assert_eq!(t.capacity(), 8640);
    }

    #[test]
    fn choose_picks_covering_tier_near_requested_step() {
        let t = default_tiers();
        let now = 1_000_000_000_000;
        let h = 3_600_000;
        // Last hour at 10s: the 10s tier.
        assert_eq!(choose(&t, now - h, now, 10_000), 0);
        // Seven days at 1m: the 1m tier (the 10s tier does not reach back).
        assert_eq!(choose(&t, now - 7 * 24 * h, now, 60_000), 1);
        // A day at 1h: the 1h tier, though finer ones cover it.
        assert_eq!(choose(&t, now - 24 * h, now, h), 2);
        // A day at 1s: nothing that fine, the finest covering tier.
        assert_eq!(choose(&t, now - 24 * h, now, 1000), 0);
        // Twenty years: nothing covers, the longest span.
        assert_eq!(choose(&t, now - 20 * 365 * 24 * h, now, h), 3);
    }

    #[test]
    fn merge_keeps_newest_last_and_exact_stats() {
        let mut a = Agg::one(10, 1.0);
        a.merge(&Agg::one(30, 3.0));
        a.merge(&Agg::one(20, 2.0));
        assert_eq!(a.count, 3);
        assert_eq!(a.avg(), 2.0);
        assert_eq!((a.min, a.max, a.last), (1.0, 3.0, 3.0));
    }

    #[test]
    fn the_first_tier_closes_a_minute_at_a_time_the_others_bucket_by_bucket() {
        let t = default_tiers();
        let minute = 1_700_000_100_000;
        assert_eq!(t[0].group_ms(), 60_000);
        assert_eq!(Tier::new(7_000, 70_000).group_ms(), 63_000);
        assert_eq!(t[2].group_ms(), 3_600_000);
        // The minute closes 5 s after its end, all its 10 s buckets at once.
        assert_eq!(closes_at(&t, 0, minute + 4_999), minute - 60_000);
        assert_eq!(closes_at(&t, 0, minute + 5_000), minute);
        assert_eq!(closes_at(&t, 0, minute + 64_999), minute);
        assert_eq!(closes_at(&t, 1, minute + 5_000), minute);
        // Fifteen minutes into the hour: the hour is open.
        assert_eq!(closes_at(&t, 2, minute + 5_000), minute - 900_000);
    }

    #[test]
    fn retention_runs_every_ten_minutes_at_most_once_a_step_and_often_on_short_tiers() {
        let every: Vec<i64> = default_tiers().iter().map(Tier::trim_every_ms).collect();
        assert_eq!(every, vec![600_000, 600_000, 3_600_000, 86_400_000]);
        assert_eq!(Tier::new(1_000, 40_000).trim_every_ms(), 2_500);
        // Between two runs a tier grows by a run's worth of buckets and a
        // group: the bound counts both.
        let first = &default_tiers()[0];
        assert_eq!(buckets_bound(first), 8_640 + 60 + 6 + 2);
        // 8708 buckets touch at most 92 chunks of 96; one more kept by a trim.
        assert_eq!(chunks_bound(first), 91 + 2);
    }

    #[test]
    fn the_journal_bound_holds_a_group_and_the_grace_of_every_series() {
        let h = HistoryConfig::default();
        let b = size_bound(&h);
        // 65 s of 500 series at 1 s, each sample in a row of its own.
        assert!(b.journal >= 65 * 500 * (12 + 32));
    }

    #[test]
    fn bound_grows_with_series_and_tiers() {
        let mut h = HistoryConfig::default();
        let b = size_bound(&h);
        assert_eq!(b.tiers.len(), 4);
        assert!(b.total > b.tiers.iter().map(|t| t.1).sum::<u64>());
        h.max_series *= 2;
        assert!(size_bound(&h).total > b.total);
    }
}
