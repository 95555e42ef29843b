//! `GET /api/v1/health` against the seed's `SystemHealthMetrics` interface,
//! field by field, with types and units, from a real agent watching the
//! real PostgreSQL and Redis of this machine, an http probe, a worker, and
//! an access log: a client written against the seed works unchanged.

use std::io::Write;
use std::net::TcpListener;

use crate::util::{Agent, free_port, get, temp_dir, wait_for, write_file};

type Json = serde_json::Value;

const STATUSES: [&str; 3] = ["healthy", "degraded", "unhealthy"];
const TRENDS: [&str; 3] = ["increasing", "stable", "decreasing"];

fn health(port: u16) -> Json {
    let (code, body) = get(port, "/api/v1/health").expect("the agent answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// A JavaScript `Date` sent as JSON: an RFC 3339 UTC string.
fn assert_date(v: &Json, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    assert!(
        s.ends_with('Z') && upkeep::fmt::parse_time(s, 0).is_ok(),
        "{what} is not an RFC 3339 UTC time: {s}"
    );
}

fn number(v: &Json, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// The seed's `ServiceHealth`: name, one of three statuses, an optional
/// response time in milliseconds, a last check date, details.
fn assert_service(s: &Json, name: &str, what: &str) {
    assert_eq!(s["name"], name, "{what}: {s}");
    let status = s["status"].as_str().expect("status is a string");
    assert!(STATUSES.contains(&status), "{what}.status: {status}");
    assert_eq!(status, "healthy", "{what}: {s}");
    let ms = number(&s["response_time"], &format!("{what}.response_time"));
    // Milliseconds: a local check takes more than a microsecond and less
    // than a second (in seconds it would be below 0.001 and fail the first).
    assert!(
        (0.001..1000.0).contains(&ms),
        "{what}.response_time {ms} ms"
    );
    assert_date(&s["last_check"], &format!("{what}.last_check"));
    assert!(s["details"].is_object(), "{what}.details: {s}");
}

/// The seed's `ResourceUsage`: numbers, percentage = current / max, a
/// trend word.
fn assert_usage(u: &Json, what: &str) -> (f64, f64) {
    let current = number(&u["current"], &format!("{what}.current"));
    let max = number(&u["max"], &format!("{what}.max"));
    let pct = number(&u["percentage"], &format!("{what}.percentage"));
    assert!(max > 0.0 && (0.0..=max).contains(&current), "{what}: {u}");
    assert!(
        (pct - current / max * 100.0).abs() < 1e-6,
        "{what}.percentage is current/max in percent: {u}"
    );
    let trend = u["trend"].as_str().expect("trend is a string");
    assert!(TRENDS.contains(&trend), "{what}.trend: {trend}");
    // A fresh agent has too little history: stable, saying why.
    assert_eq!(trend, "stable", "{what}: {u}");
    assert!(
        u["trend_reason"]
            .as_str()
            .is_some_and(|r| r.contains("too little history")),
        "{what}.trend_reason: {u}"
    );
    (current, max)
}

/// Used and available bytes of `path` as df counts them.
fn df(path: &str) -> (f64, f64) {
    let c = std::ffi::CString::new(path).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer valid for writes.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) }, 0);
    // SAFETY: statvfs returned 0.
    let st = unsafe { st.assume_init() };
    let b = st.f_frsize as f64;
    (
        (st.f_blocks - st.f_bfree) as f64 * b,
        st.f_bavail as f64 * b,
    )
}

#[test]
fn the_health_document_satisfies_the_seed_interface_field_by_field() {
    let dir = temp_dir();
    let port = free_port();
    let worker = TcpListener::bind("127.0.0.1:0").unwrap();
    let frontend = TcpListener::bind("127.0.0.1:0").unwrap();
    let log = dir.path().join("access.log");
    std::fs::write(&log, "").unwrap();
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "[agent]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [probe.pg]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1 port=5432 dbname=postgres\"\nuser = \"postgres\"\n\n\
             [probe.cache]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n\n\
             [probe.selfcheck]\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/-/healthy\"\n\n\
             [probe.frontend]\nkind = \"tcp\"\nrole = \"api\"\naddress = \"{}\"\n\n\
             [probe.margin-monitor]\nkind = \"tcp\"\nrole = \"worker\"\naddress = \"{}\"\n\n\
             [probe.web]\nkind = \"access_log\"\npaths = [{:?}]\n",
            frontend.local_addr().unwrap(),
            worker.local_addr().unwrap(),
            log.display().to_string(),
        ),
    );
    let _agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    wait_for("every service healthy and the host measured", || {
        let v = health(port);
        ["database", "redis", "api"]
            .iter()
            .all(|s| v["services"][s]["status"] == "healthy")
            && v["services"]["workers"][0]["status"] == "healthy"
            && v["services"]["selfcheck"]["status"] == "healthy"
            && v["resources"]["cpu"].is_object()
            && v["resources"]["disk"].is_object()
    });
    // 4 requests, one a 5xx, 40 ms each, written in one go.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let line = |status: u16| {
        format!(
            "127.0.0.1 - - [28/Nov/2026:10:00:01 +0000] \"GET / HTTP/1.1\" {status} 10 \"-\" \"t\" 0.040\n"
        )
    };
    let text: String = [200, 200, 503, 200].into_iter().map(line).collect();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    wait_for("the requests counted", || {
        health(port)["performance"]["error_rate"].is_number()
    });
    let v = health(port);

    // SystemHealthMetrics: exactly the seed's four keys.
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["performance", "resources", "services", "timestamp"]);
    assert_date(&v["timestamp"], "timestamp");

    // services: database by kind (postgres), redis by kind, api by role
    // (the tcp probe `frontend`, not the http probe), workers by role.
    let s = &v["services"];
    assert_service(&s["database"], "pg", "services.database");
    assert_service(&s["redis"], "cache", "services.redis");
    assert_service(&s["api"], "frontend", "services.api");
    assert_eq!(s["api"]["details"]["role"], "api");
    let workers = s["workers"]
        .as_array()
        .expect("services.workers is an array");
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_service(&workers[0], "margin-monitor", "services.workers[0]");
    // The other probes stay under services by name, as added fields.
    assert_service(&s["selfcheck"], "selfcheck", "services.selfcheck");

    // resources.cpu: percent of all cores, max 100.
    let r = &v["resources"];
    let (cpu, max) = assert_usage(&r["cpu"], "resources.cpu");
    assert_eq!(max, 100.0);
    assert_eq!(number(&r["cpu"]["percentage"], "cpu.percentage"), cpu);
    assert_eq!(r["cpu"]["unit"], "percent");

    // resources.memory in MB (2^20 bytes) of this host.
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
    let (used_mb, total_mb) = assert_usage(&r["memory"], "resources.memory");
    assert!(
        (total_mb - total_kib / 1024.0).abs() < total_kib / 1024.0 * 0.01,
        "memory.max is MemTotal in MB: {} vs {}",
        total_mb,
        total_kib / 1024.0
    );
    assert_eq!(r["memory"]["unit"], "MB");
    assert!(
        (number(&r["memory"]["current_bytes"], "memory.current_bytes") / 1048576.0 - used_mb).abs()
            < 1e-6
    );

    // resources.disk in GB (2^30 bytes), used as df counts it.
    let (used_gb, max_gb) = assert_usage(&r["disk"], "resources.disk");
    assert_eq!(r["disk"]["unit"], "GB");
    let mount = r["disk"]["mount"].as_str().expect("disk.mount");
    let (used, avail) = df(mount);
    let gib = 1024.0 * 1024.0 * 1024.0;
    assert!(
        (max_gb - (used + avail) / gib).abs() < 0.5,
        "disk.max {max_gb} GB vs df {} GB",
        (used + avail) / gib
    );
    assert!(
        (used_gb - used / gib).abs() < 0.5,
        "disk.current {used_gb} GB vs df {} GB",
        used / gib
    );

    // resources.network: the four counters' rates (per second), numbers.
    for k in ["bytes_in", "bytes_out", "packets_in", "packets_out"] {
        let n = &r["network"][k];
        assert!(n.is_number() || n.is_null(), "network.{k}: {n}");
    }

    // performance: milliseconds, requests per hour, a 0–1 fraction, percent.
    let p = &v["performance"];
    let ms = number(&p["response_time"], "performance.response_time");
    assert!((0.001..1000.0).contains(&ms), "response_time {ms} ms");
    assert_eq!(
        number(&p["error_rate"], "error_rate"),
        0.25,
        "1 of 4 was a 5xx"
    );
    // 4 requests within the last minute of ticks: over 100 an hour (per
    // second it would be 4 at most).
    let throughput = number(&p["throughput"], "throughput");
    assert!(
        (100.0..20.0 * 3600.0).contains(&throughput),
        "throughput {throughput} requests per hour"
    );
    let uptime = &p["uptime"];
    assert!(
        uptime.is_null() || (0.0..=100.0).contains(&number(uptime, "uptime")),
        "uptime in percent: {uptime}"
    );
}
