//! The PostgreSQL maintenance tasks against the real server on
//! 127.0.0.1:5432 (user `postgres`, trust auth), driven step by step
//! through the `Task` trait as the runner drives them. Each test works in a
//! schema of its own, dropped at the end even when the test fails.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use upkeep::maintenance::postgres_analyze::{AnalyzeConfig, AnalyzeTask};
use upkeep::maintenance::postgres_retention::{RetentionConfig, RetentionTask};
use upkeep::maintenance::{Backup, Cx, Plan, Task, TaskError};
use upkeep::probes::postgres::PostgresConfig;

use crate::probe_postgres::unique;

const SERVER: &str = "host=127.0.0.1 port=5432 dbname=postgres";

/// An admin session in UTC (the tasks' own time zone, so that row JSON
/// compares as text). A server that is not there fails with one line.
async fn pg() -> Client {
    let (client, conn) =
        tokio_postgres::connect(&format!("{SERVER} user=postgres"), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable at 127.0.0.1:5432 as postgres ({e}); start it as README says"
                )
            });
    tokio::spawn(conn);
    client
        .batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3")
        .await
        .unwrap();
    client
}

/// A schema of the test's own, dropped when the guard goes (a failed
/// assertion included).
struct Schema(String);

impl Schema {
    async fn new(admin: &Client) -> Schema {
        let name = unique("upkeep_m");
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Schema(name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0);
        // A runtime of its own: the test's may be gone or panicking.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(
                    &format!("{SERVER} user=postgres"),
                    tokio_postgres::NoTls,
                )
                .await
                {
                    tokio::spawn(conn);
                    let _ = c.batch_execute(&sql).await;
                }
            })
        })
        .join();
    }
}

fn pg_config() -> PostgresConfig {
    toml::from_str(&format!("conninfo = \"{SERVER}\"\nuser = \"postgres\"")).unwrap()
}

fn retention_config(table: &str, extra: &str) -> RetentionConfig {
    let toml = format!(
        "probe = \"database\"\ntable = \"{table}\"\ntimestamp_column = \"created_at\"\n\
         older_than = \"365d\"\n{extra}"
    );
    let c: RetentionConfig = toml::from_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(c.validate(), vec![], "test config is invalid");
    c
}

fn cx(name: &str, dir: &Path) -> Cx {
    Cx {
        name: name.to_string(),
        run_id: 7,
        backup_dir: dir.join("backups").join(name).join("7"),
        quarantine_dir: dir.join("quarantine").join(name).join("7"),
        data_dir: dir.to_path_buf(),
        cancel: tokio_util::sync::CancellationToken::new(),
    }
}

/// An audit log of `rows` rows with created_at spread over two years, of
/// many column types (a NULL now and then), with an identity primary key
/// or none.
async fn audit_log(admin: &Client, table: &str, rows: u32, with_key: bool) {
    let id = if with_key {
        "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    } else {
        "id bigint"
    };
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (
               {id},
               created_at timestamptz NOT NULL,
               actor text,
               action text NOT NULL,
               amount numeric(12, 2),
               ratio float8,
               ok boolean,
               payload jsonb,
               raw bytea,
               day date,
               doubled bigint GENERATED ALWAYS AS (length(action) * 2) STORED
             ) WITH (autovacuum_enabled = false);
             SELECT setseed(0.42);
             INSERT INTO {table} ({maybe_id} created_at, actor, action, amount, ratio, ok, payload, raw, day)
             SELECT {maybe_i}
                    now() - random() * interval '730 days',
                    CASE WHEN i % 7 = 0 THEN NULL ELSE 'user' || (i % 1000) END,
                    (ARRAY['login', 'logout', 'update', 'delete'])[1 + i % 4],
                    round((random() * 10000)::numeric, 2),
                    random() / 3,
                    i % 3 = 0,
                    jsonb_build_object('i', i, 'tags', jsonb_build_array('a', i % 5)),
                    decode(md5(i::text), 'hex'),
                    current_date - (i % 900)
             FROM generate_series(1, {rows}) AS i;
             ANALYZE {table};",
            maybe_id = if with_key { "" } else { "id," },
            maybe_i = if with_key { "" } else { "i," },
        ))
        .await
        .unwrap();
}

/// Row count and md5 of every row's JSON, sorted: equal only when the
/// table holds exactly the same rows.
async fn checksum(admin: &Client, table: &str) -> (i64, String) {
    let r = admin
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(to_jsonb(t.*)::text, E'\\n' \
                 ORDER BY to_jsonb(t.*)::text COLLATE \"C\")), '') FROM {table} t"
            ),
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// The same for rows given as JSON texts.
async fn checksum_of(admin: &Client, rows: &[String]) -> (i64, String) {
    let r = admin
        .query_one(
            "SELECT count(*), coalesce(md5(string_agg(j::text, E'\\n' \
             ORDER BY j::text COLLATE \"C\")), '') FROM (SELECT e::jsonb AS j FROM unnest($1::text[]) e) x",
            &[&rows],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// md5 of the rows of `table` older than `cutoff`.
async fn old_rows(admin: &Client, table: &str, cutoff: &str) -> (i64, String, Vec<i64>) {
    let r = admin
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(to_jsonb(t.*)::text, E'\\n' \
                 ORDER BY to_jsonb(t.*)::text COLLATE \"C\")), ''), \
                 coalesce(array_agg(t.id ORDER BY t.id), '{{}}') \
                 FROM {table} t WHERE created_at < $1::text::timestamptz"
            ),
            &[&cutoff],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn cutoff(plan: &Plan) -> String {
    plan.details["cutoff"]
        .as_str()
        .expect("the plan names its cutoff")
        .to_string()
}

/// Every row line of a gzip archive, all members.
fn archive_rows(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    BufReader::new(flate2::read::MultiGzDecoder::new(file))
        .lines()
        .map(|l| l.expect("the archive decodes"))
        .collect()
}

fn ids(rows: &[String]) -> Vec<i64> {
    let mut ids: Vec<i64> = rows
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r).unwrap();
            v["id"].as_i64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Runs batches of `size` until done; returns the batches and rows.
async fn run_batches(task: &mut impl Task, cx: &Cx, plan: &Plan, size: u64) -> (u64, u64) {
    let (mut batches, mut rows) = (0, 0);
    loop {
        let b = task
            .apply_batch(cx, plan, size)
            .await
            .unwrap_or_else(|e| panic!("batch {}: {e}", batches + 1));
        batches += 1;
        rows += b.rows;
        assert!(b.rows <= size, "batch of {} rows for size {size}", b.rows);
        if b.done {
            return (batches, rows);
        }
        assert!(batches < 10_000, "no end of batches");
    }
}

fn location(backup: &Backup) -> PathBuf {
    PathBuf::from(&backup.location)
}

/// The whole path for one table: plan, backup, batches, validate, archive
/// contents, rollback.
async fn retention_round_trip(with_key: bool) {
    let admin = pg().await;
    let schema = Schema::new(&admin).await;
    let table = format!("{}.audit_log", schema.0);
    audit_log(&admin, &table, 200_000, with_key).await;
    let before = checksum(&admin, &table).await;

    let name = unique("retention");
    let config = retention_config(&table, "batch_size = 5000");
    let mut task = RetentionTask::new(&name, &config, &pg_config());
    let dir = tempfile::tempdir().unwrap();
    let cx = cx(&name, dir.path());

    let figures_before = task.figures().await.unwrap();
    assert_eq!(figures_before["live_tuples"], 200_000, "{figures_before}");
    let plan = task.plan(&cx).await.unwrap();
    let cut = cutoff(&plan);
    let (old, old_md5, old_ids) = old_rows(&admin, &table, &cut).await;
    assert!((80_000..120_000).contains(&old), "{old} old rows of 200k");
    assert_eq!(plan.rows, old as u64, "{}", plan.summary);
    let by = if with_key {
        "id ranges"
    } else {
        "ctid page ranges"
    };
    assert!(plan.summary.contains(by), "{}", plan.summary);
    assert!(plan.bytes > 0);

    let backup = task.backup(&cx, &plan).await.unwrap();
    assert_eq!(backup.rows, 0);
    let started = Instant::now();
    let (batches, deleted) = run_batches(&mut task, &cx, &plan, 5000).await;
    let took = started.elapsed();
    eprintln!(
        "retention ({by}): {deleted} of 200000 rows deleted in {batches} batches, {:.2} s, {:.0} rows/s",
        took.as_secs_f64(),
        deleted as f64 / took.as_secs_f64()
    );
    assert_eq!(deleted, old as u64);

    let verdict = task.validate(&cx, &plan).await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(verdict.figures["archived_rows"], old);
    assert_eq!(
        old_rows(&admin, &table, &cut).await.0,
        0,
        "an old row is left"
    );
    let (left, _) = checksum(&admin, &table).await;
    assert_eq!(left, 200_000 - old, "only old rows went");
    let figures_after = task.figures().await.unwrap();
    assert_eq!(
        figures_after["rows_older_than_cutoff"], 0,
        "{figures_after}"
    );
    // The closing count covers the whole table, not only the range the
    // run processed: an old row written since under the first key and
    // one over the last are both counted.
    let stray = format!(
        "INSERT INTO {table} (id, created_at, action) OVERRIDING SYSTEM VALUE \
         VALUES (-5, now() - interval '800 days', 'stray'), \
                (1000000000, now() - interval '800 days', 'stray')"
    );
    let stray = if with_key {
        stray
    } else {
        stray.replace(" OVERRIDING SYSTEM VALUE", "")
    };
    admin.batch_execute(&stray).await.unwrap();
    let figures_stray = task.figures().await.unwrap();
    assert_eq!(
        figures_stray["rows_older_than_cutoff"], 2,
        "{figures_stray}"
    );
    admin
        .batch_execute(&format!("DELETE FROM {table} WHERE action = 'stray'"))
        .await
        .unwrap();

    let backup = task.backup_state().expect("a backup after the batches");
    assert_eq!(backup.rows, old as u64);
    let archived = archive_rows(&location(&backup));
    assert_eq!(
        ids(&archived),
        old_ids,
        "the archive holds exactly the deleted rows"
    );
    assert_eq!(checksum_of(&admin, &archived).await, (old, old_md5));
    let on_disk = std::fs::metadata(location(&backup)).unwrap().len();
    assert_eq!(backup.bytes, on_disk);
    eprintln!(
        "archive: {} rows in {on_disk} bytes ({} per row)",
        archived.len(),
        on_disk / archived.len() as u64
    );

    // A crash while a batch was being written leaves a torn member at the
    // end (that batch never committed); it must not stop the rollback.
    let whole = std::fs::read(location(&backup)).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(location(&backup))
        .unwrap();
    std::io::Write::write_all(&mut file, &whole[..3000]).unwrap();
    drop(file);

    // A rollback as a later process would do it: a new task, the backup
    // as the ledger keeps it (JSON).
    let kept: Backup = serde_json::from_str(&serde_json::to_string(&backup).unwrap()).unwrap();
    let mut later = RetentionTask::new(&name, &config, &pg_config());
    let started = Instant::now();
    let verdict = later.rollback(&cx, &kept).await.unwrap();
    eprintln!(
        "rollback ({by}): {old} rows in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert!(verdict.ok, "{verdict:?}");
    assert!(
        verdict.detail.contains("incomplete batch"),
        "{}",
        verdict.detail
    );
    assert_eq!(verdict.figures["rows_back"], old);
    assert_eq!(
        checksum(&admin, &table).await,
        before,
        "the table is as it was"
    );

    // Again: the journal says every batch is back, nothing is doubled.
    let again = later.rollback(&cx, &kept).await.unwrap();
    assert!(again.ok, "{again:?}");
    assert_eq!(again.figures["rows_inserted"], 0);
    assert_eq!(checksum(&admin, &table).await, before);
}

#[tokio::test]
async fn retention_by_key_deletes_only_old_rows_archives_them_and_rolls_back_exactly() {
    retention_round_trip(true).await;
}

#[tokio::test]
async fn retention_without_a_key_goes_by_ctid_pages_and_rolls_back_exactly() {
    retention_round_trip(false).await;
}

/// A maintenance session prepares a statement once and runs it again by
/// name (a batch's DELETE is one round trip, not two), and plans each run
/// for its own parameters, as a statement sent as text is.
#[tokio::test]
async fn a_session_prepares_a_statement_once_and_plans_each_run_for_its_parameters() {
    use upkeep::clients::postgres::{Session, Settings};
    let settings = Settings {
        conninfo: SERVER,
        user: "postgres",
        password_file: None,
        dbname: None,
        connect_timeout: Duration::from_secs(5),
    };
    let mut s = Session::open(&settings, "prepared-test", &[], Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at 127.0.0.1:5432: {e}"));
    let sql = "SELECT $1::int8 * 2";
    let other_sql = "SELECT $1::int8 * 3";
    for n in [1i64, 21] {
        let statement = s.prepared(sql).await.unwrap();
        let row = s.client.query_one(&statement, &[&n]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), n * 2);
        let other = s.prepared(other_sql).await.unwrap();
        let row = s.client.query_one(&other, &[&n]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), n * 3);
    }
    let held: Vec<(String, i64)> = s
        .client
        .query(
            "SELECT statement, count(*) FROM pg_prepared_statements \
             WHERE statement = ANY($1) GROUP BY 1 ORDER BY 1",
            &[&vec![sql, other_sql]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        held,
        [(sql.to_string(), 1), (other_sql.to_string(), 1)],
        "each statement prepared once on the server, however often it ran"
    );
    let mode: String = s
        .client
        .query_one("SELECT current_setting('plan_cache_mode')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "force_custom_plan");
}

#[tokio::test]
async fn a_dry_run_changes_nothing() {
    let admin = pg().await;
    let schema = Schema::new(&admin).await;
    let table = format!("{}.audit_log", schema.0);
    audit_log(&admin, &table, 20_000, true).await;
    let before = checksum(&admin, &table).await;

    let name = unique("dry");
    let config = retention_config(&table, "archive_table = \"audit_log_archive\"");
    let mut task = RetentionTask::new(&name, &config, &pg_config());
    let dir = tempfile::tempdir().unwrap();
    let cx = cx(&name, dir.path());
    let plan = task.plan(&cx).await.unwrap();
    assert!(plan.rows > 0);
    assert!(
        plan.summary.starts_with(&format!("delete {}", plan.rows))
            || plan.summary.contains(" rows (about"),
        "{}",
        plan.summary
    );
    assert!(plan.summary.contains(&cutoff(&plan)), "{}", plan.summary);
    assert_eq!(plan.details["key_column"], "id");
    assert_eq!(checksum(&admin, &table).await, before);
    let archive: Option<String> = admin
        .query_one(
            "SELECT to_regclass($1)::text",
            &[&format!("{}.audit_log_archive", schema.0)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(archive, None, "a dry run creates no archive table");
    assert!(!cx.backup_dir.exists(), "a dry run writes no archive");
}

/// The plan counts in chunks, each a short statement, and still exactly:
/// keys with gaps (negative ones, a jump of 10^12) and a table without a
/// key (by ctid pages) both give the count, size order and first and last
/// position that one statement over the table gives.
#[tokio::test]
async fn the_plan_counts_old_rows_exactly_in_many_short_chunks() {
    let admin = pg().await;
    let schema = Schema::new(&admin).await;
    for with_key in [true, false] {
        let table = format!(
            "{}.gaps_{}",
            schema.0,
            if with_key { "key" } else { "ctid" }
        );
        let key = if with_key { "PRIMARY KEY" } else { "" };
        admin
            .batch_execute(&format!(
                "CREATE TABLE {table} (id bigint {key}, created_at timestamptz NOT NULL, body text);
                 SELECT setseed(0.17);
                 INSERT INTO {table}
                 SELECT CASE WHEN i <= 20000 THEN i * 7 - 50000 ELSE 1000000000000 + i END,
                        now() - random() * interval '730 days', md5(i::text)
                 FROM generate_series(1, 40000) AS i;
                 ANALYZE {table};"
            ))
            .await
            .unwrap();
        let name = unique("chunks");
        let config = retention_config(&table, "batch_target = \"1ms\"\nmax_duty = 0.5");
        let mut task = RetentionTask::new(&name, &config, &pg_config());
        let dir = tempfile::tempdir().unwrap();
        let plan = task.plan(&cx(&name, dir.path())).await.unwrap();
        let cut = cutoff(&plan);
        let position = if with_key {
            "t.id"
        } else {
            "(((t.ctid::text::point)[0])::int8 << 16) + ((t.ctid::text::point)[1])::int8"
        };
        let whole = admin
            .query_one(
                &format!(
                    "SELECT count(*), min({position}), max({position}) FROM {table} t \
                     WHERE created_at < $1::text::timestamptz"
                ),
                &[&cut],
            )
            .await
            .unwrap();
        let (n, first, last): (i64, i64, i64) = (whole.get(0), whole.get(1), whole.get(2));
        assert!(n > 10_000, "{n} old rows");
        assert_eq!(plan.rows, n as u64, "{table}: {}", plan.summary);
        assert_eq!(
            plan.details["range"],
            serde_json::json!([first, last]),
            "{table}"
        );
        assert!(plan.bytes > 0);
        let chunks: u64 = plan
            .summary
            .split("counted exactly in ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("the plan says how it counted: {}", plan.summary));
        assert!(chunks > 5, "{table}: {chunks} chunks: {}", plan.summary);
    }
}

/// Every row of `original` is in `table` or in `archived` (JSON texts).
async fn lost_rows(admin: &Client, original: &str, table: &str, archived: &[String]) -> i64 {
    admin
        .query_one(
            &format!(
                "WITH kept AS (SELECT to_jsonb(t.*) AS j FROM {table} t \
                 UNION ALL SELECT e::jsonb FROM unnest($1::text[]) e) \
                 SELECT count(*) FROM {original} o WHERE to_jsonb(o.*) NOT IN (SELECT j FROM kept)"
            ),
            &[&archived],
        )
        .await
        .unwrap()
        .get(0)
}

async fn terminate(admin: &Client, application: &str, condition: &str) -> bool {
    let rows = admin
        .query(
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND {condition}"
            ),
            &[&application],
        )
        .await
        .unwrap();
    !rows.is_empty()
}

async fn wait_gone(admin: &Client, application: &str) {
    for _ in 0..200 {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&application],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{application} still connected after being terminated");
}

#[tokio::test]
async fn a_terminated_connection_fails_the_batch_and_loses_no_row() {
    let admin = pg().await;
    let schema = Schema::new(&admin).await;
    let table = format!("{}.audit_log", schema.0);
    let original = format!("{}.original", schema.0);
    audit_log(&admin, &table, 40_000, true).await;
    admin
        .batch_execute(&format!("CREATE TABLE {original} AS SELECT * FROM {table}"))
        .await
        .unwrap();
    let before = checksum(&admin, &table).await;

    let name = unique("killed");
    let application = format!("upkeep maintenance {name}");
    let config = retention_config(&table, "batch_size = 2000\nlock_timeout = \"30s\"");
    let mut task = RetentionTask::new(&name, &config, &pg_config());
    let dir = tempfile::tempdir().unwrap();
    let cx = cx(&name, dir.path());
    let plan = task.plan(&cx).await.unwrap();
    task.backup(&cx, &plan).await.unwrap();
    for _ in 0..3 {
        task.apply_batch(&cx, &plan, 2000).await.unwrap();
    }

    // Between batches.
    assert!(terminate(&admin, &application, "true").await);
    wait_gone(&admin, &application).await;
    let e = task.apply_batch(&cx, &plan, 2000).await.unwrap_err();
    assert!(matches!(e, TaskError::Failed(_)), "{e:?}");
    eprintln!("terminated between batches: {e}");
    let archived = archive_rows(&location(&task.backup_state().unwrap()));
    assert_eq!(archived.len(), 6000);
    assert_eq!(lost_rows(&admin, &original, &table, &archived).await, 0);

    // During a batch: its DELETE waits on a row lock held here, and is
    // terminated while it waits.
    task.apply_batch(&cx, &plan, 2000).await.unwrap();
    let cut = cutoff(&plan);
    let mut holder = pg().await;
    let tx = holder.transaction().await.unwrap();
    tx.query(
        &format!(
            "SELECT id FROM {table} WHERE created_at < $1::text::timestamptz \
             ORDER BY id LIMIT 1 FOR UPDATE"
        ),
        &[&cut],
    )
    .await
    .unwrap();
    let killer = async {
        for _ in 0..1000 {
            if terminate(&admin, &application, "wait_event_type = 'Lock'").await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    };
    let (batch, killed) = tokio::join!(task.apply_batch(&cx, &plan, 2000), killer);
    assert!(killed, "the batch never waited on the lock");
    let e = batch.unwrap_err();
    eprintln!("terminated during a batch: {e}");
    tx.rollback().await.unwrap();
    let backup = task.backup_state().unwrap();
    let archived = archive_rows(&location(&backup));
    assert_eq!(archived.len(), 8000);
    assert_eq!(lost_rows(&admin, &original, &table, &archived).await, 0);

    // The run goes on on a new session, then is rolled back.
    let (_, rest) = run_batches(&mut task, &cx, &plan, 2000).await;
    assert_eq!(rest + 8000, plan.rows);
    let verdict = task.validate(&cx, &plan).await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    let backup = task.backup_state().unwrap();
    let verdict = task.rollback(&cx, &backup).await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(checksum(&admin, &table).await, before);
}

#[tokio::test]
async fn a_batch_killed_before_its_commit_is_in_both_places_and_never_put_back_twice() {
    // No key: a row put back twice would stay twice. The session is
    // terminated while its batch is idle in its transaction, writing the
    // archive: the rows are then in the archive and, the commit having
    // failed, still in the table.
    let admin = pg().await;
    let schema = Schema::new(&admin).await;
    let table = format!("{}.audit_log", schema.0);
    let original = format!("{}.original", schema.0);
    audit_log(&admin, &table, 100_000, false).await;
    admin
        .batch_execute(&format!("CREATE TABLE {original} AS SELECT * FROM {table}"))
        .await
        .unwrap();
    let before = checksum(&admin, &table).await;

    let name = unique("torn");
    let application = format!("upkeep maintenance {name}");
    let config = retention_config(&table, "batch_size = 20000");
    let mut task = RetentionTask::new(&name, &config, &pg_config());
    let dir = tempfile::tempdir().unwrap();
    let cx = cx(&name, dir.path());
    let plan = task.plan(&cx).await.unwrap();
    task.backup(&cx, &plan).await.unwrap();

    let mut caught = None;
    for attempt in 0..20 {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let killer = async {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Idle after its last statement before COMMIT: writing.
                let writing = "state = 'idle in transaction' \
                               AND query LIKE 'SELECT pg_current_xact_id%'";
                if terminate(&admin, &application, writing).await {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            false
        };
        let batch = async {
            let r = task.apply_batch(&cx, &plan, 20000).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            r
        };
        let (batch, killed) = tokio::join!(batch, killer);
        match batch {
            // The server reports the session idle a moment before it sends
            // the answer to its last statement: a kill in that moment ends
            // the transaction before anything reached the archive. Nothing
            // may be lost then either; the batch is tried again.
            Err(e) if killed && e.to_string().contains("nothing was deleted") => {
                // Before the first batch's member the archive is still empty.
                let path = location(&task.backup_state().unwrap());
                let archived = match std::fs::metadata(&path).map(|m| m.len()) {
                    Ok(0) => Vec::new(),
                    _ => archive_rows(&path),
                };
                assert_eq!(lost_rows(&admin, &original, &table, &archived).await, 0);
            }
            Err(e) if killed => {
                caught = Some((attempt, e));
                break;
            }
            Ok(b) if b.done => break,
            _ => {}
        }
    }
    let (attempt, e) = caught.expect("no batch was caught idle in its transaction");
    eprintln!("terminated before commit (batch {}): {e}", attempt + 1);
    assert!(e.to_string().contains("in the archive"), "{e}");
    let archived = archive_rows(&location(&task.backup_state().unwrap()));
    assert_eq!(lost_rows(&admin, &original, &table, &archived).await, 0);
    let (in_table, _) = checksum(&admin, &table).await;
    assert!(
        in_table + archived.len() as i64 > before.0,
        "the killed batch's rows are in both places"
    );

    // Rolled back now, the uncommitted batch is skipped.
    let backup = task.backup_state().unwrap();
    let mut later = RetentionTask::new(&name, &config, &pg_config());
    let verdict = later.rollback(&cx, &backup).await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    assert!(
        verdict.figures["uncommitted_rows_skipped"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(checksum(&admin, &table).await, before);
}

async fn plan_error(schema: &str, table: &str, column: &str) -> TaskError {
    let name = unique("wrong");
    let toml = format!(
        "probe = \"database\"\ntable = \"{schema}.{table}\"\ntimestamp_column = \"{column}\"\n\
         older_than = \"30d\""
    );
    let config: RetentionConfig = toml::from_str(&toml).unwrap();
    let mut task = RetentionTask::new(&name, &config, &pg_config());
    let dir = tempfile::tempdir().unwrap();
    task.plan(&cx(&name, dir.path())).await.unwrap_err()
}

#[tokio::test]
async fn catalog_mistakes_name_the_field() {
    let admin = pg().await;
    let schema = Schema::new(&admin).await;
    let s = &schema.0;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {s}.notes (id int PRIMARY KEY, created_at text, at timestamp);
             CREATE VIEW {s}.recent AS SELECT * FROM {s}.notes;"
        ))
        .await
        .unwrap();
    let field = |e: &TaskError| match e {
        TaskError::Config { field, message } => (*field, message.clone()),
        other => panic!("not a config error: {other:?}"),
    };

    let (f, m) = field(&plan_error(s, "notes", "created_at").await);
    assert_eq!(f, "timestamp_column");
    assert_eq!(
        m,
        format!(
            "column created_at of {s}.notes is text, not a timestamp (timestamp, timestamptz or date)"
        )
    );
    let (f, m) = field(&plan_error(s, "notes", "updated_at").await);
    assert_eq!(
        (f, m),
        (
            "timestamp_column",
            format!("{s}.notes has no column updated_at")
        )
    );
    let (f, m) = field(&plan_error(s, "missing", "created_at").await);
    assert_eq!((f, m), ("table", format!("{s}.missing does not exist")));
    let (f, m) = field(&plan_error(s, "recent", "at").await);
    assert_eq!(
        (f, m),
        ("table", format!("{s}.recent is a view, not a table"))
    );
    // A timestamp without time zone is fine; the table is empty.
    let name = unique("right");
    let config: RetentionConfig = toml::from_str(&format!(
        "probe = \"database\"\ntable = \"{s}.notes\"\ntimestamp_column = \"at\"\nolder_than = \"30d\""
    ))
    .unwrap();
    let mut task = RetentionTask::new(&name, &config, &pg_config());
    let dir = tempfile::tempdir().unwrap();
    let cx = cx(&name, dir.path());
    let plan = task.plan(&cx).await.unwrap();
    assert_eq!(plan.rows, 0);
    assert!(
        plan.summary.starts_with("nothing to delete"),
        "{}",
        plan.summary
    );
    task.backup(&cx, &plan).await.unwrap();
    let b = task.apply_batch(&cx, &plan, 100).await.unwrap();
    assert!(b.done && b.rows == 0, "{b:?}");
    assert!(task.validate(&cx, &plan).await.unwrap().ok);
}

#[tokio::test]
async fn an_archive_table_receives_the_rows_and_gives_them_back() {
    let admin = pg().await;
    let schema = Schema::new(&admin).await;
    let table = format!("{}.audit_log", schema.0);
    let archive = format!("{}.audit_log_archive", schema.0);
    audit_log(&admin, &table, 30_000, true).await;
    let before = checksum(&admin, &table).await;

    let name = unique("to_table");
    let config = retention_config(&table, "archive_table = \"audit_log_archive\"");
    let mut task = RetentionTask::new(&name, &config, &pg_config());
    let dir = tempfile::tempdir().unwrap();
    let cx = cx(&name, dir.path());
    let plan = task.plan(&cx).await.unwrap();
    assert_eq!(
        task.backup_bytes(&plan),
        0,
        "nothing goes to the backup dir"
    );
    let (_, old_md5, old_ids) = old_rows(&admin, &table, &cutoff(&plan)).await;
    let backup = task.backup(&cx, &plan).await.unwrap();
    assert_eq!(backup.location, archive);
    let (_, deleted) = run_batches(&mut task, &cx, &plan, 3000).await;
    assert_eq!(deleted, plan.rows);
    assert!(task.validate(&cx, &plan).await.unwrap().ok);

    let moved = admin
        .query(
            &format!(
                "SELECT (to_jsonb(a.*) - 'upkeep_run')::text FROM {archive} a WHERE upkeep_run = 7"
            ),
            &[],
        )
        .await
        .unwrap();
    let moved: Vec<String> = moved.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids(&moved), old_ids);
    assert_eq!(checksum_of(&admin, &moved).await.1, old_md5);
    assert!(!cx.backup_dir.join("rows.jsonl.gz").exists());

    let backup = task.backup_state().unwrap();
    let verdict = task.rollback(&cx, &backup).await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(checksum(&admin, &table).await, before);
    let left: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {archive}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "rows moved back, not copied");

    // A second run reuses the archive table.
    let mut again = RetentionTask::new(&name, &config, &pg_config());
    let plan = again.plan(&cx).await.unwrap();
    again.backup(&cx, &plan).await.unwrap();
    run_batches(&mut again, &cx, &plan, 5000).await;
    assert!(again.validate(&cx, &plan).await.unwrap().ok);
}

fn analyze_config(extra: &str) -> AnalyzeConfig {
    let c: AnalyzeConfig = toml::from_str(&format!("probe = \"database\"\n{extra}")).unwrap();
    assert_eq!(c.validate(), vec![]);
    c
}

/// Dead tuples of `table` once the stats have them.
async fn dead_tuples(admin: &Client, table: &str, at_least: i64) -> i64 {
    for _ in 0..100 {
        let n: Option<i64> = admin
            .query_one(
                "SELECT n_dead_tup FROM pg_stat_all_tables WHERE relid = to_regclass($1)",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        if n.unwrap_or(0) >= at_least {
            return n.unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{table} never showed {at_least} dead tuples");
}

/// Waits until no session has a snapshot or transaction older than
/// transaction `xid`, so that VACUUM may remove the rows it deleted (tests
/// running beside this one hold snapshots for a moment).
async fn wait_horizon(admin: &Client, xid: i64) {
    let sql = "SELECT string_agg(pid || ' ' || coalesce(application_name, ''), ', ') \
        FROM pg_stat_activity, (SELECT (($1::int8 % 4294967296)::text)::xid AS x) d \
        WHERE pid <> pg_backend_pid() \
          AND (age(backend_xmin) >= age(d.x) OR age(backend_xid) >= age(d.x))";
    let mut older: Option<String> = None;
    for _ in 0..600 {
        older = admin.query_one(sql, &[&xid]).await.unwrap().get(0);
        if older.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sessions older than transaction {xid} for a minute: {older:?}");
}

#[tokio::test]
async fn analyze_with_vacuum_clears_dead_tuples_and_advances_last_analyze() {
    let admin = pg().await;
    let schema = Schema::new(&admin).await;
    let s = &schema.0;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {s}.events (id int PRIMARY KEY, body text) WITH (autovacuum_enabled = false);
             CREATE TABLE {s}.other (id int) WITH (autovacuum_enabled = false);
             INSERT INTO {s}.events SELECT i, md5(i::text) FROM generate_series(1, 20000) i;
             INSERT INTO {s}.other SELECT generate_series(1, 100);"
        ))
        .await
        .unwrap();
    let deleted_by: i64 = admin
        .query_one(
            &format!("WITH d AS (DELETE FROM {s}.events WHERE id % 2 = 0) SELECT txid_current()"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    admin
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    let events = format!("{s}.events");
    let dead = dead_tuples(&admin, &events, 10_000).await;
    wait_horizon(&admin, deleted_by).await;

    let name = unique("analyze");
    let config = analyze_config(&format!(
        "tables = [\"{s}.events\", \"{s}.other\"]\nvacuum = true"
    ));
    let mut task = AnalyzeTask::new(&name, &config, &pg_config());
    assert!(!task.reversible());
    let dir = tempfile::tempdir().unwrap();
    let cx = cx(&name, dir.path());
    let before = task.figures().await.unwrap();
    assert_eq!(before["tables"][0]["dead_tuples"], dead, "{before}");
    assert_eq!(before["tables"][0]["last_analyze"], serde_json::Value::Null);

    let plan = task.plan(&cx).await.unwrap();
    assert_eq!(plan.rows, 2);
    assert!(
        plan.summary.starts_with("vacuum and analyze 2 tables"),
        "{}",
        plan.summary
    );
    assert!(
        plan.summary
            .contains(&format!("{events} (10,000 dead, last analyzed never)")),
        "{}",
        plan.summary
    );
    let backup = task.backup(&cx, &plan).await.unwrap();
    assert_eq!((backup.rows, backup.bytes), (0, 0));
    let first = task.apply_batch(&cx, &plan, 1).await.unwrap();
    assert_eq!((first.rows, first.done), (1, false), "{first:?}");
    assert!(first.detail.contains("VACUUM (ANALYZE)"), "{first:?}");
    let second = task.apply_batch(&cx, &plan, 1).await.unwrap();
    assert_eq!((second.rows, second.done), (1, true), "{second:?}");

    let verdict = task.validate(&cx, &plan).await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    let after = task.figures().await.unwrap();
    let dead_after = after["tables"][0]["dead_tuples"].as_i64().unwrap();
    eprintln!("analyze: dead tuples of {events} {dead} before, {dead_after} after");
    assert!(dead_after < dead, "{after}");
    assert!(after["tables"][0]["last_analyze"].is_string(), "{after}");
    assert!(after["tables"][0]["last_vacuum"].is_string(), "{after}");

    let e = task.rollback(&cx, &backup).await.unwrap_err();
    assert!(
        e.to_string().contains("statistics cannot be rolled back"),
        "{e}"
    );
}

#[tokio::test]
async fn analyze_without_vacuum_and_a_missing_table() {
    let admin = pg().await;
    let schema = Schema::new(&admin).await;
    let s = &schema.0;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {s}.a (id int); CREATE TABLE {s}.b (id int);
             CREATE VIEW {s}.v AS SELECT 1 AS x;
             INSERT INTO {s}.a SELECT generate_series(1, 1000);"
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let name = unique("analyze");
    let config = analyze_config(&format!("tables = [\"{s}.a\", \"{s}.b\"]"));
    let mut task = AnalyzeTask::new(&name, &config, &pg_config());
    let cx = cx(&name, dir.path());
    let plan = task.plan(&cx).await.unwrap();
    assert!(
        plan.summary.starts_with("analyze 2 tables"),
        "{}",
        plan.summary
    );
    let b = task.apply_batch(&cx, &plan, 10).await.unwrap();
    assert!(
        b.done && b.rows == 2 && b.detail.starts_with("ANALYZE "),
        "{b:?}"
    );
    let verdict = task.validate(&cx, &plan).await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    let last: Option<String> = admin
        .query_one(
            "SELECT last_analyze::text FROM pg_stat_all_tables WHERE relid = to_regclass($1)",
            &[&format!("{s}.a")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(last.is_some());

    for (tables, message) in [
        (
            format!("[\"{s}.gone\"]"),
            format!("{s}.gone does not exist"),
        ),
        (
            format!("[\"{s}.v\"]"),
            format!("{s}.v is a view, not a table"),
        ),
    ] {
        let config = analyze_config(&format!("tables = {tables}"));
        let mut task = AnalyzeTask::new(&name, &config, &pg_config());
        match task.plan(&cx).await.unwrap_err() {
            TaskError::Config { field, message: m } => {
                assert_eq!((field, m), ("tables", message));
            }
            other => panic!("{other:?}"),
        }
    }

    // Every table of the database: this schema's among them.
    let mut all = AnalyzeTask::new(&name, &analyze_config(""), &pg_config());
    let plan = all.plan(&cx).await.unwrap();
    let listed: BTreeSet<String> = plan.details["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap().to_string())
        .collect();
    assert!(listed.contains(&format!("{s}.a")) && listed.contains(&format!("{s}.b")));
    assert!(!listed.iter().any(|t| t.starts_with("pg_catalog.")));
}
