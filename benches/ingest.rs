//! Ingest benchmark: samples per second sustained into the history file.
//!
//! 500 series, one tick per simulated second, `now` = the tick time, one
//! transaction per `Writer::write` call. Each run opens a fresh file, registers
//! the series (not timed), then writes `--hours` of simulated time (default 2,
//! so that 10 s, 1 m and 1 h buckets close, one day bucket closes, and every
//! tier is trimmed along the way). Reported: samples/s over the whole timed
//! part, for each batch size (ticks per commit), median of `--runs` runs.
//!
//! With `--on-full-file`, each run starts instead from a copy of the history
//! file of the query benchmark (500 series at full retention, built and cached
//! by `benches/common`), at the time it was made: the steady state of a
//! long-running agent, where every tier holds its full capacity and retention
//! deletes as much as is added.
//!
//! ```text
//! cargo bench --bench ingest                      # batch = 1 and 100 ticks, 5 runs each
//! cargo bench --bench ingest -- --runs 3 --hours 1 --batches 1,10,100 --series 500
//! cargo bench --bench ingest -- --on-full-file --runs 3 --hours 0.5
//! ```
//!
//! Target: at least 1,000,000 samples/s.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use upkeep::config::HistoryConfig;
use upkeep::sample::{SeriesKey, Ts, Unit};
use upkeep::store::writer::{RunInfo, Sample, Writer};

const TARGET: f64 = 1_000_000.0;
/// 2026-01-01T00:00:00Z: runs start an hour before a day boundary, so that a
/// day bucket closes within the default two hours.
const DAY_BOUNDARY_MS: Ts = 1_767_225_600_000;

struct Opts {
    runs: usize,
    hours: f64,
    series: usize,
    batches: Vec<usize>,
    on_full_file: bool,
}

fn opts() -> Opts {
    let mut o = Opts {
        runs: 5,
        hours: 2.0,
        series: 500,
        batches: vec![1, 100],
        on_full_file: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--runs" => o.runs = value.parse().expect("--runs N"),
            "--hours" => o.hours = value.parse().expect("--hours H"),
            "--series" => o.series = value.parse().expect("--series N"),
            "--batches" => {
                o.batches = value
                    .split(',')
                    .map(|b| b.trim().parse().expect("--batches 1,100"))
                    .collect()
            }
            "--on-full-file" => {
                o.on_full_file = true;
                i += 1;
                continue;
            }
            // `cargo bench` passes `--bench`; anything else is ignored too.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

struct RunResult {
    elapsed: Duration,
    samples: u64,
    rows_flushed: u64,
    slowest_commit: Duration,
    file_bytes: u64,
}

/// Writes `ticks` seconds of `series_n` series into the history in `dir`,
/// from `start`, `batch` ticks per commit.
fn one_run(dir: &Path, start: Ts, series_n: usize, ticks: i64, batch: usize) -> RunResult {
    let run = RunInfo {
        version: "bench".into(),
        hostname: "bench".into(),
        pid: std::process::id(),
    };
    let (mut w, _) =
        Writer::open(dir, &HistoryConfig::default(), start, &run).expect("opening the history");
    let ids: Vec<i64> = (0..series_n)
        .map(|i| {
            let n = i.to_string();
            let key = SeriesKey::new("bench", "m", &[("i", &n)]);
            w.series_id(&key, Unit::Count, start)
                .expect("registering a series")
                .expect("under max_series")
        })
        .collect();
    let mut samples: Vec<Sample> = Vec::with_capacity(series_n * batch);
    let mut result = RunResult {
        elapsed: Duration::ZERO,
        samples: 0,
        rows_flushed: 0,
        slowest_commit: Duration::ZERO,
        file_bytes: 0,
    };
    let began = Instant::now();
    let mut tick = 0;
    while tick < ticks {
        samples.clear();
        let upto = (tick + batch as i64).min(ticks);
        let mut now = start;
        for t in tick..upto {
            now = start + 1000 + t * 1000;
            for (j, &id) in ids.iter().enumerate() {
                // Values that vary by series and time, cheaply.
                let value = ((t as u64 * 31 + j as u64 * 17) % 1000) as f64 * 0.25;
                samples.push(Sample {
                    series: id,
                    ts: now,
                    value,
                });
            }
        }
        let t0 = Instant::now();
        let stats = w.write(&samples, &[], now).expect("writing a batch");
        result.slowest_commit = result.slowest_commit.max(t0.elapsed());
        result.samples += stats.samples as u64;
        result.rows_flushed += stats.rows_flushed as u64;
        tick = upto;
    }
    result.elapsed = began.elapsed();
    result.file_bytes = w.file_size();
    result
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let o = opts();
    let ticks = (o.hours * 3600.0).round() as i64;
    println!(
        "ingest: {} series, {} simulated s ({:.2} h) per run, {} runs per batch size",
        o.series, ticks, o.hours, o.runs
    );
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let full = o.on_full_file.then(|| {
        let (dir, made) = common::ensure(false, None);
        println!(
            "starting each run from a copy of {} ({:.0} MiB)",
            dir.display(),
            common::file_bytes(&dir) as f64 / (1024.0 * 1024.0)
        );
        (dir, made)
    });
    for &batch in &o.batches {
        let mut rates = Vec::new();
        for r in 0..o.runs {
            let dir = tempfile::Builder::new()
                .prefix("upkeep-ingest-")
                .tempdir_in(scratch)
                .expect("temp dir");
            let start = match &full {
                Some((from, made)) => {
                    std::fs::copy(
                        from.join(upkeep::store::FILE_NAME),
                        dir.path().join(upkeep::store::FILE_NAME),
                    )
                    .expect("copying the full-retention file");
                    *made
                }
                None => DAY_BOUNDARY_MS - 3_600_000,
            };
            let res = one_run(dir.path(), start, o.series, ticks, batch);
            let rate = res.samples as f64 / res.elapsed.as_secs_f64();
            println!(
                "  batch {batch:>4} ticks ({:>6} samples/commit) run {}: {:>10.0} samples/s  ({} samples in {:.2} s, {} tier buckets flushed, slowest commit {:.1} ms, file {:.1} MiB)",
                batch * o.series,
                r + 1,
                rate,
                res.samples,
                res.elapsed.as_secs_f64(),
                res.rows_flushed,
                res.slowest_commit.as_secs_f64() * 1e3,
                res.file_bytes as f64 / (1024.0 * 1024.0),
            );
            rates.push(rate);
        }
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        let med = median(&mut rates);
        println!(
            "ingest batch={batch} ticks/commit: median {med:.0} samples/s (min {min:.0}, max {max:.0}); target {TARGET:.0}: {:.2}x",
            med / TARGET
        );
    }
}
