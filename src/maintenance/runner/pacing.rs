//! Pacing on time, not on units: the batch size follows the measured
//! units per millisecond so that a batch takes about `batch_target`, and
//! the pause follows the last batch's duration so that batches take at
//! most `max_duty` of wall time. Both are scaled by a share that the guard
//! drives with AIMD: when the p90 of the guard's recent signal ratios
//! (signal over its pre-run baseline) passes [`BACK_OFF_RATIO`], the share
//! halves; once it is back under [`RECOVER_RATIO`], the share grows by
//! [`RECOVER_STEP`]. Each change says why ([`Change`]), for the ledger.
//! Pure: the runner feeds it each guard tick and each batch.

use std::collections::VecDeque;
use std::time::Duration;

/// Longest pause pacing grows to.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);
/// Smallest share of `batch_target` and `max_duty` that back-off reaches.
pub const MIN_SHARE: f64 = 1.0 / 16.0;
/// The p90 of the window over the baseline past which pacing backs off.
pub const BACK_OFF_RATIO: f64 = 2.0;
/// The p90 of the window over the baseline under which pacing recovers.
pub const RECOVER_RATIO: f64 = 1.3;
/// Share added back per recovery step.
pub const RECOVER_STEP: f64 = 1.0 / 8.0;
/// Guard ticks kept in the window.
pub const WINDOW: usize = 10;
/// Ticks the window needs after a change before the next one: one slow
/// tick never moves pacing, and each change is judged on fresh ticks.
pub const MIN_TICKS: usize = 3;
/// Baselines under this count as this: a sub-millisecond signal's noise
/// would otherwise read as a slowdown (a commit of 0.4 ms going to 1.4 ms
/// backed pacing off about once a second in a bench run while the
/// application's p99 stayed under its baseline).
const BASELINE_FLOOR: Duration = Duration::from_millis(1);

/// What a task's pacing is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// The kind's `batch_size`: the most units one batch may hold.
    pub max_size: u64,
    /// The kind's `pause`: the shortest pause.
    pub min_pause: Duration,
    /// How long one batch should take.
    pub batch_target: Duration,
    /// The most of wall time batches may take, 0 < x ≤ 1.
    pub max_duty: f64,
}

impl Settings {
    /// Smallest batch: a hundredth of the most, at least one unit (a
    /// batch has fixed costs, a commit, an fsync, that tiny ones repeat).
    pub fn min_size(&self) -> u64 {
        (self.max_size / 100).max(1)
    }
}

/// One guard tick as pacing sees it: the signal of the probe furthest
/// above its baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub probe: String,
    /// What pacing reads of it (commit time, answer time, request p99).
    pub metric: String,
    pub value: Duration,
    pub baseline: Duration,
}

impl Signal {
    pub fn ratio(&self) -> f64 {
        self.value.as_secs_f64() / self.baseline.max(BASELINE_FLOOR).as_secs_f64()
    }
}

/// Why pacing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    BackOff,
    Recover,
}

/// One change of the share, with what led to it: a `pacing` step.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub direction: Direction,
    pub size: (u64, u64),
    pub pause: (Duration, Duration),
    pub share: (f64, f64),
    /// The p90 of the window's ratios, and the tick that closed it.
    pub p90: f64,
    pub signal: Signal,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (verb, rule) = match self.direction {
            Direction::BackOff => ("back off", format!("> {BACK_OFF_RATIO}")),
            Direction::Recover => ("recover", format!("< {RECOVER_RATIO}")),
        };
        let s = &self.signal;
        write!(
            f,
            "{verb}: size {} → {}, pause {} → {}, share {:.3} → {:.3}; \
             p90 of the last ticks {:.2}x baseline ({rule}); {} {} {} (baseline {})",
            self.size.0,
            self.size.1,
            ms(self.pause.0),
            ms(self.pause.1),
            self.share.0,
            self.share.1,
            self.p90,
            s.probe,
            s.metric,
            ms(s.value),
            ms(s.baseline),
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// The batch size and pause of a run as they stand.
#[derive(Debug, Clone, PartialEq)]
pub struct Pacing {
    settings: Settings,
    pub size: u64,
    pub pause: Duration,
    share: f64,
    /// Units per millisecond, smoothed over batches; none before the first.
    rate: Option<f64>,
    last_took: Duration,
    window: VecDeque<Signal>,
}

impl Pacing {
    /// Starts at an eighth of the most units (the rate is not known yet,
    /// and a first batch too long is the one thing pacing cannot undo)
    /// and the shortest pause.
    pub fn new(settings: Settings) -> Pacing {
        let max = settings.max_size.max(1);
        Pacing {
            size: (max / 8).max(settings.min_size()).min(max),
            pause: settings.min_pause,
            settings,
            share: 1.0,
            rate: None,
            last_took: Duration::ZERO,
            window: VecDeque::new(),
        }
    }

    /// The share of `batch_target` and `max_duty` in force (1: all of it).
    pub fn share(&self) -> f64 {
        self.share
    }

    /// One batch did `units` in `took`: the rate, then size and pause,
    /// follow.
    pub fn batch_done(&mut self, units: u64, took: Duration) {
        let took_ms = took.as_secs_f64() * 1000.0;
        if units > 0 && took_ms > 0.0 {
            let r = units as f64 / took_ms;
            // Half the old, half the new: one odd batch moves it halfway.
            self.rate = Some(self.rate.map_or(r, |old| (old + r) / 2.0));
        }
        self.last_took = took;
        self.resize();
    }

    /// One healthy guard tick; `Some` when pacing changed because of it.
    pub fn observe(&mut self, signal: Signal) -> Option<Change> {
        self.window.push_back(signal.clone());
        while self.window.len() > WINDOW {
            self.window.pop_front();
        }
        if self.window.len() < MIN_TICKS {
            return None;
        }
        let p90 = p90(self.window.iter().map(Signal::ratio));
        let old = (self.size, self.pause, self.share);
        let direction = if p90 > BACK_OFF_RATIO && self.share > MIN_SHARE {
            self.share = (self.share / 2.0).max(MIN_SHARE);
            Direction::BackOff
        } else if p90 < RECOVER_RATIO && self.share < 1.0 {
            self.share = (self.share + RECOVER_STEP).min(1.0);
            Direction::Recover
        } else {
            return None;
        };
        self.window.clear();
        self.resize();
        Some(Change {
            direction,
            size: (old.0, self.size),
            pause: (old.1, self.pause),
            share: (old.2, self.share),
            p90,
            signal,
        })
    }

    /// Size from the rate and the target, pause from the last batch's
    /// duration and the duty budget, both at the current share.
    fn resize(&mut self) {
        let s = &self.settings;
        if let Some(rate) = self.rate {
            let target_ms = s.batch_target.as_secs_f64() * 1000.0 * self.share;
            let want = (rate * target_ms).round() as u64;
            self.size = want.clamp(s.min_size(), s.max_size.max(1));
        }
        let duty = (s.max_duty * self.share).clamp(f64::MIN_POSITIVE, 1.0);
        let busy = self.last_took.as_secs_f64();
        let pause =
            Duration::from_secs_f64((busy * (1.0 / duty - 1.0)).min(MAX_PAUSE.as_secs_f64()));
        self.pause = pause.max(s.min_pause).min(MAX_PAUSE.max(s.min_pause));
    }
}

/// The 90th percentile (nearest rank) of `ratios`, leaving out the
/// slowest one however few there are.
fn p90(ratios: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = ratios.collect();
    v.sort_by(f64::total_cmp);
    // Never the one slowest tick: a single blip must not move pacing.
    let rank = (((v.len() as f64) * 0.9).ceil() as usize)
        .min(v.len().saturating_sub(1))
        .max(1);
    v.get(rank - 1).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            max_size: 5000,
            min_pause: Duration::ZERO,
            batch_target: Duration::from_millis(5),
            max_duty: 0.2,
        }
    }

    fn assert_ms(d: Duration, want: f64) {
        let got = d.as_secs_f64() * 1000.0;
        assert!((got - want).abs() < 1e-3, "{got} ms, want {want} ms");
    }

    fn tick(ratio: f64) -> Signal {
        Signal {
            probe: "db".into(),
            metric: "commit_seconds".into(),
            value: Duration::from_secs_f64(0.001 * ratio),
            baseline: Duration::from_millis(1),
        }
    }

    #[test]
    fn the_size_follows_the_rate_to_hit_the_target_and_the_pause_the_duty() {
        let mut p = Pacing::new(settings());
        assert_eq!(p.size, 625, "an eighth of the most before any batch");
        // 625 rows in 25 ms: 25 rows/ms, so 5 ms is 125 rows.
        p.batch_done(625, Duration::from_millis(25));
        assert_eq!(p.size, 125);
        // 25 ms of work at 20 % duty: 100 ms of pause.
        assert_ms(p.pause, 100.0);
        // The rate is smoothed: 125 rows in 2.5 ms is 50/ms, the mean 37.5/ms.
        p.batch_done(125, Duration::from_micros(2500));
        assert_eq!(p.size, 188);
        assert_ms(p.pause, 10.0);
    }

    #[test]
    fn the_size_stays_within_the_kind_s_bounds() {
        let mut p = Pacing::new(settings());
        p.batch_done(625, Duration::from_micros(10));
        assert_eq!(p.size, 5000, "never more than batch_size");
        for _ in 0..40 {
            p.batch_done(1, Duration::from_secs(10));
        }
        assert_eq!(p.size, 50, "never less than a hundredth of it");
        assert_eq!(p.pause, MAX_PAUSE);
        let files = Settings {
            max_size: 20,
            min_pause: Duration::from_millis(10),
            ..settings()
        };
        let mut p = Pacing::new(files);
        assert_eq!(p.size, 2);
        p.batch_done(2, Duration::from_secs(1));
        assert_eq!(p.size, 1);
        assert_ms(p.pause, 4000.0);
        p.batch_done(2, Duration::from_micros(1));
        assert_eq!(
            p.pause,
            Duration::from_millis(10),
            "never under the kind's pause"
        );
    }

    #[test]
    fn one_slow_tick_changes_nothing() {
        let mut p = Pacing::new(settings());
        p.batch_done(625, Duration::from_millis(5));
        let before = p.clone();
        for r in [1.0, 1.0, 9.0, 1.0, 1.0, 1.0, 1.5, 1.5, 1.5, 1.5, 1.5] {
            assert_eq!(p.observe(tick(r)), None, "ratio {r}");
        }
        assert_eq!((p.size, p.pause, p.share), (before.size, before.pause, 1.0));
    }

    #[test]
    fn a_slow_window_backs_off_multiplicatively_and_a_quick_one_recovers_additively() {
        let mut p = Pacing::new(settings());
        p.batch_done(625, Duration::from_millis(5));
        let (size0, pause0) = (p.size, p.pause);
        assert_eq!(p.observe(tick(3.0)), None);
        assert_eq!(p.observe(tick(3.0)), None);
        let c = p.observe(tick(3.0)).expect("three slow ticks back off");
        assert_eq!(c.direction, Direction::BackOff);
        assert_eq!(c.size, (size0, size0.div_ceil(2)));
        assert_eq!(c.pause.0, pause0);
        assert!(c.pause.1 > c.pause.0, "{c}");
        assert_eq!(c.share, (1.0, 0.5));
        let text = c.to_string();
        assert!(text.contains("back off: size 625 → 313"), "{text}");
        assert!(
            text.contains("db commit_seconds 3.0ms (baseline 1.0ms)"),
            "{text}"
        );
        // The window starts again after a change: two more slow ticks are
        // not enough, the third halves again, down to the floor.
        let mut shares = vec![p.share()];
        for _ in 0..30 {
            if let Some(c) = p.observe(tick(3.0)) {
                shares.push(c.share.1);
            }
        }
        assert_eq!(shares, [0.5, 0.25, 0.125, 0.0625]);
        assert_eq!(p.size, 50, "the smallest batch");
        // Quick again: back to the whole share in eighths.
        let mut steps = 0;
        for _ in 0..100 {
            if let Some(c) = p.observe(tick(1.0)) {
                assert_eq!(c.direction, Direction::Recover);
                assert!((c.share.1 - c.share.0 - RECOVER_STEP).abs() < 1e-9 || c.share.1 == 1.0);
                steps += 1;
            }
        }
        assert_eq!(steps, 8);
        assert_eq!(p.share(), 1.0);
        assert_eq!(p.size, size0);
    }

    #[test]
    fn between_the_two_ratios_nothing_changes() {
        let mut p = Pacing::new(settings());
        for _ in 0..3 {
            p.observe(tick(3.0));
        }
        let before = p.clone();
        for _ in 0..20 {
            assert_eq!(p.observe(tick(1.6)), None);
        }
        assert_eq!(p.share(), before.share());
    }

    #[test]
    fn a_baseline_under_the_floor_counts_as_the_floor() {
        let s = Signal {
            probe: "db".into(),
            metric: "commit_seconds".into(),
            value: Duration::from_micros(400),
            baseline: Duration::from_micros(100),
        };
        assert!(s.ratio() < 1.0, "four times a tiny baseline is noise");
    }
}
