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
