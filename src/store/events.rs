//! The events table's two bounds: rows (`max_events`) and bytes
//! (`max_event_bytes`). A row's bytes are its text (the probe twice: the row
//! and its `events_by_probe` index entry) plus a fixed cost; a counter kept
//! by triggers (`event_bytes`, schema 6) holds their sum, so that the
//! writer checks the budget with one read and trims only the rows it
//! deletes. Called by `writer` (each batch and each retention pass) and
//! `alerts` (its events' messages are cut as the writer's are).

use rusqlite::{Connection, params};

use super::Event;

/// Longest event message stored, in bytes (longer ones are cut at a
/// character boundary).
pub const MAX_MESSAGE_BYTES: usize = 512;
/// Longest probe name, kind or status an event row holds (config and code
/// keep them far shorter; the bound assumes this much).
pub const MAX_FIELD_BYTES: u64 = 64;
/// What an event row costs besides its text: rowid, time, run id and
/// maintenance run (at most 9 bytes each), the record's header, the cell's
/// header and pointer (at most 24), and the probe index entry's time, rowid
/// and headers (at most 24).
pub const ROW_FIXED_BYTES: u64 = 96;
/// The most one event row can cost.
pub const MAX_ROW_BYTES: u64 = ROW_FIXED_BYTES + 5 * MAX_FIELD_BYTES + MAX_MESSAGE_BYTES as u64;

/// A row's bytes in SQL, for the row called `$r` (`NEW`, `OLD`, `events`);
/// `row_bytes` is the same sum in Rust (a unit test holds them together).
macro_rules! row_bytes_sql {
    ($r:literal) => {
        concat!(
            "(96 + 2 * length(CAST(coalesce(",
            $r,
            ".probe, '') AS BLOB)) + length(CAST(",
            $r,
            ".kind AS BLOB)) + length(CAST(coalesce(",
            $r,
            ".from_status, '') AS BLOB)) + length(CAST(coalesce(",
            $r,
            ".to_status, '') AS BLOB)) + length(CAST(",
            $r,
            ".message AS BLOB)))"
        )
    };
}

/// Version 6 of the schema: the counter of the events' bytes and the
/// triggers that keep it. Rows copied by a salvage go through the triggers
/// too, so the fresh file's counter is right.
pub(crate) const MIGRATION_SQL: &str = concat!(
    "CREATE TABLE event_bytes (total INTEGER NOT NULL);\n",
    "INSERT INTO event_bytes (total) SELECT coalesce(sum(",
    row_bytes_sql!("events"),
    "), 0) FROM events;\n",
    "CREATE TRIGGER event_bytes_insert AFTER INSERT ON events BEGIN UPDATE event_bytes SET total = total + ",
    row_bytes_sql!("NEW"),
    "; END;\n",
    "CREATE TRIGGER event_bytes_delete AFTER DELETE ON events BEGIN UPDATE event_bytes SET total = total - ",
    row_bytes_sql!("OLD"),
    "; END;\n"
);

/// The message as stored: cut to `MAX_MESSAGE_BYTES` at a character boundary.
pub fn stored_message(s: &str) -> &str {
    if s.len() <= MAX_MESSAGE_BYTES {
        return s;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What the event costs once stored (its message cut).
pub fn row_bytes(e: &Event) -> u64 {
    let len = |s: &Option<String>| s.as_deref().map_or(0, str::len) as u64;
    ROW_FIXED_BYTES
        + 2 * len(&e.probe)
        + e.kind.len() as u64
        + len(&e.from_status)
        + len(&e.to_status)
        + stored_message(&e.message).len() as u64
}

/// The events' bytes now, by the counter.
pub fn total_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT total FROM event_bytes")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|t| t.max(0) as u64)
}

/// How many of `events` (oldest first) a batch stores: the newest that fit
/// `max_rows` rows and `max_bytes` bytes. Returns the index of the first
/// kept and the kept ones' bytes.
pub fn newest_that_fit(events: &[Event], max_rows: u64, max_bytes: u64) -> (usize, u64) {
    let mut first = events.len();
    let mut bytes = 0;
    while first > 0 && ((events.len() - first) as u64) < max_rows {
        let b = row_bytes(&events[first - 1]);
        if bytes + b > max_bytes {
            break;
        }
        bytes += b;
        first -= 1;
    }
    (first, bytes)
}

/// Deletes the oldest events until at most `max_rows` rows and `max_bytes`
/// bytes are left. Reads only the rows it deletes. Returns how many went.
pub fn trim(conn: &Connection, max_rows: u64, max_bytes: u64) -> rusqlite::Result<usize> {
    let mut deleted = conn
        .prepare_cached("DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?1")?
        .execute([max_rows as i64])?;
    let total = total_bytes(conn)?;
    if total <= max_bytes {
        return Ok(deleted);
    }
    let excess = total - max_bytes;
    let mut cut = None;
    let mut freed = 0u64;
    {
        let mut st = conn.prepare_cached(concat!(
            "SELECT id, ",
            row_bytes_sql!("events"),
            " FROM events ORDER BY id"
        ))?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            cut = Some(r.get::<_, i64>(0)?);
            freed += r.get::<_, i64>(1)?.max(0) as u64;
            if freed >= excess {
                break;
            }
        }
    }
    if let Some(id) = cut {
        deleted += conn
            .prepare_cached("DELETE FROM events WHERE id <= ?1")?
            .execute(params![id])?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, run_id INTEGER,
               probe TEXT, kind TEXT NOT NULL, from_status TEXT, to_status TEXT,
               message TEXT NOT NULL, maintenance_run INTEGER);",
        )
        .unwrap();
        c.execute_batch(MIGRATION_SQL).unwrap();
        c
    }

    fn event(probe: Option<&str>, message: &str) -> Event {
        Event {
            ts_ms: 1,
            probe: probe.map(str::to_string),
            kind: "status".into(),
            from_status: Some("healthy".into()),
            to_status: Some("unhealthy".into()),
            message: message.into(),
        }
    }

    fn insert(c: &Connection, e: &Event) {
        c.execute(
            "INSERT INTO events (ts_ms, probe, kind, from_status, to_status, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.ts_ms, e.probe, e.kind, e.from_status, e.to_status, stored_message(&e.message)],
        )
        .unwrap();
    }

    #[test]
    fn the_counter_is_the_sum_of_row_bytes() {
        let c = conn();
        let events = [
            event(Some("database"), "connection refused"),
            event(None, "agent started"),
            event(Some("ßü"), &"é".repeat(400)),
        ];
        for e in &events {
            insert(&c, e);
        }
        let want: u64 = events.iter().map(row_bytes).sum();
        assert_eq!(total_bytes(&c).unwrap(), want);
        c.execute("DELETE FROM events WHERE id = 1", []).unwrap();
        assert_eq!(total_bytes(&c).unwrap(), want - row_bytes(&events[0]));
    }

    #[test]
    fn a_long_message_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES); // 2 bytes each
        let cut = stored_message(&long);
        assert_eq!(cut.len(), MAX_MESSAGE_BYTES);
        let odd = format!("x{long}");
        assert_eq!(stored_message(&odd).len(), MAX_MESSAGE_BYTES - 1);
        let e = event(Some("p"), &long);
        assert!(row_bytes(&e) <= MAX_ROW_BYTES);
        assert_eq!(stored_message("short"), "short");
    }

    #[test]
    fn trim_keeps_the_newest_within_rows_and_bytes() {
        let c = conn();
        for i in 0..100 {
            insert(
                &c,
                &event(Some("web"), &format!("event {i:03} {}", "x".repeat(100))),
            );
        }
        let one = row_bytes(&event(
            Some("web"),
            &format!("event 000 {}", "x".repeat(100)),
        ));
        // Bytes bind first: room for 10 rows.
        let deleted = trim(&c, 50, 10 * one + one / 2).unwrap();
        assert_eq!(deleted, 90);
        let (n, min): (i64, i64) = c
            .query_row("SELECT count(*), min(id) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, min), (10, 91));
        assert!(total_bytes(&c).unwrap() <= 10 * one + one / 2);
        // Rows bind first.
        assert_eq!(trim(&c, 4, u64::MAX).unwrap(), 6);
        assert_eq!(total_bytes(&c).unwrap(), 4 * one);
        // Within both: nothing goes.
        assert_eq!(trim(&c, 4, 4 * one).unwrap(), 0);
    }

    #[test]
    fn a_batch_keeps_its_newest_events_that_fit() {
        let events: Vec<Event> = (0..10).map(|i| event(Some("p"), &format!("{i}"))).collect();
        let one = row_bytes(&events[0]);
        assert_eq!(newest_that_fit(&events, 100, u64::MAX), (0, 10 * one));
        assert_eq!(newest_that_fit(&events, 3, u64::MAX), (7, 3 * one));
        assert_eq!(newest_that_fit(&events, 100, 2 * one + 1), (8, 2 * one));
        assert_eq!(newest_that_fit(&events, 100, 0), (10, 0));
    }
}
