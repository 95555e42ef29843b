//! The content-addressed store of configuration snapshots, shared by the
//! kind that takes them (`config_backup`), the drill that restores them
//! and `upkeep backup diff`. Under `DATA_DIR/backups/NAME/store/`:
//! `blobs/AB/SHA256.gz`, one gzip-compressed blob per distinct content (an
//! unchanged file costs nothing), and `snapshots/ID.json`, one manifest
//! per snapshot listing every path with its type, mode, owner, mtime,
//! hash, and a symlink's target. Links are recorded, never followed;
//! FIFOs, sockets and devices are listed and never opened; files over
//! `max_file_size` or unreadable by the agent's user are listed with why
//! they are not stored.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::backup_files::{FILE_MODE, InUse, create_dir, hold, try_claim};
use super::dumps::hex;

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Device,
}

/// One path of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: Kind,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    pub size: u64,
    /// sha256 of a stored file's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// A symlink's target, as written (never followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
    /// Why a file is listed but not stored ("unreadable: ...", "over
    /// max_file_size").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_stored: Option<String>,
}

impl Entry {
    /// Whether `other` describes the same thing (content by hash, or by
    /// size and mtime when either is not hashed).
    pub fn same_as(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.target == other.target
            && match (&self.hash, &other.hash) {
                (Some(a), Some(b)) => a == b,
                _ => {
                    self.kind != Kind::File
                        || (self.size == other.size && self.mtime_ns == other.mtime_ns)
                }
            }
    }
}

/// A snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// A run id, or `pre-rollback-MS` for the state saved before a rollback.
    pub id: String,
    pub taken_ms: i64,
    pub entries: Vec<Entry>,
}

/// The store of task `task`.
pub fn store_dir(data_dir: &Path, task: &str) -> PathBuf {
    data_dir.join("backups").join(task).join("store")
}

fn blob_path(store: &Path, hash: &str) -> PathBuf {
    store
        .join("blobs")
        .join(&hash[..2])
        .join(format!("{hash}.gz"))
}

fn manifest_path(store: &Path, id: &str) -> PathBuf {
    store.join("snapshots").join(format!("{id}.json.gz"))
}

/// A manifest file's JSON (manifests are gzip-compressed: a path's line
/// compresses about tenfold, and a manifest is written per change).
fn read_manifest(p: &Path) -> io::Result<Manifest> {
    let mut text = Vec::new();
    GzDecoder::new(std::fs::File::open(p)?).read_to_end(&mut text)?;
    serde_json::from_slice(&text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display())))
}

/// Every manifest of the store, oldest first.
pub fn manifests(store: &Path) -> Vec<Manifest> {
    let Ok(rd) = std::fs::read_dir(store.join("snapshots")) else {
        return Vec::new();
    };
    let mut out: Vec<Manifest> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json.gz"))
        .filter_map(|e| read_manifest(&e.path()).ok())
        .collect();
    out.sort_by_key(|m| m.taken_ms);
    out
}

/// Snapshot `id` of the store.
pub fn manifest(store: &Path, id: &str) -> io::Result<Manifest> {
    read_manifest(&manifest_path(store, id))
}

/// The newest snapshot that a run took (not a pre-rollback one).
pub fn newest(store: &Path) -> Option<Manifest> {
    manifests(store)
        .into_iter()
        .rev()
        .find(|m| m.id.parse::<i64>().is_ok())
}

/// Writes a manifest whole or not at all.
pub fn write_manifest(store: &Path, m: &Manifest) -> io::Result<()> {
    let p = manifest_path(store, &m.id);
    create_dir(p.parent().expect("has a parent"))?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&serde_json::to_vec(m).expect("serializable"))?;
    write_atomic(&p, &gz.finish()?)
}

/// When a run last found the files unchanged (the RPO of a store whose
/// newest snapshot is old because nothing changed).
pub fn mark_checked(store: &Path, ms: i64) -> io::Result<()> {
    create_dir(store)?;
    write_atomic(&store.join("checked.json"), ms.to_string().as_bytes())
}

pub fn checked_ms(store: &Path) -> Option<i64> {
    std::fs::read_to_string(store.join("checked.json"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn write_atomic(p: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = p.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, p)?;
    std::fs::File::open(p.parent().expect("has a parent"))?.sync_all()
}

/// What `walk` found.
#[derive(Debug, Default)]
pub struct Walked {
    pub entries: Vec<Entry>,
    /// Paths that could not be listed at all (a directory unreadable).
    pub errors: Vec<String>,
}

/// Lists `roots` (each a file, directory or glob) recursively without
/// following a symlink, leaving out paths matching `exclude`. Reads no
/// content: regular files get their hash from `hash_into`.
pub fn walk(roots: &[String], exclude: &[glob::Pattern]) -> Walked {
    let mut out = Walked::default();
    let mut seen = std::collections::BTreeSet::new();
    for root in roots {
        let paths: Vec<PathBuf> = if root.contains(['*', '?', '[']) {
            match glob::glob(root) {
                Ok(g) => g.flatten().collect(),
                Err(e) => {
                    out.errors.push(format!("{root}: {e}"));
                    continue;
                }
            }
        } else {
            vec![PathBuf::from(root)]
        };
        for p in paths {
            visit(&p, exclude, &mut out, &mut seen);
        }
    }
    out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn visit(
    p: &Path,
    exclude: &[glob::Pattern],
    out: &mut Walked,
    seen: &mut std::collections::BTreeSet<PathBuf>,
) {
    if exclude.iter().any(|x| x.matches_path(p)) || !seen.insert(p.to_path_buf()) {
        return;
    }
    let m = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) => {
            out.errors.push(format!("{}: {e}", p.display()));
            return;
        }
    };
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_block_device() || ft.is_char_device() {
        Kind::Device
    } else {
        Kind::File
    };
    out.entries.push(Entry {
        path: p.to_path_buf(),
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        size: if kind == Kind::File { m.len() } else { 0 },
        hash: None,
        target: if kind == Kind::Symlink {
            std::fs::read_link(p).ok()
        } else {
            None
        },
        not_stored: None,
    });
    if kind == Kind::Dir {
        match std::fs::read_dir(p) {
            Ok(rd) => {
                let mut children: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
                children.sort();
                for c in children {
                    visit(&c, exclude, out, seen);
                }
            }
            Err(e) => out.errors.push(format!("{}: {e}", p.display())),
        }
    }
}

/// Stores a regular file's content as a blob (when no blob of that
/// content is there yet) and returns its hash. Opened without following
/// a symlink swapped in since the walk, and never blocking on a FIFO.
pub fn store_file(store: &Path, path: &Path) -> io::Result<String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("no longer a regular file"));
    }
    let tmp_dir = store.join("blobs");
    create_dir(&tmp_dir)?;
    let tmp = tmp_dir.join(format!(".incoming-{}", std::process::id()));
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    let mut gz = GzEncoder::new(out, Compression::default());
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        gz.write_all(&buf[..n])?;
    }
    let hash = hex(&h.finalize());
    let dest = blob_path(store, &hash);
    if dest.exists() {
        drop(gz);
        std::fs::remove_file(&tmp)?;
        return Ok(hash);
    }
    gz.finish()?.sync_all()?;
    create_dir(dest.parent().expect("has a parent"))?;
    std::fs::rename(&tmp, &dest)?;
    Ok(hash)
}

/// A blob's content, checked against its hash.
pub fn read_blob(store: &Path, hash: &str) -> io::Result<Vec<u8>> {
    let p = blob_path(store, hash);
    let mut content = Vec::new();
    GzDecoder::new(std::fs::File::open(&p)?).read_to_end(&mut content)?;
    let got = hex(&Sha256::digest(&content));
    if got != hash {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: content hashes to {got}", p.display()),
        ));
    }
    Ok(content)
}

/// The newest snapshot a run took, its manifest held in use
/// (`backup_files::hold`) so that no pruning removes it, nor the blobs
/// it names, until the hold is dropped. One removed between the choice
/// and the hold is passed over for the newest again.
pub fn hold_newest(store: &Path) -> io::Result<Option<(Manifest, InUse)>> {
    loop {
        let Some(m) = newest(store) else {
            return Ok(None);
        };
        let p = manifest_path(store, &m.id);
        match hold(&p) {
            // Pruning removes a manifest under the exclusive lock: still
            // there once held, it stays.
            Ok(h) if p.exists() => return Ok(Some((m, h))),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes manifests past the newest `keep` run snapshots (pre-rollback
/// ones go with the run snapshots older than them), then every blob no
/// manifest names. A manifest in use (a drill restoring it) stays, and
/// with it its blobs, for the next run's pruning. Returns (manifests
/// removed, blobs removed, manifests kept in use).
pub fn prune(store: &Path, keep: usize) -> io::Result<(usize, usize, usize)> {
    let all = manifests(store);
    let runs: Vec<&Manifest> = all.iter().filter(|m| m.id.parse::<i64>().is_ok()).collect();
    let cutoff = runs
        .len()
        .checked_sub(keep)
        .filter(|n| *n > 0)
        .map(|n| runs[n - 1].taken_ms);
    let (mut removed, mut in_use) = (0, 0);
    if let Some(cut) = cutoff {
        for m in all.iter().filter(|m| m.taken_ms <= cut) {
            let p = manifest_path(store, &m.id);
            let Some(_claim) = try_claim(&p)? else {
                in_use += 1;
                continue;
            };
            std::fs::remove_file(&p)?;
            removed += 1;
        }
    }
    let live: std::collections::BTreeSet<String> = manifests(store)
        .into_iter()
        .flat_map(|m| m.entries.into_iter().filter_map(|e| e.hash))
        .collect();
    let mut blobs = 0;
    if let Ok(dirs) = std::fs::read_dir(store.join("blobs")) {
        for d in dirs.flatten().filter(|d| d.path().is_dir()) {
            for b in std::fs::read_dir(d.path())?.flatten() {
                let name = b.file_name().to_string_lossy().into_owned();
                let hash = name.trim_end_matches(".gz");
                if !live.contains(hash) {
                    std::fs::remove_file(b.path())?;
                    blobs += 1;
                }
            }
        }
    }
    Ok((removed, blobs, in_use))
}

/// Added, removed and modified paths from `old` to `new`.
pub fn changes(old: &[Entry], new: &[Entry]) -> Vec<(String, PathBuf)> {
    let o: BTreeMap<&Path, &Entry> = old.iter().map(|e| (e.path.as_path(), e)).collect();
    let n: BTreeMap<&Path, &Entry> = new.iter().map(|e| (e.path.as_path(), e)).collect();
    let mut out = Vec::new();
    for (p, e) in &n {
        match o.get(p) {
            None => out.push(("added".to_string(), p.to_path_buf())),
            Some(prev) if !prev.same_as(e) => out.push(("modified".to_string(), p.to_path_buf())),
            _ => {}
        }
    }
    for p in o.keys() {
        if !n.contains_key(p) {
            out.push(("removed".to_string(), p.to_path_buf()));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// Sets a path's owner, mode and mtime as `e` says, without following a
/// symlink (a symlink's own mode cannot be set on Linux).
pub fn set_attributes(e: &Entry) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(e.path.as_os_str().as_bytes())
        .map_err(|x| io::Error::new(io::ErrorKind::InvalidInput, x))?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::lchown(c.as_ptr(), e.uid, e.gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if e.kind != Kind::Symlink {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&e.path, std::fs::Permissions::from_mode(e.mode))?;
    }
    let t = libc::timespec {
        tv_sec: e.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: e.mtime_ns.rem_euclid(1_000_000_000),
    };
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        t,
    ];
    // SAFETY: valid path and a two-element times array.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts entry `e` back at `at` (its own path, or a path under a drill's
/// temporary directory) from the store. Directories are created, files
/// written to a temporary name and renamed over, symlinks and FIFOs made
/// anew. Entries that were not stored are left as they are: `Ok(false)`.
pub fn restore_entry(store: &Path, e: &Entry, at: &Path) -> io::Result<bool> {
    let placed = Entry {
        path: at.to_path_buf(),
        ..e.clone()
    };
    match e.kind {
        Kind::Dir => {
            if !std::fs::symlink_metadata(at).is_ok_and(|m| m.is_dir()) {
                remove_any(at)?;
                std::fs::create_dir_all(at)?;
            }
        }
        Kind::File => {
            let Some(hash) = &e.hash else {
                return Ok(false);
            };
            let content = read_blob(store, hash)?;
            let tmp = at.with_file_name(format!(
                ".upkeep-restore-{}",
                at.file_name().unwrap_or_default().to_string_lossy()
            ));
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&content)?;
            f.sync_all()?;
            let moved = Entry {
                path: tmp.clone(),
                ..placed.clone()
            };
            set_attributes(&moved)?;
            if std::fs::symlink_metadata(at).is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(at)?;
            }
            std::fs::rename(&tmp, at)?;
            return Ok(true);
        }
        Kind::Symlink => {
            let Some(target) = &e.target else {
                return Ok(false);
            };
            remove_any(at)?;
            std::os::unix::fs::symlink(target, at)?;
        }
        Kind::Fifo => {
            if !std::fs::symlink_metadata(at).is_ok_and(|m| m.file_type().is_fifo()) {
                remove_any(at)?;
                use std::os::unix::ffi::OsStrExt;
                let c = std::ffi::CString::new(at.as_os_str().as_bytes())
                    .map_err(|x| io::Error::new(io::ErrorKind::InvalidInput, x))?;
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), e.mode) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Kind::Socket | Kind::Device => return Ok(false),
    }
    set_attributes(&placed)?;
    Ok(true)
}

/// Removes a file, symlink or directory tree; nothing there is fine.
pub fn remove_any(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_stored_once_and_reads_back_with_its_hash() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::fs::write(&a, b"same").unwrap();
        std::fs::write(&b, b"same").unwrap();
        let ha = store_file(&store, &a).unwrap();
        let hb = store_file(&store, &b).unwrap();
        assert_eq!(ha, hb);
        assert_eq!(read_blob(&store, &ha).unwrap(), b"same");
        let blobs = std::fs::read_dir(store.join("blobs").join(&ha[..2]))
            .unwrap()
            .count();
        assert_eq!(blobs, 1);
    }

    #[test]
    fn a_snapshot_held_by_a_drill_keeps_its_manifest_and_blobs_through_prune() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        let f = d.path().join("f");
        let snap = |id: i64, content: &[u8]| {
            std::fs::write(&f, content).unwrap();
            let hash = store_file(&store, &f).unwrap();
            let m = Manifest {
                id: id.to_string(),
                taken_ms: id * 1000,
                entries: vec![Entry {
                    path: f.clone(),
                    kind: Kind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime_ns: 1,
                    size: content.len() as u64,
                    hash: Some(hash.clone()),
                    target: None,
                    not_stored: None,
                }],
            };
            write_manifest(&store, &m).unwrap();
            hash
        };
        let old = snap(1, b"old");
        let (m, held) = hold_newest(&store).unwrap().unwrap();
        assert_eq!(m.id, "1");
        snap(2, b"new");
        // keep = 1: snapshot 1 is surplus but in use, and so is its blob.
        assert_eq!(prune(&store, 1).unwrap(), (0, 0, 1));
        assert_eq!(read_blob(&store, &old).unwrap(), b"old");
        assert_eq!(manifest(&store, "1").unwrap(), m);
        drop(held);
        assert_eq!(prune(&store, 1).unwrap(), (1, 1, 0));
        assert!(read_blob(&store, &old).is_err());
        assert_eq!(hold_newest(&store).unwrap().unwrap().0.id, "2");
    }

    #[test]
    fn changes_are_added_removed_and_modified() {
        let e = |p: &str, h: &str| Entry {
            path: p.into(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
            size: 1,
            hash: Some(h.into()),
            target: None,
            not_stored: None,
        };
        let old = [e("/a", "1"), e("/b", "2")];
        let new = [e("/b", "3"), e("/c", "4")];
        let c: Vec<(String, String)> = changes(&old, &new)
            .into_iter()
            .map(|(k, p)| (k, p.display().to_string()))
            .collect();
        assert_eq!(
            c,
            [
                ("removed".to_string(), "/a".to_string()),
                ("modified".into(), "/b".into()),
                ("added".into(), "/c".into())
            ]
        );
    }
}
