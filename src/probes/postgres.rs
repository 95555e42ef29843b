//! `kind = "postgres"`: query latency, connections against `max_connections`,
//! database size, transaction rates, cache hit ratio, the oldest open
//! transaction, replication lag and per-table vacuum/analyze state of one
//! PostgreSQL database. Built by `probes::build`; connects on its first tick
//! and keeps one session across ticks, reconnecting after any failure.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Statement};
use tokio_util::task::AbortOnDropHandle;

use super::config::{ConfiguredKind, KindFacts, Threshold};
use super::{AnyProbe, BuildContext, Probe, ProbeError};
use crate::clients;
use crate::clients::Failure;
use crate::clients::postgres::{describe, dial, endpoint, set_password};
use crate::probe_config;
use crate::sample::{Reading, Unit};

mod readings;
use readings::{Counters, activity_readings, count, counter_readings, seconds, table_readings};

probe_config! {
    /// `[probe.NAME] kind = "postgres"`.
    pub struct PostgresConfig {
        /// libpq key/value string (`host=127.0.0.1 port=5432`) or a
        /// `postgres://` URL, without user or password.
        pub conninfo: String,
        /// The role to log in as; always explicit.
        pub user: String,
        /// File holding the password (first line). Read when connecting only.
        #[serde(default)]
        pub password_file: Option<PathBuf>,
        /// Database; unset: the conninfo's, else the user's name (as libpq).
        #[serde(default)]
        pub dbname: Option<String>,
        /// Tables (`name` or `schema.name`) whose dead tuples and last
        /// analyze are watched.
        #[serde(default)]
        pub tables: Vec<String>,
        #[serde(default = "default_connect_timeout", with = "humantime_serde")]
        pub connect_timeout: Duration,
        /// Server-side limit of every statement; unset: the probe's timeout.
        #[serde(default, with = "humantime_serde")]
        pub statement_timeout: Option<Duration>,
        /// Also time a commit that waits for a WAL flush, as the
        /// application's writes do (`commit_seconds`): a one-row insert and
        /// delete on `upkeep_write_check`, a table of one column the probe
        /// creates in the database when this is on (and only then).
        #[serde(default)]
        pub write_check: bool,
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl PostgresConfig {
    /// Where and as whom to connect: the table's connection settings.
    pub fn connection(&self) -> clients::postgres::Settings<'_> {
        clients::postgres::Settings {
            conninfo: &self.conninfo,
            user: &self.user,
            password_file: self.password_file.as_deref(),
            dbname: self.dbname.as_deref(),
            connect_timeout: self.connect_timeout,
        }
    }

    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = self.connection().parse() {
            out.push(("conninfo", e));
        }
        if self.user.trim().is_empty() {
            out.push(("user", "must not be empty".into()));
        }
        if self.connect_timeout.is_zero() {
            out.push(("connect_timeout", "must be greater than 0".into()));
        }
        if self
            .statement_timeout
            .is_some_and(|t| t < Duration::from_millis(1))
        {
            out.push(("statement_timeout", "must be at least 1ms".into()));
        }
        for t in &self.tables {
            let ok = |p: &str| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
            };
            if t.split('.').count() > 2 || !t.split('.').all(ok) {
                out.push(("tables", format!("`{t}` is not `table` or `schema.table`")));
            }
        }
        out
    }
}

/// Query latency as the seed judged it: degraded from 1 s, unhealthy from
/// 3 s; connections degraded at 80 % of `max_connections`, unhealthy at 95 %.
pub fn default_thresholds() -> Vec<Threshold> {
    vec![
        Threshold::above("query_seconds", 1.0, 3.0),
        Threshold::above("connections_used_ratio", 0.8, 0.95),
    ]
}

const STATS_SQL: &str = "SELECT current_setting('max_connections')::int8, \
    pg_database_size(current_database()), d.xact_commit, d.xact_rollback, d.blks_hit, d.blks_read, \
    coalesce(extract(epoch FROM d.stats_reset)::float8, 0), \
    CASE WHEN NOT pg_is_in_recovery() THEN NULL \
         WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8 \
         ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END \
    FROM pg_stat_database d WHERE d.datname = current_database()";

/// Client connections only: autovacuum, WAL senders and background workers
/// have slots of their own, outside `max_connections`. A NULL state is a
/// session this role may not look into (grant `pg_monitor` to see them).
const ACTIVITY_SQL: &str = "SELECT coalesce(state, 'unknown'), count(*), \
    extract(epoch FROM now() - min(xact_start) FILTER (WHERE pid <> pg_backend_pid()))::float8 \
    FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1";

/// Other client backends that wait, by wait event type: what limits the
/// application when maintenance runs (a lock, a buffer or WAL lock, I/O).
/// The probe's own session is left out.
const WAITS_SQL: &str = "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'), \
    count(*) FILTER (WHERE wait_event_type = 'LWLock'), \
    count(*) FILTER (WHERE wait_event_type = 'IO') \
    FROM pg_stat_activity WHERE backend_type = 'client backend' AND state = 'active' \
    AND pid <> pg_backend_pid()";

/// The write check's table. A transaction that only takes an xid
/// (`txid_current()`) writes no WAL before its commit record, and
/// PostgreSQL commits such a transaction asynchronously, without a flush
/// (`RecordTransactionCommit`: `wrote_xlog` is false). A row inserted and
/// deleted is WAL, so the commit waits for the flush as an application's
/// write does; the table stays empty.
const WRITE_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS upkeep_write_check (at timestamptz)";
const WRITE_SQL: &str = "BEGIN; INSERT INTO upkeep_write_check VALUES (now()); \
    DELETE FROM upkeep_write_check; COMMIT";

/// Names resolve through the session's search_path; a name that does not
/// resolve to a table yields a row of NULLs.
const TABLES_SQL: &str = "SELECT s.n_dead_tup, s.n_live_tup, \
    extract(epoch FROM now() - greatest(s.last_analyze, s.last_autoanalyze))::float8 \
    FROM unnest($1::text[]) WITH ORDINALITY AS t(name, i) \
    LEFT JOIN pg_stat_all_tables s ON s.relid = to_regclass(t.name) ORDER BY t.i";

/// One open session with its prepared statements.
struct Session {
    client: Client,
    /// Ends the task driving the connection when the session is dropped.
    _task: AbortOnDropHandle<()>,
    stats: Statement,
    activity: Statement,
    tables: Statement,
    waits: Statement,
}

pub struct PostgresProbe {
    /// The parsed settings, or why they cannot be used (reported every tick).
    config: Result<tokio_postgres::Config, String>,
    password_file: Option<PathBuf>,
    /// `host:port/dbname`: names the server in every error.
    endpoint: String,
    connect_timeout: Duration,
    statement_timeout: Duration,
    tables: Vec<String>,
    write_check: bool,
    /// Taken out for the duration of a tick and put back only when it
    /// succeeds: a failed or abandoned tick leaves no half-used session.
    session: Option<Session>,
    /// Likewise: rates never span a failed tick.
    prev: Option<Counters>,
    /// Configured tables found missing, each logged once until it appears.
    missing: HashSet<String>,
}

impl std::fmt::Debug for PostgresProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresProbe")
            .field("endpoint", &self.endpoint)
            .field("connected", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

impl PostgresProbe {
    /// Never connects. `timeout` is the probe's tick timeout, the default
    /// statement timeout.
    pub fn new(config: &PostgresConfig, timeout: Duration) -> PostgresProbe {
        let parsed = config.connection().parse();
        PostgresProbe {
            endpoint: parsed
                .as_ref()
                .map_or_else(|_| "(invalid conninfo)".into(), endpoint),
            config: parsed,
            password_file: config.password_file.clone(),
            connect_timeout: config.connect_timeout,
            statement_timeout: config.statement_timeout.unwrap_or(timeout),
            tables: config.tables.clone(),
            write_check: config.write_check,
            session: None,
            prev: None,
            missing: HashSet::new(),
        }
    }

    async fn connect(&self) -> Result<Session, Failure> {
        let mut config = self.config.clone()?;
        set_password(&mut config, self.password_file.as_deref())?;
        let (client, task) = dial(config, self.connect_timeout).await?;
        let limit = self.statement_timeout;
        let set = format!("SET statement_timeout = {}", limit.as_millis().max(1));
        timed(limit, client.simple_query(&set)).await?;
        let (stats, activity, tables, waits) = timed(limit, async {
            tokio::try_join!(
                client.prepare(STATS_SQL),
                client.prepare(ACTIVITY_SQL),
                client.prepare(TABLES_SQL),
                client.prepare(WAITS_SQL)
            )
        })
        .await?;
        if self.write_check {
            timed(limit, client.simple_query(WRITE_TABLE_SQL))
                .await
                .map_err(|e| format!("write_check: creating upkeep_write_check: {e}"))?;
        }
        Ok(Session {
            client,
            _task: task,
            stats,
            activity,
            tables,
            waits,
        })
    }

    async fn tick(&mut self, prev: Option<Counters>) -> Result<Vec<Reading>, Failure> {
        let mut out = Vec::new();
        let session = match self.session.take() {
            Some(s) if !s.client.is_closed() => s,
            _ => {
                let started = Instant::now();
                let s = self.connect().await?;
                out.push(seconds("connect_seconds", started.elapsed().as_secs_f64()));
                s
            }
        };
        let limit = self.statement_timeout;
        let started = Instant::now();
        timed(limit, session.client.simple_query("SELECT 1")).await?;
        out.push(seconds("query_seconds", started.elapsed().as_secs_f64()));

        if self.write_check {
            let started = Instant::now();
            timed(limit, session.client.simple_query(WRITE_SQL))
                .await
                .map_err(|e| format!("write_check: {e}"))?;
            out.push(seconds("commit_seconds", started.elapsed().as_secs_f64()));
        }

        let c = &session.client;
        let names: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&self.tables];
        let (stats, activity, tables, waits) = timed(limit, async {
            // Sent together: one round trip.
            tokio::try_join!(
                c.query_one(&session.stats, &[]),
                c.query(&session.activity, &[]),
                c.query(&session.tables, &names),
                c.query_one(&session.waits, &[])
            )
        })
        .await?;
        for (i, wait) in ["Lock", "LWLock", "IO"].iter().enumerate() {
            out.push(count("backends_waiting", col(&waits, i)?).with_label("wait", wait));
        }
        let cur = Counters {
            at: Instant::now(),
            commits: col(&stats, 2)?,
            rollbacks: col(&stats, 3)?,
            hit: col(&stats, 4)?,
            read: col(&stats, 5)?,
            reset: col(&stats, 6)?,
        };
        let max: i64 = col(&stats, 0)?;
        out.push(count("connections_max", max));
        out.push(Reading::new(
            "database_size_bytes",
            col::<i64>(&stats, 1)? as f64,
            Unit::Bytes,
        ));
        out.extend(counter_readings(prev.as_ref(), &cur));
        if let Some(lag) = col::<Option<f64>>(&stats, 7)? {
            out.push(seconds("replication_lag_seconds", lag.max(0.0)));
        }
        let activity = activity
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?)))
            .collect::<Result<Vec<_>, String>>()?;
        out.extend(activity_readings(&activity, max));
        let tables = tables
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let (readings, missing) = table_readings(&self.tables, &tables);
        out.extend(readings);
        for name in &self.tables {
            if !missing.contains(&name.as_str()) {
                self.missing.remove(name);
            } else if self.missing.insert(name.clone()) {
                tracing::warn!(
                    endpoint = %self.endpoint,
                    table = %name,
                    "configured table not found; it is not reported"
                );
            }
        }
        self.session = Some(session);
        self.prev = Some(cur);
        Ok(out)
    }
}

impl KindFacts for PostgresConfig {
    const HEADLINE: &'static str = "query_seconds";
    const LATENCY: Option<&'static str> = Some("query_seconds");
    /// With `write_check`, the commit that waits for a WAL flush, as the
    /// application's writes do; else the read.
    const PACING: &'static [&'static str] = &["commit_seconds", "query_seconds"];
}

impl ConfiguredKind for PostgresConfig {
    fn default_thresholds() -> Vec<Threshold> {
        default_thresholds()
    }

    fn build(&self, _name: &str, timeout: Duration, _ctx: &BuildContext) -> AnyProbe {
        Box::new(PostgresProbe::new(self, timeout))
    }
}

impl Probe for PostgresProbe {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        let prev = self.prev.take();
        self.tick(prev)
            .await
            .map_err(|e| ProbeError::caused_by(format!("postgres {}: {e}", self.endpoint), &e))
    }
}

/// Runs one statement (or a batch sent together) within `limit`.
async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| describe(&e)),
        Err(_) => Err(format!("statement timed out after {limit:?}")),
    }
}

/// A column of a row, as an error rather than a panic when its type is not
/// the expected one.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T, String> {
    row.try_get(i).map_err(|e| describe(&e))
}
