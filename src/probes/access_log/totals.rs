//! Running totals of an access-log probe since it started: requests by
//! status class and a request-time histogram with fixed buckets, which
//! `/metrics` exports as Prometheus counters and a histogram (`rate()` and
//! `histogram_quantile()` work across hosts). Added to once per tick by
//! the probe (`mod.rs`); a restart of the agent starts them again from 0, a
//! counter reset Prometheus handles.

use crate::sample::{Reading, Unit};

/// Upper bounds of the request-time buckets, in seconds: Prometheus'
/// default buckets, which suit web requests.
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Status classes, by the status' first digit (1 to 5).
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One tick's (or the probe's whole life's) requests by class and times.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    /// By class; index 5 counts statuses outside 100..=599.
    pub by_class: [u64; 6],
    /// Timed requests per bucket (not cumulative); the last slot is +Inf.
    pub buckets: [u64; BUCKETS.len() + 1],
    pub sum_seconds: f64,
    pub timed: u64,
}

impl Totals {
    pub fn add_request(&mut self, status: u16, seconds: Option<f64>) {
        let class = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => 5,
        };
        self.by_class[class] += 1;
        if let Some(s) = seconds.filter(|s| s.is_finite() && *s >= 0.0) {
            let i = BUCKETS
                .iter()
                .position(|le| s <= *le)
                .unwrap_or(BUCKETS.len());
            self.buckets[i] += 1;
            self.sum_seconds += s;
            self.timed += 1;
        }
    }

    /// Adds another tick's counts.
    pub fn merge(&mut self, other: &Totals) {
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
        self.timed += other.timed;
    }

    /// `requests_total{class}` (every class, 0 included, so that the series
    /// exist from the first tick; `other` once one is seen) and
    /// `request_duration_seconds_{bucket,sum,count}`, all running totals.
    pub fn readings(&self) -> Vec<Reading> {
        let mut out = Vec::with_capacity(20);
        for (class, n) in CLASSES.iter().zip(self.by_class) {
            out.push(total("requests_total", n as f64).with_label("class", class));
        }
        if self.by_class[5] > 0 {
            out.push(total("requests_total", self.by_class[5] as f64).with_label("class", "other"));
        }
        let mut cumulative = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            out.push(
                total("request_duration_seconds_bucket", cumulative as f64).with_label("le", &le),
            );
        }
        out.push(total("request_duration_seconds_sum", self.sum_seconds));
        out.push(total("request_duration_seconds_count", self.timed as f64));
        out
    }
}

fn total(metric: &str, v: f64) -> Reading {
    Reading::new(metric, v, Unit::Total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(rs: &[Reading], metric: &str, label: Option<&str>) -> f64 {
        rs.iter()
            .find(|r| r.metric == metric && label.is_none_or(|l| r.labels[0].1 == l))
            .unwrap_or_else(|| panic!("{metric} {label:?}"))
            .value
    }

    #[test]
    fn classes_and_cumulative_buckets() {
        let mut tick = Totals::default();
        tick.add_request(200, Some(0.004));
        tick.add_request(204, Some(0.005));
        tick.add_request(503, Some(0.3));
        tick.add_request(404, None);
        tick.add_request(999, Some(20.0));
        let mut life = Totals::default();
        life.merge(&tick);
        life.merge(&tick);
        let rs = life.readings();
        assert_eq!(value(&rs, "requests_total", Some("2xx")), 4.0);
        assert_eq!(value(&rs, "requests_total", Some("4xx")), 2.0);
        assert_eq!(value(&rs, "requests_total", Some("5xx")), 2.0);
        assert_eq!(value(&rs, "requests_total", Some("1xx")), 0.0);
        assert_eq!(value(&rs, "requests_total", Some("other")), 2.0);
        let b = "request_duration_seconds_bucket";
        // A time equal to a bound falls in that bucket (le: less or equal).
        assert_eq!(value(&rs, b, Some("0.005")), 4.0);
        assert_eq!(value(&rs, b, Some("0.25")), 4.0);
        assert_eq!(value(&rs, b, Some("0.5")), 6.0);
        assert_eq!(value(&rs, b, Some("10")), 6.0);
        assert_eq!(value(&rs, b, Some("+Inf")), 8.0);
        assert_eq!(value(&rs, "request_duration_seconds_count", None), 8.0);
        let sum = value(&rs, "request_duration_seconds_sum", None);
        assert!((sum - 2.0 * 20.309).abs() < 1e-9, "{sum}");
        // No `other` series until one is seen.
        assert!(
            !Totals::default()
                .readings()
                .iter()
                .any(|r| r.labels.iter().any(|(_, v)| v == "other"))
        );
    }
}
