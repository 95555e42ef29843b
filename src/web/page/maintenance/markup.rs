//! The Maintenance section's markup: a card per task, the recent runs as a
//! table (cards on a phone), and a run's status as class, symbol and word.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::{Auto, Section, Task, run_link};
use crate::fmt::count;
use crate::maintenance::ledger::{RunRow, RunStatus, status_words};
use crate::sample::{Status, Ts, Unit};
use crate::store::reader::SeriesInfo;
use crate::web::page::format::{symbol, time, time_of, took, value};

/// How a run's status shows: class (colour), symbol and word together
/// ("failed, then rolled back" where the ledger knows the outcome).
fn run_status(r: &RunRow) -> (&'static str, &'static str, String) {
    let (class, sym) = match r.status {
        RunStatus::Succeeded => ("s-healthy", symbol(Status::Healthy)),
        RunStatus::Failed => ("s-unhealthy", symbol(Status::Unhealthy)),
        RunStatus::Aborted | RunStatus::Interrupted => ("s-degraded", symbol(Status::Degraded)),
        RunStatus::Running => ("s-running", "↻"),
        RunStatus::RolledBack => ("s-unknown", "↺"),
        RunStatus::Refused => ("s-unknown", "–"),
    };
    (class, sym, status_words(r))
}

fn status_badge(r: &RunRow) -> Markup {
    let (_, sym, word) = run_status(r);
    html! {
        span .badge {
            span .sym aria-hidden="true" { (sym) }
            span .word { (word) }
            @if r.dry_run { " " span .dry { "(dry run)" } }
        }
    }
}

/// How long a run took, or has been running. An ended run without an
/// end (written by an older version) has no known duration.
fn duration(r: &RunRow, now: Ts) -> String {
    match r.ended_ms {
        Some(end) => took(end - r.started_ms),
        None if r.status.ended() => "—".to_string(),
        None => format!("{} so far", took(now - r.started_ms)),
    }
}

fn rows(n: i64) -> String {
    format!("{} row{}", count(n), if n == 1 { "" } else { "s" })
}

/// The restore drills: the last passing drill's measured RTO (restore
/// seconds) and RPO (the age of the backup it restored), and a failing
/// last drill's reason.
fn drills(s: &Section) -> Markup {
    html! {
        div .drills {
            h3 { "Restore drills" }
            @for d in &s.drills {
                p .drill {
                    strong { (d.task) } ": "
                    @match d.passed {
                        Some((id, ended, rto, rpo)) => {
                            "last passed " a href=(run_link(s, id)) { (time(ended)) }
                            ", RTO " span .rto { (took((rto * 1000.0) as i64)) }
                            ", RPO " span .rpo { (took((rpo * 1000.0) as i64)) }
                        }
                        None => { "no drill has passed yet" }
                    }
                    @if let Some(f) = &d.failed {
                        " " span .s-unhealthy {
                            "last run " a href=(run_link(s, f.id)) { (f.id) } " "
                            (status_words(f)) ": " (f.error.as_deref().unwrap_or(""))
                        }
                    }
                }
            }
        }
    }
}

pub(in crate::web::page) fn section(
    s: &Section,
    series: &BTreeMap<String, Vec<SeriesInfo>>,
    now: Ts,
) -> Markup {
    html! {
        section #maintenance .maintenance data-live aria-labelledby="maintenance-h" {
            h2 #maintenance-h { "Maintenance" }
            @if s.tasks.is_empty() && s.tasks_error.is_none() {
                p .empty { "No maintenance tasks configured." }
            }
            @if let Some(e) = &s.tasks_error {
                p .notice { "The maintenance tasks cannot be shown: " (e) }
            }
            @for t in &s.tasks {
                (task(t, s, series, now))
            }
            @if !s.drills.is_empty() {
                (drills(s))
            }
            @if let Some(e) = &s.ledger_error {
                p .notice { "The maintenance ledger is unavailable, so runs are not shown: " (e) }
            }
            @if !s.runs.is_empty() {
                (runs(s, now))
            }
        }
    }
}

fn task(t: &Task, s: &Section, series: &BTreeMap<String, Vec<SeriesInfo>>, now: Ts) -> Markup {
    // Without the ledger a missing last run is unknown, not "never".
    let unread = s.ledger_error.is_some();
    let class = t.last.as_ref().map_or("s-none", |r| run_status(r).0);
    html! {
        article class={ "task " (class) } data-task=(t.name) {
            div .name {
                h3 { (t.name) }
                span .kind { (t.kind) }
            }
            div .last {
                span .lbl { "Last run" }
                @match &t.last {
                    Some(r) => {
                        span .state { (status_badge(r)) }
                        span .when {
                            "run " a href=(run_link(s, r.id)) { (r.id) }
                            " · " (time(r.started_ms)) " · " (duration(r, now))
                            " · " (rows(r.rows_changed))
                        }
                    }
                    None if unread => span .never { "last run unknown" },
                    None => span .never { "never run" },
                }
            }
            dl .facts {
                div { dt { "Schedule" } dd { (t.schedule) } }
                div {
                    dt { "Next start" }
                    dd {
                        @match (&t.next_start, t.schedule.as_str()) {
                            (Some(at), _) => (time_of(at)),
                            (None, "manual only") => span .na { "when started (CLI or API)" },
                            (None, _) => span .na { "none yet" },
                        }
                    }
                }
                div {
                    dt { "Window" }
                    dd { (window(t)) }
                }
                div {
                    dt { "Guards" }
                    dd {
                        @for (i, g) in t.guards.iter().enumerate() {
                            @if i > 0 { ", " }
                            code { (g) }
                        }
                    }
                }
                @if let Some(a) = &t.auto {
                    div .auto { dt { "Auto window" } dd { (auto(a, series)) } }
                }
            }
            @if let Some(err) = t.last.as_ref().and_then(|r| r.error.as_ref()) {
                p .reason { (err) }
            }
        }
    }
}

fn window(t: &Task) -> Markup {
    html! {
        @if t.window_open {
            span .open { "open" }
            @match &t.window_closes {
                Some(at) => { " until " (time_of(at)) }
                None => span .na { " · no window" },
            }
        } @else {
            span .closed { "closed" }
            @if let Some(why) = &t.window_note { ": " (why) }
        }
    }
}

fn auto(a: &Auto, series: &BTreeMap<String, Vec<SeriesInfo>>) -> Markup {
    match a {
        Auto::Chosen {
            series: key,
            weekday,
            hour,
            mean,
            overall_mean,
            hours_with_data,
            days_of_history,
        } => {
            let unit = series
                .values()
                .flatten()
                .find(|i| &i.key == key)
                .map_or(Unit::None, |i| Unit::parse(&i.unit));
            html! {
                strong { (weekday) " " (format!("{hour:02}:00–{:02}:00", (hour + 1) % 24)) }
                ", the quietest hour of the week: mean " (value(*mean, unit))
                " against " (value(*overall_mean, unit)) " overall"
                span .sub {
                    " (" code { (key) } ", " (format!("{days_of_history:.0}")) " days, "
                    (hours_with_data) " of 168 hours with data)"
                }
            }
        }
        Auto::Pending { pending } => html! {
            span .pending { "not chosen yet" } ": " (pending)
        },
    }
}

fn runs(s: &Section, now: Ts) -> Markup {
    html! {
        h3 .runs-h { "Recent runs" }
        div .runs-wrap {
            table .runs {
                thead {
                    tr {
                        th scope="col" { "Run" }
                        th scope="col" { "Task" }
                        th scope="col" { "Trigger" }
                        th scope="col" { "Status" }
                        th scope="col" { "Started" }
                        th scope="col" .num { "Took" }
                        th scope="col" .num { "Rows" }
                        th scope="col" .err { "Error" }
                    }
                }
                tbody {
                    @for r in &s.runs {
                        tr id=(format!("maint-run-{}", r.id)) class=(run_status(r).0) {
                            td .id data-label="Run" { (r.id) }
                            td data-label="Task" { (r.task) " " span .sub { (r.kind) } }
                            td .trigger data-label="Trigger" { (r.trigger.as_str().replace('_', " ")) }
                            td .status data-label="Status" { (status_badge(r)) }
                            td .started data-label="Started" { (time(r.started_ms)) }
                            td .num data-label="Took" { (duration(r, now)) }
                            td .num data-label="Rows" { (count(r.rows_changed)) }
                            td .err data-label="Error" { (r.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}
