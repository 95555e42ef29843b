//! Which processes are the worker: a pidfile, or a scan of /proc by name
//! (comm) or command line. Matching is pure and unit-tested; the reads of
//! /proc are the only I/O. A read the agent could not make for want of a
//! descriptor is an error with its `io::Error` kept, never "no process".

use std::io;
use std::path::{Path, PathBuf};

use sysinfo::Pid;

use crate::clients::Failure;
use crate::probes::out_of_fds;

/// The kernel keeps 15 bytes of a process name (TASK_COMM_LEN - 1).
const COMM_LEN: usize = 15;

#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Pidfile(PathBuf),
    Name(String),
    Cmdline(String),
}

impl Selector {
    /// The pids that match now (alive or not: the caller checks), never
    /// `own` (the agent does not count itself). A pidfile that cannot be read
    /// or holds no pid is an error naming the file.
    pub fn find(&self, own: u32) -> Result<Vec<Pid>, Failure> {
        match self {
            Selector::Pidfile(path) => read_pidfile(path).map(|pid| vec![Pid::from_u32(pid)]),
            Selector::Name(name) => scan(own, |pid| {
                let comm = std::fs::read(format!("/proc/{pid}/comm"))?;
                // The name already matched: a failed read of argv0 is no match.
                let argv0 = || {
                    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                    raw.split(|b| *b == 0).next().map(<[u8]>::to_vec)
                };
                Ok(name_matches(name, &comm, argv0))
            }),
            Selector::Cmdline(part) => scan(own, |pid| {
                let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
                Ok(cmdline_text(&raw).contains(part.as_str()))
            }),
        }
    }

    /// Why `count` is not enough, naming what was looked for.
    pub fn too_few(&self, count: u32, min: u32) -> String {
        let n = match count {
            0 => "no".to_string(),
            n => n.to_string(),
        };
        let noun = if count <= 1 { "process" } else { "processes" };
        match self {
            Selector::Pidfile(p) => format!("pidfile {}: process is not running", p.display()),
            Selector::Name(name) => format!("{n} {noun} named `{name}` (need {min})"),
            Selector::Cmdline(part) => {
                format!("{n} {noun} with `{part}` in the command line (need {min})")
            }
        }
    }
}

/// Every pid in /proc for which `matches` says yes. A process whose files
/// cannot be read ended while being read, unless the agent is out of
/// descriptors: then nothing read is to be believed, and the scan fails.
fn scan(own: u32, mut matches: impl FnMut(u32) -> io::Result<bool>) -> Result<Vec<Pid>, Failure> {
    let failed = |e: io::Error| Failure::caused_by(format!("scanning /proc: {e}"), e);
    let dir = std::fs::read_dir("/proc").map_err(failed)?;
    let mut out = Vec::new();
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        if pid == own {
            continue;
        }
        match matches(pid) {
            Ok(true) => out.push(Pid::from_u32(pid)),
            Ok(false) => {}
            Err(e) if out_of_fds(&e) => return Err(failed(e)),
            Err(_) => {}
        }
    }
    Ok(out)
}

fn read_pidfile(path: &Path) -> Result<u32, Failure> {
    let fail = |why: String| format!("pidfile {}: {why}", path.display());
    let text =
        std::fs::read_to_string(path).map_err(|e| Failure::caused_by(fail(e.to_string()), e))?;
    Ok(parse_pid(&text).ok_or_else(|| fail(format!("`{}` is not a pid", text.trim())))?)
}

/// The first line of a pidfile as a pid.
pub fn parse_pid(text: &str) -> Option<u32> {
    text.lines()
        .next()?
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&p| p > 0)
}

/// Whether a process is `name`: its comm (with the trailing newline /proc
/// adds) equals it. A name longer than the kernel keeps must match the kept
/// prefix and the file name of argv[0], as `pidof` does.
pub fn name_matches(name: &str, comm: &[u8], argv0: impl FnOnce() -> Option<Vec<u8>>) -> bool {
    let comm = comm.strip_suffix(b"\n").unwrap_or(comm);
    let name = name.as_bytes();
    if name.len() <= COMM_LEN {
        return comm == name;
    }
    comm == &name[..COMM_LEN]
        && argv0().is_some_and(|a| a.rsplit(|b| *b == b'/').next() == Some(name))
}

/// /proc/PID/cmdline (arguments separated by NULs) as one line.
pub fn cmdline_text(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    String::from_utf8_lossy(raw).replace('\0', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_match_comm_exactly() {
        let none = || -> Option<Vec<u8>> { panic!("argv0 read for a short name") };
        assert!(name_matches("margin-monitor", b"margin-monitor\n", none));
        assert!(!name_matches("margin-monitor", b"margin-monitor2\n", none));
        assert!(!name_matches("margin", b"margin-monitor\n", none));
    }

    #[test]
    fn long_names_match_the_kept_prefix_and_argv0() {
        let argv0 = |a: &'static str| move || Some(a.as_bytes().to_vec());
        let comm = b"notification-wo\n";
        assert!(name_matches(
            "notification-worker",
            comm,
            argv0("/usr/bin/notification-worker")
        ));
        assert!(name_matches(
            "notification-worker",
            comm,
            argv0("notification-worker")
        ));
        assert!(!name_matches(
            "notification-worker",
            comm,
            argv0("/usr/bin/notification-wobble")
        ));
        assert!(!name_matches("notification-worker", comm, || None));
        assert!(!name_matches(
            "notification-worker",
            b"other\n",
            argv0("notification-worker")
        ));
    }

    #[test]
    fn cmdline_and_pidfile_text() {
        assert_eq!(cmdline_text(b"python3\0-m\0worker\0"), "python3 -m worker");
        assert_eq!(parse_pid("1234\n"), Some(1234));
        assert_eq!(parse_pid(" 42 \nextra"), Some(42));
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid("abc"), None);
        assert_eq!(parse_pid(""), None);
    }

    #[test]
    fn reasons_name_what_was_looked_for() {
        let s = Selector::Name("margin-monitor".into());
        assert_eq!(
            s.too_few(0, 1),
            "no process named `margin-monitor` (need 1)"
        );
        assert_eq!(s.too_few(1, 2), "1 process named `margin-monitor` (need 2)");
        let s = Selector::Cmdline("worker.py".into());
        assert_eq!(
            s.too_few(2, 3),
            "2 processes with `worker.py` in the command line (need 3)"
        );
    }
}
