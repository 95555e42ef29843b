//! The history store as a spec: every committed sample is counted exactly
//! once in every tier, survives a crash of the writer, is visible to readers
//! before its bucket is written, and the file stays within the size bound
//! that follows from the config, whatever the wall clock does. Time is
//! simulated: each test passes `now` (unix ms) to every call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use upkeep::config::HistoryConfig;
use upkeep::sample::{SeriesKey, Ts, Unit};
use upkeep::store::reader::Point;
use upkeep::store::tiers::{self, Tier};
use upkeep::store::writer::{Sample, WriteStats, Writer};
use upkeep::store::{Event, Reader};

use crate::util::*;

const SEC: Ts = 1000;
const MIN: Ts = 60 * SEC;
const HOUR: Ts = 60 * MIN;
const DAY: Ts = 24 * HOUR;

/// 2023-11-14T22:15:23Z: aligned to no tier step, so first buckets are partial.
const T0: Ts = 1_700_000_123_000;
/// The first day boundary after `T0` (`T0` + 6277 s): every tier closes a
/// bucket there.
const DAY_END: Ts = 1_700_006_400_000;

/// Tiers shaped like the defaults, with spans long enough that retention
/// never removes what a test wrote.
fn roomy() -> HistoryConfig {
    history_with_tiers(&[
        (10, 3 * 86_400),
        (60, 7 * 86_400),
        (3_600, 30 * 86_400),
        (86_400, 400 * 86_400),
    ])
}

fn key(s: usize) -> SeriesKey {
    SeriesKey::new(&format!("svc{s}"), "value", &[])
}

/// Value of series `s` at `ts`: varies within every bucket, so that avg, min,
/// max and last all differ; the same `(s, ts)` always gives the same value.
fn value(s: usize, ts: Ts) -> f64 {
    ((ts / SEC * 7 + s as i64 * 13) % 101) as f64 + s as f64 / 4.0
}

/// A writer fed one sample per series per tick, with `now` = the tick, and
/// the log of every sample it committed: the ground truth of the tests.
struct Feed {
    dir: PathBuf,
    history: HistoryConfig,
    writer: Option<Writer>,
    ids: Vec<i64>,
    log: Vec<(usize, Ts, f64)>,
    /// Whether `last` is checked: once the clock stepped back, samples of a
    /// bucket arrive out of time order (`last` then has its own test).
    check_last: bool,
}

impl Feed {
    fn open(dir: &Path, history: &HistoryConfig, series: usize, now: Ts) -> Feed {
        let mut writer = temp_writer(dir, history, now);
        let ids = (0..series)
            .map(|s| {
                writer
                    .series_id(&key(s), Unit::Count, now)
                    .expect("registering a series")
                    .expect("below max_series")
            })
            .collect();
        Feed {
            dir: dir.to_path_buf(),
            history: history.clone(),
            writer: Some(writer),
            ids,
            log: Vec::new(),
            check_last: true,
        }
    }

    fn writer(&mut self) -> &mut Writer {
        self.writer.as_mut().expect("the writer is open")
    }

    /// One sample per series at `ts`, written with `now = ts`.
    fn tick(&mut self, ts: Ts) -> WriteStats {
        let samples: Vec<Sample> = (0..self.ids.len())
            .map(|s| Sample {
                series: self.ids[s],
                ts,
                value: value(s, ts),
            })
            .collect();
        let stats = self
            .writer()
            .write(&samples, &[], ts)
            .unwrap_or_else(|e| panic!("writing the batch at {ts}: {e}"));
        self.log
            .extend((0..self.ids.len()).map(|s| (s, ts, value(s, ts))));
        stats
    }

    /// A tick every second over `[from, until)`; the stats summed.
    fn run(&mut self, from: Ts, until: Ts) -> WriteStats {
        let mut sum = WriteStats::default();
        for ts in (from..until).step_by(SEC as usize) {
            let s = self.tick(ts);
            sum.samples += s.samples;
            sum.late_samples += s.late_samples;
            sum.rows_flushed += s.rows_flushed;
        }
        sum
    }

    /// Drops the writer without `end_run`: to the file, a killed agent.
    fn crash(&mut self) {
        self.writer = None;
    }

    fn reopen(&mut self, now: Ts) {
        assert!(self.writer.is_none(), "crash before reopening");
        self.writer = Some(temp_writer(&self.dir, &self.history, now));
    }

    /// Writes no samples at `now`, so every bucket that closed is written.
    fn idle(&mut self, now: Ts) {
        self.writer()
            .write(&[], &[], now)
            .expect("writing an empty batch");
    }

    fn count(&self, s: usize) -> i64 {
        self.log.iter().filter(|l| l.0 == s).count() as i64
    }

    fn span(&self) -> (Ts, Ts) {
        let min = self.log.iter().map(|l| l.1).min().expect("samples logged");
        let max = self.log.iter().map(|l| l.1).max().expect("samples logged");
        (min, max + 1)
    }

    /// Per bucket of `tier`, what series `s` must read there according to
    /// the log.
    fn expected(&self, tier: &Tier, s: usize) -> BTreeMap<Ts, Bucket> {
        let mut out: BTreeMap<Ts, Bucket> = BTreeMap::new();
        let mut sorted: Vec<_> = self.log.iter().filter(|l| l.0 == s).collect();
        sorted.sort_by_key(|l| l.1);
        for &(_, ts, v) in sorted {
            let b = out.entry(tier.bucket(ts)).or_insert(Bucket {
                count: 0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                sum: 0.0,
                last: v,
            });
            b.count += 1;
            b.min = b.min.min(v);
            b.max = b.max.max(v);
            b.sum += v;
            b.last = v;
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    count: i64,
    min: f64,
    max: f64,
    sum: f64,
    last: f64,
}

/// Compares buckets read back with the log: count, min, max and last exactly,
/// avg to 1e-9 relative (a higher tier re-derives sums from stored averages).
fn assert_buckets_match(
    what: &str,
    got: &[(Ts, Point)],
    want: &BTreeMap<Ts, Bucket>,
    check_last: bool,
) {
    let got_keys: Vec<(Ts, i64)> = got.iter().map(|(b, p)| (*b, p.count)).collect();
    let want_keys: Vec<(Ts, i64)> = want.iter().map(|(b, e)| (*b, e.count)).collect();
    assert_eq!(got_keys, want_keys, "{what}: buckets and counts");
    for (b, p) in got {
        let e = &want[b];
        let avg = e.sum / e.count as f64;
        assert_eq!(
            (p.min, p.max),
            (e.min, e.max),
            "{what}: min, max of bucket {b}"
        );
        if check_last {
            assert_eq!(p.last, e.last, "{what}: last of bucket {b}");
        }
        assert!(
            (p.avg - avg).abs() <= 1e-9 * avg.abs().max(1.0),
            "{what}: avg of bucket {b} is {}, the samples average {avg}",
            p.avg
        );
    }
}

/// Every tier, read through a `Reader` (written rows plus the buckets
/// rebuilt from lower tiers and the journal), matches the log bucket by
/// bucket: each committed sample is there once.
fn assert_every_tier_reads_the_log(feed: &Feed, now: Ts) {
    let reader = Reader::open(&feed.dir).expect("opening a reader");
    let (since, until) = feed.span();
    for tier in tiers::from_config(&feed.history) {
        for s in 0..feed.ids.len() {
            let points = tier_points(
                &reader,
                &key(s).to_string(),
                tier.step_ms,
                since,
                until,
                now,
            );
            let got: Vec<(Ts, Point)> = points.into_iter().map(|p| (p.ts_ms, p)).collect();
            assert_buckets_match(
                &format!("{} via reader, series {s}", tier.table),
                &got,
                &feed.expected(&tier, s),
                feed.check_last,
            );
        }
    }
}

/// Every tier table, once every bucket is written, holds the log exactly:
/// the same rows, each sample counted once, and the journal is empty.
fn assert_every_tier_table_holds_the_log(feed: &Feed) {
    let conn = history_sql(&feed.dir);
    for tier in tiers::from_config(&feed.history) {
        for (s, id) in feed.ids.iter().enumerate() {
            let got: Vec<(Ts, Point)> = tier_buckets(&conn, &tier.table, Some(*id))
                .into_iter()
                .map(|(_, ts_ms, a)| {
                    (
                        ts_ms,
                        Point {
                            ts_ms,
                            avg: a.avg(),
                            min: a.min,
                            max: a.max,
                            count: a.count,
                            last: a.last,
                        },
                    )
                })
                .collect();
            assert_buckets_match(
                &format!("{} table, series {s}", tier.table),
                &got,
                &feed.expected(&tier, s),
                feed.check_last,
            );
        }
    }
    assert_eq!(
        journal_samples(&conn),
        0,
        "journal after every bucket closed"
    );
}

/// Watermarks of every tier, finest first.
fn watermarks(dir: &Path) -> Vec<Ts> {
    Reader::open(dir)
        .expect("opening a reader")
        .tiers()
        .expect("reading tiers")
        .iter()
        .map(|t| t.watermark_ms)
        .collect()
}

#[test]
fn every_committed_sample_is_counted_exactly_once_in_every_tier() {
    let dir = temp_dir();
    let history = roomy();
    let mut feed = Feed::open(dir.path(), &history, 3, T0);
    let end = T0 + 2 * HOUR;
    feed.run(T0, end);
    assert_eq!(feed.count(0), 7_200);

    // Buckets still open in every tier: the reader accounts for them too.
    assert_every_tier_reads_the_log(&feed, end - SEC);

    // A day later every bucket of every tier is written.
    let later = DAY_END + DAY + 5 * SEC;
    feed.idle(later);
    assert_eq!(watermarks(dir.path()), vec![DAY_END + DAY; 4]);
    let conn = history_sql(dir.path());
    for tier in tiers::from_config(&history) {
        assert_eq!(
            tier_rows_count(&conn, &tier.table),
            3 * 7_200,
            "{}: samples counted",
            tier.table
        );
    }
    // The two hours straddle a day boundary: 6277 s before it, 923 s after.
    let days: Vec<(Ts, i64)> = tier_buckets(&conn, "tier_86400s", Some(feed.ids[0]))
        .into_iter()
        .map(|(_, b, a)| (b, a.count))
        .collect();
    assert_eq!(days, vec![(DAY_END - DAY, 6_277), (DAY_END, 923)]);
    assert_every_tier_table_holds_the_log(&feed);
    assert_every_tier_reads_the_log(&feed, later);
}

#[test]
fn crash_recovery_neither_loses_nor_double_counts_samples() {
    let dir = temp_dir();
    let history = roomy();
    let mut feed = Feed::open(dir.path(), &history, 3, T0);

    // Killed in the middle of buckets of every tier; back 7 s later.
    let crash_mid = T0 + 1_234 * SEC;
    feed.run(T0, crash_mid + SEC);
    feed.crash();
    feed.reopen(crash_mid + 7 * SEC);
    assert_every_tier_reads_the_log(&feed, crash_mid + 7 * SEC);

    // Killed right after the write that closed a bucket of every tier at
    // once (the day boundary); back a second later.
    let crash_after_flush = DAY_END + 5 * SEC;
    feed.run(crash_mid + 7 * SEC, crash_after_flush + SEC);
    assert_eq!(
        watermarks(dir.path()),
        vec![DAY_END; 4],
        "the last write before the crash closed every tier's bucket"
    );
    feed.crash();
    feed.reopen(crash_after_flush + SEC);
    assert_every_tier_reads_the_log(&feed, crash_after_flush + SEC);

    // Killed one second before the hour's bucket would have been written;
    // back a minute later, when it is due.
    let crash_before_flush = DAY_END + HOUR + 4 * SEC;
    feed.run(crash_after_flush + SEC, crash_before_flush + SEC);
    assert_eq!(
        watermarks(dir.path())[2],
        DAY_END,
        "the hour's bucket is still open at the crash"
    );
    feed.crash();
    let back = crash_before_flush + 65 * SEC;
    feed.reopen(back);
    assert_eq!(watermarks(dir.path())[2], DAY_END + HOUR);
    assert_every_tier_reads_the_log(&feed, back);

    let end = DAY_END + 2 * HOUR;
    feed.run(back, end);
    assert_every_tier_reads_the_log(&feed, end);
    let later = DAY_END + DAY + 5 * SEC;
    feed.idle(later);
    feed.writer().end_run(later).expect("clean stop");
    assert_every_tier_table_holds_the_log(&feed);
    assert_eq!(integrity(dir.path()), "ok");

    // Each killed run reads as unclean, seen last at its last write.
    let conn = history_sql(dir.path());
    let runs: Vec<(i64, Ts, Option<Ts>)> = conn
        .prepare("SELECT id, last_seen_ms, stopped_ms FROM agent_runs ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        runs,
        vec![
            (1, crash_mid, None),
            (2, crash_after_flush, None),
            (3, crash_before_flush, None),
            (4, later, Some(later)),
        ]
    );
    let reader = Reader::open(dir.path()).unwrap();
    let events = reader.events(None, 0, Ts::MAX, 1_000).unwrap();
    for (run, last_seen) in [
        (1, crash_mid),
        (2, crash_after_flush),
        (3, crash_before_flush),
    ] {
        let text = format!("agent run {run} ended without a clean stop");
        assert!(
            events
                .iter()
                .any(|e| e.kind == "agent" && e.ts_ms == last_seen && e.message.contains(&text)),
            "no event \"{text}\" at {last_seen} in {events:#?}"
        );
    }
}

#[test]
fn the_first_tier_is_written_a_minute_at_a_time_and_a_crash_before_it_loses_nothing() {
    let dir = temp_dir();
    let history = roomy();
    let mut feed = Feed::open(dir.path(), &history, 3, T0);
    // T0 is 23 s into a minute; `minute` starts the third minute after it.
    let minute = T0 - 23 * SEC + 3 * MIN;

    // Until 5 s past the minute's end none of its 10 s buckets is written:
    // the journal holds the minute and the 5 s after it.
    feed.run(T0, minute + 5 * SEC);
    assert_eq!(watermarks(dir.path())[..2], [minute - MIN, minute - MIN]);
    let conn = history_sql(dir.path());
    assert_eq!(journal_samples(&conn), 3 * 65);
    assert_every_tier_reads_the_log(&feed, minute + 4 * SEC);

    // Then one write closes them all, six 10 s buckets and the minute's
    // bucket per series, and the journal keeps only what is still open.
    let stats = feed.tick(minute + 5 * SEC);
    assert_eq!(stats.rows_flushed, 3 * (6 + 1));
    assert_eq!(watermarks(dir.path())[..2], [minute, minute]);
    assert_eq!(journal_samples(&conn), 3 * 6);

    // Killed with the journal at its fullest, a second before the next
    // minute would be written; readers see every sample meanwhile, and
    // the writer, back 2 s later, writes the minute exactly once.
    let crash = minute + MIN + 4 * SEC;
    feed.run(minute + 6 * SEC, crash + SEC);
    assert_eq!(journal_samples(&conn), 3 * 65);
    feed.crash();
    assert_every_tier_reads_the_log(&feed, crash);
    feed.reopen(crash + 2 * SEC);
    assert_eq!(watermarks(dir.path())[..2], [minute + MIN, minute + MIN]);
    assert_every_tier_reads_the_log(&feed, crash + 2 * SEC);

    feed.run(crash + 2 * SEC, crash + 10 * MIN);
    feed.idle(DAY_END + DAY + 5 * SEC);
    assert_every_tier_table_holds_the_log(&feed);
    assert_eq!(integrity(dir.path()), "ok");
}

#[test]
fn the_journal_at_its_fullest_stays_within_its_part_of_the_bound() {
    let dir = temp_dir();
    let mut history = history_with_tiers(&[(10, 86_400), (60, 7 * 86_400)]);
    history.max_series = 20;
    assert_valid_history(&history);
    let bound = tiers::size_bound(&history).journal as i64;
    let mut now = T0;
    let mut writer = temp_writer(dir.path(), &history, now);
    let ids: Vec<i64> = (0..20)
        .map(|s| {
            writer
                .series_id(&key(s), Unit::Count, now)
                .unwrap()
                .unwrap()
        })
        .collect();
    // Largest journal seen: bytes of its pages, and time between its
    // oldest and newest sample.
    let (mut most, mut longest) = (0, 0);
    for _ in 0..3 * 60 {
        now += SEC;
        // Each series at its own moment in the second: a row per sample.
        let samples: Vec<Sample> = ids
            .iter()
            .enumerate()
            .map(|(s, &id)| Sample {
                series: id,
                ts: now - SEC + 37 * s as Ts,
                value: value(s, now),
            })
            .collect();
        writer.write(&samples, &[], now).expect("writing a batch");
        let conn = history_sql(dir.path());
        let (bytes, span): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = 'journal'),
                        (SELECT coalesce(max(ts_ms) - min(ts_ms), 0) FROM journal)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        most = most.max(bytes);
        longest = longest.max(span);
    }
    assert!(
        longest > MIN,
        "the journal held more than a minute: {longest} ms at most"
    );
    assert!(
        most <= bound,
        "the journal took {most} bytes at most, its bound is {bound}"
    );
    eprintln!("journal at its fullest: {most} bytes over {longest} ms; bound {bound}");
}

#[test]
fn an_unclean_stop_is_reported_once_however_often_the_agent_restarts() {
    let dir = temp_dir();
    let history = roomy();
    let mut feed = Feed::open(dir.path(), &history, 1, T0);
    feed.run(T0, T0 + MIN);
    feed.crash();
    // Run 2 reports run 1 and stops cleanly; runs 3 and 4 have nothing to report.
    let mut now = T0 + 2 * MIN;
    for _ in 2..=4 {
        feed.reopen(now);
        feed.run(now, now + MIN);
        feed.writer().end_run(now + MIN).expect("clean stop");
        feed.crash();
        now += 2 * MIN;
    }
    let events = Reader::open(dir.path())
        .unwrap()
        .events(None, 0, Ts::MAX, 1_000)
        .unwrap();
    let reports: Vec<(i64, Option<i64>)> = events
        .iter()
        .filter(|e| e.message.contains("ended without a clean stop"))
        .map(|e| (e.ts_ms, e.run_id))
        .collect();
    assert_eq!(
        reports,
        vec![(T0 + MIN - SEC, Some(2))],
        "the unclean stop of run 1 is reported by run 2 only"
    );
}

#[test]
fn a_query_sees_samples_whose_buckets_are_not_written_yet() {
    let dir = temp_dir();
    let history = HistoryConfig::default();
    // 1_700_002_800_000 is an hour boundary; start ten minutes into the hour.
    let hour = 1_700_002_800_000;
    let start = hour + 10 * MIN;
    let mut feed = Feed::open(dir.path(), &history, 2, start);
    let reader = Reader::open(dir.path()).expect("a reader beside the writer");
    let key0 = key(0).to_string();

    // While the hour fills, just before and just after a minute's bucket is
    // written, and later, the hour's bucket holds every sample.
    let mut ts = start;
    for (until, minute_mark) in [
        (5 * MIN + 5 * SEC, start + 4 * MIN),
        (5 * MIN + 6 * SEC, start + 5 * MIN),
        (17 * MIN + 6 * SEC, start + 17 * MIN),
        (30 * MIN, start + 29 * MIN),
    ] {
        feed.run(ts, start + until);
        ts = start + until;
        assert_eq!(watermarks(dir.path())[1], minute_mark);
        let points = tier_points(&reader, &key0, HOUR, start, ts, ts - SEC);
        assert_eq!(
            points
                .iter()
                .map(|p| (p.ts_ms, p.count))
                .collect::<Vec<_>>(),
            vec![(hour, feed.count(0))],
            "the current hour after {} s",
            until / SEC
        );
    }
    assert_eq!(feed.count(0), 1_800);

    // Nothing is written to the hour and day tiers yet: their answers are
    // rebuilt from the minute and 10 s tiers and the journal.
    let conn = history_sql(dir.path());
    assert_eq!(tier_rows_count(&conn, "tier_3600s"), 0);
    assert_eq!(tier_rows_count(&conn, "tier_86400s"), 0);
    assert!(
        journal_samples(&conn) > 0,
        "the newest samples are in the journal"
    );
    let now = start + 30 * MIN - SEC;
    let minutes = tier_points(&reader, &key0, MIN, start, start + 30 * MIN, now);
    assert_eq!(
        minutes.iter().map(|p| p.count).collect::<Vec<_>>(),
        vec![60; 30]
    );
    let tens = tier_points(&reader, &key0, 10 * SEC, start, start + 30 * MIN, now);
    assert_eq!(
        tens.iter().map(|p| p.count).collect::<Vec<_>>(),
        vec![10; 180]
    );
    assert_every_tier_reads_the_log(&feed, now);
}

/// Chunk rows and buckets of the series with the most of them in a tier table.
fn most_of_one_series(conn: &rusqlite::Connection, table: &str) -> (u64, u64) {
    let chunks = conn
        .query_row(
            &format!(
                "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM \"{table}\" GROUP BY series)"
            ),
            [],
            |r| r.get(0),
        )
        .expect("counting rows per series");
    let mut buckets: std::collections::HashMap<i64, u64> = std::collections::HashMap::new();
    for (series, _, _) in tier_buckets(conn, table, None) {
        *buckets.entry(series).or_default() += 1;
    }
    (chunks, buckets.values().copied().max().unwrap_or(0))
}

#[test]
fn the_history_file_never_exceeds_its_size_bound() {
    let dir = temp_dir();
    let mut history = history_with_tiers(&[(1, 40), (10, 300), (60, 1_800)]);
    history.max_series = 20;
    history.max_events = 20;
    history.max_runs = 5;
    assert_valid_history(&history);
    let mut bound = tiers::size_bound(&history);
    // This test writes no maintenance ledger: hold it to the rest of the
    // bound (the ledger's own bound has its own test).
    bound.total -= bound.maintenance;
    let tier_list = tiers::from_config(&history);
    let db = dir.path().join(upkeep::store::FILE_NAME);
    let wal = dir.path().join(format!("{}-wal", upkeep::store::FILE_NAME));
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());

    // Largest figures seen: file, write-ahead log, (chunk rows, buckets) of
    // one series per tier.
    let peak = std::cell::RefCell::new((0, 0, vec![(0, 0); tier_list.len()]));
    let report = || {
        let conn = history_sql(dir.path());
        let mut parts: Vec<(String, i64)> = conn
            .prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        parts.retain(|p| p.1 > 4096);
        let free: i64 = conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        let (file, log, rows) = peak.borrow().clone();
        eprintln!(
            "history size: file {} bytes now, {file} at most; bound {} bytes; wal {} bytes now, {log} at most",
            size(&db),
            bound.total,
            size(&wal),
        );
        eprintln!("  bound by part: {bound:?}");
        eprintln!("  in use now (dbstat, tables over one page): {parts:?}; free pages: {free}");
        for (t, (chunks, buckets)) in tier_list.iter().zip(rows) {
            eprintln!(
                "  {}: at most {chunks} chunk rows (bound {}) and {buckets} buckets (bound {} + a chunk) of one series",
                t.table,
                tiers::chunks_bound(t),
                tiers::buckets_bound(t)
            );
        }
    };
    let check = |phase: &str| {
        let conn = history_sql(dir.path());
        let bytes = size(&db);
        let rows: Vec<(u64, u64)> = tier_list
            .iter()
            .map(|t| most_of_one_series(&conn, &t.table))
            .collect();
        {
            let mut p = peak.borrow_mut();
            p.0 = p.0.max(bytes);
            p.1 = p.1.max(size(&wal));
            for (most, now) in p.2.iter_mut().zip(&rows) {
                *most = (most.0.max(now.0), most.1.max(now.1));
            }
        }
        let rows_ok = tier_list.iter().zip(&rows).all(|(t, &(chunks, buckets))| {
            // A trim keeps the chunk it cuts through whole: up to a chunk
            // of buckets older than the span.
            chunks <= tiers::chunks_bound(t)
                && buckets < tiers::buckets_bound(t) + upkeep::store::chunk::CHUNK_BUCKETS as u64
        });
        if bytes > bound.total || !rows_ok {
            report();
        }
        assert!(
            bytes <= bound.total,
            "{phase}: history file is {bytes} bytes, bound {}",
            bound.total
        );
        assert!(rows_ok, "{phase}: rows of one series per tier {rows:?}");
    };

    // 20 series at 1 s, each at its own offset in the second (probes tick
    // at jittered moments), so the journal has a row per sample.
    let mut now = T0;
    let mut writer = temp_writer(dir.path(), &history, now);
    let ids: Vec<i64> = (0..20)
        .map(|s| {
            writer
                .series_id(&key(s), Unit::Count, now)
                .unwrap()
                .unwrap()
        })
        .collect();
    let tick = |writer: &mut Writer, now: Ts, events: &[Event]| {
        let samples: Vec<Sample> = ids
            .iter()
            .enumerate()
            .map(|(s, &id)| Sample {
                series: id,
                ts: now - 1_000 + 37 * s as Ts,
                value: value(s, now),
            })
            .collect();
        writer
            .write(&samples, events, now)
            .expect("writing a batch");
    };

    // Every tier filled past capacity: four times the longest span.
    for i in 0..4 * 1_800 {
        now += SEC;
        tick(&mut writer, now, &[]);
        if i % 97 == 0 {
            check("tiers filling");
        }
    }
    check("every tier past capacity");

    // Series beyond max_series are refused, not stored.
    for s in 20..45 {
        assert_eq!(writer.series_id(&key(s), Unit::Count, now).unwrap(), None);
    }
    assert_eq!(writer.refused_series(), 25);
    check("series beyond max_series");

    // Restarts beyond max_runs.
    drop(writer);
    for _ in 0..3 * history.max_runs {
        now += 10 * SEC;
        let mut w = temp_writer(dir.path(), &history, now);
        for _ in 0..5 {
            now += SEC;
            tick(&mut w, now, &[]);
        }
    }
    check("restarts beyond max_runs");

    // Events beyond max_events: a steady stream of the longest messages
    // (cut to 512 bytes), three a second for ten minutes.
    let mut writer = temp_writer(dir.path(), &history, now);
    let message = "e".repeat(600);
    let event = |now: Ts| Event {
        ts_ms: now,
        probe: Some("svc0".into()),
        kind: "status".into(),
        from_status: Some("healthy".into()),
        to_status: Some("unhealthy".into()),
        message: message.clone(),
    };
    for i in 0..600 {
        now += SEC;
        tick(&mut writer, now, &[event(now), event(now), event(now)]);
        if i % 53 == 0 {
            check("events streaming");
        }
    }
    check("a stream of events beyond max_events");

    // A burst in one batch, as a recorder writes the events it kept while
    // the file refused writes; two minutes later retention has run.
    now += SEC;
    let burst: Vec<Event> = (0..100 * history.max_events).map(|_| event(now)).collect();
    tick(&mut writer, now, &burst);
    for _ in 0..120 {
        now += SEC;
        tick(&mut writer, now, &[]);
    }
    check("a burst of 100 x max_events events, two minutes later");
    report();
}

#[test]
fn a_wall_clock_stepped_back_an_hour_keeps_history_consistent() {
    let dir = temp_dir();
    let history = roomy();
    let mut feed = Feed::open(dir.path(), &history, 3, T0);
    let t = T0 + 90 * MIN;
    feed.run(T0, t);
    feed.check_last = false;

    // The clock steps back an hour and runs on for half an hour, with a
    // restart in the middle: every sample lands in buckets already written.
    let back = t - HOUR;
    let stats = feed.run(back, back + 15 * MIN);
    assert_eq!(
        (stats.samples, stats.late_samples),
        (3 * 900, 3 * 900),
        "every sample behind the watermark is merged into written buckets"
    );
    feed.crash();
    feed.reopen(back + 15 * MIN);
    let stats = feed.run(back + 15 * MIN, back + 30 * MIN);
    assert_eq!(stats.late_samples, 3 * 900);
    assert_eq!(integrity(dir.path()), "ok");
    assert_every_tier_reads_the_log(&feed, back + 30 * MIN);
    // The half hour seen twice reads as twice the samples, not as a gap.
    let reader = Reader::open(dir.path()).unwrap();
    let twice = tier_points(
        &reader,
        &key(0).to_string(),
        MIN,
        T0 + 31 * MIN + 37 * SEC,
        T0 + 59 * MIN + 37 * SEC,
        back + 30 * MIN,
    );
    assert_eq!(
        twice.iter().map(|p| p.count).collect::<Vec<_>>(),
        vec![120; 28]
    );

    // The clock comes back: samples go the ordinary way again.
    let forward = t + 30 * MIN;
    let stats = feed.run(forward, forward + 30 * MIN);
    assert_eq!(stats.late_samples, 0);
    assert_eq!(integrity(dir.path()), "ok");
    assert_every_tier_reads_the_log(&feed, forward + 30 * MIN);
    feed.idle(DAY_END + DAY + 5 * SEC);
    assert_every_tier_table_holds_the_log(&feed);
    assert_eq!(integrity(dir.path()), "ok");
}

#[test]
fn series_beyond_max_series_are_refused_and_counted() {
    let dir = temp_dir();
    let history = HistoryConfig {
        max_series: 3,
        ..HistoryConfig::default()
    };
    let mut writer = temp_writer(dir.path(), &history, T0);
    let long = SeriesKey::new("svc", &"x".repeat(300), &[]);
    assert_eq!(writer.series_id(&long, Unit::Count, T0).unwrap(), None);
    assert_eq!(
        writer.refused_series(),
        1,
        "a key over 256 bytes is refused"
    );
    let ids: Vec<Option<i64>> = (0..5)
        .map(|s| writer.series_id(&key(s), Unit::Count, T0).unwrap())
        .collect();
    assert!(ids[..3].iter().all(Option::is_some), "{ids:?}");
    assert_eq!(&ids[3..], &[None, None]);
    assert_eq!(writer.refused_series(), 3);
    // Series already stored keep their id at the limit.
    assert_eq!(writer.series_id(&key(1), Unit::Count, T0).unwrap(), ids[1]);
    assert_eq!(writer.refused_series(), 3);

    // The limit holds across a restart.
    drop(writer);
    let mut writer = temp_writer(dir.path(), &history, T0 + MIN);
    assert_eq!(
        writer.series_id(&key(7), Unit::Count, T0 + MIN).unwrap(),
        None
    );
    assert_eq!(
        writer.series_id(&key(2), Unit::Count, T0 + MIN).unwrap(),
        ids[2]
    );
    assert_eq!(writer.refused_series(), 1);
    let stored: i64 = history_sql(dir.path())
        .query_row("SELECT count(*) FROM series", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 3);
}

#[test]
fn a_refused_series_is_counted_once_however_often_it_reports() {
    // history.max_series: "Series beyond this many are not stored (counted
    // and logged once)". The recorder asks for the id of every pending
    // sample on every write, so a refused series asks once per sample.
    let dir = temp_dir();
    let history = HistoryConfig {
        max_series: 1,
        ..HistoryConfig::default()
    };
    let mut writer = temp_writer(dir.path(), &history, T0);
    assert!(
        writer
            .series_id(&key(0), Unit::Count, T0)
            .unwrap()
            .is_some()
    );
    for i in 0..10 {
        for s in 1..=2 {
            assert_eq!(
                writer
                    .series_id(&key(s), Unit::Count, T0 + i * SEC)
                    .unwrap(),
                None
            );
        }
    }
    assert_eq!(
        writer.refused_series(),
        2,
        "two series refused, ten times each"
    );
}

#[test]
fn last_is_the_value_with_the_newest_timestamp_even_when_it_arrives_first() {
    // `Agg::last_ts` exists "so that merging out of order keeps the newest":
    // the in-memory accumulators and the reader follow the timestamps, so
    // the tier rows must too, or `last` depends on when a bucket was written.
    let dir = temp_dir();
    let history = roomy();
    let mut feed = Feed::open(dir.path(), &history, 1, T0);
    feed.run(T0, T0 + 2 * MIN);
    // The clock steps back 39 s: the bucket [T0 + 77 s, T0 + 87 s) of the
    // 10 s tier is written already and gets a sample older than its last.
    let early = T0 + 80 * SEC;
    assert_ne!(value(0, early), value(0, T0 + 86 * SEC));
    feed.tick(early);
    let conn = history_sql(dir.path());
    let (count, last) = tier_buckets(&conn, "tier_10s", Some(feed.ids[0]))
        .into_iter()
        .find(|&(_, b, _)| b == T0 + 77 * SEC)
        .map(|(_, _, a)| (a.count, a.last))
        .expect("the bucket is written");
    assert_eq!(count, 11);
    assert_eq!(
        last,
        value(0, T0 + 86 * SEC),
        "last of the bucket is the value at its newest time, T0 + 86 s"
    );
}

#[test]
fn the_maintenance_ledger_stays_within_its_part_of_the_bound() {
    use upkeep::store::ledger::{
        self, Ledger, MAX_DETAIL_BYTES, MAX_RUNS, MAX_STEPS, RunStatus, Step, Trigger,
    };
    let dir = temp_dir();
    let l = Ledger::open(dir.path()).unwrap();
    let detail = "é".repeat(MAX_DETAIL_BYTES); // twice the byte cap
    let big = serde_json::json!({"text": "x".repeat(10 * ledger::MAX_JSON_BYTES)});
    let mut last = 0;
    for run in 0..MAX_RUNS + 20 {
        let id = l
            .start_run("audit-log", "postgres_retention", Trigger::Cli, false, run)
            .unwrap();
        for doc in [
            ledger::Doc::Plan,
            ledger::Doc::Backup,
            ledger::Doc::Verdict,
            ledger::Doc::Before,
            ledger::Doc::After,
        ] {
            l.set(id, doc, &big).unwrap();
        }
        for b in 0..MAX_STEPS + 30 {
            l.step(id, run, Step::Batch, Some(5000), Some(12), &detail)
                .unwrap();
            let _ = b;
        }
        l.step(id, run, Step::Validate, None, None, &detail)
            .unwrap();
        l.finish(id, run + 1, RunStatus::Succeeded, Some(&detail))
            .unwrap();
        last = id;
    }
    let conn = history_sql(dir.path());
    let (runs, steps): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM maintenance_runs), (SELECT count(*) FROM maintenance_steps)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(runs, MAX_RUNS);
    assert!(steps <= MAX_RUNS * MAX_STEPS, "{steps} steps");
    let (run, steps) = ledger::run(&conn, last).unwrap().unwrap();
    // Itemized batches, one note for the rest, then validate: within the cap.
    assert!(steps.len() as i64 <= MAX_STEPS, "{} steps", steps.len());
    assert!(
        steps.len() as i64 >= MAX_STEPS - 10,
        "{} steps",
        steps.len()
    );
    assert!(steps.iter().any(|s| s.step == "note"));
    assert_eq!(steps.last().unwrap().step, "validate");
    assert!(run.error.unwrap().len() <= MAX_DETAIL_BYTES);
    assert_eq!(run.plan.unwrap()["truncated"], true);
    let used: i64 = conn
        .query_row(
            "SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'maintenance%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let bound = ledger::bound_bytes() as i64;
    eprintln!("ledger at its limits: {used} bytes in use; bound {bound}");
    assert!(used <= bound, "{used} > {bound}");
}

#[test]
fn events_are_bounded_by_bytes_as_well_as_rows() {
    let dir = temp_dir();
    let mut history = roomy();
    history.max_events = 100_000;
    history.max_event_bytes = 64 * 1024;
    assert_valid_history(&history);
    let bound = tiers::size_bound(&history);
    let mut now = T0;
    let mut writer = temp_writer(dir.path(), &history, now);
    let event = |now: Ts, i: usize| Event {
        ts_ms: now,
        probe: Some("svc0".into()),
        kind: "status".into(),
        from_status: Some("healthy".into()),
        to_status: Some("unhealthy".into()),
        // Longer than the cap: stored cut to 512 bytes.
        message: format!("{i:06} {}", "e".repeat(600)),
    };
    // Far more rows than max_events would ever trim: bytes bind.
    let mut written = 0;
    for _ in 0..400 {
        now += SEC;
        let batch: Vec<Event> = (written..written + 5).map(|i| event(now, i)).collect();
        written += batch.len();
        writer.write(&[], &batch, now).expect("writing events");
    }
    // A burst of ten times the budget in one batch.
    now += SEC;
    let burst: Vec<Event> = (written..written + 1_300).map(|i| event(now, i)).collect();
    written += burst.len();
    writer.write(&[], &burst, now).expect("writing a burst");
    drop(writer);

    let conn = history_sql(dir.path());
    let (rows, stored_bytes, total, newest, longest): (i64, i64, i64, String, i64) = conn
        .query_row(
            "SELECT count(*),
                    sum(96 + 2 * length(probe) + length(kind) + length(from_status) + length(to_status) + length(message)),
                    (SELECT total FROM event_bytes),
                    (SELECT message FROM events ORDER BY id DESC LIMIT 1),
                    max(length(message))
             FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .expect("reading events");
    assert_eq!(longest, 512, "messages are cut to 512 bytes");
    assert_eq!(stored_bytes, total, "the counter is the rows' bytes");
    assert!(
        total as u64 <= history.max_event_bytes,
        "events take {total} bytes, over max_event_bytes {}",
        history.max_event_bytes
    );
    let one = 96 + 2 * 4 + 6 + 7 + 9 + 512;
    assert!(
        total as u64 > history.max_event_bytes - one,
        "the budget is used, not emptied: {total} bytes in {rows} rows"
    );
    assert!(
        newest.starts_with(&format!("{:06}", written - 1)),
        "the newest event is kept: {newest:.20}"
    );
    let table: i64 = conn
        .query_row(
            "SELECT sum(pgsize) FROM dbstat WHERE name IN ('events', 'events_by_probe')",
            [],
            |r| r.get(0),
        )
        .expect("dbstat");
    assert!(
        table as u64 <= bound.events,
        "the events' pages ({table} bytes) stay within their share of the bound ({} bytes)",
        bound.events
    );
}
