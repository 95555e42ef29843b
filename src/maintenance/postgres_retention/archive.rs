//! The retention archive file: JSON lines (one row each, `to_jsonb` of the
//! row) in gzip, one gzip member per batch, so that `MultiGzDecoder` (or
//! `zcat`) reads the rows of every batch as one stream. Each member's gzip
//! comment holds its [`MemberHeader`] (batch number, transaction id, key
//! range), which rollback reads to learn whether the batch committed.
//!
//! A member is written and fsynced before its batch commits; a crash while
//! writing leaves at most one incomplete member at the end, which the
//! reader reports and stops at, since its batch never committed. The
//! restore journal beside the archive records the transaction of each
//! member put back, so that a rollback repeated after a crash does not put
//! a member back twice.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::GzBuilder;
use serde::{Deserialize, Serialize};

use crate::maintenance::backup_files::FILE_MODE;

/// The archive's file name in the run's backup dir.
pub const FILE_NAME: &str = "rows.jsonl.gz";
/// The restore journal's file name, beside the archive.
pub const JOURNAL_NAME: &str = "restored.jsonl";

/// What a member says about its batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberHeader {
    /// 1-based batch number of the run.
    pub batch: u64,
    /// The transaction that deleted the rows (`pg_current_xact_id()`).
    pub xid: String,
    /// Rows in the member.
    pub rows: u64,
    /// The batch's range: `[first, end)` of the key, or of pages for ctid.
    pub range: [i64; 2],
}

/// Appends members to an archive, each durable when `append` returns.
#[derive(Debug)]
pub struct ArchiveWriter {
    file: File,
    path: PathBuf,
    len: u64,
}

impl ArchiveWriter {
    /// Creates `path` (its directory must exist). An archive that already
    /// holds rows is never appended to or replaced: a run writes its own.
    pub fn create(path: &Path) -> io::Result<ArchiveWriter> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(path)?;
        let len = file.metadata()?.len();
        if len > 0 {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} already holds {len} bytes: a run never writes over an archive",
                    path.display()
                ),
            ));
        }
        file.sync_all()?;
        // The new name is durable only once its directory is.
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(ArchiveWriter {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Writes one member and fsyncs it. On failure the file is cut back to
    /// where it was, so that a later member never follows a broken one.
    /// Returns the member's size in bytes.
    pub fn append(&mut self, header: &MemberHeader, rows: &[String]) -> io::Result<u64> {
        let written = self.write_member(header, rows);
        match written {
            Ok(()) => {
                let len = self.file.metadata()?.len();
                let added = len - self.len;
                self.len = len;
                Ok(added)
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                let _ = self.file.sync_data();
                Err(e)
            }
        }
    }

    fn write_member(&mut self, header: &MemberHeader, rows: &[String]) -> io::Result<()> {
        let comment = serde_json::to_vec(header).map_err(io::Error::other)?;
        let out = BufWriter::with_capacity(256 * 1024, &mut self.file);
        // Fast compression: the batch's row locks are held until the
        // member is on disk.
        let mut gz = GzBuilder::new()
            .comment(comment)
            .write(out, Compression::fast());
        for row in rows {
            gz.write_all(row.as_bytes())?;
            gz.write_all(b"\n")?;
        }
        gz.finish()?.flush()?;
        self.file.sync_data()
    }
}

/// One complete member.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub header: MemberHeader,
    pub rows: Vec<String>,
}

/// Where reading stopped short: the offset of the first member that could
/// not be read whole, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Incomplete {
    pub offset: u64,
    pub error: String,
}

/// Reads an archive member by member.
#[derive(Debug)]
pub struct ArchiveReader {
    reader: BufReader<File>,
    offset: u64,
    stopped: Option<Incomplete>,
}

impl ArchiveReader {
    pub fn open(path: &Path) -> io::Result<ArchiveReader> {
        Ok(ArchiveReader {
            reader: BufReader::with_capacity(256 * 1024, File::open(path)?),
            offset: 0,
            stopped: None,
        })
    }

    /// Why reading stopped before the end of the file, if it did.
    pub fn incomplete(&self) -> Option<&Incomplete> {
        self.stopped.as_ref()
    }

    /// The next complete member; `None` at the end of the file or at the
    /// first member that cannot be read whole (see [`Self::incomplete`]).
    pub fn next_member(&mut self) -> Option<Member> {
        if self.stopped.is_some() {
            return None;
        }
        match self.read_member() {
            Ok(m) => m,
            Err(e) => {
                self.stopped = Some(Incomplete {
                    offset: self.offset,
                    error: e.to_string(),
                });
                None
            }
        }
    }

    fn read_member(&mut self) -> io::Result<Option<Member>> {
        if self.reader.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let mut text = String::new();
        let header = {
            let mut gz = flate2::bufread::GzDecoder::new(&mut self.reader);
            gz.read_to_string(&mut text)?;
            gz.header().and_then(|h| h.comment()).map(<[u8]>::to_vec)
        };
        let header: MemberHeader = header
            .ok_or_else(|| io::Error::other("member has no header comment"))
            .and_then(|c| serde_json::from_slice(&c).map_err(io::Error::other))?;
        let rows: Vec<String> = text.lines().map(str::to_string).collect();
        if rows.len() as u64 != header.rows {
            return Err(io::Error::other(format!(
                "batch {} says {} rows but holds {}",
                header.batch,
                header.rows,
                rows.len()
            )));
        }
        self.offset = self.reader.stream_position()?;
        Ok(Some(Member { header, rows }))
    }
}

/// One line of the restore journal: member `batch` was put back by
/// transaction `xid` (if that transaction committed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restored {
    pub batch: u64,
    pub xid: String,
}

/// Appends `entry` to the journal at `path` and fsyncs it.
pub fn journal_append(path: &Path, entry: &Restored) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.sync_data()
}

/// The journal's entries; a missing journal is empty, and a torn last
/// line (a crash while appending) is ignored: its transaction had not
/// committed yet.
pub fn journal_read(path: &Path) -> io::Result<Vec<Restored>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(batch: u64, rows: u64) -> MemberHeader {
        MemberHeader {
            batch,
            xid: format!("{}", 1000 + batch),
            rows,
            range: [batch as i64 * 10, batch as i64 * 10 + 10],
        }
    }

    fn rows(n: usize, tag: &str) -> Vec<String> {
        (0..n)
            .map(|i| format!(r#"{{"id": {i}, "t": "{tag}"}}"#))
            .collect()
    }

    #[test]
    fn members_read_back_one_by_one_and_as_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut w = ArchiveWriter::create(&path).unwrap();
        w.append(&header(1, 3), &rows(3, "a")).unwrap();
        w.append(&header(2, 0), &[]).unwrap();
        w.append(&header(3, 2), &rows(2, "b")).unwrap();
        assert_eq!(w.len(), std::fs::metadata(&path).unwrap().len());

        let mut r = ArchiveReader::open(&path).unwrap();
        let got: Vec<Member> = std::iter::from_fn(|| r.next_member()).collect();
        assert_eq!(r.incomplete(), None);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].header, header(1, 3));
        assert_eq!(got[0].rows, rows(3, "a"));
        assert_eq!(got[2].rows, rows(2, "b"));

        let mut all = String::new();
        flate2::read::MultiGzDecoder::new(File::open(&path).unwrap())
            .read_to_string(&mut all)
            .unwrap();
        assert_eq!(all.lines().count(), 5);
    }

    #[test]
    fn a_torn_last_member_stops_reading_after_the_complete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut w = ArchiveWriter::create(&path).unwrap();
        w.append(&header(1, 100), &rows(100, "a")).unwrap();
        let complete = w.len();
        w.append(&header(2, 100), &rows(100, "b")).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(complete + (w.len() - complete) / 2).unwrap();

        let mut r = ArchiveReader::open(&path).unwrap();
        let first = r.next_member().unwrap();
        assert_eq!(first.rows.len(), 100);
        assert_eq!(r.next_member(), None);
        let stop = r.incomplete().expect("the torn member is reported");
        assert_eq!(stop.offset, complete);
    }

    #[test]
    fn an_archive_with_rows_is_never_reopened_for_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        ArchiveWriter::create(&path)
            .unwrap()
            .append(&header(1, 1), &rows(1, "a"))
            .unwrap();
        let e = ArchiveWriter::create(&path).unwrap_err();
        assert!(e.to_string().contains("never writes over"), "{e}");
    }

    #[test]
    fn the_journal_ignores_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_NAME);
        assert_eq!(journal_read(&path).unwrap(), vec![]);
        let entry = Restored {
            batch: 1,
            xid: "77".into(),
        };
        journal_append(&path, &entry).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"batch":2,"xi"#).unwrap();
        assert_eq!(journal_read(&path).unwrap(), vec![entry]);
    }
}
