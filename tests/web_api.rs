//! The local API: every route through `warp::test` on a state built from a
//! real history file, and through a real socket on the running agent; JSON
//! shapes; errors; hostile requests (rebinding, repeated or port-less Host
//! headers, absolute-form targets, oversized and chunked bodies, unknown
//! routes and parameters, a 10-year query at 1 s); HEAD; the bearer token of the
//! mutating route; the OpenAPI document against the routes; schemathesis
//! against the running agent.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use upkeep::config::{ApiConfig, HistoryConfig};
use upkeep::live::{Live, ProbeMeta, ProbeState};
use upkeep::probes::runner::RunnerStats;
use upkeep::sample::{SeriesKey, Status, Unit, now_ms};
use upkeep::store::Event;
use upkeep::store::writer::Sample;
use upkeep::web::{self, Info, Shared};

use crate::util::{
    Agent, free_port, get, request, temp_dir, temp_writer, upkeep, wait_for, write_file,
};

/// Every route the agent answers: (method, path as in the OpenAPI document,
/// a concrete path to request, the status it answers in process with a
/// wrong token and no maintenance behind it, the status the running agent
/// answers with the right token).
const ROUTES: &[(&str, &str, &str, u16, u16)] = &[
    ("get", "/-/healthy", "/-/healthy", 200, 200),
    ("get", "/-/ready", "/-/ready", 200, 200),
    ("get", "/metrics", "/metrics", 200, 200),
    ("get", "/", "/", 200, 200),
    ("get", "/assets/{name}", "/assets/page.css", 200, 200),
    (
        "get",
        "/api/v1/openapi.json",
        "/api/v1/openapi.json",
        200,
        200,
    ),
    ("get", "/api/v1/info", "/api/v1/info", 200, 200),
    ("get", "/api/v1/health", "/api/v1/health", 200, 200),
    ("get", "/api/v1/probes", "/api/v1/probes", 200, 200),
    ("get", "/api/v1/series", "/api/v1/series", 200, 200),
    (
        "get",
        "/api/v1/query",
        "/api/v1/query?key=host.cpu_used_ratio&since=2h",
        200,
        200,
    ),
    ("get", "/api/v1/trends", "/api/v1/trends", 200, 200),
    ("get", "/api/v1/events", "/api/v1/events", 200, 200),
    (
        "get",
        "/api/v1/maintenance",
        "/api/v1/maintenance",
        503,
        200,
    ),
    (
        "get",
        "/api/v1/maintenance/runs",
        "/api/v1/maintenance/runs",
        200,
        200,
    ),
    (
        "get",
        "/api/v1/maintenance/runs/{id}",
        "/api/v1/maintenance/runs/1",
        404,
        404,
    ),
    (
        "post",
        "/api/v1/maintenance/{name}/run",
        "/api/v1/maintenance/nightly/run",
        401,
        404,
    ),
    (
        "post",
        "/api/v1/maintenance/runs/{id}/rollback",
        "/api/v1/maintenance/runs/1/rollback",
        401,
        404,
    ),
    ("post", "/api/v1/reload", "/api/v1/reload", 401, 200),
    // 404 with the token: the test agent has no access_review probe.
    ("post", "/api/v1/access/ack", "/api/v1/access/ack", 401, 404),
    ("get", "/api/v1/alerts", "/api/v1/alerts", 503, 200),
    ("get", "/api/v1/silences", "/api/v1/silences", 503, 200),
    ("post", "/api/v1/silences", "/api/v1/silences", 401, 400),
    (
        "post",
        "/api/v1/silences/{id}/expire",
        "/api/v1/silences/1/expire",
        401,
        404,
    ),
];

const MIN: i64 = 60_000;

/// A state over a real history file: two hours of `host.cpu_used_ratio`
/// every 10 s (rising), a `svc` probe that went unhealthy 30 minutes ago,
/// and the live state of both probes.
fn state(dir: &Path, token: Option<&str>, api: ApiConfig) -> web::State {
    let now = now_ms();
    let start = now - 120 * MIN;
    let mut w = temp_writer(dir, &HistoryConfig::default(), start);
    let cpu = SeriesKey::new("host", "cpu_used_ratio", &[]);
    let disk = SeriesKey::new("host", "disk_used_ratio", &[("mount", "/data \"x\"")]);
    let cpu_id = w.series_id(&cpu, Unit::Ratio, start).unwrap().unwrap();
    let disk_id = w.series_id(&disk, Unit::Ratio, start).unwrap().unwrap();
    let mut live = Live {
        started_ms: start,
        ready: true,
        ..Live::default()
    };
    let mut ts = start;
    let mut first = true;
    while ts < now {
        let v = (ts - start) as f64 / (240 * MIN) as f64;
        let mut events = Vec::new();
        if first {
            events.push(status_event(ts, "svc", None, "healthy"));
            first = false;
        }
        if ts >= now - 30 * MIN && ts < now - 30 * MIN + 10_000 {
            events.push(status_event(ts, "svc", Some("healthy"), "unhealthy"));
        }
        w.write(
            &[
                Sample {
                    series: cpu_id,
                    ts,
                    value: v,
                },
                Sample {
                    series: disk_id,
                    ts,
                    value: 0.5 + v / 10.0,
                },
            ],
            &events,
            ts,
        )
        .unwrap();
        live.push(&cpu, Unit::Ratio, ts, v);
        ts += 10_000;
    }
    let last = ts - 10_000;
    live.configured = vec![
        ProbeMeta {
            name: "host".into(),
            kind: "host",
            interval_ms: 10_000,
            timeout_ms: 5_000,
        },
        ProbeMeta {
            name: "svc".into(),
            kind: "tcp",
            interval_ms: 10_000,
            timeout_ms: 5_000,
        },
    ];
    live.probes.insert(
        "host".into(),
        probe_state("host", Status::Healthy, start, None, last),
    );
    live.probes.insert(
        "svc".into(),
        probe_state(
            "tcp",
            Status::Unhealthy,
            now - 30 * MIN,
            Some("svc: connect to 127.0.0.1:1: Connection refused <b>"),
            last,
        ),
    );
    live.store.open = true;
    drop(w);
    let token = token.map(upkeep::secret::Secret::new);
    Arc::new(Shared::new(
        Info {
            version: env!("CARGO_PKG_VERSION"),
            hostname: "test-host".into(),
            config_path: None,
            data_dir: dir.to_path_buf(),
        },
        Arc::new(RwLock::new(live)),
        Arc::new(RunnerStats::default()),
        &api,
        token,
        None,
    ))
}

fn status_event(ts: i64, probe: &str, from: Option<&str>, to: &str) -> Event {
    Event {
        ts_ms: ts,
        probe: Some(probe.into()),
        kind: "status".into(),
        from_status: from.map(String::from),
        to_status: Some(to.into()),
        message: format!("{probe} is {to}"),
    }
}

fn probe_state(
    kind: &'static str,
    status: Status,
    since: i64,
    reason: Option<&str>,
    last: i64,
) -> ProbeState {
    ProbeState {
        kind,
        status,
        since_ms: since,
        reason: reason.map(String::from),
        last_ts_ms: last,
        last_took_ms: 1.5,
        last_error: reason.map(String::from),
    }
}

struct Got {
    code: u16,
    headers: warp::http::HeaderMap,
    body: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn call(state: &web::State, method: &str, path: &str, host: &str) -> Got {
    call_with(state, method, path, &[("host", host)], b"").await
}

async fn call_with(
    state: &web::State,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Got {
    let mut req = warp::test::request().method(method).path(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.body(body).reply(&web::routes(state.clone())).await;
    Got {
        code: r.status().as_u16(),
        headers: r.headers().clone(),
        body: String::from_utf8_lossy(r.body()).into_owned(),
    }
}

async fn get_json(state: &web::State, path: &str) -> Value {
    let r = call(state, "GET", path, "127.0.0.1:8711").await;
    assert_eq!(r.code, 200, "{path}: {}", r.body);
    assert_eq!(r.header("content-type"), "application/json", "{path}");
    r.json()
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.ends_with('Z') && humantime::parse_rfc3339_weak(s).is_ok())
}

#[tokio::test]
async fn every_route_answers_in_process_with_its_json_shape() {
    let dir = temp_dir();
    let s = state(dir.path(), None, ApiConfig::default());

    let info = get_json(&s, "/api/v1/info").await;
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["hostname"], "test-host");
    assert!(is_rfc3339(&info["started_at"]), "{info}");
    assert!(info["history_bound_bytes"].is_u64(), "{info}");
    assert_eq!(info["data_dir"], dir.path().to_str().unwrap());

    let probes = get_json(&s, "/api/v1/probes").await;
    let list = probes["probes"].as_array().unwrap();
    assert_eq!(
        list.iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["host", "svc"]
    );
    let svc = &list[1];
    assert_eq!(svc["status"], "unhealthy");
    assert_eq!(svc["kind"], "tcp");
    assert_eq!(svc["interval_seconds"], 10.0);
    assert!(is_rfc3339(&svc["status_since"]), "{svc}");
    assert!(svc["reason"].as_str().unwrap().contains("refused"));
    assert_eq!(svc["last"]["took_seconds"], 0.0015);
    let windows: Vec<&str> = svc["uptime"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["window"].as_str().unwrap())
        .collect();
    assert_eq!(windows, ["1h", "24h", "7d", "30d"]);
    // Healthy for 90 of the last 120 minutes of history, unhealthy for 30:
    // in the last hour, half and half.
    let h1 = &svc["uptime"][0];
    let ratio = h1["uptime_ratio"].as_f64().unwrap();
    assert!((ratio - 0.5).abs() < 0.01, "{h1}");
    assert!(h1["coverage_ratio"].as_f64().unwrap() > 0.99, "{h1}");
    let d1 = &svc["uptime"][1];
    assert!(
        (d1["uptime_ratio"].as_f64().unwrap() - 0.75).abs() < 0.01,
        "{d1}"
    );
    assert!(
        (d1["coverage_ratio"].as_f64().unwrap() - 2.0 / 24.0).abs() < 0.01,
        "{d1}"
    );
    // The host's last tick: the value in the ring at that tick.
    let host_last = &list[0]["last"]["readings"][0];
    assert_eq!(host_last["key"], "host.cpu_used_ratio");
    assert_eq!(host_last["unit"], "ratio");

    let series = get_json(&s, "/api/v1/series").await;
    let keys: Vec<&str> = series["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "host.cpu_used_ratio",
            "host.disk_used_ratio{mount=\"/data \\\"x\\\"\"}"
        ]
    );
    assert_eq!(series["series"][1]["labels"]["mount"], "/data \"x\"");
    let only = get_json(&s, "/api/v1/series?prefix=host.cpu").await;
    assert_eq!(only["series"].as_array().unwrap().len(), 1);

    let q = get_json(&s, "/api/v1/query?key=host.cpu_used_ratio&since=1h&step=1m").await;
    assert_eq!(q["key"], "host.cpu_used_ratio");
    assert_eq!(q["unit"], "ratio");
    assert_eq!(q["step_seconds"], 60.0);
    let points = q["points"].as_array().unwrap();
    assert!((59..=61).contains(&points.len()), "{}", points.len());
    for p in points {
        assert!(is_rfc3339(&p["time"]), "{p}");
        let (min, avg, max) = (
            p["min"].as_f64().unwrap(),
            p["avg"].as_f64().unwrap(),
            p["max"].as_f64().unwrap(),
        );
        assert!(min <= avg && avg <= max, "{p}");
    }
    // Six samples of a rising line per minute: every full bucket counts 6.
    assert!(points[1..points.len() - 1].iter().all(|p| p["count"] == 6));

    let trends = get_json(&s, "/api/v1/trends?window=2h").await;
    let cpu = trends["trends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == "host.cpu_used_ratio")
        .expect("cpu trend")
        .clone();
    assert_eq!(cpu["class"], "increasing", "{cpu}");
    // 1/240 of the range per minute: 6 per day.
    let slope = cpu["slope_per_day"].as_f64().unwrap();
    assert!((slope - 6.0).abs() < 0.2, "{cpu}");
    assert_eq!(cpu["forecast"]["status"], "reaches", "{cpu}");
    assert!(is_rfc3339(&cpu["forecast"]["at"]), "{cpu}");
    // From 0.5 at the window's end, 120 more minutes to 1.0.
    let eta = cpu["forecast"]["eta_seconds"].as_f64().unwrap();
    assert!((eta - 7200.0).abs() < 300.0, "{cpu}");
    assert!(trends["rule"].as_str().unwrap().contains("r²"));

    let events = get_json(&s, "/api/v1/events?probe=svc").await;
    let list = events["events"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{events}");
    assert_eq!(list[0]["to_status"], "unhealthy");
    assert_eq!(list[0]["from_status"], "healthy");
    assert!(is_rfc3339(&list[0]["at"]));
    let limited = get_json(&s, "/api/v1/events?limit=1").await;
    assert_eq!(limited["events"].as_array().unwrap().len(), 1);

    let health = get_json(&s, "/api/v1/health").await;
    assert_eq!(health["services"]["svc"]["status"], "unhealthy");
    assert!(is_rfc3339(&health["timestamp"]));

    let doc = get_json(&s, "/api/v1/openapi.json").await;
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let r = call(&s, "GET", "/-/healthy", "localhost:8711").await;
    assert_eq!((r.code, r.json()["status"].clone()), (200, "ok".into()));
    let r = call(&s, "GET", "/-/ready", "localhost:8711").await;
    assert_eq!(r.code, 200, "{}", r.body);
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_only_routes_that_answer() {
    let dir = temp_dir();
    let s = state(dir.path(), Some("t0ken"), ApiConfig::default());
    let doc: Value = serde_json::from_str(web::api::OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.clone(), p.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    documented.sort();
    let mut known: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, ..)| (m.to_string(), p.to_string()))
        .collect();
    known.sort();
    assert_eq!(documented, known, "the document and the routes differ");
    for (method, path, concrete, code, _) in ROUTES {
        let r = call_with(
            &s,
            &method.to_uppercase(),
            concrete,
            &[
                ("host", "localhost:8711"),
                ("authorization", "Bearer wrong"),
            ],
            b"",
        )
        .await;
        // A route that exists never answers "no such route"; mutating
        // routes refuse the wrong token, which proves they are there.
        assert_eq!(r.code, *code, "{method} {concrete}: {}", r.body);
        assert!(!r.body.contains("no such route"), "{method} {concrete}");
        let responses = &paths[*path][*method]["responses"];
        assert!(
            responses.get(r.code.to_string()).is_some(),
            "{method} {path}: status {} is not documented",
            r.code
        );
    }
}

#[tokio::test]
async fn bad_parameters_are_400s_that_name_the_parameter() {
    let dir = temp_dir();
    let s = state(dir.path(), None, ApiConfig::default());
    for (path, words) in [
        ("/api/v1/query", "`key` is required"),
        ("/api/v1/query?key=", "`key` is required"),
        (
            "/api/v1/query?key=host.cpu_used_ratio&since=yesterday",
            "`since`: `yesterday` is neither a duration",
        ),
        (
            "/api/v1/query?key=host.cpu_used_ratio&since=1h&until=2h",
            "`since` (",
        ),
        (
            "/api/v1/query?key=host.cpu_used_ratio&step=0s",
            "`step`: must be at least 1ms",
        ),
        (
            "/api/v1/query?key=host.cpu_used_ratio&step=fast",
            "`step`: `fast` is not a duration",
        ),
        (
            "/api/v1/query?key=host.cpu_used_ratio&max_points=0",
            "`max_points`: `0` is not a whole number from 1 to 10000",
        ),
        (
            "/api/v1/query?key=host.cpu_used_ratio&max_points=10001",
            "from 1 to 10000",
        ),
        ("/api/v1/query?key=a&key=b", "`key` given more than once"),
        (
            "/api/v1/info?verbose=1",
            "unknown query parameter `verbose`",
        ),
        ("/api/v1/events?limit=-1", "`limit`"),
        ("/api/v1/trends?window=1", "`window`"),
    ] {
        let r = call(&s, "GET", path, "localhost:8711").await;
        assert_eq!(r.code, 400, "{path}: {}", r.body);
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(words), "{path}: {msg}");
    }
    let r = call(
        &s,
        "GET",
        "/api/v1/query?key=host.nothing%3Cscript%3E",
        "localhost:8711",
    )
    .await;
    assert_eq!(r.code, 404, "{}", r.body);
    assert_eq!(
        r.json()["error"],
        "no series `host.nothing<script>` in history (GET /api/v1/series lists them)"
    );
    // JSON errors are JSON: the name is escaped, never markup.
    assert_eq!(r.header("content-type"), "application/json");
}

#[tokio::test]
async fn a_query_for_ten_years_at_one_second_is_bounded() {
    let dir = temp_dir();
    let s = state(dir.path(), None, ApiConfig::default());
    let q = get_json(
        &s,
        "/api/v1/query?key=host.cpu_used_ratio&since=3650d&step=1s",
    )
    .await;
    let n = q["points"].as_array().unwrap().len();
    assert!((1..=web::api::DEFAULT_POINTS).contains(&n), "{n} points");
    let step = q["step_seconds"].as_f64().unwrap();
    assert!(
        step * web::api::DEFAULT_POINTS as f64 >= 3650.0 * 86400.0,
        "step {step}s cannot cover ten years in {} points",
        web::api::DEFAULT_POINTS
    );
    let q = get_json(
        &s,
        "/api/v1/query?key=host.cpu_used_ratio&since=3650d&step=1s&max_points=10000",
    )
    .await;
    assert!(q["points"].as_array().unwrap().len() <= 10_000);
}

#[tokio::test]
async fn host_headers_that_do_not_name_this_agent_are_refused() {
    let dir = temp_dir();
    let api = ApiConfig {
        allowed_hosts: vec!["Agent.Example.org".into()],
        ..ApiConfig::default()
    };
    let s = state(dir.path(), None, api);
    for host in [
        "localhost:8711",
        "LOCALHOST:8711",
        "127.0.0.1:8711",
        "[::1]:8711",
        "agent.example.org:8711",
        "agent.example.org.:8711",
    ] {
        let r = call(&s, "GET", "/api/v1/info", host).await;
        assert_eq!(r.code, 200, "Host {host}: {}", r.body);
    }
    for host in [
        // The port is part of the origin: a page served by another port
        // of this host, or one that names no port (port 80), is foreign.
        "localhost",
        "LOCALHOST",
        "127.0.0.1",
        "[::1]",
        "agent.example.org",
        "localhost:8712",
        "localhost:80",
        "127.0.0.1:18711",
        "[::1]:87110",
        "evil.example.com",
        "localhost.evil.example.com",
        "127.0.0.1.nip.io",
        "evil.example.com:8711",
        "localhost:8711@evil.example.com",
        "localhost:abc",
        "localhost:",
        "[::1]x",
        "[::1",
        "::1",
        "agent.example.org.evil",
        "",
    ] {
        for path in ["/api/v1/info", "/", "/metrics", "/-/healthy"] {
            let r = call(&s, "GET", path, host).await;
            assert_eq!(r.code, 403, "Host {host:?} {path}: {}", r.body);
            assert!(
                r.json()["error"].as_str().unwrap().contains("Host"),
                "{}",
                r.body
            );
            // A refused answer carries nothing of the agent's state.
            assert!(!r.body.contains("test-host"));
        }
    }
    // Listening on port 80, a Host without a port is how clients name it.
    let dir = temp_dir();
    let api = ApiConfig {
        listen: "127.0.0.1:80".into(),
        ..ApiConfig::default()
    };
    let s = state(dir.path(), None, api);
    for (host, code) in [
        ("localhost", 200),
        ("localhost:80", 200),
        ("127.0.0.1", 200),
        ("localhost:8711", 403),
    ] {
        let r = call(&s, "GET", "/api/v1/info", host).await;
        assert_eq!(r.code, code, "Host {host}: {}", r.body);
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let dir = temp_dir();
    let s = state(dir.path(), None, ApiConfig::default());
    for path in [
        "/nope",
        "/api/v2/info",
        "/api/v1/info/extra",
        "/api/v1/",
        "/assets/../../etc/passwd",
        "/assets/%2e%2e/%2e%2e/etc/passwd",
        "/assets/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/assets/%252e%252e%252fetc%252fpasswd",
        "/assets/..%5c..%5cetc%5cpasswd",
        "/%2e%2e/etc/passwd",
    ] {
        let r = call(&s, "GET", path, "localhost:8711").await;
        assert_eq!(r.code, 404, "{path}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{path}");
        assert!(!r.body.contains("root:"), "{path}");
    }
    let r = call(&s, "DELETE", "/api/v1/info", "localhost:8711").await;
    assert_eq!(r.code, 405, "{}", r.body);
    assert_eq!(r.header("allow"), "GET, HEAD");
    let r = call(&s, "GET", "/api/v1/reload", "localhost:8711").await;
    assert_eq!((r.code, r.header("allow")), (405, "POST"), "{}", r.body);
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let dir = temp_dir();
    let s = state(dir.path(), None, ApiConfig::default());
    for path in ["/", "/api/v1/info", "/nope", "/metrics"] {
        let r = call(&s, "GET", path, "localhost:8711").await;
        let csp = r.header("content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(r.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(r.header("x-frame-options"), "DENY", "{path}");
        assert_eq!(r.header("referrer-policy"), "no-referrer", "{path}");
        assert!(r.header("access-control-allow-origin").is_empty(), "{path}");
    }
    // A cross-origin preflight gets no CORS grant.
    let r = call_with(
        &s,
        "OPTIONS",
        "/api/v1/info",
        &[
            ("host", "localhost:8711"),
            ("origin", "http://evil.example.com"),
            ("access-control-request-method", "GET"),
        ],
        b"",
    )
    .await;
    assert!(r.code >= 400, "{}", r.code);
    assert!(r.header("access-control-allow-origin").is_empty());
}

#[tokio::test]
async fn the_reload_route_needs_the_token_and_a_body_within_the_limit() {
    let dir = temp_dir();
    // No token file: the mutating route is disabled.
    let s = state(dir.path(), None, ApiConfig::default());
    let r = call_with(
        &s,
        "POST",
        "/api/v1/reload",
        &[
            ("host", "localhost:8711"),
            ("authorization", "Bearer anything"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.code, 403, "{}", r.body);
    assert!(r.body.contains("api.token_file"), "{}", r.body);

    let dir = temp_dir();
    let s = state(dir.path(), Some("correct-horse"), ApiConfig::default());
    for (auth, code, words) in [
        (None, 401, "Authorization: Bearer"),
        (Some("Bearer wrong-horse"), 401, "wrong bearer token"),
        (Some("Bearer correct-hors"), 401, "wrong bearer token"),
        (Some("Bearer correct-horsee"), 401, "wrong bearer token"),
        (Some("Basic Y29ycmVjdC1ob3JzZQ=="), 401, "Bearer"),
        (Some("correct-horse"), 401, "Bearer"),
    ] {
        let mut headers = vec![("host", "localhost:8711")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let r = call_with(&s, "POST", "/api/v1/reload", &headers, b"").await;
        assert_eq!(r.code, code, "{auth:?}: {}", r.body);
        assert!(r.body.contains(words), "{auth:?}: {}", r.body);
        assert!(!r.body.contains("correct-horse"), "the token leaked");
    }
    // The right token reaches the agent; this state has no agent loop
    // behind it, which the answer says.
    let r = call_with(
        &s,
        "POST",
        "/api/v1/reload",
        &[
            ("host", "localhost:8711"),
            ("authorization", "Bearer correct-horse"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.code, 503, "{}", r.body);

    // An oversized body is refused before any route reads it, on any route.
    let big = vec![b'x'; web::BODY_LIMIT as usize + 1];
    for (method, path) in [("POST", "/api/v1/reload"), ("GET", "/api/v1/info")] {
        let len = big.len().to_string();
        let r = call_with(
            &s,
            method,
            path,
            &[
                ("host", "localhost:8711"),
                ("authorization", "Bearer correct-horse"),
                ("content-length", &len),
            ],
            &big,
        )
        .await;
        assert_eq!(r.code, 413, "{method} {path}: {}", r.body);
        assert!(r.body.contains("over the limit"), "{}", r.body);
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_trimmed() {
    let dir = temp_dir();
    let s = state(dir.path(), Some("correct-horse"), ApiConfig::default());
    // The right token reaches the route, which answers 503: this state has
    // no agent loop behind it.
    for auth in [
        "Bearer correct-horse",
        "bearer correct-horse",
        "BEARER correct-horse",
        "bEaReR \t correct-horse \t",
    ] {
        let r = call_with(
            &s,
            "POST",
            "/api/v1/reload",
            &[("host", "localhost:8711"), ("authorization", auth)],
            b"",
        )
        .await;
        assert_eq!(r.code, 503, "{auth:?}: {}", r.body);
    }
    for (auth, words) in [
        ("Bearer", "Authorization: Bearer"),
        ("Bearer   ", "Authorization: Bearer"),
        ("Bearercorrect-horse", "Authorization: Bearer"),
        ("bearer wrong-horse", "wrong bearer token"),
    ] {
        let r = call_with(
            &s,
            "POST",
            "/api/v1/reload",
            &[("host", "localhost:8711"), ("authorization", auth)],
            b"",
        )
        .await;
        assert_eq!(r.code, 401, "{auth:?}: {}", r.body);
        assert!(r.body.contains(words), "{auth:?}: {}", r.body);
    }
}

/// A token file whose line has spaces around the token (as an editor may
/// leave them) still lets the token in.
#[test]
fn a_token_file_with_surrounding_whitespace_still_lets_the_token_in() {
    let dir = temp_dir();
    let token = write_file(dir.path(), "token", "  s3cret-t0ken \t\n");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let port = free_port();
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    let agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    let r = post(port, "/api/v1/reload", Some("Bearer s3cret-t0ken"));
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(post(port, "/api/v1/reload", Some("bearer nope")).code, 401);
    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(std::time::Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_token_file_that_cannot_be_read_stops_the_start() {
    let dir = temp_dir();
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "[api]\nlisten = \"127.0.0.1:{}\"\ntoken_file = \"{}\"\n",
            free_port(),
            dir.path().join("missing-token").display()
        ),
    );
    let out = upkeep(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    // A config problem: exit 78, as check-config reports it.
    assert_eq!(out.status.code(), Some(78));
    let err = crate::util::stderr(&out);
    assert!(err.contains("api.token_file"), "{err}");
    assert!(err.contains("missing-token"), "{err}");
}

fn agent_with_token(dir: &Path, port: u16, extra: &str) -> (Agent, std::path::PathBuf) {
    let token = write_file(dir, "token", "s3cret-t0ken\n");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Keep the listener open for the agent's lifetime by leaking it.
    std::mem::forget(listener);
    let cfg = write_file(
        dir,
        "agent.toml",
        &format!(
            "[agent]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n\n\
             [probe.svc]\nkind = \"tcp\"\naddress = \"{addr}\"\n{extra}",
            token.display()
        ),
    );
    let agent = Agent::start(Some(&cfg), &dir.join("data"), port);
    (agent, cfg)
}

/// Waits until the agent on `port` answers a history query.
fn wait_for_history(port: u16) {
    wait_for("history", || {
        get(port, "/api/v1/query?key=host.cpu_used_ratio&since=1h")
            .is_some_and(|(code, _)| code == 200)
    });
}

fn post(port: u16, path: &str, auth: Option<&str>) -> crate::util::Answer {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    request(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\n{auth}Content-Length: 0\r\n\r\n"
        ),
    )
    .expect("the agent answers")
}

#[test]
fn every_route_answers_over_a_real_socket_and_reload_works_with_the_token() {
    let dir = temp_dir();
    let port = free_port();
    let (agent, cfg) = agent_with_token(dir.path(), port, "");
    wait_for_history(port);
    for (method, _, path, _, code) in ROUTES {
        let r = if *method == "post" {
            post(port, path, Some("Bearer s3cret-t0ken"))
        } else {
            request(
                port,
                &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
            )
            .expect("the agent answers")
        };
        assert_eq!(r.code, *code, "{method} {path}: {}", r.body);
        assert!(!r.body.contains("no such route"), "{method} {path}");
        assert!(
            r.header("content-security-policy").is_some(),
            "{method} {path}"
        );
    }
    // Rebinding over the socket too.
    let r = request(
        port,
        "GET /api/v1/info HTTP/1.1\r\nHost: attacker.example\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.code, 403, "{}", r.body);
    // HTTP/1.0 without a Host header is refused as well.
    let r = request(port, "GET /api/v1/info HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(r.code, 403, "{}", r.body);
    // An oversized body over the socket: 413, and the agent lives on.
    let big = "x".repeat(web::BODY_LIMIT as usize + 10);
    let r = request(
        port,
        &format!(
            "POST /api/v1/reload HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer s3cret-t0ken\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        ),
    )
    .unwrap();
    assert_eq!(r.code, 413, "{}", r.body);

    // Reload with the token: a new probe appears and the outcome is kept.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{text}\n[probe.second]\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n"),
    )
    .unwrap();
    assert_eq!(post(port, "/api/v1/reload", None).code, 401);
    assert_eq!(post(port, "/api/v1/reload", Some("Bearer nope")).code, 401);
    let r = post(port, "/api/v1/reload", Some("Bearer s3cret-t0ken"));
    assert_eq!(r.code, 200, "{}", r.body);
    let names = |port| {
        let (_, body) = get(port, "/api/v1/probes").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        v["probes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(port), ["host", "second", "svc"]);
    let (_, info) = get(port, "/api/v1/info").unwrap();
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["last_reload"]["ok"], true, "{info}");

    // A bad config: 422 naming the problem; the running probes stay.
    std::fs::write(&cfg, format!("{text}\n[probe.bad]\nkind = \"nope\"\n")).unwrap();
    let r = post(port, "/api/v1/reload", Some("Bearer s3cret-t0ken"));
    assert_eq!(r.code, 422, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("the running config stays"), "{msg}");
    assert!(msg.contains("nope"), "{msg}");
    assert_eq!(names(port), ["host", "second", "svc"]);
    let (_, info) = get(port, "/api/v1/info").unwrap();
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["last_reload"]["ok"], false, "{info}");

    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(std::time::Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("s3cret-t0ken"), "the token was logged");
}

/// The Host gate over a real socket: the Host must carry the listen port,
/// a second Host header is refused whichever comes first, and an
/// absolute-form request target must name this agent as the Host does.
#[test]
fn the_host_gate_checks_the_port_a_second_host_and_an_absolute_target() {
    let dir = temp_dir();
    let port = free_port();
    let (_agent, _) = agent_with_token(dir.path(), port, "");
    let ask = |raw: String| request(port, &raw).expect("the agent answers");
    let own = format!("localhost:{port}");
    let r = ask(format!("GET /api/v1/info HTTP/1.1\r\nHost: {own}\r\n\r\n"));
    assert_eq!(r.code, 200, "{}", r.body);

    for host in [
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        format!("localhost:{}", port + 1),
        "127.0.0.1:80".to_string(),
    ] {
        let r = ask(format!("GET /api/v1/info HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert_eq!(r.code, 403, "Host {host}: {}", r.body);
        assert!(r.body.contains("Host"), "{}", r.body);
    }

    for (first, second) in [
        (own.as_str(), "evil.example"),
        ("evil.example", own.as_str()),
        (own.as_str(), own.as_str()),
    ] {
        let r = ask(format!(
            "GET /api/v1/info HTTP/1.1\r\nHost: {first}\r\nHost: {second}\r\n\r\n"
        ));
        assert_eq!(r.code, 400, "Host {first} + {second}: {}", r.body);
        assert!(r.body.contains("more than one Host header"), "{}", r.body);
    }

    // The target's authority is what HTTP says the request is for.
    for target in [
        "http://evil.example/api/v1/info".to_string(),
        format!("http://evil.example:{port}/api/v1/info"),
        format!("http://localhost:{}/api/v1/info", port + 1),
    ] {
        let r = ask(format!("GET {target} HTTP/1.1\r\nHost: {own}\r\n\r\n"));
        assert_eq!(r.code, 403, "{target}: {}", r.body);
        assert!(!r.body.contains("hostname"), "{}", r.body);
        // Without a Host header (HTTP/1.0) the target alone is judged.
        let r = ask(format!("GET {target} HTTP/1.0\r\n\r\n"));
        assert_eq!(r.code, 403, "{target} over HTTP/1.0: {}", r.body);
    }
    let target = format!("http://{own}/api/v1/info");
    let r = ask(format!("GET {target} HTTP/1.1\r\nHost: {own}\r\n\r\n"));
    assert_eq!(r.code, 200, "{target}: {}", r.body);
    let r = ask(format!("GET {target} HTTP/1.0\r\n\r\n"));
    assert_eq!(r.code, 200, "{target} over HTTP/1.0: {}", r.body);
}

/// Every GET route answers HEAD with GET's status and headers and no body.
#[test]
fn head_is_answered_on_every_get_route_as_get_without_a_body() {
    let dir = temp_dir();
    let port = free_port();
    let (_agent, _) = agent_with_token(dir.path(), port, "");
    wait_for_history(port);
    for (method, _, path, _, code) in ROUTES {
        if *method != "get" {
            continue;
        }
        let ask = |m: &str| {
            request(
                port,
                &format!("{m} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
            )
            .expect("the agent answers")
        };
        let (got, head) = (ask("GET"), ask("HEAD"));
        assert_eq!(got.code, *code, "GET {path}: {}", got.body);
        assert_eq!(head.code, got.code, "HEAD {path}: {}", head.body);
        assert_eq!(head.body, "", "HEAD {path} has no body");
        for h in [
            "content-type",
            "cache-control",
            "content-security-policy",
            "x-content-type-options",
        ] {
            assert_eq!(head.header(h), got.header(h), "HEAD {path}: {h}");
        }
    }
    // A static answer announces the length GET sends.
    for path in ["/api/v1/openapi.json", "/assets/page.css"] {
        let r = request(
            port,
            &format!("HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
        )
        .unwrap();
        let (_, body) = get(port, path).unwrap();
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str()),
            "{path}"
        );
    }
}

/// Every route refuses a query parameter it does not take, naming it; the
/// parameters the status page and its assets use are taken.
#[test]
fn every_route_refuses_unknown_query_parameters() {
    let dir = temp_dir();
    let port = free_port();
    let (_agent, _) = agent_with_token(dir.path(), port, "");
    for (method, _, path, ..) in ROUTES {
        let sep = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{sep}bogus=1");
        let r = if *method == "post" {
            post(port, &path, Some("Bearer s3cret-t0ken"))
        } else {
            request(
                port,
                &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
            )
            .expect("the agent answers")
        };
        assert_eq!(r.code, 400, "{method} {path}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("unknown query parameter `bogus`"),
            "{method} {path}: {v}"
        );
    }
    for path in [
        "/?series=host.cpu_used_ratio&range=7d",
        "/assets/page.css?v=1",
    ] {
        assert_eq!(get(port, path).unwrap().0, 200, "{path}");
    }
}

/// A chunked body is read: within the limit it is taken, past it the
/// answer is 413 (never 411 for a missing Content-Length), on every POST
/// route, and the agent answers on.
#[test]
fn a_chunked_body_is_taken_within_the_limit_and_refused_past_it() {
    let dir = temp_dir();
    let port = free_port();
    let (_agent, _) = agent_with_token(dir.path(), port, "");
    let chunked = |path: &str, chunks: &[String]| {
        let mut body = String::new();
        for c in chunks {
            body.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
        }
        body.push_str("0\r\n\r\n");
        request(
            port,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\n\
                 Authorization: Bearer s3cret-t0ken\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            ),
        )
        .expect("the agent answers")
    };
    let r = chunked("/api/v1/reload", &["{}".to_string()]);
    assert_eq!(r.code, 200, "{}", r.body);
    // Exactly the limit is still taken.
    let half = "x".repeat(web::BODY_LIMIT as usize / 2);
    let r = chunked("/api/v1/reload", &[half.clone(), half]);
    assert_eq!(r.code, 200, "{}", r.body);

    let piece = "x".repeat(16 * 1024);
    let over = vec![piece; 5];
    for path in [
        "/api/v1/reload",
        "/api/v1/maintenance/nightly/run",
        "/api/v1/maintenance/runs/1/rollback",
    ] {
        let r = chunked(path, &over);
        assert_eq!(r.code, 413, "{path}: {}", r.body);
        assert!(
            r.body.contains("over the limit of 65536 bytes"),
            "{}",
            r.body
        );
    }
    assert_eq!(get(port, "/-/healthy").unwrap().0, 200);
}

/// The history size in `/api/v1/info` counts the write-ahead log, where
/// recent writes sit until a checkpoint, beside the file itself.
#[test]
fn info_reports_the_history_file_its_wal_and_their_total() {
    let dir = temp_dir();
    let port = free_port();
    let (_agent, _) = agent_with_token(dir.path(), port, "");
    let info = || -> serde_json::Value {
        serde_json::from_str(&get(port, "/api/v1/info").unwrap().1).unwrap()
    };
    wait_for("a history write", || {
        info()["history"]["samples_written"].as_u64() > Some(0)
    });
    let v = info();
    let (file, wal) = (
        v["history_file_bytes"]
            .as_u64()
            .expect("history_file_bytes"),
        v["history_wal_bytes"].as_u64().expect("history_wal_bytes"),
    );
    // Checkpoints run every minute: the first writes are in the WAL.
    assert!(file > 0 && wal > 0, "{v}");
    assert_eq!(v["history_bytes"].as_u64(), Some(file + wal), "{v}");
    assert_eq!(v["history"]["wal_bytes"].as_u64(), Some(wal), "{v}");
}

/// `curl -X POST` sends neither a Content-Length nor a body: every POST
/// route takes that as an empty body, never 411.
#[test]
fn a_post_without_a_body_or_its_length_is_an_empty_body() {
    let dir = temp_dir();
    let port = free_port();
    let (_agent, _) = agent_with_token(dir.path(), port, "");
    let bare = |path: &str| {
        request(
            port,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\n\
                 Authorization: Bearer s3cret-t0ken\r\nConnection: close\r\n\r\n"
            ),
        )
        .expect("the agent answers")
    };
    let r = bare("/api/v1/reload");
    assert_eq!(r.code, 200, "{}", r.body);
    // No such task or run: the route was reached and judged the request.
    for path in [
        "/api/v1/maintenance/nightly/run",
        "/api/v1/maintenance/runs/1/rollback",
    ] {
        let r = bare(path);
        assert_eq!(r.code, 404, "{path}: {}", r.body);
    }
}

/// schemathesis (PyPI) fuzzes every operation of the OpenAPI document
/// against the running agent: no 5xx, every answer's status, content type
/// and body as documented, undeclared methods refused, missing or wrong
/// tokens refused. `positive_data_acceptance` is left out: the time and
/// duration parameters take a grammar (`1h`, `now`, RFC 3339) that a JSON
/// schema can only approximate, so generated strings such as `0A` are
/// rightly refused.
#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let st = std::env::var("UPKEEP_SCHEMATHESIS").unwrap_or_else(|_| {
        panic!("UPKEEP_SCHEMATHESIS is not set: run the suite with ./test.sh, which installs schemathesis")
    });
    let dir = temp_dir();
    let port = free_port();
    let (agent, _) = agent_with_token(dir.path(), port, "");
    wait_for_history(port);
    let out = Command::new(&st)
        .args([
            "run",
            &format!("http://127.0.0.1:{port}/api/v1/openapi.json"),
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "-H",
            "Authorization: Bearer s3cret-t0ken",
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--no-color",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("running {st}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis failed:\n{text}");
    assert!(text.contains("23 selected / 23 total"), "{text}");
    assert!(!text.contains("Failures:"), "{text}");
    drop(agent);
}
