//! Pruning: the pure plan on hand-made backups, then whole passes over
//! real directories and a real ledger, and a rollback of a pruned run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Config;
use crate::maintenance::ledger::{self, Ledger, RunStatus, Step, Trigger};
use crate::maintenance::runner::{Request, RunError, Runner};

const DAY: Ts = 86_400_000;
const NOW: Ts = 1_800_000_000_000;

fn held(task: &str, run_id: i64, bytes: u64, days_old: i64, status: RunStatus) -> Held {
    Held {
        task: task.into(),
        run_id,
        path: format!("/nonexistent/{task}/{run_id}").into(),
        bytes,
        at_ms: NOW - days_old * DAY,
        run: Some(RunFacts {
            status,
            pruned: false,
        }),
    }
}

fn budget(keep_days: u64, max_bytes: u64) -> impl Fn(&str) -> Budget {
    move |_| Budget {
        keep: Duration::from_secs(keep_days * 86_400),
        max_bytes,
    }
}

fn ids(held: &[Held], plan: &[(usize, Reason)]) -> Vec<i64> {
    plan.iter().map(|(i, _)| held[*i].run_id).collect()
}

#[test]
fn old_backups_go_but_the_newest_successful_run_s_stays() {
    use RunStatus::*;
    let h = vec![
        held("trim", 1, 10, 40, Succeeded),
        held("trim", 2, 10, 35, Failed),
        held("trim", 3, 10, 31, Succeeded),
        held("trim", 4, 10, 2, Failed),
    ];
    let newest = BTreeMap::from([("trim".to_string(), 3)]);
    let p = plan(&h, &newest, budget(30, u64::MAX), u64::MAX, NOW);
    // Run 3 is 31 days old but the newest success: kept.
    assert_eq!(ids(&h, &p), [1, 2]);
    assert!(matches!(p[0].1, Reason::Age { .. }));
    assert!(
        p[0].1.to_string().contains("past keep_backups 30 days"),
        "{}",
        p[0].1
    );
}

#[test]
fn a_task_over_its_budget_loses_its_oldest_backups_first() {
    use RunStatus::*;
    let h = vec![
        held("trim", 3, 400, 1, Succeeded),
        held("trim", 1, 400, 3, Failed),
        held("trim", 2, 400, 2, Aborted),
        held("other", 9, 400, 3, Failed),
    ];
    let newest = BTreeMap::from([("trim".to_string(), 3)]);
    let p = plan(&h, &newest, budget(30, 500), u64::MAX, NOW);
    // trim holds 1200 of 500: 1 then 2 go (oldest first), 3 is protected;
    // other's 400 fits its own 500.
    assert_eq!(ids(&h, &p), [1, 2]);
    assert_eq!(
        p[0].1,
        Reason::TaskBudget {
            bytes: 1200,
            max: 500
        }
    );
}

#[test]
fn the_total_budget_takes_the_oldest_of_every_task() {
    use RunStatus::*;
    let h = vec![
        held("a", 1, 300, 5, Failed),
        held("b", 2, 300, 4, Failed),
        held("a", 3, 300, 3, Succeeded),
        held("b", 4, 300, 2, Succeeded),
    ];
    let newest = BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 4)]);
    let p = plan(&h, &newest, budget(30, u64::MAX), 700, NOW);
    assert_eq!(ids(&h, &p), [1, 2]);
    // Over budget even with both protected backups alone: they stay.
    let p = plan(&h, &newest, budget(30, u64::MAX), 100, NOW);
    assert_eq!(ids(&h, &p), [1, 2]);
}

#[test]
fn a_running_run_s_backup_is_never_pruned() {
    let h = vec![held("trim", 5, 10_000, 90, RunStatus::Running)];
    let p = plan(&h, &BTreeMap::new(), budget(1, 1), 1, NOW);
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn an_orphan_backup_goes_by_its_age() {
    let mut h = vec![
        held("gone", 1, 10, 60, RunStatus::Failed),
        held("gone", 2, 10, 1, RunStatus::Failed),
    ];
    for x in &mut h {
        x.run = None;
    }
    let p = plan(&h, &BTreeMap::new(), budget(30, u64::MAX), u64::MAX, NOW);
    assert_eq!(ids(&h, &p), [1]);
}

/// A ledger run of `task` that ended `days_old` days ago with a backup dir
/// of `bytes` bytes.
fn make_run(
    l: &Ledger,
    data: &Path,
    task: &str,
    days_old: i64,
    status: RunStatus,
    bytes: usize,
) -> i64 {
    let at = NOW - days_old * DAY;
    let id = l
        .start_run(task, "scratch", Trigger::Cli, false, at)
        .unwrap();
    l.finish(id, at + 1000, status, None).unwrap();
    let dir = data.join("backups").join(task).join(id.to_string());
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub").join("archive.gz"), vec![7u8; bytes]).unwrap();
    id
}

fn section(text: &str) -> MaintenanceSection {
    Config::parse("t.toml", text)
        .unwrap_or_else(|e| panic!("{e}"))
        .maintenance
}

#[test]
fn a_pass_records_each_removal_in_the_ledger_then_removes_the_files() {
    let data = tempfile::tempdir().unwrap();
    let l = Ledger::open(data.path()).unwrap();
    let old = make_run(&l, data.path(), "trim", 40, RunStatus::Failed, 1000);
    let kept = make_run(&l, data.path(), "trim", 35, RunStatus::Succeeded, 1000);
    let young = make_run(&l, data.path(), "trim", 1, RunStatus::Aborted, 1000);
    // Something else in backups/ is not ours to touch.
    std::fs::write(data.path().join("backups").join("trim").join("notes"), "x").unwrap();
    std::fs::create_dir_all(data.path().join("backups").join("trim").join("-1")).unwrap();

    let report = prune(
        data.path(),
        &section("[maintenance]\nkeep_backups = \"30d\"\n"),
        NOW,
    )
    .unwrap();
    assert_eq!(report.pruned.len(), 1, "{report:?}");
    assert_eq!(report.pruned[0].run_id, old);
    assert_eq!(report.pruned[0].bytes, 1000);
    assert_eq!(report.kept_bytes, 2000);
    let dir = |id: i64| {
        data.path()
            .join("backups")
            .join("trim")
            .join(id.to_string())
    };
    assert!(!dir(old).exists());
    assert!(dir(kept).exists() && dir(young).exists());
    assert!(
        data.path()
            .join("backups")
            .join("trim")
            .join("notes")
            .exists()
    );
    assert!(data.path().join("backups").join("trim").join("-1").exists());

    let (row, steps) = ledger::run(l.conn(), old).unwrap().unwrap();
    assert_eq!(row.backup_pruned_ms, Some(NOW));
    assert_eq!(row.status, RunStatus::Failed, "pruning keeps the outcome");
    let step = steps.last().unwrap();
    assert_eq!(step.step, Step::Prune);
    assert!(
        step.detail
            .contains("40 days old, past keep_backups 30 days"),
        "{}",
        step.detail
    );
    assert_eq!(
        ledger::run_only(l.conn(), kept)
            .unwrap()
            .unwrap()
            .backup_pruned_ms,
        None
    );

    // A second pass finds nothing more to do.
    let again = prune(
        data.path(),
        &section("[maintenance]\nkeep_backups = \"30d\"\n"),
        NOW,
    )
    .unwrap();
    assert!(again.pruned.is_empty(), "{again:?}");
}

#[test]
fn a_task_s_own_budget_and_the_total_are_both_kept() {
    const MIB: usize = 1 << 20;
    let data = tempfile::tempdir().unwrap();
    let l = Ledger::open(data.path()).unwrap();
    let a1 = make_run(&l, data.path(), "a", 5, RunStatus::Failed, 4 * MIB);
    let a2 = make_run(&l, data.path(), "a", 4, RunStatus::Succeeded, 4 * MIB);
    let b1 = make_run(&l, data.path(), "b", 3, RunStatus::Failed, 3 * MIB);
    let b2 = make_run(&l, data.path(), "b", 2, RunStatus::Failed, 3 * MIB);
    let b3 = make_run(&l, data.path(), "b", 1, RunStatus::Succeeded, 3 * MIB);
    let dir = format!("\"{}\"", data.path().display());
    let text = format!(
        "[maintenance]\nmax_backup_bytes = {}\n\n\
         [maintenance.a]\nkind = \"scratch\"\ndir = {dir}\nfiles = 1\n\n\
         [maintenance.b]\nkind = \"scratch\"\ndir = {dir}\nfiles = 1\nmax_backup_bytes = {}\n",
        12 * MIB,
        7 * MIB
    );
    let report = prune(data.path(), &section(&text), NOW).unwrap();
    let gone: Vec<i64> = report.pruned.iter().map(|p| p.run_id).collect();
    // b: 9 MiB of its 7 -> b1 goes. Then 14 MiB of 12 in all -> a1.
    assert_eq!(gone, [b1, a1], "{report:?}");
    let m = MIB as u64;
    assert_eq!(
        report.pruned[0].reason,
        Reason::TaskBudget {
            bytes: 9 * m,
            max: 7 * m
        }
    );
    assert_eq!(
        report.pruned[1].reason,
        Reason::TotalBudget {
            bytes: 14 * m,
            max: 12 * m
        }
    );
    assert_eq!(report.kept_bytes, 10 * m);
    for id in [a2, b2, b3] {
        assert_eq!(
            ledger::run_only(l.conn(), id)
                .unwrap()
                .unwrap()
                .backup_pruned_ms,
            None
        );
    }
}

#[test]
fn a_task_whose_lock_is_held_is_left_for_the_next_pass() {
    let data = tempfile::tempdir().unwrap();
    let l = Ledger::open(data.path()).unwrap();
    let old = make_run(&l, data.path(), "trim", 90, RunStatus::Failed, 10);
    let _newer = make_run(&l, data.path(), "trim", 80, RunStatus::Succeeded, 10);
    let lock = TaskLock::try_take(data.path(), "trim", Trigger::Cli).unwrap();
    let report = prune(data.path(), &MaintenanceSection::default(), NOW).unwrap();
    assert_eq!(report.busy, ["trim"]);
    assert!(report.pruned.is_empty());
    assert_eq!(
        ledger::run_only(l.conn(), old)
            .unwrap()
            .unwrap()
            .backup_pruned_ms,
        None
    );
    drop(lock);
    let report = prune(data.path(), &MaintenanceSection::default(), NOW).unwrap();
    assert_eq!(report.pruned.len(), 1);
    assert_eq!(report.pruned[0].run_id, old);
}

#[test]
fn a_backup_in_use_is_neither_marked_nor_removed_until_let_go() {
    let data = tempfile::tempdir().unwrap();
    let l = Ledger::open(data.path()).unwrap();
    let old = make_run(&l, data.path(), "dump", 90, RunStatus::Succeeded, 10);
    let _newer = make_run(&l, data.path(), "dump", 80, RunStatus::Succeeded, 10);
    let dir = data.path().join("backups/dump").join(old.to_string());
    let drill = crate::maintenance::backup_files::hold(&dir).unwrap();
    let report = prune(data.path(), &MaintenanceSection::default(), NOW).unwrap();
    assert!(report.pruned.is_empty(), "{report:?}");
    assert_eq!(report.in_use, std::slice::from_ref(&dir));
    assert!(dir.exists());
    assert_eq!(
        ledger::run_only(l.conn(), old)
            .unwrap()
            .unwrap()
            .backup_pruned_ms,
        None
    );
    drop(drill);
    let report = prune(data.path(), &MaintenanceSection::default(), NOW).unwrap();
    assert_eq!(report.pruned.len(), 1);
    assert_eq!(report.pruned[0].run_id, old);
    assert!(!dir.exists());
}

#[test]
fn the_budget_is_checked_and_located_in_config() {
    let s = section("");
    assert_eq!(s.keep_backups, Duration::from_secs(30 * 86_400));
    assert_eq!(s.max_backup_bytes, 4 << 30);
    let err = Config::parse("t.toml", "[maintenance]\nkeep_backups = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("t.toml:2:"), "{err}");
    let err = Config::parse(
        "t.toml",
        "[maintenance]\nkeep_backups = \"0s\"\nmax_backup_bytes = 0\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("maintenance.keep_backups: must be at least 1h"),
        "{err}"
    );
    assert!(
        err.contains("maintenance.max_backup_bytes: must be at least 1 MiB"),
        "{err}"
    );
}

#[tokio::test]
async fn a_run_whose_backup_was_pruned_is_not_rolled_back() {
    let target = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let text = format!(
        "[maintenance]\nkeep_backups = \"1h\"\n\n[maintenance.make]\nkind = \"scratch\"\ndir = \"{}\"\nfiles = 3\n",
        target.path().display()
    );
    let config = Config::parse("t.toml", &text).unwrap();
    let runner = Runner {
        config: Arc::new(config.clone()),
        data_dir: data.path().to_path_buf(),
        stop: CancellationToken::new(),
    };
    let req = || Request {
        task: "make".into(),
        trigger: Trigger::Cli,
        dry_run: false,
        ignore_window: true,
    };
    let first = runner.run(req(), None, None).await.unwrap();
    let second = runner.run(req(), None, None).await.unwrap();
    assert_eq!(
        (first.status, second.status),
        (RunStatus::Succeeded, RunStatus::Succeeded)
    );

    let later = crate::sample::now_ms() + 2 * 3_600_000;
    let report = prune(data.path(), &config.maintenance, later).unwrap();
    let gone: Vec<i64> = report.pruned.iter().map(|p| p.run_id).collect();
    assert_eq!(
        gone,
        [first.run_id],
        "the newest success is kept: {report:?}"
    );

    match runner.rollback(first.run_id, Trigger::Cli).await {
        Err(RunError::Refused(why)) => {
            assert!(why.contains("its backup was pruned at"), "{why}")
        }
        other => panic!("a pruned run was rolled back: {other:?}"),
    }
    // The kept one still rolls back.
    let back = runner.rollback(second.run_id, Trigger::Cli).await.unwrap();
    assert_eq!(back.status, RunStatus::RolledBack);
}

#[test]
fn a_run_s_quarantine_counts_in_its_backup_and_goes_with_it() {
    let data = tempfile::tempdir().unwrap();
    let l = Ledger::open(data.path()).unwrap();
    let old = make_run(&l, data.path(), "tmp", 40, RunStatus::Failed, 10);
    let kept = make_run(&l, data.path(), "tmp", 35, RunStatus::Succeeded, 10);
    let q_old = crate::maintenance::runner::quarantine_dir(data.path(), "tmp", old);
    let q_kept = crate::maintenance::runner::quarantine_dir(data.path(), "tmp", kept);
    for q in [&q_old, &q_kept] {
        std::fs::create_dir_all(q.join("var/tmp")).unwrap();
        std::fs::write(q.join("var/tmp/old.bin"), vec![1u8; 5000]).unwrap();
    }
    let report = prune(data.path(), &MaintenanceSection::default(), NOW).unwrap();
    assert_eq!(report.pruned.len(), 1, "{report:?}");
    assert_eq!(report.pruned[0].run_id, old);
    assert_eq!(
        report.pruned[0].bytes, 5010,
        "backup and quarantine together"
    );
    assert!(!q_old.exists(), "the quarantine goes with its backup");
    assert!(q_kept.join("var/tmp/old.bin").exists());
    assert_eq!(report.kept_bytes, 5010);
}
