//! Query benchmark: seven days at 1 m (10,080 points) of one series, from a
//! history file holding 500 series at full retention under the default tiers
//! (10 s × 1 d, 1 m × 7 d, 1 h × 400 d, 1 d × 10 y: 8640 + 10080 + 9600 + 3650
//! buckets per series, about 16 M buckets in about 170,000 chunk rows).
//!
//! The file is built once and cached under `<target>/bench-data/full-retention/`
//! (or `$UPKEEP_BENCH_DATA`): `Writer::open` creates the schema, the tiers and
//! the 500 series; then the tier tables are filled directly, in key order and
//! big transactions, and the watermarks, the journal and the tier chunks are set
//! as a running agent would leave them at the generation time `T` (every tier
//! written as far as the writer's closing rule allows at `T`, the journal
//! holding the samples after the first tier's watermark). `T` is kept beside the file.
//!
//! ```text
//! cargo bench --bench query                           # build the file if needed, then measure
//! cargo bench --bench query -- --generate-only        # only make sure the file exists
//! cargo bench --bench query -- --max-age 3600         # rebuild a file older than an hour
//! cargo bench --bench query -- --regenerate --queries 200
//! cargo bench --bench query -- --fill-existing DATA_DIR  # fill an agent's file (footprint.sh)
//! ```
//!
//! Measured in-process: the median over `--queries` queries of different
//! series of `Reader::query(key, T - 7d, T, Some(60 s), T, 20_000)` on one
//! open `Reader`; the same with a fresh `Reader` per query (closer to one
//! `upkeep query` process); and `report::query` in CSV (the query and the
//! rendering that `upkeep query --format csv` prints). Target: at most 2 ms
//! for the query.

mod common;

use std::time::{Duration, Instant};

use upkeep::cli::report;
use upkeep::sample::now_ms;
use upkeep::store::Reader;

use common::{DAY_MS, SERIES, file_bytes, key};

const TARGET_MS: f64 = 2.0;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn report(label: &str, mut times: Vec<Duration>, target_ms: Option<f64>) -> f64 {
    times.sort();
    let med = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let versus = target_ms.map_or(String::new(), |t| {
        format!("; target {t} ms: {:.2}x", ms(med) / t)
    });
    println!(
        "query {label}: median {:.3} ms (p10 {:.3}, p90 {:.3}, max {:.3}) over {} queries{versus}",
        ms(med),
        ms(percentile(&times, 0.1)),
        ms(percentile(&times, 0.9)),
        ms(*times.last().expect("some")),
        times.len(),
    );
    ms(med)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse::<i64>().unwrap_or_else(|_| panic!("{f} N")))
    };
    if let Some(i) = args.iter().position(|a| a == "--fill-existing") {
        let dir = std::path::PathBuf::from(args.get(i + 1).expect("--fill-existing DIR"));
        let began = Instant::now();
        let rows = common::fill_existing(&dir);
        println!(
            "filled {} to full retention: {rows} tier buckets in {:.1} s",
            dir.display(),
            began.elapsed().as_secs_f64()
        );
        return;
    }
    let queries = value("--queries").unwrap_or(200) as usize;
    let (dir, now) = common::ensure(flag("--regenerate"), value("--max-age"));
    println!(
        "history file: {} ({:.1} MiB with WAL), generated {:.1} min ago; example key {}",
        dir.join(upkeep::store::FILE_NAME).display(),
        file_bytes(&dir) as f64 / (1024.0 * 1024.0),
        (now_ms() - now) as f64 / 60_000.0,
        key(42)
    );
    if flag("--generate-only") {
        return;
    }
    let since = now - 7 * DAY_MS;
    let keys: Vec<String> = (0..queries).map(|q| key((q * 7 + 3) % SERIES)).collect();

    // Warm the page cache the way repeated CLI runs would find it.
    {
        let r = Reader::open(&dir).expect("reader");
        for k in keys.iter().take(SERIES) {
            r.query(k, since, now, Some(60_000), now, 20_000)
                .expect("query");
        }
    }

    let reader = Reader::open(&dir).expect("reader");
    let mut points = 0;
    let mut table = String::new();
    let mut times = Vec::with_capacity(queries);
    for k in &keys {
        let t0 = Instant::now();
        let answer = reader
            .query(k, since, now, Some(60_000), now, 20_000)
            .expect("query")
            .expect("series exists");
        times.push(t0.elapsed());
        points = answer.points.len();
        table = answer.tier;
    }
    println!("answer: {points} points from {table}");
    report("(one open Reader)", times, Some(TARGET_MS));

    let mut times = Vec::with_capacity(queries);
    for k in &keys {
        let t0 = Instant::now();
        let r = Reader::open(&dir).expect("reader");
        let answer = r
            .query(k, since, now, Some(60_000), now, 20_000)
            .expect("query")
            .expect("series exists");
        drop(r);
        times.push(t0.elapsed());
        assert_eq!(answer.points.len(), points);
    }
    report("(Reader opened per query)", times, Some(TARGET_MS));

    // What `upkeep query --format csv` does in-process: the query plus the
    // rendering of the answer.
    let mut times = Vec::with_capacity(queries);
    let mut bytes = 0;
    for k in &keys {
        let t0 = Instant::now();
        let spec = report::QuerySpec {
            key: k,
            since,
            until: now,
            step_ms: Some(60_000),
            max_points: 20_000,
        };
        let csv = report::query(&reader, spec, now, report::Format::Csv).expect("query");
        times.push(t0.elapsed());
        bytes = csv.len();
    }
    println!("csv answer: {bytes} bytes");
    report(
        "+ CSV rendering (report::query, one open Reader)",
        times,
        None,
    );
}
