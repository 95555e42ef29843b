//! `kind = "redis_cleanup"`: removes the keys of one Redis database that
//! match a `SCAN MATCH` glob and the optional filters (type, no expiry,
//! idle time, size), a batch at a time, so that the application does not
//! feel it. The plan is a paced SCAN pass that filters the matching keys,
//! reads each one's `MEMORY USAGE` and fingerprints its value (the hash of
//! its `DUMP`, taken on the client). A batch `WATCH`es its planned keys,
//! dumps them in pipelines, leaves out those whose value is no longer the
//! planned one, writes each `DUMP` with its expiry to the backup file and
//! fsyncs it (`dump_file`), and only then removes the rest in
//! `MULTI`/`UNLINK`/`EXEC`, which the server refuses as a whole if any
//! watched key was written since the `WATCH`; the batch is then done again.
//! A key the application rewrote or that vanished on the way is skipped and
//! counted, never guessed. No Lua: the server serialises each value once per
//! pass, hashes nothing, and serves the application between the pipelined
//! commands; the only atomic step is one short `UNLINK`.
//! Rollback (`restore.rs`) `RESTORE`s every removed key with the time it
//! had left to live. Plan and validation are in `check.rs`, a batch in
//! `batch.rs`, the commands and their answers in `wire.rs`; this file
//! holds the config, the run's state and the `Task` impl. Connections come
//! from `crate::clients::redis` through the redis probe.

mod batch;
mod check;
mod dump_file;
mod restore;
mod wire;

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use ::redis::Value;
use ::redis::aio::MultiplexedConnection;
use serde_json::json;

use super::config::{Probes, TaskKind};
use super::{AnyTask, Backup, Batch, Cx, Plan, Task, TaskError, Verdict};
use crate::fmt::bytes;
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
/// Bytes of values one pipeline of dumps asks for at most (by the sizes the
/// plan read; one larger value is asked alone): what a plan page or a
/// batch holds in memory at most, beside that one value.
pub const DUMP_CAP: u64 = 8 << 20;
/// Times a batch is done again after its `EXEC` was refused (a watched key
/// written meanwhile) before its keys are left alone as busy.
const MAX_ATTEMPTS: u32 = 5;
/// Bound on every command's answer (a 100 MB `DUMP` included).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Written by the application while their batch was done again and
    /// again ([`MAX_ATTEMPTS`] refused `EXEC`s): left alone.
    busy: u64,
    /// Batches done again because a watched key was written meanwhile.
    retries: u64,
}

/// A planned key: the fingerprint of its value (0 when the plan took none),
/// its size as the plan read it (`MEMORY USAGE`, or the dump's length if
/// larger), and where it stands.
#[derive(Debug, Clone, Copy)]
struct Entry {
    fp: u64,
    size: u64,
    state: State,
}

/// A run in progress: the planned keys (by hash of the name: 32 bytes a key
/// whatever its length) with the fingerprint of their value, and the SCAN.
struct Run {
    planned: HashMap<u64, Entry>,
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
    /// One connection per `WATCH` group of a batch past the first
    /// (`batch::WATCH_GROUP`): a client's watched keys are checked one by
    /// one against each new one, so a batch watches in small groups, each
    /// on its own connection. Dropped with `conn`.
    watchers: Vec<MultiplexedConnection>,
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
            watchers: Vec::new(),
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
                    self.watchers.clear();
                }
                Err(TaskError::failed(format!("{}: {what}: {e}", self.server())))
            }
        }
    }

    /// Runs a pipeline; its answers in order. A failure as in `query`.
    async fn pipe(
        &mut self,
        what: &str,
        pipe: &::redis::Pipeline,
    ) -> Result<Vec<Value>, TaskError> {
        self.pipe_on(0, what, pipe).await
    }

    /// Connection `i`: 0 is `conn`, the others are `watchers`, opened as
    /// needed.
    async fn conn_at(&mut self, i: usize) -> Result<MultiplexedConnection, TaskError> {
        let mut c = self.conn().await?;
        while self.watchers.len() < i {
            c = self
                .redis
                .connection()
                .connect(RESPONSE_TIMEOUT)
                .await
                .map_err(|e| TaskError::failed(format!("{}: {e}", self.server())))?;
            self.watchers.push(c.clone());
        }
        Ok(if i == 0 {
            c
        } else {
            self.watchers[i - 1].clone()
        })
    }

    /// Runs a pipeline on connection `i` (`conn_at`). A failure drops
    /// every connection (and so every watch) and names the server.
    async fn pipe_on(
        &mut self,
        i: usize,
        what: &str,
        pipe: &::redis::Pipeline,
    ) -> Result<Vec<Value>, TaskError> {
        let mut c = self.conn_at(i).await?;
        match pipe.query_async::<Vec<Value>>(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.conn = None;
                    self.watchers.clear();
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
