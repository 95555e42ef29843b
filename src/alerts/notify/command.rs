//! The command notifier: the program runs with its argv as configured (no
//! shell), the notification as JSON on stdin and `UPKEEP_ALERT_*` in its
//! environment; exit 0 means accepted, anything else is retried. A
//! command still running at the notifier's timeout is killed (the caller's
//! timeout drops the child, and `kill_on_drop` kills it); what it printed
//! goes to the log, cut to [`OUTPUT_BYTES`].

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Context, Document};
use crate::alerts::config::CommandConfig;
use crate::alerts::rules::Notification;

/// Bytes of a command's output logged at most.
pub const OUTPUT_BYTES: usize = 1024;

pub async fn run(c: &CommandConfig, n: &Notification, cx: &Context) -> Result<(), String> {
    let (program, args) = c.command.split_first().ok_or("no command")?;
    let body = serde_json::to_vec(&Document::new(n, cx)).expect("serializable");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("UPKEEP_ALERT_ID", &n.id)
        .env("UPKEEP_ALERT_FINGERPRINT", &n.fingerprint)
        .env("UPKEEP_ALERT_RULE", &n.rule)
        .env("UPKEEP_ALERT_STATE", &n.state)
        .env("UPKEEP_ALERT_SEVERITY", n.severity.as_str())
        .env("UPKEEP_ALERT_SUMMARY", &n.summary)
        .env("UPKEEP_ALERT_HOST", &cx.host)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: cannot start: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    // The output is gathered as it comes, so that a command killed at its
    // timeout still has what it printed logged.
    let keep = |out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>, buf: &[u8]| {
        let mut o = out.lock().expect("output lock");
        let room = (OUTPUT_BYTES + 1).saturating_sub(o.len());
        o.extend_from_slice(&buf[..buf.len().min(room)]);
    };
    let (o1, o2) = (output.clone(), output.clone());
    let guard = LogOnDrop {
        program: program.clone(),
        output: output.clone(),
        done: false,
    };
    let feed = async move {
        // A command that does not read stdin is not an error.
        let _ = stdin.write_all(&body).await;
        drop(stdin);
    };
    let read_out = async move {
        let mut buf = [0u8; 512];
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            keep(o1.clone(), &buf[..n]);
        }
    };
    let read_err = async move {
        let mut buf = [0u8; 512];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            keep(o2.clone(), &buf[..n]);
        }
    };
    let (status, ..) = tokio::join!(child.wait(), feed, read_out, read_err);
    let mut guard = guard;
    guard.done = true;
    let status = status.map_err(|e| format!("{program}: {e}"))?;
    let text = guard.text();
    if !text.is_empty() {
        tracing::info!(command = %program, "output: {text}");
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} exited with {status}"))
    }
}

/// Logs what a command printed when its run is dropped before it ended
/// (killed at the timeout).
struct LogOnDrop {
    program: String,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: bool,
}

impl LogOnDrop {
    fn text(&self) -> String {
        let o = self.output.lock().expect("output lock");
        let cut = o.len() > OUTPUT_BYTES;
        let mut s: String = String::from_utf8_lossy(&o[..o.len().min(OUTPUT_BYTES)])
            .chars()
            .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
            .collect();
        s = s.trim_end().replace('\n', " | ");
        if cut {
            s.push_str(" ...(truncated)");
        }
        s
    }
}

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!(
                command = %self.program,
                "killed at its timeout; output: {}",
                self.text()
            );
        }
    }
}
