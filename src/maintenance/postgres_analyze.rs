//! `kind = "postgres_analyze"`: ANALYZE (and, when asked, plain VACUUM —
//! never FULL) of the configured tables or the whole database, with dead
//! tuples and last analyze time before and after. A batch is the next
//! few tables, each statement on its own outside a transaction (VACUUM
//! cannot run in one). Nothing can be rolled back: statistics and vacuum
//! replace what was there.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Backup, Batch, Cx, Plan, Task, TaskError, Verdict};
use crate::clients::postgres::catalog;
use crate::clients::postgres::{Session, millis, qualified_name, rfc3339_sql};
use crate::fmt::count;
use crate::probes::ProbeKind;
use crate::probes::postgres::PostgresConfig;

crate::task_config! {
    /// `[maintenance.NAME] kind = "postgres_analyze"`.
    pub struct AnalyzeConfig {
        /// The postgres probe whose connection settings the task uses.
        pub probe: String,
        /// `table` or `schema.table`; empty: every table of the database
        /// (partitions through their partitioned table).
        #[serde(default)]
        pub tables: Vec<String>,
        /// Also VACUUM (plain, never FULL).
        #[serde(default)]
        pub vacuum: bool,
        /// `statement_timeout` of each ANALYZE / VACUUM.
        #[serde(default = "default_statement_timeout", with = "humantime_serde")]
        pub statement_timeout: std::time::Duration,
    }
}

fn default_statement_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(600)
}

impl super::config::TaskKind for AnalyzeConfig {
    fn probe(&self) -> Option<&str> {
        Some(&self.probe)
    }
    fn validate(&self, probes: &super::config::Probes) -> Vec<(&'static str, String)> {
        let own = Self::validate(self);
        super::config::with_probe_check(
            own,
            probes,
            &self.probe,
            ProbeKind::Postgres,
            "postgres_analyze",
        )
    }
    fn build(&self, name: &str, probes: &super::config::Probes) -> Option<super::AnyTask> {
        let pg = super::config::postgres_probe(probes, &self.probe)?;
        Some(Box::new(AnalyzeTask::new(name, self, pg)))
    }
}

impl AnalyzeConfig {
    /// Problems of the kind's own fields, as (field, message).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for t in &self.tables {
            if let Err(e) = qualified_name(t) {
                out.push(("tables", e));
            }
        }
        if self.statement_timeout < std::time::Duration::from_millis(1) {
            out.push(("statement_timeout", "must be at least 1ms".into()));
        }
        out
    }
}

/// Relation kinds ANALYZE and VACUUM take: tables, partitioned tables,
/// materialized views.
const KINDS: [&str; 3] = ["r", "p", "m"];

/// Tables named in a plan's summary line.
const SUMMARY_TABLES: usize = 10;

/// Every user table: partitions are reached through their parent, which
/// ANALYZE and VACUUM recurse into.
const ALL_TABLES_SQL: &str = "SELECT n.nspname::text, c.relname::text FROM pg_class c \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition \
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
    ORDER BY 1, 2";

/// What the statistics say about a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TableState {
    /// `schema.table`.
    table: String,
    /// False when the table is gone.
    exists: bool,
    dead_tuples: Option<i64>,
    live_tuples: Option<i64>,
    /// The later of last_analyze and last_autoanalyze, RFC 3339 UTC.
    last_analyze: Option<String>,
    /// The later of last_vacuum and last_autovacuum.
    last_vacuum: Option<String>,
    /// Whether last_analyze is at or after the `since` asked about.
    analyzed_since: bool,
}

/// What a plan found, kept in `Plan::details`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AnalyzeDetails {
    /// The server's clock at plan time, RFC 3339 UTC: validation wants
    /// every table analyzed after it.
    started: String,
    vacuum: bool,
    tables: Vec<TableState>,
}

struct Run {
    plan: AnalyzeDetails,
    /// Index of the next table to do.
    next: usize,
    /// Tables dropped between the plan and their batch.
    gone: Vec<String>,
}

pub struct AnalyzeTask {
    name: String,
    config: AnalyzeConfig,
    pg: PostgresConfig,
    session: Option<Session>,
    run: Option<Run>,
}

impl AnalyzeTask {
    pub fn new(name: &str, config: &AnalyzeConfig, pg: &PostgresConfig) -> AnalyzeTask {
        AnalyzeTask {
            name: name.to_string(),
            config: config.clone(),
            pg: pg.clone(),
            session: None,
            run: None,
        }
    }

    async fn take_session(&mut self) -> Result<Session, TaskError> {
        if let Some(s) = self.session.take()
            && !s.is_closed()
        {
            return Ok(s);
        }
        let t = self.config.statement_timeout;
        Ok(Session::open(
            &self.pg.connection(),
            &self.name,
            &[("statement_timeout", millis(t))],
            t,
        )
        .await?)
    }

    /// Runs `f` on the session, putting it back only when `f` succeeds.
    async fn with_session<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Self, &mut Session) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        let mut s = self.take_session().await?;
        let out = f(self, &mut s).await;
        if out.is_ok() {
            self.session = Some(s);
        }
        out
    }

    /// The configured tables (each checked to be a table), or every user
    /// table, as (schema, name).
    async fn tables(&self, s: &Session) -> Result<Vec<(String, String)>, TaskError> {
        if self.config.tables.is_empty() {
            let rows = s
                .timed(s.client.query(ALL_TABLES_SQL, &[]))
                .await
                .map_err(|e| TaskError::failed(format!("listing the tables: {e}")))?;
            return Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
        }
        let mut out = Vec::new();
        for t in &self.config.tables {
            let (schema, name) = qualified_name(t).map_err(|message| TaskError::Config {
                field: "tables",
                message,
            })?;
            if catalog::find_relation(s, "tables", &schema, &name, &KINDS)
                .await?
                .is_none()
            {
                return Err(TaskError::Config {
                    field: "tables",
                    message: format!("{schema}.{name} does not exist"),
                });
            }
            out.push((schema, name));
        }
        Ok(out)
    }

    fn nothing_saved(&self) -> Backup {
        Backup {
            location: String::new(),
            rows: 0,
            bytes: 0,
            details: json!({
                "saved": "nothing",
                "reason": "ANALYZE and VACUUM cannot be undone: there is nothing to save",
            }),
        }
    }
}

/// The statistics of `tables` (schema, name), in order; `since` (RFC 3339)
/// sets `analyzed_since`.
async fn states(
    s: &Session,
    tables: &[(String, String)],
    since: &str,
) -> Result<Vec<TableState>, TaskError> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.1.as_str()).collect();
    let analyzed = "greatest(st.last_analyze, st.last_autoanalyze)";
    let sql = format!(
        "SELECT c.oid IS NOT NULL, st.n_dead_tup, st.n_live_tup, {}, {}, \
           coalesce({analyzed} >= $3::text::timestamptz, false) \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(s, n, i) \
         LEFT JOIN pg_namespace ns ON ns.nspname = u.s \
         LEFT JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = u.n \
         LEFT JOIN pg_stat_all_tables st ON st.relid = c.oid \
         ORDER BY u.i",
        rfc3339_sql(analyzed),
        rfc3339_sql("greatest(st.last_vacuum, st.last_autovacuum)"),
    );
    let rows = s
        .timed(s.client.query(&sql, &[&schemas, &names, &since]))
        .await
        .map_err(|e| TaskError::failed(format!("reading table statistics: {e}")))?;
    Ok(tables
        .iter()
        .zip(&rows)
        .map(|((schema, name), r)| TableState {
            table: format!("{schema}.{name}"),
            exists: r.get(0),
            dead_tuples: r.get(1),
            live_tuples: r.get(2),
            last_analyze: r.get(3),
            last_vacuum: r.get(4),
            analyzed_since: r.get(5),
        })
        .collect())
}

fn split(table: &str) -> (String, String) {
    match table.split_once('.') {
        Some((s, n)) => (s.to_string(), n.to_string()),
        None => ("public".to_string(), table.to_string()),
    }
}

fn dead_total(tables: &[TableState]) -> i64 {
    tables.iter().filter_map(|t| t.dead_tuples).sum()
}

impl Task for AnalyzeTask {
    async fn figures(&mut self) -> Result<serde_json::Value, TaskError> {
        self.with_session(async |t, s| {
            let tables = match &t.run {
                Some(r) => r.plan.tables.iter().map(|x| split(&x.table)).collect(),
                None => t.tables(s).await?,
            };
            let states = states(s, &tables, "infinity").await?;
            Ok(json!({
                "dead_tuples": dead_total(&states),
                "tables": states.iter().map(|x| json!({
                    "table": x.table,
                    "dead_tuples": x.dead_tuples,
                    "live_tuples": x.live_tuples,
                    "last_analyze": x.last_analyze,
                    "last_vacuum": x.last_vacuum,
                })).collect::<Vec<_>>(),
            }))
        })
        .await
    }

    async fn plan(&mut self, _cx: &Cx) -> Result<Plan, TaskError> {
        self.with_session(async |t, s| {
            let started: String = s
                .timed(
                    s.client
                        .query_one(&format!("SELECT {}", rfc3339_sql("now()")), &[]),
                )
                .await
                .map_err(|e| TaskError::failed(format!("reading the server's clock: {e}")))?
                .get(0);
            let tables = t.tables(s).await?;
            let states = states(s, &tables, &started).await?;
            let verb = if t.config.vacuum {
                "vacuum and analyze"
            } else {
                "analyze"
            };
            // The summary is one line: the tables with most dead tuples
            // first, the rest counted (the details list them all).
            let mut by_dead: Vec<&TableState> = states.iter().collect();
            by_dead.sort_by_key(|x| std::cmp::Reverse(x.dead_tuples.unwrap_or(0)));
            let mut listed: Vec<String> = by_dead
                .iter()
                .take(SUMMARY_TABLES)
                .map(|x| {
                    format!(
                        "{} ({} dead, last analyzed {})",
                        x.table,
                        count(x.dead_tuples.unwrap_or(0).max(0) as u64),
                        x.last_analyze.as_deref().unwrap_or("never")
                    )
                })
                .collect();
            if states.len() > SUMMARY_TABLES {
                listed.push(format!("{} more", states.len() - SUMMARY_TABLES));
            }
            let summary = format!(
                "{verb} {} tables: {}",
                states.len(),
                if listed.is_empty() {
                    "none".into()
                } else {
                    listed.join(", ")
                }
            );
            let details = AnalyzeDetails {
                started,
                vacuum: t.config.vacuum,
                tables: states,
            };
            let plan = Plan {
                summary,
                rows: details.tables.len() as u64,
                bytes: 0,
                details: serde_json::to_value(&details).unwrap_or_default(),
            };
            t.run = Some(Run {
                plan: details,
                next: 0,
                gone: Vec::new(),
            });
            Ok(plan)
        })
        .await
    }

    fn backup_bytes(&self, _plan: &Plan) -> u64 {
        0
    }

    async fn backup(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Backup, TaskError> {
        Ok(self.nothing_saved())
    }

    async fn apply_batch(&mut self, _cx: &Cx, plan: &Plan, size: u64) -> Result<Batch, TaskError> {
        let details: AnalyzeDetails = serde_json::from_value(plan.details.clone())
            .map_err(|e| TaskError::failed(format!("not an analyze plan: {e}")))?;
        if self.run.as_ref().is_none_or(|r| r.plan != details) {
            self.run = Some(Run {
                plan: details,
                next: 0,
                gone: Vec::new(),
            });
        }
        let verb = if self.config.vacuum {
            "VACUUM (ANALYZE)"
        } else {
            "ANALYZE"
        };
        self.with_session(async |t, s| {
            let Some(run) = t.run.as_mut() else {
                return Err(TaskError::failed("apply_batch before plan"));
            };
            let end = (run.next + size.max(1) as usize).min(run.plan.tables.len());
            let mut done = Vec::new();
            while run.next < end {
                let table = run.plan.tables[run.next].table.clone();
                let (schema, name) = split(&table);
                match catalog::find_relation(s, "tables", &schema, &name, &KINDS).await? {
                    None => run.gone.push(table),
                    Some(rel) => {
                        // Outside a transaction: simple_query runs it alone.
                        s.timed(s.client.simple_query(&format!("{verb} {}", rel.sql())))
                            .await
                            .map_err(|e| TaskError::failed(format!("{verb} {table}: {e}")))?;
                        done.push(table);
                    }
                }
                run.next += 1;
            }
            let finished = run.next >= run.plan.tables.len();
            Ok(Batch {
                rows: done.len() as u64,
                archived: 0,
                detail: if done.is_empty() {
                    "no table left".into()
                } else {
                    format!("{verb} {}", done.join(", "))
                },
                done: finished,
            })
        })
        .await
    }

    fn backup_state(&self) -> Option<Backup> {
        self.run.as_ref().map(|_| self.nothing_saved())
    }

    async fn validate(&mut self, _cx: &Cx, plan: &Plan) -> Result<Verdict, TaskError> {
        let details: AnalyzeDetails = serde_json::from_value(plan.details.clone())
            .map_err(|e| TaskError::failed(format!("not an analyze plan: {e}")))?;
        self.with_session(async |_, s| {
            let tables: Vec<_> = details.tables.iter().map(|x| split(&x.table)).collect();
            let after = states(s, &tables, &details.started).await?;
            let gone: Vec<&str> = after
                .iter()
                .filter(|x| !x.exists)
                .map(|x| x.table.as_str())
                .collect();
            let stale: Vec<&str> = after
                .iter()
                .filter(|x| x.exists && !x.analyzed_since)
                .map(|x| x.table.as_str())
                .collect();
            let before_dead = dead_total(&details.tables);
            let after_dead = dead_total(&after);
            let mut detail = if stale.is_empty() {
                format!(
                    "all {} tables analyzed since {}; dead tuples {} before, {} after",
                    after.len() - gone.len(),
                    details.started,
                    count(before_dead.max(0) as u64),
                    count(after_dead.max(0) as u64)
                )
            } else {
                format!(
                    "not analyzed since {}: {} (this role may not own them)",
                    details.started,
                    stale.join(", ")
                )
            };
            if !gone.is_empty() {
                detail += &format!("; dropped during the run: {}", gone.join(", "));
            }
            Ok(Verdict {
                ok: stale.is_empty(),
                detail,
                figures: json!({
                    "started": details.started,
                    "dead_tuples_before": before_dead,
                    "dead_tuples_after": after_dead,
                    "tables": details.tables.iter().zip(&after).map(|(b, a)| json!({
                        "table": a.table,
                        "dead_tuples_before": b.dead_tuples,
                        "dead_tuples_after": a.dead_tuples,
                        "last_analyze_before": b.last_analyze,
                        "last_analyze_after": a.last_analyze,
                    })).collect::<Vec<_>>(),
                }),
            })
        })
        .await
    }

    async fn rollback(&mut self, _cx: &Cx, _backup: &Backup) -> Result<Verdict, TaskError> {
        Err(TaskError::failed(format!(
            "{}: statistics cannot be rolled back: ANALYZE replaces the planner's statistics \
             and VACUUM frees dead rows in place; nothing was saved to put back",
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

    fn config(toml: &str) -> AnalyzeConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let c = config("probe = \"db\"");
        assert!(c.tables.is_empty());
        assert!(!c.vacuum);
        assert_eq!(c.statement_timeout, std::time::Duration::from_secs(600));
        assert!(c.validate().is_empty());
        let c = config("probe = \"db\"\ntables = [\"a; DROP TABLE x\", \"app.ok\"]");
        let problems = c.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "tables");
    }

    #[test]
    fn a_typo_is_refused() {
        assert!(toml::from_str::<AnalyzeConfig>("probe = \"db\"\nvacum = true").is_err());
    }

    #[test]
    fn table_names_split_on_the_first_dot() {
        assert_eq!(split("app.t"), ("app".into(), "t".into()));
        assert_eq!(split("t"), ("public".into(), "t".into()));
    }
}
