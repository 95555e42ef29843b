//! The http probe against real servers on 127.0.0.1: warp for the ordinary
//! cases, hand-rolled listeners for the ones that misbehave (trickle, never
//! answer), and a TLS server with a certificate made here by an internal CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use upkeep::config::{Config, ProbeConfig};
use upkeep::probes::http::HttpProbe;
use upkeep::probes::runner::{Outcome, RunnerStats, run};
use upkeep::probes::{AnyProbe, BuildContext, ProbeSpec};
use upkeep::sample::{Reading, Status};
use warp::Filter;
use warp::http::StatusCode;

mod tls;

/// A probe from the `[probe.api]` body of a real config file.
pub(crate) fn probe(url: &str, options: &str) -> HttpProbe {
    let text = format!("[probe.api]\nkind = \"http\"\nurl = \"{url}\"\n{options}");
    let config = Config::parse("test.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    match &config.probe["api"] {
        ProbeConfig::Http(c) => HttpProbe::new(c),
        other => panic!("not an http probe: {other:?}"),
    }
}

pub(crate) use crate::util::{failed, tick};

pub(crate) fn value(rs: &[Reading], metric: &str) -> f64 {
    let found: Vec<_> = rs.iter().filter(|r| r.metric == metric).collect();
    assert_eq!(found.len(), 1, "{metric} in {rs:?}");
    found[0].value
}

async fn serve<F>(routes: F) -> SocketAddr
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    addr
}

fn redirect(to: String) -> impl warp::Reply {
    let to_self = warp::reply::with_header(warp::reply(), "location", to);
    warp::reply::with_status(to_self, StatusCode::FOUND)
}

const HEALTH: &str = r#"{"status":"ok","db":{"up":true}}"#;

fn app() -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let health = warp::path!("health").map(|| HEALTH);
    let broken = warp::path!("broken")
        .map(|| warp::reply::with_status("database down", StatusCode::INTERNAL_SERVER_ERROR));
    let empty = warp::path!("empty").map(|| StatusCode::NO_CONTENT);
    let loop_a = warp::path!("a").map(|| redirect("/b".into()));
    let loop_b = warp::path!("b").map(|| redirect("/a".into()));
    // /chain/N redirects to /chain/N-1; /chain/0 answers.
    let chain = warp::path!("chain" / u32).map(|n: u32| match n {
        0 => warp::reply::with_status(warp::reply::html("end"), StatusCode::OK).into_response(),
        n => redirect(format!("/chain/{}", n - 1)).into_response(),
    });
    let big = warp::path!("big").map(|| vec![b'x'; 3 << 20]);
    let needs_header = warp::path!("private")
        .and(warp::header::exact("x-probe", "yes"))
        .map(|| "hello probe");
    health
        .or(broken)
        .or(empty)
        .or(loop_a)
        .or(loop_b)
        .or(chain)
        .or(big)
        .or(needs_header)
}

use warp::Reply as _;

#[tokio::test]
async fn a_healthy_endpoint_gives_time_status_and_size() {
    let addr = serve(app()).await;
    let checks = "body_contains = \"ok\"\njson_pointer = \"/db/up\"\njson_equals = true";
    let mut p = probe(&format!("http://{addr}/health"), checks);
    let rs = tick(&mut p).await.unwrap();
    let secs = value(&rs, "response_seconds");
    assert!(secs > 0.0 && secs < 0.5, "{secs}");
    assert_eq!(value(&rs, "status_code"), 200.0);
    assert_eq!(value(&rs, "body_bytes"), HEALTH.len() as f64);
    assert!(rs.iter().all(|r| r.metric != "tls_cert_expiry_days"));
    // HEAD: the same answer, no body.
    let mut p = probe(&format!("http://{addr}/health"), "method = \"HEAD\"");
    let rs = tick(&mut p).await.unwrap();
    assert_eq!(
        (value(&rs, "status_code"), value(&rs, "body_bytes")),
        (200.0, 0.0)
    );
}

#[tokio::test]
async fn a_500_is_unhealthy_with_the_status_in_the_reason() {
    let addr = serve(app()).await;
    let mut p = probe(&format!("http://{addr}/broken"), "");
    assert_eq!(
        failed(tick(&mut p).await),
        format!("GET http://{addr}/broken: status 500 (expected 2xx)")
    );
    let mut p = probe(
        &format!("http://{addr}/broken"),
        "expect_status = [200, 204]",
    );
    let why = failed(tick(&mut p).await);
    assert!(why.ends_with("status 500 (expected 200 or 204)"), "{why}");
}

#[tokio::test]
async fn expected_codes_and_classes_are_honoured() {
    let addr = serve(app()).await;
    let mut p = probe(
        &format!("http://{addr}/empty"),
        "expect_status = [200, 204]",
    );
    assert_eq!(value(&tick(&mut p).await.unwrap(), "status_code"), 204.0);
    // Not following, a redirect is the answer judged.
    let options = "follow_redirects = false\nexpect_status = \"3xx\"";
    let mut p = probe(&format!("http://{addr}/a"), options);
    assert_eq!(value(&tick(&mut p).await.unwrap(), "status_code"), 302.0);
    let mut p = probe(&format!("http://{addr}/a"), "follow_redirects = false");
    let why = failed(tick(&mut p).await);
    assert!(why.ends_with("status 302 (expected 2xx)"), "{why}");
}

#[tokio::test]
async fn redirects_are_followed_for_5_hops_and_a_loop_is_named() {
    let addr = serve(app()).await;
    let mut p = probe(&format!("http://{addr}/chain/5"), "body_contains = \"end\"");
    let rs = tick(&mut p).await.unwrap();
    assert_eq!(value(&rs, "status_code"), 200.0);
    let mut p = probe(&format!("http://{addr}/chain/6"), "");
    assert_eq!(
        failed(tick(&mut p).await),
        format!(
            "GET http://{addr}/chain/6: too many redirects after 5 hops (last to http://{addr}/chain/0)"
        )
    );
    let mut p = probe(&format!("http://{addr}/a"), "");
    assert_eq!(
        failed(tick(&mut p).await),
        format!(
            "GET http://{addr}/a: redirect loop: http://{addr}/a -> http://{addr}/b -> http://{addr}/a"
        )
    );
}

#[tokio::test]
async fn body_and_json_mismatches_name_what_was_wanted() {
    let addr = serve(app()).await;
    let url = format!("http://{addr}/health");
    let mut p = probe(&url, "body_contains = \"healthy\"");
    assert_eq!(
        failed(tick(&mut p).await),
        format!("GET {url}: body does not contain `healthy`")
    );
    let mut p = probe(
        &url,
        "json_pointer = \"/status\"\njson_equals = \"degraded\"",
    );
    assert_eq!(
        failed(tick(&mut p).await),
        format!("GET {url}: json_pointer `/status` is \"ok\" (expected \"degraded\")")
    );
    let mut p = probe(&url, "json_pointer = \"/version\"\njson_equals = 2");
    let why = failed(tick(&mut p).await);
    assert!(
        why.ends_with("json_pointer `/version` not found in body"),
        "{why}"
    );
}

#[tokio::test]
async fn configured_headers_are_sent() {
    let addr = serve(app()).await;
    let url = format!("http://{addr}/private");
    let mut p = probe(
        &url,
        "headers = { X-Probe = \"yes\" }\nbody_contains = \"probe\"",
    );
    assert_eq!(value(&tick(&mut p).await.unwrap(), "status_code"), 200.0);
    let mut p = probe(&url, "");
    assert!(failed(tick(&mut p).await).contains("status 400"));
}

#[tokio::test]
async fn a_big_body_is_read_and_counted_up_to_1_mib() {
    let addr = serve(app()).await;
    let mut p = probe(&format!("http://{addr}/big"), "");
    let rs = tick(&mut p).await.unwrap();
    assert_eq!(value(&rs, "body_bytes"), (1 << 20) as f64);
}

#[tokio::test]
async fn a_refused_connection_says_connect() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/health");
    let why = failed(tick(&mut probe(&url, "")).await);
    assert!(
        why.starts_with(&format!("GET {url}: connect: ")) && why.contains("refused"),
        "{why}"
    );
}

/// Accepts connections and hands each to `serve_one`, forever.
pub(crate) async fn hand_rolled<F, Fut>(serve_one: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_one(s));
        }
    });
    addr
}

/// Runs built probes through the real runner for `for_`; returns every outcome.
pub(crate) async fn run_for(probes: Vec<(ProbeSpec, AnyProbe)>, for_: Duration) -> Vec<Outcome> {
    let (tx, rx) = sync_channel(1024);
    let stop = CancellationToken::new();
    let stats = Arc::new(RunnerStats::default());
    for (spec, p) in probes {
        tokio::spawn(run(spec, p, tx.clone(), stats.clone(), stop.clone()));
    }
    drop(tx);
    let end = Instant::now() + for_;
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Ok(o) = rx.recv_timeout(left) {
                out.push(*o);
            }
        }
        out
    })
    .await
    .unwrap();
    stop.cancel();
    out
}

/// Every probe of a config, built as the agent builds them.
pub(crate) fn built(probes: &str) -> Vec<(ProbeSpec, AnyProbe)> {
    let text = format!("[host]\nenabled = false\n[history]\nmin_interval = \"100ms\"\n{probes}");
    let config = Config::parse("test.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    upkeep::probes::build(&config, &BuildContext::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_times_out_within_the_probe_timeout_and_is_hung_up() {
    // (when the response head went out, when the server's write failed)
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<(Instant, Instant)>();
    let closed_tx = std::sync::Mutex::new(closed_tx);
    let closed_tx = Arc::new(closed_tx);
    let addr = hand_rolled(move |mut s| {
        let closed = closed_tx.clone();
        async move {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
            let _ = s.write_all(head.as_bytes()).await;
            let sent = Instant::now();
            // A byte every 300 ms, until the probe hangs up.
            while s.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let _ = closed.lock().unwrap().send((sent, Instant::now()));
        }
    })
    .await;
    let probes = built(&format!(
        "[probe.trickle]\nkind = \"http\"\nurl = \"http://{addr}/\"\ninterval = \"5s\"\ntimeout = \"1s\"\n"
    ));
    let outcomes = run_for(probes, Duration::from_millis(2500)).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let o = &outcomes[0];
    assert_eq!(o.error.as_deref(), Some("trickle: timed out after 1s"));
    assert!(o.readings.is_empty() && o.status == Status::Unhealthy);
    assert!(
        o.took >= Duration::from_secs(1) && o.took < Duration::from_millis(1100),
        "took {:?}",
        o.took
    );
    // The probe closed its connection: the server's writes fail soon after.
    let (sent, broke) = closed_rx
        .recv_timeout(Duration::from_secs(3))
        .expect("the probe never hung up on the trickling server");
    let open_for = broke.duration_since(sent);
    assert!(
        open_for < Duration::from_millis(1900),
        "the connection stayed open {open_for:?} after the 1s timeout began"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_and_never_delays_a_tcp_probe() {
    // Accepts, reads the request, never answers.
    let silent = hand_rolled(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_addr = open.local_addr().unwrap();
    let probes = built(&format!(
        "[probe.api]\nkind = \"http\"\nurl = \"http://{silent}/health\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         [probe.port]\nkind = \"tcp\"\naddress = \"{open_addr}\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\n"
    ));
    let outcomes = run_for(probes, Duration::from_millis(2500)).await;
    drop(open);
    let of =
        |name: &str| -> Vec<&Outcome> { outcomes.iter().filter(|o| o.probe == name).collect() };
    let (api, port) = (of("api"), of("port"));
    assert!(
        api.len() >= 8,
        "the http probe reported {} times",
        api.len()
    );
    for o in &api {
        assert_eq!(o.error.as_deref(), Some("api: timed out after 150ms"));
        assert!(o.took < Duration::from_millis(190), "took {:?}", o.took);
    }
    assert!(
        port.len() >= 20,
        "the tcp probe ticked only {} times",
        port.len()
    );
    let gaps: Vec<i64> = port.windows(2).map(|w| w[1].ts - w[0].ts).collect();
    let worst = *gaps.iter().max().unwrap();
    assert!(
        worst < 180,
        "tcp probe delayed: largest gap {worst} ms at 100 ms ({gaps:?})"
    );
    assert!(port.iter().all(|o| o.status == Status::Healthy));
}
