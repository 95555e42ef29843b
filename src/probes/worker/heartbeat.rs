//! A worker's heartbeat: the mtime of a file it touches, or a Redis key
//! holding the unix time (seconds) of its last beat. Either gives
//! `heartbeat_age_seconds`; older than `max_age` fails the tick.
//!
//! The Redis password, when needed, comes from a file (never the URL) and is
//! read when the connection is made; the connection is kept across ticks and
//! dropped on an error, to be made again on the next tick.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::IntoConnectionInfo;
use redis::aio::MultiplexedConnection;

use super::WorkerConfig;
use crate::clients::Failure;

/// Later than this, a "seconds" value is really milliseconds (year 5138).
const MAX_UNIX_SECONDS: f64 = 1e11;

pub fn validate(c: &WorkerConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut bad = |field, msg: &str| out.push((field, msg.to_string()));
    match (&c.heartbeat_file, &c.heartbeat_redis_url) {
        (Some(_), Some(_)) => bad(
            "heartbeat_redis_url",
            "set heartbeat_file or heartbeat_redis_url, not both",
        ),
        (None, None) if c.max_age.is_some() => {
            bad("max_age", "needs heartbeat_file or heartbeat_redis_url")
        }
        (Some(_), None) | (None, Some(_)) if c.max_age.is_none() => {
            bad("kind", "a heartbeat needs max_age")
        }
        _ => {}
    }
    if c.max_age.is_some_and(|a| a.is_zero()) {
        bad("max_age", "must be greater than 0");
    }
    match (&c.heartbeat_redis_url, &c.heartbeat_key) {
        (Some(url), key) => {
            if let Err(e) = check_url(url) {
                out.push(("heartbeat_redis_url", e));
            }
            if key.as_deref().is_none_or(str::is_empty) {
                out.push(("heartbeat_key", "heartbeat_redis_url needs a key".into()));
            }
        }
        (None, Some(_)) => out.push(("heartbeat_key", "needs heartbeat_redis_url".into())),
        (None, None) => {}
    }
    if c.heartbeat_redis_password_file.is_some() && c.heartbeat_redis_url.is_none() {
        out.push((
            "heartbeat_redis_password_file",
            "needs heartbeat_redis_url".into(),
        ));
    }
    out
}

fn check_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if url.password().is_some() {
        return Err("holds a password: put it in heartbeat_redis_password_file".into());
    }
    text.into_connection_info()
        .map(|_| ())
        .map_err(|e| format!("not a Redis URL: {e}"))
}

pub struct Heartbeat {
    pub max_age: Duration,
    source: Source,
}

enum Source {
    File(PathBuf),
    Redis {
        url: String,
        key: String,
        password_file: Option<PathBuf>,
        conn: Option<MultiplexedConnection>,
    },
}

impl Heartbeat {
    pub fn new(c: &WorkerConfig) -> Option<Heartbeat> {
        let max_age = c.max_age?;
        let source = match (&c.heartbeat_file, &c.heartbeat_redis_url, &c.heartbeat_key) {
            (Some(path), None, _) => Source::File(path.clone()),
            (None, Some(url), Some(key)) => Source::Redis {
                url: url.clone(),
                key: key.clone(),
                password_file: c.heartbeat_redis_password_file.clone(),
                conn: None,
            },
            _ => return None,
        };
        Some(Heartbeat { max_age, source })
    }

    /// The heartbeat file and max age, to be read on the blocking pool.
    pub fn file(&self) -> Option<(PathBuf, Duration)> {
        match &self.source {
            Source::File(p) => Some((p.clone(), self.max_age)),
            Source::Redis { .. } => None,
        }
    }

    /// Age of the Redis heartbeat; `None` for a file heartbeat.
    pub async fn redis_age(&mut self) -> Option<Result<f64, Failure>> {
        let Source::Redis {
            url,
            key,
            password_file,
            conn,
        } = &mut self.source
        else {
            return None;
        };
        let mut c = match conn.take() {
            Some(c) => c,
            None => match connect(url, password_file.as_ref()).await {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            },
        };
        let got: Result<Option<String>, _> = redis::cmd("GET").arg(&*key).query_async(&mut c).await;
        Some(match got {
            Ok(value) => {
                *conn = Some(c);
                match value {
                    None => Err(format!("heartbeat key `{key}` is not set").into()),
                    Some(v) => parse_beat(&v)
                        .map(age_of)
                        .map_err(|e| format!("heartbeat key `{key}`: {e}").into()),
                }
            }
            Err(e) => Err(Failure::caused_by(format!("heartbeat key `{key}`: {e}"), e)),
        })
    }
}

/// A failure to connect keeps the library's error as its cause.
async fn connect(
    url: &str,
    password_file: Option<&PathBuf>,
) -> Result<MultiplexedConnection, Failure> {
    let fail = |e: &dyn std::fmt::Display| format!("heartbeat redis: {e}");
    let mut info = url.into_connection_info().map_err(|e| fail(&e))?;
    if let Some(path) = password_file {
        let secret = crate::secret::read(path).map_err(|e| fail(&e))?;
        let settings = info.redis_settings().clone().set_password(secret.expose());
        info = info.set_redis_settings(settings);
    }
    let client = redis::Client::open(info).map_err(|e| fail(&e))?;
    // The probe's timeout bounds the tick: no shorter limits of the client's own.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(None)
        .set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| Failure::caused_by(fail(&e), e))
}

/// Seconds since the file was last modified (0 when its mtime is ahead).
pub fn file_age(path: &PathBuf) -> Result<f64, String> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| format!("heartbeat file {}: {e}", path.display()))?;
    Ok(SystemTime::now()
        .duration_since(modified)
        .map_or(0.0, |d| d.as_secs_f64()))
}

/// A beat value: unix seconds, whole or fractional.
pub fn parse_beat(text: &str) -> Result<f64, String> {
    let t = text.trim();
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..MAX_UNIX_SECONDS).contains(&v) => Ok(v),
        Ok(v) if v >= MAX_UNIX_SECONDS => {
            Err(format!("`{t}` looks like milliseconds, not unix seconds"))
        }
        _ => Err(format!("`{t}` is not a unix time in seconds")),
    }
}

fn age_of(beat: f64) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    (now - beat).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_are_unix_seconds() {
        assert_eq!(parse_beat("1700000000\n"), Ok(1_700_000_000.0));
        assert_eq!(parse_beat("1700000000.25"), Ok(1_700_000_000.25));
        assert!(
            parse_beat("1700000000000")
                .unwrap_err()
                .contains("milliseconds")
        );
        assert!(parse_beat("soon").unwrap_err().contains("not a unix time"));
        assert!(parse_beat("-5").is_err() && parse_beat("NaN").is_err());
        assert!(age_of(0.0) > 1e9 && age_of(1e10) == 0.0);
    }

    #[test]
    fn redis_urls_carry_no_password() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(
            check_url("redis://user:hunter2@127.0.0.1/")
                .unwrap_err()
                .contains("password_file")
        );
        assert!(
            check_url("http://127.0.0.1/")
                .unwrap_err()
                .contains("not a Redis URL")
        );
    }
}
