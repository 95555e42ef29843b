//! The Maintenance section's markup on hand-written task documents
//! (hostile names and errors, an auto choice, a pending one, open and closed
//! windows, no tasks, recent runs), and the agent's own document read back.

use std::collections::BTreeMap;

use super::markup::section;
use super::*;
use crate::maintenance::ledger::{RunStatus, Trigger};
use crate::sample::Ts;
use crate::store::reader::SeriesInfo;

const HOSTILE: &str = "<script>alert(1)</script>\"'&";
const NOW: Ts = 1_700_000_000_000;

fn run(id: i64, task: &str, status: &str, error: Option<&str>) -> RunRow {
    RunRow {
        id,
        task: task.into(),
        kind: "postgres_retention".into(),
        trigger: Trigger::Cli,
        dry_run: false,
        started_ms: NOW - 60_000,
        ended_ms: Some(NOW - 60_000 + 2_500),
        status: RunStatus::parse(status).expect("a ledger status"),
        outcome: None,
        backup_pruned_ms: None,
        rows_changed: 12_345,
        batches: 3,
        plan: None,
        backup: None,
        verdict: None,
        before: None,
        after: None,
        error: error.map(String::from),
    }
}

/// A task as the tasks document writes it.
fn task(doc: serde_json::Value) -> Task {
    Task {
        view: serde_json::from_value(doc).unwrap(),
        last: None,
    }
}

fn html_of(s: &Section) -> String {
    let series = BTreeMap::from([(
        "host".to_string(),
        vec![SeriesInfo {
            id: 1,
            key: "host.cpu_used_ratio".into(),
            probe: "host".into(),
            metric: "cpu_used_ratio".into(),
            labels: String::new(),
            unit: "ratio".into(),
        }],
    )]);
    section(s, &series, NOW).into_string()
}

/// The markup of the task named `name`, up to its end.
fn article<'a>(html: &'a str, name: &str) -> &'a str {
    let at = html.find(&format!("data-task=\"{name}\"")).unwrap();
    &html[at..at + html[at..].find("</article>").unwrap()]
}

#[test]
fn hostile_task_names_and_errors_are_escaped() {
    let mut t = task(serde_json::json!({
        "name": HOSTILE, "kind": "postgres_retention", "schedule": "manual only",
        "next_start": null, "window_open": true, "window_closes": null,
        "window_note": null, "auto": null, "guards": [HOSTILE],
    }));
    t.last = Some(run(7, HOSTILE, "failed", Some(HOSTILE)));
    let s = Section {
        tasks: vec![t],
        runs: vec![run(
            7,
            HOSTILE,
            "failed",
            Some("<img src=x onerror=alert(2)>"),
        )],
        tasks_error: None,
        ledger_error: Some(HOSTILE.into()),
        drills: Vec::new(),
    };
    let html = html_of(&s);
    assert!(!html.contains("<script>"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"));
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
    // Failed reads as a word and a symbol, not only a colour.
    let row = article(&html, "&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;");
    assert!(row.starts_with("data-task="), "{row}");
    assert!(row.contains("<span class=\"word\">failed</span>"), "{row}");
    assert!(row.contains("aria-hidden=\"true\">✕</span>"), "{row}");
    assert!(
        row.contains("12,345 rows") && row.contains("2.5 s"),
        "{row}"
    );
    assert!(!html.contains("style="));
}

#[test]
fn an_auto_choice_shows_its_hour_and_figures() {
    let t = task(serde_json::json!({
        "name": "trim", "kind": "postgres_retention",
        "schedule": "when the window opens: 03:00-04:00 on sat (local time)",
        "next_start": "2023-11-18T03:00:00.000Z", "window_open": false,
        "window_closes": null, "window_note": "outside the window 03:00-04:00 on sat",
        "auto": {
            "series": "host.cpu_used_ratio", "weekday": "sat", "hour": 3,
            "mean": 0.042, "overall_mean": 0.31, "hours_with_data": 168,
            "days_of_history": 27.9,
        },
        "guards": ["db"],
    }));
    assert!(matches!(t.auto, Some(Auto::Chosen { hour: 3, .. })));
    let html = html_of(&Section {
        tasks: vec![t],
        ..Section::default()
    });
    let row = article(&html, "trim");
    assert!(row.contains("<strong>sat 03:00–04:00</strong>"), "{row}");
    assert!(row.contains("mean 4.2% against 31% overall"), "{row}");
    assert!(row.contains("28 days, 168 of 168 hours with data"), "{row}");
    assert!(
        row.contains("<time datetime=\"2023-11-18T03:00:00.000Z\">2023-11-18 03:00:00 UTC</time>"),
        "{row}"
    );
    assert!(row.contains("never run"), "{row}");
}

#[test]
fn a_pending_auto_window_says_why() {
    let why = "3.2 days of `host.cpu_used_ratio` history; window = \"auto\" needs 7";
    let t = task(serde_json::json!({
        "name": "trim", "kind": "postgres_retention",
        "schedule": "when the window opens: auto (not chosen yet) (local time)",
        "next_start": null, "window_open": false, "window_closes": null,
        "window_note": "window = \"auto\" has not chosen an hour yet (it needs 7 days of history)",
        "auto": { "pending": why }, "guards": ["db"],
    }));
    assert!(matches!(&t.auto, Some(Auto::Pending { pending }) if pending == why));
    let html = html_of(&Section {
        tasks: vec![t],
        ..Section::default()
    });
    let row = article(&html, "trim");
    assert!(row.contains("not chosen yet</span>: 3.2 days of"), "{row}");
    assert!(row.contains("needs 7"), "{row}");
    assert!(row.contains("none yet"), "{row}");
    assert!(
        row.contains("<span class=\"closed\">closed</span>"),
        "{row}"
    );
}

#[test]
fn a_closed_window_says_which_and_an_open_one_until_when() {
    let closed = task(serde_json::json!({
        "name": "night", "kind": "postgres_analyze",
        "schedule": "when the window opens: 02:00-05:00 (UTC)",
        "next_start": "2023-11-15T02:00:00.000Z", "window_open": false,
        "window_closes": null, "window_note": "outside the window 02:00-05:00",
        "auto": null, "guards": ["db", "web"],
    }));
    let open = task(serde_json::json!({
        "name": "day", "kind": "postgres_analyze", "schedule": "cron `*/5 * * * *` inside 08:00-18:00 (UTC)",
        "next_start": "2023-11-14T22:15:00.000Z", "window_open": true,
        "window_closes": "2023-11-14T23:00:00.000Z", "window_note": null,
        "auto": null, "guards": ["db"],
    }));
    let html = html_of(&Section {
        tasks: vec![closed, open],
        ..Section::default()
    });
    let night = article(&html, "night");
    assert!(
        night.contains("<span class=\"closed\">closed</span>: outside the window 02:00-05:00"),
        "{night}"
    );
    assert!(
        night.contains("<code>db</code>, <code>web</code>"),
        "{night}"
    );
    assert!(!night.contains("Auto window"), "{night}");
    let day = article(&html, "day");
    assert!(
        day.contains(
            "<span class=\"open\">open</span> until <time datetime=\"2023-11-14T23:00:00.000Z\">"
        ),
        "{day}"
    );
}

#[test]
fn no_tasks_is_one_quiet_line_under_the_heading() {
    let html = html_of(&Section::default());
    assert!(html.contains("<h2 id=\"maintenance-h\">Maintenance</h2>"));
    assert!(html.contains("<p class=\"empty\">No maintenance tasks configured.</p>"));
    assert!(!html.contains("<table"), "{html}");
    // Tasks that cannot be read are not "no tasks".
    let html = html_of(&Section {
        tasks_error: Some("missing field `kind`".into()),
        ..Section::default()
    });
    assert!(!html.contains("No maintenance tasks configured"), "{html}");
    assert!(html.contains("The maintenance tasks cannot be shown: missing field `kind`"));
}

#[test]
fn recent_runs_show_status_in_words_and_link_from_events() {
    let mut running = run(9, "trim", "running", None);
    running.ended_ms = None;
    let s = Section {
        tasks: Vec::new(),
        runs: vec![running, run(8, "trim", "rolled_back", None)],
        ..Section::default()
    };
    let html = html_of(&s);
    let row = &html[html.find("id=\"maint-run-9\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("<span class=\"word\">running</span>"), "{row}");
    assert!(row.contains("1 min so far"), "{row}");
    assert!(html.contains("<span class=\"word\">rolled back</span>"));
    assert_eq!(run_link(&s, 8), "#maint-run-8");
    assert_eq!(run_link(&s, 3), "/api/v1/maintenance/runs/3");
}

#[test]
fn file_task_runs_show_their_kind_and_a_disk_pressure_start_in_words() {
    let mut clean = run(21, "tmp", "succeeded", None);
    clean.kind = "file_cleanup".into();
    clean.trigger = Trigger::DiskPressure;
    clean.rows_changed = 3;
    let mut rotate = run(
        22,
        "logs",
        "failed",
        Some("/var/log/a\\nb: rename: Read-only file system (EROFS, os error 30)"),
    );
    rotate.kind = "log_rotate".into();
    let mut t_clean = task(serde_json::json!({
        "name": "tmp", "kind": "file_cleanup", "schedule": "manual only",
        "next_start": null, "window_open": true, "window_closes": null,
        "window_note": null, "auto": null, "guards": [], "last_run": null
    }));
    t_clean.last = Some(clean.clone());
    let mut t_rotate = task(serde_json::json!({
        "name": "logs", "kind": "log_rotate", "schedule": "manual only",
        "next_start": null, "window_open": true, "window_closes": null,
        "window_note": null, "auto": null, "guards": [], "last_run": null
    }));
    t_rotate.last = Some(rotate.clone());
    let s = Section {
        tasks: vec![t_clean, t_rotate],
        runs: vec![rotate, clean],
        ..Section::default()
    };
    let html = html_of(&s);
    let a = article(&html, "tmp");
    assert!(
        a.contains("<span class=\"kind\">file_cleanup</span>"),
        "{a}"
    );
    assert!(a.contains("3 rows"), "{a}");
    let a = article(&html, "logs");
    assert!(a.contains("<span class=\"kind\">log_rotate</span>"), "{a}");
    let row = &html[html.find("id=\"maint-run-21\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains(">disk pressure<"), "{row}");
    let row = &html[html.find("id=\"maint-run-22\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("EROFS"), "{row}");
}

#[test]
fn runs_of_the_redis_kinds_show_with_their_kind_and_why_they_failed() {
    let mut cleanup = run(11, "cache-cleanup", "succeeded", None);
    cleanup.kind = "redis_cleanup".into();
    let mut warmup = run(
        12,
        "cache-warmup",
        "failed",
        Some(
            "validation failed: 1 of 1 URLs did not answer as expected: http://127.0.0.1:3000/home: connect: Connection refused",
        ),
    );
    warmup.kind = "cache_warmup".into();
    let html = html_of(&Section {
        runs: vec![warmup, cleanup],
        ..Section::default()
    });
    for (id, task, kind) in [
        (11, "cache-cleanup", "redis_cleanup"),
        (12, "cache-warmup", "cache_warmup"),
    ] {
        let row = &html[html.find(&format!("id=\"maint-run-{id}\"")).unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(
            row.contains(task) && row.contains(&format!("<span class=\"sub\">{kind}</span>")),
            "{row}"
        );
    }
    assert!(html.contains("http://127.0.0.1:3000/home: connect: Connection refused"));
}

#[test]
fn an_ended_run_without_an_end_is_not_running_so_far() {
    // Rolled back on demand by a version that recorded no end.
    let mut old = run(7, "trim", "rolled_back", None);
    old.ended_ms = None;
    let html = html_of(&Section {
        runs: vec![old],
        ..Section::default()
    });
    let row = &html[html.find("id=\"maint-run-7\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(!row.contains("so far"), "{row}");
    assert!(
        row.contains("<span class=\"word\">rolled back</span>"),
        "{row}"
    );
}

/// The seam: the agent's own document reads, for every kind of schedule.
#[test]
fn the_agent_s_tasks_document_reads() {
    let config = crate::config::Config::parse(
        "agent.toml",
        "[probe.db]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1 dbname=postgres\"\nuser = \"postgres\"\n\n\
         [maintenance.by_hand]\nkind = \"postgres_analyze\"\nprobe = \"db\"\n\n\
         [maintenance.nightly]\nkind = \"postgres_analyze\"\nprobe = \"db\"\n\
         window = \"02:00-05:00\"\ntimezone = \"UTC\"\n\n\
         [maintenance.quiet]\nkind = \"postgres_analyze\"\nprobe = \"db\"\nwindow = \"auto\"\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = Maintenance::new(std::sync::Arc::new(config), dir.path().to_path_buf());
    let s = gather(Some(&m), None);
    assert_eq!((s.tasks_error, s.ledger_error), (None, None));
    let names: Vec<&str> = s.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["by_hand", "nightly", "quiet"]);
    assert_eq!(s.tasks[0].schedule, "manual only");
    assert!(s.tasks[0].window_open && s.tasks[0].next_start.is_none());
    assert_eq!(s.tasks[1].guards, ["db"]);
    assert!(s.tasks[1].next_start.is_some());
    assert!(!s.tasks[2].window_open);
}

#[test]
fn the_last_passing_drill_shows_its_rto_and_rpo_and_a_failing_one_its_reason() {
    use crate::maintenance::ledger::{Doc, Ledger};
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open(dir.path()).unwrap();
    let ok = l
        .start_run(
            "drill",
            "restore_drill",
            Trigger::Schedule,
            false,
            NOW - 90_000,
        )
        .unwrap();
    l.set(
        ok,
        Doc::Verdict,
        &serde_json::json!({ "ok": true, "detail": "", "figures": { "rto_seconds": 42.5, "backup_age_seconds": 7200.0 } }),
    )
    .unwrap();
    l.finish(ok, NOW - 80_000, RunStatus::Succeeded, None)
        .unwrap();
    let bad = l
        .start_run(
            "drill",
            "restore_drill",
            Trigger::Schedule,
            false,
            NOW - 10_000,
        )
        .unwrap();
    l.finish(
        bad,
        NOW - 5_000,
        RunStatus::Failed,
        Some("pg_restore: error: could not read input file: end of file"),
    )
    .unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    let tasks = vec![task(serde_json::json!({
        "name": "drill", "kind": "restore_drill", "schedule": "manual only",
        "next_start": null, "window_open": true, "window_closes": null,
        "window_note": null, "auto": null, "guards": [],
    }))];
    let s = Section {
        drills: drills(&tasks, &reader),
        tasks,
        ..Section::default()
    };
    assert_eq!(
        s.drills[0].passed.map(|p| (p.0, p.2, p.3)),
        Some((ok, 42.5, 7200.0))
    );
    let html = html_of(&s);
    let at = html.find("Restore drills").expect("a drills block");
    let block = &html[at..];
    assert!(block.contains("RTO <span class=\"rto\">"), "{block}");
    assert!(block.contains("RPO <span class=\"rpo\">"), "{block}");
    assert!(block.contains("end of file"), "{block}");
}
