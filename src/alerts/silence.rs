//! Silences as the CLI and the API make them: `NAME=VALUE` matchers, a
//! length, a comment, checked here once for both. They are stored in the
//! history file (`store::alerts`), so they survive restarts and the
//! running agent picks up one added by the CLI at its next evaluation.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::sample::Ts;
use crate::store::alerts::Silence;

/// The longest silence: a forgotten one must end by itself.
pub const MAX_LENGTH: Duration = Duration::from_secs(90 * 86_400);
/// Longest comment, in bytes.
pub const MAX_COMMENT: usize = 1000;
/// Matchers of one silence at most.
pub const MAX_MATCHERS: usize = 16;

/// A silence from `NAME=VALUE` matchers, starting `now` and lasting
/// `length`; every problem named.
pub fn build(
    matchers: &[String],
    length: Duration,
    comment: &str,
    created_by: &str,
    now: Ts,
) -> Result<Silence, String> {
    let mut map = BTreeMap::new();
    if matchers.is_empty() {
        return Err("at least one matcher NAME=VALUE is needed (such as probe=database)".into());
    }
    if matchers.len() > MAX_MATCHERS {
        return Err(format!("at most {MAX_MATCHERS} matchers"));
    }
    for m in matchers {
        let Some((k, v)) = m.split_once('=') else {
            return Err(format!(
                "matcher `{}` is not NAME=VALUE",
                crate::config::escape(m)
            ));
        };
        let name_ok = !k.is_empty()
            && k.len() <= 64
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok || v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
            return Err(format!(
                "matcher `{}`: NAME is letters, digits and '_', VALUE 1-256 printable characters",
                crate::config::escape(m)
            ));
        }
        map.insert(k.to_string(), v.to_string());
    }
    if length < Duration::from_secs(60) || length > MAX_LENGTH {
        return Err("a silence lasts from 1m to 90d".into());
    }
    let comment = comment.trim();
    if comment.is_empty() {
        return Err("a comment is needed: say why".into());
    }
    if comment.len() > MAX_COMMENT || comment.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!(
            "the comment must be at most {MAX_COMMENT} bytes of printable text"
        ));
    }
    Ok(Silence {
        id: 0,
        matchers: map,
        starts_ms: now,
        ends_ms: now + length.as_millis() as Ts,
        comment: comment.to_string(),
        created_by: created_by.to_string(),
        created_ms: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_silences_are_refused_naming_what_is_wrong() {
        let m = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let hour = Duration::from_secs(3600);
        let ok = build(&m(&["probe=database"]), hour, "upgrade", "cli", 0).unwrap();
        assert_eq!(ok.ends_ms, 3_600_000);
        for (matchers, len, comment, want) in [
            (m(&[]), hour, "x", "at least one matcher"),
            (m(&["probe"]), hour, "x", "not NAME=VALUE"),
            (m(&["pro be=x"]), hour, "x", "NAME is letters"),
            (
                m(&["probe=db"]),
                Duration::from_secs(1),
                "x",
                "from 1m to 90d",
            ),
            (m(&["probe=db"]), hour, "  ", "a comment is needed"),
        ] {
            let err = build(&matchers, len, comment, "cli", 0).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
