//! Pacing against the real PostgreSQL on 127.0.0.1:5432: a retention run
//! from the CLI, guarded by a postgres probe with `write_check`, meets a
//! heavy competing write load started mid-run (many sessions inserting and
//! updating a few hot rows, every commit flushed) and backs off; when the
//! load stops it recovers; the ledger says why each time. Assertions are
//! about direction (smaller, longer), never about figures, so a busy
//! machine does not flake them. Also: `batch_target` and `max_duty` out of
//! range are refused, naming the field.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use upkeep::maintenance::runner::MAX_PAUSE;

use crate::probe_postgres::unique;
use crate::util::{history_sql, psql, psql_in, stderr, temp_dir, upkeep, write_file};

/// Sessions of the competing load.
const LOAD_SESSIONS: usize = 32;

/// A database of the test's own (the write check's table lands in it),
/// dropped on drop, the failed test's included.
struct Db(String);

impl Db {
    /// With `events`: `rows` rows, all older than the run's cutoff, and
    /// the load's tables.
    fn new(rows: u32) -> Db {
        let name = unique("upkeep_pace");
        psql(&format!("CREATE DATABASE {name}"));
        let db = Db(name);
        psql_in(
            &db.0,
            &format!(
                "CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, body text);
                 INSERT INTO events SELECT g, now() - interval '400 days' - g * interval '1 second',
                        md5(g::text) FROM generate_series(1, {rows}) g;
                 CREATE TABLE hot (id int PRIMARY KEY, n bigint NOT NULL);
                 INSERT INTO hot SELECT g, 0 FROM generate_series(1, 4) g;
                 CREATE TABLE sink (id bigserial PRIMARY KEY, body text);"
            ),
        );
        db
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        crate::util::psql_cleanup(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

/// The CLI run, killed on drop if it is still going.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The competing load: sessions committing small writes in a loop
/// until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(db: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..LOAD_SESSIONS)
            .map(|i| {
                let (stop, db) = (stop.clone(), db.to_string());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let (c, conn) = tokio_postgres::connect(
                            &format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
                            tokio_postgres::NoTls,
                        )
                        .await
                        .expect("PostgreSQL on 127.0.0.1:5432 must be up for these tests");
                        tokio::spawn(conn);
                        let hot = i % 4 + 1;
                        while !stop.load(Ordering::Relaxed) {
                            // Each statement its own transaction: a WAL
                            // flush per commit, and waits on the hot rows.
                            let _ = c
                                .batch_execute(&format!(
                                    "INSERT INTO sink (body) SELECT md5(g::text) FROM generate_series(1, 20) g;
                                     UPDATE hot SET n = n + 1 WHERE id = {hot};"
                                ))
                                .await;
                        }
                    })
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Steps of the run after step `after`: (id, step, detail).
fn steps(data: &Path, after: i64) -> Vec<(i64, String, String)> {
    if !data.join("history.db").exists() {
        return Vec::new();
    }
    let conn = history_sql(data);
    let Ok(mut st) = conn.prepare(
        "SELECT id, step, coalesce(detail, '') FROM maintenance_steps WHERE id > ?1 ORDER BY id",
    ) else {
        return Vec::new();
    };
    st.query_map([after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// Waits up to `limit` for a step after `after` that `want` accepts.
fn wait_step(
    data: &Path,
    after: i64,
    limit: Duration,
    what: &str,
    want: impl Fn(&str, &str) -> bool,
) -> (i64, String) {
    let end = Instant::now() + limit;
    loop {
        if let Some((id, _, d)) = steps(data, after).into_iter().find(|(_, s, d)| want(s, d)) {
            return (id, d);
        }
        assert!(
            Instant::now() < end,
            "no {what} within {limit:?}: {:#?}",
            steps(data, after)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `size A → B, pause X → Y` of a pacing step: ((A, B), (X, Y)) in ms.
fn change(detail: &str) -> ((f64, f64), (f64, f64)) {
    let pair = |key: &str| {
        let rest = detail
            .split(key)
            .nth(1)
            .unwrap_or_else(|| panic!("no {key}: {detail}"));
        let mut it = rest.split(',').next().unwrap().split(" → ");
        let num = |s: &str| s.trim().trim_end_matches("ms").parse::<f64>().unwrap();
        (num(it.next().unwrap()), num(it.next().unwrap()))
    };
    (pair("size "), pair("pause "))
}

/// Sum of the waits a step detail reports (`waits Lock 3, LWLock 1, IO 0`).
fn waits(detail: &str) -> u64 {
    let Some(rest) = detail.split("waits ").nth(1) else {
        return 0;
    };
    rest.split([',', ')', ':', ';'])
        .take_while(|p| !p.trim().is_empty())
        .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_competing_write_load_shrinks_batches_and_lengthens_pauses_and_its_end_lets_them_recover() {
    let db = Db::new(600_000);
    let dir = temp_dir();
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "[probe.db]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1 port=5432 dbname={}\"\n\
             user = \"postgres\"\nwrite_check = true\n\n\
             [maintenance.trim]\nkind = \"postgres_retention\"\nprobe = \"db\"\ntable = \"events\"\n\
             timestamp_column = \"created_at\"\nolder_than = \"30d\"\nbatch_size = 5000\n\
             batch_target = \"50ms\"\nmax_duty = 0.2\ntimeout = \"20m\"\n",
            db.0
        ),
    );
    let data = dir.path().join("data");
    let _run = Run(Command::new(crate::util::bin())
        .args(["maintenance", "run", "trim", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    // Quiet first: a few batches at the whole share.
    let end = Instant::now() + Duration::from_secs(120);
    let quiet_start = loop {
        let s = steps(&data, 0);
        if s.iter().filter(|(_, s, _)| s == "batch").count() >= 10 {
            break s.last().unwrap().0;
        }
        assert!(
            Instant::now() < end,
            "the run did not reach ten batches: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        psql_in(&db.0, "SELECT count(*) FROM upkeep_write_check"),
        "0",
        "the write check leaves its table empty"
    );

    let longest = MAX_PAUSE.as_secs_f64() * 1000.0;
    let load = Load::start(&db.0);
    let (backed, detail) = wait_step(
        &data,
        quiet_start,
        Duration::from_secs(180),
        "back-off under the load",
        |s, d| s == "pacing" && d.starts_with("back off"),
    );
    let (_, (pause0, pause1)) = change(&detail);
    assert!(
        pause1 > pause0 || pause1 == longest,
        "the pause lengthened (or stays the longest): {detail}"
    );
    assert!(
        detail.contains("db commit_seconds")
            && detail.contains("baseline")
            && detail.contains("p90"),
        "the step says why: {detail}"
    );
    // Batches after the back-off are smaller than the quiet ones were,
    // and the guard saw sessions waiting while the load ran.
    let batch_size = |d: &str| -> f64 {
        d.split("(size ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let quiet: Vec<f64> = steps(&data, 0)
        .iter()
        .filter(|(id, s, _)| s == "batch" && *id <= quiet_start)
        .map(|(_, _, d)| batch_size(d))
        .collect();
    let (_, after) = wait_step(
        &data,
        backed,
        Duration::from_secs(60),
        "batch after the back-off",
        |s, _| s == "batch",
    );
    assert!(
        batch_size(&after) < quiet.iter().copied().fold(0.0, f64::max),
        "the batch shrank: {after} vs quiet sizes {quiet:?}"
    );
    // Every back-off of the run shrank what it could: the size unless it
    // was already the smallest, and the pause always.
    for (_, s, d) in steps(&data, 0) {
        if s == "pacing" && d.starts_with("back off") {
            let ((a, b), (x, y)) = change(&d);
            assert!((b < a || b == 50.0) && (y > x || y == longest), "{d}");
        }
    }
    let loaded = steps(&data, quiet_start);
    assert!(
        loaded.iter().any(|(_, _, d)| waits(d) > 0),
        "no waiting session seen under the load: {loaded:#?}"
    );

    load.stop();
    let stopped = steps(&data, 0).last().unwrap().0;
    let (_, detail) = wait_step(
        &data,
        stopped,
        Duration::from_secs(180),
        "recovery after the load",
        |s, d| s == "pacing" && d.starts_with("recover"),
    );
    let ((size0, size1), (pause0, pause1)) = change(&detail);
    assert!(
        size1 >= size0 && pause1 <= pause0,
        "recovering grows back: {detail}"
    );
    assert!(
        size1 > size0 || pause1 < pause0,
        "recovering changes something: {detail}"
    );
}

#[test]
fn batch_target_max_duty_and_guard_every_out_of_range_are_refused_naming_the_field() {
    let dir = temp_dir();
    for (line, field, value) in [
        ("batch_target = \"500us\"", "batch_target", "500us"),
        ("batch_target = \"2s\"", "batch_target", "2s"),
        ("max_duty = 0", "max_duty", "0"),
        ("max_duty = 1.5", "max_duty", "1.5"),
        ("max_duty = -0.2", "max_duty", "-0.2"),
        ("guard_every = \"5ms\"", "guard_every", "5ms"),
        ("guard_every = \"2m\"", "guard_every", "2m"),
    ] {
        let cfg = write_file(
            dir.path(),
            "agent.toml",
            &format!(
                "[maintenance.tmp]\nkind = \"file_cleanup\"\npaths = [\"{}\"]\n\
                 older_than = \"7d\"\n{line}\n",
                dir.path().display()
            ),
        );
        let o = upkeep(&["check-config", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(78), "{line} accepted");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("maintenance.tmp.{field}: {value} is out of range")),
            "{line}: {err}"
        );
        let range = match field {
            "max_duty" => "greater than 0 and at most 1",
            "guard_every" => "from 10ms to 1m",
            _ => "from 1ms to 1s",
        };
        assert!(err.contains(range), "{line}: {err}");
    }
    // The edges are in range.
    for line in [
        "batch_target = \"1ms\"\nmax_duty = 1.0\nguard_every = \"10ms\"",
        "batch_target = \"1s\"\nmax_duty = 0.01\nguard_every = \"1m\"",
    ] {
        let cfg = write_file(
            dir.path(),
            "agent.toml",
            &format!(
                "[maintenance.tmp]\nkind = \"file_cleanup\"\npaths = [\"{}\"]\n\
                 older_than = \"7d\"\n{line}\n",
                dir.path().display()
            ),
        );
        let o = upkeep(&["check-config", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{line}: {}", stderr(&o));
    }
}

/// The probe's write check and wait counts, on the real server: the table
/// exists only with the option, stays empty, and a session blocked on a
/// row lock is counted as waiting on a `Lock`.
#[tokio::test]
async fn the_write_check_times_a_flushed_commit_and_waiting_sessions_are_counted() {
    use upkeep::probes::Probe;
    use upkeep::probes::postgres::{PostgresConfig, PostgresProbe};

    let db = Db::new(10);
    let probe = |extra: &str| {
        let c: PostgresConfig = toml::from_str(&format!(
            "conninfo = \"host=127.0.0.1 port=5432 dbname={}\"\nuser = \"postgres\"\n{extra}",
            db.0
        ))
        .unwrap();
        PostgresProbe::new(&c, Duration::from_secs(5))
    };
    let table = || {
        psql_in(
            &db.0,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'upkeep_write_check'",
        )
    };
    let value = |rs: &[upkeep::sample::Reading], m: &str, label: Option<&str>| {
        rs.iter()
            .find(|r| r.metric == m && label.is_none_or(|l| r.labels.iter().any(|(_, v)| v == l)))
            .map(|r| r.value)
    };

    let mut plain = probe("");
    let rs = plain.sample().await.unwrap();
    assert_eq!(
        value(&rs, "commit_seconds", None),
        None,
        "no write check unless asked"
    );
    assert_eq!(table(), "0", "no table unless asked");
    for wait in ["Lock", "LWLock", "IO"] {
        assert!(
            value(&rs, "backends_waiting", Some(wait)).is_some(),
            "{wait}: {rs:?}"
        );
    }

    let mut writing = probe("write_check = true");
    for _ in 0..3 {
        let rs = writing.sample().await.unwrap();
        let commit = value(&rs, "commit_seconds", None).expect("commit_seconds");
        assert!(commit > 0.0 && commit < 5.0, "{commit}");
    }
    assert_eq!(table(), "1");
    assert_eq!(
        psql_in(&db.0, "SELECT count(*) FROM upkeep_write_check"),
        "0"
    );

    // One session holds a row lock, another waits for it.
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port=5432 user=postgres dbname={}", db.0),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        c
    };
    let holder = connect().await;
    holder
        .batch_execute("BEGIN; UPDATE hot SET n = n + 1 WHERE id = 1")
        .await
        .unwrap();
    let waiter = connect().await;
    let blocked = tokio::spawn(async move {
        waiter
            .batch_execute("UPDATE hot SET n = n + 1 WHERE id = 1")
            .await
    });
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let rs = plain.sample().await.unwrap();
        if value(&rs, "backends_waiting", Some("Lock")).unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < end,
            "the blocked session was never counted: {rs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();
    blocked.await.unwrap().unwrap();
}

/// The guard is checked on a timer, not before every batch: a run of
/// hundreds of short batches guarded by a real TCP service connects to it
/// about once per `guard_every`, and the ledger's summary counts the
/// same checks the service saw.
#[test]
fn guard_checks_are_bounded_by_time_not_by_the_number_of_batches() {
    let db = Db::new(30_000);
    let gate = crate::util::Gate::new();
    let dir = temp_dir();
    let every_ms = 500;
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "[probe.db]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1 port=5432 dbname={}\"\n\
             user = \"postgres\"\n\n\
             [probe.gate]\nkind = \"tcp\"\naddress = \"{}\"\n\n\
             [maintenance.trim]\nkind = \"postgres_retention\"\nprobe = \"db\"\ntable = \"events\"\n\
             timestamp_column = \"created_at\"\nolder_than = \"30d\"\nbatch_size = 100\n\
             batch_target = \"1s\"\nmax_duty = 0.5\nguard = [\"gate\"]\n\
             guard_every = \"{every_ms}ms\"\ntimeout = \"10m\"\n",
            db.0,
            gate.local_addr().unwrap()
        ),
    );
    let data = dir.path().join("data");
    let o = upkeep(&[
        "maintenance",
        "run",
        "trim",
        "--ignore-window",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let conn = history_sql(&data);
    let times: Vec<(String, i64)> = conn
        .prepare("SELECT step, ts_ms FROM maintenance_steps ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Every batch, itemized in the steps or not.
    let batches: u64 = conn
        .query_row("SELECT batches FROM maintenance_runs", [], |r| r.get(0))
        .unwrap();
    let first = times.iter().find(|(s, _)| s == "batch").unwrap().1;
    let (summary, end): (String, i64) = conn
        .query_row(
            "SELECT detail, ts_ms FROM maintenance_steps WHERE step = 'summary'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let checks: u64 = summary
        .split(" guard checks")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the summary counts the guard checks: {summary}"));
    assert!(batches >= 300, "{batches} batches: {summary}");
    // The gate's own count: three checks open the run, the rest are the
    // timer's (a batch shorter than the 2s re-check adds none).
    let seen = gate.accepted();
    assert!(
        seen >= checks + 3 && seen <= checks + 3 + 2,
        "the gate saw {seen} connections, the summary {checks} checks + 3 at the start: {summary}"
    );
    // One check before the first batch, then at most one per guard_every.
    let span_ms = (end - first).max(0) as u64;
    assert!(
        checks <= 2 + span_ms / every_ms,
        "{checks} checks in {span_ms} ms of batches, every {every_ms} ms at most: {summary}"
    );
    assert!(
        checks * 4 < batches,
        "{checks} checks for {batches} batches: not one per batch"
    );
}
