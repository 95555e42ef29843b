//! When a task may run: a 5-field cron expression (croner), a daily window
//! `"HH:MM-HH:MM"` (it may wrap past midnight) on chosen days, in local time
//! or UTC, or `window = "auto"`: the quietest recurring hour of the week
//! measured from the agent's own history.
//!
//! - schedule only: a run at each cron time;
//! - window only: a run when the window opens;
//! - both: each cron time that falls inside the window;
//! - neither: the task runs only when asked (CLI, API), at any time.
//!
//! The gate of every run (scheduled or asked for) checks that the window is
//! open; a run stops at the first safe point after it closes.

use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration as CDuration, Local, NaiveDate, TimeZone, Timelike, Utc,
};
use croner::Cron;
use serde::Serialize;

use super::config::TaskCommon;
use crate::sample::Ts;

/// How many days of history `window = "auto"` needs before it chooses.
pub const AUTO_MIN_DAYS: i64 = 7;
/// How far back `window = "auto"` looks.
pub const AUTO_LOOKBACK_DAYS: i64 = 28;

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The clock of a schedule: the host's local time, UTC, or an IANA zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Zone {
    Local,
    Utc,
    Named(super::zone::HostZone),
}

/// A daily window in minutes of the day, `[start, end)`; `end < start`
/// wraps past midnight (the window belongs to the day it opens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start_min: u32,
    pub end_min: u32,
}

#[derive(Debug, Clone)]
pub enum WindowSpec {
    /// No window: always open.
    None,
    Daily(Window),
    /// The quietest hour, once chosen from history.
    Auto,
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub cron: Option<Cron>,
    pub window: WindowSpec,
    /// Days (Monday = 0) the window may open; all when none were named.
    pub days: [bool; 7],
    pub zone: Zone,
}

/// The hour `window = "auto"` chose and the figures behind the choice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoChoice {
    pub series: String,
    /// Day of week, Monday = 0, in the schedule's zone.
    pub weekday: u32,
    pub hour: u32,
    /// Mean of the series in that hour of the week.
    pub mean: f64,
    /// Mean over every hour of the week that has data.
    pub overall_mean: f64,
    /// Hours of the week with data (of 168) and days of history used.
    pub hours_with_data: usize,
    pub days_of_history: f64,
}

/// Problems of the runner's fields, as (field, message).
pub fn validate(c: &TaskCommon<'_>) -> Vec<(&'static str, String)> {
    match Schedule::parse(c) {
        Ok(_) => Vec::new(),
        Err(e) => e,
    }
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl Schedule {
    pub fn parse(c: &TaskCommon<'_>) -> Result<Schedule, Vec<(&'static str, String)>> {
        let mut bad = Vec::new();
        let cron = match c.schedule {
            None => None,
            Some(s) if s.split_whitespace().count() != 5 => {
                bad.push((
                    "schedule",
                    format!(
                        "`{s}` is not a 5-field cron expression (minute hour day month weekday)"
                    ),
                ));
                None
            }
            Some(s) => match Cron::from_str(s) {
                Ok(c) => Some(c),
                Err(e) => {
                    bad.push(("schedule", format!("`{s}`: {e}")));
                    None
                }
            },
        };
        let window = match c.window {
            None => WindowSpec::None,
            Some("auto") => WindowSpec::Auto,
            Some(w) => {
                match w
                    .split_once('-')
                    .and_then(|(a, b)| Some((parse_hhmm(a)?, parse_hhmm(b)?)))
                {
                    Some((a, b)) if a != b => WindowSpec::Daily(Window {
                        start_min: a,
                        end_min: b,
                    }),
                    Some(_) => {
                        bad.push(("window", format!("`{w}` opens and closes at the same time")));
                        WindowSpec::None
                    }
                    None => {
                        bad.push((
                        "window",
                        format!("`{w}` is neither \"HH:MM-HH:MM\" (e.g. \"02:00-05:00\") nor \"auto\""),
                    ));
                        WindowSpec::None
                    }
                }
            }
        };
        if c.auto_series.is_some() && !matches!(window, WindowSpec::Auto) {
            bad.push(("auto_series", "is only used with window = \"auto\"".into()));
        }
        let mut days = [c.days.is_empty(); 7];
        for d in c.days {
            match DAY_NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(d.trim()))
            {
                Some(i) => days[i] = true,
                None => bad.push((
                    "days",
                    format!("`{d}` is not a day (mon, tue, wed, thu, fri, sat, sun)"),
                )),
            }
        }
        let zone = match c.timezone {
            None | Some("local") => Zone::Local,
            Some("UTC") | Some("utc") => Zone::Utc,
            Some(z) => match super::zone::HostZone::named(z) {
                Ok(tz) => Zone::Named(tz),
                Err(why) => {
                    bad.push((
                        "timezone",
                        format!(
                            "`{z}` {why}: give \"local\", \"UTC\" or an IANA time zone such as \"Europe/Berlin\""
                        ),
                    ));
                    Zone::Local
                }
            },
        };
        if bad.is_empty() {
            Ok(Schedule {
                cron,
                window,
                days,
                zone,
            })
        } else {
            Err(bad)
        }
    }

    /// Whether the task runs only when asked.
    pub fn manual_only(&self) -> bool {
        self.cron.is_none() && matches!(self.window, WindowSpec::None)
    }

    /// The window in force: the daily one, the auto choice, or none.
    fn window(&self, auto: Option<&AutoChoice>) -> Result<Option<(Window, [bool; 7])>, String> {
        match &self.window {
            WindowSpec::None => Ok(None),
            WindowSpec::Daily(w) => Ok(Some((*w, self.days))),
            WindowSpec::Auto => {
                let a = auto.ok_or_else(|| {
                    format!(
                        "window = \"auto\" has not chosen an hour yet (it needs {AUTO_MIN_DAYS} days of history)"
                    )
                })?;
                let mut days = [false; 7];
                days[a.weekday as usize] = true;
                Ok(Some((
                    Window {
                        start_min: a.hour * 60,
                        end_min: (a.hour * 60 + 60) % 1440,
                    },
                    days,
                )))
            }
        }
    }

    fn to_zone(&self, t: DateTime<Utc>) -> (NaiveDate, u32, u32) {
        match &self.zone {
            Zone::Utc => (
                t.date_naive(),
                t.hour() * 60 + t.minute(),
                t.weekday().num_days_from_monday(),
            ),
            Zone::Local => {
                let l = t.with_timezone(&Local);
                (
                    l.date_naive(),
                    l.hour() * 60 + l.minute(),
                    l.weekday().num_days_from_monday(),
                )
            }
            Zone::Named(tz) => {
                let l = t.with_timezone(tz);
                (
                    l.date_naive(),
                    l.hour() * 60 + l.minute(),
                    l.weekday().num_days_from_monday(),
                )
            }
        }
    }

    /// The cron's next time after `after`, read on the schedule's clock.
    fn cron_next(&self, c: &Cron, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        fn on<Z: TimeZone>(c: &Cron, after: DateTime<Utc>, z: &Z) -> Option<DateTime<Utc>> {
            c.find_next_occurrence(&after.with_timezone(z), false)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }
        match &self.zone {
            Zone::Utc => on(c, after, &Utc),
            Zone::Local => on(c, after, &Local),
            Zone::Named(tz) => on(c, after, tz),
        }
    }

    fn at(&self, date: NaiveDate, minute: u32) -> Option<DateTime<Utc>> {
        let naive = date.and_hms_opt(minute / 60, minute % 60, 0)?;
        match &self.zone {
            Zone::Utc => Some(Utc.from_utc_datetime(&naive)),
            // A time skipped by a DST change has no instant: the window opens
            // at the next one that exists.
            Zone::Local => earliest(&Local, naive),
            Zone::Named(tz) => earliest(tz, naive),
        }
    }

    /// When the window open at `t` closes; `Ok(None)` with no window (always
    /// open); `Err` with why it is closed.
    pub fn open_until(
        &self,
        t: DateTime<Utc>,
        auto: Option<&AutoChoice>,
    ) -> Result<Option<DateTime<Utc>>, String> {
        let Some((w, days)) = self.window(auto)? else {
            return Ok(None);
        };
        let (date, minute, weekday) = self.to_zone(t);
        let len = (w.end_min + 1440 - w.start_min) % 1440;
        // The window that opened today, or yesterday when it wraps.
        for back in [0i64, 1] {
            let day = date - CDuration::days(back);
            let wd = (weekday + 7 - back as u32) % 7;
            if !days[wd as usize] {
                continue;
            }
            let since_open = minute as i64 + back * 1440 - w.start_min as i64;
            if since_open >= 0 && since_open < len as i64 {
                let close = self
                    .at(day, w.start_min)
                    .map(|o| o + CDuration::minutes(len as i64));
                return Ok(close);
            }
        }
        Err(format!(
            "outside the window {}{}",
            fmt_window(w),
            fmt_days(&days)
        ))
    }

    /// The next scheduled start strictly after `after`; `None` for a
    /// manual-only task or an auto window not chosen yet.
    pub fn next_start(
        &self,
        after: DateTime<Utc>,
        auto: Option<&AutoChoice>,
    ) -> Option<DateTime<Utc>> {
        let window = self.window(auto).ok()?;
        match (&self.cron, window) {
            (None, None) => None,
            (Some(c), None) => self.cron_next(c, after),
            (None, Some((w, days))) => {
                let (date, _, _) = self.to_zone(after);
                (0..9).find_map(|d| {
                    let day = date + CDuration::days(d);
                    let wd = day.weekday().num_days_from_monday() as usize;
                    let t = self.at(day, w.start_min)?;
                    (days[wd] && t > after).then_some(t)
                })
            }
            (Some(c), Some(_)) => {
                let mut t = after;
                // Cron times outside the window are skipped; a year of
                // minutes bounds the search.
                for _ in 0..600_000 {
                    t = self.cron_next(c, t)?;
                    if self.open_until(t, auto).is_ok() {
                        return Some(t);
                    }
                }
                None
            }
        }
    }

    /// One line for people: "cron `0 3 * * *` inside 02:00-05:00 mon,tue (local)".
    pub fn describe(&self, auto: Option<&AutoChoice>) -> String {
        let zone = match &self.zone {
            Zone::Local => "local time".to_string(),
            Zone::Utc => "UTC".to_string(),
            Zone::Named(tz) => tz.name().to_string(),
        };
        let win = match (&self.window, self.window(auto)) {
            (WindowSpec::None, _) => None,
            (_, Ok(Some((w, d)))) => Some(format!("{}{}", fmt_window(w), fmt_days(&d))),
            (_, _) => Some("auto (not chosen yet)".to_string()),
        };
        match (&self.cron, win) {
            (None, None) => "manual only".into(),
            (Some(c), None) => format!("cron `{}` ({zone})", c.pattern),
            (None, Some(w)) => format!("when the window opens: {w} ({zone})"),
            (Some(c), Some(w)) => format!("cron `{}` inside {w} ({zone})", c.pattern),
        }
    }

    /// Chooses the quietest hour of the week from `hourly` (time, mean)
    /// points of `series`; `Err` says why not yet.
    pub fn choose_auto(
        &self,
        series: &str,
        hourly: &[(Ts, f64)],
        now: Ts,
    ) -> Result<AutoChoice, String> {
        let Some(first) = hourly.iter().map(|p| p.0).min() else {
            return Err(format!("no history of `{series}` yet"));
        };
        let days = (now - first) as f64 / 86_400_000.0;
        if days < AUTO_MIN_DAYS as f64 {
            return Err(format!(
                "{days:.1} days of `{series}` history; window = \"auto\" needs {AUTO_MIN_DAYS}"
            ));
        }
        let mut sums = [(0.0f64, 0u32); 168];
        for &(ts, v) in hourly {
            if !v.is_finite() {
                continue;
            }
            let Some(t) = DateTime::<Utc>::from_timestamp_millis(ts) else {
                continue;
            };
            let (_, minute, wd) = self.to_zone(t);
            let slot = (wd * 24 + minute / 60) as usize;
            sums[slot].0 += v;
            sums[slot].1 += 1;
        }
        let means: Vec<(usize, f64)> = sums
            .iter()
            .enumerate()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(i, (s, n))| (i, s / *n as f64))
            .collect();
        let (slot, mean) = means
            .iter()
            .copied()
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .ok_or_else(|| format!("no finite values of `{series}`"))?;
        let overall = means.iter().map(|m| m.1).sum::<f64>() / means.len() as f64;
        Ok(AutoChoice {
            series: series.to_string(),
            weekday: (slot / 24) as u32,
            hour: (slot % 24) as u32,
            mean,
            overall_mean: overall,
            hours_with_data: means.len(),
            days_of_history: days,
        })
    }
}

fn fmt_window(w: Window) -> String {
    format!(
        "{:02}:{:02}-{:02}:{:02}",
        w.start_min / 60,
        w.start_min % 60,
        w.end_min / 60,
        w.end_min % 60
    )
}

fn fmt_days(days: &[bool; 7]) -> String {
    if days.iter().all(|d| *d) {
        return String::new();
    }
    let names: Vec<&str> = DAY_NAMES
        .iter()
        .zip(days)
        .filter(|(_, on)| **on)
        .map(|(n, _)| *n)
        .collect();
    format!(" on {}", names.join(","))
}

/// The first instant a local time names; a time skipped by a DST change
/// names none, and the hour after it is taken.
fn earliest<Z: TimeZone>(z: &Z, naive: chrono::NaiveDateTime) -> Option<DateTime<Utc>> {
    z.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            z.from_local_datetime(&(naive + CDuration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

/// Day names for display (Monday = 0).
pub fn day_name(weekday: u32) -> &'static str {
    DAY_NAMES[(weekday % 7) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common<'a>(
        schedule: Option<&'a str>,
        window: Option<&'a str>,
        days: &'a [String],
    ) -> TaskCommon<'a> {
        TaskCommon {
            schedule,
            window,
            days,
            timezone: Some("UTC"),
            auto_series: None,
            guard: None,
            timeout: None,
            keep_backups: None,
            max_backup_bytes: None,
            batch_target: None,
            max_duty: None,
            guard_every: None,
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn bad_fields_are_named() {
        let days = vec!["mon".to_string(), "funday".to_string()];
        let errs = validate(&common(Some("61 * * * *"), Some("25:00-03:00"), &days));
        let fields: Vec<&str> = errs.iter().map(|e| e.0).collect();
        assert_eq!(fields, ["schedule", "window", "days"], "{errs:?}");
        assert!(errs[2].1.contains("`funday`"));
        let errs = validate(&common(Some("0 3 * * * *"), Some("02:00-02:00"), &[]));
        assert!(errs[0].1.contains("5-field"), "{errs:?}");
        assert!(errs[1].1.contains("same time"), "{errs:?}");
        assert!(
            validate(&common(
                Some("*/15 2-4 * * mon-fri"),
                Some("22:30-04:00"),
                &[]
            ))
            .is_empty()
        );
    }

    #[test]
    fn a_window_that_wraps_past_midnight_belongs_to_the_day_it_opens() {
        let days = vec!["fri".to_string()];
        let s = Schedule::parse(&common(None, Some("22:00-02:00"), &days)).unwrap();
        // 2026-11-27 is a Friday.
        assert_eq!(
            s.open_until(utc("2026-11-27T23:30:00Z"), None).unwrap(),
            Some(utc("2026-11-28T02:00:00Z"))
        );
        assert_eq!(
            s.open_until(utc("2026-11-28T01:59:00Z"), None).unwrap(),
            Some(utc("2026-11-28T02:00:00Z"))
        );
        let closed = s.open_until(utc("2026-11-28T02:00:00Z"), None).unwrap_err();
        assert_eq!(closed, "outside the window 22:00-02:00 on fri");
        // Saturday's 23:00 is not in a Friday-only window.
        assert!(s.open_until(utc("2026-11-28T23:00:00Z"), None).is_err());
        assert_eq!(
            s.next_start(utc("2026-11-28T00:00:00Z"), None),
            Some(utc("2026-12-04T22:00:00Z"))
        );
    }

    #[test]
    fn a_named_zone_reads_cron_and_window_on_its_own_clock() {
        let mut c = common(Some("30 2 * * *"), Some("02:00-04:00"), &[]);
        c.timezone = Some("Europe/Berlin");
        let s = Schedule::parse(&c).unwrap();
        // 02:30 in Berlin in winter (UTC+1) is 01:30 UTC.
        assert_eq!(
            s.next_start(utc("2026-11-28T10:00:00Z"), None),
            Some(utc("2026-11-29T01:30:00Z"))
        );
        // In summer (UTC+2), 00:30 UTC.
        assert_eq!(
            s.next_start(utc("2026-07-01T10:00:00Z"), None),
            Some(utc("2026-07-02T00:30:00Z"))
        );
        assert_eq!(
            s.open_until(utc("2026-11-29T01:30:00Z"), None).unwrap(),
            Some(utc("2026-11-29T03:00:00Z"))
        );
        assert!(
            s.describe(None).contains("Europe/Berlin"),
            "{}",
            s.describe(None)
        );
        c.timezone = Some("Mars/Olympus");
        let errs = validate(&c);
        assert_eq!(errs[0].0, "timezone");
        assert!(errs[0].1.contains("IANA"), "{errs:?}");
    }

    #[test]
    fn cron_times_outside_the_window_are_skipped() {
        let s = Schedule::parse(&common(Some("0 * * * *"), Some("02:00-04:00"), &[])).unwrap();
        assert_eq!(
            s.next_start(utc("2026-11-28T10:17:00Z"), None),
            Some(utc("2026-11-29T02:00:00Z"))
        );
        assert_eq!(
            s.next_start(utc("2026-11-29T02:00:00Z"), None),
            Some(utc("2026-11-29T03:00:00Z"))
        );
        let manual = Schedule::parse(&common(None, None, &[])).unwrap();
        assert!(manual.manual_only());
        assert_eq!(manual.next_start(utc("2026-11-28T10:00:00Z"), None), None);
        assert_eq!(
            manual.open_until(utc("2026-11-28T10:00:00Z"), None),
            Ok(None)
        );
    }

    #[test]
    fn auto_picks_the_quietest_hour_of_the_week_once_it_has_seven_days() {
        let s = Schedule::parse(&common(None, Some("auto"), &[])).unwrap();
        let start = utc("2026-11-02T00:00:00Z").timestamp_millis(); // a Monday
        let hour = 3_600_000;
        let points = |days: i64| -> Vec<(Ts, f64)> {
            (0..days * 24)
                .map(|h| {
                    let ts = start + h * hour;
                    // Busy by day, quiet at night; quietest Wednesday 04:00.
                    let hod = h % 24;
                    let mut v = if (8..20).contains(&hod) { 100.0 } else { 20.0 };
                    if h % 168 == 2 * 24 + 4 {
                        v = 1.0;
                    }
                    (ts, v)
                })
                .collect()
        };
        let early = s.choose_auto("api.requests_per_second", &points(5), start + 5 * 24 * hour);
        assert!(early.unwrap_err().contains("needs 7"));
        let a = s
            .choose_auto(
                "api.requests_per_second",
                &points(14),
                start + 14 * 24 * hour,
            )
            .unwrap();
        assert_eq!((a.weekday, a.hour, a.mean), (2, 4, 1.0));
        assert_eq!(a.hours_with_data, 168);
        assert_eq!(
            s.open_until(utc("2026-11-18T04:30:00Z"), Some(&a)).unwrap(),
            Some(utc("2026-11-18T05:00:00Z"))
        );
        assert!(s.open_until(utc("2026-11-18T05:00:00Z"), Some(&a)).is_err());
        assert_eq!(
            s.next_start(utc("2026-11-18T05:00:00Z"), Some(&a)),
            Some(utc("2026-11-25T04:00:00Z"))
        );
        assert!(
            s.open_until(utc("2026-11-18T04:30:00Z"), None)
                .unwrap_err()
                .contains("auto")
        );
    }
}
