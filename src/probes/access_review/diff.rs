//! What changed between two snapshots, one sentence per change. A part
//! that could not be read on either side is not compared: the probe says
//! it is unknown instead of reporting everything in it as removed.

use std::collections::{BTreeMap, BTreeSet};

use super::collect::{KeyFile, Snapshot};

/// Every change from `old` to `new`, in a stable order.
pub fn changes(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    if let (Ok(a), Ok(b)) = (&old.users, &new.users) {
        for (n, u) in b {
            match a.get(n) {
                None => out.push(format!("user `{n}` added (uid {}, {})", u.uid, u.shell)),
                Some(o) if o != u => {
                    let mut what = Vec::new();
                    if o.uid != u.uid {
                        what.push(format!("uid {} → {}", o.uid, u.uid));
                    }
                    if o.shell != u.shell {
                        what.push(format!("shell {} → {}", o.shell, u.shell));
                    }
                    if o.home != u.home {
                        what.push(format!("home {} → {}", o.home, u.home));
                    }
                    if o.gid != u.gid {
                        what.push(format!("gid {} → {}", o.gid, u.gid));
                    }
                    out.push(format!("user `{n}` changed: {}", what.join(", ")));
                }
                Some(_) => {}
            }
        }
        for n in a.keys().filter(|n| !b.contains_key(*n)) {
            out.push(format!("user `{n}` removed"));
        }
    }
    if let (Ok(a), Ok(b)) = (&old.groups, &new.groups) {
        let none = BTreeSet::new();
        for (g, members) in b {
            let before = a.get(g).unwrap_or(&none);
            if !a.contains_key(g) {
                out.push(format!("group `{g}` added"));
            }
            for m in members.difference(before) {
                out.push(format!("`{m}` added to group `{g}`"));
            }
            for m in before.difference(members) {
                out.push(format!("`{m}` removed from group `{g}`"));
            }
        }
        for (g, members) in a.iter().filter(|(g, _)| !b.contains_key(*g)) {
            out.push(format!("group `{g}` removed"));
            for m in members {
                out.push(format!("`{m}` removed from group `{g}`"));
            }
        }
    }
    if let (Ok(a), Ok(b)) = (&old.sudoers, &new.sudoers) {
        files(a, b, &mut out);
    }
    keys(&old.keys, &new.keys, &mut out);
    if let (Ok(a), Ok(b)) = (&old.sshd, &new.sshd) {
        let empty = BTreeMap::new();
        let (a, b) = (a.as_ref().unwrap_or(&empty), b.as_ref().unwrap_or(&empty));
        let unset = "(unset)".to_string();
        for k in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
            let (x, y) = (a.get(k).unwrap_or(&unset), b.get(k).unwrap_or(&unset));
            if x != y {
                out.push(format!("sshd {k} changed from {x} to {y}"));
            }
        }
    }
    out
}

fn files(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, out: &mut Vec<String>) {
    for (f, digest) in b {
        match a.get(f) {
            None => out.push(format!("{f} added")),
            Some(d) if d != digest => out.push(format!("{f} changed")),
            Some(_) => {}
        }
    }
    for f in a.keys().filter(|f| !b.contains_key(*f)) {
        out.push(format!("{f} removed"));
    }
}

fn keys(
    a: &BTreeMap<String, Result<KeyFile, String>>,
    b: &BTreeMap<String, Result<KeyFile, String>>,
    out: &mut Vec<String>,
) {
    let empty = KeyFile::default();
    for path in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
        let (old, new) = match (a.get(path), b.get(path)) {
            // Unreadable on either side: not compared.
            (Some(Err(_)), _) | (_, Some(Err(_))) => continue,
            (Some(Ok(o)), Some(Ok(n))) => (o, n),
            (None, Some(Ok(n))) => (&empty, n),
            (Some(Ok(o)), None) => (o, &empty),
            (None, None) => continue,
        };
        if old.link != new.link
            && let Some(target) = &new.link
        {
            out.push(format!("{path} is a link to {target} (not followed)"));
        }
        let was: BTreeSet<_> = old.keys.iter().map(|k| &k.fingerprint).collect();
        let now: BTreeSet<_> = new.keys.iter().map(|k| &k.fingerprint).collect();
        let mut told = BTreeSet::new();
        for k in &new.keys {
            if !was.contains(&k.fingerprint) && told.insert(&k.fingerprint) {
                out.push(format!(
                    "key {} ({}, `{}`) added to {path}",
                    k.fingerprint, k.kind, k.comment
                ));
            }
        }
        for k in &old.keys {
            if !now.contains(&k.fingerprint) && told.insert(&k.fingerprint) {
                out.push(format!(
                    "key {} ({}, `{}`) removed from {path}",
                    k.fingerprint, k.kind, k.comment
                ));
            }
        }
    }
}
