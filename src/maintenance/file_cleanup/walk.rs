//! The plan's walk of `file_cleanup`: every root opened by path, every
//! directory below it by `openat(parent, name, O_NOFOLLOW | O_DIRECTORY)`,
//! so a symbolic link is never followed (it fails to open as a directory)
//! and a directory swapped for a link mid-walk cannot redirect the walk.
//! A directory on another mount (its mount id differs from the root's, a
//! bind mount of the same filesystem included) is not entered. Each
//! directory keeps the (dev, inode) of every level from the root, so a
//! batch can check that the path it reopens is still the one planned.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, StatxFlags};
use serde::Serialize;

use super::AgeBy;
use crate::maintenance::files::{FsError, OpenFiles, dir_flags, escape, open_dir};

/// Deepest directory level entered.
const MAX_DEPTH: usize = 256;

/// A directory of the tree.
#[derive(Debug, Clone)]
pub struct Dir {
    pub root: usize,
    /// Names below the root.
    pub components: Vec<Vec<u8>>,
    /// (dev, inode) of each component, as planned.
    pub ids: Vec<(u64, u64)>,
}

/// A file the plan removes.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub dir: usize,
    pub name: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
}

/// Why entries were left, counted.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Skipped {
    /// Symbolic links: never followed, never removed.
    pub symlinks: u64,
    /// Directories on another mount: not entered.
    pub mount_points: u64,
    /// Old files some process holds open.
    pub held_open: u64,
    /// Names not matched by `match`, or matched by `exclude`.
    pub not_matched: u64,
    pub smaller_than_min_size: u64,
    pub newer: u64,
    pub kept_newest: u64,
    /// Sockets, fifos, devices.
    pub other_types: u64,
    /// Directories that could not be opened (their errors are listed).
    pub unreadable_dirs: u64,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Found {
    pub roots: Vec<PathBuf>,
    pub dirs: Vec<Dir>,
    pub candidates: Vec<Candidate>,
    pub skipped: Skipped,
    /// Directories that could not be read, with the path and errno.
    pub errors: Vec<String>,
}

impl Found {
    /// The full path of `name` in directory `dir`, as bytes.
    pub fn path(&self, dir: usize, name: Option<&[u8]>) -> Vec<u8> {
        let d = &self.dirs[dir];
        let mut p = self.roots[d.root].as_os_str().as_bytes().to_vec();
        for c in d.components.iter().map(Vec::as_slice).chain(name) {
            if p.last() != Some(&b'/') {
                p.push(b'/');
            }
            p.extend_from_slice(c);
        }
        p
    }
}

/// What the walk selects.
pub struct Rules<'a> {
    pub matches: &'a [glob::Pattern],
    pub excludes: &'a [glob::Pattern],
    pub min_size: Option<u64>,
    /// Files whose time (by `age_by`) is at or before this (Unix seconds) are old.
    pub cutoff_s: i64,
    pub age_by: AgeBy,
    pub keep_newest: usize,
    pub open: &'a OpenFiles,
}

const GLOB: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// Whether `pattern` matches: against the name, or against the path
/// below the root when the pattern has a `/`.
fn glob_hit(p: &glob::Pattern, name: &str, rel: &str) -> bool {
    if p.as_str().contains('/') {
        p.matches_with(rel, GLOB)
    } else {
        p.matches_with(name, GLOB)
    }
}

impl Rules<'_> {
    fn excluded(&self, name: &str, rel: &str) -> bool {
        self.excludes.iter().any(|p| glob_hit(p, name, rel))
    }

    fn selected(&self, name: &str, rel: &str) -> bool {
        (self.matches.is_empty() || self.matches.iter().any(|p| glob_hit(p, name, rel)))
            && !self.excluded(name, rel)
    }

    fn time(&self, st: &rustix::fs::Stat) -> i64 {
        match self.age_by {
            AgeBy::Mtime => st.st_mtime,
            AgeBy::Atime => st.st_atime,
            AgeBy::Ctime => st.st_ctime,
        }
    }
}

/// Walks every root.
pub fn walk(roots: &[PathBuf], rules: &Rules<'_>) -> Found {
    let mut found = Found {
        roots: roots.to_vec(),
        ..Found::default()
    };
    for (i, root) in roots.iter().enumerate() {
        let fd = match open_dir(root) {
            Ok(fd) => fd,
            Err(e) => {
                found.skipped.unreadable_dirs += 1;
                found.errors.push(e.to_string());
                continue;
            }
        };
        let Some(mnt) = mount_id(&fd) else {
            found.errors.push(format!(
                "{}: statx: no mount id",
                escape(root.as_os_str().as_bytes())
            ));
            continue;
        };
        found.dirs.push(Dir {
            root: i,
            components: Vec::new(),
            ids: Vec::new(),
        });
        let at = found.dirs.len() - 1;
        walk_dir(fd, at, mnt, rules, &mut found);
    }
    found
}

/// The mount id and device of an open directory.
fn mount_id(fd: &OwnedFd) -> Option<(u64, u64)> {
    let sx = rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )
    .ok()?;
    let dev = rustix::fs::makedev(sx.stx_dev_major, sx.stx_dev_minor);
    Some((sx.stx_mnt_id, dev))
}

fn walk_dir(fd: OwnedFd, at: usize, mnt: (u64, u64), rules: &Rules<'_>, found: &mut Found) {
    let mut entries = match rustix::fs::Dir::read_from(&fd) {
        Ok(d) => d,
        Err(e) => {
            found.skipped.unreadable_dirs += 1;
            found
                .errors
                .push(FsError::new(found.path(at, None), "read directory", e).to_string());
            return;
        }
    };
    let rel_of = |found: &Found, name: &[u8]| -> String {
        let d = &found.dirs[at];
        let mut parts: Vec<String> = d
            .components
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        parts.push(String::from_utf8_lossy(name).into_owned());
        parts.join("/")
    };
    // Selected files of this directory with their time, for keep_newest.
    let mut files: Vec<(i64, Candidate)> = Vec::new();
    let mut subdirs: Vec<Vec<u8>> = Vec::new();
    while let Some(entry) = entries.read() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                found
                    .errors
                    .push(FsError::new(found.path(at, None), "read directory", e).to_string());
                break;
            }
        };
        let name_c: &CStr = entry.file_name();
        let name = name_c.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let mut kind = entry.file_type();
        let mut stat = None;
        if kind == FileType::Unknown {
            match rustix::fs::statat(&fd, name_c, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => {
                    kind = FileType::from_raw_mode(st.st_mode);
                    stat = Some(st);
                }
                Err(_) => continue,
            }
        }
        let lossy = String::from_utf8_lossy(name);
        match kind {
            FileType::Symlink => found.skipped.symlinks += 1,
            FileType::Directory => {
                if rules.excluded(&lossy, &rel_of(found, name)) {
                    found.skipped.not_matched += 1;
                } else {
                    subdirs.push(name.to_vec());
                }
            }
            FileType::RegularFile => {
                let rel = rel_of(found, name);
                if !rules.selected(&lossy, &rel) {
                    found.skipped.not_matched += 1;
                    continue;
                }
                let st = match stat {
                    Some(st) => st,
                    None => match rustix::fs::statat(&fd, name_c, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                            st
                        }
                        // Gone, or replaced by another type since readdir.
                        _ => continue,
                    },
                };
                if rules.min_size.is_some_and(|m| (st.st_size as u64) < m) {
                    found.skipped.smaller_than_min_size += 1;
                    continue;
                }
                files.push((
                    rules.time(&st),
                    Candidate {
                        dir: at,
                        name: name.to_vec(),
                        dev: st.st_dev,
                        ino: st.st_ino,
                        size: st.st_size as u64,
                    },
                ));
            }
            _ => found.skipped.other_types += 1,
        }
    }
    drop(entries);
    // Newest first: the first `keep_newest` stay whatever their age.
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (i, (time, c)) in files.into_iter().enumerate() {
        if i < rules.keep_newest {
            found.skipped.kept_newest += 1;
        } else if time > rules.cutoff_s {
            found.skipped.newer += 1;
        } else if rules.open.contains(c.dev, c.ino) {
            found.skipped.held_open += 1;
        } else {
            found.candidates.push(c);
        }
    }
    let depth = found.dirs[at].components.len();
    for name in subdirs {
        if depth >= MAX_DEPTH {
            found.errors.push(format!(
                "{}: deeper than {MAX_DEPTH} levels: not entered",
                escape(&found.path(at, Some(&name)))
            ));
            continue;
        }
        let sub = match rustix::fs::openat(&fd, name.as_slice(), dir_flags(), Mode::empty()) {
            Ok(sub) => sub,
            Err(e) => {
                // ELOOP / ENOTDIR: swapped for a link or a file since readdir.
                found.skipped.unreadable_dirs += 1;
                found.errors.push(
                    FsError::new(found.path(at, Some(&name)), "open directory", e).to_string(),
                );
                continue;
            }
        };
        match mount_id(&sub) {
            Some(m) if m == mnt => {}
            _ => {
                found.skipped.mount_points += 1;
                continue;
            }
        }
        let Some(id) = crate::maintenance::files::id_of(sub.as_fd()) else {
            continue;
        };
        let parent = &found.dirs[at];
        let mut components = parent.components.clone();
        components.push(name);
        let mut ids = parent.ids.clone();
        ids.push(id);
        found.dirs.push(Dir {
            root: parent.root,
            components,
            ids,
        });
        let next = found.dirs.len() - 1;
        walk_dir(sub, next, mnt, rules, found);
    }
}

/// The path shown for a root.
pub fn show_root(root: &Path) -> String {
    escape(root.as_os_str().as_bytes())
}
