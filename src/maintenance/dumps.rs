//! The on-disk layout of PostgreSQL dumps, shared by the kind that makes
//! them (`postgres_backup`) and the kind that restores them
//! (`restore_drill`): one directory per run, `DEST/RUN_ID/`, holding the
//! dump (`dump`, or `dump.d/` in directory format) and, once the dump is
//! checked, `dump.json` ([`DumpMeta`]: its sha256, size, database, server
//! version, times). A dump is complete only when `dump.json` is there:
//! pg_dump writes `dump.partial`, renamed after it exits 0, and
//! `dump.json` is written (and fsynced, then renamed) after `pg_restore
//! --list` read the dump back. A process killed on the way leaves no
//! `dump.json`, so its dump is never taken for complete, and the next run
//! removes it.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::backup_files::{FILE_MODE, InUse, create_dir, hold, try_claim};

/// The completion record of a dump.
pub const META: &str = "dump.json";
/// What pg_dump writes into; renamed once it exits 0.
pub const PARTIAL: &str = "dump.partial";

/// pg_dump's output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One compressed file (`pg_dump -Fc`); restores with `--jobs` too.
    #[default]
    Custom,
    /// A directory of one file per table (`pg_dump -Fd`), dumped with `jobs`.
    Directory,
}

impl Format {
    /// The finished dump's name in its run directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Custom => "dump",
            Format::Directory => "dump.d",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Custom => "custom",
            Format::Directory => "directory",
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            Format::Custom => "--format=custom",
            Format::Directory => "--format=directory",
        }
    }
}

/// What `dump.json` records of a complete dump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpMeta {
    pub task: String,
    pub run_id: i64,
    pub format: Format,
    /// The dump's name in its run directory.
    pub file: String,
    /// Of the file; of a directory, of its files' names and hashes.
    pub sha256: String,
    pub bytes: u64,
    pub database: String,
    pub server_major: u32,
    /// The pg_dump that made it (path and major version).
    pub pg_dump: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// Entries `pg_restore --list` read from it.
    pub toc_entries: u64,
}

/// The dumps' directory of a task: `dest`, else `DATA_DIR/backups/TASK`.
pub fn dest(configured: Option<&Path>, data_dir: &Path, task: &str) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join("backups").join(task))
}

/// The directory of run `run_id`'s dump.
pub fn run_dir(dest: &Path, run_id: i64) -> PathBuf {
    dest.join(run_id.to_string())
}

/// Hex sha256 of a file, or of a directory (its files in name order,
/// each as "HASH  NAME\n").
pub fn sha256(path: &Path) -> io::Result<String> {
    if !path.is_dir() {
        return sha256_file(path);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    names.sort();
    let mut h = Sha256::new();
    for p in names {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        h.update(format!("{}  {name}\n", sha256(&p)?).as_bytes());
    }
    Ok(hex(&h.finalize()))
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes under `path` (a file or a directory).
pub fn size(path: &Path) -> io::Result<u64> {
    let m = std::fs::symlink_metadata(path)?;
    if !m.is_dir() {
        return Ok(m.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(path)? {
        total += size(&e?.path())?;
    }
    Ok(total)
}

/// fsyncs a file, or every file of a directory and the directory.
pub fn sync(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            sync(&e?.path())?;
        }
    }
    std::fs::File::open(path)?.sync_all()
}

/// Writes `dump.json` into `dir`: to a temporary name, fsynced, renamed,
/// the directory fsynced, so that it exists whole or not at all.
pub fn write_meta(dir: &Path, meta: &DumpMeta) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join("dump.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(meta).expect("serializable"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(META))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The complete dumps under `dest` (directories with a readable
/// `dump.json`), oldest first.
pub fn complete(dest: &Path) -> Vec<(PathBuf, DumpMeta)> {
    let Ok(entries) = std::fs::read_dir(dest) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, DumpMeta)> = entries
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read(e.path().join(META)).ok()?;
            let meta: DumpMeta = serde_json::from_slice(&text).ok()?;
            Some((e.path(), meta))
        })
        .collect();
    out.sort_by_key(|(_, m)| (m.finished_ms, m.run_id));
    out
}

/// The newest complete dump under `dest`.
pub fn newest(dest: &Path) -> Option<(PathBuf, DumpMeta)> {
    complete(dest).pop()
}

/// Removes the dumps of run directories under `dest` that have no
/// `dump.json` (a run killed, failed or cancelled on the way), except in
/// `current`. The run directories themselves stay: the runner's pruning
/// owns them. Returns what was removed.
pub fn remove_incomplete(dest: &Path, current: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dest) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        if dir == current || !dir.is_dir() || dir.join(META).exists() {
            continue;
        }
        for name in [
            PARTIAL,
            Format::Custom.file_name(),
            Format::Directory.file_name(),
        ] {
            let p = dir.join(name);
            if remove_any(&p).is_ok() {
                removed.push(p);
            }
        }
    }
    removed
}

fn remove_any(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p)? {
        m if m.is_dir() => std::fs::remove_dir_all(p),
        _ => std::fs::remove_file(p),
    }
}

/// What [`prune`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Pruned {
    /// Run directories whose dump was removed.
    pub removed: Vec<PathBuf>,
    /// Past `keep` but in use (a drill restoring it): left for the next
    /// run's pruning.
    pub in_use: Vec<PathBuf>,
}

/// Removes the oldest complete dumps past the newest `keep` (the dump and
/// its `dump.json`; `dump.json` first, so that a crash in between leaves
/// an incomplete dump, never a record of a dump that is gone). A dump in
/// use ([`hold`]) stays: with `keep = 1` the dump a drill is restoring is
/// the one a new dump makes surplus.
pub fn prune(dest: &Path, keep: usize) -> io::Result<Pruned> {
    let all = complete(dest);
    let extra = all.len().saturating_sub(keep);
    let mut out = Pruned::default();
    for (dir, meta) in all.into_iter().take(extra) {
        let claim = match try_claim(&dir) {
            Ok(Some(c)) => c,
            Ok(None) => {
                out.in_use.push(dir);
                continue;
            }
            // Removed meanwhile (another pruning got there first).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match std::fs::remove_file(dir.join(META)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            r => r?,
        }
        remove_any(&dir.join(&meta.file))?;
        drop(claim);
        out.removed.push(dir);
    }
    Ok(out)
}

/// The newest complete dump under `dest`, held in use ([`hold`]) so that
/// no pruning removes it until the hold is dropped. A dump chosen and then
/// removed before the hold took (a pruning in between) is passed over for
/// the newest again.
pub fn hold_newest(dest: &Path) -> io::Result<Option<(PathBuf, DumpMeta, InUse)>> {
    loop {
        let Some((dir, meta)) = newest(dest) else {
            return Ok(None);
        };
        let held = match hold(&dir) {
            Ok(h) => h,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // A pruning removes dump.json first, under the exclusive lock: if
        // it is still there and the same, the dump is whole and now safe.
        let again: Option<DumpMeta> = std::fs::read(dir.join(META))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        if again.as_ref() == Some(&meta) {
            return Ok(Some((dir, meta, held)));
        }
    }
}

/// Creates `dir` (and its parents) with the backup directory mode.
pub fn create(dir: &Path) -> io::Result<()> {
    create_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(run_id: i64, finished_ms: i64) -> DumpMeta {
        DumpMeta {
            task: "t".into(),
            run_id,
            format: Format::Custom,
            file: "dump".into(),
            sha256: String::new(),
            bytes: 1,
            database: "db".into(),
            server_major: 15,
            pg_dump: "pg_dump 15".into(),
            started_ms: finished_ms - 1,
            finished_ms,
            toc_entries: 1,
        }
    }

    fn dump(dest: &Path, run_id: i64, finished_ms: i64, complete: bool) -> PathBuf {
        let dir = run_dir(dest, run_id);
        create(&dir).unwrap();
        std::fs::write(dir.join("dump"), b"x").unwrap();
        if complete {
            write_meta(&dir, &meta(run_id, finished_ms)).unwrap();
        }
        dir
    }

    #[test]
    fn only_dumps_with_their_record_count_and_the_newest_is_last() {
        let d = tempfile::tempdir().unwrap();
        dump(d.path(), 1, 100, true);
        dump(d.path(), 2, 300, false);
        dump(d.path(), 3, 200, true);
        let ids: Vec<i64> = complete(d.path()).iter().map(|(_, m)| m.run_id).collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(newest(d.path()).unwrap().1.run_id, 3);
    }

    #[test]
    fn incomplete_dumps_go_but_not_the_current_runs_and_not_the_run_dirs() {
        let d = tempfile::tempdir().unwrap();
        let done = dump(d.path(), 1, 100, true);
        let killed = dump(d.path(), 2, 0, false);
        std::fs::write(killed.join(PARTIAL), b"half").unwrap();
        std::fs::write(killed.join("run.json"), b"{}").unwrap();
        let current = dump(d.path(), 3, 0, false);
        let removed = remove_incomplete(d.path(), &current);
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(done.join("dump").exists());
        assert!(!killed.join("dump").exists() && !killed.join(PARTIAL).exists());
        assert!(killed.join("run.json").exists());
        assert!(current.join("dump").exists());
    }

    #[test]
    fn prune_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        for i in 1..=4 {
            dump(d.path(), i, i * 10, true);
        }
        let pruned = prune(d.path(), 2).unwrap();
        assert_eq!(pruned.removed.len(), 2);
        assert!(pruned.in_use.is_empty());
        let ids: Vec<i64> = complete(d.path()).iter().map(|(_, m)| m.run_id).collect();
        assert_eq!(ids, vec![3, 4]);
        assert!(!run_dir(d.path(), 1).join("dump").exists());
    }

    #[test]
    fn a_dump_held_by_a_drill_outlives_prune_and_goes_at_the_next_one() {
        let d = tempfile::tempdir().unwrap();
        dump(d.path(), 1, 10, true);
        let (dir, meta, held) = hold_newest(d.path()).unwrap().unwrap();
        assert_eq!(meta.run_id, 1);
        // keep = 1 and a newer dump: run 1 is surplus but in use.
        dump(d.path(), 2, 20, true);
        let pruned = prune(d.path(), 1).unwrap();
        assert_eq!(pruned.removed, Vec::<PathBuf>::new());
        assert_eq!(pruned.in_use, vec![dir.clone()]);
        assert!(dir.join("dump").exists() && dir.join(META).exists());
        drop(held);
        let pruned = prune(d.path(), 1).unwrap();
        assert_eq!(pruned.removed, vec![dir.clone()]);
        assert!(!dir.join("dump").exists());
        assert_eq!(hold_newest(d.path()).unwrap().unwrap().1.run_id, 2);
    }

    #[test]
    fn hold_newest_passes_over_a_dump_pruned_before_the_hold() {
        let d = tempfile::tempdir().unwrap();
        let one = dump(d.path(), 1, 10, true);
        dump(d.path(), 2, 20, true);
        // A pruning holding run 2 while it removes its record: a drill
        // choosing now waits for it, then finds the record gone.
        let claim = try_claim(&run_dir(d.path(), 2)).unwrap().unwrap();
        let dest = d.path().to_path_buf();
        let drill = std::thread::spawn(move || hold_newest(&dest).unwrap().map(|h| h.1.run_id));
        std::thread::sleep(std::time::Duration::from_millis(200));
        std::fs::remove_file(run_dir(d.path(), 2).join(META)).unwrap();
        drop(claim);
        assert_eq!(drill.join().unwrap(), Some(1));
        assert!(one.join("dump").exists());
    }

    #[test]
    fn a_directory_hash_changes_with_any_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"1").unwrap();
        std::fs::write(d.path().join("b"), b"2").unwrap();
        let before = sha256(d.path()).unwrap();
        assert_eq!(before, sha256(d.path()).unwrap());
        std::fs::write(d.path().join("b"), b"3").unwrap();
        assert_ne!(before, sha256(d.path()).unwrap());
        assert_eq!(
            sha256_file(&d.path().join("a")).unwrap(),
            "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"
        );
    }
}
