//! `kind = "access_log"`: request rate, error ratios and latency percentiles
//! from web server access logs (nginx/Apache combined, or JSON lines),
//! followed across rotations (`tail.rs`) and parsed without allocation
//! (`parse.rs`). Malformed lines are counted, never fatal. The read position
//! is kept in `DATA_DIR/access_log/NAME.json`, so a restart never counts a
//! line again.

pub mod parse;
pub mod tail;
pub mod top_paths;
pub mod totals;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use self::parse::TimeUnit;
use self::tail::{Position, StartAt, Tail};
use self::totals::Totals;
use super::config::{ConfiguredKind, KindFacts, Threshold};
use super::{AnyProbe, BuildContext, Probe, ProbeError, out_of_fds};
use crate::probe_config;
use crate::sample::{Reading, Unit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// nginx/Apache combined (or common), optionally ending in a request time.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

fn default_status_field() -> String {
    "status".into()
}
fn default_time_field() -> String {
    "request_time".into()
}
fn default_rotated_suffix() -> String {
    ".1".into()
}

probe_config! {
    /// `[probe.NAME] kind = "access_log"`.
    pub struct AccessLogConfig {
        /// Log files to follow; their lines are counted together.
        pub paths: Vec<PathBuf>,
        #[serde(default)]
        pub format: LogFormat,
        /// Unit of the request-time field: s (nginx $request_time), ms, us (Apache %D).
        #[serde(default)]
        pub time_unit: TimeUnit,
        /// JSON format: the field holding the status code.
        #[serde(default = "default_status_field")]
        pub status_field: String,
        /// JSON format: the field holding the request time.
        #[serde(default = "default_time_field")]
        pub time_field: String,
        /// Name of the rotated file, for copytruncate: PATH + this.
        #[serde(default = "default_rotated_suffix")]
        pub rotated_suffix: String,
        /// Where to begin a file seen for the first time: end or beginning.
        #[serde(default)]
        pub start_at: StartAt,
    }
}

impl AccessLogConfig {
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.paths.is_empty() {
            out.push(("paths", "at least one log file is needed".to_string()));
        }
        for p in &self.paths {
            if !p.is_absolute() {
                out.push((
                    "paths",
                    format!("`{}` is not an absolute path", p.display()),
                ));
            }
        }
        if self.rotated_suffix.is_empty() || self.rotated_suffix.contains('/') {
            out.push((
                "rotated_suffix",
                "must be a non-empty file name suffix such as \".1\"".to_string(),
            ));
        }
        out
    }
}

/// 5xx above 5 % is degraded (the seed's error-rate limit), above 20 %
/// unhealthy; p95 latency above 0.5 s degraded, above 2 s unhealthy.
pub fn default_thresholds() -> Vec<Threshold> {
    vec![
        Threshold::above("status_5xx_ratio", 0.05, 0.2),
        Threshold::above("latency_p95_seconds", 0.5, 2.0),
    ]
}

/// Counts of one tick.
#[derive(Debug)]
pub struct Counts {
    pub requests: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub malformed: u64,
    /// Request times in microseconds.
    pub latency_us: Histogram<u64>,
    /// By status class and time bucket, added to the probe's running totals.
    pub totals: Totals,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            requests: 0,
            status_4xx: 0,
            status_5xx: 0,
            malformed: 0,
            // 1 µs to 1 h at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            totals: Totals::default(),
        }
    }

    /// Counts one line.
    pub fn add(&mut self, line: Option<parse::Line>) {
        let Some(l) = line else {
            self.malformed += 1;
            return;
        };
        self.requests += 1;
        self.totals.add_request(l.status, l.seconds);
        match l.status {
            400..=499 => self.status_4xx += 1,
            500..=599 => self.status_5xx += 1,
            _ => {}
        }
        if let Some(s) = l.seconds {
            self.latency_us.saturating_record(((s * 1e6) as u64).max(1));
        }
    }

    /// Readings for a tick that covered `elapsed` (none on the first tick).
    pub fn readings(&self, elapsed: Option<Duration>) -> Vec<Reading> {
        let mut out = vec![
            Reading::new("requests", self.requests as f64, Unit::Count),
            Reading::new("malformed_lines", self.malformed as f64, Unit::Count),
        ];
        if let Some(e) = elapsed.filter(|e| !e.is_zero()) {
            out.push(Reading::new(
                "requests_per_second",
                self.requests as f64 / e.as_secs_f64(),
                Unit::PerSecond,
            ));
        }
        if self.requests > 0 {
            let n = self.requests as f64;
            out.push(Reading::new(
                "status_5xx_ratio",
                self.status_5xx as f64 / n,
                Unit::Ratio,
            ));
            out.push(Reading::new(
                "status_4xx_ratio",
                self.status_4xx as f64 / n,
                Unit::Ratio,
            ));
        }
        if !self.latency_us.is_empty() {
            for (q, name) in [
                (0.5, "latency_p50_seconds"),
                (0.95, "latency_p95_seconds"),
                (0.99, "latency_p99_seconds"),
            ] {
                let us = self.latency_us.value_at_quantile(q);
                out.push(Reading::new(name, us as f64 / 1e6, Unit::Seconds));
            }
        }
        out
    }
}

struct State {
    tails: Vec<Tail>,
    last: Option<Instant>,
    /// Since this state was made (the probe's start, or a tick given up on).
    totals: Totals,
}

pub struct AccessLogProbe {
    config: AccessLogConfig,
    state_file: PathBuf,
    /// Moved into the blocking task each tick and back.
    state: Option<Box<State>>,
}

impl AccessLogProbe {
    pub fn new(name: &str, config: &AccessLogConfig, ctx: &BuildContext) -> AccessLogProbe {
        AccessLogProbe {
            config: config.clone(),
            state_file: ctx.data_dir.join("access_log").join(format!("{name}.json")),
            state: None,
        }
    }

    /// The tails, at the positions saved last. Fails only when the agent is
    /// out of descriptors: starting over without the saved positions would
    /// skip or count lines again.
    fn fresh_state(&self) -> Result<State, ProbeError> {
        let saved: BTreeMap<PathBuf, Position> = match std::fs::read(&self.state_file) {
            Err(e) if out_of_fds(&e) => {
                let what = format!("reading positions from {}", self.state_file.display());
                return Err(ProbeError::io(what, &e));
            }
            read => read
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
        };
        let tails = self
            .config
            .paths
            .iter()
            .map(|p| {
                Tail::new(
                    p.clone(),
                    &self.config.rotated_suffix,
                    self.config.start_at,
                    saved.get(p).copied(),
                )
            })
            .collect();
        Ok(State {
            tails,
            last: None,
            totals: Totals::default(),
        })
    }
}

fn save(file: &PathBuf, tails: &[Tail]) -> std::io::Result<()> {
    let map: BTreeMap<&std::path::Path, Position> = tails
        .iter()
        .filter_map(|t| Some((t.path(), t.position()?)))
        .collect();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&map).expect("positions serialize"))?;
    std::fs::rename(&tmp, file)
}

impl KindFacts for AccessLogConfig {
    const HEADLINE: &'static str = "requests_per_second";
    /// The median request latency the log reports.
    const LATENCY: Option<&'static str> = Some("latency_p50_seconds");
    /// The tail the application's users feel, not its median.
    const PACING: &'static [&'static str] = &["latency_p99_seconds", "latency_p95_seconds"];
}

impl ConfiguredKind for AccessLogConfig {
    fn default_thresholds() -> Vec<Threshold> {
        default_thresholds()
    }

    fn build(&self, name: &str, _timeout: Duration, ctx: &BuildContext) -> AnyProbe {
        Box::new(AccessLogProbe::new(name, self, ctx))
    }
}

impl Probe for AccessLogProbe {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        let mut state = match self.state.take() {
            Some(s) => s,
            None => Box::new(self.fresh_state()?),
        };
        let cfg = self.config.clone();
        let state_file = self.state_file.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut counts = Counts::new();
            let mut errors = Vec::new();
            // An error opening a file for want of descriptors is the agent's.
            let mut fds_out = false;
            for t in state.tails.iter_mut() {
                let mut line = |l: &[u8]| {
                    counts.add(match cfg.format {
                        LogFormat::Combined => parse::combined(l, cfg.time_unit),
                        LogFormat::Json => {
                            parse::json(l, &cfg.status_field, &cfg.time_field, cfg.time_unit)
                        }
                    })
                };
                if let Err(e) = t.poll(&mut line) {
                    fds_out |= out_of_fds(&e);
                    errors.push(format!("access log {}: {e}", t.path().display()));
                }
            }
            if let Err(e) = save(&state_file, &state.tails) {
                fds_out |= out_of_fds(&e);
                errors.push(format!(
                    "saving read positions to {}: {e}",
                    state_file.display()
                ));
            }
            let now = Instant::now();
            let elapsed = state.last.map(|l| now - l);
            state.last = Some(now);
            state.totals.merge(&counts.totals);
            (state, counts, elapsed, errors, fds_out)
        })
        .await;
        let (state, counts, elapsed, errors, fds_out) =
            joined.map_err(|e| ProbeError::Failed(format!("access log: reading failed: {e}")))?;
        let totals = state.totals.readings();
        self.state = Some(state);
        if fds_out {
            return Err(ProbeError::OutOfFds(errors.join("; ")));
        }
        if !errors.is_empty() {
            return Err(ProbeError::Failed(errors.join("; ")));
        }
        let mut out = counts.readings(elapsed);
        out.extend(totals);
        Ok(out)
    }
}
