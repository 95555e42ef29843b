//! Running apt and dnf: a C locale (their words are parsed), no stdin,
//! killed at the deadline or when the tick is dropped; and their failures
//! in their own words.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use super::apt;
use crate::probes::ProbeError;

/// Runs `prog` with a C locale (apt's words are parsed) and no stdin; it
/// is killed when `deadline` passes or the tick is dropped.
pub(super) async fn run(
    prog: &Path,
    args: &[OsString],
    deadline: Duration,
) -> Result<Output, ProbeError> {
    let what = || {
        let mut s = prog.display().to_string();
        for a in args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    };
    let child = tokio::process::Command::new(prog)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ProbeError::io(format_args!("starting {}", what()), &e))?;
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(ProbeError::io(format_args!("running {}", what()), &e)),
        Err(_) => Err(ProbeError::Failed(format!(
            "{} did not finish within {}",
            what(),
            humantime::format_duration(Duration::from_secs(deadline.as_secs().max(1)))
        ))),
    }
}

/// apt's answer, or why it failed: a lock named by its holder, else apt's
/// last error line.
pub(super) fn apt_output(out: Output, what: &str) -> Result<Output, ProbeError> {
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(pid) = apt::locked_by(&stderr) {
        return Err(ProbeError::Failed(format!("apt is locked by pid {pid}")));
    }
    Err(failed(what, &out))
}

pub(super) fn failed(what: &str, out: &Output) -> ProbeError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let code = out
        .status
        .code()
        .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}"));
    ProbeError::Failed(format!("{what} failed ({code}): {last}"))
}
