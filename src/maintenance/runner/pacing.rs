//! Pacing: the batch size and pause follow the guard's latency. A batch is
//! halved and the pause lengthened while a guarded probe answers more than
//! twice as slowly as before the run, and both grow back while it answers
//! near its baseline. Pure: the runner feeds it each healthy check.

use std::time::Duration;

/// Smallest batch pacing shrinks to.
pub const MIN_BATCH: u64 = 100;
/// Longest pause pacing grows to.
pub const MAX_PAUSE: Duration = Duration::from_secs(2);
/// Slower than the baseline by this much: back off.
const BACK_OFF_RATIO: f64 = 2.0;
/// Within this much of the baseline: grow back.
const RECOVER_RATIO: f64 = 1.2;

/// The batch size and pause of a run as they stand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    full: u64,
    base_pause: Duration,
    pub size: u64,
    pub pause: Duration,
}

impl Pacing {
    /// Starts at the task's own batch size and pause.
    pub fn new(batch_size: u64, pause: Duration) -> Pacing {
        Pacing {
            full: batch_size,
            base_pause: pause,
            size: batch_size,
            pause,
        }
    }

    /// Adjusts to one healthy check whose slowest guarded probe answered
    /// `slowest_ratio` times its baseline.
    pub fn observe(&mut self, slowest_ratio: f64) {
        if slowest_ratio > BACK_OFF_RATIO && self.size > MIN_BATCH {
            self.size = (self.size / 2).max(MIN_BATCH);
            self.pause = (self.pause * 2 + Duration::from_millis(10)).min(MAX_PAUSE);
        } else if slowest_ratio < RECOVER_RATIO
            && (self.size < self.full || self.pause > self.base_pause)
        {
            self.size = (self.size + self.size / 4 + 1).min(self.full);
            self.pause = (self.pause * 3 / 4).max(self.base_pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_guard_halves_the_batch_and_a_quick_one_grows_it_back() {
        let mut p = Pacing::new(5000, Duration::from_millis(50));
        p.observe(3.0);
        assert_eq!((p.size, p.pause), (2500, Duration::from_millis(110)));
        for _ in 0..10 {
            p.observe(3.0);
        }
        assert_eq!(p.size, MIN_BATCH, "never below the smallest batch");
        // Already at the smallest batch: the pause no longer grows either.
        assert!(p.pause <= MAX_PAUSE);
        for _ in 0..40 {
            p.observe(1.0);
        }
        assert_eq!(p, Pacing::new(5000, Duration::from_millis(50)));
    }

    #[test]
    fn between_the_two_ratios_nothing_changes() {
        let mut p = Pacing::new(5000, Duration::from_millis(50));
        p.observe(3.0);
        let before = p;
        p.observe(1.5);
        assert_eq!(p, before);
    }
}
