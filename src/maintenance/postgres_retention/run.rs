//! A retention run in progress: the plan's and the backup's details as
//! they are kept in the ledger, the position in the key (or ctid) range,
//! and the batch itself — the range's end, the DELETE, the archive member
//! and the COMMIT, in that order.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;

use super::archive::{ArchiveReader, ArchiveWriter, MemberHeader};
use super::target::{self, Target};
use super::{Backup, Batch, MAX_BATCH, TaskError};
use crate::clients::postgres::{Session, timed};
use crate::fmt::{bytes, count};

/// `Backup::details` format of a gzip archive file.
pub(super) const FORMAT_FILE: &str = "jsonl.gz";
/// `Backup::details` format of an archive table.
pub(super) const FORMAT_TABLE: &str = "table";

/// The transaction id of a batch's DELETE, run after it in the same
/// transaction: none when the DELETE removed nothing (no id is taken for
/// an empty batch).
const XID_SQL: &str = "SELECT pg_current_xact_id_if_assigned()::text";

/// What a plan found, kept in `Plan::details`: all that the batches need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct PlanDetails {
    /// `schema.table`.
    pub(super) table: String,
    pub(super) timestamp_column: String,
    /// `timestamp`, `timestamptz` or `date`.
    pub(super) column_type: String,
    /// now − older_than on the server's clock, RFC 3339 UTC: fixed for the
    /// whole run.
    pub(super) cutoff: String,
    pub(super) older_than: String,
    /// The integer primary key batches are ranges of; none: ctid ranges.
    pub(super) key_column: Option<String>,
    /// First and last key (or ctid position, `page << 16 | item`) of the
    /// rows older than the cutoff.
    pub(super) range: Option<[i64; 2]>,
    pub(super) rows: u64,
    pub(super) batches: u64,
    pub(super) batch_size: u64,
    pub(super) archive_table: Option<String>,
}

/// What a backup is, kept in `Backup::details`: all that a rollback in
/// another process needs besides the location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct BackupDetails {
    /// `jsonl.gz` (a file, one gzip member per batch) or `table`.
    pub(super) format: String,
    pub(super) table: String,
    pub(super) key_column: Option<String>,
    pub(super) timestamp_column: String,
    pub(super) cutoff: String,
    /// The run whose rows these are (the archive table's `upkeep_run`).
    pub(super) run_id: i64,
    /// Batches written to the archive (gzip members), committed or not.
    pub(super) batches: u64,
}

/// A run in progress: where it is in the range and what it has archived.
pub(super) struct Run {
    pub(super) plan: PlanDetails,
    pub(super) target: Target,
    pub(super) run_id: i64,
    /// Key (or ctid position) range `[first, last]` of old rows, and where
    /// the next batch starts.
    pub(super) first: i64,
    pub(super) last: i64,
    pub(super) next: i64,
    /// Pages in which a ctid batch looks for its end, adapted from each
    /// batch's yield.
    pub(super) width: i64,
    pub(super) batch: u64,
    pub(super) deleted: u64,
    pub(super) archived: u64,
    pub(super) archive_bytes: u64,
    pub(super) members: u64,
    pub(super) writer: Option<ArchiveWriter>,
    pub(super) location: Option<String>,
    /// A batch written to the archive whose commit did not answer: its
    /// rows are in the archive and, unless it committed, in the table.
    pub(super) pending: Option<MemberHeader>,
    pub(super) done: bool,
    /// Validation's recount of old rows left in `[first, next)`: the
    /// figures after the run take it rather than walk the range again.
    pub(super) recounted: Option<u64>,
}

impl Run {
    pub(super) fn new(plan: PlanDetails, target: Target, run_id: i64) -> Run {
        let (first, last) = plan.range.map_or((0, -1), |[a, b]| (a, b));
        // Pages, for ctid batches.
        let span = ((last >> target::TID_SHIFT) - (first >> target::TID_SHIFT) + 1).max(1) as u128;
        let width = (span * plan.batch_size as u128)
            .div_ceil(plan.rows.max(1) as u128)
            .clamp(1, span) as i64;
        Run {
            done: plan.range.is_none(),
            plan,
            target,
            run_id,
            first,
            last,
            next: first,
            width,
            batch: 0,
            deleted: 0,
            archived: 0,
            archive_bytes: 0,
            members: 0,
            writer: None,
            location: None,
            pending: None,
            recounted: None,
        }
    }

    pub(super) fn table(&self) -> String {
        self.target.table.to_string()
    }

    /// `id 100 to 199` or `ctid (10,1) up to (19,4)` of `[lo, hi)`.
    pub(super) fn range_text(&self, lo: i64, hi: i64) -> String {
        match &self.target.key {
            Some(k) => format!("{k} {lo} to {}", hi - 1),
            None => format!(
                "ctid {} up to {}",
                target::tid_text(lo),
                target::tid_text(hi)
            ),
        }
    }

    pub(super) fn backup(&self) -> Option<Backup> {
        let (format, location) = match &self.target.archive {
            Some(a) => (FORMAT_TABLE, a.to_string()),
            None => (FORMAT_FILE, self.location.clone()?),
        };
        Some(Backup {
            location,
            rows: self.archived,
            bytes: self.archive_bytes,
            details: serde_json::to_value(BackupDetails {
                format: format.into(),
                table: self.plan.table.clone(),
                key_column: self.plan.key_column.clone(),
                timestamp_column: self.plan.timestamp_column.clone(),
                cutoff: self.plan.cutoff.clone(),
                run_id: self.run_id,
                batches: self.members,
            })
            .unwrap_or_default(),
        })
    }

    /// Learns how a batch whose commit did not answer ended.
    pub(super) async fn resolve_pending(&mut self, s: &Session) -> Result<(), TaskError> {
        let Some(h) = &self.pending else {
            return Ok(());
        };
        let status = xact_status(s, &h.xid).await.map_err(|e| {
            TaskError::failed(format!(
                "{}: learning whether batch {} committed: {e}",
                self.table(),
                h.batch
            ))
        })?;
        match status.as_deref() {
            Some("committed") => {
                self.deleted += h.rows;
                self.next = h.range[1];
                self.done = self.next > self.last;
            }
            // Its rows are still in the table; the archive's copy is
            // marked by the aborted transaction and never put back.
            Some("aborted") => {}
            Some("in progress") => {
                return Err(TaskError::failed(format!(
                    "{}: batch {}'s transaction {} is still open on the server",
                    self.table(),
                    h.batch,
                    h.xid
                )));
            }
            _ => {
                return Err(TaskError::failed(format!(
                    "{}: the server no longer knows whether batch {} (transaction {}) committed",
                    self.table(),
                    h.batch,
                    h.xid
                )));
            }
        }
        self.pending = None;
        Ok(())
    }

    /// One batch: the next range holding about `size` old rows, deleted
    /// and archived in one transaction.
    pub(super) async fn step(&mut self, s: &mut Session, size: u64) -> Result<Batch, TaskError> {
        self.resolve_pending(s).await?;
        if self.done {
            return Ok(Batch {
                rows: 0,
                archived: 0,
                detail: format!("{}: nothing left to delete", self.table()),
                done: true,
            });
        }
        let size = size.clamp(1, MAX_BATCH);
        let table = self.table();
        let fail = |what: String| TaskError::failed(format!("{table}: {what}"));
        let lo = self.next;
        // By ctid, the boundary is looked for within a window of pages
        // (the scan and sort stay small); by key, up to the last key.
        let window_end = match self.target.key {
            Some(_) => self.last + 1,
            None => lo
                .saturating_add(self.width << target::TID_SHIFT)
                .min(self.last + 1),
        };
        let finding = |e: String| fail(format!("finding the end of batch {}: {e}", self.batch + 1));
        let statement = s
            .prepared(&self.target.boundary_sql())
            .await
            .map_err(finding)?;
        let boundary = s
            .timed(s.client.query_opt(
                &statement,
                &[&lo, &(window_end - 1), &self.plan.cutoff, &(size as i64)],
            ))
            .await
            .map_err(finding)?
            .map(|r| r.get::<_, i64>(0));
        let hi = boundary.unwrap_or(window_end);
        self.batch += 1;
        let n = self.batch;
        let range = self.range_text(lo, hi);
        let (rows, archived) = match self.target.archive.clone() {
            Some(a) => {
                let moving =
                    |e: String| fail(format!("batch {n} ({range}): {e}; nothing was deleted"));
                let statement = s
                    .prepared(&self.target.move_sql(&a))
                    .await
                    .map_err(moving)?;
                let row = s
                    .timed(
                        s.client
                            .query_one(&statement, &[&lo, &hi, &self.plan.cutoff, &self.run_id]),
                    )
                    .await
                    .map_err(moving)?;
                let rows = row.get::<_, i64>(0) as u64;
                self.archived += rows;
                self.archive_bytes += row.get::<_, i64>(1) as u64;
                (rows, rows)
            }
            None => {
                let rows = self
                    .delete_archived(s, n, lo, hi)
                    .await
                    .map_err(|e| fail(format!("batch {n} ({range}): {e}")))?;
                (rows, rows)
            }
        };
        self.deleted += rows;
        self.next = hi;
        self.done = hi > self.last;
        if self.target.key.is_none() {
            // The next window: the pages this batch needed when it found
            // its boundary, else wider by what it lacked.
            let w = self.width as u128;
            let next = match boundary {
                Some(b) => ((b - lo) >> target::TID_SHIFT) as u128 + 1,
                None if rows == 0 => w * 4,
                None => (w * size as u128 / rows as u128).clamp(w, w * 4),
            };
            let span = ((self.last >> target::TID_SHIFT) - (self.first >> target::TID_SHIFT) + 1)
                .max(1) as u128;
            self.width = next.clamp(1, span) as i64;
        }
        let archive = match &self.target.archive {
            Some(a) => format!("moved to {a}"),
            None => format!(
                "archived ({} in the archive)",
                bytes(self.archive_bytes as f64)
            ),
        };
        Ok(Batch {
            rows,
            archived,
            detail: format!(
                "batch {n}: {range} of {table}: {} rows deleted and {archive}",
                count(rows)
            ),
            done: self.done,
        })
    }

    /// DELETE … RETURNING in a transaction, the rows written to the archive
    /// and fsynced, then COMMIT: a batch whose commit fails is in both.
    /// The DELETE and the query of its transaction id are prepared once
    /// and sent together: a batch waits on four round trips (its end, BEGIN,
    /// these two, COMMIT), each of which, on a busy server, waits for the
    /// backend to be scheduled.
    async fn delete_archived(
        &mut self,
        s: &mut Session,
        n: u64,
        lo: i64,
        hi: i64,
    ) -> Result<u64, String> {
        let limit = s.limit;
        let prepared = async {
            let delete = s.prepared(&self.target.delete_sql()).await?;
            let xid = s.prepared(XID_SQL).await?;
            Ok::<_, String>((delete, xid))
        };
        let (delete, xid) = prepared
            .await
            .map_err(|e| format!("{e}; nothing was deleted"))?;
        let tx = timed(limit, s.client.transaction())
            .await
            .map_err(|e| format!("{e}; nothing was deleted"))?;
        let written = async {
            let params: [&(dyn ToSql + Sync); 3] = [&lo, &hi, &self.plan.cutoff];
            let (rows, xid) = tokio::try_join!(
                timed(limit, tx.query(&delete, &params)),
                timed(limit, tx.query_one(&xid, &[])),
            )?;
            let rows: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            if rows.is_empty() {
                return Ok(None);
            }
            let xid: String = xid
                .get::<_, Option<String>>(0)
                .ok_or("the DELETE removed rows but its transaction has no id")?;
            let header = MemberHeader {
                batch: n,
                xid,
                rows: rows.len() as u64,
                range: [lo, hi],
            };
            let mut writer = self
                .writer
                .take()
                .ok_or("the archive is not open: backup must come before the batches")?;
            let h = header.clone();
            let (writer, written) = tokio::task::spawn_blocking(move || {
                let r = writer.append(&h, &rows);
                (writer, r)
            })
            .await
            .map_err(|e| format!("writing the archive: {e}"))?;
            let path = writer.path().display().to_string();
            self.archive_bytes = writer.len();
            self.writer = Some(writer);
            written.map_err(|e| format!("writing {path}: {e}"))?;
            Ok::<_, String>(Some(header))
        }
        .await
        .map_err(|e| format!("{e}; nothing was deleted"))?;
        let Some(header) = written else {
            timed(limit, tx.commit()).await?;
            return Ok(0);
        };
        self.archived += header.rows;
        self.members += 1;
        let rows = header.rows;
        self.pending = Some(header);
        timed(limit, tx.commit()).await.map_err(|e| {
            format!(
                "committing: {e}; its {} rows are in the archive and, unless the commit went \
                 through, still in the table",
                count(rows)
            )
        })?;
        self.pending = None;
        Ok(rows)
    }
}

/// `pg_xact_status` of a transaction: committed, aborted, in progress, or
/// `None` when the server no longer knows.
pub(super) async fn xact_status(s: &Session, xid: &str) -> Result<Option<String>, String> {
    Ok(s.timed(
        s.client
            .query_one("SELECT pg_xact_status($1::text::xid8)::text", &[&xid]),
    )
    .await?
    .get(0))
}

/// Rows of the archive file in committed and in uncommitted batches, and
/// why reading stopped early, if it did.
pub(super) async fn recount(s: &Session, path: &str) -> Result<(u64, u64, Option<String>), String> {
    let p = PathBuf::from(path);
    let (headers, incomplete) = tokio::task::spawn_blocking(move || {
        let mut reader = ArchiveReader::open(&p)?;
        let headers: Vec<MemberHeader> = std::iter::from_fn(|| reader.next_member())
            .map(|m| m.header)
            .collect();
        let incomplete = reader
            .incomplete()
            .map(|i| format!("at byte {}: {}", i.offset, i.error));
        Ok::<_, std::io::Error>((headers, incomplete))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("{path}: {e}"))?;
    let xids: Vec<&str> = headers.iter().map(|h| h.xid.as_str()).collect();
    let statuses = s
        .timed(s.client.query(
            "SELECT pg_xact_status(x::xid8)::text FROM unnest($1::text[]) WITH ORDINALITY AS u(x, i) \
             ORDER BY i",
            &[&xids],
        ))
        .await?;
    let (mut committed, mut uncommitted) = (0, 0);
    for (h, st) in headers.iter().zip(&statuses) {
        match st.get::<_, Option<String>>(0).as_deref() {
            Some("aborted") | Some("in progress") => uncommitted += h.rows,
            _ => committed += h.rows,
        }
    }
    Ok((committed, uncommitted, incomplete))
}
