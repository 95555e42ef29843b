//! THE probe registry: every probe kind, its `kind = "..."` name and config
//! type, declared once in `probe_kinds!` below. From that one list come
//! `ProbeKind` (every kind, the built-in host probe included), `ProbeConfig`
//! (the `[probe.NAME]` table serde accepts) and the dispatch over kinds.
//! Each kind states its own facts (`KindFacts`) and how it is built
//! (`ConfiguredKind`) beside its code; a kind that lacks one does not
//! compile. Also here: the settings every kind shares (`probe_config!`,
//! `ProbeCommon`, `Threshold`) and `ProbeSet`, what `probes::build` reads.
//! The root config module composes `ProbeConfig` and `HostConfig` into `Config`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::host::HostConfig;
use super::{AnyProbe, BuildContext};

/// A threshold on one metric of a probe. `degraded`/`unhealthy` are levels at
/// or above which (at or below, with `below = true`) the status applies, once
/// held for `sustained`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Filled from the table key when given in config.
    #[serde(default, skip_serializing)]
    pub metric: String,
    pub degraded: f64,
    #[serde(default)]
    pub unhealthy: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub sustained: Duration,
    #[serde(default)]
    pub below: bool,
}

impl Threshold {
    /// Degraded at or above `degraded`, unhealthy at or above `unhealthy`,
    /// at once: the shape of most kinds' defaults.
    pub fn above(metric: &str, degraded: f64, unhealthy: f64) -> Threshold {
        Threshold {
            metric: metric.into(),
            degraded,
            unhealthy: Some(unhealthy),
            sustained: Duration::ZERO,
            below: false,
        }
    }

    /// The same for a metric whose danger is falling (days to expiry).
    pub fn below(metric: &str, degraded: f64, unhealthy: f64) -> Threshold {
        Threshold {
            below: true,
            ..Threshold::above(metric, degraded, unhealthy)
        }
    }
}

/// Settings every probe kind shares, borrowed from its `[probe.NAME]` table.
#[derive(Debug, Clone, Copy)]
pub struct ProbeCommon<'a> {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub failure_threshold: Option<u32>,
    pub success_threshold: Option<u32>,
    /// Overrides of the kind's default thresholds, keyed by metric name.
    pub thresholds: &'a BTreeMap<String, Threshold>,
    pub role: Option<Role>,
}

/// The service a probe stands for in the health document (the seed's
/// `services.database`, `.redis`, `.api` and `.workers[]`). Without one, the
/// first probe (in name order) of kind postgres, redis or http fills the
/// slot, and every worker probe is a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Database,
    Redis,
    Api,
    Worker,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Database => "database",
            Role::Redis => "redis",
            Role::Api => "api",
            Role::Worker => "worker",
        }
    }
}

/// Declares a probe kind's config struct: its own fields plus the settings
/// every kind shares. serde cannot combine `flatten` with
/// `deny_unknown_fields`, and a typo in a probe table must be an error, so
/// the shared fields are spelled into each struct by this macro.
#[macro_export]
macro_rules! probe_config {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            #[serde(default, with = "humantime_serde")]
            pub interval: Option<std::time::Duration>,
            #[serde(default, with = "humantime_serde")]
            pub timeout: Option<std::time::Duration>,
            #[serde(default)]
            pub failure_threshold: Option<u32>,
            #[serde(default)]
            pub success_threshold: Option<u32>,
            #[serde(default)]
            pub thresholds: std::collections::BTreeMap<String, $crate::probes::config::Threshold>,
            #[serde(default)]
            pub role: Option<$crate::probes::config::Role>,
            $($(#[$fm])* pub $f: $t,)*
        }
        impl $name {
            pub fn common(&self) -> $crate::probes::config::ProbeCommon<'_> {
                $crate::probes::config::ProbeCommon {
                    interval: self.interval,
                    timeout: self.timeout,
                    failure_threshold: self.failure_threshold,
                    success_threshold: self.success_threshold,
                    thresholds: &self.thresholds,
                    role: self.role,
                }
            }
        }
    };
}

/// What every probe kind says about itself, implemented on its config type
/// beside its code. The page and the health document read these instead of
/// keeping tables of their own.
pub trait KindFacts {
    /// The reading that stands for a probe of this kind in its sparkline.
    const HEADLINE: &'static str;
    /// The unlabelled reading that says how long one check took, in
    /// seconds. `None`: the kind has no such reading, and the check's own
    /// duration stands in for it.
    const LATENCY: Option<&'static str>;
    /// The unlabelled readings (seconds) that maintenance pacing compares
    /// with their pre-run baseline, the first present wins: what the
    /// application's own requests wait for. Empty: `LATENCY`, else the
    /// check's duration.
    const PACING: &'static [&'static str] = &[];
}

/// A kind configured under `[probe.NAME]`: its defaults and how it is
/// built. Building never connects to anything. (Its own checks are its
/// config type's `validate`, which the registry calls by name.)
pub trait ConfiguredKind: KindFacts {
    /// The interval of a probe of this kind that sets none; `None`: the
    /// agent's interval. Slow, host-wide checks (pending updates) say so.
    const DEFAULT_INTERVAL: Option<Duration> = None;
    /// The tick timeout of a probe that sets none, at most half its
    /// interval; `None`: half the interval, at most 10 s.
    const DEFAULT_TIMEOUT: Option<Duration> = None;
    /// Thresholds that apply unless the table overrides them by metric.
    fn default_thresholds() -> Vec<Threshold>;
    /// The probe `name`; `timeout` is its tick timeout, which a probe that
    /// bounds its own statements needs.
    fn build(&self, name: &str, timeout: Duration, ctx: &BuildContext) -> AnyProbe;
}

/// Declares every probe kind from one list: `Variant = "kind" => ConfigType`.
/// Built-in kinds are configured by a table of their own (`[host]`); the
/// configured ones are `[probe.NAME]` tables told apart by `kind`.
macro_rules! probe_kinds {
    (
        builtin { $($bv:ident = $bname:literal => $bty:ty,)* }
        configured { $($cv:ident = $cname:literal => $cty:ty,)* }
    ) => {
        /// Every probe kind, built-in or configured.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProbeKind {
            $($bv,)*
            $($cv,)*
        }

        impl ProbeKind {
            /// Every kind, built-in first, in registry order.
            pub const ALL: &'static [ProbeKind] = &[$(ProbeKind::$bv,)* $(ProbeKind::$cv,)*];

            /// The `kind = "..."` name (`host` for the built-in probe).
            pub const fn name(self) -> &'static str {
                match self {
                    $(ProbeKind::$bv => $bname,)*
                    $(ProbeKind::$cv => $cname,)*
                }
            }

            /// The kind named `name`, if there is one.
            pub fn from_name(name: &str) -> Option<ProbeKind> {
                ProbeKind::ALL.iter().copied().find(|k| k.name() == name)
            }

            /// See `KindFacts::HEADLINE`.
            pub const fn headline_metric(self) -> &'static str {
                match self {
                    $(ProbeKind::$bv => <$bty as KindFacts>::HEADLINE,)*
                    $(ProbeKind::$cv => <$cty as KindFacts>::HEADLINE,)*
                }
            }

            /// See `KindFacts::LATENCY`.
            pub const fn latency_metric(self) -> Option<&'static str> {
                match self {
                    $(ProbeKind::$bv => <$bty as KindFacts>::LATENCY,)*
                    $(ProbeKind::$cv => <$cty as KindFacts>::LATENCY,)*
                }
            }

            /// See `KindFacts::PACING`.
            pub const fn pacing_metrics(self) -> &'static [&'static str] {
                match self {
                    $(ProbeKind::$bv => <$bty as KindFacts>::PACING,)*
                    $(ProbeKind::$cv => <$cty as KindFacts>::PACING,)*
                }
            }

            /// Whether the kind is configured under `[probe.NAME]`.
            pub const fn is_configured(self) -> bool {
                match self {
                    $(ProbeKind::$bv => false,)*
                    $(ProbeKind::$cv => true,)*
                }
            }
        }

        /// `[probe.NAME]` with `kind = "..."`: one variant per configured kind.
        #[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
        #[serde(tag = "kind")]
        pub enum ProbeConfig {
            $(#[serde(rename = $cname)] $cv($cty),)*
        }

        impl ProbeConfig {
            /// Every configured kind's `kind = "..."` name (checked against
            /// serde in a test).
            pub const KINDS: &'static [&'static str] = &[$($cname,)*];

            /// Reads the table of kind `kind` with its `kind` key taken
            /// out, straight into that kind's struct: serde's internally
            /// tagged enum buffers the table first and loses where in the
            /// file each value was, which config errors need. `None`: no
            /// such kind.
            pub fn deserialize_kind<'de, D: serde::Deserializer<'de>>(
                kind: &str,
                d: D,
            ) -> Option<Result<ProbeConfig, D::Error>> {
                match kind {
                    $($cname => Some(<$cty as Deserialize>::deserialize(d).map(ProbeConfig::$cv)),)*
                    _ => None,
                }
            }

            pub fn probe_kind(&self) -> ProbeKind {
                match self {
                    $(ProbeConfig::$cv(_) => ProbeKind::$cv,)*
                }
            }

            pub fn kind(&self) -> &'static str {
                self.probe_kind().name()
            }

            /// The shared settings, with the kind's own default interval
            /// and timeout filled in where the table sets none.
            pub fn common(&self) -> ProbeCommon<'_> {
                match self {
                    $(ProbeConfig::$cv(c) => {
                        let mut common = c.common();
                        common.interval = common
                            .interval
                            .or(<$cty as ConfiguredKind>::DEFAULT_INTERVAL);
                        if let (None, Some(t), Some(i)) = (
                            common.timeout,
                            <$cty as ConfiguredKind>::DEFAULT_TIMEOUT,
                            common.interval,
                        ) {
                            common.timeout = Some(t.min(i / 2));
                        }
                        common
                    })*
                }
            }

            /// The kind's own checks, each with the field it is about.
            pub fn validate_kind(&self) -> Vec<(&'static str, String)> {
                match self {
                    $(ProbeConfig::$cv(c) => c.validate(),)*
                }
            }

            /// The probe and the kind's default thresholds.
            pub fn build(
                &self,
                name: &str,
                timeout: Duration,
                ctx: &BuildContext,
            ) -> (AnyProbe, Vec<Threshold>) {
                match self {
                    $(ProbeConfig::$cv(c) => (
                        c.build(name, timeout, ctx),
                        <$cty as ConfiguredKind>::default_thresholds(),
                    ),)*
                }
            }
        }
    };
}

// THE registry: one line per kind.
probe_kinds! {
    builtin {
        Host = "host" => HostConfig,
    }
    configured {
        Tcp = "tcp" => super::tcp::TcpConfig,
        Http = "http" => super::http::HttpConfig,
        Worker = "worker" => super::worker::WorkerConfig,
        AccessLog = "access_log" => super::access_log::AccessLogConfig,
        Postgres = "postgres" => super::postgres::PostgresConfig,
        Redis = "redis" => super::redis::RedisConfig,
        SecurityUpdates = "security_updates" => super::security_updates::SecurityUpdatesConfig,
        AccessReview = "access_review" => super::access_review::AccessReviewConfig,
        Compliance = "compliance" => super::compliance::ComplianceConfig,
    }
}

/// What building the probes reads from the agent's config: the `[host]`
/// and `[probe.NAME]` tables and the agent-wide settings a probe falls back
/// on. The agent's `Config` converts into one.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSet<'a> {
    pub host: &'a HostConfig,
    pub probes: &'a BTreeMap<String, ProbeConfig>,
    /// The interval of a probe that sets none.
    pub interval: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::Path;

    use super::*;

    /// serde lists every variant it knows in an unknown-variant error.
    fn serde_kinds() -> Vec<String> {
        let err = toml::from_str::<ProbeConfig>("kind = \"nope\"")
            .unwrap_err()
            .to_string();
        let known = err
            .rsplit("expected ")
            .next()
            .unwrap()
            .trim()
            .trim_start_matches("one of ");
        // "one of `a`, `b`, `c`", or "`a` or `b`" for two.
        known
            .split(", ")
            .flat_map(|k| k.split(" or "))
            .map(|k| k.trim_matches('`').to_string())
            .collect()
    }

    #[test]
    fn serde_accepts_exactly_the_registered_kinds() {
        let configured: Vec<&str> = ProbeKind::ALL
            .iter()
            .filter(|k| k.is_configured())
            .map(|k| k.name())
            .collect();
        assert_eq!(configured, ProbeConfig::KINDS);
        assert_eq!(serde_kinds(), ProbeConfig::KINDS);
        for kind in ProbeConfig::KINDS {
            // Missing fields are fine here: only the kind must be known.
            if let Err(e) = toml::from_str::<ProbeConfig>(&format!("kind = \"{kind}\"")) {
                assert!(!e.to_string().contains("unknown variant"), "{kind}: {e}");
            }
        }
    }

    #[test]
    fn names_are_unique_and_round_trip() {
        let names: HashSet<&str> = ProbeKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), ProbeKind::ALL.len());
        for k in ProbeKind::ALL {
            assert_eq!(ProbeKind::from_name(k.name()), Some(*k));
        }
        assert_eq!(ProbeKind::from_name("test"), None);
    }

    #[test]
    fn every_kind_has_an_example_block() {
        let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/agent.toml.example"));
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .collect();
        for k in ProbeKind::ALL {
            let found = if k.is_configured() {
                let kind = format!("kind = \"{}\"", k.name());
                lines
                    .windows(2)
                    .any(|w| w[0].starts_with("[probe.") && w[1] == kind)
            } else {
                lines.contains(&format!("[{}]", k.name()).as_str())
            };
            assert!(
                found,
                "agent.toml.example has no block of kind {}",
                k.name()
            );
        }
    }

    /// The kind's own source, its `KindFacts` impl left out: what the
    /// facts name must be found in the code that emits readings.
    fn emitting_source(kind: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/probes");
        let mut files = vec![root.join(format!("{kind}.rs"))];
        if let Ok(dir) = std::fs::read_dir(root.join(kind)) {
            files.extend(dir.map(|e| e.unwrap().path()));
        }
        let mut out = String::new();
        for f in files.iter().filter(|f| f.is_file()) {
            let text = std::fs::read_to_string(f).unwrap();
            let text = match text.find("impl KindFacts for ") {
                Some(start) => {
                    let end = start + text[start..].find("\n}\n").expect("impl ends");
                    format!("{}{}", &text[..start], &text[end..])
                }
                None => text,
            };
            out.push_str(&text);
        }
        assert!(!out.is_empty(), "no source for kind {kind}");
        out
    }

    #[test]
    fn every_kind_has_its_page_and_health_facts() {
        for k in ProbeKind::ALL {
            let source = emitting_source(k.name());
            let headline = k.headline_metric();
            let mut metrics = vec![headline];
            metrics.extend(k.latency_metric());
            for m in metrics {
                assert!(
                    !m.is_empty() && source.contains(&format!("\"{m}\"")),
                    "kind {}: `{m}` is not a reading it emits",
                    k.name()
                );
            }
        }
    }

    #[test]
    fn facts_are_what_the_page_and_health_document_always_showed() {
        let got: Vec<_> = ProbeKind::ALL
            .iter()
            .map(|k| (k.name(), k.headline_metric(), k.latency_metric()))
            .collect();
        let want = [
            ("host", "cpu_used_ratio", None),
            ("tcp", "connect_seconds", Some("connect_seconds")),
            ("http", "response_seconds", Some("response_seconds")),
            ("worker", "processes", None),
            (
                "access_log",
                "requests_per_second",
                Some("latency_p50_seconds"),
            ),
            ("postgres", "query_seconds", Some("query_seconds")),
            ("redis", "ping_seconds", Some("ping_seconds")),
            ("security_updates", "security_updates_pending", None),
            ("access_review", "unreviewed_changes", None),
            ("compliance", "checks_failed", None),
        ];
        assert_eq!(got, want);
    }
}
