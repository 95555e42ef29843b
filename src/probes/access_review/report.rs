//! The periodic access review document behind `upkeep access report`: each
//! login user with groups, sudo rights, keys and last login, and what
//! changed since the last acknowledged review (from the probe's state).
//! Read straight from the files, so it works with or without the agent.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::collect::{self, Snapshot};
use super::load_state;
use crate::fmt::rfc3339;
use crate::sample::Ts;

#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    pub file: String,
    pub fingerprint: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub comment: String,
    /// The line restricts the key (`command=`, `from=`, ...).
    pub options: bool,
    pub file_modified: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkRow {
    pub file: String,
    pub target: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserRow {
    pub name: String,
    pub uid: u32,
    pub shell: String,
    pub groups: Vec<String>,
    /// Can become root through sudo (group sudo or wheel, or a sudoers rule).
    pub sudo: bool,
    pub keys: Vec<KeyRow>,
    /// `authorized_keys` links leading out of the home: not read.
    pub key_links: Vec<LinkRow>,
    /// From `/var/log/lastlog`, where present.
    pub last_login: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeRow {
    pub at: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub probe: String,
    pub root: String,
    pub generated_at: String,
    /// What could not be read, with the path: those parts are unknown.
    pub unknown: Vec<String>,
    pub users: Vec<UserRow>,
    /// Sudoers files and a digest of each.
    pub sudoers: BTreeMap<String, String>,
    /// sshd's watched settings; `null`: no sshd config.
    pub sshd: Option<BTreeMap<String, String>>,
    pub acked_at: Option<String>,
    /// Changes since the last acknowledged review, oldest first.
    pub changes_since_ack: Vec<ChangeRow>,
    /// Older unreviewed changes no longer kept word for word.
    pub changes_not_listed: usize,
}

fn time(secs: i64) -> String {
    rfc3339(secs * 1000)
}

/// The review of probe `name` (reading under `root`, state in `data_dir`).
pub fn report(name: &str, root: &Path, data_dir: &Path, now: Ts) -> Report {
    let snap: Snapshot = collect::collect(root);
    let mut unknown: Vec<String> = snap.unreadable().iter().map(|s| s.to_string()).collect();
    let state = match load_state(data_dir, name) {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            unknown.push(e);
            Default::default()
        }
    };
    let sudo = snap.sudo_users();
    let groups_of = |user: &str| -> Vec<String> {
        snap.groups
            .as_ref()
            .map(|g| {
                g.iter()
                    .filter(|(_, m)| m.contains(user))
                    .map(|(g, _)| g.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    let users = snap
        .login_users()
        .into_iter()
        .map(|(n, u)| {
            let mut keys = Vec::new();
            let mut key_links = Vec::new();
            for (file, kf) in snap.keys.iter() {
                let Ok(kf) = kf else { continue };
                if &kf.user != n {
                    continue;
                }
                if let Some(t) = &kf.link {
                    key_links.push(LinkRow {
                        file: file.clone(),
                        target: t.clone(),
                    });
                }
                keys.extend(kf.keys.iter().map(|k| KeyRow {
                    file: file.clone(),
                    fingerprint: k.fingerprint.clone(),
                    kind: k.kind.clone(),
                    comment: k.comment.clone(),
                    options: k.options,
                    file_modified: kf.mtime.map(time),
                }));
            }
            UserRow {
                name: n.clone(),
                uid: u.uid,
                shell: u.shell.clone(),
                groups: groups_of(n),
                sudo: sudo.contains(n),
                keys,
                key_links,
                last_login: collect::last_login(root, u.uid).map(time),
            }
        })
        .collect();
    Report {
        probe: name.to_string(),
        root: root.display().to_string(),
        generated_at: rfc3339(now),
        unknown,
        users,
        sudoers: snap.sudoers.clone().unwrap_or_default(),
        sshd: snap.sshd.clone().ok().flatten(),
        acked_at: state.acked_ms.map(rfc3339),
        changes_since_ack: state
            .unreviewed
            .iter()
            .map(|c| ChangeRow {
                at: rfc3339(c.ts_ms),
                message: c.message.clone(),
            })
            .collect(),
        changes_not_listed: state.unreviewed_dropped,
    }
}
