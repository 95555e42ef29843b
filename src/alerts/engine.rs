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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::config::{
    AgentCondition, AgentRule, DuringMaintenance, ForecastRule, MaintenanceRule, NotifyConfig,
    ProbeRule, RuleConfig, StatusLevel, ThresholdRule,
};
use super::rules::{self, Alert, Notification, Observed, RuleFacts, State};
use super::{AlertView, AlertsShared};
use crate::analysis::{self, Forecast, ForecastInput};
use crate::config::Config;
use crate::live::Live;
use crate::sample::{SeriesKey, Status, Ts};
use crate::store::alerts::{AlertRow, AlertStore, Change};
use crate::store::ledger::{self, RunRow, RunStatus};

/// How often rules are evaluated: a status change believed by the
/// recorder reaches the outbox within this.
pub const TICK: Duration = Duration::from_millis(250);
/// How often forecasts are recomputed (they read hours of history).
const FORECAST_EVERY_MS: Ts = 60_000;
/// How often the ledger is read for maintenance rules and annotations.
const LEDGER_EVERY_MS: Ts = 2_000;
/// Alertmanager forgets an alert not resent within its resolve_timeout
/// (5 minutes by default): firing alerts are resent this often.
const AM_REFRESH_MS: Ts = 60_000;
/// `samples_dropped` holds this long after the last dropped sample.
const DROPPED_HOLD_MS: Ts = 10 * 60_000;
/// `notifications_given_up` holds this long after the last one.
const GIVEN_UP_HOLD_MS: Ts = 3_600_000;

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
        let silences = self.store.silences(now).unwrap_or_default();
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

    /// What a rule sees now, one entry per label set it knows about.
    fn observe(&mut self, name: &str, rule: &RuleConfig, now: Ts) -> Vec<Observed> {
        let annotate = rule.common().during_maintenance != DuringMaintenance::Notify;
        let mut out = match rule {
            RuleConfig::Probe(r) => self.observe_probes(r),
            RuleConfig::Threshold(r) => self.observe_threshold(name, r),
            RuleConfig::Forecast(r) => self.observe_forecast(name, r, now),
            RuleConfig::Maintenance(r) => self.observe_maintenance(r, now),
            RuleConfig::Agent(r) => self.observe_agent(r, now),
        };
        if annotate {
            for o in &mut out {
                if o.maintenance_run.is_none()
                    && let Some(p) = o.labels.get("probe")
                {
                    o.maintenance_run = self.run_guarding(p);
                }
            }
        }
        out
    }

    /// The running maintenance run whose task watches `probe`.
    fn run_guarding(&self, probe: &str) -> Option<i64> {
        self.runs
            .1
            .iter()
            .filter(|r| r.status == RunStatus::Running && !r.dry_run)
            .find(|r| {
                self.config
                    .maintenance
                    .tasks
                    .get(&r.task)
                    .is_some_and(|t| t.guards().iter().any(|g| g == probe))
            })
            .map(|r| r.id)
    }

    fn observe_probes(&self, r: &ProbeRule) -> Vec<Observed> {
        let live = self.live.read().expect("live lock");
        live.probes
            .iter()
            .filter(|(name, _)| r.probes.is_empty() || r.probes.contains(name))
            .filter(|(_, p)| p.status != Status::Unknown)
            .map(|(name, p)| {
                let bad = match r.status {
                    StatusLevel::Unhealthy => p.status == Status::Unhealthy,
                    StatusLevel::Degraded => {
                        matches!(p.status, Status::Degraded | Status::Unhealthy)
                    }
                };
                let summary = match &p.reason {
                    Some(why) => format!("{name} is {}: {why}", p.status),
                    None => format!("{name} is {}", p.status),
                };
                Observed {
                    labels: BTreeMap::from([("probe".to_string(), name.clone())]),
                    trigger: bad,
                    hold: bad,
                    summary,
                    value: None,
                    maintenance_run: None,
                }
            })
            .collect()
    }

    fn observe_threshold(&self, name: &str, r: &ThresholdRule) -> Vec<Observed> {
        let Some(key) = series_key(&r.series) else {
            return Vec::new();
        };
        let live = self.live.read().expect("live lock");
        let Some(&(_, v)) = live
            .rings
            .get(&key.to_string())
            .and_then(|ring| ring.values.back())
        else {
            // No value yet: nothing changes.
            return Vec::new();
        };
        let (trigger, hold, level) = match (r.above, r.below) {
            (Some(a), _) => (v > a, v > r.clear.unwrap_or(a), format!("above {a}")),
            (None, Some(b)) => (v < b, v < r.clear.unwrap_or(b), format!("below {b}")),
            (None, None) => return Vec::new(),
        };
        let mut labels: BTreeMap<String, String> = key.labels.iter().cloned().collect();
        labels.insert("probe".into(), key.probe.clone());
        labels.insert("series".into(), r.series.clone());
        Observed {
            labels,
            trigger,
            hold,
            summary: format!("{} is {v} ({name}: {level})", r.series),
            value: Some(v),
            maintenance_run: None,
        }
        .into_vec()
    }

    fn observe_forecast(&mut self, name: &str, r: &ForecastRule, now: Ts) -> Vec<Observed> {
        if let Some((at, seen)) = self.forecasts.get(name)
            && now - at < FORECAST_EVERY_MS
        {
            return seen.clone();
        }
        let seen = match crate::store::Reader::open(&self.data_dir) {
            Ok(reader) => forecast_observation(&reader, r, now),
            Err(e) => {
                tracing::debug!("forecast rule {name}: {e}");
                Vec::new()
            }
        };
        self.forecasts.insert(name.to_string(), (now, seen.clone()));
        seen
    }

    fn observe_maintenance(&self, r: &MaintenanceRule, now: Ts) -> Vec<Observed> {
        let tasks: Vec<&String> = if r.tasks.is_empty() {
            self.config.maintenance.tasks.keys().collect()
        } else {
            r.tasks.iter().collect()
        };
        let mut out = Vec::new();
        for task in tasks {
            let runs: Vec<&RunRow> = self
                .runs
                .1
                .iter()
                .filter(|run| &run.task == task && !run.dry_run && run.status.ended())
                .collect();
            if !r.on.is_empty()
                && let Some(last) = runs.first()
            {
                // A rolled-back run keeps how it had ended in `outcome`.
                let bad = r.on.iter().any(|o| o == last.status.as_str());
                let error = last.error.as_deref().unwrap_or("");
                out.push(Observed {
                    labels: BTreeMap::from([("task".to_string(), task.clone())]),
                    trigger: bad,
                    hold: bad,
                    summary: format!(
                        "maintenance run {} of {task} ended {}{}{error}",
                        last.id,
                        last.status,
                        if error.is_empty() { "" } else { ": " }
                    ),
                    value: None,
                    maintenance_run: bad.then_some(last.id),
                });
            }
            if let Some(limit) = r.not_succeeded_for {
                let last_ok = runs
                    .iter()
                    .find(|run| run.status == RunStatus::Succeeded)
                    .and_then(|run| run.ended_ms);
                let since = last_ok.unwrap_or(self.started_ms);
                let late = now - since >= limit.as_millis() as Ts;
                out.push(Observed {
                    labels: BTreeMap::from([
                        ("task".to_string(), task.clone()),
                        ("condition".to_string(), "not_succeeded".to_string()),
                    ]),
                    trigger: late,
                    hold: late,
                    summary: match last_ok {
                        Some(t) => {
                            format!("{task} has not succeeded since {}", crate::fmt::rfc3339(t))
                        }
                        None => format!("{task} has not succeeded since the agent started"),
                    },
                    value: None,
                    maintenance_run: None,
                });
            }
        }
        out
    }

    fn observe_agent(&mut self, r: &AgentRule, now: Ts) -> Vec<Observed> {
        let (fault, dropped) = {
            let live = self.live.read().expect("live lock");
            (live.store.fault_at(now), live.store.dropped_samples)
        };
        if dropped > self.dropped.0 {
            self.dropped = (dropped, Some(now));
        }
        let given_up = self
            .shared
            .counters
            .last_given_up_ms
            .load(Ordering::Relaxed);
        let conditions: Vec<AgentCondition> = if r.conditions.is_empty() {
            AgentCondition::ALL.to_vec()
        } else {
            r.conditions.clone()
        };
        conditions
            .into_iter()
            .map(|c| {
                let (bad, summary) = match c {
                    AgentCondition::HistoryUnwritable => (
                        fault.is_some(),
                        fault.clone().unwrap_or_else(|| "history works".into()),
                    ),
                    AgentCondition::SamplesDropped => (
                        self.dropped.1.is_some_and(|t| now - t < DROPPED_HOLD_MS),
                        format!("{} samples dropped since the agent started", self.dropped.0),
                    ),
                    AgentCondition::NotificationsGivenUp => (
                        given_up > 0 && now - given_up < GIVEN_UP_HOLD_MS,
                        "notifications were given up after their max_age".to_string(),
                    ),
                };
                Observed {
                    labels: BTreeMap::from([("condition".to_string(), c.as_str().to_string())]),
                    trigger: bad,
                    hold: bad,
                    summary,
                    value: None,
                    maintenance_run: None,
                }
            })
            .collect()
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
    fn publish(&self, silences: &[crate::store::alerts::Silence], now: Ts) {
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
        let pending = self.store.pending().unwrap_or_default();
        let mut view = self.shared.view.write().expect("alerts view lock");
        view.alerts = alerts;
        view.silences = silences.to_vec();
        view.outbox_pending = pending;
        view.evaluated_ms = now;
        view.maintenance = self.figures.clone();
    }
}

trait IntoVec: Sized {
    fn into_vec(self) -> Vec<Self> {
        vec![self]
    }
}

impl IntoVec for Observed {}

fn row_of(a: &Alert) -> AlertRow {
    AlertRow {
        fingerprint: a.fingerprint.clone(),
        rule: a.rule.clone(),
        state: a.state.as_str().to_string(),
        data: serde_json::to_string(a).expect("serializable"),
    }
}

/// `probe.metric{labels}` as the live rings and the store key it.
pub fn series_key(text: &str) -> Option<SeriesKey> {
    let (probe, rest) = text.split_once('.')?;
    let (metric, labels) = match rest.find('{') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let labels = SeriesKey::parse_labels(labels)?;
    let refs: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Some(SeriesKey::new(probe, metric, &refs))
}

/// A forecast rule's observation: it triggers only on a confident
/// forecast (`analysis::forecast`'s rule) that the series reaches its
/// level within `within`, or has reached it.
fn forecast_observation(reader: &crate::store::Reader, r: &ForecastRule, now: Ts) -> Vec<Observed> {
    let Some(key) = series_key(&r.series) else {
        return Vec::new();
    };
    // The same window the health document's disk forecast fits.
    const LOOKBACK_MS: Ts = 7 * 86_400_000;
    let Ok(Some(answer)) = reader.query(&key.to_string(), now - LOOKBACK_MS, now, None, now, 1000)
    else {
        return Vec::new();
    };
    let points = answer.averages();
    let f = analysis::forecast(
        &points,
        ForecastInput {
            threshold: r.reaches,
            now,
        },
    );
    let within_s = r.within.as_secs_f64();
    let (bad, summary) = match f {
        Forecast::Reaches {
            eta_seconds,
            r_squared,
            ..
        } => (
            eta_seconds <= within_s,
            format!(
                "{} reaches {} in {} (r²={r_squared:.2})",
                r.series,
                r.reaches,
                humantime::format_duration(Duration::from_secs(eta_seconds.max(0.0) as u64))
            ),
        ),
        Forecast::Reached { value } => (
            true,
            format!("{} is at {value}, past {}", r.series, r.reaches),
        ),
        Forecast::NotApproaching { .. } => (
            false,
            format!("{} is not approaching {}", r.series, r.reaches),
        ),
        // Not confident: nothing changes, neither firing nor resolving.
        Forecast::InsufficientSignal { .. } => return Vec::new(),
    };
    let mut labels: BTreeMap<String, String> = key.labels.iter().cloned().collect();
    labels.insert("probe".into(), key.probe.clone());
    labels.insert("series".into(), r.series.clone());
    vec![Observed {
        labels,
        trigger: bad,
        hold: bad,
        summary,
        value: None,
        maintenance_run: None,
    }]
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, RwLock};

    use super::*;
    use crate::live::{Live, ProbeState};
    use crate::sample::Unit;
    use crate::store::ledger::{Ledger, Trigger};

    const T0: Ts = 1_700_000_000_000;

    struct Rig {
        _dir: tempfile::TempDir,
        engine: Engine,
        live: Arc<RwLock<Live>>,
        data: std::path::PathBuf,
    }

    fn rig(extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let text = format!(
            "[probe.db]\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n\n\
             [maintenance.trim]\nkind = \"scratch\"\ndir = \"{}\"\nfiles = 1\nguard = [\"db\"]\n\n\
             [notify.ops]\nkind = \"command\"\ncommand = [\"/bin/true\"]\n\n{extra}",
            dir.path().display()
        );
        let config = Arc::new(Config::parse("a.toml", &text).unwrap());
        let live = Arc::new(RwLock::new(Live::default()));
        let engine = Engine::new(
            config,
            data.clone(),
            AlertStore::open(&data).unwrap(),
            live.clone(),
            Arc::new(AlertsShared::default()),
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(Mutex::new(Vec::new())),
            T0,
        );
        Rig {
            _dir: dir,
            engine,
            live,
            data,
        }
    }

    impl Rig {
        /// The outbox's notification ids and states, oldest first.
        fn sent(&self) -> Vec<(String, Notification)> {
            let conn = crate::store::open_ro(&self.data.join(crate::store::FILE_NAME)).unwrap();
            let mut st = conn
                .prepare("SELECT nid, body FROM outbox ORDER BY id")
                .unwrap();
            st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .unwrap()
                .map(|r| {
                    let (id, body) = r.unwrap();
                    (id, serde_json::from_str(&body).unwrap())
                })
                .collect()
        }

        fn states(&self) -> Vec<String> {
            self.sent().iter().map(|(_, n)| n.state.clone()).collect()
        }

        fn probe(&self, status: Status) {
            self.live.write().unwrap().probes.insert(
                "db".into(),
                ProbeState {
                    kind: "tcp",
                    status,
                    since_ms: T0,
                    reason: None,
                    last_ts_ms: T0,
                    last_took_ms: 1.0,
                    last_error: None,
                },
            );
        }
    }

    #[test]
    fn a_threshold_fires_above_its_level_and_resolves_only_past_clear() {
        let mut r = rig(
            "[alert.slow]\nwhen = \"threshold\"\nseries = \"db.connect_seconds\"\nabove = 2.0\nclear = 1.0\nnotify = [\"ops\"]\n",
        );
        let key = SeriesKey::new("db", "connect_seconds", &[]);
        for (i, v) in [0.5, 2.5, 1.5, 1.2, 0.8].into_iter().enumerate() {
            let t = T0 + i as Ts * 1000;
            r.live.write().unwrap().push(&key, Unit::Seconds, t, v);
            r.engine.tick(t);
            let want: &[&str] = match i {
                0 => &[],
                1..=3 => &["firing"],
                _ => &["firing", "resolved"],
            };
            assert_eq!(r.states(), want, "after value {v}");
        }
        assert_eq!(r.sent()[0].1.value, Some(2.5));
    }

    #[test]
    fn a_failed_run_fires_a_maintenance_alert_resolved_by_the_next_success() {
        let mut r = rig(
            "[alert.trim-broken]\nwhen = \"maintenance\"\ntasks = [\"trim\"]\non = [\"failed\", \"aborted\"]\nnotify = [\"ops\"]\n",
        );
        let ledger = Ledger::open(&r.data).unwrap();
        let run = ledger
            .start_run("trim", "scratch", Trigger::Schedule, false, T0)
            .unwrap();
        ledger
            .finish(
                run,
                T0 + 10,
                RunStatus::Aborted,
                Some("guard: db unhealthy"),
            )
            .unwrap();
        r.engine.tick(T0 + 5_000);
        let sent = r.sent();
        assert_eq!(r.states(), ["firing"]);
        assert_eq!(sent[0].1.labels["task"], "trim");
        assert_eq!(sent[0].1.maintenance_run, Some(run));
        assert!(
            sent[0]
                .1
                .summary
                .contains("ended aborted: guard: db unhealthy"),
            "{}",
            sent[0].1.summary
        );
        let ok = ledger
            .start_run("trim", "scratch", Trigger::Schedule, false, T0 + 6_000)
            .unwrap();
        ledger
            .finish(ok, T0 + 7_000, RunStatus::Succeeded, None)
            .unwrap();
        r.engine.tick(T0 + 10_000);
        assert_eq!(r.states(), ["firing", "resolved"]);
    }

    #[test]
    fn an_alert_during_a_run_on_its_probe_is_annotated_or_muted() {
        for (mode, want) in [("annotate", 1), ("mute", 0), ("notify", 1)] {
            let mut r = rig(&format!(
                "[alert.down]\nwhen = \"probe\"\nnotify = [\"ops\"]\nduring_maintenance = \"{mode}\"\n"
            ));
            let ledger = Ledger::open(&r.data).unwrap();
            let run = ledger
                .start_run("trim", "scratch", Trigger::Api, false, T0)
                .unwrap();
            r.probe(Status::Unhealthy);
            r.engine.tick(T0 + 3_000);
            let sent = r.sent();
            assert_eq!(sent.len(), want, "{mode}");
            match mode {
                "annotate" => assert_eq!(sent[0].1.maintenance_run, Some(run)),
                "notify" => assert_eq!(sent[0].1.maintenance_run, None),
                _ => {
                    // Muted while the run lasts, told once it ended.
                    ledger
                        .finish(run, T0 + 4_000, RunStatus::Aborted, None)
                        .unwrap();
                    r.engine.tick(T0 + 6_000);
                    assert_eq!(r.states(), ["firing"]);
                }
            }
        }
    }

    #[test]
    fn maintenance_figures_count_runs_ended_since_the_start() {
        let mut r = rig("");
        let ledger = Ledger::open(&r.data).unwrap();
        // Ended before the agent started: not counted, but its success is
        // the newest one known.
        let old = ledger
            .start_run("trim", "scratch", Trigger::Schedule, false, T0 - 9_000)
            .unwrap();
        ledger.add_batch(old, 5).unwrap();
        ledger
            .finish(old, T0 - 8_000, RunStatus::Succeeded, None)
            .unwrap();
        r.engine.tick(T0);
        let running = ledger
            .start_run("trim", "scratch", Trigger::Api, false, T0 + 1)
            .unwrap();
        r.engine.tick(T0 + 3_000);
        let f = r.engine.figures.clone();
        assert!(f.runs_total.is_empty());
        assert!(f.running["trim"]);
        assert_eq!(f.last_success_ms["trim"], T0 - 8_000);
        ledger.add_batch(running, 7).unwrap();
        ledger
            .finish(running, T0 + 4_000, RunStatus::Failed, Some("x"))
            .unwrap();
        r.engine.tick(T0 + 6_000);
        let f = r.engine.figures.clone();
        assert_eq!(f.runs_total[&("trim".to_string(), "failed".to_string())], 1);
        assert_eq!(f.rows_changed_total["trim"], 7);
        assert!(!f.running["trim"]);
    }

    /// Two hours of a disk's used ratio every 5 minutes, written as the
    /// recorder does; `noise` makes the fit poor.
    fn disk_history(data: &std::path::Path, start: Ts, noise: bool) {
        use crate::store::writer::{RunInfo, Sample, Writer};
        let run = RunInfo {
            version: "test".into(),
            hostname: "test".into(),
            pid: 1,
        };
        let history = crate::store::config::HistoryConfig::default();
        let (mut w, _) = Writer::open(data, &history, start, &run).unwrap();
        let key = SeriesKey::new("host", "disk_used_ratio", &[("mount", "/")]);
        for i in 0..=24i64 {
            let ts = start + i * 300_000;
            let id = w.series_id(&key, Unit::Ratio, ts).unwrap().unwrap();
            // +1 % an hour from 50 %: full in about 2 days.
            let wobble = if noise && i % 2 == 0 { 0.2 } else { 0.0 };
            let value = 0.5 + 0.01 * i as f64 / 12.0 + wobble;
            w.write(
                &[Sample {
                    series: id,
                    ts,
                    value,
                }],
                &[],
                ts,
            )
            .unwrap();
        }
    }

    #[test]
    fn a_forecast_rule_fires_only_on_a_confident_forecast() {
        let rule = "[alert.disk-filling]\nwhen = \"forecast\"\nseries = 'host.disk_used_ratio{mount=\"/\"}'\nreaches = 1.0\nwithin = \"7d\"\nnotify = [\"ops\"]\n";
        for (noise, within, fires) in [
            (false, "7d", true),
            (true, "7d", false),
            (false, "1d", false),
        ] {
            let mut r = rig(&rule.replace("\"7d\"", &format!("\"{within}\"")));
            let now = T0 + 2 * 3_600_000;
            disk_history(&r.data, T0, noise);
            r.engine.tick(now);
            let sent = r.sent();
            assert_eq!(
                sent.len(),
                usize::from(fires),
                "noise {noise}, within {within}: {sent:?}"
            );
            if fires {
                assert!(
                    sent[0].1.summary.contains("reaches 1 in"),
                    "{}",
                    sent[0].1.summary
                );
                assert_eq!(sent[0].1.labels["mount"], "/");
            }
        }
    }

    #[test]
    fn history_trouble_fires_the_agent_rule() {
        let mut r =
            rig("[alert.agent]\nwhen = \"agent\"\nseverity = \"critical\"\nnotify = [\"ops\"]\n");
        r.live.write().unwrap().store.open = true;
        r.engine.tick(T0);
        assert!(r.sent().is_empty());
        r.live.write().unwrap().store.fault =
            Some("history cannot be written (read-only filesystem): ...".into());
        r.engine.tick(T0 + 1000);
        let sent = r.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.labels["condition"], "history_unwritable");
        assert!(sent[0].1.summary.contains("read-only filesystem"));
    }

    #[test]
    fn a_reload_keeps_the_state_of_an_unchanged_rule() {
        let rule = "[alert.down]\nwhen = \"probe\"\nfor = \"1m\"\nnotify = [\"ops\"]\n";
        let mut r = rig(rule);
        r.live.write().unwrap().store.open = true;
        r.probe(Status::Unhealthy);
        r.engine.tick(T0);
        // The same config again, with another rule added: `down` stays
        // pending since T0 and fires at T0 + 1m, not a minute after the reload.
        let mut text = r.engine.config.as_ref().clone();
        let other = Config::parse(
            "b.toml",
            "[notify.ops]\nkind = \"command\"\ncommand = [\"/bin/true\"]\n\n[alert.agent]\nwhen = \"agent\"\nnotify = [\"ops\"]\n",
        )
        .unwrap();
        text.alert.extend(other.alert);
        r.engine.reload(Arc::new(text), T0 + 30_000);
        r.engine.tick(T0 + 59_000);
        assert!(r.sent().is_empty());
        r.engine.tick(T0 + 60_000);
        let sent = r.sent();
        assert_eq!(r.states(), ["firing"]);
        assert_eq!(sent[0].1.rule, "down");
        assert_eq!(sent[0].1.starts_at_ms, T0 + 60_000);
    }
}
