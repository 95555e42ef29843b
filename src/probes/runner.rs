//! Drives one probe on its own schedule: one tokio task per probe, each tick
//! bounded by the probe's timeout, a missed tick skipped (never burst). A
//! failed or timed-out tick is `unhealthy` with a reason and no readings (a
//! gap in history, never a zero); a tick the agent itself could not make
//! (out of file descriptors) is `unknown`, never a target outage. Outcomes go to the recorder through a
//! bounded channel that never blocks a probe: when full, the outcome is
//! dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Assessor, Damper, Probe, ProbeError, ProbeSpec};
use crate::sample::{Reading, Status, Ts, now_ms};

/// What one tick of one probe produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub probe: String,
    pub kind: &'static str,
    /// When the tick started (wall clock).
    pub ts: Ts,
    pub took: Duration,
    pub readings: Vec<Reading>,
    /// The status of this tick alone, before flap damping.
    pub raw_status: Status,
    /// The probe's status after this tick.
    pub status: Status,
    /// Why the probe is not healthy (the latest reason), or the error.
    pub reason: Option<String>,
    pub error: Option<String>,
    /// Changes the probe saw on this tick (`Findings::events`), each one
    /// an event in history.
    pub events: Vec<String>,
}

/// Counters shared by every runner, read by the agent's own metrics.
#[derive(Debug, Default)]
pub struct RunnerStats {
    pub ticks: AtomicU64,
    pub dropped_outcomes: AtomicU64,
    /// Largest delay of a tick behind its schedule, in microseconds.
    pub max_tick_delay_us: AtomicU64,
}

/// Runs `probe` until `shutdown` is cancelled. The first tick comes after a
/// short jitter so that probes started together do not all fire at once.
pub async fn run<P: Probe>(
    spec: ProbeSpec,
    mut probe: P,
    out: SyncSender<Box<Outcome>>,
    stats: Arc<RunnerStats>,
    shutdown: CancellationToken,
) {
    let jitter = jitter(&spec.name, spec.interval);
    let start = tokio::time::Instant::now() + jitter;
    let mut ticker = tokio::time::interval_at(start, spec.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut assessor = Assessor::default();
    let mut damper = Damper::default();
    let mut last_reason: Option<String> = None;
    loop {
        let scheduled = tokio::select! {
            _ = shutdown.cancelled() => return,
            t = ticker.tick() => t,
        };
        let delay = tokio::time::Instant::now().saturating_duration_since(scheduled);
        stats
            .max_tick_delay_us
            .fetch_max(delay.as_micros() as u64, Ordering::Relaxed);
        stats.ticks.fetch_add(1, Ordering::Relaxed);
        let ts = now_ms();
        let started = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(spec.timeout, probe.sample()) => r.unwrap_or(Err(ProbeError::Timeout(spec.timeout))),
        };
        let took = started.elapsed();
        let mut events = Vec::new();
        let (readings, raw, reason, error) = match result {
            Ok(readings) => {
                let readings: Vec<Reading> = readings
                    .into_iter()
                    .filter(|r| r.value.is_finite())
                    .collect();
                let (raw, reason) = assessor.assess(&spec.thresholds, &readings, ts);
                let findings = probe.findings();
                events = findings.events;
                let (raw, reason) = judge(raw, reason, findings.status);
                (readings, raw, reason, None)
            }
            Err(e) => {
                let msg = format!("{}: {e}", spec.name);
                let raw = if e.is_agent_fault() {
                    Status::Unknown
                } else {
                    Status::Unhealthy
                };
                (Vec::new(), raw, Some(msg.clone()), Some(msg))
            }
        };
        let status = if raw == Status::Unknown {
            // The agent could not look: what it last saw is no longer known,
            // and the next real outcome is believed as a first one is.
            damper = Damper::default();
            Status::Unknown
        } else {
            damper.step(raw, spec.failure_threshold, spec.success_threshold)
        };
        if reason.is_some() {
            last_reason = reason;
        } else if raw == Status::Healthy && status == Status::Healthy {
            last_reason = None;
        }
        let outcome = Outcome {
            probe: spec.name.clone(),
            kind: spec.kind,
            ts,
            took,
            readings,
            raw_status: raw,
            status,
            reason: if status == Status::Healthy {
                None
            } else {
                last_reason.clone()
            },
            error,
            events,
        };
        match out.try_send(Box::new(outcome)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                stats.dropped_outcomes.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// The tick's status from its thresholds' and the probe's own verdict:
/// the worse wins, with its reason; a probe that could not look
/// (`Unknown`) makes the tick unknown whatever its readings say.
fn judge(
    raw: Status,
    reason: Option<String>,
    own: Option<(Status, String)>,
) -> (Status, Option<String>) {
    match own {
        Some((Status::Unknown, why)) => (Status::Unknown, Some(why)),
        Some((status, why)) if status.severity() > raw.severity() => (status, Some(why)),
        Some((status, why)) if status.severity() == raw.severity() && status != Status::Healthy => {
            let why = match reason {
                Some(r) => format!("{why}; {r}"),
                None => why,
            };
            (status, Some(why))
        }
        _ => (raw, reason),
    }
}

/// A stable offset in `[0, min(interval, 1s))` derived from the probe name.
fn jitter(name: &str, interval: Duration) -> Duration {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let span = interval.min(Duration::from_secs(1)).as_millis().max(1) as u64;
    Duration::from_millis(h % span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worse_of_thresholds_and_findings_wins() {
        let own = |s: Status| Some((s, "own".to_string()));
        assert_eq!(
            judge(Status::Healthy, None, own(Status::Degraded)),
            (Status::Degraded, Some("own".into()))
        );
        assert_eq!(
            judge(Status::Unhealthy, Some("t".into()), own(Status::Degraded)),
            (Status::Unhealthy, Some("t".into()))
        );
        assert_eq!(
            judge(Status::Degraded, Some("t".into()), own(Status::Degraded)),
            (Status::Degraded, Some("own; t".into()))
        );
        assert_eq!(
            judge(Status::Unhealthy, Some("t".into()), own(Status::Unknown)),
            (Status::Unknown, Some("own".into()))
        );
        assert_eq!(judge(Status::Healthy, None, None), (Status::Healthy, None));
    }
}
