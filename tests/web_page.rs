//! The status page on the real agent (1 s ticks, the host probe, a healthy
//! and an unhealthy tcp probe) in Debian's headless Chromium: it loads with
//! no console message (CSP violations and script errors are console
//! messages), shows every probe, draws the history chart and refreshes
//! itself; it overlays series over a custom range and zooms on a mouse
//! drag (sent over the DevTools protocol); screenshots at desktop and
//! phone width are written to `docs/` for README. Without JavaScript the HTML alone carries the
//! summary. With a PostgreSQL retention task (on a throwaway schema of the
//! real server on 127.0.0.1) run once from the CLI, the Maintenance section
//! shows the task and its run.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    Agent, Table, free_port, get, request, stderr, stdout, temp_dir, wait_for, write_file,
};

const CHROMIUM: &str = "/usr/bin/chromium";
const PROBES: [&str; 3] = ["billing_db", "host", "web_backend"];

/// A running agent with a healthy and an unhealthy tcp probe.
struct Site {
    agent: Agent,
    dir: tempfile::TempDir,
}

impl Site {
    fn start() -> Site {
        Site::start_with(|_| String::new())
    }

    /// A site whose config ends with `extra(dir)`.
    fn start_with(extra: impl FnOnce(&Path) -> String) -> Site {
        let dir = temp_dir();
        let port = free_port();
        // The healthy target accepts and closes every connection.
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = target.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in target.incoming() {
                drop(c);
            }
        });
        let closed = free_port();
        let cfg = write_file(
            dir.path(),
            "agent.toml",
            &format!(
                "[agent]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n\
                 [probe.web_backend]\nkind = \"tcp\"\naddress = \"{up}\"\n\n\
                 [probe.billing_db]\nkind = \"tcp\"\naddress = \"127.0.0.1:{closed}\"\n\n{}",
                extra(dir.path())
            ),
        );
        let agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
        let site = Site { agent, dir };
        site.wait_for_history();
        site
    }

    fn port(&self) -> u16 {
        self.agent.port
    }

    /// Waits until the 1 h chart has at least two 10 s buckets of CPU.
    fn wait_for_history(&self) {
        let end = Instant::now() + Duration::from_secs(45);
        loop {
            if let Some((200, body)) = get(
                self.port(),
                "/api/v1/query?key=host.cpu_used_ratio&since=1h",
            ) {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let points = v["points"].as_array().unwrap();
                let samples: i64 = points.iter().map(|p| p["count"].as_i64().unwrap()).sum();
                if points.len() >= 2 && samples >= 5 {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "the agent recorded too few ticks in 45 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port())
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// The site with a postgres probe and a manual-only retention task `trim`
/// on `schema`, run once from the CLI, slowly enough (100 rows a batch,
/// half a second apart) that the tcp probe `flip`, whose target goes away
/// during the run, turns unhealthy while it runs; returns the run's id. Two
/// analyze tasks stand beside it: `nightly`, whose window opens in 12 hours
/// (so a run from the CLI right after is refused), and `quiet`, whose auto
/// window has too little history to choose.
fn site_with_a_maintenance_run(schema: &Table) -> (Site, i64) {
    let table = schema.name();
    let open = chrono::Utc::now() + chrono::Duration::hours(12);
    let window = format!(
        "{}-{}",
        open.format("%H:%M"),
        (open + chrono::Duration::hours(1)).format("%H:%M")
    );
    let flip = TcpListener::bind("127.0.0.1:0").unwrap();
    let flip_addr = flip.local_addr().unwrap();
    let site = Site::start_with(|_| {
        format!(
            "[probe.flip]\nkind = \"tcp\"\naddress = \"{flip_addr}\"\nfailure_threshold = 1\n\n\
             [probe.db]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1 port=5432 dbname=postgres\"\n\
             user = \"postgres\"\n\n\
             [maintenance.trim]\nkind = \"postgres_retention\"\nprobe = \"db\"\ntable = \"{table}\"\n\
             timestamp_column = \"created_at\"\nolder_than = \"30d\"\nbatch_size = 100\npause = \"500ms\"\n\n\
             [maintenance.nightly]\nkind = \"postgres_analyze\"\nprobe = \"db\"\ntables = [\"{table}\"]\n\
             window = \"{window}\"\ntimezone = \"UTC\"\nguard = [\"db\", \"web_backend\"]\n\n\
             [maintenance.quiet]\nkind = \"postgres_analyze\"\nprobe = \"db\"\ntables = [\"{table}\"]\n\
             window = \"auto\"\n"
        )
    });
    let (cfg, data) = (site.config(), site.data_dir());
    let cli = |task: &str| {
        let mut c = Command::new(crate::util::bin());
        c.args(["maintenance", "run", task, "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("UPKEEP_CONFIG")
            .env_remove("STATE_DIRECTORY")
            .env("UPKEEP_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let port = site.port();
    let flip_events = || -> Vec<serde_json::Value> {
        let (_, body) = get(port, "/api/v1/events?probe=flip").unwrap();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["events"]
            .as_array()
            .unwrap()
            .clone()
    };
    wait_for("flip healthy", || {
        flip_events().iter().any(|e| e["to_status"] == "healthy")
    });
    let child = cli("trim").spawn().unwrap();
    wait_for("the run in the ledger", || {
        get(port, "/api/v1/maintenance/runs").is_some_and(|(_, b)| b.contains("\"running\""))
    });
    drop(flip);
    wait_for("flip unhealthy", || {
        flip_events().iter().any(|e| e["to_status"] == "unhealthy")
    });
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["success"], true, "{doc}");
    let run = doc["tasks"][0]["details"]["run_id"].as_i64().unwrap();
    // `nightly` is refused (its window is closed), and says so in the ledger.
    let out = cli("nightly").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // The page is cached for a second: wait for one rendered after the runs.
    wait_for("the runs on the page", || {
        get(port, "/")
            .is_some_and(|(_, html)| html.contains(&format!("id=\"maint-run-{}\"", run + 1)))
    });
    (site, run)
}

/// What one headless Chromium run printed.
struct Browser {
    stdout: String,
    /// Every console message of the page (errors, CSP violations, logs:
    /// the page itself logs nothing).
    console: Vec<String>,
}

/// Runs Chromium on `url` with a fresh profile and `extra` flags.
fn chromium(url: &str, extra: &[&str]) -> Browser {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run ./test.sh, which installs Debian's chromium"
    );
    let profile = temp_dir();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stdout = reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(String::from)
        .collect();
    Browser { stdout, console }
}

/// The value of `attr` on the element with `id` in serialized HTML.
fn attr_of(html: &str, id: &str, attr: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let start = html[..at].rfind('<')?;
    let tag = &html[start..start + html[start..].find('>')?];
    let key = format!("{attr}=\"");
    let v = &tag[tag.find(&key)? + key.len()..];
    Some(v[..v.find('"')?].to_string())
}

fn artifacts() -> PathBuf {
    // target/<profile>/upkeep → target/test-artifacts
    let dir = Path::new(env!("CARGO_BIN_EXE_upkeep"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn the_summary_reads_without_javascript() {
    let site = Site::start();
    let (code, html) = get(site.port(), "/").expect("the page answers");
    assert_eq!(code, 200);
    for name in PROBES {
        assert!(
            html.contains(&format!("<h3>{name}</h3>")),
            "{name} missing: {html}"
        );
    }
    // Status as words and symbols, never only a colour. (The host probe's
    // status depends on the machine, so only the tcp probes are pinned.)
    for (name, word, symbol) in [
        ("web_backend", "healthy", "✓"),
        ("billing_db", "unhealthy", "✕"),
    ] {
        let at = html.find(&format!("data-probe=\"{name}\"")).unwrap();
        let row = &html[at..at + html[at..].find("</article>").unwrap()];
        assert!(
            row.contains(&format!("<span class=\"word\">{word}</span>")),
            "{row}"
        );
        assert!(
            row.contains(&format!("aria-hidden=\"true\">{symbol}</span>")),
            "{row}"
        );
    }
    assert!(html.contains("Connection refused"), "the reason is shown");
    assert!(
        html.contains("<strong>unhealthy</strong>"),
        "overall status"
    );
    assert!(html.contains("1 unhealthy, "), "overall count");
    // Host figures, uptime and events are in the HTML itself.
    for text in [
        "<h3>CPU</h3>",
        "<h3>Memory</h3>",
        "<h3>Disk ",
        "<h3>Network</h3>",
        "<h3>Load</h3>",
        " of ",
        "<span class=\"wl\">24h</span>",
        "uptime per day, last 30 days",
        "agent started",
        "billing_db is unhealthy",
    ] {
        assert!(html.contains(text), "{text} missing: {html}");
    }
    // No inline script or style: the CSP would block them.
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=\"/assets/").count()
    );
    assert!(!html.contains("style="));
    // Every asset the page names is served, cacheable.
    for rest in html.split("\"/assets/").skip(1) {
        let path = format!("/assets/{}", rest.split('"').next().unwrap());
        let a = request(
            site.port(),
            &format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
                site.port()
            ),
        )
        .unwrap();
        assert_eq!(a.code, 200, "{path}");
        assert_eq!(a.header("cache-control"), Some("public, max-age=3600"));
    }
    let a = request(
        site.port(),
        &format!(
            "GET /assets/%2e%2e%2f%2e%2e%2fCargo.toml HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            site.port()
        ),
    )
    .unwrap();
    assert_eq!(
        (a.code, a.header("content-type")),
        (404, Some("application/json"))
    );
}

#[test]
fn chromium_shows_every_probe_draws_the_chart_and_refreshes_without_console_errors() {
    let site = Site::start();
    // 15 s of virtual time: the chart loads and one 10 s refresh runs.
    let b = chromium(
        &site.url(),
        &[
            "--virtual-time-budget=15000",
            "--window-size=1280,900",
            "--dump-dom",
        ],
    );
    assert!(b.console.is_empty(), "console messages: {:#?}", b.console);
    let dom = &b.stdout;
    for name in PROBES {
        assert!(
            dom.contains(&format!("data-probe=\"{name}\"")),
            "{name} missing: {dom}"
        );
    }
    let points: usize = attr_of(dom, "chart", "data-points")
        .expect("the chart element")
        .parse()
        .unwrap();
    assert!(points > 0, "the chart drew no points: {dom}");
    assert!(dom.contains("class=\"uplot"), "uPlot did not draw");
    let refreshes: usize = dom
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the page did not refresh itself")
        .parse()
        .unwrap();
    assert!(refreshes >= 1);
    // The refreshed parts are whole: still every probe, once.
    for name in PROBES {
        assert_eq!(dom.matches(&format!("data-probe=\"{name}\"")).count(), 1);
    }
}

/// The README's screenshots: desktop and phone width go to `docs/`
/// (committed, so README shows the page as it is), the dark one beside
/// the other test artifacts.
#[test]
fn screenshots_at_desktop_and_phone_width() {
    let site = Site::start();
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for (name, w, h, scheme) in [
        ("desktop", 1280, 900, None),
        ("phone", 390, 844, None),
        ("desktop-dark", 1280, 900, Some("--force-dark-mode")),
    ] {
        let dir = if scheme.is_none() {
            docs.clone()
        } else {
            artifacts()
        };
        let path = dir.join(format!("status-page-{name}.png"));
        let _ = std::fs::remove_file(&path);
        let mut flags = vec![
            "--virtual-time-budget=5000".to_string(),
            format!("--window-size={w},{h}"),
            format!("--screenshot={}", path.display()),
        ];
        flags.extend(scheme.map(String::from));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let b = chromium(&site.url(), &flags);
        assert!(b.console.is_empty(), "{name}: {:#?}", b.console);
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(png_size(&png), (w, h), "{name}");
        assert!(png.len() > 20_000, "{name}: the screenshot looks blank");
    }
}

#[test]
fn the_maintenance_section_shows_a_task_and_its_run_from_the_cli() {
    // 2,000 rows an hour apart: about 1,300 older than 30 days.
    let schema = Table::new("upkeep_wp", 2_000, 3_600);
    let (site, run) = site_with_a_maintenance_run(&schema);
    let (code, html) = get(site.port(), "/").unwrap();
    assert_eq!(code, 200);
    let section = &html[html.find("id=\"maintenance\"").expect("the section")..];
    let section = &section[..section.find("</section>").unwrap()];
    assert!(section.contains("<h2 id=\"maintenance-h\">Maintenance</h2>"));
    let at = section.find("data-task=\"trim\"").expect("the task");
    let task = &section[at..at + section[at..].find("</article>").unwrap()];
    for text in [
        "<h3>trim</h3>",
        "postgres_retention",
        "manual only",
        "when started (CLI or API)",
        "<span class=\"open\">open</span>",
        "<code>db</code>",
        // Status as a word and a symbol, not only a colour.
        "<span class=\"word\">succeeded</span>",
        "aria-hidden=\"true\">✓</span>",
        &format!("href=\"#maint-run-{run}\">{run}</a>"),
    ] {
        assert!(task.contains(text), "{text} missing: {task}");
    }
    // The tasks that have not run say when they may, and why not now.
    let at = section.find("data-task=\"nightly\"").expect("nightly");
    let nightly = &section[at..at + section[at..].find("</article>").unwrap()];
    for text in [
        "when the window opens: ",
        "<span class=\"closed\">closed</span>: outside the window ",
        "<code>db</code>, <code>web_backend</code>",
        "<span class=\"word\">refused</span>",
    ] {
        assert!(nightly.contains(text), "{text} missing: {nightly}");
    }
    let at = section.find("data-task=\"quiet\"").expect("quiet");
    let quiet = &section[at..at + section[at..].find("</article>").unwrap()];
    for text in [
        "Auto window",
        "not chosen yet</span>: ",
        "none yet",
        "never run",
    ] {
        assert!(quiet.contains(text), "{text} missing: {quiet}");
    }
    let row = &section[section.find(&format!("id=\"maint-run-{run}\"")).unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("class=\"s-healthy\""), "{row}");
    for text in [
        "trim",
        "cli",
        "<span class=\"word\">succeeded</span>",
        "<time datetime=",
    ] {
        assert!(row.contains(text), "{text} missing: {row}");
    }
    let refused = &section[section
        .find(&format!("id=\"maint-run-{}\"", run + 1))
        .unwrap()..];
    let refused = &refused[..refused.find("</tr>").unwrap()];
    for text in [
        "nightly",
        "<span class=\"word\">refused</span>",
        "outside the window",
    ] {
        assert!(refused.contains(text), "{text} missing: {refused}");
    }
    // The status change during the run is marked with it.
    let events = &html[html.find("id=\"events\"").unwrap()..];
    let at = events.find("flip is unhealthy").expect("the flip event");
    let event = &events[at..at + events[at..].find("</li>").unwrap()];
    assert!(
        event.contains(&format!(
            "<a class=\"during\" href=\"#maint-run-{run}\">during maintenance run {run}</a>"
        )),
        "{event}"
    );
    // About 1,300 rows were older than 30 days.
    let rows: i64 = row
        .rsplit("<td class=\"num\" data-label=\"Rows\">")
        .next()
        .and_then(|r| r.split('<').next())
        .map(|n| n.replace(',', "").parse().unwrap())
        .unwrap();
    assert!((1_200..1_400).contains(&rows), "{rows}: {row}");

    // In Chromium: no console message, the section is there, and after a
    // refresh (the section is live) it still is, once.
    let b = chromium(
        &format!("{}#maintenance", site.url()),
        &[
            "--virtual-time-budget=12000",
            "--window-size=1280,900",
            "--dump-dom",
        ],
    );
    assert!(b.console.is_empty(), "console messages: {:#?}", b.console);
    assert!(b.stdout.contains("data-refreshes=\""), "no refresh ran");
    assert_eq!(b.stdout.matches("id=\"maintenance\"").count(), 1);
    for task in ["trim", "nightly", "quiet"] {
        assert_eq!(
            b.stdout.matches(&format!("data-task=\"{task}\"")).count(),
            1
        );
    }
    assert!(b.stdout.contains(&format!("id=\"maint-run-{run}\"")));

    // Tall enough for the whole page, the section included.
    let dir = artifacts();
    for (name, w, h, scheme) in [
        ("desktop", 1280, 2300, None),
        ("phone", 390, 4200, None),
        ("desktop-dark", 1280, 2300, Some("--force-dark-mode")),
    ] {
        let path = dir.join(format!("status-page-maintenance-{name}.png"));
        let _ = std::fs::remove_file(&path);
        let mut flags = vec![
            "--virtual-time-budget=3000".to_string(),
            format!("--window-size={w},{h}"),
            format!("--screenshot={}", path.display()),
        ];
        flags.extend(scheme.map(String::from));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let b = chromium(&site.url(), &flags);
        assert!(b.console.is_empty(), "{name}: {:#?}", b.console);
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(png_size(&png), (w, h), "{name}");
    }
}

/// A value for a query string.
fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The history chart draws the series the URL names (up to four, from
/// any probe, overlaid) over a custom range, shows the controls that add a
/// series and set a range, and each probe's row links to its own series.
#[test]
fn the_chart_overlays_series_over_a_custom_range_and_rows_link_to_their_charts() {
    let site = Site::start();
    let until = chrono::Utc::now();
    let since = until - chrono::Duration::minutes(20);
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let keys = [
        "host.cpu_used_ratio",
        "host.load1",
        "web_backend.connect_seconds",
    ];
    let url = format!(
        "{}?series={}&range={}",
        site.url(),
        encode(&keys.join("\n")),
        encode(&format!("{}/{}", rfc(since), rfc(until)))
    );
    let b = chromium(
        &url,
        &[
            "--virtual-time-budget=8000",
            "--window-size=1280,900",
            "--dump-dom",
        ],
    );
    assert!(b.console.is_empty(), "console messages: {:#?}", b.console);
    let dom = &b.stdout;
    let drawn = attr_of(dom, "chart", "data-series").expect("the chart's series");
    assert_eq!(drawn.split('\n').collect::<Vec<_>>(), keys, "{dom}");
    let at = |attr: &str| {
        chrono::DateTime::parse_from_rfc3339(&attr_of(dom, "chart", attr).expect(attr))
            .unwrap()
            .timestamp()
    };
    assert_eq!(
        at("data-since"),
        since.timestamp(),
        "the custom range's start"
    );
    assert_eq!(
        at("data-until"),
        until.timestamp(),
        "the custom range's end"
    );
    let points: usize = attr_of(dom, "chart", "data-points")
        .unwrap()
        .parse()
        .unwrap();
    assert!(points > 0, "{dom}");
    // One legend row per series, besides the time.
    for k in keys {
        assert!(
            dom.contains(&format!(">{k}</")),
            "{k} not in the legend or list: {dom}"
        );
    }
    assert_eq!(
        dom.matches("class=\"u-series").count(),
        keys.len() + 1,
        "{dom}"
    );
    // The controls the script drives are shown.
    assert!(attr_of(dom, "chart-extra", "hidden").is_none(), "{dom}");
    assert!(dom.contains("id=\"add-series\""), "{dom}");
    // Each probe's row links to its series in the chart.
    assert!(
        dom.contains(
            "class=\"chartlink\" href=\"/?series=web_backend.connect_seconds&amp;range=1h#history\""
        ),
        "{dom}"
    );
}

/// Chromium driven over its DevTools protocol on a pipe (fds 3 and 4,
/// messages ended by NUL): what a drag across the chart needs, which no
/// command-line flag can do.
struct Devtools {
    child: std::process::Child,
    to: std::fs::File,
    from: std::io::BufReader<std::fs::File>,
    next: u64,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Devtools {
    fn open(url: &str) -> Devtools {
        use std::os::fd::{FromRawFd, IntoRawFd};
        use std::os::unix::process::CommandExt;
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run ./test.sh, which installs Debian's chromium"
        );
        let (to_read, to_write) = std::io::pipe().unwrap();
        let (from_read, from_write) = std::io::pipe().unwrap();
        let (r, w) = (to_read.into_raw_fd(), from_write.into_raw_fd());
        let profile = temp_dir();
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only dup2 between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting chromium");
        // SAFETY: the parent's copies of the child's ends, closed here.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
        let mut d = Devtools {
            child,
            to: unsafe { std::fs::File::from_raw_fd(to_write.into_raw_fd()) },
            from: std::io::BufReader::new(unsafe {
                std::fs::File::from_raw_fd(from_read.into_raw_fd())
            }),
            next: 0,
            session: None,
            _profile: profile,
        };
        let targets = d.call("Target.getTargets", serde_json::json!({}));
        let page = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target")["targetId"]
            .clone();
        let attached = d.call(
            "Target.attachToTarget",
            serde_json::json!({"targetId": page, "flatten": true}),
        );
        d.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        d
    }

    /// Sends one command and returns its result, skipping events.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use std::io::{BufRead, Write};
        self.next += 1;
        let mut msg = serde_json::json!({"id": self.next, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = s.clone().into();
        }
        self.to.write_all(msg.to_string().as_bytes()).unwrap();
        self.to.write_all(b"\0").unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.from.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "chromium closed its pipe");
            buf.pop();
            let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            if v["id"] == self.next {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a page expression.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    fn mouse(&mut self, kind: &str, x: f64, y: f64, buttons: u32) {
        self.call(
            "Input.dispatchMouseEvent",
            serde_json::json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1}),
        );
    }
}

impl Drop for Devtools {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A drag across the history chart zooms into that span: the chart asks
/// for it as a custom range (at a finer step) and the URL keeps it.
#[test]
fn a_drag_across_the_chart_zooms_into_that_span() {
    let site = Site::start();
    let mut d = Devtools::open(&format!(
        "{}?series=host.cpu_used_ratio&range=1h",
        site.url()
    ));
    let chart = |d: &mut Devtools, attr: &str| {
        d.eval(&format!(
            "document.getElementById('chart').getAttribute('{attr}')"
        ))
    };
    wait_for("the chart drawn", || {
        chart(&mut d, "data-points")
            .as_str()
            .is_some_and(|p| p != "0")
    });
    let since = |d: &mut Devtools| {
        let mut t = |a: &str| {
            chrono::DateTime::parse_from_rfc3339(chart(d, a).as_str().unwrap())
                .unwrap()
                .timestamp()
        };
        (t("data-since"), t("data-until"))
    };
    let (s0, u0) = since(&mut d);
    assert!(
        (3590..=3610).contains(&(u0 - s0)),
        "the 1h range: {s0} {u0}"
    );
    // Mouse events land in the viewport: bring the chart into it.
    let rect = d.eval(
        "document.getElementById('chart').scrollIntoView({block: 'center'}); \
         JSON.stringify(document.querySelector('#chart .u-over').getBoundingClientRect())",
    );
    let rect: serde_json::Value = serde_json::from_str(rect.as_str().unwrap()).unwrap();
    let (left, top) = (
        rect["left"].as_f64().unwrap(),
        rect["top"].as_f64().unwrap(),
    );
    let (w, h) = (
        rect["width"].as_f64().unwrap(),
        rect["height"].as_f64().unwrap(),
    );
    let y = top + h / 2.0;
    // From half way to three quarters of the hour: a quarter hour.
    d.mouse("mouseMoved", left + w * 0.5, y, 0);
    d.mouse("mousePressed", left + w * 0.5, y, 1);
    for i in 1..=10 {
        d.mouse("mouseMoved", left + w * (0.5 + 0.025 * i as f64), y, 1);
    }
    d.mouse("mouseReleased", left + w * 0.75, y, 0);
    wait_for("the zoomed range drawn", || {
        let (s, u) = since(&mut d);
        u - s < 3000
    });
    let (s1, u1) = since(&mut d);
    let span = u1 - s1;
    assert!(
        (800..=1000).contains(&span),
        "a quarter of the hour: {span} s"
    );
    assert!(s1 >= s0 + 1700 && u1 <= u0 - 800, "{s0}..{u0} → {s1}..{u1}");
    let url = d.eval("location.search");
    assert!(
        url.as_str().unwrap().contains("range=20"),
        "the URL keeps the custom range: {url}"
    );
}
