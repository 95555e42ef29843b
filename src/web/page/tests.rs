//! The page end to end inside the crate: escaping of hostile names and
//! reasons, the CSP (no inline script or style), the asset table, the
//! second-long cache, and a history file's day bars, events and forecasts.

use std::sync::{Arc, RwLock};

use super::format::{encode, percent, seconds, span, took, uptime_percent};
use super::view::{DAY_MS, overall};
use super::*;
use crate::config::ApiConfig;
use crate::fmt::{bytes, count};
use crate::live::{Live, ProbeMeta, ProbeState};
use crate::sample::{SeriesKey, Status, Unit};
use crate::web::api::ProbeBody;
use crate::web::{Info, Shared};

const HOSTILE: &str = "<script>alert(1)</script>\"'&";

fn state(live: Live) -> State {
    Arc::new(Shared::new(
        Info {
            version: "0.0.0-test",
            hostname: "web<b>host".into(),
            config_path: None,
            data_dir: std::env::temp_dir().join("upkeep-page-test-no-such-dir"),
        },
        Arc::new(RwLock::new(live)),
        Default::default(),
        &ApiConfig::default(),
        None,
        None,
    ))
}

fn hostile_live() -> Live {
    let mut live = Live {
        started_ms: 1_700_000_000_000,
        ..Live::default()
    };
    let name = "<img src=x onerror=alert(2)>";
    live.configured.push(ProbeMeta {
        name: name.into(),
        kind: "tcp",
        interval_ms: 1000,
        timeout_ms: 1000,
    });
    live.probes.insert(
        name.into(),
        ProbeState {
            kind: "tcp",
            status: Status::Unhealthy,
            since_ms: 1_700_000_000_000,
            reason: Some(HOSTILE.into()),
            last_ts_ms: 1_700_000_001_000,
            last_took_ms: 3.0,
            last_error: None,
        },
    );
    live.push(
        &SeriesKey::new(name, "connect_seconds", &[("label", HOSTILE)]),
        Unit::Seconds,
        1_700_000_001_000,
        0.002,
    );
    live
}

async fn get(s: &State, path: &str) -> warp::http::Response<bytes::Bytes> {
    warp::test::request()
        .method("GET")
        .path(path)
        .header("host", "127.0.0.1:8711")
        .reply(&crate::web::routes(s.clone()))
        .await
}

#[test]
fn hostile_names_and_reasons_are_escaped() {
    let s = state(hostile_live());
    let html = String::from_utf8(render(&s, 1_700_000_002_000).to_vec()).unwrap();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(!html.contains("<img src=x"), "{html}");
    assert!(!html.contains("web<b>host"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"));
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
    // The page says history is missing rather than showing zeros.
    assert!(html.contains("History is unavailable"));
    // Status is written out and has a symbol, not only a colour.
    assert!(html.contains("<span class=\"word\">unhealthy</span>"));
}

#[test]
fn the_script_tags_are_only_the_embedded_ones() {
    let s = state(hostile_live());
    let html = String::from_utf8(render(&s, 1_700_000_002_000).to_vec()).unwrap();
    assert_eq!(html.matches("<script").count(), 2);
    assert!(!html.contains("style="), "inline styles break the CSP");
    assert!(!html.contains("<style"));
}

#[tokio::test]
async fn every_referenced_asset_is_served_with_a_cache_header() {
    let s = state(hostile_live());
    let html = String::from_utf8(render(&s, 1_700_000_002_000).to_vec()).unwrap();
    let refs: Vec<&str> = html
        .split("\"/assets/")
        .skip(1)
        .map(|rest| rest.split(['"', '?']).next().unwrap())
        .collect();
    assert!(refs.len() >= 5, "{refs:?}");
    for name in refs {
        assert!(find_asset(name).is_some(), "{name} is not in the table");
        let r = get(&s, &format!("/assets/{name}")).await;
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(r.headers()["cache-control"], "public, max-age=3600");
        assert!(!r.body().is_empty());
    }
    // The script itself references assets by name too: the icons.
    let js = std::str::from_utf8(find_asset("page.js").unwrap().bytes).unwrap();
    for st in ["healthy", "degraded", "unhealthy", "unknown"] {
        assert!(find_asset(&format!("icon-{st}.svg")).is_some());
    }
    assert!(js.contains("icon-"));
}

#[tokio::test]
async fn unknown_assets_and_traversal_are_404_json() {
    let s = state(Live::default());
    for path in [
        "/assets/nope.js",
        "/assets/",
        "/assets/../../etc/passwd",
        "/assets/..%2f..%2fetc%2fpasswd",
        "/assets/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/assets/%252e%252e%252fetc%252fpasswd",
        "/assets/page.css/../../../etc/passwd",
        "/assets/%2e%2e/page.css",
        "/assets/page.css%00",
        "/assets/PAGE.CSS",
    ] {
        let r = get(&s, path).await;
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json", "{path}");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert!(v["error"].is_string(), "{path}");
    }
}

#[tokio::test]
async fn the_page_is_html_and_served_again_from_the_cache() {
    let s = state(hostile_live());
    let a = get(&s, "/").await;
    assert_eq!(a.status(), 200);
    assert_eq!(a.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(a.headers()["cache-control"], "no-store");
    assert!(
        a.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let b = get(&s, "/?series=x&range=7d").await;
    assert_eq!(a.body(), b.body(), "a second request within 1 s is cached");
}

/// A history file of three hours at one sample a minute: `/data`
/// filling steadily, `/` flat, and `svc` unhealthy for the last 30 min.
fn with_history(dir: &std::path::Path, now: Ts) -> State {
    use crate::config::HistoryConfig;
    use crate::store::Event;
    use crate::store::writer::{RunInfo, Sample, Writer};
    const MIN: i64 = 60_000;
    let start = now - 180 * MIN;
    let run = RunInfo {
        version: "test".into(),
        hostname: "test".into(),
        pid: 1,
    };
    let (mut w, _) = Writer::open(dir, &HistoryConfig::default(), start, &run).unwrap();
    let filling = SeriesKey::new("host", "disk_used_ratio", &[("mount", "/data")]);
    let flat = SeriesKey::new("host", "disk_used_ratio", &[("mount", "/")]);
    let filling_id = w.series_id(&filling, Unit::Ratio, start).unwrap().unwrap();
    let flat_id = w.series_id(&flat, Unit::Ratio, start).unwrap().unwrap();
    let status = |ts, from: &str, to: &str| Event {
        ts_ms: ts,
        probe: Some("svc".into()),
        kind: "status".into(),
        from_status: Some(from.into()),
        to_status: Some(to.into()),
        message: format!("svc is {to}"),
    };
    for i in 0..=180 {
        let ts = start + i * MIN;
        let events = match i {
            0 => vec![status(ts, "unknown", "healthy")],
            150 => vec![status(ts, "healthy", "unhealthy")],
            _ => vec![],
        };
        let samples = [
            Sample {
                series: filling_id,
                ts,
                value: 0.5 + i as f64 * 0.001,
            },
            Sample {
                series: flat_id,
                ts,
                value: 0.3,
            },
        ];
        w.write(&samples, &events, ts).unwrap();
    }
    let mut live = Live {
        started_ms: start,
        ..Live::default()
    };
    for (name, kind, st) in [
        ("host", "host", Status::Healthy),
        ("svc", "tcp", Status::Unhealthy),
    ] {
        live.configured.push(ProbeMeta {
            name: name.into(),
            kind,
            interval_ms: 60_000,
            timeout_ms: 1000,
        });
        live.probes.insert(
            name.into(),
            ProbeState {
                kind,
                status: st,
                since_ms: start,
                reason: None,
                last_ts_ms: now,
                last_took_ms: 1.0,
                last_error: None,
            },
        );
    }
    for (mount, used) in [("/data", 68.0), ("/", 30.0)] {
        let l = [("mount", mount)];
        live.push(
            &SeriesKey::new("host", "disk_used_bytes", &l),
            Unit::Bytes,
            now,
            used * 1e9,
        );
        live.push(
            &SeriesKey::new("host", "disk_total_bytes", &l),
            Unit::Bytes,
            now,
            100e9,
        );
        // 5 GB reserved for root, as ext4 keeps.
        live.push(
            &SeriesKey::new("host", "disk_available_bytes", &l),
            Unit::Bytes,
            now,
            (95.0 - used) * 1e9,
        );
    }
    let s = state(live);
    let mut info = s.info.clone();
    info.data_dir = dir.to_path_buf();
    Arc::new(Shared::new(
        info,
        s.live.clone(),
        Default::default(),
        &ApiConfig::default(),
        None,
        None,
    ))
}

#[test]
fn history_gives_day_bars_events_and_only_confident_forecasts() {
    let dir = tempfile::tempdir().unwrap();
    // Noon UTC yesterday: the three hours fall in one day.
    let now = now_ms().div_euclid(DAY_MS) * DAY_MS - DAY_MS / 2;
    let s = with_history(dir.path(), now);
    let html = String::from_utf8(render(&s, now).to_vec()).unwrap();
    assert!(!html.contains("History is unavailable"), "{html}");
    // `/data` fills at 0.1 % a minute from 68 %: full in about 5 h; the
    // flat `/` gets no forecast at all.
    assert_eq!(html.matches("full in ").count(), 1, "{html}");
    let card = &html[html.find("<code>/data</code>").unwrap()..];
    let forecast = &card[card.find("full in ").unwrap()..];
    assert!(forecast.starts_with("full in 5 h"), "{forecast}");
    // Use as df counts it, used / (used + available): 68 of 95 GB, not of
    // the 100 GB that include root's reserve.
    assert!(
        card.starts_with("<code>/data</code></h3><p class=\"big\">72%</p>"),
        "{}",
        &card[..200]
    );
    // 30 day bars per probe: `svc` was observed today only, and was
    // down for a sixth of it; the host probe has no transitions.
    let svc = &html[html.find("data-probe=\"svc\"").unwrap()..];
    let bars = &svc[..svc.find("</svg><span class=\"dl\">").unwrap()];
    let bars = &bars[bars.find("class=\"days\"").unwrap()..];
    assert_eq!(bars.matches("<rect").count(), 30);
    assert_eq!(bars.matches("class=\"nodata\"").count(), 29);
    assert!(bars.contains("<rect class=\"bad\""), "{bars}");
    assert!(svc.contains("83.33%"), "three hours, 30 minutes down");
    // Events newest first, and the chart offers the recorded series.
    let events = &html[html.find("id=\"events\"").unwrap()..];
    assert!(events.find("svc is unhealthy").unwrap() < events.find("svc is healthy").unwrap());
    assert!(html.contains("<option value=\"host.disk_used_ratio{mount=&quot;/data&quot;}\""));
}

#[test]
fn overall_counts_the_probes() {
    let body = |status| ProbeBody {
        name: "p".into(),
        kind: "tcp",
        interval_seconds: 1.0,
        timeout_seconds: 1.0,
        status,
        status_since: None,
        reason: None,
        last: None,
        uptime: Vec::new(),
    };
    assert_eq!(overall(&[]).0, Status::Unknown);
    assert_eq!(
        overall(&[body(Status::Healthy), body(Status::Healthy)]),
        (Status::Healthy, "all 2 probes healthy".into())
    );
    assert_eq!(
        overall(&[
            body(Status::Healthy),
            body(Status::Unhealthy),
            body(Status::Unknown)
        ]),
        (
            Status::Unhealthy,
            "1 unhealthy, 1 not checked yet, 1 healthy of 3 probes".into()
        )
    );
    assert_eq!(overall(&[body(Status::Unknown)]).0, Status::Unknown);
}

#[test]
fn figures_read_well() {
    assert_eq!(uptime_percent(0.99996), "99.99%");
    assert_eq!(uptime_percent(1.0), "100%");
    assert_eq!(percent(0.0123), "1.2%");
    assert_eq!(percent(0.456), "46%");
    assert_eq!(percent(0.00001), "<0.1%");
    assert_eq!(percent(0.0), "0%");
    assert_eq!(bytes(1536.0), "1.5 KiB");
    assert_eq!(bytes(512.0), "512 B");
    assert_eq!(seconds(0.00042), "0.42 ms");
    assert_eq!(seconds(2.5), "2.50 s");
    assert_eq!(span(3 * 3_600_000 + 5 * 60_000), "3 h 5 min");
    assert_eq!(encode("a.b{m=\"/\"}"), "a.b%7Bm%3D%22%2F%22%7D");
    assert_eq!(took(420), "420 ms");
    assert_eq!(took(2_500), "2.5 s");
    assert_eq!(took(3_725_000), "1 h 2 min");
    assert_eq!(count(0), "0");
    assert_eq!(count(999), "999");
    assert_eq!(count(1_000), "1,000");
    assert_eq!(count(-1_234_567), "-1,234,567");
}

#[test]
fn events_during_a_maintenance_run_are_marked_and_link_to_it() {
    use crate::config::HistoryConfig;
    use crate::maintenance::ledger::{Ledger, RunStatus, Trigger};
    use crate::store::Event;
    use crate::store::writer::{RunInfo, Writer};
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let run = RunInfo {
        version: "test".into(),
        hostname: "test".into(),
        pid: 1,
    };
    let (mut w, _) =
        Writer::open(dir.path(), &HistoryConfig::default(), now - 60_000, &run).unwrap();
    let status = |ts, to: &str| Event {
        ts_ms: ts,
        probe: Some("svc".into()),
        kind: "status".into(),
        from_status: Some("healthy".into()),
        to_status: Some(to.into()),
        message: format!("svc is {to}"),
    };
    w.write(&[], &[status(now - 50_000, "degraded")], now - 50_000)
        .unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let id = ledger
        .start_run(
            "trim",
            "postgres_retention",
            Trigger::Cli,
            false,
            now - 40_000,
        )
        .unwrap();
    w.write(&[], &[status(now - 30_000, "unhealthy")], now - 30_000)
        .unwrap();
    ledger.add_batch(id, 1234).unwrap();
    ledger
        .finish(id, now - 20_000, RunStatus::Succeeded, None)
        .unwrap();
    let s = state(Live::default());
    let mut info = s.info.clone();
    info.data_dir = dir.path().to_path_buf();
    let s = Arc::new(Shared::new(
        info,
        s.live.clone(),
        Default::default(),
        &ApiConfig::default(),
        None,
        None,
    ));
    let html = String::from_utf8(render(&s, now).to_vec()).unwrap();
    let events = &html[html.find("id=\"events\"").unwrap()..];
    let during =
        format!("<a class=\"during\" href=\"#maint-run-{id}\">during maintenance run {id}</a>");
    assert_eq!(events.matches(&during).count(), 1, "{events}");
    let marked = &events[..events.find(&during).unwrap()];
    assert!(marked.ends_with("svc is unhealthy "), "{marked}");
    // The run it links to is listed, its status a word.
    let row = &html[html.find(&format!("id=\"maint-run-{id}\"")).unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.contains("<span class=\"word\">succeeded</span>"),
        "{row}"
    );
    assert!(row.contains("1,234") && row.contains("20.0 s"), "{row}");
}

/// Probes are listed worst first (by name within a status); the host
/// probe's row shows no latency (how long reading the kernel's figures
/// took says nothing); "obs." is explained in a legend.
#[test]
fn probes_are_listed_worst_first_and_the_host_row_has_no_latency() {
    let mut live = Live {
        started_ms: 1_700_000_000_000,
        ..Live::default()
    };
    for (name, kind, status) in [
        ("a_ok", "worker", Status::Healthy),
        ("b_down", "tcp", Status::Unhealthy),
        ("c_slow", "tcp", Status::Degraded),
        ("d_new", "tcp", Status::Unknown),
        ("host", "host", Status::Healthy),
        ("z_down", "tcp", Status::Unhealthy),
    ] {
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
                status,
                since_ms: 1_700_000_000_000,
                reason: None,
                last_ts_ms: 1_700_000_001_000,
                last_took_ms: 3.0,
                last_error: None,
            },
        );
    }
    let html = String::from_utf8(render(&state(live), 1_700_000_002_000).to_vec()).unwrap();
    let order: Vec<&str> = html
        .split("data-probe=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    assert_eq!(
        order,
        ["b_down", "z_down", "c_slow", "d_new", "a_ok", "host"]
    );
    let row = |name: &str| {
        let at = html.find(&format!("data-probe=\"{name}\"")).unwrap();
        let end = html[at..].find("</article>").unwrap();
        html[at..at + end].to_string()
    };
    let latency = |name: &str| {
        let r = row(name);
        let at = r.find("class=\"latency\"").unwrap();
        r[at..at + r[at..].find("</div>").unwrap()].to_string()
    };
    assert!(latency("a_ok").contains("3.0 ms"), "{}", latency("a_ok"));
    assert!(!latency("host").contains("ms"), "{}", latency("host"));
    assert!(!latency("host").contains('—'), "{}", latency("host"));
    assert!(html.contains("id=\"probes-legend\""), "{html}");
    assert!(
        html.contains("= observed: the share of the window"),
        "{html}"
    );
}

#[test]
fn change_events_name_their_probe_and_are_told_apart() {
    use crate::config::HistoryConfig;
    use crate::store::Event;
    use crate::store::writer::{RunInfo, Writer};
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let run = RunInfo {
        version: "test".into(),
        hostname: "test".into(),
        pid: 1,
    };
    let (mut w, _) =
        Writer::open(dir.path(), &HistoryConfig::default(), now - 60_000, &run).unwrap();
    let change = Event {
        ts_ms: now - 10_000,
        probe: Some("access".into()),
        kind: "change".into(),
        from_status: None,
        to_status: None,
        message: "user `deploy` added (uid 1003, /bin/bash)".into(),
    };
    w.write(&[], &[change], now - 10_000).unwrap();
    let s = state(Live::default());
    let mut info = s.info.clone();
    info.data_dir = dir.path().to_path_buf();
    let s = Arc::new(Shared::new(
        info,
        s.live.clone(),
        Default::default(),
        &ApiConfig::default(),
        None,
        None,
    ));
    let html = String::from_utf8(render(&s, now).to_vec()).unwrap();
    let events = &html[html.find("id=\"events\"").unwrap()..];
    assert!(events.contains("<li class=\"change\">"), "{events}");
    assert!(
        events.contains("<b class=\"probe\">access</b>: user `deploy` added (uid 1003, /bin/bash)"),
        "{events}"
    );
}
