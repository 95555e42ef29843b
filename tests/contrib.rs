//! `contrib/`: the Prometheus scrape config and rules pass `promtool`, the
//! rules' unit tests pass `promtool test rules`, and every query of the
//! Grafana dashboard parses and returns data from a real Prometheus
//! scraping a real agent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib")
}

/// Runs a tool `./test.sh` installs; fails the test when it is missing.
fn tool(name: &str, args: &[&str], dir: &Path) -> Output {
    match Command::new(name).args(args).current_dir(dir).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{name} is not on PATH: run the tests with ./test.sh, which installs it")
        }
        Err(e) => panic!("running {name}: {e}"),
    }
}

fn assert_ok(o: &Output, what: &str) -> String {
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{what}: {}\n{said}", o.status);
    said
}

#[test]
fn the_prometheus_config_and_rules_pass_promtool_and_their_unit_tests() {
    let dir = contrib().join("prometheus");
    let said = assert_ok(
        &tool("promtool", &["check", "config", "prometheus.yml"], &dir),
        "promtool check config",
    );
    assert!(said.contains("rule files found"), "{said}");
    let said = assert_ok(
        &tool(
            "promtool",
            &["check", "rules", "rules/upkeep.rules.yml"],
            &dir,
        ),
        "promtool check rules",
    );
    assert!(said.contains("SUCCESS: 12 rules found"), "{said}");
    let said = assert_ok(
        &tool(
            "promtool",
            &["test", "rules", "tests/upkeep.rules.test.yml"],
            &dir,
        ),
        "promtool test rules",
    );
    assert!(said.contains("SUCCESS"), "{said}");
    // The file service discovery example lists targets as Prometheus reads them.
    let targets = std::fs::read_to_string(dir.join("targets/example.yml")).unwrap();
    assert!(targets.contains("- targets:"), "{targets}");
}

/// Panels whose queries may return nothing from a fresh agent, and why.
/// Every other panel must return data.
const MAY_BE_EMPTY: &[(&str, &str)] = &[(
    "Disk full in (confident forecasts only)",
    "a fresh agent has under an hour of history: no forecast is confident, so none is exported",
)];

/// A dashboard query as Grafana sends it, its variables filled: every host,
/// and a minute where Grafana would use the scrape interval or time range.
fn as_sent(expr: &str) -> String {
    expr.replace("$instance", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server started by the test, killed when dropped.
struct Prometheus {
    child: std::process::Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, config: &Path) -> Prometheus {
        let port = crate::util::free_port();
        let child = match Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("prometheus is not on PATH: run the tests with ./test.sh, which installs it")
            }
            Err(e) => panic!("running prometheus: {e}"),
        };
        let p = Prometheus { child, port };
        crate::util::wait_for("prometheus to be ready", || {
            matches!(crate::util::get(port, "/-/ready"), Some((200, _)))
        });
        p
    }

    /// The result of an instant query.
    fn query(&self, expr: &str) -> serde_json::Value {
        let (code, body) = crate::util::get(
            self.port,
            &format!("/api/v1/query?query={}", percent_encode(expr)),
        )
        .expect("prometheus answers");
        assert_eq!(code, 200, "{expr}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{expr}: {body}");
        v["data"]["result"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_dashboard_query_parses_and_returns_data_from_a_real_prometheus() {
    use std::io::Write;

    let text = std::fs::read_to_string(contrib().join("grafana/upkeep.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    // A host selector over every agent Prometheus scrapes.
    let vars = dash["templating"]["list"].as_array().unwrap();
    let host = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an `instance` variable");
    assert_eq!(
        host["definition"],
        "label_values(upkeep_build_info, instance)"
    );
    assert_eq!(host["includeAll"], true);
    let mut queries: Vec<(String, String)> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().expect("each target has an expr");
            assert!(
                expr.contains("$instance"),
                "{}: not per host: {expr}",
                p["title"]
            );
            queries.push((p["title"].as_str().unwrap().to_string(), as_sent(expr)));
        }
    }
    let titles: Vec<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    for want in [
        "Probe status",
        "Probe uptime over the range",
        "Maintenance runs by status",
    ] {
        assert!(titles.contains(&want), "no `{want}` panel: {titles:?}");
    }
    for (title, _) in MAY_BE_EMPTY {
        assert!(
            titles.contains(title),
            "MAY_BE_EMPTY names no panel `{title}`"
        );
    }

    // Every expression parses: promtool reads each as a recording rule.
    let dir = crate::util::temp_dir();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let rules_file = crate::util::write_file(dir.path(), "dashboard.rules.yml", &rules);
    let said = assert_ok(
        &tool(
            "promtool",
            &["check", "rules", rules_file.to_str().unwrap()],
            dir.path(),
        ),
        "promtool check rules on the dashboard's queries",
    );
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{said}"
    );

    // A real agent with a probe that is up, one that is down, and an access log.
    let port = crate::util::free_port();
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = crate::util::free_port();
    let log = dir.path().join("access.log");
    std::fs::write(&log, "").unwrap();
    // A maintenance task run once, so the maintenance panels have a run.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let cfg = crate::util::write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "[agent]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [probe.svc]\nkind = \"tcp\"\naddress = \"{}\"\n\n\
             [probe.gone]\nkind = \"tcp\"\naddress = \"127.0.0.1:{down}\"\n\n\
             [probe.web]\nkind = \"access_log\"\npaths = [{:?}]\n\n\
             [maintenance.tmp]\nkind = \"file_cleanup\"\npaths = [{:?}]\nolder_than = \"7d\"\n",
            up.local_addr().unwrap(),
            log.display().to_string(),
            tmp.display().to_string()
        ),
    );
    let _agent = crate::util::Agent::start(Some(&cfg), &dir.path().join("data"), port);

    // Prometheus scraping it every second through file service discovery,
    // with the shipped rules loaded.
    crate::util::write_file(
        dir.path(),
        "targets.yml",
        &format!("- targets: ['127.0.0.1:{port}']\n"),
    );
    let prom_cfg = crate::util::write_file(
        dir.path(),
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {:?}\n\
             scrape_configs:\n  - job_name: upkeep\n    file_sd_configs:\n      - files: [{:?}]\n        refresh_interval: 1s\n",
            contrib()
                .join("prometheus/rules/upkeep.rules.yml")
                .display()
                .to_string(),
            dir.path().join("targets.yml").display().to_string()
        ),
    );
    let prom = Prometheus::start(dir.path(), &prom_cfg);
    crate::util::wait_for("the agent scraped", || {
        !prom
            .query("upkeep_probe_up{probe=\"gone\"} == 0")
            .as_array()
            .unwrap()
            .is_empty()
    });
    let line = |status: u16, secs: f64| {
        format!(
            "127.0.0.1 - - [28/Nov/2026:10:00:01 +0000] \"GET / HTTP/1.1\" {status} 10 \"-\" \"t\" {secs}\n"
        )
    };
    let text: String = [(200, 0.01), (200, 0.02), (404, 0.3), (500, 1.2)]
        .into_iter()
        .map(|(s, t)| line(s, t))
        .collect();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    crate::util::wait_for("the requests in two scrapes' rates", || {
        !prom
            .query("rate(upkeep_access_log_requests_total[1m]) > 0")
            .as_array()
            .unwrap()
            .is_empty()
            && !prom
                .query("rate(upkeep_host_net_rx_bytes_total[1m])")
                .as_array()
                .unwrap()
                .is_empty()
    });

    let data = dir.path().join("data");
    let ran = crate::util::upkeep(&[
        "maintenance",
        "run",
        "tmp",
        "--ignore-window",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(ran.status.success(), "{}", crate::util::stderr(&ran));
    crate::util::wait_for("the maintenance run in two scrapes", || {
        !prom
            .query("increase(upkeep_maintenance_runs_total{task=\"tmp\",status=\"succeeded\"}[1m])")
            .as_array()
            .unwrap()
            .is_empty()
            && !prom
                .query("upkeep_maintenance_last_success_timestamp_seconds{task=\"tmp\"}")
                .as_array()
                .unwrap()
                .is_empty()
    });

    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let result = prom.query(expr);
        if result.as_array().unwrap().is_empty() {
            empty.push(title.as_str());
        }
    }
    eprintln!("panels without data (allowed: MAY_BE_EMPTY): {empty:?}");
    let allowed: Vec<&str> = MAY_BE_EMPTY.iter().map(|(t, _)| *t).collect();
    let unexpected: Vec<&&str> = empty.iter().filter(|t| !allowed.contains(t)).collect();
    assert!(
        unexpected.is_empty(),
        "panels with no data from a real agent: {unexpected:?}"
    );
    // What the status and uptime panels show is what the agent measured.
    let status = prom.query(&as_sent(
        "max by (instance, probe, kind, status) (upkeep_probe_status{instance=~\"$instance\"} == 1)",
    ));
    let of = |probe: &str| {
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["metric"]["probe"] == probe)
            .map(|s| s["metric"]["status"].clone())
    };
    assert_eq!(of("svc"), Some("healthy".into()), "{status}");
    assert_eq!(of("gone"), Some("unhealthy".into()), "{status}");
    // The shipped alert rule sees the down probe (pending: it needs 5 minutes).
    let alerts = prom.query("ALERTS{alertname=\"UpkeepProbeDown\",probe=\"gone\"}");
    assert!(!alerts.as_array().unwrap().is_empty(), "{alerts}");
}
