//! The worker probe against real processes (a `sleep` started here under a
//! unique name), real heartbeat files, and a heartbeat key in the Redis on
//! 127.0.0.1:6379 (keys under a unique prefix, deleted at the end).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use upkeep::config::{Config, ProbeConfig};
use upkeep::probes::BuildContext;
use upkeep::probes::runner::{Outcome, RunnerStats, run};
use upkeep::probes::worker::WorkerProbe;
use upkeep::sample::{Reading, Status};

mod redis_heartbeat;

/// A name no other process has: `prefix` and a counter, unique per test run.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!(
        "{prefix}{:x}{n:x}",
        (nanos ^ std::process::id()) & 0xff_ffff
    )
}

/// A `sleep 600` whose process name is `name`: started through a symlink
/// so named (the kernel names a process after the file it executes).
/// Killed and reaped on drop.
pub(crate) struct Sleeper {
    child: Child,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sleeper {
    pub(crate) fn start(name: &str) -> Sleeper {
        let dir = tempfile::Builder::new()
            .prefix("upkeep-worker-")
            .tempdir()
            .unwrap();
        let path = dir.path().join(name);
        std::os::unix::fs::symlink("/bin/sleep", &path).expect("/bin/sleep is needed");
        let child = Command::new(&path)
            .arg("600")
            .spawn()
            .expect("starting sleep");
        Sleeper {
            child,
            path,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills and reaps it (a zombie is not a running worker either, but a
    /// reaped process is what a supervisor leaves).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn probe(options: &str) -> WorkerProbe {
    let text = format!("[probe.w]\nkind = \"worker\"\n{options}");
    let config = Config::parse("test.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    match &config.probe["w"] {
        ProbeConfig::Worker(c) => WorkerProbe::new(c),
        other => panic!("not a worker probe: {other:?}"),
    }
}

pub(crate) use crate::util::{failed, tick};

pub(crate) fn value(rs: &[Reading], metric: &str) -> Option<f64> {
    let found: Vec<_> = rs.iter().filter(|r| r.metric == metric).collect();
    assert!(found.len() <= 1, "{metric} twice in {rs:?}");
    found.first().map(|r| r.value)
}

#[tokio::test]
async fn a_worker_by_name_gives_count_and_memory_then_cpu_from_the_second_tick() {
    let name = unique("ukw");
    assert!(name.len() <= 15, "{name}");
    let _a = Sleeper::start(&name);
    let mut p = probe(&format!("name = \"{name}\""));
    let first = tick(&mut p).await.unwrap();
    assert_eq!(value(&first, "processes"), Some(1.0));
    let rss = value(&first, "rss_bytes").unwrap();
    assert!(rss > 100_000.0 && rss < 50e6, "sleep uses {rss} bytes");
    assert_eq!(value(&first, "cpu_ratio"), None, "CPU needs two reads");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = tick(&mut p).await.unwrap();
    let cpu = value(&second, "cpu_ratio").unwrap();
    assert!(
        (0.0..0.05).contains(&cpu),
        "a sleeping process used {cpu} of a core"
    );
    // A second one: counted, summed, and new, so no CPU figure this tick.
    let _b = Sleeper::start(&name);
    let mut p2 = probe(&format!("name = \"{name}\"\nmin_count = 2"));
    let rs = tick(&mut p2).await.unwrap();
    assert_eq!(value(&rs, "processes"), Some(2.0));
    let third = tick(&mut p).await.unwrap();
    assert_eq!(value(&third, "cpu_ratio"), None);
    let why = failed(tick(&mut probe(&format!("name = \"{name}\"\nmin_count = 3"))).await);
    assert_eq!(why, format!("2 processes named `{name}` (need 3)"));
}

#[tokio::test]
async fn a_long_name_is_matched_past_the_15_bytes_the_kernel_keeps() {
    let name = unique("upkeep-test-worker-");
    let _w = Sleeper::start(&name);
    // Same first 15 bytes, another name.
    let _decoy = Sleeper::start(&format!("{name}-decoy"));
    let comm = std::fs::read(format!("/proc/{}/comm", _w.pid())).unwrap();
    assert_eq!(comm.as_slice(), format!("{}\n", &name[..15]).as_bytes());
    let rs = tick(&mut probe(&format!("name = \"{name}\"")))
        .await
        .unwrap();
    assert_eq!(value(&rs, "processes"), Some(1.0));
}

#[tokio::test]
async fn a_worker_by_pidfile_and_a_pidfile_gone_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("w.pid");
    let mut w = Sleeper::start(&unique("ukp"));
    std::fs::write(&pidfile, format!("{}\n", w.pid())).unwrap();
    let mut p = probe(&format!("pidfile = \"{}\"", pidfile.display()));
    assert_eq!(value(&tick(&mut p).await.unwrap(), "processes"), Some(1.0));
    w.kill();
    let why = failed(tick(&mut p).await);
    assert_eq!(
        why,
        format!("pidfile {}: process is not running", pidfile.display())
    );
    std::fs::write(&pidfile, "starting\n").unwrap();
    let why = failed(tick(&mut p).await);
    assert_eq!(
        why,
        format!("pidfile {}: `starting` is not a pid", pidfile.display())
    );
    std::fs::remove_file(&pidfile).unwrap();
    let why = failed(tick(&mut p).await);
    assert!(
        why.starts_with(&format!("pidfile {}: No such file", pidfile.display())),
        "{why}"
    );
}

#[tokio::test]
async fn a_worker_by_command_line_substring() {
    let w = Sleeper::start("sleep");
    // The symlink's directory is unique: only this process has it in argv[0].
    let dir = w
        .path
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .as_bytes()
        .to_vec();
    let part = String::from_utf8(dir).unwrap();
    let rs = tick(&mut probe(&format!("cmdline_contains = \"{part}\"")))
        .await
        .unwrap();
    assert_eq!(value(&rs, "processes"), Some(1.0));
    let why = failed(
        tick(&mut probe(
            "cmdline_contains = \"no-such-worker-anywhere-x9\"",
        ))
        .await,
    );
    assert_eq!(
        why,
        "no process with `no-such-worker-anywhere-x9` in the command line (need 1)"
    );
}

#[tokio::test]
async fn a_busy_worker_reads_about_one_core() {
    // A shell spinning on one core; the marker is in its command line.
    let marker = unique("upkeep-spin-");
    let script = format!("while :; do :; done # {marker}");
    let child = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    struct Reap(Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _spin = Reap(child);
    let mut p = probe(&format!("cmdline_contains = \"{marker}\""));
    tick(&mut p).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rs = tick(&mut p).await.unwrap();
    let cpu = value(&rs, "cpu_ratio").unwrap();
    // One core at most; on a busy 2-core machine it may get less of one.
    assert!(
        cpu > 0.25 && cpu < 1.05,
        "a spinning shell used {cpu} of a core"
    );
}

/// Outcomes of the runner until one satisfies `done` (that one included),
/// failing the test after `within`.
fn until(
    rx: &Receiver<Box<Outcome>>,
    within: Duration,
    done: impl Fn(&Outcome) -> bool,
) -> Vec<Outcome> {
    let end = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if let Ok(o) = rx.recv_timeout(left) {
            let stop = done(&o);
            seen.push(*o);
            if stop {
                return seen;
            }
        }
    }
    panic!("not within {within:?}: {seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_turns_unhealthy_within_3_ticks_and_recovers_after_2() {
    let name = unique("ukr");
    let mut w = Sleeper::start(&name);
    let text = format!(
        "[host]\nenabled = false\n[history]\nmin_interval = \"100ms\"\n\
         [probe.margin-monitor]\nkind = \"worker\"\nname = \"{name}\"\ninterval = \"200ms\"\n\
         failure_threshold = 3\nsuccess_threshold = 2\n"
    );
    let config = Config::parse("test.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let (spec, p) = upkeep::probes::build(&config, &BuildContext::default()).remove(0);
    let (tx, rx) = sync_channel(1024);
    let stop = CancellationToken::new();
    tokio::spawn(run(
        spec,
        p,
        tx,
        Arc::new(RunnerStats::default()),
        stop.clone(),
    ));
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let wait = |within: Duration, want: Status| {
        let rx = rx.clone();
        tokio::task::spawn_blocking(move || {
            until(&rx.lock().unwrap(), within, |o| o.status == want)
        })
    };

    wait(Duration::from_secs(3), Status::Healthy).await.unwrap();
    w.kill();
    let killed = Instant::now();
    let seen = wait(Duration::from_secs(3), Status::Unhealthy)
        .await
        .unwrap();
    let took = killed.elapsed();
    let failing = seen
        .iter()
        .filter(|o| o.raw_status == Status::Unhealthy)
        .count();
    assert_eq!(failing, 3, "{seen:#?}");
    assert!(
        took < Duration::from_millis(900),
        "unhealthy {took:?} after the kill"
    );
    let last = seen.last().unwrap();
    let want = format!("margin-monitor: no process named `{name}` (need 1)");
    assert_eq!(last.reason.as_deref(), Some(want.as_str()));
    assert!(last.readings.is_empty());

    let _again = Sleeper::start(&name);
    let seen = wait(Duration::from_secs(3), Status::Healthy).await.unwrap();
    let good = seen
        .iter()
        .filter(|o| o.raw_status == Status::Healthy)
        .count();
    assert_eq!(good, 2, "{seen:#?}");
    stop.cancel();
}

/// Sets a file's mtime `ago` in the past.
fn age_file(path: &Path, ago: Duration) {
    let t = SystemTime::now() - ago;
    let t = t.duration_since(UNIX_EPOCH).unwrap();
    let ts = libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is NUL-terminated and `times` holds two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [ts, ts].as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat: {}", std::io::Error::last_os_error());
}

#[tokio::test]
async fn a_heartbeat_file_older_than_max_age_fails_and_a_fresh_one_passes() {
    let name = unique("ukh");
    let _w = Sleeper::start(&name);
    let dir = tempfile::tempdir().unwrap();
    let beat = dir.path().join("beat");
    let options = format!(
        "name = \"{name}\"\nheartbeat_file = \"{}\"\nmax_age = \"60s\"",
        beat.display()
    );
    let mut p = probe(&options);
    let why = failed(tick(&mut p).await);
    assert!(
        why.starts_with(&format!("heartbeat file {}: No such file", beat.display())),
        "{why}"
    );
    std::fs::write(&beat, "").unwrap();
    age_file(&beat, Duration::from_secs(95));
    assert_eq!(failed(tick(&mut p).await), "heartbeat 95s old (max 60s)");
    std::fs::write(&beat, "").unwrap();
    let rs = tick(&mut p).await.unwrap();
    let age = value(&rs, "heartbeat_age_seconds").unwrap();
    assert!((0.0..2.0).contains(&age), "{age}");
}

// The kind's checks as `upkeep check-config` reports them, with where.

/// A worker table's problems as `Config::parse` reports them.
fn worker_problems(body: &str) -> String {
    let text = format!("[probe.w]\nkind = \"worker\"\n{body}");
    match Config::parse("t.toml", &text) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn exactly_one_way_to_find_the_worker() {
    assert_eq!(worker_problems("name = \"margin-monitor\""), "");
    assert!(worker_problems("").contains("set one of pidfile, name or cmdline_contains"));
    let both = worker_problems("name = \"a\"\ncmdline_contains = \"b\"");
    assert!(
        both.contains(
            "t.toml:4:20: probe.w.cmdline_contains: set only one of name, cmdline_contains"
        ),
        "{both}"
    );
    assert!(worker_problems("name = \"bin/a\"").contains("has no '/'"));
    assert!(worker_problems("name = \"a\"\nmin_count = 0").contains("at least 1"));
    let pid2 = worker_problems("pidfile = \"/run/a.pid\"\nmin_count = 2");
    assert!(pid2.contains("a pidfile names one process"), "{pid2}");
}

#[test]
fn a_heartbeat_is_one_source_with_a_max_age() {
    let ok = "name = \"a\"\nheartbeat_file = \"/run/a.beat\"\nmax_age = \"1m\"";
    assert_eq!(worker_problems(ok), "");
    let cases = [
        (
            "heartbeat_file = \"/run/a.beat\"",
            "a heartbeat needs max_age",
        ),
        (
            "max_age = \"1m\"",
            "needs heartbeat_file or heartbeat_redis_url",
        ),
        (
            "heartbeat_redis_url = \"redis://127.0.0.1/\"\nmax_age = \"1m\"",
            "heartbeat_redis_url needs a key",
        ),
        ("heartbeat_key = \"k\"", "needs heartbeat_redis_url"),
        (
            "heartbeat_redis_url = \"redis://:pw@127.0.0.1/\"\nheartbeat_key = \"k\"\nmax_age = \"1m\"",
            "holds a password",
        ),
        (
            "heartbeat_file = \"/a\"\nheartbeat_redis_url = \"redis://127.0.0.1/\"\nheartbeat_key = \"k\"\nmax_age = \"1m\"",
            "not both",
        ),
    ];
    for (body, want) in cases {
        let got = worker_problems(&format!("name = \"a\"\n{body}"));
        assert!(got.contains(want), "{body}: {got}");
        assert!(!got.contains(":pw@"), "{got}");
    }
}
