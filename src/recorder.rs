//! The recorder: the only writer of history. It runs on its own thread,
//! consumes probe outcomes, updates the live state (rings, health), turns
//! status changes into events, and writes each batch in one transaction.
//!
//! When the history file cannot be written (data dir not writable, disk
//! full), probes and the live window go on; samples wait in a bounded buffer
//! and writes resume by themselves once the file accepts them again.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::HistoryConfig;
use crate::live::StoreHealth;
use crate::live::{Live, ProbeState};
use crate::probes::runner::Outcome;
use crate::sample::{SeriesKey, Status, Ts, Unit, now_ms};
use crate::store::writer::{RunInfo, Sample, Writer};
use crate::store::{Event, Reader, StoreError};

/// Samples held while the history file refuses writes; beyond this the
/// oldest are dropped (and counted).
pub const MAX_PENDING: usize = 200_000;
/// Events held while the history file refuses writes; beyond this the oldest
/// are dropped.
pub const MAX_PENDING_EVENTS: usize = 10_000;
/// Outcomes written per transaction at most.
const MAX_BATCH: usize = 512;
/// How often a failed history file is retried.
const RETRY_EVERY: Duration = Duration::from_secs(5);
/// How often the recorder checks that a fresh reader (as the API and the
/// CLI open) reads the file: a write can succeed where reads fail. While a
/// fault stands, every good write checks again. Opening a reader parses the
/// whole schema: at every 5 s it was a quarter of an idle agent's CPU.
const READ_CHECK_EVERY: Duration = Duration::from_secs(30);

struct Pending {
    key: SeriesKey,
    unit: Unit,
    ts: Ts,
    value: f64,
}

/// Messages other than outcomes.
pub enum Control {
    /// A probe left the config (reload): forget its live state.
    Forget(String),
}

pub struct Recorder {
    data_dir: PathBuf,
    history: HistoryConfig,
    run: RunInfo,
    live: Arc<RwLock<Live>>,
    writer: Option<Writer>,
    pending: VecDeque<Pending>,
    events: Vec<Event>,
    last_attempt: Option<Instant>,
    failing: bool,
    last_read_check: Option<Instant>,
    /// Notifiers and outbox rows each, for the alerts' share of the bound.
    alerts_bound: (usize, usize),
    /// Grows with every loop (at least once a second): the systemd watchdog
    /// is fed only while it does.
    pub heartbeat: Arc<AtomicU64>,
}

impl Recorder {
    pub fn new(
        data_dir: PathBuf,
        history: HistoryConfig,
        run: RunInfo,
        live: Arc<RwLock<Live>>,
    ) -> Recorder {
        Recorder {
            data_dir,
            history,
            run,
            live,
            writer: None,
            pending: VecDeque::new(),
            events: Vec::new(),
            last_attempt: None,
            failing: false,
            last_read_check: None,
            alerts_bound: (0, 0),
            heartbeat: Arc::default(),
        }
    }

    /// Counts the alerts' tables in the size bound the recorder reports.
    pub fn with_alerts_bound(mut self, notifiers: usize, max_outbox: usize) -> Recorder {
        self.alerts_bound = (notifiers, max_outbox);
        self
    }

    /// Opens the history file now (so that the caller can report where the
    /// data lives); on failure the recorder keeps retrying in the background.
    pub fn open(&mut self) -> Result<(), StoreError> {
        self.last_attempt = Some(Instant::now());
        set_busy(&self.live, true);
        let opened = Writer::open(&self.data_dir, &self.history, now_ms(), &self.run);
        set_busy(&self.live, false);
        match opened {
            Ok((w, _events)) => {
                self.writer = Some(w);
                self.set_store_ok();
                Ok(())
            }
            Err(e) => {
                self.set_store_err(&e);
                Err(e)
            }
        }
    }

    /// Consumes outcomes until every sender is gone, then writes what is left
    /// and marks the run as cleanly stopped.
    pub fn run(mut self, rx: Receiver<Box<Outcome>>, control: Receiver<Control>) {
        loop {
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            let mut batch = Vec::new();
            let closed = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(o) => {
                    batch.push(*o);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(o) => batch.push(*o),
                            Err(_) => break,
                        }
                    }
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            while let Ok(Control::Forget(name)) = control.try_recv() {
                self.live.write().expect("live lock").probes.remove(&name);
            }
            self.absorb(batch);
            self.write(now_ms());
            if closed {
                break;
            }
        }
        // The last chance to write: try now, whenever the last attempt was.
        self.last_attempt = None;
        self.failing = false;
        self.write(now_ms());
        if !self.pending.is_empty() {
            let lost = self.pending.len();
            tracing::error!(
                "stopping with {lost} samples that history did not accept; they are lost"
            );
            self.live.write().expect("live lock").store.dropped_samples += lost as u64;
        }
        if let Some(Err(e)) = self.writer.as_mut().map(|w| w.end_run(now_ms())) {
            tracing::error!("recording the clean stop: {e}");
        }
    }

    /// Live state, events and pending samples from a batch of outcomes.
    fn absorb(&mut self, batch: Vec<Outcome>) {
        if batch.is_empty() {
            return;
        }
        let mut live = self.live.write().expect("live lock");
        for o in batch {
            let previous = live
                .probes
                .get(&o.probe)
                .map_or(Status::Unknown, |p| p.status);
            if previous != o.status {
                let msg = match &o.reason {
                    Some(r) => format!("{} is {}: {r}", o.probe, o.status),
                    None => format!("{} is {}", o.probe, o.status),
                };
                // Health is logged on transitions, not on every failure.
                match o.status {
                    Status::Healthy => tracing::info!("{msg}"),
                    _ => tracing::warn!("{msg}"),
                }
                self.events.push(Event {
                    ts_ms: o.ts,
                    probe: Some(o.probe.clone()),
                    kind: "status".into(),
                    from_status: Some(previous.as_str().into()),
                    to_status: Some(o.status.as_str().into()),
                    message: msg,
                });
            }
            for message in &o.events {
                tracing::info!("{}: {message}", o.probe);
                self.events.push(Event {
                    ts_ms: o.ts,
                    probe: Some(o.probe.clone()),
                    kind: "change".into(),
                    from_status: None,
                    to_status: None,
                    message: message.clone(),
                });
            }
            let since = match live.probes.get(&o.probe) {
                Some(p) if p.status == o.status => p.since_ms,
                _ => o.ts,
            };
            live.probes.insert(
                o.probe.clone(),
                ProbeState {
                    kind: o.kind,
                    status: o.status,
                    since_ms: since,
                    reason: o.reason.clone(),
                    last_ts_ms: o.ts,
                    last_took_ms: o.took.as_secs_f64() * 1000.0,
                    last_error: o.error.clone(),
                },
            );
            for r in o.readings {
                let key = r.key(&o.probe);
                live.push(&key, r.unit, o.ts, r.value);
                // Running totals are for /metrics; history keeps the rates.
                if r.unit == Unit::Total {
                    continue;
                }
                self.pending.push_back(Pending {
                    key,
                    unit: r.unit,
                    ts: o.ts,
                    value: r.value,
                });
            }
        }
        let over_events = self.events.len().saturating_sub(MAX_PENDING_EVENTS);
        self.events.drain(..over_events);
        let over = self.pending.len().saturating_sub(MAX_PENDING);
        if over > 0 {
            self.pending.drain(..over);
            live.store.dropped_samples += over as u64;
        }
        live.store.pending_samples = self.pending.len();
    }

    /// Writes pending samples and events; on failure keeps them for later.
    fn write(&mut self, now: Ts) {
        if self.writer.is_none() {
            if self.last_attempt.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
                return;
            }
            if self.open().is_err() {
                return;
            }
            tracing::info!("history file open again at {}", self.data_dir.display());
        }
        if self.failing && self.last_attempt.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
            return;
        }
        set_busy(&self.live, true);
        let writer = self.writer.as_mut().expect("opened above");
        self.last_attempt = Some(Instant::now());
        let result = (|| {
            let mut samples = Vec::with_capacity(self.pending.len());
            for p in &self.pending {
                if let Some(id) = writer.series_id(&p.key, p.unit, now)? {
                    samples.push(Sample {
                        series: id,
                        ts: p.ts,
                        value: p.value,
                    });
                }
            }
            writer.write(&samples, &self.events, now)
        })();
        set_busy(&self.live, false);
        match result {
            Ok(stats) => {
                if self.failing {
                    tracing::info!("history writes resumed");
                    self.failing = false;
                }
                self.pending.clear();
                self.events.clear();
                let size = writer.file_size();
                let wal = writer.wal_bytes();
                let refused = writer.refused_series();
                let mut live = self.live.write().expect("live lock");
                live.store.samples_written += stats.samples as u64;
                live.store.file_bytes = size;
                live.store.wal_bytes = wal;
                live.store.refused_series = refused;
                live.store.pending_samples = 0;
                live.store.open = true;
                drop(live);
                self.check_reads();
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!(
                        "history writes failing, keeping samples in memory and retrying: {e}"
                    );
                    self.failing = true;
                }
                if e.is_full() {
                    // A write-ahead log that grew onto a full disk is given
                    // back once it is copied into the main file.
                    writer.checkpoint();
                }
                if e.is_corrupt() {
                    // Reopening moves a corrupt file aside and starts afresh.
                    self.writer = None;
                }
                let mut live = self.live.write().expect("live lock");
                live.store.write_errors += 1;
                set_fault(
                    &mut live.store,
                    format!("history cannot be written ({})", e.fault_kind()),
                    &e,
                );
            }
        }
    }

    /// After a good write: whether a fresh reader reads the file too (at
    /// most every [`READ_CHECK_EVERY`]), and whether the write-ahead log
    /// is still where readers look for it. Clears the fault once both hold.
    fn check_reads(&mut self) {
        let Some(lost) = self.writer.as_ref().map(Writer::wal_lost) else {
            return;
        };
        if lost {
            // This connection still holds the removed log: copy it into the
            // main file, then reopen so that a new log takes its place.
            tracing::error!(
                "the history file's write-ahead log was removed under the agent; \
                 copying it into the main file and reopening"
            );
            set_busy(&self.live, true);
            if let Some(w) = self.writer.take() {
                w.checkpoint();
            }
            set_busy(&self.live, false);
            self.last_attempt = None;
            let mut live = self.live.write().expect("live lock");
            live.store.read_errors += 1;
            live.store.fault = Some(
                "history cannot be read (I/O error): its write-ahead log was removed; reopening"
                    .into(),
            );
            live.store.last_error = live.store.fault.clone();
            live.store.last_error_ms = Some(now_ms());
            return;
        }
        let due = self
            .last_read_check
            .is_none_or(|t| t.elapsed() >= READ_CHECK_EVERY);
        let faulty = self.live.read().expect("live lock").store.fault.is_some();
        if !due && !faulty {
            return;
        }
        self.last_read_check = Some(Instant::now());
        set_busy(&self.live, true);
        let read = Reader::open(&self.data_dir).and_then(|r| r.series().map(|_| ()));
        set_busy(&self.live, false);
        let mut live = self.live.write().expect("live lock");
        match read {
            Ok(()) => {
                if live.store.fault.is_some() {
                    tracing::info!("history reads and writes work again");
                }
                live.store.fault = None;
                live.store.last_error = None;
            }
            Err(e) => {
                if live.store.fault.is_none() {
                    tracing::error!("history cannot be read: {e}");
                }
                live.store.read_errors += 1;
                set_fault(
                    &mut live.store,
                    format!("history cannot be read ({})", e.fault_kind()),
                    &e,
                );
            }
        }
    }

    fn set_store_ok(&self) {
        let mut live = self.live.write().expect("live lock");
        live.store.open = true;
        live.store.last_error = None;
        live.store.fault = None;
        live.store.bound_bytes = crate::store::tiers::size_bound(&self.history)
            .with_alerts(self.alerts_bound.0, self.alerts_bound.1)
            .total;
    }

    fn set_store_err(&self, e: &StoreError) {
        let mut live = self.live.write().expect("live lock");
        // Logged once per outage, not on every retry.
        if live.store.open || live.store.last_error.is_none() {
            tracing::error!(
                "cannot open history: {e}; probes go on, retrying every {RETRY_EVERY:?}"
            );
        }
        live.store.open = false;
        set_fault(
            &mut live.store,
            format!("history cannot be opened ({})", e.fault_kind()),
            e,
        );
        live.store.bound_bytes = crate::store::tiers::size_bound(&self.history)
            .with_alerts(self.alerts_bound.0, self.alerts_bound.1)
            .total;
    }
}

/// Records a failure: why history does not work, and the error itself.
fn set_fault(store: &mut StoreHealth, what: String, e: &StoreError) {
    store.fault = Some(format!("{what}: {e}"));
    store.last_error = Some(e.to_string());
    store.last_error_ms = Some(now_ms());
}

/// Marks a history operation of the recorder as begun or ended, so that
/// readiness sees a write that does not return.
fn set_busy(live: &RwLock<Live>, busy: bool) {
    live.write().expect("live lock").store.busy_since_ms = busy.then(now_ms);
}
