//! Maintenance runs end to end, against the real PostgreSQL on 127.0.0.1:
//! the CLI (plan, dry run, run, runs, show, rollback, rollback from a
//! backup dir alone with the history file gone, the window), the
//! guard stopping a run between batches, the agent and the CLI never
//! running one task at once, and the API starting a run and a rollback.
//! Each test makes its own schema and drops it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{
    Agent, Table, free_port, get, history_sql, psql, request, stderr, stdout, temp_dir, upkeep,
    wait_for, write_file,
};

/// A config with the task `trim` on `table`, guarded by `guard` (a tcp
/// probe on `guard_addr`), and `extra` lines in the task's table.
fn config(dir: &Path, table: &str, guard_addr: &str, extra: &str, api: &str) -> PathBuf {
    write_file(
        dir,
        "agent.toml",
        &format!(
            "[agent]\ninterval = \"1s\"\n\n{api}\n\
             [probe.db]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1 port=5432 dbname=postgres\"\nuser = \"postgres\"\n\n\
             [probe.gate]\nkind = \"tcp\"\naddress = \"{guard_addr}\"\n\n\
             [maintenance.trim]\nkind = \"postgres_retention\"\nprobe = \"db\"\ntable = \"{table}\"\n\
             timestamp_column = \"created_at\"\nolder_than = \"30d\"\nguard = [\"db\", \"gate\"]\n{extra}\n"
        ),
    )
}

/// The `[api]` table of an agent on `port` whose mutating routes take the
/// token `m41nt-t0ken` (from a 0600 file in `dir`).
pub(crate) fn api_with_token(dir: &Path, port: u16) -> String {
    let token = write_file(dir, "token", "m41nt-t0ken\n");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        token.display()
    )
}

fn cli(cfg: &Path, data: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["maintenance"];
    all.extend_from_slice(args);
    let cfg = cfg.to_str().unwrap().to_string();
    let data = data.to_str().unwrap().to_string();
    let mut full: Vec<&str> = all.clone();
    full.extend(["--config", &cfg, "--data-dir", &data]);
    upkeep(&full)
}

fn ledger_status(data: &Path, run: i64) -> String {
    history_sql(data)
        .query_row(
            "SELECT status FROM maintenance_runs WHERE id = ?1",
            [run],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn plan_dry_run_run_show_and_rollback_from_the_cli() {
    let t = Table::new("upkeep_mr", 20_000, 180); // 20k rows over 41.6 days
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let cfg = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        "batch_size = 2000\npause = \"0s\"",
        "",
    );
    let data = dir.path().join("data");
    let before = t.checksum();
    let old = t.count("WHERE created_at < now() - interval '30 days'");
    assert!(old > 5_000 && old < 7_000, "{old}");

    let out = cli(&cfg, &data, &["plan", "trim"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("rows: {old}")), "{text}");
    assert_eq!(t.checksum(), before, "plan changed the table");

    let out = cli(&cfg, &data, &["run", "trim", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["success"], true, "{doc}");
    assert_eq!(doc["tasks"][0]["details"]["dry_run"], true);
    assert_eq!(doc["tasks"][0]["details"]["rows_changed"], 0);
    assert_eq!(t.checksum(), before, "a dry run changed the table");

    let out = cli(&cfg, &data, &["run", "trim"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let task = &doc["tasks"][0];
    assert_eq!(task["name"], "trim");
    assert_eq!(task["success"], true, "{doc}");
    assert!(task["duration_ms"].as_i64().unwrap() > 0, "{doc}");
    assert_eq!(task["details"]["rows_changed"], old, "{doc}");
    assert!(task["details"]["batches"].as_u64().unwrap() >= 3, "{doc}");
    assert_eq!(task["details"]["verdict"]["ok"], true, "{doc}");
    assert_eq!(doc["errors"], serde_json::json!([]));
    let run_id = task["details"]["run_id"].as_i64().unwrap();
    assert_eq!(t.count("WHERE created_at < now() - interval '30 days'"), 0);
    assert_eq!(t.count(""), 20_000 - old);

    let out = cli(&cfg, &data, &["runs"]);
    let text = stdout(&out);
    assert!(
        text.contains("succeeded (dry)") && text.contains("succeeded"),
        "{text}"
    );
    let out = cli(&cfg, &data, &["show", &run_id.to_string()]);
    let text = stdout(&out);
    for step in ["gate", "plan", "backup", "batch", "validate"] {
        assert!(text.contains(&format!(" {step} ")), "{step}: {text}");
    }
    let out = cli(&cfg, &data, &["list"]);
    assert!(
        stdout(&out).contains(&format!("{run_id} succeeded")),
        "{}",
        stdout(&out)
    );

    let out = cli(&cfg, &data, &["rollback", &run_id.to_string()]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        t.checksum(),
        before,
        "the rollback did not restore the table exactly"
    );
    assert_eq!(ledger_status(&data, run_id), "rolled_back");
    let out = cli(&cfg, &data, &["rollback", &run_id.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already rolled back"),
        "{}",
        stderr(&out)
    );

    // Unknown names are usage errors.
    let out = cli(&cfg, &data, &["run", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no maintenance task `nope`"),
        "{}",
        stderr(&out)
    );
    let out = cli(&cfg, &data, &["show", "999"]);
    assert_eq!(out.status.code(), Some(2));
    drop(guard);
}

/// A run's backup is private whatever the umask of the shell that runs
/// it: under `umask 000` the directories are still 0750, the archive and
/// the restore journal a rollback writes 0640.
#[test]
fn backups_are_0750_and_0640_under_a_permissive_umask() {
    use std::os::unix::fs::PermissionsExt;

    let t = Table::new("upkeep_bm", 2_000, 3600); // 2k rows over 83 days
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let cfg = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        "batch_size = 500\npause = \"0s\"",
        "",
    );
    let data = dir.path().join("data");
    let under_umask_000 = |args: &[&str]| {
        Command::new("sh")
            .args(["-c", "umask 000; exec \"$0\" \"$@\""])
            .arg(crate::util::bin())
            .arg("maintenance")
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("UPKEEP_CONFIG")
            .env_remove("STATE_DIRECTORY")
            .env("UPKEEP_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = under_umask_000(&["run", "trim"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let run_id = doc["tasks"][0]["details"]["run_id"].as_i64().unwrap();
    let out = under_umask_000(&["rollback", &run_id.to_string()]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let backups = data.join("backups");
    let run_dir = backups.join("trim").join(run_id.to_string());
    for d in [backups.clone(), backups.join("trim"), run_dir.clone()] {
        assert_eq!(mode(&d), 0o750, "{}", d.display());
    }
    for f in ["rows.jsonl.gz", "restored.jsonl"] {
        let f = run_dir.join(f);
        assert_eq!(mode(&f), 0o640, "{}", f.display());
    }
    drop(guard);
}

#[test]
fn a_closed_window_refuses_the_run_unless_told_to_ignore_it() {
    let t = Table::new("upkeep_mr", 2_000, 3_600);
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    // A one-minute window twelve hours from now (UTC).
    let now = chrono::Utc::now();
    let open = now + chrono::Duration::hours(12);
    let close = open + chrono::Duration::minutes(1);
    let window = format!(
        "window = \"{}-{}\"\ntimezone = \"UTC\"",
        open.format("%H:%M"),
        close.format("%H:%M")
    );
    let cfg = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        &window,
        "",
    );
    let data = dir.path().join("data");
    let before = t.checksum();
    let out = cli(&cfg, &data, &["run", "trim"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refused: outside the window"),
        "{}",
        stderr(&out)
    );
    assert_eq!(t.checksum(), before);
    let out = cli(&cfg, &data, &["run", "trim", "--ignore-window"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(t.count("WHERE created_at < now() - interval '30 days'"), 0);
    drop(guard);
}

#[test]
fn a_guard_turning_unhealthy_stops_the_run_between_batches() {
    let t = Table::new("upkeep_mr", 40_000, 120); // 40k rows over 55 days: ~18k old
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let addr = guard.local_addr().unwrap().to_string();
    let cfg = config(
        dir.path(),
        &t.name(),
        &addr,
        "batch_size = 500\npause = \"300ms\"\nbatch_target = \"1s\"",
        "",
    );
    let data = dir.path().join("data");
    let old = t.count("WHERE created_at < now() - interval '30 days'");
    let child = Command::new(crate::util::bin())
        .args(["maintenance", "run", "trim", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once two batches are in the ledger, the guarded service goes away.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let batches: i64 = if data.join("history.db").exists() {
            history_sql(&data)
                .query_row(
                    "SELECT count(*) FROM maintenance_steps WHERE step = 'batch'",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(0)
        } else {
            0
        };
        if batches >= 2 {
            break;
        }
        assert!(Instant::now() < end, "the run did not reach two batches");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(guard);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("aborted: stopped between batches: guarded probe unhealthy: gate:"),
        "{err}"
    );
    let conn = history_sql(&data);
    let (status, rows): (String, i64) = conn
        .query_row(
            "SELECT status, rows_changed FROM maintenance_runs ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "aborted");
    // It stopped early, and every row is in the table or was counted out.
    let left_old = t.count("WHERE created_at < now() - interval '30 days'");
    assert!(left_old > 0, "the run finished before the guard stopped it");
    assert_eq!(t.count(""), 40_000 - rows);
    assert_eq!(left_old, old - rows);
    let abort: String = conn
        .query_row(
            "SELECT detail FROM maintenance_steps WHERE step = 'abort'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        abort.starts_with("guarded probe unhealthy: gate: "),
        "{abort}"
    );
}

/// POST over the socket with the test token.
pub(crate) fn post(port: u16, path: &str) -> crate::util::Answer {
    request(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer m41nt-t0ken\r\nContent-Length: 0\r\n\r\n"
        ),
    )
    .expect("the agent answers")
}

pub(crate) fn wait_status(port: u16, run: i64, want: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = get(port, &format!("/api/v1/maintenance/runs/{run}")).unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["run"]["status"] == want {
            return v;
        }
        assert!(Instant::now() < end, "run {run} never reached {want}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_agent_and_the_cli_never_run_one_task_at_once_and_the_api_runs_and_rolls_back() {
    let t = Table::new("upkeep_mr", 30_000, 120);
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let port = free_port();
    let api = api_with_token(dir.path(), port);
    let cfg = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        "batch_size = 1000\npause = \"100ms\"\nbatch_target = \"1s\"",
        &api,
    );
    let data = dir.path().join("data");
    let before = t.checksum();
    let agent = Agent::start(Some(&cfg), &data, port);

    let (code, body) = get(port, "/api/v1/maintenance").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["tasks"][0]["name"], "trim");
    assert_eq!(v["tasks"][0]["schedule"], "manual only");
    assert_eq!(v["tasks"][0]["window_open"], true);
    assert_eq!(v["tasks"][0]["guards"], serde_json::json!(["db", "gate"]));

    // Without the token: refused.
    let r = request(port, &format!("POST /api/v1/maintenance/trim/run HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 0\r\n\r\n")).unwrap();
    assert_eq!(r.code, 401, "{}", r.body);
    assert_eq!(post(port, "/api/v1/maintenance/nope/run").code, 404);

    let r = post(port, "/api/v1/maintenance/trim/run");
    assert_eq!(r.code, 202, "{}", r.body);
    let run: i64 = serde_json::from_str::<Value>(&r.body).unwrap()["run_id"]
        .as_i64()
        .unwrap();
    // While the agent's run holds the task, the CLI and the API are refused.
    let out = cli(&cfg, &data, &["run", "trim"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("task `trim` is already running (pid ") && err.contains("started by api"),
        "{err}"
    );
    let r = post(port, "/api/v1/maintenance/trim/run");
    assert_eq!(r.code, 409, "{}", r.body);
    assert!(r.body.contains("already running"), "{}", r.body);

    let done = wait_status(port, run, "succeeded");
    assert_eq!(done["tasks"][0]["success"], true, "{done}");
    assert_eq!(done["run"]["trigger"], "api");
    assert!(
        done["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "batch")
    );
    assert_eq!(t.count("WHERE created_at < now() - interval '30 days'"), 0);
    // Only one run happened.
    let (_, body) = get(port, "/api/v1/maintenance/runs").unwrap();
    let runs: Value = serde_json::from_str(&body).unwrap();
    let real: Vec<&Value> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] != "refused")
        .collect();
    assert_eq!(real.len(), 1, "{runs}");

    let r = post(port, &format!("/api/v1/maintenance/runs/{run}/rollback"));
    assert_eq!(r.code, 202, "{}", r.body);
    wait_status(port, run, "rolled_back");
    assert_eq!(t.checksum(), before);
    let r = post(port, &format!("/api/v1/maintenance/runs/{run}/rollback"));
    assert_eq!(r.code, 409, "{}", r.body);
    assert_eq!(
        post(port, "/api/v1/maintenance/runs/99999/rollback").code,
        404
    );
    assert_eq!(post(port, "/api/v1/maintenance/runs/x/rollback").code, 400);

    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    drop(guard);
}

#[test]
fn status_changes_during_a_run_are_marked_with_the_run() {
    let t = Table::new("upkeep_mr", 30_000, 120);
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let flip = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let api = format!(
        "{}\n[probe.flip]\nkind = \"tcp\"\naddress = \"{}\"\nfailure_threshold = 1\n",
        api_with_token(dir.path(), port),
        flip.local_addr().unwrap()
    );
    // About 9k old rows at 500 a batch, 400 ms apart: several seconds
    // (a batch_target of 1s keeps every batch at batch_size, so the run's
    // length follows from its batch count, not from pacing on time).
    let cfg = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        "batch_size = 500\npause = \"400ms\"\nbatch_target = \"1s\"",
        &api,
    );
    let data = dir.path().join("data");
    let agent = Agent::start(Some(&cfg), &data, port);
    let events = |probe: &str| -> Vec<Value> {
        let (_, body) = get(port, &format!("/api/v1/events?probe={probe}")).unwrap();
        serde_json::from_str::<Value>(&body).unwrap()["events"]
            .as_array()
            .unwrap()
            .clone()
    };
    crate::util::wait_for("flip healthy", || {
        events("flip").iter().any(|e| e["to_status"] == "healthy")
    });
    let r = post(port, "/api/v1/maintenance/trim/run");
    assert_eq!(r.code, 202, "{}", r.body);
    let run: i64 = serde_json::from_str::<Value>(&r.body).unwrap()["run_id"]
        .as_i64()
        .unwrap();
    drop(flip);
    crate::util::wait_for("flip unhealthy", || {
        events("flip").iter().any(|e| e["to_status"] == "unhealthy")
    });
    let done = wait_status(port, run, "succeeded");
    let list = events("flip");
    let healthy = list.iter().find(|e| e["to_status"] == "healthy").unwrap();
    let unhealthy = list.iter().find(|e| e["to_status"] == "unhealthy").unwrap();
    assert_eq!(healthy["maintenance_run_id"], Value::Null, "{healthy}");
    assert_eq!(unhealthy["maintenance_run_id"], run, "{unhealthy} {done}");
    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    drop(guard);
}

#[test]
fn an_auto_window_picks_the_quietest_hour_and_shows_the_figures() {
    use chrono::{Datelike, Timelike};
    use upkeep::sample::{SeriesKey, Unit, now_ms};
    use upkeep::store::writer::Sample;
    let dir = temp_dir();
    let data = dir.path().join("data");
    // Eight days of host CPU every 10 minutes: busy by day, calm at night,
    // and nearly idle in one hour of the week, two days ago.
    let now = now_ms();
    let hour = 3_600_000;
    let quiet = (now - 2 * 86_400_000) / hour * hour;
    let week = 7 * 86_400_000;
    let start = now - 8 * 86_400_000;
    let mut w = crate::util::temp_writer(&data, &upkeep::config::HistoryConfig::default(), start);
    let key = SeriesKey::new("host", "cpu_used_ratio", &[]);
    let id = w.series_id(&key, Unit::Ratio, start).unwrap().unwrap();
    let mut ts = start;
    while ts < now - 60_000 {
        let hod = (ts / hour) % 24;
        let in_quiet = (ts - quiet).rem_euclid(week) < hour;
        let value = if in_quiet {
            0.01
        } else if (8..20).contains(&hod) {
            0.7
        } else {
            0.2
        };
        w.write(
            &[Sample {
                series: id,
                ts,
                value,
            }],
            &[],
            ts,
        )
        .unwrap();
        ts += 600_000;
    }
    w.end_run(ts).unwrap();
    drop(w);
    let q = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(quiet).unwrap();
    let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        [q.weekday().num_days_from_monday() as usize];

    let guard = crate::util::Gate::new();
    let port = free_port();
    let cfg = config(
        dir.path(),
        "public.upkeep_no_such_table",
        &guard.local_addr().unwrap().to_string(),
        "window = \"auto\"\ntimezone = \"UTC\"",
        &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let out = cli(&cfg, &data, &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let want = format!(
        "auto: {day} {:02}:00-{:02}:00 is the quietest hour of the week for host.cpu_used_ratio (mean 0.0100",
        q.hour(),
        (q.hour() + 1) % 24
    );
    assert!(text.contains(&want), "{want}\n{text}");
    assert!(text.contains("days of history)"), "{text}");

    let agent = Agent::start(Some(&cfg), &data, port);
    let (code, body) = get(port, "/api/v1/maintenance").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let auto = &v["tasks"][0]["auto"];
    assert_eq!(auto["weekday"], day, "{v}");
    assert_eq!(auto["hour"], q.hour(), "{v}");
    assert_eq!(auto["series"], "host.cpu_used_ratio");
    assert!((auto["mean"].as_f64().unwrap() - 0.01).abs() < 1e-9, "{v}");
    assert!(auto["overall_mean"].as_f64().unwrap() > 0.2, "{v}");
    assert!(auto["days_of_history"].as_f64().unwrap() >= 7.9, "{v}");
    // The next start is that hour next week (or later this week).
    let next = v["tasks"][0]["next_start"].as_str().unwrap();
    let next = chrono::DateTime::parse_from_rfc3339(next).unwrap();
    assert_eq!(
        (
            next.weekday().num_days_from_monday(),
            next.hour(),
            next.minute()
        ),
        (q.weekday().num_days_from_monday(), q.hour(), 0),
        "{v}"
    );
    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    drop(guard);
}

#[test]
fn sigterm_stops_a_run_at_a_safe_point_and_the_agent_exits_cleanly() {
    let t = Table::new("upkeep_mr", 40_000, 120);
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let port = free_port();
    let api = api_with_token(dir.path(), port);
    let cfg = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        "batch_size = 500\npause = \"500ms\"\nbatch_target = \"1s\"",
        &api,
    );
    let data = dir.path().join("data");
    let old = t.count("WHERE created_at < now() - interval '30 days'");
    let agent = Agent::start(Some(&cfg), &data, port);
    let r = post(port, "/api/v1/maintenance/trim/run");
    assert_eq!(r.code, 202, "{}", r.body);
    let run: i64 = serde_json::from_str::<Value>(&r.body).unwrap()["run_id"]
        .as_i64()
        .unwrap();
    crate::util::wait_for("two batches", || {
        let (_, body) = get(port, &format!("/api/v1/maintenance/runs/{run}")).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["step"] == "batch")
            .count()
            >= 2
    });
    agent.signal(libc::SIGTERM);
    let (code, took, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(ledger_status(&data, run), "aborted");
    let (error, rows): (String, i64) = history_sql(&data)
        .query_row(
            "SELECT error, rows_changed FROM maintenance_runs WHERE id = ?1",
            [run],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(error, "stopped between batches: the agent is stopping");
    // Every batch it recorded is done, and nothing else.
    assert_eq!(
        t.count("WHERE created_at < now() - interval '30 days'"),
        old - rows
    );
    assert!(rows > 0 && rows < old, "{rows} of {old}");
    drop(guard);
}

#[test]
fn the_agent_runs_both_kinds_on_their_schedule() {
    let t = Table::new("upkeep_mr", 5_000, 900);
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let port = free_port();
    let api = format!("[api]\nlisten = \"127.0.0.1:{port}\"\n");
    let extra = format!(
        "schedule = \"* * * * *\"\n\n[maintenance.stats]\nkind = \"postgres_analyze\"\nprobe = \"db\"\n\
         tables = [\"{}\"]\nvacuum = true\nschedule = \"* * * * *\"\n",
        t.name()
    );
    let cfg = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        &extra,
        &api,
    );
    let data = dir.path().join("data");
    let agent = Agent::start(Some(&cfg), &data, port);
    let (_, body) = get(port, "/api/v1/maintenance").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    for task in v["tasks"].as_array().unwrap() {
        assert_eq!(task["schedule"], "cron `* * * * *` (local time)", "{task}");
        assert!(task["next_start"].is_string(), "{task}");
    }
    // Both start at the next minute.
    let end = Instant::now() + Duration::from_secs(90);
    let runs = loop {
        let (_, body) = get(port, "/api/v1/maintenance/runs").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let done: Vec<Value> = v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["trigger"] == "schedule" && r["status"] != "running")
            .cloned()
            .collect();
        let tasks: std::collections::BTreeSet<&str> =
            done.iter().map(|r| r["task"].as_str().unwrap()).collect();
        if tasks.len() == 2 {
            break done;
        }
        assert!(Instant::now() < end, "no scheduled runs of both tasks: {v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    for r in &runs {
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    assert_eq!(t.count("WHERE created_at < now() - interval '30 days'"), 0);
    let stats = runs.iter().find(|r| r["task"] == "stats").unwrap();
    let (_, body) = get(port, &format!("/api/v1/maintenance/runs/{}", stats["id"])).unwrap();
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["tasks"][0]["details"]["kind"], "postgres_analyze",
        "{doc}"
    );
    assert_eq!(doc["tasks"][0]["details"]["verdict"]["ok"], true, "{doc}");
    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    drop(guard);
}

/// Backups are pruned by the agent: a retention run's archive past
/// `keep_backups` goes (recorded in the ledger, then refused for rollback),
/// while the newest successful run keeps its backup however old it is.
#[test]
fn the_agent_prunes_old_backups_but_keeps_the_newest_success() {
    let t = Table::new("upkeep_mp", 4_000, 1_200); // 4k rows over 55 days
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let cfg = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        "batch_size = 500\npause = \"0s\"",
        "[maintenance]\nkeep_backups = \"7d\"\n",
    );
    let data = dir.path().join("data");
    let run = |args: &[&str]| {
        let out = cli(&cfg, &data, args);
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
        doc["tasks"][0]["details"]["run_id"].as_i64().unwrap()
    };
    let first = run(&["run", "trim"]);
    // Rows that aged past the cutoff since: the second run has work too.
    psql(&format!(
        "UPDATE {} SET created_at = created_at - interval '40 days' WHERE id BETWEEN 1000 AND 1200",
        t.name()
    ));
    let second = run(&["run", "trim"]);
    let backup = |id: i64| data.join("backups").join("trim").join(id.to_string());
    assert!(backup(first).join("rows.jsonl.gz").exists());
    assert!(backup(second).join("rows.jsonl.gz").exists());
    // Both runs ended weeks ago, as far as the ledger knows.
    rusqlite::Connection::open(data.join("history.db"))
        .unwrap()
        .execute(
            "UPDATE maintenance_runs SET started_ms = started_ms - 20 * 86400000, ended_ms = ended_ms - 20 * 86400000",
            [],
        )
        .unwrap();

    let port = free_port();
    let api = format!("[api]\nlisten = \"127.0.0.1:{port}\"\n");
    let cfg_agent = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        "",
        &format!("{api}\n[maintenance]\nkeep_backups = \"7d\"\n"),
    );
    let agent = Agent::start(Some(&cfg_agent), &data, port);
    wait_for("the first run's backup to be pruned", || {
        !backup(first).exists()
    });
    assert!(
        backup(second).join("rows.jsonl.gz").exists(),
        "the newest successful run's backup was pruned"
    );
    let pruned: Option<i64> = history_sql(&data)
        .query_row(
            "SELECT backup_pruned_ms FROM maintenance_runs WHERE id = ?1",
            [first],
            |r| r.get(0),
        )
        .unwrap();
    assert!(pruned.is_some());
    drop(agent);

    let out = cli(&cfg, &data, &["show", &first.to_string()]);
    let text = stdout(&out);
    assert!(text.contains(" prune "), "{text}");
    assert!(text.contains("past keep_backups 7 days"), "{text}");
    let out = cli(&cfg, &data, &["rollback", &first.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("its backup was pruned at"),
        "{}",
        stderr(&out)
    );
    // The kept backup still rolls its run back.
    let out = cli(&cfg, &data, &["rollback", &second.to_string()]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let out = cli(&cfg, &data, &["runs"]);
    assert!(
        stdout(&out).contains("succeeded, then rolled back"),
        "{}",
        stdout(&out)
    );
}

/// Batch steps recorded so far for `run`, read from the history file.
fn batches_recorded(data: &Path, run: i64) -> i64 {
    history_sql(data)
        .query_row(
            "SELECT count(*) FROM maintenance_steps WHERE run_id = ?1 AND step = 'batch'",
            [run],
            |r| r.get(0),
        )
        .unwrap_or(0)
}

/// `kill -9` of the agent in the middle of an API-started run: after a
/// restart the row reads `interrupted`, ending at its last step, and the
/// run rolls back over the API to the table as it was.
#[test]
fn a_run_the_agent_was_killed_in_reads_interrupted_after_a_restart_and_rolls_back() {
    let t = Table::new("upkeep_mk", 40_000, 120); // ~18k rows past 30 days
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let port = free_port();
    let api = api_with_token(dir.path(), port);
    // Small batches with a pause: the run lasts far longer than the test
    // waits before the kill.
    let cfg = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        "batch_size = 200\npause = \"300ms\"",
        &api,
    );
    let data = dir.path().join("data");
    let before = t.checksum();
    let agent = Agent::start(Some(&cfg), &data, port);
    let r = post(port, "/api/v1/maintenance/trim/run");
    assert_eq!(r.code, 202, "{}", r.body);
    let run: i64 = serde_json::from_str::<Value>(&r.body).unwrap()["run_id"]
        .as_i64()
        .unwrap();
    wait_for("three batches", || batches_recorded(&data, run) >= 3);
    agent.signal(libc::SIGKILL);
    let (code, _, _) = agent.wait_exit(Duration::from_secs(5));
    assert_eq!(code, None, "killed by a signal");
    assert_eq!(ledger_status(&data, run), "running");
    let old_left = t.count("WHERE created_at < now() - interval '30 days'");

    let agent = Agent::start(Some(&cfg), &data, port);
    let v = wait_status(port, run, "interrupted");
    let steps = v["steps"].as_array().unwrap();
    let last = steps.last().unwrap();
    assert_eq!(last["step"], "end", "{v}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .starts_with("interrupted: "),
        "{v}"
    );
    // It ended at its last step before the kill.
    let before_end = &steps[steps.len() - 2];
    assert_eq!(before_end["step"], "batch", "{v}");
    assert_eq!(v["run"]["ended_at"], before_end["at"], "{v}");
    assert_eq!(last["at"], before_end["at"], "{v}");
    // The start settled the row without running the task again.
    assert_eq!(
        t.count("WHERE created_at < now() - interval '30 days'"),
        old_left
    );

    let r = post(port, &format!("/api/v1/maintenance/runs/{run}/rollback"));
    assert_eq!(r.code, 202, "{}", r.body);
    let v = wait_status(port, run, "rolled_back");
    assert_eq!(v["run"]["outcome"], "interrupted", "{v}");
    assert_eq!(v["run"]["ended_at"], before_end["at"], "{v}");
    assert_eq!(
        t.checksum(),
        before,
        "the rollback did not restore the table"
    );

    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    drop(guard);
}

/// `kill -9` of a CLI run, then a CLI rollback: the row is rolled back
/// with an end, and reads how it had ended (interrupted).
#[test]
fn a_cli_rollback_of_a_killed_cli_run_leaves_the_row_with_an_end() {
    let t = Table::new("upkeep_mk", 40_000, 120);
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let cfg = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        "batch_size = 200\npause = \"300ms\"",
        "",
    );
    let data = dir.path().join("data");
    let before = t.checksum();
    let mut child = Command::new(crate::util::bin())
        .args(["maintenance", "run", "trim", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .env_remove("UPKEEP_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the CLI run");
    let run_id = || -> Option<i64> {
        history_sql(&data)
            .query_row("SELECT max(id) FROM maintenance_runs", [], |r| r.get(0))
            .ok()
            .flatten()
    };
    wait_for("two batches", || {
        data.join(upkeep::store::FILE_NAME).exists()
            && run_id().is_some_and(|id| batches_recorded(&data, id) >= 2)
    });
    let run = run_id().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(ledger_status(&data, run), "running");

    let out = cli(&cfg, &data, &["rollback", &run.to_string()]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        t.checksum(),
        before,
        "the rollback did not restore the table"
    );
    let (status, outcome, ended): (String, Option<String>, Option<i64>) = history_sql(&data)
        .query_row(
            "SELECT status, outcome, ended_ms FROM maintenance_runs WHERE id = ?1",
            [run],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(status, "rolled_back");
    assert_eq!(outcome.as_deref(), Some("interrupted"));
    assert!(ended.is_some(), "a rolled-back run without an end");
    let out = cli(&cfg, &data, &["runs"]);
    assert!(
        stdout(&out).contains("interrupted, then rolled back"),
        "{}",
        stdout(&out)
    );
    drop(guard);
}

/// Copies the files of `from` into a new dir `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A run's backup dir keeps its ledger row in `run.json`: with the history
/// file deleted (and the backup dir copied elsewhere), the run is rolled
/// back from the dir alone, the table is restored exactly, a fresh ledger
/// row records it, and a second rollback is refused. A dir without
/// `run.json`, or naming a task not configured, is refused with a reason.
#[test]
fn a_run_rolls_back_from_its_backup_dir_alone_when_the_history_file_is_gone() {
    let t = Table::new("upkeep_fb", 6_000, 900); // 6k rows over 62.5 days
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let cfg = config(
        dir.path(),
        &t.name(),
        &guard.local_addr().unwrap().to_string(),
        "batch_size = 1000\npause = \"0s\"",
        "",
    );
    let data = dir.path().join("data");
    let before = t.checksum();
    let out = cli(&cfg, &data, &["run", "trim"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let run_id = doc["tasks"][0]["details"]["run_id"].as_i64().unwrap();
    assert_ne!(t.checksum(), before, "the run deleted rows");

    let backup = data.join("backups").join("trim").join(run_id.to_string());
    let kept: Value =
        serde_json::from_slice(&std::fs::read(backup.join("run.json")).expect("run.json")).unwrap();
    assert_eq!(kept["run"]["id"], run_id, "{kept}");
    assert_eq!(kept["run"]["task"], "trim", "{kept}");
    assert_eq!(kept["run"]["status"], "succeeded", "{kept}");
    assert!(kept["run"]["plan"]["summary"].is_string(), "{kept}");
    assert!(kept["run"]["backup"]["location"].is_string(), "{kept}");

    // The history file goes, and the backup dir is moved elsewhere.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(data.join(format!("history.db{suffix}")));
    }
    let moved = dir.path().join("saved-backup");
    copy_dir(&backup, &moved);
    std::fs::remove_dir_all(&backup).unwrap();
    let out = cli(&cfg, &data, &["rollback", &run_id.to_string()]);
    assert!(!out.status.success(), "no ledger row, no rollback by id");

    let from = moved.to_str().unwrap();
    let out = cli(&cfg, &data, &["rollback", "--from-backup", from]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        t.checksum(),
        before,
        "the rollback from the backup dir did not restore the table exactly"
    );
    let (id, task, status, outcome, plan): (i64, String, String, String, Option<String>) =
        history_sql(&data)
            .query_row(
                "SELECT id, task, status, outcome, plan FROM maintenance_runs",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .expect("a fresh ledger row records the rollback");
    assert_eq!(
        (task.as_str(), status.as_str(), outcome.as_str()),
        ("trim", "rolled_back", "succeeded")
    );
    assert!(plan.is_some(), "the fresh row keeps the run's plan");
    let detail: String = history_sql(&data)
        .query_row(
            "SELECT detail FROM maintenance_steps WHERE run_id = ?1 AND step = 'rollback'",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        detail.contains(&format!("the backup of run {run_id}")) && detail.contains(from),
        "{detail}"
    );
    let kept: Value =
        serde_json::from_slice(&std::fs::read(moved.join("run.json")).unwrap()).unwrap();
    assert_eq!(kept["run"]["status"], "rolled_back", "{kept}");
    let out = cli(&cfg, &data, &["rollback", "--from-backup", from]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already rolled back"),
        "{}",
        stderr(&out)
    );
    assert_eq!(t.checksum(), before);

    // Refusals that say why.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = cli(
        &cfg,
        &data,
        &["rollback", "--from-backup", empty.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("holds no run.json"),
        "{}",
        stderr(&out)
    );
    let other = dir.path().join("other");
    copy_dir(&moved, &other);
    let mut doc = kept.clone();
    doc["run"]["task"] = "gone".into();
    doc["run"]["status"] = "succeeded".into();
    std::fs::write(other.join("run.json"), doc.to_string()).unwrap();
    let out = cli(
        &cfg,
        &data,
        &["rollback", "--from-backup", other.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("task `gone`, which is not configured"),
        "{}",
        stderr(&out)
    );
    assert_eq!(t.checksum(), before);
    drop(guard);
}
