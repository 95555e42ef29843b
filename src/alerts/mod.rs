//! Alerts and notifications: rules (`config.rs`) evaluated by a pure state
//! machine (`rules.rs`) that the engine (`engine.rs`) feeds from the live
//! state and the history file, every change recorded with its
//! notifications in the history file's outbox in one transaction, and one
//! sender per notifier (`notify/`) delivering its outbox in order until
//! the receiver accepts. A receiver outage or an agent restart loses
//! nothing: the outbox is the queue.
//!
//! `Alerts` is the running part inside the agent; the API, the page and
//! `/metrics` read `AlertsShared`.

pub mod config;
pub mod engine;
pub mod notify;
pub mod rules;
pub mod silence;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::live::Live;
use crate::sample::{Ts, now_ms};
use crate::store::StoreError;
use crate::store::alerts::{AlertStore, Silence};

pub use config::{AlertsSection, NotifyConfig, RuleConfig, Severity};
use notify::{Context, Counters, Notifier, SenderShared};
use rules::{Alert, State};

/// Longest a delivery retry waits by default (the backoff's cap).
pub const RETRY_CAP: Duration = Duration::from_secs(300);

/// One alert as the API, the page and the CLI show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertView {
    pub fingerprint: String,
    pub rule: String,
    /// `firing` or `pending`.
    pub state: &'static str,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub value: Option<f64>,
    /// When it entered its state.
    pub since_ms: Ts,
    /// A silence matches it: receivers are not told.
    pub silenced: bool,
    /// The maintenance run changing things on its probe, when there is one.
    pub maintenance_run: Option<i64>,
}

impl AlertView {
    pub fn of(a: &Alert, silenced: bool) -> AlertView {
        AlertView {
            fingerprint: a.fingerprint.clone(),
            rule: a.rule.clone(),
            state: a.state.as_str(),
            severity: a.severity,
            labels: a.labels.clone(),
            summary: a.summary.clone(),
            value: a.value,
            since_ms: match a.state {
                State::Firing => a.firing_since_ms.unwrap_or(a.pending_since_ms),
                State::Pending => a.pending_since_ms,
                State::Resolved => a.resolved_ms.unwrap_or(a.pending_since_ms),
            },
            silenced,
            maintenance_run: a.maintenance_run,
        }
    }

    /// Firing first, then by severity (critical first), then oldest first.
    pub fn order_key(&self) -> (bool, std::cmp::Reverse<Severity>, Ts, String) {
        (
            self.state != "firing",
            std::cmp::Reverse(self.severity),
            self.since_ms,
            self.fingerprint.clone(),
        )
    }
}

/// What the engine publishes after each evaluation.
#[derive(Debug, Clone, Default)]
pub struct AlertsSnapshot {
    pub alerts: Vec<AlertView>,
    pub silences: Vec<Silence>,
    pub outbox_pending: BTreeMap<String, u64>,
    pub evaluated_ms: Ts,
    pub maintenance: MaintenanceFigures,
}

/// Maintenance figures for `/metrics`, from the ledger the engine reads
/// for its maintenance rules: runs (the agent's, the CLI's, the API's)
/// counted as they end while the agent runs (a counter, so a restart
/// starts it again, as Prometheus expects), the newest success, and
/// whether a run is under way, for every configured task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaintenanceFigures {
    pub runs_total: BTreeMap<(String, String), u64>,
    pub rows_changed_total: BTreeMap<String, u64>,
    pub last_success_ms: BTreeMap<String, Ts>,
    pub running: BTreeMap<String, bool>,
}

/// Shared with the web layer.
#[derive(Debug, Default)]
pub struct AlertsShared {
    pub view: RwLock<AlertsSnapshot>,
    pub counters: Arc<Counters>,
    /// The notifiers configured, for `/metrics` (a counter of each appears
    /// from the start).
    pub notifiers: RwLock<Vec<String>>,
    /// Where silences added over the API are written.
    pub data_dir: PathBuf,
}

enum Control {
    Reload(Arc<Config>),
}

/// The running alert engine and senders.
pub struct Alerts {
    shared: Arc<AlertsShared>,
    control: SyncSender<Control>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
    senders: TaskTracker,
    senders_stop: CancellationToken,
    sender_shared: Arc<SenderShared>,
}

impl Alerts {
    /// Opens the alert tables and starts the engine and one sender per
    /// notifier.
    pub fn start(
        config: &Config,
        data_dir: PathBuf,
        live: Arc<RwLock<Live>>,
        context: Context,
    ) -> Result<Alerts, StoreError> {
        let engine_store = AlertStore::open(&data_dir)?;
        let sender_store = Arc::new(Mutex::new(AlertStore::open(&data_dir)?));
        let shared = Arc::new(AlertsShared {
            data_dir: data_dir.clone(),
            ..AlertsShared::default()
        });
        let wake = Arc::new(tokio::sync::Notify::new());
        let events = Arc::new(Mutex::new(Vec::new()));
        let sender_shared = Arc::new(SenderShared {
            store: sender_store,
            counters: shared.counters.clone(),
            wake: wake.clone(),
            context,
            retry_cap: config.alerts.retry_max,
            events: events.clone(),
        });
        let config = Arc::new(config.clone());
        let mut engine = engine::Engine::new(
            config.clone(),
            data_dir,
            engine_store,
            live,
            shared.clone(),
            wake,
            events,
            now_ms(),
        );
        let (control, control_rx) = sync_channel::<Control>(4);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("alerts".into())
            .spawn(move || run_engine(&mut engine, control_rx, &stopped))
            .expect("spawning the alerts thread");
        let mut alerts = Alerts {
            shared,
            control,
            stop,
            thread: Some(thread),
            senders: TaskTracker::new(),
            senders_stop: CancellationToken::new(),
            sender_shared,
        };
        alerts.spawn_senders(&config);
        Ok(alerts)
    }

    pub fn shared(&self) -> Arc<AlertsShared> {
        self.shared.clone()
    }

    fn spawn_senders(&mut self, config: &Config) {
        *self.shared.notifiers.write().expect("notifiers lock") =
            config.notify.keys().cloned().collect();
        for (name, n) in &config.notify {
            let notifier = Notifier::new(name, n.clone());
            self.senders.spawn(notify::send_loop(
                notifier,
                self.sender_shared.clone(),
                self.senders_stop.clone(),
            ));
        }
    }

    /// Swaps in a new config: rules that did not change keep their alerts;
    /// alerts of removed or changed rules resolve; senders restart with
    /// the new notifiers (a notification being sent is sent again: at
    /// least once).
    pub async fn reload(&mut self, config: &Config) {
        let _ = self
            .control
            .try_send(Control::Reload(Arc::new(config.clone())));
        self.senders_stop.cancel();
        self.senders.close();
        self.senders.wait().await;
        self.senders = TaskTracker::new();
        self.senders_stop = CancellationToken::new();
        self.spawn_senders(config);
    }

    /// Stops the senders (an undelivered notification stays in the
    /// outbox for the next start) and the engine.
    pub async fn stop(mut self, grace: Duration) {
        self.senders_stop.cancel();
        self.senders.close();
        let _ = tokio::time::timeout(grace, self.senders.wait()).await;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn run_engine(
    engine: &mut engine::Engine,
    control: Receiver<Control>,
    stop: &std::sync::atomic::AtomicBool,
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        while let Ok(Control::Reload(config)) = control.try_recv() {
            engine.reload(config, now_ms());
        }
        engine.tick(now_ms());
        std::thread::sleep(engine::TICK);
    }
}
