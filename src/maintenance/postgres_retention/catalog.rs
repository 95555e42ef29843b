//! What the PostgreSQL tasks share: a session opened with a probe's
//! settings and the task's timeouts, identifier quoting, error text, and
//! catalog lookups that turn configured names into checked, quoted
//! identifiers. Names from config only ever reach SQL as bind parameters
//! (in these lookups) or quoted after the lookup found them.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::task::AbortOnDropHandle;

use crate::maintenance::TaskError;
use crate::probes::postgres::PostgresConfig;

/// An open session and the task driving its connection (ended on drop).
pub(crate) struct Session {
    pub client: Client,
    _conn: AbortOnDropHandle<()>,
    /// Client-side limit of one statement: the server's `statement_timeout`
    /// plus a margin, for a server that stopped answering altogether.
    pub limit: Duration,
}

impl Session {
    /// Connects as `upkeep maintenance NAME` and applies `settings`
    /// (`SET name = value`; names and values are the task's own, never
    /// config text). Every session writes times in UTC and floats exactly,
    /// so that a row's JSON is the same whichever session reads it.
    pub async fn open(
        pg: &PostgresConfig,
        task: &str,
        settings: &[(&str, String)],
        statement_timeout: Duration,
    ) -> Result<Session, TaskError> {
        let (client, conn) =
            crate::probes::postgres::connect(pg, &format!("upkeep maintenance {task}"))
                .await
                .map_err(TaskError::Failed)?;
        let limit = statement_timeout + pg.connect_timeout + Duration::from_secs(5);
        let session = Session {
            client,
            _conn: conn,
            limit,
        };
        let set: String = [
            ("TimeZone", "'UTC'".to_string()),
            ("extra_float_digits", "3".into()),
        ]
        .iter()
        .chain(settings)
        .map(|(name, value)| format!("SET {name} = {value};"))
        .collect();
        session
            .timed(session.client.batch_execute(&set))
            .await
            .map_err(|e| TaskError::failed(format!("setting up the session: {e}")))?;
        Ok(session)
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Runs one statement within the client-side limit.
    pub async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, String> {
        timed(self.limit, f).await
    }
}

pub(crate) async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| describe(&e)),
        Err(_) => Err(format!("no answer from the server within {limit:?}")),
    }
}

/// One line: the server's message (and detail) for a server error, else
/// the library's words and their cause.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    };
    text.replace('\n', "; ")
}

/// A duration as a `SET` value: milliseconds, at least 1 (0 would mean
/// no limit).
pub(crate) fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// SQL of `expr` (a timestamptz) as RFC 3339 UTC text with microseconds.
pub(crate) fn rfc3339(expr: &str) -> String {
    format!("to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

/// `"name"` with any `"` doubled: an identifier as SQL text.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A relation the catalog knows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `r` table, `p` partitioned table, `m` materialized view.
    pub relkind: String,
}

impl Relation {
    /// `"schema"."name"`.
    pub fn sql(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.name))
    }
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

fn kind_name(relkind: &str) -> &'static str {
    match relkind {
        "r" => "a table",
        "p" => "a partitioned table",
        "v" => "a view",
        "m" => "a materialized view",
        "f" => "a foreign table",
        "S" => "a sequence",
        "i" | "I" => "an index",
        "c" => "a composite type",
        "t" => "a TOAST table",
        _ => "not a table",
    }
}

/// The table `schema.name` (relkind in `kinds`), or a config error for
/// `field` saying what is there instead.
pub(crate) async fn find_relation(
    s: &Session,
    field: &'static str,
    schema: &str,
    name: &str,
    kinds: &[&str],
) -> Result<Option<Relation>, TaskError> {
    let rows = s
        .timed(s.client.query(
            "SELECT c.oid, c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        ))
        .await
        .map_err(|e| TaskError::failed(format!("looking up {schema}.{name}: {e}")))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let (oid, relkind): (u32, String) = (row.get(0), row.get(1));
    if !kinds.contains(&relkind.as_str()) {
        return Err(TaskError::Config {
            field,
            message: format!("{schema}.{name} is {}, not a table", kind_name(&relkind)),
        });
    }
    Ok(Some(Relation {
        oid,
        schema: schema.to_string(),
        name: name.to_string(),
        relkind,
    }))
}

/// A column as the catalog describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Column {
    pub name: String,
    /// `format_type` of the column: `bigint`, `timestamp(3) with time zone`.
    pub type_name: String,
    /// The type without modifiers: `timestamp with time zone`.
    pub base_type: String,
    /// A generated column: in the row's JSON, never inserted.
    pub generated: bool,
}

/// The live columns of `rel` in order.
pub(crate) async fn columns(s: &Session, rel: &Relation) -> Result<Vec<Column>, TaskError> {
    let rows = s
        .timed(s.client.query(
            "SELECT attname::text, format_type(atttypid, atttypmod), atttypid::regtype::text, \
             attgenerated <> '' \
             FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            &[&rel.oid],
        ))
        .await
        .map_err(|e| TaskError::failed(format!("reading the columns of {rel}: {e}")))?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            base_type: r.get(2),
            generated: r.get(3),
        })
        .collect())
}

/// The single-column integer primary key of `rel`, if it has one.
pub(crate) async fn integer_key(s: &Session, rel: &Relation) -> Result<Option<String>, TaskError> {
    let rows = s
        .timed(s.client.query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = $1 AND i.indisprimary AND i.indnkeyatts = 1 \
               AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)",
            &[&rel.oid],
        ))
        .await
        .map_err(|e| TaskError::failed(format!("reading the primary key of {rel}: {e}")))?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// Thousands separated: 1234567 → "1,234,567".
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes for people: "812 B", "12.3 MiB".
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote("audit_log"), "\"audit_log\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        let r = Relation {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            relkind: "r".into(),
        };
        assert_eq!(r.sql(), "\"public\".\"t\"");
        assert_eq!(r.to_string(), "public.t");
    }

    #[test]
    fn figures_for_people() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(12_900_000), "12.3 MiB");
    }
}
