//! `kind = "config_backup"`: snapshots of named files and directories in a
//! content-addressed store (`snapshots.rs`). The plan walks the paths
//! (never following a link) and hashes the files whose metadata changed
//! since the last snapshot: the files added, removed and modified are the
//! plan. The batches store the new contents as blobs; the last one writes
//! the run's manifest, or none when nothing changed ("no change").
//! Validation reads every blob of the new manifest back with its hash,
//! then prunes past `keep`. Rollback of snapshot N puts every file back as
//! it was in N (content, mode, owner, mtime), removes files added since,
//! and first snapshots the current state, so the rollback can be undone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::config::{Probes, TaskKind};
use super::snapshots::{self, Entry, Kind, Manifest};
use super::{AnyTask, Backup, Batch, Cx, Plan, Task, TaskError, Verdict};
use crate::sample::now_ms;

crate::task_config! {
    /// `[maintenance.NAME] kind = "config_backup"`.
    pub struct ConfigBackupConfig {
        /// Files, directories and globs (absolute).
        pub paths: Vec<String>,
        /// Globs of paths left out.
        #[serde(default)]
        pub exclude: Vec<String>,
        /// Snapshots kept.
        #[serde(default = "default_keep")]
        pub keep: u32,
        /// Bigger files are listed but not stored.
        #[serde(default = "default_max_file_size")]
        pub max_file_size: u64,
    }
}

fn default_keep() -> u32 {
    30
}

fn default_max_file_size() -> u64 {
    16 << 20
}

/// Paths listed in a plan's details.
const LISTED: usize = 200;

impl TaskKind for ConfigBackupConfig {
    fn probe(&self) -> Option<&str> {
        None
    }
    fn validate(&self, _probes: &Probes) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.paths.is_empty() {
            out.push(("paths", "name at least one file, directory or glob".into()));
        }
        for p in &self.paths {
            if !p.starts_with('/') {
                out.push(("paths", format!("`{p}` must be an absolute path")));
            } else if let Err(e) = glob::Pattern::new(p) {
                out.push(("paths", format!("`{p}`: {e}")));
            }
        }
        for p in &self.exclude {
            if let Err(e) = glob::Pattern::new(p) {
                out.push(("exclude", format!("`{p}`: {e}")));
            }
        }
        if self.keep == 0 {
            out.push(("keep", "must be at least 1".into()));
        }
        out
    }
    fn build(&self, name: &str, _probes: &Probes) -> Option<AnyTask> {
        Some(Box::new(ConfigBackupTask {
            name: name.to_string(),
            config: self.clone(),
            run: None,
        }))
    }
    fn batch_size(&self) -> u64 {
        200
    }
}

struct RunState {
    store: PathBuf,
    entries: Vec<Entry>,
    changes: Vec<(String, PathBuf)>,
    previous: Option<String>,
    /// Indexes into `entries` of files whose content is to be stored.
    pending: Vec<usize>,
    /// Files that could not be read (stored as listed only).
    unreadable: Vec<String>,
    written: Option<String>,
}

pub struct ConfigBackupTask {
    name: String,
    config: ConfigBackupConfig,
    run: Option<RunState>,
}

fn failed(e: impl std::fmt::Display) -> TaskError {
    TaskError::failed(e.to_string())
}

/// What `survey` found: every entry, the files unreadable by this user,
/// and the paths that could not be listed at all.
type Survey = (Vec<Entry>, Vec<String>, Vec<String>);

/// The walk of the configured paths, with the hashes of files carried over
/// from `previous` when their metadata is unchanged, hashed otherwise
/// (files over `max_file_size`, unreadable ones and non-files are listed
/// only). Reads the disk: call it off the async workers.
fn survey(config: &ConfigBackupConfig, previous: Option<&Manifest>) -> Result<Survey, TaskError> {
    let exclude: Vec<glob::Pattern> = config
        .exclude
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(failed))
        .collect::<Result<_, _>>()?;
    let walked = snapshots::walk(&config.paths, &exclude);
    let prev: std::collections::BTreeMap<&Path, &Entry> = previous
        .map(|m| m.entries.iter().map(|e| (e.path.as_path(), e)).collect())
        .unwrap_or_default();
    let mut entries = walked.entries;
    let mut unreadable = Vec::new();
    for e in entries.iter_mut().filter(|e| e.kind == Kind::File) {
        if e.size > config.max_file_size {
            e.not_stored = Some(format!(
                "over max_file_size ({} > {} bytes): listed, not read",
                e.size, config.max_file_size
            ));
            continue;
        }
        if let Some(p) = prev.get(e.path.as_path())
            && p.hash.is_some()
            && p.size == e.size
            && p.mtime_ns == e.mtime_ns
        {
            e.hash = p.hash.clone();
            continue;
        }
        match hash_file(&e.path) {
            Ok(h) => e.hash = Some(h),
            Err(err) => {
                unreadable.push(e.path.display().to_string());
                e.not_stored = Some(format!("unreadable: {err}"));
            }
        }
    }
    Ok((entries, unreadable, walked.errors))
}

/// The files as they are now (hashed, nothing stored), for `backup diff`.
pub fn current(config: &ConfigBackupConfig) -> Result<Vec<Entry>, TaskError> {
    survey(config, None).map(|(entries, _, _)| entries)
}

fn hash_file(p: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)?;
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha2::Digest::update(&mut h, &buf[..n]);
    }
    Ok(super::dumps::hex(&sha2::Digest::finalize(h)))
}

impl ConfigBackupTask {
    fn state(&self) -> Result<&RunState, TaskError> {
        self.run
            .as_ref()
            .ok_or_else(|| TaskError::failed("no plan was made before this step"))
    }

    /// The snapshot a run's backup names.
    fn snapshot_of(backup: &Backup) -> Result<String, TaskError> {
        backup.details["snapshot"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                TaskError::failed("the run recorded no snapshot (nothing was backed up yet)")
            })
    }
}

impl Task for ConfigBackupTask {
    async fn figures(&mut self) -> Result<serde_json::Value, TaskError> {
        let store = self.run.as_ref().map(|r| r.store.clone());
        Ok(match store {
            Some(s) => {
                let n = snapshots::manifests(&s).len();
                json!({ "snapshots": n, "store_bytes": super::dumps::size(&s).unwrap_or(0) })
            }
            None => json!({}),
        })
    }

    async fn plan(&mut self, cx: &Cx) -> Result<Plan, TaskError> {
        let store = snapshots::store_dir(&cx.data_dir, &cx.name);
        let config = self.config.clone();
        let s = store.clone();
        let (previous, entries, unreadable, errors) = tokio::task::spawn_blocking(move || {
            let previous = snapshots::newest(&s);
            let (entries, unreadable, errors) = survey(&config, previous.as_ref())?;
            Ok::<_, TaskError>((previous, entries, unreadable, errors))
        })
        .await
        .expect("walking the paths panicked")?;
        let changes =
            snapshots::changes(previous.as_ref().map_or(&[][..], |m| &m.entries), &entries);
        let pending = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.hash.is_some())
            .map(|(i, _)| i)
            .collect();
        let mut summary = match (&previous, changes.len()) {
            (Some(p), 0) => format!("no change since snapshot {}", p.id),
            (_, n) => format!(
                "snapshot {} paths: {n} changed ({} added, {} removed, {} modified)",
                entries.len(),
                changes.iter().filter(|c| c.0 == "added").count(),
                changes.iter().filter(|c| c.0 == "removed").count(),
                changes.iter().filter(|c| c.0 == "modified").count()
            ),
        };
        if !unreadable.is_empty() {
            summary.push_str(&format!(
                "; unreadable by this user (listed, not stored): {}",
                unreadable.join(", ")
            ));
        }
        if !errors.is_empty() {
            summary.push_str(&format!("; not listed: {}", errors.join("; ")));
        }
        let details = json!({
            "previous": previous.as_ref().map(|p| p.id.clone()),
            "paths": entries.len(),
            "changes": changes.iter().take(LISTED)
                .map(|(k, p)| json!({ "change": k, "path": p }))
                .collect::<Vec<_>>(),
            "more_changes": changes.len().saturating_sub(LISTED),
            "unreadable": unreadable,
            "errors": errors,
        });
        let rows = changes.len() as u64;
        let bytes = changes
            .iter()
            .filter_map(|(_, p)| entries.iter().find(|e| &e.path == p))
            .map(|e| e.size)
            .sum();
        self.run = Some(RunState {
            store,
            entries,
            changes,
            previous: previous.map(|p| p.id),
            pending,
            unreadable,
            written: None,
        });
        Ok(Plan {
            summary,
            rows,
            bytes,
            details,
        })
    }

    fn backup_bytes(&self, plan: &Plan) -> u64 {
        plan.bytes
    }

    async fn backup(&mut self, cx: &Cx, _plan: &Plan) -> Result<Backup, TaskError> {
        let st = self.state()?;
        // The snapshot describing the files after this run: its own, or
        // the previous one when nothing changed.
        let snapshot = if st.changes.is_empty() {
            st.previous.clone()
        } else {
            Some(cx.run_id.to_string())
        };
        Ok(Backup {
            location: st.store.display().to_string(),
            rows: st.entries.len() as u64,
            bytes: 0,
            details: json!({ "snapshot": snapshot }),
        })
    }

    async fn apply_batch(&mut self, cx: &Cx, _plan: &Plan, size: u64) -> Result<Batch, TaskError> {
        let mut st = self
            .run
            .take()
            .ok_or_else(|| TaskError::failed("no plan"))?;
        let take = st.pending.len().min(size.max(1) as usize);
        let batch: Vec<usize> = st.pending.drain(..take).collect();
        let work: Vec<(usize, PathBuf)> = batch
            .iter()
            .map(|i| (*i, st.entries[*i].path.clone()))
            .collect();
        let store = st.store.clone();
        let stored = tokio::task::spawn_blocking(move || {
            work.into_iter()
                .map(|(i, p)| (i, snapshots::store_file(&store, &p)))
                .collect::<Vec<_>>()
        })
        .await
        .expect("storing blobs panicked");
        let mut newly_unreadable = Vec::new();
        for (i, r) in stored {
            match r {
                Ok(h) => st.entries[i].hash = Some(h),
                Err(e) => {
                    let p = st.entries[i].path.display().to_string();
                    st.entries[i].hash = None;
                    st.entries[i].not_stored = Some(format!("unreadable: {e}"));
                    newly_unreadable.push(p.clone());
                    st.unreadable.push(p);
                }
            }
        }
        let done = st.pending.is_empty();
        let mut detail = format!("{} files stored or found in the store", batch.len());
        if !newly_unreadable.is_empty() {
            detail.push_str(&format!("; unreadable: {}", newly_unreadable.join(", ")));
        }
        if done {
            let store = st.store.clone();
            if st.changes.is_empty() {
                snapshots::mark_checked(&store, now_ms()).map_err(failed)?;
                detail.push_str(&format!(
                    "; no change since snapshot {}: no manifest kept",
                    st.previous.as_deref().unwrap_or("-")
                ));
            } else {
                let m = Manifest {
                    id: cx.run_id.to_string(),
                    taken_ms: now_ms(),
                    entries: st.entries.clone(),
                };
                tokio::task::spawn_blocking(move || {
                    snapshots::write_manifest(&store, &m)?;
                    snapshots::mark_checked(&store, m.taken_ms)
                })
                .await
                .expect("writing the manifest panicked")
                .map_err(failed)?;
                st.written = Some(cx.run_id.to_string());
                detail.push_str(&format!(
                    "; snapshot {} of {} paths written",
                    cx.run_id,
                    st.entries.len()
                ));
            }
        }
        self.run = Some(st);
        Ok(Batch {
            rows: batch.len() as u64,
            archived: batch.len() as u64,
            detail,
            done,
        })
    }

    fn backup_state(&self) -> Option<Backup> {
        let st = self.run.as_ref()?;
        let snapshot = st.written.clone().or_else(|| st.previous.clone());
        Some(Backup {
            location: st.store.display().to_string(),
            rows: st.entries.len() as u64,
            bytes: 0,
            details: json!({ "snapshot": snapshot, "unreadable": st.unreadable }),
        })
    }

    async fn validate(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Verdict, TaskError> {
        let st = self.state()?;
        let Some(id) = st.written.clone() else {
            return Ok(Verdict {
                ok: true,
                detail: format!(
                    "no change since snapshot {}",
                    st.previous.as_deref().unwrap_or("-")
                ),
                figures: json!({ "changes": 0 }),
            });
        };
        let store = st.store.clone();
        let keep = self.config.keep as usize;
        let result =
            tokio::task::spawn_blocking(move || -> Result<(usize, usize, usize, usize), String> {
                let m = snapshots::manifest(&store, &id).map_err(|e| e.to_string())?;
                let mut checked = 0;
                for h in m.entries.iter().filter_map(|e| e.hash.as_ref()) {
                    if let Err(e) = snapshots::read_blob(&store, h) {
                        // Not a usable snapshot: it goes, so that nothing
                        // restores from it.
                        let _ = std::fs::remove_file(
                            store.join("snapshots").join(format!("{id}.json.gz")),
                        );
                        return Err(format!("blob {h} does not read back: {e}"));
                    }
                    checked += 1;
                }
                let (manifests, blobs, in_use) =
                    snapshots::prune(&store, keep).map_err(|e| e.to_string())?;
                Ok((checked, manifests, blobs, in_use))
            })
            .await
            .expect("validating blobs panicked");
        Ok(match result {
            Ok((checked, manifests, blobs, in_use)) => Verdict {
                ok: true,
                detail: format!(
                    "{checked} blobs read back with their hashes; {manifests} snapshots and {blobs} blobs pruned (keep {keep}){}",
                    match in_use {
                        0 => String::new(),
                        n => format!(
                            "; {n} kept while a drill restores it, for the next run to prune"
                        ),
                    }
                ),
                figures: json!({ "blobs_checked": checked, "changes": st.changes.len(), "unreadable": st.unreadable }),
            },
            Err(why) => Verdict {
                ok: false,
                detail: why,
                figures: json!({}),
            },
        })
    }

    async fn rollback(&mut self, cx: &Cx, backup: &Backup) -> Result<Verdict, TaskError> {
        let id = Self::snapshot_of(backup)?;
        let store = snapshots::store_dir(&cx.data_dir, &cx.name);
        let config = self.config.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || rollback_to(&config, &store, &id, &name))
            .await
            .expect("the rollback panicked")
    }
}

/// Puts the files back as snapshot `id` has them, after saving the current
/// state as snapshot `pre-rollback-MS`.
fn rollback_to(
    config: &ConfigBackupConfig,
    store: &Path,
    id: &str,
    task: &str,
) -> Result<Verdict, TaskError> {
    let target = snapshots::manifest(store, id)
        .map_err(|e| TaskError::failed(format!("snapshot {id} of `{task}` is not kept: {e}")))?;
    // The current state first, stored whole, so that this can be undone.
    let (mut now, _, _) = survey(config, None)?;
    for e in now.iter_mut().filter(|e| e.hash.is_some()) {
        e.hash = Some(snapshots::store_file(store, &e.path).map_err(failed)?);
    }
    let saved = Manifest {
        id: format!("pre-rollback-{}", now_ms()),
        taken_ms: now_ms(),
        entries: now.clone(),
    };
    snapshots::write_manifest(store, &saved).map_err(failed)?;
    let mut problems = Vec::new();
    let mut restored = 0;
    let mut not_stored = Vec::new();
    for e in &target.entries {
        match snapshots::restore_entry(store, e, &e.path) {
            Ok(true) => restored += 1,
            Ok(false) => not_stored.push(e.path.display().to_string()),
            Err(err) => problems.push(format!("{}: {err}", e.path.display())),
        }
    }
    // Added since: files first, deepest paths first, then directories.
    let keep: BTreeSet<&Path> = target.entries.iter().map(|e| e.path.as_path()).collect();
    let mut added: Vec<&Entry> = now
        .iter()
        .filter(|e| !keep.contains(e.path.as_path()))
        .collect();
    added.sort_by(|a, b| b.path.cmp(&a.path));
    let mut removed = 0;
    for e in added {
        let r = if e.kind == Kind::Dir {
            std::fs::remove_dir(&e.path)
        } else {
            std::fs::remove_file(&e.path)
        };
        match r {
            Ok(()) => removed += 1,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => problems.push(format!("removing {}: {err}", e.path.display())),
        }
    }
    // Directories' times change as their children do: set them last.
    for e in target.entries.iter().filter(|e| e.kind == Kind::Dir).rev() {
        if let Err(err) = snapshots::set_attributes(e) {
            problems.push(format!("{}: {err}", e.path.display()));
        }
    }
    let mut detail = format!(
        "snapshot {id}: {restored} paths put back, {removed} added since removed; the state before is snapshot {}",
        saved.id
    );
    if !not_stored.is_empty() {
        detail.push_str(&format!(
            "; not stored, left as they are: {}",
            not_stored.join(", ")
        ));
    }
    if !problems.is_empty() {
        detail.push_str(&format!("; failed: {}", problems.join("; ")));
    }
    Ok(Verdict {
        ok: problems.is_empty(),
        detail,
        figures: json!({ "restored": restored, "removed": removed, "saved_as": saved.id, "problems": problems }),
    })
}
