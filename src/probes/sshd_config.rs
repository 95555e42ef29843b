//! sshd's effective settings as its config files give them: the first
//! value of a keyword wins (as sshd reads them), `Include` is followed,
//! and the global section ends at the first `Match`. Read by
//! `access_review` (changes) and `compliance` (root login, passwords).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The settings watched, lower-case as sshd compares them.
pub const WATCHED: &[&str] = &[
    "permitrootlogin",
    "passwordauthentication",
    "pubkeyauthentication",
    "kbdinteractiveauthentication",
    "challengeresponseauthentication",
    "permitemptypasswords",
    "authorizedkeysfile",
    "allowusers",
    "allowgroups",
    "denyusers",
    "denygroups",
    "port",
    "listenaddress",
];

/// The watched settings of `ROOT/etc/ssh/sshd_config` and what it
/// includes. `Ok(None)`: sshd has no config here (not installed); `Err`:
/// a file exists but cannot be read, with its path.
pub fn effective(root: &Path) -> Result<Option<BTreeMap<String, String>>, String> {
    let main = root.join("etc/ssh/sshd_config");
    if std::fs::symlink_metadata(&main).is_err() {
        return Ok(None);
    }
    let mut out = BTreeMap::new();
    read(root, &main, &mut out, 0)?;
    Ok(Some(out))
}

fn read(
    root: &Path,
    file: &Path,
    out: &mut BTreeMap<String, String>,
    depth: u32,
) -> Result<bool, String> {
    let shown = show(root, file);
    if depth > 8 {
        return Err(format!("{shown}: includes nest deeper than 8"));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {shown}: {e}"))?;
    for line in String::from_utf8_lossy(&bytes).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
            Some((k, v)) => (
                k.to_ascii_lowercase(),
                v.trim_start_matches(['=', ' ', '\t']).trim(),
            ),
            None => continue,
        };
        match key.as_str() {
            "match" => return Ok(false),
            "include" => {
                for pattern in value.split_whitespace() {
                    for f in expand(root, pattern) {
                        if !read(root, &f, out, depth + 1)? {
                            return Ok(false);
                        }
                    }
                }
            }
            k if WATCHED.contains(&k) => {
                out.entry(key.clone()).or_insert_with(|| value.to_string());
            }
            _ => {}
        }
    }
    Ok(true)
}

/// An `Include` pattern's files, in order: relative to `/etc/ssh`, one
/// `*` in the last component at most (as the packaged configs use).
fn expand(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let rel = pattern
        .strip_prefix('/')
        .map_or_else(|| format!("etc/ssh/{pattern}"), str::to_string);
    let path = root.join(rel);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy().to_string();
    let Some((pre, post)) = name.split_once('*') else {
        return vec![path];
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post)
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// `file` as the host names it: without the root it was read under.
pub fn show(root: &Path, file: &Path) -> String {
    match file.strip_prefix(root) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => file.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_wins_includes_first_and_match_ends() {
        let root = tempfile::tempdir().unwrap();
        let ssh = root.path().join("etc/ssh");
        std::fs::create_dir_all(ssh.join("sshd_config.d")).unwrap();
        std::fs::write(
            ssh.join("sshd_config"),
            "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\nPasswordAuthentication yes\nMatch User x\nPubkeyAuthentication no\n",
        )
        .unwrap();
        std::fs::write(
            ssh.join("sshd_config.d/50-local.conf"),
            "passwordauthentication=no\n",
        )
        .unwrap();
        std::fs::write(
            ssh.join("sshd_config.d/ignored.txt"),
            "PermitRootLogin no\n",
        )
        .unwrap();
        let s = effective(root.path()).unwrap().unwrap();
        assert_eq!(s["permitrootlogin"], "yes");
        assert_eq!(s["passwordauthentication"], "no");
        assert!(!s.contains_key("pubkeyauthentication"));
        let none = tempfile::tempdir().unwrap();
        assert_eq!(effective(none.path()), Ok(None));
    }
}
