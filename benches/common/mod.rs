//! Shared by the benchmarks: the cached history file of 500 series at full
//! retention under the default tiers, built once and reused.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, params};
use upkeep::config::HistoryConfig;
use upkeep::sample::{SeriesKey, Ts, Unit, now_ms};
use upkeep::store::chunk;
use upkeep::store::tiers::{self, Agg, Tier};
use upkeep::store::writer::{RunInfo, Writer};

pub const SERIES: usize = 500;
/// Written beside the file; a file made by another version is rebuilt.
pub const GENERATOR: &str = "full-retention v3";
pub const INFO_FILE: &str = "generated.txt";
pub const DAY_MS: Ts = 86_400_000;

/// The key of series `i`, as `upkeep series` lists it.
pub fn key(i: usize) -> String {
    SeriesKey::new("bench", "m", &[("i", &i.to_string())]).to_string()
}

pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("UPKEEP_BENCH_DATA") {
        return PathBuf::from(d);
    }
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("bench-data")
        .join("full-retention")
}

/// The generation time of a usable cached file: one made by this generator
/// with the schema the writer creates now (the file is rebuilt after a
/// schema change).
pub fn cached(dir: &Path) -> Option<Ts> {
    let info = std::fs::read_to_string(dir.join(INFO_FILE)).ok()?;
    let mut lines = info.lines();
    if lines.next()? != GENERATOR || !dir.join(upkeep::store::FILE_NAME).exists() {
        return None;
    }
    let made = lines.next()?.strip_prefix("now_ms=")?.parse().ok()?;
    let fresh = tempfile::tempdir().ok()?;
    let run = RunInfo {
        version: "bench".into(),
        hostname: "bench".into(),
        pid: std::process::id(),
    };
    Writer::open(fresh.path(), &HistoryConfig::default(), made, &run).ok()?;
    (schema(dir)? == schema(fresh.path())?).then_some(made)
}

/// The statements that made the tables and indexes of the history in `dir`.
fn schema(dir: &Path) -> Option<Vec<String>> {
    let conn = Connection::open_with_flags(
        dir.join(upkeep::store::FILE_NAME),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    let mut st = conn
        .prepare("SELECT coalesce(sql, '') FROM sqlite_master ORDER BY type, name")
        .ok()?;
    st.query_map([], |r| r.get(0))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()
}

/// The bucket of `series` at `bucket`: one sample a second, the last at the
/// end of the bucket.
fn bucket_agg(series: i64, bucket: Ts, step_ms: i64) -> Agg {
    let v = value(series, bucket);
    let count = step_ms / 1000;
    Agg {
        sum: v * count as f64,
        min: v * 0.5,
        max: v * 1.5,
        count,
        last: v,
        last_ts: bucket + step_ms - 1000,
    }
}

/// A value that varies by series and time, cheaply.
pub fn value(series: i64, ts: Ts) -> f64 {
    let x = (ts / 1000)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(series * 40_503);
    (x.rem_euclid(10_000)) as f64 / 100.0
}

/// Where each tier is written up to at `now`, as the writer sets it.
pub fn watermarks(tiers: &[Tier], now: Ts) -> Vec<Ts> {
    let mut out: Vec<Ts> = Vec::new();
    for k in 0..tiers.len() {
        let mut w = tiers::closes_at(tiers, k, now);
        if k > 0 {
            w = w.min(out[k - 1]);
        }
        out.push(w);
    }
    out
}

pub fn generate(dir: &Path) -> Ts {
    let began = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(dir).expect("removing the old bench file");
    }
    std::fs::create_dir_all(dir).expect("creating the bench data dir");
    let now = now_ms();
    let history = HistoryConfig::default();
    let run = RunInfo {
        version: "bench".into(),
        hostname: "bench".into(),
        pid: std::process::id(),
    };
    let ids: Vec<i64> = {
        let (mut w, _) = Writer::open(dir, &history, now, &run).expect("creating the history");
        let ids = (0..SERIES)
            .map(|i| {
                let n = i.to_string();
                w.series_id(
                    &SeriesKey::new("bench", "m", &[("i", &n)]),
                    Unit::Count,
                    now,
                )
                .expect("registering")
                .expect("under max_series")
            })
            .collect();
        w.end_run(now).expect("ending the run");
        ids
    };
    let rows = fill(dir, &history, &ids, now);
    std::fs::write(dir.join(INFO_FILE), format!("{GENERATOR}\nnow_ms={now}\n"))
        .expect("writing the info file");
    println!(
        "generated {} tier buckets for {} series in {:.1} s",
        rows,
        ids.len(),
        began.elapsed().as_secs_f64()
    );
    now
}
/// Fills every tier of the history in `dir` to its full capacity for the
/// series `ids`, as a running agent would have left it at `now`: each tier
/// written up to where it closes at `now` (its watermark: the bucket of
/// `now - 5 s`, for the first tier the minute), the journal holding the
/// seconds after the first tier's watermark. Returns the buckets written.
pub fn fill(dir: &Path, history: &HistoryConfig, ids: &[i64], now: Ts) -> u64 {
    let tiers = tiers::from_config(history);
    let marks = watermarks(&tiers, now);
    let path = dir.join(upkeep::store::FILE_NAME);
    let mut conn = Connection::open(&path).expect("opening for the bulk fill");
    conn.execute_batch("PRAGMA synchronous = OFF; PRAGMA cache_size = -65536;")
        .expect("pragmas");
    let mut rows = 0u64;
    // Rows a running agent wrote are replaced (`--fill-existing`).
    for (k, t) in tiers.iter().enumerate() {
        let cap = t.capacity();
        let first = marks[k] - cap * t.step_ms;
        let sql = format!(
            "INSERT OR REPLACE INTO \"{}\" (series, chunk_ms, data) VALUES (?1, ?2, ?3)",
            t.table
        );
        for group in ids.chunks(50) {
            let tx = conn.transaction().expect("begin");
            {
                let mut st = tx.prepare(&sql).expect("prepare");
                for &id in group {
                    let mut b = first;
                    while b < marks[k] {
                        let chunk_ms = chunk::start(t.step_ms, b);
                        let mut data = Vec::with_capacity(chunk::MAX_CHUNK_BYTES);
                        while b < marks[k] && chunk::start(t.step_ms, b) == chunk_ms {
                            chunk::merge(
                                &mut data,
                                chunk_ms,
                                t.step_ms,
                                b,
                                &bucket_agg(id, b, t.step_ms),
                            );
                            b += t.step_ms;
                        }
                        st.execute(params![id, chunk_ms, data]).expect("insert");
                    }
                }
            }
            tx.commit().expect("commit");
            rows += group.len() as u64 * cap as u64;
        }
        conn.execute(
            "UPDATE tiers SET watermark_ms = ?1 WHERE tbl = ?2",
            params![marks[k], t.table],
        )
        .expect("watermark");
    }
    // The journal: one row per second after the first tier's watermark.
    {
        let tx = conn.transaction().expect("begin");
        tx.execute("DELETE FROM journal", []).expect("journal");
        {
            let mut st = tx
                .prepare("INSERT INTO journal (ts_ms, data) VALUES (?1, ?2)")
                .expect("prepare");
            let mut ts = marks[0];
            while ts <= now {
                let mut blob = Vec::with_capacity(ids.len() * 12);
                for &id in ids {
                    blob.extend_from_slice(&(id as u32).to_le_bytes());
                    blob.extend_from_slice(&value(id, ts).to_le_bytes());
                }
                st.execute(params![ts, blob]).expect("journal row");
                ts += 1000;
            }
        }
        tx.commit().expect("commit");
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    drop(conn);
    rows
}

/// Fills an existing history (say, one the agent made in a few seconds) to
/// full retention for every series it registered, up to now.
pub fn fill_existing(dir: &Path) -> u64 {
    let path = dir.join(upkeep::store::FILE_NAME);
    let ids: Vec<i64> = {
        let conn = Connection::open(&path).expect("opening the history");
        let mut st = conn.prepare("SELECT id FROM series").expect("series");
        st.query_map([], |r| r.get(0))
            .expect("series")
            .collect::<Result<_, _>>()
            .expect("series")
    };
    fill(dir, &HistoryConfig::default(), &ids, now_ms())
}

pub fn file_bytes(dir: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| {
            std::fs::metadata(dir.join(format!("{}{s}", upkeep::store::FILE_NAME))).ok()
        })
        .map(|m| m.len())
        .sum()
}

/// The cached file, built when missing, made by another generator version,
/// asked for (`regenerate`), or older than `max_age_s`. Returns its
/// generation time.
pub fn ensure(regenerate: bool, max_age_s: Option<i64>) -> (PathBuf, Ts) {
    let dir = data_dir();
    let now = match cached(&dir) {
        Some(t) if !regenerate && max_age_s.is_none_or(|age| now_ms() - t <= age * 1000) => t,
        _ => generate(&dir),
    };
    (dir, now)
}
