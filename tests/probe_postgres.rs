//! The postgres probe against the real server on 127.0.0.1:5432 (user
//! `postgres`, trust auth): every reading measured, one session reused,
//! failures unhealthy with a reason naming the endpoint while other probes
//! keep their cadence, and a password never shown. Each test works in a
//! schema of its own. The runner helpers at the end are shared with
//! `probe_redis`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use upkeep::config::Config;
use upkeep::probes::postgres::{PostgresConfig, PostgresProbe};
use upkeep::probes::runner::{Outcome, RunnerStats, run};
use upkeep::probes::tcp::TcpProbe;
use upkeep::probes::{Probe, ProbeSpec};
use upkeep::sample::{Reading, Status};

const SERVER: &str = "host=127.0.0.1 port=5432 dbname=postgres";

/// An admin session for setting up and cleaning up. A server that is not
/// there fails the test with one line.
async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&format!("{SERVER} user=postgres"), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at 127.0.0.1:5432 as postgres ({e}); start it as README says")
        });
    tokio::spawn(conn);
    client
}

/// A name no other test (or run) uses.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn config(toml: &str) -> PostgresConfig {
    toml::from_str(toml).unwrap_or_else(|e| panic!("test config: {e}\n{toml}"))
}

fn probe(conninfo: &str, extra: &str) -> PostgresProbe {
    let c = config(&format!(
        "conninfo = \"{conninfo}\"\nuser = \"postgres\"\n{extra}"
    ));
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    PostgresProbe::new(&c, Duration::from_secs(5))
}

pub(crate) fn value(rs: &[Reading], metric: &str) -> Option<f64> {
    let found: Vec<_> = rs.iter().filter(|r| r.metric == metric).collect();
    assert!(found.len() <= 1, "{metric} given more than once: {found:?}");
    found.first().map(|r| r.value)
}

pub(crate) fn labelled(rs: &[Reading], metric: &str, label: &str, v: &str) -> Option<f64> {
    rs.iter()
        .find(|r| r.metric == metric && r.labels.iter().any(|(k, x)| k == label && x == v))
        .map(|r| r.value)
}

#[tokio::test]
async fn a_healthy_server_gives_every_reading_with_sane_values() {
    let admin = pg().await;
    let schema = unique("upkeep_t");
    // Autovacuum off for the table: its dead tuples must stay until read.
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.audit_log (id int) WITH (autovacuum_enabled = false);
             INSERT INTO {schema}.audit_log SELECT generate_series(1, 1000);
             DELETE FROM {schema}.audit_log WHERE id <= 400;"
        ))
        .await
        .unwrap();
    // ANALYZE counts what the deleting transaction has not yet reported:
    // publish that first, or the counts land twice.
    admin
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    admin
        .batch_execute(&format!("ANALYZE {schema}.audit_log"))
        .await
        .unwrap();
    let table = format!("{schema}.audit_log");
    let gone = format!("{schema}.gone");
    let mut p = probe(SERVER, &format!("tables = [\"{table}\", \"{gone}\"]"));

    let first = p.sample().await.unwrap();
    let connect = value(&first, "connect_seconds").expect("connect_seconds on the first tick");
    let query = value(&first, "query_seconds").unwrap();
    assert!(
        connect > 0.0 && connect < 1.0 && query > 0.0 && query < 1.0,
        "{first:?}"
    );
    let max = value(&first, "connections_max").unwrap();
    assert!(max >= 1.0);
    let used = value(&first, "connections_used_ratio").unwrap();
    assert!(used > 0.0 && used <= 1.0, "{used}");
    // The probe's own session is active while it asks.
    assert!(labelled(&first, "connections", "state", "active").unwrap() >= 1.0);
    assert_eq!(
        labelled(
            &first,
            "connections",
            "state",
            "idle in transaction (aborted)"
        )
        .map(|v| v >= 0.0),
        Some(true)
    );
    assert!(value(&first, "database_size_bytes").unwrap() > 1e6);
    assert_eq!(
        value(&first, "commits_per_second"),
        None,
        "no rate on the first tick"
    );
    let hit = value(&first, "cache_hit_ratio").unwrap();
    assert!((0.0..=1.0).contains(&hit));
    assert!(value(&first, "oldest_transaction_seconds").unwrap() >= 0.0);
    assert_eq!(
        value(&first, "replication_lag_seconds"),
        None,
        "a primary has no lag"
    );
    assert_eq!(
        labelled(&first, "table_dead_tuples", "table", &table),
        Some(400.0)
    );
    assert_eq!(
        labelled(&first, "table_live_tuples", "table", &table),
        Some(600.0)
    );
    let age = labelled(&first, "table_last_analyze_age_seconds", "table", &table).unwrap();
    assert!((0.0..60.0).contains(&age), "{age}");
    assert!(
        first
            .iter()
            .all(|r| r.labels.iter().all(|(_, v)| *v != gone)),
        "a missing table gives no value"
    );

    // Between ticks: commits, rollbacks, and a transaction left open.
    for i in 0..20 {
        admin
            .execute(&format!("INSERT INTO {schema}.audit_log VALUES ({i})"), &[])
            .await
            .unwrap();
    }
    for _ in 0..3 {
        admin
            .batch_execute("BEGIN; SELECT 1; ROLLBACK;")
            .await
            .unwrap();
    }
    let holder = pg().await;
    holder
        .batch_execute("BEGIN; SELECT txid_current();")
        .await
        .unwrap();
    // An idle backend publishes its counters up to 10 s late; ask for now.
    admin
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let second = p.sample().await.unwrap();
    assert_eq!(
        value(&second, "connect_seconds"),
        None,
        "the session is reused"
    );
    assert!(
        value(&second, "commits_per_second").unwrap() > 0.0,
        "{second:?}"
    );
    assert!(
        value(&second, "rollbacks_per_second").unwrap() > 0.0,
        "{second:?}"
    );
    assert!(
        value(&second, "oldest_transaction_seconds").unwrap() >= 1.0,
        "{second:?}"
    );
    assert!(labelled(&second, "connections", "state", "idle in transaction").unwrap() >= 1.0);
    drop(holder);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_terminated_session_is_replaced_by_a_new_one() {
    let admin = pg().await;
    let app = unique("upkeep_t_app");
    let mut p = probe(&format!("{SERVER} application_name={app}"), "");
    assert!(value(&p.sample().await.unwrap(), "connect_seconds").is_some());
    let killed = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    assert_eq!(killed.get::<_, i64>(0), 1);
    // The tick after may see the dead session first; the one after that
    // must be connected again.
    let next = p.sample().await;
    let readings = match next {
        Ok(r) => r,
        Err(e) => {
            assert!(
                e.to_string()
                    .starts_with("postgres 127.0.0.1:5432/postgres: "),
                "{e}"
            );
            p.sample().await.unwrap()
        }
    };
    assert!(
        value(&readings, "connect_seconds").is_some(),
        "{readings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_port_is_unhealthy_naming_the_endpoint() {
    let port = free_port();
    let p = probe(&format!("host=127.0.0.1 port={port} dbname=postgres"), "");
    let reason = failing_beside_a_healthy_probe(p, SERVER_FAULT_MS).await;
    assert!(
        reason.starts_with(&format!(
            "db: postgres 127.0.0.1:{port}/postgres: error connecting to server: "
        )),
        "{reason}"
    );
    assert!(reason.contains("refused"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_role_is_refused_by_the_server() {
    // Trust auth on 127.0.0.1 checks no password over TCP: an unknown role
    // is how the server refuses a login here.
    let role = unique("upkeep_nobody");
    let c = config(&format!("conninfo = \"{SERVER}\"\nuser = \"{role}\""));
    let reason = failing_beside_a_healthy_probe(
        PostgresProbe::new(&c, Duration::from_secs(1)),
        SERVER_FAULT_MS,
    )
    .await;
    assert_eq!(
        reason,
        format!("db: postgres 127.0.0.1:5432/postgres: role \"{role}\" does not exist")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_database_is_refused_by_the_server() {
    let db = unique("upkeep_nodb");
    let p = probe(&format!("host=127.0.0.1 port=5432 dbname={db}"), "");
    let reason = failing_beside_a_healthy_probe(p, SERVER_FAULT_MS).await;
    assert_eq!(
        reason,
        format!("db: postgres 127.0.0.1:5432/{db}: database \"{db}\" does not exist")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_that_does_not_resolve_is_unhealthy() {
    let p = probe("host=nonexistent.invalid port=5432 dbname=postgres", "");
    let reason = failing_beside_a_healthy_probe(p, SERVER_FAULT_MS).await;
    assert!(
        reason.starts_with(
            "db: postgres nonexistent.invalid:5432/postgres: error connecting to server: "
        ),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_and_never_answers_times_out_within_the_probe_timeout() {
    let addr = silent_listener();
    let conninfo = format!("host=127.0.0.1 port={} dbname=postgres", addr.port());
    // The runner's timeout ends the tick.
    let reason = failing_beside_a_healthy_probe(probe(&conninfo, ""), 250).await;
    assert_eq!(reason, "db: timed out after 250ms");
    // The probe's own connect_timeout, shorter than the tick's, names the server.
    let mut p = probe(&conninfo, "connect_timeout = \"300ms\"");
    let started = Instant::now();
    let err = p.sample().await.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        err,
        format!(
            "postgres 127.0.0.1:{}/postgres: connect timed out after 300ms",
            addr.port()
        )
    );
}

#[test]
fn a_password_never_appears_in_debug_errors_logs_or_serialized_config() {
    let dir = crate::util::temp_dir();
    let canary = unique("canary-pw");
    let pw = password_file(dir.path(), "pw", &canary);
    let silent = silent_listener();
    let toml = format!(
        "[probe.db]\nkind = \"postgres\"\nconninfo = \"{SERVER}\"\nuser = \"{}\"\npassword_file = \"{}\"\n\
         [probe.refused]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1 port={}\"\nuser = \"app\"\npassword_file = \"{}\"\n\
         [probe.silent]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1 port={}\"\nuser = \"app\"\npassword_file = \"{}\"\nconnect_timeout = \"200ms\"\n",
        unique("upkeep_nobody"),
        pw.display(),
        free_port(),
        pw.display(),
        silent.port(),
        pw.display(),
    );
    let config = Config::parse("agent.toml", &toml).unwrap();
    let mut seen = vec![
        format!("{config:?}"),
        serde_json::to_string(&config).unwrap(),
    ];
    let (logs, errors) = with_captured_logs(|| async {
        let mut errors = Vec::new();
        for (spec, mut probe) in upkeep::probes::build(&config, &Default::default()) {
            if spec.kind == "postgres" {
                errors.push(format!("{:?}", spec));
                for _ in 0..2 {
                    errors.push(probe.sample().await.unwrap_err().to_string());
                }
            }
        }
        errors
    });
    assert_eq!(errors.len(), 9, "{errors:?}");
    seen.extend(errors);
    seen.push(logs);
    let c = config.probe["db"].clone();
    if let upkeep::config::ProbeConfig::Postgres(c) = c {
        seen.push(format!(
            "{:?}",
            PostgresProbe::new(&c, Duration::from_secs(1))
        ));
    }
    for text in &seen {
        assert!(!text.contains(&canary), "the password leaked into: {text}");
    }
}

#[test]
fn a_password_or_user_in_conninfo_and_a_missing_user_are_rejected() {
    let parse = |body: &str| {
        Config::parse(
            "agent.toml",
            &format!("[probe.db]\nkind = \"postgres\"\n{body}"),
        )
        .unwrap_err()
        .to_string()
    };
    let canary = "hunter2-canary";
    for conninfo in [
        format!("host=127.0.0.1 user=app password={canary}"),
        format!("postgres://app:{canary}@127.0.0.1/app"),
    ] {
        let err = parse(&format!("conninfo = \"{conninfo}\"\nuser = \"app\""));
        assert!(
            err.starts_with(
                "agent.toml:3:12: probe.db.conninfo: a password in conninfo is not allowed"
            ),
            "{err}"
        );
        assert!(!err.contains(canary), "{err}");
    }
    let err = parse("conninfo = \"host=127.0.0.1 user=app\"\nuser = \"app\"");
    assert!(
        err.contains("probe.db.conninfo: a user in conninfo is not allowed"),
        "{err}"
    );
    let err = parse("conninfo = \"host=127.0.0.1\"");
    assert!(err.contains("missing field `user`"), "{err}");
    let err = parse(
        "conninfo = \"dbname=app\"\nuser = \"app\"\ntables = [\"a.b.c\"]\nconnect_timeout = \"0s\"",
    );
    for field in [
        "probe.db.conninfo: names no host",
        "probe.db.tables: `a.b.c`",
        "probe.db.connect_timeout",
    ] {
        assert!(err.contains(field), "{field}: {err}");
    }
}

// Shared with `probe_redis`.

/// A port nothing listens on (bound, then released).
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A server that accepts connections and never says a word. The accepted
/// sockets are held open until the test process ends.
pub(crate) fn silent_listener() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            held.push(s);
        }
    });
    addr
}

/// A password file as the agent wants it: mode 0600.
pub(crate) fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let p = crate::util::write_file(dir, name, &format!("{password}\n"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Runs `f` on a current-thread runtime with every log line captured.
pub(crate) fn with_captured_logs<T, F: Future<Output = T>>(f: impl FnOnce() -> F) -> (String, T) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    });
    let logs = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (logs, out)
}

/// Runs `failing` (as probe `db`, with a tick timeout of `timeout_ms` and an
/// interval a little longer) through the runner beside a healthy tcp probe
/// ticking every 100 ms, for six of `db`'s intervals. Asserts every outcome
/// of `db` is unhealthy with no readings, within its timeout, and that the
/// healthy probe kept its cadence; returns `db`'s reason.
///
/// A fault the server or the OS names (refused, unknown role, no such host)
/// is tested with a generous timeout: on a loaded machine a refused connect
/// can take longer than a short one, and the reason must not become a
/// timeout by accident. `SERVER_FAULT_MS` is that timeout.
pub(crate) const SERVER_FAULT_MS: u64 = 1500;

pub(crate) async fn failing_beside_a_healthy_probe<P: Probe>(
    failing: P,
    timeout_ms: u64,
) -> String {
    let healthy_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp: upkeep::probes::tcp::TcpConfig = toml::from_str(&format!(
        "address = \"{}\"",
        healthy_listener.local_addr().unwrap()
    ))
    .unwrap();
    let spec = |name: &str, interval, timeout| ProbeSpec {
        name: name.into(),
        kind: "test",
        interval: Duration::from_millis(interval),
        timeout: Duration::from_millis(timeout),
        thresholds: Vec::new(),
        failure_threshold: 3,
        success_threshold: 2,
    };
    let (tx, rx) = sync_channel(1024);
    let stats = Arc::new(RunnerStats::default());
    let stop = CancellationToken::new();
    let interval_ms = (timeout_ms + 50).max(300);
    tokio::spawn(run(
        spec("db", interval_ms, timeout_ms),
        failing,
        tx.clone(),
        stats.clone(),
        stop.clone(),
    ));
    tokio::spawn(run(
        spec("tcp", 100, 90),
        TcpProbe::new(&tcp),
        tx,
        stats,
        stop.clone(),
    ));
    let outcomes: Vec<Outcome> = tokio::task::spawn_blocking(move || {
        let end = Instant::now() + Duration::from_millis(6 * interval_ms);
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            out.extend(rx.recv_timeout(left).ok().map(|o| *o));
        }
        out
    })
    .await
    .unwrap();
    stop.cancel();

    let (db, tcp): (Vec<&Outcome>, Vec<&Outcome>) = outcomes.iter().partition(|o| o.probe == "db");
    assert!(
        db.len() >= 4,
        "the failing probe reported {} times",
        db.len()
    );
    for o in &db {
        assert_eq!(
            (o.status, o.readings.len()),
            (Status::Unhealthy, 0),
            "{o:?}"
        );
        assert!(
            o.took < Duration::from_millis(timeout_ms + 100),
            "a tick took {:?}",
            o.took
        );
    }
    assert!(
        tcp.len() >= 14,
        "the healthy probe ticked only {} times",
        tcp.len()
    );
    assert!(tcp.iter().all(|o| o.status == Status::Healthy));
    let gaps: Vec<i64> = tcp.windows(2).map(|w| w[1].ts - w[0].ts).collect();
    assert!(
        gaps.iter().all(|g| *g < 200),
        "the healthy probe was delayed: gaps {gaps:?} ms at a 100 ms interval"
    );
    let reason = db[0].reason.clone().unwrap();
    assert!(
        db.iter().all(|o| o.reason.as_deref() == Some(&reason)),
        "{db:?}"
    );
    reason
}
