//! Following a log file across rotations without counting a line twice or
//! missing one:
//! - rename (logrotate `create`): the old file is read to its end, and again
//!   on later ticks until it stays quiet (a writer may still append to it
//!   before it reopens), while the new file is read from its start;
//! - truncation (`copytruncate`): the lines written between the last read and
//!   the copy are read from the rotated copy (`path` + `rotated_suffix`),
//!   recognised by the fingerprint of its first bytes;
//! - restart: the position (device, inode, offset, fingerprint) is kept in a
//!   state file; a file rotated while the agent was down is finished from
//!   its rotated name first.
//!
//! Only whole lines are consumed; a partial last line waits for its newline.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes hashed to recognise a file after `copytruncate`.
const FINGERPRINT_BYTES: usize = 256;
/// Most bytes read from one file per tick; a backlog is worked off over ticks.
const MAX_READ_PER_TICK: u64 = 64 * 1024 * 1024;

/// Where reading a file stands, as persisted across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    /// Offset just after the last whole line consumed.
    pub offset: u64,
    /// Hash and length of the file's first bytes, once there were any.
    pub fingerprint: Option<(u64, u32)>,
}

struct OpenFile {
    file: File,
    pos: Position,
    /// A line read without its newline yet.
    carry: Vec<u8>,
}

impl OpenFile {
    fn at(path: &Path, offset: u64) -> io::Result<OpenFile> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(OpenFile {
            file,
            pos: Position {
                dev: meta.dev(),
                ino: meta.ino(),
                offset,
                fingerprint: None,
            },
            carry: Vec::new(),
        })
    }

    /// Reads whole lines from the current offset; returns bytes consumed.
    fn read_lines(&mut self, line: &mut dyn FnMut(&[u8])) -> io::Result<u64> {
        if self.pos.fingerprint.is_none() {
            self.pos.fingerprint = fingerprint_of(&self.file)?;
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut consumed = 0u64;
        let mut read_total = 0u64;
        while read_total < MAX_READ_PER_TICK {
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            read_total += n as u64;
            let mut chunk = &buf[..n];
            while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
                if self.carry.is_empty() {
                    line(&chunk[..nl]);
                } else {
                    self.carry.extend_from_slice(&chunk[..nl]);
                    line(&self.carry);
                    consumed += self.carry.len() as u64 - nl as u64;
                    self.carry.clear();
                }
                consumed += nl as u64 + 1;
                chunk = &chunk[nl + 1..];
            }
            self.carry.extend_from_slice(chunk);
        }
        self.pos.offset += consumed;
        // The file position runs ahead of `offset` by the carried bytes.
        Ok(consumed)
    }
}

/// Offset just after the last newline of a file of `len` bytes (looking at
/// most 64 KiB back), or `len` when there is none that close to the end.
fn after_last_line(path: &Path, len: u64) -> io::Result<u64> {
    let file = File::open(path)?;
    let from = len.saturating_sub(64 * 1024);
    let mut tail = vec![0u8; (len - from) as usize];
    let n = read_at(&file, &mut tail, from)?;
    Ok(tail[..n]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(len, |p| from + p as u64 + 1))
}

fn fingerprint_of(file: &File) -> io::Result<Option<(u64, u32)>> {
    let mut head = vec![0u8; FINGERPRINT_BYTES];
    let n = read_at(file, &mut head, 0)?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some((fnv(&head[..n]), n as u32)))
}

fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], at + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Does `file` start with the bytes that `fp` was taken from?
fn matches(file: &File, fp: Option<(u64, u32)>) -> io::Result<bool> {
    let Some((hash, len)) = fp else {
        return Ok(false);
    };
    let mut head = vec![0u8; len as usize];
    Ok(read_at(file, &mut head, 0)? == len as usize && fnv(&head) == hash)
}

/// Where to begin a file seen for the first time ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Only lines written from now on (old lines are not today's traffic).
    #[default]
    End,
    Beginning,
}

/// One followed path.
pub struct Tail {
    path: PathBuf,
    rotated: PathBuf,
    start_at: StartAt,
    current: Option<OpenFile>,
    /// The previous file after a rename, read until it stays quiet.
    draining: Option<OpenFile>,
    /// Position from the state file, used when the file is first opened.
    saved: Option<Position>,
}

impl Tail {
    pub fn new(
        path: PathBuf,
        rotated_suffix: &str,
        start_at: StartAt,
        saved: Option<Position>,
    ) -> Tail {
        let rotated = PathBuf::from(format!("{}{rotated_suffix}", path.display()));
        Tail {
            path,
            rotated,
            start_at,
            current: None,
            draining: None,
            saved,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The position to persist: the current file's, or the saved one while
    /// the file has not been opened.
    pub fn position(&self) -> Option<Position> {
        self.current.as_ref().map(|o| o.pos).or(self.saved)
    }

    /// Feeds every new whole line to `line`. A missing file is not an error
    /// (between a rename and the writer creating the new file); other I/O
    /// errors are.
    pub fn poll(&mut self, line: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        if let Some(old) = self.draining.as_mut()
            && old.read_lines(line)? == 0
        {
            self.draining = None;
        }
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.current.is_some() => {
                // Renamed away, the new file not created yet.
                if let Some(cur) = self.current.as_mut() {
                    cur.read_lines(line)?;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match self.current.as_mut() {
            None => self.first_open(&meta, line)?,
            Some(cur) if cur.pos.dev == meta.dev() && cur.pos.ino == meta.ino() => {
                // Shorter than what was read, or a different head: truncated
                // (and perhaps written past the old offset already).
                let rewritten =
                    cur.pos.fingerprint.is_some() && !matches(&cur.file, cur.pos.fingerprint)?;
                if meta.len() < cur.pos.offset || rewritten {
                    self.truncated(line)?;
                }
            }
            Some(_) => {
                // Renamed away: finish the old file, start the new one.
                let mut old = self.current.take().expect("matched Some");
                old.read_lines(line)?;
                self.draining = Some(old);
                self.current = Some(OpenFile::at(&self.path, 0)?);
            }
        }
        if let Some(cur) = self.current.as_mut() {
            cur.read_lines(line)?;
        }
        Ok(())
    }

    fn first_open(
        &mut self,
        meta: &std::fs::Metadata,
        line: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        match self.saved.take() {
            Some(s) if s.dev == meta.dev() && s.ino == meta.ino() => {
                let mut cur = OpenFile::at(&self.path, s.offset.min(meta.len()))?;
                cur.pos.fingerprint = s.fingerprint;
                if meta.len() < s.offset {
                    // Truncated while the agent was down.
                    self.current = Some(cur);
                    return self.truncated(line);
                }
                self.current = Some(cur);
            }
            Some(s) => {
                // Rotated while the agent was down: finish the old file from
                // its rotated name when it is still there.
                if let Ok(rmeta) = std::fs::metadata(&self.rotated)
                    && rmeta.dev() == s.dev
                    && rmeta.ino() == s.ino
                    && rmeta.len() >= s.offset
                {
                    let mut old = OpenFile::at(&self.rotated, s.offset)?;
                    old.pos.fingerprint = s.fingerprint;
                    old.read_lines(line)?;
                }
                self.current = Some(OpenFile::at(&self.path, 0)?);
            }
            None => {
                let at = match self.start_at {
                    StartAt::End => after_last_line(&self.path, meta.len())?,
                    StartAt::Beginning => 0,
                };
                self.current = Some(OpenFile::at(&self.path, at)?);
            }
        }
        Ok(())
    }

    /// The file shrank under us (copytruncate): read what was written since
    /// the last read from the rotated copy, then start the file over.
    fn truncated(&mut self, line: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let cur = self.current.as_ref().expect("called with a current file");
        let (offset, fp) = (cur.pos.offset, cur.pos.fingerprint);
        if let Ok(copy) = File::open(&self.rotated) {
            let len = copy.metadata()?.len();
            if len >= offset && matches(&copy, fp)? {
                let mut old = OpenFile::at(&self.rotated, offset)?;
                old.read_lines(line)?;
            }
        }
        self.current = Some(OpenFile::at(&self.path, 0)?);
        Ok(())
    }
}
