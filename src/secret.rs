//! Secrets (passwords, the API token) read from files. A `Secret` never
//! prints: `Debug` shows `[redacted]`, there is no `Display`, and
//! `Serialize` writes `[redacted]`. Only the code that sends or compares it
//! calls `expose()`.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, to hand to a client library. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Where a secret file really is: a relative path is looked up in systemd's
/// `$CREDENTIALS_DIRECTORY` when that is set.
pub fn resolve(path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() && !dir.is_empty() => PathBuf::from(dir).join(path),
        _ => path.to_path_buf(),
    }
}

/// Reads a secret file: the first line, without its line ending. The file
/// must not be readable by others (mode at most 0640). Errors name the file,
/// never its content.
pub fn read(path: &Path) -> Result<Secret, String> {
    first_line(path, "password file").map(Secret)
}

/// Reads the API's bearer token file, as `read` reads a password file but
/// with surrounding whitespace trimmed (the presented token is trimmed too,
/// so an editor's stray space must not lock every client out). A token that
/// is empty once trimmed is refused: it would match an empty credential.
pub fn read_token(path: &Path) -> Result<Secret, String> {
    let line = first_line(path, "token file")?;
    let token = line.trim();
    if token.is_empty() {
        return Err(format!(
            "token file {}: its first line holds no token (only whitespace)",
            resolve(path).display()
        ));
    }
    Ok(Secret(token.to_string()))
}

/// The first line of a secret file (`what` names it in errors), after
/// checking its mode.
fn first_line(path: &Path, what: &str) -> Result<String, String> {
    let path = resolve(path);
    let meta = std::fs::metadata(&path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o137 != 0 {
        return Err(format!(
            "{what} {}: mode {mode:04o} lets others read or anyone write it; use 0640 or stricter",
            path.display()
        ));
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!("{what} {}: empty", path.display()));
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2-canary");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
        assert_eq!(s.expose(), "hunter2-canary");
    }

    #[test]
    fn files_readable_by_others_are_refused_without_leaking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "canary-pw\nsecond line\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read(&p).unwrap_err();
        assert!(
            err.contains("mode 0644") && !err.contains("canary-pw"),
            "{err}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(read(&p).unwrap().expose(), "canary-pw");
        let err = read(&dir.path().join("missing")).unwrap_err();
        assert!(err.starts_with("password file "), "{err}");
    }

    #[test]
    fn a_token_is_trimmed_and_an_empty_one_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        let write = |text: &str| {
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write(" \tcanary-t0ken  \r\nsecond line\n");
        assert_eq!(read_token(&p).unwrap().expose(), "canary-t0ken");
        for empty in ["", "\n", "   \n", "\t \r\n"] {
            write(empty);
            let err = read_token(&p).unwrap_err();
            assert!(
                err.starts_with(&format!("token file {}: ", p.display())),
                "{empty:?}: {err}"
            );
        }
        write("canary-t0ken\n");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_token(&p).unwrap_err();
        assert!(
            err.contains("mode 0644") && !err.contains("canary-t0ken"),
            "{err}"
        );
    }
}
