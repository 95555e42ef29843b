//! Rollback of a `redis_cleanup` run: every key the backup file marks
//! removed is `RESTORE`d with the time it had left to live when it was
//! dumped, less the time since (a key whose expiry has passed meanwhile is
//! not brought back: it would have expired anyway). A key that exists
//! again is left alone and counted, unless `force` (`REPLACE`). The file
//! is read on a blocking thread and handed over one key at a time; the
//! restores go out in pipelines of at most [`super::DUMP_CAP`] bytes, so
//! that memory stays bounded by the cap plus one value.

use std::path::Path;

use ::redis::aio::MultiplexedConnection;
use serde_json::json;

use super::dump_file::{self, Saved};
use crate::maintenance::{TaskError, Verdict};

/// Keys per pipeline at most.
const PIPELINE_KEYS: usize = 500;

#[derive(Debug, Default, serde::Serialize)]
struct Tally {
    restored: u64,
    replaced: u64,
    exist_again: u64,
    expired: u64,
    failed: u64,
    first_error: Option<String>,
}

pub(super) async fn restore(
    conn: &mut MultiplexedConnection,
    server: &str,
    path: &Path,
    force: bool,
) -> Result<Verdict, TaskError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Saved>(1);
    let p = path.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        let flags = dump_file::removed_flags(&p)?;
        dump_file::for_each_removed(&p, &flags, |s| {
            tx.blocking_send(s)
                .map_err(|_| std::io::Error::other("the restore stopped"))
        })
    });
    let mut tally = Tally::default();
    let mut batch: Vec<Saved> = Vec::new();
    let mut held = 0u64;
    while let Some(s) = rx.recv().await {
        held += s.dump.len() as u64;
        batch.push(s);
        if held >= super::DUMP_CAP || batch.len() >= PIPELINE_KEYS {
            send(conn, server, &mut batch, force, &mut tally).await?;
            held = 0;
        }
    }
    send(conn, server, &mut batch, force, &mut tally).await?;
    reader
        .await
        .map_err(|e| TaskError::failed(e.to_string()))?
        .map_err(|e| TaskError::failed(format!("{}: {e}", path.display())))?;
    let ok = tally.failed == 0;
    let mut detail = format!(
        "restored {} keys with their remaining TTL",
        tally.restored + tally.replaced
    );
    if tally.replaced > 0 {
        detail.push_str(&format!(
            " ({} replacing a key written since, --force)",
            tally.replaced
        ));
    }
    if tally.exist_again > 0 {
        detail.push_str(&format!(
            "; {} exist again and were left alone (--force replaces them)",
            tally.exist_again
        ));
    }
    if tally.expired > 0 {
        detail.push_str(&format!(
            "; {} had expired since and were not restored",
            tally.expired
        ));
    }
    if let Some(e) = &tally.first_error {
        detail.push_str(&format!("; {} failed, the first: {e}", tally.failed));
    }
    Ok(Verdict {
        ok,
        detail,
        figures: json!(tally),
    })
}

async fn send(
    conn: &mut MultiplexedConnection,
    server: &str,
    batch: &mut Vec<Saved>,
    force: bool,
    tally: &mut Tally,
) -> Result<(), TaskError> {
    if batch.is_empty() {
        return Ok(());
    }
    let now = crate::sample::now_ms();
    let mut pipe = ::redis::pipe();
    pipe.ignore_errors();
    let mut sent = 0usize;
    for s in batch.iter() {
        let ttl = if s.expire_at_ms < 0 {
            0
        } else if s.expire_at_ms <= now {
            tally.expired += 1;
            continue;
        } else {
            s.expire_at_ms - now
        };
        // An existing key is checked apart: RESTORE ... REPLACE cannot say
        // whether it replaced one.
        pipe.cmd("EXISTS").arg(s.key.as_slice());
        let r = pipe
            .cmd("RESTORE")
            .arg(s.key.as_slice())
            .arg(ttl)
            .arg(s.dump.as_slice());
        if force {
            r.arg("REPLACE");
        }
        sent += 1;
    }
    batch.clear();
    if sent == 0 {
        return Ok(());
    }
    let results: Vec<::redis::RedisResult<::redis::Value>> = pipe
        .query_async(conn)
        .await
        .map_err(|e| TaskError::failed(format!("{server}: RESTORE: {e}")))?;
    for pair in results.chunks(2) {
        let existed = matches!(pair[0], Ok(::redis::Value::Int(1)));
        match &pair[1] {
            Ok(_) if existed => tally.replaced += 1,
            Ok(_) => tally.restored += 1,
            Err(e) if e.to_string().contains("BUSYKEY") => tally.exist_again += 1,
            Err(e) => {
                tally.failed += 1;
                tally
                    .first_error
                    .get_or_insert_with(|| format!("{server}: RESTORE: {e}"));
            }
        }
    }
    Ok(())
}
