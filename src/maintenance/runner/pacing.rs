//! Pacing on time, not on units: the batch size follows a measured cost
//! model of a batch, a fixed part (round trips, the archive's fsync, the
//! commit's WAL flush) plus a part per unit, so that a batch takes about
//! `batch_target`; and the pause follows the last batch's duration so that
//! batches take at most `max_duty` of wall time. Where the fixed part is
//! most of the target, the size is the one at which it is half of the
//! batch: sized on units per millisecond alone, such batches shrink to the
//! smallest and the rate collapses while each still pays the fixed part.
//! Sizes alternate [`DITHER`] above and below the wanted size so the two
//! parts stay apart in the fit. Both are scaled by a share that the guard
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
/// Batches the cost model is fitted over.
pub const FIT_WINDOW: usize = 24;
/// How far sizes alternate around the wanted size (30 % above, 30 %
/// below), so that batches of different sizes tell the fixed part from the
/// part per unit through the noise of batch times (fitted over 8 batches
/// of a few ms sized a fifth apart, the fixed part swung by most of the
/// target, and sizes between 70 and 1,458 rows in one run).
pub const DITHER: f64 = 0.3;
/// The most a batch grows over the largest of the fit's window.
pub const GROWTH: f64 = 2.0;
/// The least spread of sizes (smallest over largest at most this) the fit
/// needs to tell the two parts apart; with less, nothing is learnt of
/// how they split.
const FIT_SPREAD: f64 = 0.85;

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
    /// The last batches' units and milliseconds, oldest first.
    batches: VecDeque<(f64, f64)>,
    /// The cost model fitted to them; none before the first batch.
    cost: Option<Cost>,
    /// Batches done: odd ones are sized above the wanted size, even below.
    done: u64,
    last_took: Duration,
    window: VecDeque<Signal>,
}

/// What a batch costs: `fixed_ms + per_unit_ms × units` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub fixed_ms: f64,
    pub per_unit_ms: f64,
}

impl Cost {
    /// Fitted to `(units, ms)` of batches when their sizes differ enough:
    /// the part per unit is the median of the slopes between every two
    /// batches of different sizes (Theil–Sen), the fixed part the median
    /// of what each batch took beyond its units. Where the sizes are too
    /// alike or that slope is not above 0, nothing was learnt of how the
    /// two parts split, and `prior`'s parts are scaled alike to the
    /// batches (none: all of it per unit). The fixed part is kept between
    /// 0 and nine tenths of the median batch.
    ///
    /// Medians, not least squares: batch times have a heavy tail (an IO
    /// stall, a checkpoint, a lock), and near the floor, where sizes
    /// differ by a few dozen units, one slow batch tilted the line enough
    /// to read a loaded server as a slower unit; the fixed part, held
    /// under the quickest of 24 such batches, stayed low, and batches
    /// stayed at the floor after the load had gone.
    fn fit(batches: &VecDeque<(f64, f64)>, prior: Option<Cost>) -> Option<Cost> {
        let (lo, hi) = batches
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &(n, _)| {
                (lo.min(n), hi.max(n))
            });
        if batches.is_empty() || hi <= 0.0 {
            return None;
        }
        let b: Vec<(f64, f64)> = batches.iter().copied().collect();
        let fitted = (b.len() >= 2 && lo / hi <= FIT_SPREAD)
            .then(|| {
                let slopes = b.iter().enumerate().flat_map(|(i, x)| {
                    b[i + 1..]
                        .iter()
                        .filter(move |y| y.0 != x.0)
                        .map(move |y| (y.1 - x.1) / (y.0 - x.0))
                });
                let slope = median(slopes.collect());
                (slope > 0.0).then(|| median(b.iter().map(|x| x.1 - slope * x.0).collect()))
            })
            .flatten();
        let fixed = match (fitted, prior) {
            (Some(fixed), _) => fixed,
            (None, Some(c)) => {
                let scale = median(
                    b.iter()
                        .map(|x| x.1 / (c.fixed_ms + c.per_unit_ms * x.0))
                        .collect(),
                );
                c.fixed_ms * scale
            }
            (None, None) => 0.0,
        };
        let fixed_ms = fixed.clamp(0.0, median(b.iter().map(|x| x.1).collect()) * 0.9);
        let per_unit_ms = median(b.iter().map(|x| (x.1 - fixed_ms) / x.0).collect()).max(1e-6);
        Some(Cost {
            fixed_ms,
            per_unit_ms,
        })
    }
}

/// The median of `v` (the mean of the middle two when even); 0 when empty.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2}ms fixed + {:.2}us per unit",
            self.fixed_ms,
            self.per_unit_ms * 1000.0
        )
    }
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
            batches: VecDeque::new(),
            cost: None,
            done: 0,
            last_took: Duration::ZERO,
            window: VecDeque::new(),
        }
    }

    /// The share of `batch_target` and `max_duty` in force (1: all of it).
    pub fn share(&self) -> f64 {
        self.share
    }

    /// The cost model as fitted so far.
    pub fn cost(&self) -> Option<Cost> {
        self.cost
    }

    /// One batch did `units` in `took`: the cost model, then size and
    /// pause, follow.
    pub fn batch_done(&mut self, units: u64, took: Duration) {
        let took_ms = took.as_secs_f64() * 1000.0;
        if units > 0 && took_ms > 0.0 {
            self.batches.push_back((units as f64, took_ms));
            while self.batches.len() > FIT_WINDOW {
                self.batches.pop_front();
            }
            self.cost = Cost::fit(&self.batches, self.cost);
        }
        self.done += 1;
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

    /// Size from the cost model and the target, pause from the last
    /// batch's duration and the duty budget, both at the current share.
    /// The size is what fills the target after the fixed part, and at
    /// least what makes the fixed part half of the batch (both scaled by
    /// the share), 30 % above or below by turns, centred at least where
    /// the turn below is the floor.
    fn resize(&mut self) {
        let s = &self.settings;
        if let Some(c) = self.cost {
            let target_ms = s.batch_target.as_secs_f64() * 1000.0 * self.share;
            let variable_ms = (target_ms - c.fixed_ms).max(c.fixed_ms * self.share);
            let turn = if self.done % 2 == 1 {
                1.0 + DITHER
            } else {
                1.0 - DITHER
            };
            // Never centred under the floor: the turn below would be
            // clamped to it, and sizes alike tell the fit nothing.
            let centre = (variable_ms / c.per_unit_ms).max(s.min_size() as f64 / (1.0 - DITHER));
            let want = (centre * turn).round() as u64;
            // A fit that noise made too hopeful costs one batch at most
            // twice the largest measured, never a jump to `batch_size`.
            let largest = self.batches.iter().map(|b| b.0).fold(0.0, f64::max);
            let want = want.min((largest * GROWTH).ceil() as u64);
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
    fn the_size_follows_the_cost_to_hit_the_target_and_the_pause_the_duty() {
        let mut p = Pacing::new(settings());
        assert_eq!(p.size, 625, "an eighth of the most before any batch");
        // 625 rows in 25 ms, nothing yet to tell a fixed part: 25 rows/ms,
        // so 5 ms is 125 rows, 30 % above on the first turn.
        p.batch_done(625, Duration::from_millis(25));
        assert_eq!(p.size, 163);
        // 25 ms of work at 20 % duty: 100 ms of pause.
        assert_ms(p.pause, 100.0);
        // 150 rows in 7 ms: the line through the two batches is 1.316 ms
        // fixed and 0.0379 ms a row; the 3.684 ms left of the target hold
        // 97 rows, 30 % below on this turn.
        p.batch_done(150, Duration::from_millis(7));
        let c = p.cost().unwrap();
        assert!((c.fixed_ms - 1.3158).abs() < 1e-3, "{c}");
        assert!((c.per_unit_ms - 0.037895).abs() < 1e-5, "{c}");
        assert_eq!(p.size, 68);
        assert_ms(p.pause, 28.0);
    }

    /// Batches of a fixed 5 ms (an fsync, a flushed commit) and 5 us a
    /// row, against a 5 ms target: on rows per ms alone every batch would
    /// shrink to the smallest (50 rows in 5.25 ms, under 10 rows/ms).
    #[test]
    fn a_fixed_cost_as_long_as_the_target_is_amortized_not_chased() {
        let mut p = Pacing::new(settings());
        let took = |n: u64| Duration::from_secs_f64((5.0 + 0.005 * n as f64) / 1000.0);
        let mut sizes = vec![];
        for _ in 0..40 {
            let n = p.size;
            sizes.push(n);
            p.batch_done(n, took(n));
        }
        let c = p.cost().unwrap();
        assert!((c.fixed_ms - 5.0).abs() < 0.05, "{c}");
        assert!((c.per_unit_ms - 0.005).abs() < 1e-4, "{c}");
        // The fixed part is half of each batch: 1000 rows in 10 ms, by
        // turns 30 % above and below.
        let last: Vec<u64> = sizes[30..].to_vec();
        for n in &last {
            assert!([700, 1300].contains(n), "{sizes:?}");
        }
        let rate = last.iter().sum::<u64>() as f64
            / last.iter().map(|&n| 5.0 + 0.005 * n as f64).sum::<f64>();
        assert!(rate > 90.0, "{rate} rows per ms of batch");
        // Backing off halves what is over the fixed part, down to smaller
        // batches than the amortized ones.
        for _ in 0..3 {
            p.observe(tick(3.0));
        }
        assert_eq!(p.share(), 0.5);
        p.batch_done(p.size, took(p.size));
        assert!(p.size < 700, "{}", p.size);
    }

    #[test]
    fn the_size_stays_within_the_kind_s_bounds() {
        let mut p = Pacing::new(settings());
        p.batch_done(625, Duration::from_micros(10));
        assert_eq!(p.size, 1250, "at most twice the largest batch measured");
        p.batch_done(1250, Duration::from_micros(20));
        p.batch_done(2500, Duration::from_micros(40));
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
        assert_eq!(p.size, 2, "the floor's centre, 30 % above on this turn");
        p.batch_done(2, Duration::from_secs(1));
        assert_eq!(p.size, 1, "the floor, on the turn below");
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
        assert_eq!(c.size, (size0, 406));
        assert_eq!(c.pause.0, pause0);
        assert!(c.pause.1 > c.pause.0, "{c}");
        assert_eq!(c.share, (1.0, 0.5));
        let text = c.to_string();
        assert!(text.contains("back off: size 813 → 406"), "{text}");
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
        // A sixteenth of the target is 39 rows, under the 71 at which the
        // turn below is the floor of 50: 71, 30 % above on this turn.
        assert_eq!(p.size, 93);
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

    /// Deterministic noise shaped like batch times on a loaded server:
    /// mostly a fraction of a millisecond late, one batch in ten stalled
    /// by 2 to 10 ms (an IO wait, a checkpoint, a lock).
    fn stalls(mut seed: u64) -> impl FnMut() -> f64 {
        let mut uniform = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        move || {
            let late = -0.5 * (1.0 - uniform()).ln();
            let stall = if uniform() < 0.1 {
                2.0 + 8.0 * uniform()
            } else {
                0.0
            };
            late + stall
        }
    }

    /// Near the floor, 50 and 93 rows by turns, batches of 2.8 ms and
    /// 8 us a row with stalls: the fit must still see a batch that is
    /// mostly its fixed part.
    #[test]
    fn stalled_batches_near_the_floor_do_not_pass_for_slow_units() {
        for seed in 1..=20 {
            let mut noise = stalls(seed);
            let batches: VecDeque<(f64, f64)> = (0..FIT_WINDOW)
                .map(|i| {
                    let n = if i % 2 == 0 { 50.0 } else { 93.0 };
                    (n, 2.8 + 0.008 * n + noise())
                })
                .collect();
            let prior = Cost {
                fixed_ms: 1.8,
                per_unit_ms: 0.008,
            };
            let c = Cost::fit(&batches, Some(prior)).unwrap();
            assert!(
                c.per_unit_ms < 0.025 && c.fixed_ms > 2.0,
                "seed {seed}: {c} from {batches:?}"
            );
        }
    }

    /// A run that backs off to the floor under a load whose batches stall,
    /// then gets the whole share back on a server still as noisy: sizes
    /// must climb to what a 2.8 ms batch calls for, not stay near the
    /// floor.
    #[test]
    fn batches_backed_off_to_the_floor_climb_back_once_the_load_goes() {
        for seed in 1..=10 {
            let mut p = Pacing::new(Settings {
                batch_target: Duration::from_millis(3),
                ..settings()
            });
            let mut noise = stalls(seed);
            let mut run = |p: &mut Pacing, batches: usize, fixed: f64, per_row: f64| {
                let mut sizes = vec![];
                for _ in 0..batches {
                    let n = p.size;
                    sizes.push(n);
                    let ms = fixed + per_row * n as f64 + noise();
                    p.batch_done(n, Duration::from_secs_f64(ms / 1000.0));
                }
                sizes
            };
            run(&mut p, 40, 1.8, 0.008);
            // Loaded: pacing backs off to a sixteenth; batches take longer.
            for _ in 0..4 {
                for _ in 0..3 {
                    p.observe(tick(3.0));
                }
            }
            assert_eq!(p.share(), MIN_SHARE);
            let loaded = run(&mut p, 60, 2.5, 0.012);
            assert!(loaded[20..].iter().all(|&n| n < 100), "{loaded:?}");
            // The load goes: the share comes back, and the batches with it.
            while p.share() < 1.0 {
                p.observe(tick(1.0));
            }
            let calm = run(&mut p, 60, 1.8, 0.008);
            let last = &calm[30..];
            let mean = last.iter().sum::<u64>() as f64 / last.len() as f64;
            // 1.8 ms and 0.35 ms late at the median: the fixed part is
            // most of the 3 ms target, so batches hold about 270 rows.
            assert!(
                mean > 180.0,
                "seed {seed}: mean of the last 30 sizes {mean}, cost {}: {calm:?}",
                p.cost().unwrap()
            );
        }
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
