//! `kind = "postgres_backup"`: a logical dump of a postgres probe's
//! database with `pg_dump`, as a child process, into `DEST/RUN_ID/`
//! (`dumps.rs` has the layout). The plan finds a pg_dump that can read the
//! server (same major version or newer); the runner's gate checks the room
//! at `dest` (the database's size × 1.2, `room_needed`); the backup step
//! removes what killed runs left;
//! the one batch is the dump (the password in a temporary `PGPASSFILE`,
//! never in argv or the environment of a logged command; a guard turning
//! unhealthy kills it and removes the partial file); validation hashes the
//! dump, has `pg_restore --list` read it back, then records it complete
//! (`dump.json`) and prunes past `keep` (a dump a drill is restoring
//! stays for the next run). Nothing to roll back: a backup
//! changes nothing, and restoring a dump into the live database is a
//! human decision (README, "Backups and restore drills").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::config::{Probes, TaskKind};
use super::dumps::{self, DumpMeta, Format};
use super::{AnyTask, Backup, Batch, Cx, Plan, Task, TaskError, Verdict};
use crate::clients::postgres::Session;
use crate::clients::postgres::priority::{IoClass, Priority};
use crate::clients::postgres::tools::{self, Ended, Found, PassFile};
use crate::fmt::bytes;
use crate::probes::ProbeKind;
use crate::probes::postgres::PostgresConfig;
use crate::sample::now_ms;

crate::task_config! {
    /// `[maintenance.NAME] kind = "postgres_backup"`.
    pub struct PgBackupConfig {
        /// The postgres probe whose database is dumped (its user needs
        /// read rights on everything in it).
        pub probe: String,
        /// Where the dumps go; unset: `DATA_DIR/backups/NAME`.
        #[serde(default)]
        pub dest: Option<PathBuf>,
        /// `"custom"` (one file) or `"directory"` (dumped with `jobs`).
        #[serde(default)]
        pub format: Format,
        /// Parallel pg_dump workers; more than 1 needs `format = "directory"`.
        #[serde(default = "one")]
        pub jobs: u32,
        /// Complete dumps kept; older ones are removed after a new one is checked.
        #[serde(default = "default_keep")]
        pub keep: u32,
        /// The pg_dump to use; unset: found on PATH or under
        /// `/usr/lib/postgresql/*/bin`, of the server's major version or newer.
        #[serde(default)]
        pub pg_dump: Option<PathBuf>,
        /// pg_dump's niceness, 0 to 19 (0: the agent's own). Its client-side
        /// compression competes with the application's backends for CPU.
        #[serde(default = "default_nice")]
        pub nice: u8,
        /// pg_dump's I/O class: `"low"` (best-effort, lowest level),
        /// `"idle"` (only when the disk is otherwise idle; the dump may wait
        /// long with its transaction open) or `"normal"` (the agent's).
        #[serde(default)]
        pub io_class: IoClass,
        /// pg_dump's `--compress` level, 0 (none) to 9; unset: pg_dump's
        /// default (gzip level 6 in custom and directory format).
        #[serde(default)]
        pub compress: Option<u8>,
    }
}

fn default_nice() -> u8 {
    10
}

fn one() -> u32 {
    1
}

fn default_keep() -> u32 {
    7
}

/// Room wanted at `dest`, as a multiple of the database's size.
const ROOM_FACTOR: f64 = 1.2;

impl TaskKind for PgBackupConfig {
    fn probe(&self) -> Option<&str> {
        Some(&self.probe)
    }
    fn validate(&self, probes: &Probes) -> Vec<(&'static str, String)> {
        let mut own = Vec::new();
        if self.dest.as_deref().is_some_and(|d| !d.is_absolute()) {
            own.push(("dest", "must be an absolute path".into()));
        }
        if self.pg_dump.as_deref().is_some_and(|d| !d.is_absolute()) {
            own.push(("pg_dump", "must be an absolute path".into()));
        }
        if self.keep == 0 {
            own.push(("keep", "must be at least 1".into()));
        }
        if self.nice > 19 {
            own.push(("nice", format!("{} is not a niceness: 0 to 19", self.nice)));
        }
        if let Some(c) = self.compress.filter(|c| *c > 9) {
            own.push(("compress", format!("{c} is not a level: 0 (none) to 9")));
        }
        if !(1..=64).contains(&self.jobs) {
            own.push(("jobs", "must be 1 to 64".into()));
        } else if self.jobs > 1 && self.format != Format::Directory {
            own.push((
                "jobs",
                "more than 1 needs format = \"directory\" (pg_dump dumps in parallel only into a directory)".into(),
            ));
        }
        super::config::with_probe_check(
            own,
            probes,
            &self.probe,
            ProbeKind::Postgres,
            "postgres_backup",
        )
    }
    fn build(&self, name: &str, probes: &Probes) -> Option<AnyTask> {
        let pg = super::config::postgres_probe(probes, &self.probe)?;
        Some(Box::new(PgBackupTask {
            name: name.to_string(),
            config: self.clone(),
            pg: pg.clone(),
            run: None,
        }))
    }
}

/// What the plan found, kept in `Plan::details`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Findings {
    database: String,
    database_bytes: u64,
    server_major: u32,
    pg_dump: PathBuf,
    pg_dump_major: u32,
    pg_restore: PathBuf,
    dest: PathBuf,
}

struct RunState {
    found: Findings,
    dir: PathBuf,
    started_ms: i64,
    meta: Option<DumpMeta>,
}

pub struct PgBackupTask {
    name: String,
    config: PgBackupConfig,
    pg: PostgresConfig,
    run: Option<RunState>,
}

fn io(what: &Path) -> impl Fn(std::io::Error) -> TaskError + '_ {
    move |e| TaskError::failed(format!("{}: {e}", what.display()))
}

impl PgBackupTask {
    async fn session(&self) -> Result<Session, TaskError> {
        let t = Duration::from_secs(60);
        Ok(Session::open(
            &self.pg.connection(),
            &self.name,
            &[("statement_timeout", crate::clients::postgres::millis(t))],
            t,
        )
        .await?)
    }

    /// (database, size in bytes, server major version).
    async fn server(&self) -> Result<(String, u64, u32), TaskError> {
        let s = self.session().await?;
        let row = s
            .timed(s.client.query_one(
                "SELECT current_database()::text, pg_database_size(current_database()), \
                 current_setting('server_version_num')::int",
                &[],
            ))
            .await
            .map_err(|e| TaskError::failed(format!("reading the database's size: {e}")))?;
        let size: i64 = row.get(1);
        let num: i32 = row.get(2);
        Ok((row.get(0), size.max(0) as u64, tools::server_major(num)))
    }

    fn passfile(&self, cx: &Cx) -> Result<Option<PassFile>, TaskError> {
        tools::task_passfile(&cx.data_dir, &self.name, self.pg.password_file.as_deref())
            .map_err(TaskError::failed)
    }

    fn priority(&self) -> Priority {
        Priority {
            nice: self.config.nice,
            io: self.config.io_class,
        }
    }

    fn state(&self) -> Result<&RunState, TaskError> {
        self.run
            .as_ref()
            .ok_or_else(|| TaskError::failed("no backup step ran before this one"))
    }
}

/// The plan's findings from a plan document.
fn found_of(plan: &Plan) -> Result<Findings, TaskError> {
    serde_json::from_value(plan.details.clone())
        .map_err(|e| TaskError::failed(format!("the plan's details: {e}")))
}

impl Task for PgBackupTask {
    async fn figures(&mut self) -> Result<serde_json::Value, TaskError> {
        let (database, size, _) = self.server().await?;
        Ok(json!({ "database": database, "database_bytes": size }))
    }

    async fn plan(&mut self, cx: &Cx) -> Result<Plan, TaskError> {
        let (database, size, server_major) = self.server().await?;
        let config = self.config.pg_dump.clone();
        let Found { path, major } = tokio::task::spawn_blocking(move || {
            tools::find(config.as_deref(), "pg_dump", server_major)
        })
        .await
        .expect("finding pg_dump panicked")
        .map_err(|message| TaskError::Config {
            field: "pg_dump",
            message,
        })?;
        let pg_restore =
            tools::sibling(&path, "pg_restore").map_err(|message| TaskError::Config {
                field: "pg_dump",
                message,
            })?;
        let dest = dumps::dest(self.config.dest.as_deref(), &cx.data_dir, &cx.name);
        let found = Findings {
            database: database.clone(),
            database_bytes: size,
            server_major,
            pg_dump: path.clone(),
            pg_dump_major: major,
            pg_restore,
            dest: dest.clone(),
        };
        Ok(Plan {
            summary: format!(
                "dump database {database} ({}) with pg_dump {major} ({}) in {} format{} at {} into {}; keep {}",
                bytes(size as f64),
                path.display(),
                self.config.format.name(),
                match self.config.compress {
                    Some(c) => format!(", compress {c}"),
                    None => String::new(),
                },
                self.priority().words(),
                dest.display(),
                self.config.keep
            ),
            rows: 0,
            bytes: size,
            details: serde_json::to_value(&found).expect("serializable"),
        })
    }

    fn backup_bytes(&self, _plan: &Plan) -> u64 {
        // The run's own dir holds only run.json: the dump's room is
        // checked at `dest` (`room_needed`).
        0
    }

    fn room_needed(&self, plan: &Plan) -> Vec<(PathBuf, u64, String)> {
        let Ok(found) = found_of(plan) else {
            return Vec::new();
        };
        let need = (found.database_bytes as f64 * ROOM_FACTOR) as u64;
        vec![(
            found.dest,
            need,
            format!(
                "the dump: 1.2 × the database's {}",
                bytes(found.database_bytes as f64)
            ),
        )]
    }

    async fn backup(&mut self, cx: &Cx, plan: &Plan) -> Result<Backup, TaskError> {
        let found = found_of(plan)?;
        let dir = dumps::run_dir(&found.dest, cx.run_id);
        dumps::create(&dir).map_err(io(&dir))?;
        let removed = dumps::remove_incomplete(&found.dest, &dir);
        if !removed.is_empty() {
            tracing::info!(task = %cx.name, "removed {} incomplete dumps left by earlier runs", removed.len());
        }
        self.run = Some(RunState {
            found,
            dir: dir.clone(),
            started_ms: now_ms(),
            meta: None,
        });
        Ok(Backup {
            location: dir.display().to_string(),
            rows: 0,
            bytes: 0,
            details: json!({ "dump": null, "removed_incomplete": removed }),
        })
    }

    async fn apply_batch(&mut self, cx: &Cx, _plan: &Plan, _size: u64) -> Result<Batch, TaskError> {
        let pass = self.passfile(cx)?;
        let st = self.state()?;
        let (dir, found) = (st.dir.clone(), st.found.clone());
        let partial = dir.join(dumps::PARTIAL);
        let conninfo = tools::conninfo(
            &self.pg.connection(),
            None,
            &format!("upkeep maintenance {}", self.name),
        )
        .map_err(TaskError::failed)?;
        let mut args = vec![
            self.config.format.flag().to_string(),
            format!("--file={}", partial.display()),
            "--no-password".to_string(),
        ];
        if self.config.jobs > 1 {
            args.push(format!("--jobs={}", self.config.jobs));
        }
        if let Some(c) = self.config.compress {
            args.push(format!("--compress={c}"));
        }
        args.push(format!("--dbname={conninfo}"));
        let t = Instant::now();
        let ended = tools::run(
            &found.pg_dump,
            &args,
            pass.as_ref().map(|p| p.path()),
            self.priority(),
            &cx.cancel,
        )
        .await;
        drop(pass);
        let fail = |why: String| {
            let _ = remove_any(&partial);
            TaskError::failed(why)
        };
        match ended {
            Ok(Ended::Ok) => {}
            Ok(Ended::Cancelled) => {
                return Err(fail(
                    "pg_dump killed; the partial dump is removed".to_string(),
                ));
            }
            Ok(Ended::Failed(why)) => return Err(fail(why)),
            Err(why) => return Err(fail(why)),
        }
        let file = dir.join(self.config.format.file_name());
        let (sha, size) = {
            let (from, to) = (partial.clone(), file.clone());
            tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
                dumps::sync(&from)?;
                std::fs::rename(&from, &to)?;
                std::fs::File::open(to.parent().expect("in a dir"))?.sync_all()?;
                restrict(&to)?;
                Ok((dumps::sha256(&to)?, dumps::size(&to)?))
            })
            .await
            .expect("hashing panicked")
            .map_err(|e| fail(format!("finishing the dump {}: {e}", file.display())))?
        };
        let took = t.elapsed();
        let st = self.run.as_mut().expect("state checked above");
        st.meta = Some(DumpMeta {
            task: self.name.clone(),
            run_id: cx.run_id,
            format: self.config.format,
            file: self.config.format.file_name().to_string(),
            sha256: sha.clone(),
            bytes: size,
            database: found.database.clone(),
            server_major: found.server_major,
            pg_dump: format!("{} ({})", found.pg_dump.display(), found.pg_dump_major),
            started_ms: st.started_ms,
            finished_ms: now_ms(),
            toc_entries: 0,
        });
        Ok(Batch {
            rows: 0,
            archived: 0,
            detail: format!(
                "dumped {} in {:.1} s, sha256 {sha}",
                bytes(size as f64),
                took.as_secs_f64()
            ),
            done: true,
        })
    }

    fn backup_state(&self) -> Option<Backup> {
        let st = self.run.as_ref()?;
        Some(Backup {
            location: st.dir.display().to_string(),
            rows: 0,
            bytes: st.meta.as_ref().map_or(0, |m| m.bytes),
            details: json!({ "dump": st.meta }),
        })
    }

    async fn validate(&mut self, _cx: &Cx, _plan: &Plan) -> Result<Verdict, TaskError> {
        let st = self.state()?;
        let Some(mut meta) = st.meta.clone() else {
            return Ok(Verdict {
                ok: false,
                detail: "no dump was made".into(),
                figures: json!({}),
            });
        };
        let dir = st.dir.clone();
        let file = dir.join(&meta.file);
        let f = file.clone();
        let sha = tokio::task::spawn_blocking(move || dumps::sha256(&f))
            .await
            .expect("hashing panicked")
            .map_err(io(&file))?;
        if sha != meta.sha256 {
            return Ok(Verdict {
                ok: false,
                detail: format!(
                    "the dump's sha256 changed after it was written: {sha}, was {}",
                    meta.sha256
                ),
                figures: json!({ "sha256": sha }),
            });
        }
        let entries = match list(&st.found.pg_restore, &file).await {
            Ok(n) => n,
            Err(why) => {
                return Ok(Verdict {
                    ok: false,
                    detail: format!("pg_restore --list cannot read the dump: {why}"),
                    figures: json!({ "sha256": sha }),
                });
            }
        };
        meta.toc_entries = entries;
        let keep = self.config.keep as usize;
        let dest = st.found.dest.clone();
        let m = meta.clone();
        let pruned = tokio::task::spawn_blocking(move || -> std::io::Result<dumps::Pruned> {
            dumps::write_meta(&dir, &m)?;
            dumps::prune(&dest, keep)
        })
        .await
        .expect("writing dump.json panicked")
        .map_err(|e| TaskError::failed(format!("recording the dump complete: {e}")))?;
        if let Some(st) = self.run.as_mut() {
            st.meta = Some(meta.clone());
        }
        Ok(Verdict {
            ok: true,
            detail: format!(
                "sha256 {sha} reads back; pg_restore --list read {entries} entries; {} older dumps pruned (keep {keep}){}",
                pruned.removed.len(),
                match pruned.in_use.len() {
                    0 => String::new(),
                    n => format!("; {n} kept while a drill restores it, for the next run to prune"),
                }
            ),
            figures: json!({
                "bytes": meta.bytes,
                "sha256": sha,
                "toc_entries": entries,
                "seconds": (meta.finished_ms - meta.started_ms) as f64 / 1000.0,
                "pruned": pruned.removed,
                "in_use": pruned.in_use,
            }),
        })
    }

    async fn rollback(&mut self, _cx: &Cx, backup: &Backup) -> Result<Verdict, TaskError> {
        Err(TaskError::failed(format!(
            "a postgres_backup changes nothing to roll back; restoring the dump at {} into the live database is a human decision: see \"Backups and restore drills\" in the README for the pg_restore command",
            backup.location
        )))
    }

    fn reversible(&self) -> bool {
        false
    }
}

/// `pg_restore --list FILE`: the number of entries it reads, or its error.
pub async fn list(pg_restore: &Path, file: &Path) -> Result<u64, String> {
    let out = tokio::process::Command::new(pg_restore)
        .arg("--list")
        .arg(file)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("{}: {e}", pg_restore.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', "; "));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .count() as u64)
}

/// Gives a finished dump the backup files' modes (pg_dump follows the
/// umask).
fn restrict(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if file.is_dir() {
        super::backup_files::DIR_MODE
    } else {
        super::backup_files::FILE_MODE
    };
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode))?;
    if file.is_dir() {
        for e in std::fs::read_dir(file)? {
            std::fs::set_permissions(
                e?.path(),
                std::fs::Permissions::from_mode(super::backup_files::FILE_MODE),
            )?;
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn priority_and_compression_are_checked_and_named() {
        let base = "[probe.db]\nkind = \"postgres\"\nconninfo = \"host=127.0.0.1\"\nuser = \"postgres\"\n\n\
                    [maintenance.dump]\nkind = \"postgres_backup\"\nprobe = \"db\"\n";
        let err = crate::config::Config::parse(
            "t.toml",
            &format!("{base}nice = 20\ncompress = 10\nio_class = \"idle\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("maintenance.dump.nice: 20 is not a niceness: 0 to 19"),
            "{err}"
        );
        assert!(
            err.contains("maintenance.dump.compress: 10 is not a level: 0 (none) to 9"),
            "{err}"
        );
        let err = crate::config::Config::parse("t.toml", &format!("{base}io_class = \"lowest\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml:9:12: unknown variant `lowest`"),
            "{err}"
        );
        let c = crate::config::Config::parse("t.toml", base).unwrap();
        let crate::maintenance::config::TaskConfig::PostgresBackup(b) = &c.maintenance["dump"]
        else {
            panic!("not a postgres_backup");
        };
        assert_eq!(
            (b.nice, b.io_class, b.compress),
            (10, super::IoClass::Low, None)
        );
    }
}
