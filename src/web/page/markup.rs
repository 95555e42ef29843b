//! The page's markup (maud): the document, its header, the host cards, the
//! probe list, the history chart's controls and the recent events (the
//! maintenance section is `super::maintenance`). Every
//! interpolated value is escaped by maud; there is no inline script or style
//! (the CSP forbids them), so bars are SVG attributes and colours classes.

use maud::{DOCTYPE, Markup, html};

use super::format::{full_in, level, percent, span, symbol, time};
use super::maintenance::{self, run_link};
use super::probe::{probe, sparkline};
use super::view::View;
use crate::fmt::bytes;
use crate::sample::Status;

fn asset(name: &str, version: &str) -> String {
    format!("/assets/{name}?v={version}")
}

pub(super) fn page(v: &View) -> Markup {
    let title = page_title(v);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) }
                link rel="icon" type="image/svg+xml" id="icon"
                    href=(asset(&format!("icon-{}.svg", v.overall), v.version));
                link rel="stylesheet" href=(asset("uPlot.min.css", v.version));
                link rel="stylesheet" href=(asset("page.css", v.version));
                script src=(asset("uPlot.iife.min.js", v.version)) defer {}
                script src=(asset("page.js", v.version)) defer {}
            }
            body {
                (header(v))
                p #conn .conn hidden role="status" {}
                main {
                    (super::alerts::section(v.alerts.as_ref(), v.now))
                    (host_section(v))
                    (probes_section(v))
                    (maintenance::section(&v.maintenance, &v.series, v.now))
                    (chart_section(v))
                    (events_section(v))
                }
                footer {
                    "upkeep " (v.version) " · JSON: "
                    a href="/api/v1/health" { "health" } " · "
                    a href="/api/v1/probes" { "probes" } " · "
                    a href="/api/v1/events" { "events" } " · "
                    a href="/metrics" { "metrics" }
                    " · charts by "
                    a href=(asset("uPlot.LICENSE", v.version)) { "uPlot" }
                }
            }
        }
    }
}

/// `✕ unhealthy · db1 · upkeep`: the status first, readable in a tab.
fn page_title(v: &View) -> String {
    format!(
        "{} {} · {} · upkeep",
        symbol(v.overall),
        v.overall,
        v.hostname
    )
}

fn header(v: &View) -> Markup {
    let st = v.overall.as_str();
    html! {
        // The script takes the title and icon of a refreshed page from here.
        header #head .top data-live data-title=(page_title(v)) data-status=(st) {
            div .brand {
                span .app { "upkeep" }
                h1 { (v.hostname) }
            }
            div class={ "overall s-" (st) } {
                span .sym aria-hidden="true" { (symbol(v.overall)) }
                strong { (st) }
                span .count { (v.summary) }
            }
            p .meta {
                "version " (v.version)
                " · agent started " (time(v.started)) " (" (span(v.now - v.started)) " ago)"
                " · updated " (time(v.now))
            }
        }
    }
}

/// A horizontal bar of `ratio` (0..=1), coloured by level.
fn bar(ratio: f64) -> Markup {
    let w = (ratio.clamp(0.0, 1.0) * 100.0 * 10.0).round() / 10.0;
    html! {
        svg .bar viewBox="0 0 100 4" preserveAspectRatio="none" aria-hidden="true" {
            rect .track width="100" height="4" rx="1" {}
            rect class={ "fill " (level(ratio)) } width=(w) height="4" rx="1" {}
        }
    }
}

fn host_section(v: &View) -> Markup {
    html! {
        section #host .host data-live aria-labelledby="host-h" {
            h2 #host-h { "Host" }
            @match &v.host {
                None => p .empty { "No host figures yet: the host probe has not reported." },
                Some(h) => div .cards {
                    div .card {
                        h3 { "CPU" }
                        @if let Some(c) = h.cpu {
                            p .big { (percent(c)) }
                            (bar(c))
                        } @else {
                            p .big .na { "—" }
                        }
                        p .sub {
                            @if h.cores > 0 { (h.cores) " cores · " }
                            (h.cpu_spark.span_text(v.now))
                        }
                        (sparkline(&h.cpu_spark, v.now))
                    }
                    div .card {
                        h3 { "Memory" }
                        @if let Some((used, total)) = h.memory {
                            p .big { (percent(used / total.max(1.0))) }
                            (bar(used / total.max(1.0)))
                            p .sub { (bytes(used)) " of " (bytes(total)) }
                        } @else { p .big .na { "—" } }
                    }
                    div .card {
                        h3 { "Swap" }
                        @match h.swap {
                            Some((used, total)) if total > 0.0 => {
                                p .big { (percent(used / total)) }
                                (bar(used / total))
                                p .sub { (bytes(used)) " of " (bytes(total)) }
                            }
                            Some(_) => { p .big .na { "none" } p .sub { "no swap configured" } }
                            None => { p .big .na { "—" } }
                        }
                    }
                    @for d in &h.disks {
                        div .card {
                            h3 { "Disk " code { (d.mount) } }
                            @let ratio = d.used / (d.used + d.available).max(1.0);
                            p .big { (percent(ratio)) }
                            (bar(ratio))
                            p .sub { (bytes(d.used)) " used · " (bytes(d.available)) " available" }
                            @if let Some(days) = d.full_in_days {
                                p class={ "forecast " @if days < 7.0 { "bad" } @else if days < 30.0 { "warn" } } {
                                    (full_in(days))
                                }
                            }
                        }
                    }
                    div .card {
                        h3 { "Network" }
                        @if let Some((rx, tx)) = h.net {
                            p .big .pair {
                                span title="received" { "↓ " (bytes(rx)) "/s" }
                                span title="sent" { "↑ " (bytes(tx)) "/s" }
                            }
                            p .sub { "received / sent · " (h.interfaces) " interface" @if h.interfaces != 1 { "s" } }
                        } @else { p .big .na { "—" } }
                    }
                    div .card {
                        h3 { "Load" }
                        @if let Some([l1, l5, l15]) = h.load {
                            p .big { (format!("{l1:.2}")) }
                            p .sub { "5 m " (format!("{l5:.2}")) " · 15 m " (format!("{l15:.2}")) }
                        } @else { p .big .na { "—" } }
                        @if let Some(u) = h.uptime_seconds {
                            p .sub { "host up " (span((u * 1000.0) as i64)) }
                        }
                    }
                }
            }
        }
    }
}

fn probes_section(v: &View) -> Markup {
    html! {
        section #probes .probes data-live aria-labelledby="probes-h" {
            h2 #probes-h { "Probes" }
            @if v.probes.is_empty() {
                p .empty { "No probes configured." }
            }
            @for p in &v.probes {
                (probe(v, p))
            }
            @if !v.probes.is_empty() {
                (probes_legend())
            }
            @if let Some(e) = &v.history_error {
                p .notice { "History is unavailable, so uptime and events are not shown: " (e) }
            }
        }
    }
}

/// What the probe rows' figures mean; probes are listed worst first.
fn probes_legend() -> Markup {
    html! {
        p #probes-legend .legend {
            "Worst first. Uptime per window: up (healthy or degraded) time over the time observed. "
            abbr title="observed" { "obs." }
            " = observed: the share of the window the agent was running and watching, shown when under 99.5 %; "
            "time the agent was not running is no data, never downtime."
        }
    }
}

fn chart_section(v: &View) -> Markup {
    const RANGES: [&str; 5] = ["1h", "24h", "7d", "30d", "1y"];
    html! {
        section #history .history aria-labelledby="history-h" {
            h2 #history-h { "History" }
            // Without series the form is empty; the script fills it from
            // `/api/v1/series` once history has some.
            form #chart-form .chart-controls method="get" action="/" {
                label for="series" .visually-hidden { "Series" }
                select #series name="series" {
                    @for (probe, list) in &v.series {
                        optgroup label=(probe) {
                            @for i in list {
                                option value=(i.key) selected[v.chart_key.as_deref() == Some(i.key.as_str())] {
                                    (i.key.strip_prefix(&format!("{probe}.")).unwrap_or(&i.key))
                                }
                            }
                        }
                    }
                }
                div .ranges role="group" aria-label="Range" {
                    @for r in RANGES {
                        button type="submit" name="range" value=(r) aria-pressed=(if r == "1h" { "true" } else { "false" }) { (r) }
                    }
                }
                (chart_extra())
            }
            ul #chosen .chosen aria-label="Series on the chart" {}
            div #chart .chart data-points="0" {}
            p #chart-note .note {
                @if v.series.is_empty() { "No series in history yet." } @else { "min–max band and average" }
            }
            noscript { p .note { "The chart needs JavaScript; the figures are at " code { "/api/v1/query?key=…&since=24h" } "." } }
        }
    }
}

/// The chart's controls that need the script (it shows them): overlay
/// up to four series, and a custom time range.
fn chart_extra() -> Markup {
    html! {
        div #chart-extra .chart-extra hidden {
            button #add-series type="button" title="draw the series chosen above too (up to 4)" { "+ add series" }
            span .custom role="group" aria-label="Custom range" {
                label for="from" { "from" }
                input #from type="datetime-local";
                label for="to" { "to" }
                input #to type="datetime-local";
                button #apply-range type="button" { "show" }
            }
        }
    }
}

fn events_section(v: &View) -> Markup {
    html! {
        section #events .events data-live aria-labelledby="events-h" {
            h2 #events-h { "Recent events" }
            @if v.events.is_empty() {
                p .empty {
                    @if v.history_error.is_some() { "History is unavailable." } @else { "No events yet." }
                }
            } @else {
                ol {
                    @for e in &v.events {
                        @let st = e.to_status.as_deref().and_then(Status::parse);
                        @let change = e.kind == "change";
                        li class=(match st { Some(s) => format!("s-{s}"), None if change => "change".into(), None => "agent".into() }) {
                            (time(e.ts_ms))
                            span .sym aria-hidden="true" { (st.map_or(if change { "Δ" } else { "•" }, symbol)) }
                            span .msg {
                                // What a probe saw change (an access change, a
                                // compliance check) names the probe that saw it.
                                @if change && let Some(p) = &e.probe {
                                    b .probe { (p) } ": "
                                }
                                (e.message)
                                // Something was changing this host when it happened.
                                @if let Some(n) = e.maintenance_run {
                                    " " a .during href=(run_link(&v.maintenance, n)) {
                                        "during maintenance run " (n)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
