//! `kind = "cache_warmup"`: warms the application's cache the application's
//! way, by requesting its own endpoints (GET), `concurrency` at a time and
//! at most `rate` per second; the guard runs between batches. The plan is
//! the URL list; validation checks that every URL answered with
//! `expect_status`, and the ledger's before/after figures (the redis
//! probe's server: keys, hit ratio, memory) show what the warm-up did.
//! Nothing is removed, so there is nothing to roll back: a rollback is
//! refused with that reason. `after = "TASK"` starts the warm-up when that
//! task's run succeeds (the runner does it). Requests go out through the
//! http probe's client (`probes::http::wire`): same headers rules, same TLS.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use url::Url;

use super::config::{Probes, TaskKind};
use super::{AnyTask, Backup, Batch, Cx, Plan, Task, TaskError, Verdict};
use crate::probes::ProbeKind;
use crate::probes::access_log::top_paths::TopPaths;
use crate::probes::http::wire::Client;
use crate::probes::http::{ExpectStatus, Method, header_problems, parse_url};
use crate::probes::redis::{RedisConfig, parse_info};

crate::task_config! {
    /// `[maintenance.NAME] kind = "cache_warmup"`.
    pub struct WarmupConfig {
        /// The redis probe whose server's figures the ledger keeps.
        pub probe: String,
        /// The URLs to request (GET).
        #[serde(default)]
        pub urls: Vec<String>,
        /// Also the most requested GET paths of an access_log probe's logs.
        #[serde(default)]
        pub from_access_log: Option<FromAccessLog>,
        /// Requests in flight at once.
        #[serde(default = "default_concurrency")]
        pub concurrency: u32,
        /// Requests started per second at most.
        #[serde(default = "default_rate")]
        pub rate: f64,
        /// Codes (200) and classes ("2xx"), one or a list; default "2xx".
        #[serde(default)]
        pub expect_status: ExpectStatus,
        /// Extra request headers. Plain text: no credentials.
        #[serde(default)]
        pub headers: BTreeMap<String, String>,
        /// Longest one request may take, body included.
        #[serde(default = "default_request_timeout", with = "humantime_serde")]
        pub request_timeout: Duration,
        /// Start this task when a run of that task succeeds.
        #[serde(default)]
        pub after: Option<String>,
    }
}

/// `from_access_log = { probe, top, base_url, window }`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FromAccessLog {
    /// An access_log probe (combined format): its files, the rotated one
    /// included, are read over the window.
    pub probe: String,
    /// How many of the most requested paths.
    #[serde(default = "default_top")]
    pub top: usize,
    /// Prefixed to each path: the application's own address.
    pub base_url: String,
    /// Requests this far back count.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
}

fn default_top() -> usize {
    50
}
fn default_window() -> Duration {
    Duration::from_secs(86_400)
}
/// Paths the counting map holds at least, whatever `top`.
const COUNTED_PATHS: usize = 1000;

fn default_concurrency() -> u32 {
    4
}
fn default_rate() -> f64 {
    20.0
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

/// URLs per batch: the guard is checked between batches.
const BATCH: u64 = 20;
/// Body bytes read per answer (the rest is left unread).
const BODY_LIMIT: usize = 8 << 20;

impl TaskKind for WarmupConfig {
    fn probe(&self) -> Option<&str> {
        Some(&self.probe)
    }
    fn validate(&self, probes: &Probes) -> Vec<(&'static str, String)> {
        let mut own = self.validate_own();
        if let Some(f) = &self.from_access_log {
            match probes.get(&f.probe) {
                Some(crate::probes::ProbeConfig::AccessLog(a)) => {
                    if a.format != crate::probes::access_log::LogFormat::Combined {
                        own.push((
                            "from_access_log",
                            format!("`{}` reads JSON lines; from_access_log reads combined-format logs only", f.probe),
                        ));
                    }
                }
                Some(other) => own.push((
                    "from_access_log",
                    format!(
                        "`{}` is a {} probe; from_access_log needs an access_log probe",
                        f.probe,
                        other.kind()
                    ),
                )),
                None => own.push((
                    "from_access_log",
                    format!("no probe `{}` is configured ([probe.{}])", f.probe, f.probe),
                )),
            }
        }
        super::config::with_probe_check(own, probes, &self.probe, ProbeKind::Redis, "cache_warmup")
    }
    fn build(&self, name: &str, probes: &Probes) -> Option<AnyTask> {
        let redis = super::config::redis_probe(probes, &self.probe)?;
        let mut task = WarmupTask::new(name, self, redis);
        if let Some(f) = &self.from_access_log {
            match probes.get(&f.probe)? {
                crate::probes::ProbeConfig::AccessLog(a) => task.access_log = Some(a.clone()),
                _ => return None,
            }
        }
        Some(Box::new(task))
    }
    fn batch_size(&self) -> u64 {
        BATCH
    }
    fn after(&self) -> Option<&str> {
        self.after.as_deref()
    }
}

impl WarmupConfig {
    /// Problems of the kind's own fields, as (field, message).
    pub fn validate_own(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.urls.is_empty() && self.from_access_log.is_none() {
            out.push((
                "urls",
                "at least one URL (or from_access_log) is needed".into(),
            ));
        }
        if let Some(f) = &self.from_access_log {
            if let Err(e) = parse_url(&f.base_url) {
                out.push(("from_access_log", format!("base_url: {e}")));
            }
            if !(1..=1000).contains(&f.top) {
                out.push(("from_access_log", "top must be 1 to 1000".into()));
            }
            if f.window < Duration::from_secs(60) {
                out.push(("from_access_log", "window must be at least 1m".into()));
            }
        }
        for u in &self.urls {
            if let Err(e) = parse_url(u) {
                out.push(("urls", e));
            }
        }
        for msg in header_problems(&self.headers) {
            out.push(("headers", msg));
        }
        if !(1..=64).contains(&self.concurrency) {
            out.push(("concurrency", "must be 1 to 64".into()));
        }
        if !(self.rate > 0.0 && self.rate <= 1000.0) {
            out.push(("rate", "must be above 0 and at most 1000 per second".into()));
        }
        if self.request_timeout < Duration::from_millis(10) {
            out.push(("request_timeout", "must be at least 10ms".into()));
        }
        out
    }
}

/// One URL's answer.
#[derive(Debug, Clone, serde::Serialize)]
struct Answer {
    url: String,
    status: Option<u16>,
    ms: u64,
    error: Option<String>,
}

pub struct WarmupTask {
    name: String,
    config: WarmupConfig,
    redis: RedisConfig,
    /// The access_log probe of `from_access_log`.
    access_log: Option<crate::probes::access_log::AccessLogConfig>,
    /// The plan's URLs.
    urls: Vec<String>,
    next: usize,
    answers: Vec<Answer>,
}

impl WarmupTask {
    pub fn new(name: &str, config: &WarmupConfig, redis: &RedisConfig) -> WarmupTask {
        WarmupTask {
            name: name.to_string(),
            config: config.clone(),
            redis: redis.clone(),
            access_log: None,
            urls: Vec::new(),
            next: 0,
            answers: Vec::new(),
        }
    }

    /// One GET, bounded by `request_timeout`, the body read and dropped.
    async fn fetch(
        client: &mut Client,
        url: Url,
        expect: &ExpectStatus,
        limit: Duration,
    ) -> Answer {
        let started = Instant::now();
        let result = tokio::time::timeout(limit, async {
            let resp = client
                .send(Method::Get, &url)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status;
            resp.body(BODY_LIMIT).await?;
            Ok::<u16, String>(status)
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(s) if expect.matches(s) => Answer {
                url: url.to_string(),
                status: Some(s),
                ms,
                error: None,
            },
            Ok(s) => Answer {
                url: url.to_string(),
                status: Some(s),
                ms,
                error: Some(format!("answered {s}, expected {expect}")),
            },
            Err(e) => Answer {
                url: url.to_string(),
                status: None,
                ms,
                error: Some(e),
            },
        }
    }

    /// Requests `urls`, at most `concurrency` at once, starting one every
    /// 1/rate seconds.
    async fn request_all(&self, urls: Vec<Url>) -> Vec<Answer> {
        let c = &self.config;
        let gap = Duration::from_secs_f64(1.0 / c.rate);
        let slots = Arc::new(tokio::sync::Semaphore::new(c.concurrency as usize));
        let mut tasks = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(gap);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for (i, url) in urls.into_iter().enumerate() {
            tick.tick().await;
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let mut client = Client::new(c.headers.clone(), None);
            let (expect, limit) = (c.expect_status.clone(), c.request_timeout);
            tasks.spawn(async move {
                let a = Self::fetch(&mut client, url, &expect, limit).await;
                drop(permit);
                (i, a)
            });
        }
        let mut out: Vec<(usize, Answer)> = tasks.join_all().await;
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, a)| a).collect()
    }

    fn failures(&self) -> Vec<&Answer> {
        self.answers.iter().filter(|a| a.error.is_some()).collect()
    }
}

impl Task for WarmupTask {
    async fn figures(&mut self) -> Result<serde_json::Value, TaskError> {
        let server = self.redis.connection();
        let mut conn = server
            .connect(Duration::from_secs(10))
            .await
            .map_err(|e| TaskError::failed(format!("redis {}: {e}", self.redis.url)))?;
        let text: String = ::redis::cmd("INFO")
            .query_async(&mut conn)
            .await
            .map_err(|e| TaskError::failed(format!("redis {}: INFO: {e}", self.redis.url)))?;
        let db = server
            .connection_info()
            .map(|i| crate::clients::redis::endpoint(&i).1)
            .unwrap_or(0);
        Ok(super::redis_cleanup::redis_figures(&parse_info(&text), db))
    }

    async fn plan(&mut self, _cx: &Cx) -> Result<Plan, TaskError> {
        self.next = 0;
        self.answers.clear();
        let mut urls = self.config.urls.clone();
        let mut from_log = Vec::new();
        if let (Some(f), Some(a)) = (self.config.from_access_log.clone(), self.access_log.clone()) {
            let since = crate::sample::now_ms() - f.window.as_millis() as i64;
            let top = tokio::task::spawn_blocking(move || {
                let mut t = TopPaths::new(COUNTED_PATHS.max(f.top * 20));
                for p in &a.paths {
                    let mut rotated = p.as_os_str().to_owned();
                    rotated.push(&a.rotated_suffix);
                    for file in [std::path::PathBuf::from(rotated), p.clone()] {
                        t.add_file(&file, since)
                            .map_err(|e| format!("{}: {e}", file.display()))?;
                    }
                }
                Ok::<_, String>(t.top(f.top))
            })
            .await
            .map_err(|e| TaskError::failed(e.to_string()))?
            .map_err(|e| TaskError::Config {
                field: "from_access_log",
                message: e,
            })?;
            let base = self
                .config
                .from_access_log
                .as_ref()
                .map(|f| f.base_url.trim_end_matches('/').to_string())
                .unwrap_or_default();
            for (path, n) in top {
                let url = format!("{base}{path}");
                if !urls.contains(&url) {
                    urls.push(url.clone());
                }
                from_log.push(json!({ "url": url, "requests": n }));
            }
        }
        let summary = format!(
            "request {} URLs (GET; {} from the access log), {} at a time, at most {}/s, expecting {}",
            urls.len(),
            from_log.len(),
            self.config.concurrency,
            self.config.rate,
            self.config.expect_status
        );
        self.urls = urls;
        Ok(Plan {
            summary,
            rows: self.urls.len() as u64,
            bytes: 0,
            details: json!({ "urls": self.urls, "from_access_log": from_log }),
        })
    }

    fn backup_bytes(&self, _plan: &Plan) -> u64 {
        0
    }

    async fn backup(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Backup, TaskError> {
        Ok(self.backup_state().expect("always"))
    }

    async fn apply_batch(&mut self, _cx: &Cx, _plan: &Plan, size: u64) -> Result<Batch, TaskError> {
        let urls = &self.urls;
        let end = (self.next + size.max(1) as usize).min(urls.len());
        let todo: Vec<Url> = urls[self.next..end]
            .iter()
            .map(|u| {
                parse_url(u).map_err(|e| TaskError::Config {
                    field: "urls",
                    message: e,
                })
            })
            .collect::<Result<_, _>>()?;
        let answers = self.request_all(todo).await;
        let ok = answers.iter().filter(|a| a.error.is_none()).count() as u64;
        let failed: Vec<String> = answers
            .iter()
            .filter_map(|a| Some(format!("{}: {}", a.url, a.error.as_ref()?)))
            .collect();
        let n = answers.len();
        self.answers.extend(answers);
        self.next = end;
        let mut detail = format!("{ok} of {n} URLs answered as expected");
        if let Some(first) = failed.first() {
            detail.push_str(&format!("; {} failed, the first: {first}", failed.len()));
        }
        Ok(Batch {
            rows: ok,
            archived: 0,
            detail,
            done: self.next >= urls.len(),
        })
    }

    fn backup_state(&self) -> Option<Backup> {
        Some(Backup {
            location: "none".into(),
            rows: 0,
            bytes: 0,
            details: json!({ "note": "a warm-up removes nothing: nothing is saved" }),
        })
    }

    async fn validate(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Verdict, TaskError> {
        let failed = self.failures();
        let n = self.answers.len();
        let mut ms: Vec<u64> = self.answers.iter().map(|a| a.ms).collect();
        ms.sort_unstable();
        let median = ms.get(ms.len() / 2).copied();
        let detail = if failed.is_empty() && n == self.urls.len() {
            format!(
                "all {n} URLs answered {} (median {} ms)",
                self.config.expect_status,
                median.unwrap_or(0)
            )
        } else {
            let list: Vec<String> = failed
                .iter()
                .take(5)
                .map(|a| format!("{}: {}", a.url, a.error.as_deref().unwrap_or("")))
                .collect();
            format!(
                "{} of {} URLs did not answer as expected: {}",
                failed.len(),
                self.urls.len(),
                list.join("; ")
            )
        };
        Ok(Verdict {
            ok: failed.is_empty() && n == self.urls.len(),
            detail,
            figures: json!({ "answers": self.answers, "median_ms": median }),
        })
    }

    async fn rollback(&mut self, _cx: &Cx, _backup: &Backup) -> Result<Verdict, TaskError> {
        Err(TaskError::failed(format!(
            "{}: a cache warm-up removes nothing, so there is nothing to roll back (the cache fills and expires by itself)",
            self.name
        )))
    }

    fn reversible(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> WarmupConfig {
        toml::from_str(&format!("probe = \"cache\"\n{extra}")).unwrap()
    }

    #[test]
    fn urls_headers_and_pacing_are_checked() {
        let ok = cfg("urls = [\"http://127.0.0.1:3000/a\"]");
        assert!(ok.validate_own().is_empty());
        assert_eq!((ok.concurrency, ok.rate), (4, 20.0));
        let bad = cfg(
            "urls = [\"ftp://x/\", \"http://u:p@h/\"]\nheaders = { Authorization = \"Bearer x\" }\nconcurrency = 0\nrate = 0.0",
        )
        .validate_own();
        let fields: Vec<_> = bad.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            vec!["urls", "urls", "headers", "concurrency", "rate"]
        );
        assert!(bad[2].1.contains("credentials"), "{}", bad[2].1);
        assert_eq!(cfg("").validate_own()[0].0, "urls");
    }
}
