//! Small helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use upkeep::config::HistoryConfig;
use upkeep::store::writer::{RunInfo, Writer};

/// The `upkeep` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_upkeep"))
}

/// Runs `upkeep ARGS` with logs at warn level and no inherited config.
pub fn upkeep(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("UPKEEP_CONFIG")
        .env_remove("STATE_DIRECTORY")
        .env("UPKEEP_LOG", "warn")
        .output()
        .expect("running upkeep")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("upkeep-test-")
        .tempdir()
        .expect("temp dir")
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a test file");
    p
}

pub fn run_info() -> RunInfo {
    RunInfo {
        version: "test".into(),
        hostname: "test-host".into(),
        pid: std::process::id(),
    }
}

/// A writer on a fresh history file in `dir`, at time `now`.
pub fn temp_writer(dir: &Path, history: &HistoryConfig, now: i64) -> Writer {
    Writer::open(dir, history, now, &run_info())
        .expect("opening history")
        .0
}

// History store helpers (store_history, store_faults).

/// A history config with `tiers` as (step, span) in seconds and the other
/// limits at their defaults; fails the test when the config is not valid,
/// so a test never relies on a config the agent would refuse.
pub fn history_with_tiers(tiers: &[(u64, u64)]) -> HistoryConfig {
    let history = HistoryConfig {
        tiers: tiers
            .iter()
            .map(|&(step, span)| upkeep::config::TierConfig {
                step: std::time::Duration::from_secs(step),
                span: std::time::Duration::from_secs(span),
            })
            .collect(),
        ..HistoryConfig::default()
    };
    assert_valid_history(&history);
    history
}

/// Fails the test when `history` would be rejected by `upkeep check-config`.
pub fn assert_valid_history(history: &HistoryConfig) {
    let config = upkeep::config::Config {
        history: history.clone(),
        ..upkeep::config::Config::default()
    };
    let problems = config.validate();
    assert!(
        problems.is_empty(),
        "test history config is invalid: {problems:?}"
    );
}

/// A read-only SQL connection to `dir/history.db`, usable beside a writer.
pub fn history_sql(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        dir.join(upkeep::store::FILE_NAME),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("opening history.db read-only")
}

/// `PRAGMA integrity_check` of `dir/history.db`: "ok" when the file is sound.
pub fn integrity(dir: &Path) -> String {
    let conn = history_sql(dir);
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .expect("running integrity_check");
    rows.join("; ")
}

/// Every bucket a tier table holds, decoded from its chunk rows, as
/// `(series, bucket start, aggregate)` in key order; of one series if given.
pub fn tier_buckets(
    conn: &rusqlite::Connection,
    table: &str,
    series: Option<i64>,
) -> Vec<(i64, upkeep::sample::Ts, upkeep::store::tiers::Agg)> {
    let step: i64 = conn
        .query_row("SELECT step_ms FROM tiers WHERE tbl = ?1", [table], |r| {
            r.get(0)
        })
        .expect("the tier's step");
    let mut st = conn
        .prepare(&format!(
            "SELECT series, chunk_ms, data FROM \"{table}\"
             WHERE ?1 IS NULL OR series = ?1 ORDER BY series, chunk_ms"
        ))
        .expect("reading a tier table");
    let rows: Vec<(i64, i64, Vec<u8>)> = st
        .query_map([series], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("reading a tier table")
        .collect::<Result<_, _>>()
        .expect("reading a tier table");
    rows.iter()
        .flat_map(|(s, chunk_ms, data)| {
            upkeep::store::chunk::decode(*chunk_ms, step, data).map(move |(b, a)| (*s, b, a))
        })
        .collect()
}

/// Sum of `count` over every bucket of a tier table.
pub fn tier_rows_count(conn: &rusqlite::Connection, table: &str) -> i64 {
    tier_buckets(conn, table, None)
        .iter()
        .map(|(_, _, a)| a.count)
        .sum()
}

/// Samples waiting in the journal (12 bytes per sample in each blob).
pub fn journal_samples(conn: &rusqlite::Connection) -> i64 {
    conn.query_row(
        "SELECT coalesce(sum(length(data)), 0) / 12 FROM journal",
        [],
        |r| r.get(0),
    )
    .expect("counting journal samples")
}

/// The points a reader answers for `key` over `[since, until)` from the tier
/// of step `step_ms`; fails the test when another tier answered.
pub fn tier_points(
    reader: &upkeep::store::Reader,
    key: &str,
    step_ms: i64,
    since: i64,
    until: i64,
    now: i64,
) -> Vec<upkeep::store::reader::Point> {
    let answer = reader
        .query(key, since, until, Some(step_ms), now, 10_000_000)
        .expect("querying history")
        .unwrap_or_else(|| panic!("series {key} is not in history"));
    assert_eq!(
        (answer.step_ms, answer.tier.as_str()),
        (step_ms, format!("tier_{}s", step_ms / 1000).as_str()),
        "query for {key} was answered from another tier"
    );
    answer.points
}

/// Sum of the counts of `tier_points`: the samples the tier accounts for.
pub fn tier_count(
    reader: &upkeep::store::Reader,
    key: &str,
    step_ms: i64,
    since: i64,
    until: i64,
    now: i64,
) -> i64 {
    tier_points(reader, key, step_ms, since, until, now)
        .iter()
        .map(|p| p.count)
        .sum()
}

/// One probe tick, failing the test rather than hanging it.
pub async fn tick<P: upkeep::probes::Probe>(
    p: &mut P,
) -> Result<Vec<upkeep::sample::Reading>, upkeep::probes::ProbeError> {
    tokio::time::timeout(std::time::Duration::from_secs(10), p.sample())
        .await
        .expect("the probe hung for 10 s")
}

/// The reason of a failed tick; any other outcome fails the test.
pub fn failed(r: Result<Vec<upkeep::sample::Reading>, upkeep::probes::ProbeError>) -> String {
    match r {
        Err(upkeep::probes::ProbeError::Failed(why)) => why,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port kept for one test while its listener comes and goes: a socket
/// stays bound to it, not listening, so a connect is refused while the
/// listener is down and nothing else on the machine takes the port (an
/// outgoing connection's ephemeral port once did, between a `down` and
/// an `up`).
pub struct HeldPort {
    pub port: u16,
    _hold: socket2::Socket,
}

impl HeldPort {
    pub fn new() -> HeldPort {
        let hold = reusable_socket();
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        hold.bind(&any.into()).expect("binding a port to hold");
        let port = hold
            .local_addr()
            .unwrap()
            .as_socket()
            .expect("an inet address")
            .port();
        HeldPort { port, _hold: hold }
    }

    /// A listener on the held port.
    pub fn listen(&self) -> TcpListener {
        let s = reusable_socket();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], self.port).into();
        s.bind(&addr.into()).expect("binding the held port");
        s.listen(128).expect("listening on the held port");
        s.into()
    }
}

fn reusable_socket() -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s
}

pub struct Agent {
    pub child: Child,
    pub port: u16,
}

impl Agent {
    pub fn start(config: Option<&Path>, data_dir: &Path, port: u16) -> Agent {
        let mut cmd = Command::new(bin());
        cmd.arg("run").arg("--data-dir").arg(data_dir);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .env_remove("UPKEEP_CONFIG")
            .env_remove("STATE_DIRECTORY")
            .env("UPKEEP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the agent");
        let agent = Agent { child, port };
        agent.wait_ready();
        agent
    }

    pub fn wait_ready(&self) {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some((200, _)) = get(self.port, "/-/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the agent was not ready on port {} within 10 s", self.port);
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for exit; returns exit code, time taken and stderr.
    pub fn wait_exit(mut self, limit: Duration) -> (Option<i32>, Duration, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.code(), start.elapsed(), err);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("the agent did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over a plain socket: (status code, body).
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    )?;
    Some((r.code, r.body))
}

/// An answer read off a socket.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (request line and headers, ending in a blank line; a
/// `Connection: close` is added) and any body after it, exactly as given,
/// and reads the whole answer. `None` when nothing answers.
pub fn request(port: u16, raw: &str) -> Option<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let raw = raw.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    s.write_all(raw.as_bytes()).ok()?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).ok()?;
    let resp = String::from_utf8_lossy(&bytes);
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let code = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some(Answer {
        code,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `cond` every 100 ms for up to 10 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

// PostgreSQL helpers (maint_runner, web_page).

/// Runs SQL through psql as postgres; rows as `|`-separated lines.
pub fn psql(sql: &str) -> String {
    psql_in("postgres", sql)
}

/// Cleanup SQL run from a `Drop`: errors are ignored (a test that
/// already failed must not panic again while unwinding).
pub fn psql_cleanup(sql: &str) {
    let _ = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-q",
            "-c",
            sql,
        ])
        .output();
}

/// [`psql`] in database `db`.
pub fn psql_in(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql (PostgreSQL client) must be installed");
    assert!(
        out.status.success(),
        "PostgreSQL on 127.0.0.1:5432 must be up for these tests: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A throwaway schema `PREFIX_<pid>_<nanos>` with `events(id bigint
/// primary key, created_at timestamptz, body text)`: `n` rows, one per
/// `spacing_s` seconds back from now. Dropped on drop.
pub struct Table {
    pub schema: String,
}

impl Table {
    pub fn new(prefix: &str, n: i64, spacing_s: i64) -> Table {
        let schema = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
                % 1_000_000_000
        );
        psql(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, body text);
             INSERT INTO {schema}.events
               SELECT g, now() - make_interval(secs => g * {spacing_s}), md5(g::text)
               FROM generate_series(1, {n}) g;
             ANALYZE {schema}.events;"
        ));
        Table { schema }
    }

    pub fn name(&self) -> String {
        format!("{}.events", self.schema)
    }

    pub fn count(&self, filter: &str) -> i64 {
        psql(&format!(
            "SELECT count(*) FROM {}.events {filter}",
            self.schema
        ))
        .parse()
        .unwrap()
    }

    /// Order-independent checksum of every row.
    pub fn checksum(&self) -> String {
        psql(&format!(
            "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {}.events t",
            self.schema
        ))
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        psql_cleanup(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
    }
}

/// A TCP service for a `tcp` guard probe: it accepts every connection and
/// closes it, as a real service does, so that a run checking its guard
/// before each of hundreds of batches never fills the listen backlog.
/// Dropping it closes the port: the probe then fails.
pub struct Gate {
    addr: std::net::SocketAddr,
    /// Connections accepted: one per check of a `tcp` probe on it.
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gate {
    pub fn new() -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gate");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = accepted.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        drop(conn)
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Gate {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Ok(self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
