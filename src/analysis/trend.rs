//! Trend and forecast of one numeric series: an ordinary least-squares line
//! through (seconds, value), a classification with a stated rule, and a
//! time-to-threshold forecast that is withheld when the signal is weak.
//! Callers (report, HTTP API) pass points read from the store and `now`.

use serde::Serialize;

use crate::sample::Ts;

/// One sample of a series. Non-finite values are ignored by every function.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub ts: Ts,
    pub value: f64,
}

/// A least-squares line `value = intercept + slope_per_second × (ts − origin)/1000`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fit {
    pub slope_per_second: f64,
    /// Fitted value at `origin`.
    pub intercept: f64,
    /// Earliest timestamp fitted; the time axis is seconds since it, so that
    /// squares of epoch milliseconds never enter the sums.
    pub origin: Ts,
    /// Share of variance the line explains, 0..=1; 1 for a constant series.
    pub r_squared: f64,
    /// Assumes independent residuals; real series wander, so ranges built
    /// from it are on the narrow side.
    pub slope_stderr_per_second: f64,
    pub points: usize,
    pub span_seconds: f64,
    pub mean: f64,
}

impl Fit {
    /// The line's value at `ts`.
    pub fn value_at(&self, ts: Ts) -> f64 {
        self.intercept + self.slope_per_second * seconds_between(self.origin, ts)
    }
}

fn seconds_between(from: Ts, to: Ts) -> f64 {
    to.saturating_sub(from) as f64 / 1000.0
}

fn finite(points: &[Point]) -> Vec<Point> {
    points
        .iter()
        .copied()
        .filter(|p| p.value.is_finite())
        .collect()
}

/// Ordinary least squares on (seconds, value). `None` with fewer than 3 finite
/// points or a zero time span. Points need not be sorted.
pub fn fit(points: &[Point]) -> Option<Fit> {
    let pts = finite(points);
    if pts.len() < 3 {
        return None;
    }
    let origin = pts.iter().map(|p| p.ts).min()?;
    let end = pts.iter().map(|p| p.ts).max()?;
    let span_seconds = seconds_between(origin, end);
    if span_seconds <= 0.0 {
        return None;
    }
    let n = pts.len() as f64;
    let x = |p: &Point| seconds_between(origin, p.ts);
    // Two passes about the means: one-pass sums lose the slope of a small
    // drift on a large level (bytes) to cancellation.
    let mean_x = pts.iter().map(x).sum::<f64>() / n;
    let mean = pts.iter().map(|p| p.value).sum::<f64>() / n;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for p in &pts {
        let (dx, dy) = (x(p) - mean_x, p.value - mean);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    let slope = sxy / sxx;
    let intercept = mean - slope * mean_x;
    let sse: f64 = pts
        .iter()
        .map(|p| (p.value - intercept - slope * x(p)).powi(2))
        .sum();
    let r_squared = if syy > 0.0 {
        (1.0 - sse / syy).clamp(0.0, 1.0)
    } else {
        1.0
    };
    Some(Fit {
        slope_per_second: slope,
        intercept,
        origin,
        r_squared,
        slope_stderr_per_second: (sse / (n - 2.0) / sxx).sqrt(),
        points: pts.len(),
        span_seconds,
        mean,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrendClass {
    Increasing,
    Stable,
    Decreasing,
}

impl TrendClass {
    /// The word, as serialized: `increasing`, `stable`, `decreasing`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrendClass::Increasing => "increasing",
            TrendClass::Stable => "stable",
            TrendClass::Decreasing => "decreasing",
        }
    }
}

/// Minimum |change over the window| as a share of the series' scale.
pub const TREND_MIN_CHANGE: f64 = 0.05;
/// Minimum r² for a non-stable class.
pub const TREND_MIN_R2: f64 = 0.3;
/// The classification rule, stated; keep in step with the two constants above.
pub const TREND_RULE: &str = "change = slope × span; scale = max(|mean|, max − min, 1e-12); \
increasing when change ≥ +5% of scale and r² ≥ 0.3; decreasing when change ≤ −5% of scale \
and r² ≥ 0.3; otherwise stable";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    pub class: TrendClass,
    pub slope_per_second: f64,
    pub slope_per_day: f64,
    /// slope × span: how much the line moved across the window.
    pub change_over_window: f64,
    pub r_squared: f64,
    pub points: usize,
    pub rule: &'static str,
}

/// Classifies a series by [`TREND_RULE`]. `None` when [`fit`] is `None`.
pub fn trend(points: &[Point]) -> Option<Trend> {
    let f = fit(points)?;
    let (lo, hi) = finite(points)
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.value), hi.max(p.value))
        });
    let change = f.slope_per_second * f.span_seconds;
    let scale = f.mean.abs().max(hi - lo).max(1e-12);
    let confident = f.r_squared >= TREND_MIN_R2;
    let class = if confident && change >= TREND_MIN_CHANGE * scale {
        TrendClass::Increasing
    } else if confident && change <= -TREND_MIN_CHANGE * scale {
        TrendClass::Decreasing
    } else {
        TrendClass::Stable
    };
    Some(Trend {
        class,
        slope_per_second: f.slope_per_second,
        slope_per_day: f.slope_per_second * 86_400.0,
        change_over_window: change,
        r_squared: f.r_squared,
        points: f.points,
        rule: TREND_RULE,
    })
}

pub const FORECAST_MIN_POINTS: usize = 12;
pub const FORECAST_MIN_SPAN_SECONDS: f64 = 3600.0;
pub const FORECAST_MIN_R2: f64 = 0.8;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ForecastInput {
    /// The value the series must reach, e.g. 1.0 for a used ratio, total
    /// bytes, or 0 for bytes available.
    pub threshold: f64,
    pub now: Ts,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Forecast {
    /// The fit is good and the series moves toward the threshold.
    Reaches {
        eta_seconds: f64,
        /// From the faster slope (slope + 2·stderr toward the threshold).
        eta_low_seconds: f64,
        /// From the slower slope; `None` when that slope does not approach.
        eta_high_seconds: Option<f64>,
        at: Ts,
        r_squared: f64,
        slope_per_second: f64,
    },
    /// Already at or past the threshold: the latest observation, or the
    /// fitted level at `now` when the line has already crossed it.
    Reached { value: f64 },
    /// Confident fit, moving away from or parallel to the threshold.
    NotApproaching {
        slope_per_second: f64,
        r_squared: f64,
    },
    /// Withheld: reason says what a forecast needs and what there is
    /// ("insufficient signal: needs ≥ 12 points over ≥ 1 h and r² ≥ 0.8;
    /// have 11 points over 0.1 h").
    InsufficientSignal { reason: String },
}

/// A withheld forecast: what one needs, then what there is (`have`), so
/// that an operator knows whether waiting will help.
fn withheld(have: String) -> Forecast {
    Forecast::InsufficientSignal {
        reason: format!(
            "insufficient signal: needs ≥ {FORECAST_MIN_POINTS} points over ≥ {:.0} h and r² ≥ {FORECAST_MIN_R2}; have {have}",
            FORECAST_MIN_SPAN_SECONDS / 3600.0
        ),
    }
}

/// `12 points over 0.1 h`: the part of a withheld reason that says how
/// much history there is.
fn points_over(n: usize, span_seconds: f64) -> String {
    format!("{n} points over {:.1} h", span_seconds / 3600.0)
}

/// Time until the series reaches `input.threshold`.
///
/// Rules, in order:
/// 1. Direction: the threshold lies above or below where the series started
///    (its earliest finite value); approaching means moving toward that side
///    (a used ratio rising to 1.0, bytes available falling to 0).
/// 2. `Reached` when the latest value is at or past the threshold.
/// 3. Withheld with fewer than 12 finite points or a span under 1 hour.
/// 4. Withheld when the line's r² is below 0.8. This is also what holds back
///    periodic series (daily fill-and-clean): a sawtooth leaves most variance
///    unexplained by any line, whatever slow drift rides on it.
/// 5. Current level = fitted value at `now`; `Reached` if that is past the
///    threshold, `NotApproaching` if the slope does not point toward it.
/// 6. Otherwise `Reaches`: eta = (threshold − current)/slope, with a range
///    from slope ± 2·stderr.
pub fn forecast(points: &[Point], input: ForecastInput) -> Forecast {
    let threshold = input.threshold;
    if !threshold.is_finite() {
        return withheld(format!("a threshold of {threshold}, which is not finite"));
    }
    let mut pts = finite(points);
    pts.sort_by_key(|p| p.ts);
    let (Some(first), Some(last)) = (pts.first().copied(), pts.last().copied()) else {
        return withheld(points_over(0, 0.0));
    };
    // +1 when the threshold lies above the start, −1 when below.
    let dir = if first.value < threshold { 1.0 } else { -1.0 };
    let past = |v: f64| dir * (v - threshold) >= 0.0;
    let toward = |slope: f64| dir * slope > 0.0;
    if past(last.value) {
        return Forecast::Reached { value: last.value };
    }
    let span = seconds_between(first.ts, last.ts);
    if pts.len() < FORECAST_MIN_POINTS || span < FORECAST_MIN_SPAN_SECONDS {
        return withheld(points_over(pts.len(), span));
    }
    let Some(f) = fit(&pts) else {
        return withheld(format!(
            "{}, and no line fits them",
            points_over(pts.len(), span)
        ));
    };
    if f.r_squared < FORECAST_MIN_R2 {
        return withheld(format!(
            "{}, r² {:.2}",
            points_over(pts.len(), span),
            f.r_squared
        ));
    }
    let current = f.value_at(input.now);
    if past(current) {
        return Forecast::Reached { value: current };
    }
    let slope = f.slope_per_second;
    if !toward(slope) {
        return Forecast::NotApproaching {
            slope_per_second: slope,
            r_squared: f.r_squared,
        };
    }
    let gap = threshold - current;
    let eta = gap / slope;
    let spread = dir * 2.0 * f.slope_stderr_per_second;
    let (fast, slow) = (slope + spread, slope - spread);
    Forecast::Reaches {
        eta_seconds: eta,
        eta_low_seconds: gap / fast,
        eta_high_seconds: toward(slow).then(|| gap / slow),
        // f64 → i64 casts saturate, so a centuries-away eta stays defined.
        at: input.now.saturating_add((eta * 1000.0).round() as i64),
        r_squared: f.r_squared,
        slope_per_second: slope,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Ts = 1_700_000_000_000;
    const DAY: f64 = 86_400.0;

    /// Deterministic noise in [-1, 1): a 64-bit LCG (Knuth's MMIX constants).
    fn lcg(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn at_hour(h: i64) -> Ts {
        T0 + h * 3_600_000
    }

    /// Hourly points for hours `0..=hours` (epoch ms, to test precision).
    fn hourly(hours: i64, mut f: impl FnMut(f64) -> f64) -> Vec<Point> {
        let pt = |h| Point {
            ts: at_hour(h),
            value: f(h as f64),
        };
        (0..=hours).map(pt).collect()
    }

    fn fc(points: &[Point], threshold: f64, now_hour: i64) -> Forecast {
        forecast(
            points,
            ForecastInput {
                threshold,
                now: at_hour(now_hour),
            },
        )
    }

    /// A week of daily fill-and-clean: 0.40 → 0.70 each day, then back.
    fn sawtooth(drift_per_day: f64) -> Vec<Point> {
        hourly(168, |h| {
            0.40 + 0.30 * (h % 24.0) / 23.0 + drift_per_day * h / 24.0
        })
    }

    fn eta_range(f: &Forecast) -> (f64, f64, Option<f64>) {
        match *f {
            Forecast::Reaches {
                eta_seconds: e,
                eta_low_seconds: l,
                eta_high_seconds: h,
                ..
            } => (e, l, h),
            ref other => panic!("expected reaches, got {other:?}"),
        }
    }

    #[test]
    fn steady_linear_fill_reaches_with_a_range() {
        let mut s = 7;
        let pts = hourly(168, |h| 0.50 + 0.01 * h / 24.0 + 0.001 * lcg(&mut s));
        let out = fc(&pts, 1.0, 168);
        let (eta, low, high) = eta_range(&out);
        // 0.57 now, 0.43 to go at 0.01/day: 43 days from now, 50 from the start.
        assert!((eta / DAY - 43.0).abs() < 4.3, "eta {} days", eta / DAY);
        assert!((eta / DAY + 7.0 - 50.0).abs() < 5.0);
        let high = high.expect("bounded");
        assert!(low <= eta && eta <= high && low < high, "{low} {high}");
        let Forecast::Reaches { at, .. } = out else {
            unreachable!()
        };
        assert_eq!(at, at_hour(168) + (eta * 1000.0).round() as i64);
    }

    #[test]
    fn daily_sawtooth_is_withheld_and_stable_with_or_without_drift() {
        for drift_per_day in [0.0, 0.005] {
            let pts = sawtooth(drift_per_day);
            let out = format!("{:?}", fc(&pts, 1.0, 168));
            assert!(
                out.contains("insufficient signal: needs ≥ 12 points over ≥ 1 h and r² ≥ 0.8; have 169 points over 168.0 h, r² 0.0"),
                "{out}"
            );
            assert_eq!(trend(&pts).unwrap().class, TrendClass::Stable);
        }
    }

    #[test]
    fn flat_noisy_series_is_stable_and_not_forecast() {
        let mut s = 42;
        let pts = hourly(168, |_| 0.50 + 0.01 * lcg(&mut s));
        assert_eq!(trend(&pts).unwrap().class, TrendClass::Stable);
        let out = fc(&pts, 1.0, 168);
        assert!(!matches!(out, Forecast::Reaches { .. }), "{out:?}");
    }

    #[test]
    fn falling_memory_available_reaches_zero() {
        let gib = 1024.0 * 1024.0 * 1024.0;
        let mut s = 3;
        // 8 GiB falling 0.5 GiB/day for 2 days, ±10 MiB jitter: 7 GiB left, 14 days.
        let pts = hourly(48, |h| gib * (8.0 - 0.5 * h / 24.0 + 0.01 * lcg(&mut s)));
        let (eta, low, high) = eta_range(&fc(&pts, 0.0, 48));
        assert!((eta / DAY - 14.0).abs() < 1.4, "eta {} days", eta / DAY);
        assert!(low <= eta && eta <= high.expect("bounded"));
    }

    #[test]
    fn moving_away_or_flat_is_not_approaching() {
        let draining = hourly(48, |h| 0.80 - 0.01 * h / 24.0);
        let out = fc(&draining, 1.0, 48);
        assert!(matches!(out, Forecast::NotApproaching { .. }), "{out:?}");
        let out = fc(&hourly(48, |_| 0.5), 1.0, 48);
        assert!(
            matches!(out, Forecast::NotApproaching { r_squared: 1.0, .. }),
            "{out:?}"
        );
    }

    #[test]
    fn at_or_past_threshold_is_reached() {
        let crossed = hourly(24, |h| 0.85 + 0.10 * h / 24.0);
        assert_eq!(fc(&crossed, 0.9, 24), Forecast::Reached { value: 0.95 });
        // Too short to fit, but a full disk needs no fit.
        assert_eq!(
            fc(&hourly(2, |_| 1.0), 1.0, 2),
            Forecast::Reached { value: 1.0 }
        );
        // The line crosses before `now` even though the last sample did not.
        let out = fc(&hourly(24, |h| 0.5 + 0.01 * h), 0.8, 40);
        assert!(
            matches!(out, Forecast::Reached { value } if value > 0.8),
            "{out:?}"
        );
    }

    #[test]
    fn few_points_are_withheld_and_nan_ignored() {
        let mut pts = hourly(12, |h| if h <= 10.0 { 0.5 + 0.01 * h } else { f64::NAN });
        pts[12].value = f64::INFINITY;
        let Forecast::InsufficientSignal { reason } = fc(&pts, 1.0, 12) else {
            panic!()
        };
        assert_eq!(
            reason,
            "insufficient signal: needs ≥ 12 points over ≥ 1 h and r² ≥ 0.8; have 11 points over 10.0 h"
        );
        let f = fit(&pts).unwrap();
        assert_eq!(f.points, 11);
        assert!((f.slope_per_second * 3600.0 - 0.01).abs() < 1e-12);
        assert!((f.value_at(at_hour(10)) - 0.60).abs() < 1e-12);
        assert!(fit(&pts[..2]).is_none());
        assert!(fit(&[pts[0], pts[0], pts[0]]).is_none(), "zero span");
    }

    #[test]
    fn clean_lines_classify() {
        let up = trend(&hourly(24, |h| 10.0 + h)).unwrap();
        assert_eq!((up.class, up.r_squared), (TrendClass::Increasing, 1.0));
        assert!((up.slope_per_day - 24.0).abs() < 1e-9);
        assert!((up.change_over_window - 24.0).abs() < 1e-9);
        let down = trend(&hourly(24, |h| -h * 1e6)).unwrap();
        assert_eq!(down.class, TrendClass::Decreasing);
        // Rising 2 % of its level over the window: real, but below the 5 % bar.
        let slight = trend(&hourly(24, |h| 100.0 + 2.0 * h / 24.0)).unwrap();
        assert_eq!(slight.class, TrendClass::Stable);
    }

    #[test]
    fn serializes_with_status_tag() {
        let json = |f: &Forecast| serde_json::to_value(f).unwrap()["status"].clone();
        assert_eq!(json(&Forecast::Reached { value: 1.0 }), "reached");
        assert_eq!(json(&withheld("x".into())), "insufficient_signal");
        let up = trend(&hourly(24, |h| h)).unwrap();
        assert_eq!(serde_json::to_value(&up).unwrap()["class"], "increasing");
    }
}
