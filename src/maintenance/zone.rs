//! A named time zone (`timezone = "Europe/Berlin"`) read from the host's
//! tz database (`/usr/share/zoneinfo`, or `TZDIR`), as the host's own
//! `local` time is, and offered to chrono and croner as a
//! `chrono::TimeZone`. Used by `schedule`.
//!
//! Why not an embedded database: chrono-tz's tables are pointers the loader
//! must relocate at every start, 1.3 MB that every agent held as private
//! memory (and carried in its binary) whether a task named a zone or not.
//! The price: a named zone needs the host's tzdata (the packages depend on
//! it), and follows the host's updates of it, as `local` always did.

use std::fmt;

use chrono::{FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, Offset, TimeZone};

/// A zone of the host's tz database, by its IANA name.
#[derive(Clone)]
pub struct HostZone {
    name: std::sync::Arc<str>,
    tz: jiff::tz::TimeZone,
}

impl HostZone {
    /// The zone `name` from the host's tz database; the error says why not.
    pub fn named(name: &str) -> Result<HostZone, String> {
        // A name is a path below the database: no way out of it.
        if name.is_empty() || name.starts_with('/') || name.split('/').any(|p| p == "..") {
            return Err("is not an IANA time zone name".into());
        }
        jiff::tz::TimeZone::get(name)
            .map(|tz| HostZone {
                name: name.into(),
                tz,
            })
            .map_err(|_| {
                "is not a time zone of the host's tz database (/usr/share/zoneinfo; install tzdata)"
                    .into()
            })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn offset_at(&self, secs: i64) -> ZoneOffset {
        let seconds = jiff::Timestamp::from_second(secs)
            .map(|ts| self.tz.to_offset(ts).seconds())
            .unwrap_or(0);
        self.offset(seconds)
    }

    fn offset(&self, seconds: i32) -> ZoneOffset {
        ZoneOffset {
            zone: self.clone(),
            fixed: FixedOffset::east_opt(seconds).unwrap_or(FixedOffset::east_opt(0).unwrap()),
        }
    }
}

impl PartialEq for HostZone {
    fn eq(&self, other: &HostZone) -> bool {
        self.name == other.name
    }
}

impl Eq for HostZone {}

impl fmt::Debug for HostZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostZone({})", self.name)
    }
}

/// An offset of a `HostZone` at some moment, which remembers its zone (as
/// chrono's `TimeZone::from_offset` needs).
#[derive(Clone)]
pub struct ZoneOffset {
    zone: HostZone,
    fixed: FixedOffset,
}

impl fmt::Debug for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fixed)
    }
}

impl fmt::Display for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fixed)
    }
}

impl Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        self.fixed
    }
}

impl TimeZone for HostZone {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> HostZone {
        offset.zone.clone()
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<ZoneOffset> {
        self.offset_from_local_datetime(&local.and_time(chrono::NaiveTime::MIN))
    }

    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<ZoneOffset> {
        use chrono::{Datelike, Timelike};
        use jiff::tz::AmbiguousOffset;
        let Ok(civil) = jiff::civil::DateTime::new(
            local.year() as i16,
            local.month() as i8,
            local.day() as i8,
            local.hour() as i8,
            local.minute() as i8,
            local.second().min(59) as i8,
            0,
        ) else {
            return MappedLocalTime::None;
        };
        match self.tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => {
                MappedLocalTime::Single(self.offset(offset.seconds()))
            }
            AmbiguousOffset::Fold { before, after } => MappedLocalTime::Ambiguous(
                self.offset(before.seconds()),
                self.offset(after.seconds()),
            ),
            AmbiguousOffset::Gap { .. } => MappedLocalTime::None,
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        self.offset_from_utc_datetime(&utc.and_time(chrono::NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        self.offset_at(utc.and_utc().timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn berlin() -> HostZone {
        HostZone::named("Europe/Berlin").expect("the host's tzdata has Europe/Berlin")
    }

    #[test]
    fn utc_instants_get_the_zones_offset_summer_and_winter() {
        let z = berlin();
        let winter = Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0).unwrap();
        let summer = Utc.with_ymd_and_hms(2026, 7, 15, 12, 0, 0).unwrap();
        assert_eq!(
            winter.with_timezone(&z).to_rfc3339(),
            "2026-01-15T13:00:00+01:00"
        );
        assert_eq!(
            summer.with_timezone(&z).to_rfc3339(),
            "2026-07-15T14:00:00+02:00"
        );
    }

    #[test]
    fn local_times_in_a_gap_are_none_and_in_a_fold_ambiguous() {
        let z = berlin();
        let at = |d: u32, h: u32, m: u32| {
            NaiveDate::from_ymd_opt(2026, 3, d)
                .unwrap()
                .and_hms_opt(h, m, 0)
                .unwrap()
        };
        // 2026-03-29 02:30 does not exist in Berlin; 2026-10-25 02:30 twice.
        assert!(matches!(
            z.offset_from_local_datetime(&at(29, 2, 30)),
            MappedLocalTime::None
        ));
        let fold = NaiveDate::from_ymd_opt(2026, 10, 25)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        match z.offset_from_local_datetime(&fold) {
            MappedLocalTime::Ambiguous(a, b) => {
                assert_eq!(
                    (a.fix().local_minus_utc(), b.fix().local_minus_utc()),
                    (7200, 3600)
                )
            }
            other => panic!("a fold should be ambiguous: {other:?}"),
        }
        let plain = z
            .offset_from_local_datetime(&at(1, 12, 0))
            .single()
            .unwrap();
        assert_eq!(plain.fix().local_minus_utc(), 3600);
    }

    #[test]
    fn names_outside_the_database_are_refused() {
        for bad in [
            "Mars/Olympus_Mons",
            "../../etc/passwd",
            "/etc/localtime",
            "",
        ] {
            assert!(HostZone::named(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(berlin().name(), "Europe/Berlin");
    }

    #[test]
    fn croner_finds_the_next_start_on_the_zones_clock() {
        let z = berlin();
        let cron: croner::Cron = "0 3 * * *".parse().unwrap();
        let after = Utc.with_ymd_and_hms(2026, 7, 15, 12, 0, 0).unwrap();
        let next = cron
            .find_next_occurrence(&after.with_timezone(&z), false)
            .unwrap()
            .with_timezone(&Utc);
        // 03:00 in Berlin in July is 01:00 UTC.
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 7, 16, 1, 0, 0).unwrap());
    }
}
