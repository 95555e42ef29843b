//! One batch of a `redis_cleanup` run: SCAN finds planned keys
//! (`fill_queue`); the batch `WATCH`es them, dumps them in pipelines and
//! sorts them (`dump_and_save`: vanished, used, changed since the plan,
//! or to remove, each of those written to the backup file, which is then
//! fsynced), and removes the last in `MULTI`/`UNLINK`/`EXEC`
//! (`remove_watched`), in groups of [`WATCH_GROUP`] keys, each watched on
//! a connection of its own. A refused `EXEC` (a watched key of its group
//! written meanwhile) removed nothing of its group: those keys are marked
//! so and done again, up to [`MAX_ATTEMPTS`] times. Called by the task's `apply_batch`.

use ::redis::Value;

use super::{CleanupTask, MAX_ATTEMPTS, State, key_hash, now_ms, wire};

/// Keys one connection watches at most. Redis checks each key a client
/// watches against every key it already watches (O(n²) in the keys of one
/// `WATCH` set): 500 keys on one connection took about 2.8 ms of server
/// time per batch, blocking every client.
pub(super) const WATCH_GROUP: usize = 50;
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
    /// `WATCH`, in groups of [`WATCH_GROUP`] keys, each group watched on
    /// a connection of its own and removed by its own
    /// `MULTI`/`UNLINK`/`EXEC`. The keys of a group whose `EXEC` was
    /// refused are marked not removed and tried again. Counts and states
    /// follow the attempt that settled each key.
    async fn remove_watched(&mut self, keys: &[Vec<u8>]) -> Result<(), TaskError> {
        let mut todo: Vec<Vec<u8>> = keys.to_vec();
        for _ in 0..MAX_ATTEMPTS {
            let groups: Vec<&[Vec<u8>]> = todo.chunks(WATCH_GROUP).collect();
            let mut group_of = std::collections::HashMap::new();
            for (i, g) in groups.iter().enumerate() {
                let mut watch = ::redis::pipe();
                let cmd = watch.cmd("WATCH");
                for k in g.iter() {
                    cmd.arg(k.as_slice());
                    group_of.insert(key_hash(k), i);
                }
                self.pipe_on(i, "WATCH", &watch).await?;
            }
            let sorted = match self.dump_and_save(&todo).await {
                Ok(s) => s,
                Err(e) => {
                    self.unwatch(groups.len()).await;
                    return Err(e);
                }
            };
            let mut ok = vec![false; groups.len()];
            for (i, done) in ok.iter_mut().enumerate() {
                let mine: Vec<&Vec<u8>> = sorted
                    .remove
                    .iter()
                    .filter(|k| group_of.get(&key_hash(k)) == Some(&i))
                    .collect();
                if mine.is_empty() {
                    let _ = self
                        .pipe_on(i, "UNWATCH", ::redis::pipe().cmd("UNWATCH"))
                        .await?;
                    *done = true;
                    continue;
                }
                let mut p = ::redis::pipe();
                p.cmd("MULTI").ignore();
                let unlink = p.cmd("UNLINK");
                for k in &mine {
                    unlink.arg(k.as_slice());
                }
                p.ignore().cmd("EXEC");
                let exec = self.pipe_on(i, "MULTI/UNLINK/EXEC", &p).await?;
                *done = match exec.first() {
                    Some(Value::Array(_)) => true,
                    Some(Value::Nil) => false,
                    other => {
                        return Err(TaskError::failed(format!(
                            "{}: EXEC answered {other:?}",
                            self.server()
                        )));
                    }
                };
            }
            let removed_now = |k: &Vec<u8>| ok[group_of[&key_hash(k)]];
            let flags: Vec<bool> = sorted.remove.iter().map(removed_now).collect();
            self.mark(&flags)?;
            let (gone, again): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
                sorted.remove.iter().cloned().partition(removed_now);
            let run = self.run.as_mut().expect("a run");
            run.counts.removed += gone.len() as u64;
            if !again.is_empty() {
                run.counts.retries += 1;
            }
            let settled = Sorted {
                remove: gone,
                ..sorted
            };
            self.settle(&settled, State::Removed);
            todo = again;
            if todo.is_empty() {
                return Ok(());
            }
        }
        // The application keeps writing these keys: leave them alone.
        let run = self.run.as_mut().expect("a run");
        run.counts.busy += todo.len() as u64;
        for k in &todo {
            if let Some(e) = run.planned.get_mut(&key_hash(k)) {
                e.state = State::Skipped;
            }
        }
        Ok(())
    }

    /// Drops the watches of the first `n` connections, after a failure.
    async fn unwatch(&mut self, n: usize) {
        for i in 0..n {
            if self
                .pipe_on(i, "UNWATCH", ::redis::pipe().cmd("UNWATCH"))
                .await
                .is_err()
            {
                // A failed command dropped the connections, and their watches.
                return;
            }
        }
    }

    /// Marks the attempt's records (in order) removed or not.
    fn mark(&mut self, removed: &[bool]) -> Result<(), TaskError> {
        let run = self.run.as_mut().expect("a run");
        if let Some(w) = run.writer.as_mut() {
            w.mark(removed)
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
