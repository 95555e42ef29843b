//! The agent under a service manager: a Unix datagram socket stands in for
//! systemd's `$NOTIFY_SOCKET`. READY=1 comes once /-/ready answers 200,
//! WATCHDOG=1 keeps coming while the agent makes progress, STOPPING=1 comes
//! on SIGTERM, and the agent still exits 0.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{bin, free_port, get, temp_dir, write_file};

fn ready_code(port: u16) -> Option<u16> {
    get(port, "/-/ready").map(|(code, _)| code)
}

/// The next notification, as its lines; fails the test after `limit`.
fn next(sock: &UnixDatagram, limit: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {limit:?}: {e}"));
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn ready_after_history_and_api_then_watchdog_then_stopping() {
    let dir = temp_dir();
    let port = free_port();
    let socket_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).expect("binding the notify socket");
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!("[agent]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut child = Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("UPKEEP_CONFIG")
        .env_remove("STATE_DIRECTORY")
        .env_remove("WATCHDOG_PID")
        .env("NOTIFY_SOCKET", &socket_path)
        // 2 s: the agent checks its progress every second.
        .env("WATCHDOG_USEC", "2000000")
        .env("UPKEEP_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the agent");

    let started = Instant::now();
    let mut seen = Vec::new();
    let ready = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no READY=1 within 20 s; got {seen:?}"
        );
        let msg = next(&sock, Duration::from_secs(20));
        if msg.iter().any(|l| l == "READY=1") {
            break msg;
        }
        assert!(
            !msg.iter().any(|l| l == "WATCHDOG=1" || l == "STOPPING=1"),
            "{msg:?} before READY=1"
        );
        seen.push(msg);
    };
    // READY=1 promises a bound API and an open history file.
    assert_eq!(ready_code(port), Some(200), "READY=1 came with {ready:?}");
    assert!(
        ready.iter().any(|l| l.starts_with("STATUS=")),
        "READY=1 without a STATUS line: {ready:?}"
    );

    // Fed about every second while probes tick and the recorder loops.
    let from = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let msg = next(&sock, Duration::from_secs(3));
        if msg.iter().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(
        from.elapsed() < Duration::from_secs(6),
        "three watchdog pings took {:?}",
        from.elapsed()
    );

    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    loop {
        let msg = next(&sock, Duration::from_secs(5));
        if msg.iter().any(|l| l == "STOPPING=1") {
            break;
        }
    }
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the agent did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
