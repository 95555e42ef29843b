//! `run.json` in a run's backup dir: a copy of the run's ledger row, plan
//! and backup state included. It is written when the backup is made and
//! again whenever the backup's state is saved to the ledger, and once more
//! when the run ends or is rolled back, so that the backup dir alone says
//! what it holds and how to put it back: `upkeep maintenance rollback
//! --from-backup DIR` works when the ledger row, or the whole history
//! file, is gone.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::maintenance::ledger::{self, Ledger, RunRow};

/// The file's name in the backup dir.
pub const RUN_FILE: &str = "run.json";

/// What `run.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    /// Where the backup was made: a backup location under it is found
    /// under the dir the file is read from, if the dir was moved.
    pub backup_dir: PathBuf,
    /// The run's ledger row when the file was last written.
    pub run: RunRow,
}

/// Writes `run.json` for `row` into `dir` (which must exist): a new file
/// renamed over the old one, so that a reader never sees half of it.
pub fn write(dir: &Path, row: &RunRow) -> std::io::Result<()> {
    let doc = RunFile {
        backup_dir: dir.to_path_buf(),
        run: row.clone(),
    };
    let text = serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{RUN_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        // The plan names tables and keys: readable by the agent's user only.
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(RUN_FILE))
}

/// Copies run `run_id`'s ledger row into `dir/run.json`. Nothing is
/// written when `dir` does not exist (no backup was made), nor when
/// `only_update` and there is no `run.json` yet.
pub fn save(l: &Ledger, run_id: i64, dir: &Path, only_update: bool) -> Result<(), String> {
    if !dir.is_dir() || (only_update && !dir.join(RUN_FILE).exists()) {
        return Ok(());
    }
    let row = ledger::run_only(l.conn(), run_id)
        .map_err(|e| format!("reading run {run_id} from the ledger: {e}"))?
        .ok_or_else(|| format!("no run {run_id} in the ledger"))?;
    write(dir, &row).map_err(|e| format!("{}: {e}", dir.join(RUN_FILE).display()))
}

/// Reads `dir/run.json`.
pub fn read(dir: &Path) -> Result<RunFile, String> {
    let path = dir.join(RUN_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{} holds no {RUN_FILE}: it is not the backup dir of a maintenance run",
                dir.display()
            ));
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    serde_json::from_slice(&text).map_err(|e| {
        format!(
            "{}: not a maintenance run's {RUN_FILE}: {e}",
            path.display()
        )
    })
}

/// The backup's `location` as found from `dir`: a location under the dir
/// the backup was made in is taken under `dir` when the two differ.
pub fn relocate(location: &str, made_in: &Path, dir: &Path) -> String {
    match Path::new(location).strip_prefix(made_in) {
        Ok(rest) if made_in != dir => dir.join(rest).to_string_lossy().into_owned(),
        _ => location.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maintenance::ledger::{Doc, RunStatus, Trigger};

    #[test]
    fn a_run_file_holds_the_ledger_row_and_reads_back() {
        let data = tempfile::tempdir().unwrap();
        let l = Ledger::open(data.path()).unwrap();
        let id = l
            .start_run("trim", "scratch", Trigger::Cli, false, 1_000)
            .unwrap();
        l.set(id, Doc::Plan, &serde_json::json!({"rows": 3}))
            .unwrap();
        let dir = data.path().join("backups/trim/1");
        save(&l, id, &dir, false).unwrap();
        assert!(!dir.exists(), "no backup dir, no file");
        std::fs::create_dir_all(&dir).unwrap();
        save(&l, id, &dir, true).unwrap();
        assert!(!dir.join(RUN_FILE).exists(), "an update writes no new file");
        save(&l, id, &dir, false).unwrap();
        let f = read(&dir).unwrap();
        assert_eq!(f.run.task, "trim");
        assert_eq!(f.run.status, RunStatus::Running);
        assert_eq!(f.run.plan, Some(serde_json::json!({"rows": 3})));
        assert_eq!(f.backup_dir, dir);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join(RUN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let elsewhere = data.path().join("moved");
        assert_eq!(
            relocate(&dir.join("a.gz").to_string_lossy(), &dir, &elsewhere),
            elsewhere.join("a.gz").to_string_lossy()
        );
        assert_eq!(
            relocate("public.archive", &dir, &elsewhere),
            "public.archive"
        );
        assert!(read(data.path()).unwrap_err().contains("holds no run.json"));
    }
}
