//! The maintenance commands' text output: `list`, `runs`, `show`, called by
//! `upkeep maintenance` ([`super`]).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::cli::table::{self, Table};
use crate::config::Config;
use crate::fmt::{count, rfc3339};
use crate::maintenance::agent;
use crate::maintenance::ledger::{RunRow, StepRow};
use crate::maintenance::schedule::Schedule;
use crate::maintenance::view::RunSummary;

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
    let mut t = Table::new(&["task", "kind", "next start", "schedule", "last run"]).wrap(&[3]);
    let mut notes = Vec::new();
    for (name, tc) in &config.maintenance {
        let (next, describe) = match Schedule::parse(&tc.common()) {
            Ok(s) => {
                let auto = agent::choose_auto_window(data_dir, config, name, &s);
                let choice = auto.as_ref().and_then(|a| a.as_ref().ok());
                if let Some(a) = &auto {
                    notes.push(format!("{name}: {}", agent::describe_auto(a)));
                }
                (
                    // In words from now (`--format json` has the time).
                    s.next_start(now, choice).map_or("-".to_string(), |t| {
                        format!(
                            "in {}",
                            table::duration(t.timestamp_millis() - now.timestamp_millis())
                        )
                    }),
                    s.describe(choice),
                )
            }
            Err(e) => ("-".into(), format!("invalid: {}", e[0].1)),
        };
        let last = last
            .iter()
            .find(|r| &r.task == name)
            .map_or("never".to_string(), |r| {
                format!(
                    "{} {}, {} ago",
                    r.id,
                    r.status,
                    table::duration(now.timestamp_millis() - r.started_ms)
                )
            });
        t.row([name.clone(), tc.kind().to_string(), next, describe, last]);
    }
    out.push_str(&t.render());
    // The auto window's reasons are sentences: each on a line of its own.
    for n in notes {
        let _ = writeln!(out, "{n}");
    }
    out
}

/// Every task as `GET /api/v1/maintenance` shows it (`--format json`).
pub fn list_json(
    config: &Config,
    data_dir: &std::path::Path,
    last: &[RunRow],
    now: DateTime<Utc>,
) -> String {
    let tasks: Vec<_> = config
        .maintenance
        .iter()
        .map(|(name, tc)| {
            let auto = Schedule::parse(&tc.common())
                .ok()
                .and_then(|s| agent::choose_auto_window(data_dir, config, name, &s));
            agent::task_view(name, tc, auto.as_ref(), last, now)
        })
        .collect();
    table::json(&serde_json::json!({ "tasks": tasks }))
}

fn duration(r: &RunRow) -> String {
    match r.ended_ms {
        Some(e) => table::duration(e - r.started_ms),
        // Ended without a recorded end (an older version's rollback).
        None if r.status.ended() => "-".into(),
        None => "running".into(),
    }
}

/// Runs, one line each (a long error wraps in its column).
pub fn runs(runs: &[RunRow]) -> String {
    let mut t = Table::new(&[
        "id", "task", "trigger", "status", "started", "took", "rows", "error",
    ])
    .right(&[0, 5, 6])
    .wrap(&[7]);
    for r in runs {
        t.row([
            r.id.to_string(),
            r.task.clone(),
            r.trigger.to_string(),
            if r.dry_run {
                format!("{} (dry)", r.status)
            } else {
                super::ledger::status_words(r)
            },
            rfc3339(r.started_ms),
            duration(r),
            count(r.rows_changed),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

/// Runs as `GET /api/v1/maintenance/runs` lists them (`--format json`).
pub fn runs_json(runs: &[RunRow]) -> String {
    let runs: Vec<_> = runs.iter().map(RunSummary::of).collect();
    table::json(&serde_json::json!({ "runs": runs }))
}

/// One run and its steps; a step's time is counted from the run's start.
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
        count(r.rows_changed)
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
    out.push('\n');
    let mut t = Table::new(&["after", "step", "rows", "took", "detail"])
        .right(&[0, 2, 3])
        .wrap(&[4]);
    for s in steps {
        t.row([
            format!("+{}", table::duration(s.ts_ms - r.started_ms)),
            s.step.to_string(),
            s.rows.map_or(String::new(), count),
            s.duration_ms.map_or(String::new(), table::duration),
            s.detail.clone(),
        ]);
    }
    out.push_str(&t.render());
    out
}
