//! Faults of the history store as a spec: kill -9 while writing, a full
//! disk, a read-only data dir, a corrupt or foreign history file, a damaged
//! page of a tier, of the events or of the ledger (salvaged), a write-ahead
//! log removed under the agent; the log kept small by checkpoints, and
//! `/-/ready` telling why history fails. The kill
//! test runs this test binary again as the child that writes; the disk tests
//! mount a tmpfs, which needs root: without it they fail, they never skip.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use upkeep::app::App;
use upkeep::config::{Config, HistoryConfig};
use upkeep::sample::{SeriesKey, Ts, Unit, now_ms};
use upkeep::store::writer::{Sample, Writer};
use upkeep::store::{FILE_NAME, Reader};

use crate::util::*;

// ---- kill -9 ----

/// Set by the kill test for its child: the data dir to write to.
const CHILD_DIR: &str = "UPKEEP_TEST_CHILD_DIR";
/// Set by the kill test for its child: samples already stored.
const CHILD_START: &str = "UPKEEP_TEST_CHILD_START";
const KILL_SERIES: u64 = 5;
/// Samples per batch: ten seconds of five series.
const KILL_BATCH: u64 = KILL_SERIES * 10;
const KILL_BASE: Ts = 1_700_000_123_000;
const KILL_ROUNDS: usize = 25;

/// Spans long enough that retention keeps everything the rounds write.
fn kill_history() -> HistoryConfig {
    history_with_tiers(&[(10, 7 * 86_400), (60, 14 * 86_400), (3_600, 400 * 86_400)])
}

fn kill_key(s: u64) -> SeriesKey {
    SeriesKey::new("kill", "value", &[("s", &s.to_string())])
}

/// Time of sample number `i`: every series once a second. Its value is `i`.
fn kill_ts(i: u64) -> Ts {
    KILL_BASE + (i / KILL_SERIES) as Ts * 1_000
}

/// The child of the kill test; returns at once in an ordinary test run.
/// Writes batches of numbered samples forever, acknowledging each one on
/// stdout after its commit, until it is killed.
#[test]
fn ingest_child_for_the_kill_test() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let mut next: u64 = std::env::var(CHILD_START)
        .expect("start given")
        .parse()
        .expect("start is a number");
    let history = kill_history();
    let now = kill_ts(next);
    let (mut writer, _) =
        Writer::open(Path::new(&dir), &history, now, &run_info()).expect("child opens history");
    let ids: Vec<i64> = (0..KILL_SERIES)
        .map(|s| {
            writer
                .series_id(&kill_key(s), Unit::Count, now)
                .expect("registering")
                .expect("below max_series")
        })
        .collect();
    let mut out = std::io::stdout().lock();
    loop {
        let batch: Vec<Sample> = (next..next + KILL_BATCH)
            .map(|i| Sample {
                series: ids[(i % KILL_SERIES) as usize],
                ts: kill_ts(i),
                value: i as f64,
            })
            .collect();
        writer
            .write(&batch, &[], kill_ts(next + KILL_BATCH - 1))
            .expect("child writes a batch");
        next += KILL_BATCH;
        writeln!(out, "committed {next}")
            .and_then(|()| out.flush())
            .expect("acknowledging");
    }
}

/// What the kill test finds in history: samples as each tier counts them,
/// and the smallest and largest sample numbers (values).
fn kill_stored(dir: &Path) -> (Vec<i64>, f64, f64) {
    if !dir.join(FILE_NAME).exists() {
        return (vec![0; 3], f64::NAN, f64::NAN);
    }
    let reader = Reader::open(dir).expect("opening history after a kill");
    let until = KILL_BASE + 30 * 86_400_000;
    let mut counts = Vec::new();
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for step in [10_000, 60_000, 3_600_000] {
        let mut n = 0;
        for s in 0..KILL_SERIES {
            let key = kill_key(s).to_string();
            if reader.series_by_key(&key).unwrap().is_none() {
                continue;
            }
            for p in tier_points(&reader, &key, step, KILL_BASE, until, KILL_BASE) {
                n += p.count;
                min = min.min(p.min);
                max = max.max(p.max);
            }
        }
        counts.push(n);
    }
    (counts, min, max)
}

/// A small linear congruential generator: random kill moments without a
/// new dependency. The seed is printed so that a failure can be replayed
/// with `UPKEEP_TEST_SEED`.
struct Lcg(u64);

impl Lcg {
    fn seeded() -> Lcg {
        let seed = std::env::var("UPKEEP_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| now_ms() as u64);
        eprintln!("kill test seed: UPKEEP_TEST_SEED={seed}");
        Lcg(seed)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

#[test]
fn kill_9_during_ingest_loses_at_most_the_batch_in_flight() {
    let dir = temp_dir();
    let exe = std::env::current_exe().expect("the test binary");
    let mut rng = Lcg::seeded();
    let started = Instant::now();
    let mut stored: u64 = 0;
    // Rounds whose kill found the last batch committed but not yet
    // acknowledged, and rounds where it found nothing beyond the acks.
    let (mut unacknowledged, mut exact) = (0, 0);
    for round in 0..KILL_ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "store_faults::ingest_child_for_the_kill_test",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_START, stored.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, acks) = mpsc::channel::<u64>();
        let lines = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("committed ") {
                    let _ = tx.send(n.parse().expect("an acknowledged total"));
                }
            }
        });
        let mut acked = stored;
        if round == 0 {
            // The first round writes before it is killed: later rounds then
            // always find a history file to resume.
            acked = match acks.recv_timeout(Duration::from_secs(20)) {
                Ok(n) => n,
                Err(e) => {
                    let _ = child.kill();
                    panic!("the child acknowledges no first batch: {e}");
                }
            };
        }
        std::thread::sleep(Duration::from_millis(rng.between(20, 400)));
        // SAFETY: kill(2) on the pid of a child not yet waited for.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
        let status = child.wait().expect("waiting for the child");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "round {round}: the child ended by itself ({status}) instead of being killed"
        );
        lines.join().expect("reading the child's output");
        let acked = acks.try_iter().max().unwrap_or(acked).max(acked);

        assert_eq!(integrity(dir.path()), "ok", "round {round}");
        let (per_tier, min, max) = kill_stored(dir.path());
        let now_stored = per_tier[0] as u64;
        assert_eq!(
            per_tier,
            vec![per_tier[0]; 3],
            "round {round}: every tier counts the same samples"
        );
        assert!(
            acked <= now_stored && now_stored <= acked + KILL_BATCH,
            "round {round}: {now_stored} samples stored, {acked} acknowledged, batches of {KILL_BATCH}"
        );
        assert_eq!(
            now_stored % KILL_BATCH,
            0,
            "round {round}: a batch is all or nothing"
        );
        if now_stored > 0 {
            assert_eq!(
                (min, max),
                (0.0, (now_stored - 1) as f64),
                "round {round}: samples 0..{now_stored}, nothing invented"
            );
        }
        unacknowledged += usize::from(now_stored == acked + KILL_BATCH);
        exact += usize::from(now_stored == acked);
        stored = now_stored;
    }

    // After the last kill the writer recovers and every tier adds up.
    let history = kill_history();
    let (mut writer, _) =
        Writer::open(dir.path(), &history, kill_ts(stored), &run_info()).expect("reopening");
    let ids: Vec<i64> = (0..KILL_SERIES)
        .map(|s| {
            writer
                .series_id(&kill_key(s), Unit::Count, kill_ts(stored))
                .unwrap()
                .unwrap()
        })
        .collect();
    let batch: Vec<Sample> = (stored..stored + KILL_BATCH)
        .map(|i| Sample {
            series: ids[(i % KILL_SERIES) as usize],
            ts: kill_ts(i),
            value: i as f64,
        })
        .collect();
    writer
        .write(&batch, &[], kill_ts(stored + 2 * KILL_BATCH))
        .unwrap();
    drop(writer);
    let total = (stored + KILL_BATCH) as i64;
    assert_eq!(kill_stored(dir.path()).0, vec![total; 3]);
    eprintln!(
        "kill -9: {KILL_ROUNDS} rounds in {:.1} s, {stored} samples stored ({} simulated hours); \
         {exact} kills found exactly the acknowledged samples, {unacknowledged} one more batch \
         committed but not yet acknowledged",
        started.elapsed().as_secs_f64(),
        stored / KILL_SERIES / 3_600
    );
}

// ---- disk full, read-only data dir ----

/// A tmpfs mounted on a fresh temp dir, unmounted on drop, also when the test
/// fails.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = temp_dir();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root: mount failed: {}",
            stderr(&out).trim()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, mode: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "remounting the tmpfs {mode}: {}",
            stderr(&out).trim()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let done = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success())
        };
        // Lazily when a failed test left files open on it.
        if !done(&[]) && !done(&["-l"]) {
            eprintln!("could not unmount the test tmpfs");
        }
    }
}

/// Fills the filesystem of `dir` with one file until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("creating the filler");
    let chunk = vec![0u8; 16 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // The last partial block, byte by byte.
    while f.write(&[0]).is_ok_and(|n| n == 1) {}
    path
}

/// An agent with the host probe and a tcp probe `x`, both every second, no API.
fn agent_config(port: u16) -> Config {
    Config::parse(
        "agent.toml",
        &format!(
            r#"
[agent]
interval = "1s"
hostname = "test-host"

[api]
enabled = false

[probe.x]
kind = "tcp"
address = "127.0.0.1:{port}"
"#
        ),
    )
    .expect("a valid test config")
}

/// A local port that accepts connections for as long as the runtime lives.
async fn listening_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a local port");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    port
}

/// What the agent shows of itself at one moment.
#[derive(Debug, Clone)]
struct Seen {
    x_last_ts: Ts,
    x_ring: usize,
    open: bool,
    written: u64,
    write_errors: u64,
    pending: usize,
    last_error: Option<String>,
}

fn seen(app: &App) -> Seen {
    let live = app.live();
    let live = live.read().unwrap();
    Seen {
        x_last_ts: live.probes.get("x").map_or(0, |p| p.last_ts_ms),
        x_ring: live.recent("x.connect_seconds").len(),
        open: live.store.open,
        written: live.store.samples_written,
        write_errors: live.store.write_errors,
        pending: live.store.pending_samples,
        last_error: live.store.last_error.clone(),
    }
}

/// Polls the agent until `ok` holds; fails the test after `within`.
async fn wait_for(app: &App, what: &str, within: Duration, ok: impl Fn(&Seen) -> bool) -> Seen {
    let deadline = Instant::now() + within;
    loop {
        let s = seen(app);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; the agent shows {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type SharedLive = std::sync::Arc<std::sync::RwLock<upkeep::live::Live>>;

/// Every value the agent put in its live rings is in history exactly once:
/// per series, the history count equals the ring's length (the tests run for
/// less than a ring holds), and no sample was given up. Running totals
/// (unit `total`) are for /metrics alone: history keeps their rates, so
/// they must have no series there at all.
fn assert_history_holds_the_rings(dir: &Path, live: &SharedLive, since: Ts) {
    let (rings, totals, dropped) = {
        let live = live.read().unwrap();
        let is_total = |r: &upkeep::live::SeriesRing| r.unit == upkeep::sample::Unit::Total;
        let mut rings: Vec<(String, usize)> = live
            .rings
            .iter()
            .filter(|(_, r)| !is_total(r))
            .map(|(k, r)| (k.clone(), r.values.len()))
            .collect();
        let totals: Vec<String> = live
            .rings
            .iter()
            .filter(|(_, r)| is_total(r))
            .map(|(k, _)| k.clone())
            .collect();
        rings.sort();
        (rings, totals, live.store.dropped_samples)
    };
    assert_eq!(dropped, 0, "samples given up by the recorder");
    assert!(
        rings.iter().all(|(_, n)| *n < upkeep::live::RING_LEN),
        "a ring wrapped: the test ran too long to compare"
    );
    let reader = Reader::open(dir).expect("opening history");
    for key in &totals {
        assert!(
            reader.series_by_key(key).expect("reading series").is_none(),
            "the running total {key} was written to history"
        );
    }
    let now = now_ms();
    let got: Vec<(String, usize)> = rings
        .iter()
        .map(|(key, _)| {
            let n = match reader.series_by_key(key).expect("reading series") {
                Some(_) => tier_count(&reader, key, 10_000, since - 60_000, now + 60_000, now),
                None => 0,
            };
            (key.clone(), n as usize)
        })
        .collect();
    assert_eq!(
        got, rings,
        "history counts per series against the live rings"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_delays_history_writes_and_loses_nothing() {
    let fs = Tmpfs::mount("2m");
    let port = listening_port().await;
    let started = now_ms();
    let app = App::start(agent_config(port), None, fs.path().to_path_buf())
        .await
        .expect("the agent starts");
    let live = app.live();
    wait_for(
        &app,
        "first samples written",
        Duration::from_secs(10),
        |s| s.written > 0 && s.x_ring > 0,
    )
    .await;

    let filler = fill(fs.path());
    let filled_at = now_ms();
    let failing = wait_for(&app, "a write fails", Duration::from_secs(10), |s| {
        s.write_errors > 0
    })
    .await;
    let error = failing.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("disk is full") && error.contains(FILE_NAME),
        "last_error names the file and the problem: {error:?}"
    );

    // Probes and the live window go on; samples wait in memory.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = seen(&app);
    assert!(
        during.x_last_ts > failing.x_last_ts && during.x_ring >= failing.x_ring + 3,
        "probes go on while the disk is full: {failing:#?} then {during:#?}"
    );
    assert!(
        during.pending > failing.pending && during.written == failing.written,
        "samples wait while the disk is full: {failing:#?} then {during:#?}"
    );

    std::fs::remove_file(&filler).expect("removing the filler");
    let freed_at = now_ms();
    let resumed = wait_for(
        &app,
        "writes resume by themselves",
        Duration::from_secs(15),
        |s| s.written > during.written && s.pending == 0 && s.last_error.is_none(),
    )
    .await;
    let resumed_after = now_ms() - freed_at;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    app.stop(Duration::from_secs(10)).await;

    assert_history_holds_the_rings(fs.path(), &live, started);
    // In particular the 10 s buckets around the outage hold every tick of x.
    let (since, until) = (
        filled_at.div_euclid(10_000) * 10_000,
        (freed_at.div_euclid(10_000) + 1) * 10_000,
    );
    let recent = live.read().unwrap().recent("x.connect_seconds");
    let in_window = |from: Ts, to: Ts| {
        recent
            .iter()
            .filter(|(ts, _)| (from..to).contains(ts))
            .count()
    };
    let outage_ticks = in_window(filled_at, freed_at);
    assert!(
        outage_ticks >= 3,
        "x ticked {outage_ticks} times while the disk was full"
    );
    let reader = Reader::open(fs.path()).unwrap();
    assert_eq!(
        tier_count(&reader, "x.connect_seconds", 10_000, since, until, now_ms()) as usize,
        in_window(since, until),
        "samples of x in history over the outage, against the ticks of x"
    );
    drop(reader);
    eprintln!(
        "disk full: {} write errors, {} samples pending at most seen, writes resumed {resumed_after} ms after space was freed, {outage_ticks} ticks of x during the outage; {} samples written in all",
        resumed.write_errors, during.pending, resumed.written
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_right_after_the_disk_frees_up_writes_the_samples_that_waited() {
    // The recorder retries a failed file every 5 s; a stop inside that pause
    // must still write what waited, now that it can.
    let fs = Tmpfs::mount("2m");
    let port = listening_port().await;
    let started = now_ms();
    let app = App::start(agent_config(port), None, fs.path().to_path_buf())
        .await
        .expect("the agent starts");
    let live = app.live();
    wait_for(
        &app,
        "first samples written",
        Duration::from_secs(10),
        |s| s.written > 0 && s.x_ring > 0,
    )
    .await;
    let filler = fill(fs.path());
    wait_for(&app, "a write fails", Duration::from_secs(10), |s| {
        s.write_errors > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::remove_file(&filler).expect("removing the filler");
    let waiting = seen(&app);
    assert!(waiting.pending > 0, "samples wait: {waiting:#?}");
    app.stop(Duration::from_secs(10)).await;

    // The file took writes again at the stop: the clean stop is recorded.
    let stopped: Option<Ts> = history_sql(fs.path())
        .query_row(
            "SELECT stopped_ms FROM agent_runs ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stopped.is_some(), "the clean stop is recorded");
    assert_history_holds_the_rings(fs.path(), &live, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_delays_history_until_it_is_writable() {
    let fs = Tmpfs::mount("2m");
    fs.remount("ro");
    let port = listening_port().await;
    let started = now_ms();
    let app = App::start(agent_config(port), None, fs.path().to_path_buf())
        .await
        .expect("the agent starts without its history");
    let live = app.live();

    let first = wait_for(&app, "probes run", Duration::from_secs(5), |s| {
        s.x_ring >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = seen(&app);
    assert!(
        !later.open && later.last_error.is_some(),
        "history is not open, and says why: {later:#?}"
    );
    assert!(
        later.x_last_ts > first.x_last_ts && later.pending > first.pending,
        "probes go on and samples wait: {first:#?} then {later:#?}"
    );
    assert!(!fs.path().join(FILE_NAME).exists());

    fs.remount("rw");
    let writable_at = now_ms();
    let opened = wait_for(
        &app,
        "history opens by itself",
        Duration::from_secs(15),
        |s| s.open && s.written > 0 && s.pending == 0 && s.last_error.is_none(),
    )
    .await;
    let opened_after = now_ms() - writable_at;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    app.stop(Duration::from_secs(10)).await;

    assert_history_holds_the_rings(fs.path(), &live, started);
    eprintln!(
        "read-only data dir: history opened {opened_after} ms after it turned writable; \
         {} samples had waited, {} written by then",
        later.pending, opened.written
    );
}

// ---- corrupt and foreign files ----

/// 2023-11-14T22:15:23Z, as the moved-aside file is stamped.
const OPENED_AT: Ts = 1_700_000_123_000;
const ASIDE: &str = "history.db.corrupt-2023-11-14T22-15-23Z";

/// Opens a writer on `dir` holding a bad `history.db` with `original` bytes:
/// the file is moved aside as it was, a fresh one takes its place, and an
/// event says so.
fn assert_moved_aside_and_started_afresh(dir: &Path, original: &[u8]) {
    let history = HistoryConfig::default();
    let (writer, events) = Writer::open(dir, &history, OPENED_AT, &run_info())
        .expect("a corrupt file does not stop the writer");
    let aside: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("history.db.corrupt-"))
        .collect();
    assert_eq!(aside, vec![ASIDE.to_string()]);
    let kept = std::fs::read(dir.join(ASIDE)).unwrap();
    assert!(
        kept == original,
        "the file moved aside has the original bytes ({} bytes, was {})",
        kept.len(),
        original.len()
    );
    let said = |message: &str| message.contains("moved aside") && message.contains(ASIDE);
    assert!(
        events
            .iter()
            .any(|e| e.kind == "history" && said(&e.message)),
        "open reports the move: {events:#?}"
    );
    drop(writer);

    let reader = Reader::open(dir).expect("the fresh file reads");
    assert_eq!(reader.series().unwrap(), vec![]);
    assert_eq!(integrity(dir), "ok");
    let stored = reader.events(None, 0, Ts::MAX, 100).unwrap();
    assert!(
        stored
            .iter()
            .any(|e| e.kind == "history" && said(&e.message)),
        "the move is recorded in events: {stored:#?}"
    );
}

/// The 100-byte header of an SQLite file with 4096-byte pages, 16 pages.
fn sqlite_header() -> Vec<u8> {
    let mut h = vec![0u8; 100];
    h[..16].copy_from_slice(b"SQLite format 3\0");
    h[16..18].copy_from_slice(&4096u16.to_be_bytes());
    h[18] = 1; // file format write version
    h[19] = 1; // read version
    h[21] = 64; // max embedded payload fraction
    h[22] = 32;
    h[23] = 32;
    h[24..28].copy_from_slice(&1u32.to_be_bytes()); // change counter
    h[28..32].copy_from_slice(&16u32.to_be_bytes()); // pages
    h[40..44].copy_from_slice(&1u32.to_be_bytes()); // schema cookie
    h[44..48].copy_from_slice(&4u32.to_be_bytes()); // schema format
    h[56..60].copy_from_slice(&1u32.to_be_bytes()); // UTF-8
    h[92..96].copy_from_slice(&1u32.to_be_bytes()); // valid for change 1
    h[96..100].copy_from_slice(&3_046_000u32.to_be_bytes());
    h
}

#[test]
fn a_garbage_history_file_is_moved_aside_and_a_fresh_one_started() {
    let garbage = vec![0xA5u8; 64 * 1024];
    let mut behind_a_header = garbage.clone();
    behind_a_header[..100].copy_from_slice(&sqlite_header());
    for (what, bytes) in [
        ("garbage", garbage),
        ("garbage behind a valid header", behind_a_header),
    ] {
        let dir = temp_dir();
        std::fs::write(dir.path().join(FILE_NAME), &bytes).unwrap();
        eprintln!("{what}");
        assert_moved_aside_and_started_afresh(dir.path(), &bytes);
    }
}

#[test]
fn a_truncated_history_file_is_moved_aside_and_a_fresh_one_started() {
    let dir = temp_dir();
    let history = HistoryConfig::default();
    let mut writer = temp_writer(dir.path(), &history, OPENED_AT - 86_400_000);
    let ids: Vec<i64> = (0..20)
        .map(|s| {
            writer
                .series_id(&kill_key(s), Unit::Count, OPENED_AT - 86_400_000)
                .unwrap()
                .unwrap()
        })
        .collect();
    for t in 0..2_000 {
        let now = OPENED_AT - 86_400_000 + t * 10_000;
        let batch: Vec<Sample> = ids
            .iter()
            .map(|&series| Sample {
                series,
                ts: now,
                value: t as f64,
            })
            .collect();
        writer.write(&batch, &[], now).unwrap();
    }
    // Closing the last connection folds the write-ahead log into the file.
    drop(writer);
    let path = dir.path().join(FILE_NAME);
    assert!(!dir.path().join(format!("{FILE_NAME}-wal")).exists());
    let full = std::fs::read(&path).unwrap();
    assert!(full.len() > 200_000, "a file of some size: {}", full.len());
    let half = &full[..full.len() / 2];
    std::fs::write(&path, half).unwrap();
    assert_moved_aside_and_started_afresh(dir.path(), half);
}

#[test]
fn a_history_file_of_a_newer_upkeep_is_refused_and_left_untouched() {
    // "schema version N is newer than this upkeep understands; refusing to
    // touch it": an older agent started on a newer file must not discard it.
    let dir = temp_dir();
    let history = HistoryConfig::default();
    drop(temp_writer(dir.path(), &history, OPENED_AT - 60_000));
    let path = dir.path().join(FILE_NAME);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", upkeep::store::SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();

    let opened =
        Writer::open(dir.path(), &history, OPENED_AT, &run_info()).map(|(_, events)| events);
    assert!(
        !dir.path().join(ASIDE).exists(),
        "nothing is moved aside; open said {opened:#?}"
    );
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file is untouched"
    );
    let error = opened.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("newer"), "open refuses the file: {error:?}");
}

// ---- salvage of a damaged file ----

/// When the salvage test's history ends (and the file is opened again).
const SALVAGE_END: Ts = 1_700_006_400_000;
const SALVAGE_TABLES: &[&str] = &[
    "series",
    "tiers",
    "tier_60s",
    "tier_3600s",
    "events",
    "agent_runs",
    "maintenance_runs",
    "maintenance_steps",
];

/// A closed history file of some size: twelve hours of 40 series in two
/// tiers, an event a minute, and a ledger of 150 runs with their steps.
fn salvage_file(dir: &Path) {
    use upkeep::store::ledger::{Doc, Ledger, RunStatus, Step, Trigger};
    let history = history_with_tiers(&[(60, 30 * 86_400), (3_600, 400 * 86_400)]);
    let start = SALVAGE_END - 12 * 3_600_000;
    let mut writer = temp_writer(dir, &history, start);
    let ids: Vec<i64> = (0..40)
        .map(|s| {
            writer
                .series_id(&kill_key(s), Unit::Count, start)
                .unwrap()
                .unwrap()
        })
        .collect();
    for t in 0..=720 {
        let now = start + t * 60_000;
        let batch: Vec<Sample> = ids
            .iter()
            .map(|&series| Sample {
                series,
                ts: now,
                value: (series * 1000 + t) as f64,
            })
            .collect();
        let event = upkeep::store::Event::agent(
            now,
            "agent",
            format!("minute {t} of the salvage test's history, padded to some length"),
        );
        writer.write(&batch, &[event], now).unwrap();
    }
    let ledger = Ledger::open(dir).unwrap();
    for n in 0..150 {
        let at = start + n * 60_000;
        let run = ledger
            .start_run("trim", "postgres_retention", Trigger::Schedule, false, at)
            .unwrap();
        let plan = serde_json::json!({"summary": format!("delete rows of run {n}"), "padding": "p".repeat(600)});
        ledger.set(run, Doc::Plan, &plan).unwrap();
        for step in [
            Step::Gate,
            Step::Plan,
            Step::Backup,
            Step::Batch,
            Step::Validate,
        ] {
            ledger
                .step(
                    run,
                    at + 1,
                    step,
                    Some(10),
                    Some(5),
                    &format!("{step} of run {n}"),
                )
                .unwrap();
        }
        ledger
            .finish(run, at + 2, RunStatus::Succeeded, None)
            .unwrap();
    }
    drop(ledger);
    // Closing the last connection folds the write-ahead log into the file.
    drop(writer);
    assert!(!dir.join(format!("{FILE_NAME}-wal")).exists());
}

/// Every row of `table` by rowid.
fn table_rows(
    conn: &rusqlite::Connection,
    table: &str,
) -> std::collections::BTreeMap<i64, Vec<rusqlite::types::Value>> {
    let mut st = conn
        .prepare(&format!("SELECT rowid, * FROM \"{table}\" ORDER BY rowid"))
        .unwrap();
    let n = st.column_count();
    st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            (1..n)
                .map(|i| r.get::<_, rusqlite::types::Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()?,
        ))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

/// Overwrites a leaf page in the middle of `table` with garbage; returns
/// how many rows that page held.
fn damage_a_page_of(path: &Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let leaves: Vec<(i64, i64)> = conn
        .prepare("SELECT pageno, ncell FROM dbstat WHERE name = ?1 AND pagetype = 'leaf' ORDER BY pageno")
        .unwrap()
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    drop(conn);
    assert!(
        leaves.len() >= 3,
        "{table} spans {} leaf pages",
        leaves.len()
    );
    let (page, cells) = leaves[leaves.len() / 2];
    assert!(cells > 0);
    let mut bytes = std::fs::read(path).unwrap();
    let at = ((page - 1) * page_size) as usize;
    for (i, b) in bytes[at..at + page_size as usize].iter_mut().enumerate() {
        *b = (i * 131 % 251) as u8 | 0x80;
    }
    std::fs::write(path, &bytes).unwrap();
    cells
}

/// A page of a tier, of the events table and of the ledger, each damaged
/// in turn: the next start salvages the file. The other tables keep every
/// row, the damaged one every row but those of its page, an event names
/// the table and the rows lost, and the damaged file is kept aside as it
/// was.
#[test]
fn a_damaged_page_costs_only_its_rows_and_the_salvage_says_which() {
    for damaged in ["tier_60s", "events", "maintenance_runs"] {
        let dir = temp_dir();
        salvage_file(dir.path());
        let path = dir.path().join(FILE_NAME);
        let before: Vec<_> = {
            let conn = history_sql(dir.path());
            SALVAGE_TABLES
                .iter()
                .map(|t| table_rows(&conn, t))
                .collect()
        };
        let cells = damage_a_page_of(&path, damaged);
        let damaged_bytes = std::fs::read(&path).unwrap();

        let history = history_with_tiers(&[(60, 30 * 86_400), (3_600, 400 * 86_400)]);
        let (writer, events) = Writer::open(dir.path(), &history, SALVAGE_END, &run_info())
            .expect("a damaged file does not stop the writer");
        drop(writer);

        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("history.db.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{damaged}: {aside:?}");
        assert!(
            std::fs::read(dir.path().join(&aside[0])).unwrap() == damaged_bytes,
            "{damaged}: the damaged file is kept aside as it was"
        );
        assert_eq!(integrity(dir.path()), "ok", "{damaged}");

        let conn = history_sql(dir.path());
        for (table, was) in SALVAGE_TABLES.iter().zip(&before) {
            let now = table_rows(&conn, table);
            let kept: Vec<_> = was.keys().filter(|id| now.contains_key(id)).collect();
            for id in &kept {
                assert!(
                    now[id] == was[id],
                    "{damaged}: {table} row {id} read back as it was"
                );
            }
            let lost = (was.len() - kept.len()) as i64;
            if *table == damaged {
                assert_eq!(
                    lost, cells,
                    "{damaged}: exactly the rows of the damaged page are lost"
                );
            } else {
                assert_eq!(lost, 0, "{damaged}: {table} keeps every row");
            }
            eprintln!("{damaged}: {table} kept {} of {}", kept.len(), was.len());
        }

        let said = events
            .iter()
            .find(|e| e.kind == "history" && e.message.contains("salvaged"))
            .unwrap_or_else(|| panic!("{damaged}: no salvage event in {events:#?}"));
        eprintln!("{}", said.message);
        for word in [
            format!("lost: table {damaged} rows with rowid"),
            format!("moved aside to {}", dir.path().join(&aside[0]).display()),
        ] {
            assert!(
                said.message.contains(&word),
                "{damaged}: {word:?} in {:?}",
                said.message
            );
        }
        let stored = Reader::open(dir.path())
            .unwrap()
            .events(None, 0, Ts::MAX, 10)
            .unwrap();
        assert!(
            stored.iter().any(|e| e.message.contains("salvaged")
                && e.message
                    .contains(&format!("lost: table {damaged} rows with rowid"))
                && e.message.contains(&aside[0])),
            "{damaged}: the salvage is recorded in events"
        );
    }
}

// ---- checkpoints, readiness ----

/// A config for the agent binary: the host probe and a tcp probe of its own
/// API, both every second; `history` is added to `[history]`.
fn process_config(dir: &Path, port: u16, history: &str) -> PathBuf {
    write_file(
        dir,
        "agent.toml",
        &format!(
            r#"
[agent]
interval = "1s"
hostname = "test-host"

[api]
listen = "127.0.0.1:{port}"

[history]
{history}

[probe.x]
kind = "tcp"
address = "127.0.0.1:{port}"
"#
        ),
    )
}

/// Bytes a file takes, 0 when it is not there.
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The newest `agent_runs.last_seen_ms` in the main history file alone,
/// read from a copy without its write-ahead log. A copy taken while a
/// checkpoint writes may be torn: tried a few times.
fn last_seen_in_main_file(dir: &Path) -> Result<Ts, String> {
    let mut last = String::new();
    for _ in 0..5 {
        let copy = temp_dir();
        std::fs::copy(dir.join(FILE_NAME), copy.path().join(FILE_NAME)).expect("copying");
        let read = rusqlite::Connection::open(copy.path().join(FILE_NAME)).and_then(|c| {
            c.query_row("SELECT max(last_seen_ms) FROM agent_runs", [], |r| {
                r.get::<_, Option<Ts>>(0)
            })
        });
        match read {
            Ok(Some(ts)) => return Ok(ts),
            Ok(None) => last = "no agent run in the main file".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last)
}

/// With a checkpoint every 2 s, the write-ahead log is truncated again and
/// again (it never only grows) and the main file alone holds the agent's
/// runs up to the last seconds: a lost log loses no more than that.
#[test]
fn the_write_ahead_log_stays_small_and_the_main_file_holds_all_but_the_last_seconds() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let port = free_port();
    let config = process_config(dir.path(), port, r#"checkpoint_interval = "2s""#);
    let agent = Agent::start(Some(&config), &data, port);
    let wal = data.join(format!("{FILE_NAME}-wal"));
    let (mut max, mut shrank, mut previous) = (0, 0, 0);
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let len = file_len(&wal);
        max = max.max(len);
        if len < previous {
            shrank += 1;
        }
        previous = len;
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = now_ms();
    let last_seen = last_seen_in_main_file(&data).expect("the main file reads alone");
    let main = file_len(&data.join(FILE_NAME));
    drop(agent);
    assert!(
        shrank >= 3,
        "the log was truncated {shrank} times in 12 s (largest {max} bytes)"
    );
    assert!(
        max < 1024 * 1024,
        "the log stays small between checkpoints: {max} bytes"
    );
    assert!(
        now - last_seen < 5_000,
        "the main file alone is {} ms behind (file of {main} bytes)",
        now - last_seen
    );
}

/// `/-/ready` while history cannot be written: 503, and the reason, until
/// the disk has room again. `info` and `/metrics` show the error and count it.
#[test]
fn a_full_disk_makes_the_agent_unready_with_the_reason_until_there_is_room() {
    let fs = Tmpfs::mount("2m");
    let dir = temp_dir();
    let port = free_port();
    let config = process_config(dir.path(), port, "");
    let agent = Agent::start(Some(&config), fs.path(), port);

    let filler = fill(fs.path());
    let mut body = String::new();
    crate::util::wait_for("/-/ready answers 503", || match get(port, "/-/ready") {
        Some((503, b)) => {
            body = b;
            true
        }
        _ => false,
    });
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reason = ready["reason"].as_str().unwrap_or_default();
    assert!(
        ready["ready"] == false && reason.contains("disk full") && reason.contains("written"),
        "{ready}"
    );
    let (code, info) = get(port, "/api/v1/info").expect("info answers");
    assert_eq!(code, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let history = &info["history"];
    assert!(
        history["write_errors"].as_u64() > Some(0)
            && history["fault"]
                .as_str()
                .is_some_and(|f| f.contains("disk full"))
            && history["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("full"))
            && history["last_error_ms"].as_i64().is_some(),
        "{history}"
    );
    let (_, metrics) = get(port, "/metrics").expect("metrics answer");
    assert!(metrics.contains("\nupkeep_history_ok 0\n"), "{metrics}");
    assert!(
        metrics.contains("\nupkeep_history_last_error_timestamp_seconds "),
        "{metrics}"
    );

    std::fs::remove_file(&filler).expect("removing the filler");
    crate::util::wait_for("/-/ready answers 200 again", || {
        matches!(get(port, "/-/ready"), Some((200, _)))
    });
    let (_, body) = get(port, "/-/ready").unwrap();
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["reason"], serde_json::Value::Null, "{ready}");
    let (_, metrics) = get(port, "/metrics").expect("metrics answer");
    assert!(metrics.contains("\nupkeep_history_ok 1\n"), "{metrics}");
    drop(agent);
}

/// The write-ahead log removed under a running agent: readers (the API,
/// the CLI) would fail with "disk I/O error" until the next restart. The
/// agent notices, copies the log it still holds into the main file and
/// reopens; reads work again within seconds and nothing written is lost.
#[test]
fn a_write_ahead_log_removed_under_the_agent_is_copied_back_and_reads_work_again() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let port = free_port();
    let config = process_config(dir.path(), port, "");
    let agent = Agent::start(Some(&config), &data, port);
    crate::util::wait_for("the tcp probe's samples are written", || {
        get(port, "/api/v1/series")
            .is_some_and(|(c, b)| c == 200 && b.contains("x.connect_seconds"))
    });
    std::thread::sleep(Duration::from_secs(2));
    let before = now_ms();
    std::fs::remove_file(data.join(format!("{FILE_NAME}-wal"))).expect("removing the log");

    let removed = Instant::now();
    let reads = || {
        Reader::open(&data)
            .and_then(|r| r.series())
            .map_err(|e| e.to_string())
            .and_then(|s| {
                if s.is_empty() {
                    return Err("no series".into());
                }
                match get(port, "/api/v1/series") {
                    Some((200, _)) => Ok(()),
                    other => Err(format!("the API answers {other:?}")),
                }
            })
    };
    while let Err(e) = reads() {
        if removed.elapsed() > Duration::from_secs(10) {
            agent.signal(libc::SIGTERM);
            let (_, _, log) = agent.wait_exit(Duration::from_secs(10));
            panic!("reads of history fail 10 s after the log was removed: {e}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = removed.elapsed();
    let (_, info) = get(port, "/api/v1/info").expect("info answers");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert!(
        info["history"]["read_errors"].as_u64() > Some(0),
        "the lost log is counted: {info}"
    );
    crate::util::wait_for("ready again", || {
        matches!(get(port, "/-/ready"), Some((200, _)))
    });
    let reader = Reader::open(&data).unwrap();
    let samples = tier_count(
        &reader,
        "x.connect_seconds",
        10_000,
        before - 60_000,
        before,
        now_ms(),
    );
    assert!(
        samples > 0,
        "samples written before the log was removed are kept"
    );
    drop(agent);
    eprintln!("reads worked again {took:?} after the log was removed");
}
