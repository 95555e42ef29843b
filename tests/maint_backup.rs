//! postgres_backup and restore_drill against the real server on
//! 127.0.0.1:5432 (user `postgres`, trust auth), through the `upkeep`
//! binary as an operator runs them. pg_dump dumps a whole database, so
//! each test makes a database of its own (`upkeep_b_...`), dropped at the
//! end even when the test fails; every scratch database a drill makes is
//! named after the test's own drill task, so tests never see each other's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::probe_postgres::unique;
use crate::util::{Agent, free_port, history_sql, psql, stderr, temp_dir, upkeep, wait_for};

/// A database of the test's own with `shop.orders` (`rows` rows) and
/// `shop.items` (10 rows), dropped on drop.
struct Db(String);

impl Db {
    fn new(rows: u32) -> Db {
        let name = unique("upkeep_b");
        psql(&format!("CREATE DATABASE {name}"));
        db_sql(
            &name,
            &format!(
                "CREATE SCHEMA shop;
                 CREATE TABLE shop.orders (id bigint PRIMARY KEY, body text);
                 INSERT INTO shop.orders SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;
                 CREATE TABLE shop.items (id int PRIMARY KEY);
                 INSERT INTO shop.items SELECT generate_series(1, 10);"
            ),
        );
        Db(name)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        crate::util::psql_cleanup(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

/// SQL in database `db` through psql.
fn db_sql(db: &str, sql: &str) -> String {
    crate::util::psql_in(db, sql)
}

/// Drops drill `task`'s scratch databases when the test ends, passed or
/// not (a failing assertion must not leave one behind).
struct Scratch(String);

impl Drop for Scratch {
    fn drop(&mut self) {
        for name in scratch_dbs(&self.0).split(',').filter(|n| !n.is_empty()) {
            crate::util::psql_cleanup(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        }
    }
}

/// Scratch databases of drill task `task` on the server.
fn scratch_dbs(task: &str) -> String {
    psql(&format!(
        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'upkeep\\_drill\\_{task}\\_%'"
    ))
}

/// A config with the database's probe, a `dump` postgres_backup task
/// (`backup_extra` added) and a drill task `drill_name` of it
/// (`drill_extra` added).
fn config(dir: &Path, db: &Db, backup_extra: &str, drill_name: &str, drill_extra: &str) -> PathBuf {
    let text = format!(
        "[probe.db]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1 port=5432\"\nuser = \"postgres\"\ndbname = \"{}\"\n\n\
         [maintenance.dump]\nkind = \"postgres_backup\"\nprobe = \"db\"\n{backup_extra}\n\n\
         [maintenance.{drill_name}]\nkind = \"restore_drill\"\nbackup = \"dump\"\n{drill_extra}\n",
        db.0
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn maint(cfg: &Path, data: &Path, args: &[&str]) -> std::process::Output {
    let (cfg, data) = (cfg.to_str().unwrap(), data.to_str().unwrap());
    let mut all = vec!["maintenance"];
    all.extend_from_slice(args);
    all.extend(["--config", cfg, "--data-dir", data]);
    upkeep(&all)
}

fn spawn_maint(cfg: &Path, data: &Path, args: &[&str]) -> Child {
    Command::new(crate::util::bin())
        .arg("maintenance")
        .args(args)
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (status, error, verdict JSON) of the newest run of `task`.
fn last_run(data: &Path, task: &str) -> (String, String, serde_json::Value) {
    let (status, error, verdict): (String, Option<String>, Option<String>) = history_sql(data)
        .query_row(
            "SELECT status, error, verdict FROM maintenance_runs WHERE task = ?1 ORDER BY id DESC LIMIT 1",
            [task],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let verdict = verdict
        .map(|v| serde_json::from_str(&v).unwrap())
        .unwrap_or_default();
    (status, error.unwrap_or_default(), verdict)
}

/// The complete dumps' records under `dest`, oldest first.
fn dumps(dest: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let mut out: Vec<(PathBuf, serde_json::Value)> = std::fs::read_dir(dest)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let t = std::fs::read(e.path().join("dump.json")).ok()?;
                    Some((e.path(), serde_json::from_slice(&t).unwrap()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|(_, m)| m["finished_ms"].as_i64());
    out
}

fn sha256_of(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Files named `name` anywhere under `dir`.
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            out.push(p.clone());
        }
        if p.is_dir() {
            out.extend(find(&p, name));
        }
    }
    out
}

#[test]
fn a_dump_is_hashed_read_back_recorded_complete_and_pruned_past_keep() {
    let db = Db::new(500);
    let dir = temp_dir();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "not-needed-under-trust\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // The probe reads a password file: the dump gets it through PGPASSFILE.
    let cfg = config(dir.path(), &db, "keep = 2", "drill", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "user = \"postgres\"\n",
        &format!(
            "user = \"postgres\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let data = dir.path().join("data");
    for _ in 0..3 {
        let out = maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let dest = data.join("backups").join("dump");
    let all = dumps(&dest);
    assert_eq!(all.len(), 2, "keep = 2: {all:?}");
    let (dir3, meta) = all.last().unwrap();
    let file = dir3.join("dump");
    assert_eq!(meta["sha256"].as_str().unwrap(), sha256_of(&file));
    assert!(meta["toc_entries"].as_u64().unwrap() >= 4, "{meta}");
    assert_eq!(meta["database"].as_str().unwrap(), db.0);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
    // The oldest run's dump is gone, its run dir (run.json) left to pruning.
    assert!(!data.join("backups/dump/1/dump").exists());
    assert!(!data.join("backups/dump/1/dump.json").exists());
    // The temporary password file is gone.
    assert!(!data.join("maintenance/dump.pgpass").exists());
    let (status, _, verdict) = last_run(&data, "dump");
    assert_eq!(status, "succeeded");
    assert!(
        verdict["detail"]
            .as_str()
            .unwrap()
            .contains("pg_restore --list read"),
        "{verdict}"
    );
    // A backup changes nothing: its rollback is refused with the reason.
    let out = maint(&cfg, &data, &["rollback", "3"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("changes nothing to roll back")
            && stderr(&out).contains("pg_restore"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn directory_format_dumps_with_jobs_and_restores() {
    let db = Db::new(2000);
    let dir = temp_dir();
    let cfg = config(
        dir.path(),
        &db,
        "format = \"directory\"\njobs = 2",
        "dirdrill",
        "jobs = 2",
    );
    let data = dir.path().join("data");
    let out = maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = dumps(&data.join("backups/dump"));
    assert_eq!(all.len(), 1);
    assert!(all[0].0.join("dump.d/toc.dat").exists());
    let out = maint(&cfg, &data, &["run", "dirdrill", "--ignore-window"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, _, verdict) = last_run(&data, "dirdrill");
    assert_eq!(verdict["figures"]["rows"].as_u64(), Some(2010), "{verdict}");
}

#[test]
fn a_pg_dump_that_is_not_there_is_a_plan_error_naming_it() {
    let db = Db::new(1);
    let dir = temp_dir();
    let cfg = config(
        dir.path(),
        &db,
        "pg_dump = \"/nonexistent/bin/pg_dump\"",
        "d",
        "",
    );
    let data = dir.path().join("data");
    let out = maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    assert!(!out.status.success());
    let (status, error, _) = last_run(&data, "dump");
    assert_eq!(status, "failed");
    assert!(
        error.contains("pg_dump = /nonexistent/bin/pg_dump: cannot run it"),
        "{error}"
    );
}

#[test]
fn a_dest_too_small_is_refused_before_dumping_and_leaves_nothing() {
    let db = Db::new(100);
    let dir = temp_dir();
    let dest = dir.path().join("small");
    std::fs::create_dir(&dest).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&dest)
        .status()
        .expect("mount (util-linux) must be installed");
    assert!(mounted.success(), "mounting a 1 MiB tmpfs needs root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(dest.clone());
    let cfg = config(
        dir.path(),
        &db,
        &format!("dest = \"{}\"", dest.display()),
        "d",
        "",
    );
    let data = dir.path().join("data");
    let out = maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    assert!(!out.status.success());
    let (status, error, _) = last_run(&data, "dump");
    assert_eq!(status, "refused");
    assert!(
        error.contains(&format!("not enough room at {}", dest.display())),
        "{error}"
    );
    assert!(error.contains("1.2 × the database's"), "{error}");
    assert_eq!(
        std::fs::read_dir(&dest).unwrap().count(),
        0,
        "nothing partial at dest"
    );
}

/// Holds an ACCESS EXCLUSIVE lock on `shop.orders` until dropped, so that
/// a pg_dump (or anything reading the table) waits.
struct TableLock(Child);

impl TableLock {
    fn take(db: &str) -> TableLock {
        let mut child = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                db,
                "-Atq",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::{BufRead, Write};
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(
            stdin,
            "BEGIN; LOCK TABLE shop.orders IN ACCESS EXCLUSIVE MODE; SELECT 'locked';"
        )
        .unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        TableLock(child)
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_guard_turning_unhealthy_kills_the_dump_and_removes_the_partial_file() {
    let db = Db::new(100);
    let dir = temp_dir();
    let guard = crate::util::Gate::new();
    let cfg = config(dir.path(), &db, "guard = [\"app\"]", "d", "");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[probe.app]\nkind = \"tcp\"\naddress = \"{}\"\n",
        guard.local_addr().unwrap()
    ));
    std::fs::write(&cfg, text).unwrap();
    let data = dir.path().join("data");
    let lock = TableLock::take(&db.0);
    let child = spawn_maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    // pg_dump has opened its output and waits for the table lock.
    wait_for("pg_dump to start writing", || {
        !find(&data.join("backups"), "dump.partial").is_empty()
    });
    drop(guard);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    drop(lock);
    let (status, error, _) = last_run(&data, "dump");
    assert_eq!(status, "aborted", "{error}");
    assert!(error.contains("guarded probe unhealthy"), "{error}");
    assert!(error.contains("pg_dump killed"), "{error}");
    assert!(find(&data.join("backups"), "dump.partial").is_empty());
    assert!(find(&data.join("backups"), "dump.json").is_empty());
    // The killed pg_dump's session is gone from the server.
    wait_for("pg_dump's session to end", || {
        psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name LIKE 'upkeep maintenance dump%'",
            db.0
        )) == "0"
    });
}

#[test]
fn kill_9_of_the_cli_mid_dump_leaves_no_dump_taken_for_complete() {
    let db = Db::new(100);
    let dir = temp_dir();
    let cfg = config(dir.path(), &db, "", "d", "");
    let data = dir.path().join("data");
    let lock = TableLock::take(&db.0);
    let mut child = spawn_maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    wait_for("pg_dump to start writing", || {
        !find(&data.join("backups"), "dump.partial").is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    drop(lock);
    assert!(find(&data.join("backups"), "dump.json").is_empty());
    // A drill finds no complete backup rather than the half-written one.
    let out = maint(&cfg, &data, &["run", "d", "--ignore-window"]);
    assert!(!out.status.success());
    let (_, error, _) = last_run(&data, "d");
    assert!(error.contains("no complete backup of `dump`"), "{error}");
    // The next dump removes what the killed one left, and completes.
    let out = maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(find(&data.join("backups"), "dump.partial").is_empty());
    assert_eq!(dumps(&data.join("backups/dump")).len(), 1);
}

#[test]
fn a_drill_restores_the_newest_dump_checks_it_and_drops_the_scratch_database() {
    let db = Db::new(1000);
    let dir = temp_dir();
    let drill = unique("drill").replace('_', "x");
    let _scratch = Scratch(drill.clone());
    let cfg = config(
        dir.path(),
        &db,
        "",
        &drill,
        "max_age = \"1h\"\nchecks = [\n  { sql = \"select count(*) > 0 from shop.orders\", expect = true },\n  { sql = \"select count(*) from shop.items\", expect = 10 },\n]\n",
    );
    let data = dir.path().join("data");
    let out = maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The live database moves on by 2 %: within the 5 % tolerance.
    db_sql(
        &db.0,
        "INSERT INTO shop.orders SELECT g, 'new' FROM generate_series(1001, 1020) g",
    );
    let out = maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, _, verdict) = last_run(&data, &drill);
    assert_eq!(status, "succeeded");
    let f = &verdict["figures"];
    assert_eq!(f["tables"].as_u64(), Some(2), "{f}");
    assert_eq!(f["rows"].as_u64(), Some(1010), "{f}");
    assert_eq!(f["checks"].as_u64(), Some(2), "{f}");
    assert_eq!(f["counts_compared"].as_u64(), Some(2), "{f}");
    assert!(f["rto_seconds"].as_f64().unwrap() > 0.0, "{f}");
    assert!(f["backup_age_seconds"].as_f64().unwrap() >= 0.0, "{f}");
    assert_eq!(scratch_dbs(&drill), "", "the scratch database is dropped");

    // Beyond the tolerance, the drill fails naming the table.
    db_sql(
        &db.0,
        "INSERT INTO shop.items SELECT generate_series(11, 20)",
    );
    let out = maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    assert!(!out.status.success());
    let (status, error, _) = last_run(&data, &drill);
    assert_eq!(status, "failed");
    assert!(
        error.contains("\"shop\".\"items\": 10 rows restored, 20 live"),
        "{error}"
    );
    assert_eq!(scratch_dbs(&drill), "");
}

#[test]
fn a_failing_check_fails_the_drill_and_the_scratch_database_still_goes() {
    let db = Db::new(10);
    let dir = temp_dir();
    let drill = unique("drillc").replace('_', "x");
    let _scratch = Scratch(drill.clone());
    let cfg = config(
        dir.path(),
        &db,
        "",
        &drill,
        "checks = [{ sql = \"select count(*) from shop.orders\", expect = 11 }]\n",
    );
    let data = dir.path().join("data");
    assert!(
        maint(&cfg, &data, &["run", "dump", "--ignore-window"])
            .status
            .success()
    );
    let out = maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    assert!(!out.status.success());
    let (_, error, _) = last_run(&data, &drill);
    assert!(
        error.contains("check 1 (`select count(*) from shop.orders`): expected 11, got 10"),
        "{error}"
    );
    assert_eq!(scratch_dbs(&drill), "");
}

/// Makes one dump; returns (config, data dir, the dump's dir).
fn dumped(dir: &Path, db: &Db, drill: &str, drill_extra: &str) -> (PathBuf, PathBuf, PathBuf) {
    let cfg = config(dir, db, "", drill, drill_extra);
    let data = dir.join("data");
    let out = maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = dumps(&data.join("backups/dump")).pop().unwrap().0;
    (cfg, data, d)
}

#[test]
fn a_dump_cut_in_half_fails_the_drill_naming_pg_restores_error() {
    let db = Db::new(20_000);
    let dir = temp_dir();
    let drill = unique("drillh").replace('_', "x");
    let _scratch = Scratch(drill.clone());
    let (cfg, data, d) = dumped(dir.path(), &db, &drill, "");
    let file = d.join("dump");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 2).unwrap();
    // Its record agrees with the cut file: the checksum passes, the restore cannot.
    let meta_path = d.join("dump.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["sha256"] = sha256_of(&file).into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let out = maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    assert!(!out.status.success());
    let (status, error, _) = last_run(&data, &drill);
    assert_eq!(status, "failed");
    assert!(error.contains("pg_restore exited with"), "{error}");
    assert!(error.contains("pg_restore: error:"), "{error}");
    assert_eq!(scratch_dbs(&drill), "");
}

#[test]
fn a_checksum_mismatch_fails_the_drill_before_restoring() {
    let db = Db::new(100);
    let dir = temp_dir();
    let drill = unique("drills").replace('_', "x");
    let _scratch = Scratch(drill.clone());
    let (cfg, data, d) = dumped(dir.path(), &db, &drill, "");
    let file = d.join("dump");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let out = maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    assert!(!out.status.success());
    let (status, error, _) = last_run(&data, &drill);
    assert_eq!(status, "failed");
    assert!(error.contains("checksum mismatch"), "{error}");
    assert!(error.contains("not restored"), "{error}");
    assert_eq!(scratch_dbs(&drill), "");
}

#[test]
fn a_backup_older_than_max_age_fails_the_drill() {
    let db = Db::new(10);
    let dir = temp_dir();
    let drill = unique("drilla").replace('_', "x");
    let _scratch = Scratch(drill.clone());
    let (cfg, data, d) = dumped(dir.path(), &db, &drill, "max_age = \"7d\"");
    let meta_path = d.join("dump.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    let nine_days = 9 * 86_400_000;
    meta["finished_ms"] = (meta["finished_ms"].as_i64().unwrap() - nine_days).into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let out = maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    assert!(!out.status.success());
    let (_, error, _) = last_run(&data, &drill);
    assert!(
        error.contains("newest backup is 9 days old (max_age 7days)"),
        "{error}"
    );
}

/// Waits until drill `task`'s scratch database exists.
fn wait_scratch(task: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    while scratch_dbs(task).is_empty() {
        assert!(Instant::now() < end, "no scratch database appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A check that sleeps, so that the drill is caught with its scratch
/// database restored.
const SLOW_CHECK: &str =
    "checks = [{ sql = \"select pg_sleep(30) is not null\", expect = true }]\n";

#[test]
fn kill_9_mid_drill_then_the_agents_start_drops_the_scratch_database() {
    let db = Db::new(100);
    let dir = temp_dir();
    let drill = unique("drillk").replace('_', "x");
    let _scratch = Scratch(drill.clone());
    let (cfg, data, _) = dumped(dir.path(), &db, &drill, SLOW_CHECK);
    let mut child = spawn_maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    wait_scratch(&drill);
    // Restored, and in its check.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !scratch_dbs(&drill).is_empty(),
        "kill -9 leaves the scratch database"
    );
    let port = free_port();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = format!("[api]\nlisten = \"127.0.0.1:{port}\"\n\n{text}");
    std::fs::write(&cfg, text).unwrap();
    let agent = Agent::start(Some(&cfg), &data, port);
    let end = Instant::now() + Duration::from_secs(15);
    while !scratch_dbs(&drill).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.signal(libc::SIGTERM);
    let (_, _, log) = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(
        scratch_dbs(&drill),
        "",
        "the agent's start drops the leftover: {log}"
    );
}

#[test]
fn sigterm_mid_drill_stops_it_and_drops_the_scratch_database() {
    let db = Db::new(100);
    let dir = temp_dir();
    let drill = unique("drillt").replace('_', "x");
    let _scratch = Scratch(drill.clone());
    let (cfg, data, _) = dumped(dir.path(), &db, &drill, SLOW_CHECK);
    let child = spawn_maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    wait_scratch(&drill);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "stopped well before the check's 30 s"
    );
    assert!(!out.status.success());
    let (status, error, _) = last_run(&data, &drill);
    assert_eq!(status, "aborted", "{error}");
    assert!(error.contains("the agent is stopping"), "{error}");
    assert_eq!(scratch_dbs(&drill), "");
}

/// A login role of the test's own, dropped on drop (after its database).
struct Role(String);

impl Drop for Role {
    fn drop(&mut self) {
        crate::util::psql_cleanup(&format!("DROP ROLE IF EXISTS {}", self.0));
    }
}

#[test]
fn a_failing_pg_dump_puts_its_stderr_in_the_ledger_and_leaves_no_partial_file() {
    let role = Role(unique("upkeep_br"));
    psql(&format!("CREATE ROLE {} LOGIN", role.0));
    let db = Db::new(10);
    let dir = temp_dir();
    // The probe's role may connect but not read the schema.
    let cfg = config(dir.path(), &db, "", "d", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("user = \"postgres\"", &format!("user = \"{}\"", role.0));
    std::fs::write(&cfg, text).unwrap();
    let data = dir.path().join("data");
    let out = maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    assert!(!out.status.success());
    let (status, error, _) = last_run(&data, "dump");
    assert_eq!(status, "failed");
    assert!(error.contains("pg_dump exited with"), "{error}");
    assert!(error.contains("permission denied"), "{error}");
    assert!(find(&data.join("backups"), "dump.partial").is_empty());
    assert!(!data.join("backups/dump/1/dump").exists());
    drop(db);
}

#[test]
fn with_keep_1_a_backup_run_leaves_the_dump_a_drill_is_restoring_for_its_next_run() {
    let db = Db::new(2000);
    let dir = temp_dir();
    let drill = unique("drillp").replace('_', "x");
    let _scratch = Scratch(drill.clone());
    let cfg = config(
        dir.path(),
        &db,
        "keep = 1",
        &drill,
        "checks = [{ sql = \"select pg_sleep(6) is not null\", expect = true }]\n",
    );
    let data = dir.path().join("data");
    let dest = data.join("backups/dump");
    let out = maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (first, meta) = dumps(&dest).pop().unwrap();
    let first_run = meta["run_id"].as_i64().unwrap();
    let first_sha = meta["sha256"].as_str().unwrap().to_string();

    // The drill restores the only dump and sits in its slow check.
    let drilling = spawn_maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    wait_scratch(&drill);
    // Meanwhile a backup run makes a newer dump: with keep = 1 the
    // drilled one is surplus, and stays.
    let out = maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, _, verdict) = last_run(&data, "dump");
    assert_eq!(status, "succeeded");
    let detail = verdict["detail"].as_str().unwrap();
    assert!(
        detail.contains("0 older dumps pruned (keep 1); 1 kept while a drill restores it"),
        "{verdict}"
    );
    assert_eq!(
        verdict["figures"]["in_use"],
        serde_json::json!([first.display().to_string()])
    );
    let all = dumps(&dest);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0].0, first);
    assert_eq!(sha256_of(&first.join("dump")), first_sha, "untouched");

    let out = drilling.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, error, verdict) = last_run(&data, &drill);
    assert_eq!(status, "succeeded", "{error}");
    assert_eq!(verdict["figures"]["backup_run"].as_i64(), Some(first_run));
    assert_eq!(verdict["figures"]["rows"].as_u64(), Some(2010));
    assert_eq!(scratch_dbs(&drill), "");

    // The drill let go: the next backup run prunes both older dumps.
    let out = maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = dumps(&dest);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_ne!(all[0].0, first);
    assert!(!first.join("dump").exists() && !first.join("dump.json").exists());
    let (_, _, verdict) = last_run(&data, "dump");
    assert!(
        verdict["detail"]
            .as_str()
            .unwrap()
            .contains("2 older dumps pruned (keep 1)"),
        "{verdict}"
    );
}

#[test]
fn a_drill_with_its_own_user_makes_the_scratch_database_as_that_role() {
    let db = Db::new(300);
    let dir = temp_dir();
    let role = Role(unique("upkeep_bd"));
    psql(&format!("CREATE ROLE {} LOGIN CREATEDB", role.0));
    let drill = unique("drillu").replace('_', "x");
    let _scratch = Scratch(drill.clone());
    let own = format!(
        "conninfo = \"host=127.0.0.1 port=5432 dbname=postgres\"\nuser = \"{}\"\n\
         checks = [{{ sql = \"select pg_sleep(2) is not null\", expect = true }}]\n",
        role.0
    );
    let (cfg, data, _) = dumped(dir.path(), &db, &drill, &own);
    let child = spawn_maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    wait_scratch(&drill);
    let owner = psql(&format!(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE 'upkeep\\_drill\\_{drill}\\_%'"
    ));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(owner, role.0, "created by the drill's own role");
    let (status, _, verdict) = last_run(&data, &drill);
    assert_eq!(status, "succeeded");
    assert_eq!(verdict["figures"]["rows"].as_u64(), Some(310));
    assert_eq!(scratch_dbs(&drill), "");

    // Without CREATEDB the drill fails naming the database and the reason.
    psql(&format!("ALTER ROLE {} NOCREATEDB", role.0));
    let out = maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    assert!(!out.status.success());
    let (status, error, _) = last_run(&data, &drill);
    assert_eq!(status, "failed");
    assert!(
        error.contains(&format!("creating upkeep_drill_{drill}_"))
            && error.contains("permission denied to create database"),
        "{error}"
    );
    assert_eq!(scratch_dbs(&drill), "");
}

#[test]
fn kill_9_mid_drill_then_the_drills_next_run_drops_the_leftover_and_passes() {
    let db = Db::new(100);
    let dir = temp_dir();
    let drill = unique("drilln").replace('_', "x");
    let _scratch = Scratch(drill.clone());
    let (cfg, data, _) = dumped(dir.path(), &db, &drill, SLOW_CHECK);
    let mut child = spawn_maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    wait_scratch(&drill);
    child.kill().unwrap();
    child.wait().unwrap();
    let left = scratch_dbs(&drill);
    assert!(!left.is_empty(), "kill -9 leaves the scratch database");
    // The next run, without the slow check, finds the leftover first.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(SLOW_CHECK, "");
    std::fs::write(&cfg, text).unwrap();
    let out = maint(&cfg, &data, &["run", &drill, "--ignore-window"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("dropped scratch database {left}")),
        "{}",
        stderr(&out)
    );
    let (status, _, _) = last_run(&data, &drill);
    assert_eq!(status, "succeeded");
    assert_eq!(scratch_dbs(&drill), "");
}

/// Field `n` (1-based, as proc(5) numbers them, from 3 on) of
/// `/proc/PID/stat`.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(n - 3).map(str::to_string)
}

/// The pids of the children of process `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_field(*pid, 4) == Some(parent.to_string()))
        .collect()
}

#[test]
fn pg_dump_runs_at_the_configured_niceness_and_io_class() {
    let db = Db::new(100);
    let dir = temp_dir();
    for (settings, nice, io) in [
        ("", "10", "best-effort: prio 7"),
        ("nice = 19\nio_class = \"idle\"", "19", "idle"),
    ] {
        let cfg = config(dir.path(), &db, settings, "d", "");
        let data = dir.path().join(format!("data-{nice}"));
        let lock = TableLock::take(&db.0);
        let child = spawn_maint(&cfg, &data, &["run", "dump", "--ignore-window"]);
        // pg_dump has opened its output and waits for the table lock.
        wait_for("pg_dump to start writing", || {
            !find(&data.join("backups"), "dump.partial").is_empty()
        });
        let pg_dump = children_of(child.id())
            .into_iter()
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "pg_dump")
            })
            .expect("pg_dump is a child of the run");
        // Field 19 is the niceness; only ever raised from the run's own
        // (this test's, unless it runs niced past the setting).
        let own: i32 = stat_field(std::process::id(), 19).unwrap().parse().unwrap();
        let want = own.max(nice.parse().unwrap()).to_string();
        assert_eq!(stat_field(pg_dump, 19), Some(want));
        let out = Command::new("ionice")
            .args(["-p", &pg_dump.to_string()])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), io);
        drop(lock);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: String = history_sql(&data)
            .query_row(
                "SELECT plan FROM maintenance_runs WHERE task = 'dump' ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            plan.contains(&format!("at nice {nice}, I/O ")),
            "the plan says so: {plan}"
        );
    }
}
