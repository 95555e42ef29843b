//! PostgreSQL connections for the postgres probe and the PostgreSQL tasks:
//! the connection settings checked (no user or password in conninfo, no
//! TLS yet), the password read from its file on each connect, errors that
//! name the server; the tasks' `Session` with its timeouts; identifier
//! checks, quoting and qualified names. Catalog lookups that turn
//! configured names into checked relations are in `catalog.rs`.

pub mod catalog;
pub mod priority;
pub mod tools;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::task::AbortOnDropHandle;

use super::Failure;

/// Why a task's use of the server failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// What the server holds does not fit a setting (a table that is a
    /// view): names the config field.
    #[error("{field}: {message}")]
    Setting {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Failed(String),
}

/// Where and as whom to connect: what a `kind = "postgres"` probe table
/// holds about its server, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// libpq key/value string or `postgres://` URL, without user or password.
    pub conninfo: &'a str,
    /// The role to log in as.
    pub user: &'a str,
    /// File holding the password (first line).
    pub password_file: Option<&'a Path>,
    /// Database; unset: the conninfo's, else the user's name (as libpq).
    pub dbname: Option<&'a str>,
    pub connect_timeout: Duration,
}

impl Settings<'_> {
    /// The connection settings without a password, or why they cannot be
    /// used (naming options, never values).
    pub fn parse(&self) -> Result<tokio_postgres::Config, String> {
        let mut c: tokio_postgres::Config = self.conninfo.parse().map_err(|e| {
            // The parser's messages name options, never values.
            format!(
                "not a libpq key/value string or postgres:// URL: {}",
                cause(&e)
            )
        })?;
        if c.get_password().is_some() {
            return Err(
                "a password in conninfo is not allowed: put it in the file named by password_file"
                    .into(),
            );
        }
        if c.get_user().is_some() {
            return Err("a user in conninfo is not allowed: set it with `user`".into());
        }
        if c.get_hosts().is_empty() {
            return Err("names no host (host=... or postgres://HOST/)".into());
        }
        if matches!(c.get_ssl_mode(), SslMode::Require) {
            return Err("sslmode=require: this probe does not speak TLS yet".into());
        }
        match (self.dbname, c.get_dbname()) {
            (Some(_), Some(_)) => return Err("sets dbname, and so does the `dbname` field".into()),
            (Some(db), None) => {
                c.dbname(db);
            }
            _ => {}
        }
        c.user(self.user);
        if c.get_application_name().is_none() {
            c.application_name("upkeep");
        }
        c.connect_timeout(self.connect_timeout);
        Ok(c)
    }
}

/// Opens a session with `settings` for another user than the probe, such
/// as a maintenance task; `application_name` names it in
/// `pg_stat_activity`. The connection is driven by a task that ends when
/// the returned handle is dropped. Errors name the endpoint, never the
/// password.
pub async fn connect(
    settings: &Settings<'_>,
    application_name: &str,
) -> Result<(Client, AbortOnDropHandle<()>), String> {
    let mut pg = settings.parse()?;
    let at = endpoint(&pg);
    pg.application_name(application_name);
    set_password(&mut pg, settings.password_file)?;
    dial(pg, settings.connect_timeout)
        .await
        .map_err(|e| format!("postgres {at}: {e}"))
}

/// Sets the password read from `password_file`, if one is named.
pub fn set_password(
    config: &mut tokio_postgres::Config,
    password_file: Option<&Path>,
) -> Result<(), String> {
    if let Some(path) = password_file {
        config.password(crate::secret::read(path)?.expose());
    }
    Ok(())
}

/// Connects with `config` (consumed, so that its password goes as soon as
/// the connection is up) within `limit`. The connection is driven by a task
/// that ends when the returned handle is dropped: a connection waiting on a
/// server that stopped answering would otherwise outlive whoever gave up
/// on it. `Client::is_closed` tells when the server went away. A failure
/// keeps the library's error as its cause.
pub async fn dial(
    config: tokio_postgres::Config,
    limit: Duration,
) -> Result<(Client, AbortOnDropHandle<()>), Failure> {
    let (client, connection) = tokio::time::timeout(limit, config.connect(NoTls))
        .await
        .map_err(|_| format!("connect timed out after {limit:?}"))?
        .map_err(|e| Failure::caused_by(describe(&e), e))?;
    drop(config);
    let task = AbortOnDropHandle::new(tokio::spawn(async move {
        let _ = connection.await;
    }));
    Ok((client, task))
}

/// `host:port/dbname` of the server; every host when several.
pub fn endpoint(c: &tokio_postgres::Config) -> String {
    let ports = c.get_ports();
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(h) if h.contains(':') => format!("[{h}]:{port}"),
                Host::Tcp(h) => format!("{h}:{port}"),
                Host::Unix(p) => format!("{}:{port}", p.display()),
            }
        })
        .collect();
    let db = c.get_dbname().or(c.get_user()).unwrap_or("");
    format!("{}/{db}", hosts.join(","))
}

/// One line: the server's own message (and detail) for a server error,
/// else the library's words and their cause ("error connecting to
/// server: ...").
pub fn describe(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => cause(e),
    };
    text.replace('\n', "; ")
}

/// An error and its direct cause, which tokio-postgres keeps apart.
pub fn cause(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// A task's open session and the task driving its connection (ended on
/// drop).
pub struct Session {
    pub client: Client,
    _conn: AbortOnDropHandle<()>,
    /// Client-side limit of one statement: the server's `statement_timeout`
    /// plus a margin, for a server that stopped answering altogether.
    pub limit: Duration,
    /// Statements prepared on this connection, by their SQL text.
    statements: HashMap<String, Statement>,
}

impl Session {
    /// Connects as `upkeep maintenance TASK` and applies `settings`
    /// (`SET name = value`; names and values are the task's own, never
    /// config text). Every session writes times in UTC and floats exactly,
    /// so that a row's JSON is the same whichever session reads it, and
    /// plans each execution of a [prepared](Session::prepared) statement
    /// for its own parameters, as an unprepared one is: a generic plan
    /// cannot see a batch's range or cutoff.
    pub async fn open(
        pg: &Settings<'_>,
        task: &str,
        settings: &[(&str, String)],
        statement_timeout: Duration,
    ) -> Result<Session, Error> {
        let (client, conn) = connect(pg, &format!("upkeep maintenance {task}"))
            .await
            .map_err(Error::Failed)?;
        let limit = statement_timeout + pg.connect_timeout + Duration::from_secs(5);
        let session = Session {
            client,
            _conn: conn,
            limit,
            statements: HashMap::new(),
        };
        let set: String = [
            ("TimeZone", "'UTC'".to_string()),
            ("extra_float_digits", "3".into()),
            ("plan_cache_mode", "force_custom_plan".into()),
        ]
        .iter()
        .chain(settings)
        .map(|(name, value)| format!("SET {name} = {value};"))
        .collect();
        session
            .timed(session.client.batch_execute(&set))
            .await
            .map_err(|e| Error::Failed(format!("setting up the session: {e}")))?;
        Ok(session)
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// `sql` prepared on this connection, once: a statement run again and
    /// again (a task's batches) then costs one round trip, not two (a text
    /// query is parsed and described before it is bound and run).
    pub async fn prepared(&mut self, sql: &str) -> Result<Statement, String> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = timed(self.limit, self.client.prepare(sql)).await?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Runs one statement within the client-side limit.
    pub async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, String> {
        timed(self.limit, f).await
    }
}

/// Runs one statement (or a batch sent together) within `limit`.
pub async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| describe(&e)),
        Err(_) => Err(format!("no answer from the server within {limit:?}")),
    }
}

/// A duration as a `SET` value: milliseconds, at least 1 (0 would mean
/// no limit).
pub fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// SQL of `expr` (a timestamptz) as RFC 3339 UTC text with microseconds.
pub fn rfc3339_sql(expr: &str) -> String {
    format!("to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

/// `"name"` with any `"` doubled: an identifier as SQL text.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// PostgreSQL keeps the first 63 bytes of an identifier (NAMEDATALEN − 1).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// A plain identifier as it may appear in config: lower case (unquoted
/// identifiers fold to it), letters, digits, `_` and `$`, not starting with
/// a digit or `$`, at most 63 bytes. Quoted identifiers are refused rather
/// than guessed at.
pub fn identifier(s: &str) -> Result<&str, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.starts_with('"') || s.ends_with('"') {
        return Err(format!(
            "`{s}`: quoted identifiers are not supported; name a plain lower-case identifier"
        ));
    }
    if s.len() > MAX_IDENTIFIER_BYTES {
        let cut = s
            .char_indices()
            .take_while(|(i, c)| i + c.len_utf8() <= MAX_IDENTIFIER_BYTES)
            .map(|(i, c)| i + c.len_utf8())
            .last()
            .unwrap_or(0);
        return Err(format!(
            "`{s}` is {} bytes: PostgreSQL would truncate it to `{}`, which may name another object",
            s.len(),
            &s[..cut]
        ));
    }
    let first = s.as_bytes()[0];
    let ok = (first.is_ascii_lowercase() || first == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$');
    if !ok {
        return Err(format!(
            "`{s}` is not a plain identifier (lower-case letters, digits, `_`, `$`; not starting with a digit)"
        ));
    }
    Ok(s)
}

/// `table` or `schema.table`, each a plain identifier; returns (schema,
/// table) with the schema defaulting to `public`.
pub fn qualified_name(s: &str) -> Result<(String, String), String> {
    let parts: Vec<&str> = s.split('.').collect();
    match parts.as_slice() {
        [t] => Ok(("public".into(), identifier(t)?.to_string())),
        [schema, t] => Ok((identifier(schema)?.to_string(), identifier(t)?.to_string())),
        _ => Err(format!("`{s}` is not `table` or `schema.table`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(conninfo: &str) -> Settings<'_> {
        Settings {
            conninfo,
            user: "app",
            password_file: None,
            dbname: None,
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn conninfo_is_checked_without_echoing_a_password() {
        assert!(settings("host=127.0.0.1 port=5432").parse().is_ok());
        let e = settings("host=127.0.0.1 password=hunter2-canary")
            .parse()
            .unwrap_err();
        assert!(e.contains("password") && !e.contains("hunter2"), "{e}");
        assert!(
            settings("port=5432")
                .parse()
                .unwrap_err()
                .contains("no host")
        );
        let both = Settings {
            dbname: Some("a"),
            ..settings("host=h dbname=b")
        };
        assert!(both.parse().unwrap_err().contains("dbname"));
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote("audit_log"), "\"audit_log\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn endpoint_names_host_port_and_database() {
        let c = |s: &str| endpoint(&s.parse().unwrap());
        assert_eq!(c("host=127.0.0.1 dbname=app"), "127.0.0.1:5432/app");
        assert_eq!(c("postgres://db.example:6432/x"), "db.example:6432/x");
        assert_eq!(c("host=a,b port=1,2 user=u"), "a:1,b:2/u");
        assert_eq!(c("host=::1 port=5433 dbname=d"), "[::1]:5433/d");
    }
}
