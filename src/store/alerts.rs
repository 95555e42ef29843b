//! The alerts' tables in the history file (the store owns every table; the
//! alert engine, the CLI and the API write through this module):
//! - `alerts`: one row per alert the engine tracks (pending or firing), so
//!   that a restart picks up where the agent stopped;
//! - `outbox`: notifications not yet accepted by their receiver, written in
//!   the same transaction as the state change they announce, deleted only
//!   once the receiver accepted them;
//! - `silences`: matchers that keep alerts from notifying until they end.
//!
//! Bounded: at most `max_rows` outbox rows per notifier (the oldest go
//! first, counted as dropped), each body at most [`MAX_BODY_BYTES`];
//! [`MAX_SILENCES`] silences; alerts bounded by the rules' label sets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{FILE_NAME, StoreError};
use crate::sample::Ts;

/// Largest notification body kept in the outbox, in bytes.
pub const MAX_BODY_BYTES: usize = 4096;
/// Silences kept (expired ones are deleted first, then the oldest).
pub const MAX_SILENCES: i64 = 1000;
/// Alerts tracked at most (pending or firing); beyond this new ones wait.
pub const MAX_ALERTS: i64 = 1000;
/// Per row of any of these tables besides its body: ids, names, times.
const ROW_OVERHEAD: u64 = 256;

/// Bytes the alert tables can take at most, for the size bound
/// `check-config` prints: every notifier's outbox full, every silence and
/// every tracked alert at their caps.
pub fn bound_bytes(notifiers: usize, max_rows: usize) -> u64 {
    let outbox = (notifiers * max_rows) as u64 * (MAX_BODY_BYTES as u64 + ROW_OVERHEAD);
    let silences = MAX_SILENCES as u64 * (2048 + ROW_OVERHEAD);
    let alerts = MAX_ALERTS as u64 * (2 * MAX_BODY_BYTES as u64 + ROW_OVERHEAD);
    outbox + silences + alerts
}

/// Version 5 of the schema: the alerts' tables.
pub(crate) const MIGRATION_SQL: &str = r#"
CREATE TABLE alerts (
    fingerprint TEXT PRIMARY KEY,
    rule        TEXT NOT NULL,
    state       TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY,
    notifier   TEXT NOT NULL,
    nid        TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    body       TEXT NOT NULL
);
CREATE INDEX outbox_by_notifier ON outbox (notifier, id);
CREATE TABLE silences (
    id         INTEGER PRIMARY KEY,
    matchers   TEXT NOT NULL,
    starts_ms  INTEGER NOT NULL,
    ends_ms    INTEGER NOT NULL,
    comment    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
"#;

/// One tracked alert as kept across restarts: the engine's own state,
/// stored as JSON (`data`) beside the columns queries need.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    pub fingerprint: String,
    pub rule: String,
    pub state: String,
    pub data: String,
}

/// A notification waiting for its receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub notifier: String,
    /// The notification's stable id, `fingerprint:state:sequence`.
    pub nid: String,
    pub created_ms: Ts,
    pub attempts: i64,
    pub body: String,
}

/// A silence: alerts whose labels match every matcher do not notify
/// between `starts_ms` and `ends_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: i64,
    pub matchers: BTreeMap<String, String>,
    pub starts_ms: Ts,
    pub ends_ms: Ts,
    pub comment: String,
    pub created_by: String,
    pub created_ms: Ts,
}

impl Silence {
    pub fn active_at(&self, now: Ts) -> bool {
        self.starts_ms <= now && now < self.ends_ms
    }

    /// Whether an alert with these labels is silenced by this one.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

/// One state change to record: the alert row as it now stands (`None`:
/// the alert is over, its row goes) and the notifications announcing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub fingerprint: String,
    pub row: Option<AlertRow>,
    /// `(notifier, notification id, body)`.
    pub notifications: Vec<(String, String, String)>,
}

/// The writing side of the alert tables, on its own connection.
pub struct AlertStore {
    path: PathBuf,
    conn: Connection,
}

impl AlertStore {
    /// Opens (creating if need be) the history file in `data_dir` and
    /// brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<AlertStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let mut conn = super::open_rw(&path)?;
        super::migrate(&mut conn, &path)?;
        Ok(AlertStore { path, conn })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
        super::sql_err(&self.path)
    }

    /// Every tracked alert.
    pub fn alerts(&self) -> Result<Vec<AlertRow>, StoreError> {
        alert_rows(&self.conn).map_err(self.err())
    }

    /// Records state changes and their notifications in one transaction:
    /// a notification is in the outbox exactly when its change is on
    /// record. Each notifier's outbox is then cut to `max_rows`, oldest
    /// first; returns how many rows each notifier lost that way.
    pub fn apply(
        &self,
        changes: &[Change],
        now: Ts,
        max_rows: usize,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(self.err())?;
        let mut touched = BTreeMap::new();
        for c in changes {
            match &c.row {
                Some(r) => tx
                    .execute(
                        "INSERT INTO alerts (fingerprint, rule, state, data) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (fingerprint) DO UPDATE SET rule = ?2, state = ?3, data = ?4",
                        params![r.fingerprint, r.rule, r.state, r.data],
                    )
                    .map_err(self.err())?,
                None => tx
                    .execute(
                        "DELETE FROM alerts WHERE fingerprint = ?1",
                        [&c.fingerprint],
                    )
                    .map_err(self.err())?,
            };
            for (notifier, nid, body) in &c.notifications {
                tx.execute(
                    "INSERT INTO outbox (notifier, nid, created_ms, body) VALUES (?1, ?2, ?3, ?4)",
                    params![notifier, nid, now, cap(body)],
                )
                .map_err(self.err())?;
                touched.insert(notifier.clone(), 0u64);
            }
        }
        for (notifier, dropped) in touched.iter_mut() {
            *dropped = tx
                .execute(
                    "DELETE FROM outbox WHERE notifier = ?1 AND id NOT IN
                       (SELECT id FROM outbox WHERE notifier = ?1 ORDER BY id DESC LIMIT ?2)",
                    params![notifier, max_rows as i64],
                )
                .map_err(self.err())? as u64;
        }
        tx.commit().map_err(self.err())?;
        touched.retain(|_, d| *d > 0);
        Ok(touched)
    }

    /// The oldest notification waiting for `notifier`.
    pub fn next(&self, notifier: &str) -> Result<Option<OutboxRow>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT id, notifier, nid, created_ms, attempts, body FROM outbox
                 WHERE notifier = ?1 ORDER BY id LIMIT 1",
            )
            .and_then(|mut st| st.query_row([notifier], outbox_row).optional())
            .map_err(self.err())
    }

    /// The receiver accepted it (or it was given up): the row goes.
    pub fn remove(&self, id: i64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM outbox WHERE id = ?1", [id])
            .map(drop)
            .map_err(self.err())
    }

    /// A failed attempt, counted on the row.
    pub fn attempted(&self, id: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?1",
                [id],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// Removes every row of notifiers not in `keep` (they left the
    /// config); returns how many went.
    pub fn forget_notifiers(&self, keep: &[String]) -> Result<u64, StoreError> {
        let names: Vec<String> = self
            .conn
            .prepare("SELECT DISTINCT notifier FROM outbox")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(self.err())?;
        let mut gone = 0;
        for n in names.iter().filter(|n| !keep.contains(n)) {
            gone += self
                .conn
                .execute("DELETE FROM outbox WHERE notifier = ?1", [n])
                .map_err(self.err())? as u64;
        }
        Ok(gone)
    }

    /// SQLite's `data_version` of this connection: it changes whenever
    /// another connection (the history writer, the API, the CLI, a sender)
    /// committed to the file since the last ask.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(self.err())
    }

    /// Rows waiting per notifier.
    pub fn pending(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        // The file was brought up to date at open: the tables are there.
        read_outbox_pending(&self.conn).map_err(self.err())
    }

    /// Silences not yet ended at `now`.
    pub fn silences(&self, now: Ts) -> Result<Vec<Silence>, StoreError> {
        read_silences(&self.conn, now).map_err(self.err())
    }

    /// Adds a silence; returns its id. The oldest silences beyond
    /// [`MAX_SILENCES`] are deleted (ended ones first).
    pub fn add_silence(&self, s: &Silence) -> Result<i64, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(self.err())?;
        let matchers = serde_json::to_string(&s.matchers).expect("a map of strings");
        tx.execute(
            "INSERT INTO silences (matchers, starts_ms, ends_ms, comment, created_by, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                matchers,
                s.starts_ms,
                s.ends_ms,
                s.comment,
                s.created_by,
                s.created_ms
            ],
        )
        .map_err(self.err())?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "DELETE FROM silences WHERE id NOT IN
               (SELECT id FROM silences ORDER BY ends_ms > ?1 DESC, id DESC LIMIT ?2)",
            params![s.created_ms, MAX_SILENCES],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(id)
    }

    /// Ends a silence now; `false` when there is no such silence or it had
    /// ended already.
    pub fn expire_silence(&self, id: i64, now: Ts) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "UPDATE silences SET ends_ms = ?2 WHERE id = ?1 AND ends_ms > ?2",
                params![id, now],
            )
            .map(|n| n > 0)
            .map_err(self.err())
    }

    /// Records agent events (a notification given up) in the events table.
    pub fn record_events(&self, events: &[super::Event]) -> Result<(), StoreError> {
        for e in events {
            self.conn
                .execute(
                    "INSERT INTO events (ts_ms, probe, kind, from_status, to_status, message)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        e.ts_ms,
                        e.probe,
                        e.kind,
                        e.from_status,
                        e.to_status,
                        super::events::stored_message(&e.message)
                    ],
                )
                .map_err(self.err())?;
        }
        Ok(())
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

fn cap(body: &str) -> &str {
    if body.len() <= MAX_BODY_BYTES {
        return body;
    }
    // Bodies are built under the cap (`alerts::rules`); this is the last
    // guard of the bound, not a format.
    let mut end = MAX_BODY_BYTES;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    &body[..end]
}

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.get(0)?,
        notifier: r.get(1)?,
        nid: r.get(2)?,
        created_ms: r.get(3)?,
        attempts: r.get(4)?,
        body: r.get(5)?,
    })
}

/// Whether the file has the alert tables (schema 5 or later): the
/// read-only reader reads older files, which have none.
fn has_alert_tables(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(super::user_version(conn)? >= 5)
}

/// Every tracked alert (none in a file older than schema 5).
pub fn alert_rows(conn: &Connection) -> rusqlite::Result<Vec<AlertRow>> {
    if !has_alert_tables(conn)? {
        return Ok(Vec::new());
    }
    conn.prepare_cached("SELECT fingerprint, rule, state, data FROM alerts ORDER BY fingerprint")?
        .query_map([], |r| {
            Ok(AlertRow {
                fingerprint: r.get(0)?,
                rule: r.get(1)?,
                state: r.get(2)?,
                data: r.get(3)?,
            })
        })?
        .collect()
}

/// Silences not yet ended at `now`, newest first.
pub fn silences(conn: &Connection, now: Ts) -> rusqlite::Result<Vec<Silence>> {
    if !has_alert_tables(conn)? {
        return Ok(Vec::new());
    }
    read_silences(conn, now)
}

fn read_silences(conn: &Connection, now: Ts) -> rusqlite::Result<Vec<Silence>> {
    conn.prepare_cached(
        "SELECT id, matchers, starts_ms, ends_ms, comment, created_by, created_ms
         FROM silences WHERE ends_ms > ?1 ORDER BY id DESC",
    )?
    .query_map([now], |r| {
        let matchers: String = r.get(1)?;
        Ok(Silence {
            id: r.get(0)?,
            matchers: serde_json::from_str(&matchers).unwrap_or_default(),
            starts_ms: r.get(2)?,
            ends_ms: r.get(3)?,
            comment: r.get(4)?,
            created_by: r.get(5)?,
            created_ms: r.get(6)?,
        })
    })?
    .collect()
}

/// Outbox rows waiting per notifier.
pub fn outbox_pending(conn: &Connection) -> rusqlite::Result<BTreeMap<String, u64>> {
    if !has_alert_tables(conn)? {
        return Ok(BTreeMap::new());
    }
    read_outbox_pending(conn)
}

fn read_outbox_pending(conn: &Connection) -> rusqlite::Result<BTreeMap<String, u64>> {
    conn.prepare_cached("SELECT notifier, count(*) FROM outbox GROUP BY notifier")?
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(fp: &str, state: Option<&str>, notes: &[(&str, &str)]) -> Change {
        Change {
            fingerprint: fp.into(),
            row: state.map(|s| AlertRow {
                fingerprint: fp.into(),
                rule: "r".into(),
                state: s.into(),
                data: "{}".into(),
            }),
            notifications: notes
                .iter()
                .map(|(n, id)| {
                    (
                        n.to_string(),
                        id.to_string(),
                        format!("{{\"id\":\"{id}\"}}"),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_change_and_its_notifications_land_together_and_leave_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = AlertStore::open(dir.path()).unwrap();
        s.apply(
            &[change(
                "a",
                Some("firing"),
                &[("ops", "a:firing:1"), ("am", "a:firing:1")],
            )],
            1,
            10,
        )
        .unwrap();
        s.apply(&[change("a", None, &[("ops", "a:resolved:2")])], 2, 10)
            .unwrap();
        assert!(s.alerts().unwrap().is_empty());
        let first = s.next("ops").unwrap().unwrap();
        assert_eq!(first.nid, "a:firing:1");
        s.attempted(first.id).unwrap();
        assert_eq!(s.next("ops").unwrap().unwrap().attempts, 1);
        s.remove(first.id).unwrap();
        assert_eq!(s.next("ops").unwrap().unwrap().nid, "a:resolved:2");
        assert_eq!(
            s.pending().unwrap(),
            BTreeMap::from([("am".into(), 1), ("ops".into(), 1)])
        );
        assert_eq!(s.forget_notifiers(&["ops".into()]).unwrap(), 1);
    }

    #[test]
    fn the_outbox_keeps_the_newest_rows_up_to_its_bound_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = AlertStore::open(dir.path()).unwrap();
        for i in 0..5 {
            let id = format!("x:firing:{i}");
            let dropped = s
                .apply(&[change("x", Some("firing"), &[("ops", &id)])], i, 3)
                .unwrap();
            assert_eq!(dropped.get("ops").copied().unwrap_or(0), u64::from(i >= 3));
        }
        assert_eq!(s.next("ops").unwrap().unwrap().nid, "x:firing:2");
    }

    #[test]
    fn silences_end_when_expired_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let s = AlertStore::open(dir.path()).unwrap();
            s.add_silence(&Silence {
                id: 0,
                matchers: BTreeMap::from([("probe".into(), "database".into())]),
                starts_ms: 0,
                ends_ms: 1000,
                comment: "upgrade".into(),
                created_by: "cli".into(),
                created_ms: 0,
            })
            .unwrap()
        };
        let s = AlertStore::open(dir.path()).unwrap();
        let all = s.silences(10).unwrap();
        assert_eq!(all.len(), 1);
        assert!(all[0].matches(&BTreeMap::from([
            ("probe".into(), "database".into()),
            ("rule".into(), "down".into())
        ])));
        assert!(s.expire_silence(id, 10).unwrap());
        assert!(!s.expire_silence(id, 10).unwrap());
        assert!(s.silences(10).unwrap().is_empty());
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    /// A version 4 file (before alerts) reads as having no alerts, no
    /// silences and an empty outbox, and gains the tables when the writing
    /// side opens it.
    #[test]
    fn a_version_4_file_reads_as_empty_then_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let mut conn = crate::store::open_rw(&path).unwrap();
            crate::store::migrate_to(&mut conn, &path, 4).unwrap();
        }
        let r = crate::store::Reader::open(dir.path()).expect("a version 4 file reads");
        drop(r);
        let ro = crate::store::open_ro(&path).unwrap();
        assert!(alert_rows(&ro).unwrap().is_empty());
        assert!(silences(&ro, 0).unwrap().is_empty());
        assert!(outbox_pending(&ro).unwrap().is_empty());
        let s = AlertStore::open(dir.path()).unwrap();
        let v: i64 = s
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, crate::store::SCHEMA_VERSION);
        assert!(s.alerts().unwrap().is_empty());
    }
}
