//! The API's connections under hostile clients: idle connections beyond the
//! descriptor limit, slow request heads, kept-alive connections left idle,
//! the connection cap, clients leaving mid-request.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{Agent, bin, free_port, get, temp_dir, write_file};

/// Starts the agent with `config` under `ulimit -n nofile`, its log in
/// `dir/agent.log` at `log` level.
fn agent_under_ulimit(dir: &Path, config: &str, port: u16, nofile: u32, log: &str) -> Agent {
    let config = write_file(dir, "agent.toml", config);
    let log_file = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("UPKEEP_CONFIG")
        .env_remove("STATE_DIRECTORY")
        .env("UPKEEP_LOG", log)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("starting the agent under sh");
    let agent = Agent { child, port };
    agent.wait_ready();
    agent
}

/// Stops the agent and returns its log.
fn stop(mut agent: Agent, dir: &Path) -> String {
    agent.signal(libc::SIGTERM);
    agent.child.wait().unwrap();
    std::fs::read_to_string(dir.join("agent.log")).unwrap()
}

fn api_config(port: u16, extra: &str) -> String {
    format!("[host]\nenabled = false\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n")
}

/// Raises this process's soft limit on open files to at least `n`.
fn raise_own_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on structs we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert!(
        lim.rlim_max >= n,
        "this test needs an open-file hard limit of {n}, the limit is {}",
        lim.rlim_max
    );
    if lim.rlim_cur < n {
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
}

fn json_get(port: u16, path: &str) -> Value {
    let (code, body) = get(port, path).unwrap_or_else(|| panic!("GET {path}: no answer"));
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// When the server closed `s`, polling it for up to `limit`: `None` if it
/// stayed open. Writes `dribble` now and then, as a slow client would.
fn closed_after(s: &mut TcpStream, limit: Duration, dribble: Option<&[u8]>) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        if let Some(bytes) = dribble
            && s.write_all(bytes).is_err()
        {
            return Some(start.elapsed());
        }
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn idle_connections_past_the_fd_limit_leave_probes_and_the_api_healthy() {
    const IDLE: usize = 2_000;
    raise_own_fd_limit(IDLE as u64 + 200);
    // A live target that takes every connection and closes it.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in target.incoming() {
            drop(s);
        }
    });
    let dir = temp_dir();
    let port = free_port();
    let config = format!(
        "[agent]\nfailure_threshold = 1\n\n{}\n[probe.target]\nkind = \"tcp\"\naddress = \"{target_addr}\"\ninterval = \"1s\"\n",
        api_config(port, "")
    );
    let agent = agent_under_ulimit(dir.path(), &config, port, 1024, "info");

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // Opened from several threads: loopback drops an occasional SYN, and a
    // connect then waits a second for its retry.
    let idle: Vec<TcpStream> = std::thread::scope(|scope| {
        let openers: Vec<_> = (0..10)
            .map(|_| {
                scope.spawn(move || {
                    (0..IDLE / 10)
                        .map(|i| {
                            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        openers
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    assert_eq!(idle.len(), IDLE);
    // Probes tick (every second) while the idle connections are held, and
    // the API answers at once.
    let until = Instant::now() + Duration::from_secs(5);
    let mut answers = 0;
    while Instant::now() < until {
        let started = Instant::now();
        let got = get(port, "/-/healthy");
        let took = started.elapsed();
        assert_eq!(got.map(|g| g.0), Some(200), "/-/healthy did not answer");
        assert!(
            took < Duration::from_millis(100),
            "/-/healthy took {took:?}"
        );
        answers += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answers >= 10);
    let probes = json_get(port, "/api/v1/probes");
    let target = &probes["probes"][0];
    assert_eq!(target["name"], "target", "{probes}");
    assert_eq!(target["status"], "healthy", "{target}");
    let events = json_get(port, "/api/v1/events?probe=target");
    let statuses: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["to_status"].as_str())
        .collect();
    assert_eq!(statuses, ["healthy"], "{events}");
    drop(idle);
    let log = stop(agent, dir.path());
    assert!(!log.contains("Too many open files"), "{log}");
}

#[test]
fn a_request_head_that_never_ends_is_cut_off_after_the_header_timeout() {
    let dir = temp_dir();
    let port = free_port();
    let config = api_config(port, "header_read_timeout = \"1s\"\nidle_timeout = \"30s\"");
    let agent = agent_under_ulimit(dir.path(), &config, port, 1024, "info");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n").as_bytes())
        .unwrap();
    // A header line every 100 ms: bytes keep coming, the head never ends.
    let took = closed_after(&mut s, Duration::from_secs(5), Some(b"X-Slow: 1\r\n"))
        .expect("the slow head was still open after 5 s");
    assert!(
        took > Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    // A client that connects and sends nothing is as slow.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let took = closed_after(&mut silent, Duration::from_secs(5), None)
        .expect("the silent connection was still open after 5 s");
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    stop(agent, dir.path());
}

#[test]
fn a_kept_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let dir = temp_dir();
    let port = free_port();
    let config = api_config(
        port,
        "header_read_timeout = \"500ms\"\nidle_timeout = \"2s\"",
    );
    let agent = agent_under_ulimit(dir.path(), &config, port, 1024, "info");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let took = closed_after(&mut s, Duration::from_secs(6), None)
        .expect("the idle connection was still open after 6 s");
    assert!(
        took > Duration::from_millis(1500) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    stop(agent, dir.path());
}

#[test]
fn at_the_cap_the_connection_idle_the_longest_makes_room_for_a_new_one() {
    let dir = temp_dir();
    let port = free_port();
    let config = api_config(port, "max_connections = 3");
    let agent = agent_under_ulimit(dir.path(), &config, port, 1024, "info");
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            s
        })
        .collect();
    let (code, _) = get(port, "/-/healthy").expect("a new connection at the cap is served");
    assert_eq!(code, 200);
    assert!(
        closed_after(&mut idle[0], Duration::from_secs(1), None).is_some(),
        "the oldest idle connection is closed"
    );
    for s in &mut idle[1..] {
        assert_eq!(closed_after(s, Duration::from_millis(300), None), None);
    }
    stop(agent, dir.path());
}

#[test]
fn clients_leaving_mid_request_are_debug_lines_at_most_once_a_second() {
    let dir = temp_dir();
    let port = free_port();
    let agent = agent_under_ulimit(dir.path(), &api_config(port, ""), port, 1024, "debug");
    let started = Instant::now();
    for _ in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(
            format!("GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Cut: ").as_bytes(),
        )
        .unwrap();
    }
    // Every one of them has ended by the time this answers.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(port, "/-/healthy").map(|g| g.0), Some(200));
    let secs = started.elapsed().as_secs() as usize;
    let log = stop(agent, dir.path());
    assert!(!log.contains("ERROR"), "{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection ended"))
        .collect();
    assert!(!lines.is_empty(), "{log}");
    assert!(lines.len() <= secs + 2, "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("DEBUG")), "{lines:#?}");
}
