//! The engine against a real history file: rules observed from a live
//! state and the ledger, their notifications read back from the outbox.
use std::sync::{Arc, Mutex, RwLock};

use super::*;
use crate::live::{Live, ProbeState};
use crate::sample::{SeriesKey, Status, Unit};
use crate::store::ledger::{Ledger, Trigger};

const T0: Ts = 1_700_000_000_000;

struct Rig {
    _dir: tempfile::TempDir,
    engine: Engine,
    live: Arc<RwLock<Live>>,
    data: std::path::PathBuf,
}

fn rig(extra: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let text = format!(
        "[probe.db]\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n\n\
         [maintenance.trim]\nkind = \"scratch\"\ndir = \"{}\"\nfiles = 1\nguard = [\"db\"]\n\n\
         [notify.ops]\nkind = \"command\"\ncommand = [\"/bin/true\"]\n\n{extra}",
        dir.path().display()
    );
    let config = Arc::new(Config::parse("a.toml", &text).unwrap());
    let live = Arc::new(RwLock::new(Live::default()));
    let engine = Engine::new(
        config,
        data.clone(),
        AlertStore::open(&data).unwrap(),
        live.clone(),
        Arc::new(AlertsShared::default()),
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(Mutex::new(Vec::new())),
        T0,
    );
    Rig {
        _dir: dir,
        engine,
        live,
        data,
    }
}

impl Rig {
    /// The outbox's notification ids and states, oldest first.
    fn sent(&self) -> Vec<(String, Notification)> {
        let conn = crate::store::open_ro(&self.data.join(crate::store::FILE_NAME)).unwrap();
        let mut st = conn
            .prepare("SELECT nid, body FROM outbox ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .unwrap()
            .map(|r| {
                let (id, body) = r.unwrap();
                (id, serde_json::from_str(&body).unwrap())
            })
            .collect()
    }

    fn states(&self) -> Vec<String> {
        self.sent().iter().map(|(_, n)| n.state.clone()).collect()
    }

    fn probe(&self, status: Status) {
        self.live.write().unwrap().probes.insert(
            "db".into(),
            ProbeState {
                kind: "tcp",
                status,
                since_ms: T0,
                reason: None,
                last_ts_ms: T0,
                last_took_ms: 1.0,
                last_error: None,
            },
        );
    }
}

#[test]
fn a_threshold_fires_above_its_level_and_resolves_only_past_clear() {
    let mut r = rig(
        "[alert.slow]\nwhen = \"threshold\"\nseries = \"db.connect_seconds\"\nabove = 2.0\nclear = 1.0\nnotify = [\"ops\"]\n",
    );
    let key = SeriesKey::new("db", "connect_seconds", &[]);
    for (i, v) in [0.5, 2.5, 1.5, 1.2, 0.8].into_iter().enumerate() {
        let t = T0 + i as Ts * 1000;
        r.live.write().unwrap().push(&key, Unit::Seconds, t, v);
        r.engine.tick(t);
        let want: &[&str] = match i {
            0 => &[],
            1..=3 => &["firing"],
            _ => &["firing", "resolved"],
        };
        assert_eq!(r.states(), want, "after value {v}");
    }
    assert_eq!(r.sent()[0].1.value, Some(2.5));
}

#[test]
fn a_failed_run_fires_a_maintenance_alert_resolved_by_the_next_success() {
    let mut r = rig(
        "[alert.trim-broken]\nwhen = \"maintenance\"\ntasks = [\"trim\"]\non = [\"failed\", \"aborted\"]\nnotify = [\"ops\"]\n",
    );
    let ledger = Ledger::open(&r.data).unwrap();
    let run = ledger
        .start_run("trim", "scratch", Trigger::Schedule, false, T0)
        .unwrap();
    ledger
        .finish(
            run,
            T0 + 10,
            RunStatus::Aborted,
            Some("guard: db unhealthy"),
        )
        .unwrap();
    r.engine.tick(T0 + 5_000);
    let sent = r.sent();
    assert_eq!(r.states(), ["firing"]);
    assert_eq!(sent[0].1.labels["task"], "trim");
    assert_eq!(sent[0].1.maintenance_run, Some(run));
    assert!(
        sent[0]
            .1
            .summary
            .contains("ended aborted: guard: db unhealthy"),
        "{}",
        sent[0].1.summary
    );
    let ok = ledger
        .start_run("trim", "scratch", Trigger::Schedule, false, T0 + 6_000)
        .unwrap();
    ledger
        .finish(ok, T0 + 7_000, RunStatus::Succeeded, None)
        .unwrap();
    r.engine.tick(T0 + 10_000);
    assert_eq!(r.states(), ["firing", "resolved"]);
}

#[test]
fn an_alert_during_a_run_on_its_probe_is_annotated_or_muted() {
    for (mode, want) in [("annotate", 1), ("mute", 0), ("notify", 1)] {
        let mut r = rig(&format!(
            "[alert.down]\nwhen = \"probe\"\nnotify = [\"ops\"]\nduring_maintenance = \"{mode}\"\n"
        ));
        let ledger = Ledger::open(&r.data).unwrap();
        let run = ledger
            .start_run("trim", "scratch", Trigger::Api, false, T0)
            .unwrap();
        r.probe(Status::Unhealthy);
        r.engine.tick(T0 + 3_000);
        let sent = r.sent();
        assert_eq!(sent.len(), want, "{mode}");
        match mode {
            "annotate" => assert_eq!(sent[0].1.maintenance_run, Some(run)),
            "notify" => assert_eq!(sent[0].1.maintenance_run, None),
            _ => {
                // Muted while the run lasts, told once it ended.
                ledger
                    .finish(run, T0 + 4_000, RunStatus::Aborted, None)
                    .unwrap();
                r.engine.tick(T0 + 6_000);
                assert_eq!(r.states(), ["firing"]);
            }
        }
    }
}

#[test]
fn maintenance_figures_count_runs_ended_since_the_start() {
    let mut r = rig("");
    let ledger = Ledger::open(&r.data).unwrap();
    // Ended before the agent started: not counted, but its success is
    // the newest one known.
    let old = ledger
        .start_run("trim", "scratch", Trigger::Schedule, false, T0 - 9_000)
        .unwrap();
    ledger.add_batch(old, 5).unwrap();
    ledger
        .finish(old, T0 - 8_000, RunStatus::Succeeded, None)
        .unwrap();
    r.engine.tick(T0);
    let running = ledger
        .start_run("trim", "scratch", Trigger::Api, false, T0 + 1)
        .unwrap();
    r.engine.tick(T0 + 3_000);
    let f = r.engine.figures.clone();
    assert!(f.runs_total.is_empty());
    assert!(f.running["trim"]);
    assert_eq!(f.last_success_ms["trim"], T0 - 8_000);
    ledger.add_batch(running, 7).unwrap();
    ledger
        .finish(running, T0 + 4_000, RunStatus::Failed, Some("x"))
        .unwrap();
    r.engine.tick(T0 + 6_000);
    let f = r.engine.figures.clone();
    assert_eq!(f.runs_total[&("trim".to_string(), "failed".to_string())], 1);
    assert_eq!(f.rows_changed_total["trim"], 7);
    assert!(!f.running["trim"]);
}

/// Two hours of a disk's used ratio every 5 minutes, written as the
/// recorder does; `noise` makes the fit poor.
fn disk_history(data: &std::path::Path, start: Ts, noise: bool) {
    use crate::store::writer::{RunInfo, Sample, Writer};
    let run = RunInfo {
        version: "test".into(),
        hostname: "test".into(),
        pid: 1,
    };
    let history = crate::store::config::HistoryConfig::default();
    let (mut w, _) = Writer::open(data, &history, start, &run).unwrap();
    let key = SeriesKey::new("host", "disk_used_ratio", &[("mount", "/")]);
    for i in 0..=24i64 {
        let ts = start + i * 300_000;
        let id = w.series_id(&key, Unit::Ratio, ts).unwrap().unwrap();
        // +1 % an hour from 50 %: full in about 2 days.
        let wobble = if noise && i % 2 == 0 { 0.2 } else { 0.0 };
        let value = 0.5 + 0.01 * i as f64 / 12.0 + wobble;
        w.write(
            &[Sample {
                series: id,
                ts,
                value,
            }],
            &[],
            ts,
        )
        .unwrap();
    }
}

#[test]
fn a_forecast_rule_fires_only_on_a_confident_forecast() {
    let rule = "[alert.disk-filling]\nwhen = \"forecast\"\nseries = 'host.disk_used_ratio{mount=\"/\"}'\nreaches = 1.0\nwithin = \"7d\"\nnotify = [\"ops\"]\n";
    for (noise, within, fires) in [
        (false, "7d", true),
        (true, "7d", false),
        (false, "1d", false),
    ] {
        let mut r = rig(&rule.replace("\"7d\"", &format!("\"{within}\"")));
        let now = T0 + 2 * 3_600_000;
        disk_history(&r.data, T0, noise);
        r.engine.tick(now);
        let sent = r.sent();
        assert_eq!(
            sent.len(),
            usize::from(fires),
            "noise {noise}, within {within}: {sent:?}"
        );
        if fires {
            assert!(
                sent[0].1.summary.contains("reaches 1 in"),
                "{}",
                sent[0].1.summary
            );
            assert_eq!(sent[0].1.labels["mount"], "/");
        }
    }
}

#[test]
fn history_trouble_fires_the_agent_rule() {
    let mut r =
        rig("[alert.agent]\nwhen = \"agent\"\nseverity = \"critical\"\nnotify = [\"ops\"]\n");
    r.live.write().unwrap().store.open = true;
    r.engine.tick(T0);
    assert!(r.sent().is_empty());
    r.live.write().unwrap().store.fault =
        Some("history cannot be written (read-only filesystem): ...".into());
    r.engine.tick(T0 + 1000);
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.labels["condition"], "history_unwritable");
    assert!(sent[0].1.summary.contains("read-only filesystem"));
}

#[test]
fn a_reload_keeps_the_state_of_an_unchanged_rule() {
    let rule = "[alert.down]\nwhen = \"probe\"\nfor = \"1m\"\nnotify = [\"ops\"]\n";
    let mut r = rig(rule);
    r.live.write().unwrap().store.open = true;
    r.probe(Status::Unhealthy);
    r.engine.tick(T0);
    // The same config again, with another rule added: `down` stays
    // pending since T0 and fires at T0 + 1m, not a minute after the reload.
    let mut text = r.engine.config.as_ref().clone();
    let other = Config::parse(
        "b.toml",
        "[notify.ops]\nkind = \"command\"\ncommand = [\"/bin/true\"]\n\n[alert.agent]\nwhen = \"agent\"\nnotify = [\"ops\"]\n",
    )
    .unwrap();
    text.alert.extend(other.alert);
    r.engine.reload(Arc::new(text), T0 + 30_000);
    r.engine.tick(T0 + 59_000);
    assert!(r.sent().is_empty());
    r.engine.tick(T0 + 60_000);
    let sent = r.sent();
    assert_eq!(r.states(), ["firing"]);
    assert_eq!(sent[0].1.rule, "down");
    assert_eq!(sent[0].1.starts_at_ms, T0 + 60_000);
}

#[test]
fn a_silence_written_by_another_connection_holds_from_the_next_tick() {
    let mut r = rig("[alert.down]\nwhen = \"probe\"\nnotify = [\"ops\"]\n");
    r.probe(Status::Healthy);
    r.engine.tick(T0);
    // As the CLI does: its own connection, 100 ms later, well within the
    // engine's periodic re-read.
    let cli = AlertStore::open(&r.data).unwrap();
    let matchers = ["probe=db".to_string()];
    let silence = crate::alerts::silence::build(
        &matchers,
        std::time::Duration::from_secs(3600),
        "move",
        "cli",
        T0 + 100,
    )
    .unwrap();
    cli.add_silence(&silence).unwrap();
    r.probe(Status::Unhealthy);
    r.engine.tick(T0 + 250);
    assert!(
        r.sent().is_empty(),
        "a silenced alert notified: {:?}",
        r.states()
    );
    let view = r.engine.shared.view.read().unwrap();
    assert_eq!(view.silences.len(), 1);
    assert!(view.alerts.iter().all(|a| a.silenced), "{:?}", view.alerts);
}
