//! Secrets (passwords) read from files. A `Secret` never prints: `Debug`
//! shows `[redacted]`, there is no `Display`, and `Serialize` writes
//! `[redacted]`. Only the code that sends it over a connection calls
//! `expose()`.

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
    let path = resolve(path);
    let meta =
        std::fs::metadata(&path).map_err(|e| format!("password file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o137 != 0 {
        return Err(format!(
            "password file {}: mode {mode:04o} lets others read or anyone write it; use 0640 or stricter",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("password file {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!("password file {}: empty", path.display()));
    }
    Ok(Secret(line.to_string()))
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
}
