//! The Alerts section at the top of the page: firing alerts first, each
//! with its severity as colour, symbol and word, its rule, what it says
//! and since when, "during maintenance run N" with a link where it fired
//! during one; then pending ones; then the silences in force.

use maud::{Markup, html};

use super::format::{span, symbol, time};
use crate::alerts::{AlertView, AlertsSnapshot, Severity};
use crate::sample::{Status, Ts};

/// Class (colour), symbol and word of an alert: a firing critical alert
/// reads as unhealthy, a firing warning as degraded, the rest as unknown.
fn look(a: &AlertView) -> (&'static str, &'static str, String) {
    let status = match (a.state, a.severity) {
        ("firing", Severity::Critical) => Status::Unhealthy,
        ("firing", Severity::Warning) => Status::Degraded,
        _ => Status::Unknown,
    };
    let class = match status {
        Status::Unhealthy => "s-unhealthy",
        Status::Degraded => "s-degraded",
        _ => "s-unknown",
    };
    (
        class,
        symbol(status),
        format!("{} {}", a.severity.as_str(), a.state),
    )
}

pub(super) fn section(alerts: Option<&AlertsSnapshot>, now: Ts) -> Markup {
    let Some(snap) = alerts else {
        return html! {};
    };
    let firing = snap.alerts.iter().filter(|a| a.state == "firing").count();
    html! {
        section #alerts .alerts data-live aria-labelledby="alerts-h" {
            h2 #alerts-h {
                "Alerts"
                @if firing > 0 { " · " (firing) " firing" }
            }
            @if snap.alerts.is_empty() {
                p .muted { "No alerts." }
            } @else {
                ul .alert-list {
                    @for a in &snap.alerts {
                        @let (class, sym, word) = look(a);
                        li class=(class) {
                            span .badge {
                                span .sym aria-hidden="true" { (sym) }
                                span .word { (word) }
                            }
                            " "
                            strong { (a.rule) }
                            " — " (a.summary)
                            " · since " (time(a.since_ms)) " (" (span(now - a.since_ms)) ")"
                            @if a.silenced { " · " span .muted { "silenced" } }
                            @if let Some(run) = a.maintenance_run {
                                " · "
                                a href=(format!("/api/v1/maintenance/runs/{run}")) {
                                    "during maintenance run " (run)
                                }
                            }
                        }
                    }
                }
            }
            @if !snap.silences.is_empty() {
                h3 { "Silences" }
                ul .silence-list {
                    @for s in &snap.silences {
                        li {
                            @let m: Vec<String> = s.matchers.iter().map(|(k, v)| format!("{k}={v}")).collect();
                            code { (m.join(", ")) }
                            " until " (time(s.ends_ms)) " · " (s.comment)
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn firing_alerts_show_severity_as_colour_symbol_and_word_with_their_run() {
        let a = AlertView {
            fingerprint: "f".into(),
            rule: "db-down".into(),
            state: "firing",
            severity: Severity::Critical,
            labels: BTreeMap::new(),
            summary: "db is <unhealthy>".into(),
            value: None,
            since_ms: 0,
            silenced: false,
            maintenance_run: Some(7),
        };
        let snap = AlertsSnapshot {
            alerts: vec![a],
            ..AlertsSnapshot::default()
        };
        let html = section(Some(&snap), 60_000).into_string();
        assert!(html.contains("Alerts · 1 firing"), "{html}");
        assert!(html.contains("class=\"s-unhealthy\""), "{html}");
        assert!(html.contains("critical firing"), "{html}");
        assert!(html.contains("db is &lt;unhealthy&gt;"), "escaped: {html}");
        assert!(
            html.contains("href=\"/api/v1/maintenance/runs/7\""),
            "{html}"
        );
        let empty = section(Some(&AlertsSnapshot::default()), 0).into_string();
        assert!(empty.contains("No alerts."));
    }
}
