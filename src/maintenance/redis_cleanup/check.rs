//! The plan and the validation of a `redis_cleanup` run, the two full
//! SCAN passes around the batches: `plan_with` refuses what cannot be
//! done (cluster mode, an idle filter under an LFU policy, a backup over
//! budget), filters the matching keys, reads their size and fingerprints
//! their values, a SCAN page at a time in pipelines (`wire`); `validate_with` looks for planned keys left and checks the backup
//! file against the keys removed.

use std::collections::{HashMap, VecDeque};

use serde_json::json;

use super::{CleanupTask, Counts, Entry, Run, State, dump_file, key_hash, wire};
use crate::fmt::{bytes, count};
use crate::maintenance::{Plan, TaskError, Verdict};

impl CleanupTask {
    pub(super) async fn plan_with(&mut self) -> Result<Plan, TaskError> {
        let info = self.refuse_cluster().await?;
        self.refuse_lfu().await?;
        let c = self.config.clone();
        let fingerprints = c.idle_longer_than.is_none();
        let filters = wire::Filters {
            types: c.types.clone(),
            without_ttl: c.without_ttl,
            idle: c.idle_longer_than.map(|d| d.as_secs()),
            larger_than: c.larger_than,
        };
        let mut planned = HashMap::new();
        let mut cursor = 0u64;
        let (mut sampled, mut sampled_bytes) = (0u64, 0u64);
        loop {
            let (next, keys) = self.scan_page(cursor, c.batch_size).await?;
            let mut passing: Vec<(Vec<u8>, u64)> = Vec::new();
            for part in keys.chunks(wire::PIPE_KEYS) {
                let answers = self
                    .pipe("plan filters", &wire::filter_pipe(&filters, part))
                    .await?;
                let verdicts = wire::filter_answers(&filters, part.len(), &answers)
                    .map_err(|e| TaskError::failed(format!("{}: {e}", self.server())))?;
                for (k, v) in part.iter().zip(verdicts) {
                    if let wire::Verdict::In(mem) = v {
                        sampled += 1;
                        sampled_bytes += mem;
                        passing.push((k.clone(), mem));
                    }
                }
            }
            if fingerprints {
                self.fingerprint_page(&passing, &mut planned).await?;
            } else {
                // A DUMP would reset the idle times the filter reads.
                for (k, mem) in &passing {
                    let entry = Entry {
                        fp: 0,
                        size: *mem,
                        state: State::Planned,
                    };
                    planned.insert(key_hash(k), entry);
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
            tokio::time::sleep(c.pause).await;
        }
        let keys = planned.len() as u64;
        let estimate = sampled_bytes.checked_div(sampled).unwrap_or(0) * keys;
        let limit = c
            .max_backup_bytes
            .unwrap_or(crate::maintenance::config::DEFAULT_MAX_BACKUP_BYTES);
        if c.backup && estimate > limit {
            return Err(TaskError::Config {
                field: "max_backup_bytes",
                message: format!(
                    "the plan's keys take about {} (sampled), more than the backup may hold ({}): narrow `match`, raise max_backup_bytes, or set backup = false",
                    bytes(estimate as f64),
                    bytes(limit as f64)
                ),
            });
        }
        let server = self.server();
        let filters = match c.filters() {
            f if f.is_empty() => String::new(),
            f => format!(" ({f})"),
        };
        let saved = if c.backup {
            "each key's DUMP and TTL saved first"
        } else {
            "backup = false: NOT saved, a rollback is impossible"
        };
        let summary = if keys == 0 {
            format!(
                "nothing to remove: no key of {server} matches `{}`{filters}",
                c.pattern
            )
        } else {
            format!(
                "remove {} keys matching `{}`{filters} of {server}, about {} (the MEMORY USAGE of each of {} keys, sampled within aggregates), with UNLINK in about {} batches of {}, {saved}",
                count(keys),
                c.pattern,
                bytes(estimate as f64),
                count(sampled),
                keys.div_ceil(c.batch_size),
                c.batch_size
            )
        };
        let details = json!({
            "server": server,
            "db": self.db(),
            "match": c.pattern,
            "filters": c.filters(),
            "keys": keys,
            "estimated_bytes": estimate,
            "estimate": "sampled",
            "sampled_keys": sampled,
            "batch_size": c.batch_size,
            "backup": c.backup,
            "server_run_id": info.get("run_id"),
        });
        self.run = Some(Run {
            planned,
            fingerprints,
            cursor: 0,
            scan_done: false,
            queue: VecDeque::new(),
            writer: None,
            path: None,
            counts: Counts::default(),
            purge: None,
        });
        Ok(Plan {
            summary,
            rows: keys,
            bytes: estimate,
            details,
        })
    }

    /// Dumps the keys of a page that passed the filters, in pipelines of at
    /// most [`super::DUMP_CAP`] bytes, and plans each with the fingerprint
    /// of its value. A key gone since the filters is not planned.
    async fn fingerprint_page(
        &mut self,
        passing: &[(Vec<u8>, u64)],
        planned: &mut HashMap<u64, Entry>,
    ) -> Result<(), TaskError> {
        let sizes: Vec<u64> = passing.iter().map(|(_, m)| *m).collect();
        for r in wire::chunks(&sizes) {
            let part: Vec<Vec<u8>> = passing[r.clone()].iter().map(|(k, _)| k.clone()).collect();
            let answers = self
                .pipe("plan dumps", &wire::dump_pipe(&part, false))
                .await?;
            let dumped = wire::dump_answers(part.len(), None, &answers)
                .map_err(|e| TaskError::failed(format!("{}: {e}", self.server())))?;
            for ((k, mem), d) in passing[r].iter().zip(dumped) {
                if let wire::Dumped::Value { dump, .. } = d {
                    let entry = Entry {
                        fp: wire::fingerprint(dump),
                        size: (*mem).max(dump.len() as u64),
                        state: State::Planned,
                    };
                    planned.insert(key_hash(k), entry);
                }
            }
        }
        Ok(())
    }

    pub(super) async fn validate_with(&mut self) -> Result<Verdict, TaskError> {
        let mut cursor = 0u64;
        let (mut left, mut again) = (0u64, 0u64);
        loop {
            let (next, keys) = self.scan_page(cursor, self.config.batch_size).await?;
            let run = self.run.as_ref().expect("a run");
            for k in &keys {
                match run.planned.get(&key_hash(k)).map(|e| e.state) {
                    Some(State::Planned | State::Queued | State::Unseen) => left += 1,
                    Some(State::Removed) => again += 1,
                    _ => {}
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
            tokio::time::sleep(self.config.pause).await;
        }
        let run = self.run.as_ref().expect("a run");
        let counts = run.counts.clone();
        let saved = match &run.path {
            Some(p) => {
                let p = p.clone();
                let s = tokio::task::spawn_blocking(move || dump_file::summary(&p))
                    .await
                    .map_err(|e| TaskError::failed(e.to_string()))?
                    .map_err(|e| TaskError::failed(format!("reading the backup file: {e}")))?;
                Some(s.removed)
            }
            None => None,
        };
        let backup_ok = saved.is_none_or(|s| s == counts.removed);
        let ok = left == 0 && backup_ok;
        let skipped = counts.changed + counts.vanished + counts.used + counts.busy;
        let mut detail = format!(
            "{} keys removed, {} skipped (changed, vanished or used since the plan); {left} planned keys left",
            count(counts.removed),
            count(skipped),
        );
        match saved {
            Some(s) => detail.push_str(&format!("; the backup holds {} removed keys", count(s))),
            None => detail.push_str("; no backup (backup = false)"),
        }
        if again > 0 {
            detail.push_str(&format!(
                "; {again} removed keys exist again (written since by the application)"
            ));
        }
        Ok(Verdict {
            ok,
            detail,
            figures: json!({
                "counts": counts,
                "left": left,
                "written_again": again,
                "backup_removed": saved,
                "memory_purge": run.purge,
            }),
        })
    }
}
