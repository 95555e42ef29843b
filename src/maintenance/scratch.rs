//! `kind = "scratch"`, compiled into unit tests only: a task kind that needs
//! no probe. It creates numbered files in a directory, a batch at a time,
//! and rolls back by removing the files it created. It shows that the
//! runner drives a kind without assuming PostgreSQL: no probe, no guard,
//! the window alone gating the run.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::config::{Probes, TaskKind};
use super::{AnyTask, Backup, Batch, Cx, Plan, Task, TaskError, Verdict};

crate::task_config! {
    /// `[maintenance.NAME] kind = "scratch"`.
    pub struct ScratchConfig {
        /// Where the files go.
        pub dir: PathBuf,
        /// How many files a run makes.
        pub files: u64,
        /// Report a failed validation (to exercise the rollback).
        #[serde(default)]
        pub fail_validation: bool,
    }
}

impl TaskKind for ScratchConfig {
    fn probe(&self) -> Option<&str> {
        None
    }
    fn validate(&self, _probes: &Probes) -> Vec<(&'static str, String)> {
        if self.dir.is_absolute() {
            Vec::new()
        } else {
            vec![("dir", "must be an absolute path".into())]
        }
    }
    fn build(&self, _name: &str, _probes: &Probes) -> Option<AnyTask> {
        Some(Box::new(ScratchTask {
            config: self.clone(),
            created: Vec::new(),
        }))
    }
    fn batch_size(&self) -> u64 {
        2
    }
}

struct ScratchTask {
    config: ScratchConfig,
    /// Files made by this run, recorded before each is made.
    created: Vec<String>,
}

fn file(dir: &Path, i: u64) -> PathBuf {
    dir.join(format!("scratch-{i}"))
}

fn io(e: std::io::Error) -> TaskError {
    TaskError::failed(e.to_string())
}

impl ScratchTask {
    fn missing(&self) -> Vec<u64> {
        (0..self.config.files)
            .filter(|i| !file(&self.config.dir, *i).exists())
            .collect()
    }
}

impl Task for ScratchTask {
    async fn figures(&mut self) -> Result<serde_json::Value, TaskError> {
        let n = std::fs::read_dir(&self.config.dir).map_err(io)?.count();
        Ok(json!({ "files": n }))
    }

    async fn plan(&mut self, _cx: &Cx) -> Result<Plan, TaskError> {
        let missing = self.missing();
        Ok(Plan {
            summary: format!("create {} files", missing.len()),
            rows: missing.len() as u64,
            bytes: 0,
            details: json!({ "missing": missing }),
        })
    }

    fn backup_bytes(&self, _plan: &Plan) -> u64 {
        0
    }

    async fn backup(&mut self, cx: &Cx, _plan: &Plan) -> Result<Backup, TaskError> {
        Ok(Backup {
            location: cx.backup_dir.display().to_string(),
            rows: 0,
            bytes: 0,
            details: json!({ "files": [] }),
        })
    }

    async fn apply_batch(&mut self, _cx: &Cx, _plan: &Plan, size: u64) -> Result<Batch, TaskError> {
        let todo: Vec<u64> = self.missing().into_iter().take(size as usize).collect();
        for i in &todo {
            let path = file(&self.config.dir, *i);
            self.created.push(path.display().to_string());
            std::fs::write(&path, b"scratch").map_err(io)?;
        }
        Ok(Batch {
            rows: todo.len() as u64,
            archived: 0,
            detail: format!("{} files", todo.len()),
            done: self.missing().is_empty(),
        })
    }

    fn backup_state(&self) -> Option<Backup> {
        Some(Backup {
            location: self.config.dir.display().to_string(),
            rows: self.created.len() as u64,
            bytes: 0,
            details: json!({ "files": self.created }),
        })
    }

    async fn validate(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Verdict, TaskError> {
        let missing = self.missing().len();
        let ok = missing == 0 && !self.config.fail_validation;
        Ok(Verdict {
            ok,
            detail: format!("{missing} files missing"),
            figures: json!({ "missing": missing }),
        })
    }

    async fn rollback(&mut self, _cx: &Cx, backup: &Backup) -> Result<Verdict, TaskError> {
        let files: Vec<String> =
            serde_json::from_value(backup.details["files"].clone()).unwrap_or_default();
        for f in &files {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        let left = files.iter().filter(|f| Path::new(f).exists()).count();
        Ok(Verdict {
            ok: left == 0,
            detail: format!("removed {} files, {left} left", files.len() - left),
            figures: json!({ "left": left }),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use crate::config::Config;
    use crate::maintenance::ledger::{self, Ledger, Trigger};
    use crate::maintenance::runner::{Request, Runner};

    fn config(dir: &std::path::Path, extra: &str) -> Config {
        let text = format!(
            "[maintenance.make]\nkind = \"scratch\"\ndir = \"{}\"\nfiles = 5\nwindow = \"00:00-00:01\"\ntimezone = \"UTC\"\n{extra}",
            dir.display()
        );
        Config::parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn runner(config: Config, data_dir: &std::path::Path) -> Runner {
        Runner {
            config: Arc::new(config),
            data_dir: data_dir.to_path_buf(),
            stop: CancellationToken::new(),
        }
    }

    fn request(ignore_window: bool) -> Request {
        Request {
            task: "make".into(),
            trigger: Trigger::Cli,
            dry_run: false,
            ignore_window,
        }
    }

    #[test]
    fn a_kind_without_a_probe_validates_with_no_probe_configured() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "");
        assert!(c.probe.is_empty());
        assert_eq!(c.maintenance["make"].guards(), Vec::<String>::new());
        // Its own checks still run.
        let err = Config::parse(
            "t.toml",
            "[maintenance.make]\nkind = \"scratch\"\ndir = \"rel\"\nfiles = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("maintenance.make.dir: must be an absolute path"),
            "{err}"
        );
        // A guard it names must exist.
        let err = Config::parse(
            "t.toml",
            &format!(
                "[maintenance.make]\nkind = \"scratch\"\ndir = \"{}\"\nfiles = 1\nguard = [\"db\"]\n",
                dir.path().display()
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no probe `db` is configured"), "{err}");
    }

    #[tokio::test]
    async fn a_kind_without_a_probe_runs_gated_by_its_window_alone() {
        let target = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let r = runner(config(target.path(), ""), data.path());
        let done = r.run(request(true), None, None).await.unwrap();
        assert_eq!(done.status, "succeeded", "{:?}", done.error);
        for i in 0..5 {
            assert!(target.path().join(format!("scratch-{i}")).exists());
        }
        let l = Ledger::open(data.path()).unwrap();
        let (row, steps) = ledger::run(l.conn(), done.run_id).unwrap().unwrap();
        assert_eq!(row.rows_changed, 5);
        assert_eq!(row.batches, 3, "batches of 2: 2 + 2 + 1");
        let gate = steps.iter().find(|s| s.step == "gate").unwrap();
        assert!(gate.detail.contains("no guard"), "{}", gate.detail);
    }

    #[tokio::test]
    async fn outside_its_window_a_kind_without_a_guard_is_refused() {
        let target = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        // A window that is never open now: the minute before the current one.
        let now = chrono::Utc::now() - chrono::Duration::minutes(2);
        let window = format!(
            "{}-{}",
            now.format("%H:%M"),
            (now + chrono::Duration::minutes(1)).format("%H:%M")
        );
        let text = format!(
            "[maintenance.make]\nkind = \"scratch\"\ndir = \"{}\"\nfiles = 5\nwindow = \"{window}\"\ntimezone = \"UTC\"\n",
            target.path().display()
        );
        let r = runner(Config::parse("t.toml", &text).unwrap(), data.path());
        let done = r.run(request(false), None, None).await.unwrap();
        assert_eq!(done.status, "refused", "{:?}", done.error);
        assert!(!target.path().join("scratch-0").exists());
    }

    #[tokio::test]
    async fn a_failed_validation_rolls_back_a_kind_without_a_probe() {
        let target = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let r = runner(
            config(target.path(), "fail_validation = true\n"),
            data.path(),
        );
        let done = r.run(request(true), None, None).await.unwrap();
        assert_eq!(done.status, "rolled_back", "{:?}", done.error);
        assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
    }
}
