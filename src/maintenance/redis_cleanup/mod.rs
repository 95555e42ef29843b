//! `kind = "redis_cleanup"`: removes the keys of one Redis database that
//! match a `SCAN MATCH` glob and the optional filters (type, no expiry,
//! idle time, size), a batch at a time, so that the application does not
//! feel it. The plan is a paced SCAN pass that fingerprints each matching
//! key's value (`scripts::PLAN`) and samples sizes; a batch finds planned
//! keys with SCAN, dumps those whose value is still the planned one
//! (`scripts::DUMP`), writes each `DUMP` with its expiry to the backup
//! file and fsyncs it (`dump_file`), and only then unlinks, in one Lua
//! script, the keys whose value is still the dumped one
//! (`scripts::REMOVE`): a key the application rewrote or that vanished on
//! the way is skipped and counted, never guessed. Rollback (`restore.rs`)
//! `RESTORE`s every removed key with the time it had left to live.
//! Connections come from `crate::clients::redis` through the redis probe.

mod dump_file;
mod restore;
mod scripts;

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use ::redis::Value;
use ::redis::aio::MultiplexedConnection;
use serde_json::json;

use super::config::{Probes, TaskKind};
use super::{AnyTask, Backup, Batch, Cx, Plan, Task, TaskError, Verdict};
use crate::fmt::{bytes, count};
use crate::probes::ProbeKind;
use crate::probes::redis::{RedisConfig, parse_info};
use dump_file::DumpWriter;

crate::task_config! {
    /// `[maintenance.NAME] kind = "redis_cleanup"`.
    pub struct CleanupConfig {
        /// The redis probe whose connection settings the task uses.
        pub probe: String,
        /// `SCAN MATCH` glob of the keys to remove.
        #[serde(rename = "match")]
        pub pattern: String,
        /// Allows `match = "*"` (every key of the database).
        #[serde(default)]
        pub allow_all: bool,
        /// Only keys not used for longer than this (`OBJECT IDLETIME`).
        #[serde(default, with = "humantime_serde")]
        pub idle_longer_than: Option<Duration>,
        /// Only keys without an expiry.
        #[serde(default)]
        pub without_ttl: bool,
        /// Only keys of these types; empty: any.
        #[serde(default)]
        pub types: Vec<String>,
        /// Only keys whose `MEMORY USAGE` exceeds this many bytes.
        #[serde(default)]
        pub larger_than: Option<u64>,
        /// Keys per batch.
        #[serde(default = "default_batch_size")]
        pub batch_size: u64,
        /// Pause between batches (and between the plan's SCAN pages).
        #[serde(default = "default_pause", with = "humantime_serde")]
        pub pause: Duration,
        /// Save each key's DUMP and TTL before removing it.
        #[serde(default = "yes")]
        pub backup: bool,
        /// `MEMORY PURGE` after the last batch.
        #[serde(default = "yes")]
        pub memory_purge: bool,
    }
}

fn default_batch_size() -> u64 {
    500
}
fn default_pause() -> Duration {
    Duration::from_millis(10)
}
fn yes() -> bool {
    true
}

/// Most keys one batch may hold.
pub const MAX_BATCH: u64 = 10_000;
/// The types `types` may name (`TYPE`'s answers).
pub const TYPES: &[&str] = &["string", "list", "set", "zset", "hash", "stream"];
/// Dump bytes one call of the dump script gathers before it stops (one
/// larger value is taken alone): what a batch holds in memory at most,
/// beside that one value.
pub const DUMP_CAP: u64 = 8 << 20;
/// Bound on every command's answer (a 100 MB `DUMP` included).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Keys whose size the plan samples at least (then one page in ten).
const SAMPLE_KEYS: u64 = 1000;

impl TaskKind for CleanupConfig {
    fn probe(&self) -> Option<&str> {
        Some(&self.probe)
    }
    fn validate(&self, probes: &Probes) -> Vec<(&'static str, String)> {
        super::config::with_probe_check(
            self.validate_own(),
            probes,
            &self.probe,
            ProbeKind::Redis,
            "redis_cleanup",
        )
    }
    fn build(&self, name: &str, probes: &Probes) -> Option<AnyTask> {
        let redis = super::config::redis_probe(probes, &self.probe)?;
        Some(Box::new(CleanupTask::new(name, self, redis)))
    }
    fn batch_size(&self) -> u64 {
        self.batch_size
    }
    fn pause(&self) -> Duration {
        self.pause
    }
}

impl CleanupConfig {
    /// Problems of the kind's own fields, as (field, message).
    pub fn validate_own(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.pattern.is_empty() {
            out.push(("match", "must not be empty".into()));
        } else if self.pattern.chars().all(|c| c == '*') && !self.allow_all {
            out.push((
                "match",
                format!(
                    "`{}` matches every key of the database: set allow_all = true if that is meant",
                    self.pattern
                ),
            ));
        }
        for t in &self.types {
            if !TYPES.contains(&t.as_str()) {
                out.push((
                    "types",
                    format!("`{t}` is not a Redis type (one of {})", TYPES.join(", ")),
                ));
            }
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            out.push(("batch_size", format!("must be 1 to {MAX_BATCH}")));
        }
        if self.pause > Duration::from_secs(60) {
            out.push(("pause", "must be at most 1m".into()));
        }
        if self
            .idle_longer_than
            .is_some_and(|d| d < Duration::from_secs(1))
        {
            out.push(("idle_longer_than", "must be at least 1s".into()));
        }
        out
    }

    /// The filters in words, for the plan.
    fn filters(&self) -> String {
        let mut f = Vec::new();
        if !self.types.is_empty() {
            f.push(format!("of type {}", self.types.join("/")));
        }
        if self.without_ttl {
            f.push("without a TTL".into());
        }
        if let Some(d) = self.idle_longer_than {
            f.push(format!(
                "idle for more than {}",
                humantime::format_duration(d)
            ));
        }
        if let Some(b) = self.larger_than {
            f.push(format!("larger than {}", bytes(b as f64)));
        }
        f.join(", ")
    }
}

/// Where a planned key stands in the run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Planned,
    /// Not found by the batches' SCAN: gone before its batch.
    Unseen,
    Queued,
    Removed,
    Skipped,
}

/// What a run skipped and why.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Counts {
    removed: u64,
    /// Gone before its batch (expired, deleted by the application).
    vanished: u64,
    /// Rewritten by the application since the plan, or between dump and removal.
    changed: u64,
    /// Used since the plan (no longer idle long enough).
    used: u64,
    /// Given or cleared an expiry between dump and removal.
    ttl_changed: u64,
}

/// A run in progress: the planned keys (by hash of the name: 24 bytes a key
/// whatever its length) with the fingerprint of their value, and the SCAN.
struct Run {
    planned: HashMap<u64, (u64, State)>,
    fingerprints: bool,
    cursor: u64,
    scan_done: bool,
    queue: VecDeque<Vec<u8>>,
    writer: Option<DumpWriter>,
    path: Option<PathBuf>,
    counts: Counts,
    purge: Option<String>,
}

fn key_hash(key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

fn now_ms() -> i64 {
    crate::sample::now_ms()
}

/// A redis_cleanup task: its settings and, during a run, its connection
/// and the run's state.
pub struct CleanupTask {
    name: String,
    config: CleanupConfig,
    redis: RedisConfig,
    /// Dropped after any failed command: the next step reconnects.
    conn: Option<MultiplexedConnection>,
    run: Option<Run>,
    /// Rollback replaces keys that exist again.
    force: bool,
}

impl CleanupTask {
    pub fn new(name: &str, config: &CleanupConfig, redis: &RedisConfig) -> CleanupTask {
        CleanupTask {
            name: name.to_string(),
            config: config.clone(),
            redis: redis.clone(),
            conn: None,
            run: None,
            force: false,
        }
    }

    /// `redis HOST:PORT/DB`: the subject of every error.
    fn server(&self) -> String {
        match self.redis.connection().connection_info() {
            Ok(i) => {
                let (addr, db) = crate::clients::redis::endpoint(&i);
                format!("redis {addr}/{db}")
            }
            Err(_) => "redis (invalid url)".into(),
        }
    }

    fn db(&self) -> u32 {
        self.redis
            .connection()
            .connection_info()
            .map(|i| crate::clients::redis::endpoint(&i).1)
            .unwrap_or(0)
    }

    async fn conn(&mut self) -> Result<MultiplexedConnection, TaskError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let c = self
            .redis
            .connection()
            .connect(RESPONSE_TIMEOUT)
            .await
            .map_err(|e| TaskError::failed(format!("{}: {e}", self.server())))?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// Runs `cmd`; a failure drops the connection and names the server.
    async fn query<T: ::redis::FromRedisValue>(
        &mut self,
        what: &str,
        cmd: &::redis::Cmd,
    ) -> Result<T, TaskError> {
        let mut c = self.conn().await?;
        match cmd.query_async::<T>(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.conn = None;
                }
                Err(TaskError::failed(format!("{}: {what}: {e}", self.server())))
            }
        }
    }

    async fn info(&mut self) -> Result<crate::probes::redis::Info, TaskError> {
        let text: String = self.query("INFO", &::redis::cmd("INFO")).await?;
        Ok(parse_info(&text))
    }

    /// A cleanup of one shard of a cluster would look like success.
    async fn refuse_cluster(&mut self) -> Result<crate::probes::redis::Info, TaskError> {
        let info = self.info().await?;
        if info.get("cluster_enabled") == Some("1") {
            return Err(TaskError::failed(format!(
                "{}: cluster mode is not supported (the server says cluster_enabled:1; a cleanup would touch one shard only)",
                self.server()
            )));
        }
        Ok(info)
    }

    /// `OBJECT IDLETIME` has no answer under an LFU policy.
    async fn refuse_lfu(&mut self) -> Result<(), TaskError> {
        if self.config.idle_longer_than.is_none() {
            return Ok(());
        }
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let v: Vec<String> = self.query("CONFIG GET maxmemory-policy", &cmd).await.map_err(|e| {
            TaskError::Config {
                field: "idle_longer_than",
                message: format!(
                    "cannot check that OBJECT IDLETIME works on this server (it does not under an LFU maxmemory-policy): {e}"
                ),
            }
        })?;
        let policy = v.get(1).cloned().unwrap_or_default();
        if policy.contains("lfu") {
            return Err(TaskError::Config {
                field: "idle_longer_than",
                message: format!(
                    "{}: the server's maxmemory-policy is {policy}, under which Redis keeps no idle time (OBJECT IDLETIME fails): remove idle_longer_than or use an LRU policy",
                    self.server()
                ),
            });
        }
        Ok(())
    }

    fn eval(script: &str, keys: &[Vec<u8>], args: &[String]) -> ::redis::Cmd {
        let mut cmd = ::redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len());
        for k in keys {
            cmd.arg(k.as_slice());
        }
        for a in args {
            cmd.arg(a.as_str());
        }
        cmd
    }

    async fn scan_page(
        &mut self,
        cursor: u64,
        count: u64,
    ) -> Result<(u64, Vec<Vec<u8>>), TaskError> {
        let mut cmd = ::redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(self.config.pattern.as_str())
            .arg("COUNT")
            .arg(count);
        self.query("SCAN", &cmd).await
    }

    async fn plan_with(&mut self) -> Result<Plan, TaskError> {
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
            .unwrap_or(super::config::DEFAULT_MAX_BACKUP_BYTES);
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

    /// Fills the queue with planned keys found by SCAN, up to `size`.
    async fn fill_queue(&mut self, size: u64) -> Result<(), TaskError> {
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

    async fn batch_with(&mut self, size: u64) -> Result<Batch, TaskError> {
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
    async fn dump_and_save(
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

    fn backup_now(&self) -> Option<Backup> {
        let run = self.run.as_ref()?;
        let (location, bytes) = match (&run.path, &run.writer) {
            (Some(p), Some(w)) => (p.display().to_string(), w.bytes),
            _ => ("none".to_string(), 0),
        };
        Some(Backup {
            location,
            rows: run.counts.removed,
            bytes,
            details: json!({
                "format": "redis DUMP + expiry (unix ms) per key, fsynced before each batch's removal",
                "backup": self.config.backup,
                "counts": run.counts,
            }),
        })
    }

    async fn validate_with(&mut self) -> Result<Verdict, TaskError> {
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

/// The ledger's before/after figures of a Redis server (`INFO`): memory,
/// fragmentation, keyspace hits and misses with their ratio, and the keys
/// of database `db`. Shared with `cache_warmup`.
pub fn redis_figures(info: &crate::probes::redis::Info, db: u32) -> serde_json::Value {
    let hits = info.u64("keyspace_hits");
    let misses = info.u64("keyspace_misses");
    let ratio = match (hits, misses) {
        (Some(h), Some(m)) if h + m > 0 => Some(h as f64 / (h + m) as f64),
        _ => None,
    };
    let keys = info
        .keyspace
        .iter()
        .find(|(n, _)| *n == db)
        .map(|(_, k)| *k)
        .unwrap_or(0);
    let float = |f: &str| info.get(f).and_then(|v| v.parse::<f64>().ok());
    json!({
        "used_memory_bytes": info.u64("used_memory"),
        "mem_fragmentation_ratio": float("mem_fragmentation_ratio"),
        "keyspace_hits": hits,
        "keyspace_misses": misses,
        "hit_ratio": ratio,
        "keys": keys,
        "db": db,
    })
}

/// A 16-hex-digit fingerprint as the scripts return it.
fn hex_fp(v: &Value) -> Option<u64> {
    match v {
        Value::BulkString(b) => u64::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok(),
        _ => None,
    }
}

impl Task for CleanupTask {
    async fn figures(&mut self) -> Result<serde_json::Value, TaskError> {
        let info = self.info().await?;
        Ok(redis_figures(&info, self.db()))
    }

    async fn plan(&mut self, _cx: &Cx) -> Result<Plan, TaskError> {
        self.plan_with().await
    }

    fn backup_bytes(&self, plan: &Plan) -> u64 {
        if self.config.backup { plan.bytes } else { 0 }
    }

    async fn backup(&mut self, cx: &Cx, _plan: &Plan) -> Result<Backup, TaskError> {
        let backup = self.config.backup;
        let Some(run) = self.run.as_mut() else {
            return Err(TaskError::failed("backup before plan"));
        };
        if backup && run.writer.is_none() {
            let path = cx.backup_dir.join(dump_file::FILE_NAME);
            super::backup_files::create_dir(&cx.backup_dir)
                .and_then(|_| DumpWriter::open(&path))
                .map(|w| {
                    run.writer = Some(w);
                    run.path = Some(path.clone());
                })
                .map_err(|e| TaskError::failed(format!("{}: {e}", path.display())))?;
        }
        Ok(self.backup_now().expect("a run"))
    }

    async fn apply_batch(&mut self, _cx: &Cx, _plan: &Plan, size: u64) -> Result<Batch, TaskError> {
        self.batch_with(size.clamp(1, MAX_BATCH)).await
    }

    fn backup_state(&self) -> Option<Backup> {
        self.backup_now()
    }

    async fn validate(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Verdict, TaskError> {
        if self.run.is_none() {
            return Err(TaskError::failed("validate before plan"));
        }
        self.validate_with().await
    }

    async fn rollback(&mut self, _cx: &Cx, backup: &Backup) -> Result<Verdict, TaskError> {
        if backup.location == "none" {
            return Err(TaskError::failed(format!(
                "{}: this run kept no backup (backup = false): nothing can be put back",
                self.name
            )));
        }
        let mut conn = self.conn().await?;
        let server = self.server();
        restore::restore(
            &mut conn,
            &server,
            std::path::Path::new(&backup.location),
            self.force,
        )
        .await
    }

    fn reversible(&self) -> bool {
        self.config.backup
    }

    fn set_force(&mut self, force: bool) {
        self.force = force;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> CleanupConfig {
        toml::from_str(&format!("probe = \"cache\"\n{extra}")).unwrap()
    }

    #[test]
    fn every_key_needs_allow_all_and_fields_are_checked() {
        assert!(cfg("match = \"tmp:*\"").validate_own().is_empty());
        let all = cfg("match = \"*\"").validate_own();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "match");
        assert!(all[0].1.contains("allow_all"), "{}", all[0].1);
        assert!(
            cfg("match = \"**\"\nallow_all = true")
                .validate_own()
                .is_empty()
        );
        let bad =
            cfg("match = \"a:*\"\ntypes = [\"strng\"]\nbatch_size = 0\nidle_longer_than = \"0s\"")
                .validate_own();
        let fields: Vec<_> = bad.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, vec!["types", "batch_size", "idle_longer_than"]);
        let c = cfg("match = \"a:*\"");
        assert_eq!((c.batch_size, c.backup, c.memory_purge), (500, true, true));
        assert!(
            toml::from_str::<CleanupConfig>("probe = \"c\"\nmatch = \"a\"\nmatches = 1").is_err()
        );
    }
}
