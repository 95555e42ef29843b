//! `kind = "tcp"`: can a TCP connection be opened to an address, and how
//! long does it take? The simplest service check (a port that answers).

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::config::{ConfiguredKind, KindFacts, Threshold};
use super::{AnyProbe, BuildContext, Probe, ProbeError};
use crate::probe_config;
use crate::sample::{Reading, Unit};

probe_config! {
    /// `[probe.NAME] kind = "tcp"`.
    pub struct TcpConfig {
        /// `host:port`; a name is resolved on every tick.
        pub address: String,
    }
}

impl TcpConfig {
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match self.address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => out.push(("address", format!("`{}` is not host:port", self.address))),
        }
        out
    }
}

/// Connect latency above 1 s is degraded, above 3 s unhealthy.
pub fn default_thresholds() -> Vec<Threshold> {
    vec![Threshold::above("connect_seconds", 1.0, 3.0)]
}

pub struct TcpProbe {
    address: String,
}

impl TcpProbe {
    pub fn new(config: &TcpConfig) -> TcpProbe {
        TcpProbe {
            address: config.address.clone(),
        }
    }
}

impl KindFacts for TcpConfig {
    const HEADLINE: &'static str = "connect_seconds";
    const LATENCY: Option<&'static str> = Some("connect_seconds");
}

impl ConfiguredKind for TcpConfig {
    fn default_thresholds() -> Vec<Threshold> {
        default_thresholds()
    }

    fn build(&self, _name: &str, _timeout: Duration, _ctx: &BuildContext) -> AnyProbe {
        Box::new(TcpProbe::new(self))
    }
}

impl Probe for TcpProbe {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        let started = Instant::now();
        let stream = TcpStream::connect(&self.address)
            .await
            .map_err(|e| ProbeError::io(format_args!("connect to {}", self.address), &e))?;
        let took = started.elapsed();
        drop(stream);
        Ok(vec![Reading::new(
            "connect_seconds",
            took.as_secs_f64(),
            Unit::Seconds,
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(address: &str) -> TcpConfig {
        TcpConfig {
            interval: None,
            timeout: None,
            failure_threshold: None,
            success_threshold: None,
            thresholds: Default::default(),
            role: None,
            address: address.into(),
        }
    }

    #[test]
    fn address_must_be_host_port() {
        assert!(cfg("127.0.0.1:5432").validate().is_empty());
        assert!(cfg("[::1]:22").validate().is_empty());
        assert_eq!(cfg("localhost").validate().len(), 1);
        assert_eq!(cfg("localhost:0").validate().len(), 1);
        assert_eq!(cfg(":80").validate().len(), 1);
    }

    #[tokio::test]
    async fn measures_a_real_listener_and_names_a_refused_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut p = TcpProbe::new(&cfg(&addr));
        let r = p.sample().await.unwrap();
        assert_eq!(r[0].metric, "connect_seconds");
        assert!(r[0].value >= 0.0 && r[0].value < 1.0);
        drop(listener);
        let err = p.sample().await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("connect to {addr}: ")), "{err}");
    }
}
