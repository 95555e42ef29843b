//! Catalog lookups that turn configured names into checked relations and
//! their columns, for the PostgreSQL tasks. Names from config only ever
//! reach SQL as bind parameters here, or quoted after a lookup found them.

use super::{Error, Session, quote};

/// A relation the catalog knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
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
pub async fn find_relation(
    s: &Session,
    field: &'static str,
    schema: &str,
    name: &str,
    kinds: &[&str],
) -> Result<Option<Relation>, Error> {
    let rows = s
        .timed(s.client.query(
            "SELECT c.oid, c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        ))
        .await
        .map_err(|e| Error::Failed(format!("looking up {schema}.{name}: {e}")))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let (oid, relkind): (u32, String) = (row.get(0), row.get(1));
    if !kinds.contains(&relkind.as_str()) {
        return Err(Error::Setting {
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
pub struct Column {
    pub name: String,
    /// `format_type` of the column: `bigint`, `timestamp(3) with time zone`.
    pub type_name: String,
    /// The type without modifiers: `timestamp with time zone`.
    pub base_type: String,
    /// A generated column: in the row's JSON, never inserted.
    pub generated: bool,
}

/// The live columns of `rel` in order.
pub async fn columns(s: &Session, rel: &Relation) -> Result<Vec<Column>, Error> {
    let rows = s
        .timed(s.client.query(
            "SELECT attname::text, format_type(atttypid, atttypmod), atttypid::regtype::text, \
             attgenerated <> '' \
             FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            &[&rel.oid],
        ))
        .await
        .map_err(|e| Error::Failed(format!("reading the columns of {rel}: {e}")))?;
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
pub async fn integer_key(s: &Session, rel: &Relation) -> Result<Option<String>, Error> {
    let rows = s
        .timed(s.client.query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = $1 AND i.indisprimary AND i.indnkeyatts = 1 \
               AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)",
            &[&rel.oid],
        ))
        .await
        .map_err(|e| Error::Failed(format!("reading the primary key of {rel}: {e}")))?;
    Ok(rows.first().map(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relation_is_quoted_for_sql_and_plain_for_people() {
        let r = Relation {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            relkind: "r".into(),
        };
        assert_eq!(r.sql(), "\"public\".\"t\"");
        assert_eq!(r.to_string(), "public.t");
    }
}
