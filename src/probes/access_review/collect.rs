//! What `access_review` reads, as one `Snapshot`: accounts and groups
//! (`/etc/passwd`, `/etc/group`), sudoers files (by digest), the keys of
//! every login user's `authorized_keys`, and sshd's watched settings. A
//! part that cannot be read is an `Err` naming the path, never an empty
//! part (which would read as "everything removed"). `/etc/shadow` is never
//! opened.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::{self, Key};
use crate::probes::sshd_config as sshd;

/// An `authorized_keys` file is read up to this many bytes (about 20,000
/// RSA-4096 keys); what follows is left unread and the file is marked.
pub const MAX_KEY_FILE_BYTES: u64 = 16 << 20;
/// Groups whose members can administer the host (or read its logs).
pub const ADMIN_GROUPS: &[&str] = &["sudo", "wheel", "adm"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

impl User {
    /// A shell someone can log in with.
    pub fn can_log_in(&self) -> bool {
        let s = self.shell.as_str();
        !(s.is_empty() || s.ends_with("/nologin") || s.ends_with("/false") || s == "/bin/sync")
    }
}

/// One `authorized_keys` file of a login user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    pub user: String,
    pub keys: Vec<Key>,
    pub invalid_lines: usize,
    /// Over `MAX_KEY_FILE_BYTES`: the keys past the limit are not listed.
    pub truncated: bool,
    /// A link to a file outside the user's home: recorded, not followed.
    pub link: Option<String>,
    /// Modification time, unix seconds.
    pub mtime: Option<i64>,
}

/// Everything watched, at one moment. Maps are ordered so that two
/// snapshots compare entry by entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub users: Result<BTreeMap<String, User>, String>,
    /// Group → its members (listed ones and those whose primary group it is).
    pub groups: Result<BTreeMap<String, BTreeSet<String>>, String>,
    /// Sudoers file (as the host names it) → digest of its content.
    pub sudoers: Result<BTreeMap<String, String>, String>,
    /// Users and `%groups` granted rights in the sudoers files.
    pub sudo_grants: BTreeSet<String>,
    /// `authorized_keys` path → what it holds, or why it cannot be read.
    pub keys: BTreeMap<String, Result<KeyFile, String>>,
    /// sshd's watched settings; `Ok(None)`: no sshd config.
    pub sshd: Result<Option<BTreeMap<String, String>>, String>,
}

impl Snapshot {
    /// Every part that could not be read, with why.
    pub fn unreadable(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for e in [
            self.users.as_ref().err(),
            self.groups.as_ref().err(),
            self.sudoers.as_ref().err(),
            self.sshd.as_ref().err(),
        ]
        .into_iter()
        .flatten()
        {
            out.push(e.as_str());
        }
        out.extend(
            self.keys
                .values()
                .filter_map(|k| k.as_ref().err().map(String::as_str)),
        );
        out
    }

    pub fn login_users(&self) -> Vec<(&String, &User)> {
        match &self.users {
            Ok(u) => u.iter().filter(|(_, u)| u.can_log_in()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Users who can become root through sudo: members of `sudo` and
    /// `wheel`, and users named (directly or by `%group`) in sudoers.
    pub fn sudo_users(&self) -> BTreeSet<String> {
        let empty = BTreeMap::new();
        let groups = self.groups.as_ref().unwrap_or(&empty);
        let mut out = BTreeSet::new();
        for g in ["sudo", "wheel"] {
            out.extend(groups.get(g).into_iter().flatten().cloned());
        }
        for grant in &self.sudo_grants {
            match grant.strip_prefix('%') {
                Some(g) => out.extend(groups.get(g).into_iter().flatten().cloned()),
                None => {
                    out.insert(grant.clone());
                }
            }
        }
        out
    }

    pub fn key_count(&self) -> usize {
        self.keys
            .values()
            .filter_map(|k| k.as_ref().ok())
            .map(|k| k.keys.len())
            .sum()
    }
}

/// A name as text: UTF-8 as it is, anything else with its bytes escaped
/// (`\xff`), so that two different names never read the same.
pub fn name(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

fn read_file(root: &Path, rel: &str) -> Result<Vec<u8>, String> {
    let p = root.join(rel);
    std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", sshd::show(root, &p)))
}

/// Login users' names and home directories (as bytes: a home need not be UTF-8).
type Homes = Vec<(String, Vec<u8>)>;

/// `name:x:uid:gid:gecos:home:shell` lines; a line of another shape is skipped.
fn users(root: &Path) -> Result<(BTreeMap<String, User>, Homes), String> {
    let bytes = read_file(root, "etc/passwd")?;
    let mut out = BTreeMap::new();
    let mut homes = Vec::new();
    for line in bytes.split(|b| *b == b'\n') {
        let f: Vec<&[u8]> = line.split(|b| *b == b':').collect();
        let [n, _, uid, gid, _, home, shell] = f.as_slice() else {
            continue;
        };
        let (Some(uid), Some(gid)) = (number(uid), number(gid)) else {
            continue;
        };
        if n.is_empty() || n.starts_with(b"#") {
            continue;
        }
        let user = User {
            uid,
            gid,
            home: name(home),
            shell: name(shell),
        };
        if user.can_log_in() {
            homes.push((name(n), home.to_vec()));
        }
        out.insert(name(n), user);
    }
    Ok((out, homes))
}

fn number(b: &[u8]) -> Option<u32> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `name:x:gid:member,member` lines, with each user added to the group
/// that is its primary one.
fn groups(
    root: &Path,
    users: &BTreeMap<String, User>,
) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let bytes = read_file(root, "etc/group")?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_gid: BTreeMap<u32, String> = BTreeMap::new();
    for line in bytes.split(|b| *b == b'\n') {
        let f: Vec<&[u8]> = line.split(|b| *b == b':').collect();
        let [n, _, gid, members] = f.as_slice() else {
            continue;
        };
        let Some(gid) = number(gid) else { continue };
        let members = members
            .split(|b| *b == b',')
            .filter(|m| !m.is_empty())
            .map(name)
            .collect();
        by_gid.insert(gid, name(n));
        out.insert(name(n), members);
    }
    for (user, u) in users {
        if let Some(g) = by_gid.get(&u.gid) {
            out.entry(g.clone()).or_default().insert(user.clone());
        }
    }
    Ok(out)
}

/// Digests of `/etc/sudoers` and every file in `/etc/sudoers.d`, and the
/// users and groups their rules name.
fn sudoers(root: &Path) -> (Result<BTreeMap<String, String>, String>, BTreeSet<String>) {
    let mut files = vec![root.join("etc/sudoers")];
    let dir = root.join("etc/sudoers.d");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut more: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
            more.sort();
            files.extend(more);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return (
                Err(format!("cannot read {}: {e}", sshd::show(root, &dir))),
                BTreeSet::new(),
            );
        }
    }
    let mut digests = BTreeMap::new();
    let mut grants = BTreeSet::new();
    for f in files {
        let bytes = match std::fs::read(&f) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return (
                    Err(format!("cannot read {}: {e}", sshd::show(root, &f))),
                    grants,
                );
            }
        };
        digests.insert(sshd::show(root, &f), hex(&Sha256::digest(&bytes)[..12]));
        grants.extend(grants_of(&String::from_utf8_lossy(&bytes)));
    }
    (Ok(digests), grants)
}

/// The users and `%groups` that rule lines grant something to.
fn grants_of(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('@') && l.contains('='))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|who| !who.starts_with("Defaults") && !who.ends_with("_Alias"))
        // An alias (upper case) stands for others; it is not a user.
        .filter(|who| {
            who.starts_with('%') || !who.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        })
        .flat_map(|who| who.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The keys of one login user's `authorized_keys` under `home`.
fn key_file(root: &Path, user: &str, home: &[u8]) -> Option<(String, Result<KeyFile, String>)> {
    let home_rel = Path::new(std::ffi::OsStr::from_bytes(home));
    let home_path = root.join(home_rel.strip_prefix("/").unwrap_or(home_rel));
    let file = home_path.join(".ssh/authorized_keys");
    let shown = sshd::show(root, &file);
    let meta = match std::fs::symlink_metadata(&file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some((shown.clone(), Err(format!("cannot read {shown}: {e}")))),
    };
    let mut kf = KeyFile {
        user: user.to_string(),
        ..KeyFile::default()
    };
    // Where the file really is: a link (of the file or of .ssh) that leads
    // out of the home is recorded and not read.
    let real = std::fs::canonicalize(&file);
    let home_real = std::fs::canonicalize(&home_path).unwrap_or(home_path.clone());
    let inside = matches!(&real, Ok(r) if r.starts_with(&home_real));
    if !inside {
        let target = match real {
            Ok(r) => sshd::show(root, &r),
            Err(_) => std::fs::read_link(&file)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|e| format!("unreadable link: {e}")),
        };
        kf.link = Some(target);
        kf.mtime = mtime(&meta);
        return Some((shown, Ok(kf)));
    }
    let read = std::fs::File::open(&file).and_then(|f| {
        let mut buf = Vec::new();
        f.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut buf)?;
        Ok(buf)
    });
    let mut bytes = match read {
        Ok(b) => b,
        Err(e) => return Some((shown.clone(), Err(format!("cannot read {shown}: {e}")))),
    };
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        kf.truncated = true;
        bytes.truncate(MAX_KEY_FILE_BYTES as usize);
        // A line cut in two is not counted as garbage.
        if let Some(end) = bytes.iter().rposition(|b| *b == b'\n') {
            bytes.truncate(end);
        }
    }
    let parsed = keys::parse(&String::from_utf8_lossy(&bytes));
    kf.keys = parsed.keys;
    kf.invalid_lines = parsed.invalid_lines;
    kf.mtime = std::fs::metadata(&file).ok().as_ref().and_then(mtime);
    Some((shown, Ok(kf)))
}

fn mtime(m: &std::fs::Metadata) -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    Some(m.mtime())
}

/// Reads everything watched under `root`.
pub fn collect(root: &Path) -> Snapshot {
    let (users, homes) = match users(root) {
        Ok((u, h)) => (Ok(u), h),
        Err(e) => (Err(e), Vec::new()),
    };
    let groups = match &users {
        Ok(u) => groups(root, u),
        Err(_) => groups(root, &BTreeMap::new()),
    };
    let (sudoers, sudo_grants) = sudoers(root);
    let keys = homes
        .iter()
        .filter_map(|(user, home)| key_file(root, user, home))
        .collect();
    Snapshot {
        users,
        groups,
        sudoers,
        sudo_grants,
        keys,
        sshd: sshd::effective(root),
    }
}

/// Last login of `uid` from `ROOT/var/log/lastlog` (unix seconds), where
/// the file exists and has a record.
pub fn last_login(root: &Path, uid: u32) -> Option<i64> {
    use std::io::{Seek, SeekFrom};
    // struct lastlog { int32 ll_time; char ll_line[32]; char ll_host[256]; }
    const RECORD: u64 = 4 + 32 + 256;
    let mut f = std::fs::File::open(root.join("var/log/lastlog")).ok()?;
    f.seek(SeekFrom::Start(u64::from(uid) * RECORD)).ok()?;
    let mut t = [0u8; 4];
    f.read_exact(&mut t).ok()?;
    let t = i32::from_le_bytes(t);
    (t > 0).then_some(i64::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudoers_rules_name_users_and_groups() {
        let text = "Defaults env_reset\nUser_Alias ADMINS = a, b\nroot ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\ndeploy,ops ALL=(ALL) NOPASSWD: ALL\nADMINS ALL=ALL\n@includedir /etc/sudoers.d\n# bob ALL=ALL\n";
        assert_eq!(grants_of(text), vec!["root", "%sudo", "deploy", "ops"]);
    }

    #[test]
    fn login_shells() {
        let u = |shell: &str| User {
            uid: 1,
            gid: 1,
            home: "/".into(),
            shell: shell.into(),
        };
        assert!(u("/bin/bash").can_log_in());
        assert!(!u("/usr/sbin/nologin").can_log_in());
        assert!(!u("/bin/false").can_log_in());
        assert!(!u("").can_log_in());
    }

    #[test]
    fn non_utf8_names_stay_distinct() {
        assert_eq!(name(b"alice"), "alice");
        assert_eq!(name(b"bad\xffname"), "bad\\xffname");
        assert_ne!(name(b"a\xff"), name(b"a\xfe"));
    }
}
