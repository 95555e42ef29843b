//! The verdict of one check: its readings, and how long its security
//! updates have waited against `security_grace` and `security_max`, with
//! a reboot left pending past `reboot_grace`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Check, DAY, SecurityUpdatesConfig};
use crate::sample::{Reading, Status, Unit};

/// `3d`, `5h`, `12m`: a waiting time, roughly.
fn age(secs: i64) -> String {
    let secs = secs.max(0);
    if secs >= DAY as i64 {
        format!("{}d", secs / DAY as i64)
    } else if secs >= 3600 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}m", secs / 60)
    }
}

/// The readings and the verdict of one check at `now` (unix ms), with the
/// first-seen time of each security update.
pub fn judge(
    check: &Check,
    first_seen: &BTreeMap<String, i64>,
    config: &SecurityUpdatesConfig,
    now: i64,
) -> (Vec<Reading>, Option<(Status, String)>) {
    let now_s = now / 1000;
    let waited: Vec<(&str, i64)> = check
        .security
        .iter()
        .map(|(k, listed)| {
            let seen = first_seen.get(k).map(|ms| ms / 1000);
            let since = match (seen, *listed) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(now_s),
            };
            (k.as_str(), now_s - since)
        })
        .collect();
    let oldest = waited.iter().map(|(_, w)| *w).max();
    let mut readings = vec![
        Reading::new("updates_pending", check.updates as f64, Unit::Count),
        Reading::new(
            "security_updates_pending",
            check.security.len() as f64,
            Unit::Count,
        ),
        Reading::new(
            "reboot_required",
            f64::from(u8::from(check.reboot_required)),
            Unit::Count,
        ),
    ];
    if let Some(o) = oldest {
        readings.push(Reading::new(
            "oldest_security_update_age_seconds",
            o.max(0) as f64,
            Unit::Seconds,
        ));
    }
    let mut worst = Status::Healthy;
    let mut why = Vec::new();
    let over = |limit: Duration| -> Vec<&str> {
        waited
            .iter()
            .filter(|(_, w)| *w > limit.as_secs() as i64)
            .map(|(k, _)| k.split('=').next().unwrap_or(k))
            .collect()
    };
    let (late, status, limit) = match over(config.security_max) {
        l if !l.is_empty() => (l, Status::Unhealthy, config.security_max),
        _ => (
            over(config.security_grace),
            Status::Degraded,
            config.security_grace,
        ),
    };
    if !late.is_empty() {
        worst = status;
        let mut names = late.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        if late.len() > 5 {
            names.push_str(&format!(" and {} more", late.len() - 5));
        }
        why.push(format!(
            "{} security update{} pending longer than {} (oldest {}): {names}",
            late.len(),
            if late.len() == 1 { "" } else { "s" },
            age(limit.as_secs() as i64),
            age(oldest.unwrap_or(0)),
        ));
    }
    if check.reboot_required
        && let Some(since) = check.reboot_since
        && now_s - since > config.reboot_grace.as_secs() as i64
    {
        worst = worst.max(Status::Degraded);
        why.push(format!("reboot required for {}", age(now_s - since)));
    }
    let verdict = (worst != Status::Healthy).then(|| (worst, why.join("; ")));
    (readings, verdict)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::probes::security_updates::tests::config;

    #[test]
    fn grace_then_max_then_reboot() {
        let c = config(Path::new("/"));
        let now = 100 * DAY as i64 * 1000;
        let days_ago = |d: i64| now / 1000 - d * DAY as i64;
        let mut check = Check {
            updates: 3,
            security: [("openssl=3".to_string(), Some(days_ago(2)))].into(),
            ..Check::default()
        };
        let (r, v) = judge(&check, &BTreeMap::new(), &c, now);
        assert_eq!(r[1].value, 1.0);
        assert_eq!(r[3].value, (2 * DAY) as f64);
        assert_eq!(v, None);
        // Seen by the probe eight days ago: older than the list says.
        let seen = [("openssl=3".to_string(), (days_ago(8)) * 1000)].into();
        let (_, v) = judge(&check, &seen, &c, now);
        assert_eq!(
            v,
            Some((
                Status::Degraded,
                "1 security update pending longer than 7d (oldest 8d): openssl".into()
            ))
        );
        check.security.insert("libc6=2".into(), Some(days_ago(31)));
        check.reboot_required = true;
        check.reboot_since = Some(days_ago(2));
        let (r, v) = judge(&check, &seen, &c, now);
        assert_eq!(r[2].value, 1.0);
        let (s, why) = v.unwrap();
        assert_eq!(s, Status::Unhealthy);
        assert_eq!(
            why,
            "1 security update pending longer than 30d (oldest 31d): libc6; reboot required for 2d"
        );
    }
}
