//! Rollback of a retention run: the archived rows go back into the table,
//! a batch (gzip member, or chunk of the archive table) per transaction,
//! each checked back by count and md5 before it commits. Runs in any
//! process: everything it needs is in the `Backup` and the config.
//!
//! A file archive may hold a batch whose transaction never committed (the
//! run stopped between writing it and COMMIT): its rows are still in the
//! table, so it is skipped, by the status of the transaction recorded in
//! the member. The restore journal makes a repeated rollback skip the
//! members an earlier one put back.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use tokio_postgres::Transaction;

use super::archive::{self, ArchiveReader, Member, Restored};
use super::target::{ArchiveTable, Target};
use super::{BackupDetails, FORMAT_FILE, FORMAT_TABLE, RetentionConfig, xact_status};
use crate::clients::postgres::{Session, timed};
use crate::fmt::count;
use crate::maintenance::{Backup, TaskError, Verdict};

/// What a rollback did so far.
#[derive(Debug, Default)]
struct Tally {
    /// Batches read from the archive.
    batches: u64,
    /// Rows that must be back: those of committed batches.
    expected: u64,
    /// Rows inserted now.
    inserted: u64,
    /// Rows checked back in the table (by count and md5).
    back: u64,
    /// Rows of batches that never committed (still in the table).
    skipped: u64,
    /// Batches an earlier rollback had put back.
    earlier: u64,
    /// Why a batch could not be put back whole; the rollback stops there.
    mismatch: Option<String>,
    incomplete: Option<String>,
}

/// One batch checked back: the archived rows' count and md5, and those of
/// the same rows read back from the table.
struct Check {
    archived: i64,
    archived_md5: String,
    back: i64,
    back_md5: String,
}

impl Check {
    fn whole(&self) -> bool {
        self.archived == self.back && self.archived_md5 == self.back_md5
    }
}

pub(super) async fn rollback(
    s: &mut Session,
    config: &RetentionConfig,
    backup: &Backup,
) -> Result<Verdict, TaskError> {
    let details: BackupDetails = serde_json::from_value(backup.details.clone())
        .map_err(|e| TaskError::failed(format!("not a retention backup: {e}")))?;
    let target = Target::resolve(s, config).await?;
    let table = target.table.to_string();
    if table != details.table {
        return Err(TaskError::failed(format!(
            "the backup holds rows of {}, but the task's table is {table}",
            details.table
        )));
    }
    let fail = |e: String| TaskError::failed(format!("{table}: rollback: {e}"));
    let started = Instant::now();
    let mut tally = Tally::default();
    match details.format.as_str() {
        FORMAT_FILE => {
            from_file(s, &target, Path::new(&backup.location), &mut tally)
                .await
                .map_err(fail)?;
            if tally.batches < details.batches {
                tally.mismatch.get_or_insert(format!(
                    "the archive holds {} readable batches of the {} written",
                    tally.batches, details.batches
                ));
            }
        }
        FORMAT_TABLE => {
            let archive = target.archive.clone().ok_or_else(|| {
                fail(format!(
                    "the backup is in table {}, but the task has no archive_table",
                    backup.location
                ))
            })?;
            if archive.to_string() != backup.location {
                return Err(fail(format!(
                    "the backup is in table {}, but archive_table is {archive}",
                    backup.location
                )));
            }
            from_table(s, &target, &archive, details.run_id, &mut tally)
                .await
                .map_err(fail)?;
        }
        other => return Err(fail(format!("unknown backup format {other}"))),
    }
    let seconds = started.elapsed().as_secs_f64();
    let ok = tally.mismatch.is_none() && tally.back == tally.expected;
    let mut detail = format!(
        "{table}: {} of {} archived rows are back ({} inserted now) from {}, checked by count \
         and md5",
        count(tally.back),
        count(tally.expected),
        count(tally.inserted),
        backup.location
    );
    if tally.skipped > 0 {
        detail += &format!(
            "; {} rows of batches that never committed were still in the table",
            count(tally.skipped)
        );
    }
    if let Some(m) = &tally.mismatch {
        detail += &format!("; stopped: {m}");
    }
    if let Some(i) = &tally.incomplete {
        detail += &format!("; {i}");
    }
    Ok(Verdict {
        ok,
        detail,
        figures: json!({
            "table": table,
            "archived_rows": tally.expected,
            "rows_back": tally.back,
            "rows_inserted": tally.inserted,
            "uncommitted_rows_skipped": tally.skipped,
            "batches": tally.batches,
            "batches_restored_earlier": tally.earlier,
            "seconds": seconds,
        }),
    })
}

async fn from_file(
    s: &mut Session,
    target: &Target,
    path: &Path,
    tally: &mut Tally,
) -> Result<(), String> {
    let journal = path.with_file_name(archive::JOURNAL_NAME);
    let earlier = restored_earlier(s, &journal).await?;
    let p = path.to_path_buf();
    let mut reader = tokio::task::spawn_blocking(move || ArchiveReader::open(&p))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    loop {
        let (r, member) = tokio::task::spawn_blocking(move || {
            let m = reader.next_member();
            (reader, m)
        })
        .await
        .map_err(|e| e.to_string())?;
        reader = r;
        let Some(member) = member else { break };
        tally.batches += 1;
        let h = &member.header;
        match xact_status(s, &h.xid).await?.as_deref() {
            Some("aborted") => {
                tally.skipped += h.rows;
                continue;
            }
            Some("in progress") => {
                return Err(format!(
                    "batch {}'s transaction {} is still open: is the run still going?",
                    h.batch, h.xid
                ));
            }
            // Committed, or too old for the server to know: put back;
            // ON CONFLICT skips rows still there.
            _ => {}
        }
        tally.expected += h.rows;
        if earlier.contains(&h.batch) {
            tally.earlier += 1;
            let c = check(&s.client, s.limit, target, &member.rows).await?;
            if !record(tally, &member, &c, 0) {
                break;
            }
            continue;
        }
        if !put_back_member(s, target, &journal, &member, tally).await? {
            break;
        }
    }
    if let Some(i) = reader.incomplete() {
        tally.incomplete = Some(format!(
            "the archive ends in an incomplete batch at byte {} ({}), written when a run \
             stopped before that batch committed",
            i.offset, i.error
        ));
    }
    Ok(())
}

/// Batches an earlier rollback put back: journal entries whose
/// transaction committed.
async fn restored_earlier(s: &Session, journal: &Path) -> Result<HashSet<u64>, String> {
    let j = journal.to_path_buf();
    let entries = tokio::task::spawn_blocking(move || archive::journal_read(&j))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", journal.display()))?;
    let mut out = HashSet::new();
    for e in entries {
        if xact_status(s, &e.xid).await?.as_deref() == Some("committed") {
            out.insert(e.batch);
        }
    }
    Ok(out)
}

/// One member back in one transaction, recorded in the journal before
/// it commits. False when the member could not be put back whole.
async fn put_back_member(
    s: &mut Session,
    target: &Target,
    journal: &Path,
    member: &Member,
    tally: &mut Tally,
) -> Result<bool, String> {
    let limit = s.limit;
    let tx = timed(limit, s.client.transaction()).await?;
    let xid: String = timed(
        limit,
        tx.query_one("SELECT pg_current_xact_id()::text", &[]),
    )
    .await?
    .get(0);
    let entry = Restored {
        batch: member.header.batch,
        xid,
    };
    let j: PathBuf = journal.to_path_buf();
    tokio::task::spawn_blocking(move || archive::journal_append(&j, &entry))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", journal.display()))?;
    let (inserted, c) = insert_and_check(&tx, limit, target, &member.rows).await?;
    finish(tx, limit, record(tally, member, &c, inserted)).await
}

async fn from_table(
    s: &mut Session,
    target: &Target,
    archive: &ArchiveTable,
    run_id: i64,
    tally: &mut Tally,
) -> Result<(), String> {
    const CHUNK: i64 = 5000;
    let limit = s.limit;
    let take = target.take_archived_sql(archive);
    loop {
        let tx = timed(limit, s.client.transaction()).await?;
        let rows: Vec<String> = timed(limit, tx.query(&take, &[&run_id, &CHUNK]))
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if rows.is_empty() {
            timed(limit, tx.commit()).await?;
            return Ok(());
        }
        tally.batches += 1;
        tally.expected += rows.len() as u64;
        let (inserted, c) = insert_and_check(&tx, limit, target, &rows).await?;
        let member = Member {
            header: archive::MemberHeader {
                batch: tally.batches,
                xid: String::new(),
                rows: rows.len() as u64,
                range: [0, 0],
            },
            rows,
        };
        // A chunk not put back whole stays in the archive table.
        if !finish(tx, limit, record(tally, &member, &c, inserted)).await? {
            return Ok(());
        }
    }
}

/// Commits when `whole`, else rolls back; returns `whole`.
async fn finish(
    tx: Transaction<'_>,
    limit: std::time::Duration,
    whole: bool,
) -> Result<bool, String> {
    if whole {
        timed(limit, tx.commit()).await?;
    } else {
        timed(limit, tx.rollback()).await?;
    }
    Ok(whole)
}

/// Adds a checked batch to the tally; false (and the reason kept) when it
/// is not back whole.
fn record(tally: &mut Tally, member: &Member, c: &Check, inserted: u64) -> bool {
    if !c.whole() {
        tally.mismatch = Some(format!(
            "batch {}: {} archived rows (md5 {}), {} of them found in the table (md5 {}): \
             another row has taken the key of an archived one; that batch was not put back",
            member.header.batch, c.archived, c.archived_md5, c.back, c.back_md5
        ));
        return false;
    }
    tally.inserted += inserted;
    tally.back += c.back as u64;
    true
}

async fn insert_and_check(
    tx: &Transaction<'_>,
    limit: std::time::Duration,
    target: &Target,
    rows: &[String],
) -> Result<(u64, Check), String> {
    let inserted = timed(limit, tx.execute(&target.insert_sql(), &[&rows])).await?;
    let c = check(tx, limit, target, rows).await?;
    Ok((inserted, c))
}

async fn check(
    c: &impl tokio_postgres::GenericClient,
    limit: std::time::Duration,
    target: &Target,
    rows: &[String],
) -> Result<Check, String> {
    let row = timed(limit, c.query_one(&target.check_sql(), &[&rows])).await?;
    Ok(Check {
        archived: row.get(0),
        archived_md5: row.get(1),
        back: row.get(2),
        back_md5: row.get(3),
    })
}
