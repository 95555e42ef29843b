//! `[host]`: the built-in host probe's settings (`HostConfig`, `Levels`),
//! its thresholds and its registry facts. Composed into the agent's `Config`;
//! read by `probes::build` and `HostProbe::new`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::probes::config::{KindFacts, Threshold};

/// Degraded/unhealthy levels for one host resource.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Levels {
    pub degraded: f64,
    pub unhealthy: f64,
    #[serde(default, with = "humantime_serde")]
    pub sustained: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Mount points to watch; empty means every real filesystem.
    pub disks: Vec<String>,
    /// Interfaces to watch; empty means every interface but those
    /// `ignore_interfaces` matches.
    pub interfaces: Vec<String>,
    /// Name patterns (`*` matches any run of characters) of interfaces left
    /// out when `interfaces` is empty: loopback and the virtual interfaces
    /// of containers, bridges and VMs, as node_exporter leaves them out.
    pub ignore_interfaces: Vec<String>,
    pub cpu: Levels,
    pub memory: Levels,
    pub disk: Levels,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            enabled: true,
            interval: None,
            timeout: None,
            disks: Vec::new(),
            interfaces: Vec::new(),
            ignore_interfaces: ["lo", "veth*", "docker*", "br-*", "ifb*", "virbr*"]
                .map(String::from)
                .to_vec(),
            cpu: Levels {
                degraded: 0.85,
                unhealthy: 0.95,
                sustained: Duration::from_secs(300),
            },
            memory: Levels {
                degraded: 0.85,
                unhealthy: 0.95,
                sustained: Duration::ZERO,
            },
            disk: Levels {
                degraded: 0.80,
                unhealthy: 0.90,
                sustained: Duration::ZERO,
            },
        }
    }
}

impl KindFacts for HostConfig {
    const HEADLINE: &'static str = "cpu_used_ratio";
    /// Nothing the host probe reads is a latency: its tick's duration stands in.
    const LATENCY: Option<&'static str> = None;
}

/// The three host thresholds; `disk_used_ratio` is judged per `mount`.
pub fn thresholds(config: &HostConfig) -> Vec<Threshold> {
    let t = |metric: &str, l: &Levels| Threshold {
        metric: metric.to_string(),
        degraded: l.degraded,
        unhealthy: Some(l.unhealthy),
        sustained: l.sustained,
        below: false,
    };
    vec![
        t("cpu_used_ratio", &config.cpu),
        t("memory_used_ratio", &config.memory),
        t("disk_used_ratio", &config.disk),
    ]
}
