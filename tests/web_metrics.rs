//! `/metrics`: the running agent's probes, statuses and own health in
//! Prometheus text format, accepted by `promtool check metrics` with no lint
//! problem, hostile label values included; only GET and HEAD are served.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use upkeep::config::ApiConfig;
use upkeep::live::{Live, ProbeMeta, ProbeState};
use upkeep::probes::runner::RunnerStats;
use upkeep::sample::{SeriesKey, Status, Unit};
use upkeep::web::metrics::{TEXT_FORMAT, render};
use upkeep::web::{Info, Shared};

use crate::util::{Agent, free_port, get, request, temp_dir, wait_for, write_file};

/// Runs `promtool check metrics` on `text`; fails the test on any problem.
pub fn promtool_check(text: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool is not on PATH: run the tests with ./test.sh, which installs it")
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\non:\n{text}",
        out.status
    );
}

/// The value of the sample written exactly as `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a sample value"))
}

fn metrics(port: u16) -> String {
    let (code, body) = get(port, "/metrics").expect("the agent answers");
    assert_eq!(code, 200, "{body}");
    body
}

fn config(dir: &Path, port: u16, up: &str, closed: u16) -> std::path::PathBuf {
    write_file(
        dir,
        "agent.toml",
        &format!(
            "[agent]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [probe.svc]\nkind = \"tcp\"\naddress = \"{up}\"\n\n\
             [probe.closed]\nkind = \"tcp\"\naddress = \"127.0.0.1:{closed}\"\n"
        ),
    )
}

#[test]
fn the_running_agent_exports_probes_and_its_health() {
    let dir = temp_dir();
    let port = free_port();
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = free_port();
    let cfg = config(
        dir.path(),
        port,
        &target.local_addr().unwrap().to_string(),
        closed,
    );
    let _agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);

    let status = |probe: &str, s: &str| {
        format!("upkeep_probe_status{{probe=\"{probe}\",kind=\"tcp\",status=\"{s}\"}}")
    };
    wait_for("both tcp probes and the host probe in /metrics", || {
        let m = metrics(port);
        value(&m, &status("svc", "healthy")) == Some(1.0)
            && value(&m, &status("closed", "unhealthy")) == Some(1.0)
            && value(&m, "upkeep_host_load1{probe=\"host\"}").is_some()
    });
    let m = metrics(port);
    for s in ["degraded", "unhealthy", "unknown"] {
        assert_eq!(value(&m, &status("svc", s)), Some(0.0), "{m}");
    }
    assert_eq!(value(&m, &status("closed", "healthy")), Some(0.0), "{m}");
    let up = |probe: &str| {
        value(
            &m,
            &format!("upkeep_probe_up{{probe=\"{probe}\",kind=\"tcp\"}}"),
        )
    };
    assert_eq!((up("svc"), up("closed")), (Some(1.0), Some(0.0)), "{m}");
    assert!(
        value(&m, "upkeep_tcp_connect_seconds{probe=\"svc\"}").is_some_and(|v| v >= 0.0),
        "{m}"
    );
    assert_eq!(
        value(&m, "upkeep_tcp_connect_seconds{probe=\"closed\"}"),
        None,
        "a failed tick has no readings: {m}"
    );
    assert_eq!(
        value(
            &m,
            "upkeep_probe_interval_seconds{probe=\"closed\",kind=\"tcp\"}"
        ),
        Some(1.0)
    );
    assert_eq!(value(&m, "upkeep_history_open"), Some(1.0), "{m}");
    assert_eq!(value(&m, "upkeep_config_last_reload_successful"), Some(1.0));
    assert!(
        m.contains(&format!(
            "upkeep_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{m}"
    );

    let written =
        |m: &str| value(m, "upkeep_history_samples_written_total").expect("samples written");
    let before = written(&m);
    wait_for("more samples written", || written(&metrics(port)) > before);

    let answer = request(
        port,
        &format!("GET /metrics HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(answer.code, 200);
    assert_eq!(answer.header("content-type"), Some(TEXT_FORMAT));
    promtool_check(&answer.body);
}

/// A live state as the recorder would leave it: probe `name` of `kind` that
/// last ticked at `tick`.
fn live_with(name: &str, kind: &'static str, tick: i64) -> Live {
    let mut live = Live {
        started_ms: 1_700_000_000_000,
        ..Live::default()
    };
    live.configured.push(ProbeMeta {
        name: name.into(),
        kind,
        interval_ms: 1000,
        timeout_ms: 1000,
    });
    live.probes.insert(
        name.into(),
        ProbeState {
            kind,
            status: Status::Degraded,
            since_ms: tick,
            reason: Some("slow".into()),
            last_ts_ms: tick,
            last_took_ms: 3.0,
            last_error: None,
        },
    );
    live
}

fn info() -> Info {
    info_in(Path::new("unused"))
}

fn info_in(data_dir: &Path) -> Info {
    Info {
        version: "0.0.0-test",
        hostname: "test-host".into(),
        config_path: None,
        data_dir: data_dir.into(),
    }
}

/// Serves the routes of `live` on a loopback port until dropped.
struct Server {
    port: u16,
    stop: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    fn start(live: Live) -> Server {
        Server::start_in(live, Path::new("unused"))
    }

    /// Serves `live` with its history file in `data_dir`.
    fn start_in(live: Live, data_dir: &Path) -> Server {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(upkeep::web::bind("127.0.0.1:0"))
            .expect("binding a loopback port");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(
            Shared::new(
                info_in(data_dir),
                Arc::new(RwLock::new(live)),
                Arc::new(RunnerStats::default()),
                &ApiConfig::default(),
                None,
                None,
            )
            .listening_on(listener.local_addr().ok()),
        );
        let stop = CancellationToken::new();
        runtime.spawn(upkeep::web::serve(listener, state, stop.clone()));
        Server {
            port,
            stop,
            runtime: Some(runtime),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

#[test]
fn hostile_label_values_are_escaped_and_pass_promtool() {
    let mut live = live_with("we\"ird\\probe", "host", 5000);
    let hostile = [
        "a\"quoted\" mount",
        "back\\slash\\",
        "new\nline",
        "brace} comma, equals= {x=\"y\"}",
        "carriage\rreturn\ttab",
        "ünïcødé ✓",
        "",
    ];
    for (i, v) in hostile.iter().enumerate() {
        live.push(
            &SeriesKey::new(
                "we\"ird\\probe",
                "disk_used_ratio",
                &[("mount", v), ("Odd-Label.name", &i.to_string())],
            ),
            Unit::Ratio,
            5000,
            i as f64 / 10.0,
        );
    }
    for (metric, v) in [
        ("not_a_number", f64::NAN),
        ("huge_bytes", f64::INFINITY),
        ("tiny", -f64::INFINITY),
    ] {
        live.push(
            &SeriesKey::new("we\"ird\\probe", metric, &[]),
            Unit::None,
            5000,
            v,
        );
    }
    let rendered = render(&live, &RunnerStats::default(), &info());
    let server = Server::start(live);
    let (code, body) = get(server.port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, rendered, "the route serves what render gives");
    for line in [
        r#"upkeep_host_disk_used_ratio{probe="we\"ird\\probe",mount="a\"quoted\" mount",odd_label_name="0"} 0"#,
        r#"upkeep_host_disk_used_ratio{probe="we\"ird\\probe",mount="back\\slash\\",odd_label_name="1"} 0.1"#,
        r#"upkeep_host_disk_used_ratio{probe="we\"ird\\probe",mount="new\nline",odd_label_name="2"} 0.2"#,
        r#"upkeep_host_disk_used_ratio{probe="we\"ird\\probe",mount="brace} comma, equals= {x=\"y\"}",odd_label_name="3"} 0.3"#,
        r#"upkeep_host_not_a_number{probe="we\"ird\\probe"} NaN"#,
        r#"upkeep_host_huge_bytes{probe="we\"ird\\probe"} +Inf"#,
        r#"upkeep_host_tiny{probe="we\"ird\\probe"} -Inf"#,
    ] {
        assert!(body.lines().any(|l| l == line), "no `{line}` in:\n{body}");
    }
    promtool_check(&body);
}

#[test]
fn only_get_and_head_are_served() {
    let server = Server::start(live_with("svc", "tcp", 1000));
    let ask = |method: &str, path: &str| {
        request(
            server.port,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Length: 0\r\n\r\n",
                server.port
            ),
        )
        .expect("the server answers")
    };
    let got = ask("GET", "/metrics");
    assert_eq!(got.code, 200);
    assert_eq!(got.header("content-type"), Some(TEXT_FORMAT));
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));

    let head = ask("HEAD", "/metrics");
    assert_eq!(head.code, 200);
    assert_eq!(head.header("content-type"), Some(TEXT_FORMAT));
    assert_eq!(head.body, "", "HEAD has no body");

    for method in ["POST", "PUT", "DELETE"] {
        let a = ask(method, "/metrics");
        assert_eq!(a.code, 405, "{method}: {}", a.body);
    }
    assert_eq!(ask("GET", "/metrics/extra").code, 404);

    let foreign = request(
        server.port,
        "GET /metrics HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .unwrap();
    assert_eq!(foreign.code, 403, "{}", foreign.body);
}

/// The family of `name` in `text`: (HELP text, TYPE).
fn family<'a>(text: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    let help = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))?;
    let kind = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))?;
    Some((help, kind))
}

#[test]
fn counters_histograms_and_help_follow_prometheus_habits_on_a_real_agent() {
    let dir = temp_dir();
    let port = free_port();
    let log = dir.path().join("access.log");
    std::fs::write(&log, "").unwrap();
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "[agent]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [probe.pg]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1 port=5432 dbname=postgres\"\nuser = \"postgres\"\n\n\
             [probe.cache]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n\n\
             [probe.self]\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/-/healthy\"\n\n\
             [probe.web]\nkind = \"access_log\"\npaths = [{:?}]\n",
            log.display().to_string()
        ),
    );
    let _agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    wait_for("the access log probe's first tick", || {
        value(
            &metrics(port),
            "upkeep_access_log_requests_total{probe=\"web\",class=\"2xx\"}",
        )
        .is_some()
    });
    let line = |status: u16, secs: f64| {
        format!(
            "127.0.0.1 - - [28/Nov/2026:10:00:01 +0000] \"GET / HTTP/1.1\" {status} 10 \"-\" \"t\" {secs}\n"
        )
    };
    let text: String = [(200, 0.003), (200, 0.2), (502, 0.7)]
        .into_iter()
        .map(|(s, t)| line(s, t))
        .collect();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let counted = |m: &str| {
        value(
            m,
            "upkeep_access_log_request_duration_seconds_count{probe=\"web\"}",
        ) == Some(3.0)
    };
    wait_for("the requests counted and every probe's totals", || {
        let m = metrics(port);
        counted(&m)
            && value(&m, "upkeep_postgres_commits_total{probe=\"pg\"}").is_some()
            && value(&m, "upkeep_redis_evicted_keys_total{probe=\"cache\"}").is_some()
            && m.contains("upkeep_host_net_rx_bytes_total{")
    });
    let m = metrics(port);
    for name in [
        "upkeep_host_net_rx_bytes_total",
        "upkeep_host_net_tx_bytes_total",
        "upkeep_host_net_rx_packets_total",
        "upkeep_host_net_tx_packets_total",
        "upkeep_host_net_rx_errors_total",
        "upkeep_host_net_tx_errors_total",
        "upkeep_postgres_commits_total",
        "upkeep_postgres_rollbacks_total",
        "upkeep_redis_evicted_keys_total",
        "upkeep_redis_expired_keys_total",
        "upkeep_access_log_requests_total",
    ] {
        let (_, kind) = family(&m, name).unwrap_or_else(|| panic!("no {name} in:\n{m}"));
        assert_eq!(kind, "counter", "{name}");
    }
    // The gauges of rates stay beside the counters.
    assert_eq!(
        family(&m, "upkeep_postgres_commits_per_second").map(|f| f.1),
        Some("gauge")
    );
    let req = |class: &str| {
        value(
            &m,
            &format!("upkeep_access_log_requests_total{{probe=\"web\",class=\"{class}\"}}"),
        )
    };
    assert_eq!(
        (req("2xx"), req("5xx"), req("4xx")),
        (Some(2.0), Some(1.0), Some(0.0))
    );
    let h = "upkeep_access_log_request_duration_seconds";
    assert_eq!(family(&m, h).map(|f| f.1), Some("histogram"));
    let bucket = |le: &str| value(&m, &format!("{h}_bucket{{probe=\"web\",le=\"{le}\"}}"));
    assert_eq!(bucket("0.005"), Some(1.0));
    assert_eq!(bucket("0.25"), Some(2.0));
    assert_eq!(bucket("1"), Some(3.0));
    assert_eq!(bucket("+Inf"), Some(3.0));
    let sum = value(&m, &format!("{h}_sum{{probe=\"web\"}}")).unwrap();
    assert!((sum - 0.903).abs() < 1e-9, "{sum}");

    // Virtual interfaces are left out by default.
    for virt in ["\"lo\"", "\"ifb", "\"veth", "\"docker", "\"br-", "\"virbr"] {
        assert!(
            !m.contains(&format!("interface={virt}")),
            "{virt} exported:\n{m}"
        );
    }
    // HELP says what each family is: no placeholder text.
    let placeholders: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("# HELP ") && (l.contains("Reading ") || l.contains(" probe (")))
        .collect();
    assert!(
        placeholders.is_empty(),
        "placeholder HELP: {placeholders:#?}"
    );
    promtool_check(&m);
}

#[test]
fn forecasts_are_exported_only_while_confident() {
    use upkeep::config::HistoryConfig;
    use upkeep::store::writer::Sample;

    let dir = temp_dir();
    let now = upkeep::sample::now_ms();
    let start = now - 7_200_000;
    let rising = SeriesKey::new("host", "disk_used_ratio", &[("mount", "/data")]);
    // Swings with no trend: no line fits it.
    let swinging = SeriesKey::new("host", "memory_used_ratio", &[]);
    // Five minutes of points: too short to say anything.
    let short = SeriesKey::new("host", "disk_inodes_used_ratio", &[("mount", "/data")]);
    {
        let mut w = crate::util::temp_writer(dir.path(), &HistoryConfig::default(), start);
        let ids: Vec<i64> = [&rising, &swinging, &short]
            .iter()
            .map(|k| w.series_id(k, Unit::Ratio, start).unwrap().unwrap())
            .collect();
        for i in 0..720 {
            let ts = start + i * 10_000;
            let mut batch = vec![
                Sample {
                    series: ids[0],
                    ts,
                    value: 0.5 + i as f64 * 0.0002,
                },
                Sample {
                    series: ids[1],
                    ts,
                    value: if i % 2 == 0 { 0.3 } else { 0.6 },
                },
            ];
            if i >= 690 {
                batch.push(Sample {
                    series: ids[2],
                    ts,
                    value: 0.1 + i as f64 * 0.001,
                });
            }
            w.write(&batch, &[], ts).unwrap();
        }
        w.end_run(now).unwrap();
    }
    let mut live = live_with("host", "host", now);
    for k in [&rising, &swinging, &short] {
        live.push(k, Unit::Ratio, now, 0.5);
    }
    let server = Server::start_in(live, dir.path());
    let (code, body) = get(server.port, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("upkeep_forecast_seconds_until"))
        .collect();
    assert_eq!(lines.len(), 1, "only the confident forecast: {lines:#?}");
    let eta = value(
        &body,
        r#"upkeep_forecast_seconds_until{series="host.disk_used_ratio{mount=\"/data\"}"}"#,
    )
    .expect("the rising disk's forecast");
    // 0.644 now, rising 0.0002 per 10 s: 1 in (1 - 0.644) / 0.00002 s.
    let want = (1.0 - 0.6438) / 0.00002;
    assert!(
        (eta - want).abs() < want * 0.05,
        "{eta} s, want about {want} s"
    );
    promtool_check(&body);
}

#[test]
fn a_wildcard_listener_serves_metrics_by_the_hosts_own_names_and_no_other() {
    use std::os::unix::fs::PermissionsExt;

    let dir = temp_dir();
    let port = free_port();
    let token = write_file(dir.path(), "token", "s3cret-token\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "[agent]\ninterval = \"1s\"\n\n[api]\nlisten = \"0.0.0.0:{port}\"\ntoken_file = {:?}\n",
            token.display().to_string()
        ),
    );
    let _agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    let scrape = |host: &str| {
        let a = request(
            port,
            &format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .expect("the agent answers");
        (a.code, a.body)
    };
    // What a scraper would name: the host name, its canonical name, and
    // the address of each interface (not only loopback).
    let hostname = sysinfo::System::host_name().unwrap();
    let own = upkeep::web::own_names::read();
    let addresses: Vec<&String> = own
        .iter()
        .filter(|n| {
            n.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| !a.is_loopback())
        })
        .collect();
    assert!(
        !addresses.is_empty(),
        "no non-loopback address to test with: {own:?}"
    );
    let mut names: Vec<String> = vec![hostname.clone(), hostname.to_uppercase()];
    names.extend(own.iter().cloned());
    for name in &names {
        let (code, body) = scrape(&format!("{name}:{port}"));
        assert_eq!(code, 200, "Host {name}: {body}");
        assert!(body.contains("upkeep_build_info"), "{body}");
    }
    // The DNS-rebinding guard stays for every other name, and for this
    // host's names on another port.
    for host in [
        format!("evil.example:{port}"),
        format!("{hostname}.evil.example:{port}"),
        format!("{}:{}", addresses[0], port + 1),
    ] {
        let (code, body) = scrape(&host);
        assert_eq!(code, 403, "Host {host}: {body}");
        assert!(body.contains("is not this agent"), "{body}");
    }
}
