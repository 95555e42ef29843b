//! config_backup (snapshots, rollback, diff) and the restore drill of a
//! config_backup, on real files in a temporary tree, through the `upkeep`
//! binary. One test runs as an unprivileged user (setpriv) so that a file
//! is really unreadable to it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{history_sql, stderr, stdout, temp_dir, upkeep};

fn config(dir: &Path, tree: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "[maintenance.etc]\nkind = \"config_backup\"\npaths = [\"{}\"]\n{extra}\n\n\
         [maintenance.etc-drill]\nkind = \"restore_drill\"\nbackup = \"etc\"\nmax_age = \"1h\"\n",
        tree.display()
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn args<'a>(cfg: &'a str, data: &'a str, a: &[&'a str]) -> Vec<&'a str> {
    let mut all = a.to_vec();
    all.extend(["--config", cfg, "--data-dir", data]);
    all
}

fn run(cfg: &Path, data: &Path, a: &[&str]) -> std::process::Output {
    let (c, d) = (cfg.to_str().unwrap(), data.to_str().unwrap());
    upkeep(&args(c, d, a))
}

fn snapshot_ids(data: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(data.join("backups/etc/store/snapshots"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .trim_end_matches(".json.gz")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Snapshot `id`'s manifest (gzip-compressed JSON).
fn manifest(data: &Path, id: &str) -> serde_json::Value {
    let f = std::fs::File::open(data.join(format!("backups/etc/store/snapshots/{id}.json.gz")))
        .unwrap();
    serde_json::from_reader(flate2::read::GzDecoder::new(f)).unwrap()
}

fn blobs(data: &Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(data.join("backups/etc/store/blobs")) {
        for d in rd.flatten().filter(|d| d.path().is_dir()) {
            n += std::fs::read_dir(d.path()).unwrap().count();
        }
    }
    n
}

fn last(data: &Path, task: &str) -> (i64, String, String, String) {
    history_sql(data)
        .query_row(
            "SELECT id, status, coalesce(error, ''), coalesce(verdict, '') FROM maintenance_runs WHERE task = ?1 ORDER BY id DESC LIMIT 1",
            [task],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
}

fn tree(dir: &Path) -> PathBuf {
    let t = dir.join("etc");
    std::fs::create_dir_all(t.join("nginx")).unwrap();
    std::fs::write(
        t.join("nginx/nginx.conf"),
        "worker_processes 2;\nevents {}\n",
    )
    .unwrap();
    std::fs::write(t.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(t.join("hosts.copy"), "127.0.0.1 localhost\n").unwrap();
    std::os::unix::fs::symlink("nginx/nginx.conf", t.join("current.conf")).unwrap();
    t
}

#[test]
fn contents_are_stored_once_and_a_run_without_change_keeps_no_manifest() {
    let dir = temp_dir();
    let t = tree(dir.path());
    let cfg = config(dir.path(), &t, "");
    let data = dir.path().join("data");
    let out = run(
        &cfg,
        &data,
        &["maintenance", "run", "etc", "--ignore-window"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(snapshot_ids(&data), ["1"]);
    // hosts and hosts.copy share one blob.
    assert_eq!(blobs(&data), 2);
    let out = run(
        &cfg,
        &data,
        &["maintenance", "run", "etc", "--ignore-window"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, status, _, verdict) = last(&data, "etc");
    assert_eq!(status, "succeeded");
    assert!(verdict.contains("no change since snapshot 1"), "{verdict}");
    assert_eq!(
        snapshot_ids(&data),
        ["1"],
        "no manifest for a run without change"
    );
    // One change: the plan lists it, the run stores one new blob.
    std::fs::write(t.join("hosts"), "127.0.0.1 localhost\n10.0.0.1 db\n").unwrap();
    let out = run(&cfg, &data, &["maintenance", "plan", "etc", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        plan["details"]["changes"],
        serde_json::json!([{ "change": "modified", "path": t.join("hosts") }])
    );
    let out = run(
        &cfg,
        &data,
        &["maintenance", "run", "etc", "--ignore-window"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(snapshot_ids(&data), ["1", "3"]);
    assert_eq!(blobs(&data), 3);
    let manifest = manifest(&data, "3");
    let link = manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == t.join("current.conf").display().to_string())
        .unwrap();
    assert_eq!(link["kind"], "symlink");
    assert_eq!(link["target"], "nginx/nginx.conf");
    assert!(
        link.get("hash").is_none(),
        "a link is recorded, not followed"
    );

    // `backup diff` between the snapshots, and between a snapshot and now.
    let out = run(&cfg, &data, &["backup", "diff", "1", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("+10.0.0.1 db"), "{text}");
    assert!(text.contains(" 127.0.0.1 localhost"), "{text}");
    assert!(text.contains("@@"), "{text}");
    std::fs::write(
        t.join("nginx/nginx.conf"),
        "worker_processes 4;\nevents {}\n",
    )
    .unwrap();
    let out = run(&cfg, &data, &["backup", "diff", "3"]);
    let text = stdout(&out);
    assert!(
        text.contains("-worker_processes 2;") && text.contains("+worker_processes 4;"),
        "{text}"
    );
    let out = run(&cfg, &data, &["backup", "diff", "99"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no snapshot 99"), "{}", stderr(&out));
}

#[test]
fn rollback_puts_back_content_mode_owner_and_mtime_removes_added_files_and_saves_the_state_first() {
    let dir = temp_dir();
    let t = tree(dir.path());
    let cfg = config(dir.path(), &t, "");
    let data = dir.path().join("data");
    let hosts = t.join("hosts");
    std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = std::fs::metadata(&hosts).unwrap();
    let out = run(
        &cfg,
        &data,
        &["maintenance", "run", "etc", "--ignore-window"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    std::fs::write(&hosts, "changed\n").unwrap();
    std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(&hosts, Some(65534), Some(65534)).unwrap();
    std::fs::write(t.join("added.conf"), "new\n").unwrap();
    std::fs::create_dir(t.join("added.d")).unwrap();
    std::fs::write(t.join("added.d/x"), "x").unwrap();
    std::fs::remove_file(t.join("nginx/nginx.conf")).unwrap();

    let out = run(&cfg, &data, &["maintenance", "rollback", "1"]);
    assert!(out.status.success(), "{}{}", stderr(&out), stdout(&out));
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        "127.0.0.1 localhost\n"
    );
    let after = std::fs::metadata(&hosts).unwrap();
    assert_eq!(after.mode() & 0o7777, 0o640);
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(
        (after.mtime(), after.mtime_nsec()),
        (before.mtime(), before.mtime_nsec())
    );
    assert!(!t.join("added.conf").exists());
    assert!(!t.join("added.d").exists());
    assert_eq!(
        std::fs::read_to_string(t.join("nginx/nginx.conf")).unwrap(),
        "worker_processes 2;\nevents {}\n"
    );
    // The state before the rollback is a snapshot of its own: diffable,
    // and holding the change the rollback undid.
    let saved: Vec<String> = snapshot_ids(&data)
        .into_iter()
        .filter(|s| s.starts_with("pre-rollback-"))
        .collect();
    assert_eq!(saved.len(), 1);
    let out = run(&cfg, &data, &["backup", "diff", "1", &saved[0]]);
    let text = stdout(&out);
    assert!(text.contains("+changed"), "{text}");
    assert!(
        text.contains("mode 640 owner 0:0 -> mode 666 owner 65534:65534"),
        "{text}"
    );
}

#[test]
fn a_symlink_loop_an_unreadable_file_a_fifo_and_a_big_sparse_file_are_recorded_never_followed_or_read()
 {
    let dir = temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = dir.path().join("tree");
    std::fs::create_dir(&t).unwrap();
    std::fs::write(t.join("ok.conf"), "fine\n").unwrap();
    std::os::unix::fs::symlink("b", t.join("a")).unwrap();
    std::os::unix::fs::symlink("a", t.join("b")).unwrap();
    std::os::unix::fs::symlink(".", t.join("self")).unwrap();
    let secret = t.join("secret.key");
    std::fs::write(&secret, "s3cr3t\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let fifo = t.join("pipe");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let big = std::fs::File::create(t.join("big.img")).unwrap();
    big.set_len(1 << 30).unwrap();
    for p in [&t, &t.join("ok.conf"), &t.join("big.img")] {
        let m = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let cfg = config(dir.path(), &t, "max_file_size = 1048576");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    // As nobody: the key is really unreadable (root reads everything).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::util::bin())
        .args(["maintenance", "run", "etc", "--ignore-window", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("setpriv (util-linux) must be installed");
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = manifest(&data, "1");
    let entry = |name: &str| {
        manifest["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == t.join(name).display().to_string())
            .unwrap_or_else(|| panic!("{name} not in the manifest: {manifest}"))
            .clone()
    };
    assert_eq!(entry("a")["target"], "b");
    assert_eq!(entry("self")["kind"], "symlink");
    assert_eq!(entry("pipe")["kind"], "fifo");
    assert!(
        entry("secret.key")["not_stored"]
            .as_str()
            .unwrap()
            .starts_with("unreadable: Permission denied")
    );
    assert!(
        entry("big.img")["not_stored"]
            .as_str()
            .unwrap()
            .contains("over max_file_size")
    );
    assert_eq!(entry("big.img")["size"], 1u64 << 30);
    assert!(entry("ok.conf")["hash"].is_string());
    // Nothing under the self link was walked.
    assert!(!manifest.to_string().contains("self/"));
    // The run names the unreadable file.
    let summary: String = history_sql(&data)
        .query_row(
            "SELECT detail FROM maintenance_steps WHERE step = 'plan' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(summary.contains(&secret.display().to_string()), "{summary}");
    assert_eq!(last(&data, "etc").1, "succeeded");
}

#[test]
fn a_drill_restores_the_newest_snapshot_verifies_every_hash_and_removes_its_directory() {
    let dir = temp_dir();
    let t = tree(dir.path());
    let cfg = config(dir.path(), &t, "");
    let data = dir.path().join("data");
    let out = run(
        &cfg,
        &data,
        &["maintenance", "run", "etc-drill", "--ignore-window"],
    );
    assert!(!out.status.success(), "no snapshot yet");
    assert!(last(&data, "etc-drill").2.contains("no snapshot of `etc`"));
    assert!(
        run(
            &cfg,
            &data,
            &["maintenance", "run", "etc", "--ignore-window"]
        )
        .status
        .success()
    );
    // What a drill killed with kill -9 would have left.
    std::fs::create_dir_all(data.join("drills/etc-drill-1/x")).unwrap();
    let out = run(
        &cfg,
        &data,
        &["maintenance", "run", "etc-drill", "--ignore-window"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, _, _, verdict) = last(&data, "etc-drill");
    let v: serde_json::Value = serde_json::from_str(&verdict).unwrap();
    assert_eq!(v["figures"]["files"], 3, "{v}");
    assert!(v["figures"]["rto_seconds"].as_f64().is_some());
    assert_eq!(std::fs::read_dir(data.join("drills")).unwrap().count(), 0);
    // A blob that no longer holds its content fails the drill.
    let blob_dir = std::fs::read_dir(data.join("backups/etc/store/blobs"))
        .unwrap()
        .flatten()
        .find(|d| d.path().is_dir())
        .unwrap()
        .path();
    let blob = std::fs::read_dir(&blob_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, b"tampered").unwrap();
    std::fs::write(&blob, gz.finish().unwrap()).unwrap();
    let out = run(
        &cfg,
        &data,
        &["maintenance", "run", "etc-drill", "--ignore-window"],
    );
    assert!(!out.status.success());
    let (_, status, error, _) = last(&data, "etc-drill");
    assert_eq!(status, "failed");
    assert!(error.contains("content hashes to"), "{error}");
    assert_eq!(std::fs::read_dir(data.join("drills")).unwrap().count(), 0);
}
