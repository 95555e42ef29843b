//! Read-only access to the history file for the CLI and the API. Opened with
//! `SQLITE_OPEN_READ_ONLY`: works while the agent writes and when it is
//! stopped. Each query runs in one read transaction, so it sees one
//! consistent state; buckets not yet written to a tier are rebuilt from the
//! tiers below and the journal, so a query sees every committed sample.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::chunk;
use super::tiers::{self, Agg, Tier, ceil_div};
use super::writer::decode;
use super::{FILE_NAME, StoreError, open_ro, sql_err};
use crate::analysis::uptime::{Interval, Transition};
use crate::sample::{Status, Ts};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesInfo {
    pub id: i64,
    pub key: String,
    pub probe: String,
    pub metric: String,
    pub labels: String,
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierInfo {
    pub table: String,
    pub step_ms: i64,
    pub span_ms: i64,
    pub watermark_ms: Ts,
}

/// One bucket of a query answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub ts_ms: Ts,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub count: i64,
    pub last: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryAnswer {
    pub series: SeriesInfo,
    /// The tier table the answer was read from.
    pub tier: String,
    pub step_ms: i64,
    pub since_ms: Ts,
    pub until_ms: Ts,
    pub points: Vec<Point>,
}

impl QueryAnswer {
    /// The bucket averages, as points for trend and forecast.
    pub fn averages(&self) -> Vec<crate::analysis::Point> {
        self.points
            .iter()
            .map(|p| crate::analysis::Point {
                ts: p.ts_ms,
                value: p.avg,
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub ts_ms: Ts,
    pub run_id: Option<i64>,
    pub probe: Option<String>,
    pub kind: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub message: String,
    /// The maintenance run that was changing things when this happened.
    pub maintenance_run: Option<i64>,
}

pub struct Reader {
    path: PathBuf,
    conn: Connection,
}

impl Reader {
    /// Opens `history.db` in `data_dir` read-only.
    pub fn open(data_dir: &Path) -> Result<Reader, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let conn = open_ro(&path)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql_err(&path))?;
        if !(super::MIN_READ_VERSION..=super::SCHEMA_VERSION).contains(&version) {
            return Err(StoreError::Invalid {
                path,
                message: format!(
                    "schema version {version}, this upkeep reads versions {} to {}",
                    super::MIN_READ_VERSION,
                    super::SCHEMA_VERSION
                ),
            });
        }
        Ok(Reader { path, conn })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
        sql_err(&self.path)
    }

    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn series(&self) -> Result<Vec<SeriesInfo>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, key, probe, metric, labels, unit FROM series ORDER BY key")
            .map_err(self.err())?;
        st.query_map([], series_row)
            .map_err(self.err())?
            .collect::<Result<_, _>>()
            .map_err(self.err())
    }

    pub fn series_by_key(&self, key: &str) -> Result<Option<SeriesInfo>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT id, key, probe, metric, labels, unit FROM series WHERE key = ?1",
            )
            .map_err(self.err())?
            .query_row([key], series_row)
            .optional()
            .map_err(self.err())
    }

    pub fn tiers(&self) -> Result<Vec<TierInfo>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT tbl, step_ms, span_ms, watermark_ms FROM tiers ORDER BY step_ms",
            )
            .map_err(self.err())?;
        st.query_map([], |r| {
            Ok(TierInfo {
                table: r.get(0)?,
                step_ms: r.get(1)?,
                span_ms: r.get(2)?,
                watermark_ms: r.get(3)?,
            })
        })
        .map_err(self.err())?
        .collect::<Result<_, _>>()
        .map_err(self.err())
    }

    /// Points of one series over `[since, until)`. The tier is chosen from the
    /// range and the wanted step (`tiers::choose`); with no step, the finest
    /// tier that answers in at most `max_points`. A step coarser than the
    /// tier's re-consolidates its buckets; the step is raised (to a multiple
    /// of the tier's) when the answer would exceed `max_points`.
    pub fn query(
        &self,
        key: &str,
        since: Ts,
        until: Ts,
        step_ms: Option<i64>,
        now: Ts,
        max_points: usize,
    ) -> Result<Option<QueryAnswer>, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(self.err())?;
        let Some(series) = self.series_by_key(key)? else {
            return Ok(None);
        };
        let infos = self.tiers()?;
        if infos.is_empty() {
            return Ok(None);
        }
        let tiers: Vec<Tier> = infos
            .iter()
            .map(|i| Tier {
                step_ms: i.step_ms,
                span_ms: i.span_ms,
                table: i.table.clone(),
            })
            .collect();
        let range = (until - since).max(1);
        let max_points = max_points.max(1) as i64;
        let wanted = step_ms.unwrap_or_else(|| ceil_div(range, max_points));
        let k = tiers::choose(&tiers, since, now, wanted.max(1));
        let tier_step = tiers[k].step_ms;
        let mut step = ceil_div(wanted.max(tier_step), tier_step) * tier_step;
        if ceil_div(range, step) > max_points {
            step = ceil_div(ceil_div(range, max_points), tier_step) * tier_step;
        }
        let marks: Vec<Ts> = infos.iter().map(|i| i.watermark_ms).collect();
        let from = tiers[k].bucket(since);
        let buckets = self.read_tier(&tiers, &marks, k, series.id, from, until)?;
        // Buckets come sorted: consecutive ones share a step bucket.
        let mut out: Vec<(Ts, Agg)> = Vec::with_capacity(buckets.len());
        for (b, agg) in buckets {
            merge_sorted(&mut out, b.div_euclid(step) * step, agg);
        }
        drop(tx);
        let points = out
            .into_iter()
            .map(|(ts_ms, a)| Point {
                ts_ms,
                avg: a.avg(),
                min: a.min,
                max: a.max,
                count: a.count,
                last: a.last,
            })
            .collect();
        Ok(Some(QueryAnswer {
            series,
            tier: tiers[k].table.clone(),
            step_ms: step,
            since_ms: since,
            until_ms: until,
            points,
        }))
    }

    /// Buckets of tier `k` in `[from, until)`: written rows below the tier's
    /// watermark, and above it the same buckets rebuilt from the tier below
    /// (or the journal, under the first tier).
    fn read_tier(
        &self,
        tiers: &[Tier],
        marks: &[Ts],
        k: usize,
        series: i64,
        from: Ts,
        until: Ts,
    ) -> Result<Vec<(Ts, Agg)>, StoreError> {
        let t = &tiers[k];
        let err = self.err();
        let mut out = Vec::new();
        let written_until = until.min(marks[k]);
        if from < written_until {
            let sql = chunk::range_sql(&t.table);
            let mut st = self.conn.prepare_cached(&sql).map_err(&err)?;
            out.reserve(((written_until - from) / t.step_ms).clamp(0, 1 << 20) as usize + 1);
            let mut rows = st
                .query(params![series, from - t.chunk_span_ms(), written_until])
                .map_err(&err)?;
            while let Some(r) = rows.next().map_err(&err)? {
                out.extend(chunk::row_buckets(r, t.step_ms, from, written_until).map_err(&err)?);
            }
        }
        if until > marks[k] {
            let lower_from = from.max(marks[k]);
            let lower = if k == 0 {
                self.read_journal(series, lower_from, until)?
            } else {
                self.read_tier(tiers, marks, k - 1, series, lower_from, until)?
            };
            for (b, agg) in lower {
                merge_sorted(&mut out, t.bucket(b), agg);
            }
        }
        Ok(out)
    }

    fn read_journal(&self, series: i64, from: Ts, until: Ts) -> Result<Vec<(Ts, Agg)>, StoreError> {
        let mut out = BTreeMap::new();
        let mut st = self
            .conn
            .prepare_cached("SELECT ts_ms, data FROM journal WHERE ts_ms >= ?1 AND ts_ms < ?2")
            .map_err(self.err())?;
        let mut rows = st.query(params![from, until]).map_err(self.err())?;
        while let Some(r) = rows.next().map_err(self.err())? {
            let ts: Ts = r.get(0).map_err(self.err())?;
            let data: Vec<u8> = r.get(1).map_err(self.err())?;
            for (s, v) in decode(&data) {
                if s == series {
                    let one = Agg::one(ts, v);
                    out.entry(ts)
                        .and_modify(|a: &mut Agg| a.merge(&one))
                        .or_insert(one);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Events, newest first, optionally of one probe, at most `limit`.
    pub fn events(
        &self,
        probe: Option<&str>,
        since: Ts,
        until: Ts,
        limit: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, ts_ms, run_id, probe, kind, from_status, to_status, message, maintenance_run FROM events
                 WHERE ts_ms >= ?1 AND ts_ms < ?2 AND (?3 IS NULL OR probe = ?3)
                 ORDER BY ts_ms DESC, id DESC LIMIT ?4",
            )
            .map_err(self.err())?;
        st.query_map(params![since, until, probe, limit as i64], |r| {
            Ok(EventRow {
                id: r.get(0)?,
                ts_ms: r.get(1)?,
                run_id: r.get(2)?,
                probe: r.get(3)?,
                kind: r.get(4)?,
                from_status: r.get(5)?,
                to_status: r.get(6)?,
                message: r.get(7)?,
                maintenance_run: r.get(8)?,
            })
        })
        .map_err(self.err())?
        .collect::<Result<_, _>>()
        .map_err(self.err())
    }

    /// Agent runs overlapping `[since, until)`, as observed intervals, each
    /// with its id.
    pub fn runs(&self, since: Ts, until: Ts) -> Result<Vec<(i64, Interval)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, started_ms, coalesce(stopped_ms, last_seen_ms) FROM agent_runs
                 WHERE started_ms < ?2 AND coalesce(stopped_ms, last_seen_ms) >= ?1 ORDER BY started_ms",
            )
            .map_err(self.err())?;
        st.query_map(params![since, until], |r| {
            Ok((
                r.get(0)?,
                Interval {
                    start: r.get(1)?,
                    end: r.get(2)?,
                },
            ))
        })
        .map_err(self.err())?
        .collect::<Result<_, _>>()
        .map_err(self.err())
    }

    /// Status transitions of one probe in the given runs.
    pub fn transitions(&self, probe: &str, run_ids: &[i64]) -> Result<Vec<Transition>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT ts_ms, to_status FROM events WHERE probe = ?1 AND kind = 'status' AND run_id = ?2 ORDER BY ts_ms")
            .map_err(self.err())?;
        let mut out = Vec::new();
        for id in run_ids {
            let rows = st
                .query_map(params![probe, id], |r| {
                    Ok((r.get::<_, Ts>(0)?, r.get::<_, Option<String>>(1)?))
                })
                .map_err(self.err())?;
            for row in rows {
                let (ts, to) = row.map_err(self.err())?;
                let status = to
                    .as_deref()
                    .and_then(Status::parse)
                    .unwrap_or(Status::Unknown);
                out.push(Transition { ts, status });
            }
        }
        Ok(out)
    }

    /// The newest run of each maintenance task.
    /// Silences not yet ended at `now` (none in a file before alerts).
    pub fn silences(&self, now: Ts) -> Result<Vec<super::alerts::Silence>, StoreError> {
        super::alerts::silences(&self.conn, now).map_err(self.err())
    }

    /// The alerts on record (pending or firing) as the agent last wrote them.
    pub fn alerts(&self) -> Result<Vec<super::alerts::AlertRow>, StoreError> {
        super::alerts::alert_rows(&self.conn).map_err(self.err())
    }

    /// Notifications waiting in the outbox, per notifier.
    pub fn outbox_pending(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        super::alerts::outbox_pending(&self.conn).map_err(self.err())
    }

    pub fn maintenance_last_runs(&self) -> Result<Vec<super::ledger::RunRow>, StoreError> {
        super::ledger::last_runs(&self.conn).map_err(self.err())
    }

    /// Maintenance runs, newest first, optionally of one task.
    pub fn maintenance_runs(
        &self,
        task: Option<&str>,
        limit: usize,
    ) -> Result<Vec<super::ledger::RunRow>, StoreError> {
        super::ledger::runs(&self.conn, task, limit).map_err(self.err())
    }

    /// One maintenance run with its steps.
    pub fn maintenance_run(
        &self,
        id: i64,
    ) -> Result<Option<(super::ledger::RunRow, Vec<super::ledger::StepRow>)>, StoreError> {
        super::ledger::run(&self.conn, id).map_err(self.err())
    }

    /// Names of probes that have recorded a status.
    pub fn probes(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT DISTINCT probe FROM events WHERE kind = 'status' AND probe IS NOT NULL ORDER BY probe")
            .map_err(self.err())?;
        st.query_map([], |r| r.get(0))
            .map_err(self.err())?
            .collect::<Result<_, _>>()
            .map_err(self.err())
    }
}

fn series_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SeriesInfo> {
    Ok(SeriesInfo {
        id: r.get(0)?,
        key: r.get(1)?,
        probe: r.get(2)?,
        metric: r.get(3)?,
        labels: r.get(4)?,
        unit: r.get(5)?,
    })
}

/// Adds `agg` at `bucket` to `out`, kept sorted by bucket; appending (the
/// usual case) is O(1).
fn merge_sorted(out: &mut Vec<(Ts, Agg)>, bucket: Ts, agg: Agg) {
    match out.last_mut() {
        Some((last, a)) if *last == bucket => a.merge(&agg),
        Some((last, _)) if *last > bucket => match out.binary_search_by_key(&bucket, |(b, _)| *b) {
            Ok(i) => out[i].1.merge(&agg),
            Err(i) => out.insert(i, (bucket, agg)),
        },
        _ => out.push((bucket, agg)),
    }
}
