//! The table a retention task works on, as the catalog describes it, and
//! the SQL text built from it. Everything in the SQL that is not a bind
//! parameter is either fixed text or an identifier the catalog returned,
//! quoted.

use super::{RUN_COLUMN, RetentionConfig};
use crate::clients::postgres::catalog::{self, Column, Relation};
use crate::clients::postgres::{Session, qualified_name, quote};
use crate::maintenance::TaskError;

/// A ctid `(page, item)` as one number, `page << TID_SHIFT | item`, so
/// that batches of either kind are ranges of one `int8`.
pub(super) const TID_SHIFT: u32 = 16;

/// SQL of the tid at position `$n`.
fn tid(n: usize) -> String {
    format!(
        "format('(%s,%s)', ${n}::int8 >> {TID_SHIFT}, ${n}::int8 & {})::tid",
        (1 << TID_SHIFT) - 1
    )
}

/// `(page,item)` of a position.
pub(super) fn tid_text(position: i64) -> String {
    format!(
        "({},{})",
        position >> TID_SHIFT,
        position & ((1 << TID_SHIFT) - 1)
    )
}

/// The checked table, timestamp column, batching key and archive table.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Target {
    pub table: Relation,
    pub ts: String,
    /// The SQL type the cutoff is cast to: `timestamp`, `timestamptz` or
    /// `date` (a date cutoff keeps the cutoff's own day).
    pub ts_type: &'static str,
    /// A single-column integer primary key: batches are key ranges.
    /// Without one, batches are ctid page ranges.
    pub key: Option<String>,
    pub columns: Vec<Column>,
    pub archive: Option<ArchiveTable>,
}

/// The configured archive table, and whether it exists yet.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ArchiveTable {
    pub schema: String,
    pub name: String,
    pub exists: bool,
}

impl ArchiveTable {
    pub fn sql(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.name))
    }
}

impl std::fmt::Display for ArchiveTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

fn config_error(field: &'static str, message: String) -> TaskError {
    TaskError::Config { field, message }
}

/// `name` or `schema.name` of the archive table; a bare name lives in the
/// table's schema.
pub(super) fn archive_name(archive: &str, table_schema: &str) -> Result<(String, String), String> {
    let (schema, name) = qualified_name(archive)?;
    if archive.contains('.') {
        Ok((schema, name))
    } else {
        Ok((table_schema.to_string(), name))
    }
}

impl Target {
    /// Looks up `config`'s table, column, key and archive table.
    pub async fn resolve(s: &Session, config: &RetentionConfig) -> Result<Target, TaskError> {
        let (schema, name) = qualified_name(&config.table).map_err(|e| config_error("table", e))?;
        let table = catalog::find_relation(s, "table", &schema, &name, &["r", "p"])
            .await?
            .ok_or_else(|| config_error("table", format!("{schema}.{name} does not exist")))?;
        let columns = catalog::columns(s, &table).await?;
        let wanted = &config.timestamp_column;
        let column = columns.iter().find(|c| &c.name == wanted).ok_or_else(|| {
            config_error(
                "timestamp_column",
                format!("{table} has no column {wanted}"),
            )
        })?;
        let ts_type = match column.base_type.as_str() {
            "timestamp without time zone" => "timestamp",
            "timestamp with time zone" => "timestamptz",
            "date" => "date",
            other => {
                return Err(config_error(
                    "timestamp_column",
                    format!(
                        "column {wanted} of {table} is {other}, not a timestamp \
                         (timestamp, timestamptz or date)"
                    ),
                ));
            }
        };
        let key = catalog::integer_key(s, &table).await?;
        let archive = match &config.archive_table {
            None => None,
            Some(a) => Some(check_archive(s, &table, &columns, a).await?),
        };
        Ok(Target {
            ts: wanted.clone(),
            ts_type,
            key,
            columns,
            archive,
            table,
        })
    }

    /// `t."created_at" < CAST($n AS timestamptz)`: the row is older than
    /// the cutoff bound as parameter `n` (RFC 3339 text).
    pub fn older(&self, n: usize) -> String {
        format!(
            "t.{} < CAST(${n}::text::timestamptz AS {})",
            quote(&self.ts),
            self.ts_type
        )
    }

    /// The batch range `[$1, $2)`: key values, or row positions (see
    /// [`TID_SHIFT`]).
    pub fn in_range(&self) -> String {
        match &self.key {
            Some(k) => format!("t.{k} >= $1::int8 AND t.{k} < $2::int8", k = quote(k)),
            None => format!("t.ctid >= {} AND t.ctid < {}", tid(1), tid(2)),
        }
    }

    /// A row's place in batch order: its key, or its ctid as a position.
    fn position(&self) -> String {
        match &self.key {
            Some(k) => format!("t.{}::int8", quote(k)),
            None => format!(
                "(((t.ctid::text::point)[0])::int8 << {TID_SHIFT}) \
                 + ((t.ctid::text::point)[1])::int8"
            ),
        }
    }

    /// Count, size and first and last position of the rows of the range
    /// `[$1, $2)` older than the cutoff `$3`: one chunk of the plan's count.
    pub fn plan_sql(&self) -> String {
        let position = self.position();
        format!(
            "SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0)::int8, \
             min({position}), max({position}) FROM {} t WHERE {} AND {}",
            self.table.sql(),
            self.in_range(),
            self.older(3)
        )
    }

    /// The position of the old row after the first `$4` old rows from `$1`
    /// to `$2` (both included), if there is one: a batch ending there holds
    /// exactly `$4` old rows, and none holds more. By key, an index scan
    /// that stops there; by ctid, a TID range scan of `$1`..`$2`.
    pub fn boundary_sql(&self) -> String {
        let (within, order) = match &self.key {
            Some(k) => (
                format!("t.{k} >= $1::int8 AND t.{k} <= $2::int8", k = quote(k)),
                format!("t.{}", quote(k)),
            ),
            None => (
                format!("t.ctid >= {} AND t.ctid <= {}", tid(1), tid(2)),
                "t.ctid".into(),
            ),
        };
        format!(
            "SELECT {} FROM {} t WHERE {within} AND {} ORDER BY {order} OFFSET $4::int8 LIMIT 1",
            self.position(),
            self.table.sql(),
            self.older(3)
        )
    }

    /// Deletes the old rows of the range `[$1, $2)` older than `$3` and
    /// returns each as JSON text. `row_to_json`, not `to_jsonb`: the same
    /// object once read as jsonb (restore and checks read it so), at about
    /// two thirds of the server's time per row (5,000 rows of the bench's
    /// audit_log returned in 13.3 ms against 19.9 ms), time the batch
    /// otherwise takes from the application's backends.
    pub fn delete_sql(&self) -> String {
        format!(
            "DELETE FROM {} t WHERE {} AND {} RETURNING row_to_json(t.*)::text",
            self.table.sql(),
            self.in_range(),
            self.older(3)
        )
    }

    /// Moves the old rows of the range `[$1, $2)` older than `$3` to the
    /// archive table, marked with run `$4`, in one statement; returns the
    /// rows moved and their size.
    pub fn move_sql(&self, archive: &ArchiveTable) -> String {
        let cols = self.column_list(|_| true, "");
        format!(
            "WITH d AS (DELETE FROM {t} t WHERE {range} AND {older} RETURNING t.*), \
             i AS (INSERT INTO {a} ({cols}, {run}) SELECT {cols}, $4::int8 FROM d) \
             SELECT count(*), coalesce(sum(pg_column_size(d.*)), 0)::int8 FROM d",
            t = self.table.sql(),
            range = self.in_range(),
            older = self.older(3),
            a = archive.sql(),
            run = quote(RUN_COLUMN),
        )
    }

    /// Old rows left in `[$1, $2)` (older than `$3`).
    pub fn remaining_sql(&self) -> String {
        format!(
            "SELECT count(*) FROM {} t WHERE {} AND {}",
            self.table.sql(),
            self.in_range(),
            self.older(3)
        )
    }

    /// Inserts the rows given as JSON texts in `$1` (`text[]`), skipping
    /// any that are still there (a key already taken).
    pub fn insert_sql(&self) -> String {
        format!(
            "INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE \
             SELECT {rcols} FROM unnest($1::text[]) AS e(j), \
             jsonb_populate_record(NULL::{t}, e.j::jsonb) AS r \
             ON CONFLICT DO NOTHING",
            t = self.table.sql(),
            cols = self.column_list(|c| !c.generated, ""),
            rcols = self.column_list(|c| !c.generated, "r."),
        )
    }

    /// Whether the rows given as JSON texts in `$1` are in the table: their
    /// count and md5 (of the sorted JSON texts), and the count and md5 of
    /// the same rows as read back from the table (a row archived twice
    /// must be there twice). Rows are looked up by key, or by timestamp.
    pub fn check_sql(&self) -> String {
        let m = quote(self.key.as_deref().unwrap_or(&self.ts));
        format!(
            "WITH a AS (SELECT e::jsonb AS j FROM unnest($1::text[]) AS e), \
             ac AS (SELECT j, count(*) AS n FROM a GROUP BY j), \
             b AS (SELECT to_jsonb(t.*) AS j FROM {t} t \
                   WHERE t.{m} IN (SELECT (jsonb_populate_record(NULL::{t}, a.j)).{m} FROM a)), \
             bc AS (SELECT j, count(*) AS n FROM b GROUP BY j), \
             back AS (SELECT ac.j FROM ac JOIN bc USING (j) \
                      CROSS JOIN LATERAL generate_series(1, least(ac.n, bc.n))) \
             SELECT (SELECT count(*) FROM a), \
               (SELECT coalesce(md5(string_agg(j::text, E'\\n' ORDER BY j::text COLLATE \"C\")), '') FROM a), \
               (SELECT count(*) FROM back), \
               (SELECT coalesce(md5(string_agg(j::text, E'\\n' ORDER BY j::text COLLATE \"C\")), '') FROM back)",
            t = self.table.sql(),
        )
    }

    fn column_list(&self, keep: impl Fn(&Column) -> bool, prefix: &str) -> String {
        self.columns
            .iter()
            .filter(|c| keep(c))
            .map(|c| format!("{prefix}{}", quote(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `CREATE TABLE` of the archive table: the table's columns (without
    /// defaults, identity or generation) plus the run column, and an index
    /// on the run column for rollback.
    pub fn create_archive_sql(&self, archive: &ArchiveTable) -> String {
        format!(
            "CREATE TABLE {a} (LIKE {t}, {run} bigint NOT NULL); CREATE INDEX ON {a} ({run})",
            a = archive.sql(),
            t = self.table.sql(),
            run = quote(RUN_COLUMN),
        )
    }

    /// Takes up to `$2` rows of run `$1` out of the archive table, as JSON
    /// texts without the run column.
    pub fn take_archived_sql(&self, archive: &ArchiveTable) -> String {
        format!(
            "DELETE FROM {a} a WHERE a.ctid = ANY(ARRAY(\
               SELECT ctid FROM {a} WHERE {run} = $1::int8 LIMIT $2::int8)) \
             RETURNING (to_jsonb(a.*) - '{RUN_COLUMN}')::text",
            a = archive.sql(),
            run = quote(RUN_COLUMN),
        )
    }

    /// Rows of run `$1` in the archive table.
    pub fn archived_count_sql(&self, archive: &ArchiveTable) -> String {
        format!(
            "SELECT count(*) FROM {} WHERE {} = $1::int8",
            archive.sql(),
            quote(RUN_COLUMN)
        )
    }
}

/// The archive table must be new, or have every column of the table with
/// the same type plus the run column.
async fn check_archive(
    s: &Session,
    table: &Relation,
    columns: &[Column],
    archive: &str,
) -> Result<ArchiveTable, TaskError> {
    let field = "archive_table";
    let (schema, name) =
        archive_name(archive, &table.schema).map_err(|e| config_error(field, e))?;
    if schema == table.schema && name == table.name {
        return Err(config_error(field, "must not be the table itself".into()));
    }
    if columns.iter().any(|c| c.name == RUN_COLUMN) {
        return Err(config_error(
            field,
            format!("{table} has a column {RUN_COLUMN}, the name the archive table gives the run"),
        ));
    }
    let Some(found) = catalog::find_relation(s, field, &schema, &name, &["r", "p"]).await? else {
        return Ok(ArchiveTable {
            schema,
            name,
            exists: false,
        });
    };
    let have = catalog::columns(s, &found).await?;
    let expected = columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_name.as_str()))
        .chain([(RUN_COLUMN, "bigint")]);
    for (col, ty) in expected {
        if !have.iter().any(|h| h.name == col && h.type_name == ty) {
            return Err(config_error(
                field,
                format!(
                    "{found} has no column {col} {ty}: an archive table holds every column of \
                     {table} plus {RUN_COLUMN} bigint (leave it to be created)"
                ),
            ));
        }
    }
    Ok(ArchiveTable {
        schema,
        name,
        exists: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(key: Option<&str>) -> Target {
        let col = |name: &str, ty: &str, generated| Column {
            name: name.into(),
            type_name: ty.into(),
            base_type: ty.into(),
            generated,
        };
        Target {
            table: Relation {
                oid: 1,
                schema: "app".into(),
                name: "audit_log".into(),
                relkind: "r".into(),
            },
            ts: "created_at".into(),
            ts_type: "timestamptz",
            key: key.map(str::to_string),
            columns: vec![
                col("id", "bigint", false),
                col("created_at", "timestamp with time zone", false),
                col("twice", "bigint", true),
            ],
            archive: None,
        }
    }

    #[test]
    fn key_batches_are_key_ranges_and_others_page_ranges() {
        let t = target(Some("id"));
        assert_eq!(
            t.delete_sql(),
            "DELETE FROM \"app\".\"audit_log\" t WHERE t.\"id\" >= $1::int8 AND t.\"id\" < $2::int8 \
             AND t.\"created_at\" < CAST($3::text::timestamptz AS timestamptz) \
             RETURNING row_to_json(t.*)::text"
        );
        let t = target(None);
        assert!(
            t.delete_sql()
                .contains("t.ctid >= format('(%s,%s)', $1::int8 >> 16, $1::int8 & 65535)::tid"),
            "{}",
            t.delete_sql()
        );
        assert!(
            t.boundary_sql()
                .contains("ORDER BY t.ctid OFFSET $4::int8 LIMIT 1")
        );
        assert_eq!(tid_text((7 << TID_SHIFT) + 3), "(7,3)");
    }

    #[test]
    fn generated_columns_are_archived_but_not_inserted() {
        let t = target(Some("id"));
        let insert = t.insert_sql();
        assert!(
            insert.contains("(\"id\", \"created_at\") OVERRIDING SYSTEM VALUE"),
            "{insert}"
        );
        let archive = ArchiveTable {
            schema: "app".into(),
            name: "old".into(),
            exists: false,
        };
        assert!(
            t.move_sql(&archive)
                .contains("(\"id\", \"created_at\", \"twice\", \"upkeep_run\")")
        );
    }

    #[test]
    fn a_bare_archive_name_lives_in_the_tables_schema() {
        assert_eq!(
            archive_name("old", "app").unwrap(),
            ("app".into(), "old".into())
        );
        assert_eq!(
            archive_name("public.old", "app").unwrap(),
            ("public".into(), "old".into())
        );
        assert!(archive_name("a.b.c", "app").is_err());
    }
}
