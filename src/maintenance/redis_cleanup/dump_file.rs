//! The backup file of a `redis_cleanup` run (`keys.bin` in the run's
//! backup dir): every key a batch is about to remove, with its `DUMP` and
//! when it would have expired, written and fsynced before the batch's
//! removal script runs; then one mark per batch saying which of its keys
//! the script removed (the others changed or vanished on the way).
//!
//! Layout: a magic line, then records, each a tag byte:
//! - `K`: u32 key length, key, i64 expiry (unix ms, −1: none), u64 dump
//!   length, dump;
//! - `B`: u32 count n, then n bytes (1: removed, 0: left) for the `K`
//!   records since the previous `B`.
//!
//! A batch without its `B` (the process died between the removal and the
//! mark) counts as removed: putting back a key that was perhaps not
//! removed only happens where the key is missing, so it loses nothing.
//! A torn last record was never followed by a removal and is ignored.
//! Reading streams the file: one dump is in memory at a time.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// The file's name in the run's backup dir.
pub const FILE_NAME: &str = "keys.bin";
const MAGIC: &[u8] = b"upkeep redis_cleanup dump v1\n";

/// Appends records; `sync` makes what was written durable.
pub struct DumpWriter {
    out: BufWriter<File>,
    /// Records of the batch not yet marked.
    pending: u32,
    pub bytes: u64,
}

impl DumpWriter {
    /// Creates the file (a file of an earlier attempt of the same run is
    /// appended to: its batches stay restorable).
    pub fn open(path: &Path) -> io::Result<DumpWriter> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::maintenance::backup_files::FILE_MODE)
            .open(path)?;
        let mut bytes = f.metadata()?.len();
        if bytes == 0 {
            f.write_all(MAGIC)?;
            f.sync_all()?;
            bytes = MAGIC.len() as u64;
        }
        Ok(DumpWriter {
            out: BufWriter::with_capacity(1 << 16, f),
            pending: 0,
            bytes,
        })
    }

    pub fn key(&mut self, key: &[u8], expire_at_ms: i64, dump: &[u8]) -> io::Result<()> {
        self.out.write_all(b"K")?;
        self.out.write_all(&(key.len() as u32).to_le_bytes())?;
        self.out.write_all(key)?;
        self.out.write_all(&expire_at_ms.to_le_bytes())?;
        self.out.write_all(&(dump.len() as u64).to_le_bytes())?;
        self.out.write_all(dump)?;
        self.pending += 1;
        self.bytes += 1 + 4 + key.len() as u64 + 8 + 8 + dump.len() as u64;
        Ok(())
    }

    /// Flushes and fsyncs: the batch's keys may now be removed.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    /// Marks which of the batch's records were removed (in order).
    pub fn mark(&mut self, removed: &[bool]) -> io::Result<()> {
        debug_assert_eq!(removed.len() as u32, self.pending);
        self.out.write_all(b"B")?;
        self.out.write_all(&(removed.len() as u32).to_le_bytes())?;
        let flags: Vec<u8> = removed.iter().map(|r| u8::from(*r)).collect();
        self.out.write_all(&flags)?;
        self.pending = 0;
        self.bytes += 5 + removed.len() as u64;
        self.out.flush()
    }
}

/// One saved key.
#[derive(Debug)]
pub struct Saved {
    pub key: Vec<u8>,
    pub expire_at_ms: i64,
    pub dump: Vec<u8>,
}

/// What the file holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub records: u64,
    /// Records marked removed or in a batch without a mark.
    pub removed: u64,
}

fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn open(path: &Path) -> io::Result<BufReader<File>> {
    let mut r = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut magic = vec![0u8; MAGIC.len()];
    if !read_exact_or_eof(&mut r, &mut magic)? || magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a redis_cleanup backup file", path.display()),
        ));
    }
    Ok(r)
}

/// Reads one record header; `None` at the end (or a torn record).
enum Rec {
    Key {
        key: Vec<u8>,
        expire_at_ms: i64,
        dump_len: u64,
    },
    Mark(Vec<u8>),
}

fn next(r: &mut BufReader<File>) -> io::Result<Option<Rec>> {
    let mut tag = [0u8; 1];
    if !read_exact_or_eof(r, &mut tag)? {
        return Ok(None);
    }
    let mut n4 = [0u8; 4];
    if !read_exact_or_eof(r, &mut n4)? {
        return Ok(None);
    }
    let n = u32::from_le_bytes(n4) as usize;
    match tag[0] {
        b'K' => {
            let mut key = vec![0u8; n];
            let mut e8 = [0u8; 8];
            let mut l8 = [0u8; 8];
            if !read_exact_or_eof(r, &mut key)?
                || !read_exact_or_eof(r, &mut e8)?
                || !read_exact_or_eof(r, &mut l8)?
            {
                return Ok(None);
            }
            Ok(Some(Rec::Key {
                key,
                expire_at_ms: i64::from_le_bytes(e8),
                dump_len: u64::from_le_bytes(l8),
            }))
        }
        b'B' => {
            let mut flags = vec![0u8; n];
            if !read_exact_or_eof(r, &mut flags)? {
                return Ok(None);
            }
            Ok(Some(Rec::Mark(flags)))
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown record tag {other:#x}"),
        )),
    }
}

/// First pass: for every `K` record in order, whether it counts as removed.
/// Dumps are skipped, not read.
pub fn removed_flags(path: &Path) -> io::Result<Vec<bool>> {
    let mut r = open(path)?;
    let mut flags: Vec<bool> = Vec::new();
    let mut batch_start = 0usize;
    let len = r.get_ref().metadata()?.len();
    while let Some(rec) = next(&mut r)? {
        match rec {
            Rec::Key { dump_len, .. } => {
                let pos = r.stream_position()?;
                if pos + dump_len > len {
                    break; // torn: never removed
                }
                r.seek_relative(dump_len as i64)?;
                flags.push(true);
            }
            Rec::Mark(m) => {
                for (f, m) in flags[batch_start..].iter_mut().zip(&m) {
                    *f = *m == 1;
                }
                batch_start = flags.len();
            }
        }
    }
    Ok(flags)
}

pub fn summary(path: &Path) -> io::Result<Summary> {
    let flags = removed_flags(path)?;
    Ok(Summary {
        records: flags.len() as u64,
        removed: flags.iter().filter(|f| **f).count() as u64,
    })
}

/// Second pass: calls `f` with each removed key's record, one at a time.
pub fn for_each_removed(
    path: &Path,
    flags: &[bool],
    mut f: impl FnMut(Saved) -> io::Result<()>,
) -> io::Result<()> {
    let mut r = open(path)?;
    let mut i = 0usize;
    while let Some(rec) = next(&mut r)? {
        if let Rec::Key {
            key,
            expire_at_ms,
            dump_len,
        } = rec
        {
            if i >= flags.len() {
                break;
            }
            if flags[i] {
                let mut dump = vec![0u8; dump_len as usize];
                r.read_exact(&mut dump)?;
                f(Saved {
                    key,
                    expire_at_ms,
                    dump,
                })?;
            } else {
                r.seek_relative(dump_len as i64)?;
            }
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_say_which_keys_were_removed_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut w = DumpWriter::open(&path).unwrap();
        w.key(b"a", -1, b"dump-a").unwrap();
        w.key(b"b", 42, b"dump-b").unwrap();
        w.sync().unwrap();
        w.mark(&[true, false]).unwrap();
        // A batch whose mark never came: counts as removed.
        w.key(b"c", -1, b"dump-c").unwrap();
        w.sync().unwrap();
        drop(w);
        // A torn record after it.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"K\x05\x00\x00\x00ab").unwrap();
        drop(f);
        let flags = removed_flags(&path).unwrap();
        assert_eq!(flags, vec![true, false, true]);
        let mut seen = Vec::new();
        for_each_removed(&path, &flags, |s| {
            seen.push((s.key, s.expire_at_ms, s.dump));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (b"a".to_vec(), -1, b"dump-a".to_vec()),
                (b"c".to_vec(), -1, b"dump-c".to_vec())
            ]
        );
        assert_eq!(
            summary(&path).unwrap(),
            Summary {
                records: 3,
                removed: 2
            }
        );
        std::fs::write(&path, b"something else").unwrap();
        assert!(removed_flags(&path).is_err());
    }
}
