//! systemd integration for `upkeep run` (`Type=notify` in
//! `packaging/upkeep.service`): READY=1 once the API is bound and history is
//! open, STOPPING=1 on the way out, and WATCHDOG=1 only while the probe
//! runners and the recorder make progress — a wedged agent stops feeding the
//! watchdog and systemd restarts it. Without `$NOTIFY_SOCKET` (a shell, a
//! plain container) every call is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::live::Live;
use crate::probes::default_timeout;
use crate::probes::runner::RunnerStats;

/// How long READY=1 waits for the history file. The recorder retries every
/// 5 s, so this covers a transient failure (a slow mount, a lock held for a
/// moment); a data dir that stays broken will not heal by waiting, and a
/// running agent that answers 503 on /-/ready with the reason is worth more
/// than a unit stuck in "activating".
pub const READY_WAIT: Duration = Duration::from_secs(15);
/// The recorder loops at least once a second when healthy; this many
/// seconds without a loop means it is stuck (a hung disk, a deadlock).
const RECORDER_LIMIT: Duration = Duration::from_secs(10);

/// The counters that prove the agent is doing its work.
#[derive(Clone)]
pub struct Progress {
    /// `ticks` grows with every tick of every probe runner.
    pub runners: Arc<RunnerStats>,
    /// Grows with every loop of the recorder thread.
    pub recorder: Arc<AtomicU64>,
}

/// Is a service manager listening?
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("systemd notification failed: {e}");
    }
}

/// The longest the runners' tick counter may stand still while every probe
/// works: the probe with the shortest schedule ticks at least once per two
/// intervals plus its timeout (a tick still busy skips the next one), plus a
/// second for the jitter of the first tick. `None` when no probe runs.
pub fn tick_limit(config: &Config) -> Option<Duration> {
    let agent = config.agent.interval;
    let host = config.host.enabled.then(|| {
        let interval = config.host.interval.unwrap_or(agent);
        (interval, config.host.timeout)
    });
    let others = config.probe.values().map(|p| {
        let c = p.common();
        (c.interval.unwrap_or(agent), c.timeout)
    });
    host.into_iter()
        .chain(others)
        .map(|(interval, timeout)| {
            2 * interval + timeout.unwrap_or_else(|| default_timeout(interval))
        })
        .min()
        .map(|d| d + Duration::from_secs(1))
}

/// Remembers when each counter last moved and says what is stuck.
struct Stall {
    ticks: u64,
    ticks_at: Instant,
    beats: u64,
    beats_at: Instant,
}

impl Stall {
    fn new(p: &Progress, now: Instant) -> Stall {
        Stall {
            ticks: p.runners.ticks.load(Ordering::Relaxed),
            ticks_at: now,
            beats: p.recorder.load(Ordering::Relaxed),
            beats_at: now,
        }
    }

    /// `None` while both counters moved recently enough; else what stands still.
    fn check(
        &mut self,
        ticks: u64,
        beats: u64,
        tick_limit: Option<Duration>,
        now: Instant,
    ) -> Option<String> {
        if ticks != self.ticks {
            (self.ticks, self.ticks_at) = (ticks, now);
        }
        if beats != self.beats {
            (self.beats, self.beats_at) = (beats, now);
        }
        let mut stuck = Vec::new();
        if let Some(limit) = tick_limit {
            let idle = now - self.ticks_at;
            if idle > limit {
                stuck.push(format!("no probe has ticked for {idle:.0?}"));
            }
        }
        let idle = now - self.beats_at;
        if idle > RECORDER_LIMIT {
            stuck.push(format!(
                "the history recorder has not looped for {idle:.0?}"
            ));
        }
        (!stuck.is_empty()).then(|| stuck.join(" and "))
    }
}

/// The agent's link to systemd, from start to stop.
pub struct Notifier {
    token: CancellationToken,
    /// Shortest tick gap of the current probes in ms; 0: no probe runs.
    tick_limit_ms: Arc<AtomicU64>,
}

impl Notifier {
    /// Spawns, when systemd listens, the READY=1 announcement (after history
    /// opens, or after [`READY_WAIT`]) and, when `WatchdogSec=` is set, the
    /// watchdog feeder. Call right after `App::start` returned: the API is
    /// bound by then.
    pub fn start(live: Arc<RwLock<Live>>, progress: Progress, config: &Config) -> Notifier {
        let n = Notifier {
            token: CancellationToken::new(),
            tick_limit_ms: Arc::new(AtomicU64::new(0)),
        };
        n.reconfigured(config);
        if !enabled() {
            return n;
        }
        tokio::spawn(announce_ready(live, READY_WAIT, n.token.clone()));
        if let Some(period) = sd_notify::watchdog_enabled() {
            tracing::info!(
                "feeding the systemd watchdog ({period:?}) while probes and history progress"
            );
            tokio::spawn(feed_watchdog(
                period,
                progress,
                n.tick_limit_ms.clone(),
                n.token.clone(),
            ));
        }
        n
    }

    /// The probes changed (SIGHUP): the watchdog expects their schedule.
    pub fn reconfigured(&self, config: &Config) {
        let ms = tick_limit(config).map_or(0, |d| d.as_millis().max(1) as u64);
        self.tick_limit_ms.store(ms, Ordering::Relaxed);
    }

    /// STOPPING=1; the watchdog is fed no more (systemd stops expecting it).
    pub fn stopping(self) {
        self.token.cancel();
        if enabled() {
            send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        }
    }
}

async fn announce_ready(live: Arc<RwLock<Live>>, wait: Duration, token: CancellationToken) {
    let deadline = Instant::now() + wait;
    let mut waiting = false;
    loop {
        let (open, error) = {
            let l = live.read().expect("live lock");
            (l.store.open, l.store.last_error.clone())
        };
        let error = error.unwrap_or_else(|| "not open yet".into());
        if open {
            send(&[
                NotifyState::Ready,
                NotifyState::Status("running: API bound, history open"),
            ]);
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "telling systemd the agent is ready without history after {wait:?}: {error}"
            );
            let status = format!("running without history (/-/ready answers 503): {error}");
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            return;
        }
        if !waiting {
            tracing::info!("waiting up to {wait:?} for history before telling systemd: {error}");
            send(&[NotifyState::Status(&format!(
                "waiting for history: {error}"
            ))]);
            waiting = true;
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn feed_watchdog(
    period: Duration,
    progress: Progress,
    tick_limit_ms: Arc<AtomicU64>,
    token: CancellationToken,
) {
    let every = (period / 2).max(Duration::from_millis(50));
    let mut stall = Stall::new(&progress, Instant::now());
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = false;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let limit = match tick_limit_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let ticks = progress.runners.ticks.load(Ordering::Relaxed);
        let beats = progress.recorder.load(Ordering::Relaxed);
        match stall.check(ticks, beats, limit, Instant::now()) {
            None => {
                if reported {
                    tracing::info!("the agent makes progress again; feeding the systemd watchdog");
                    reported = false;
                }
                send(&[NotifyState::Watchdog]);
            }
            Some(what) if !reported => {
                tracing::error!(
                    "{what}: no longer feeding the systemd watchdog, systemd will restart the agent"
                );
                send(&[NotifyState::Status(&format!("stuck: {what}"))]);
                reported = true;
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> Progress {
        Progress {
            runners: Arc::new(RunnerStats::default()),
            recorder: Arc::new(AtomicU64::new(0)),
        }
    }

    #[test]
    fn tick_limit_follows_the_fastest_probe() {
        let mut config = Config::default();
        // Host probe at the default 10 s with a 5 s timeout.
        assert_eq!(tick_limit(&config), Some(Duration::from_secs(26)));
        config.host.interval = Some(Duration::from_secs(2));
        config.host.timeout = Some(Duration::from_secs(1));
        assert_eq!(tick_limit(&config), Some(Duration::from_secs(6)));
        config.host.enabled = false;
        assert_eq!(tick_limit(&config), None, "no probe, no tick to expect");
    }

    #[test]
    fn progress_feeds_and_a_stuck_counter_does_not() {
        let p = progress();
        let t0 = Instant::now();
        let mut stall = Stall::new(&p, t0);
        let limit = Some(Duration::from_secs(26));
        let s = Duration::from_secs;
        // Both counters move: fed.
        assert_eq!(stall.check(1, 5, limit, t0 + s(5)), None);
        // Ticks stand still but within their limit; the recorder loops.
        assert_eq!(stall.check(1, 15, limit, t0 + s(30)), None);
        // Ticks stood still for 27 s: stuck.
        let why = stall
            .check(1, 20, limit, t0 + s(32))
            .expect("stuck runners");
        assert!(why.contains("no probe has ticked"), "{why}");
        // They move again: fed again.
        assert_eq!(stall.check(2, 25, limit, t0 + s(35)), None);
        // The recorder stands still for 11 s while probes tick.
        let why = stall
            .check(3, 25, limit, t0 + s(46))
            .expect("stuck recorder");
        assert!(why.contains("recorder"), "{why}");
    }

    #[test]
    fn without_probes_only_the_recorder_counts() {
        let p = progress();
        let t0 = Instant::now();
        let mut stall = Stall::new(&p, t0);
        let s = Duration::from_secs;
        assert_eq!(stall.check(0, 100, None, t0 + s(600)), None);
    }
}
