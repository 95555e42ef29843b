//! The quarantine of a run: files a file kind removes are moved (renamed on
//! the same filesystem, else copied, fsynced, then unlinked) into
//! `DATA_DIR/quarantine/NAME/RUN_ID`, under their path with the leading
//! `/` taken off, and each is described in the run's manifest
//! (`quarantine.jsonl` in the run's backup dir) with its mode, owner and
//! times *before* it moves, the manifest fsynced first: a crash leaves at
//! worst a manifest line whose file never moved, never a moved file that
//! no line names. `restore` puts an entry back; the quarantine is pruned
//! with the run's backup (`maintenance::prune`).

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::{FsError, dir_flags, escape, open_dir, unescape};

/// The manifest's file name in the run's backup dir.
pub const MANIFEST: &str = "quarantine.jsonl";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    /// A directory removed once empty: only its attributes are kept.
    Dir,
}

/// One removed file or directory, as the manifest keeps it. Paths are
/// escaped ([`escape`]), so any byte survives JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    /// Where it was: its directory and its name.
    pub dir: String,
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub atime: (i64, i64),
    /// Where the file is kept, relative to the quarantine dir.
    #[serde(default)]
    pub kept: Option<String>,
}

impl Entry {
    /// Describes `name` in the directory `dir` from its stat.
    pub fn of(kind: EntryKind, dir: &[u8], name: &[u8], st: &rustix::fs::Stat) -> Entry {
        Entry {
            kind,
            dir: escape(dir),
            name: escape(name),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            atime: (st.st_atime, st.st_atime_nsec as i64),
            kept: None,
        }
    }

    /// The full path, escaped.
    pub fn shown(&self) -> String {
        format!("{}/{}", self.dir.trim_end_matches('/'), self.name)
    }

    fn dir_path(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(&unescape(&self.dir).unwrap_or_default()))
    }

    fn name_c(&self) -> Result<CString, FsError> {
        unescape(&self.name)
            .and_then(|n| CString::new(n).ok())
            .ok_or_else(|| FsError::new(self.shown(), "read manifest name", Errno::INVAL))
    }
}

/// A run's quarantine, open for moving files in.
pub struct Quarantine {
    dir: PathBuf,
    dev: u64,
    manifest: File,
    /// Entries written since the last sync.
    pending: usize,
    pub moved: u64,
    pub bytes: u64,
    /// Files that had to be copied (another filesystem).
    pub copied: u64,
}

impl Quarantine {
    /// Creates `dir` (0750) and opens the manifest in `backup_dir` for appending.
    pub fn open(dir: &Path, backup_dir: &Path) -> Result<Quarantine, FsError> {
        crate::maintenance::backup_files::create_dir(dir)
            .map_err(|e| FsError::io(dir, "create quarantine", &e))?;
        let st = rustix::fs::stat(dir).map_err(|e| FsError::at(dir, "stat", e))?;
        let path = backup_dir.join(MANIFEST);
        let manifest = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| FsError::io(&path, "open manifest", &e))?;
        Ok(Quarantine {
            dir: dir.to_path_buf(),
            dev: st.st_dev,
            manifest,
            pending: 0,
            moved: 0,
            bytes: 0,
            copied: 0,
        })
    }

    /// The device the quarantine is on (a rename into it works from there).
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// Writes an entry's line (kept path filled in for files); call
    /// [`Quarantine::sync`] before moving what it names.
    pub fn note(&mut self, entry: &mut Entry) -> Result<(), FsError> {
        if entry.kind == EntryKind::File {
            entry.kept = Some(kept_name(entry));
        }
        let mut line = serde_json::to_vec(entry).expect("serializable");
        line.push(b'\n');
        self.manifest
            .write_all(&line)
            .map_err(|e| FsError::io(&self.dir, "write manifest", &e))?;
        self.pending += 1;
        Ok(())
    }

    /// Makes the noted lines durable.
    pub fn sync(&mut self) -> Result<(), FsError> {
        if self.pending > 0 {
            self.manifest
                .sync_data()
                .map_err(|e| FsError::io(&self.dir, "fsync manifest", &e))?;
            self.pending = 0;
        }
        Ok(())
    }

    /// Moves file `name` of `parent` (already noted as `entry`, whose
    /// descriptor `file` is open) into the quarantine.
    pub fn take(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        file: BorrowedFd<'_>,
        entry: &Entry,
    ) -> Result<(), FsError> {
        let kept = self.dir.join(OsStr::from_bytes(
            &unescape(entry.kept.as_deref().unwrap_or_default()).unwrap_or_default(),
        ));
        let kept_dir = kept.parent().expect("under the quarantine dir");
        crate::maintenance::backup_files::create_dir(kept_dir)
            .map_err(|e| FsError::io(kept_dir, "create quarantine dir", &e))?;
        let qdir = open_dir(kept_dir)?;
        let leaf = kept.file_name().expect("a file name");
        match rustix::fs::renameat(parent, name, &qdir, leaf) {
            Ok(()) => {}
            Err(Errno::XDEV) => {
                copy_into(file, &qdir, leaf, entry).map_err(|e| FsError { ..e })?;
                rustix::fs::unlinkat(parent, name, AtFlags::empty())
                    .map_err(|e| FsError::new(entry.shown(), "unlink", e))?;
                self.copied += 1;
            }
            Err(e) => return Err(FsError::new(entry.shown(), "move to quarantine", e)),
        }
        self.moved += 1;
        self.bytes += entry.size;
        Ok(())
    }
}

/// Where an entry's file is kept: its path without the leading `/`.
fn kept_name(e: &Entry) -> String {
    format!(
        "{}/{}",
        e.dir.trim_start_matches('/').trim_end_matches('/'),
        e.name
    )
    .trim_start_matches('/')
    .to_string()
}

/// Copies the open file `src` to `leaf` in `dir`, fsynced, with the
/// entry's mode, owner and times.
fn copy_into(src: BorrowedFd<'_>, dir: &OwnedFd, leaf: &OsStr, e: &Entry) -> Result<(), FsError> {
    let shown = e.shown();
    let dst = rustix::fs::openat(
        dir,
        leaf,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|err| FsError::new(&shown, "create copy", err))?;
    let mut from =
        File::from(rustix::io::dup(src).map_err(|err| FsError::new(&shown, "dup", err))?);
    std::io::Seek::rewind(&mut from).map_err(|err| FsError {
        path: shown.clone(),
        ..FsError::io(Path::new(""), "seek", &err)
    })?;
    let mut to = File::from(dst);
    std::io::copy(&mut from, &mut to).map_err(|err| FsError {
        path: shown.clone(),
        ..FsError::io(Path::new(""), "copy", &err)
    })?;
    set_attrs(to.as_fd(), e).map_err(|err| FsError::new(&shown, "set attributes", err))?;
    to.sync_all().map_err(|err| FsError {
        path: shown,
        ..FsError::io(Path::new(""), "fsync", &err)
    })
}

fn set_attrs(fd: BorrowedFd<'_>, e: &Entry) -> Result<(), Errno> {
    rustix::fs::fchown(fd, Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode))?;
    rustix::fs::futimens(fd, &times(e))
}

fn times(e: &Entry) -> Timestamps {
    let ts = |(s, ns): (i64, i64)| Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    Timestamps {
        last_access: ts(e.atime),
        last_modification: ts(e.mtime),
    }
}

/// Every entry of the manifest in `backup_dir`, in the order written.
pub fn read_manifest(backup_dir: &Path) -> Result<Vec<Entry>, FsError> {
    let path = backup_dir.join(MANIFEST);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError::io(&path, "open manifest", &e)),
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| FsError::io(&path, "read manifest", &e))?;
        // A line cut short by a crash names nothing that moved.
        if let Ok(e) = serde_json::from_str::<Entry>(&line) {
            out.push(e);
        }
    }
    Ok(out)
}

/// How the restore of one entry went.
#[derive(Debug, Clone, PartialEq)]
pub enum Restored {
    Back,
    /// Its file never reached the quarantine (a crash between the
    /// manifest line and the move): it is still where it was.
    NotMoved,
    /// Something else is at its place now: the quarantined copy stays.
    Occupied,
}

/// The directory `dir` opened one component at a time without following
/// a symbolic link, creating missing components (0755).
fn open_or_make(dir: &Path) -> Result<OwnedFd, FsError> {
    let mut fd = rustix::fs::openat(CWD, "/", dir_flags(), Mode::empty())
        .map_err(|e| FsError::at(Path::new("/"), "open directory", e))?;
    let mut so_far = PathBuf::from("/");
    for c in dir.components().skip(1) {
        so_far.push(c);
        let name = c.as_os_str();
        fd = match rustix::fs::openat(&fd, name, dir_flags(), Mode::empty()) {
            Ok(f) => f,
            Err(Errno::NOENT) => {
                rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755))
                    .map_err(|e| FsError::at(&so_far, "mkdir", e))?;
                rustix::fs::openat(&fd, name, dir_flags(), Mode::empty())
                    .map_err(|e| FsError::at(&so_far, "open directory", e))?
            }
            Err(e) => return Err(FsError::at(&so_far, "open directory", e)),
        };
    }
    Ok(fd)
}

/// Puts one entry back (a directory is made with its mode and owner; its
/// times are set by [`restore_dir_times`] once its files are back).
pub fn restore(quarantine_dir: &Path, e: &Entry) -> Result<Restored, FsError> {
    let parent = open_or_make(&e.dir_path())?;
    let name = e.name_c()?;
    let shown = e.shown();
    if rustix::fs::statat(&parent, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        return Ok(match e.kind {
            // Made again by the restore of a file under it, or never removed.
            EntryKind::Dir => Restored::Back,
            EntryKind::File => {
                if kept_exists(quarantine_dir, e) {
                    Restored::Occupied
                } else {
                    Restored::NotMoved
                }
            }
        });
    }
    match e.kind {
        EntryKind::Dir => {
            rustix::fs::mkdirat(&parent, name.as_c_str(), Mode::from_raw_mode(e.mode))
                .map_err(|err| FsError::new(&shown, "mkdir", err))?;
            let fd = rustix::fs::openat(&parent, name.as_c_str(), dir_flags(), Mode::empty())
                .map_err(|err| FsError::new(&shown, "open directory", err))?;
            rustix::fs::fchown(&fd, Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)))
                .and_then(|()| rustix::fs::fchmod(&fd, Mode::from_raw_mode(e.mode)))
                .map_err(|err| FsError::new(&shown, "set attributes", err))?;
        }
        EntryKind::File => {
            let kept = kept_path(quarantine_dir, e);
            match rustix::fs::renameat(CWD, &kept, &parent, name.as_c_str()) {
                Ok(()) => {}
                Err(Errno::NOENT) => return Ok(Restored::NotMoved),
                Err(Errno::XDEV) => {
                    let src = rustix::fs::openat(
                        CWD,
                        &kept,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|err| FsError::at(&kept, "open", err))?;
                    copy_into(src.as_fd(), &parent, OsStr::from_bytes(name.as_bytes()), e)?;
                    rustix::fs::unlinkat(CWD, &kept, AtFlags::empty())
                        .map_err(|err| FsError::at(&kept, "unlink", err))?;
                }
                Err(err) => return Err(FsError::new(&shown, "move back", err)),
            }
            let fd = rustix::fs::openat(
                &parent,
                name.as_c_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .map_err(|err| FsError::new(&shown, "open", err))?;
            set_attrs(fd.as_fd(), e).map_err(|err| FsError::new(&shown, "set attributes", err))?;
        }
    }
    Ok(Restored::Back)
}

/// Sets a restored directory's times (after its files are back, whose
/// return changed them).
pub fn restore_dir_times(e: &Entry) -> Result<(), FsError> {
    let parent = open_or_make(&e.dir_path())?;
    let name = e.name_c()?;
    let fd = rustix::fs::openat(&parent, name.as_c_str(), dir_flags(), Mode::empty())
        .map_err(|err| FsError::new(e.shown(), "open directory", err))?;
    rustix::fs::futimens(&fd, &times(e)).map_err(|err| FsError::new(e.shown(), "set times", err))
}

fn kept_path(quarantine_dir: &Path, e: &Entry) -> PathBuf {
    quarantine_dir.join(OsStr::from_bytes(
        &unescape(e.kept.as_deref().unwrap_or_default()).unwrap_or_default(),
    ))
}

fn kept_exists(quarantine_dir: &Path, e: &Entry) -> bool {
    rustix::fs::statat(CWD, kept_path(quarantine_dir, e), AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

/// Puts back every entry of the manifest in `backup_dir` (files first in
/// reverse order of removal, directories' times last). Returns (restored,
/// not moved, occupied paths).
pub fn restore_all(
    quarantine_dir: &Path,
    backup_dir: &Path,
) -> Result<(u64, u64, Vec<String>), FsError> {
    let entries = read_manifest(backup_dir)?;
    let (mut back, mut not_moved, mut occupied) = (0, 0, Vec::new());
    // Reverse order: a directory (removed after its files) is made first.
    for e in entries.iter().rev() {
        match restore(quarantine_dir, e)? {
            Restored::Back => back += 1,
            Restored::NotMoved => not_moved += 1,
            Restored::Occupied => occupied.push(e.shown()),
        }
    }
    for e in entries.iter().filter(|e| e.kind == EntryKind::Dir) {
        restore_dir_times(e)?;
    }
    Ok((back, not_moved, occupied))
}
