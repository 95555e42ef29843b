//! The modes of what a run writes under `data_dir/backups`: the rows a
//! task took out of a database are as private as the database, whatever
//! the umask of the process that runs the task (the agent's unit sets
//! 0027; a shell running `upkeep maintenance run` may have 0022 or 0000).
//! The runner creates the run's backup dir here, and each task creates its
//! files with [`FILE_MODE`].

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Backup directories: the agent's user and group, as the unit's umask
/// leaves them. The umask may only take more away.
pub const DIR_MODE: u32 = 0o750;
/// Backup files, likewise.
pub const FILE_MODE: u32 = 0o640;

/// Creates `dir` and any missing parent with [`DIR_MODE`].
pub fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// A backup someone is reading (a restore drill restoring it): a shared
/// flock on the backup's directory or file, held until dropped. Whatever
/// removes backups (a task pruning past `keep`, the runner's pruning)
/// first takes the exclusive lock without waiting ([`try_claim`]) and
/// leaves a backup in use for a later pass. The kernel drops the lock when
/// its holder dies, so a killed drill never pins a backup.
#[derive(Debug)]
pub struct InUse {
    _file: std::fs::File,
}

/// The right to remove a backup, held while it is removed.
#[derive(Debug)]
pub struct Claim {
    _file: std::fs::File,
}

/// Marks `path` in use, waiting while a removal holds it (a removal holds
/// it only while it deletes). The caller checks afterwards that what it
/// chose is still there: a removal may have come between its choice and
/// this lock.
pub fn hold(path: &Path) -> io::Result<InUse> {
    let f = std::fs::File::open(path)?;
    f.lock_shared()?;
    Ok(InUse { _file: f })
}

/// The exclusive lock on `path` without waiting: `None` while someone
/// holds it in use. A path that is gone is `NotFound`.
pub fn try_claim(path: &Path) -> io::Result<Option<Claim>> {
    let f = std::fs::File::open(path)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(Claim { _file: f })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_in_use_cannot_be_claimed_until_it_is_let_go() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("7");
        create_dir(&dir).unwrap();
        let a = hold(&dir).unwrap();
        let b = hold(&dir).unwrap();
        assert!(try_claim(&dir).unwrap().is_none(), "two readers hold it");
        drop(a);
        assert!(
            try_claim(&dir).unwrap().is_none(),
            "one reader still holds it"
        );
        drop(b);
        let claim = try_claim(&dir).unwrap();
        assert!(claim.is_some(), "free once every reader let go");
        std::fs::remove_dir_all(&dir).unwrap();
        drop(claim);
        assert_eq!(try_claim(&dir).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
