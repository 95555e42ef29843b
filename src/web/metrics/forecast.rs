//! `upkeep_forecast_seconds_until{series}`: time until a host's used
//! ratio (a filesystem's space or inodes, memory) reaches 1, from the
//! last day of history, only while the forecast is confident (the rules
//! of `analysis::forecast`: 12 points over an hour at least, r² ≥ 0.8, the
//! series moving toward 1). A series without a confident forecast has no
//! sample, so an alert on it never fires on noise. Computed on the
//! blocking pool at most once a minute ([`Cache`]) by the `/metrics` route.

use std::time::{Duration, Instant};

use crate::analysis::{self, Forecast, ForecastInput};
use crate::live::Live;
use crate::sample::Ts;
use crate::store::Reader;

/// How long computed forecasts are served again: the history they read
/// changes a minute at a time.
pub const EVERY: Duration = Duration::from_secs(60);

/// The window a forecast is fitted over, and the most points read: a day
/// at one minute, so that a disk filling within the day is seen at the
/// first tier's detail.
const WINDOW_MS: i64 = 86_400_000;
const MAX_POINTS: usize = 1500;

/// The host readings forecast to reach 1.
const RATIOS: [&str; 3] = [
    "disk_used_ratio",
    "disk_inodes_used_ratio",
    "memory_used_ratio",
];

/// The series keys to forecast: every host ratio of [`RATIOS`] the live
/// state holds.
pub fn keys(live: &Live) -> Vec<String> {
    let mut keys: Vec<String> = live
        .rings
        .values()
        .filter(|r| r.key.probe == "host" && RATIOS.contains(&r.key.metric.as_str()))
        .map(|r| r.key.to_string())
        .collect();
    keys.sort();
    keys
}

/// Seconds until each series reaches 1, for the confident ones only
/// (0 when one already has).
pub fn compute(reader: &Reader, keys: &[String], now: Ts) -> Vec<(String, f64)> {
    keys.iter()
        .filter_map(|key| {
            let a = reader
                .query(key, now - WINDOW_MS, now, None, now, MAX_POINTS)
                .ok()??;
            let eta = match analysis::forecast(
                &a.averages(),
                ForecastInput {
                    threshold: 1.0,
                    now,
                },
            ) {
                Forecast::Reaches { eta_seconds, .. } => eta_seconds,
                Forecast::Reached { .. } => 0.0,
                Forecast::NotApproaching { .. } | Forecast::InsufficientSignal { .. } => {
                    return None;
                }
            };
            Some((key.clone(), eta))
        })
        .collect()
}

/// The last forecasts and when they were made.
#[derive(Debug, Default)]
pub struct Cache(Option<(Instant, Vec<(String, f64)>)>);

impl Cache {
    pub fn fresh(&self) -> Option<Vec<(String, f64)>> {
        self.0
            .as_ref()
            .filter(|(at, _)| at.elapsed() < EVERY)
            .map(|(_, v)| v.clone())
    }

    pub fn put(&mut self, v: Vec<(String, f64)>) {
        self.0 = Some((Instant::now(), v));
    }
}
