//! Salvage of a damaged history file: instead of discarding the whole file
//! when its integrity check fails, every table is copied, row by row, into
//! a fresh file, skipping the rows on pages that no longer read back. The
//! damaged file is then moved aside unchanged, the fresh one takes its
//! place, and the caller records what was lost in an event.
//!
//! Every table of the file is a rowid table, read in rowid order through
//! the table's own b-tree (`NOT INDEXED`, so a damaged index page costs
//! nothing). A seek to rowid `r` only visits the pages on the path to `r`,
//! so when a read fails the copy looks for the smallest rowid past the last
//! good one whose seek works again (first by doubling, then by halving the
//! gap: the seeks that fail are exactly those that land in the damaged
//! subtree), and goes on from there. The rowids skipped are reported: for
//! tables numbered densely (events, runs, steps) they bound the rows lost.
//!
//! SQLite's own recover extension is not part of the bundled library; this
//! needs nothing beyond plain reads.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, params_from_iter};

use super::{StoreError, chunk, migrate, move_aside, open_rw, sql_err};
use crate::sample::Ts;

/// Rows read per statement: a failure costs at most this much re-reading.
const BATCH: i64 = 512;
/// Rowid ranges named per table in the event (an event's message is capped).
const MAX_RANGES: usize = 4;

/// What the salvage of one table kept and lost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableSalvage {
    pub table: String,
    pub kept: u64,
    /// Rowid ranges (inclusive) that did not read back.
    pub skipped: Vec<(i64, i64)>,
    /// Why the table could not be read at all, when it could not.
    pub unreadable: Option<String>,
}

/// What a salvage kept, table by table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Salvage {
    /// Where the damaged file now is.
    pub aside: PathBuf,
    /// Why the damaged file could not be read at all, when it could not.
    pub unreadable: Option<String>,
    pub tables: Vec<TableSalvage>,
}

impl Salvage {
    /// The tables that lost rows, or all of them.
    pub fn losses(&self) -> Vec<&TableSalvage> {
        self.tables
            .iter()
            .filter(|t| !t.skipped.is_empty() || t.unreadable.is_some())
            .collect()
    }

    /// What was lost, table by table ("nothing" when every row read back).
    pub fn lost(&self) -> String {
        if let Some(why) = &self.unreadable {
            return format!("everything: nothing could be read from it ({why})");
        }
        let losses = self.losses();
        if losses.is_empty() {
            return "nothing: every row read back".to_string();
        }
        let lost: Vec<String> = losses
            .iter()
            .map(|t| {
                if let Some(why) = &t.unreadable {
                    return format!("table {} (unreadable: {why})", t.table);
                }
                let mut l = format!("table {} rows with rowid ", t.table);
                // A few ranges name the place; the bound counts them all.
                let ranges: Vec<String> = t
                    .skipped
                    .iter()
                    .take(MAX_RANGES)
                    .map(|&(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}..={b}")
                        }
                    })
                    .collect();
                l += &ranges.join(", ");
                if t.skipped.len() > MAX_RANGES {
                    let _ = write!(l, " and {} more ranges", t.skipped.len() - MAX_RANGES);
                }
                let _ = write!(l, " (at most {} rows)", t.lost_at_most());
                l
            })
            .collect();
        lost.join("; ")
    }

    /// What was kept: rows per table.
    pub fn kept(&self) -> String {
        if self.tables.is_empty() {
            return "no rows".to_string();
        }
        let kept: Vec<String> = self
            .tables
            .iter()
            .map(|t| format!("{} {}", t.table, t.kept))
            .collect();
        format!("{} rows", kept.join(", "))
    }
}

impl TableSalvage {
    /// Rowids skipped: an upper bound of the rows lost.
    pub fn lost_at_most(&self) -> u64 {
        self.skipped
            .iter()
            .map(|&(a, b)| (b as i128 - a as i128 + 1) as u64)
            .sum()
    }
}

/// Copies what reads back of the damaged file at `path` into a fresh file,
/// moves the damaged one aside (its bytes untouched) and puts the fresh
/// one in its place. The fresh file has the current schema.
pub(crate) fn salvage(path: &Path, now: Ts) -> Result<Salvage, StoreError> {
    let fresh = PathBuf::from(format!("{}.salvage", path.display()));
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", fresh.display()));
    }
    let mut out = open_rw(&fresh)?;
    migrate(&mut out, &fresh)?;
    let mut report = Salvage::default();
    // Reading a WAL-mode file makes its -wal and -shm files: those that
    // were not there before are removed again, so that only the damaged
    // file's own files are moved aside.
    let companions: Vec<PathBuf> = ["-wal", "-shm"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", path.display())))
        .filter(|p| !p.exists())
        .collect();
    match open_damaged(path) {
        Ok(src) => {
            copy_all(&src, &out, &fresh, &mut report)?;
        }
        Err(e) => report.unreadable = Some(e.to_string()),
    }
    for p in companions {
        let _ = std::fs::remove_file(p);
    }
    // Everything copied is in the main file before it is put in place.
    out.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(sql_err(&fresh))?;
    drop(out);
    report.aside = move_aside(path, now)?;
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", fresh.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", path.display()));
            std::fs::rename(&from, &to).map_err(|source| StoreError::Io {
                path: from.clone(),
                source,
            })?;
        }
    }
    Ok(report)
}

/// The damaged file, read-only so that its bytes stay as they were.
fn open_damaged(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The schema itself must read.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    Ok(conn)
}

fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
    st.query_map([], |r| r.get::<_, String>(1))?.collect()
}

/// The column that is the rowid under another name (`INTEGER PRIMARY
/// KEY`), if the table has one.
fn rowid_alias(conn: &Connection, table: &str) -> rusqlite::Result<Option<String>> {
    let mut st = conn.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
    let keys: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get::<_, i64>(5)?)))?
        .filter_map(|c| match c {
            Ok((name, ty, pk)) if pk > 0 => Some(Ok((name, ty))),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<rusqlite::Result<_>>()?;
    Ok(match keys.as_slice() {
        [(name, ty)] if ty.eq_ignore_ascii_case("INTEGER") => Some(name.clone()),
        _ => None,
    })
}

fn copy_all(
    src: &Connection,
    out: &Connection,
    fresh: &Path,
    report: &mut Salvage,
) -> Result<(), StoreError> {
    let tables: Vec<String> = match src
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rootpage",
        )
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
    {
        Ok(t) => t,
        Err(e) => {
            report.unreadable = Some(e.to_string());
            return Ok(());
        }
    };
    for table in tables {
        let mut t = TableSalvage {
            table: table.clone(),
            ..TableSalvage::default()
        };
        let is_tier = table.starts_with("tier_");
        if is_tier {
            out.execute_batch(&chunk::tier_table_sql(&table))
                .map_err(sql_err(fresh))?;
        }
        let theirs = match columns(src, &table) {
            Ok(c) => c,
            Err(e) => {
                t.unreadable = Some(e.to_string());
                report.tables.push(t);
                continue;
            }
        };
        let ours = columns(out, &table).map_err(sql_err(fresh))?;
        if ours.is_empty() {
            // Not a table of this schema (a leftover of a conversion): not copied.
            continue;
        }
        if is_tier
            && !["series", "chunk_ms", "data"]
                .iter()
                .all(|c| theirs.iter().any(|t| t == c))
        {
            t.unreadable = Some("not in the chunk row format".into());
            report.tables.push(t);
            continue;
        }
        // The rowid is copied as it is (so rows keep their ids and order),
        // the column that merely names it is not copied twice.
        let alias = rowid_alias(out, &table).map_err(sql_err(fresh))?;
        let common: Vec<String> = ours
            .into_iter()
            .filter(|c| theirs.contains(c) && Some(c) != alias.as_ref())
            .collect();
        copy_table(src, out, &table, &common, &mut t).map_err(sql_err(fresh))?;
        report.tables.push(t);
    }
    Ok(())
}

/// Copies `cols` of every row of `table` that reads back. Errors are those
/// of the fresh file; the damaged one's are skipped over.
fn copy_table(
    src: &Connection,
    out: &Connection,
    table: &str,
    cols: &[String],
    t: &mut TableSalvage,
) -> rusqlite::Result<()> {
    let list = cols
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let read_sql = format!(
        "SELECT rowid, {list} FROM \"{table}\" NOT INDEXED WHERE rowid >= ?1 ORDER BY rowid LIMIT ?2"
    );
    let marks = vec!["?"; cols.len() + 1].join(", ");
    let tx = out.unchecked_transaction()?;
    let mut put = tx.prepare(&format!(
        "INSERT OR IGNORE INTO \"{table}\" (rowid, {list}) VALUES ({marks})"
    ))?;
    let mut read = match src.prepare(&read_sql) {
        Ok(st) => st,
        Err(e) => {
            t.unreadable = Some(e.to_string());
            drop(put);
            return tx.commit();
        }
    };
    let mut from = i64::MIN;
    loop {
        let mut last: Option<i64> = None;
        let mut failed = false;
        let mut n = 0;
        match read.query(rusqlite::params![from, BATCH]) {
            Err(_) => failed = true,
            Ok(mut rows) => loop {
                match rows.next() {
                    Ok(Some(r)) => {
                        let got: rusqlite::Result<(i64, Vec<Value>)> = (|| {
                            let id = r.get(0)?;
                            let vals = (1..=cols.len())
                                .map(|i| r.get::<_, Value>(i))
                                .collect::<rusqlite::Result<_>>()?;
                            Ok((id, vals))
                        })();
                        let Ok((id, vals)) = got else {
                            failed = true;
                            break;
                        };
                        let row = std::iter::once(Value::Integer(id)).chain(vals);
                        match put.execute(params_from_iter(row)) {
                            Ok(_) => t.kept += 1,
                            // A row that reads but does not fit its table
                            // (damaged values) is lost like an unreadable one.
                            Err(e)
                                if matches!(
                                    e.sqlite_error_code(),
                                    Some(ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch)
                                ) =>
                            {
                                t.skipped.push((id, id))
                            }
                            Err(e) => return Err(e),
                        }
                        last = Some(id);
                        n += 1;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            },
        }
        let after = match last {
            Some(id) if id == i64::MAX => break,
            Some(id) => id + 1,
            None => from,
        };
        if failed {
            match resume(src, table, after, t) {
                Some(next) => from = next,
                None => break,
            }
        } else if n < BATCH {
            break;
        } else {
            from = after;
        }
    }
    drop(read);
    drop(put);
    tx.commit()
}

/// Whether a read of `table` from rowid `from` on works.
fn readable(src: &Connection, table: &str, from: i64) -> bool {
    src.query_row(
        &format!(
            "SELECT rowid FROM \"{table}\" NOT INDEXED WHERE rowid >= ?1 ORDER BY rowid LIMIT 1"
        ),
        [from],
        |_| Ok(()),
    )
    .map(|_| true)
    .unwrap_or_else(|e| e == rusqlite::Error::QueryReturnedNoRows)
}

/// After a failed read at `bad`: the smallest rowid past it from which a
/// read works, recording the rowids skipped; `None` when nothing past it
/// reads back.
fn resume(src: &Connection, table: &str, bad: i64, t: &mut TableSalvage) -> Option<i64> {
    // Doubling, then halving: seeks that fail are those into the damaged
    // subtree, a range of rowids starting at `bad`.
    let mut gap: i64 = 1;
    let good = loop {
        let at = bad.checked_add(gap);
        match at {
            Some(at) if readable(src, table, at) => break at,
            Some(_) if gap < i64::MAX / 2 => gap *= 2,
            _ => {
                if readable(src, table, i64::MAX) {
                    break i64::MAX;
                }
                t.skipped.push((bad, i64::MAX));
                return None;
            }
        }
    };
    let (mut lo, mut hi) = (bad, good); // lo fails, hi works
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if readable(src, table, mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // The first rowid that reads back past the damage bounds what was lost.
    let next = src
        .query_row(
            &format!(
                "SELECT rowid FROM \"{table}\" NOT INDEXED WHERE rowid >= ?1 ORDER BY rowid LIMIT 1"
            ),
            [hi],
            |r| r.get::<_, i64>(0),
        )
        .ok();
    match next {
        Some(n) => {
            t.skipped.push((bad, n - 1));
            Some(n)
        }
        None => {
            // Past the damage there is nothing more: the rows lost are
            // those up to the table's largest rowid, if that reads.
            let max: Option<i64> = src
                .query_row(&format!("SELECT max(rowid) FROM \"{table}\""), [], |r| {
                    r.get(0)
                })
                .ok()
                .flatten();
            t.skipped.push((bad, max.unwrap_or(hi - 1).max(bad)));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_losses_name_each_table_and_the_rowids_lost() {
        let mut s = Salvage {
            aside: PathBuf::from("x"),
            unreadable: None,
            tables: vec![
                TableSalvage {
                    table: "series".into(),
                    kept: 3,
                    ..TableSalvage::default()
                },
                TableSalvage {
                    table: "events".into(),
                    kept: 90,
                    skipped: vec![(11, 20), (40, 40)],
                    unreadable: None,
                },
            ],
        };
        assert_eq!(
            s.lost(),
            "table events rows with rowid 11..=20, 40 (at most 11 rows)"
        );
        assert_eq!(s.kept(), "series 3, events 90 rows");
        s.tables[1].skipped = (0..6).map(|i| (i * 10, i * 10)).collect();
        assert_eq!(
            s.lost(),
            "table events rows with rowid 0, 10, 20, 30 and 2 more ranges (at most 6 rows)"
        );
        s.tables.truncate(1);
        assert_eq!(s.lost(), "nothing: every row read back");
    }
}
