//! One probe's row (status, latency, sparkline, uptime per window and per
//! day, reason) and the small SVG charts it draws; the sparkline is the host
//! CPU card's too.

use maud::{Markup, html};

use super::format::{
    encode, percent, seconds, symbol, time_of, uptime_class, uptime_percent, value,
};
use super::view::{Day, ProbeView, Spark, View};
use crate::fmt::rfc3339;
use crate::sample::Ts;

pub(super) fn probe(v: &View, p: &ProbeView) -> Markup {
    let b = &p.body;
    let st = b.status.as_str();
    let chart = format!("/?series={}&range=1h#history", encode(&p.spark.key));
    html! {
        article class={ "probe s-" (st) } data-probe=(b.name) {
            div .state {
                span .sym aria-hidden="true" { (symbol(b.status)) }
                span .word { (st) }
            }
            div .name {
                h3 { (b.name) }
                span .kind { (b.kind) " · every " (format!("{}", b.interval_seconds)) " s" }
                @if !p.chart_keys.is_empty() {
                    " "
                    a .chartlink href=(format!("/?series={}&range=1h#history", encode(&p.chart_keys.join("\n"))))
                        data-series=(p.chart_keys.join("\n")) title="this probe's series in the history chart" { "chart" }
                }
            }
            div .latency title=[p.latency.map(|_| "latency of the last check")] {
                @match p.latency {
                    Some(s) => { (seconds(s)) }
                    // The host probe has no latency to show.
                    None if b.kind == "host" => {}
                    None => span .na { "—" },
                }
                @if let Some(last) = &b.last {
                    span .ago { (time_of(&last.at)) }
                }
            }
            a .sparklink href=(chart) data-series=(p.spark.key) title="open in the history chart" {
                (sparkline(&p.spark, v.now))
            }
            div .uptime {
                @if b.uptime.is_empty() {
                    span .na { "uptime: no history" }
                }
                @for u in &b.uptime {
                    span .win title=(format!("observed {} of the last {}", percent(u.coverage_ratio), u.window)) {
                        span .wl { (u.window) }
                        @match u.uptime_ratio {
                            Some(r) => span class={ "wv " (uptime_class(r)) } { (uptime_percent(r)) },
                            None => span .wv .na { "no data" },
                        }
                        @if u.coverage_ratio < 0.995 {
                            span .cov title=(format!("observed: the agent watched this probe {} of the last {}; uptime counts only that time", percent(u.coverage_ratio), u.window)) {
                                abbr { "obs." } " " (percent(u.coverage_ratio))
                            }
                        }
                    }
                }
            }
            (day_bars(&p.days))
            @if let Some(reason) = &b.reason {
                p .reason { (reason) }
            } @else if let Some(err) = b.last.as_ref().and_then(|l| l.error.as_ref()) {
                p .reason { (err) }
            }
            @if let Some(since) = &b.status_since {
                p .since { (st) " since " (time_of(since)) }
            }
        }
    }
}

/// The last hour of a series as an SVG line, broken where ticks are missing.
pub(super) fn sparkline(s: &Spark, now: Ts) -> Markup {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    if s.points.is_empty() {
        return html! { span .spark .nodata { "no data in the last hour" } };
    }
    let window = s.window(now);
    let from = now - window;
    let (lo, hi) = s
        .points
        .iter()
        .fold((0.0f64, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let x = |t: Ts| ((t - from).max(0) as f64 / window as f64 * W * 10.0).round() / 10.0;
    let y = |v: f64| ((H - 1.0 - (v - lo) / (hi - lo) * (H - 2.0)) * 10.0).round() / 10.0;
    let gap = (s.interval_ms * 3).max(10_000);
    let mut d = String::new();
    let mut prev: Option<Ts> = None;
    for &(t, v) in &s.points {
        let cmd = match prev {
            Some(p) if t - p <= gap => 'L',
            _ => 'M',
        };
        d.push_str(&format!("{cmd}{} {}", x(t), y(v)));
        if cmd == 'M' {
            // A lone point still shows: a short level stroke.
            d.push_str("h0.8");
        }
        prev = Some(t);
    }
    let values = s.points.iter().map(|p| p.1);
    let min = values.clone().fold(f64::INFINITY, f64::min);
    let max = values.fold(f64::NEG_INFINITY, f64::max);
    let last = s.points.last().map_or(0.0, |p| p.1);
    let label = format!(
        "{}: now {}, min {}, max {}",
        s.span_text(now),
        value(last, s.unit),
        value(min, s.unit),
        value(max, s.unit)
    );
    html! {
        svg .spark viewBox=(format!("0 0 {W} {H}")) preserveAspectRatio="none" role="img" aria-label=(label) {
            title { (label) }
            path d=(d) vector-effect="non-scaling-stroke" {}
        }
    }
}

/// One bar per day: coloured by uptime, a short grey dash where nothing
/// was observed.
fn day_bars(days: &[Day]) -> Markup {
    if days.is_empty() {
        return html! {};
    }
    let known: Vec<f64> = days.iter().filter_map(|d| d.uptime).collect();
    let label = format!(
        "uptime per day, last {} days; {} with data",
        days.len(),
        known.len()
    );
    html! {
        div .days {
            svg viewBox=(format!("0 0 {} 16", days.len() * 5 - 1)) preserveAspectRatio="none" role="img" aria-label=(label) {
                @for (i, d) in days.iter().enumerate() {
                    @let date = rfc3339(d.start);
                    @let date = &date[..10];
                    @match d.uptime {
                        Some(u) => rect class=(uptime_class(u)) x=(i * 5) y="0" width="4" height="16" rx="0.8" {
                            title { (date) ": " (uptime_percent(u)) " up, " (percent(d.coverage)) " observed" }
                        },
                        None => rect .nodata x=(i * 5) y="6" width="4" height="4" rx="0.8" {
                            title { (date) ": no data" }
                        },
                    }
                }
            }
            span .dl { (days.len()) " days" }
            span .dr { "today" }
        }
    }
}
