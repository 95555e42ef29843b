//! `kind = "worker"`: is a background worker running, what does it use, and
//! is it still doing its job (a heartbeat)? Built by `probes::build`.
//!
//! Processes are found by scanning /proc for `name` (comm) or
//! `cmdline_contains`, or read from `pidfile`. The scan is ours, not
//! sysinfo's: sysinfo reads a process's name once, when first seen, and a
//! process seen between fork and exec would keep its parent's name for good.
//! One long-lived sysinfo `System` then refreshes only the matched pids, and
//! only CPU and memory, on the blocking pool (as the host probe does).
//!
//! Too few processes, or a stale or missing heartbeat, fails the tick with
//! the reason ("no process named `margin-monitor` (need 1)", "heartbeat 95s
//! old (max 60s)"): the runner records it unhealthy, and that tick's readings
//! are not kept (the runner keeps none for a failed tick).

mod heartbeat;
mod scan;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, ThreadKind};

use super::config::{ConfiguredKind, KindFacts, Threshold};
use super::{AnyProbe, BuildContext, Probe, ProbeError, out_of_fds};
use crate::clients::Failure;
use crate::probe_config;
use crate::sample::{Reading, Unit};

pub use scan::Selector;

fn one() -> u32 {
    1
}

probe_config! {
    /// `[probe.NAME] kind = "worker"`.
    pub struct WorkerConfig {
        /// A file holding the worker's pid.
        #[serde(default)]
        pub pidfile: Option<PathBuf>,
        /// The exact process name (comm, as `ps -o comm` shows it).
        #[serde(default)]
        pub name: Option<String>,
        /// A substring of the full command line.
        #[serde(default)]
        pub cmdline_contains: Option<String>,
        #[serde(default = "one")]
        pub min_count: u32,
        /// A file the worker touches: its mtime is the heartbeat.
        #[serde(default)]
        pub heartbeat_file: Option<PathBuf>,
        /// `redis://host:port/db`, without a password.
        #[serde(default)]
        pub heartbeat_redis_url: Option<String>,
        /// A key holding the last beat as unix seconds.
        #[serde(default)]
        pub heartbeat_key: Option<String>,
        #[serde(default)]
        pub heartbeat_redis_password_file: Option<PathBuf>,
        /// How old the heartbeat may be.
        #[serde(default, with = "humantime_serde")]
        pub max_age: Option<Duration>,
    }
}

impl WorkerConfig {
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let given: Vec<&'static str> = [
            ("pidfile", self.pidfile.is_some()),
            ("name", self.name.is_some()),
            ("cmdline_contains", self.cmdline_contains.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect();
        match given.as_slice() {
            [] => out.push((
                "kind",
                "set one of pidfile, name or cmdline_contains".into(),
            )),
            [_] => {}
            [_, more @ ..] => out.push((more[0], format!("set only one of {}", given.join(", ")))),
        }
        if let Some(n) = &self.name
            && (n.is_empty() || n.contains('/'))
        {
            out.push(("name", "a process name is not empty and has no '/'".into()));
        }
        if self.cmdline_contains.as_deref() == Some("") {
            out.push(("cmdline_contains", "must not be empty".into()));
        }
        if self.min_count == 0 {
            out.push(("min_count", "must be at least 1".into()));
        } else if self.min_count > 1 && self.pidfile.is_some() {
            out.push(("min_count", "a pidfile names one process: must be 1".into()));
        }
        out.extend(heartbeat::validate(self));
        out
    }

    fn selector(&self) -> Option<Selector> {
        let c = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        match (&self.pidfile, c(&self.name), c(&self.cmdline_contains)) {
            (Some(p), None, None) => Some(Selector::Pidfile(p.clone())),
            (None, Some(n), None) => Some(Selector::Name(n)),
            (None, None, Some(s)) => Some(Selector::Cmdline(s)),
            _ => None,
        }
    }
}

pub struct WorkerProbe {
    /// `None` when the config was not validated (fails every tick).
    selector: Option<Selector>,
    min_count: u32,
    heartbeat: Option<heartbeat::Heartbeat>,
    /// `None` before the first tick and after a tick that never came back.
    state: Option<Box<State>>,
}

impl WorkerProbe {
    /// Never connects and never reads a file: both happen on a tick.
    pub fn new(config: &WorkerConfig) -> WorkerProbe {
        WorkerProbe {
            selector: config.selector(),
            min_count: config.min_count.max(1),
            heartbeat: heartbeat::Heartbeat::new(config),
            state: None,
        }
    }
}

impl KindFacts for WorkerConfig {
    const HEADLINE: &'static str = "processes";
    /// A worker is judged by its processes and heartbeat, not by a latency:
    /// the tick's own duration stands in.
    const LATENCY: Option<&'static str> = None;
}

impl ConfiguredKind for WorkerConfig {
    fn default_thresholds() -> Vec<Threshold> {
        Vec::new()
    }

    fn build(&self, _name: &str, _timeout: Duration, _ctx: &BuildContext) -> AnyProbe {
        Box::new(WorkerProbe::new(self))
    }
}

impl Probe for WorkerProbe {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        let selector = self.selector.clone().ok_or_else(|| {
            ProbeError::Failed("set one of pidfile, name or cmdline_contains".into())
        })?;
        let min_count = self.min_count;
        let state = self.state.take();
        let file_beat = self.heartbeat.as_ref().and_then(|h| h.file());
        let joined = tokio::task::spawn_blocking(move || {
            let mut state = state.unwrap_or_default();
            let mut tick = state.tick(&selector, min_count);
            if let Some((path, max_age)) = file_beat {
                tick.beat(heartbeat::file_age(&path).map_err(Failure::from), max_age);
            }
            (state, tick)
        })
        .await;
        let mut tick = match joined {
            Ok((state, tick)) => {
                self.state = Some(state);
                tick
            }
            Err(e) => return Err(ProbeError::Failed(format!("process scan failed: {e}"))),
        };
        if let Some(h) = self.heartbeat.as_mut()
            && let Some(age) = h.redis_age().await
        {
            tick.beat(age, h.max_age);
        }
        if tick.problems.is_empty() {
            Ok(tick.readings)
        } else if tick.out_of_fds {
            Err(ProbeError::OutOfFds(tick.problems.join("; ")))
        } else {
            Err(ProbeError::Failed(tick.problems.join("; ")))
        }
    }
}

/// What one tick measured and what is wrong.
struct Tick {
    readings: Vec<Reading>,
    problems: Vec<String>,
    /// A problem was the agent's own: it could not open a file or socket
    /// for want of descriptors, so the tick says nothing of the worker.
    out_of_fds: bool,
}

impl Tick {
    fn problem(&mut self, e: Failure) {
        self.out_of_fds |= out_of_fds(&e);
        self.problems.push(e.to_string());
    }

    fn beat(&mut self, age: Result<f64, Failure>, max_age: Duration) {
        match age {
            Ok(age) => {
                self.readings
                    .push(Reading::new("heartbeat_age_seconds", age, Unit::Seconds));
                if age > max_age.as_secs_f64() {
                    self.problems.push(format!(
                        "heartbeat {}s old (max {}s)",
                        age.floor(),
                        max_age.as_secs_f64()
                    ));
                }
            }
            Err(e) => self.problem(e),
        }
    }
}

/// The long-lived sysinfo handle and the processes matched last tick: per
/// pid its start time (a pid reused by a new process is a new process) and
/// CPU time used so far (ms), read at `prev_at`.
#[derive(Default)]
struct State {
    system: System,
    prev: HashMap<Pid, (u64, u64)>,
    prev_at: Option<Instant>,
}

impl State {
    fn tick(&mut self, selector: &Selector, min_count: u32) -> Tick {
        let mut tick = Tick {
            readings: Vec::new(),
            problems: Vec::new(),
            out_of_fds: false,
        };
        let pids = match selector.find(std::process::id()) {
            Ok(pids) => pids,
            Err(e) => {
                tick.problem(e);
                Vec::new()
            }
        };
        // Last tick's pids too, so that the dead among them are dropped.
        let mut refresh = pids.clone();
        refresh.extend(self.prev.keys().filter(|p| !pids.contains(p)));
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&refresh),
            true,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .without_tasks(),
        );
        let alive: Vec<&sysinfo::Process> = pids
            .iter()
            .filter_map(|pid| self.system.process(*pid))
            .filter(|p| !matches!(p.status(), ProcessStatus::Zombie | ProcessStatus::Dead))
            .filter(|p| p.thread_kind() != Some(ThreadKind::Kernel))
            .collect();
        let count = alive.len() as u32;
        if tick.problems.is_empty() && count < min_count {
            tick.problems.push(selector.too_few(count, min_count));
        }
        let mut readings = vec![
            Reading::new("processes", f64::from(count), Unit::Count),
            Reading::new(
                "rss_bytes",
                alive.iter().map(|p| p.memory() as f64).sum(),
                Unit::Bytes,
            ),
        ];
        // CPU time used between two reads over the wall time between them,
        // only when every process was already there at the last read (a new
        // one has no "before"). Not sysinfo's cpu_usage(): it stays 0 for a
        // process that had used no CPU time yet at the previous read.
        let now = Instant::now();
        let used_ms = |p: &&sysinfo::Process| match self.prev.get(&p.pid()) {
            Some(&(start, before)) if start == p.start_time() => {
                Some(p.accumulated_cpu_time().saturating_sub(before))
            }
            _ => None,
        };
        let used: Option<u64> = alive.iter().map(used_ms).sum();
        let wall_ms = self
            .prev_at
            .map(|at| now.duration_since(at).as_secs_f64() * 1e3);
        if let (Some(used), Some(wall_ms)) = (used, wall_ms)
            && !alive.is_empty()
            && wall_ms > 0.0
        {
            readings.push(Reading::new(
                "cpu_ratio",
                used as f64 / wall_ms,
                Unit::Ratio,
            ));
        }
        self.prev = alive
            .iter()
            .map(|p| (p.pid(), (p.start_time(), p.accumulated_cpu_time())))
            .collect();
        self.prev_at = Some(now);
        tick.readings = readings;
        tick
    }
}
