//! `kind = "file_cleanup"`: removes old files under directories, with the
//! safety of systemd-tmpfiles. The plan walks each tree by directory file
//! descriptors (`walk.rs`): no symbolic link is followed, no mount point
//! crossed, files some process holds open are left. A batch reopens each
//! file's directory one level at a time with `O_NOFOLLOW | O_DIRECTORY`,
//! checking every level is still the (dev, inode) planned, checks the
//! file is still the one planned and still old, takes a non-blocking
//! `flock` on it (a locked file is left) and moves it to the run's
//! quarantine (`files::quarantine`) or, with `quarantine = false`, unlinks
//! it. Directories left empty by the run go last. Rollback puts back what
//! the quarantine holds (content, mode, owner, times); with
//! `quarantine = false` a run cannot be rolled back, and its plan says so.

mod run;
mod walk;

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{Probes, TaskKind};
use super::{AnyTask, Backup, Batch, Cx, Plan, Task, TaskError, Verdict};

crate::task_config! {
    /// `[maintenance.NAME] kind = "file_cleanup"`.
    pub struct FileCleanupConfig {
        /// Directories (absolute) whose old files go.
        pub paths: Vec<PathBuf>,
        /// Files older than this (by `age_by`) go.
        #[serde(with = "humantime_serde")]
        pub older_than: Duration,
        /// Which time of a file is its age.
        #[serde(default)]
        pub age_by: AgeBy,
        /// Name globs of the files that may go (a glob with `/` matches
        /// the path below the root); empty: every file.
        #[serde(default)]
        pub r#match: Vec<String>,
        /// Globs of files and directories left alone, as `match`.
        #[serde(default)]
        pub exclude: Vec<String>,
        /// Only files of at least this many bytes go.
        #[serde(default)]
        pub min_size: Option<u64>,
        /// Files kept per directory whatever their age: the newest.
        #[serde(default)]
        pub keep_newest: u64,
        /// Directories the run leaves empty are removed too (never a root).
        #[serde(default = "yes")]
        pub remove_empty_dirs: bool,
        /// Files are moved to the run's quarantine (kept until its backup
        /// is pruned) rather than unlinked; `false`: the run cannot be
        /// rolled back.
        #[serde(default = "yes")]
        pub quarantine: bool,
        /// Let a root be a system path (`/`, `/etc`, `/usr`, …).
        #[serde(default)]
        pub allow_system_path: bool,
        /// Run also outside the schedule and window when the filesystem
        /// holding a path is fuller than this ratio (0 to 1).
        #[serde(default)]
        pub disk_pressure: Option<f64>,
        /// Files per batch.
        #[serde(default = "default_batch_size")]
        pub batch_size: u64,
    }
}

fn yes() -> bool {
    true
}
fn default_batch_size() -> u64 {
    1000
}

/// Which time of a file counts as its age.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgeBy {
    #[default]
    Mtime,
    Atime,
    Ctime,
}

impl AgeBy {
    pub fn name(self) -> &'static str {
        match self {
            AgeBy::Mtime => "mtime",
            AgeBy::Atime => "atime",
            AgeBy::Ctime => "ctime",
        }
    }
}

/// Roots refused unless `allow_system_path`: a root equal to one of these,
/// or above one (`/var` holds `/var/lib`).
const SYSTEM_ROOTS: &[&str] = &[
    "/", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/proc",
    "/sys", "/dev", "/var/lib", "/home", "/root", "/run",
];
/// Trees refused whole, any root under them included.
const SYSTEM_TREES: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/proc",
    "/sys", "/dev",
];

/// Why `root` is a system path, if it is one.
pub fn system_path(root: &Path) -> Option<String> {
    for s in SYSTEM_ROOTS {
        let s = Path::new(s);
        if s.starts_with(root) {
            return Some(if s == root {
                format!("{} is a system path", root.display())
            } else {
                format!("{} holds the system path {}", root.display(), s.display())
            });
        }
    }
    SYSTEM_TREES
        .iter()
        .find(|t| root.starts_with(t))
        .map(|t| format!("{} is under the system path {t}", root.display()))
}

/// `path` without `.` and repeated or trailing `/`; `None` when it has `..`.
fn normal(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => return None,
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// Compiles globs, naming the bad one.
pub fn globs(list: &[String]) -> Result<Vec<glob::Pattern>, String> {
    list.iter()
        .map(|g| glob::Pattern::new(g).map_err(|e| format!("`{g}`: {e}")))
        .collect()
}

impl FileCleanupConfig {
    /// Problems of the kind's own fields, as (field, message).
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.paths.is_empty() {
            out.push(("paths", "must name at least one directory".into()));
        }
        for p in &self.paths {
            if !p.is_absolute() {
                out.push(("paths", format!("{} must be an absolute path", p.display())));
                continue;
            }
            let Some(n) = normal(p) else {
                out.push(("paths", format!("{} must not contain `..`", p.display())));
                continue;
            };
            if !self.allow_system_path
                && let Some(why) = system_path(&n)
            {
                out.push((
                    "paths",
                    format!("{why}; set allow_system_path = true to clean it anyway"),
                ));
            }
        }
        if self.older_than < Duration::from_secs(60) {
            out.push((
                "older_than",
                "must be at least 1m: an age this short is more likely a typo".into(),
            ));
        }
        for (field, list) in [("match", &self.r#match), ("exclude", &self.exclude)] {
            if let Err(e) = globs(list) {
                out.push((field, e));
            }
        }
        if let Some(r) = self.disk_pressure
            && !(r > 0.0 && r < 1.0)
        {
            out.push(("disk_pressure", "must be a ratio between 0 and 1".into()));
        }
        if !(1..=100_000).contains(&self.batch_size) {
            out.push(("batch_size", "must be 1 to 100000".into()));
        }
        out
    }

    /// The roots as the walk opens them.
    pub fn roots(&self) -> Vec<PathBuf> {
        self.paths
            .iter()
            .map(|p| normal(p).unwrap_or_else(|| p.clone()))
            .collect()
    }
}

impl TaskKind for FileCleanupConfig {
    fn probe(&self) -> Option<&str> {
        None
    }
    fn validate(&self, _probes: &Probes) -> Vec<(&'static str, String)> {
        self.check()
    }
    fn build(&self, name: &str, _probes: &Probes) -> Option<AnyTask> {
        Some(Box::new(FileCleanupTask {
            inner: Arc::new(Mutex::new(run::Run::new(name, self.clone()))),
            quarantine: self.quarantine,
        }))
    }
    fn batch_size(&self) -> u64 {
        self.batch_size
    }
    fn disk_pressure(&self) -> Option<(f64, Vec<PathBuf>)> {
        Some((self.disk_pressure?, self.roots()))
    }
}

/// The task; its run's state lives behind a lock so each step can run on
/// the blocking pool.
pub struct FileCleanupTask {
    inner: Arc<Mutex<run::Run>>,
    quarantine: bool,
}

impl FileCleanupTask {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut run::Run) -> Result<T, TaskError> + Send + 'static,
    ) -> Result<T, TaskError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock().expect("file_cleanup state")))
            .await
            .map_err(|e| TaskError::failed(format!("file_cleanup step panicked: {e}")))?
    }
}

impl Task for FileCleanupTask {
    async fn figures(&mut self) -> Result<serde_json::Value, TaskError> {
        self.blocking(|r| Ok(r.figures())).await
    }

    async fn plan(&mut self, cx: &Cx) -> Result<Plan, TaskError> {
        let cx = cx.clone();
        self.blocking(move |r| r.plan(&cx)).await
    }

    fn backup_bytes(&self, plan: &Plan) -> u64 {
        // Renamed within a filesystem the quarantine costs nothing; copied
        // to another, as much as the files.
        if plan.details["quarantine_copies"].as_bool() == Some(true) {
            plan.bytes
        } else {
            0
        }
    }

    async fn backup(&mut self, cx: &Cx, _plan: &Plan) -> Result<Backup, TaskError> {
        let cx = cx.clone();
        self.blocking(move |r| r.backup(&cx)).await
    }

    async fn apply_batch(&mut self, _cx: &Cx, _plan: &Plan, size: u64) -> Result<Batch, TaskError> {
        self.blocking(move |r| r.batch(size)).await
    }

    fn backup_state(&self) -> Option<Backup> {
        self.inner
            .lock()
            .expect("file_cleanup state")
            .backup_state()
    }

    async fn validate(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Verdict, TaskError> {
        self.blocking(|r| r.validate()).await
    }

    async fn rollback(&mut self, cx: &Cx, backup: &Backup) -> Result<Verdict, TaskError> {
        let (cx, backup) = (cx.clone(), backup.clone());
        self.blocking(move |_| run::rollback(&cx, &backup)).await
    }

    fn reversible(&self) -> bool {
        self.quarantine
    }
}

#[cfg(test)]
mod tests {
    fn config(extra: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse(
            "t.toml",
            &format!("[maintenance.tmp]\nkind = \"file_cleanup\"\nolder_than = \"7d\"\n{extra}"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn system_roots_are_refused_unless_allowed() {
        for root in [
            "/",
            "/etc",
            "/usr/local/tmp",
            "/var/lib",
            "/var",
            "/home",
            "/lib64",
            "/etc/",
        ] {
            let err = config(&format!("paths = [\"{root}\"]\n")).unwrap_err();
            assert!(err.contains("maintenance.tmp.paths"), "{root}: {err}");
            assert!(err.contains("allow_system_path"), "{root}: {err}");
        }
        for root in [
            "/var/tmp/app",
            "/var/lib/app/cache",
            "/home/app/tmp",
            "/srv/x",
        ] {
            config(&format!("paths = [\"{root}\"]\n")).unwrap_or_else(|e| panic!("{root}: {e}"));
        }
        config("paths = [\"/var/lib\"]\nallow_system_path = true\n").unwrap();
        let err = config("paths = [\"/srv/../etc\"]\n").unwrap_err();
        assert!(err.contains("must not contain `..`"), "{err}");
    }

    #[test]
    fn bad_fields_are_each_named() {
        let err = config("paths = [\"rel\"]\nmatch = [\"[\"]\ndisk_pressure = 1.5\n").unwrap_err();
        for want in [
            "rel must be an absolute path",
            "maintenance.tmp.match: `[`",
            "disk_pressure: must be a ratio",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
        let err = crate::config::Config::parse(
            "t.toml",
            "[maintenance.tmp]\nkind = \"file_cleanup\"\npaths = [\"/srv/x\"]\nolder_than = \"5s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("older_than: must be at least 1m"), "{err}");
        let err = config("paths = [\"/srv/x\"]\nage_by = \"btime\"\n").unwrap_err();
        // Line 5 is age_by's.
        assert!(
            err.contains("t.toml:5:") && err.contains("`btime`"),
            "{err}"
        );
        let err = config("paths = [\"/srv/x\"]\nolder_then = \"1d\"\n").unwrap_err();
        assert!(err.contains("older_then"), "{err}");
    }
}
