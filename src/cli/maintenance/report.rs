//! The maintenance commands' text output: `list`, `runs`, `show`, called by
//! `upkeep maintenance` ([`super`]).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::fmt::rfc3339;
use crate::maintenance::agent;
use crate::maintenance::ledger::{RunRow, StepRow};
use crate::maintenance::schedule::Schedule;

/// Every task with its kind, schedule, next start and last run.
pub fn list(
    config: &Config,
    data_dir: &std::path::Path,
    last: &[RunRow],
    now: DateTime<Utc>,
) -> String {
    let mut out = String::new();
    if config.maintenance.is_empty() {
        out.push_str("no maintenance tasks are configured ([maintenance.NAME] in the config)\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24} {:<20} {:<26} {:<44} last run",
        "task", "kind", "next start", "schedule"
    );
    for (name, tc) in &config.maintenance {
        let mut auto_line = None;
        let (next, describe) = match Schedule::parse(&tc.common()) {
            Ok(s) => {
                let auto = agent::choose_auto_window(data_dir, config, name, &s);
                let choice = auto.as_ref().and_then(|a| a.as_ref().ok());
                auto_line = auto.as_ref().map(agent::describe_auto);
                (
                    s.next_start(now, choice)
                        .map_or("-".to_string(), |t| rfc3339(t.timestamp_millis())),
                    s.describe(choice),
                )
            }
            Err(e) => ("-".into(), format!("invalid: {}", e[0].1)),
        };
        let last = last
            .iter()
            .find(|r| &r.task == name)
            .map_or("never".to_string(), |r| {
                format!("{} {} at {}", r.id, r.status, rfc3339(r.started_ms))
            });
        let _ = writeln!(
            out,
            "{name:<24} {:<20} {next:<26} {describe:<44} {last}",
            tc.kind()
        );
        if let Some(a) = auto_line {
            let _ = writeln!(out, "{:<24} {a}", "");
        }
    }
    out
}

fn duration(r: &RunRow) -> String {
    match r.ended_ms {
        Some(e) => format!("{:.1}s", (e - r.started_ms) as f64 / 1000.0),
        // Ended without a recorded end (an older version's rollback).
        None if r.status.ended() => "-".into(),
        None => "running".into(),
    }
}

/// Runs, one line each.
pub fn runs(runs: &[RunRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6} {:<24} {:<9} {:<12} {:<26} {:>9} {:>10}  error",
        "id", "task", "trigger", "status", "started", "took", "rows"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{:>6} {:<24} {:<9} {:<12} {:<26} {:>9} {:>10}  {}",
            r.id,
            r.task,
            r.trigger,
            if r.dry_run {
                format!("{} (dry)", r.status)
            } else {
                super::ledger::status_words(r)
            },
            rfc3339(r.started_ms),
            duration(r),
            r.rows_changed,
            r.error.as_deref().unwrap_or("")
        );
    }
    out
}

/// One run and its steps.
pub fn show(r: &RunRow, steps: &[StepRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} of {} ({}), {} by {}{}",
        r.id,
        r.task,
        r.kind,
        r.status,
        r.trigger,
        if r.dry_run { ", dry run" } else { "" }
    );
    let _ = writeln!(
        out,
        "started {}, took {}, {} rows changed",
        rfc3339(r.started_ms),
        duration(r),
        r.rows_changed
    );
    if let Some(e) = &r.error {
        let _ = writeln!(out, "error: {e}");
    }
    if let Some(p) = &r.plan {
        let _ = writeln!(out, "plan: {}", p["summary"].as_str().unwrap_or(""));
    }
    if let Some(b) = &r.backup {
        let _ = writeln!(
            out,
            "backup: {} ({} rows)",
            b["location"].as_str().unwrap_or(""),
            b["rows"]
        );
    }
    if let Some(v) = &r.verdict {
        let _ = writeln!(
            out,
            "validation: {} — {}",
            if v["ok"] == true { "ok" } else { "FAILED" },
            v["detail"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(
        out,
        "\n{:<26} {:<9} {:>9} {:>9}  detail",
        "time", "step", "rows", "took"
    );
    for s in steps {
        let _ = writeln!(
            out,
            "{:<26} {:<9} {:>9} {:>9}  {}",
            rfc3339(s.ts_ms),
            s.step,
            s.rows.map_or(String::new(), |r| r.to_string()),
            s.duration_ms.map_or(String::new(), |d| format!("{d}ms")),
            s.detail
        );
    }
    out
}
