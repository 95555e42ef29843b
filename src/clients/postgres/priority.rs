//! How a PostgreSQL client program run as a child (pg_dump) is scheduled
//! against the application on the same host: its CPU niceness and its I/O
//! class, set in the child between fork and exec. A custom-format pg_dump
//! compresses in the client, about a core's worth on a small host; this is
//! what keeps that core for the application's backends. The server
//! backend that reads the tables for pg_dump is not the child's and keeps
//! the server's own priority.

use serde::{Deserialize, Serialize};

/// The I/O scheduling class of the child (ioprio_set(2); honoured by the
/// BFQ and CFQ schedulers, ignored by `none`/`mq-deadline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoClass {
    /// As the agent's own.
    Normal,
    /// Best-effort at its lowest level (7): served after every other
    /// best-effort process, never starved.
    #[default]
    Low,
    /// Only when no other process wants the disk: on a disk that is never
    /// idle the dump waits, holding its transaction open.
    Idle,
}

impl IoClass {
    pub fn name(self) -> &'static str {
        match self {
            IoClass::Normal => "normal",
            IoClass::Low => "low",
            IoClass::Idle => "idle",
        }
    }

    /// The ioprio_set(2) value, or `None` to leave the class alone.
    pub fn ioprio(self) -> Option<i32> {
        const CLASS_SHIFT: i32 = 13;
        const BEST_EFFORT: i32 = 2;
        const IDLE: i32 = 3;
        match self {
            IoClass::Normal => None,
            IoClass::Low => Some((BEST_EFFORT << CLASS_SHIFT) | 7),
            IoClass::Idle => Some(IDLE << CLASS_SHIFT),
        }
    }
}

/// A child's niceness (0–19; 0 leaves it as the agent's) and I/O class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Priority {
    pub nice: u8,
    pub io: IoClass,
}

impl Priority {
    /// As the agent's own: nothing changed.
    pub const SAME: Priority = Priority {
        nice: 0,
        io: IoClass::Normal,
    };

    /// "nice 10, I/O low" for plans and the ledger.
    pub fn words(self) -> String {
        format!("nice {}, I/O {}", self.nice, self.io.name())
    }

    /// Sets the child's priority between fork and exec. Niceness is only
    /// ever raised (an agent already nicer than `nice` stays as it is:
    /// lowering it needs privilege).
    pub fn apply(self, cmd: &mut tokio::process::Command) {
        if self == Priority::SAME {
            return;
        }
        // SAFETY: getpriority is read in the parent; the closure calls
        // only setpriority(2) and ioprio_set(2), which are async-signal-safe
        // system calls, and touches no memory the parent shares.
        let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let target = i32::from(self.nice);
        let ioprio = self.io.ioprio();
        unsafe {
            cmd.pre_exec(move || {
                if target > current && libc::setpriority(libc::PRIO_PROCESS, 0, target) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(v) = ioprio {
                    // IOPRIO_WHO_PROCESS = 1, this process.
                    if libc::syscall(libc::SYS_ioprio_set, 1, 0, v) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_classes_encode_as_the_kernel_reads_them() {
        // ionice(1): "best-effort: prio 7" is 0x4007, "idle" 0x6000.
        assert_eq!(IoClass::Low.ioprio(), Some(0x4007));
        assert_eq!(IoClass::Idle.ioprio(), Some(0x6000));
        assert_eq!(IoClass::Normal.ioprio(), None);
    }

    #[tokio::test]
    async fn a_child_runs_at_the_priority_asked() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "nice; ionice -p $$"]);
        Priority {
            nice: 19,
            io: IoClass::Idle,
        }
        .apply(&mut cmd);
        let out = cmd.output().await.unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("19"), "{text}");
        assert_eq!(lines.next(), Some("idle"), "{text}");

        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "ionice -p $$"]);
        Priority {
            nice: 0,
            io: IoClass::Low,
        }
        .apply(&mut cmd);
        let out = cmd.output().await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "best-effort: prio 7"
        );
    }
}
