//! The plan and the validation of a `redis_cleanup` run, the two full
//! SCAN passes around the batches: `plan_with` refuses what cannot be
//! done (cluster mode, an idle filter under an LFU policy, a backup over
//! budget), counts and fingerprints the matching keys and samples their
//! size; `validate_with` looks for planned keys left and checks the backup
//! file against the keys removed.

use std::collections::{HashMap, VecDeque};

use ::redis::Value;
use serde_json::json;

use super::{CleanupTask, Counts, Run, SAMPLE_KEYS, State, dump_file, hex_fp, key_hash, scripts};
use crate::fmt::{bytes, count};
use crate::maintenance::{Plan, TaskError, Verdict};

impl CleanupTask {
    pub(super) async fn plan_with(&mut self) -> Result<Plan, TaskError> {
        let info = self.refuse_cluster().await?;
        self.refuse_lfu().await?;
        let c = self.config.clone();
        let fingerprints = c.idle_longer_than.is_none();
        let filter_args = |sample: bool| {
            vec![
                c.types.join(","),
                if c.without_ttl { "1" } else { "0" }.to_string(),
                c.idle_longer_than
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(-1)
                    .to_string(),
                c.larger_than.map(|b| b as i64).unwrap_or(-1).to_string(),
                if fingerprints { "1" } else { "0" }.to_string(),
                if sample { "1" } else { "0" }.to_string(),
            ]
        };
        let mut planned = HashMap::new();
        let (mut cursor, mut page_no) = (0u64, 0u64);
        let (mut sampled, mut sampled_bytes) = (0u64, 0u64);
        loop {
            let (next, keys) = self.scan_page(cursor, c.batch_size).await?;
            if !keys.is_empty() {
                let sample = sampled < SAMPLE_KEYS || page_no.is_multiple_of(10);
                page_no += 1;
                let cmd = Self::eval(scripts::PLAN, &keys, &filter_args(sample));
                let out: Vec<Value> = self.query("plan script", &cmd).await?;
                for (k, v) in keys.iter().zip(out) {
                    if let Value::Array(parts) = v {
                        let fp = parts.first().and_then(hex_fp).unwrap_or(0);
                        if let Some(Value::Int(mem)) = parts.get(1)
                            && *mem >= 0
                        {
                            sampled += 1;
                            sampled_bytes += *mem as u64;
                        }
                        planned.insert(key_hash(k), (fp, State::Planned));
                    }
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
                "remove {} keys matching `{}`{filters} of {server}, about {} (estimated from the MEMORY USAGE of {} sampled keys), with UNLINK in about {} batches of {}, {saved}",
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

    pub(super) async fn validate_with(&mut self) -> Result<Verdict, TaskError> {
        let mut cursor = 0u64;
        let (mut left, mut again) = (0u64, 0u64);
        loop {
            let (next, keys) = self.scan_page(cursor, self.config.batch_size).await?;
            let run = self.run.as_ref().expect("a run");
            for k in &keys {
                match run.planned.get(&key_hash(k)).map(|e| e.1) {
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
        let skipped = counts.changed + counts.vanished + counts.used + counts.ttl_changed;
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
