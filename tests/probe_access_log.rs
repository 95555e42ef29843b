//! The access-log probe on real files: rotation by rename and by truncation
//! while a writer appends, restarts, malformed lines, percentiles, JSON.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use upkeep::config::Config;
use upkeep::probes::access_log::{AccessLogConfig, AccessLogProbe};
use upkeep::probes::{BuildContext, Probe};
use upkeep::sample::Reading;

use crate::util::temp_dir;

fn config(paths: &[&Path], extra: &str) -> AccessLogConfig {
    let list: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let text = format!(
        "[probe.web]\nkind = \"access_log\"\npaths = [{}]\n{extra}",
        list.join(", ")
    );
    match Config::parse("test.toml", &text)
        .expect("valid config")
        .probe
        .remove("web")
    {
        Some(upkeep::config::ProbeConfig::AccessLog(c)) => c,
        other => panic!("not an access_log probe: {other:?}"),
    }
}

fn probe(dir: &Path, cfg: &AccessLogConfig) -> AccessLogProbe {
    AccessLogProbe::new(
        "web",
        cfg,
        &BuildContext {
            data_dir: dir.join("data"),
            ..BuildContext::default()
        },
    )
}

fn value(r: &[Reading], metric: &str) -> Option<f64> {
    r.iter().find(|x| x.metric == metric).map(|x| x.value)
}

fn line(i: usize, status: u16, secs: f64) -> String {
    format!(
        "10.0.0.{} - - [28/Nov/2026:10:00:01 +0000] \"GET /item/{i} HTTP/1.1\" {status} 512 \"-\" \"test\" {secs:.3}\n",
        i % 250
    )
}

fn append(path: &Path, text: &str) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// Sums `requests` over ticks until `expected` lines are seen or 5 s pass.
async fn drain(p: &mut AccessLogProbe, mut seen: u64, expected: u64) -> u64 {
    for _ in 0..100 {
        if seen >= expected {
            // One more tick: nothing may arrive twice.
            tokio::time::sleep(Duration::from_millis(30)).await;
            seen += value(&p.sample().await.unwrap(), "requests").unwrap() as u64;
            break;
        }
        seen += value(&p.sample().await.unwrap(), "requests").unwrap() as u64;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_rename_while_a_writer_appends_counts_every_line_once() {
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    append(&log, "");
    let cfg = config(&[&log], "");
    let mut p = probe(dir.path(), &cfg);
    assert_eq!(value(&p.sample().await.unwrap(), "requests"), Some(0.0));

    const N: usize = 3000;
    let path = log.clone();
    let writer = std::thread::spawn(move || {
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        for i in 0..N {
            f.write_all(line(i, 200, 0.01).as_bytes()).unwrap();
            if i % 700 == 350 {
                // logrotate renames; the server writes a few more lines to the
                // old file before it reopens the path (as nginx does on USR1).
                std::fs::rename(&path, PathBuf::from(format!("{}.1", path.display()))).unwrap();
                for j in 0..5 {
                    f.write_all(line(N + i * 10 + j, 200, 0.01).as_bytes())
                        .unwrap();
                }
                std::thread::sleep(Duration::from_millis(30));
                f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap();
            }
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let mut seen = 0;
    while !writer.is_finished() {
        seen += value(&p.sample().await.unwrap(), "requests").unwrap() as u64;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.join().unwrap();
    let rotations = (0..N).filter(|i| i % 700 == 350).count();
    let expected = (N + rotations * 5) as u64;
    assert_eq!(drain(&mut p, seen, expected).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_copytruncate_while_a_writer_appends_counts_every_line_once() {
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    append(&log, "");
    let cfg = config(&[&log], "");
    let mut p = probe(dir.path(), &cfg);
    p.sample().await.unwrap();

    const N: usize = 3000;
    // logrotate copies, then truncates; lines written between the two are
    // lost by logrotate itself, so the writer pauses across them here.
    let gate = Arc::new(Mutex::new(()));
    let (path, g) = (log.clone(), gate.clone());
    let writer = std::thread::spawn(move || {
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        for i in 0..N {
            {
                let _held = g.lock().unwrap();
                f.write_all(line(i, 200, 0.01).as_bytes()).unwrap();
            }
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let mut seen = 0;
    let mut rotations = 0;
    while !writer.is_finished() {
        seen += value(&p.sample().await.unwrap(), "requests").unwrap() as u64;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if rotations < 3 && seen > 500 * (rotations + 1) {
            let _held = gate.lock().unwrap();
            std::fs::copy(&log, format!("{}.1", log.display())).unwrap();
            OpenOptions::new()
                .write(true)
                .open(&log)
                .unwrap()
                .set_len(0)
                .unwrap();
            rotations += 1;
        }
    }
    writer.join().unwrap();
    assert!(rotations >= 2, "only {rotations} truncations happened");
    assert_eq!(drain(&mut p, seen, N as u64).await, N as u64);
}

#[tokio::test]
async fn a_restart_never_counts_old_lines_again() {
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    append(
        &log,
        &(0..100).map(|i| line(i, 200, 0.01)).collect::<String>(),
    );
    let cfg = config(&[&log], "");
    let mut p = probe(dir.path(), &cfg);
    // Seen for the first time ever: old lines are not today's traffic.
    assert_eq!(value(&p.sample().await.unwrap(), "requests"), Some(0.0));
    append(
        &log,
        &(0..10).map(|i| line(i, 200, 0.01)).collect::<String>(),
    );
    assert_eq!(value(&p.sample().await.unwrap(), "requests"), Some(10.0));
    drop(p);

    // While the agent is down: 7 more lines, then a rotation, then 3.
    append(
        &log,
        &(0..7).map(|i| line(i, 200, 0.01)).collect::<String>(),
    );
    std::fs::rename(&log, format!("{}.1", log.display())).unwrap();
    append(
        &log,
        &(0..3).map(|i| line(i, 200, 0.01)).collect::<String>(),
    );
    let mut p = probe(dir.path(), &cfg);
    assert_eq!(value(&p.sample().await.unwrap(), "requests"), Some(10.0));
    drop(p);
    let mut p = probe(dir.path(), &cfg);
    assert_eq!(value(&p.sample().await.unwrap(), "requests"), Some(0.0));
}

#[tokio::test]
async fn ratios_percentiles_and_malformed_lines() {
    let dir = temp_dir();
    let log = dir.path().join("access.log");
    append(&log, "");
    let cfg = config(&[&log], "start_at = \"beginning\"\n");
    let mut p = probe(dir.path(), &cfg);
    p.sample().await.unwrap();
    let mut text = String::new();
    // 100 requests: latencies 1..=100 ms; 10 are 5xx and 20 are 4xx.
    for i in 1..=100 {
        let status = if i <= 10 {
            503
        } else if i <= 30 {
            404
        } else {
            200
        };
        text.push_str(&line(i, status, i as f64 / 1000.0));
    }
    text.push_str("this is not an access log line\n\n");
    append(&log, &text);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = p.sample().await.unwrap();
    assert_eq!(value(&r, "requests"), Some(100.0));
    assert_eq!(value(&r, "malformed_lines"), Some(2.0));
    assert_eq!(value(&r, "status_5xx_ratio"), Some(0.1));
    assert_eq!(value(&r, "status_4xx_ratio"), Some(0.2));
    let near = |m: &str, want: f64| {
        let v = value(&r, m).unwrap();
        assert!((v - want).abs() <= want * 0.01, "{m} = {v}, want {want}");
    };
    near("latency_p50_seconds", 0.050);
    near("latency_p95_seconds", 0.095);
    near("latency_p99_seconds", 0.099);
    let rps = value(&r, "requests_per_second").unwrap();
    assert!(
        rps > 100.0 && rps < 100.0 / 0.09,
        "{rps} requests/s over about 0.1 s"
    );
}

#[tokio::test]
async fn json_lines_with_configured_fields_and_several_files() {
    let dir = temp_dir();
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    append(&a, "");
    append(&b, "");
    let cfg = config(
        &[&a, &b],
        "format = \"json\"\nstatus_field = \"code\"\ntime_field = \"ms\"\ntime_unit = \"ms\"\n",
    );
    let mut p = probe(dir.path(), &cfg);
    p.sample().await.unwrap();
    append(
        &a,
        "{\"code\":200,\"ms\":12}\n{\"code\":\"500\",\"ms\":30}\n",
    );
    append(&b, "{\"code\":204}\n{oops\n");
    let r = p.sample().await.unwrap();
    assert_eq!(value(&r, "requests"), Some(3.0));
    assert_eq!(value(&r, "malformed_lines"), Some(1.0));
    assert!((value(&r, "status_5xx_ratio").unwrap() - 1.0 / 3.0).abs() < 1e-9);
}

#[tokio::test]
async fn a_missing_log_is_a_failure_naming_the_file() {
    let dir = temp_dir();
    let log = dir.path().join("nope.log");
    let cfg = config(&[&log], "");
    let err = probe(dir.path(), &cfg)
        .sample()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("access log {}: ", log.display())),
        "{err}"
    );
}

#[test]
fn relative_paths_and_empty_lists_are_config_errors() {
    for (body, want) in [
        (
            "paths = []\n",
            "probe.web.paths: at least one log file is needed",
        ),
        (
            "paths = [\"access.log\"]\n",
            "probe.web.paths: `access.log` is not an absolute path",
        ),
    ] {
        let err = Config::parse(
            "t.toml",
            &format!("[probe.web]\nkind = \"access_log\"\n{body}"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(want), "{err}");
    }
}
