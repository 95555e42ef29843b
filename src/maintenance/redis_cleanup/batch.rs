//! One batch of a `redis_cleanup` run: SCAN finds planned keys
//! (`fill_queue`); the batch `WATCH`es them, dumps them in pipelines and
//! sorts them (`dump_and_save`: vanished, used, changed since the plan,
//! or to remove, each of those written to the backup file, which is then
//! fsynced), and removes the last in `MULTI`/`UNLINK`/`EXEC`
//! (`remove_watched`). A refused `EXEC` (a watched key written meanwhile)
//! removed nothing: the batch is marked so and done again, up to
//! [`MAX_ATTEMPTS`] times. Called by the task's `apply_batch`.

use ::redis::Value;

use super::{CleanupTask, MAX_ATTEMPTS, State, key_hash, now_ms, wire};
use crate::maintenance::{Batch, TaskError};

/// A batch's keys, sorted by what one attempt found.
#[derive(Default)]
pub(super) struct Sorted {
    remove: Vec<Vec<u8>>,
    vanished: Vec<Vec<u8>>,
    changed: Vec<Vec<u8>>,
    used: Vec<Vec<u8>>,
}

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
                    && e.state == State::Planned
                {
                    e.state = State::Queued;
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
        if !keys.is_empty() {
            self.remove_watched(&keys).await?;
        }
        let run = self.run.as_mut().expect("a run");
        let done = run.scan_done && run.queue.is_empty();
        if done {
            // SCAN returns every key present from its start to its end: a
            // planned key it never returned was gone before its batch.
            for e in run
                .planned
                .values_mut()
                .filter(|e| e.state == State::Planned)
            {
                e.state = State::Unseen;
                run.counts.vanished += 1;
            }
        }
        let c = &run.counts;
        let removed = c.removed - before.removed;
        let detail = format!(
            "unlinked {removed} of {} keys; skipped {} changed, {} vanished, {} used since the plan, {} busy; {} retries",
            keys.len(),
            c.changed - before.changed,
            c.vanished - before.vanished,
            c.used - before.used,
            c.busy - before.busy,
            c.retries - before.retries,
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

    /// Removes those of `keys` still as planned, each saved first, under
    /// `WATCH`; a refused `EXEC` marks the attempt's records as not removed
    /// and starts again. Counts and states follow the attempt that ended.
    async fn remove_watched(&mut self, keys: &[Vec<u8>]) -> Result<(), TaskError> {
        for _ in 0..MAX_ATTEMPTS {
            let mut watch = ::redis::cmd("WATCH");
            for k in keys {
                watch.arg(k.as_slice());
            }
            let _: Value = self.query("WATCH", &watch).await?;
            let sorted = match self.dump_and_save(keys).await {
                Ok(s) => s,
                Err(e) => {
                    self.unwatch().await;
                    return Err(e);
                }
            };
            if sorted.remove.is_empty() {
                self.unwatch().await;
                self.mark(0, false)?;
                self.settle(&sorted, State::Removed);
                return Ok(());
            }
            let mut p = ::redis::pipe();
            p.cmd("MULTI").ignore();
            let unlink = p.cmd("UNLINK");
            for k in &sorted.remove {
                unlink.arg(k.as_slice());
            }
            p.ignore().cmd("EXEC");
            let exec = self.pipe("MULTI/UNLINK/EXEC", &p).await?;
            match exec.first() {
                Some(Value::Array(_)) => {
                    self.mark(sorted.remove.len(), true)?;
                    let run = self.run.as_mut().expect("a run");
                    run.counts.removed += sorted.remove.len() as u64;
                    self.settle(&sorted, State::Removed);
                    return Ok(());
                }
                Some(Value::Nil) => {
                    self.mark(sorted.remove.len(), false)?;
                    self.run.as_mut().expect("a run").counts.retries += 1;
                }
                other => {
                    return Err(TaskError::failed(format!(
                        "{}: EXEC answered {other:?}",
                        self.server()
                    )));
                }
            }
        }
        // The application keeps writing some of these keys: leave them all.
        let run = self.run.as_mut().expect("a run");
        run.counts.busy += keys.len() as u64;
        for k in keys {
            if let Some(e) = run.planned.get_mut(&key_hash(k)) {
                e.state = State::Skipped;
            }
        }
        Ok(())
    }

    async fn unwatch(&mut self) {
        if self
            .query::<Value>("UNWATCH", &::redis::cmd("UNWATCH"))
            .await
            .is_err()
        {
            // A failed command dropped the connection, and its watches with it.
            self.conn = None;
        }
    }

    /// Marks the records of the attempt (`n` of them) removed or not.
    fn mark(&mut self, n: usize, removed: bool) -> Result<(), TaskError> {
        let run = self.run.as_mut().expect("a run");
        if let Some(w) = run.writer.as_mut() {
            w.mark(&vec![removed; n])
                .map_err(|e| TaskError::failed(format!("backup file: {e}")))?;
        }
        Ok(())
    }

    /// Counts an ended attempt's skipped keys and sets every key's state
    /// (`removed` for the keys it removed).
    fn settle(&mut self, sorted: &Sorted, removed: State) {
        let run = self.run.as_mut().expect("a run");
        run.counts.vanished += sorted.vanished.len() as u64;
        run.counts.changed += sorted.changed.len() as u64;
        run.counts.used += sorted.used.len() as u64;
        let skipped = sorted
            .vanished
            .iter()
            .chain(&sorted.changed)
            .chain(&sorted.used);
        for (k, state) in skipped
            .map(|k| (k, State::Skipped))
            .chain(sorted.remove.iter().map(|k| (k, removed)))
        {
            if let Some(e) = run.planned.get_mut(&key_hash(k)) {
                e.state = state;
            }
        }
    }

    /// Dumps `keys` in pipelines of at most [`super::DUMP_CAP`] bytes (by
    /// the plan's sizes), sorts them, writes each key to remove to the
    /// backup file and fsyncs it.
    pub(super) async fn dump_and_save(&mut self, keys: &[Vec<u8>]) -> Result<Sorted, TaskError> {
        let idle = self.config.idle_longer_than.map(|d| d.as_secs());
        let run = self.run.as_ref().expect("a run");
        let sizes: Vec<u64> = keys
            .iter()
            .map(|k| run.planned.get(&key_hash(k)).map(|e| e.size).unwrap_or(0))
            .collect();
        let mut sorted = Sorted::default();
        for r in wire::chunks(&sizes) {
            let part = &keys[r];
            let answers = self
                .pipe("batch dumps", &wire::dump_pipe(part, idle.is_some()))
                .await?;
            let dumped = wire::dump_answers(part.len(), idle, &answers)
                .map_err(|e| TaskError::failed(format!("{}: {e}", self.server())))?;
            let run = self.run.as_mut().expect("a run");
            let now = now_ms();
            for (k, d) in part.iter().zip(dumped) {
                match d {
                    wire::Dumped::Vanished => sorted.vanished.push(k.clone()),
                    wire::Dumped::Used => sorted.used.push(k.clone()),
                    wire::Dumped::Value { dump, pttl } => {
                        let planned = run.planned.get(&key_hash(k)).map(|e| e.fp).unwrap_or(0);
                        if run.fingerprints && planned != wire::fingerprint(dump) {
                            sorted.changed.push(k.clone());
                            continue;
                        }
                        let expire_at = if pttl >= 0 { now + pttl } else { -1 };
                        if let Some(w) = run.writer.as_mut() {
                            w.key(k, expire_at, dump)
                                .map_err(|e| TaskError::failed(format!("backup file: {e}")))?;
                        }
                        sorted.remove.push(k.clone());
                    }
                }
            }
        }
        let run = self.run.as_mut().expect("a run");
        if let Some(w) = run.writer.as_mut() {
            w.sync()
                .map_err(|e| TaskError::failed(format!("backup file: fsync: {e}")))?;
        }
        Ok(sorted)
    }
}
