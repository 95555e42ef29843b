//! The probe runner: a hanging probe never delays another, failures are
//! unhealthy gaps with a reason, and missed ticks are skipped, not burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use upkeep::probes::runner::{Outcome, RunnerStats, run};
use upkeep::probes::{Probe, ProbeError, ProbeSpec};
use upkeep::sample::{Reading, Status, Unit};

struct Hangs;
impl Probe for Hangs {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        std::future::pending().await
    }
}

struct Counts(Arc<AtomicU32>);
impl Probe for Counts {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        Ok(vec![Reading::new("n", n as f64, Unit::Count)])
    }
}

struct Fails;
impl Probe for Fails {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        Err(ProbeError::Failed("connect to 127.0.0.1:1: refused".into()))
    }
}

/// Blocks its worker thread, as a badly behaved probe would.
struct Blocks(Duration);
impl Probe for Blocks {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        std::thread::sleep(self.0);
        Ok(vec![Reading::new("x", 1.0, Unit::Count)])
    }
}

fn spec(name: &str, interval_ms: u64, timeout_ms: u64) -> ProbeSpec {
    ProbeSpec {
        name: name.into(),
        kind: "test",
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        thresholds: Vec::new(),
        failure_threshold: 3,
        success_threshold: 2,
    }
}

fn collect(rx: &Receiver<Outcome>, for_: Duration) -> Vec<Outcome> {
    let end = Instant::now() + for_;
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if let Ok(o) = rx.recv_timeout(left) {
            out.push(o);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_probe_never_delays_another() {
    let (tx, rx) = sync_channel(1024);
    let stats = Arc::new(RunnerStats::default());
    let stop = CancellationToken::new();
    let n = Arc::new(AtomicU32::new(0));
    tokio::spawn(run(
        spec("hangs", 200, 150),
        Hangs,
        tx.clone(),
        stats.clone(),
        stop.clone(),
    ));
    tokio::spawn(run(
        spec("counts", 100, 50),
        Counts(n.clone()),
        tx,
        stats,
        stop.clone(),
    ));
    let outcomes = tokio::task::spawn_blocking(move || collect(&rx, Duration::from_millis(2500)))
        .await
        .unwrap();
    stop.cancel();

    let counts: Vec<&Outcome> = outcomes.iter().filter(|o| o.probe == "counts").collect();
    let hangs: Vec<&Outcome> = outcomes.iter().filter(|o| o.probe == "hangs").collect();
    // 2.5 s at 100 ms, less the first tick's jitter (< 100 ms).
    assert!(
        counts.len() >= 20,
        "the healthy probe ticked only {} times",
        counts.len()
    );
    let gaps: Vec<i64> = counts.windows(2).map(|w| w[1].ts - w[0].ts).collect();
    let worst = *gaps.iter().max().unwrap();
    assert!(
        worst < 180,
        "the healthy probe was delayed: largest gap {worst} ms between ticks at 100 ms ({gaps:?})"
    );
    assert!(
        counts
            .iter()
            .all(|o| o.status == Status::Healthy && o.readings.len() == 1)
    );

    assert!(
        hangs.len() >= 8,
        "the hanging probe reported {} times",
        hangs.len()
    );
    for o in &hangs {
        assert_eq!(o.status, Status::Unhealthy);
        assert!(
            o.readings.is_empty(),
            "a timed-out tick is a gap, never a value"
        );
        assert_eq!(o.reason.as_deref(), Some("hangs: timed out after 150ms"));
        assert!(
            o.took >= Duration::from_millis(150) && o.took < Duration::from_millis(190),
            "took {:?}",
            o.took
        );
    }
}

#[tokio::test]
async fn a_failing_probe_is_unhealthy_with_its_reason_and_no_readings() {
    let (tx, rx) = sync_channel(64);
    let stop = CancellationToken::new();
    tokio::spawn(run(
        spec("db", 50, 40),
        Fails,
        tx,
        Arc::new(RunnerStats::default()),
        stop.clone(),
    ));
    let outcomes = tokio::task::spawn_blocking(move || collect(&rx, Duration::from_millis(400)))
        .await
        .unwrap();
    stop.cancel();
    assert!(outcomes.len() >= 4);
    for o in &outcomes {
        assert_eq!(o.status, Status::Unhealthy);
        assert_eq!(o.raw_status, Status::Unhealthy);
        assert!(o.readings.is_empty());
        assert_eq!(
            o.error.as_deref(),
            Some("db: connect to 127.0.0.1:1: refused")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_are_skipped_not_burst() {
    let (tx, rx) = sync_channel(1024);
    let stop = CancellationToken::new();
    // Each tick blocks for 350 ms at a 100 ms interval: three ticks are missed
    // every time. Bursting would fire them back to back.
    tokio::spawn(run(
        spec("slow", 100, 90),
        Blocks(Duration::from_millis(350)),
        tx,
        Arc::new(RunnerStats::default()),
        stop.clone(),
    ));
    let outcomes = tokio::task::spawn_blocking(move || collect(&rx, Duration::from_millis(2200)))
        .await
        .unwrap();
    stop.cancel();
    assert!(
        (3..=7).contains(&outcomes.len()),
        "{} ticks in 2.2 s",
        outcomes.len()
    );
    for w in outcomes.windows(2) {
        let gap = w[1].ts - w[0].ts;
        assert!(gap >= 340, "ticks {gap} ms apart: missed ticks were burst");
    }
}

#[tokio::test]
async fn a_full_recorder_channel_drops_and_counts_instead_of_blocking() {
    let (tx, rx) = sync_channel(2);
    let stats = Arc::new(RunnerStats::default());
    let stop = CancellationToken::new();
    let n = Arc::new(AtomicU32::new(0));
    tokio::spawn(run(
        spec("counts", 20, 10),
        Counts(n.clone()),
        tx,
        stats.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.cancel();
    // Nobody read the channel: the probe still ticked on schedule.
    assert!(
        n.load(Ordering::SeqCst) >= 10,
        "probe ticked {} times",
        n.load(Ordering::SeqCst)
    );
    assert!(stats.dropped_outcomes.load(Ordering::Relaxed) >= 8);
    assert_eq!(rx.try_iter().count(), 2);
}
