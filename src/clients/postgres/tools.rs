//! PostgreSQL's own client programs (`pg_dump`, `pg_restore`) run as child
//! processes by the backup and drill task kinds: where a program is found
//! (PATH, then `/usr/lib/postgresql/*/bin`) and whether its major version
//! can talk to the server, the connection string handed to it (no
//! password: that goes through a temporary `PGPASSFILE`, mode 0600,
//! removed when dropped), and running it with its stderr kept for the
//! ledger and killed at once when the caller cancels.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio_postgres::config::Host;
use tokio_util::sync::CancellationToken;

use super::Settings;
use super::priority::Priority;

/// Where Debian and Ubuntu install every major version side by side.
pub const VERSIONED_ROOT: &str = "/usr/lib/postgresql";

/// Bytes of a child's stderr kept (its last ones: the error is at the end).
const STDERR_KEEP: usize = 4096;

/// A program found, with its major version.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub path: PathBuf,
    pub major: u32,
}

/// Every executable `tool` in the directories of `path_env` (PATH) and in
/// `ROOT/*/bin` for each root, in that order, each path once.
pub fn candidates(path_env: Option<&OsStr>, roots: &[PathBuf], tool: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if is_executable(&p) && !out.contains(&p) {
            out.push(p);
        }
    };
    if let Some(path) = path_env {
        for dir in std::env::split_paths(path) {
            push(dir.join(tool));
        }
    }
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            push(d.join("bin").join(tool));
        }
    }
    out
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Words for where `candidates` looked, for an error.
pub fn looked_in(path_env: Option<&OsStr>, roots: &[PathBuf], tool: &str) -> String {
    let path = path_env
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let roots: Vec<String> = roots
        .iter()
        .map(|r| format!("{}/*/bin/{tool}", r.display()))
        .collect();
    format!("PATH ({path}) and {}", roots.join(", "))
}

/// The major version a program prints with `--version` ("pg_dump
/// (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)" is 15; "9.6.24" is 9).
pub fn parse_major(version_line: &str) -> Option<u32> {
    let after = version_line
        .split_once(")")
        .map(|(_, rest)| rest)
        .unwrap_or(version_line);
    let word = after
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    word.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The major version of a server from its `server_version_num` (150010
/// is 15.10: 15; 90624 is 9.6.24: 9, as `parse_major` reads "9.6.24").
pub fn server_major(version_num: i32) -> u32 {
    (version_num.max(0) / 10_000) as u32
}

/// Runs `path --version` and reads its major version.
pub fn major_of(path: &Path) -> Result<u32, String> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: cannot run it: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_major(text.trim()).ok_or_else(|| {
        format!(
            "{}: `--version` printed no version: {:?}",
            path.display(),
            text.trim()
        )
    })
}

/// The program to use for a server of major version `server`: the one of
/// the same major version, else the oldest newer one (a newer pg_dump
/// reads an older server; an older one refuses a newer server). The
/// error names every version found and where the search looked.
pub fn choose(found: &[Found], server: u32, tool: &str, looked: &str) -> Result<Found, String> {
    if let Some(f) = found
        .iter()
        .filter(|f| f.major >= server)
        .min_by_key(|f| f.major)
    {
        return Ok(f.clone());
    }
    if found.is_empty() {
        return Err(format!("no {tool} found (looked in {looked})"));
    }
    let list: Vec<String> = found
        .iter()
        .map(|f| format!("{tool} {} ({})", f.major, f.path.display()))
        .collect();
    Err(format!(
        "the server's major version is {server}, newer than every {tool} found: {}; install the PostgreSQL {server} client programs or set `{tool}` (looked in {looked})",
        list.join(", ")
    ))
}

/// `tool` for a server of major version `server`: `configured` when set
/// (checked to run and to be new enough), else searched for.
pub fn find(configured: Option<&Path>, tool: &str, server: u32) -> Result<Found, String> {
    if let Some(p) = configured {
        let major = major_of(p).map_err(|e| format!("{tool} = {e}"))?;
        let f = Found {
            path: p.to_path_buf(),
            major,
        };
        return choose(&[f], server, tool, &p.display().to_string());
    }
    let path_env = std::env::var_os("PATH");
    let roots = [PathBuf::from(VERSIONED_ROOT)];
    let found: Vec<Found> = candidates(path_env.as_deref(), &roots, tool)
        .into_iter()
        .filter_map(|path| major_of(&path).ok().map(|major| Found { path, major }))
        .collect();
    choose(
        &found,
        server,
        tool,
        &looked_in(path_env.as_deref(), &roots, tool),
    )
}

/// `pg_restore` beside `pg_dump` (same install, same version).
pub fn sibling(pg_dump: &Path, tool: &str) -> Result<PathBuf, String> {
    let p = pg_dump.with_file_name(tool);
    if is_executable(&p) {
        Ok(p)
    } else {
        Err(format!(
            "no {tool} beside {} (looked for {})",
            pg_dump.display(),
            p.display()
        ))
    }
}

/// A libpq key/value connection string for the client programs, from
/// `settings` with the database `dbname` (else the settings' own):
/// host, port, database, user, connect timeout, application name. Never
/// a password.
pub fn conninfo(
    settings: &Settings<'_>,
    dbname: Option<&str>,
    application_name: &str,
) -> Result<String, String> {
    let c = settings.parse()?;
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = c.get_ports().iter().map(|p| p.to_string()).collect();
    let user = c.get_user().unwrap_or(settings.user);
    let db = dbname.or(c.get_dbname()).unwrap_or(user);
    let mut parts = vec![
        ("host", hosts.join(",")),
        ("dbname", db.to_string()),
        ("user", user.to_string()),
        (
            "connect_timeout",
            settings.connect_timeout.as_secs().max(2).to_string(),
        ),
        ("application_name", application_name.to_string()),
    ];
    if !ports.is_empty() {
        parts.push(("port", ports.join(",")));
    }
    Ok(parts
        .iter()
        .map(|(k, v)| format!("{k}={}", quote_value(v)))
        .collect::<Vec<_>>()
        .join(" "))
}

/// A conninfo value in single quotes, `'` and `\` escaped.
fn quote_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A password file for one run of a client program: `*:*:*:*:PASSWORD`,
/// mode 0600 from its creation, removed when dropped. Its path is fixed
/// per task, so a file a killed process left is replaced (and removed) by
/// the task's next run.
pub struct PassFile {
    path: PathBuf,
}

impl PassFile {
    /// Writes `password` to `path` (any file there is replaced).
    pub fn create(path: &Path, password: &str) -> Result<PassFile, String> {
        let _ = std::fs::remove_file(path);
        let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(format!("*:*:*:*:{escaped}\n").as_bytes())?;
            f.sync_all()
        };
        write().map_err(|e| format!("password file {}: {e}", path.display()))?;
        Ok(PassFile {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PassFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The temporary password file of task `name`'s client programs,
/// `DATA_DIR/maintenance/NAME.pgpass`, when a password file is named; any
/// file a killed run left there is removed first.
pub fn task_passfile(
    data_dir: &Path,
    name: &str,
    password_file: Option<&Path>,
) -> Result<Option<PassFile>, String> {
    let path = data_dir.join("maintenance").join(format!("{name}.pgpass"));
    let _ = std::fs::remove_file(&path);
    let Some(file) = password_file else {
        return Ok(None);
    };
    let secret = crate::secret::read(file)?;
    let dir = path.parent().expect("has a parent");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    PassFile::create(&path, secret.expose()).map(Some)
}

/// How a child program ended.
#[derive(Debug)]
pub enum Ended {
    /// Exit status 0.
    Ok,
    /// Failed: the exit status and the end of its stderr.
    Failed(String),
    /// Killed because the caller cancelled.
    Cancelled,
}

/// Runs `program args` with `PGPASSFILE` set to `passfile` (and any
/// `PGPASSWORD` of this process removed), stdin and stdout closed, stderr
/// kept, at `priority`. Killed (and waited for) as soon as `cancel` fires,
/// and when the returned future is dropped.
pub async fn run(
    program: &Path,
    args: &[String],
    passfile: Option<&Path>,
    priority: Priority,
    cancel: &CancellationToken,
) -> Result<Ended, String> {
    let mut cmd = tokio::process::Command::new(program);
    priority.apply(&mut cmd);
    cmd.args(args)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match passfile {
        Some(p) => cmd.env("PGPASSFILE", p),
        // No password: libpq must not read the user's ~/.pgpass either.
        None => cmd.env("PGPASSFILE", "/dev/null"),
    };
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{}: cannot start it: {e}", program.display()))?;
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let read_err = async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    };
    // Killed inside, so that its stderr ends and the reader with it.
    let waited = async {
        tokio::select! {
            s = child.wait() => Some(s),
            _ = cancel.cancelled() => {
                let _ = child.kill().await;
                None
            }
        }
    };
    let (status, err) = tokio::join!(waited, read_err);
    let status = match status {
        Some(s) => s.map_err(|e| format!("{name}: {e}"))?,
        None => return Ok(Ended::Cancelled),
    };
    if status.success() {
        return Ok(Ended::Ok);
    }
    let tail = &err[err.len().saturating_sub(STDERR_KEEP)..];
    let text = String::from_utf8_lossy(tail).trim().replace('\n', "; ");
    Ok(Ended::Failed(format!(
        "{name} exited with {status}: {text}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_are_read_from_version_lines() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_restore (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 17devel"), Some(17));
        assert_eq!(parse_major("nothing here"), None);
    }

    fn f(p: &str, major: u32) -> Found {
        Found {
            path: PathBuf::from(p),
            major,
        }
    }

    #[test]
    fn the_same_major_is_chosen_else_the_oldest_newer_one() {
        let found = [
            f("/a/pg_dump", 13),
            f("/b/pg_dump", 16),
            f("/c/pg_dump", 15),
        ];
        assert_eq!(choose(&found, 15, "pg_dump", "x").unwrap().major, 15);
        assert_eq!(choose(&found, 14, "pg_dump", "x").unwrap().major, 15);
        assert_eq!(choose(&found, 16, "pg_dump", "x").unwrap().major, 16);
    }

    #[test]
    fn a_server_newer_than_every_pg_dump_is_refused_naming_both_versions() {
        let err = choose(
            &[f("/usr/bin/pg_dump", 15)],
            17,
            "pg_dump",
            "PATH (/usr/bin)",
        )
        .unwrap_err();
        assert!(err.contains("major version is 17"), "{err}");
        assert!(err.contains("pg_dump 15 (/usr/bin/pg_dump)"), "{err}");
        assert!(err.contains("looked in PATH (/usr/bin)"), "{err}");
    }

    #[test]
    fn server_version_numbers_give_the_majors_pg_dump_prints() {
        // server_version_num of released servers, beside the version line
        // the same release's pg_dump prints.
        for (num, line, major) in [
            (
                150010,
                "pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)",
                15,
            ),
            (170002, "pg_dump (PostgreSQL) 17.2", 17),
            (
                160006,
                "pg_dump (PostgreSQL) 16.6 (Ubuntu 16.6-0ubuntu0.24.04.1)",
                16,
            ),
            (100023, "pg_dump (PostgreSQL) 10.23", 10),
            (90624, "pg_dump (PostgreSQL) 9.6.24", 9),
        ] {
            assert_eq!(server_major(num), major, "{num}");
            assert_eq!(parse_major(line), Some(major), "{line}");
        }
    }

    #[test]
    fn the_installed_pg_dump_refuses_a_server_newer_than_it() {
        // The real pg_dump of this host (PostgreSQL's client programs are a
        // test requirement); the server is one two majors newer than the
        // newest found, as its server_version_num would say.
        let any = find(None, "pg_dump", 0).expect("pg_dump installed");
        let found_all = candidates(
            std::env::var_os("PATH").as_deref(),
            &[PathBuf::from(VERSIONED_ROOT)],
            "pg_dump",
        );
        let top = found_all
            .iter()
            .filter_map(|p| major_of(p).ok())
            .max()
            .unwrap();
        assert!(top >= any.major);
        let server = server_major(((top + 2) * 10_000 + 2) as i32);
        let err = find(None, "pg_dump", server).unwrap_err();
        assert!(
            err.contains(&format!("the server's major version is {server}")),
            "{err}"
        );
        assert!(err.contains(&format!("pg_dump {top} (")), "{err}");
        assert!(
            err.contains(&format!("install the PostgreSQL {server} client programs")),
            "{err}"
        );
        // The same server as the newest pg_dump is served by it.
        assert_eq!(find(None, "pg_dump", top).unwrap().major, top);
    }

    #[test]
    fn no_pg_dump_anywhere_says_where_it_looked() {
        let empty = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let path = std::env::join_paths([empty.path()]).unwrap();
        let roots = [root.path().to_path_buf()];
        assert!(candidates(Some(&path), &roots, "pg_dump").is_empty());
        let looked = looked_in(Some(&path), &roots, "pg_dump");
        let err = choose(&[], 15, "pg_dump", &looked).unwrap_err();
        assert!(err.starts_with("no pg_dump found"), "{err}");
        assert!(
            err.contains(&empty.path().display().to_string()),
            "names the PATH searched: {err}"
        );
        assert!(err.contains("/*/bin/pg_dump"), "{err}");
    }

    #[test]
    fn versioned_installs_are_found_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("15").join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let tool = bin.join("pg_dump");
        std::fs::copy("/bin/true", &tool).unwrap();
        let found = candidates(None, &[root.path().to_path_buf()], "pg_dump");
        assert_eq!(found, vec![tool]);
    }

    #[test]
    fn the_passfile_is_0600_escaped_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.pgpass");
        {
            let f = PassFile::create(&p, "a:b\\c").unwrap();
            let mode = std::fs::metadata(f.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            assert_eq!(std::fs::read_to_string(&p).unwrap(), "*:*:*:*:a\\:b\\\\c\n");
        }
        assert!(!p.exists());
    }

    #[test]
    fn conninfo_carries_no_password_and_quotes_values() {
        let s = Settings {
            conninfo: "host=127.0.0.1 port=5432",
            user: "o'brien",
            password_file: None,
            dbname: Some("shop"),
            connect_timeout: std::time::Duration::from_secs(5),
        };
        let c = conninfo(&s, Some("upkeep_drill_x_1"), "upkeep").unwrap();
        assert_eq!(
            c,
            "host='127.0.0.1' dbname='upkeep_drill_x_1' user='o\\'brien' connect_timeout='5' application_name='upkeep' port='5432'"
        );
    }
}
