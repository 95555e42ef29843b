//! `kind = "redis"`: PING latency, memory against `maxmemory`, clients,
//! keys per database, eviction and expiry rates and the keyspace hit ratio
//! of one Redis server. Built by `probes::build`; connects on its first tick
//! and keeps one multiplexed connection across ticks, reconnecting after any
//! failure. `INFO` is parsed by the pure `parse_info`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ::redis::ConnectionInfo;
use ::redis::aio::MultiplexedConnection;

use super::config::{ConfiguredKind, KindFacts, Threshold};
use super::{AnyProbe, BuildContext, Probe, ProbeError};
use crate::clients;
use crate::clients::Failure;
use crate::probe_config;
use crate::sample::{Reading, Unit};

mod info;
use info::{Counters, info_readings};
pub use info::{Info, parse_info};

probe_config! {
    /// `[probe.NAME] kind = "redis"`.
    pub struct RedisConfig {
        /// `redis://HOST:PORT/DB` (or `redis+unix:///path?db=N`), without
        /// a password.
        pub url: String,
        /// ACL user (Redis 6+); unset: `default`.
        #[serde(default)]
        pub username: Option<String>,
        /// File holding the password (first line). Read when connecting only.
        #[serde(default)]
        pub password_file: Option<PathBuf>,
        #[serde(default = "default_connect_timeout", with = "humantime_serde")]
        pub connect_timeout: Duration,
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl RedisConfig {
    /// Where and as whom to connect: the table's connection settings.
    pub fn connection(&self) -> clients::redis::Settings<'_> {
        clients::redis::Settings {
            url: &self.url,
            username: self.username.as_deref(),
            password_file: self.password_file.as_deref(),
            connect_timeout: self.connect_timeout,
        }
    }

    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = self.connection().connection_info() {
            out.push(("url", e));
        }
        if self.username.as_ref().is_some_and(|u| u.is_empty()) {
            out.push(("username", "must not be empty".into()));
        }
        if self.connect_timeout.is_zero() {
            out.push(("connect_timeout", "must be greater than 0".into()));
        }
        out
    }
}

/// PING latency as the seed judged it: degraded from 100 ms, unhealthy from
/// 500 ms; memory degraded at 85 % of `maxmemory`, unhealthy at 95 %.
pub fn default_thresholds() -> Vec<Threshold> {
    vec![
        Threshold::above("ping_seconds", 0.1, 0.5),
        Threshold::above("memory_used_ratio", 0.85, 0.95),
    ]
}

pub struct RedisProbe {
    /// Where to connect (no password), or why the URL cannot be used.
    info: Result<ConnectionInfo, String>,
    password_file: Option<PathBuf>,
    /// `host:port` (or socket path): names the server in every error.
    endpoint: String,
    db: u32,
    connect_timeout: Duration,
    /// Bound on every command's answer: the probe's tick timeout.
    timeout: Duration,
    /// Taken out for the duration of a tick and put back only when it
    /// succeeds: a failed or abandoned tick leaves no half-used connection.
    conn: Option<MultiplexedConnection>,
    /// Likewise: rates never span a failed tick.
    prev: Option<Counters>,
}

impl std::fmt::Debug for RedisProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisProbe")
            .field("endpoint", &self.endpoint)
            .field("db", &self.db)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisProbe {
    /// Never connects. `timeout` is the probe's tick timeout.
    pub fn new(config: &RedisConfig, timeout: Duration) -> RedisProbe {
        let info = config.connection().connection_info();
        let (endpoint, db) = match &info {
            Ok(i) => clients::redis::endpoint(i),
            Err(_) => ("(invalid url)".to_string(), 0),
        };
        RedisProbe {
            info,
            password_file: config.password_file.clone(),
            endpoint,
            db,
            connect_timeout: config.connect_timeout,
            timeout,
            conn: None,
            prev: None,
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, Failure> {
        clients::redis::connect(
            self.info.clone()?,
            self.password_file.as_deref(),
            self.connect_timeout,
            self.timeout,
        )
        .await
    }

    async fn tick(&mut self, prev: Option<Counters>) -> Result<Vec<Reading>, Failure> {
        let mut out = Vec::new();
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let started = Instant::now();
                let c = self.connect().await?;
                let took = started.elapsed().as_secs_f64();
                out.push(Reading::new("connect_seconds", took, Unit::Seconds));
                c
            }
        };
        let limit = self.timeout;
        let timed = |what: &'static str| move |_| format!("{what} timed out after {limit:?}");
        let started = Instant::now();
        let _: String = tokio::time::timeout(limit, ::redis::cmd("PING").query_async(&mut conn))
            .await
            .map_err(timed("PING"))?
            .map_err(|e| format!("PING: {e}"))?;
        let took = started.elapsed().as_secs_f64();
        out.push(Reading::new("ping_seconds", took, Unit::Seconds));
        let text: String = tokio::time::timeout(limit, ::redis::cmd("INFO").query_async(&mut conn))
            .await
            .map_err(timed("INFO"))?
            .map_err(|e| format!("INFO: {e}"))?;
        let info = parse_info(&text);
        let cur = Counters::of(&info, Instant::now());
        out.extend(info_readings(&info, self.db, prev.as_ref(), cur.as_ref()));
        self.conn = Some(conn);
        self.prev = cur;
        Ok(out)
    }
}

impl KindFacts for RedisConfig {
    const HEADLINE: &'static str = "ping_seconds";
    const LATENCY: Option<&'static str> = Some("ping_seconds");
}

impl ConfiguredKind for RedisConfig {
    fn default_thresholds() -> Vec<Threshold> {
        default_thresholds()
    }

    fn build(&self, _name: &str, timeout: Duration, _ctx: &BuildContext) -> AnyProbe {
        Box::new(RedisProbe::new(self, timeout))
    }
}

impl Probe for RedisProbe {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        let prev = self.prev.take();
        self.tick(prev)
            .await
            .map_err(|e| ProbeError::caused_by(format!("redis {}: {e}", self.endpoint), &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> RedisConfig {
        toml::from_str(&format!("url = \"{url}\"")).unwrap()
    }

    #[test]
    fn url_is_checked_without_echoing_a_password() {
        assert!(cfg("redis://127.0.0.1:6379/0").validate().is_empty());
        assert!(
            cfg("redis+unix:///run/redis.sock?db=2")
                .validate()
                .is_empty()
        );
        let errs = cfg("redis://:hunter2-canary@127.0.0.1:6379/0").validate();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "url");
        assert!(errs[0].1.contains("password") && !errs[0].1.contains("hunter2"));
        assert_eq!(cfg("http://127.0.0.1/").validate()[0].0, "url");
        let p = RedisProbe::new(&cfg("redis://127.0.0.1:6390/4"), Duration::from_secs(1));
        assert_eq!((p.endpoint.as_str(), p.db), ("127.0.0.1:6390", 4));
    }
}
