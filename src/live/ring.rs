//! The ring of one series' recent values, kept compact: each value's
//! timestamp as the milliseconds since the one before it (an `i32`) beside
//! the value itself (an `f64`, exact), 12 bytes a value instead of 16, and
//! memory taken as values come rather than all at once. Written by
//! `Live::push`, read by the status page, the API and the alerts engine.
//!
//! A series at a 10 s interval holds a few dozen values in its first
//! minutes, not 720 slots; one at 1 s fills its ring in 12 minutes and then
//! stays at `cap` values. Gaps (ticks a probe missed) are kept as they are:
//! only the times of the values present are stored.

use std::collections::VecDeque;

use crate::sample::Ts;

/// The largest step between two values a ring keeps: about 24.8 days. A
/// value further from the one before it starts the ring again (what came
/// before is not recent by then).
const MAX_STEP: Ts = i32::MAX as Ts;

pub struct Ring {
    cap: usize,
    /// The timestamp of the oldest value.
    first: Ts,
    /// The timestamp of the newest value.
    last: Ts,
    /// Per value, the milliseconds since the value before it (0 for the
    /// oldest).
    steps: VecDeque<i32>,
    values: VecDeque<f64>,
}

impl Ring {
    /// An empty ring that keeps the newest `cap` values (at least one).
    pub fn new(cap: usize) -> Ring {
        Ring {
            cap: cap.max(1),
            first: 0,
            last: 0,
            steps: VecDeque::new(),
            values: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Appends a value, dropping the oldest once `cap` are held.
    pub fn push_back(&mut self, (ts, value): (Ts, f64)) {
        let step = ts - self.last;
        if self.is_empty() || !(-MAX_STEP..=MAX_STEP).contains(&step) {
            self.steps.clear();
            self.values.clear();
            self.first = ts;
            self.last = ts;
            self.grow();
            self.steps.push_back(0);
            self.values.push_back(value);
            return;
        }
        if self.values.len() == self.cap {
            self.steps.pop_front();
            self.values.pop_front();
            // The new oldest value's step was counted from the one dropped.
            if let Some(s) = self.steps.front_mut() {
                self.first += Ts::from(*s);
                *s = 0;
            }
        }
        self.grow();
        if self.values.is_empty() {
            // A ring of one: the value dropped was the one before.
            self.first = ts;
            self.steps.push_back(0);
        } else {
            self.steps.push_back(step as i32);
        }
        self.values.push_back(value);
        self.last = ts;
    }

    /// Room for one more value: doubling as values come, never past `cap`
    /// (a `VecDeque` left to itself would round 720 up to 1024).
    fn grow(&mut self) {
        let len = self.values.len();
        if len < self.values.capacity() {
            return;
        }
        let want = (len * 2).max(4).min(self.cap).max(len + 1) - len;
        self.steps.reserve_exact(want);
        self.values.reserve_exact(want);
    }

    /// The newest value and its timestamp.
    pub fn back(&self) -> Option<(Ts, f64)> {
        self.values.back().map(|&v| (self.last, v))
    }

    /// Every value with its timestamp, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (Ts, f64)> + '_ {
        let mut ts = self.first;
        self.steps
            .iter()
            .zip(self.values.iter())
            .map(move |(&step, &v)| {
                ts += Ts::from(step);
                (ts, v)
            })
    }

    /// Bytes held for values, for the ring's own tests.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.steps.capacity() * std::mem::size_of::<i32>()
            + self.values.capacity() * std::mem::size_of::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the ring replaced: every value with its timestamp, the newest
    /// `cap` kept.
    fn plain(cap: usize, pushed: &[(Ts, f64)]) -> Vec<(Ts, f64)> {
        pushed[pushed.len().saturating_sub(cap)..].to_vec()
    }

    fn filled(cap: usize, pushed: &[(Ts, f64)]) -> Ring {
        let mut r = Ring::new(cap);
        for &p in pushed {
            r.push_back(p);
        }
        r
    }

    fn same(a: &[(Ts, f64)], b: &[(Ts, f64)]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
    }

    #[test]
    fn values_and_timestamps_come_back_exactly_with_gaps_and_wrapping() {
        // Jittered ticks at 1 s, a gap of 17 minutes, a clock stepped back
        // 3 s, and values no f32 holds (NaN and infinities too).
        let mut pushed = Vec::new();
        let mut ts: Ts = 1_764_930_000_123;
        for i in 0..2_000i64 {
            ts += match i {
                700 => 17 * 60_000,
                1_300 => -3_000,
                _ => 1_000 + (i * 37) % 11 - 5,
            };
            let v = match i % 250 {
                7 => f64::NAN,
                8 => f64::INFINITY,
                9 => f64::NEG_INFINITY,
                _ => 0.1 + i as f64 * 1e-7 + (i as f64).sin() * 12_345.678_901_234,
            };
            pushed.push((ts, v));
        }
        for cap in [1, 2, 3, 720] {
            for n in [0, 1, 2, 5, 719, 720, 721, 1_441, 2_000] {
                let ring = filled(cap, &pushed[..n]);
                let got: Vec<_> = ring.iter().collect();
                assert!(
                    same(&got, &plain(cap, &pushed[..n])),
                    "cap {cap}, {n} pushed"
                );
                assert_eq!(ring.len(), n.min(cap));
                let back = ring.back();
                assert_eq!(back.map(|b| b.0), pushed[..n].last().map(|p| p.0));
            }
        }
    }

    #[test]
    fn a_step_past_an_i32_starts_the_ring_again() {
        let mut r = filled(10, &[(0, 1.0), (1_000, 2.0)]);
        r.push_back((1_000 + MAX_STEP, 3.0));
        assert_eq!(r.iter().count(), 3, "a step of exactly the largest is kept");
        r.push_back((1_000 + 2 * MAX_STEP + 1, 4.0));
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            [(1_000 + 2 * MAX_STEP + 1, 4.0)]
        );
    }

    #[test]
    fn memory_follows_the_values_held_and_stops_at_the_cap() {
        let mut r = Ring::new(720);
        assert_eq!(r.held_bytes(), 0);
        for i in 0..10 {
            r.push_back((i * 10_000, 1.0));
        }
        assert!(
            r.held_bytes() <= 16 * 12,
            "{} bytes for 10 values",
            r.held_bytes()
        );
        for i in 10..5_000 {
            r.push_back((i * 10_000, 1.0));
        }
        // 12 bytes a value; the 16 of a (timestamp, value) pair before.
        assert!(r.held_bytes() <= 720 * 12 + 64, "{} bytes", r.held_bytes());
        assert!(r.held_bytes() < 720 * 16);
    }
}
