//! The `redis_cleanup` task against the real Redis on 127.0.0.1:6379 (keys
//! under a prefix of each test's own, removed at the end) and against
//! servers of its own started for a test (password and ACL user, LFU
//! policy, cluster mode, a restart, large values), driven step by step
//! through the `Task` trait, and through the CLI where the ledger, a kill
//! or the process's memory matter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use upkeep::maintenance::redis_cleanup::{CleanupConfig, CleanupTask};
use upkeep::maintenance::{Backup, Cx, Plan, Task, TaskError};
use upkeep::probes::redis::RedisConfig;

use crate::probe_postgres::{free_port, password_file, unique};

const SHARED: &str = "redis://127.0.0.1:6379/0";

/// A connection for setting up and checking. A server that is not there
/// fails the test with one line.
pub(crate) async fn admin(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(60))),
        )
        .await
        .unwrap_or_else(|e| {
            panic!("Redis is not reachable at {url} ({e}); start it as README says")
        })
}

async fn q<T: redis::FromRedisValue>(c: &mut MultiplexedConnection, cmd: &mut redis::Cmd) -> T {
    cmd.query_async(c).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Every key under `prefix` with its value and whether it has a TTL.
async fn snapshot(
    c: &mut MultiplexedConnection,
    prefix: &str,
) -> BTreeMap<String, (Vec<u8>, bool)> {
    let mut out = BTreeMap::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = q(
            c,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000),
        )
        .await;
        for k in keys {
            let dump: Option<Vec<u8>> = q(c, redis::cmd("DUMP").arg(&k)).await;
            let ttl: i64 = q(c, redis::cmd("PTTL").arg(&k)).await;
            if let Some(d) = dump {
                out.insert(k, (d, ttl >= 0));
            }
        }
        cursor = next;
        if cursor == 0 {
            return out;
        }
    }
}

/// Removes the test's keys from the shared server (never anything else).
async fn remove_prefix(c: &mut MultiplexedConnection, prefix: &str) {
    for k in snapshot(c, prefix).await.keys() {
        let _: i64 = q(c, redis::cmd("UNLINK").arg(k)).await;
    }
}

fn redis_config(url: &str, extra: &str) -> RedisConfig {
    let c: RedisConfig = toml::from_str(&format!("url = \"{url}\"\n{extra}")).unwrap();
    assert!(c.validate().is_empty());
    c
}

fn cleanup_config(toml: &str) -> CleanupConfig {
    let c: CleanupConfig = toml::from_str(&format!("probe = \"cache\"\n{toml}"))
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(c.validate_own(), vec![], "test config is invalid");
    c
}

fn cx(dir: &Path) -> Cx {
    Cx {
        name: "cache-cleanup".into(),
        run_id: 3,
        backup_dir: dir.join("backups/cache-cleanup/3"),
        quarantine_dir: dir.join("quarantine/cache-cleanup/3"),
        data_dir: dir.to_path_buf(),
        cancel: tokio_util::sync::CancellationToken::new(),
    }
}

async fn run_batches(task: &mut CleanupTask, cx: &Cx, plan: &Plan, size: u64) -> u64 {
    let mut removed = 0;
    for _ in 0..100_000 {
        let b = task.apply_batch(cx, plan, size).await.unwrap();
        removed += b.rows;
        if b.done {
            return removed;
        }
    }
    panic!("the run never finished");
}

#[tokio::test]
async fn cleanup_removes_only_planned_unchanged_keys_and_rollback_restores_them_with_their_ttl() {
    let p = unique("upkeep_rc");
    let mut c = admin(SHARED).await;
    let dir = crate::util::temp_dir();
    for i in 0..300 {
        let _: () = q(
            &mut c,
            redis::cmd("SET")
                .arg(format!("{p}:tmp:{i}"))
                .arg(format!("v{i}")),
        )
        .await;
    }
    for i in 0..30 {
        let _: () = q(
            &mut c,
            redis::cmd("PEXPIRE")
                .arg(format!("{p}:tmp:{i}"))
                .arg(3_600_000),
        )
        .await;
    }
    let _: () = q(
        &mut c,
        redis::cmd("HSET")
            .arg(format!("{p}:tmp:h"))
            .arg("f")
            .arg("x"),
    )
    .await;
    for i in 0..50 {
        let _: () = q(
            &mut c,
            redis::cmd("SET").arg(format!("{p}:keep:{i}")).arg("k"),
        )
        .await;
    }
    let original = snapshot(&mut c, &format!("{p}:tmp:")).await;
    let kept = snapshot(&mut c, &format!("{p}:keep:")).await;

    let config = cleanup_config(&format!("match = \"{p}:tmp:*\"\nbatch_size = 40"));
    let mut task = CleanupTask::new("cache-cleanup", &config, &redis_config(SHARED, ""));
    let cx = cx(dir.path());
    let before = task.figures().await.unwrap();
    assert!(
        before["used_memory_bytes"].as_u64().unwrap() > 0,
        "{before}"
    );
    let plan = task.plan(&cx).await.unwrap();
    assert_eq!(plan.rows, 301, "{}", plan.summary);
    assert!(plan.summary.contains("sampled"), "{}", plan.summary);
    assert!(plan.bytes > 0);

    // The application during the run: rewrites some keys, gives others a
    // TTL, deletes one.
    for i in 100..105 {
        let _: () = q(
            &mut c,
            redis::cmd("SET").arg(format!("{p}:tmp:{i}")).arg("new"),
        )
        .await;
    }
    for i in 200..210 {
        let _: () = q(
            &mut c,
            redis::cmd("PEXPIRE")
                .arg(format!("{p}:tmp:{i}"))
                .arg(600_000),
        )
        .await;
    }
    let _: i64 = q(&mut c, redis::cmd("DEL").arg(format!("{p}:tmp:250"))).await;

    let backup = task.backup(&cx, &plan).await.unwrap();
    assert!(backup.location.ends_with("keys.bin"));
    let removed = run_batches(&mut task, &cx, &plan, 40).await;
    assert_eq!(removed, 301 - 5 - 1);
    let verdict = task.validate(&cx, &plan).await.unwrap();
    assert!(verdict.ok, "{}", verdict.detail);
    let counts = &verdict.figures["counts"];
    assert_eq!(
        (counts["changed"].as_u64(), counts["vanished"].as_u64()),
        (Some(5), Some(1)),
        "{verdict:?}"
    );

    let left = snapshot(&mut c, &format!("{p}:tmp:")).await;
    let rewritten: Vec<String> = (100..105).map(|i| format!("{p}:tmp:{i}")).collect();
    assert_eq!(
        left.keys().cloned().collect::<Vec<_>>(),
        rewritten,
        "only rewritten keys stay"
    );
    assert_eq!(snapshot(&mut c, &format!("{p}:keep:")).await, kept);
    let after = task.figures().await.unwrap();
    assert!(after["keys"].as_u64().is_some());

    let state: Backup = task.backup_state().unwrap();
    assert_eq!(state.rows, removed);
    let mut again = CleanupTask::new("cache-cleanup", &config, &redis_config(SHARED, ""));
    let back = again.rollback(&cx, &state).await.unwrap();
    assert!(back.ok, "{}", back.detail);
    assert_eq!(
        back.figures["restored"].as_u64(),
        Some(removed),
        "{}",
        back.detail
    );
    let restored = snapshot(&mut c, &format!("{p}:tmp:")).await;
    for (k, (dump, had_ttl)) in &original {
        if k.ends_with(":250") {
            assert!(
                !restored.contains_key(k),
                "a key deleted by the app stays deleted"
            );
            continue;
        }
        let (now, ttl) = &restored[k];
        if !rewritten.contains(k) {
            assert_eq!(now, dump, "{k} restored as it was");
        }
        let given = k
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u32>()
            .is_ok_and(|i| (200..210).contains(&i));
        assert_eq!(*ttl, *had_ttl || given, "{k}: TTL kept");
    }
    for i in 200..210 {
        let t: i64 = q(&mut c, redis::cmd("PTTL").arg(format!("{p}:tmp:{i}"))).await;
        assert!(
            t > 500_000 && t <= 600_000,
            "{t}: the TTL given during the run is kept"
        );
    }

    // Rolled back a second time: every key exists, left alone and counted;
    // with force, replaced.
    let _: () = q(
        &mut c,
        redis::cmd("SET").arg(format!("{p}:tmp:0")).arg("app"),
    )
    .await;
    let twice = again.rollback(&cx, &state).await.unwrap();
    assert_eq!(
        twice.figures["exist_again"].as_u64(),
        Some(removed),
        "{}",
        twice.detail
    );
    let v: String = q(&mut c, redis::cmd("GET").arg(format!("{p}:tmp:0"))).await;
    assert_eq!(v, "app");
    again.set_force(true);
    let forced = again.rollback(&cx, &state).await.unwrap();
    assert_eq!(
        forced.figures["replaced"].as_u64(),
        Some(removed),
        "{}",
        forced.detail
    );
    let v: String = q(&mut c, redis::cmd("GET").arg(format!("{p}:tmp:0"))).await;
    assert_eq!(v, "v0");
    remove_prefix(&mut c, &p).await;
}

#[tokio::test]
async fn a_pattern_with_no_match_plans_and_removes_nothing() {
    let p = unique("upkeep_rc");
    let dir = crate::util::temp_dir();
    let config = cleanup_config(&format!("match = \"{p}:none:*\""));
    let mut task = CleanupTask::new("cache-cleanup", &config, &redis_config(SHARED, ""));
    let cx = cx(dir.path());
    let plan = task.plan(&cx).await.unwrap();
    assert_eq!(plan.rows, 0);
    assert!(
        plan.summary.starts_with("nothing to remove"),
        "{}",
        plan.summary
    );
    task.backup(&cx, &plan).await.unwrap();
    assert_eq!(run_batches(&mut task, &cx, &plan, 500).await, 0);
    let v = task.validate(&cx, &plan).await.unwrap();
    assert!(v.ok, "{}", v.detail);
}

/// A redis-server of the test's own on a free port, data in a temp dir
/// (append-only file fsynced at every write, so a restart keeps every
/// acknowledged change); killed when dropped.
pub(crate) struct OwnRedis {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
}

impl OwnRedis {
    pub fn start(args: &[&str]) -> OwnRedis {
        let dir = crate::util::temp_dir();
        let port = free_port();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(port, dir.path(), &args);
        OwnRedis {
            child,
            port,
            dir,
            args,
        }
    }

    fn spawn(port: u16, dir: &Path, args: &[String]) -> Child {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it as README says")
            });
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "redis-server on port {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Killed (SIGKILL) and started again on the same port and data.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, self.dir.path(), &self.args);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn fill(c: &mut MultiplexedConnection, prefix: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut cmd = redis::cmd("MSET");
        for i in chunk {
            cmd.arg(format!("{prefix}{i}")).arg(format!("value-{i}"));
        }
        let _: () = q(c, &mut cmd).await;
    }
}

async fn plan_error(url: &str, redis_extra: &str, extra: &str) -> TaskError {
    let dir = crate::util::temp_dir();
    let config = cleanup_config(&format!("match = \"tmp:*\"\n{extra}"));
    let mut task = CleanupTask::new("c", &config, &redis_config(url, redis_extra));
    task.plan(&cx(dir.path())).await.unwrap_err()
}

#[tokio::test]
async fn lfu_with_an_idle_filter_cluster_mode_and_bad_credentials_are_refused_with_reasons() {
    let lfu = OwnRedis::start(&["--maxmemory-policy", "allkeys-lfu"]);
    match plan_error(&lfu.url(), "", "idle_longer_than = \"1h\"").await {
        TaskError::Config { field, message } => {
            assert_eq!(field, "idle_longer_than");
            assert!(message.contains("allkeys-lfu"), "{message}");
        }
        e => panic!("{e}"),
    }
    // Without the idle filter an LFU server is fine.
    let dir = crate::util::temp_dir();
    let config = cleanup_config("match = \"tmp:*\"");
    let mut task = CleanupTask::new("c", &config, &redis_config(&lfu.url(), ""));
    assert_eq!(task.plan(&cx(dir.path())).await.unwrap().rows, 0);

    let cluster = OwnRedis::start(&["--cluster-enabled", "yes"]);
    let e = plan_error(&cluster.url(), "", "").await.to_string();
    assert!(e.contains("cluster mode is not supported"), "{e}");

    let locked = OwnRedis::start(&["--requirepass", "right-one"]);
    let files = crate::util::temp_dir();
    let wrong = password_file(files.path(), "wrong", "wrong-canary");
    let e = plan_error(
        &locked.url(),
        &format!("password_file = \"{}\"", wrong.display()),
        "",
    )
    .await
    .to_string();
    assert!(
        e.contains("authentication failed") && !e.contains("canary"),
        "{e}"
    );

    let port = free_port();
    let e = plan_error(&format!("redis://127.0.0.1:{port}/0"), "", "")
        .await
        .to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[tokio::test]
async fn an_acl_user_with_a_password_runs_the_cleanup_and_its_rollback() {
    let server = OwnRedis::start(&["--requirepass", "admin-pw"]);
    let mut c = admin(&format!("redis://:admin-pw@127.0.0.1:{}/0", server.port)).await;
    let _: () = q(
        &mut c,
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("cleaner")
            .arg("on")
            .arg(">cleaner-pw")
            .arg("~*")
            .arg("+@all"),
    )
    .await;
    fill(&mut c, "tmp:", 1000).await;
    let files = crate::util::temp_dir();
    let pw = password_file(files.path(), "pw", "cleaner-pw");
    let redis = redis_config(
        &server.url(),
        &format!(
            "username = \"cleaner\"\npassword_file = \"{}\"",
            pw.display()
        ),
    );
    let config = cleanup_config("match = \"tmp:*\"\nbatch_size = 300");
    let mut task = CleanupTask::new("c", &config, &redis);
    let cx = cx(files.path());
    let plan = task.plan(&cx).await.unwrap();
    task.backup(&cx, &plan).await.unwrap();
    assert_eq!(run_batches(&mut task, &cx, &plan, 300).await, 1000);
    assert!(task.validate(&cx, &plan).await.unwrap().ok);
    let n: i64 = q(&mut c, &mut redis::cmd("DBSIZE")).await;
    assert_eq!(n, 0);
    let v = task
        .rollback(&cx, &task.backup_state().unwrap())
        .await
        .unwrap();
    assert!(v.ok, "{}", v.detail);
    let n: i64 = q(&mut c, &mut redis::cmd("DBSIZE")).await;
    assert_eq!(n, 1000);
}

// Through the CLI: the ledger, kill -9, a restart of the server, memory.

fn write_config(dir: &Path, url: &str, task: &str) -> PathBuf {
    crate::util::write_file(
        dir,
        "agent.toml",
        &format!(
            "[probe.cache]\nkind = \"redis\"\nurl = \"{url}\"\n\n[maintenance.cache-cleanup]\nkind = \"redis_cleanup\"\nprobe = \"cache\"\n{task}\n"
        ),
    )
}

fn cli(config: &Path, data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(crate::util::bin());
    cmd.args(["maintenance"])
        .args(args)
        .arg("-c")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .env_remove("UPKEEP_CONFIG")
        .env("UPKEEP_LOG", "warn");
    cmd
}

fn show(config: &Path, data: &Path, run: i64) -> serde_json::Value {
    let o = cli(config, data, &["show", &run.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Keys under `prefix` (SCAN only: values are not read).
async fn count_prefix(c: &mut MultiplexedConnection, prefix: &str) -> usize {
    let (mut cursor, mut n) = (0u64, 0);
    loop {
        let (next, keys): (u64, Vec<String>) = q(
            c,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000),
        )
        .await;
        n += keys.len();
        cursor = next;
        if cursor == 0 {
            return n;
        }
    }
}

/// Starts `maintenance run` and waits until it has removed some keys.
async fn start_and_wait(
    config: &Path,
    data: &Path,
    c: &mut MultiplexedConnection,
    prefix: &str,
    total: usize,
) -> Child {
    let mut child = cli(config, data, &["run", "cache-cleanup", "--ignore-window"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let n = count_prefix(c, prefix).await;
        if n < total && n > 0 {
            return child;
        }
        let why = if n == 0 {
            "the run ended before it could be stopped"
        } else if Instant::now() >= until {
            "the run removed nothing in 60 s"
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = child.kill();
        let _ = child.wait();
        panic!("{why}");
    }
}

#[tokio::test]
async fn a_killed_cli_run_reads_interrupted_and_its_rollback_restores_every_key() {
    let p = unique("upkeep_rck");
    let mut c = admin(SHARED).await;
    fill(&mut c, &format!("{p}:"), 3000).await;
    let original = snapshot(&mut c, &format!("{p}:")).await;
    let dir = crate::util::temp_dir();
    let config = write_config(
        dir.path(),
        SHARED,
        &format!("match = \"{p}:*\"\nbatch_size = 100\npause = \"150ms\""),
    );
    let data = dir.path().join("data");
    let mut child = start_and_wait(&config, &data, &mut c, &format!("{p}:"), 3000).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let o = cli(&config, &data, &["rollback", "1"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc = show(&config, &data, 1);
    let run = &doc["tasks"][0]["details"];
    assert_eq!(run["status"], "rolled_back", "{doc}");
    assert_eq!(run["outcome"], "interrupted", "{doc}");
    assert_eq!(snapshot(&mut c, &format!("{p}:")).await, original);
    remove_prefix(&mut c, &p).await;
}

#[tokio::test]
async fn a_server_restart_mid_run_stops_the_run_with_a_reason_and_loses_no_key() {
    let mut server = OwnRedis::start(&[]);
    let mut c = admin(&server.url()).await;
    fill(&mut c, "tmp:", 3000).await;
    let original = snapshot(&mut c, "tmp:").await;
    let dir = crate::util::temp_dir();
    let config = write_config(
        dir.path(),
        &server.url(),
        "match = \"tmp:*\"\nbatch_size = 100\npause = \"150ms\"",
    );
    let data = dir.path().join("data");
    let child = start_and_wait(&config, &data, &mut c, "tmp:", 3000).await;
    server.restart();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "the run went on across the restart");
    let doc = show(&config, &data, 1);
    let run = &doc["tasks"][0];
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("127.0.0.1:{}", server.port)),
        "{doc}"
    );
    let mut c = admin(&server.url()).await;
    let left = count_prefix(&mut c, "tmp:").await;
    assert!(left < 3000, "some keys were removed before the restart");
    let o = cli(&config, &data, &["rollback", "1"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        snapshot(&mut c, "tmp:").await,
        original,
        "every removed key is back"
    );
}

/// Runs the command to its end; whether it succeeded and its peak RSS in
/// bytes (`VmHWM`, read until it exits: the high-water mark of the
/// program itself, not of the forked test process before `exec`).
fn peak_rss(mut cmd: Command) -> (bool, u64) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb * 1024);
        }
        if let Some(s) = child.try_wait().unwrap() {
            return (s.success(), peak);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `n` bytes that Redis cannot compress (DUMP compresses with LZF).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

#[tokio::test]
async fn large_values_stay_within_the_memory_bound() {
    let server = OwnRedis::start(&["--appendonly", "no"]);
    let mut c = admin(&server.url()).await;
    // 40 values of 4 MiB in one batch: 160 MiB, far above the per-call cap.
    for i in 0..40 {
        let v = noise(4 << 20, i + 1);
        let _: () = q(&mut c, redis::cmd("SET").arg(format!("mid:{i}")).arg(&v)).await;
    }
    let dir = crate::util::temp_dir();
    let config = write_config(
        dir.path(),
        &server.url(),
        "match = \"mid:*\"\nbatch_size = 500",
    );
    let data = dir.path().join("data");
    let (ok, rss) = peak_rss(cli(
        &config,
        &data,
        &["run", "cache-cleanup", "--ignore-window"],
    ));
    assert!(ok);
    eprintln!(
        "peak RSS of the run over 40 values of 4 MiB: {} MiB",
        rss >> 20
    );
    assert_eq!(count_prefix(&mut c, "mid:").await, 0);
    assert!(
        rss < 100 << 20,
        "peak RSS {} MiB for 160 MiB of values",
        rss >> 20
    );
    let (ok, rss) = peak_rss(cli(&config, &data, &["rollback", "1"]));
    assert!(ok);
    assert_eq!(count_prefix(&mut c, "mid:").await, 40);
    assert!(rss < 100 << 20, "rollback peak RSS {} MiB", rss >> 20);
    let _: i64 = q(
        &mut c,
        redis::cmd("UNLINK").arg((0..40).map(|i| format!("mid:{i}")).collect::<Vec<_>>()),
    )
    .await;

    // One value of 100 MB: a few copies of it at most, never more.
    let big = noise(100_000_000, 99);
    let _: () = q(&mut c, redis::cmd("SET").arg("big:1").arg(&big)).await;
    drop(big);
    let config = write_config(dir.path(), &server.url(), "match = \"big:*\"");
    let data = dir.path().join("data2");
    let (ok, rss) = peak_rss(cli(
        &config,
        &data,
        &["run", "cache-cleanup", "--ignore-window"],
    ));
    assert!(ok);
    eprintln!(
        "peak RSS of the run over one 100 MB value: {} MiB",
        rss >> 20
    );
    assert_eq!(count_prefix(&mut c, "big:").await, 0);
    assert!(
        rss < 350 << 20,
        "peak RSS {} MiB for one 100 MB value",
        rss >> 20
    );
    let (ok, rss) = peak_rss(cli(&config, &data, &["rollback", "1"]));
    assert!(ok);
    let len: i64 = q(&mut c, redis::cmd("STRLEN").arg("big:1")).await;
    assert_eq!(len, 100_000_000);
    assert!(rss < 350 << 20, "rollback peak RSS {} MiB", rss >> 20);
}

// cache_warmup: a small application of the test's own that, like a real
// one, fills its cache (keys under the test's prefix) on each request.

/// An HTTP server on a free port answering every GET with 200 and writing
/// one Redis key per request path (`PREFIX:PATH`); counts the requests.
fn app(prefix: &str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (h, prefix) = (hits.clone(), prefix.to_string());
    std::thread::spawn(move || {
        let client = redis::Client::open(SHARED).unwrap();
        let mut c = client.get_connection().unwrap();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let path = line.split(' ').nth(1).unwrap_or("/").to_string();
            let _: () = redis::cmd("SET")
                .arg(format!("{prefix}:{path}"))
                .arg("cached")
                .query(&mut c)
                .unwrap();
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (port, hits)
}

#[tokio::test]
async fn a_warmup_chained_after_a_cleanup_requests_every_url_and_refuses_rollback() {
    let p = unique("upkeep_rw");
    let mut c = admin(SHARED).await;
    fill(&mut c, &format!("{p}:old:"), 200).await;
    let (port, hits) = app(&p);
    let dir = crate::util::temp_dir();
    let urls: Vec<String> = (0..30)
        .map(|i| format!("\"http://127.0.0.1:{port}/page/{i}\""))
        .collect();
    let config = write_config(
        dir.path(),
        SHARED,
        &format!(
            "match = \"{p}:old:*\"\n\n[maintenance.cache-warmup]\nkind = \"cache_warmup\"\nprobe = \"cache\"\nafter = \"cache-cleanup\"\nconcurrency = 3\nrate = 200.0\nurls = [{}]\n",
            urls.join(", ")
        ),
    );
    let data = dir.path().join("data");
    let o = cli(&config, &data, &["run", "cache-cleanup", "--ignore-window"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(count_prefix(&mut c, &format!("{p}:old:")).await, 0);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 30);
    assert_eq!(count_prefix(&mut c, &format!("{p}:/page/")).await, 30);
    let doc = show(&config, &data, 2);
    let run = &doc["tasks"][0];
    assert_eq!(run["name"], "cache-warmup", "{doc}");
    assert_eq!(run["details"]["status"], "succeeded", "{doc}");
    // The shared server's key count moves with other tests: only that
    // the ledger has the figures is checked here.
    for when in ["before", "after"] {
        assert!(run["details"][when]["keys"].is_u64(), "{doc}");
        assert!(run["details"][when]["used_memory_bytes"].is_u64(), "{doc}");
    }
    let o = cli(&config, &data, &["rollback", "2"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success() && err.contains("nothing to roll back"),
        "{err}"
    );
    remove_prefix(&mut c, &p).await;
}

#[tokio::test]
async fn a_warmup_against_a_dead_app_fails_naming_the_url() {
    let dir = crate::util::temp_dir();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/home");
    let path = crate::util::write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "[probe.cache]\nkind = \"redis\"\nurl = \"{SHARED}\"\n\n[maintenance.cache-warmup]\nkind = \"cache_warmup\"\nprobe = \"cache\"\nurls = [\"{url}\"]\n"
        ),
    );
    let data = dir.path().join("data");
    let o = cli(&path, &data, &["run", "cache-warmup", "--ignore-window"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let doc = show(&path, &data, 1);
    let error = doc["tasks"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&url), "{doc}");
}

#[test]
fn after_must_name_a_task_and_end() {
    let dir = crate::util::temp_dir();
    let task = |name: &str, after: &str| {
        format!(
            "[maintenance.{name}]\nkind = \"cache_warmup\"\nprobe = \"cache\"\nurls = [\"http://127.0.0.1:1/\"]\nafter = \"{after}\"\n"
        )
    };
    let head = format!("[probe.cache]\nkind = \"redis\"\nurl = \"{SHARED}\"\n");
    for (body, want) in [
        (task("a", "nope"), "no maintenance task `nope`"),
        (
            task("a", "b") + &task("b", "a"),
            "a chain of `after` must end",
        ),
    ] {
        let path = crate::util::write_file(dir.path(), "agent.toml", &(head.clone() + &body));
        let o = crate::util::upkeep(&["check-config", path.to_str().unwrap()]);
        let err = crate::util::stderr(&o) + &crate::util::stdout(&o);
        assert_eq!(o.status.code(), Some(78), "{err}");
        assert!(err.contains("after") && err.contains(want), "{err}");
    }
}

#[tokio::test]
async fn from_access_log_warms_the_most_requested_get_paths_of_the_window() {
    let p = unique("upkeep_rl");
    let mut c = admin(SHARED).await;
    let (port, hits) = app(&p);
    let dir = crate::util::temp_dir();
    let line = |when: chrono::DateTime<chrono::Utc>, method: &str, path: &str| {
        format!(
            "10.0.0.1 - - [{}] \"{method} {path} HTTP/1.1\" 200 12 \"-\" \"test\"\n",
            when.format("%d/%b/%Y:%H:%M:%S +0000")
        )
    };
    let now = chrono::Utc::now();
    let old = now - chrono::Duration::hours(48);
    let mut log = String::new();
    for _ in 0..20 {
        log += &line(old, "GET", "/old");
        log += &line(now, "POST", "/login");
    }
    for (path, n) in [("/hot", 5), ("/warm?page=2", 3), ("/cold", 1)] {
        for _ in 0..n {
            log += &line(now, "GET", path);
        }
    }
    log += "not a log line\n";
    let log_path = crate::util::write_file(dir.path(), "access.log", &log);
    // The rotated file counts too.
    crate::util::write_file(dir.path(), "access.log.1", &line(now, "GET", "/hot"));
    let config = crate::util::write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "[probe.cache]\nkind = \"redis\"\nurl = \"{SHARED}\"\n\n[probe.web]\nkind = \"access_log\"\npaths = [\"{}\"]\n\n\
             [maintenance.cache-warmup]\nkind = \"cache_warmup\"\nprobe = \"cache\"\n\
             from_access_log = {{ probe = \"web\", top = 2, base_url = \"http://127.0.0.1:{port}/\", window = \"24h\" }}\n",
            log_path.display()
        ),
    );
    let data = dir.path().join("data");
    let o = cli(&config, &data, &["plan", "cache-warmup", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        plan["details"]["from_access_log"],
        serde_json::json!([
            {"url": format!("{base}/hot"), "requests": 6},
            {"url": format!("{base}/warm?page=2"), "requests": 3},
        ]),
        "{plan}"
    );
    let o = cli(&config, &data, &["run", "cache-warmup", "--ignore-window"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(count_prefix(&mut c, &format!("{p}:/hot")).await, 1);
    assert_eq!(count_prefix(&mut c, &format!("{p}:/warm")).await, 1);
    assert_eq!(count_prefix(&mut c, &format!("{p}:/cold")).await, 0);
    remove_prefix(&mut c, &p).await;
}

#[tokio::test]
async fn filters_pick_by_type_expiry_size_and_idle_time_and_a_big_plan_needs_backup_off() {
    let p = unique("upkeep_rf");
    let mut c = admin(SHARED).await;
    let dir = crate::util::temp_dir();
    let cx = cx(dir.path());
    let set = |k: String, v: Vec<u8>| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(k).arg(v);
        cmd
    };
    for i in 0..10 {
        let _: () = q(&mut c, &mut set(format!("{p}:s:{i}"), vec![b'a'; 10])).await;
        let _: () = q(
            &mut c,
            redis::cmd("HSET")
                .arg(format!("{p}:h:{i}"))
                .arg("f")
                .arg("v"),
        )
        .await;
    }
    for i in 0..5 {
        let _: () = q(
            &mut c,
            &mut set(format!("{p}:big:{i}"), vec![b'b'; 300_000]),
        )
        .await;
    }
    let _: () = q(
        &mut c,
        redis::cmd("PEXPIRE").arg(format!("{p}:h:0")).arg(600_000),
    )
    .await;
    let plan_rows = |extra: &str| {
        let config = cleanup_config(&format!("match = \"{p}:*\"\n{extra}"));
        let mut task = CleanupTask::new("c", &config, &redis_config(SHARED, ""));
        let cx = cx.clone();
        async move { task.plan(&cx).await.map(|p| p.rows) }
    };
    assert_eq!(plan_rows("types = [\"hash\"]").await.unwrap(), 10);
    assert_eq!(
        plan_rows("types = [\"hash\"]\nwithout_ttl = true")
            .await
            .unwrap(),
        9
    );
    assert_eq!(plan_rows("larger_than = 100000").await.unwrap(), 5);
    // 1.5 MB of values over a 1 MiB budget: refused unless backup = false.
    match plan_rows("max_backup_bytes = 1048576").await {
        Err(TaskError::Config { field, message }) => {
            assert_eq!(field, "max_backup_bytes");
            assert!(
                message.contains("sampled") && message.contains("backup = false"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        plan_rows("max_backup_bytes = 1048576\nbackup = false")
            .await
            .unwrap(),
        25
    );

    // Idle time: after 2 s every key is idle for more than 1 s; one read
    // after the plan makes its key used, and it stays.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let _: String = q(&mut c, redis::cmd("GET").arg(format!("{p}:s:3"))).await;
    let config = cleanup_config(&format!("match = \"{p}:s:*\"\nidle_longer_than = \"1s\""));
    let mut task = CleanupTask::new("c", &config, &redis_config(SHARED, ""));
    let plan = task.plan(&cx).await.unwrap();
    assert_eq!(plan.rows, 9, "{}", plan.summary);
    let _: String = q(&mut c, redis::cmd("GET").arg(format!("{p}:s:4"))).await;
    task.backup(&cx, &plan).await.unwrap();
    assert_eq!(run_batches(&mut task, &cx, &plan, 500).await, 8);
    let v = task.validate(&cx, &plan).await.unwrap();
    assert!(v.ok, "{}", v.detail);
    assert_eq!(v.figures["counts"]["used"].as_u64(), Some(1), "{v:?}");
    assert_eq!(count_prefix(&mut c, &format!("{p}:s:")).await, 2);
    remove_prefix(&mut c, &p).await;
}

/// `POST …/rollback?force=true` replaces a key written again since the
/// run, as `rollback --force` does; without it the key is left alone; a
/// `force` that is neither true nor false is refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_rollback_takes_force_as_the_cli_does() {
    use crate::maint_runner::{api_with_token, post, wait_status};
    let p = unique("upkeep_rf");
    let mut c = admin(SHARED).await;
    for i in 0..20 {
        let _: () = q(
            &mut c,
            redis::cmd("SET")
                .arg(format!("{p}:tmp:{i}"))
                .arg(format!("v{i}")),
        )
        .await;
    }
    let dir = crate::util::temp_dir();
    let port = crate::util::free_port();
    let api = api_with_token(dir.path(), port);
    let config = crate::util::write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "{api}\n[probe.cache]\nkind = \"redis\"\nurl = \"{SHARED}\"\n\n[maintenance.cache-cleanup]\nkind = \"redis_cleanup\"\nprobe = \"cache\"\nmatch = \"{p}:tmp:*\"\n"
        ),
    );
    let data = dir.path().join("data");
    let agent = crate::util::Agent::start(Some(&config), &data, port);
    let run = || {
        let r = post(port, "/api/v1/maintenance/cache-cleanup/run");
        assert_eq!(r.code, 202, "{}", r.body);
        let run = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["run_id"]
            .as_i64()
            .unwrap();
        wait_status(port, run, "succeeded");
        run
    };
    let key = format!("{p}:tmp:0");
    let get = |c: &mut MultiplexedConnection| {
        let mut c = c.clone();
        let key = key.clone();
        async move { q::<Option<String>>(&mut c, redis::cmd("GET").arg(&key)).await }
    };

    let first = run();
    assert_eq!(count_prefix(&mut c, &format!("{p}:tmp:")).await, 0);
    let _: () = q(&mut c, redis::cmd("SET").arg(&key).arg("app")).await;
    let bad = post(
        port,
        &format!("/api/v1/maintenance/runs/{first}/rollback?force=yes"),
    );
    assert_eq!(bad.code, 400, "{}", bad.body);
    assert!(
        bad.body.contains("`force`") && bad.body.contains("`yes`"),
        "{}",
        bad.body
    );
    let r = post(
        port,
        &format!("/api/v1/maintenance/runs/{first}/rollback?force=true"),
    );
    assert_eq!(r.code, 202, "{}", r.body);
    wait_status(port, first, "rolled_back");
    assert_eq!(
        get(&mut c).await.as_deref(),
        Some("v0"),
        "force replaced the key written since"
    );
    assert_eq!(count_prefix(&mut c, &format!("{p}:tmp:")).await, 20);

    let second = run();
    let _: () = q(&mut c, redis::cmd("SET").arg(&key).arg("app")).await;
    let r = post(port, &format!("/api/v1/maintenance/runs/{second}/rollback"));
    assert_eq!(r.code, 202, "{}", r.body);
    let v = wait_status(port, second, "rolled_back");
    assert_eq!(
        get(&mut c).await.as_deref(),
        Some("app"),
        "without force the key is left alone: {v}"
    );
    assert_eq!(count_prefix(&mut c, &format!("{p}:tmp:")).await, 20);

    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    remove_prefix(&mut c, &p).await;
}

/// A key the application keeps writing (with the same value, so that its
/// fingerprint still matches the plan's) makes every `EXEC` of its batch
/// fail: the batch is done again, then its key is left alone as busy,
/// with nothing of it marked removed in the backup; a quiet key beside it
/// goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_written_between_watch_and_exec_is_retried_then_left_as_busy() {
    let p = unique("upkeep_rw");
    let mut c = admin(SHARED).await;
    let (hot, quiet) = (format!("{p}:tmp:hot"), format!("{p}:tmp:quiet"));
    for k in [&hot, &quiet] {
        let _: () = q(&mut c, redis::cmd("SET").arg(k).arg("same")).await;
    }
    let dir = crate::util::temp_dir();
    let cx = cx(dir.path());
    let config = cleanup_config(&format!("match = \"{p}:tmp:*\"\nbatch_size = 1"));
    let mut task = CleanupTask::new("cache-cleanup", &config, &redis_config(SHARED, ""));
    let plan = task.plan(&cx).await.unwrap();
    assert_eq!(plan.rows, 2, "{}", plan.summary);
    task.backup(&cx, &plan).await.unwrap();

    // Two writers, each sending SETs of the same value back to back: the
    // server runs some between any two commands of the batch.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for _ in 0..2 {
        let mut w = admin(SHARED).await;
        let (stop, hot) = (stop.clone(), hot.clone());
        writers.push(tokio::spawn(async move {
            let mut sets = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut pipe = redis::pipe();
                for _ in 0..50 {
                    pipe.cmd("SET").arg(&hot).arg("same").ignore();
                }
                let _: () = pipe.query_async(&mut w).await.unwrap();
                sets += 50;
            }
            sets
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let removed = run_batches(&mut task, &cx, &plan, 1).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        assert!(w.await.unwrap() > 0);
    }
    assert_eq!(removed, 1);
    let v = task.validate(&cx, &plan).await.unwrap();
    assert!(v.ok, "{}", v.detail);
    let counts = &v.figures["counts"];
    assert_eq!(
        (
            counts["busy"].as_u64(),
            counts["retries"].as_u64(),
            counts["removed"].as_u64()
        ),
        (Some(1), Some(5), Some(1)),
        "{v:?}"
    );
    assert_eq!(v.figures["backup_removed"].as_u64(), Some(1), "{v:?}");
    let left: Vec<String> = snapshot(&mut c, &format!("{p}:tmp:"))
        .await
        .into_keys()
        .collect();
    assert_eq!(left, vec![hot.clone()]);

    let state = task.backup_state().unwrap();
    let back = task.rollback(&cx, &state).await.unwrap();
    assert_eq!(
        back.figures["restored"].as_u64(),
        Some(1),
        "{}",
        back.detail
    );
    assert_eq!(
        back.figures["exist_again"].as_u64(),
        Some(0),
        "{}",
        back.detail
    );
    let v: String = q(&mut c, redis::cmd("GET").arg(&quiet)).await;
    assert_eq!(v, "same");
    remove_prefix(&mut c, &p).await;
}
