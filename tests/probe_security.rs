//! The security probes against the real host and temp roots:
//! `security_updates` with the real apt-get (its count compared with
//! `apt-get -s dist-upgrade`), a dpkg lock held by another process, a
//! hung apt; `access_review` over real users, groups, sudoers files and
//! keys made by `ssh-keygen` in a temp root; `upkeep access report` run as
//! another user; `compliance` on this host.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use upkeep::probes::access_review::{self, AccessReviewConfig, AccessReviewProbe};
use upkeep::probes::security_updates::{SecurityUpdatesConfig, SecurityUpdatesProbe};
use upkeep::probes::{Findings, Probe};
use upkeep::sample::{Reading, Status};

use crate::util::{failed, temp_dir, tick};

fn value(r: &[Reading], metric: &str) -> f64 {
    r.iter()
        .find(|r| r.metric == metric)
        .unwrap_or_else(|| panic!("no reading {metric} in {r:?}"))
        .value
}

fn updates(root: &Path, data: &Path, timeout_s: u64) -> SecurityUpdatesProbe {
    let c: SecurityUpdatesConfig =
        toml::from_str(&format!("root = {:?}", root.display().to_string())).unwrap();
    SecurityUpdatesProbe::new(
        &c,
        "updates",
        std::time::Duration::from_secs(timeout_s),
        data,
    )
}

fn script(root: &Path, rel: &str, body: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn pending_updates_equal_what_apt_get_simulate_lists() {
    let apt = Command::new("apt-get")
        .args(["-s", "dist-upgrade"])
        .env("LC_ALL", "C")
        .output()
        .expect("apt-get must be installed for this test");
    assert!(apt.status.success(), "apt-get -s dist-upgrade failed");
    let text = String::from_utf8_lossy(&apt.stdout);
    let inst: Vec<&str> = text.lines().filter(|l| l.starts_with("Inst ")).collect();
    let security = inst.iter().filter(|l| l.contains("-security")).count();
    let data = temp_dir();
    let mut p = updates(Path::new("/"), data.path(), 120);
    let r = tokio::time::timeout(std::time::Duration::from_secs(120), p.sample())
        .await
        .expect("apt-get finished")
        .unwrap();
    assert_eq!(value(&r, "updates_pending"), inst.len() as f64);
    assert_eq!(value(&r, "security_updates_pending"), security as f64);
    if security > 0 {
        // The security list's date is known here: the age is at least since then.
        assert!(value(&r, "oldest_security_update_age_seconds") > 0.0);
    }
    let seen = std::fs::read_to_string(data.path().join("security_updates/updates.json")).unwrap();
    let seen: std::collections::BTreeMap<String, i64> = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen.len(), security);
}

#[tokio::test]
async fn a_held_dpkg_lock_is_unhealthy_with_its_pid_and_apt_never_runs() {
    let root = temp_dir();
    // An apt-get that would hang: the lock must be found before it runs.
    script(root.path(), "usr/bin/apt-get", "sleep 60");
    let lock = root.path().join("var/lib/dpkg/lock-frontend");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, "").unwrap();
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import fcntl,sys,time\nf=open(sys.argv[1],'w')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\ntime.sleep(60)",
        ])
        .arg(&lock)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 must be installed for this test");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let data = temp_dir();
    let mut p = updates(root.path(), data.path(), 30);
    let why = failed(tick(&mut p).await);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(why, format!("apt is locked by pid {}", holder.id()));
    // Released: apt-get now runs (and hangs, see the next test).
}

#[tokio::test]
async fn a_hung_apt_get_is_killed_at_the_deadline() {
    let root = temp_dir();
    let pidfile = root.path().join("apt.pid");
    script(
        root.path(),
        "usr/bin/apt-get",
        &format!("echo $$ > {}\nexec sleep 60", pidfile.display()),
    );
    let data = temp_dir();
    let mut p = updates(root.path(), data.path(), 2);
    let why = failed(tick(&mut p).await);
    assert!(
        why.contains("--simulate dist-upgrade did not finish within 1s"),
        "{why}"
    );
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    crate::util::wait_for("the hung apt-get to be killed", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    });
}

#[tokio::test]
async fn apt_failures_and_locks_in_its_own_words() {
    let root = temp_dir();
    let data = temp_dir();
    script(
        root.path(),
        "usr/bin/apt-get",
        "echo 'E: boom' >&2\nexit 100",
    );
    let mut p = updates(root.path(), data.path(), 10);
    assert_eq!(
        failed(tick(&mut p).await),
        "apt-get --simulate dist-upgrade failed (exit 100): E: boom"
    );
    script(
        root.path(),
        "usr/bin/apt-get",
        "echo 'E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt)' >&2\nexit 100",
    );
    assert_eq!(failed(tick(&mut p).await), "apt is locked by pid 4242");
}

#[tokio::test]
async fn no_package_manager_is_unhealthy() {
    let root = temp_dir();
    let data = temp_dir();
    let mut p = updates(root.path(), data.path(), 10);
    assert_eq!(failed(tick(&mut p).await), "no apt-get or dnf found");
}

#[tokio::test]
async fn reboot_required_from_the_real_apt_and_a_flag_file() {
    let root = temp_dir();
    // The real apt, reading the real host's lists; the flag in the temp root.
    script(
        root.path(),
        "usr/bin/apt-get",
        "exec /usr/bin/apt-get --simulate dist-upgrade",
    );
    let flag = root.path().join("run/reboot-required");
    std::fs::create_dir_all(flag.parent().unwrap()).unwrap();
    let data = temp_dir();
    let mut p = updates(root.path(), data.path(), 120);
    let r = tokio::time::timeout(std::time::Duration::from_secs(120), p.sample())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value(&r, "reboot_required"), 0.0);
    std::fs::write(&flag, "*** System restart required ***\n").unwrap();
    // Required for two days: past the one-day grace.
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&flag)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    let r = tokio::time::timeout(std::time::Duration::from_secs(120), p.sample())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value(&r, "reboot_required"), 1.0);
    let Findings { status, .. } = p.findings();
    let (s, why) = status.expect("a verdict");
    assert!(s >= Status::Degraded);
    assert!(why.contains("reboot required for 2d"), "{why}");
}

/// A host under a temp root: passwd, group, sudoers, homes.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = temp_dir();
        let h = Host { dir };
        let mut passwd = b"root:x:0:0:root:/root:/bin/bash\n\
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
this line is garbage\n\
alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
            .to_vec();
        // A user whose name is not UTF-8.
        passwd.extend_from_slice(b"j\xf6rg:x:1001:1001::/home/jorg:/bin/sh\n");
        h.write_bytes("etc/passwd", &passwd);
        h.write(
            "etc/group",
            "root:x:0:\nsudo:x:27:alice\nadm:x:4:\nalice:x:1000:\njorg:x:1001:\n",
        );
        h.write("etc/sudoers", "Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n");
        std::fs::create_dir_all(h.path("etc/sudoers.d")).unwrap();
        std::fs::create_dir_all(h.path("home/alice/.ssh")).unwrap();
        std::fs::create_dir_all(h.path("home/jorg")).unwrap();
        h
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        self.write_bytes(rel, text.as_bytes());
    }

    fn write_bytes(&self, rel: &str, b: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }

    fn append(&self, rel: &str, text: &str) {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.path(rel))
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    fn probe(&self, data: &Path) -> AccessReviewProbe {
        let c: AccessReviewConfig = toml::from_str(&format!(
            "root = {:?}",
            self.dir.path().display().to_string()
        ))
        .unwrap();
        AccessReviewProbe::new(&c, "access", data)
    }
}

/// A real key made by ssh-keygen: its public line and the fingerprint
/// ssh-keygen prints for it.
fn keygen(dir: &Path, comment: &str) -> (String, String) {
    let key = dir.join(format!("key-{}", comment.replace('@', "-")));
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen must be installed for this test (openssh-client)");
    assert!(out.status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let fp = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    let fp = String::from_utf8_lossy(&fp.stdout);
    (
        public.trim().to_string(),
        fp.split_whitespace().nth(1).unwrap().to_string(),
    )
}

async fn look(p: &mut AccessReviewProbe) -> (Vec<Reading>, Findings) {
    let r = tick(p).await.unwrap();
    (r, p.findings())
}

#[tokio::test]
async fn each_access_change_is_an_event_that_stays_unreviewed_across_restarts_until_acked() {
    let host = Host::new();
    let keys = temp_dir();
    let (alice_key, _) = keygen(keys.path(), "alice@desk");
    host.write("home/alice/.ssh/authorized_keys", &format!("{alice_key}\n"));
    let data = temp_dir();
    let mut p = host.probe(data.path());
    let (r, f) = look(&mut p).await;
    // root, alice and jörg log in; daemon does not; the garbage line is no user.
    assert_eq!(value(&r, "login_users"), 3.0);
    assert_eq!(
        value(&r, "sudo_users"),
        2.0,
        "root by sudoers, alice by group sudo"
    );
    assert_eq!(value(&r, "authorized_keys"), 1.0);
    assert_eq!(value(&r, "unreviewed_changes"), 0.0);
    assert_eq!(f, Findings::default(), "the first look is the baseline");

    let (deploy_key, deploy_fp) = keygen(keys.path(), "alice@laptop");
    host.append("etc/passwd", "deploy:x:1003:1003::/home/deploy:/bin/bash\n");
    host.write(
        "etc/group",
        "root:x:0:\nsudo:x:27:alice,deploy\nadm:x:4:\nalice:x:1000:\njorg:x:1001:\n",
    );
    host.write(
        "home/deploy/.ssh/authorized_keys",
        &format!("{deploy_key}\n"),
    );
    host.write(
        "etc/sudoers.d/90-deploy",
        "deploy ALL=(ALL) NOPASSWD: /usr/bin/systemctl\n",
    );
    let (r, f) = look(&mut p).await;
    assert_eq!(
        f.events,
        vec![
            "user `deploy` added (uid 1003, /bin/bash)".to_string(),
            "`deploy` added to group `sudo`".to_string(),
            "/etc/sudoers.d/90-deploy added".to_string(),
            format!(
                "key {deploy_fp} (ed25519, `alice@laptop`) added to /home/deploy/.ssh/authorized_keys"
            ),
        ]
    );
    assert_eq!(value(&r, "unreviewed_changes"), 4.0);
    assert_eq!(value(&r, "sudo_users"), 3.0);
    let (s, why) = f.status.unwrap();
    assert_eq!(s, Status::Degraded);
    assert!(why.starts_with("4 unreviewed access changes"), "{why}");

    host.write(
        "etc/sudoers.d/90-deploy",
        "deploy ALL=(ALL) NOPASSWD: ALL\n",
    );
    let (_, f) = look(&mut p).await;
    assert_eq!(f.events, vec!["/etc/sudoers.d/90-deploy changed"]);

    // A restart reports nothing again and forgets nothing.
    drop(p);
    let mut p = host.probe(data.path());
    let (r, f) = look(&mut p).await;
    assert!(f.events.is_empty(), "{:?}", f.events);
    assert_eq!(value(&r, "unreviewed_changes"), 5.0);
    assert_eq!(f.status.unwrap().0, Status::Degraded);

    access_review::acknowledge(data.path(), "access", upkeep::sample::now_ms()).unwrap();
    let (r, f) = look(&mut p).await;
    assert_eq!(value(&r, "unreviewed_changes"), 0.0);
    assert_eq!(f, Findings::default());
}

#[tokio::test]
async fn ten_thousand_keys_garbage_and_options_are_parsed_counted_and_bounded() {
    let host = Host::new();
    let keys = temp_dir();
    let (line, fp) = keygen(keys.path(), "ops@ci");
    let data = temp_dir();
    let mut p = host.probe(data.path());
    look(&mut p).await;
    // One real key with options, garbage, and 10,000 distinct made-up keys.
    let mut text = format!(
        "command=\"/usr/bin/backup --from \\\"a b\\\"\",no-pty,from=\"10.0.0.0/8\" {line}\n"
    );
    text.push_str("garbage\nssh-ed25519 not-base64!! x\n# comment\n\n");
    for i in 0..10_000u32 {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        let mut k = [7u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        blob.extend_from_slice(&k);
        use base64::Engine;
        text.push_str(&format!(
            "ssh-ed25519 {} k{i}\n",
            base64::engine::general_purpose::STANDARD.encode(blob)
        ));
    }
    host.write("home/alice/.ssh/authorized_keys", &text);
    let (r, f) = look(&mut p).await;
    assert_eq!(value(&r, "authorized_keys"), 10_001.0);
    assert_eq!(value(&r, "unreviewed_changes"), 10_001.0);
    // Events are bounded: 50 one by one, then one saying how many more.
    assert_eq!(f.events.len(), access_review::MAX_EVENTS_PER_TICK + 1);
    assert_eq!(
        f.events[0],
        format!("key {fp} (ed25519, `ops@ci`) added to /home/alice/.ssh/authorized_keys")
    );
    assert_eq!(
        f.events.last().unwrap(),
        "and 9951 more access changes (see `upkeep access report`)"
    );
    let state = access_review::load_state(data.path(), "access")
        .unwrap()
        .unwrap();
    assert_eq!(state.unreviewed.len(), access_review::MAX_KEPT_CHANGES);
    assert_eq!(state.unreviewed_count(), 10_001);
    let snap = state.snapshot.unwrap();
    let file = snap.keys["/home/alice/.ssh/authorized_keys"]
        .as_ref()
        .unwrap();
    assert_eq!(file.invalid_lines, 2);
    assert!(file.keys[0].options);
    assert!(!file.truncated);
}

#[tokio::test]
async fn a_link_out_of_the_home_is_recorded_not_followed() {
    let host = Host::new();
    let keys = temp_dir();
    let (line, _) = keygen(keys.path(), "elsewhere@x");
    host.write("etc/shared_keys", &format!("{line}\n"));
    let data = temp_dir();
    let mut p = host.probe(data.path());
    look(&mut p).await;
    std::os::unix::fs::symlink(
        host.path("etc/shared_keys"),
        host.path("home/alice/.ssh/authorized_keys"),
    )
    .unwrap();
    let (r, f) = look(&mut p).await;
    assert_eq!(value(&r, "authorized_keys"), 0.0, "the target is not read");
    assert_eq!(
        f.events,
        vec!["/home/alice/.ssh/authorized_keys is a link to /etc/shared_keys (not followed)"]
    );
    // A link that stays inside the home is followed.
    std::fs::remove_file(host.path("home/alice/.ssh/authorized_keys")).unwrap();
    host.write("home/alice/keys.txt", &format!("{line}\n"));
    std::os::unix::fs::symlink("../keys.txt", host.path("home/alice/.ssh/authorized_keys"))
        .unwrap();
    let (r, _) = look(&mut p).await;
    assert_eq!(value(&r, "authorized_keys"), 1.0);
}

#[tokio::test]
async fn an_unreadable_part_is_unknown_with_its_path_never_no_change() {
    let host = Host::new();
    let data = temp_dir();
    let mut p = host.probe(data.path());
    look(&mut p).await;
    // sudoers.d replaced by something that cannot be listed.
    std::fs::remove_dir(host.path("etc/sudoers.d")).unwrap();
    host.write("etc/sudoers.d", "not a directory");
    let (r, f) = look(&mut p).await;
    let (s, why) = f.status.unwrap();
    assert_eq!(s, Status::Unknown);
    assert!(why.starts_with("cannot read /etc/sudoers.d: "), "{why}");
    assert!(
        f.events.is_empty(),
        "an unreadable part is not a removal: {:?}",
        f.events
    );
    assert_eq!(value(&r, "unreviewed_changes"), 0.0);
}

/// A config of one access_review probe over `root`, readable by anyone.
fn access_config(dir: &Path, root: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\ndata_dir = {:?}\n[probe.access]\nkind = \"access_review\"\nroot = {:?}\n",
            data.display().to_string(),
            root.display().to_string()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn access_report_as_a_non_root_user_names_what_it_cannot_read() {
    let host = Host::new();
    host.write("etc/sudoers.d/90-deploy", "deploy ALL=ALL\n");
    let open =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let conf = temp_dir();
    open(conf.path(), 0o755);
    open(host.dir.path(), 0o755);
    open(&host.path("etc/sudoers.d"), 0o750);
    let cfg = access_config(conf.path(), host.dir.path());
    open(&conf.path().join("data"), 0o755);
    use std::os::unix::process::CommandExt;
    let out = Command::new(crate::util::bin())
        .args(["access", "report", "--format", "json", "--config"])
        .arg(&cfg)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let unknown: Vec<&str> = doc["unknown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        unknown,
        vec!["cannot read /etc/sudoers.d: Permission denied (os error 13)"]
    );
    let users: Vec<&str> = doc["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec!["alice", "j\\xf6rg", "root"]);
    // As root the same report reads everything.
    let out = crate::util::upkeep(&[
        "access",
        "report",
        "--format",
        "json",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["unknown"], serde_json::json!([]));
    assert_eq!(
        doc["sudoers"]["/etc/sudoers.d/90-deploy"]
            .as_str()
            .unwrap()
            .len(),
        24
    );
}

/// The whole path in a running agent: a change becomes a `change` event in
/// history and degrades the probe; the API's ack (with the token) clears it.
#[test]
fn a_running_agent_records_access_changes_as_events_until_acked_over_the_api() {
    use crate::util::{Agent, free_port, get, request, wait_for, write_file};
    let host = Host::new();
    let dir = temp_dir();
    let token = write_file(dir.path(), "token", "s3cret-t0ken\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "[agent]\nfailure_threshold = 1\nsuccess_threshold = 1\n[host]\nenabled = false\n\
             [api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n\
             [probe.access]\nkind = \"access_review\"\ninterval = \"1s\"\nroot = {:?}\n",
            token.display(),
            host.dir.path().display().to_string()
        ),
    );
    let _agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    let status = || {
        let (_, body) = get(port, "/api/v1/probes").unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        doc["probes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "access")
            .map(|p| {
                (
                    p["status"].as_str().unwrap_or("").to_string(),
                    p["reason"].clone(),
                )
            })
    };
    wait_for("the baseline", || {
        status().is_some_and(|(s, _)| s == "healthy")
    });
    host.append("etc/passwd", "deploy:x:1003:1003::/home/deploy:/bin/bash\n");
    wait_for("the change to degrade the probe", || {
        status().is_some_and(|(s, _)| s == "degraded")
    });
    let (_, why) = status().unwrap();
    assert!(
        why.as_str()
            .unwrap()
            .contains("(latest: user `deploy` added (uid 1003, /bin/bash))"),
        "{why}"
    );
    wait_for("the change event in history", || {
        get(port, "/api/v1/events?probe=access")
            .is_some_and(|(_, b)| b.contains("user `deploy` added (uid 1003, /bin/bash)"))
    });
    let post = |auth: &str| {
        request(
            port,
            &format!(
                "POST /api/v1/access/ack HTTP/1.1\r\nHost: localhost:{port}\r\n{auth}Content-Length: 0\r\n\r\n"
            ),
        )
        .expect("the agent answers")
    };
    assert_eq!(post("").code, 401);
    let r = post("Authorization: Bearer s3cret-t0ken\r\n");
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(
        r.body.contains("\"acknowledged\":[\"access\"]"),
        "{}",
        r.body
    );
    wait_for("the ack to clear the probe", || {
        status().is_some_and(|(s, _)| s == "healthy")
    });
}

/// The baseline on this very host, each result checked against what the
/// host shows by other means.
#[test]
fn compliance_on_this_host_agrees_with_what_the_host_shows() {
    use upkeep::probes::compliance::{ComplianceConfig, Verdict, run_all};
    let c: ComplianceConfig = toml::from_str("world_writable_paths = [\"/etc\"]").unwrap();
    let results: std::collections::BTreeMap<&str, Verdict> = run_all(&c, &[]).into_iter().collect();
    assert_eq!(results.len(), 7);
    // Printed for comparing with `lynis audit system` on the same host.
    for (id, v) in &results {
        println!("{id}: {v:?}");
    }
    let has = |p: &str| Path::new(p).exists();
    if has("/etc/ssh/sshd_config") {
        assert!(!matches!(results["ssh-root-login"], Verdict::Unknown(_)));
    } else {
        assert_eq!(
            results["ssh-root-login"],
            Verdict::Unknown("no /etc/ssh/sshd_config (is sshd installed?)".into())
        );
    }
    let running = |names: &[&str]| {
        names.iter().any(|n| {
            Command::new("pgrep")
                .args(["-x", n])
                .status()
                .is_ok_and(|s| s.success())
        })
    };
    let synced = running(&["systemd-timesyn", "chronyd", "ntpd"]);
    assert_eq!(
        matches!(results["time-sync"], Verdict::Pass(_)),
        synced,
        "{:?}",
        results["time-sync"]
    );
    // find(1) agrees on world-writable files under /etc.
    let find = Command::new("find")
        .args([
            "/etc", "-perm", "-0002", "(", "-type", "f", "-o", "(", "-type", "d", "!", "-perm",
            "-1000", ")", ")",
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&find.stdout).lines().count();
    assert_eq!(
        matches!(results["world-writable"], Verdict::Fail(_)),
        listed > 0,
        "{:?}",
        results["world-writable"]
    );
    assert_eq!(
        results["secret-modes"],
        Verdict::Pass("no password or token files configured".into())
    );
    let tool = [
        "/usr/sbin/nft",
        "/sbin/nft",
        "/usr/sbin/iptables",
        "/sbin/iptables",
    ]
    .iter()
    .any(|p| has(p));
    if !tool {
        assert!(!matches!(results["firewall"], Verdict::Pass(_)));
    }
    for (id, v) in &results {
        assert!(!v.reason().is_empty(), "{id} has no reason");
    }
}

#[test]
fn bad_security_options_are_config_errors_naming_each() {
    let dir = temp_dir();
    let cfg = crate::util::write_file(
        dir.path(),
        "agent.toml",
        "[probe.updates]\nkind = \"security_updates\"\nsecurity_grace = \"40d\"\n\n\
         [probe.baseline]\nkind = \"compliance\"\nchecks = [\"ssh-root-login\", \"antivirus\"]\nunhealthy_on = [\"firewal\"]\n\n\
         [probe.access]\nkind = \"access_review\"\nroot = \"etc\"\n",
    );
    let out = crate::util::upkeep(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let err = crate::util::stderr(&out);
    for words in [
        "probe.updates.security_grace: 40d is longer than security_max 30d",
        "probe.baseline.checks: no check named `antivirus`",
        "probe.baseline.unhealthy_on: no check named `firewal`",
        "probe.access.root: `etc` is not an absolute path",
    ] {
        assert!(err.contains(words), "{words}\n{err}");
    }
}

#[test]
fn access_report_table_and_ack_from_the_command_line() {
    let host = Host::new();
    let conf = temp_dir();
    let cfg = access_config(conf.path(), host.dir.path());
    let data = conf.path().join("data");
    // Without the agent: a baseline, then a change, as the probe would see them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut p = host.probe(&data);
    rt.block_on(look(&mut p));
    host.append("etc/passwd", "deploy:x:1003:1003::/home/deploy:/bin/bash\n");
    let (r, _) = rt.block_on(look(&mut p));
    assert_eq!(value(&r, "unreviewed_changes"), 1.0);
    let out = crate::util::upkeep(&["access", "report", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    let table = crate::util::stdout(&out);
    assert!(table.contains("access review `access`"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("alice ") && l.contains("yes")),
        "{table}"
    );
    assert!(table.contains("never acknowledged"), "{table}");
    assert!(
        table.contains("user `deploy` added (uid 1003, /bin/bash)"),
        "{table}"
    );
    let out = crate::util::upkeep(&["access", "ack", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    let (r, f) = rt.block_on(look(&mut p));
    assert_eq!(value(&r, "unreviewed_changes"), 0.0);
    assert_eq!(f.status, None);
    let out = crate::util::upkeep(&[
        "access",
        "report",
        "--format",
        "json",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["changes_since_ack"], serde_json::json!([]));
    assert!(doc["acked_at"].is_string());
    // A config without such a probe is a usage error naming the kind.
    let none = crate::util::write_file(conf.path(), "empty.toml", "");
    let out = crate::util::upkeep(&["access", "ack", "--config", none.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(crate::util::stderr(&out).contains("no probe of kind access_review"));
}

/// The example blocks of the three kinds, uncommented, are a valid config
/// whose every value is the default.
#[test]
fn the_example_blocks_show_the_defaults() {
    use upkeep::config::{Config, ProbeConfig};
    let text = std::fs::read_to_string("agent.toml.example").unwrap();
    let start = text.find("# [probe.updates]").unwrap();
    let end = start + text[start..].find("# -----").unwrap();
    let uncommented: String = text[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with('[') || toml::from_str::<toml::Table>(l).is_ok())
        .map(|l| format!("{l}\n"))
        .collect();
    let parsed =
        Config::parse("example", &uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    let defaults = |kind: &str, shared: &str| -> ProbeConfig {
        toml::from_str(&format!("kind = \"{kind}\"\n{shared}")).unwrap()
    };
    assert_eq!(
        parsed.probe["updates"],
        defaults("security_updates", "interval = \"1h\"\ntimeout = \"5m\"")
    );
    assert_eq!(
        parsed.probe["access"],
        defaults("access_review", "interval = \"1m\"")
    );
    assert_eq!(
        parsed.probe["baseline"],
        defaults("compliance", "interval = \"10m\"\ntimeout = \"1m\"")
    );
    // And those intervals and timeouts are the kinds' own defaults.
    for (name, interval, timeout) in [
        ("updates", 3600, 300),
        ("access", 60, 10),
        ("baseline", 600, 60),
    ] {
        let bare = defaults(parsed.probe[name].kind(), "");
        let c = bare.common();
        assert_eq!(
            c.interval,
            Some(std::time::Duration::from_secs(interval)),
            "{name}"
        );
        let t = c
            .timeout
            .unwrap_or_else(|| upkeep::probes::default_timeout(c.interval.unwrap()));
        assert_eq!(t, std::time::Duration::from_secs(timeout), "{name}");
    }
}

/// The real apt-get pointed at a container-like root (`-o Dir=ROOT/`): an
/// empty dpkg database with no sources has nothing to upgrade, and the
/// host's own pending updates do not leak in.
#[tokio::test]
async fn a_root_is_where_apt_looks() {
    let root = temp_dir();
    for d in [
        "etc/apt/sources.list.d",
        "etc/apt/preferences.d",
        "etc/apt/apt.conf.d",
        "var/lib/dpkg",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "usr/bin",
    ] {
        std::fs::create_dir_all(root.path().join(d)).unwrap();
    }
    std::fs::write(root.path().join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.path().join("etc/apt/sources.list"), "").unwrap();
    std::os::unix::fs::symlink("/usr/bin/apt-get", root.path().join("usr/bin/apt-get")).unwrap();
    let data = temp_dir();
    let mut p = updates(root.path(), data.path(), 120);
    let r = tokio::time::timeout(std::time::Duration::from_secs(120), p.sample())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value(&r, "updates_pending"), 0.0);
    assert_eq!(value(&r, "security_updates_pending"), 0.0);
    assert!(
        r.iter()
            .all(|r| r.metric != "oldest_security_update_age_seconds")
    );
    assert_eq!(p.findings(), Findings::default());
}
