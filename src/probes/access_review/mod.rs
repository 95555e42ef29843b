//! `kind = "access_review"`: who can get in. Accounts, groups (`sudo`,
//! `wheel`, `adm` above all), sudoers files, the `authorized_keys` of every
//! user with a login shell and sshd's settings (`collect.rs`), compared
//! tick by tick (`diff.rs`); each change is an event worded for people.
//!
//! The last snapshot and the changes nobody has acknowledged yet are kept
//! in `DATA_DIR/access_review/NAME.json`, so a restart neither re-reports
//! nor forgets them. The probe stays degraded while a change is
//! unreviewed; `upkeep access ack` (or `POST /api/v1/access/ack`) writes
//! the acknowledgement time to `NAME.ack`, and the next tick clears every
//! change seen up to then. A part that cannot be read (sudoers.d as a
//! non-root agent) makes the probe `unknown` with the path: never "no change".

pub mod collect;
pub mod diff;
pub mod keys;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{ConfiguredKind, KindFacts, Threshold};
use super::{AnyProbe, BuildContext, Findings, Probe, ProbeError, write_atomic};
use crate::probe_config;
use crate::sample::{Reading, Status, Ts, Unit, now_ms};
pub use collect::Snapshot;

/// Events one tick reports one by one; past this, one event says how many
/// more changes there were (all are counted as unreviewed).
pub const MAX_EVENTS_PER_TICK: usize = 50;
/// Unreviewed changes kept word for word; older ones are counted only.
pub const MAX_KEPT_CHANGES: usize = 1000;

fn slash() -> PathBuf {
    PathBuf::from("/")
}

probe_config! {
    /// `[probe.NAME] kind = "access_review"`.
    pub struct AccessReviewConfig {
        /// The root the host's files are read under (a container's, or a test's).
        #[serde(default = "slash")]
        pub root: PathBuf,
    }
}

impl AccessReviewConfig {
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        if self.root.is_absolute() {
            Vec::new()
        } else {
            vec![(
                "root",
                format!("`{}` is not an absolute path", self.root.display()),
            )]
        }
    }
}

impl KindFacts for AccessReviewConfig {
    const HEADLINE: &'static str = "unreviewed_changes";
    const LATENCY: Option<&'static str> = None;
}

impl ConfiguredKind for AccessReviewConfig {
    const DEFAULT_INTERVAL: Option<Duration> = Some(Duration::from_secs(60));

    fn default_thresholds() -> Vec<Threshold> {
        Vec::new()
    }

    fn build(&self, name: &str, _timeout: Duration, ctx: &BuildContext) -> AnyProbe {
        Box::new(AccessReviewProbe::new(self, name, &ctx.data_dir))
    }
}

/// One change nobody has acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub ts_ms: Ts,
    pub message: String,
}

/// What the probe keeps across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The last snapshot compared against.
    pub snapshot: Option<Snapshot>,
    /// Unreviewed changes, oldest first, at most `MAX_KEPT_CHANGES`.
    pub unreviewed: Vec<Change>,
    /// Unreviewed changes not kept word for word.
    pub unreviewed_dropped: usize,
    /// When the changes were last acknowledged.
    pub acked_ms: Option<Ts>,
}

impl State {
    pub fn unreviewed_count(&self) -> usize {
        self.unreviewed.len() + self.unreviewed_dropped
    }
}

/// Where probe `name` keeps its state and its acknowledgements.
pub fn state_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("access_review").join(format!("{name}.json"))
}

fn ack_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("access_review").join(format!("{name}.ack"))
}

/// Reads probe `name`'s state; `Ok(None)` before its first tick.
pub fn load_state(data_dir: &Path, name: &str) -> Result<Option<State>, String> {
    let p = state_path(data_dir, name);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
    }
}

/// Acknowledges every change probe `name` has seen up to `at`: the probe
/// clears them at its next tick.
pub fn acknowledge(data_dir: &Path, name: &str, at: Ts) -> std::io::Result<()> {
    write_atomic(&ack_path(data_dir, name), at.to_string().as_bytes())
}

fn acked_at(data_dir: &Path, name: &str) -> Option<Ts> {
    std::fs::read_to_string(ack_path(data_dir, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub struct AccessReviewProbe {
    root: PathBuf,
    name: String,
    data_dir: PathBuf,
    /// `None` until loaded on the first tick.
    state: Option<State>,
    findings: Findings,
}

impl AccessReviewProbe {
    pub fn new(config: &AccessReviewConfig, name: &str, data_dir: &Path) -> AccessReviewProbe {
        AccessReviewProbe {
            root: config.root.clone(),
            name: name.to_string(),
            data_dir: data_dir.to_path_buf(),
            state: None,
            findings: Findings::default(),
        }
    }
}

/// One tick over `state`: the events to report, and whether the state
/// changed (and must be saved).
pub fn step(
    state: &mut State,
    mut now: Snapshot,
    acked: Option<Ts>,
    ts: Ts,
) -> (Vec<String>, bool) {
    let mut dirty = false;
    if let Some(at) = acked
        && state.acked_ms.is_none_or(|was| at > was)
    {
        state.unreviewed.retain(|c| c.ts_ms > at);
        state.unreviewed_dropped = 0;
        state.acked_ms = Some(at);
        dirty = true;
    }
    let mut events = Vec::new();
    match &state.snapshot {
        // The first look is the baseline: nothing has changed yet.
        None => dirty = true,
        Some(old) => {
            carry_unreadable(old, &mut now);
            let changes = diff::changes(old, &now);
            if !changes.is_empty() {
                dirty = true;
            }
            for (i, c) in changes.iter().enumerate() {
                if i < MAX_EVENTS_PER_TICK {
                    events.push(c.clone());
                }
                state.unreviewed.push(Change {
                    ts_ms: ts,
                    message: c.clone(),
                });
            }
            if changes.len() > MAX_EVENTS_PER_TICK {
                events.push(format!(
                    "and {} more access changes (see `upkeep access report`)",
                    changes.len() - MAX_EVENTS_PER_TICK
                ));
            }
            let over = state.unreviewed.len().saturating_sub(MAX_KEPT_CHANGES);
            state.unreviewed.drain(..over);
            state.unreviewed_dropped += over;
            dirty |= *old != now;
        }
    }
    state.snapshot = Some(now);
    (events, dirty)
}

/// A part unreadable now keeps what was last read of it, so that reading
/// it again later shows only what really changed meanwhile. (Why it is
/// unreadable is taken from the fresh read before this.)
fn carry_unreadable(old: &Snapshot, now: &mut Snapshot) {
    fn keep<T: Clone>(new: &mut Result<T, String>, old: &Result<T, String>) {
        if new.is_err()
            && let Ok(o) = old
        {
            *new = Ok(o.clone());
        }
    }
    if now.sudoers.is_err() {
        now.sudo_grants = old.sudo_grants.clone();
    }
    keep(&mut now.users, &old.users);
    keep(&mut now.groups, &old.groups);
    keep(&mut now.sudoers, &old.sudoers);
    keep(&mut now.sshd, &old.sshd);
    for (path, k) in now.keys.iter_mut() {
        if let Some(o) = old.keys.get(path) {
            keep(k, o);
        }
    }
}

impl Probe for AccessReviewProbe {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        self.findings = Findings::default();
        let mut state = match self.state.take() {
            Some(s) => s,
            None => load_state(&self.data_dir, &self.name)
                .map_err(ProbeError::Failed)?
                .unwrap_or_default(),
        };
        let root = self.root.clone();
        let snapshot = tokio::task::spawn_blocking(move || collect::collect(&root))
            .await
            .map_err(|e| ProbeError::Failed(format!("reading accounts failed: {e}")))?;
        let unreadable: Vec<String> = snapshot
            .unreadable()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let readings = vec![
            Reading::new(
                "login_users",
                snapshot.login_users().len() as f64,
                Unit::Count,
            ),
            Reading::new(
                "sudo_users",
                snapshot.sudo_users().len() as f64,
                Unit::Count,
            ),
            Reading::new("authorized_keys", snapshot.key_count() as f64, Unit::Count),
        ];
        let acked = acked_at(&self.data_dir, &self.name);
        let (events, dirty) = step(&mut state, snapshot, acked, now_ms());
        if dirty {
            let text = serde_json::to_vec(&state).expect("state serializes");
            let path = state_path(&self.data_dir, &self.name);
            if let Err(e) = write_atomic(&path, &text) {
                // Without its state a restart would report these again.
                self.state = Some(state);
                return Err(ProbeError::io(
                    format_args!("saving {}", path.display()),
                    &e,
                ));
            }
        }
        let pending = state.unreviewed_count();
        let mut readings = readings;
        readings.push(Reading::new(
            "unreviewed_changes",
            pending as f64,
            Unit::Count,
        ));
        self.findings.events = events;
        self.findings.status = if !unreadable.is_empty() {
            Some((Status::Unknown, unreadable.join("; ")))
        } else if pending > 0 {
            let latest = state.unreviewed.last().map_or("", |c| c.message.as_str());
            Some((
                Status::Degraded,
                format!(
                    "{pending} unreviewed access change{} (latest: {latest}); review with `upkeep access report`, then `upkeep access ack`",
                    if pending == 1 { "" } else { "s" }
                ),
            ))
        } else {
            None
        };
        self.state = Some(state);
        Ok(readings)
    }

    fn findings(&mut self) -> Findings {
        std::mem::take(&mut self.findings)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::collect::User;
    use super::*;

    fn snap(users: &[(&str, u32)]) -> Snapshot {
        Snapshot {
            users: Ok(users
                .iter()
                .map(|(n, uid)| {
                    (
                        n.to_string(),
                        User {
                            uid: *uid,
                            gid: *uid,
                            home: format!("/home/{n}"),
                            shell: "/bin/bash".into(),
                        },
                    )
                })
                .collect()),
            groups: Ok(BTreeMap::new()),
            sudoers: Ok(BTreeMap::new()),
            sudo_grants: Default::default(),
            keys: BTreeMap::new(),
            sshd: Ok(None),
        }
    }

    #[test]
    fn an_ack_clears_what_came_before_it_only() {
        let mut s = State::default();
        assert_eq!(step(&mut s, snap(&[("a", 1)]), None, 1_000), (vec![], true));
        let (ev, _) = step(&mut s, snap(&[("a", 1), ("b", 2)]), None, 2_000);
        assert_eq!(ev, vec!["user `b` added (uid 2, /bin/bash)"]);
        let (ev, _) = step(&mut s, snap(&[("a", 1), ("b", 3)]), None, 4_000);
        assert_eq!(ev, vec!["user `b` changed: uid 2 → 3, gid 2 → 3"]);
        // Acknowledged at 3 s: the change seen at 4 s stays unreviewed.
        let (ev, dirty) = step(&mut s, snap(&[("a", 1), ("b", 3)]), Some(3_000), 5_000);
        assert!(ev.is_empty() && dirty);
        assert_eq!(s.unreviewed_count(), 1);
        assert_eq!(
            s.unreviewed[0].message,
            "user `b` changed: uid 2 → 3, gid 2 → 3"
        );
        // The same acknowledgement read again changes nothing.
        let (_, dirty) = step(&mut s, snap(&[("a", 1), ("b", 3)]), Some(3_000), 6_000);
        assert!(!dirty);
    }

    #[test]
    fn an_unreadable_part_keeps_the_last_one_read() {
        let mut s = State::default();
        step(&mut s, snap(&[("a", 1)]), None, 1_000);
        let mut blind = snap(&[]);
        blind.users = Err("cannot read /etc/passwd: Permission denied".into());
        let (ev, _) = step(&mut s, blind, None, 2_000);
        assert!(ev.is_empty(), "{ev:?}");
        // Readable again with a new user: only that is a change.
        let (ev, _) = step(&mut s, snap(&[("a", 1), ("c", 5)]), None, 3_000);
        assert_eq!(ev, vec!["user `c` added (uid 5, /bin/bash)"]);
    }
}
