//! The alerts' and maintenance families of `/metrics`, from the alert
//! engine's last evaluation:
//!
//! - `upkeep_alerts{state, severity}`: alerts pending and firing (every
//!   pair present, 0 included);
//! - `upkeep_notifications_total{notifier, result}`: deliveries `sent`,
//!   attempts `failed`, notifications `given_up` (past `max_age`) and
//!   `dropped` (outbox full), every configured notifier from the start;
//! - `upkeep_outbox_pending{notifier}`: notifications waiting;
//! - `upkeep_maintenance_runs_total{task, status}`,
//!   `upkeep_maintenance_rows_changed_total{task}`: runs ended (and the
//!   rows they changed) since the agent started;
//!   `upkeep_maintenance_last_success_timestamp_seconds{task}`;
//!   `upkeep_maintenance_running{task}`.

use super::{Families, Type};
use crate::alerts::notify::RESULTS;
use crate::alerts::{AlertsShared, Severity};

impl Families {
    fn labelled(&mut self, name: &str, kind: Type, help: &str, labels: &[(&str, &str)], v: f64) {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.add(name, kind, || help.to_string(), labels, v);
    }

    /// Adds the alerts' and maintenance families.
    pub fn add_alerts(&mut self, a: &AlertsShared) {
        let view = a.view.read().expect("alerts view lock");
        for state in ["firing", "pending"] {
            for sev in Severity::ALL {
                let n = view
                    .alerts
                    .iter()
                    .filter(|x| x.state == state && x.severity == sev)
                    .count();
                self.labelled(
                    "upkeep_alerts",
                    Type::Gauge,
                    "Alerts by state and severity.",
                    &[("state", state), ("severity", sev.as_str())],
                    n as f64,
                );
            }
        }
        let counts = a.counters.snapshot();
        let notifiers = a.notifiers.read().expect("notifiers lock").clone();
        for n in &notifiers {
            for result in RESULTS {
                let v = counts.get(&(n.clone(), result)).copied().unwrap_or(0);
                self.labelled(
                    "upkeep_notifications_total",
                    Type::Counter,
                    "Notifications by notifier and result: sent, failed (an attempt), given_up (past max_age), dropped (outbox full).",
                    &[("notifier", n), ("result", result)],
                    v as f64,
                );
            }
            let pending = view.outbox_pending.get(n).copied().unwrap_or(0);
            self.labelled(
                "upkeep_outbox_pending",
                Type::Gauge,
                "Notifications waiting in the outbox for their receiver.",
                &[("notifier", n)],
                pending as f64,
            );
        }
        let m = &view.maintenance;
        for ((task, status), n) in &m.runs_total {
            self.labelled(
                "upkeep_maintenance_runs_total",
                Type::Counter,
                "Maintenance runs ended since the agent started, by task and status.",
                &[("task", task), ("status", status)],
                *n as f64,
            );
        }
        for (task, n) in &m.rows_changed_total {
            self.labelled(
                "upkeep_maintenance_rows_changed_total",
                Type::Counter,
                "Rows (keys, files) maintenance runs changed since the agent started.",
                &[("task", task)],
                *n as f64,
            );
        }
        for (task, ms) in &m.last_success_ms {
            self.labelled(
                "upkeep_maintenance_last_success_timestamp_seconds",
                Type::Gauge,
                "When the task's newest successful run ended.",
                &[("task", task)],
                *ms as f64 / 1000.0,
            );
        }
        for (task, running) in &m.running {
            self.labelled(
                "upkeep_maintenance_running",
                Type::Gauge,
                "Whether a run of the task is under way.",
                &[("task", task)],
                if *running { 1.0 } else { 0.0 },
            );
        }
    }
}
