//! The command line: bad config is rejected with FILE:LINE:COL and exit 78
//! before anything starts; usage errors exit 2; the read commands answer from
//! a history file whether or not the agent runs.

use std::path::Path;

use upkeep::config::{Config, HistoryConfig, ProbeConfig};
use upkeep::sample::{SeriesKey, Unit};
use upkeep::store::Event;
use upkeep::store::writer::Sample;

use crate::util::{stderr, stdout, temp_dir, temp_writer, upkeep, write_file};

/// `check-config` and `run` both reject `text`; returns stderr.
fn rejected(text: &str) -> String {
    let dir = temp_dir();
    let cfg = write_file(dir.path(), "agent.toml", text);
    let check = upkeep(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(
        check.status.code(),
        Some(78),
        "check-config accepted:\n{text}"
    );
    let data = dir.path().join("data");
    let run = upkeep(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(
        run.status.code(),
        Some(78),
        "run accepted:\n{text}\n{}",
        stderr(&run)
    );
    assert!(!data.exists(), "nothing may start on a bad config");
    let err = stderr(&check);
    assert_eq!(err, stderr(&run), "run and check-config report alike");
    err.replace(cfg.to_str().unwrap(), "FILE")
}

#[test]
fn a_non_loopback_listen_without_a_token_file_is_refused() {
    let err = rejected("[api]\nlisten = \"0.0.0.0:8711\"\n");
    assert_eq!(
        err.trim(),
        "FILE:2:10: api.listen: 0.0.0.0:8711 is not a loopback address: set api.token_file too, or listen on 127.0.0.1"
    );
    let err = rejected("[api]\nallowed_hosts = [\"ok.example\", \"bad host/\"]\n");
    assert!(
        err.contains("api.allowed_hosts: `bad host/` is not a host name"),
        "{err}"
    );
}

/// `check-config` runs every check `run` makes of the token file at start,
/// and `run` reports a failed one as a config error (78), alike.
#[test]
fn a_token_file_run_would_refuse_is_refused_by_check_config_too() {
    let dir = temp_dir();
    let token = dir.path().join("token");
    let config = format!("[api]\ntoken_file = \"{}\"\n", token.display());
    let cases: [(&str, u32, &str); 4] = [
        ("", 0o600, "empty"),
        ("   \t\n", 0o600, "holds no token"),
        ("t0ken\n", 0o644, "mode 0644 lets others read"),
        ("t0ken\n", 0o660, "mode 0660"),
    ];
    for (text, mode, words) in cases {
        std::fs::write(&token, text).unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
        let err = rejected(&config);
        assert!(
            err.starts_with(&format!(
                "FILE: api.token_file: token file {}: ",
                token.display()
            )),
            "{text:?} {mode:o}: {err}"
        );
        assert!(err.contains(words), "{text:?} {mode:o}: {err}");
        assert!(!err.contains("t0ken\n"), "{err}");
    }
    std::fs::remove_file(&token).unwrap();
    let err = rejected(&config);
    assert!(err.contains("No such file"), "{err}");
    // A good token file passes.
    std::fs::write(&token, "t0ken\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let cfg = write_file(dir.path(), "agent.toml", &config);
    let out = upkeep(&["check-config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn hostile_or_mistaken_maintenance_names_are_config_errors_naming_the_field() {
    let base = "[probe.db]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1\"\nuser = \"u\"\n\n\
                [probe.web]\nkind = \"tcp\"\naddress = \"127.0.0.1:80\"\n\n\
                [maintenance.t]\nkind = \"postgres_retention\"\nolder_than = \"365d\"\n";
    let long = "a".repeat(64);
    for (extra, words) in [
        (
            "probe = \"db\"\ntable = \"audit_log; DROP TABLE x\"\ntimestamp_column = \"created_at\"".to_string(),
            "maintenance.t.table: `audit_log; DROP TABLE x` is not a plain identifier".to_string(),
        ),
        (
            "probe = \"db\"\ntable = '\"Audit\"'\ntimestamp_column = \"created_at\"".to_string(),
            "maintenance.t.table: `\"Audit\"`: quoted identifiers are not supported".to_string(),
        ),
        (
            format!("probe = \"db\"\ntable = \"{long}\"\ntimestamp_column = \"created_at\""),
            format!("maintenance.t.table: `{long}` is 64 bytes: PostgreSQL would truncate it to `{}`", &long[..63]),
        ),
        (
            "probe = \"db\"\ntable = \"audit_log\"\ntimestamp_column = \"created at\"".to_string(),
            "maintenance.t.timestamp_column: `created at` is not a plain identifier".to_string(),
        ),
        (
            "probe = \"web\"\ntable = \"audit_log\"\ntimestamp_column = \"created_at\"".to_string(),
            "maintenance.t.probe: `web` is a tcp probe; a postgres_retention task needs a postgres probe".to_string(),
        ),
        (
            "probe = \"db\"\ntable = \"audit_log\"\ntimestamp_column = \"created_at\"\nolder_then = \"1d\"".to_string(),
            "older_then".to_string(),
        ),
        (
            "probe = \"db\"\ntable = \"audit_log\"\ntimestamp_column = \"created_at\"\nwindow = \"25:00-26:00\"".to_string(),
            "maintenance.t.window: `25:00-26:00` is neither".to_string(),
        ),
        (
            "probe = \"db\"\ntable = \"audit_log\"\ntimestamp_column = \"created_at\"\nguard = [\"nope\"]".to_string(),
            "maintenance.t.guard: no probe `nope` is configured".to_string(),
        ),
    ] {
        let err = rejected(&format!("{base}{extra}\n"));
        assert!(err.contains(&words), "{extra}\n{err}");
        assert!(err.starts_with("FILE:"), "{err}");
    }
}

#[test]
fn a_typoed_key_names_its_line_and_column() {
    let err = rejected("[agent]\ninterval = \"10s\"\nintervl = \"5s\"\n");
    assert!(
        err.starts_with("FILE:3:1: unknown field `intervl`"),
        "{err}"
    );
}

#[test]
fn a_typo_inside_a_probe_table_is_an_error_not_ignored() {
    let err =
        rejected("[probe.db]\nkind = \"tcp\"\naddress = \"127.0.0.1:5432\"\nadress = \"x\"\n");
    assert!(err.starts_with("FILE:4:1: unknown field `adress`"), "{err}");
}

#[test]
fn a_wrong_type_names_the_value() {
    let err = rejected("[agent]\nfailure_threshold = \"three\"\n");
    assert!(
        err.starts_with("FILE:2:21: invalid type: string \"three\", expected u32"),
        "{err}"
    );
}

#[test]
fn a_bad_duration_names_the_value() {
    let err = rejected("[agent]\ninterval = \"10 parsecs\"\n");
    assert!(
        err.starts_with("FILE:2:12: invalid value: string \"10 parsecs\", expected a duration"),
        "{err}"
    );
}

#[test]
fn an_interval_of_zero_is_rejected() {
    let err = rejected("[agent]\ninterval = \"0s\"\n");
    assert_eq!(
        err.trim(),
        "FILE:2:12: agent.interval: interval must be greater than 0"
    );
}

#[test]
fn a_timeout_not_below_the_interval_is_rejected() {
    let err = rejected(
        "[probe.db]\nkind = \"tcp\"\naddress = \"127.0.0.1:5432\"\ninterval = \"5s\"\ntimeout = \"5s\"\n",
    );
    assert_eq!(
        err.trim(),
        "FILE:5:11: probe.db.timeout: timeout 5s must be shorter than the interval 5s"
    );
}

#[test]
fn duplicate_probe_names_are_rejected() {
    let err = rejected(
        "[probe.db]\nkind = \"tcp\"\naddress = \"a:1\"\n\n[probe.db]\nkind = \"tcp\"\naddress = \"b:1\"\n",
    );
    assert!(err.starts_with("FILE:5:8: duplicate key"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let err = rejected(
        "[agent]\ninterval = \"0s\"\n\n[api]\nlisten = \"localhost\"\n\n[host.cpu]\ndegraded = 0.9\nunhealthy = 1.5\n\n[probe.Bad]\nkind = \"tcp\"\naddress = \"nowhere\"\n",
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            "FILE:2:12: agent.interval: interval must be greater than 0",
            "FILE:5:10: api.listen: `localhost` is not an address:port such as 127.0.0.1:8711",
            "FILE:9:13: host.cpu.unhealthy: 1.5 is not a ratio between 0 and 1",
            "FILE:11:8: probe.Bad: probe names are 1-64 characters of a-z, 0-9, '-' and '_', and `host` is reserved",
            "FILE:13:11: probe.Bad.address: `nowhere` is not host:port",
        ]
    );
}

/// Each table is read on its own: a wrong type in one probe does not hide
/// the others' problems, and each problem is at its own value or key, in
/// a kind's table and under dotted keys too.
#[test]
fn every_table_s_problems_are_reported_at_once_each_at_its_place() {
    let err = rejected(
        "nope = 1\n\
         probe.c.kind = \"tcp\"\n\
         probe.c.address = 3\n\
         \n\
         [agent]\n\
         failure_threshold = \"three\"\n\
         \n\
         [probe.a]\n\
         kind = \"tcp\"\n\
         address = \"127.0.0.1:1\"\n\
         interval = 5\n\
         \n\
         [probe.b]\n\
         kind = \"tcp\"\n\
         address = \"127.0.0.1:2\"\n\
         adress = \"x\"\n\
         thresholds.latency.degraded = \"high\"\n\
         \n\
         [probe.d]\n\
         kind = \"tcpp\"\n\
         \n\
         [maintenance.t]\n\
         kind = \"postgres_analyze\"\n\
         timeout = 60\n",
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            "FILE:1:1: unknown field `nope`, expected one of `agent`, `api`, `history`, `host`, `probe`, `maintenance`, `alerts`, `notify`, `alert`",
            "FILE:3:19: invalid type: integer `3`, expected a string",
            "FILE:6:21: invalid type: string \"three\", expected u32",
            "FILE:11:12: invalid type: integer `5`, expected a duration",
            "FILE:16:1: unknown field `adress`, expected one of `interval`, `timeout`, `failure_threshold`, `success_threshold`, `thresholds`, `role`, `address`",
            "FILE:20:8: unknown variant `tcpp`, expected one of `tcp`, `http`, `worker`, `access_log`, `postgres`, `redis`, `security_updates`, `access_review`, `compliance`",
            "FILE:24:11: invalid type: integer `60`, expected a duration",
        ]
    );
}

/// A name or value from the file is echoed with its control characters
/// escaped: a newline in a probe name cannot forge a line of the report,
/// nor an escape sequence reach the terminal.
#[test]
fn names_from_the_config_are_echoed_escaped() {
    let err = rejected(
        "[probe.\"db\\nFILE:1:1: all good\"]\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n\n\
         [maintenance.\"t\\u001b[2J\"]\nkind = \"postgres_analyze\"\nprobe = \"db\"\n",
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(
        lines[0].starts_with(r"FILE:1:8: probe.db\nFILE:1:1: all good: probe names are"),
        "{err}"
    );
    assert!(
        lines[1].starts_with(r"FILE:5:14: maintenance.t\u{1b}[2J: task names are"),
        "{err}"
    );
    let err = rejected("\"a\\rb\" = 1\n");
    assert!(
        err.starts_with(r"FILE:1:1: unknown field `a\rb`"),
        "{err:?}"
    );
}

/// `upkeep check-config` on `path`, in a shell bounding its memory, killed
/// if it has not answered within 10 s.
fn check_config_bounded(path: &Path) -> std::process::Output {
    let mut child = std::process::Command::new("sh")
        .args(["-c", "ulimit -v 2000000; exec \"$0\" check-config \"$1\""])
        .arg(crate::util::bin())
        .arg(path)
        .env("UPKEEP_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("check-config {} hung", path.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The config is a regular file of at most 1 MiB: a device, a FIFO with
/// no writer or a huge file is refused at once, naming the file.
#[test]
fn a_config_that_is_not_a_small_regular_file_is_refused() {
    let dir = temp_dir();
    let fifo = dir.path().join("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let comment = |len: usize| format!("#{}\n", "x".repeat(len - 2));
    let big = write_file(dir.path(), "big.toml", &comment((1 << 20) + 1));
    let cases = [
        (
            Path::new("/dev/zero").to_path_buf(),
            "not a regular file (a device)",
        ),
        (fifo, "not a regular file (a FIFO)"),
        (big, "larger than 1048576 bytes (1 MiB)"),
    ];
    for (path, words) in cases {
        let o = check_config_bounded(&path);
        assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
        assert!(
            stderr(&o).starts_with(&format!(
                "{}: cannot read config file: {words}",
                path.display()
            )),
            "{}",
            stderr(&o)
        );
    }
    // Exactly 1 MiB is still a config.
    let edge = write_file(dir.path(), "edge.toml", &comment(1 << 20));
    let o = check_config_bounded(&edge);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// `probes:` lists the probes that run: not the host probe when it is
/// disabled.
#[test]
fn check_config_lists_the_probes_that_run() {
    let dir = temp_dir();
    let web = "[probe.web]\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n";
    for (text, want) in [
        (String::new(), "probes: host"),
        (web.to_string(), "probes: host, web"),
        (format!("[host]\nenabled = false\n\n{web}"), "probes: web"),
        ("[host]\nenabled = false\n".to_string(), "probes: none"),
    ] {
        let cfg = write_file(dir.path(), "agent.toml", &text);
        let o = upkeep(&["check-config", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(
            stdout(&o).lines().any(|l| l == want),
            "{text}\n{}",
            stdout(&o)
        );
    }
}

#[test]
fn an_unreadable_config_file_is_an_invalid_config() {
    let dir = temp_dir();
    for path in [dir.path().join("missing.toml"), dir.path().to_path_buf()] {
        let o = upkeep(&["check-config", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(78));
        assert!(
            stderr(&o).starts_with(&format!("{}: cannot read config file: ", path.display())),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn check_config_prints_the_history_bound() {
    let o = upkeep(&["check-config", "agent.toml.example"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let config = Config::load(Path::new("agent.toml.example")).unwrap();
    // The alerts' tables count too, for the notifiers configured.
    let bound = upkeep::store::tiers::size_bound(&config.history)
        .with_alerts(config.notify.len(), config.alerts.max_outbox);
    assert!(bound.alerts > 0);
    assert!(
        out.contains(&format!(
            "history file bound: {} bytes ({}) for at most",
            bound.total,
            upkeep::cli::table::bytes(bound.total as f64)
        )),
        "{out}"
    );
    // Sizes in IEC units, durations in words.
    assert!(out.contains("(830 MiB) for at most 500 series"), "{out}");
    assert!(out.contains("(4.0 GiB) in all, each kept 30d"), "{out}");
    for t in [
        "tier_10s",
        "tier_60s",
        "tier_3600s",
        "tier_86400s",
        "alerts and outbox",
    ] {
        assert!(out.contains(t), "{out}");
    }
}

/// Every option of the config schema, with its default, appears in the
/// example, and the example is a valid config.
#[test]
fn the_example_config_documents_every_option() {
    let text = std::fs::read_to_string("agent.toml.example").unwrap();
    Config::parse("agent.toml.example", &text).expect("the example is valid");
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let mut missing = Vec::new();
    fn walk(v: &toml::Value, path: &str, text: &str, missing: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                if !text.contains(&format!("{k} ="))
                    && !text.contains(&format!("[{path}{k}]"))
                    && !text.contains(&format!("[{path}{k}."))
                {
                    missing.push(format!("{path}{k}"));
                }
                walk(v, &format!("{path}{k}."), text, missing);
            }
        }
    }
    walk(&defaults, "", &text, &mut missing);
    assert!(
        missing.is_empty(),
        "agent.toml.example does not mention: {missing:?}"
    );
    for kind in ProbeConfig::KINDS {
        assert!(
            text.contains(&format!("kind = \"{kind}\"")),
            "probe kind {kind} has no example"
        );
    }
    for kind in upkeep::maintenance::TaskConfig::KINDS {
        assert!(
            text.contains(&format!("kind = \"{kind}\"")),
            "maintenance kind {kind} has no example"
        );
    }
    // The commented maintenance examples are a valid config once uncommented.
    let start = text.find("# [maintenance.audit-log]").unwrap();
    let uncommented: String = text[start..]
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with('[') || toml::from_str::<toml::Table>(l).is_ok())
        // log_rotate's pidfile and reopen_command are alternatives, both
        // shown; a task takes one (the check refusing both is tested in
        // log_rotate's own tests).
        .filter(|l| !l.starts_with("reopen_command ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let config = format!(
        "[probe.database]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1\"\nuser = \"upkeep\"\n\n\
         [probe.cache]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n\n\
         [probe.web]\nkind = \"access_log\"\npaths = [\"/var/log/nginx/access.log\"]\n\n{uncommented}"
    );
    let parsed = Config::parse("example", &config).unwrap_or_else(|e| panic!("{e}\n{config}"));
    assert_eq!(
        parsed.maintenance.keys().collect::<Vec<_>>(),
        [
            "analyze",
            "app-logs",
            "audit-log",
            "cache-cleanup",
            "cache-warmup",
            "dump-drill",
            "etc",
            "nightly-dump",
            "notification-log",
            "tmp-cleanup"
        ]
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["query"],
        &[
            "query",
            "host.load1",
            "--since",
            "last tuesday",
            "--data-dir",
            ".",
        ],
        &["query", "host.load1", "--step", "0s", "--data-dir", "."],
        &["query", "host.load1", "--format", "xml"],
        &["uptime", "--window", "forever"],
        &["status", "--format", "xml"],
        &["status", "--json", "--format", "nagios"],
    ] {
        let o = upkeep(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

/// A history file written in-process, as the agent would: one series per
/// metric, one probe with a status history.
fn history_with_data(dir: &Path, now: i64) {
    let h = HistoryConfig::default();
    let mut w = temp_writer(dir, &h, now - 7_200_000);
    let key = SeriesKey::new("host", "disk_used_ratio", &[("mount", "/")]);
    let id = w.series_id(&key, Unit::Ratio, now).unwrap().unwrap();
    let start = now - 7_200_000;
    let mut ev = vec![Event {
        ts_ms: start,
        probe: Some("host".into()),
        kind: "status".into(),
        from_status: Some("unknown".into()),
        to_status: Some("healthy".into()),
        message: "host is healthy".into(),
    }];
    for i in 0..720 {
        let ts = start + i * 10_000;
        let s = Sample {
            series: id,
            ts,
            value: 0.5 + i as f64 * 0.0002,
        };
        w.write(&[s], &ev, ts).unwrap();
        ev.clear();
    }
    w.end_run(now).unwrap();
}

#[test]
fn read_commands_answer_from_a_stopped_agents_history() {
    let dir = temp_dir();
    let now = upkeep::sample::now_ms();
    history_with_data(dir.path(), now);
    let d = dir.path().to_str().unwrap();

    let o = upkeep(&["series", "--data-dir", d]);
    let key = "host.disk_used_ratio{mount=\"/\"}";
    assert_eq!(
        stdout(&o),
        format!("{:<w$}  unit\n{key}  ratio\n", "series", w = key.len())
    );

    let o = upkeep(&[
        "query",
        "host.disk_used_ratio{mount=\"/\"}",
        "--since",
        "3h",
        "--step",
        "10m",
        "--format",
        "csv",
        "--data-dir",
        d,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let csv = stdout(&o);
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let total: i64 = rows
        .iter()
        .map(|r| r.split(',').nth(5).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(total, 720, "every sample counted once:\n{csv}");
    assert!((12..=13).contains(&rows.len()), "two hours at 10m:\n{csv}");

    let o = upkeep(&[
        "query",
        "host.disk_used_ratio{mount=\"/\"}",
        "--since",
        "3h",
        "--format",
        "json",
        "--data-dir",
        d,
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["tier"], "tier_10s");
    assert_eq!(v["points"].as_array().unwrap().len(), 720);

    let o = upkeep(&["uptime", "--data-dir", d, "--format", "csv"]);
    let out = stdout(&o);
    let row: Vec<&str> = out.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(row[0], "host");
    assert_eq!(row[1], "1", "healthy all the time it was observed: {out}");
    let coverage: f64 = row[2].parse().unwrap();
    assert!(
        (0.07..0.1).contains(&coverage),
        "observed two hours of 24: {out}"
    );

    let o = upkeep(&[
        "trend",
        "host.disk_used_ratio{mount=\"/\"}",
        "--window",
        "3h",
        "--data-dir",
        d,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("trend: increasing"), "{out}");
    assert!(out.contains("forecast: reaches 100.0% in"), "{out}");
}

#[test]
fn read_commands_name_what_is_missing() {
    let dir = temp_dir();
    let d = dir.path().to_str().unwrap();
    let o = upkeep(&["series", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no history file here"),
        "{}",
        stderr(&o)
    );

    history_with_data(dir.path(), upkeep::sample::now_ms());
    let o = upkeep(&["query", "host.nope", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no series `host.nope`"),
        "{}",
        stderr(&o)
    );
    let o = upkeep(&["uptime", "nope", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no probe `nope`"), "{}", stderr(&o));
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // The reader is gone before the command writes, as with `| head -1`
    // once head has its line: every write to stdout fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.toml.example");
    let o = std::process::Command::new(crate::util::bin())
        .arg("check-config")
        .arg(&example)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{:?}", o.status);
}

#[test]
fn read_commands_never_create_the_data_dir() {
    let dir = temp_dir();
    let data = dir.path().join("never-made");
    let d = data.to_str().unwrap();
    let commands: [&[&str]; 6] = [
        &["series"],
        &["query", "host.cpu_used_ratio"],
        &["uptime"],
        &["trend", "host.cpu_used_ratio"],
        &["maintenance", "runs"],
        &["maintenance", "show", "1"],
    ];
    for args in commands {
        let mut full = args.to_vec();
        full.extend(["--data-dir", d]);
        let o = upkeep(&full);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("data dir {d}: no such directory")),
            "{args:?}: {err}"
        );
        assert!(!data.exists(), "{args:?} created {d}");
    }
    // Before the agent's first start the tasks list, none having run.
    let o = upkeep(&["maintenance", "list", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!data.exists(), "maintenance list created {d}");
}

/// The longest line of `text`, in characters.
fn widest(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

/// Tables for people: ratios as percentages, durations in words, sizes in
/// IEC units, columns aligned, and no line wider than 100 columns.
#[test]
fn read_commands_print_human_units_in_aligned_tables() {
    let dir = temp_dir();
    let now = upkeep::sample::now_ms();
    history_with_data(dir.path(), now);
    let d = dir.path().to_str().unwrap();
    let key = "host.disk_used_ratio{mount=\"/\"}";

    let o = upkeep(&["uptime", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("# window 1d ending "), "{out}");
    let head: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        head,
        [
            "probe",
            "uptime",
            "coverage",
            "healthy",
            "degraded",
            "unhealthy"
        ]
    );
    let row: Vec<&str> = out.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(row[0], "host", "{out}");
    assert_eq!(row[1], "100.0%", "{out}");
    assert!(row[2].ends_with('%') && row[2].starts_with('8'), "{out}");
    // Two hours healthy, in words; none degraded or unhealthy.
    assert_eq!(&row[3..], ["2h", "0s", "0s"], "{out}");
    // Aligned: every heading ends where its right-aligned values end.
    let lines: Vec<&str> = out.lines().skip(1).collect();
    let end = |l: &str, w: &str| l.find(w).unwrap() + w.len();
    assert_eq!(end(lines[0], "coverage"), end(lines[1], row[2]), "{out}");
    assert!(widest(&out) <= 100, "{out}");

    let o = upkeep(&[
        "query",
        key,
        "--since",
        "3h",
        "--step",
        "30m",
        "--data-dir",
        d,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("step 30m,"), "{out}");
    let row: Vec<&str> = out.lines().nth(2).unwrap().split_whitespace().collect();
    // time, avg, min, max, count, last: the ratios as percentages.
    assert_eq!(row.len(), 6, "{out}");
    for v in [row[1], row[2], row[3], row[5]] {
        assert!(v.ends_with('%'), "{v}: {out}");
    }
    assert!(widest(&out) <= 100, "{out}");
}

/// `trend` says the class and its figures; the rule behind the class is
/// internal and printed only with `--explain`.
#[test]
fn trend_prints_its_rule_only_when_asked() {
    let dir = temp_dir();
    history_with_data(dir.path(), upkeep::sample::now_ms());
    let d = dir.path().to_str().unwrap();
    let key = "host.disk_used_ratio{mount=\"/\"}";
    let o = upkeep(&["trend", key, "--window", "3h", "--data-dir", d]);
    let out = stdout(&o);
    assert!(out.contains("trend: increasing (+"), "{out}");
    assert!(out.contains("%/day"), "{out}");
    assert!(!out.contains("rule"), "{out}");
    let o = upkeep(&["trend", key, "--window", "3h", "--explain", "--data-dir", d]);
    let out = stdout(&o);
    assert!(
        out.lines()
            .any(|l| l == format!("rule: {}", upkeep::analysis::trend::TREND_RULE)),
        "{out}"
    );
}

/// A forecast held back says what it needs and what there is, so that an
/// operator knows to wait.
#[test]
fn a_withheld_forecast_says_what_it_needs() {
    let dir = temp_dir();
    let now = upkeep::sample::now_ms();
    // Six minutes of a rising ratio: a clean line, but far too short.
    let mut w = temp_writer(dir.path(), &HistoryConfig::default(), now - 360_000);
    let key = SeriesKey::new("host", "disk_used_ratio", &[("mount", "/")]);
    let id = w.series_id(&key, Unit::Ratio, now).unwrap().unwrap();
    for i in 0..36 {
        let ts = now - 360_000 + i * 10_000;
        let s = Sample {
            series: id,
            ts,
            value: 0.5 + i as f64 * 0.001,
        };
        w.write(&[s], &[], ts).unwrap();
    }
    w.end_run(now).unwrap();
    let d = dir.path().to_str().unwrap();
    let o = upkeep(&[
        "trend",
        "host.disk_used_ratio{mount=\"/\"}",
        "--window",
        "1h",
        "--data-dir",
        d,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(
            "forecast: insufficient signal: needs ≥ 12 points over ≥ 1 h and r² ≥ 0.8; have 36 points over 0.1 h"
        ),
        "{out}"
    );
}

/// Every read command answers in JSON with `--format json`.
#[test]
fn every_read_command_answers_in_json() {
    let dir = temp_dir();
    history_with_data(dir.path(), upkeep::sample::now_ms());
    let d = dir.path().to_str().unwrap();
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        "[probe.db]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1\"\nuser = \"postgres\"\n\n\
         [maintenance.analyze]\nkind = \"postgres_analyze\"\nprobe = \"db\"\nschedule = \"0 3 * * *\"\n",
    );
    let c = cfg.to_str().unwrap();
    let key = "host.disk_used_ratio{mount=\"/\"}";
    let json = |args: &[&str]| -> serde_json::Value {
        let mut full = args.to_vec();
        full.extend(["--format", "json", "--data-dir", d, "--config", c]);
        let o = upkeep(&full);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        serde_json::from_str(&stdout(&o))
            .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", stdout(&o)))
    };
    let v = json(&["series"]);
    assert_eq!(v[0]["key"], key);
    assert_eq!(v[0]["unit"], "ratio");
    let v = json(&["query", key, "--since", "3h"]);
    assert_eq!(v["points"].as_array().unwrap().len(), 720);
    let v = json(&["uptime"]);
    assert_eq!(v[0]["probe"], "host");
    let v = json(&["trend", key, "--window", "3h"]);
    assert_eq!(v["trend"]["class"], "increasing");
    let v = json(&["maintenance", "list"]);
    assert_eq!(v["tasks"][0]["name"], "analyze");
    assert_eq!(v["tasks"][0]["kind"], "postgres_analyze");
    assert!(v["tasks"][0]["next_start"].is_string(), "{v}");
    let v = json(&["maintenance", "runs"]);
    assert_eq!(v["runs"], serde_json::json!([]));
}

/// `run --listen` serves the API there instead of `[api] listen`, checked
/// as that setting is: a bad address, or an open one without a token
/// file, is a usage error naming the flag, and nothing starts.
#[test]
fn run_listens_where_listen_says() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    for (addr, words) in [
        ("nowhere", "--listen: `nowhere` is not an address:port"),
        (
            "0.0.0.0:8711",
            "--listen: 0.0.0.0:8711 is not a loopback address",
        ),
    ] {
        let o = upkeep(&[
            "run",
            "--listen",
            addr,
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{addr}: {}", stderr(&o));
        assert!(stderr(&o).contains(words), "{addr}: {}", stderr(&o));
        assert!(!data.exists(), "{addr}: nothing may start");
    }
    let port = crate::util::free_port();
    let child = std::process::Command::new(crate::util::bin())
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("UPKEEP_CONFIG")
        .env("UPKEEP_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let agent = crate::util::Agent { child, port };
    agent.wait_ready();
    let (code, body) = crate::util::get(port, "/api/v1/info").unwrap();
    assert_eq!(code, 200, "{body}");
}
