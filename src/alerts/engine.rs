//! The alert engine inside the agent: on its own thread, every
//! [`TICK`] it gathers what each rule observes (probe statuses and series
//! from the live state, forecasts and maintenance runs from the history
//! file, the agent's own health), steps the state machine (`rules::step`),
//! and records every change together with its notifications in one
//! transaction (`store::alerts::AlertStore::apply`). Only once that commit
//! succeeded does the engine take the new state as its own, so a change
//! is never announced without being on record, nor recorded without its
//! notifications.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::config::NotifyConfig;
use super::rules::{self, Alert, Notification, Observed, RuleFacts, State};
use super::{AlertView, AlertsShared};
use crate::config::Config;
use crate::live::Live;
use crate::sample::Ts;
use crate::store::alerts::{AlertRow, AlertStore, Change};
use crate::store::ledger::{self, RunRow, RunStatus};

/// How often rules are evaluated: a status change believed by the
/// recorder reaches the outbox within this.
pub const TICK: Duration = Duration::from_millis(250);
/// How often the ledger is read for maintenance rules and annotations.
const LEDGER_EVERY_MS: Ts = 2_000;
/// Silences and the outbox's backlog are read again when another
/// connection committed to the history file since the last tick (SQLite's
/// `data_version`: a silence added by the CLI or the API is always seen at
/// the next tick, before any notification), after the engine's own commit,
/// and at least this often. Reading them at every tick, with the schema
/// version parsed afresh, was a third of an idle agent's CPU.
const READ_EVERY_MS: Ts = 2_000;
/// Alertmanager forgets an alert not resent within its resolve_timeout
/// (5 minutes by default): firing alerts are resent this often.
const AM_REFRESH_MS: Ts = 60_000;

pub struct Engine {
    pub(super) config: Arc<Config>,
    data_dir: std::path::PathBuf,
    alerts: BTreeMap<String, Alert>,
    store: AlertStore,
    live: Arc<RwLock<Live>>,
    shared: Arc<AlertsShared>,
    wake: Arc<tokio::sync::Notify>,
    events: Arc<Mutex<Vec<crate::store::Event>>>,
    started_ms: Ts,
    forecasts: HashMap<String, (Ts, Vec<Observed>)>,
    runs: (Ts, Vec<RunRow>),
    /// Silences not yet ended, and when they were read.
    silences: (Ts, Vec<crate::store::alerts::Silence>),
    /// The outbox's backlog per notifier, and when it was read (`None`:
    /// read at the next tick).
    pending: (Option<Ts>, BTreeMap<String, u64>),
    /// The history file's `data_version` at the last tick.
    data_version: Option<i64>,
    /// Samples dropped so far, and when the count last grew.
    dropped: (u64, Option<Ts>),
    am_refreshed: HashMap<String, Ts>,
    failing: bool,
    /// Ended runs already counted (`None` until the first ledger read,
    /// whose runs ended before the agent started and are not counted).
    counted: Option<std::collections::BTreeSet<i64>>,
    figures: super::MaintenanceFigures,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        data_dir: std::path::PathBuf,
        store: AlertStore,
        live: Arc<RwLock<Live>>,
        shared: Arc<AlertsShared>,
        wake: Arc<tokio::sync::Notify>,
        events: Arc<Mutex<Vec<crate::store::Event>>>,
        now: Ts,
    ) -> Engine {
        // Alerts on record from the last run carry on where they were.
        let alerts = match store.alerts() {
            Ok(rows) => rows
                .into_iter()
                .filter_map(|r| serde_json::from_str::<Alert>(&r.data).ok())
                .map(|a| (a.fingerprint.clone(), a))
                .collect(),
            Err(e) => {
                tracing::error!("reading the alerts on record: {e}");
                BTreeMap::new()
            }
        };
        let mut engine = Engine {
            config,
            data_dir,
            alerts,
            store,
            live,
            shared,
            wake,
            events,
            started_ms: now,
            forecasts: HashMap::new(),
            runs: (0, Vec::new()),
            silences: (0, Vec::new()),
            pending: (None, BTreeMap::new()),
            data_version: None,
            dropped: (0, None),
            am_refreshed: HashMap::new(),
            failing: false,
            counted: None,
            figures: super::MaintenanceFigures::default(),
        };
        // Alerts of rules that left the config while the agent was stopped.
        let config = engine.config.clone();
        engine.resolve_rules_not_in(&config, now);
        engine
    }

    /// One evaluation of every rule; writes the changes.
    pub fn tick(&mut self, now: Ts) {
        let version = self.store.data_version().ok();
        let changed = version.is_none() || version != self.data_version;
        self.data_version = version;
        if changed {
            self.pending.0 = None;
        }
        if changed || now - self.silences.0 >= READ_EVERY_MS || now < self.silences.0 {
            self.silences = (now, self.store.silences(now).unwrap_or_default());
        }
        let silences = self.silences.1.clone();
        if now - self.runs.0 >= LEDGER_EVERY_MS {
            let runs = ledger::runs(self.store.conn(), None, 200).unwrap_or_default();
            self.runs = (now, runs);
            self.count_runs();
        }
        let mut changes = Vec::new();
        let config = self.config.clone();
        for (name, rule) in &config.alert {
            let observed = self.observe(name, rule, now);
            let common = rule.common();
            let facts = RuleFacts {
                name,
                for_: common.for_,
                severity: common.severity,
                during_maintenance: common.during_maintenance,
                repeat_interval: config.alerts.repeat_interval,
                resolve_notify: config.alerts.resolve_notify,
            };
            let mine: BTreeMap<String, Alert> = self
                .alerts
                .iter()
                .filter(|(_, a)| &a.rule == name)
                .map(|(k, a)| (k.clone(), a.clone()))
                .collect();
            let silenced = |a: &Alert| {
                let labels = rules::match_labels(a);
                silences
                    .iter()
                    .any(|s| s.active_at(now) && s.matches(&labels))
            };
            for t in rules::step(&facts, &mine, &observed, now, &silenced) {
                // New alerts wait while the engine tracks its most.
                let tracked = self.alerts.len() + changes.len();
                if !self.alerts.contains_key(&t.fingerprint)
                    && tracked >= crate::store::alerts::MAX_ALERTS as usize
                {
                    tracing::debug!(rule = %name, "{tracked} alerts tracked already: a new one waits");
                    continue;
                }
                let notes = t
                    .notification
                    .map(|n| self.fan_out(common.notify, &n, false));
                changes.push(Change {
                    fingerprint: t.fingerprint.clone(),
                    row: t.alert.as_ref().map(row_of),
                    notifications: notes.unwrap_or_default(),
                });
            }
        }
        self.refresh_alertmanager(&mut changes, now);
        // Resolved alerts are kept a while for their sequence only.
        for a in self.alerts.values() {
            if a.state == State::Resolved
                && a.resolved_ms
                    .is_some_and(|t| now - t > rules::KEEP_RESOLVED_MS)
            {
                changes.push(Change {
                    fingerprint: a.fingerprint.clone(),
                    row: None,
                    notifications: Vec::new(),
                });
            }
        }
        self.commit(changes, now);
        self.publish(&silences, now);
    }

    /// Records `changes`; the engine's state follows only a commit.
    fn commit(&mut self, changes: Vec<Change>, now: Ts) {
        let events: Vec<crate::store::Event> =
            std::mem::take(&mut *self.events.lock().expect("events lock"));
        if changes.is_empty() && events.is_empty() {
            return;
        }
        let result = self
            .store
            .apply(&changes, now, self.config.alerts.max_outbox)
            .and_then(|dropped| {
                self.store.record_events(&events)?;
                Ok(dropped)
            });
        match result {
            Ok(dropped) => {
                if self.failing {
                    tracing::info!("alert changes are recorded again");
                    self.failing = false;
                }
                for (notifier, n) in dropped {
                    tracing::warn!(notifier = %notifier, "outbox full: {n} oldest notifications dropped");
                    self.shared.counters.add(&notifier, "dropped", n);
                }
                let mut notified = false;
                for c in changes {
                    notified |= !c.notifications.is_empty();
                    for (notifier, nid, _) in &c.notifications {
                        if nid.contains(":firing:") {
                            self.am_refreshed
                                .insert(format!("{notifier}\0{}", c.fingerprint), now);
                        }
                    }
                    match c.row {
                        Some(r) => {
                            if let Ok(a) = serde_json::from_str::<Alert>(&r.data) {
                                self.alerts.insert(c.fingerprint, a);
                            }
                        }
                        None => {
                            self.alerts.remove(&c.fingerprint);
                        }
                    }
                }
                if notified {
                    // The backlog grew: shown at this tick, not within
                    // READ_EVERY_MS.
                    self.pending.0 = None;
                    self.wake.notify_waiters();
                }
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!("alert changes cannot be recorded, retrying: {e}");
                    self.failing = true;
                }
                // The events wait for the next attempt.
                self.events.lock().expect("events lock").extend(events);
            }
        }
    }

    /// `(notifier, id, body)` for each configured notifier of a rule;
    /// `alertmanager_only` for the refreshes only Alertmanager needs.
    fn fan_out(
        &self,
        notify: &[String],
        n: &Notification,
        alertmanager_only: bool,
    ) -> Vec<(String, String, String)> {
        let body = serde_json::to_string(n).expect("serializable");
        notify
            .iter()
            .filter(|name| match self.config.notify.get(*name) {
                Some(NotifyConfig::Alertmanager(_)) => true,
                Some(_) => !alertmanager_only,
                None => false,
            })
            .map(|name| (name.clone(), n.id.clone(), body.clone()))
            .collect()
    }

    /// Firing alerts resent to Alertmanager so that it never expires them.
    fn refresh_alertmanager(&mut self, changes: &mut Vec<Change>, now: Ts) {
        let busy: Vec<String> = changes.iter().map(|c| c.fingerprint.clone()).collect();
        for a in self.alerts.values() {
            if a.state != State::Firing || !a.notified || busy.contains(&a.fingerprint) {
                continue;
            }
            let Some(rule) = self.config.alert.get(&a.rule) else {
                continue;
            };
            let due: Vec<String> = rule
                .common()
                .notify
                .iter()
                .filter(|n| {
                    matches!(
                        self.config.notify.get(*n),
                        Some(NotifyConfig::Alertmanager(_))
                    )
                })
                .filter(|n| {
                    self.am_refreshed
                        .get(&format!("{n}\0{}", a.fingerprint))
                        .is_none_or(|t| now - t >= AM_REFRESH_MS)
                })
                .cloned()
                .collect();
            if due.is_empty() {
                continue;
            }
            let n = Notification {
                id: format!("{}:firing:{}", a.fingerprint, a.sequence),
                fingerprint: a.fingerprint.clone(),
                rule: a.rule.clone(),
                state: "firing".into(),
                severity: a.severity,
                labels: a.labels.clone(),
                summary: a.summary.clone(),
                value: a.value,
                starts_at_ms: a.firing_since_ms.unwrap_or(a.pending_since_ms),
                ends_at_ms: None,
                at_ms: now,
                reminder: true,
                maintenance_run: a.maintenance_run,
            };
            let notes = self.fan_out(&due, &n, true);
            changes.push(Change {
                fingerprint: a.fingerprint.clone(),
                row: Some(row_of(a)),
                notifications: notes,
            });
        }
    }

    /// Swaps in a new config: alerts of rules that are gone or changed are
    /// resolved; rules that did not change keep their alerts as they are.
    pub fn reload(&mut self, config: Arc<Config>, now: Ts) {
        let old = self.config.clone();
        self.config = config.clone();
        let mut changes = Vec::new();
        for a in self.alerts.values() {
            let same = old.alert.get(&a.rule) == config.alert.get(&a.rule);
            if same || a.state == State::Resolved {
                continue;
            }
            let n = rules::resolve_removed(a, now);
            let notes = match (&n, old.alert.get(&a.rule)) {
                (Some(n), Some(rule)) => self.fan_out(rule.common().notify, n, false),
                _ => Vec::new(),
            };
            changes.push(Change {
                fingerprint: a.fingerprint.clone(),
                row: rules::ended(a, n.is_some(), now).as_ref().map(row_of),
                notifications: notes,
            });
        }
        self.commit(changes, now);
        let keep: Vec<String> = config.notify.keys().cloned().collect();
        match self.store.forget_notifiers(&keep) {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} notifications of removed notifiers dropped"),
            Err(e) => tracing::warn!("dropping removed notifiers' notifications: {e}"),
        }
        self.forecasts.clear();
    }

    /// Alerts of rules that left the config while the agent was stopped
    /// end without a word: the notifiers they went to are not known.
    fn resolve_rules_not_in(&mut self, config: &Config, now: Ts) {
        let gone: Vec<Change> = self
            .alerts
            .values()
            .filter(|a| a.state != State::Resolved && !config.alert.contains_key(&a.rule))
            .map(|a| Change {
                fingerprint: a.fingerprint.clone(),
                row: rules::ended(a, false, now).as_ref().map(row_of),
                notifications: Vec::new(),
            })
            .collect();
        self.commit(gone, now);
    }

    /// Counts the runs that ended since the last ledger read.
    fn count_runs(&mut self) {
        let runs = &self.runs.1;
        let ended = runs.iter().filter(|r| r.status.ended() && !r.dry_run);
        let f = &mut self.figures;
        match &mut self.counted {
            None => self.counted = Some(ended.map(|r| r.id).collect()),
            Some(seen) => {
                for r in ended {
                    if seen.insert(r.id) {
                        *f.runs_total
                            .entry((r.task.clone(), r.status.as_str().to_string()))
                            .or_default() += 1;
                        *f.rows_changed_total.entry(r.task.clone()).or_default() +=
                            r.rows_changed.max(0) as u64;
                    }
                }
                // The ledger keeps its newest runs: older ids cannot come back.
                if let Some(oldest) = runs.iter().map(|r| r.id).min() {
                    seen.retain(|id| *id >= oldest);
                }
            }
        }
        f.running.clear();
        for task in self.config.maintenance.tasks.keys() {
            f.running.insert(task.clone(), false);
            f.rows_changed_total.entry(task.clone()).or_default();
        }
        for r in runs {
            if r.status == RunStatus::Running {
                f.running.insert(r.task.clone(), true);
            }
            if r.status == RunStatus::Succeeded
                && let Some(end) = r.ended_ms
            {
                let t = f.last_success_ms.entry(r.task.clone()).or_insert(end);
                *t = (*t).max(end);
            }
        }
    }

    /// The view the API, the page and `/metrics` read.
    fn publish(&mut self, silences: &[crate::store::alerts::Silence], now: Ts) {
        if self
            .pending
            .0
            .is_none_or(|at| now - at >= READ_EVERY_MS || now < at)
        {
            self.pending = (Some(now), self.store.pending().unwrap_or_default());
        }
        let pending = self.pending.1.clone();
        let mut alerts: Vec<AlertView> = self
            .alerts
            .values()
            .filter(|a| a.state != State::Resolved)
            .map(|a| {
                let labels = rules::match_labels(a);
                AlertView::of(
                    a,
                    silences
                        .iter()
                        .any(|s| s.active_at(now) && s.matches(&labels)),
                )
            })
            .collect();
        alerts.sort_by_key(AlertView::order_key);
        let mut view = self.shared.view.write().expect("alerts view lock");
        view.alerts = alerts;
        view.silences = silences.to_vec();
        view.outbox_pending = pending;
        view.evaluated_ms = now;
        view.maintenance = self.figures.clone();
    }
}

fn row_of(a: &Alert) -> AlertRow {
    AlertRow {
        fingerprint: a.fingerprint.clone(),
        rule: a.rule.clone(),
        state: a.state.as_str().to_string(),
        data: serde_json::to_string(a).expect("serializable"),
    }
}

pub use observe::series_key;

mod observe;
#[cfg(test)]
mod tests;
