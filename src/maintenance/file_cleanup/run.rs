//! One run of `file_cleanup`: the plan (a walk), the batches (each file
//! checked again and moved or unlinked under its directory's descriptor),
//! the empty directories, validation and rollback.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use serde_json::{Value, json};

use super::walk::{self, Found, Rules};
use super::{FileCleanupConfig, globs};
use crate::fmt::{bytes, count};
use crate::maintenance::files::quarantine::{self, Entry, EntryKind, Quarantine};
use crate::maintenance::files::{FsError, OpenFiles, escape, fs_usage, open_dir_chain};
use crate::maintenance::{Backup, Batch, Cx, Plan, TaskError, Verdict};

/// A directory by its root and its names below it.
type DirKey = (usize, Vec<Vec<u8>>);

/// Paths shown in the plan and the verdict, at most.
const SHOWN: usize = 20;

/// Why a planned file was left at batch time, counted.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Left {
    /// Its directory is no longer the one planned (replaced by a link or
    /// another directory, or gone).
    pub dir_changed: u64,
    /// No longer the file planned (another inode, another type).
    pub file_changed: u64,
    pub gone: u64,
    /// Modified since the plan: no longer old.
    pub newer: u64,
    /// Another process holds a `flock` on it.
    pub locked: u64,
}

pub struct Run {
    name: String,
    config: FileCleanupConfig,
    found: Option<Found>,
    cutoff_s: i64,
    next: usize,
    quarantine: Option<Quarantine>,
    quarantine_dir: PathBuf,
    backup_dir: PathBuf,
    /// (candidate index) of each file removed.
    removed: Vec<usize>,
    removed_bytes: u64,
    removed_dirs: u64,
    left: Left,
    /// The first few paths left at batch time, with why.
    left_shown: Vec<String>,
    dirs_done: bool,
}

impl Run {
    pub fn new(name: &str, config: FileCleanupConfig) -> Run {
        Run {
            name: name.to_string(),
            config,
            found: None,
            cutoff_s: 0,
            next: 0,
            quarantine: None,
            quarantine_dir: PathBuf::new(),
            backup_dir: PathBuf::new(),
            removed: Vec::new(),
            removed_bytes: 0,
            removed_dirs: 0,
            left: Left::default(),
            left_shown: Vec::new(),
            dirs_done: false,
        }
    }

    /// Free bytes and used ratio of each root's filesystem.
    pub fn figures(&self) -> Value {
        let fs: Vec<Value> = self
            .config
            .roots()
            .iter()
            .map(|r| match fs_usage(r) {
                Ok((free, ratio)) => {
                    json!({ "path": walk::show_root(r), "free_bytes": free, "used_ratio": ratio })
                }
                Err(e) => json!({ "path": walk::show_root(r), "error": e.to_string() }),
            })
            .collect();
        json!({ "filesystems": fs })
    }

    pub fn plan(&mut self, cx: &Cx) -> Result<Plan, TaskError> {
        let c = &self.config;
        let (matches, excludes) = (
            globs(&c.r#match).map_err(|e| TaskError::Config {
                field: "match",
                message: e,
            })?,
            globs(&c.exclude).map_err(|e| TaskError::Config {
                field: "exclude",
                message: e,
            })?,
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.cutoff_s = now.saturating_sub(c.older_than).as_secs() as i64;
        let open = OpenFiles::scan();
        let rules = Rules {
            matches: &matches,
            excludes: &excludes,
            min_size: c.min_size,
            cutoff_s: self.cutoff_s,
            age_by: c.age_by,
            keep_newest: c.keep_newest as usize,
            open: &open,
        };
        let found = walk::walk(&c.roots(), &rules);
        let bytes_total: u64 = found.candidates.iter().map(|c| c.size).sum();
        let n = found.candidates.len() as u64;
        let shown: Vec<String> = found
            .candidates
            .iter()
            .take(SHOWN)
            .map(|k| escape(&found.path(k.dir, Some(&k.name))))
            .collect();
        // Quarantine on another filesystem than a root: files are copied.
        let q_dev = quarantine_dev(&cx.quarantine_dir);
        let copies = c.quarantine
            && found
                .dirs
                .iter()
                .filter(|d| d.components.is_empty())
                .any(|d| {
                    rustix::fs::stat(&found.roots[d.root])
                        .map(|s| s.st_dev)
                        .ok()
                        != q_dev
                });
        let how = if c.quarantine {
            format!(
                "move to the quarantine {} ({})",
                cx.quarantine_dir.display(),
                if copies {
                    "copied: another filesystem"
                } else {
                    "renamed"
                }
            )
        } else {
            "unlink (quarantine = false: this run cannot be rolled back)".to_string()
        };
        let summary = format!(
            "remove {} files ({}) older than {} by {} under {}: {how}",
            count(n),
            bytes(bytes_total as f64),
            humantime::format_duration(c.older_than),
            c.age_by.name(),
            found
                .roots
                .iter()
                .map(|r| walk::show_root(r))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let details = json!({
            "files": n,
            "bytes": bytes_total,
            "cutoff": crate::fmt::rfc3339(self.cutoff_s * 1000),
            "age_by": c.age_by,
            "quarantine": c.quarantine,
            "quarantine_copies": copies,
            "reversible": c.quarantine,
            "remove_empty_dirs": c.remove_empty_dirs,
            "skipped": found.skipped,
            "errors": found.errors.iter().take(SHOWN).collect::<Vec<_>>(),
            "first_files": shown,
        });
        self.found = Some(found);
        self.quarantine_dir = cx.quarantine_dir.clone();
        self.backup_dir = cx.backup_dir.clone();
        Ok(Plan {
            summary,
            rows: n,
            bytes: bytes_total,
            details,
        })
    }

    pub fn backup(&mut self, cx: &Cx) -> Result<Backup, TaskError> {
        if self.config.quarantine {
            self.quarantine = Some(Quarantine::open(&cx.quarantine_dir, &cx.backup_dir)?);
        }
        self.backup_state()
            .ok_or_else(|| TaskError::failed("no plan"))
    }

    pub fn backup_state(&self) -> Option<Backup> {
        if !self.config.quarantine {
            return Some(Backup {
                location: String::new(),
                rows: 0,
                bytes: 0,
                details: json!({ "quarantine": false, "removed_files": self.removed.len() }),
            });
        }
        let q = self.quarantine.as_ref();
        Some(Backup {
            location: self.quarantine_dir.display().to_string(),
            rows: q.map_or(0, |q| q.moved),
            bytes: q.map_or(0, |q| q.bytes),
            details: json!({
                "quarantine": true,
                "manifest": quarantine::MANIFEST,
                "copied": q.map_or(0, |q| q.copied),
                "removed_dirs": self.removed_dirs,
            }),
        })
    }

    fn leave(&mut self, why: &str, path: &[u8]) {
        if self.left_shown.len() < SHOWN {
            self.left_shown.push(format!("{}: {why}", escape(path)));
        }
    }

    pub fn batch(&mut self, size: u64) -> Result<Batch, TaskError> {
        let found = self
            .found
            .take()
            .ok_or_else(|| TaskError::failed("no plan"))?;
        let result = self.files(&found, size);
        let result = result.and_then(|mut b| {
            if b.done && self.config.remove_empty_dirs && !self.dirs_done {
                self.dirs_done = true;
                let n = self.empty_dirs(&found)?;
                b.detail
                    .push_str(&format!("; {n} empty directories removed"));
            }
            Ok(b)
        });
        self.found = Some(found);
        result
    }

    fn files(&mut self, found: &Found, size: u64) -> Result<Batch, TaskError> {
        let end = (self.next + size as usize).min(found.candidates.len());
        // The directory of the file at hand, opened safely once per batch.
        let mut dirs: BTreeMap<usize, Option<OwnedFd>> = BTreeMap::new();
        let mut taken: Vec<(usize, CString, OwnedFd, Entry)> = Vec::new();
        let before = self.removed.len();
        for i in self.next..end {
            let c = &found.candidates[i];
            let path = found.path(c.dir, Some(&c.name));
            let dir = dirs.entry(c.dir).or_insert_with(|| {
                let d = &found.dirs[c.dir];
                open_dir_chain(&found.roots[d.root], &d.components, Some(&d.ids)).ok()
            });
            let Some(dir) = dir.as_ref() else {
                self.left.dir_changed += 1;
                self.leave("its directory changed since the plan", &path);
                continue;
            };
            let name = CString::new(c.name.clone()).expect("a name from readdir has no NUL");
            let st = match rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => {
                    self.left.gone += 1;
                    continue;
                }
                Err(e) => return Err(FsError::new(&path, "stat", e).into()),
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
                || (st.st_dev, st.st_ino) != (c.dev, c.ino)
            {
                self.left.file_changed += 1;
                self.leave("replaced since the plan", &path);
                continue;
            }
            let t = match self.config.age_by {
                super::AgeBy::Mtime => st.st_mtime,
                super::AgeBy::Atime => st.st_atime,
                super::AgeBy::Ctime => st.st_ctime,
            };
            if t > self.cutoff_s {
                self.left.newer += 1;
                continue;
            }
            let fd = match rustix::fs::openat(
                dir,
                name.as_c_str(),
                OFlags::RDONLY
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK
                    | OFlags::NOCTTY
                    | OFlags::CLOEXEC
                    | OFlags::NOATIME,
                Mode::empty(),
            )
            .or_else(|e| match e {
                // O_NOATIME needs the file's owner (or CAP_FOWNER).
                Errno::PERM => rustix::fs::openat(
                    dir,
                    name.as_c_str(),
                    OFlags::RDONLY
                        | OFlags::NOFOLLOW
                        | OFlags::NONBLOCK
                        | OFlags::NOCTTY
                        | OFlags::CLOEXEC,
                    Mode::empty(),
                ),
                e => Err(e),
            }) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    self.left.gone += 1;
                    continue;
                }
                Err(e) => return Err(FsError::new(&path, "open", e).into()),
            };
            if crate::maintenance::files::id_of(fd.as_fd()) != Some((c.dev, c.ino)) {
                self.left.file_changed += 1;
                self.leave("replaced since the plan", &path);
                continue;
            }
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    self.left.locked += 1;
                    self.leave("locked (flock) by another process", &path);
                    continue;
                }
                Err(e) => return Err(FsError::new(&path, "flock", e).into()),
            }
            match self.quarantine.as_mut() {
                Some(q) => {
                    let dir_path = found.path(c.dir, None);
                    let mut entry = Entry::of(EntryKind::File, &dir_path, &c.name, &st);
                    q.note(&mut entry)?;
                    taken.push((c.dir, name, fd, entry));
                }
                None => {
                    rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty())
                        .map_err(|e| FsError::new(&path, "unlink", e))?;
                    self.removed.push(i);
                    self.removed_bytes += c.size;
                }
            }
        }
        if let Some(q) = self.quarantine.as_mut() {
            // Every line durable before the first file moves.
            q.sync()?;
            let index: BTreeMap<(usize, Vec<u8>), usize> = (self.next..end)
                .map(|i| {
                    (
                        (found.candidates[i].dir, found.candidates[i].name.clone()),
                        i,
                    )
                })
                .collect();
            for (dir, name, fd, entry) in &taken {
                let parent = dirs[dir].as_ref().expect("opened above");
                q.take(parent.as_fd(), name.as_c_str(), fd.as_fd(), entry)?;
                let i = index[&(*dir, name.as_bytes().to_vec())];
                self.removed.push(i);
                self.removed_bytes += found.candidates[i].size;
            }
        }
        self.next = end;
        let n = (self.removed.len() - before) as u64;
        Ok(Batch {
            rows: n,
            archived: if self.quarantine.is_some() { n } else { 0 },
            detail: format!(
                "{n} files {}, {} of {} planned done",
                if self.quarantine.is_some() {
                    "quarantined"
                } else {
                    "unlinked"
                },
                self.next,
                found.candidates.len()
            ),
            done: self.next >= found.candidates.len(),
        })
    }

    /// Removes the directories this run left empty, deepest first; never a
    /// root. Returns how many went.
    fn empty_dirs(&mut self, found: &Found) -> Result<u64, TaskError> {
        // Every directory above a removed file, below its root.
        let mut dirs: BTreeMap<DirKey, Vec<(u64, u64)>> = BTreeMap::new();
        for &i in &self.removed {
            let d = &found.dirs[found.candidates[i].dir];
            for n in 1..=d.components.len() {
                dirs.insert((d.root, d.components[..n].to_vec()), d.ids[..n].to_vec());
            }
        }
        let mut order: Vec<_> = dirs.into_iter().collect();
        order.sort_by_key(|((_, comps), _)| std::cmp::Reverse(comps.len()));
        let mut removed = 0;
        for ((root, comps), ids) in order {
            let root_path = &found.roots[root];
            let n = comps.len();
            let Ok(parent) = open_dir_chain(root_path, &comps[..n - 1], Some(&ids[..n - 1])) else {
                continue;
            };
            let name = CString::new(comps[n - 1].clone()).expect("no NUL");
            let Ok(st) = rustix::fs::statat(&parent, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory
                || (st.st_dev, st.st_ino) != ids[n - 1]
            {
                continue;
            }
            let mut parent_path = root_path.as_os_str().as_bytes().to_vec();
            for c in &comps[..n - 1] {
                parent_path.push(b'/');
                parent_path.extend_from_slice(c);
            }
            if let Some(q) = self.quarantine.as_mut() {
                let mut e = Entry::of(EntryKind::Dir, &parent_path, &comps[n - 1], &st);
                q.note(&mut e)?;
                q.sync()?;
            }
            match rustix::fs::unlinkat(&parent, name.as_c_str(), AtFlags::REMOVEDIR) {
                Ok(()) => removed += 1,
                Err(Errno::NOTEMPTY | Errno::EXIST | Errno::BUSY | Errno::NOENT) => {}
                Err(e) => {
                    let mut p = parent_path.clone();
                    p.push(b'/');
                    p.extend_from_slice(&comps[n - 1]);
                    return Err(FsError::new(&p, "rmdir", e).into());
                }
            }
        }
        self.removed_dirs = removed;
        Ok(removed)
    }

    /// Every removed file is gone from its place (no longer that inode
    /// there) and, with the quarantine, kept there at its size; every
    /// planned file is either removed or left for a reason counted.
    pub fn validate(&mut self) -> Result<Verdict, TaskError> {
        let found = self
            .found
            .as_ref()
            .ok_or_else(|| TaskError::failed("no plan"))?;
        let mut still_there = Vec::new();
        for &i in &self.removed {
            let c = &found.candidates[i];
            let d = &found.dirs[c.dir];
            let name = CString::new(c.name.clone()).expect("no NUL");
            let here = open_dir_chain(&found.roots[d.root], &d.components, None)
                .ok()
                .and_then(|fd| {
                    rustix::fs::statat(&fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).ok()
                });
            if here.is_some_and(|st| (st.st_dev, st.st_ino) == (c.dev, c.ino)) {
                still_there.push(escape(&found.path(c.dir, Some(&c.name))));
            }
        }
        let l = &self.left;
        let accounted = self.removed.len() as u64
            + l.dir_changed
            + l.file_changed
            + l.gone
            + l.newer
            + l.locked;
        let planned = found.candidates.len() as u64;
        let (kept_files, kept_bytes) = match &self.quarantine {
            Some(_) => {
                let entries = quarantine::read_manifest(&self.backup_dir)?;
                let mut n = 0u64;
                let mut b = 0u64;
                for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
                    let p = self.quarantine_dir.join(std::ffi::OsStr::from_bytes(
                        &crate::maintenance::files::unescape(e.kept.as_deref().unwrap_or_default())
                            .unwrap_or_default(),
                    ));
                    if let Ok(st) =
                        rustix::fs::statat(rustix::fs::CWD, &p, AtFlags::SYMLINK_NOFOLLOW)
                        && st.st_size as u64 == e.size
                    {
                        n += 1;
                        b += e.size;
                    }
                }
                (Some(n), Some(b))
            }
            None => (None, None),
        };
        let quarantine_ok = kept_files.is_none_or(|k| k == self.removed.len() as u64);
        let ok = still_there.is_empty() && accounted == planned && quarantine_ok;
        let detail = format!(
            "{} of {} planned files removed ({}), {} directories; left: {} directory changed, {} file changed, {} gone, {} newer, {} locked{}{}",
            self.removed.len(),
            planned,
            bytes(self.removed_bytes as f64),
            self.removed_dirs,
            l.dir_changed,
            l.file_changed,
            l.gone,
            l.newer,
            l.locked,
            match kept_files {
                Some(k) => format!("; {k} kept in the quarantine"),
                None => String::new(),
            },
            if still_there.is_empty() {
                String::new()
            } else {
                format!("; still in place: {}", still_there.join(", "))
            }
        );
        Ok(Verdict {
            ok,
            detail,
            figures: json!({
                "planned_files": planned,
                "removed_files": self.removed.len(),
                "removed_bytes": self.removed_bytes,
                "removed_dirs": self.removed_dirs,
                "left": self.left,
                "left_paths": self.left_shown,
                "quarantined_files": kept_files,
                "quarantined_bytes": kept_bytes,
                "task": self.name,
            }),
        })
    }
}

/// The device of the quarantine's nearest existing ancestor.
fn quarantine_dev(dir: &Path) -> Option<u64> {
    dir.ancestors()
        .find_map(|a| rustix::fs::stat(a).ok())
        .map(|s| s.st_dev)
}

/// Puts back what the run's quarantine holds.
pub fn rollback(cx: &Cx, backup: &Backup) -> Result<Verdict, TaskError> {
    if backup.details["quarantine"].as_bool() != Some(true) {
        return Ok(Verdict {
            ok: false,
            detail: "this run unlinked its files (quarantine = false): nothing to put back".into(),
            figures: Value::Null,
        });
    }
    let qdir = if backup.location.is_empty() {
        cx.quarantine_dir.clone()
    } else {
        PathBuf::from(&backup.location)
    };
    let (back, not_moved, occupied) = quarantine::restore_all(&qdir, &cx.backup_dir)?;
    let ok = occupied.is_empty();
    Ok(Verdict {
        ok,
        detail: format!(
            "{back} entries put back{}{}",
            if not_moved > 0 {
                format!(", {not_moved} had not moved")
            } else {
                String::new()
            },
            if occupied.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} left in the quarantine because something else is at their place now: {}",
                    occupied.len(),
                    occupied
                        .iter()
                        .take(SHOWN)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
        figures: json!({ "restored": back, "not_moved": not_moved, "occupied": occupied.len() }),
    })
}
