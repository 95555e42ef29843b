//! The alert state machine, pure: `step` takes the alerts a rule tracks,
//! what the rule observes now, and the time, and returns the alerts as they
//! now stand with the notifications the changes call for. No clock, no
//! I/O: the engine (`engine.rs`) gathers observations and writes the
//! result; unit tests drive it with numbers.
//!
//! An alert is `pending` from the first observation of its condition,
//! `firing` once the condition held for the rule's `for`, and resolved
//! (its row gone, a `resolved` notification sent when a `firing` one was)
//! once the condition no longer holds — for thresholds, once the value is
//! back past `clear` (hysteresis). A condition that stops holding while
//! pending ends the alert without a word: a blip notifies no one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{DuringMaintenance, Severity};
use crate::sample::Ts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Firing,
    /// Over. Kept (for [`KEEP_RESOLVED_MS`]) only so that the alert's next
    /// notifications go on from its sequence: an id is never reused.
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }
}

/// How long a resolved alert is kept for its sequence.
pub const KEEP_RESOLVED_MS: Ts = 7 * 86_400_000;

/// One tracked alert (kept in the `alerts` table as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub fingerprint: String,
    pub rule: String,
    pub labels: BTreeMap<String, String>,
    pub state: State,
    pub severity: Severity,
    /// When the condition was first seen (this time round).
    pub pending_since_ms: Ts,
    pub firing_since_ms: Option<Ts>,
    /// The sequence number of the alert's latest notification.
    pub sequence: u64,
    /// When a `firing` notification (first or reminder) was last sent.
    pub last_sent_ms: Option<Ts>,
    /// Whether receivers were told it fires (a silenced or muted alert is
    /// not, and so is not told it resolved either).
    pub notified: bool,
    pub summary: String,
    pub value: Option<f64>,
    /// The maintenance run changing things on a watched probe when the
    /// alert was last seen.
    pub maintenance_run: Option<i64>,
    /// When it resolved (state `resolved`).
    #[serde(default)]
    pub resolved_ms: Option<Ts>,
}

/// What a rule sees for one label set.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub labels: BTreeMap<String, String>,
    /// The condition that starts an alert holds.
    pub trigger: bool,
    /// The condition that keeps a firing alert holds (for thresholds, the
    /// value is not back past `clear`; otherwise the same as `trigger`).
    pub hold: bool,
    pub summary: String,
    pub value: Option<f64>,
    pub maintenance_run: Option<i64>,
}

/// A rule's settings the state machine needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleFacts<'a> {
    pub name: &'a str,
    pub for_: Duration,
    pub severity: Severity,
    pub during_maintenance: DuringMaintenance,
    pub repeat_interval: Duration,
    pub resolve_notify: bool,
}

/// A notification, as kept in the outbox and rendered by each notifier.
/// It holds what the alert is, never a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// `fingerprint:state:sequence`: stable, so receivers can drop
    /// duplicates of an at-least-once delivery.
    pub id: String,
    pub fingerprint: String,
    pub rule: String,
    /// `firing` or `resolved`.
    pub state: String,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub value: Option<f64>,
    pub starts_at_ms: Ts,
    /// When it resolved; `None` while firing.
    pub ends_at_ms: Option<Ts>,
    /// When this notification was made.
    pub at_ms: Ts,
    /// A reminder of an alert still firing (`repeat_interval`).
    pub reminder: bool,
    pub maintenance_run: Option<i64>,
}

/// What `step` did to one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub fingerprint: String,
    /// The alert now; `None`: it is over.
    pub alert: Option<Alert>,
    pub notification: Option<Notification>,
}

/// The fingerprint of an alert: its rule and labels, hashed (SHA-256,
/// first 16 hex digits) so it is short, stable across restarts and
/// versions, and safe in URLs and ids.
pub fn fingerprint(rule: &str, labels: &BTreeMap<String, String>) -> String {
    let mut text = String::from(rule);
    for (k, v) in labels {
        text.push('\0');
        text.push_str(k);
        text.push('=');
        text.push_str(v);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The labels an alert is matched on by silences: its own plus `rule` and
/// `severity`.
pub fn match_labels(a: &Alert) -> BTreeMap<String, String> {
    let mut l = a.labels.clone();
    l.insert("rule".into(), a.rule.clone());
    l.insert("severity".into(), a.severity.as_str().into());
    l
}

/// One rule's alerts after one observation round. `suppressed` says
/// whether an alert may not notify now (a silence matches it); an alert a
/// maintenance run mutes is suppressed too. Alerts of label sets not
/// observed stay as they are.
pub fn step(
    rule: &RuleFacts<'_>,
    alerts: &BTreeMap<String, Alert>,
    observed: &[Observed],
    now: Ts,
    suppressed: &dyn Fn(&Alert) -> bool,
) -> Vec<Transition> {
    let mut out = Vec::new();
    for o in observed {
        let fp = fingerprint(rule.name, &o.labels);
        let current = alerts.get(&fp);
        if let Some(t) = step_one(rule, current, o, &fp, now, suppressed) {
            out.push(t);
        }
    }
    out
}

fn step_one(
    rule: &RuleFacts<'_>,
    current: Option<&Alert>,
    o: &Observed,
    fp: &str,
    now: Ts,
    suppressed: &dyn Fn(&Alert) -> bool,
) -> Option<Transition> {
    // Over: forgotten when it never notified anyone, else kept resolved
    // for its sequence.
    let over = |a: &Alert, notification: Option<Notification>| -> Transition {
        Transition {
            fingerprint: fp.to_string(),
            alert: ended(a, notification.is_some(), now),
            notification,
        }
    };
    let live = current.filter(|a| a.state != State::Resolved);
    let Some(a) = live else {
        if !o.trigger {
            return None;
        }
        let pending = Alert {
            fingerprint: fp.to_string(),
            rule: rule.name.to_string(),
            labels: o.labels.clone(),
            state: State::Pending,
            severity: rule.severity,
            pending_since_ms: now,
            firing_since_ms: None,
            // Ids go on from the last time this alert was on.
            sequence: current.map_or(0, |a| a.sequence),
            last_sent_ms: None,
            notified: false,
            summary: o.summary.clone(),
            value: o.value,
            maintenance_run: o.maintenance_run,
            resolved_ms: None,
        };
        return Some(advance(rule, pending, now, suppressed));
    };
    let mut a = a.clone();
    match a.state {
        State::Pending if !o.trigger => Some(over(&a, None)),
        State::Firing if !o.hold => {
            let n = (a.notified && rule.resolve_notify)
                .then(|| notification(&a, "resolved", a.sequence + 1, now, false));
            Some(over(&a, n))
        }
        _ => {
            let changed = a.summary != o.summary
                || a.value != o.value
                || a.maintenance_run != o.maintenance_run;
            a.summary = o.summary.clone();
            a.value = o.value;
            a.maintenance_run = o.maintenance_run;
            let t = advance(rule, a, now, suppressed);
            (t.notification.is_some() || t.alert.as_ref() != current || changed).then_some(t)
        }
    }
}

/// A pending alert fires once it held for `for`; a firing one tells
/// receivers it fires when they were not told yet (a silence ended), and
/// reminds them every `repeat_interval`.
fn advance(
    rule: &RuleFacts<'_>,
    mut a: Alert,
    now: Ts,
    suppressed: &dyn Fn(&Alert) -> bool,
) -> Transition {
    let for_ms = rule.for_.as_millis() as Ts;
    if a.state == State::Pending && now - a.pending_since_ms >= for_ms {
        a.state = State::Firing;
        a.firing_since_ms = Some(now);
    }
    let mut note = None;
    let muted = rule.during_maintenance == DuringMaintenance::Mute && a.maintenance_run.is_some();
    if a.state == State::Firing && !muted && !suppressed(&a) {
        let repeat = rule.repeat_interval.as_millis() as Ts;
        let remind = a.notified && repeat > 0 && a.last_sent_ms.is_some_and(|t| now - t >= repeat);
        if !a.notified || remind {
            a.sequence += 1;
            a.notified = true;
            a.last_sent_ms = Some(now);
            note = Some(notification(&a, "firing", a.sequence, now, remind));
        }
    }
    Transition {
        fingerprint: a.fingerprint.clone(),
        alert: Some(a),
        notification: note,
    }
}

fn notification(a: &Alert, state: &str, sequence: u64, now: Ts, reminder: bool) -> Notification {
    Notification {
        id: format!("{}:{state}:{sequence}", a.fingerprint),
        fingerprint: a.fingerprint.clone(),
        rule: a.rule.clone(),
        state: state.to_string(),
        severity: a.severity,
        labels: a.labels.clone(),
        summary: a.summary.clone(),
        value: a.value,
        starts_at_ms: a.firing_since_ms.unwrap_or(a.pending_since_ms),
        ends_at_ms: (state == "resolved").then_some(now),
        at_ms: now,
        reminder,
        maintenance_run: a.maintenance_run,
    }
}

/// `a` once over, `notified` whether a `resolved` notification went out:
/// kept as resolved for its sequence, or `None` when it never notified.
pub fn ended(a: &Alert, notified: bool, now: Ts) -> Option<Alert> {
    let sequence = a.sequence + u64::from(notified);
    (sequence > 0).then(|| Alert {
        state: State::Resolved,
        sequence,
        notified: false,
        resolved_ms: Some(now),
        ..a.clone()
    })
}

/// The notification that resolves `a` because its rule left the config
/// (or changed): `None` when receivers were never told it fires.
pub fn resolve_removed(a: &Alert, now: Ts) -> Option<Notification> {
    (a.state == State::Firing && a.notified).then(|| {
        let mut n = notification(a, "resolved", a.sequence + 1, now, false);
        n.summary = format!("{} (its rule was removed or changed)", a.summary);
        n
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(for_s: u64) -> RuleFacts<'static> {
        RuleFacts {
            name: "down",
            for_: Duration::from_secs(for_s),
            severity: Severity::Critical,
            during_maintenance: DuringMaintenance::Annotate,
            repeat_interval: Duration::from_secs(3600),
            resolve_notify: true,
        }
    }

    fn seen(trigger: bool, hold: bool) -> Observed {
        Observed {
            labels: BTreeMap::from([("probe".into(), "db".into())]),
            trigger,
            hold,
            summary: "db is unhealthy".into(),
            value: None,
            maintenance_run: None,
        }
    }

    /// Runs `step` over a series of (time s, trigger, hold), returning the
    /// notifications' ids.
    fn drive(r: &RuleFacts<'_>, rounds: &[(i64, bool, bool)], silenced: bool) -> Vec<String> {
        let mut alerts = BTreeMap::new();
        let mut ids = Vec::new();
        for &(t, trigger, hold) in rounds {
            for tr in step(r, &alerts, &[seen(trigger, hold)], t * 1000, &|_| silenced) {
                if let Some(n) = tr.notification {
                    ids.push(format!("{}:{}", n.state, n.id.rsplit(':').next().unwrap()));
                }
                match tr.alert {
                    Some(a) => alerts.insert(tr.fingerprint, a),
                    None => alerts.remove(&tr.fingerprint),
                };
            }
        }
        ids
    }

    #[test]
    fn an_alert_fires_after_for_and_resolves_once() {
        let ids = drive(
            &rule(60),
            &[
                (0, true, true),
                (30, true, true),
                (60, true, true),
                (90, false, false),
                (95, false, false),
            ],
            false,
        );
        assert_eq!(ids, ["firing:1", "resolved:2"]);
    }

    #[test]
    fn a_blip_shorter_than_for_notifies_no_one() {
        let rounds: Vec<(i64, bool, bool)> =
            (0..100).map(|i| (i * 10, i % 2 == 0, i % 2 == 0)).collect();
        assert!(drive(&rule(30), &rounds, false).is_empty());
    }

    #[test]
    fn hysteresis_holds_a_firing_alert_until_clear() {
        // Past the firing level, then between clear and firing, then past clear.
        let ids = drive(
            &rule(0),
            &[
                (0, true, true),
                (10, false, true),
                (20, false, true),
                (30, false, false),
            ],
            false,
        );
        assert_eq!(ids, ["firing:1", "resolved:2"]);
    }

    #[test]
    fn a_firing_alert_is_reminded_every_repeat_interval() {
        let ids = drive(
            &rule(0),
            &[
                (0, true, true),
                (1800, true, true),
                (3600, true, true),
                (7200, true, true),
            ],
            false,
        );
        assert_eq!(ids, ["firing:1", "firing:2", "firing:3"]);
    }

    #[test]
    fn a_silenced_alert_neither_fires_nor_resolves_to_receivers() {
        let ids = drive(&rule(0), &[(0, true, true), (10, false, false)], true);
        assert!(ids.is_empty(), "{ids:?}");
    }

    #[test]
    fn an_alert_that_fires_again_goes_on_from_its_sequence() {
        let ids = drive(
            &rule(0),
            &[
                (0, true, true),
                (10, false, false),
                (20, true, true),
                (30, false, false),
            ],
            false,
        );
        assert_eq!(ids, ["firing:1", "resolved:2", "firing:3", "resolved:4"]);
    }

    #[test]
    fn fingerprints_depend_on_rule_and_labels_only() {
        let l = BTreeMap::from([("probe".into(), "db".into())]);
        assert_eq!(fingerprint("a", &l), fingerprint("a", &l.clone()));
        assert_ne!(fingerprint("a", &l), fingerprint("b", &l));
        assert_eq!(fingerprint("a", &l).len(), 16);
    }
}
