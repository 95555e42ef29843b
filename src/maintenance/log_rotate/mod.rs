//! `kind = "log_rotate"`: rotates log files without losing a line. With
//! `method = "reopen"` the live file is renamed, the writer told to
//! reopen (a signal to its pidfile's pid, or `reopen_command`), and the
//! renamed file compressed once no process holds it. With
//! `method = "copytruncate"` (writers that cannot reopen) the
//! block-aligned prefix is copied and then removed from the live file
//! with `fallocate(FALLOC_FL_COLLAPSE_RANGE)`: an `O_APPEND` writer goes
//! on appending and nothing is lost; where the filesystem refuses
//! collapse (tmpfs, NFS, btrfs) it falls back to copy-then-truncate and
//! counts the bytes lost. Generations past `keep` or `max_total` go to the
//! run's quarantine, which a rollback empties back; a rollback does not
//! un-rotate the live file. One file per batch (`rotate.rs`), compression
//! verified by decompressing (`compress.rs`), the writer told in
//! `signal.rs`.

mod compress;
mod rotate;
mod signal;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::config::{Probes, TaskKind};
use super::files::quarantine::{self, Quarantine};
use super::files::{fs_usage, show};
use super::{AnyTask, Backup, Batch, Cx, Plan, Task, TaskError, Verdict};
use crate::fmt::bytes;
pub use compress::Compress;
use rotate::Rotated;

crate::task_config! {
    /// `[maintenance.NAME] kind = "log_rotate"`.
    pub struct LogRotateConfig {
        /// Globs of absolute paths of the logs.
        pub paths: Vec<String>,
        /// `"reopen"` or `"copytruncate"`.
        pub method: Method,
        /// Rotate a file larger than this many bytes.
        #[serde(default)]
        pub size: Option<u64>,
        /// Rotate a file whose last change is older than this.
        #[serde(default, with = "humantime_serde")]
        pub age: Option<Duration>,
        /// Rotated generations kept.
        #[serde(default = "default_keep")]
        pub keep: u32,
        /// Bytes all rotated generations of a file may take.
        #[serde(default)]
        pub max_total: Option<u64>,
        #[serde(default)]
        pub compress: Compress,
        /// Compress a generation one rotation later (`NAME.1` stays plain).
        #[serde(default)]
        pub delay_compress: bool,
        /// reopen: the writer's pidfile, signalled with `reopen_signal`.
        #[serde(default)]
        pub pidfile: Option<PathBuf>,
        #[serde(default = "default_signal")]
        pub reopen_signal: String,
        /// reopen: a command (argv, no shell) that makes the writer reopen.
        #[serde(default)]
        pub reopen_command: Option<Vec<String>>,
        /// reopen: how long the writer may take to let go of the renamed file.
        #[serde(default = "default_reopen_timeout", with = "humantime_serde")]
        pub reopen_timeout: Duration,
        /// Run also outside the schedule and window when the filesystem
        /// holding the logs is fuller than this ratio (0 to 1).
        #[serde(default)]
        pub disk_pressure: Option<f64>,
    }
}

fn default_keep() -> u32 {
    7
}
fn default_signal() -> String {
    "HUP".into()
}
fn default_reopen_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Reopen,
    Copytruncate,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Reopen => "reopen",
            Method::Copytruncate => "copytruncate",
        }
    }
}

impl LogRotateConfig {
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.paths.is_empty() {
            out.push(("paths", "must name at least one log".into()));
        }
        for p in &self.paths {
            if !p.starts_with('/') {
                out.push(("paths", format!("{p} must be an absolute path")));
            } else if let Err(e) = glob::Pattern::new(p) {
                out.push(("paths", format!("`{p}`: {e}")));
            }
        }
        if !(1..=1000).contains(&self.keep) {
            out.push(("keep", "must be 1 to 1000".into()));
        }
        match self.method {
            Method::Reopen => match (&self.pidfile, &self.reopen_command) {
                (None, None) => out.push((
                    "method",
                    "reopen needs pidfile (signalled with reopen_signal) or reopen_command".into(),
                )),
                (Some(_), Some(_)) => out.push((
                    "reopen_command",
                    "give pidfile or reopen_command, not both".into(),
                )),
                (Some(p), None) if !p.is_absolute() => {
                    out.push(("pidfile", "must be an absolute path".into()))
                }
                (None, Some(argv)) if argv.is_empty() || argv[0].is_empty() => {
                    out.push(("reopen_command", "must name a program".into()))
                }
                _ => {}
            },
            Method::Copytruncate => {
                if self.pidfile.is_some() || self.reopen_command.is_some() {
                    out.push((
                        "method",
                        "copytruncate tells no writer: pidfile and reopen_command are for reopen"
                            .into(),
                    ));
                }
            }
        }
        if signal::signal_named(&self.reopen_signal).is_none() {
            out.push((
                "reopen_signal",
                format!(
                    "`{}` is not one of HUP, USR1, USR2, INT, TERM, QUIT, WINCH",
                    self.reopen_signal
                ),
            ));
        }
        if let Some(r) = self.disk_pressure
            && !(r > 0.0 && r < 1.0)
        {
            out.push(("disk_pressure", "must be a ratio between 0 and 1".into()));
        }
        out
    }

    /// The log files the globs match now: regular files, not symbolic
    /// links, not generations.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for p in &self.paths {
            let Ok(found) = glob::glob(p) else { continue };
            for path in found.flatten() {
                let name = path
                    .file_name()
                    .map(|n| std::os::unix::ffi::OsStrExt::as_bytes(n).to_vec());
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file())
                    && name.is_some_and(|n| !rotate::is_generation_name(&n))
                    && !out.contains(&path)
                {
                    out.push(path);
                }
            }
        }
        out
    }

    /// The directories the logs are in (what `disk_pressure` watches).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = rotate::dirs_of(&self.files());
        if dirs.is_empty() {
            // No file yet: the fixed part of each glob.
            dirs = self
                .paths
                .iter()
                .map(|p| {
                    let fixed: String = p.chars().take_while(|c| !"*?[".contains(*c)).collect();
                    PathBuf::from(fixed)
                        .parent()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from("/"))
                })
                .collect();
            dirs.sort();
            dirs.dedup();
        }
        dirs
    }
}

impl TaskKind for LogRotateConfig {
    fn probe(&self) -> Option<&str> {
        None
    }
    fn validate(&self, _probes: &Probes) -> Vec<(&'static str, String)> {
        self.check()
    }
    fn disk_pressure(&self) -> Option<(f64, Vec<PathBuf>)> {
        Some((self.disk_pressure?, self.dirs()))
    }
    fn build(&self, _name: &str, _probes: &Probes) -> Option<AnyTask> {
        Some(Box::new(LogRotateTask {
            inner: Arc::new(Mutex::new(Run {
                config: self.clone(),
                due: Vec::new(),
                next: 0,
                done: Vec::new(),
                quarantine: None,
                quarantine_dir: PathBuf::new(),
            })),
        }))
    }
}

/// One file the plan rotates.
#[derive(Debug, Clone, Serialize)]
struct Due {
    path: PathBuf,
    size: u64,
    why: String,
}

struct Run {
    config: LogRotateConfig,
    due: Vec<Due>,
    next: usize,
    done: Vec<Rotated>,
    quarantine: Option<Quarantine>,
    quarantine_dir: PathBuf,
}

pub struct LogRotateTask {
    inner: Arc<Mutex<Run>>,
}

impl LogRotateTask {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Run) -> Result<T, TaskError> + Send + 'static,
    ) -> Result<T, TaskError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock().expect("log_rotate state")))
            .await
            .map_err(|e| TaskError::failed(format!("log_rotate step panicked: {e}")))?
    }
}

impl Run {
    fn figures(&self) -> Value {
        let fs: Vec<Value> = self
            .config
            .dirs()
            .iter()
            .map(|d| match fs_usage(d) {
                Ok((free, ratio)) => {
                    json!({ "path": show(d), "free_bytes": free, "used_ratio": ratio })
                }
                Err(e) => json!({ "path": show(d), "error": e.to_string() }),
            })
            .collect();
        json!({ "filesystems": fs })
    }

    fn plan(&mut self, cx: &Cx) -> Result<Plan, TaskError> {
        let c = &self.config;
        let now = std::time::SystemTime::now();
        let mut due = Vec::new();
        let mut left = Vec::new();
        for path in c.files() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let size = meta.len();
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            let why = match (c.size, c.age) {
                (Some(s), _) if size > s => {
                    Some(format!("{} > size {}", bytes(size as f64), bytes(s as f64)))
                }
                (_, Some(a)) if age > a && size > 0 => Some(format!(
                    "unchanged for {} > age {}",
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    humantime::format_duration(a)
                )),
                (None, None) if size > 0 => Some("no size or age set: every run".into()),
                _ => None,
            };
            match why {
                Some(why) => due.push(Due { path, size, why }),
                None => left.push(json!({ "path": show(&path), "bytes": size })),
            }
        }
        let total: u64 = due.iter().map(|d| d.size).sum();
        let files: Vec<Value> = due
            .iter()
            .map(|d| json!({ "path": show(&d.path), "bytes": d.size, "why": d.why }))
            .collect();
        let how = match c.method {
            Method::Reopen => "rename, tell the writer, wait until it lets go".to_string(),
            Method::Copytruncate => "copy the block-aligned prefix and collapse it out of the live file (fallocate COLLAPSE_RANGE); where the filesystem refuses collapse (tmpfs, NFS, btrfs): copy then truncate, losing what is written in between (counted)".to_string(),
        };
        let summary = format!(
            "rotate {} of {} logs ({}) by {}, compress {}, keep {}{}; generations past keep{} go to the quarantine {}; a rollback restores them but does not un-rotate the live files",
            due.len(),
            due.len() + left.len(),
            bytes(total as f64),
            c.method.name(),
            match c.compress {
                Compress::Gzip => "gzip",
                Compress::Zstd => "zstd",
                Compress::None => "none",
            },
            c.keep,
            if c.delay_compress {
                " (compression delayed one rotation)"
            } else {
                ""
            },
            if c.max_total.is_some() {
                " or max_total"
            } else {
                ""
            },
            cx.quarantine_dir.display(),
        );
        self.due = due;
        self.quarantine_dir = cx.quarantine_dir.clone();
        Ok(Plan {
            summary,
            rows: self.due.len() as u64,
            bytes: total,
            details: json!({
                "method": c.method,
                "how": how,
                "compress": c.compress,
                "delay_compress": c.delay_compress,
                "keep": c.keep,
                "max_total": c.max_total,
                "files": files,
                "left": left,
                "reversible": "deleted generations are restored; the live files are not un-rotated",
            }),
        })
    }

    fn backup_state(&self) -> Backup {
        let q = self.quarantine.as_ref();
        Backup {
            location: self.quarantine_dir.display().to_string(),
            rows: q.map_or(0, |q| q.moved),
            bytes: q.map_or(0, |q| q.bytes),
            details: json!({ "quarantine": true, "manifest": quarantine::MANIFEST, "rotated": self.done }),
        }
    }

    fn batch(&mut self, size: u64) -> Result<Batch, TaskError> {
        let q = self
            .quarantine
            .as_mut()
            .ok_or_else(|| TaskError::failed("no backup"))?;
        let end = (self.next + size.max(1) as usize).min(self.due.len());
        let mut details = Vec::new();
        let mut rotated = 0;
        for i in self.next..end {
            let r = rotate::rotate(&self.due[i].path, &self.config, q)?;
            details.push(match (&r.note, &r.fallback) {
                (Some(note), _) => format!("{}: {note}", r.path),
                (None, Some(fb)) => format!(
                    "{}: {} B rotated; {fb}; {} B lost",
                    r.path, r.bytes_rotated, r.lost_bytes
                ),
                (None, None) => format!("{}: {} B rotated", r.path, r.bytes_rotated),
            });
            if r.note.is_none() {
                rotated += 1;
            }
            self.done.push(r);
            self.next = i + 1;
        }
        Ok(Batch {
            rows: rotated,
            archived: 0,
            detail: details.join("; "),
            done: self.next >= self.due.len(),
        })
    }

    /// Byte accounting per file, and every compressed generation
    /// decompressed once more to its recorded length and CRC.
    fn validate(&self) -> Result<Verdict, TaskError> {
        let mut problems = Vec::new();
        let (mut rotated, mut raw, mut packed, mut lost, mut quarantined) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut fallbacks = 0;
        for r in &self.done {
            if r.note.is_some() {
                continue;
            }
            rotated += r.bytes_rotated;
            lost += r.lost_bytes;
            quarantined += r.quarantined_bytes;
            fallbacks += usize::from(r.fallback.is_some());
            // Rotated + live holds at least what was there, plus appends
            // (minus what a copy-then-truncate lost, counted).
            if r.bytes_rotated + r.live_after + r.lost_bytes < r.bytes_before {
                problems.push(format!(
                    "{}: {} B rotated + {} B live < {} B before",
                    r.path, r.bytes_rotated, r.live_after, r.bytes_before
                ));
            }
            if !r.verified {
                problems.push(format!("{}: not verified", r.path));
            }
            for c in &r.compressed {
                raw += c.raw_bytes;
                packed += c.bytes;
                let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
                    &super::files::unescape(&c.path).unwrap_or_default(),
                ));
                let codec = if c.path.ends_with(".zst") {
                    Compress::Zstd
                } else {
                    Compress::Gzip
                };
                let back = std::fs::File::open(&path)
                    .and_then(|f| compress::crc_of(compress::reader(codec, f)?));
                match back {
                    Ok(got) if got == (c.raw_bytes, c.crc32) => {}
                    Ok((n, crc)) => problems.push(format!(
                        "{}: decompresses to {n} B crc {crc:08x}, not {} B crc {:08x}",
                        c.path, c.raw_bytes, c.crc32
                    )),
                    Err(e) => problems.push(format!("{}: {e}", c.path)),
                }
            }
        }
        let freed = raw.saturating_sub(packed) + quarantined;
        Ok(Verdict {
            ok: problems.is_empty(),
            detail: format!(
                "{} files rotated, {} rotated, {} compressed to {}, {} freed{}{}",
                self.done.iter().filter(|r| r.note.is_none()).count(),
                bytes(rotated as f64),
                bytes(raw as f64),
                bytes(packed as f64),
                bytes(freed as f64),
                if fallbacks > 0 {
                    format!("; {fallbacks} by copy-then-truncate, {lost} B lost")
                } else {
                    String::new()
                },
                if problems.is_empty() {
                    String::new()
                } else {
                    format!("; {}", problems.join("; "))
                }
            ),
            figures: json!({
                "bytes_rotated": rotated,
                "bytes_compressed_from": raw,
                "bytes_compressed_to": packed,
                "bytes_quarantined": quarantined,
                "bytes_freed": freed,
                "bytes_lost": lost,
                "fallback_files": fallbacks,
                "files": self.done,
            }),
        })
    }
}

use std::os::unix::ffi::OsStrExt;

impl Task for LogRotateTask {
    async fn figures(&mut self) -> Result<Value, TaskError> {
        self.blocking(|r| Ok(r.figures())).await
    }

    async fn plan(&mut self, cx: &Cx) -> Result<Plan, TaskError> {
        let cx = cx.clone();
        self.blocking(move |r| r.plan(&cx)).await
    }

    fn backup_bytes(&self, _plan: &Plan) -> u64 {
        // Generations are renamed into the quarantine when it shares their
        // filesystem; on another, at most `max_total` per file is copied,
        // which the margin covers for logs of ordinary size.
        0
    }

    async fn backup(&mut self, cx: &Cx, _plan: &Plan) -> Result<Backup, TaskError> {
        let cx = cx.clone();
        self.blocking(move |r| {
            r.quarantine = Some(Quarantine::open(&cx.quarantine_dir, &cx.backup_dir)?);
            Ok(r.backup_state())
        })
        .await
    }

    async fn apply_batch(&mut self, _cx: &Cx, _plan: &Plan, size: u64) -> Result<Batch, TaskError> {
        self.blocking(move |r| r.batch(size)).await
    }

    fn backup_state(&self) -> Option<Backup> {
        Some(self.inner.lock().expect("log_rotate state").backup_state())
    }

    async fn validate(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Verdict, TaskError> {
        self.blocking(|r| r.validate()).await
    }

    async fn rollback(&mut self, cx: &Cx, backup: &Backup) -> Result<Verdict, TaskError> {
        let (cx, backup) = (cx.clone(), backup.clone());
        self.blocking(move |_| {
            let qdir = if backup.location.is_empty() {
                cx.quarantine_dir.clone()
            } else {
                PathBuf::from(&backup.location)
            };
            let (back, not_moved, occupied) = quarantine::restore_all(&qdir, &cx.backup_dir)?;
            Ok(Verdict {
                ok: occupied.is_empty(),
                detail: format!(
                    "{back} generations restored{}{}; the live files are not un-rotated",
                    if not_moved > 0 {
                        format!(", {not_moved} had not moved")
                    } else {
                        String::new()
                    },
                    if occupied.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; left in the quarantine (their name is taken): {}",
                            occupied.join(", ")
                        )
                    }
                ),
                figures: json!({ "restored": back, "not_moved": not_moved, "occupied": occupied }),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    fn parse(extra: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse(
            "t.toml",
            &format!("[maintenance.logs]\nkind = \"log_rotate\"\npaths = [\"/var/log/app/*.log\"]\n{extra}"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn method_is_required_and_reopen_needs_a_way_to_tell_the_writer() {
        let err = parse("").unwrap_err();
        assert!(err.contains("method"), "{err}");
        let err = parse("method = \"reopen\"\n").unwrap_err();
        assert!(err.contains("reopen needs pidfile"), "{err}");
        let err =
            parse("method = \"reopen\"\npidfile = \"/run/app.pid\"\nreopen_signal = \"KILLME\"\n")
                .unwrap_err();
        assert!(err.contains("reopen_signal: `KILLME`"), "{err}");
        let err = parse(
            "method = \"copytruncate\"\npidfile = \"/run/app.pid\"\nkeep = 0\ncompress = \"lz4\"\n",
        )
        .unwrap_err();
        assert!(err.contains("compress") || err.contains("lz4"), "{err}");
        let err =
            parse("method = \"copytruncate\"\npidfile = \"/run/app.pid\"\nkeep = 0\n").unwrap_err();
        assert!(err.contains("keep: must be 1 to 1000"), "{err}");
        assert!(err.contains("copytruncate tells no writer"), "{err}");
        parse("method = \"reopen\"\nreopen_command = [\"systemctl\", \"kill\", \"-s\", \"USR1\", \"nginx\"]\n").unwrap();
        let err =
            parse("method = \"reopen\"\npidfile = \"/run/app.pid\"\nreopen_command = [\"true\"]\n")
                .unwrap_err();
        assert!(
            err.contains("give pidfile or reopen_command, not both"),
            "{err}"
        );
        parse("method = \"copytruncate\"\ncompress = \"zstd\"\nmax_total = 1000000\nsize = 1000\nage = \"1d\"\n").unwrap();
        let err = parse("method = \"copytruncate\"\npaths = [\"rel/*.log\"]\n").unwrap_err();
        assert!(err.contains("duplicate") || err.contains("paths"), "{err}");
    }
}

#[cfg(test)]
mod example {
    /// Every field of both file kinds, with its default, is in
    /// `agent.toml.example`.
    #[test]
    fn every_field_of_the_file_kinds_is_in_the_example() {
        let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/agent.toml.example"));
        // Every optional field set, so none is left out of the check.
        let rotate: super::LogRotateConfig = toml::from_str(
            "paths = [\"/a\"]\nmethod = \"reopen\"\nsize = 1\nage = \"1d\"\nmax_total = 1\npidfile = \"/p\"\nreopen_command = [\"x\"]\ndisk_pressure = 0.9\nschedule = \"* * * * *\"\nwindow = \"auto\"\ntimezone = \"UTC\"\nauto_series = \"a.b\"\nguard = []\ntimeout = \"1h\"\nkeep_backups = \"1d\"\nmax_backup_bytes = 1\n",
        )
        .unwrap();
        let clean: crate::maintenance::file_cleanup::FileCleanupConfig = toml::from_str(
            "paths = [\"/a\"]\nolder_than = \"7d\"\nmin_size = 1\ndisk_pressure = 0.9\n",
        )
        .unwrap();
        for (name, v) in [
            ("log_rotate", toml::Value::try_from(&rotate).unwrap()),
            ("file_cleanup", toml::Value::try_from(&clean).unwrap()),
        ] {
            for key in v.as_table().unwrap().keys() {
                assert!(
                    text.contains(&format!("# {key} =")),
                    "{name}: `{key}` is not in agent.toml.example"
                );
            }
        }
    }
}
