//! One batch of a `redis_cleanup` run: SCAN finds planned keys
//! (`fill_queue`), the dump script dumps those still as planned, each dump
//! goes to the backup file, which is fsynced (`dump_and_save`), then the
//! removal script unlinks the keys still as dumped and the batch's mark
//! says which (`batch_with`). Called by the task's `apply_batch`.

use ::redis::Value;

use super::{CleanupTask, DUMP_CAP, Run, State, hex_fp, key_hash, now_ms, scripts};
use crate::maintenance::{Batch, TaskError};

impl CleanupTask {
    /// Fills the queue with planned keys found by SCAN, up to `size`.
    pub(super) async fn fill_queue(&mut self, size: u64) -> Result<(), TaskError> {
        loop {
            let run = self.run.as_ref().expect("a run");
            if run.scan_done || run.queue.len() as u64 >= size {
                return Ok(());
            }
            let cursor = run.cursor;
            let (next, keys) = self.scan_page(cursor, size).await?;
            let run = self.run.as_mut().expect("a run");
            for k in keys {
                if let Some(e) = run.planned.get_mut(&key_hash(&k))
                    && e.1 == State::Planned
                {
                    e.1 = State::Queued;
                    run.queue.push_back(k);
                }
            }
            run.cursor = next;
            run.scan_done = next == 0;
        }
    }

    pub(super) async fn batch_with(&mut self, size: u64) -> Result<Batch, TaskError> {
        if self.run.is_none() {
            return Err(TaskError::failed("batch before plan"));
        }
        self.fill_queue(size).await?;
        let run = self.run.as_mut().expect("a run");
        let n = (size as usize).min(run.queue.len());
        let keys: Vec<Vec<u8>> = run.queue.drain(..n).collect();
        let before = run.counts.clone();
        let dumped = self.dump_and_save(&keys).await?;
        let codes: Vec<i64> = if dumped.is_empty() {
            Vec::new()
        } else {
            let (names, args): (Vec<Vec<u8>>, Vec<[String; 2]>) = dumped.into_iter().unzip();
            let args: Vec<String> = args.into_iter().flatten().collect();
            let cmd = Self::eval(scripts::REMOVE, &names, &args);
            let codes: Vec<i64> = self.query("removal script", &cmd).await?;
            let run = self.run.as_mut().expect("a run");
            for (k, code) in names.iter().zip(&codes) {
                let c = &mut run.counts;
                match code {
                    1 => c.removed += 1,
                    0 => c.vanished += 1,
                    2 => c.changed += 1,
                    _ => c.ttl_changed += 1,
                }
                if let Some(e) = run.planned.get_mut(&key_hash(k)) {
                    e.1 = if *code == 1 {
                        State::Removed
                    } else {
                        State::Skipped
                    };
                }
            }
            codes
        };
        let run = self.run.as_mut().expect("a run");
        if let Some(w) = run.writer.as_mut() {
            let flags: Vec<bool> = codes.iter().map(|c| *c == 1).collect();
            w.mark(&flags)
                .map_err(|e| TaskError::failed(format!("backup file: {e}")))?;
        }
        let done = run.scan_done && run.queue.is_empty();
        if done {
            // SCAN returns every key present from its start to its end: a
            // planned key it never returned was gone before its batch.
            for e in run.planned.values_mut().filter(|e| e.1 == State::Planned) {
                e.1 = State::Unseen;
                run.counts.vanished += 1;
            }
        }
        let c = &run.counts;
        let removed = c.removed - before.removed;
        let detail = format!(
            "unlinked {removed} of {} keys; skipped {} changed, {} vanished, {} used since the plan, {} with a changed TTL",
            keys.len(),
            c.changed - before.changed,
            c.vanished - before.vanished,
            c.used - before.used,
            c.ttl_changed - before.ttl_changed,
        );
        let mut detail = detail;
        if done && self.config.memory_purge {
            let purge = match self
                .query::<Value>("MEMORY PURGE", &::redis::cmd("MEMORY").arg("PURGE").clone())
                .await
            {
                Ok(_) => "MEMORY PURGE done".to_string(),
                Err(e) => format!("MEMORY PURGE not done: {e}"),
            };
            detail.push_str(&format!("; {purge}"));
            self.run.as_mut().expect("a run").purge = Some(purge);
        }
        Ok(Batch {
            rows: removed,
            archived: removed,
            detail,
            done,
        })
    }

    /// Dumps `keys` (those still as planned), writes each to the backup
    /// file and fsyncs it. Returns the keys to remove with the removal
    /// script's arguments (fingerprint, had an expiry).
    pub(super) async fn dump_and_save(
        &mut self,
        keys: &[Vec<u8>],
    ) -> Result<Vec<(Vec<u8>, [String; 2])>, TaskError> {
        let c = &self.config;
        let idle = c.idle_longer_than.map(|d| d.as_secs() as i64).unwrap_or(-1);
        let want = c.backup;
        let mut out = Vec::new();
        let mut at = 0;
        while at < keys.len() {
            let run = self.run.as_ref().expect("a run");
            let mut args = vec![
                idle.to_string(),
                DUMP_CAP.to_string(),
                if want { "1" } else { "0" }.to_string(),
            ];
            for k in &keys[at..] {
                let fp = run.planned.get(&key_hash(k)).map(|e| e.0).unwrap_or(0);
                args.push(if run.fingerprints {
                    format!("{fp:016x}")
                } else {
                    String::new()
                });
            }
            let cmd = Self::eval(scripts::DUMP, &keys[at..], &args);
            let results: Vec<Value> = self.query("dump script", &cmd).await?;
            if results.is_empty() {
                return Err(TaskError::failed("the dump script handled no key"));
            }
            let run = self.run.as_mut().expect("a run");
            let now = now_ms();
            for (k, r) in keys[at..].iter().zip(&results) {
                let skip = |run: &mut Run, state| {
                    if let Some(e) = run.planned.get_mut(&key_hash(k)) {
                        e.1 = state;
                    }
                };
                match r {
                    Value::Int(0) => {
                        run.counts.vanished += 1;
                        skip(run, State::Skipped);
                    }
                    Value::Int(1) => {
                        run.counts.changed += 1;
                        skip(run, State::Skipped);
                    }
                    Value::Int(_) => {
                        run.counts.used += 1;
                        skip(run, State::Skipped);
                    }
                    Value::Array(parts) => {
                        let fp = parts.first().and_then(hex_fp).unwrap_or(0);
                        let pttl = match parts.get(1) {
                            Some(Value::Int(t)) => *t,
                            _ => -1,
                        };
                        let dump: &[u8] = match parts.get(2) {
                            Some(Value::BulkString(d)) => d,
                            _ => &[],
                        };
                        let expire_at = if pttl >= 0 { now + pttl } else { -1 };
                        if let Some(w) = run.writer.as_mut() {
                            w.key(k, expire_at, dump)
                                .map_err(|e| TaskError::failed(format!("backup file: {e}")))?;
                        }
                        out.push((
                            k.clone(),
                            [
                                format!("{fp:016x}"),
                                if pttl >= 0 { "1" } else { "0" }.to_string(),
                            ],
                        ));
                    }
                    other => {
                        return Err(TaskError::failed(format!(
                            "the dump script answered {other:?}"
                        )));
                    }
                }
            }
            at += results.len();
        }
        let run = self.run.as_mut().expect("a run");
        if let Some(w) = run.writer.as_mut() {
            w.sync()
                .map_err(|e| TaskError::failed(format!("backup file: fsync: {e}")))?;
        }
        Ok(out)
    }
}
