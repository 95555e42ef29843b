//! `upkeep backup diff A [B]`: a unified diff of the text files that differ
//! between two config_backup snapshots, or between a snapshot and the
//! files as they are now. Snapshots are named by the run that took them
//! (`upkeep maintenance runs`), or `pre-rollback-MS` for the state a
//! rollback saved first.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{CliError, Where, config_and_data_dir};
use crate::config::Config;
use crate::maintenance::TaskConfig;
use crate::maintenance::snapshots::{self, Entry, Kind};

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Unified diff of text files between snapshots A and B (B unset or
    /// `now`: the files as they are now).
    Diff {
        a: String,
        b: Option<String>,
        /// The config_backup task (unset: the one whose store has A).
        #[arg(long)]
        task: Option<String>,
    },
}

pub(super) fn backup(cmd: BackupCmd, at: &Where) -> Result<(), CliError> {
    let (config, data_dir) = config_and_data_dir(at)?;
    match cmd {
        BackupCmd::Diff { a, b, task } => {
            let (name, store) = find_store(&config, &data_dir, task.as_deref(), &a)?;
            let old = snapshots::manifest(&store, &a)
                .map_err(|e| CliError::Usage(format!("snapshot {a} of `{name}`: {e}")))?;
            let b = b.filter(|b| b != "now");
            let new = match &b {
                Some(b) => Side::Snapshot(
                    snapshots::manifest(&store, b)
                        .map_err(|e| CliError::Usage(format!("snapshot {b} of `{name}`: {e}")))?,
                ),
                None => {
                    let Some(TaskConfig::ConfigBackup(c)) = config.maintenance.get(&name) else {
                        return Err(CliError::Usage(format!(
                            "`{name}` is not a configured config_backup task: compare two snapshots instead"
                        )));
                    };
                    Side::Now(crate::maintenance::config_backup::current(c).map_err(|e| {
                        CliError::Usage(format!("reading the files of `{name}`: {e}"))
                    })?)
                }
            };
            let label_b = b.clone().unwrap_or_else(|| "now".into());
            print!("{}", diff(&store, &old.entries, &a, &new, &label_b));
            Ok(())
        }
    }
}

/// The store holding snapshot `a`: of task `task`, else of the first
/// config_backup task whose store has it.
fn find_store(
    config: &Config,
    data_dir: &Path,
    task: Option<&str>,
    a: &str,
) -> Result<(String, PathBuf), CliError> {
    let names: Vec<String> = match task {
        Some(t) => vec![t.to_string()],
        None => config
            .maintenance
            .iter()
            .filter(|(_, t)| matches!(t, TaskConfig::ConfigBackup(_)))
            .map(|(n, _)| n.clone())
            .collect(),
    };
    for n in &names {
        let store = snapshots::store_dir(data_dir, n);
        if snapshots::manifest(&store, a).is_ok() {
            return Ok((n.clone(), store));
        }
    }
    Err(CliError::Usage(format!(
        "no snapshot {a} in the store of {} (under {})",
        if names.is_empty() {
            "any config_backup task".to_string()
        } else {
            names.join(", ")
        },
        data_dir.join("backups").display()
    )))
}

enum Side {
    Snapshot(snapshots::Manifest),
    Now(Vec<Entry>),
}

impl Side {
    fn entries(&self) -> &[Entry] {
        match self {
            Side::Snapshot(m) => &m.entries,
            Side::Now(e) => e,
        }
    }

    fn content(&self, store: &Path, e: &Entry) -> Option<Vec<u8>> {
        match self {
            Side::Snapshot(_) => snapshots::read_blob(store, e.hash.as_ref()?).ok(),
            Side::Now(_) => e.hash.as_ref().and_then(|_| std::fs::read(&e.path).ok()),
        }
    }
}

/// The text of the diff: per path in order, a unified diff of text files,
/// a line for binary ones and for changes of mode, owner, type or target.
fn diff(store: &Path, old: &[Entry], label_a: &str, new: &Side, label_b: &str) -> String {
    use std::collections::BTreeMap;
    let o: BTreeMap<&Path, &Entry> = old.iter().map(|e| (e.path.as_path(), e)).collect();
    let n: BTreeMap<&Path, &Entry> = new
        .entries()
        .iter()
        .map(|e| (e.path.as_path(), e))
        .collect();
    let mut paths: Vec<&Path> = o.keys().chain(n.keys()).copied().collect();
    paths.sort();
    paths.dedup();
    let old_side = Side::Snapshot(snapshots::Manifest {
        id: label_a.into(),
        taken_ms: 0,
        entries: Vec::new(),
    });
    let mut out = String::new();
    for p in paths {
        let (a, b) = (o.get(p).copied(), n.get(p).copied());
        if let (Some(a), Some(b)) = (a, b)
            && a.same_as(b)
        {
            continue;
        }
        let shown = p.display();
        if let (Some(a), Some(b)) = (a, b) {
            if a.kind != b.kind || a.target != b.target {
                out.push_str(&format!(
                    "{shown}: {:?} {} -> {:?} {}\n",
                    a.kind,
                    a.target
                        .as_ref()
                        .map(|t| t.display().to_string())
                        .unwrap_or_default(),
                    b.kind,
                    b.target
                        .as_ref()
                        .map(|t| t.display().to_string())
                        .unwrap_or_default()
                ));
            }
            if a.mode != b.mode || a.uid != b.uid || a.gid != b.gid {
                out.push_str(&format!(
                    "{shown}: mode {:o} owner {}:{} -> mode {:o} owner {}:{}\n",
                    a.mode, a.uid, a.gid, b.mode, b.uid, b.gid
                ));
            }
        }
        let is_file = |e: Option<&Entry>| e.is_none_or(|e| e.kind == Kind::File);
        if !is_file(a) || !is_file(b) {
            if a.is_none() || b.is_none() {
                out.push_str(&format!(
                    "{shown}: {}\n",
                    if a.is_none() { "added" } else { "removed" }
                ));
            }
            continue;
        }
        if a.and_then(|e| e.hash.as_ref()) == b.and_then(|e| e.hash.as_ref())
            && a.is_some()
            && b.is_some()
        {
            continue;
        }
        let text_of = |side: &Side, e: Option<&Entry>| -> Result<String, String> {
            let Some(e) = e else { return Ok(String::new()) };
            if let Some(why) = &e.not_stored {
                return Err(why.clone());
            }
            let bytes = side.content(store, e).ok_or("content not available")?;
            if bytes.contains(&0) {
                return Err("binary".into());
            }
            String::from_utf8(bytes).map_err(|_| "binary".into())
        };
        match (text_of(&old_side, a), text_of(new, b)) {
            (Ok(x), Ok(y)) => {
                let d = similar::TextDiff::from_lines(&x, &y);
                out.push_str(
                    &d.unified_diff()
                        .context_radius(3)
                        .header(
                            &format!("a{shown} ({label_a})"),
                            &format!("b{shown} ({label_b})"),
                        )
                        .to_string(),
                );
            }
            (x, y) => {
                let why = x.err().or(y.err()).unwrap_or_default();
                out.push_str(&format!("{shown}: differs ({why}: no text diff)\n"));
            }
        }
    }
    out
}
