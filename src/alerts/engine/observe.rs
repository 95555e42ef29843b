//! What each kind of rule observes: probe statuses and series from the
//! live state, forecasts from the history file, runs from the ledger, the
//! agent's own health; and which running maintenance run guards a probe.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Engine;
use crate::alerts::config::{
    AgentCondition, AgentRule, DuringMaintenance, ForecastRule, MaintenanceRule, ProbeRule,
    RuleConfig, StatusLevel, ThresholdRule,
};
use crate::alerts::rules::Observed;
use crate::analysis::{self, Forecast, ForecastInput};
use crate::sample::{SeriesKey, Status, Ts};
use crate::store::ledger::{RunRow, RunStatus};

/// `samples_dropped` holds this long after the last dropped sample.
const DROPPED_HOLD_MS: Ts = 10 * 60_000;
/// `notifications_given_up` holds this long after the last one.
const GIVEN_UP_HOLD_MS: Ts = 3_600_000;
/// How often forecasts are recomputed (they read hours of history).
const FORECAST_EVERY_MS: Ts = 60_000;

impl Engine {
    /// What a rule sees now, one entry per label set it knows about.
    pub(super) fn observe(&mut self, name: &str, rule: &RuleConfig, now: Ts) -> Vec<Observed> {
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
        let Some((_, v)) = live
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
}

trait IntoVec: Sized {
    fn into_vec(self) -> Vec<Self> {
        vec![self]
    }
}

impl IntoVec for Observed {}

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
