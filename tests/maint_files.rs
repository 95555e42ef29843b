//! `file_cleanup` on real trees: symbolic links to outside directories,
//! files held open by a running process or locked with flock, names with
//! a newline and invalid UTF-8, a bind mount inside the tree, a directory
//! swapped for a link between the plan and the batch, a read-only mount
//! (EROFS named), and rollback from the quarantine (content, mode, owner,
//! times). Mounts need root; each is undone when its test ends.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use upkeep::config::Config;
use upkeep::maintenance::ledger::{self, Ledger, Trigger};
use upkeep::maintenance::runner::{Request, Runner};
use upkeep::maintenance::{AnyTask, Cx};

use crate::util::temp_dir;

const DAY: Duration = Duration::from_secs(86_400);

/// A mount undone on drop (lazily, so a test that failed mid-way still
/// leaves nothing mounted).
pub struct Mount(pub PathBuf);

impl Mount {
    pub fn run(args: &[&str], at: &Path) -> Mount {
        let out = Command::new("mount")
            .args(args)
            .arg(at)
            .output()
            .expect("mount(8) runs (the test needs root and util-linux)");
        assert!(
            out.status.success(),
            "mount {args:?} {}: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Writes `path` with `text`, its times `age` ago.
pub fn old_file(path: &Path, text: &str, age: Duration) {
    std::fs::write(path, text).unwrap();
    let t = SystemTime::now() - age;
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
}

/// A child that holds `path` open (as its stdin) until killed.
struct Holder(Child);

impl Holder {
    fn open(path: &Path) -> Holder {
        Holder(
            Command::new("sleep")
                .arg("60")
                .stdin(std::fs::File::open(path).unwrap())
                .spawn()
                .expect("sleep runs"),
        )
    }

    /// flock(1) holding an exclusive lock on `path` while it sleeps.
    fn flock(path: &Path) -> Holder {
        let h = Holder(
            Command::new("flock")
                .arg("-x")
                .arg(path)
                .args(["sleep", "60"])
                .spawn()
                .expect("flock(1) runs (util-linux)"),
        );
        // Locked once flock(1) has started sleep.
        crate::util::wait_for("flock to hold the lock", || {
            let f = std::fs::File::open(path).unwrap();
            rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
        });
        h
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(name: &str, roots: &[&Path], extra: &str) -> Config {
    let paths: Vec<String> = roots
        .iter()
        .map(|r| format!("\"{}\"", r.display()))
        .collect();
    let text = format!(
        "[maintenance.{name}]\nkind = \"file_cleanup\"\npaths = [{}]\nolder_than = \"7d\"\nbatch_size = 3\n{extra}",
        paths.join(", ")
    );
    Config::parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"))
}

fn runner(config: Config, data: &Path) -> Runner {
    Runner {
        config: Arc::new(config),
        data_dir: data.to_path_buf(),
        stop: CancellationToken::new(),
    }
}

fn request(task: &str) -> Request {
    Request {
        task: task.into(),
        trigger: Trigger::Cli,
        dry_run: false,
        ignore_window: true,
    }
}

/// The task built from config, with the run context the runner would give it.
fn task(config: &Config, name: &str, data: &Path) -> (AnyTask, Cx) {
    let t = upkeep::maintenance::build(name, config).expect("the task builds");
    let cx = Cx {
        name: name.into(),
        run_id: 1,
        backup_dir: data.join("backups").join(name).join("1"),
        quarantine_dir: data.join("quarantine").join(name).join("1"),
        data_dir: data.to_path_buf(),
        cancel: tokio_util::sync::CancellationToken::new(),
    };
    std::fs::create_dir_all(&cx.backup_dir).unwrap();
    (t, cx)
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

#[tokio::test]
async fn cleanup_removes_only_the_right_files() {
    let base = temp_dir();
    let data = temp_dir();
    let tree = base.path().join("tree");
    let outside = base.path().join("outside");
    let bound = base.path().join("bound");
    for d in [
        &tree,
        &outside,
        &bound,
        &tree.join("sub"),
        &tree.join("mnt"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Old files outside the tree, reachable by a link and by a bind mount.
    old_file(&outside.join("precious"), "outside", 30 * DAY);
    old_file(&bound.join("mounted"), "bound", 30 * DAY);
    std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("precious"), tree.join("file-link")).unwrap();
    let _bind = Mount::run(&["--bind", bound.to_str().unwrap()], &tree.join("mnt"));
    assert!(tree.join("mnt/mounted").exists());

    // In the tree: old files, a new one, one held open, one with a newline
    // and invalid UTF-8 in its name, one in a sub directory.
    old_file(&tree.join("old-1"), "a", 30 * DAY);
    old_file(&tree.join("sub/old-2"), "bb", 30 * DAY);
    old_file(&tree.join("new"), "c", DAY);
    old_file(&tree.join("held"), "d", 30 * DAY);
    let odd = tree.join(OsStr::from_bytes(b"odd\nname-\xff"));
    old_file(&odd, "e", 30 * DAY);
    let _holder = Holder::open(&tree.join("held"));

    let r = runner(config("tmp", &[&tree], ""), data.path());
    let done = r.run(request("tmp"), None, None).await.unwrap();
    assert_eq!(done.status, "succeeded", "{:?}", done.error);

    assert!(!exists(&tree.join("old-1")));
    assert!(!exists(&tree.join("sub/old-2")));
    assert!(!exists(&odd));
    assert!(!exists(&tree.join("sub")), "left empty by the run");
    for kept in ["new", "held", "link", "file-link", "mnt/mounted"] {
        assert!(exists(&tree.join(kept)), "{kept} must stay");
    }
    assert!(
        outside.join("precious").exists(),
        "a link is never followed"
    );
    assert!(
        bound.join("mounted").exists(),
        "a mount point is never crossed"
    );

    let l = Ledger::open(data.path()).unwrap();
    let (row, steps) = ledger::run(l.conn(), done.run_id).unwrap().unwrap();
    assert_eq!(row.rows_changed, 3);
    let plan = row.plan.unwrap().to_string();
    assert!(
        plan.contains(r"odd\\nname-\\xff"),
        "escaped in JSON: {plan}"
    );
    assert!(plan.contains("\"held_open\":1"), "{plan}");
    assert!(plan.contains("\"mount_points\":1"), "{plan}");
    assert!(plan.contains("\"symlinks\":2"), "{plan}");
    let validate = steps.iter().find(|s| s.step == "validate").unwrap();
    assert!(
        validate.detail.contains("3 of 3 planned files removed"),
        "{}",
        validate.detail
    );
    // The quarantine holds them under their paths.
    let q = data
        .path()
        .join("quarantine/tmp")
        .join(done.run_id.to_string());
    let kept = q.join(tree.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read_to_string(kept.join("sub/old-2")).unwrap(),
        "bb"
    );
}

#[tokio::test]
async fn rollback_restores_content_mode_owner_and_times() {
    let base = temp_dir();
    let data = temp_dir();
    let tree = base.path().join("t");
    std::fs::create_dir_all(tree.join("deep/er")).unwrap();
    let f = tree.join("deep/er/report.csv");
    old_file(&f, "1,2,3\n", 40 * DAY);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o604)).unwrap();
    std::os::unix::fs::chown(&f, Some(4321), Some(4322)).unwrap();
    old_file(&f, "1,2,3\n", 40 * DAY);
    let nl = tree.join(OsStr::from_bytes(b"line\nbreak"));
    old_file(&nl, "x", 40 * DAY);
    let before = std::fs::metadata(&f).unwrap();

    let r = runner(config("tmp", &[&tree], ""), data.path());
    let done = r.run(request("tmp"), None, None).await.unwrap();
    assert_eq!(done.status, "succeeded", "{:?}", done.error);
    assert!(!exists(&tree.join("deep")));
    assert!(!exists(&nl));

    let back = r.rollback(done.run_id, Trigger::Cli).await.unwrap();
    assert_eq!(back.status, "rolled_back", "{:?}", back.error);
    let after = std::fs::metadata(&f).unwrap();
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "1,2,3\n");
    assert_eq!(after.mode() & 0o7777, 0o604);
    assert_eq!((after.uid(), after.gid()), (4321, 4322));
    assert_eq!(after.mtime(), before.mtime());
    assert_eq!(after.mtime_nsec(), before.mtime_nsec());
    assert_eq!(std::fs::read_to_string(&nl).unwrap(), "x");
}

#[tokio::test]
async fn a_directory_swapped_for_a_link_between_plan_and_batch_redirects_nothing() {
    let base = temp_dir();
    let data = temp_dir();
    let tree = base.path().join("t");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(tree.join("logs")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    old_file(&tree.join("logs/a.log"), "a", 30 * DAY);
    old_file(&outside.join("a.log"), "outside", 30 * DAY);
    let c = config("tmp", &[&tree], "");
    let (mut t, cx) = task(&c, "tmp", data.path());
    let plan = t.plan_boxed(&cx).await.unwrap();
    assert_eq!(plan.rows, 1, "{}", plan.summary);
    t.backup_boxed(&cx, &plan).await.unwrap();

    // The attack: the planned directory becomes a link to one holding a
    // file of the same name.
    std::fs::rename(tree.join("logs"), tree.join("logs.moved")).unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("logs")).unwrap();

    let b = t.apply_batch_boxed(&cx, &plan, 100).await.unwrap();
    assert_eq!(b.rows, 0);
    assert!(b.done);
    assert!(outside.join("a.log").exists(), "the link was not followed");
    assert!(tree.join("logs.moved/a.log").exists());
    let v = t.validate_boxed(&cx, &plan).await.unwrap();
    assert!(v.ok, "{}", v.detail);
    assert!(v.detail.contains("1 directory changed"), "{}", v.detail);
}

#[tokio::test]
async fn a_file_locked_after_the_plan_is_left() {
    let base = temp_dir();
    let data = temp_dir();
    let tree = base.path().join("t");
    std::fs::create_dir_all(&tree).unwrap();
    old_file(&tree.join("locked.db"), "l", 30 * DAY);
    old_file(&tree.join("free.db"), "f", 30 * DAY);
    let c = config("tmp", &[&tree], "quarantine = false\n");
    let (mut t, cx) = task(&c, "tmp", data.path());
    let plan = t.plan_boxed(&cx).await.unwrap();
    assert_eq!(plan.rows, 2);
    assert!(
        plan.summary.contains("cannot be rolled back"),
        "{}",
        plan.summary
    );
    t.backup_boxed(&cx, &plan).await.unwrap();
    let _lock = Holder::flock(&tree.join("locked.db"));
    let b = t.apply_batch_boxed(&cx, &plan, 100).await.unwrap();
    assert_eq!(b.rows, 1);
    assert!(tree.join("locked.db").exists());
    assert!(!tree.join("free.db").exists());
    let v = t.validate_boxed(&cx, &plan).await.unwrap();
    assert!(v.detail.contains("1 locked"), "{}", v.detail);
}

#[tokio::test]
async fn a_read_only_filesystem_fails_the_run_naming_the_path_and_erofs() {
    let base = temp_dir();
    let data = temp_dir();
    let tree = base.path().join("t");
    let ro = base.path().join("ro");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    old_file(&tree.join("old"), "o", 30 * DAY);
    let _bind = Mount::run(&["--bind", tree.to_str().unwrap()], &ro);
    let _ro = Mount::run(&["-o", "remount,bind,ro"], &ro);
    let r = runner(config("tmp", &[&ro], "quarantine = false\n"), data.path());
    let done = r.run(request("tmp"), None, None).await.unwrap();
    assert_eq!(done.status, "failed");
    let err = done.error.unwrap();
    assert!(
        err.contains(&format!(
            "{}/old: unlink: Read-only file system (EROFS",
            ro.display()
        )),
        "{err}"
    );
    assert!(tree.join("old").exists());
}

#[tokio::test]
async fn keep_newest_match_exclude_and_min_size_select_the_files() {
    let base = temp_dir();
    let data = temp_dir();
    let tree = base.path().join("t");
    std::fs::create_dir_all(tree.join("cache")).unwrap();
    for (i, name) in ["a.tmp", "b.tmp", "c.tmp", "d.tmp"].iter().enumerate() {
        old_file(&tree.join(name), "0123456789", (20 + i as u32) * DAY);
    }
    old_file(&tree.join("tiny.tmp"), "1", 50 * DAY);
    old_file(&tree.join("keep.log"), "0123456789", 50 * DAY);
    old_file(&tree.join("cache/x.tmp"), "0123456789", 50 * DAY);
    let c = config(
        "tmp",
        &[&tree],
        "match = [\"*.tmp\"]\nexclude = [\"cache\"]\nmin_size = 5\nkeep_newest = 1\n",
    );
    let r = runner(c, data.path());
    let done = r.run(request("tmp"), None, None).await.unwrap();
    assert_eq!(done.status, "succeeded", "{:?}", done.error);
    // a.tmp is the newest of four: kept; b, c, d go.
    let left: Vec<&str> = [
        "a.tmp",
        "b.tmp",
        "c.tmp",
        "d.tmp",
        "tiny.tmp",
        "keep.log",
        "cache/x.tmp",
    ]
    .into_iter()
    .filter(|n| exists(&tree.join(n)))
    .collect();
    assert_eq!(left, ["a.tmp", "tiny.tmp", "keep.log", "cache/x.tmp"]);
}

#[test]
fn disk_pressure_starts_both_file_kinds_by_themselves_on_a_full_tmpfs() {
    let base = temp_dir();
    let data = temp_dir();
    let fs = base.path().join("small");
    std::fs::create_dir_all(&fs).unwrap();
    let _m = Mount::run(&["-t", "tmpfs", "-o", "size=4m", "tmpfs"], &fs);
    std::fs::create_dir_all(fs.join("tmp")).unwrap();
    std::fs::create_dir_all(fs.join("logs")).unwrap();
    for i in 0..4 {
        old_file(
            &fs.join(format!("tmp/blob-{i}")),
            &"b".repeat(512 * 1024),
            30 * DAY,
        );
    }
    std::fs::write(fs.join("logs/app.log"), "l".repeat(1024 * 1024)).unwrap();
    let port = crate::util::free_port();
    // No schedule and no window: only the pressure can start them.
    let cfg = crate::util::write_file(
        base.path(),
        "agent.toml",
        &format!(
            "[agent]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [maintenance.tmp]\nkind = \"file_cleanup\"\npaths = [\"{0}/tmp\"]\nolder_than = \"7d\"\ndisk_pressure = 0.5\n\n\
             [maintenance.logs]\nkind = \"log_rotate\"\npaths = [\"{0}/logs/*.log\"]\nmethod = \"copytruncate\"\nsize = 4096\ndisk_pressure = 0.5\n",
            fs.display()
        ),
    );
    let (_, used_before) = upkeep::maintenance::files::fs_usage(&fs).unwrap();
    assert!(used_before > 0.5, "filled past the ratio: {used_before}");
    let _agent = crate::util::Agent::start(Some(&cfg), data.path(), port);
    crate::util::wait_for("the cleanup and the rotation to run by themselves", || {
        !fs.join("tmp/blob-0").exists() && fs.join("logs/app.log.1.gz").exists()
    });
    let sql = crate::util::history_sql(data.path());
    let triggers: Vec<(String, String, String)> = sql
        .prepare("SELECT task, trigger, status FROM maintenance_runs ORDER BY task")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let want = |t: &str| {
        triggers
            .iter()
            .any(|(task, trig, st)| task == t && trig == "disk_pressure" && st != "failed")
    };
    assert!(want("tmp") && want("logs"), "{triggers:?}");
    let (_, used_after) = upkeep::maintenance::files::fs_usage(&fs).unwrap();
    assert!(used_after < 0.5, "pressure relieved: {used_after}");
}
