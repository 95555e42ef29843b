//! The drill of a `config_backup`: the newest snapshot (its manifest held
//! in use from the plan to the drill's end, so that pruning leaves it and
//! its blobs) restored into a
//! temporary directory under the data dir (`DATA_DIR/drills/NAME-RUN`),
//! every restored file hashed again against the manifest, and the
//! directory removed whatever happened. The RPO is the time since a run
//! last confirmed the snapshot current (a run that finds no change keeps
//! no new manifest, but says when it looked).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{DrillResult, check_age};
use crate::maintenance::backup_files::InUse;
use crate::maintenance::snapshots::{self, Kind, Manifest};
use crate::maintenance::{Cx, Plan, TaskError};
use crate::sample::now_ms;

pub struct FilesTarget {
    backup_name: String,
    /// The snapshot the plan chose, held in use until the drill ends so
    /// that a config_backup run pruning past `keep` leaves it and its blobs.
    held: Option<(String, InUse)>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Chosen {
    store: PathBuf,
    snapshot: String,
    age_seconds: f64,
}

impl FilesTarget {
    pub fn new(backup_name: &str) -> FilesTarget {
        FilesTarget {
            backup_name: backup_name.to_string(),
            held: None,
        }
    }

    pub fn plan(&mut self, cx: &Cx, max_age: Option<Duration>) -> Result<Plan, TaskError> {
        let store = snapshots::store_dir(&cx.data_dir, &self.backup_name);
        self.held = None;
        let (newest, held) = snapshots::hold_newest(&store)
            .map_err(|e| TaskError::failed(format!("{}: {e}", store.display())))?
            .ok_or_else(|| {
                TaskError::failed(format!(
                    "no snapshot of `{}` in {} yet",
                    self.backup_name,
                    store.display()
                ))
            })?;
        self.held = Some((newest.id.clone(), held));
        let current_ms = snapshots::checked_ms(&store)
            .unwrap_or(newest.taken_ms)
            .max(newest.taken_ms);
        let age = Duration::from_millis((now_ms() - current_ms).max(0) as u64);
        check_age(age, max_age).map_err(TaskError::failed)?;
        let chosen = Chosen {
            store,
            snapshot: newest.id.clone(),
            age_seconds: age.as_secs_f64(),
        };
        Ok(Plan {
            summary: format!(
                "restore snapshot {} of `{}` ({} paths, confirmed {} ago) into a temporary directory, verify every hash, remove it",
                newest.id,
                self.backup_name,
                newest.entries.len(),
                super::age_words(age)
            ),
            rows: newest.entries.len() as u64,
            bytes: 0,
            details: serde_json::to_value(&chosen).expect("serializable"),
        })
    }

    pub async fn drill(&mut self, cx: &Cx, plan: &Plan) -> Result<DrillResult, TaskError> {
        let chosen: Chosen = serde_json::from_value(plan.details.clone())
            .map_err(|e| TaskError::failed(format!("the plan's details: {e}")))?;
        // Let go when the drill ends, whichever way.
        let _held = match self.held.take() {
            Some((id, h)) if id == chosen.snapshot => h,
            _ => {
                return Err(TaskError::failed(format!(
                    "snapshot {} is not held in use by this drill's plan; not restored",
                    chosen.snapshot
                )));
            }
        };
        let scratch = cx
            .data_dir
            .join("drills")
            .join(format!("{}-{}", cx.name, cx.run_id));
        // Directories a killed drill of this task left (the caller holds
        // the task's lock: none is in use).
        let prefix = format!("{}-", cx.name);
        if let Ok(rd) = std::fs::read_dir(cx.data_dir.join("drills")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name
                    .strip_prefix(&prefix)
                    .is_some_and(|run| run.parse::<i64>().is_ok())
                {
                    let _ = snapshots::remove_any(&e.path());
                }
            }
        }
        let c = chosen.clone();
        let s = scratch.clone();
        let cancel = cx.cancel.clone();
        let out = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let r = restore_all(&c, &s, &cancel);
            let removed = snapshots::remove_any(&s);
            let files = r?;
            removed.map_err(|e| format!("removing {}: {e}", s.display()))?;
            Ok::<_, String>((files, t.elapsed()))
        })
        .await
        .expect("the drill panicked")
        .map_err(TaskError::failed)?;
        let (files, took) = out;
        Ok(DrillResult {
            backup_run: chosen.snapshot.parse().unwrap_or(0),
            backup_path: chosen.store.display().to_string(),
            backup_age_seconds: chosen.age_seconds,
            rto_seconds: took.as_secs_f64(),
            tables: 0,
            rows: 0,
            files,
            checks: files,
            counts_compared: 0,
            scratch: scratch.display().to_string(),
        })
    }
}

/// Restores every stored file of the snapshot under `scratch` (paths kept
/// below it) and hashes each again. Returns the files verified.
fn restore_all(
    c: &Chosen,
    scratch: &Path,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<u64, String> {
    let m: Manifest = snapshots::manifest(&c.store, &c.snapshot).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let mut files = 0;
    for e in m.entries.iter().filter(|e| e.kind == Kind::File) {
        if cancel.is_cancelled() {
            return Err("the drill was cancelled".into());
        }
        let Some(hash) = &e.hash else { continue };
        let at = scratch.join(e.path.strip_prefix("/").unwrap_or(&e.path));
        let content = snapshots::read_blob(&c.store, hash)
            .map_err(|err| format!("{}: {err}", e.path.display()))?;
        if let Some(dir) = at.parent() {
            std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        }
        std::fs::write(&at, &content).map_err(|err| format!("{}: {err}", at.display()))?;
        let again = crate::maintenance::dumps::sha256(&at).map_err(|err| err.to_string())?;
        if &again != hash {
            return Err(format!(
                "{} restored with sha256 {again}, the snapshot says {hash}",
                e.path.display()
            ));
        }
        files += 1;
    }
    Ok(files)
}
