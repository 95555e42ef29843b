//! Uptime of one probe over a window, with coverage beside it. Built from the
//! agent's runs (when it was watching) and the probe's status transitions;
//! time the agent was down is missing data, never an outage.

use serde::Serialize;

use crate::sample::{Status, Ts};

/// One agent run, `[started_at, last_seen]`: the time the agent was observing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Interval {
    pub start: Ts,
    pub end: Ts,
}

/// The probe's status changed to `status` at `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub ts: Ts,
    pub status: Status,
}

/// Time per status inside a window, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Uptime {
    pub window_start: Ts,
    pub window_end: Ts,
    /// Time with a known status (healthy + degraded + unhealthy).
    pub observed_ms: i64,
    /// Healthy + degraded.
    pub up_ms: i64,
    pub healthy_ms: i64,
    pub degraded_ms: i64,
    pub unhealthy_ms: i64,
    /// Unknown time inside agent runs; time outside runs is in no bucket.
    pub unknown_ms: i64,
    /// `up_ms / observed_ms`; `None` when nothing was observed.
    pub uptime_ratio: Option<f64>,
    /// `observed_ms / window length`; 0 for an empty window.
    pub coverage_ratio: f64,
}

/// Uptime over `[window_start, window_end)`.
///
/// Rules:
/// - Each run starts with the probe `Unknown`; inside a run the status is that
///   of the latest transition at or after the run's start and at or before t.
///   A transition from before the run does not carry in: the agent restarted.
/// - Time outside every run is not observed; it lowers coverage only.
/// - Unknown time counts neither as observed nor in the uptime ratio.
/// - Runs are sorted by start; where runs overlap, the later-started run owns
///   the overlap (the earlier is cut at its start). Transitions are sorted by
///   time; at equal times the last one given wins.
/// - Everything is clamped to the window.
pub fn uptime(
    runs: &[Interval],
    transitions: &[Transition],
    window_start: Ts,
    window_end: Ts,
) -> Uptime {
    let mut runs: Vec<Interval> = runs.iter().copied().filter(|r| r.end > r.start).collect();
    runs.sort_by_key(|r| r.start);
    let mut transitions = transitions.to_vec();
    transitions.sort_by_key(|t| t.ts);

    let mut ms = [0i64; 4]; // indexed by `slot`
    let mut add = |status: Status, from: Ts, to: Ts| {
        let (from, to) = (from.max(window_start), to.min(window_end));
        if to > from {
            ms[slot(status)] += to - from;
        }
    };
    for (i, run) in runs.iter().enumerate() {
        let end = runs
            .get(i + 1)
            .map_or(run.end, |next| run.end.min(next.start));
        let first = transitions.partition_point(|t| t.ts < run.start);
        let (mut status, mut since) = (Status::Unknown, run.start);
        for t in transitions[first..].iter().take_while(|t| t.ts < end) {
            add(status, since, t.ts);
            (status, since) = (t.status, t.ts);
        }
        add(status, since, end);
    }

    let [healthy_ms, degraded_ms, unhealthy_ms, unknown_ms] = ms;
    let up_ms = healthy_ms + degraded_ms;
    let observed_ms = up_ms + unhealthy_ms;
    let window_ms = window_end.saturating_sub(window_start);
    Uptime {
        window_start,
        window_end,
        observed_ms,
        up_ms,
        healthy_ms,
        degraded_ms,
        unhealthy_ms,
        unknown_ms,
        uptime_ratio: (observed_ms > 0).then(|| up_ms as f64 / observed_ms as f64),
        coverage_ratio: if window_ms > 0 {
            observed_ms as f64 / window_ms as f64
        } else {
            0.0
        },
    }
}

fn slot(status: Status) -> usize {
    match status {
        Status::Healthy => 0,
        Status::Degraded => 1,
        Status::Unhealthy => 2,
        Status::Unknown => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const W0: Ts = 1_700_000_000_000;
    const W1: Ts = W0 + 24 * H;

    fn run(start: Ts, end: Ts) -> Interval {
        Interval { start, end }
    }

    fn to(ts: Ts, status: Status) -> Transition {
        Transition { ts, status }
    }

    #[test]
    fn healthy_run_covering_the_window_is_full() {
        let u = uptime(&[run(W0, W1)], &[to(W0, Status::Healthy)], W0, W1);
        assert_eq!((u.uptime_ratio, u.coverage_ratio), (Some(1.0), 1.0));
        assert_eq!(
            (u.healthy_ms, u.observed_ms, u.unknown_ms),
            (24 * H, 24 * H, 0)
        );
    }

    #[test]
    fn agent_down_is_missing_data_not_an_outage() {
        let u = uptime(
            &[run(W0 + 12 * H, W1)],
            &[to(W0 + 12 * H, Status::Healthy)],
            W0,
            W1,
        );
        assert_eq!(u.uptime_ratio, Some(1.0));
        assert!((u.coverage_ratio - 0.5).abs() < 1e-12);
        assert_eq!(u.unhealthy_ms, 0);
    }

    #[test]
    fn one_unhealthy_hour_in_a_day() {
        let ts = [
            to(W0, Status::Healthy),
            to(W0 + 5 * H, Status::Unhealthy),
            to(W0 + 6 * H, Status::Healthy),
        ];
        let u = uptime(&[run(W0, W1)], &ts, W0, W1);
        assert_eq!(u.unhealthy_ms, H);
        assert!((u.uptime_ratio.unwrap() - 23.0 / 24.0).abs() < 1e-12);
        assert_eq!(u.coverage_ratio, 1.0);
    }

    #[test]
    fn degraded_counts_as_up() {
        let ts = [to(W0 + 6 * H, Status::Degraded), to(W0, Status::Healthy)]; // unsorted
        let u = uptime(&[run(W0, W1)], &ts, W0, W1);
        assert_eq!(
            (u.healthy_ms, u.degraded_ms, u.up_ms),
            (6 * H, 18 * H, 24 * H)
        );
        assert_eq!(u.uptime_ratio, Some(1.0));
    }

    #[test]
    fn status_before_window_carries_in_when_the_run_spans_the_start() {
        let ts = [
            to(W0 - 3 * H, Status::Unhealthy),
            to(W0 + 2 * H, Status::Healthy),
        ];
        let u = uptime(&[run(W0 - 4 * H, W1)], &ts, W0, W1);
        assert_eq!(
            (u.unhealthy_ms, u.healthy_ms, u.unknown_ms),
            (2 * H, 22 * H, 0)
        );
    }

    #[test]
    fn status_does_not_carry_across_a_restart() {
        let runs = [run(W0 + 12 * H, W1), run(W0, W0 + 10 * H)]; // unsorted
        let ts = [to(W0, Status::Unhealthy), to(W0 + 13 * H, Status::Healthy)];
        let u = uptime(&runs, &ts, W0, W1);
        // 10 h unhealthy, 2 h agent down, 1 h unknown after restart, 11 h healthy.
        assert_eq!(
            (u.unhealthy_ms, u.unknown_ms, u.healthy_ms),
            (10 * H, H, 11 * H)
        );
        assert!((u.coverage_ratio - 21.0 / 24.0).abs() < 1e-12);
    }

    #[test]
    fn overlapping_runs_give_the_overlap_to_the_later_run() {
        let runs = [run(W0, W0 + 13 * H), run(W0 + 12 * H, W1)];
        let u = uptime(
            &runs,
            &[to(W0, Status::Healthy), to(W0 + 14 * H, Status::Healthy)],
            W0,
            W1,
        );
        assert_eq!((u.healthy_ms, u.unknown_ms), (22 * H, 2 * H));
        assert!(u.observed_ms + u.unknown_ms <= W1 - W0);
    }

    #[test]
    fn empty_inputs_observe_nothing() {
        let u = uptime(&[], &[], W0, W1);
        assert_eq!(
            (u.uptime_ratio, u.coverage_ratio, u.observed_ms),
            (None, 0.0, 0)
        );
        let u = uptime(&[run(W0, W1)], &[], W0, W1);
        assert_eq!(
            (u.uptime_ratio, u.coverage_ratio, u.unknown_ms),
            (None, 0.0, 24 * H)
        );
        assert_eq!(uptime(&[run(W0, W1)], &[], W1, W0).coverage_ratio, 0.0);
    }
}
