//! Alerts end to end, against real receivers: a webhook receiver in the
//! test (that can be stopped, answer 500, hang or redirect), Debian's
//! Alertmanager, an SMTP server (aiosmtpd), and a command. The alerting
//! target is a TCP port the test opens and closes, watched by a `tcp`
//! probe; the agent runs as a process, restarted by SIGTERM and kill -9.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::{Agent, HeldPort, free_port, get, stdout, temp_dir, upkeep, write_file};

/// How the test receiver answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Mode {
    Ok = 0,
    Error500 = 1,
    Hang = 2,
    Redirect = 3,
}

/// One request the receiver took.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: BTreeMap<String, String>,
    pub body: serde_json::Value,
    /// The body as sent, for its signature.
    pub raw: Vec<u8>,
}

/// A webhook receiver on a loopback port: records every POST, answers as
/// its mode says; `stop` closes the port (connections are refused), and
/// `start` opens the same port again.
pub struct Receiver {
    pub port: u16,
    held: HeldPort,
    pub got: Arc<Mutex<Vec<Received>>>,
    /// Requests answered other than 2xx.
    pub refused: Arc<Mutex<u32>>,
    mode: Arc<AtomicU8>,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Receiver {
    pub fn new() -> Receiver {
        let held = HeldPort::new();
        let mut r = Receiver {
            port: held.port,
            held,
            got: Arc::default(),
            refused: Arc::default(),
            mode: Arc::new(AtomicU8::new(Mode::Ok as u8)),
            running: None,
        };
        r.start();
        r
    }

    pub fn set_mode(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
    }

    pub fn start(&mut self) {
        let listener = self.held.listen();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, got, refused, mode) = (
            stop.clone(),
            self.got.clone(),
            self.refused.clone(),
            self.mode.clone(),
        );
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (got, refused, mode) = (got.clone(), refused.clone(), mode.clone());
                        std::thread::spawn(move || serve(conn, &got, &refused, &mode));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        self.running = Some((stop, t));
    }

    pub fn stop(&mut self) {
        if let Some((stop, t)) = self.running.take() {
            stop.store(true, Ordering::SeqCst);
            t.join().unwrap();
        }
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.body.clone())
            .collect()
    }

    /// The notification ids received, duplicates dropped (delivery is at
    /// least once), in the order first received.
    pub fn ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for b in self.bodies() {
            let id = b["id"].as_str().unwrap_or_default().to_string();
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut conn: TcpStream, got: &Mutex<Vec<Received>>, refused: &Mutex<u32>, mode: &AtomicU8) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut headers = BTreeMap::new();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
    let answer = match mode.load(Ordering::SeqCst) {
        0 => {
            got.lock().unwrap().push(Received {
                headers,
                body,
                raw: buf[head_end..head_end + len].to_vec(),
            });
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        }
        1 => {
            *refused.lock().unwrap() += 1;
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops".to_string()
        }
        2 => {
            *refused.lock().unwrap() += 1;
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        _ => {
            *refused.lock().unwrap() += 1;
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://elsewhere.example.org/hook\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        }
    };
    let _ = conn.write_all(answer.as_bytes());
}

/// A TCP port the `tcp` probe watches: open = healthy, closed = unhealthy.
pub struct Target {
    pub port: u16,
    held: HeldPort,
    listener: Option<TcpListener>,
}

impl Target {
    pub fn new() -> Target {
        let held = HeldPort::new();
        let mut t = Target {
            port: held.port,
            held,
            listener: None,
        };
        t.up();
        t
    }

    pub fn up(&mut self) {
        if self.listener.is_none() {
            // The backlog answers connects without an accept loop.
            self.listener = Some(self.held.listen());
        }
    }

    pub fn down(&mut self) {
        self.listener = None;
    }
}

/// An agent config: one tcp probe on `target` believed at once (no
/// damping unless `damping`), an API on `port`, and `extra` (notifiers
/// and rules).
pub fn config(dir: &Path, port: u16, target: u16, extra: &str) -> PathBuf {
    write_file(
        dir,
        "agent.toml",
        &format!(
            "[agent]\ninterval = \"1s\"\nfailure_threshold = 1\nsuccess_threshold = 1\n\n\
             [api]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [alerts]\nretry_max = \"2s\"\n\n\
             [probe.target]\nkind = \"tcp\"\naddress = \"127.0.0.1:{target}\"\ntimeout = \"500ms\"\n\n{extra}"
        ),
    )
}

/// The webhook notifier and a rule on the tcp probe.
pub fn webhook_rule(receiver: u16, extra_notify: &str) -> String {
    format!(
        "[notify.hook]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{receiver}/hook\"\ntimeout = \"2s\"\n{extra_notify}\n\
         [alert.target-down]\nwhen = \"probe\"\nprobes = [\"target\"]\nseverity = \"critical\"\nnotify = [\"hook\"]\n"
    )
}

pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// The states of the alerts API's entries.
pub fn alert_states(port: u16) -> Vec<String> {
    let Some((200, body)) = get(port, "/api/v1/alerts") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}:{}",
                a["rule"].as_str().unwrap(),
                a["state"].as_str().unwrap()
            )
        })
        .collect()
}

/// Outbox rows waiting, read from the history file.
pub fn outbox_rows(data: &Path) -> i64 {
    let conn = rusqlite::Connection::open(data.join("history.db")).unwrap();
    conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap_or(0)
}

#[test]
fn a_probe_alert_reaches_a_webhook_signed_and_resolves() {
    let dir = temp_dir();
    let (port, mut target, receiver) = (free_port(), Target::new(), Receiver::new());
    let secret = write_file(dir.path(), "hook.secret", "s3cret\n");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let extra = webhook_rule(
        receiver.port,
        &format!("secret_file = \"{}\"\n", secret.display()),
    );
    let cfg = config(dir.path(), port, target.port, &extra);
    let data = dir.path().join("data");
    let agent = Agent::start(Some(&cfg), &data, port);
    std::thread::sleep(Duration::from_secs(2));
    assert!(receiver.bodies().is_empty(), "nothing fires while healthy");
    target.down();
    wait_until("the firing notification", Duration::from_secs(20), || {
        !receiver.bodies().is_empty()
    });
    assert_eq!(alert_states(port), ["target-down:firing"]);
    target.up();
    wait_until("the resolved notification", Duration::from_secs(20), || {
        receiver.bodies().len() >= 2
    });
    let got = receiver.got.lock().unwrap().clone();
    let (fire, resolve) = (&got[0], &got[1]);
    assert_eq!(fire.body["state"], "firing");
    assert_eq!(fire.body["rule"], "target-down");
    assert_eq!(fire.body["severity"], "critical");
    assert_eq!(fire.body["labels"]["probe"], "target");
    assert_eq!(resolve.body["state"], "resolved");
    let fp = fire.body["fingerprint"].as_str().unwrap();
    assert_eq!(fire.body["id"], format!("{fp}:firing:1"));
    assert_eq!(resolve.body["id"], format!("{fp}:resolved:2"));
    assert!(resolve.body["ends_at"].is_string());
    // The signature is HMAC-SHA256 of the exact body under the secret.
    let sig = fire.headers.get("x-upkeep-signature").expect("signed");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
    let want: String = ring::hmac::sign(&key, &fire.raw)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sig, &format!("sha256={want}"));
    assert_eq!(
        fire.headers.get("x-upkeep-id").unwrap(),
        &format!("{fp}:firing:1")
    );
    // No secret in what was sent.
    for r in &got {
        assert!(!r.body.to_string().contains("s3cret"));
    }
    wait_until("an empty outbox", Duration::from_secs(5), || {
        outbox_rows(&data) == 0
    });
    assert!(alert_states(port).is_empty());
    drop(agent);
}

/// Fault test 1: the receiver is down while the alert fires, resolves and
/// fires again, and the agent is stopped by SIGTERM and then killed with
/// -9 during the outage. Once the receiver is back, every state change
/// arrives, in order, none lost.
#[test]
fn notifications_survive_a_receiver_outage_and_agent_restarts_in_order() {
    let dir = temp_dir();
    let (port, mut target, mut receiver) = (free_port(), Target::new(), Receiver::new());
    receiver.stop();
    let cfg = config(
        dir.path(),
        port,
        target.port,
        &webhook_rule(receiver.port, ""),
    );
    let data = dir.path().join("data");
    let outage = Instant::now();
    let agent = Agent::start(Some(&cfg), &data, port);
    std::thread::sleep(Duration::from_secs(2));
    target.down();
    wait_until("firing recorded", Duration::from_secs(20), || {
        outbox_rows(&data) >= 1
    });
    // SIGTERM with the firing notification undelivered.
    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    target.up();
    let mut agent = Agent::start(Some(&cfg), &data, port);
    wait_until("resolved recorded", Duration::from_secs(20), || {
        outbox_rows(&data) >= 2
    });
    target.down();
    wait_until("fired again", Duration::from_secs(20), || {
        outbox_rows(&data) >= 3
    });
    // kill -9 with three notifications undelivered.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    drop(agent);
    assert_eq!(
        outbox_rows(&data),
        3,
        "every change is on record after kill -9"
    );
    // The outage lasts at least 60 s.
    if let Some(rest) = Duration::from_secs(60).checked_sub(outage.elapsed()) {
        std::thread::sleep(rest);
    }
    let agent = Agent::start(Some(&cfg), &data, port);
    receiver.start();
    let end = Instant::now() + Duration::from_secs(30);
    while receiver.ids().len() < 3 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    if receiver.ids().len() < 3 {
        agent.signal(libc::SIGTERM);
        let (_, _, err) = agent.wait_exit(Duration::from_secs(10));
        panic!(
            "delivered {:?}, {} left in the outbox; the agent said:\n{err}",
            receiver.ids(),
            outbox_rows(&data)
        );
    }
    let ids = receiver.ids();
    let states: Vec<&str> = ids.iter().map(|i| i.split(':').nth(1).unwrap()).collect();
    let seqs: Vec<&str> = ids.iter().map(|i| i.rsplit(':').next().unwrap()).collect();
    assert_eq!(states, ["firing", "resolved", "firing"], "{ids:?}");
    assert_eq!(seqs, ["1", "2", "3"], "{ids:?}");
    wait_until("an empty outbox", Duration::from_secs(10), || {
        outbox_rows(&data) == 0
    });
    drop(agent);
}

/// Fault test 2: a receiver answering 500 is retried; one that hangs is
/// timed out; a redirect to another host is refused (not followed). The
/// notification waits in the outbox through all of it and arrives once
/// the receiver answers 200.
#[test]
fn a_500_a_hang_and_a_redirect_are_retried_and_nothing_is_lost() {
    for mode in [Mode::Error500, Mode::Hang, Mode::Redirect] {
        let dir = temp_dir();
        let (port, mut target, receiver) = (free_port(), Target::new(), Receiver::new());
        receiver.set_mode(mode);
        let cfg = config(
            dir.path(),
            port,
            target.port,
            &webhook_rule(receiver.port, ""),
        );
        let data = dir.path().join("data");
        let agent = Agent::start(Some(&cfg), &data, port);
        target.down();
        wait_until("two refused attempts", Duration::from_secs(30), || {
            *receiver.refused.lock().unwrap() >= 2
        });
        assert!(receiver.bodies().is_empty());
        assert_eq!(outbox_rows(&data), 1, "{mode:?}: kept in the outbox");
        let (_, metrics) = get(port, "/metrics").unwrap();
        let failed = metrics
            .lines()
            .find(|l| {
                l.starts_with("upkeep_notifications_total{notifier=\"hook\",result=\"failed\"}")
            })
            .unwrap_or_else(|| panic!("no failed counter in {metrics}"));
        assert!(!failed.ends_with(" 0"), "{failed}");
        receiver.set_mode(Mode::Ok);
        wait_until("delivered at last", Duration::from_secs(30), || {
            !receiver.bodies().is_empty()
        });
        assert_eq!(receiver.bodies()[0]["state"], "firing", "{mode:?}");
        let (code, _, err) = {
            agent.signal(libc::SIGTERM);
            agent.wait_exit(Duration::from_secs(15))
        };
        assert_eq!(code, Some(0), "{err}");
        match mode {
            Mode::Redirect => assert!(
                err.contains("redirect to http://elsewhere.example.org/hook: refused"),
                "{err}"
            ),
            Mode::Hang => assert!(err.contains("no answer within 2s"), "{err}"),
            _ => assert!(err.contains("answered 500"), "{err}"),
        }
    }
}

/// Fault test 3: credentials inline in a receiver URL or in a header are
/// refused at config time, as the http probe refuses them.
#[test]
fn credentials_in_a_receiver_url_or_header_are_refused_by_check_config() {
    let dir = temp_dir();
    for (notify, want) in [
        (
            "[notify.hook]\nkind = \"webhook\"\nurl = \"https://user:pw@hooks.example.org/x\"\n",
            "notify.hook.url: `hooks.example.org` holds credentials",
        ),
        (
            "[notify.hook]\nkind = \"webhook\"\nurl = \"https://hooks.example.org/x\"\nheaders = { Authorization = \"Bearer abc\" }\n",
            "notify.hook.headers: `Authorization` carries credentials",
        ),
        (
            "[notify.hook]\nkind = \"alertmanager\"\nurl = \"http://u:p@127.0.0.1:9093\"\n",
            "holds credentials",
        ),
        (
            "[notify.hook]\nkind = \"email\"\nsmtp = \"smtp://u:p@mail.example.org:587\"\nfrom = \"a@b\"\nto = [\"c@d\"]\n",
            "belong in username and password_file",
        ),
    ] {
        let text = format!("{notify}\n[alert.down]\nwhen = \"probe\"\nnotify = [\"hook\"]\n");
        let cfg = write_file(dir.path(), "agent.toml", &text);
        let o = upkeep(&["check-config", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(78), "{text}");
        let err = crate::util::stderr(&o);
        assert!(err.contains(want), "{want}: {err}");
        assert!(!err.contains("pw@") && !err.contains("abc"), "{err}");
    }
}

/// check-config names rules that point at nothing, and every kind's bad
/// settings, each at its line.
#[test]
fn check_config_checks_references_between_rules_notifiers_probes_and_tasks() {
    let dir = temp_dir();
    let text = "\
[notify.ops]
kind = \"command\"
command = [\"page-oncall\"]

[alert.a]
when = \"probe\"
probes = [\"nope\"]
notify = [\"ops\", \"missing\"]

[alert.b]
when = \"threshold\"
series = \"host.load1\"
above = 2.0
clear = 3.0
notify = [\"ops\"]

[alert.c]
when = \"maintenance\"
tasks = [\"nothing\"]
on = [\"exploded\"]
notify = [\"ops\"]

[alert.d]
when = \"sometimes\"
notify = [\"ops\"]
";
    let cfg = write_file(dir.path(), "agent.toml", text);
    let o = upkeep(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78));
    let err = crate::util::stderr(&o);
    let want = "agent.toml:24:8: unknown variant `sometimes`";
    assert!(err.contains(want), "{want}: {err}");
    // Once every table reads, the references are checked.
    let text = text.replace("[alert.d]\nwhen = \"sometimes\"\nnotify = [\"ops\"]\n", "");
    let cfg = write_file(dir.path(), "agent.toml", &text);
    let o = upkeep(&["check-config", cfg.to_str().unwrap()]);
    let err = crate::util::stderr(&o);
    for want in [
        "agent.toml:3:11: notify.ops.command: `page-oncall` must be an absolute path",
        "agent.toml:7:10: alert.a.probes: no probe `nope` is configured",
        "alert.a.notify: no notifier `missing` is configured",
        "alert.b.clear: must not be above `above`",
        "alert.c.tasks: no task `nothing` is configured",
        "alert.c.on: `exploded` is not one of",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
}

/// Fault test 4: a command that never exits is killed at its timeout, its
/// output (cut) in the log, and retried; a command that exits 0 gets the
/// notification on stdin and in its environment.
#[test]
fn a_command_notifier_gets_json_and_env_and_one_that_hangs_is_killed() {
    let dir = temp_dir();
    let (port, mut target) = (free_port(), Target::new());
    let out = dir.path().join("got");
    std::fs::create_dir(&out).unwrap();
    let script = write_file(
        dir.path(),
        "page.sh",
        &format!(
            "#!/bin/sh\nif [ -e {0}/hang ]; then yes 0123456789 | head -c 5000; sleep 600; fi\n\
             n=$(ls {0} | wc -l)\ncat > {0}/$n.json\necho \"$UPKEEP_ALERT_ID $UPKEEP_ALERT_STATE $UPKEEP_ALERT_RULE\" > {0}/$n.env\n",
            out.display()
        ),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(out.join("hang"), "").unwrap();
    let extra = format!(
        "[notify.pager]\nkind = \"command\"\ncommand = [\"{}\"]\ntimeout = \"1s\"\n\n\
         [alert.target-down]\nwhen = \"probe\"\nprobes = [\"target\"]\nnotify = [\"pager\"]\n",
        script.display()
    );
    let cfg = config(dir.path(), port, target.port, &extra);
    let data = dir.path().join("data");
    let agent = Agent::start(Some(&cfg), &data, port);
    target.down();
    wait_until("two killed attempts", Duration::from_secs(30), || {
        let (_, m) = get(port, "/metrics").unwrap_or_default();
        m.lines().any(|l| {
            l.starts_with("upkeep_notifications_total{notifier=\"pager\",result=\"failed\"}")
                && !l.ends_with(" 0")
                && !l.ends_with(" 1")
        })
    });
    std::fs::remove_file(out.join("hang")).unwrap();
    wait_until(
        "the command ran to the end",
        Duration::from_secs(30),
        || out.join("0.env").exists(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let env = std::fs::read_to_string(out.join("0.env")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("0.json")).unwrap()).unwrap();
    assert!(env.ends_with(":firing:1 firing target-down\n"), "{env}");
    assert_eq!(json["state"], "firing");
    assert_eq!(json["labels"]["probe"], "target");
    agent.signal(libc::SIGTERM);
    let (_, _, err) = agent.wait_exit(Duration::from_secs(15));
    let killed = err
        .lines()
        .find(|l| l.contains("killed at its timeout"))
        .unwrap_or_else(|| panic!("no kill logged: {err}"));
    assert!(killed.contains("0123456789"), "{killed}");
    assert!(killed.contains("...(truncated)"), "{killed}");
    assert!(killed.len() < 2000, "output cut: {} bytes", killed.len());
}

/// Fault test 5: a probe flapping up and down every tick is damped (as
/// status is) and causes no storm of notifications; count them.
#[test]
fn a_flapping_probe_causes_no_notification_storm() {
    let dir = temp_dir();
    let (port, mut target, receiver) = (free_port(), Target::new(), Receiver::new());
    // Damping as shipped: 3 failures in a row to believe unhealthy.
    let extra = webhook_rule(receiver.port, "");
    let cfg = config(dir.path(), port, target.port, &extra);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("failure_threshold = 1", "failure_threshold = 3");
    std::fs::write(&cfg, text).unwrap();
    let data = dir.path().join("data");
    let agent = Agent::start(Some(&cfg), &data, port);
    // Flip every 700 ms for 20 s: each tick sees a different state.
    let end = Instant::now() + Duration::from_secs(20);
    let mut up = true;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(700));
        up = !up;
        if up {
            target.up();
        } else {
            target.down();
        }
    }
    target.up();
    std::thread::sleep(Duration::from_secs(3));
    // About 28 flips. The probe's damping lets a run of three failed
    // ticks through now and then on a busy machine, and the alert follows
    // the believed status: a pair of notifications at most, never one per
    // flip.
    let n = receiver.bodies().len();
    assert!(
        n <= 2,
        "notifications sent while flapping: {:?}",
        receiver.ids()
    );
    assert_eq!(n % 2, 0, "every firing resolved: {:?}", receiver.ids());
    drop(agent);
}

/// Fault test 6: a reload that removes a firing rule resolves its alert.
#[test]
fn a_reload_removing_a_firing_rule_resolves_its_alert() {
    let dir = temp_dir();
    let (port, mut target, receiver) = (free_port(), Target::new(), Receiver::new());
    let with_rule = webhook_rule(receiver.port, "");
    let cfg = config(dir.path(), port, target.port, &with_rule);
    let data = dir.path().join("data");
    let agent = Agent::start(Some(&cfg), &data, port);
    target.down();
    wait_until("firing", Duration::from_secs(20), || {
        receiver.bodies().len() == 1
    });
    // The same notifier, the rule gone.
    let without = format!(
        "[notify.hook]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\ntimeout = \"2s\"\n",
        receiver.port
    );
    config(dir.path(), port, target.port, &without);
    agent.signal(libc::SIGHUP);
    wait_until("resolved by the reload", Duration::from_secs(20), || {
        receiver.bodies().len() == 2
    });
    let b = receiver.bodies();
    assert_eq!(b[1]["state"], "resolved");
    assert_eq!(b[1]["fingerprint"], b[0]["fingerprint"]);
    assert!(alert_states(port).is_empty());
    // The probe is still down: nothing fires again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(receiver.bodies().len(), 2);
    drop(agent);
}

/// Alertmanager (Debian's prometheus-alertmanager) on a free loopback
/// port: the alert shows as active, then as resolved.
#[test]
fn alertmanager_shows_the_alert_active_then_resolved() {
    let dir = temp_dir();
    let am_port = free_port();
    let am = Alertmanager::start(dir.path(), am_port);
    let (port, mut target) = (free_port(), Target::new());
    let extra = format!(
        "[notify.am]\nkind = \"alertmanager\"\nurl = \"http://127.0.0.1:{am_port}\"\n\n\
         [alert.target-down]\nwhen = \"probe\"\nprobes = [\"target\"]\nseverity = \"critical\"\nnotify = [\"am\"]\n"
    );
    let cfg = config(dir.path(), port, target.port, &extra);
    let agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    target.down();
    wait_until("active in Alertmanager", Duration::from_secs(30), || {
        am.alerts("active=true&silenced=false&inhibited=false")
            .iter()
            .any(|a| a["labels"]["alertname"] == "target-down" && a["status"]["state"] == "active")
    });
    let active = am.alerts("");
    let a = active
        .iter()
        .find(|a| a["labels"]["alertname"] == "target-down")
        .unwrap();
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["probe"], "target");
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("target is unhealthy")
    );
    target.up();
    // Resolved alerts leave the active list (Alertmanager keeps them out of
    // `active=true` once their endsAt has passed).
    wait_until("resolved in Alertmanager", Duration::from_secs(30), || {
        am.alerts("active=true")
            .iter()
            .all(|a| a["labels"]["alertname"] != "target-down")
    });
    drop(agent);
}

/// A running Alertmanager, stopped when dropped.
struct Alertmanager {
    port: u16,
    child: Child,
}

impl Alertmanager {
    fn start(dir: &Path, port: u16) -> Alertmanager {
        let bin = "/usr/bin/prometheus-alertmanager";
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: run ./test.sh, which installs prometheus-alertmanager"
        );
        let cfg = write_file(
            dir,
            "alertmanager.yml",
            "route:\n  receiver: none\n  group_wait: 1s\nreceivers:\n  - name: none\n",
        );
        let storage = dir.join("am-data");
        std::fs::create_dir_all(&storage).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting alertmanager");
        let am = Alertmanager { port, child };
        wait_until("alertmanager ready", Duration::from_secs(30), || {
            matches!(raw_get(port, "/-/ready"), Some((200, _)))
        });
        am
    }

    fn alerts(&self, query: &str) -> Vec<serde_json::Value> {
        let Some((200, body)) = raw_get(self.port, &format!("/api/v2/alerts?{query}")) else {
            return Vec::new();
        };
        serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn raw_get(port: u16, path: &str) -> Option<(u16, String)> {
    get(port, path)
}

/// Email through a real SMTP server (Debian's python3-aiosmtpd) on
/// loopback: the mail arrives with the alert's subject.
#[test]
fn an_email_arrives_with_the_alerts_subject() {
    let dir = temp_dir();
    let smtp_port = free_port();
    let maildir = dir.path().join("mail");
    std::fs::create_dir(&maildir).unwrap();
    let server = write_file(
        dir.path(),
        "smtpd.py",
        &format!(
            "import asyncio, sys\nfrom aiosmtpd.controller import Controller\n\
             class H:\n    async def handle_DATA(self, server, session, envelope):\n\
             \x20       n = len(__import__('os').listdir({dir:?}))\n\
             \x20       open({dir:?} + '/%d.eml' % n, 'wb').write(envelope.content)\n\
             \x20       return '250 OK'\n\
             c = Controller(H(), hostname='127.0.0.1', port={smtp_port})\nc.start()\n\
             print('ready', flush=True)\nimport time\nwhile True: time.sleep(1)\n",
            dir = maildir.display().to_string()
        ),
    );
    let py = "/usr/bin/python3";
    let ok = Command::new(py)
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3-aiosmtpd is missing: run ./test.sh, which installs it"
    );
    let mut smtpd = Command::new(py)
        .arg(&server)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    smtpd
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"ready\n");
    let (port, mut target) = (free_port(), Target::new());
    let extra = format!(
        "[notify.mail]\nkind = \"email\"\nsmtp = \"smtp://127.0.0.1:{smtp_port}\"\nfrom = \"upkeep@db-1.example.org\"\nto = [\"ops@example.org\"]\n\n\
         [alert.target-down]\nwhen = \"probe\"\nprobes = [\"target\"]\nseverity = \"critical\"\nnotify = [\"mail\"]\n"
    );
    let cfg = config(dir.path(), port, target.port, &extra);
    let agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    target.down();
    wait_until("a mail", Duration::from_secs(30), || {
        maildir.join("0.eml").exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    let mail = std::fs::read_to_string(maildir.join("0.eml")).unwrap();
    let subject = mail
        .lines()
        .find(|l| l.starts_with("Subject:"))
        .unwrap_or_else(|| panic!("no subject: {mail}"));
    assert!(
        subject.contains("[FIRING] critical target-down on"),
        "{subject}"
    );
    assert!(mail.contains("To: ops@example.org"), "{mail}");
    drop(agent);
    let _ = smtpd.kill();
    let _ = smtpd.wait();
}

/// Silences from the CLI and the API: a silenced alert notifies no one,
/// silences are listed, expire, and live in the history file.
#[test]
fn silences_from_the_cli_and_the_api_keep_an_alert_quiet() {
    let dir = temp_dir();
    let (port, mut target, receiver) = (free_port(), Target::new(), Receiver::new());
    let token = write_file(dir.path(), "token", "tok3n\n");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = config(
        dir.path(),
        port,
        target.port,
        &webhook_rule(receiver.port, ""),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[api]\n",
        &format!("[api]\ntoken_file = \"{}\"\n", token.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let data = dir.path().join("data");
    let agent = Agent::start(Some(&cfg), &data, port);
    let d = data.to_str().unwrap();
    let o = upkeep(&[
        "silence",
        "add",
        "--data-dir",
        d,
        "--match",
        "probe=target",
        "--for",
        "2h",
        "--comment",
        "planned move",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::util::stderr(&o));
    let cli_id: i64 = stdout(&o).trim().parse().expect("the new silence's id");
    target.down();
    wait_until("the silenced alert firing", Duration::from_secs(20), || {
        let (_, body) = get(port, "/api/v1/alerts").unwrap();
        body.contains("\"silenced\":true") && body.contains("\"state\":\"firing\"")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(receiver.bodies().is_empty(), "a silenced alert notified");
    let list = stdout(&upkeep(&["silence", "list", "--data-dir", d]));
    assert!(
        list.contains("probe=target") && list.contains("planned move"),
        "{list}"
    );
    // Over the API: refused without the token, listed with it.
    let post = |path: &str, body: &str, auth: bool| {
        let auth = if auth {
            "Authorization: Bearer tok3n\r\n"
        } else {
            ""
        };
        crate::util::request(
            port,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .unwrap()
    };
    let body = r#"{"matchers":{"rule":"target-down"},"for":"1h","comment":"api"}"#;
    assert_eq!(post("/api/v1/silences", body, false).code, 401);
    let r = post("/api/v1/silences", body, true);
    assert_eq!(r.code, 201, "{}", r.body);
    let (_, listed) = get(port, "/api/v1/silences").unwrap();
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(v["silences"].as_array().unwrap().len(), 2);
    // Expire both: the alert notifies at once.
    let api_id = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        post(&format!("/api/v1/silences/{api_id}/expire"), "", true).code,
        200
    );
    let o = upkeep(&["silence", "expire", "--data-dir", d, &cli_id.to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::util::stderr(&o));
    wait_until("notified once unsilenced", Duration::from_secs(20), || {
        !receiver.bodies().is_empty()
    });
    let o = upkeep(&["silence", "expire", "--data-dir", d, &cli_id.to_string()]);
    assert_eq!(o.status.code(), Some(1), "expiring twice is an error");
    // `upkeep alerts` shows the firing alert.
    let o = upkeep(&["alerts", "--data-dir", d, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["alerts"][0]["rule"], "target-down");
    assert_eq!(v["alerts"][0]["state"], "firing");
    drop(agent);
}

/// `/metrics` counts alerts by state and severity, notifications by
/// notifier and result, and the outbox's backlog, and passes promtool.
#[test]
fn metrics_count_alerts_notifications_and_the_outbox() {
    let dir = temp_dir();
    let (port, mut target, receiver) = (free_port(), Target::new(), Receiver::new());
    let cfg = config(
        dir.path(),
        port,
        target.port,
        &webhook_rule(receiver.port, ""),
    );
    let agent = Agent::start(Some(&cfg), &dir.path().join("data"), port);
    let (_, before) = get(port, "/metrics").unwrap();
    for line in [
        "upkeep_alerts{state=\"firing\",severity=\"critical\"} 0",
        "upkeep_notifications_total{notifier=\"hook\",result=\"sent\"} 0",
        "upkeep_outbox_pending{notifier=\"hook\"} 0",
    ] {
        assert!(before.lines().any(|l| l == line), "{line} in {before}");
    }
    target.down();
    wait_until("delivered", Duration::from_secs(20), || {
        !receiver.bodies().is_empty()
    });
    wait_until("counted", Duration::from_secs(5), || {
        let (_, m) = get(port, "/metrics").unwrap();
        m.lines()
            .any(|l| l == "upkeep_notifications_total{notifier=\"hook\",result=\"sent\"} 1")
    });
    let (_, after) = get(port, "/metrics").unwrap();
    assert!(
        after
            .lines()
            .any(|l| l == "upkeep_alerts{state=\"firing\",severity=\"critical\"} 1"),
        "{after}"
    );
    crate::web_metrics::promtool_check(&after);
    drop(agent);
}
