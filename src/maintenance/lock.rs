//! One run of a task at a time, across processes: an exclusive lock
//! (flock) on `data_dir/maintenance/NAME.lock`, held for the whole run. The
//! file names the holder (pid, trigger, start) so that the one refused can
//! say who has it. The kernel drops the lock when the holder dies, so a
//! killed run never leaves the task locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::ledger::Trigger;

/// A held task lock; released on drop.
#[derive(Debug)]
pub struct TaskLock {
    file: File,
    path: PathBuf,
}

/// What a try at a noted lock found.
#[derive(Debug)]
pub enum Flock {
    /// Held until the file is closed (or the process dies).
    Taken(File),
    /// Someone else holds it: their note, maybe empty.
    Busy(String),
}

/// Why a noted lock could not be tried.
#[derive(Debug)]
pub enum FlockError {
    Open(std::io::Error),
    Lock(std::io::Error),
}

/// Takes an exclusive flock on `path` (created when missing) without
/// waiting, and writes `note()` into the file so that the one refused can
/// say who has it. Shared by the task locks and the agent's lock on its
/// data dir.
pub fn try_flock(path: &Path, note: impl FnOnce() -> String) -> Result<Flock, FlockError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(FlockError::Open)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Ok(Flock::Busy(holder.trim().to_string()));
        }
        Err(TryLockError::Error(e)) => return Err(FlockError::Lock(e)),
    }
    // The lock holds even if the note cannot be written.
    let _ = file.set_len(0);
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.write_all(note().as_bytes());
    let _ = file.flush();
    Ok(Flock::Taken(file))
}

impl TaskLock {
    /// Takes the lock of `task` or says who holds it.
    pub fn try_take(data_dir: &Path, task: &str, trigger: Trigger) -> Result<TaskLock, String> {
        let dir = data_dir.join("maintenance");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("{task}.lock"));
        let note = || {
            format!(
                "pid {}, started by {} at {}",
                std::process::id(),
                trigger.as_str(),
                crate::fmt::rfc3339(crate::sample::now_ms())
            )
        };
        match try_flock(&path, note) {
            Ok(Flock::Taken(file)) => Ok(TaskLock { file, path }),
            Ok(Flock::Busy(holder)) => Err(format!(
                "task `{task}` is already running{}; this run is refused",
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" ({holder})")
                }
            )),
            Err(FlockError::Open(e)) => Err(format!("{}: {e}", path.display())),
            Err(FlockError::Lock(e)) => Err(format!("{}: cannot lock: {e}", path.display())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TaskLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_naming_the_holder_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = TaskLock::try_take(dir.path(), "audit-log", Trigger::Schedule).unwrap();
        let err = TaskLock::try_take(dir.path(), "audit-log", Trigger::Cli).unwrap_err();
        assert!(
            err.starts_with("task `audit-log` is already running (pid "),
            "{err}"
        );
        assert!(err.contains("started by schedule"), "{err}");
        // Another task is not affected.
        let other = TaskLock::try_take(dir.path(), "analyze", Trigger::Cli).unwrap();
        drop(first);
        let again = TaskLock::try_take(dir.path(), "audit-log", Trigger::Cli).unwrap();
        drop((again, other));
    }
}
