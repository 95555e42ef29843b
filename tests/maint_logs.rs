//! `log_rotate` against a real writer process appending numbered 90-byte
//! lines at 20,000 lines/s: three rotations by each method, then every
//! line is looked for across the live file and every generation
//! (decompressed) and must be there exactly once, in order. On a small
//! tmpfs (no collapse) copytruncate falls back and counts what it lost.
//! Generations past `keep` go to the quarantine and a rollback brings them
//! back.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use upkeep::config::Config;
use upkeep::maintenance::ledger::{self, Ledger, Trigger};
use upkeep::maintenance::runner::{Request, Runner};

use crate::maint_files::Mount;
use crate::util::temp_dir;

/// Appends `total` lines of 90 bytes (`%010d` + 79 `x` + newline), each in
/// one O_APPEND write, at `rate` lines/s; on SIGHUP reopens its path.
/// Prints the rate it reached.
pub const WRITER: &str = r#"
import os, signal, sys, time
path, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
fd = os.open(path, flags, 0o644)
reopen = False
def hup(signum, frame):
    global reopen
    reopen = True
signal.signal(signal.SIGHUP, hup)
pad = b"x" * 79
start = time.monotonic()
i = 0
while i < total:
    due = min(total, int((time.monotonic() - start) * rate) + 1)
    while i < due:
        if reopen:
            reopen = False
            os.close(fd)
            fd = os.open(path, flags, 0o644)
        os.write(fd, b"%010d" % i + pad + b"\n")
        i += 1
    time.sleep(0.0005)
os.close(fd)
print("%.0f" % (total / (time.monotonic() - start)))
"#;

pub const LINE: u64 = 90;

/// Starts the writer on `log`; its pid goes to `pidfile`.
pub fn writer(dir: &Path, log: &Path, total: u64, rate: u64, pidfile: &Path) -> Child {
    let script = dir.join("writer.py");
    std::fs::write(&script, WRITER).unwrap();
    let child = Command::new("python3")
        .arg(&script)
        .arg(log)
        .arg(total.to_string())
        .arg(rate.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the writer (test.sh installs python3)");
    std::fs::write(pidfile, child.id().to_string()).unwrap();
    crate::util::wait_for("the writer to start", || log.exists());
    child
}

/// The rate the writer reached, once it ended.
pub fn finish(mut child: Child) -> f64 {
    let status = child.wait().unwrap();
    assert!(status.success());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out.trim().parse().unwrap()
}

/// Every byte of `base`'s stream: the generations oldest first
/// (decompressed), then the live file.
pub fn stream(dir: &Path, base: &str) -> Vec<u8> {
    let mut gens: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(&format!("{base}."))?;
            let n: u32 = rest.split('.').next()?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    gens.sort_by_key(|g| std::cmp::Reverse(g.0));
    let mut out = Vec::new();
    for (_, p) in gens {
        let f = std::fs::File::open(&p).unwrap();
        let name = p.to_string_lossy().into_owned();
        if name.ends_with(".gz") {
            flate2::read::MultiGzDecoder::new(f)
                .read_to_end(&mut out)
                .unwrap();
        } else if name.ends_with(".zst") {
            zstd::stream::read::Decoder::new(f)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
        } else {
            std::io::BufReader::new(f).read_to_end(&mut out).unwrap();
        }
    }
    out.extend(std::fs::read(dir.join(base)).unwrap_or_default());
    out
}

/// How often each line number appears in `stream`, and lines not well formed.
pub fn tally(stream: &[u8], total: u64) -> (Vec<u32>, usize) {
    let mut seen = vec![0u32; total as usize];
    let mut bad = 0;
    for line in stream.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match std::str::from_utf8(&line[..line.len().min(10)])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        {
            Some(n) if n < seen.len() && line.len() as u64 == LINE - 1 => seen[n] += 1,
            _ => bad += 1,
        }
    }
    (seen, bad)
}

fn runner(text: &str, data: &Path) -> Runner {
    Runner {
        config: Arc::new(Config::parse("t.toml", text).unwrap_or_else(|e| panic!("{e}"))),
        data_dir: data.to_path_buf(),
        stop: CancellationToken::new(),
    }
}

fn request() -> Request {
    Request {
        task: "logs".into(),
        trigger: Trigger::Cli,
        dry_run: false,
        ignore_window: true,
    }
}

async fn three_rotations_under_a_writer(method_lines: &str) {
    let dir = temp_dir();
    let data = temp_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("app.log");
    let pidfile = dir.path().join("app.pid");
    let text = format!(
        "[maintenance.logs]\nkind = \"log_rotate\"\npaths = [\"{}/*.log\"]\nsize = 4096\nkeep = 10\n{}",
        logs.display(),
        method_lines.replace("PIDFILE", &pidfile.display().to_string())
    );
    let r = runner(&text, data.path());
    const RATE: u64 = 20_000;
    let total = RATE * 4;
    let w = writer(dir.path(), &log, total, RATE, &pidfile);
    let t0 = Instant::now();
    for i in 1..=3u32 {
        tokio::time::sleep_until((t0 + Duration::from_millis(900 * i as u64)).into()).await;
        let done = r.run(request(), None, None).await.unwrap();
        assert_eq!(done.status, "succeeded", "rotation {i}: {:?}", done.error);
        let l = Ledger::open(data.path()).unwrap();
        let (row, _) = ledger::run(l.conn(), done.run_id).unwrap().unwrap();
        assert_eq!(row.rows_changed, 1, "rotation {i}");
        let v = row.verdict.unwrap();
        assert_eq!(v["figures"]["fallback_files"], 0, "ext4 collapses: {v}");
        assert_eq!(v["figures"]["bytes_lost"], 0, "{v}");
    }
    let rate = finish(w);
    assert!(
        rate >= RATE as f64 * 0.95,
        "the writer reached only {rate} lines/s"
    );
    let (seen, bad) = tally(&stream(&logs, "app.log"), total);
    let lost = seen.iter().filter(|n| **n == 0).count();
    let twice = seen.iter().filter(|n| **n > 1).count();
    assert_eq!(
        (lost, twice, bad),
        (0, 0, 0),
        "lines lost, duplicated, malformed"
    );
    // Three generations on disk.
    let gens = std::fs::read_dir(&logs).unwrap().count();
    assert_eq!(gens, 4, "app.log and three generations");
}

#[tokio::test]
async fn reopen_loses_no_line_of_a_writer_at_20k_lines_per_second() {
    three_rotations_under_a_writer(
        "method = \"reopen\"\npidfile = \"PIDFILE\"\ncompress = \"gzip\"\n",
    )
    .await;
}

#[tokio::test]
async fn copytruncate_by_collapse_loses_no_line_of_a_writer_at_20k_lines_per_second() {
    three_rotations_under_a_writer(
        "method = \"copytruncate\"\ncompress = \"zstd\"\ndelay_compress = true\n",
    )
    .await;
}

#[tokio::test]
async fn on_tmpfs_copytruncate_falls_back_and_counts_what_it_lost() {
    let dir = temp_dir();
    let data = temp_dir();
    let logs = dir.path().join("tmpfs");
    std::fs::create_dir_all(&logs).unwrap();
    let _m = Mount::run(&["-t", "tmpfs", "-o", "size=64m", "tmpfs"], &logs);
    let log = logs.join("app.log");
    let pidfile = dir.path().join("app.pid");
    let text = format!(
        "[maintenance.logs]\nkind = \"log_rotate\"\npaths = [\"{}/app.log\"]\nmethod = \"copytruncate\"\nsize = 4096\ncompress = \"none\"\n",
        logs.display()
    );
    let r = runner(&text, data.path());
    let total = 20_000 * 3;
    let w = writer(dir.path(), &log, total, 20_000, &pidfile);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let done = r.run(request(), None, None).await.unwrap();
    assert_eq!(done.status, "succeeded", "{:?}", done.error);
    finish(w);
    let l = Ledger::open(data.path()).unwrap();
    let (row, steps) = ledger::run(l.conn(), done.run_id).unwrap().unwrap();
    let verdict = row.verdict.unwrap();
    assert_eq!(verdict["figures"]["fallback_files"], 1, "{verdict}");
    let lost_bytes = verdict["figures"]["bytes_lost"].as_u64().unwrap();
    let batch = steps.iter().find(|s| s.step == "batch").unwrap();
    assert!(
        batch
            .detail
            .contains("collapse refused (EOPNOTSUPP): copied, then truncated"),
        "{}",
        batch.detail
    );
    assert!(
        batch.detail.contains(&format!("{lost_bytes} B lost")),
        "{}",
        batch.detail
    );
    let (seen, _) = tally(&stream(&logs, "app.log"), total);
    let missing = seen.iter().filter(|n| **n == 0).count() as u64;
    assert_eq!(seen.iter().filter(|n| **n > 1).count(), 0, "nothing twice");
    // What was counted lost is lost; the count never says more.
    assert!(
        missing * LINE >= lost_bytes,
        "{missing} lines missing, {lost_bytes} B counted"
    );
    let plan = row.plan.unwrap().to_string();
    assert!(
        plan.contains("copy then truncate"),
        "the plan names the fallback: {plan}"
    );
}

#[tokio::test]
async fn generations_past_keep_go_to_the_quarantine_and_a_rollback_brings_them_back() {
    let dir = temp_dir();
    let data = temp_dir();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("app.log"), "x".repeat(10_000)).unwrap();
    std::fs::write(logs.join("app.log.1"), "first generation\n").unwrap();
    std::fs::write(logs.join("app.log.2"), "second generation\n").unwrap();
    let text = format!(
        "[maintenance.logs]\nkind = \"log_rotate\"\npaths = [\"{}/app.log\"]\nmethod = \"copytruncate\"\nkeep = 2\ncompress = \"gzip\"\n",
        logs.display()
    );
    let r = runner(&text, data.path());
    let done = r.run(request(), None, None).await.unwrap();
    assert_eq!(done.status, "succeeded", "{:?}", done.error);
    // 2 was past keep: quarantined; 1 became 2; the live prefix is 1.gz.
    assert_eq!(
        std::fs::read_to_string(logs.join("app.log.2")).unwrap(),
        "first generation\n"
    );
    assert!(logs.join("app.log.1.gz").exists());
    let q = data
        .path()
        .join("quarantine/logs")
        .join(done.run_id.to_string());
    let kept = q.join(logs.strip_prefix("/").unwrap()).join("app.log.2");
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        "second generation\n"
    );
    // The generation's name is taken again: the rollback says so and keeps it.
    let back = r.rollback(done.run_id, Trigger::Cli).await.unwrap();
    assert!(
        back.error.as_deref().unwrap_or("").contains("app.log.2"),
        "{:?}",
        back.error
    );
    assert!(kept.exists());
    // Once its name is free it comes back.
    std::fs::rename(logs.join("app.log.2"), logs.join("app.log.2.moved")).unwrap();
    let back = r.rollback(done.run_id, Trigger::Cli).await.unwrap();
    assert_eq!(back.status, "rolled_back", "{:?}", back.error);
    assert_eq!(
        std::fs::read_to_string(logs.join("app.log.2")).unwrap(),
        "second generation\n"
    );
}
