//! The agent as a process: it starts with no config, stops cleanly on
//! SIGTERM/SIGINT within 5 s, reloads on SIGHUP (keeping the old config when
//! the new one is bad), refuses a taken port, and answers read commands while
//! it runs.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use crate::util::{Agent, free_port, get, stderr, stdout, temp_dir, upkeep, wait_for, write_file};

fn config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    write_file(
        dir,
        "agent.toml",
        &format!("[agent]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n{extra}"),
    )
}

fn probe_names(port: u16) -> Vec<String> {
    let (_, body) = get(port, "/api/v1/probes").expect("probes route");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sigterm_flushes_and_exits_0_within_5_seconds() {
    let dir = temp_dir();
    let port = free_port();
    let cfg = config(dir.path(), port, "");
    let data = dir.path().join("data");
    let agent = Agent::start(Some(&cfg), &data, port);
    std::thread::sleep(Duration::from_millis(2500));
    agent.signal(libc::SIGTERM);
    let (code, took, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // The stop is recorded, and every tick's samples are in the file.
    let conn = rusqlite::Connection::open(data.join("history.db")).unwrap();
    let stopped: Option<i64> = conn
        .query_row(
            "SELECT stopped_ms FROM agent_runs ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        stopped.is_some(),
        "the run was not marked as cleanly stopped"
    );
    let o = upkeep(&[
        "query",
        "host.load1",
        "--since",
        "1m",
        "--format",
        "csv",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let samples: i64 = stdout(&o)
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap().parse::<i64>().unwrap())
        .sum();
    assert!(
        samples >= 2,
        "expected the 1 s ticks in history, got {samples}: {}",
        stdout(&o)
    );
}

#[test]
fn sigint_also_stops_cleanly() {
    let dir = temp_dir();
    let port = free_port();
    let cfg = config(dir.path(), port, "");
    let agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    agent.signal(libc::SIGINT);
    let (code, took, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(took < Duration::from_secs(5));
}

#[test]
fn sighup_reloads_and_a_bad_config_keeps_the_old_one() {
    let dir = temp_dir();
    let port = free_port();
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(dir.path(), port, "");
    let agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    wait_for("the host probe", || probe_names(port) == ["host"]);

    let addr = target.local_addr().unwrap();
    config(
        dir.path(),
        port,
        &format!("\n[probe.svc]\nkind = \"tcp\"\naddress = \"{addr}\"\n"),
    );
    agent.signal(libc::SIGHUP);
    wait_for("the reloaded probe", || {
        probe_names(port) == ["host", "svc"]
    });

    std::fs::write(
        &cfg,
        "[agent]\ninterval = \"0s\"\n[probe.other]\nkind = \"tcp\"\n",
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        probe_names(port),
        ["host", "svc"],
        "a bad config must not replace the running one"
    );
    let (_, body) = get(port, "/api/v1/probes").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["probes"][1]["name"], "svc", "{body}");
    assert_eq!(v["probes"][1]["kind"], "tcp", "{body}");
    assert_eq!(v["probes"][1]["status"], "healthy", "{body}");

    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(
        err.contains("config reload rejected, the running config stays"),
        "{err}"
    );
    assert!(err.contains("missing field `address`"), "{err}");
}

#[test]
fn a_taken_port_is_a_clear_startup_error() {
    let dir = temp_dir();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = config(dir.path(), port, "");
    let o = upkeep(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("api.listen 127.0.0.1:{port}: cannot bind")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn with_no_config_the_agent_watches_the_host_and_says_where_its_data_is() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    // Built-in defaults listen on 127.0.0.1:8711.
    let agent = Agent::start(None, &data, 8711);
    wait_for("host readings", || {
        let o = upkeep(&["series", "--data-dir", data.to_str().unwrap()]);
        stdout(&o).contains("host.memory_used_ratio")
    });
    let (code, body) = get(8711, "/api/v1/info").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data_dir"], data.to_str().unwrap());
    assert!(v["config_path"].is_null());
    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(
        err.contains("no config file: running on built-in defaults"),
        "{err}"
    );
    assert!(
        err.contains(&format!("history in {}", data.join("history.db").display())),
        "{err}"
    );
}

#[test]
fn read_commands_work_while_the_agent_writes() {
    let dir = temp_dir();
    let port = free_port();
    let cfg = config(dir.path(), port, "");
    let data = dir.path().join("data");
    let agent = Agent::start(Some(&cfg), &data, port);
    let d = data.to_str().unwrap();
    let mut last = 0;
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(700));
        let o = upkeep(&[
            "query",
            "host.memory_used_ratio",
            "--since",
            "5m",
            "--format",
            "csv",
            "--data-dir",
            d,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let n: i64 = stdout(&o)
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(5).unwrap().parse::<i64>().unwrap())
            .sum();
        assert!(n >= last, "samples went backwards: {n} < {last}");
        last = n;
    }
    assert!(
        last >= 3,
        "the reader saw {last} samples written while it read"
    );
    let o = upkeep(&["uptime", "host", "--window", "1h", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    drop(agent);
}

#[test]
fn the_health_document_has_the_seed_shape_with_measured_values() {
    let dir = temp_dir();
    let port = free_port();
    let db = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free_port();
    let log = dir.path().join("access.log");
    std::fs::write(&log, "").unwrap();
    let cfg = config(
        dir.path(),
        port,
        &format!(
            "\n[probe.database]\nkind = \"tcp\"\nrole = \"database\"\naddress = \"{}\"\n\n[probe.gone]\nkind = \"tcp\"\naddress = \"127.0.0.1:{dead}\"\nfailure_threshold = 1\n\n[probe.web]\nkind = \"access_log\"\npaths = [{:?}]\n",
            db.local_addr().unwrap(),
            log.display().to_string()
        ),
    );
    let data = dir.path().join("data");
    let agent = Agent::start(Some(&cfg), &data, port);
    let line = |status: u16, secs: f64| {
        format!(
            "127.0.0.1 - - [28/Nov/2026:10:00:01 +0000] \"GET / HTTP/1.1\" {status} 10 \"-\" \"t\" {secs}\n"
        )
    };
    wait_for("the access log probe", || {
        probe_names(port).contains(&"web".to_string())
    });
    std::thread::sleep(Duration::from_millis(1200));
    let mut text = String::new();
    for i in 0..20 {
        text.push_str(&line(if i < 5 { 500 } else { 200 }, 0.050));
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    wait_for("the requests to be counted", || {
        let (_, body) = get(port, "/api/v1/health").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["performance"]["error_rate"].is_number()
    });
    let (code, body) = get(port, "/api/v1/health").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in ["timestamp", "services", "resources", "performance"] {
        assert!(!v[key].is_null(), "{key} missing: {body}");
    }
    let db = &v["services"]["database"];
    assert_eq!(db["name"], "database");
    assert_eq!(db["status"], "healthy");
    assert!(db["response_time"].as_f64().unwrap() < 1000.0);
    assert!(db["last_check"].as_str().unwrap().ends_with('Z'));
    let gone = &v["services"]["gone"];
    assert_eq!(gone["status"], "unhealthy");
    assert!(
        gone["response_time"].is_null(),
        "a failed check has no response time: {gone}"
    );
    assert!(
        gone["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("connect to 127.0.0.1:"),
        "{gone}"
    );
    assert_eq!(v["services"]["workers"], serde_json::json!([]));
    // 5 of 20 requests were 5xx: the seed's error_rate is a fraction.
    assert_eq!(
        v["performance"]["error_rate"].as_f64(),
        Some(0.25),
        "{}",
        v["performance"]
    );
    assert!((v["performance"]["response_time"].as_f64().unwrap() - 50.0).abs() < 1.0);

    // Resources are this host's own figures.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: f64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mem = &v["resources"]["memory"];
    assert!(
        (mem["max"].as_f64().unwrap() - total_kib / 1024.0).abs() < total_kib / 1024.0 * 0.01,
        "{mem}"
    );
    let pct = mem["percentage"].as_f64().unwrap();
    assert!(pct > 0.0 && pct < 100.0);
    for r in ["cpu", "disk"] {
        let u = &v["resources"][r];
        for k in ["current", "max", "percentage"] {
            assert!(u[k].is_number(), "resources.{r}.{k}: {u}");
        }
        assert!(u.get("trend").is_some());
    }
    for k in ["bytes_in", "bytes_out", "packets_in", "packets_out"] {
        assert!(v["resources"]["network"].get(k).is_some(), "network.{k}");
    }
    assert!(v["performance"].get("uptime").is_some());

    // `upkeep status` says the same and exits 2 (CRITICAL to a monitoring
    // system) because `gone` is unhealthy.
    let o = upkeep(&["status", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let table = stdout(&o);
    for name in ["database", "gone", "host", "web"] {
        assert!(
            table.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{table}"
        );
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("gone") && l.contains("unhealthy") && l.contains("connect to")),
        "{table}"
    );
    // The host probe's check times nothing: no latency in its row.
    let host: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("host "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&host[..3], ["host", "healthy", "-"], "{table}");
    let o = upkeep(&["status", "--json", "--config", cfg.to_str().unwrap()]);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["services"]["database"]["status"], "healthy");

    // As a Nagios/Icinga check: one line, CRITICAL, the bad probe named
    // before the performance data, the same exit code.
    let o = upkeep(&[
        "status",
        "--format",
        "nagios",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let line = stdout(&o);
    assert_eq!(line.lines().count(), 1, "{line}");
    let (output, perf) = line.trim_end().split_once(" | ").expect("performance data");
    assert!(
        output.starts_with(
            "UPKEEP CRITICAL - 1 of 4 probes not healthy: gone unhealthy (gone: connect to"
        ),
        "{line}"
    );
    assert!(
        perf.starts_with("healthy=3;;;0;4 degraded=0;;;0;4 unhealthy=1;;;0;4 unknown=0;;;0;4 "),
        "{line}"
    );
    assert!(perf.contains("'database latency'="), "{line}");
    drop(agent);

    // With the agent gone, status names what it could not reach and exits 3
    // (UNKNOWN to a monitoring system), not as a host problem.
    let o = upkeep(&["status", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("does not answer"), "{}", stderr(&o));
    let o = upkeep(&[
        "status",
        "--format",
        "nagios",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3));
    let line = stdout(&o);
    assert!(
        line.starts_with("UPKEEP UNKNOWN - ") && line.contains("does not answer"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
}

/// The `upkeep status` exit code once every probe has the status wanted.
fn status_code_when(port: u16, cfg: &Path, want: &str) -> Option<i32> {
    wait_for(&format!("the probe to be {want}"), || {
        get(port, "/api/v1/probes").is_some_and(|(_, body)| {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["probes"]
                .as_array()
                .is_some_and(|ps| !ps.is_empty() && ps.iter().all(|p| p["status"] == want))
        })
    });
    let o = upkeep(&["status", "--config", cfg.to_str().unwrap()]);
    o.status.code()
}

#[test]
fn status_exits_0_when_healthy_and_1_when_degraded() {
    let dir = temp_dir();
    let port = free_port();
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let probe = |degraded: f64| {
        format!(
            "\n[host]\nenabled = false\n\n[probe.up]\nkind = \"tcp\"\naddress = \"{}\"\nfailure_threshold = 1\nsuccess_threshold = 1\n[probe.up.thresholds.connect_seconds]\ndegraded = {degraded:?}\nunhealthy = 100.0\n",
            target.local_addr().unwrap()
        )
    };
    let cfg = config(dir.path(), port, &probe(50.0));
    let agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    assert_eq!(status_code_when(port, &cfg, "healthy"), Some(0));
    // Any connect takes longer than a nanosecond: degraded, not unhealthy.
    config(dir.path(), port, &probe(1e-9));
    agent.signal(libc::SIGHUP);
    assert_eq!(status_code_when(port, &cfg, "degraded"), Some(1));
}

#[test]
fn a_second_agent_on_a_data_dir_in_use_exits_1_naming_the_first() {
    let dir = temp_dir();
    let (port, other) = (free_port(), free_port());
    let cfg = config(dir.path(), port, "");
    let data = dir.path().join("data");
    let first = Agent::start(Some(&cfg), &data, port);
    // Another port, so that only the data dir is shared.
    let cfg2 = write_file(
        dir.path(),
        "other.toml",
        &format!("[agent]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{other}\"\n"),
    );
    let second = Agent {
        child: std::process::Command::new(crate::util::bin())
            .args(["run", "--config", cfg2.to_str().unwrap(), "--data-dir"])
            .arg(&data)
            .env_remove("UPKEEP_CONFIG")
            .env_remove("STATE_DIRECTORY")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        port: other,
    };
    let (code, _, err) = second.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(1), "{err}");
    let want = format!(
        "data dir {} is in use by upkeep pid {} (since ",
        data.display(),
        first.child.id()
    );
    assert!(err.contains(&want), "{err}");
    // Read commands take no lock, and the first agent runs on.
    let o = upkeep(&["series", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(get(port, "/-/healthy").map(|r| r.0), Some(200));
    // Once the first has stopped, the data dir is free again.
    first.signal(libc::SIGTERM);
    let (code, _, err) = first.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    let again = Agent::start(Some(&cfg2), &data, other);
    drop(again);
}

/// `status_since` of every probe, by name.
fn status_since(port: u16) -> Vec<(String, serde_json::Value)> {
    let (_, body) = get(port, "/api/v1/probes").expect("probes route");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["status_since"].clone(),
            )
        })
        .collect()
}

/// Waits for the `n`th reload the agent has recorded to be `ok`.
fn wait_for_reload(port: u16, n: usize, seen: &mut std::collections::BTreeSet<String>) {
    wait_for(&format!("reload {n}"), || {
        let (_, body) = get(port, "/api/v1/info").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(at) = v["last_reload"]["at"].as_str() {
            assert_eq!(v["last_reload"]["ok"], true, "{body}");
            seen.insert(at.to_string());
        }
        seen.len() >= n
    });
}

/// A reload that changes nothing restarts no probe: each keeps its
/// schedule and its judged status (no gap, no fresh `unknown`). A reload
/// that changes one probe restarts that one alone.
#[test]
fn a_reload_restarts_only_the_probes_it_changes() {
    let dir = temp_dir();
    let port = free_port();
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = target.local_addr().unwrap();
    let probes = |timeout: &str| {
        format!(
            "\n[host]\nenabled = false\n\n[probe.kept]\nkind = \"tcp\"\naddress = \"{addr}\"\n\n\
             [probe.changed]\nkind = \"tcp\"\naddress = \"{addr}\"\ntimeout = \"{timeout}\"\n"
        )
    };
    let cfg = config(dir.path(), port, &probes("500ms"));
    let agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    wait_for("both probes healthy", || {
        let (_, body) = get(port, "/api/v1/probes").unwrap();
        body.matches("\"status\":\"healthy\"").count() == 2
    });
    let before = status_since(port);
    let mut reloads = std::collections::BTreeSet::new();

    // The same file again.
    agent.signal(libc::SIGHUP);
    wait_for_reload(port, 1, &mut reloads);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(status_since(port), before, "a probe was restarted");

    // One probe's timeout changes: that probe alone starts anew.
    std::thread::sleep(Duration::from_millis(1100));
    config(dir.path(), port, &probes("400ms"));
    agent.signal(libc::SIGHUP);
    wait_for_reload(port, 2, &mut reloads);
    std::thread::sleep(Duration::from_millis(2500));
    let after = status_since(port);
    assert_eq!(after[1], before[1], "kept: {after:?}");
    assert_eq!(after[1].0, "kept");

    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    let started = |name: &str| {
        err.lines()
            .filter(|l| l.contains("probe started") && l.contains(&format!("probe={name}")))
            .count()
    };
    assert_eq!(started("kept"), 1, "{err}");
    assert_eq!(started("changed"), 2, "{err}");
    assert!(err.contains("config reloaded; no probe changed"), "{err}");
}
