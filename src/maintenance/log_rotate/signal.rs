//! Telling a writer to reopen its log: a signal to the pid in `pidfile`,
//! or `reopen_command` run as an argv (no shell) that must exit 0 within
//! `reopen_timeout`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use super::LogRotateConfig;
use crate::maintenance::TaskError;

/// The signals `reopen_signal` may name.
pub fn signal_named(name: &str) -> Option<Signal> {
    Some(match name.trim_start_matches("SIG") {
        "HUP" => Signal::HUP,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "INT" => Signal::INT,
        "TERM" => Signal::TERM,
        "QUIT" => Signal::QUIT,
        "WINCH" => Signal::WINCH,
        _ => return None,
    })
}

/// Signals the pid in `pidfile`, or runs `reopen_command`.
pub fn tell_writer(c: &LogRotateConfig) -> Result<(), TaskError> {
    if let Some(argv) = &c.reopen_command {
        return run_command(argv, c.reopen_timeout);
    }
    let Some(pidfile) = &c.pidfile else {
        return Err(TaskError::Config {
            field: "pidfile",
            message: "reopen needs pidfile or reopen_command".into(),
        });
    };
    let text = std::fs::read_to_string(pidfile)
        .map_err(|e| TaskError::failed(format!("pidfile {}: {e}", pidfile.display())))?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| {
            TaskError::failed(format!(
                "pidfile {}: `{}` is not a process id",
                pidfile.display(),
                text.trim().escape_debug()
            ))
        })?;
    let sig = signal_named(&c.reopen_signal).expect("checked by validate");
    rustix::process::kill_process(pid, sig).map_err(|e| {
        TaskError::failed(format!(
            "signal {} to pid {} (from {}): {} ({})",
            c.reopen_signal,
            pid.as_raw_nonzero(),
            pidfile.display(),
            std::io::Error::from(e),
            crate::maintenance::files::errno_name(e)
        ))
    })
}

fn run_command(argv: &[String], timeout: Duration) -> Result<(), TaskError> {
    let shown = argv.join(" ");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| TaskError::failed(format!("reopen_command `{shown}`: {e}")))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TaskError::failed(format!(
                    "reopen_command `{shown}` did not end within {timeout:?}"
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(TaskError::failed(format!("reopen_command `{shown}`: {e}"))),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let err: String = err.trim().chars().take(300).collect();
    Err(TaskError::failed(format!(
        "reopen_command `{shown}` failed ({status}): {}",
        err.escape_debug()
    )))
}
