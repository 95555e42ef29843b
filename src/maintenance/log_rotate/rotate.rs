//! Rotating one log file, under its directory's descriptor: generations
//! shifted (`NAME.N[.gz|.zst]` → `N+1`; those past `keep` go to the
//! quarantine), then the live file rotated by `reopen` (rename, signal or
//! command, wait until no process holds the renamed file) or
//! `copytruncate` (copy the block-aligned prefix, collapse exactly that
//! range with `fallocate(FALLOC_FL_COLLAPSE_RANGE)`, check the live file
//! now starts with what followed it; where the filesystem refuses
//! collapse, copy then truncate, with the bytes written in between
//! counted as lost), then compression, then `max_total`.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FallocateFlags, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::compress::{self, Compress, Compressed};
use super::{LogRotateConfig, Method};
use crate::maintenance::TaskError;
use crate::maintenance::files::quarantine::{Entry, EntryKind, Quarantine};
use crate::maintenance::files::{FsError, holders_seen, open_dir, show};

/// A rotated generation found on disk.
#[derive(Debug, Clone)]
pub struct Generation {
    pub n: u32,
    pub name: OsString,
    pub compress: Compress,
    pub bytes: u64,
}

/// The generations of `base` in `dir`: `base.N`, `base.N.gz`, `base.N.zst`.
pub fn generations(dir: &OwnedFd, base: &[u8]) -> Result<BTreeMap<u32, Generation>, Errno> {
    let mut out = BTreeMap::new();
    let mut entries = rustix::fs::Dir::read_from(dir)?;
    while let Some(e) = entries.read() {
        let e = e?;
        let name = e.file_name().to_bytes();
        let Some(rest) = name.strip_prefix(base).and_then(|r| r.strip_prefix(b".")) else {
            continue;
        };
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (num, suffix) = rest.split_at(digits);
        let Some(n) = std::str::from_utf8(num)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if n == 0 || !matches!(suffix, b"" | b".gz" | b".zst") {
            continue;
        }
        let Ok(st) = rustix::fs::statat(dir, e.file_name(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            continue;
        }
        out.insert(
            n,
            Generation {
                n,
                name: OsStr::from_bytes(name).to_os_string(),
                compress: Compress::of_suffix(suffix),
                bytes: st.st_size as u64,
            },
        );
    }
    Ok(out)
}

/// Whether a file name is itself a generation or a temporary file (never
/// rotated as a log of its own).
pub fn is_generation_name(name: &[u8]) -> bool {
    let name = name.strip_suffix(b".tmp").unwrap_or(name);
    let name = name
        .strip_suffix(b".gz")
        .or_else(|| name.strip_suffix(b".zst"))
        .unwrap_or(name);
    match name.iter().rposition(|b| *b == b'.') {
        Some(dot) => {
            let tail = &name[dot + 1..];
            !tail.is_empty() && tail.iter().all(u8::is_ascii_digit)
        }
        None => false,
    }
}

fn gen_name(base: &[u8], n: u32, c: Compress) -> OsString {
    let mut v = base.to_vec();
    v.extend_from_slice(format!(".{n}{}", c.suffix()).as_bytes());
    OsString::from(OsStr::from_bytes(&v))
}

/// What rotating one file did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rotated {
    pub path: String,
    pub method: String,
    /// Size of the live file when its rotation began.
    pub bytes_before: u64,
    /// Bytes in the new generation 1 (before compression).
    pub bytes_rotated: u64,
    /// Size of the live file after.
    pub live_after: u64,
    /// copytruncate: the block-aligned prefix collapsed, and whether the
    /// live file started with what followed it.
    pub collapsed: Option<u64>,
    pub verified: bool,
    /// copytruncate where collapse was refused: copy then truncate.
    pub fallback: Option<String>,
    /// Bytes written between the last copy and the truncate: lost.
    pub lost_bytes: u64,
    pub compressed: Vec<Compressed>,
    /// Generations moved to the quarantine (past keep or max_total).
    pub quarantined: Vec<String>,
    pub quarantined_bytes: u64,
    /// Why the file was left (smaller than one block for collapse).
    pub note: Option<String>,
    /// reopen: processes whose open files could not be read (another
    /// user's, without CAP_SYS_PTRACE); the renamed file was then taken
    /// as let go once its size held still for a second.
    #[serde(default)]
    pub note_unseen: Option<usize>,
}

/// Rotates the file `path`.
pub fn rotate(path: &Path, c: &LogRotateConfig, q: &mut Quarantine) -> Result<Rotated, TaskError> {
    let dir_path = path.parent().unwrap_or(Path::new("/"));
    let base = path.file_name().unwrap_or_default().as_bytes().to_vec();
    let base_c = CString::new(base.clone()).map_err(|_| TaskError::failed("a path with NUL"))?;
    let dir = open_dir(dir_path)?;
    let st0 = rustix::fs::statat(&dir, base_c.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| FsError::at(path, "stat", e))?;
    if FileType::from_raw_mode(st0.st_mode) != FileType::RegularFile {
        return Err(TaskError::failed(format!(
            "{}: not a regular file",
            show(path)
        )));
    }
    let mut out = Rotated {
        path: show(path),
        method: c.method.name().into(),
        bytes_before: st0.st_size as u64,
        ..Rotated::default()
    };
    if c.method == Method::Copytruncate {
        // Collapse works in whole blocks and must end before the end of
        // the file: a file of at most one block stays.
        let bsize = block_size(&dir, path)?;
        if (st0.st_size as u64) <= bsize {
            out.note = Some(format!("not larger than one block ({bsize} B): left"));
            out.live_after = st0.st_size as u64;
            return Ok(out);
        }
    }
    shift(&dir, dir_path, &base, c.keep, q, &mut out)?;
    let one = gen_name(&base, 1, Compress::None);
    match c.method {
        Method::Reopen => reopen(&dir, dir_path, &base_c, &one, c, &mut out)?,
        Method::Copytruncate => copytruncate(&dir, dir_path, &base_c, &one, &st0, &mut out)?,
    }
    if c.compress != Compress::None {
        let which = if c.delay_compress { 2 } else { 1 };
        let gens =
            generations(&dir, &base).map_err(|e| FsError::at(dir_path, "read directory", e))?;
        if let Some(g) = gens.get(&which).filter(|g| g.compress == Compress::None) {
            out.compressed
                .push(compress::compress(&dir, dir_path, &g.name, c.compress)?);
        }
    }
    if let Some(max) = c.max_total {
        let gens =
            generations(&dir, &base).map_err(|e| FsError::at(dir_path, "read directory", e))?;
        let mut total: u64 = gens.values().map(|g| g.bytes).sum();
        // Oldest first; generation 1 (the newest) always stays.
        for g in gens.values().rev() {
            if total <= max || g.n == 1 {
                break;
            }
            to_quarantine(&dir, dir_path, &g.name, q, &mut out)?;
            total -= g.bytes;
        }
    }
    Ok(out)
}

fn block_size(dir: &OwnedFd, path: &Path) -> Result<u64, FsError> {
    let s = rustix::fs::fstatvfs(dir).map_err(|e| FsError::at(path, "statvfs", e))?;
    Ok(s.f_bsize.max(512))
}

/// Shifts every generation up by one, highest first; those that would pass
/// `keep` go to the quarantine.
fn shift(
    dir: &OwnedFd,
    dir_path: &Path,
    base: &[u8],
    keep: u32,
    q: &mut Quarantine,
    out: &mut Rotated,
) -> Result<(), TaskError> {
    let gens = generations(dir, base).map_err(|e| FsError::at(dir_path, "read directory", e))?;
    for g in gens.values().rev() {
        if g.n >= keep {
            to_quarantine(dir, dir_path, &g.name, q, out)?;
            continue;
        }
        let to = gen_name(base, g.n + 1, g.compress);
        rustix::fs::renameat_with(
            dir,
            g.name.as_os_str(),
            dir,
            to.as_os_str(),
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| FsError::at(&dir_path.join(&to), "rename", e))?;
    }
    Ok(())
}

fn to_quarantine(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &OsStr,
    q: &mut Quarantine,
    out: &mut Rotated,
) -> Result<(), TaskError> {
    let path = dir_path.join(name);
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FsError::at(&path, "open", e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| FsError::at(&path, "stat", e))?;
    let mut e = Entry::of(
        EntryKind::File,
        dir_path.as_os_str().as_bytes(),
        name.as_bytes(),
        &st,
    );
    q.note(&mut e)?;
    q.sync()?;
    q.take(
        dir.as_fd(),
        &CString::new(name.as_bytes()).expect("no NUL"),
        fd.as_fd(),
        &e,
    )?;
    out.quarantined.push(show(&path));
    out.quarantined_bytes += st.st_size as u64;
    Ok(())
}

/// `reopen`: rename, tell the writer, wait until it let go.
fn reopen(
    dir: &OwnedFd,
    dir_path: &Path,
    base: &CString,
    one: &OsStr,
    c: &LogRotateConfig,
    out: &mut Rotated,
) -> Result<(), TaskError> {
    let one_path = dir_path.join(one);
    rustix::fs::renameat_with(
        dir,
        base.as_c_str(),
        dir,
        one,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(|e| FsError::at(&one_path, "rename", e))?;
    let st = rustix::fs::statat(dir, one, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| FsError::at(&one_path, "stat", e))?;
    super::signal::tell_writer(c)?;
    let start = Instant::now();
    // Size and when it last changed: the fallback when some processes'
    // descriptors cannot be read.
    let mut last = (st.st_size, Instant::now());
    loop {
        let (by, unseen) = holders_seen(st.st_dev, st.st_ino);
        let size = rustix::fs::statat(dir, one, AtFlags::SYMLINK_NOFOLLOW)
            .map(|s| s.st_size)
            .unwrap_or(last.0);
        if size != last.0 {
            last = (size, Instant::now());
        }
        // Unseen processes might be the writer: only a size that held
        // still for a second (after the writer was told) lets go then.
        if by.is_empty() && (unseen == 0 || last.1.elapsed() >= Duration::from_secs(1)) {
            if unseen > 0 {
                out.note_unseen = Some(unseen);
            }
            break;
        }
        if start.elapsed() > c.reopen_timeout {
            return Err(TaskError::failed(format!(
                "{}: still held open by pid {} {:?} after the writer was told to reopen; rotated but not compressed",
                show(&one_path),
                by.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                c.reopen_timeout
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    out.bytes_rotated = rustix::fs::statat(dir, one, AtFlags::SYMLINK_NOFOLLOW)
        .map(|s| s.st_size as u64)
        .map_err(|e| FsError::at(&one_path, "stat", e))?;
    out.live_after = rustix::fs::statat(dir, base.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
        .map(|s| s.st_size as u64)
        .unwrap_or(0);
    out.verified = out.bytes_rotated >= out.bytes_before;
    Ok(())
}

fn read_at(fd: &OwnedFd, at: u64, len: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = rustix::io::pread(fd, &mut buf[got..], at + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Copies bytes `[from, to)` of `src` to the end of `dst`.
fn copy_range(src: &OwnedFd, dst: &OwnedFd, from: u64, to: u64) -> Result<(), Errno> {
    let mut off = from;
    let mut buf = vec![0u8; 1 << 20];
    while off < to {
        let want = ((to - off) as usize).min(buf.len());
        let n = rustix::io::pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let mut w = 0;
        while w < n {
            w += rustix::io::write(dst, &buf[w..n])?;
        }
        off += n as u64;
    }
    Ok(())
}

/// `copytruncate`: copy the block-aligned prefix, collapse it, verify;
/// or, where collapse is refused, copy all then truncate.
fn copytruncate(
    dir: &OwnedFd,
    dir_path: &Path,
    base: &CString,
    one: &OsStr,
    st0: &rustix::fs::Stat,
    out: &mut Rotated,
) -> Result<(), TaskError> {
    let live_path = dir_path.join(OsStr::from_bytes(base.as_bytes()));
    let one_path = dir_path.join(one);
    let live = rustix::fs::openat(
        dir,
        base.as_c_str(),
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FsError::at(&live_path, "open", e))?;
    let copy = rustix::fs::openat(
        dir,
        one,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(st0.st_mode & 0o7777),
    )
    .map_err(|e| FsError::at(&one_path, "create", e))?;
    let _ = rustix::fs::fchown(
        &copy,
        Some(Uid::from_raw(st0.st_uid)),
        Some(Gid::from_raw(st0.st_gid)),
    );
    let bsize = block_size(dir, &live_path)?;
    let size = rustix::fs::fstat(&live)
        .map_err(|e| FsError::at(&live_path, "stat", e))?
        .st_size as u64;
    out.bytes_before = size;
    // Whole blocks, ending before the end of the file (collapse refuses a
    // range that reaches it).
    let n = size.saturating_sub(1) / bsize * bsize;
    let one_ref = &one_path;
    let cerr = |op| move |e| FsError::at(one_ref, op, e);
    copy_range(&live, &copy, 0, n).map_err(cerr("copy"))?;
    rustix::fs::fsync(&copy).map_err(cerr("fsync"))?;
    // What follows byte n: the live file must start with it after collapse.
    let follows = read_at(&live, n, (size - n).min(4096) as usize)
        .map_err(|e| FsError::at(&live_path, "read", e))?;
    match rustix::fs::fallocate(&live, FallocateFlags::COLLAPSE_RANGE, 0, n) {
        Ok(()) => {
            let head =
                read_at(&live, 0, follows.len()).map_err(|e| FsError::at(&live_path, "read", e))?;
            out.collapsed = Some(n);
            out.bytes_rotated = n;
            out.verified = head == follows;
            if !out.verified {
                return Err(TaskError::failed(format!(
                    "{}: after collapsing {n} bytes the file does not start with what followed them; its first {n} bytes are in {}",
                    show(&live_path),
                    show(&one_path)
                )));
            }
        }
        Err(e @ (Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS)) => {
            // Copy the rest until the size holds still, then truncate: what
            // the writer appends in between is lost, and counted.
            let mut copied = n;
            for _ in 0..100 {
                let now = rustix::fs::fstat(&live)
                    .map_err(|e| FsError::at(&live_path, "stat", e))?
                    .st_size as u64;
                if now <= copied {
                    break;
                }
                copy_range(&live, &copy, copied, now).map_err(cerr("copy"))?;
                copied = now;
            }
            rustix::fs::fsync(&copy).map_err(cerr("fsync"))?;
            let before_truncate = rustix::fs::fstat(&live)
                .map_err(|e| FsError::at(&live_path, "stat", e))?
                .st_size as u64;
            rustix::fs::ftruncate(&live, 0).map_err(|e| FsError::at(&live_path, "truncate", e))?;
            out.fallback = Some(format!(
                "collapse refused ({}): copied, then truncated",
                crate::maintenance::files::errno_name(e)
            ));
            out.bytes_rotated = copied;
            out.lost_bytes = before_truncate.saturating_sub(copied);
            out.verified = true;
        }
        Err(e) => return Err(FsError::at(&live_path, "fallocate collapse", e).into()),
    }
    out.live_after = rustix::fs::fstat(&live)
        .map(|s| s.st_size as u64)
        .unwrap_or(0);
    Ok(())
}

/// The parent directories of `paths`, once each.
pub fn dirs_of(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_are_not_logs_of_their_own() {
        for g in [
            "app.log.1",
            "app.log.12.gz",
            "app.log.3.zst",
            "app.log.1.gz.tmp",
        ] {
            assert!(is_generation_name(g.as_bytes()), "{g}");
        }
        for l in ["app.log", "app.1.log", "access.log-2024", "x.gz"] {
            assert!(!is_generation_name(l.as_bytes()), "{l}");
        }
    }
}
