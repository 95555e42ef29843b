//! Redis connections for the redis probe and the Redis tasks: the URL
//! checked (no password in it, one user), the password read from its file
//! on each connect, and one multiplexed connection bounded in time, the
//! handshake included.

use std::path::Path;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ConnectionInfo, ErrorKind, IntoConnectionInfo};

use super::Failure;

/// Where and as whom to connect: what a `kind = "redis"` probe table holds
/// about its server, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// `redis://HOST:PORT/DB` or `redis+unix:///path?db=N`, no password.
    pub url: &'a str,
    /// ACL user (Redis 6+); unset: `default`.
    pub username: Option<&'a str>,
    /// File holding the password (first line).
    pub password_file: Option<&'a Path>,
    pub connect_timeout: Duration,
}

impl Settings<'_> {
    /// Where and as whom to connect, without a password; or why the URL
    /// cannot be used (never echoing a password in it).
    pub fn connection_info(&self) -> Result<ConnectionInfo, String> {
        let url = ::redis::parse_redis_url(self.url)
            .ok_or("not a redis://HOST:PORT/DB or redis+unix:///PATH URL")?;
        if url.password().is_some() {
            return Err(
                "a password in the URL is not allowed: put it in the file named by password_file"
                    .into(),
            );
        }
        if !url.username().is_empty() && self.username.is_some() {
            return Err("names a user, and so does `username`".into());
        }
        let info = self.url.into_connection_info().map_err(|e| e.to_string())?;
        Ok(match self.username {
            Some(user) => {
                let settings = info.redis_settings().clone().set_username(user);
                info.set_redis_settings(settings)
            }
            None => info,
        })
    }

    /// Opens one connection; every command's answer is bounded by
    /// `response_timeout`.
    pub async fn connect(
        &self,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection, String> {
        connect(
            self.connection_info()?,
            self.password_file,
            self.connect_timeout,
            response_timeout,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

/// `host:port` (or the socket path) and the database number: names the
/// server in errors.
pub fn endpoint(info: &ConnectionInfo) -> (String, u32) {
    (
        info.addr().to_string(),
        u32::try_from(info.redis_settings().db()).unwrap_or(0),
    )
}

/// Opens one connection to `info` (parsed once by the caller), reading the
/// password from `password_file` now. `connect_timeout` bounds the socket
/// and the handshake (AUTH, SELECT) on a server that accepts and stalls;
/// `response_timeout` bounds every command's answer afterwards. A failure
/// keeps the library's error as its cause.
pub async fn connect(
    mut info: ConnectionInfo,
    password_file: Option<&Path>,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<MultiplexedConnection, Failure> {
    if let Some(path) = password_file {
        let secret = crate::secret::read(path)?;
        let settings = info.redis_settings().clone().set_password(secret.expose());
        info = info.set_redis_settings(settings);
    }
    let user = info
        .redis_settings()
        .username()
        .unwrap_or("default")
        .to_string();
    let client = Client::open(info).map_err(|e| e.to_string())?;
    let limit = connect_timeout;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limit))
        .set_response_timeout(Some(response_timeout));
    // The library's own timeout covers the socket; this one also covers
    // the handshake (AUTH, SELECT) on a server that accepts and stalls.
    tokio::time::timeout(
        limit,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| format!("connect timed out after {limit:?}"))?
    .map_err(|e| {
        let message = match e.kind() {
            // The library drops the server's words (WRONGPASS).
            ErrorKind::AuthenticationFailed => format!("authentication failed for user `{user}`"),
            _ if e.is_timeout() => format!("connect timed out after {limit:?}"),
            _ => e.to_string(),
        };
        Failure::caused_by(message, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Settings<'_> {
        Settings {
            url,
            username: None,
            password_file: None,
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_url_names_its_server_and_database() {
        let info = settings("redis://127.0.0.1:6390/4")
            .connection_info()
            .unwrap();
        assert_eq!(endpoint(&info), ("127.0.0.1:6390".to_string(), 4));
        let two_users = Settings {
            username: Some("b"),
            ..settings("redis://a@127.0.0.1/0")
        };
        assert!(two_users.connection_info().unwrap_err().contains("user"));
    }
}
